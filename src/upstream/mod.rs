//! The Redis side of the proxy: shared pipelined connections and leased dedicated ones.
//!
//! Connections are grouped by [`PoolKey`] (database and protocol version), because both are
//! per-connection state in Redis: a client that runs `SELECT 3` or `HELLO 3` is served by
//! connections that were opened that way, and keeps the pipelining benefits.

pub mod conn;
pub mod connect;
pub mod lease;
pub mod url;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use thiserror::Error;

use crate::config::UpstreamConfig;
use conn::SharedConn;
use lease::LeasePool;

/// The database and RESP version a connection was opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Database index.
    pub db: u32,
    /// 2 or 3.
    pub proto: u8,
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
        }
    }

    /// The error as a RESP error line (`-ERR ...\r\n`).
    pub fn to_resp(&self) -> Vec<u8> {
        let msg = self.to_string().replace(['\r', '\n'], " ");
        format!("-ERR {msg}\r\n").into_bytes()
    }
}

/// The pool for one [`PoolKey`]: shared connections, started on first use.
struct Pool {
    shared: Vec<SharedConn>,
    next: AtomicUsize,
}

/// Every upstream connection of the proxy.
pub struct Upstream {
    cfg: Arc<UpstreamConfig>,
    pools: RwLock<HashMap<PoolKey, Arc<Pool>>>,
    leases: Arc<LeasePool>,
    /// The server version learned at the last handshake, for HELLO replies.
    pub server_version: Mutex<String>,
    /// Whether the last connection attempt succeeded (for /readyz).
    pub reachable: AtomicBool,
    /// Databases Redis has accepted in SELECT, so later SELECTs need no round trip.
    valid_dbs: Mutex<HashSet<u32>>,
}

impl Upstream {
    /// Creates the pools; no connection is opened until the first command needs one.
    pub fn new(cfg: UpstreamConfig) -> Arc<Upstream> {
        let cfg = Arc::new(cfg);
        Arc::new_cyclic(|weak| Upstream {
            leases: LeasePool::new(cfg.clone(), weak.clone()),
            cfg,
            pools: RwLock::new(HashMap::new()),
            server_version: Mutex::new("7.0.0".to_string()),
            reachable: AtomicBool::new(false),
            valid_dbs: Mutex::new(HashSet::new()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// Picks a shared connection for a new client of `key`, round robin.
    ///
    /// A client sticks to the connection it is given so its commands reach Redis in order.
    pub fn assign(self: &Arc<Self>, key: PoolKey) -> SharedConn {
        if let Ok(pools) = self.pools.read()
            && let Some(p) = pools.get(&key)
        {
            return p.pick();
        }
        let mut pools = match self.pools.write() {
            Ok(p) => p,
            Err(poisoned) => poisoned.into_inner(),
        };
        let pool = pools.entry(key).or_insert_with(|| {
            Arc::new(Pool {
                shared: (0..self.cfg.max_connections)
                    .map(|i| SharedConn::spawn(Arc::downgrade(self), key, i))
                    .collect(),
                next: AtomicUsize::new(0),
            })
        });
        pool.pick()
    }

    /// The dedicated-connection pool.
    pub fn leases(&self) -> &Arc<LeasePool> {
        &self.leases
    }

    /// Records the outcome of a connection attempt.
    pub fn note_connect(&self, ok: bool, version: Option<&str>) {
        self.reachable.store(ok, Ordering::Relaxed);
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

/// Clients per shared connection before the next one is used.
///
/// Filling one connection first is what makes pipelining pay: Redis then reads and answers many
/// clients' commands per syscall. Measured on 2 cores with 50 clients at pipeline 1, one
/// connection cut statecar's CPU per command by a third and Redis's by half compared with
/// spreading the same clients over eight (docs/BENCHMARKS.md).
const CLIENTS_PER_CONNECTION: usize = 64;

impl Pool {
    fn pick(&self) -> SharedConn {
        if let Some(c) = self
            .shared
            .iter()
            .find(|c| c.users() < CLIENTS_PER_CONNECTION)
        {
            return c.clone();
        }
        // All full: spread the rest round robin.
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.shared.len();
        self.shared[i].clone()
    }
}

/// Pings Redis every second through a shared connection, so `/readyz` turns unready within a
/// few seconds of Redis going away (even with no traffic) and ready again when it is back.
pub async fn probe(up: Arc<Upstream>) {
    let key = PoolKey {
        db: up.cfg.url.db,
        proto: 2,
    };
    let conn = up.assign(key);
    let ping = bytes::Bytes::from_static(b"*1\r\n$4\r\nPING\r\n");
    loop {
        let ok = matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), conn::call(&conn, ping.clone(), 1)).await,
            Ok(Ok(ref r)) if r.as_ref() == b"+PONG\r\n"
        );
        up.reachable.store(ok, Ordering::Relaxed);
        metrics::gauge!("statecar_upstream_up").set(if ok { 1.0 } else { 0.0 });
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
