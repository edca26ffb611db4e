//! The configuration file as written: TOML sections, parsed with serde; every field is checked
//! (and given its meaning) by [`super::Config::build`].

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, escape_controls};
use crate::protocol::Limits;
use crate::state::rules::RuleConfig;

/// The TOML file as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Client listener address.
    pub listen: Option<String>,
    /// The Redis behind the proxy.
    #[serde(default)]
    pub upstream: UpstreamSection,
    /// Limits on client input and buffering.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Optional authentication for the sidecar itself.
    #[serde(default)]
    pub auth: AuthSection,
    /// Logging.
    #[serde(default)]
    pub log: LogSection,
    /// Process-level settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// Commands refused to clients.
    #[serde(default)]
    pub security: SecuritySection,
    /// TLS on the client listener; absent means plain TCP.
    pub tls: Option<TlsSection>,
    /// State-key rules, first match wins.
    #[serde(default)]
    pub state: Vec<RuleConfig>,
}

/// `[upstream]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSection {
    /// `redis://[user:password@]host:port[/db]`
    pub url: String,
    /// Shared, pipelined connections per (db, protocol).
    pub max_connections: usize,
    /// Dedicated connections for transactions, pub/sub and blocking commands, in all.
    pub max_leased_connections: usize,
    /// Reply deadline for non-blocking commands.
    pub timeout_ms: u64,
    /// TCP connect plus handshake deadline.
    pub connect_timeout_ms: u64,
    /// Retry a read-only command once when its connection failed before it was answered.
    pub retry_on_timeout: bool,
    /// TCP keepalive interval; 0 disables.
    pub keepalive_s: u64,
    /// Shared connections of a (db, protocol, identity) that no client has used for this long
    /// are closed; 0 keeps them for the life of the process.
    pub pool_idle_timeout_ms: u64,
    /// TLS settings for `rediss://` URLs.
    pub tls: Option<UpstreamTlsSection>,
    /// `standalone` (default), `cluster` or `sentinel`.
    pub mode: String,
    /// Cluster seed nodes (`host:port`); the rest of the cluster is learned from them.
    pub nodes: Vec<String>,
    /// Sentinel addresses (`host:port`).
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master_name: Option<String>,
    /// Password for the sentinels themselves (Redis's `requirepass` on the sentinel), if any.
    pub sentinel_password: Option<String>,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        UpstreamSection {
            url: "redis://127.0.0.1:6379".into(),
            max_connections: 8,
            max_leased_connections: 256,
            timeout_ms: 5000,
            connect_timeout_ms: 2000,
            retry_on_timeout: false,
            keepalive_s: 60,
            pool_idle_timeout_ms: 60_000,
            tls: None,
            mode: "standalone".into(),
            nodes: Vec::new(),
            sentinels: Vec::new(),
            master_name: None,
            sentinel_password: None,
        }
    }
}

/// `[tls]`: the client listener speaks TLS.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain presented to clients (leaf first).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the leaf certificate.
    pub key_file: Option<PathBuf>,
    /// PEM CA certificates; when set, clients must present a certificate signed by one (mTLS).
    pub client_ca_file: Option<PathBuf>,
}

/// `[upstream.tls]`: how `rediss://` connections verify Redis and identify themselves.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// PEM CA certificates for Redis's certificate; default: the bundled webpki (Mozilla) roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for Redis's `tls-auth-clients yes`.
    pub cert_file: Option<PathBuf>,
    /// Its private key.
    pub key_file: Option<PathBuf>,
    /// Name sent as SNI and verified in the certificate; default: the URL's host.
    pub server_name: Option<String>,
    /// Do not verify Redis's certificate at all (logged loudly; for testing only).
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

/// `[limits]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest bulk string a client may send (Redis: proto-max-bulk-len).
    pub max_bulk_len: usize,
    /// Most arguments in one command.
    pub max_multibulk_len: usize,
    /// Longest inline command.
    pub max_inline_len: usize,
    /// Commands read from one client whose replies are not yet written.
    pub max_pending_requests: usize,
    /// Hard limit on reply bytes held for a client that does not read them: over it the client
    /// is disconnected at once (Redis: client-output-buffer-limit normal, hard). 0: no limit.
    pub max_output_buffer: usize,
    /// Soft limit: held reply bytes over this for `output_buffer_soft_s` seconds in a row
    /// disconnect the client. 0: no soft limit.
    pub output_buffer_soft_limit: usize,
    /// How long a client may stay over `output_buffer_soft_limit`.
    pub output_buffer_soft_s: u64,
    /// Hard limit for pub/sub clients (Redis: client-output-buffer-limit pubsub 32mb).
    pub pubsub_max_output_buffer: usize,
    /// Soft limit for pub/sub clients (Redis: 8mb).
    pub pubsub_output_buffer_soft_limit: usize,
    /// Seconds a pub/sub client may stay over its soft limit (Redis: 60).
    pub pubsub_output_buffer_soft_s: u64,
    /// Largest decoded state value (a forged header cannot make us allocate more).
    pub max_decoded_size: usize,
    /// Most client connections at once; more are refused with an error.
    pub max_clients: usize,
    /// Request and reply bytes all clients together may hold in the sidecar; over it, the client
    /// holding the most is disconnected (Redis: maxmemory-clients). Absent: half the container's
    /// memory limit (cgroup memory.max) when there is one, else no budget. 0: no budget.
    pub max_client_memory: Option<u64>,
    /// Input bytes one client may have buffered (an unfinished command); over it the client is
    /// disconnected (Redis: client-query-buffer-limit, 1 GB).
    pub max_client_query_buffer: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let l = Limits::default();
        LimitsSection {
            max_bulk_len: l.max_bulk_len,
            max_multibulk_len: l.max_multibulk_len,
            max_inline_len: l.max_inline_len,
            max_pending_requests: 1024,
            max_output_buffer: 64 * 1024 * 1024,
            output_buffer_soft_limit: 16 * 1024 * 1024,
            output_buffer_soft_s: 10,
            pubsub_max_output_buffer: 32 * 1024 * 1024,
            pubsub_output_buffer_soft_limit: 8 * 1024 * 1024,
            pubsub_output_buffer_soft_s: 60,
            max_decoded_size: 512 * 1024 * 1024,
            max_clients: 10_000,
            max_client_memory: None,
            max_client_query_buffer: 1024 * 1024 * 1024,
        }
    }
}

/// Half the memory limit of the cgroup statecar runs in (a Kubernetes container's limit), if
/// there is one: the default client memory budget.
pub(super) fn cgroup_memory_budget() -> u64 {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let limit = read("/sys/fs/cgroup/memory.max")
        .or_else(|| read("/sys/fs/cgroup/memory/memory.limit_in_bytes"))
        .and_then(|s| s.trim().parse::<u64>().ok())
        // cgroup v1 reports "no limit" as a huge number.
        .filter(|&n| n > 0 && n < (1 << 62));
    limit.map_or(0, |n| n / 2)
}

/// One class of Redis-style client-output-buffer-limit: reply bytes received from Redis (or made
/// by statecar) and not yet accepted by the client's socket. 0 disables a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimit {
    /// Over this, the client is disconnected at once.
    pub hard: usize,
    /// Over this for `soft_for` in a row, the client is disconnected.
    pub soft: usize,
    /// How long a client may stay over `soft`.
    pub soft_for: std::time::Duration,
}

/// Output-buffer limits: one class for ordinary clients, one for clients receiving pub/sub
/// messages (as Redis's `normal` and `pubsub` classes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// Ordinary clients.
    pub normal: BufferLimit,
    /// Clients that have received pub/sub messages or RESP3 pushes.
    pub pubsub: BufferLimit,
}

/// `[auth]`: a password (default user) and/or named users, as Redis's requirepass and ACL users.
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// Password of the `default` user.
    pub password: Option<String>,
    /// Named users.
    #[serde(default)]
    pub users: Vec<UserConfig>,
}

/// One `[[auth.users]]` entry.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// User name for `AUTH name password`.
    pub name: String,
    /// Its password.
    pub password: String,
}

/// `[log]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// error | warn | info | debug | trace, or a tracing filter.
    pub level: String,
    /// text | json
    pub format: String,
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[server]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// How long SIGTERM waits for in-flight commands before closing connections anyway.
    pub drain_timeout_s: u64,
    /// Runtime threads: 1 (default) runs everything on one thread; 0 means one per core.
    pub worker_threads: usize,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            drain_timeout_s: 30,
            worker_threads: 1,
        }
    }
}

/// `[security]`
#[derive(Debug, Deserialize, Default, Clone)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// Commands (or `COMMAND|SUBCOMMAND`, e.g. `CONFIG|SET`) clients may not run through the sidecar.
    pub deny_commands: Vec<String>,
}

/// `[metrics]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// Address of the /metrics, /healthz and /readyz listener; absent means off.
    pub listen: Option<String>,
}

impl FileConfig {
    /// Reads and parses a TOML file, reporting the dotted path of a bad field.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        FileConfig::parse(&text, &path.display().to_string())
    }

    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            field: line_of(text, e.span()),
            message: one_line(e.message()),
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let inner = e.into_inner();
            ConfigError::Parse {
                path: origin.to_string(),
                field: if field == "." {
                    line_of(text, inner.span())
                } else {
                    escape_controls(&field)
                },
                message: one_line(inner.message()),
            }
        })
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match span {
        Some(r) => {
            let line = text[..r.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}")
        }
        None => "(file)".to_string(),
    }
}
