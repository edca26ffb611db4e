//! The Redis side of the proxy: shared pipelined connections and leased dedicated ones.
//!
//! Connections are grouped by [`PoolKey`] (database and protocol version), because both are
//! per-connection state in Redis: a client that runs `SELECT 3` or `HELLO 3` is served by
//! connections that were opened that way, and keeps the pipelining benefits.

pub mod batch;
pub mod cluster;
pub mod conn;
pub mod connect;
pub mod front;
pub mod lease;
pub mod node;
pub mod sentinel;
pub mod settings;
pub mod url;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use thiserror::Error;
use tokio::sync::{Notify, Semaphore};

use conn::SharedConn;
use node::Node;
use settings::{Mode, UpstreamConfig};
use url::Addr;

/// What a connection was opened with: database, RESP version, and who it authenticated as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Database index.
    pub db: u32,
    /// 2 or 3.
    pub proto: u8,
    /// A client's own credentials (checked by Redis); None: statecar's (`upstream.url`).
    pub identity: Option<Arc<Identity>>,
}

impl PoolKey {
    /// A key with statecar's own credentials.
    pub fn new(db: u32, proto: u8) -> PoolKey {
        PoolKey {
            db,
            proto,
            identity: None,
        }
    }
}

/// Credentials a client authenticated with, when Redis (not statecar) checks them: the client's
/// commands then travel on connections opened as that user, so Redis's ACLs apply to them.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// ACL user.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(f, "Identity({})", self.user)
    }
}

/// Why a command could not be answered by Redis.
#[derive(Debug, Error, Clone)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("upstream unavailable ({addr}): {reason}")]
    Unavailable {
        /// host:port
        addr: String,
        /// Why.
        reason: String,
    },
    /// The connection broke while a reply was outstanding.
    #[error("upstream connection lost ({addr})")]
    Closed {
        /// host:port
        addr: String,
    },
    /// An I/O error on an open connection.
    #[error("upstream i/o error ({addr}): {reason}")]
    Io {
        /// host:port
        addr: String,
        /// Why.
        reason: String,
    },
    /// No reply within `upstream.timeout_ms`.
    #[error("upstream timeout ({addr}): no reply within {ms} ms")]
    Timeout {
        /// host:port
        addr: String,
        /// The configured deadline.
        ms: u64,
    },
    /// Redis sent something that is not RESP.
    #[error("upstream protocol error ({addr}): {detail}")]
    Protocol {
        /// host:port
        addr: String,
        /// What was wrong.
        detail: String,
    },
    /// AUTH, HELLO or SELECT was refused.
    #[error("upstream handshake failed ({addr}) at {step}: {reply}")]
    Handshake {
        /// host:port
        addr: String,
        /// Which command.
        step: &'static str,
        /// What Redis said.
        reply: String,
    },
    /// The node was taken out of use (failover, left the cluster) with the command in flight.
    #[error("upstream {addr} out of use: {reason}; the command may or may not have run")]
    Retired {
        /// host:port
        addr: String,
        /// Why.
        reason: String,
    },
    /// Every dedicated connection is in use.
    #[error(
        "no dedicated upstream connection free within {ms} ms (upstream.max_leased_connections = {max})"
    )]
    NoLease {
        /// The configured maximum.
        max: usize,
        /// How long we waited.
        ms: u64,
    },
}

impl UpstreamError {
    /// Wraps an I/O error with the address.
    pub fn io(addr: &str, e: &std::io::Error) -> UpstreamError {
        UpstreamError::Io {
            addr: addr.to_string(),
            reason: e.to_string().to_lowercase(),
        }
    }

    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            UpstreamError::Unavailable { .. } => "unavailable",
            UpstreamError::Closed { .. } => "closed",
            UpstreamError::Io { .. } => "io",
            UpstreamError::Timeout { .. } => "timeout",
            UpstreamError::Protocol { .. } => "protocol",
            UpstreamError::Handshake { .. } => "handshake",
            UpstreamError::NoLease { .. } => "no_lease",
            UpstreamError::Retired { .. } => "retired",
        }
    }

    /// The error as a RESP error line (`-ERR ...\r\n`).
    pub fn to_resp(&self) -> Vec<u8> {
        // Redis wants a password statecar does not have: the client gets what a direct client
        // gets before AUTH, and authenticates itself (its AUTH is then checked by Redis).
        if let UpstreamError::Handshake { reply, .. } = self
            && reply.starts_with("NOAUTH")
        {
            return b"-NOAUTH Authentication required.\r\n".to_vec();
        }
        let msg = self.to_string().replace(['\r', '\n'], " ");
        format!("-ERR {msg}\r\n").into_bytes()
    }

    /// The error for a command it cut short, saying whether the command may have run: `sent`
    /// when some of its bytes reached Redis (which may then have run it, or may still), not
    /// when it never left statecar (it certainly did not run).
    pub fn to_resp_outcome(&self, sent: bool) -> Vec<u8> {
        let outcome = match (self, sent) {
            (UpstreamError::Timeout { .. }, true) => "; the command may still run",
            (
                UpstreamError::Closed { .. }
                | UpstreamError::Io { .. }
                | UpstreamError::Protocol { .. },
                true,
            ) => "; the command may or may not have run",
            (
                UpstreamError::Timeout { .. }
                | UpstreamError::Closed { .. }
                | UpstreamError::Io { .. }
                | UpstreamError::Protocol { .. },
                false,
            ) => "; the command was not sent and did not run",
            _ => return self.to_resp(),
        };
        let msg = self.to_string().replace(['\r', '\n'], " ");
        format!("-ERR {msg}{outcome}\r\n").into_bytes()
    }
}

/// How long a node that left the slot map keeps its connections (see `Upstream::set_slots`).
const RETIRE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Which node serves what, as of one moment. Replaced whole when it changes, so a session
/// that cached connections for an older `epoch` knows to look again.
pub struct Topology {
    /// Bumped on every change.
    pub epoch: u64,
    /// Standalone and Sentinel: the server. Cluster: where keyless commands go.
    pub primary: Arc<Node>,
    /// Cluster: the primary serving each slot, as an index into `masters` (empty until the
    /// first slot map is loaded; until then everything goes to `primary`, whose MOVED replies
    /// are followed).
    pub slots: Vec<u16>,
    /// Cluster: every primary, in slot order of first appearance.
    pub masters: Vec<Arc<Node>>,
}

impl Topology {
    /// The node that serves `slot`.
    pub fn node_for_slot(&self, slot: u16) -> &Arc<Node> {
        match self.slots.get(slot as usize) {
            Some(&i) => self.masters.get(i as usize).unwrap_or(&self.primary),
            None => &self.primary,
        }
    }

    /// Every node a keyless "all nodes" command must reach.
    pub fn all(&self) -> Vec<Arc<Node>> {
        if self.masters.is_empty() {
            vec![self.primary.clone()]
        } else {
            self.masters.clone()
        }
    }
}

/// Every upstream connection of the proxy.
pub struct Upstream {
    cfg: Arc<UpstreamConfig>,
    /// The `max_leased_connections` budget, shared by every node.
    permits: Arc<Semaphore>,
    topo: ArcSwap<Topology>,
    /// Cluster: every node seen in a slot map or a redirect, by address.
    nodes: Mutex<HashMap<Addr, Arc<Node>>>,
    next_id: AtomicU64,
    /// The server version learned at the last handshake, for HELLO replies.
    pub server_version: Mutex<String>,
    /// Whether the last connection attempt succeeded (for /readyz).
    pub reachable: Arc<AtomicBool>,
    /// Databases Redis has accepted in SELECT, so later SELECTs need no round trip.
    valid_dbs: Mutex<HashSet<u32>>,
    /// See [`Upstream::functions`].
    functions: AtomicBool,
    /// Cluster: wakes the topology task (a MOVED reply, a node that stopped answering).
    pub(crate) refresh: Notify,
    /// Counts the client credentials Redis has accepted (see [`Upstream::credentials_accepted`]).
    auth_epoch: AtomicU64,
}

impl Upstream {
    /// Creates the pools; no connection is opened until the first command needs one.
    ///
    /// In Sentinel mode the primary is unknown until the sentinels answer: until then commands
    /// fail with an error saying so (see [`sentinel::follow`]).
    pub fn new(cfg: UpstreamConfig) -> Arc<Upstream> {
        let cfg = Arc::new(cfg);
        let permits = Arc::new(Semaphore::new(cfg.max_leased_connections));
        Arc::new_cyclic(|weak| {
            let first = match &cfg.mode {
                Mode::Cluster { seeds } => seeds.first().cloned().unwrap_or_else(|| cfg.url.node()),
                _ => cfg.url.node(),
            };
            let primary = Node::new(0, first.clone(), weak.clone(), cfg.clone(), permits.clone());
            if let Mode::Sentinel { master_name, .. } = &cfg.mode {
                primary.retire(format!(
                    "the primary of \"{master_name}\" is not known yet (no sentinel has answered)"
                ));
            }
            let mut nodes = HashMap::new();
            if matches!(cfg.mode, Mode::Cluster { .. }) {
                nodes.insert(first, primary.clone());
            }
            Upstream {
                topo: ArcSwap::from_pointee(Topology {
                    epoch: 0,
                    primary,
                    slots: Vec::new(),
                    masters: Vec::new(),
                }),
                nodes: Mutex::new(nodes),
                next_id: AtomicU64::new(1),
                permits,
                cfg,
                server_version: Mutex::new("7.0.0".to_string()),
                reachable: Arc::new(AtomicBool::new(false)),
                valid_dbs: Mutex::new(HashSet::new()),
                refresh: Notify::new(),
                functions: AtomicBool::new(false),
                auth_epoch: AtomicU64::new(0),
            }
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// Whether commands are routed by slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.cfg.mode, Mode::Cluster { .. })
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topo.load_full()
    }

    /// The current topology's epoch (cheap: sessions check it per command).
    pub fn epoch(&self) -> u64 {
        self.topo.load().epoch
    }

    /// The server (standalone, Sentinel) or the keyless-command node (cluster).
    pub fn primary(&self) -> Arc<Node> {
        self.topo.load().primary.clone()
    }

    /// Every node with connections: the topology's and any a redirect named.
    fn every_node(&self) -> Vec<Arc<Node>> {
        let mut all = self.topology().all();
        if let Ok(nodes) = self.nodes.lock() {
            all.extend(
                nodes
                    .values()
                    .filter(|n| !all.iter().any(|a| a.id == n.id))
                    .cloned()
                    .collect::<Vec<_>>(),
            );
        }
        all
    }

    /// Picks a shared connection on the primary for a new client of `key`.
    pub fn assign(&self, key: PoolKey) -> SharedConn {
        self.primary().assign(key)
    }

    /// A node with a fresh id, sharing this upstream's configuration and lease budget.
    fn new_node(self: &Arc<Self>, addr: Addr) -> Arc<Node> {
        Node::new(
            self.next_id.fetch_add(1, Ordering::Relaxed),
            addr,
            Arc::downgrade(self),
            self.cfg.clone(),
            self.permits.clone(),
        )
    }

    /// Cluster: the node at `addr`, created on first sight (a MOVED can name a node before
    /// the slot map does).
    pub fn node(self: &Arc<Self>, addr: &Addr) -> Arc<Node> {
        let mut nodes = match self.nodes.lock() {
            Ok(n) => n,
            Err(p) => p.into_inner(),
        };
        nodes
            .entry(addr.clone())
            .or_insert_with(|| self.new_node(addr.clone()))
            .clone()
    }

    /// Cluster: installs a new slot map; nodes no longer in it are retired.
    pub(crate) fn set_slots(self: &Arc<Self>, masters: Vec<Addr>, slots: Vec<u16>) {
        let nodes: Vec<Arc<Node>> = masters.iter().map(|a| self.node(a)).collect();
        let old = self.topo.load_full();
        let same = old.slots == slots
            && old.masters.len() == nodes.len()
            && old.masters.iter().zip(&nodes).all(|(a, b)| a.id == b.id);
        if same {
            return;
        }
        let primary = nodes
            .first()
            .cloned()
            .unwrap_or_else(|| old.primary.clone());
        self.topo.store(Arc::new(Topology {
            epoch: old.epoch + 1,
            primary,
            slots,
            masters: nodes,
        }));
        crate::telemetry::topology_change();
        tracing::info!(
            epoch = old.epoch + 1,
            primaries = %masters.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
            "cluster slot map updated"
        );
        // Nodes that serve no slot any more: a replica promoted elsewhere, a node removed.
        let mut gone = Vec::new();
        if let Ok(mut all) = self.nodes.lock() {
            all.retain(|a, n| {
                let keep = masters.contains(a);
                if !keep {
                    gone.push(n.clone());
                }
                keep
            });
        }
        if gone.is_empty() {
            return;
        }
        // Commands already on their way there come back as MOVED and are followed; only
        // then is the node retired (its connections would otherwise keep reconnecting to a
        // node that may be gone for good).
        let up = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(RETIRE_GRACE).await;
            let Some(up) = up.upgrade() else { return };
            let topo = up.topology();
            for n in gone {
                if !topo.masters.iter().any(|m| m.id == n.id) {
                    n.retire("the node no longer serves any slot of the cluster".into());
                }
            }
        });
    }

    /// Sentinel: points every new command at the primary at `addr`; commands still in flight
    /// on the old one fail with an error naming the failover.
    pub(crate) fn set_primary(self: &Arc<Self>, addr: Addr) {
        let old = self.topo.load_full();
        if old.primary.ep.addr == addr && !old.primary.is_retired() {
            return;
        }
        let node = self.new_node(addr);
        self.topo.store(Arc::new(Topology {
            epoch: old.epoch + 1,
            primary: node.clone(),
            slots: Vec::new(),
            masters: Vec::new(),
        }));
        crate::telemetry::topology_change();
        tracing::warn!(
            old = old.primary.name(),
            new = node.name(),
            "primary changed; following it"
        );
        old.primary
            .retire(format!("failover: the primary is now {}", node.name()));
    }

    /// Cluster: asks the topology task to reload the slot map soon.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Whether state scripts can go as FCALL (the function library loaded on the last
    /// connection opened).
    pub fn functions(&self) -> bool {
        self.functions.load(Ordering::Relaxed)
    }

    /// Redis has just accepted a client's credentials (an ACL user was created or its
    /// password changed, perhaps): connections whose handshake Redis refused try again at the
    /// next command instead of failing it during their backoff.
    pub fn credentials_accepted(&self) {
        self.auth_epoch.fetch_add(1, Ordering::Relaxed);
    }

    /// See [`Upstream::credentials_accepted`].
    pub fn auth_epoch(&self) -> u64 {
        self.auth_epoch.load(Ordering::Relaxed)
    }

    /// Records the outcome of a connection attempt.
    pub fn note_connect(&self, ok: bool, info: Option<&connect::ServerInfo>) {
        self.reachable.store(ok, Ordering::Relaxed);
        if let Some(i) = info
            && self.cfg.function_library.is_some()
        {
            self.functions.store(i.functions, Ordering::Relaxed);
        }
        let version = info.map(|i| i.version.as_str());
        if !ok && self.is_cluster() {
            self.request_refresh();
        }
        if let Some(v) = version
            && !v.is_empty()
            && let Ok(mut s) = self.server_version.lock()
            && s.as_str() != v
        {
            *s = v.to_string();
        }
    }

    /// Whether `SELECT db` is known to succeed.
    pub fn db_known_valid(&self, db: u32) -> bool {
        db == self.cfg.url.db
            || self
                .valid_dbs
                .lock()
                .map(|s| s.contains(&db))
                .unwrap_or(false)
    }

    /// Remembers that Redis accepted `SELECT db`.
    pub fn mark_db_valid(&self, db: u32) {
        if let Ok(mut s) = self.valid_dbs.lock() {
            s.insert(db);
        }
    }

    /// The version string to report in HELLO.
    pub fn version(&self) -> String {
        self.server_version
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }
}

/// Every half `upstream.pool_idle_timeout_ms`, closes the shared-connection pools no client has
/// used for that long, and the leased connections idle that long ([`Node::close_idle_pools`]);
/// when it is 0, closes none. (Upstream settings are not reloaded: read once.)
pub async fn close_idle_pools(up: Weak<Upstream>) {
    let timeout = match up.upgrade() {
        Some(u) if u.cfg.pool_idle_timeout_ms > 0 => u.cfg.pool_idle_timeout_ms,
        _ => return,
    };
    let idle = Duration::from_millis(timeout);
    let every = (idle / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(up) = up.upgrade() else { return };
        let now = tokio::time::Instant::now();
        for node in up.every_node() {
            let (pools, leased) = node.close_idle_pools(now, idle);
            if pools + leased > 0 {
                tracing::debug!(
                    node = node.name(),
                    pools,
                    leased,
                    "closed unused connections"
                );
            }
        }
    }
}

/// Pings Redis every second through a shared connection, so `/readyz` turns unready within a
/// few seconds of Redis going away (even with no traffic) and ready again when it is back.
/// In cluster mode every primary must answer (and a slot map must be loaded).
pub async fn probe(up: Arc<Upstream>) {
    let key = PoolKey::new(up.cfg.url.db, 2);
    let ping = bytes::Bytes::from_static(b"*1\r\n$4\r\nPING\r\n");
    let mut conns: Vec<SharedConn> = Vec::new();
    let mut epoch = u64::MAX;
    loop {
        let topo = up.topology();
        if topo.epoch != epoch {
            epoch = topo.epoch;
            conns = topo.all().iter().map(|n| n.assign(key.clone())).collect();
        }
        let mut ok = !(up.is_cluster() && topo.slots.is_empty());
        for conn in &conns {
            ok &= matches!(
                tokio::time::timeout(std::time::Duration::from_secs(2), conn::call(conn, ping.clone(), 1)).await,
                Ok(Ok(ref r)) if r.as_ref() == b"+PONG\r\n"
            );
        }
        up.reachable.store(ok, Ordering::Relaxed);
        metrics::gauge!("statecar_upstream_up").set(if ok { 1.0 } else { 0.0 });
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
