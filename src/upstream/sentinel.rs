//! Sentinel upstream: find the primary through the sentinels and follow it when it moves.
//!
//! One task asks a sentinel for the primary's address (`SENTINEL get-master-addr-by-name`),
//! then listens on the same connection for `+switch-master`. A switch retires the old node at
//! once (commands in flight on it fail with an error naming the failover; see
//! [`super::node::Node::retire`]) and sends every new command to the new primary. The address
//! is asked again every few seconds as well, so a missed event costs at most that long.
//! Sentinels are reached over plain TCP, with `upstream.sentinel_password` if set.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Upstream;
use super::connect::{decode_reply, read_frame};
use super::url::Addr;
use crate::protocol::{ReplyScanner, encode_multibulk};

/// How long one subscription is trusted before the address is asked again.
const RECHECK: Duration = Duration::from_secs(5);
/// Pause after every sentinel failed to answer.
const RETRY: Duration = Duration::from_millis(500);

/// Follows the primary named `master` for as long as the proxy runs.
pub async fn follow(
    up: Arc<Upstream>,
    sentinels: Vec<Addr>,
    master: String,
    password: Option<String>,
) {
    let timeout = Duration::from_millis(up.config().connect_timeout_ms);
    let mut warned = false;
    loop {
        let mut answered = false;
        for s in &sentinels {
            match watch(&up, s, &master, password.as_deref(), timeout).await {
                Ok(()) => {
                    answered = true;
                    warned = false;
                    break;
                }
                Err(e) if !warned => {
                    tracing::warn!(sentinel = %s, error = %e, "sentinel did not answer");
                }
                Err(e) => tracing::debug!(sentinel = %s, error = %e, "sentinel did not answer"),
            }
        }
        if !answered {
            warned = true;
            tokio::time::sleep(RETRY).await;
        }
    }
}

struct Conn {
    stream: TcpStream,
    rbuf: BytesMut,
    scanner: ReplyScanner,
    name: String,
}

impl Conn {
    /// Connects and authenticates to a sentinel.
    async fn open(sentinel: &Addr, password: Option<&str>) -> Result<Conn, String> {
        let stream = TcpStream::connect((sentinel.host.as_str(), sentinel.port))
            .await
            .map_err(|e| e.to_string())?;
        let _ = stream.set_nodelay(true);
        let mut c = Conn {
            stream,
            rbuf: BytesMut::new(),
            scanner: ReplyScanner::default(),
            name: sentinel.to_string(),
        };
        if let Some(p) = password {
            c.send(&[b"AUTH", p.as_bytes()]).await?;
            let r = c.read().await?;
            if r.first() == Some(&b'-') {
                return Err(format!(
                    "AUTH refused: {}",
                    String::from_utf8_lossy(&r).trim()
                ));
            }
        }
        Ok(c)
    }

    async fn send(&mut self, args: &[&[u8]]) -> Result<(), String> {
        let mut out = BytesMut::new();
        encode_multibulk(&mut out, args);
        self.stream.write_all(&out).await.map_err(|e| e.to_string())
    }

    async fn read(&mut self) -> Result<Bytes, String> {
        self.scanner.reset();
        read_frame(
            &mut self.stream,
            &mut self.rbuf,
            &mut self.scanner,
            &self.name,
        )
        .await
        .map_err(|e| e.to_string())
    }
}

/// Asks one sentinel, then listens to it until a recheck is due. Ok once it has answered.
async fn watch(
    up: &Arc<Upstream>,
    sentinel: &Addr,
    master: &str,
    password: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let name = sentinel.to_string();
    let mut c = tokio::time::timeout(timeout, async {
        let mut c = Conn::open(sentinel, password).await?;
        // Subscribe first, so no switch can fall between the answer and the subscription.
        c.send(&[b"SUBSCRIBE", b"+switch-master"]).await?;
        c.read().await?;
        Ok::<_, String>(c)
    })
    .await
    .map_err(|_| "connect timed out".to_string())??;
    // While subscribed a RESP2 connection takes no other command: ask on a second one.
    let addr = tokio::time::timeout(timeout, primary_of(sentinel, master, password))
        .await
        .map_err(|_| "no reply to SENTINEL get-master-addr-by-name".to_string())??;
    up.set_primary(addr);
    let until = tokio::time::Instant::now() + RECHECK;
    loop {
        let msg = match tokio::time::timeout_at(until, c.read()).await {
            Err(_) => return Ok(()),
            Ok(r) => r?,
        };
        if let Some(addr) = switch_master(&msg, master) {
            tracing::info!(sentinel = %name, new = %addr, "sentinel announced +switch-master");
            up.set_primary(addr);
        }
    }
}

/// `SENTINEL get-master-addr-by-name` on a connection of its own.
pub async fn primary_of(
    sentinel: &Addr,
    master: &str,
    password: Option<&str>,
) -> Result<Addr, String> {
    let mut c = Conn::open(sentinel, password).await?;
    c.send(&[b"SENTINEL", b"get-master-addr-by-name", master.as_bytes()])
        .await?;
    let r = c.read().await?;
    parse_addr_reply(&r).ok_or_else(|| {
        format!(
            "sentinel does not know a primary named \"{master}\" ({})",
            String::from_utf8_lossy(&r).trim()
        )
    })
}

fn text(f: &BytesFrame) -> Option<String> {
    f.as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

/// `[ip, port]` from get-master-addr-by-name.
fn parse_addr_reply(r: &Bytes) -> Option<Addr> {
    let Some(BytesFrame::Array { data, .. }) = decode_reply(r) else {
        return None;
    };
    let host = text(data.first()?)?;
    let port = text(data.get(1)?)?.parse().ok()?;
    Some(Addr { host, port })
}

/// The new address from a `+switch-master` message for `master`:
/// `<name> <old-ip> <old-port> <new-ip> <new-port>`.
fn switch_master(msg: &Bytes, master: &str) -> Option<Addr> {
    // The parser turns a RESP2 pub/sub message into a push that starts with "pubsub".
    let data = match decode_reply(msg) {
        Some(BytesFrame::Array { data, .. } | BytesFrame::Push { data, .. }) => data,
        _ => return None,
    };
    let skip = usize::from(data.first().and_then(text).as_deref() == Some("pubsub"));
    let data = &data[skip..];
    if text(data.first()?)? != "message" {
        return None;
    }
    let body = text(data.get(2)?)?;
    let parts: Vec<&str> = body.split(' ').collect();
    match parts.as_slice() {
        [name, _, _, host, port] if *name == master => Some(Addr {
            host: host.to_string(),
            port: port.parse().ok()?,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sentinel_replies() {
        let r = Bytes::from_static(b"*2\r\n$9\r\n127.0.0.1\r\n$4\r\n6380\r\n");
        assert_eq!(
            parse_addr_reply(&r),
            Some(Addr {
                host: "127.0.0.1".into(),
                port: 6380
            })
        );
        assert_eq!(parse_addr_reply(&Bytes::from_static(b"*-1\r\n")), None);
        let m = Bytes::from_static(
            b"*3\r\n$7\r\nmessage\r\n$14\r\n+switch-master\r\n$39\r\nmymaster 127.0.0.1 6379 127.0.0.1 16380\r\n",
        );
        assert_eq!(
            switch_master(&m, "mymaster"),
            Some(Addr {
                host: "127.0.0.1".into(),
                port: 16380
            })
        );
        assert_eq!(switch_master(&m, "other"), None);
    }
}
