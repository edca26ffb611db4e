//! Metric names and recording helpers, so every metric is defined in one place.
//!
//! All names start with `statecar_`; labels are low-cardinality (never a key).

use metrics::{counter, gauge};

/// A connection attempt to Redis finished.
pub fn upstream_connect(ok: bool) {
    counter!("statecar_upstream_connects_total", "outcome" => if ok { "ok" } else { "error" })
        .increment(1);
}

/// A shared connection broke and is being reopened.
pub fn upstream_reconnect() {
    counter!("statecar_upstream_reconnects_total").increment(1);
}

/// Open shared upstream connections went up or down.
pub fn upstream_connections(delta: i64) {
    gauge!("statecar_upstream_shared_connections").increment(delta as f64);
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

/// A command was refused before reaching Redis.
pub fn command_rejected(reason: &'static str) {
    counter!("statecar_commands_rejected_total", "reason" => reason).increment(1);
}

/// A failed AUTH or HELLO AUTH.
pub fn auth_failure() {
    counter!("statecar_auth_failures_total").increment(1);
}

/// Installs the tracing subscriber: text or JSON lines on stderr.
pub fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

/// A state value was encoded: bytes before and after.
pub fn state_write(rule: usize, original: usize, stored: usize) {
    let rule = rule.to_string();
    counter!("statecar_state_writes_total", "rule" => rule.clone()).increment(1);
    counter!("statecar_state_bytes_original_total", "rule" => rule.clone())
        .increment(original as u64);
    counter!("statecar_state_bytes_stored_total", "rule" => rule).increment(stored as u64);
}

/// A stored value failed verification.
pub fn checksum_failure() {
    counter!("statecar_checksum_failures_total").increment(1);
}
