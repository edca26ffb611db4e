//! `upstream.retry_on_timeout`: a batch of read-only commands whose shared connection failed
//! (timeout, connection lost, I/O error) before every reply arrived is sent once more, and the
//! client gets the second answer instead of an error.
//!
//! Safe means two things. Repeating the command must not change data: only commands in
//! [`read_only`] qualify, and a batch qualifies only if all of its commands do. And the retried
//! commands must not overtake anything the client sent after them: the session counts every
//! batch it sends to a shared connection under a small lock ([`Gate`]); the writer retries only
//! if no later batch of the same client has been sent, and sends the retry under the same lock.
//! A batch that cannot be retried gets its errors as before.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::protocol::{Limits, Scanner, Side};
use crate::upstream::UpstreamError;
use crate::upstream::conn::{Batch, BatchResult, SharedConn};

/// Counts the batches one client sent to shared connections.
#[derive(Debug, Default)]
pub struct Gate(Mutex<u64>);

/// What the writer needs to send a failed batch again.
pub struct Retry {
    bytes: Bytes,
    conn: SharedConn,
    gate: Arc<Gate>,
    seq: u64,
}

/// Sends `batch` on `conn`; when `gate` is set (retries are on) the send is counted, and if
/// `retryable` the returned [`Retry`] can send it again.
pub fn send(
    conn: &SharedConn,
    gate: Option<&Arc<Gate>>,
    batch: Batch,
    retryable: bool,
) -> Option<Box<Retry>> {
    let Some(gate) = gate else {
        conn.send(batch);
        return None;
    };
    let bytes = retryable.then(|| batch.bytes.clone());
    let mut sent = gate.0.lock().unwrap_or_else(|p| p.into_inner());
    conn.send(batch);
    *sent += 1;
    let seq = *sent;
    drop(sent);
    bytes.map(|bytes| {
        Box::new(Retry {
            bytes,
            conn: conn.clone(),
            gate: gate.clone(),
            seq,
        })
    })
}

/// Whether a failure means "the connection failed before answering", which a retry can fix.
pub fn retryable(e: &UpstreamError) -> bool {
    matches!(
        e,
        UpstreamError::Timeout { .. } | UpstreamError::Closed { .. } | UpstreamError::Io { .. }
    )
}

impl Retry {
    /// Sends the commands after the first `answered` once more, if nothing of the client's has
    /// been sent since; returns where their replies will arrive.
    pub fn again(self, answered: usize) -> Option<oneshot::Receiver<BatchResult>> {
        let rest = skip_commands(&self.bytes, answered)?;
        let replies = count_commands(&rest)?;
        if replies == 0 {
            return None;
        }
        let mut sent = self.gate.0.lock().unwrap_or_else(|p| p.into_inner());
        if *sent != self.seq {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.conn.send(Batch {
            bytes: rest,
            replies,
            tx,
        });
        *sent += 1;
        Some(rx)
    }
}

fn request_limits() -> Limits {
    Limits {
        max_bulk_len: usize::MAX >> 1,
        max_multibulk_len: usize::MAX >> 1,
        max_inline_len: usize::MAX >> 1,
    }
}

/// The bytes after the first `n` commands of a batch (commands are RESP multibulks).
fn skip_commands(bytes: &Bytes, n: usize) -> Option<Bytes> {
    let limits = request_limits();
    let mut at = 0;
    for _ in 0..n {
        let mut s = Scanner::default();
        at += s.scan(&bytes[at..], Side::Request, &limits).ok()??;
    }
    Some(bytes.slice(at..))
}

fn count_commands(bytes: &[u8]) -> Option<usize> {
    let limits = request_limits();
    let mut at = 0;
    let mut n = 0;
    while at < bytes.len() {
        let mut s = Scanner::default();
        at += s.scan(&bytes[at..], Side::Request, &limits).ok()??;
        n += 1;
    }
    Some(n)
}

/// Commands that only read: running one twice answers the same question twice and changes
/// nothing. Anything not listed (writes, scripts, admin commands, unknown commands) is never
/// retried.
pub fn read_only(args: &[Bytes]) -> bool {
    let Some(name) = args.first() else {
        return false;
    };
    let mut buf = [0u8; 32];
    let Some(n) = crate::command::upper(name, &mut buf) else {
        return false;
    };
    matches!(
        &buf[..n],
        b"GET"
            | b"MGET"
            | b"STRLEN"
            | b"GETRANGE"
            | b"SUBSTR"
            | b"LCS"
            | b"EXISTS"
            | b"TYPE"
            | b"TTL"
            | b"PTTL"
            | b"EXPIRETIME"
            | b"PEXPIRETIME"
            | b"DBSIZE"
            | b"RANDOMKEY"
            | b"SCAN"
            | b"KEYS"
            | b"DUMP"
            | b"PING"
            | b"ECHO"
            | b"TIME"
            | b"GETBIT"
            | b"BITCOUNT"
            | b"BITPOS"
            | b"BITFIELD_RO"
            | b"HGET"
            | b"HMGET"
            | b"HGETALL"
            | b"HKEYS"
            | b"HVALS"
            | b"HLEN"
            | b"HEXISTS"
            | b"HSTRLEN"
            | b"HSCAN"
            | b"HRANDFIELD"
            | b"LINDEX"
            | b"LLEN"
            | b"LRANGE"
            | b"LPOS"
            | b"SCARD"
            | b"SISMEMBER"
            | b"SMISMEMBER"
            | b"SMEMBERS"
            | b"SRANDMEMBER"
            | b"SSCAN"
            | b"SINTER"
            | b"SINTERCARD"
            | b"SUNION"
            | b"SDIFF"
            | b"ZCARD"
            | b"ZCOUNT"
            | b"ZLEXCOUNT"
            | b"ZSCORE"
            | b"ZMSCORE"
            | b"ZRANK"
            | b"ZREVRANK"
            | b"ZRANGE"
            | b"ZRANGEBYSCORE"
            | b"ZRANGEBYLEX"
            | b"ZREVRANGE"
            | b"ZREVRANGEBYSCORE"
            | b"ZREVRANGEBYLEX"
            | b"ZRANDMEMBER"
            | b"ZSCAN"
            | b"ZINTER"
            | b"ZINTERCARD"
            | b"ZUNION"
            | b"ZDIFF"
            | b"XRANGE"
            | b"XREVRANGE"
            | b"XLEN"
            | b"PFCOUNT"
            | b"GEOPOS"
            | b"GEODIST"
            | b"GEOHASH"
            | b"GEOSEARCH"
            | b"GEORADIUS_RO"
            | b"GEORADIUSBYMEMBER_RO"
            | b"SORT_RO"
    )
}

/// [`read_only`] for an already encoded command (a state plan's upstream command).
pub fn read_only_raw(raw: &[u8]) -> bool {
    let limits = request_limits();
    let mut s = Scanner::default();
    let Ok(Some(len)) = s.scan(raw, Side::Request, &limits) else {
        return false;
    };
    if len != raw.len() {
        return false;
    }
    // `*N\r\n$L\r\nNAME\r\n`: the name is the first bulk string.
    let mut lines = raw.split(|&b| b == b'\n');
    let (_, _, name) = (lines.next(), lines.next(), lines.next());
    name.map(|n| n.strip_suffix(b"\r").unwrap_or(n))
        .is_some_and(|n| read_only(&[Bytes::copy_from_slice(n)]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Command;

    fn raw(args: &[&str]) -> Bytes {
        Command::from_args(args.iter().map(|a| Bytes::from(a.to_string()))).raw
    }

    #[test]
    fn only_reads_qualify() {
        let args =
            |a: &[&str]| -> Vec<Bytes> { a.iter().map(|s| Bytes::from(s.to_string())).collect() };
        assert!(read_only(&args(&["get", "k"])));
        assert!(read_only(&args(&["MGET", "a", "b"])));
        assert!(read_only(&args(&["ZrangeByScore", "z", "0", "1"])));
        for w in [
            "SET",
            "INCR",
            "GETDEL",
            "GETEX",
            "GETSET",
            "EVAL",
            "EVALSHA",
            "FCALL",
            "SORT",
            "GEORADIUS",
            "ZRANGESTORE",
            "PUBLISH",
            "SPOP",
            "LPOP",
            "CLIENT",
            "DEL",
            "",
        ] {
            assert!(!read_only(&args(&[w, "k"])), "{w}");
        }
        assert!(!read_only(&[]));
        assert!(read_only_raw(&raw(&["GET", "s:1"])));
        assert!(!read_only_raw(&raw(&["EVALSHA", "abc", "1", "s:1"])));
        assert!(!read_only_raw(&Bytes::from_static(b"*1\r\n$3\r\nGE")));
    }

    #[test]
    fn skips_the_answered_commands() {
        let mut all = raw(&["GET", "a"]).to_vec();
        all.extend_from_slice(&raw(&["MGET", "b", "c"]));
        all.extend_from_slice(&raw(&["PING"]));
        let all = Bytes::from(all);
        let rest = skip_commands(&all, 1).unwrap_or_default();
        assert_eq!(count_commands(&rest), Some(2));
        assert!(rest.starts_with(b"*3\r\n$4\r\nMGET"));
        assert_eq!(skip_commands(&all, 3).map(|b| b.len()), Some(0));
        assert_eq!(skip_commands(&all, 4), None);
    }
}
