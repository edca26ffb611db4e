//! Metric names, the Prometheus exporter, health endpoints and logging setup.
//!
//! All names start with `statecar_`; labels are low-cardinality (never a key). Per-command
//! counters are registered once into a table indexed by [`command_id`], so counting a command
//! on the hot path is one atomic add rather than a label lookup.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Commands that get their own label value; everything else is counted as "other".
const COMMANDS: &[&str] = &[
    "OTHER",
    "GET",
    "SET",
    "MGET",
    "MSET",
    "MSETNX",
    "SETNX",
    "SETEX",
    "PSETEX",
    "GETSET",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "SETRANGE",
    "STRLEN",
    "APPEND",
    "INCR",
    "INCRBY",
    "DECR",
    "DECRBY",
    "INCRBYFLOAT",
    "DEL",
    "UNLINK",
    "EXISTS",
    "EXPIRE",
    "PEXPIRE",
    "EXPIREAT",
    "PEXPIREAT",
    "PERSIST",
    "TTL",
    "PTTL",
    "TYPE",
    "KEYS",
    "SCAN",
    "RENAME",
    "HGET",
    "HSET",
    "HMGET",
    "HMSET",
    "HGETALL",
    "HDEL",
    "HINCRBY",
    "HEXISTS",
    "HLEN",
    "HSCAN",
    "LPUSH",
    "RPUSH",
    "LPOP",
    "RPOP",
    "LRANGE",
    "LLEN",
    "LINDEX",
    "LREM",
    "LTRIM",
    "BLPOP",
    "BRPOP",
    "BLMOVE",
    "BRPOPLPUSH",
    "SADD",
    "SREM",
    "SMEMBERS",
    "SISMEMBER",
    "SCARD",
    "SSCAN",
    "ZADD",
    "ZREM",
    "ZRANGE",
    "ZRANGEBYSCORE",
    "ZSCORE",
    "ZINCRBY",
    "ZCARD",
    "ZRANK",
    "BZPOPMIN",
    "BZPOPMAX",
    "XADD",
    "XREAD",
    "XREADGROUP",
    "XACK",
    "XRANGE",
    "XLEN",
    "PUBLISH",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "UNSUBSCRIBE",
    "PUNSUBSCRIBE",
    "MULTI",
    "EXEC",
    "DISCARD",
    "WATCH",
    "UNWATCH",
    "EVAL",
    "EVALSHA",
    "SCRIPT",
    "PING",
    "ECHO",
    "INFO",
    "CLIENT",
    "HELLO",
    "AUTH",
    "SELECT",
    "QUIT",
    "RESET",
    "COMMAND",
    "CONFIG",
    "DBSIZE",
    "FLUSHDB",
    "FLUSHALL",
    "WAIT",
    "MONITOR",
    "STATE.SAVE",
    "STATE.LOAD",
    "STATE.LIST",
    "STATE.VERSIONS",
    "STATE.DELVERSION",
    "STATE.ROLLBACK",
    "STATE.STATS",
    "STATE.RULE",
];

/// Index of a command name (any case) in the metric table; 0 is "other".
///
/// Called for every command, so it is one hash lookup rather than a scan of the table.
pub fn command_id(name: &[u8]) -> u16 {
    static INDEX: OnceLock<std::collections::HashMap<&'static [u8], u16>> = OnceLock::new();
    if name.len() > 20 {
        return 0;
    }
    let mut buf = [0u8; 20];
    for (d, s) in buf.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    let index = INDEX.get_or_init(|| {
        COMMANDS
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_bytes(), i as u16))
            .collect()
    });
    index.get(&buf[..name.len()]).copied().unwrap_or(0)
}

struct Handles {
    ok: Vec<Counter>,
    err: Vec<Counter>,
    round_trip: Histogram,
    upstream: Histogram,
}

fn handles() -> &'static Handles {
    static H: OnceLock<Handles> = OnceLock::new();
    H.get_or_init(|| {
        let label = |c: &str| c.to_ascii_lowercase();
        Handles {
            ok: COMMANDS
                .iter()
                .map(|c| counter!("statecar_commands_total", "command" => label(c), "outcome" => "ok"))
                .collect(),
            err: COMMANDS
                .iter()
                .map(|c| counter!("statecar_commands_total", "command" => label(c), "outcome" => "error"))
                .collect(),
            round_trip: histogram!("statecar_command_duration_seconds"),
            upstream: histogram!("statecar_upstream_duration_seconds"),
        }
    })
}

/// Counts one command with its outcome.
pub fn command(id: u16, error: bool) {
    let h = handles();
    let table = if error { &h.err } else { &h.ok };
    if let Some(c) = table.get(id as usize) {
        c.increment(1);
    }
}

/// Time from reading a command (or pipelined batch) to having its reply for the client.
pub fn round_trip(d: Duration) {
    handles().round_trip.record(d.as_secs_f64());
}

/// Time Redis took to answer a batch on a shared connection.
pub fn upstream_latency(d: Duration) {
    handles().upstream.record(d.as_secs_f64());
}

/// A connection attempt to Redis finished.
pub fn upstream_connect(ok: bool) {
    counter!("statecar_upstream_connects_total", "outcome" => if ok { "ok" } else { "error" })
        .increment(1);
}

/// A shared connection broke and is being reopened.
pub fn upstream_reconnect() {
    counter!("statecar_upstream_reconnects_total").increment(1);
}

/// A cluster redirect (MOVED, ASK, TRYAGAIN) was followed on a client's behalf.
pub fn cluster_redirect(kind: &'static str) {
    counter!("statecar_cluster_redirects_total", "kind" => kind).increment(1);
}

/// The upstream topology changed (a new cluster slot map, or a Sentinel failover).
pub fn topology_change() {
    counter!("statecar_upstream_topology_changes_total").increment(1);
}

/// Open shared upstream connections went up or down.
pub fn upstream_connections(delta: i64) {
    gauge!("statecar_upstream_shared_connections").increment(delta as f64);
}

/// A read-only batch was sent again after its connection failed (`upstream.retry_on_timeout`).
pub fn upstream_retry() {
    counter!("statecar_upstream_retries_total").increment(1);
}

/// Upstream errors (connection failures, timeouts) answered to clients.
pub fn upstream_error(kind: &'static str) {
    counter!("statecar_upstream_errors_total", "kind" => kind).increment(1);
}

/// Leased (dedicated) connections in use went up or down.
pub fn leased_in_use(delta: i64) {
    gauge!("statecar_upstream_leased_in_use").increment(delta as f64);
}

/// A client had to wait for a dedicated connection.
pub fn lease_wait() {
    counter!("statecar_upstream_lease_waits_total").increment(1);
}

/// Client connections went up or down.
pub fn client_connections(delta: i64) {
    gauge!("statecar_client_connections").increment(delta as f64);
}

/// A client was refused or disconnected for a reason of ours.
pub fn client_rejected(reason: &'static str) {
    counter!("statecar_clients_rejected_total", "reason" => reason).increment(1);
}

/// What all clients hold together, as last accounted.
pub fn client_memory(bytes: usize) {
    gauge!("statecar_client_memory_bytes").set(bytes as f64);
}

/// A client was disconnected for holding too many unread reply bytes (`class`: normal or
/// pubsub; `limit`: hard or soft).
pub fn output_buffer_disconnect(class: &'static str, limit: &'static str) {
    counter!("statecar_client_output_buffer_disconnects_total", "class" => class, "limit" => limit)
        .increment(1);
}

/// A command was refused before reaching Redis.
pub fn command_rejected(reason: &'static str) {
    counter!("statecar_commands_rejected_total", "reason" => reason).increment(1);
}

/// A failed AUTH or HELLO AUTH.
pub fn auth_failure() {
    counter!("statecar_auth_failures_total").increment(1);
}

/// Per-rule write counters and the running totals behind the compression-ratio gauge.
struct RuleMetrics {
    writes: Counter,
    original: Counter,
    stored: Counter,
    ratio: metrics::Gauge,
    total_original: AtomicU64,
    total_stored: AtomicU64,
}

/// A state value was encoded: bytes before and after.
pub fn state_write(rule: usize, original: usize, stored: usize) {
    static RULES: OnceLock<Vec<RuleMetrics>> = OnceLock::new();
    let table = RULES.get_or_init(|| {
        (0..64)
            .map(|i| {
                let r = i.to_string();
                RuleMetrics {
                    writes: counter!("statecar_state_writes_total", "rule" => r.clone()),
                    original: counter!("statecar_state_bytes_original_total", "rule" => r.clone()),
                    stored: counter!("statecar_state_bytes_stored_total", "rule" => r.clone()),
                    ratio: gauge!("statecar_state_compression_ratio", "rule" => r),
                    total_original: AtomicU64::new(0),
                    total_stored: AtomicU64::new(0),
                }
            })
            .collect()
    });
    if let Some(m) = table.get(rule.min(63)) {
        m.writes.increment(1);
        m.original.increment(original as u64);
        m.stored.increment(stored as u64);
        let o = m
            .total_original
            .fetch_add(original as u64, Ordering::Relaxed)
            + original as u64;
        let s = m.total_stored.fetch_add(stored as u64, Ordering::Relaxed) + stored as u64;
        if s > 0 {
            m.ratio.set(o as f64 / s as f64);
        }
    }
}

/// A state value was read back: bytes stored and returned.
pub fn state_read(stored: usize, original: usize) {
    // Looked up once: a registry lookup per read was a visible share of a state GET.
    static READS: OnceLock<[Counter; 3]> = OnceLock::new();
    let [reads, stored_c, original_c] = READS.get_or_init(|| {
        [
            counter!("statecar_state_reads_total"),
            counter!("statecar_state_bytes_read_stored_total"),
            counter!("statecar_state_bytes_read_original_total"),
        ]
    });
    reads.increment(1);
    stored_c.increment(stored as u64);
    original_c.increment(original as u64);
}

/// A stored value failed verification.
pub fn checksum_failure() {
    counter!("statecar_checksum_failures_total").increment(1);
}

/// A versioned write added a version and trimmed `trimmed` old ones.
pub fn version_written(trimmed: i64) {
    counter!("statecar_versions_written_total").increment(1);
    if trimmed > 0 {
        counter!("statecar_versions_trimmed_total").increment(trimmed as u64);
    }
}

/// Publishes the configured pool sizes.
pub fn pool_max(shared: usize, leased: usize) {
    gauge!("statecar_upstream_pool_max", "kind" => "shared").set(shared as f64);
    gauge!("statecar_upstream_pool_max", "kind" => "leased").set(leased as f64);
}

/// Describes every metric (HELP text) and installs the Prometheus recorder.
pub fn install() -> Result<PrometheusHandle, String> {
    let buckets = [
        0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &buckets)
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe_counter!(
        "statecar_commands_total",
        "Commands answered, by command and outcome (ok or error reply)."
    );
    describe_histogram!(
        "statecar_command_duration_seconds",
        "Time from reading a command (or a pipelined batch) to having its reply."
    );
    describe_histogram!(
        "statecar_upstream_duration_seconds",
        "Time Redis took to answer a batch on a shared connection."
    );
    describe_counter!(
        "statecar_upstream_connects_total",
        "Connection attempts to Redis, by outcome."
    );
    describe_counter!(
        "statecar_upstream_reconnects_total",
        "Shared upstream connections that broke and were reopened."
    );
    describe_counter!(
        "statecar_cluster_redirects_total",
        "Cluster MOVED/ASK/TRYAGAIN replies followed for clients, by kind."
    );
    describe_counter!(
        "statecar_upstream_topology_changes_total",
        "New cluster slot maps installed and Sentinel failovers followed."
    );
    describe_counter!(
        "statecar_upstream_errors_total",
        "Commands answered with an upstream error, by kind."
    );
    describe_counter!(
        "statecar_upstream_retries_total",
        "Read-only commands sent again after their connection failed (upstream.retry_on_timeout)."
    );
    describe_gauge!(
        "statecar_upstream_shared_connections",
        "Open shared (pipelined) upstream connections."
    );
    describe_gauge!(
        "statecar_upstream_leased_in_use",
        "Dedicated upstream connections leased to clients."
    );
    describe_gauge!(
        "statecar_upstream_pool_max",
        "Configured shared connections per (db, protocol) and dedicated connections in all."
    );
    describe_counter!(
        "statecar_upstream_lease_waits_total",
        "Times a client waited for a free dedicated connection."
    );
    describe_gauge!("statecar_client_connections", "Connected clients.");
    describe_gauge!(
        "statecar_client_memory_bytes",
        "Request and reply bytes all clients hold in statecar (limits.max_client_memory bounds it)."
    );
    describe_counter!(
        "statecar_clients_rejected_total",
        "Clients refused or disconnected by statecar, by reason."
    );
    describe_counter!(
        "statecar_client_output_buffer_disconnects_total",
        "Clients disconnected for unread replies over limits.*output_buffer*, by class and limit."
    );
    describe_counter!(
        "statecar_commands_rejected_total",
        "Commands refused before reaching Redis, by reason."
    );
    describe_counter!(
        "statecar_auth_failures_total",
        "Failed AUTH / HELLO AUTH attempts."
    );
    describe_counter!(
        "statecar_state_writes_total",
        "State values written, by rule index."
    );
    describe_counter!(
        "statecar_state_bytes_original_total",
        "Bytes clients wrote to state keys, by rule index."
    );
    describe_counter!(
        "statecar_state_bytes_stored_total",
        "Bytes those values occupy in Redis (header included), by rule index."
    );
    describe_counter!(
        "statecar_state_reads_total",
        "State values read and verified."
    );
    describe_counter!(
        "statecar_state_bytes_read_stored_total",
        "Stored bytes of state values read."
    );
    describe_counter!(
        "statecar_state_bytes_read_original_total",
        "Decoded bytes of state values read."
    );
    describe_counter!(
        "statecar_checksum_failures_total",
        "Stored values that failed verification (never served)."
    );
    describe_counter!(
        "statecar_versions_written_total",
        "Versions added to state key histories."
    );
    describe_counter!(
        "statecar_versions_trimmed_total",
        "Old versions removed to keep histories at max_versions."
    );
    describe_gauge!(
        "statecar_state_compression_ratio",
        "Bytes written / bytes stored since start, by rule index."
    );
    describe_gauge!("statecar_up", "1 while the process runs.");
    describe_gauge!(
        "statecar_upstream_up",
        "1 when Redis answered the last health probe."
    );
    gauge!("statecar_up").set(1.0);
    // Register the counters that matter for alerts at zero, so they exist before the first event.
    for name in [
        "statecar_checksum_failures_total",
        "statecar_auth_failures_total",
        "statecar_upstream_reconnects_total",
        "statecar_upstream_topology_changes_total",
        "statecar_upstream_retries_total",
        "statecar_upstream_lease_waits_total",
        "statecar_versions_written_total",
        "statecar_versions_trimmed_total",
        "statecar_state_reads_total",
    ] {
        counter!(name).absolute(0);
    }
    for reason in [
        "max_clients",
        "tls_handshake",
        "output_buffer",
        "memory_budget",
        "query_buffer",
        "client_kill",
    ] {
        counter!("statecar_clients_rejected_total", "reason" => reason).absolute(0);
    }
    for class in ["normal", "pubsub"] {
        for limit in ["hard", "soft"] {
            counter!("statecar_client_output_buffer_disconnects_total", "class" => class, "limit" => limit)
                .absolute(0);
        }
    }
    for reason in ["noauth", "protocol_error", "denied"] {
        counter!("statecar_commands_rejected_total", "reason" => reason).absolute(0);
    }
    gauge!("statecar_client_connections").set(0.0);
    gauge!("statecar_client_memory_bytes").set(0.0);
    gauge!("statecar_upstream_leased_in_use").set(0.0);
    gauge!("statecar_upstream_shared_connections").set(0.0);
    Ok(handle)
}

/// Serves `/metrics`, `/healthz` and `/readyz` until the process ends; `ready` says whether
/// the upstream answers (the upstream layer keeps it current).
pub async fn serve_http(listener: TcpListener, handle: PrometheusHandle, ready: Arc<AtomicBool>) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let handle = handle.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            // Read the whole request head: closing with unread bytes would reset the connection.
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let read_head = async {
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            };
            match tokio::time::timeout(Duration::from_secs(5), read_head).await {
                Ok(true) => {}
                _ => return,
            }
            let n = buf.len();
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let path = path.split('?').next().unwrap_or(path);
            let (status, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", handle.render()),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" => {
                    if ready.load(Ordering::Relaxed) {
                        ("200 OK", "text/plain", "ready\n".to_string())
                    } else {
                        (
                            "503 Service Unavailable",
                            "text/plain",
                            "upstream unreachable\n".to_string(),
                        )
                    }
                }
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(body.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// Installs the tracing subscriber: text or JSON lines on stderr.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal: not in files, pipes or log collectors.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids_are_case_insensitive_and_default_to_other() {
        assert_eq!(command_id(b"get"), command_id(b"GET"));
        assert_ne!(command_id(b"GET"), 0);
        assert_eq!(COMMANDS[command_id(b"state.load") as usize], "STATE.LOAD");
        assert_eq!(command_id(b"NOSUCHCOMMAND"), 0);
        assert_eq!(command_id(b"a-name-longer-than-twenty-bytes"), 0);
    }
}
