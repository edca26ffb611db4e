//! The client listener: accepts connections, enforces max_clients, terminates TLS, and drains
//! on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::session::{self, Ctx};
use crate::telemetry;
use crate::tls::ServerTls;

/// How long a client gets to finish the TLS handshake before it is dropped.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit, as Redis does at
/// start: every client costs one descriptor and each upstream connection another, and a
/// distribution's default soft limit (often 1024) would cap a sidecar far below
/// `limits.max_clients`. Failure is not fatal; the accept loop copes with EMFILE.
pub fn raise_fd_limit() {
    let before = rlimit::Resource::NOFILE.get().ok();
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) => tracing::debug!(
            before = ?before.map(|(soft, _)| soft),
            soft = now,
            hard = ?before.map(|(_, hard)| hard),
            "open-file limit (RLIMIT_NOFILE) raised to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit (RLIMIT_NOFILE)"),
    }
}

/// Accepts clients until `shutdown` resolves, then lets in-flight commands finish.
///
/// Draining: the listener closes first (Kubernetes stops routing to us), every session stops
/// reading new input, finishes what it already read and closes; after `drain_timeout_s` the
/// remaining ones (for example clients blocked in BLPOP) are cut off.
pub async fn run(ctx: Arc<Ctx>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    if let Some(tls) = &ctx.cfg.load().tls {
        tracing::info!(client_certificates = tls.mtls, "client listener speaks TLS");
    }
    let tracker = TaskTracker::new();
    let active = Arc::new(AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (mut sock, peer) = match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = sock.set_nodelay(true);
                if active.load(Ordering::Relaxed) >= ctx.cfg.load().clients.max_clients {
                    telemetry::client_rejected("max_clients");
                    tokio::spawn(async move {
                        let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
                    });
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                telemetry::client_connections(1);
                let tls = ctx.cfg.load().tls.clone();
                let ctx = ctx.clone();
                let active = active.clone();
                let ends = session::Ends {
                    peer,
                    local: sock.local_addr().ok(),
                    fd: std::os::fd::AsRawFd::as_raw_fd(&sock),
                };
                tracker.spawn(async move {
                    match tls {
                        None => session::serve(ctx, sock, ends).await,
                        Some(tls) => serve_tls(ctx, tls, sock, ends).await,
                    }
                    active.fetch_sub(1, Ordering::Relaxed);
                    telemetry::client_connections(-1);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let open = active.load(Ordering::Relaxed);
    tracing::info!(clients = open, "draining");
    ctx.drain.cancel();
    tracker.close();
    let limit = Duration::from_secs(ctx.cfg.load().process.drain_timeout_s);
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        tracing::warn!(
            clients = active.load(Ordering::Relaxed),
            "drain timeout reached; closing remaining connections"
        );
    }
}

/// Completes the TLS handshake in the connection's own task (a slow or silent client never
/// holds up `accept`), then serves the session over the encrypted stream. A failed, timed-out
/// or drain-interrupted handshake closes the connection and is counted as a rejected client.
async fn serve_tls(ctx: Arc<Ctx>, tls: ServerTls, sock: TcpStream, ends: session::Ends) {
    let peer = ends.peer;
    let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(sock));
    let failure = tokio::select! {
        r = handshake => match r {
            Ok(Ok(stream)) => return session::serve(ctx, stream, ends).await,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("timed out after {} s", TLS_HANDSHAKE_TIMEOUT.as_secs()),
        },
        _ = ctx.drain.cancelled() => "shutting down".to_string(),
    };
    telemetry::client_rejected("tls_handshake");
    tracing::debug!(%peer, error = %failure, "client TLS handshake failed");
}
