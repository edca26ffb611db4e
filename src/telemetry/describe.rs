//! Every metric's description, and the exporter.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
    describe_counter!(
        "statecar_arguments_streamed_total",
        "Commands whose big argument went to Redis while it arrived, on a dedicated connection."
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
        "statecar_arguments_streamed_total",
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

#[cfg(test)]
mod tests {
    /// Every metric described here has its row in OPERATIONS.md's metrics table, so an operator
    /// reading the docs sees all of them.
    #[test]
    fn every_metric_is_in_the_operations_table() {
        let source = include_str!("describe.rs");
        let docs = include_str!("../../docs/OPERATIONS.md");
        let mut missing = Vec::new();
        let mut seen = 0;
        for piece in source.split('"').skip(1).step_by(2) {
            if !piece.starts_with("statecar_") || piece.contains(' ') {
                continue;
            }
            seen += 1;
            if !docs.contains(&format!("| `{piece}` |")) {
                missing.push(piece);
            }
        }
        assert!(seen > 20, "found only {seen} metric names in describe.rs");
        assert!(
            missing.is_empty(),
            "metrics missing from docs/OPERATIONS.md: {missing:?}"
        );
    }
}
