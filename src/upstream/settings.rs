//! The upstream's settings: where Redis is, how to reach it, how many connections, which
//! deadlines. `crate::config` reads them from the file, flags and environment; this layer owns
//! their meaning.

use super::url::{Addr, UpstreamUrl};
use crate::tls::ClientTls;

/// Upstream settings after parsing the URL.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Parsed `upstream.url`.
    pub url: UpstreamUrl,
    /// See `upstream.max_connections`.
    pub max_connections: usize,
    /// See `upstream.max_leased_connections`.
    pub max_leased_connections: usize,
    /// See `upstream.timeout_ms`.
    pub timeout_ms: u64,
    /// See `upstream.connect_timeout_ms`.
    pub connect_timeout_ms: u64,
    /// See `upstream.retry_on_timeout`.
    pub retry_on_timeout: bool,
    /// See `upstream.keepalive_s`.
    pub keepalive_s: u64,
    /// See `upstream.pool_idle_timeout_ms`.
    pub pool_idle_timeout_ms: u64,
    /// The TLS connector; `Some` exactly when the URL is `rediss://`.
    pub tls: Option<ClientTls>,
    /// How the Redis deployment is found.
    pub mode: Mode,
    /// statecar's function library, made sure of on every new connection (set by the proxy,
    /// not the file).
    pub function_library: Option<FunctionLibrary>,
}

/// How a new connection makes sure statecar's function library is in Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionLibrary {
    /// `FUNCTION LIST LIBRARYNAME <name>`: a read, answered even during `CLIENT PAUSE WRITE`
    /// (when Redis would hold a FUNCTION LOAD, and with it the new connection, until the
    /// pause ends).
    pub check: bytes::Bytes,
    /// `FUNCTION LOAD <library>`, sent only when the check finds no library of that name.
    pub load: bytes::Bytes,
}

/// Where the Redis that statecar fronts lives.
#[derive(Clone, PartialEq, Eq)]
pub enum Mode {
    /// One server, at `upstream.url`.
    Standalone,
    /// A Redis Cluster, discovered from seed nodes.
    Cluster {
        /// `upstream.nodes`.
        seeds: Vec<Addr>,
    },
    /// A primary found and followed through Redis Sentinel.
    Sentinel {
        /// `upstream.sentinels`.
        sentinels: Vec<Addr>,
        /// `upstream.master_name`.
        master_name: String,
        /// `upstream.sentinel_password`.
        password: Option<String>,
    },
}

impl std::fmt::Debug for Mode {
    // The sentinel password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Standalone => write!(f, "standalone"),
            Mode::Cluster { seeds } => write!(
                f,
                "cluster({})",
                seeds
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            Mode::Sentinel {
                sentinels,
                master_name,
                ..
            } => write!(
                f,
                "sentinel({master_name} via {})",
                sentinels
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
    }
}
