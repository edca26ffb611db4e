//! Differential exchanges: send the same client bytes to Redis directly and to statecar, and
//! compare what came back (every reply byte, and whether the connection was closed).
//!
//! Nothing here decides a test by timing. A case normally ends with a marker command whose
//! reply shows that everything before it was answered; where the bytes leave a server waiting
//! for more (the marker is then swallowed as part of an unfinished command), Redis's answer is
//! taken after it has been silent for [`IDLE`], and statecar is given until [`GUARD`] to produce
//! as many bytes as Redis did, and then [`IDLE`] more to show anything extra. A mismatch is
//! re-checked against Redis with a much longer idle time before it is reported, so a slow
//! moment of the direct server cannot fail a test.

use std::fmt;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Frame, RawConn, RedisServer, Statecar};

/// Silence after which a server that has not closed is taken to be waiting for more input.
pub const IDLE: Duration = Duration::from_millis(200);

/// Hang guard for one exchange with statecar.
pub const GUARD: Duration = Duration::from_secs(10);

/// What a server did with one client byte stream.
#[derive(Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Every byte it sent back.
    pub reply: Vec<u8>,
    /// Whether it closed the connection (EOF or reset) afterwards.
    pub closed: bool,
}

impl fmt::Debug for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} + {}",
            show(&self.reply, 400),
            if self.closed { "closed" } else { "open" }
        )
    }
}

/// Bytes as an escaped string, cut to `max` bytes (with the total length when cut).
pub fn show(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut s = format!("\"{}\"", cut.escape_ascii());
    if bytes.len() > max {
        s.push_str(&format!("... ({} bytes)", bytes.len()));
    }
    s
}

/// The multibulk `ECHO <marker>` and the exact reply it gets.
pub fn marker(name: &str) -> (Vec<u8>, Vec<u8>) {
    let cmd = super::encode(&["ECHO", name]);
    let reply = format!("${}\r\n{name}\r\n", name.len()).into_bytes();
    (cmd, reply)
}

/// When to stop reading.
#[derive(Clone, Copy)]
pub enum Until<'a> {
    /// Closed, or the reply ends with `marker`, or nothing arrived for `idle`.
    Settled { marker: &'a [u8], idle: Duration },
    /// Like Redis's `expected`: closed, or the reply ends with `marker`, or at least as many
    /// bytes as expected (or bytes that differ from them) arrived and then nothing for
    /// [`IDLE`]; at most [`GUARD`] in all.
    Like {
        marker: &'a [u8],
        expected: &'a Outcome,
    },
}

/// Connects to `port`, writes `bytes` in one go and reads as `until` says.
pub async fn exchange(port: u16, bytes: &[u8], until: Until<'_>) -> Outcome {
    let mut s = super::within(
        "connect",
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {port}: {e}"));
    s.set_nodelay(true).unwrap();
    // A write error only means the peer already closed (after a protocol error): read on.
    let _ = tokio::time::timeout(GUARD, s.write_all(bytes)).await;
    read_outcome(&mut s, until).await
}

/// Reads from an open connection as `until` says.
pub async fn read_outcome(s: &mut tokio::net::TcpStream, until: Until<'_>) -> Outcome {
    let mut reply = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let (marker, wait) = match until {
            Until::Settled { marker, idle } => (marker, idle),
            Until::Like { marker, expected } => {
                let enough = reply.len() >= expected.reply.len();
                // Once the bytes differ from Redis's, the case has failed: only collect what
                // else arrives soon, for the report.
                let diverged = !expected.reply.starts_with(&reply);
                let wait = if diverged || (enough && !expected.closed) {
                    IDLE
                } else {
                    deadline.saturating_duration_since(tokio::time::Instant::now())
                };
                (marker, wait)
            }
        };
        if !marker.is_empty() && reply.ends_with(marker) {
            return Outcome {
                reply,
                closed: false,
            };
        }
        let wait = wait.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, s.read(&mut chunk)).await {
            Err(_) => {
                return Outcome {
                    reply,
                    closed: false,
                };
            }
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Outcome {
                    reply,
                    closed: true,
                };
            }
            Ok(Ok(n)) => reply.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Runs `bytes` (to which `marker`'s command is appended) against Redis directly and through
/// statecar. `Ok(outcome)` when statecar did exactly what Redis did; otherwise a description of
/// both.
pub async fn differential(
    direct_port: u16,
    proxy_port: u16,
    bytes: &[u8],
    marker_name: &str,
) -> Result<Outcome, String> {
    let (mcmd, mreply) = marker(marker_name);
    let mut sent = bytes.to_vec();
    sent.extend_from_slice(&mcmd);
    compare(direct_port, proxy_port, &sent, &mreply).await
}

/// Like [`differential`] with no marker after `bytes` (for a line that must stay without an
/// end); Redis's answer is then what it sent before [`IDLE`] of silence, or before closing.
pub async fn differential_unmarked(
    direct_port: u16,
    proxy_port: u16,
    bytes: &[u8],
) -> Result<Outcome, String> {
    compare(direct_port, proxy_port, bytes, b"").await
}

async fn compare(
    direct_port: u16,
    proxy_port: u16,
    sent: &[u8],
    mreply: &[u8],
) -> Result<Outcome, String> {
    let settled = Until::Settled {
        marker: mreply,
        idle: IDLE,
    };
    let want = exchange(direct_port, sent, settled).await;
    let got = exchange(
        proxy_port,
        sent,
        Until::Like {
            marker: mreply,
            expected: &want,
        },
    )
    .await;
    if got == want {
        return Ok(want);
    }
    // Before blaming statecar, make sure Redis's answer was not cut short by a slow moment.
    let slow = Until::Settled {
        marker: mreply,
        idle: IDLE * 5,
    };
    let again = exchange(direct_port, sent, slow).await;
    if got == again {
        return Ok(again);
    }
    Err(format!(
        "sent {}\n      redis:    {want:?}{}\n      statecar: {got:?}",
        show(sent, 300),
        if again == want {
            String::new()
        } else {
            format!("\n      redis, second run: {again:?}")
        }
    ))
}

/// Redis directly, and statecar in front of a second Redis started the same way.
pub struct Sides {
    pub direct: RedisServer,
    pub upstream: RedisServer,
    pub sc: Statecar,
}

impl Sides {
    /// `redis_args` apply to the direct Redis; statecar's upstream is a plain one.
    pub fn start(redis_args: &[&str], statecar_toml: &str) -> Sides {
        let direct = RedisServer::start_with(redis_args);
        let upstream = RedisServer::start();
        let sc = Statecar::start(upstream.port(), statecar_toml);
        Sides {
            direct,
            upstream,
            sc,
        }
    }

    /// statecar is alive and serves a new client.
    pub async fn assert_still_serving(&mut self) {
        assert!(self.sc.is_running(), "statecar died");
        let mut c = RawConn::connect(self.sc.port()).await;
        assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    }
}
