//! Redis Cluster upstream: the slot map, and following MOVED, ASK and TRYAGAIN.
//!
//! The slot map is loaded with `CLUSTER SLOTS` from any node that answers (the known
//! primaries first, then the configured seeds), at start, every few seconds, and at once when
//! something suggests it changed: a MOVED reply, or a node that stopped answering. Between two
//! loads a MOVED reply is followed straight away, so a client never sees one.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use tokio::io::AsyncWriteExt;

use super::connect::{self, decode_reply, read_frame};
use super::node::Node;
use super::settings::UpstreamConfig;
use super::url::Addr;
use super::{PoolKey, Upstream, UpstreamError};
use crate::protocol::{ReplyScanner, encode_multibulk};
use crate::route::SLOTS;

/// How often the slot map is reloaded when nothing asks for it.
const PERIOD: Duration = Duration::from_secs(5);
/// Least time between two loads, so a burst of MOVED replies costs one.
const MIN_GAP: Duration = Duration::from_millis(100);
/// Redirects followed for one command before its last reply is given to the client.
const MAX_HOPS: usize = 5;
/// How long TRYAGAIN replies are retried for one command.
const TRYAGAIN_BUDGET: Duration = Duration::from_millis(2000);

/// Keeps the slot map current for as long as the proxy runs.
pub async fn maintain(up: Arc<Upstream>, seeds: Vec<Addr>) {
    let mut warned = false;
    loop {
        match refresh(&up, &seeds).await {
            Ok(()) => warned = false,
            Err(e) if !warned => {
                tracing::warn!(error = %e, "cannot load the cluster slot map");
                warned = true;
            }
            Err(e) => tracing::debug!(error = %e, "cannot load the cluster slot map"),
        }
        tokio::time::sleep(MIN_GAP).await;
        tokio::select! {
            _ = up.refresh.notified() => {}
            _ = tokio::time::sleep(PERIOD) => {}
        }
    }
}

/// Loads the slot map from the first node that answers.
async fn refresh(up: &Arc<Upstream>, seeds: &[Addr]) -> Result<(), String> {
    let topo = up.topology();
    let mut candidates: Vec<Addr> = topo.masters.iter().map(|n| n.ep.addr.clone()).collect();
    for s in seeds {
        if !candidates.contains(s) {
            candidates.push(s.clone());
        }
    }
    let mut last = String::from("no node to ask");
    for addr in candidates {
        match load_slots(up.config(), &addr).await {
            Ok((masters, slots)) => {
                up.set_slots(masters, slots);
                return Ok(());
            }
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// One `CLUSTER SLOTS` round trip on a connection of its own.
pub async fn load_slots(
    cfg: &UpstreamConfig,
    addr: &Addr,
) -> Result<(Vec<Addr>, Vec<u16>), String> {
    let key = PoolKey::new(0, 2);
    let name = addr.to_string();
    let work = async {
        let mut c = connect::connect(cfg, addr, &key).await?;
        let mut out = BytesMut::new();
        encode_multibulk(&mut out, &[b"CLUSTER".as_slice(), b"SLOTS"]);
        c.stream
            .write_all(&out)
            .await
            .map_err(|e| UpstreamError::io(&name, &e))?;
        let mut scanner = ReplyScanner::default();
        read_frame(&mut c.stream, &mut c.rbuf, &mut scanner, &name).await
    };
    let frame = tokio::time::timeout(Duration::from_millis(cfg.timeout_ms), work)
        .await
        .map_err(|_| "no reply to CLUSTER SLOTS".to_string())?
        .map_err(|e| e.to_string())?;
    parse_slots(&frame, addr)
}

/// Turns a `CLUSTER SLOTS` reply into primaries (by first slot) and a slot -> primary index
/// table (`u16::MAX` for a slot nobody serves).
pub fn parse_slots(frame: &Bytes, asked: &Addr) -> Result<(Vec<Addr>, Vec<u16>), String> {
    let bad = || "unexpected reply to CLUSTER SLOTS".to_string();
    let entries = match decode_reply(frame) {
        Some(BytesFrame::Array { data, .. }) => data,
        Some(BytesFrame::SimpleError { data, .. }) => return Err(data.to_string()),
        _ => return Err(bad()),
    };
    let mut ranges: Vec<(usize, usize, Addr)> = Vec::new();
    for e in &entries {
        let BytesFrame::Array { data, .. } = e else {
            return Err(bad());
        };
        let (
            Some(BytesFrame::Number { data: start, .. }),
            Some(BytesFrame::Number { data: end, .. }),
            Some(BytesFrame::Array { data: node, .. }),
        ) = (data.first(), data.get(1), data.get(2))
        else {
            return Err(bad());
        };
        let host = node
            .first()
            .and_then(|h| h.as_bytes())
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .unwrap_or_default();
        let Some(BytesFrame::Number { data: port, .. }) = node.get(1) else {
            return Err(bad());
        };
        // An empty or "?" host means "the address you reached me at".
        let host = if host.is_empty() || host == "?" {
            asked.host.clone()
        } else {
            host
        };
        let (Ok(start), Ok(end), Ok(port)) = (
            usize::try_from(*start),
            usize::try_from(*end),
            u16::try_from(*port),
        ) else {
            return Err(bad());
        };
        if start > end || end >= SLOTS {
            return Err(bad());
        }
        ranges.push((start, end, Addr { host, port }));
    }
    ranges.sort_by_key(|r| r.0);
    let mut masters: Vec<Addr> = Vec::new();
    let mut slots = vec![u16::MAX; SLOTS];
    for (start, end, addr) in ranges {
        let i = match masters.iter().position(|m| *m == addr) {
            Some(i) => i,
            None => {
                masters.push(addr);
                masters.len() - 1
            }
        };
        slots[start..=end].fill(i as u16);
    }
    Ok((masters, slots))
}

/// A cluster redirection in an error reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Redirect {
    /// The slot lives elsewhere for good.
    Moved(Addr),
    /// The slot is migrating; this key is already at the target.
    Ask(Addr),
    /// A multi-key command met a slot in mid-migration: try again shortly.
    TryAgain,
}

/// Parses `-MOVED 3999 127.0.0.1:6381`, `-ASK ...` or `-TRYAGAIN ...`; `from` fills in a
/// missing host.
pub fn redirect(reply: &[u8], from: &Addr) -> Option<Redirect> {
    if reply.first() != Some(&b'-') {
        return None;
    }
    if reply.starts_with(b"-TRYAGAIN") {
        return Some(Redirect::TryAgain);
    }
    let moved = reply.starts_with(b"-MOVED ");
    if !moved && !reply.starts_with(b"-ASK ") {
        return None;
    }
    let line = std::str::from_utf8(reply).ok()?.trim_end();
    let target = line.split(' ').nth(2)?;
    let mut addr = match Addr::parse(target) {
        Ok(a) => a,
        Err(_) if target.starts_with(':') => Addr {
            host: from.host.clone(),
            port: target[1..].parse().ok()?,
        },
        Err(_) => return None,
    };
    if addr.host.is_empty() {
        addr.host = from.host.clone();
    }
    Some(if moved {
        Redirect::Moved(addr)
    } else {
        Redirect::Ask(addr)
    })
}

/// Follows redirects for one command whose reply from `from` was `reply`. Returns the final
/// reply and the node that gave it.
///
/// TRYAGAIN (a multi-key command, or a state write with its history key, meeting a slot in
/// mid-migration) is retried on the same node, with ASKING again if that is how it got there,
/// for up to `TRYAGAIN_BUDGET`; a slot moves in milliseconds, so longer means it is stuck and
/// the client gets Redis's TRYAGAIN.
pub async fn follow(
    up: &Arc<Upstream>,
    key: PoolKey,
    mut from: Arc<Node>,
    cmd: &Bytes,
    mut reply: Bytes,
) -> (Bytes, Arc<Node>) {
    let mut hops = 0;
    let mut asking = false;
    let mut waited = Duration::ZERO;
    let mut pause = Duration::from_millis(10);
    while let Some(r) = redirect(&reply, &from.ep.addr) {
        crate::telemetry::cluster_redirect(match r {
            Redirect::Moved(_) => "moved",
            Redirect::Ask(_) => "ask",
            Redirect::TryAgain => "tryagain",
        });
        match r {
            Redirect::Moved(addr) => {
                up.request_refresh();
                from = up.node(&addr);
                asking = false;
                hops += 1;
            }
            Redirect::Ask(addr) => {
                from = up.node(&addr);
                asking = true;
                hops += 1;
            }
            Redirect::TryAgain => {
                if waited >= TRYAGAIN_BUDGET {
                    break;
                }
                tokio::time::sleep(pause).await;
                waited += pause;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
        }
        if hops > MAX_HOPS {
            break;
        }
        let sent = if asking {
            let mut both = BytesMut::with_capacity(cmd.len() + 20);
            encode_multibulk(&mut both, &[b"ASKING".as_slice()]);
            both.extend_from_slice(cmd);
            super::conn::call(&from.assign(key.clone()), both.freeze(), 2)
                .await
                .map(|b| skip_first(&b))
        } else {
            super::conn::call(&from.assign(key.clone()), cmd.clone(), 1).await
        };
        reply = match sent {
            Ok(b) => b,
            Err(f) => Bytes::from(f.error.to_resp()),
        };
    }
    (reply, from)
}

use crate::protocol::frames::skip_first;
pub use crate::protocol::frames::{frame_ranges, frames};

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Addr {
        Addr::parse(s).unwrap()
    }

    #[test]
    fn parses_redirects() {
        let from = a("10.0.0.1:7000");
        assert_eq!(
            redirect(b"-MOVED 3999 127.0.0.1:6381\r\n", &from),
            Some(Redirect::Moved(a("127.0.0.1:6381")))
        );
        assert_eq!(
            redirect(b"-ASK 3999 127.0.0.1:6381\r\n", &from),
            Some(Redirect::Ask(a("127.0.0.1:6381")))
        );
        assert_eq!(
            redirect(b"-MOVED 3999 :6381\r\n", &from),
            Some(Redirect::Moved(a("10.0.0.1:6381")))
        );
        assert_eq!(
            redirect(
                b"-TRYAGAIN Multiple keys request during rehashing of slot\r\n",
                &from
            ),
            Some(Redirect::TryAgain)
        );
        assert_eq!(redirect(b"-ERR MOVED\r\n", &from), None);
        assert_eq!(redirect(b"+MOVED 1 a:1\r\n", &from), None);
        assert_eq!(redirect(b"-MOVED garbage\r\n", &from), None);
    }

    #[test]
    fn parses_a_slot_map() {
        let reply = Bytes::from_static(
            b"*2\r\n*3\r\n:5461\r\n:16383\r\n*3\r\n$9\r\n127.0.0.1\r\n:7001\r\n$2\r\nid\r\n\
              *4\r\n:0\r\n:5460\r\n*3\r\n$0\r\n\r\n:7000\r\n$2\r\nid\r\n*3\r\n$9\r\n127.0.0.1\r\n:7003\r\n$2\r\nid\r\n",
        );
        let (masters, slots) = parse_slots(&reply, &a("10.1.1.1:7000")).unwrap();
        assert_eq!(masters, vec![a("10.1.1.1:7000"), a("127.0.0.1:7001")]);
        assert_eq!(slots[0], 0);
        assert_eq!(slots[5460], 0);
        assert_eq!(slots[5461], 1);
        assert_eq!(slots[16383], 1);
        assert!(
            parse_slots(
                &Bytes::from_static(b"-ERR This instance has cluster support disabled\r\n"),
                &a("h:1")
            )
            .is_err()
        );
        assert!(
            parse_slots(
                &Bytes::from_static(b"*1\r\n*3\r\n:9\r\n:1\r\n*0\r\n"),
                &a("h:1")
            )
            .is_err()
        );
    }

    #[test]
    fn splits_frames() {
        let b = Bytes::from_static(b"+OK\r\n$3\r\nabc\r\n*1\r\n:1\r\n");
        let f = frames(&b);
        assert_eq!(f.len(), 3);
        assert_eq!(&f[1][..], b"$3\r\nabc\r\n");
        assert_eq!(&skip_first(&b)[..], b"$3\r\nabc\r\n*1\r\n:1\r\n");
    }
}
