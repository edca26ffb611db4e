//! A small RESP2 client for the benchmarks: one connection, commands sent whole, replies parsed
//! into owned frames. Kept minimal so the load generator costs little CPU.

use std::io::Write as _;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A benchmark's error: a message for the report.
pub type Res<T> = Result<T, String>;

/// A reply.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+...`
    Simple(String),
    /// `-...`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` (None: nil)
    Bulk(Option<Vec<u8>>),
    /// `*n` (None: nil)
    Array(Option<Vec<Frame>>),
}

impl Frame {
    /// The integer, or an error naming what came instead.
    pub fn int(&self) -> Res<i64> {
        match self {
            Frame::Int(i) => Ok(*i),
            other => Err(format!("expected an integer, got {}", other.brief())),
        }
    }

    /// The bytes of a bulk reply.
    pub fn bytes(&self) -> Res<&[u8]> {
        match self {
            Frame::Bulk(Some(b)) => Ok(b),
            other => Err(format!("expected a bulk string, got {}", other.brief())),
        }
    }

    /// A short description for error messages.
    pub fn brief(&self) -> String {
        match self {
            Frame::Bulk(Some(b)) if b.len() > 80 => format!("Bulk({} bytes)", b.len()),
            Frame::Array(Some(a)) => format!("Array({} items)", a.len()),
            other => format!("{other:?}"),
        }
    }

    /// The value of `name` in a flat `[name, value, ...]` array (STATE.LOAD in RESP2).
    pub fn field(&self, name: &str) -> Option<&Frame> {
        let Frame::Array(Some(items)) = self else {
            return None;
        };
        items.chunks(2).find_map(|kv| match kv {
            [Frame::Bulk(Some(k)), v] if k == name.as_bytes() => Some(v),
            _ => None,
        })
    }
}

/// Appends one command in RESP to `out`.
pub fn push_cmd(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One command in RESP.
pub fn cmd_bytes(args: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(args.iter().map(|a| a.len() + 16).sum::<usize>() + 16);
    push_cmd(&mut v, args);
    v
}

fn parse_int(b: &[u8]) -> Res<i64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad integer in reply: {}", b.escape_ascii()))
}

/// Parses one reply at `pos`: `Ok(None)` when it is not complete yet.
pub fn parse(buf: &[u8], pos: usize) -> Res<Option<(Frame, usize)>> {
    if pos >= buf.len() {
        return Ok(None);
    }
    let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
        return Ok(None);
    };
    let nl = pos + nl;
    if nl < pos + 2 || buf[nl - 1] != b'\r' {
        return Err("malformed reply line".into());
    }
    let body = &buf[pos + 1..nl - 1];
    let next = nl + 1;
    Ok(Some(match buf[pos] {
        b'+' => (Frame::Simple(String::from_utf8_lossy(body).into()), next),
        b'-' => (Frame::Error(String::from_utf8_lossy(body).into()), next),
        b':' => (Frame::Int(parse_int(body)?), next),
        b'$' => {
            let n = parse_int(body)?;
            if n < 0 {
                (Frame::Bulk(None), next)
            } else {
                let n = n as usize;
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                (
                    Frame::Bulk(Some(buf[next..next + n].to_vec())),
                    next + n + 2,
                )
            }
        }
        b'*' => {
            let n = parse_int(body)?;
            if n < 0 {
                (Frame::Array(None), next)
            } else {
                let mut p = next;
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    match parse(buf, p)? {
                        Some((f, np)) => {
                            items.push(f);
                            p = np;
                        }
                        None => return Ok(None),
                    }
                }
                (Frame::Array(Some(items)), p)
            }
        }
        c => return Err(format!("unexpected reply type byte {:?}", c as char)),
    }))
}

/// One connection.
pub struct Conn {
    s: TcpStream,
    rbuf: BytesMut,
    /// Where it goes, for messages.
    pub port: u16,
}

impl Conn {
    /// Connects to 127.0.0.1:`port`.
    pub async fn connect(port: u16) -> Res<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            s,
            rbuf: BytesMut::with_capacity(64 * 1024),
            port,
        })
    }

    /// Sends bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> Res<()> {
        self.s
            .write_all(bytes)
            .await
            .map_err(|e| format!("write to {}: {e}", self.port))
    }

    /// Reads one reply.
    pub async fn recv(&mut self) -> Res<Frame> {
        loop {
            if let Some((frame, used)) = parse(&self.rbuf, 0)? {
                self.rbuf.advance(used);
                return Ok(frame);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 64 * 1024 {
                self.rbuf.reserve(256 * 1024);
            }
            let n = self
                .s
                .read_buf(&mut self.rbuf)
                .await
                .map_err(|e| format!("read from {}: {e}", self.port))?;
            if n == 0 {
                return Err(format!("{} closed the connection", self.port));
            }
        }
    }

    /// One command and its reply; an error reply is an error.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Res<Frame> {
        self.send(&cmd_bytes(args)).await?;
        match self.recv().await? {
            Frame::Error(e) => Err(format!(
                "{} answered {e}",
                String::from_utf8_lossy(args.first().copied().unwrap_or_default())
            )),
            f => Ok(f),
        }
    }

    /// Sends prepared commands `depth` at a time; every reply must be `+OK` or an integer.
    pub async fn pipeline(&mut self, reqs: &[Vec<u8>], depth: usize) -> Res<()> {
        let mut batch = Vec::new();
        for chunk in reqs.chunks(depth.max(1)) {
            batch.clear();
            for r in chunk {
                batch.extend_from_slice(r);
            }
            self.send(&batch).await?;
            for _ in chunk {
                match self.recv().await? {
                    Frame::Simple(_) | Frame::Int(_) => {}
                    other => return Err(format!("pipeline: {}", other.brief())),
                }
            }
        }
        Ok(())
    }
}
