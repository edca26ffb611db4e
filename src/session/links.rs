//! The shared connections one client uses: one per node and pool key, kept for as long as the
//! topology does not change, so that a client's commands to a node always travel on the same
//! connection and reach Redis in the client's order.

use std::sync::Arc;

use crate::upstream::conn::SharedConn;
use crate::upstream::node::Node;
use crate::upstream::{PoolKey, Upstream};

/// Id standing for the primary (standalone or Sentinel); no node id is this large.
const PRIMARY: u64 = u64::MAX;

/// The client's shared connections, and where the command being dispatched goes.
#[derive(Default)]
pub struct Links {
    conns: Vec<(u64, PoolKey, SharedConn)>,
    epoch: u64,
    /// Cluster: the node the command being dispatched goes to (`None`: the primary).
    pub route: Option<Arc<Node>>,
    /// Set when `upstream.retry_on_timeout` is on: orders retries on these connections with the
    /// client's later batches (see `session::retry`).
    pub retry_gate: Option<Arc<super::retry::Gate>>,
}

impl Links {
    /// No connection yet; `retries`: `upstream.retry_on_timeout` is on.
    pub fn new(retries: bool) -> Links {
        Links {
            retry_gate: retries.then(|| Arc::new(super::retry::Gate::default())),
            ..Links::default()
        }
    }

    /// The client's shared connection to `node` (`None`: the primary) for `key`.
    pub fn conn(&mut self, up: &Upstream, node: Option<&Arc<Node>>, key: PoolKey) -> SharedConn {
        let epoch = up.epoch();
        if epoch != self.epoch {
            self.conns.clear();
            self.epoch = epoch;
        }
        // A node retired since it was routed to: its replacement answers, or redirects.
        let node = node.filter(|n| !n.is_retired());
        let id = node.map_or(PRIMARY, |n| n.id);
        if let Some((_, _, c)) = self.conns.iter().find(|(i, k, _)| *i == id && *k == key) {
            return c.clone();
        }
        let c = match node {
            Some(n) => n.assign(key.clone()),
            None => up.assign(key.clone()),
        };
        self.conns.push((id, key, c.clone()));
        c
    }

    /// Lets go of connections that are stalled (their oldest command has waited too long: a
    /// slow script ahead of us) or busy with a big transfer: the next [`Links::conn`] picks one
    /// that is moving. Only for a client with nothing in flight, so that its commands still
    /// reach Redis in its order.
    pub fn leave_stalled(&mut self, now: tokio::time::Instant) {
        self.conns.retain(|(_, _, c)| !c.stalled(now));
    }

    /// The node the current command goes to.
    pub fn node(&self, up: &Upstream) -> Arc<Node> {
        match &self.route {
            Some(n) if !n.is_retired() => n.clone(),
            _ => up.primary(),
        }
    }
}
