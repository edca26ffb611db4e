//! `/metrics`, `/healthz` and `/readyz`, for Prometheus and Kubernetes probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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
