//! Configuration: the TOML file, overridden by flags and `STATECAR_*` environment variables.
//!
//! Everything is validated at start so that a bad deployment fails at once with one line that
//! names the field, instead of misbehaving under load later.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::protocol::Limits;
use crate::state::rules::{Rule, RuleConfig, Rules};
use crate::tls::{ClientOptions, ClientTls, ServerTls, TlsError};
use crate::upstream::url::{Addr, UpstreamUrl};

/// A configuration problem, always naming the field.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("config file {path}: {field}: {message}")]
    Parse {
        /// Which file.
        path: String,
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("config: {field}: {message}")]
    Invalid {
        /// Dotted path of the offending field.
        field: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: escape_controls(field),
        message: escape_controls(&message.into()),
    }
}

/// Errors quote the values they refuse, and a TOML string may hold a newline; escaping control
/// characters keeps every configuration error on one line (what log collectors and the
/// Kubernetes termination message expect).
fn escape_controls(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

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
        }
    }
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

/// Values given on the command line or in the environment; they win over the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// `--listen` / STATECAR_LISTEN
    pub listen: Option<String>,
    /// `--upstream` / STATECAR_UPSTREAM
    pub upstream: Option<String>,
    /// `--upstream-password` / STATECAR_UPSTREAM_PASSWORD
    pub upstream_password: Option<String>,
    /// `--metrics-listen` / STATECAR_METRICS_LISTEN
    pub metrics_listen: Option<String>,
    /// `--log-level` / STATECAR_LOG_LEVEL
    pub log_level: Option<String>,
    /// `--log-format` / STATECAR_LOG_FORMAT
    pub log_format: Option<String>,
}

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client listener.
    pub listen: SocketAddr,
    /// Where Redis is and how to talk to it.
    pub upstream: UpstreamConfig,
    /// Client input limits.
    pub limits: Limits,
    /// Per-client buffering limits.
    pub max_pending_requests: usize,
    /// Output-buffer limits per client class (`limits.max_output_buffer` and friends).
    pub output_limits: OutputLimits,
    /// See [`LimitsSection::max_decoded_size`].
    pub max_decoded_size: usize,
    /// See [`LimitsSection::max_clients`].
    pub max_clients: usize,
    /// Sidecar authentication.
    pub auth: AuthSection,
    /// Log filter.
    pub log_level: String,
    /// Log as JSON lines instead of text.
    pub log_json: bool,
    /// SIGTERM drain deadline.
    pub drain_timeout_s: u64,
    /// Runtime threads (1 = one thread, 0 = one per core).
    pub worker_threads: usize,
    /// Metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// State-key rules.
    pub rules: Rules,
    /// Upper-cased denied commands (`NAME` or `NAME|SUB`).
    pub deny_commands: Vec<String>,
    /// TLS for the client listener (`[tls]`); `None` means plain TCP.
    pub tls: Option<ServerTls>,
}

/// Upstream settings after parsing the URL.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Parsed `upstream.url`.
    pub url: UpstreamUrl,
    /// See [`UpstreamSection::max_connections`].
    pub max_connections: usize,
    /// See [`UpstreamSection::max_leased_connections`].
    pub max_leased_connections: usize,
    /// See [`UpstreamSection::timeout_ms`].
    pub timeout_ms: u64,
    /// See [`UpstreamSection::connect_timeout_ms`].
    pub connect_timeout_ms: u64,
    /// See [`UpstreamSection::retry_on_timeout`].
    pub retry_on_timeout: bool,
    /// See [`UpstreamSection::keepalive_s`].
    pub keepalive_s: u64,
    /// The TLS connector; `Some` exactly when the URL is `rediss://`.
    pub tls: Option<ClientTls>,
    /// How the Redis deployment is found.
    pub mode: Mode,
    /// `FUNCTION LOAD <library>` sent on every new connection (set by the proxy, not the file).
    pub function_load: Option<bytes::Bytes>,
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

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse::<SocketAddr>().map_err(|_| {
        invalid(
            field,
            format!("\"{s}\" is not an address like 127.0.0.1:6380"),
        )
    })
}

fn tls_invalid(section: &str, e: TlsError) -> ConfigError {
    invalid(&format!("{section}.{}", e.field), e.message)
}

/// Loads `[tls]`; both files are required once the section is present.
fn server_tls(s: &TlsSection) -> Result<ServerTls, ConfigError> {
    let required = |field: &str, v: &Option<PathBuf>| match v {
        Some(p) if !p.as_os_str().is_empty() => Ok(p.clone()),
        _ => Err(invalid(
            field,
            "is required when [tls] is present (a PEM file path)",
        )),
    };
    let cert = required("tls.cert_file", &s.cert_file)?;
    let key = required("tls.key_file", &s.key_file)?;
    ServerTls::load(&cert, &key, s.client_ca_file.as_deref()).map_err(|e| tls_invalid("tls", e))
}

/// Builds the connector for a `rediss://` URL from `[upstream.tls]` (or its defaults).
fn upstream_tls(
    url: &UpstreamUrl,
    s: Option<&UpstreamTlsSection>,
) -> Result<ClientTls, ConfigError> {
    let default = UpstreamTlsSection::default();
    let s = s.unwrap_or(&default);
    let opts = ClientOptions {
        ca_file: s.ca_file.as_deref(),
        cert_file: s.cert_file.as_deref(),
        key_file: s.key_file.as_deref(),
        server_name: s.server_name.as_deref(),
        insecure_skip_verify: s.insecure_skip_verify,
    };
    if s.insecure_skip_verify && s.ca_file.is_some() {
        return Err(invalid(
            "upstream.tls.insecure_skip_verify",
            "cannot be combined with upstream.tls.ca_file (choose one)",
        ));
    }
    ClientTls::load(&url.host, &opts).map_err(|e| {
        if e.field == "server_name" && s.server_name.is_none() {
            invalid(
                "upstream.url",
                format!(
                    "host \"{}\" cannot be verified by TLS; set upstream.tls.server_name",
                    url.host
                ),
            )
        } else {
            tls_invalid("upstream.tls", e)
        }
    })
}

fn positive(field: &str, v: u64) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(invalid(field, "must be greater than 0"));
    }
    Ok(())
}

fn addrs(field: &str, list: &[String]) -> Result<Vec<Addr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| Addr::parse(s).map_err(|m| invalid(&format!("{field}[{i}]"), m)))
        .collect()
}

/// Validates `upstream.mode` and the fields that go with it.
fn upstream_mode(up: &UpstreamSection, url: &UpstreamUrl) -> Result<Mode, ConfigError> {
    let unused = |field: &str, mode: &str| {
        invalid(
            field,
            format!("is not used with upstream.mode = \"{mode}\" (remove it)"),
        )
    };
    match up.mode.as_str() {
        "standalone" => {
            if !up.nodes.is_empty() {
                return Err(unused("upstream.nodes", "standalone"));
            }
            if !up.sentinels.is_empty() {
                return Err(unused("upstream.sentinels", "standalone"));
            }
            Ok(Mode::Standalone)
        }
        "cluster" => {
            if up.nodes.is_empty() {
                return Err(invalid(
                    "upstream.nodes",
                    "must list at least one cluster node (host:port) when upstream.mode = \"cluster\"",
                ));
            }
            if !up.sentinels.is_empty() {
                return Err(unused("upstream.sentinels", "cluster"));
            }
            if url.db != 0 {
                return Err(invalid(
                    "upstream.url",
                    "selects a database other than 0, but Redis Cluster has only database 0",
                ));
            }
            Ok(Mode::Cluster {
                seeds: addrs("upstream.nodes", &up.nodes)?,
            })
        }
        "sentinel" => {
            if up.sentinels.is_empty() {
                return Err(invalid(
                    "upstream.sentinels",
                    "must list at least one sentinel (host:port) when upstream.mode = \"sentinel\"",
                ));
            }
            if !up.nodes.is_empty() {
                return Err(unused("upstream.nodes", "sentinel"));
            }
            let master_name = match up.master_name.as_deref() {
                Some(m) if !m.is_empty() => m.to_string(),
                _ => {
                    return Err(invalid(
                        "upstream.master_name",
                        "is required when upstream.mode = \"sentinel\"",
                    ));
                }
            };
            Ok(Mode::Sentinel {
                sentinels: addrs("upstream.sentinels", &up.sentinels)?,
                master_name,
                password: up.sentinel_password.clone(),
            })
        }
        other => Err(invalid(
            "upstream.mode",
            format!("\"{other}\" is not standalone, cluster or sentinel"),
        )),
    }
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

impl Config {
    /// Merges file and overrides, then validates everything.
    pub fn build(file: FileConfig, o: &Overrides) -> Result<Config, ConfigError> {
        let listen_s = o
            .listen
            .clone()
            .or(file.listen.clone())
            .unwrap_or_else(|| "127.0.0.1:6380".to_string());
        let listen = parse_addr("listen", &listen_s)?;
        let up = &file.upstream;
        let url_s = o.upstream.clone().unwrap_or_else(|| up.url.clone());
        let mut url = UpstreamUrl::parse(&url_s).map_err(|m| invalid("upstream.url", m))?;
        if let Some(p) = &o.upstream_password {
            url.password = Some(p.clone());
        }
        positive("upstream.max_connections", up.max_connections as u64)?;
        if up.max_connections > 1024 {
            return Err(invalid("upstream.max_connections", "must be at most 1024"));
        }
        positive(
            "upstream.max_leased_connections",
            up.max_leased_connections as u64,
        )?;
        positive("upstream.timeout_ms", up.timeout_ms)?;
        positive("upstream.connect_timeout_ms", up.connect_timeout_ms)?;
        let l = &file.limits;
        positive("limits.max_bulk_len", l.max_bulk_len as u64)?;
        positive("limits.max_multibulk_len", l.max_multibulk_len as u64)?;
        positive("limits.max_inline_len", l.max_inline_len as u64)?;
        positive("limits.max_pending_requests", l.max_pending_requests as u64)?;
        positive("limits.max_decoded_size", l.max_decoded_size as u64)?;
        positive("limits.max_clients", l.max_clients as u64)?;
        if l.max_bulk_len > i32::MAX as usize {
            return Err(invalid("limits.max_bulk_len", "must be at most 2147483647"));
        }
        if l.max_decoded_size > u32::MAX as usize {
            return Err(invalid(
                "limits.max_decoded_size",
                "must be at most 4294967295",
            ));
        }
        for (i, u) in file.auth.users.iter().enumerate() {
            if u.name.is_empty() || u.name.contains(char::is_whitespace) {
                return Err(invalid(
                    &format!("auth.users[{i}].name"),
                    "must be a non-empty word",
                ));
            }
        }
        if file.auth.password.as_deref() == Some("") {
            return Err(invalid(
                "auth.password",
                "must not be empty (omit it to disable auth)",
            ));
        }
        let log_level = o.log_level.clone().unwrap_or(file.log.level.clone());
        if tracing_subscriber::EnvFilter::try_new(&log_level).is_err() {
            return Err(invalid(
                "log.level",
                format!("\"{log_level}\" is not a level or filter"),
            ));
        }
        let log_format = o.log_format.clone().unwrap_or(file.log.format.clone());
        let log_json = match log_format.as_str() {
            "text" => false,
            "json" => true,
            other => {
                return Err(invalid(
                    "log.format",
                    format!("\"{other}\" is not text or json"),
                ));
            }
        };
        let metrics_listen = match o.metrics_listen.clone().or(file.metrics.listen.clone()) {
            Some(s) if !s.is_empty() => Some(parse_addr("metrics.listen", &s)?),
            _ => None,
        };
        let mut deny = Vec::new();
        for (i, c) in file.security.deny_commands.iter().enumerate() {
            if c.is_empty() || c.contains(char::is_whitespace) {
                return Err(invalid(
                    &format!("security.deny_commands[{i}]"),
                    format!("\"{c}\" is not a command name"),
                ));
            }
            deny.push(c.to_ascii_uppercase());
        }
        let upstream_tls = match (url.tls, up.tls.as_ref()) {
            (true, s) => Some(upstream_tls(&url, s)?),
            (false, Some(_)) => {
                return Err(invalid(
                    "upstream.tls",
                    format!(
                        "is set but upstream.url is {} (plain TCP); use a rediss:// URL or remove [upstream.tls]",
                        url.redacted()
                    ),
                ));
            }
            (false, None) => None,
        };
        let mode = upstream_mode(up, &url)?;
        let tls = file.tls.as_ref().map(server_tls).transpose()?;
        let mut rules = Vec::new();
        for (i, r) in file.state.iter().enumerate() {
            // Rule errors read "state[i].field: what is wrong".
            let rule = Rule::from_config(i, r).map_err(|m| match m.split_once(": ") {
                Some((field, message)) => invalid(field, message),
                None => invalid(&format!("state[{i}]"), m),
            })?;
            // A dictionary lives under one key, which in a cluster sits in one slot that the
            // values' nodes cannot read in their scripts and replies.
            if rule.dictionary && matches!(mode, Mode::Cluster { .. }) {
                return Err(invalid(
                    &format!("state[{i}].dictionary"),
                    "auto is not supported with upstream.mode = \"cluster\"".to_string(),
                ));
            }
            rules.push(rule);
        }
        Ok(Config {
            listen,
            upstream: UpstreamConfig {
                url,
                max_connections: up.max_connections,
                max_leased_connections: up.max_leased_connections,
                timeout_ms: up.timeout_ms,
                connect_timeout_ms: up.connect_timeout_ms,
                retry_on_timeout: up.retry_on_timeout,
                keepalive_s: up.keepalive_s,
                tls: upstream_tls,
                mode,
                function_load: None,
            },
            limits: Limits {
                max_bulk_len: l.max_bulk_len,
                max_multibulk_len: l.max_multibulk_len,
                max_inline_len: l.max_inline_len,
            },
            max_pending_requests: l.max_pending_requests,
            output_limits: OutputLimits {
                normal: BufferLimit {
                    hard: l.max_output_buffer,
                    soft: l.output_buffer_soft_limit,
                    soft_for: std::time::Duration::from_secs(l.output_buffer_soft_s),
                },
                pubsub: BufferLimit {
                    hard: l.pubsub_max_output_buffer,
                    soft: l.pubsub_output_buffer_soft_limit,
                    soft_for: std::time::Duration::from_secs(l.pubsub_output_buffer_soft_s),
                },
            },
            max_decoded_size: l.max_decoded_size,
            max_clients: l.max_clients,
            auth: file.auth,
            log_level,
            log_json,
            drain_timeout_s: file.server.drain_timeout_s,
            worker_threads: file.server.worker_threads,
            metrics_listen,
            rules: Rules::new(rules),
            deny_commands: deny,
            tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(toml: &str) -> Result<Config, ConfigError> {
        Config::build(FileConfig::parse(toml, "test.toml")?, &Overrides::default())
    }

    #[test]
    fn issue_shape_parses() {
        let c = build(
            r#"
listen = "127.0.0.1:6380"
[upstream]
url = "redis://127.0.0.1:6379/0"   # redis://[user:password@]host:port[/db]
max_connections = 8                 # shared upstream connections
timeout_ms = 5000
connect_timeout_ms = 2000
"#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 6380);
        assert_eq!(c.upstream.max_connections, 8);
        assert_eq!(c.upstream.url.db, 0);
    }

    /// Found by the config_load fuzz target: a multi-line TOML string quoted back in an error.
    #[test]
    fn errors_quoting_a_multi_line_value_stay_on_one_line() {
        let text = "listen = \"\"\"\"128\n[rruption on = \"previous_en = \"\"\"\n";
        let e = build(text).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.contains("listen") && e.contains("128\\n[rruption"), "{e}");
        let e = build("[upstream]\nurl = \"\"\"redis://a\nb:1\"\"\"\n")
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n') && e.contains("upstream.url"), "{e}");
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = build("").unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:6380");
        assert_eq!(c.upstream.url.host, "127.0.0.1");
        assert_eq!(c.upstream.url.port, 6379);
        assert!(c.rules.is_empty());
    }

    #[test]
    fn unknown_key_names_the_field() {
        let e = build("[upstream]\nmax_conections = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.max_conections"), "{e}");
        assert!(e.contains("unknown field"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn bad_value_names_the_field() {
        let e = build("[upstream]\ntimeout_ms = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.timeout_ms"), "{e}");
        let e = build("[upstream]\nmax_connections = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.max_connections"), "{e}");
        let e = build("listen = \"nowhere\"\n").unwrap_err().to_string();
        assert!(e.contains("listen"), "{e}");
        let e = build("[upstream]\nurl = \"http://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.url"), "{e}");
    }

    #[test]
    fn state_rule_options_are_validated_with_the_upstream() {
        let rule = "[[state]]\npattern = \"d:*\"\ncompression = \"zstd\"\ndictionary = \"auto\"\n";
        let c = build(rule).unwrap();
        assert!(
            c.rules
                .iter()
                .next()
                .is_some_and(|r| r.dictionary && r.delta)
        );
        let e = build(&format!(
            "[upstream]\nmode = \"cluster\"\nnodes = [\"127.0.0.1:7000\"]\n{rule}"
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "state[0].dictionary: auto is not supported with upstream.mode = \"cluster\""
            ),
            "{e}"
        );
        let e = build("[[state]]\npattern = \"x:*\"\ndelta_chain = 0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("state[0].delta_chain"), "{e}");
    }

    #[test]
    fn tls_sections() {
        // rediss:// gets a connector even without [upstream.tls] (webpki roots, URL host as SNI).
        let c = build("[upstream]\nurl = \"rediss://redis.example.com:6380\"\n").unwrap();
        let tls = c.upstream.tls.as_ref().expect("connector for rediss://");
        assert_eq!(
            tls.server_name,
            rustls::pki_types::ServerName::try_from("redis.example.com").unwrap()
        );
        assert!(c.tls.is_none());
        assert!(build("").unwrap().upstream.tls.is_none());

        // [upstream.tls] with a plain redis:// URL is a mistake, not a silent downgrade.
        let e = build("[upstream.tls]\nserver_name = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("upstream.tls:"), "{e}");
        assert!(e.contains("rediss://"), "{e}");

        let e = build("[tls]\nkey_file = \"k.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.cert_file"), "{e}");
        let e = build("[tls]\ncert_file = \"/nonexistent/c.pem\"\nkey_file = \"k.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config: tls.cert_file: cannot read /nonexistent/c.pem"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let e = build("[tls]\ncert_file = \"c\"\nkey_file = \"k\"\nclient_ca = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.client_ca"), "{e}");

        let e = build(
            "[upstream]\nurl = \"rediss://h\"\n[upstream.tls]\nca_file = \"/nonexistent/ca.pem\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream.tls.ca_file: cannot read"), "{e}");
        let e = build(
            "[upstream]\nurl = \"rediss://h\"\n[upstream.tls]\nca_file = \"c\"\n\
             insecure_skip_verify = true\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream.tls.insecure_skip_verify"), "{e}");
        let c = build(
            "[upstream]\nurl = \"rediss://10.1.2.3\"\n[upstream.tls]\n\
             server_name = \"redis.internal\"\ninsecure_skip_verify = true\n",
        )
        .unwrap();
        let tls = c.upstream.tls.as_ref().unwrap();
        assert!(tls.insecure);
        assert_eq!(
            tls.server_name,
            rustls::pki_types::ServerName::try_from("redis.internal").unwrap()
        );
        // Config stays Clone + Debug, and Debug prints no key material.
        let dbg = format!("{:?}", c.clone());
        assert!(dbg.contains("ClientTls"), "{dbg}");
    }

    #[test]
    fn overrides_win_over_file() {
        let f = FileConfig::parse("listen = \"127.0.0.1:1\"\n", "t").unwrap();
        let o = Overrides {
            listen: Some("127.0.0.1:2".into()),
            upstream: Some("redis://u:p@10.0.0.1:7000/3".into()),
            ..Default::default()
        };
        let c = Config::build(f, &o).unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.upstream.url.port, 7000);
        assert_eq!(c.upstream.url.db, 3);
        assert_eq!(c.upstream.url.username.as_deref(), Some("u"));
    }
}
