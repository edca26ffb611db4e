//! statecar: a Redis-protocol sidecar proxy that stores configured "state keys" compressed,
//! checksummed and versioned, and everything else untouched.
//!
//! A request travels down this list and its reply back up; nothing below imports anything above:
//! server (accept, drain) -> session (one client) -> command (the table) -> state (rules,
//! envelope, versions) -> upstream (shared and leased connections) -> protocol (RESP framing).

pub mod auth;
pub mod command;
pub mod config;
pub mod dev;
pub mod fair_share;
pub mod offline;
pub mod protocol;

pub mod route;
pub mod server;
pub mod session;
pub mod signal;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod upstream;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// Threads the runtime may start for work off the async threads (state writes from 16 KiB
/// encoded, big values decoded, dictionaries trained): twice the cores, from 4 to 64. All of
/// that work is CPU-bound, so more threads than that do not finish it sooner; each one keeps
/// its own compression contexts and up to 2 MiB of scratch, and tokio's default (512) let a
/// few hundred clients writing state at once start a few hundred threads.
pub fn blocking_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, usize::from)
        .saturating_mul(2)
        .clamp(4, 64)
}

/// Re-reads the configuration (for SIGHUP).
pub type Reloader = Box<dyn Fn() -> Result<config::Config, String> + Send + Sync>;

/// Starts the proxy with `cfg` and runs until SIGTERM or SIGINT, then drains. SIGHUP calls
/// `reload` and applies the new state rules and limits without touching connections.
pub async fn run(cfg: Arc<config::Config>, reload: Option<Reloader>) -> Result<(), String> {
    server::raise_fd_limit();
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", cfg.listen))?;
    let metrics = match cfg.metrics_listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen on {addr} (metrics.listen): {e}"))?;
            let handle = telemetry::install()?;
            telemetry::pool_max(
                cfg.upstream.max_connections,
                cfg.upstream.max_leased_connections,
            );
            Some((l, handle))
        }
        None => None,
    };
    let mut up_cfg = cfg.upstream.clone();
    // statecar's function library is loaded on new connections only when state rules may
    // need it; a plain proxy sends Redis nothing of its own.
    if !cfg.rules.is_empty() {
        let scripts = state::scripts::Scripts::default();
        up_cfg.function_library = Some(upstream::settings::FunctionLibrary {
            check: command::Command::from_args([
                "FUNCTION",
                "LIST",
                "LIBRARYNAME",
                &scripts.library_name,
            ])
            .raw()
            .clone(),
            load: scripts.function_load,
        });
    }
    let upstream = upstream::Upstream::new(up_cfg);
    let ctx = Arc::new(session::Ctx {
        auth: auth::Auth::new(&cfg.auth),
        state: arc_swap::ArcSwap::from_pointee(state::StateEngine::new(
            cfg.rules.clone(),
            cfg.max_decoded_size,
        )),
        upstream: upstream.clone(),
        cfg: arc_swap::ArcSwap::new(cfg.clone()),
        next_id: AtomicU64::new(1),
        drain: crate::signal::Signal::new(),
        clients: Arc::new(session::registry::Registry::default()),
        pause: session::pause::Pause::default(),
    });
    if let Some((l, handle)) = metrics {
        tokio::spawn(telemetry::serve_http(l, handle, upstream.reachable.clone()));
    }
    match &cfg.upstream.mode {
        config::Mode::Standalone => {}
        config::Mode::Cluster { seeds } => {
            tokio::spawn(upstream::cluster::maintain(upstream.clone(), seeds.clone()));
        }
        config::Mode::Sentinel {
            sentinels,
            master_name,
            password,
        } => {
            tokio::spawn(upstream::sentinel::follow(
                upstream.clone(),
                sentinels.clone(),
                master_name.clone(),
                password.clone(),
            ));
        }
    }
    if cfg.upstream.mode != config::Mode::Standalone {
        // Give the first slot map or primary address a moment, so the first clients are
        // routed directly; if it takes longer, commands fail clearly until it arrives.
        let deadline = tokio::time::Instant::now()
            + std::time::Duration::from_millis(cfg.upstream.connect_timeout_ms);
        while upstream.epoch() == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        if upstream.epoch() == 0 {
            tracing::warn!(mode = ?cfg.upstream.mode, "upstream topology not known yet; starting anyway");
        }
    }
    tokio::spawn(upstream::probe(upstream.clone()));
    tokio::spawn(upstream::close_idle_pools(Arc::downgrade(&upstream)));
    if let Some(reload) = reload {
        tokio::spawn(reload_on_sighup(ctx.clone(), reload));
    }
    tracing::info!(
        listen = %cfg.listen,
        upstream = %cfg.upstream.url.redacted(),
        mode = ?cfg.upstream.mode,
        rules = cfg.rules.len(),
        metrics = ?cfg.metrics_listen,
        "statecar started"
    );
    server::run(ctx, listener, shutdown_signal()).await;
    tracing::info!("statecar stopped");
    Ok(())
}

/// Applies a new configuration's state rules and limits on each SIGHUP; everything else
/// (listen address, upstream, auth, metrics listener) needs a restart and is left as is.
async fn reload_on_sighup(ctx: Arc<session::Ctx>, reload: Reloader) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match reload() {
            Ok(new) => {
                let old = ctx.cfg.load_full();
                if new.listen != old.listen
                    || new.upstream.url != old.upstream.url
                    || new.upstream.mode != old.upstream.mode
                {
                    tracing::warn!(
                        "listen and upstream changes need a restart; keeping the old ones"
                    );
                }
                let totals = ctx.state.load().totals.clone();
                ctx.state.store(Arc::new(state::StateEngine::with_totals(
                    new.rules.clone(),
                    new.max_decoded_size,
                    totals,
                )));
                let mut merged = (*old).clone();
                merged.rules = new.rules;
                merged.limits = new.limits;
                merged.clients = new.clients;
                merged.max_decoded_size = new.max_decoded_size;
                merged.deny_commands = new.deny_commands;
                merged.tls = new.tls;
                let rules = merged.rules.len();
                ctx.cfg.store(Arc::new(merged));
                tracing::info!(rules, "configuration reloaded (state rules and limits)");
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload failed; keeping the running configuration")
            }
        }
    }
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
