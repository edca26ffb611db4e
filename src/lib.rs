//! statecar: a Redis-protocol sidecar proxy that stores configured "state keys" compressed,
//! checksummed and versioned, and everything else untouched.
//!
//! A request travels down this list and its reply back up; nothing below imports anything above:
//! server (accept, drain) -> session (one client) -> command (the table) -> state (rules,
//! envelope, versions) -> upstream (shared and leased connections) -> protocol (RESP framing).

pub mod auth;
pub mod command;
pub mod config;
pub mod offline;
pub mod protocol;
pub mod reply;
pub mod server;
pub mod session;
pub mod state;
pub mod telemetry;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Starts the proxy with `cfg` and runs until SIGTERM or SIGINT, then drains.
pub async fn run(cfg: Arc<config::Config>) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let upstream = upstream::Upstream::new(cfg.upstream.clone());
    let ctx = Arc::new(session::Ctx {
        auth: auth::Auth::new(&cfg.auth),
        state: Arc::new(state::StateEngine::new(
            cfg.rules.clone(),
            cfg.max_decoded_size,
        )),
        upstream,
        cfg: cfg.clone(),
        next_id: AtomicU64::new(1),
        drain: tokio_util::sync::CancellationToken::new(),
    });
    tracing::info!(
        listen = %cfg.listen,
        upstream = %cfg.upstream.url.redacted(),
        rules = cfg.rules.len(),
        "statecar started"
    );
    server::run(ctx, listener, shutdown_signal()).await;
    tracing::info!("statecar stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM received"),
                _ = i.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
