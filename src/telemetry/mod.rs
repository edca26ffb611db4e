//! Metric names, the Prometheus exporter, health endpoints and logging setup.
//!
//! All names start with `statecar_`; labels are low-cardinality (never a key). Per-command
//! counters are registered once into a table indexed by [`command_id`], so counting a command
//! on the hot path is one atomic add rather than a label lookup.

mod describe;
mod http;
mod logging;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics::{Counter, Histogram, counter, gauge, histogram};

pub use describe::install;
pub use http::serve_http;
pub use logging::init_logging;

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

/// A big argument went to Redis while it arrived, on a dedicated connection.
pub fn argument_streamed() {
    counter!("statecar_arguments_streamed_total").increment(1);
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
