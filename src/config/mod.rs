//! Configuration: the TOML file, overridden by flags and `STATECAR_*` environment variables.
//!
//! Everything is validated at start so that a bad deployment fails at once with one line that
//! names the field, instead of misbehaving under load later.

mod file;

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

use crate::protocol::Limits;
use crate::state::rules::{Rule, Rules};
use crate::tls::{ClientOptions, ClientTls, ServerTls, TlsError};
pub use crate::upstream::settings::{Mode, UpstreamConfig};
use crate::upstream::url::{Addr, UpstreamUrl};
pub use file::*;

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
pub(crate) fn escape_controls(s: &str) -> String {
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
    /// What clients may hold and how many there may be.
    pub clients: ClientLimits,
    /// See [`LimitsSection::max_decoded_size`].
    pub max_decoded_size: usize,
    /// Sidecar authentication.
    pub auth: AuthSection,
    /// Logging.
    pub log: LogSettings,
    /// The process: runtime threads and draining.
    pub process: ProcessSettings,
    /// Metrics listener.
    pub metrics_listen: Option<SocketAddr>,
    /// State-key rules.
    pub rules: Rules,
    /// Upper-cased denied commands (`NAME` or `NAME|SUB`).
    pub deny_commands: Vec<String>,
    /// TLS for the client listener (`[tls]`); `None` means plain TCP.
    pub tls: Option<ServerTls>,
}

/// Limits on clients: how many, and what each and all may hold.
#[derive(Debug, Clone)]
pub struct ClientLimits {
    /// Commands of one client whose replies are not yet written (`limits.max_pending_requests`).
    pub max_pending_requests: usize,
    /// Output-buffer limits per client class (`limits.max_output_buffer` and friends).
    pub output: OutputLimits,
    /// See [`LimitsSection::max_clients`].
    pub max_clients: usize,
    /// Bytes all clients together may hold (0: no budget); see
    /// [`LimitsSection::max_client_memory`].
    pub max_memory: usize,
    /// See [`LimitsSection::max_client_query_buffer`].
    pub max_query_buffer: usize,
}

/// Logging settings.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Log filter.
    pub level: String,
    /// JSON lines instead of text.
    pub json: bool,
}

/// Process settings.
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    /// SIGTERM drain deadline.
    pub drain_timeout_s: u64,
    /// Runtime threads (1 = one thread, 0 = one per core).
    pub worker_threads: usize,
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
        positive(
            "limits.max_client_query_buffer",
            l.max_client_query_buffer as u64,
        )?;
        let max_client_memory = l.max_client_memory.unwrap_or_else(cgroup_memory_budget);
        let max_client_memory = usize::try_from(max_client_memory)
            .map_err(|_| invalid("limits.max_client_memory", "is too large"))?;
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
            if let Some(cat) = c.strip_prefix('@')
                && crate::command::spec::Acl::named(cat).is_none()
            {
                return Err(invalid(
                    &format!("security.deny_commands[{i}]"),
                    format!("\"{c}\" is not an ACL category (see ACL CAT)"),
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
                pool_idle_timeout_ms: up.pool_idle_timeout_ms,
                tls: upstream_tls,
                mode,
                function_library: None,
            },
            limits: Limits {
                max_bulk_len: l.max_bulk_len,
                max_multibulk_len: l.max_multibulk_len,
                max_inline_len: l.max_inline_len,
            },
            clients: ClientLimits {
                max_pending_requests: l.max_pending_requests,
                output: OutputLimits {
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
                max_clients: l.max_clients,
                max_memory: max_client_memory,
                max_query_buffer: l.max_client_query_buffer,
            },
            max_decoded_size: l.max_decoded_size,
            auth: file.auth,
            log: LogSettings {
                level: log_level,
                json: log_json,
            },
            process: ProcessSettings {
                drain_timeout_s: file.server.drain_timeout_s,
                worker_threads: file.server.worker_threads,
            },
            metrics_listen,
            rules: Rules::new(rules),
            deny_commands: deny,
            tls,
        })
    }
}

#[cfg(test)]
mod tests;
