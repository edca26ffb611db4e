//! The client listener: accepts connections, enforces max_clients, and drains on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::session::{self, Ctx};
use crate::telemetry;

/// Accepts clients until `shutdown` resolves, then lets in-flight commands finish.
///
/// Draining: the listener closes first (Kubernetes stops routing to us), every session stops
/// reading new input, finishes what it already read and closes; after `drain_timeout_s` the
/// remaining ones (for example clients blocked in BLPOP) are cut off.
pub async fn run(ctx: Arc<Ctx>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
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
                if active.load(Ordering::Relaxed) >= ctx.cfg.load().max_clients {
                    telemetry::client_rejected("max_clients");
                    tokio::spawn(async move {
                        let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
                    });
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                telemetry::client_connections(1);
                let ctx = ctx.clone();
                let active = active.clone();
                tracker.spawn(async move {
                    session::serve(ctx, sock, peer).await;
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
    let limit = Duration::from_secs(ctx.cfg.load().drain_timeout_s);
    if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
        tracing::warn!(
            clients = active.load(Ordering::Relaxed),
            "drain timeout reached; closing remaining connections"
        );
    }
}
