//! One Redis server statecar talks to: its shared pipelined connections (per database and
//! protocol) and its leased ones.
//!
//! Standalone and Sentinel deployments have one node at a time; a cluster has one per primary.
//! A node that stops being the right place to send commands (the primary moved away after a
//! failover, or left the cluster) is *retired*: its connections fail what they still carry with
//! an error that says why, and close.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use crate::signal::Signal;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::conn::SharedConn;
use super::lease::LeasePool;
use super::settings::UpstreamConfig;
use super::url::Addr;
use super::{PoolKey, Upstream, UpstreamError};

/// Clients per shared connection before the next one is used.
///
/// Filling one connection first is what makes pipelining pay: Redis then reads and answers many
/// clients' commands per syscall. Measured on 2 cores with 50 clients at pipeline 1, one
/// connection cut statecar's CPU per command by a third and Redis's by half compared with
/// spreading the same clients over eight (docs/BENCHMARKS.md).
const CLIENTS_PER_CONNECTION: usize = 64;

/// Where a node's connections go, and the switch that retires them.
#[derive(Debug)]
pub struct Endpoint {
    /// host and port.
    pub addr: Addr,
    /// `host:port`, for errors and logs.
    pub name: String,
    retired: Signal,
    why: Mutex<String>,
}

impl Endpoint {
    /// Cancelled once the node is retired.
    pub fn retired(&self) -> &Signal {
        &self.retired
    }

    /// The error that commands still in flight on a retired node get.
    pub fn retired_error(&self) -> UpstreamError {
        UpstreamError::Retired {
            addr: self.name.clone(),
            reason: self.why.lock().map(|w| w.clone()).unwrap_or_default(),
        }
    }
}

/// The shared connections for one [`PoolKey`] on one node, started on first use.
struct Pool {
    shared: Vec<SharedConn>,
    next: AtomicUsize,
    /// When a sweep found no client on any of its connections, with none assigned one since;
    /// None while in use.
    unused_since: Mutex<Option<Instant>>,
}

impl Pool {
    fn unused_since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.unused_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether no client holds any of its connections (only the pool itself does).
    fn unused(&self) -> bool {
        self.shared.iter().all(|c| c.users() == 0)
    }

    /// Whether it has been unused for `idle` by `now`: no client held a connection of it at
    /// any sweep since `idle` ago, and none was assigned one in between ([`Pool::pick`]), so
    /// clients that come and go between two sweeps keep it open.
    fn idle_for(&self, now: Instant, idle: Duration) -> bool {
        let mut since = self.unused_since();
        if !self.unused() {
            *since = None;
            return false;
        }
        now.saturating_duration_since(*since.get_or_insert(now)) >= idle
    }

    /// A connection for a client that starts using the pool (which is then in use again).
    fn pick(&self) -> SharedConn {
        *self.unused_since() = None;
        let now = Instant::now();
        if let Some(c) = self
            .shared
            .iter()
            .find(|c| c.users() < CLIENTS_PER_CONNECTION && !c.stalled(now))
        {
            return c.clone();
        }
        // All full (or stalled): spread the rest round robin, passing over stalled ones.
        let n = self.shared.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| &self.shared[start.wrapping_add(k) % n])
            .find(|c| !c.stalled(now))
            .unwrap_or(&self.shared[start % n])
            .clone()
    }
}

/// One Redis server and its connections.
pub struct Node {
    /// Unique for the life of the process, so sessions can cache per node.
    pub id: u64,
    /// Address and retirement switch, shared with the connection tasks.
    pub ep: Arc<Endpoint>,
    upstream: Weak<Upstream>,
    max_connections: usize,
    pools: RwLock<HashMap<PoolKey, Arc<Pool>>>,
    leases: Arc<LeasePool>,
}

impl Node {
    /// A node with no connection open yet.
    pub fn new(
        id: u64,
        addr: Addr,
        upstream: Weak<Upstream>,
        cfg: Arc<UpstreamConfig>,
        permits: Arc<Semaphore>,
    ) -> Arc<Node> {
        let ep = Arc::new(Endpoint {
            name: addr.to_string(),
            addr,
            retired: Signal::new(),
            why: Mutex::new(String::new()),
        });
        Arc::new(Node {
            id,
            leases: LeasePool::new(cfg.clone(), upstream.clone(), ep.clone(), permits),
            max_connections: cfg.max_connections,
            ep,
            upstream,
            pools: RwLock::new(HashMap::new()),
        })
    }

    /// `host:port`.
    pub fn name(&self) -> &str {
        &self.ep.name
    }

    /// Picks a shared connection for a new client of `key`.
    ///
    /// A client sticks to the connection it is given so its commands reach Redis in order.
    pub fn assign(&self, key: PoolKey) -> SharedConn {
        if let Ok(pools) = self.pools.read()
            && let Some(p) = pools.get(&key)
        {
            return p.pick();
        }
        let mut pools = match self.pools.write() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let pool = pools.entry(key.clone()).or_insert_with(|| {
            Arc::new(Pool {
                shared: (0..self.max_connections)
                    .map(|i| {
                        SharedConn::spawn(self.upstream.clone(), self.ep.clone(), key.clone(), i)
                    })
                    .collect(),
                next: AtomicUsize::new(0),
                unused_since: Mutex::new(None),
            })
        });
        pool.pick()
    }

    /// Closes the shared pools no client has used for `idle`, as seen by sweeps at `now`, and
    /// the leased connections idle that long ([`LeasePool::close_unused`]); returns how many
    /// pools and leased connections it closed. A pool is one (db, protocol, identity): a client
    /// that SELECTed another database or AUTHed as an ACL user once would otherwise keep
    /// `max_connections` connections open in Redis until statecar restarts. Dropping the pool
    /// drops the last handles to its connections, whose tasks then close them (nothing is in
    /// flight: no client holds them). The write lock keeps `assign` from handing out a
    /// connection of a pool while it is being closed.
    pub fn close_idle_pools(&self, now: Instant, idle: Duration) -> (usize, usize) {
        let mut pools = match self.pools.write() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let before = pools.len();
        pools.retain(|_, p| !p.idle_for(now, idle));
        let closed = before - pools.len();
        drop(pools);
        (closed, self.leases.close_unused(now, idle))
    }

    /// The dedicated-connection pool of this node.
    pub fn leases(&self) -> &Arc<LeasePool> {
        &self.leases
    }

    /// Stops using this node: connections fail what they carry with `why` and close.
    pub fn retire(&self, why: String) {
        if let Ok(mut w) = self.ep.why.lock() {
            *w = why;
        }
        self.ep.retired.cancel();
        self.leases.close_idle();
        if let Ok(mut pools) = self.pools.write() {
            pools.clear();
        }
    }

    /// Whether [`Node::retire`] was called.
    pub fn is_retired(&self) -> bool {
        self.ep.retired.is_cancelled()
    }
}
