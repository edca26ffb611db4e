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

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use crate::command::Command;
use crate::command::spec::READONLY;
use crate::protocol::{Limits, Parsed, RequestParser};
use crate::upstream::UpstreamError;
use crate::upstream::batch::{Batch, BatchResult};
use crate::upstream::conn::SharedConn;

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

/// Our own upstream bytes, split back into commands (they are well-formed multibulks).
fn parse_one(bytes: &[u8], at: usize) -> Option<(Command, usize)> {
    let mut buf = BytesMut::from(&bytes[at..]);
    let before = buf.len();
    let limits = Limits {
        max_bulk_len: usize::MAX >> 1,
        max_multibulk_len: usize::MAX >> 1,
        max_inline_len: usize::MAX >> 1,
    };
    match RequestParser::default().next(&mut buf, &limits, false) {
        Ok(Some(Parsed::Command(r))) => Some((Command::new(r), before - buf.len())),
        _ => None,
    }
}

/// The bytes after the first `n` commands of a batch (commands are RESP multibulks).
fn skip_commands(bytes: &Bytes, n: usize) -> Option<Bytes> {
    let mut at = 0;
    for _ in 0..n {
        at += parse_one(bytes, at)?.1;
    }
    Some(bytes.slice(at..))
}

fn count_commands(bytes: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut n = 0;
    while at < bytes.len() {
        at += parse_one(bytes, at)?.1;
        n += 1;
    }
    Some(n)
}

/// Commands that only read (Redis's `readonly` flag): running one twice answers the same
/// question twice and changes nothing. Anything else (writes, scripts, admin commands,
/// unknown commands) is never retried.
pub fn read_only(cmd: &Command) -> bool {
    cmd.entry().has(READONLY) && !cmd.entry().is_unknown()
}

/// [`read_only`] for an already encoded command (a state plan's upstream command).
pub fn read_only_raw(raw: &[u8]) -> bool {
    match parse_one(raw, 0) {
        Some((cmd, len)) => len == raw.len() && read_only(&cmd),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(args: &[&str]) -> Bytes {
        Command::from_args(args).raw().clone()
    }

    #[test]
    fn only_reads_qualify() {
        let args = |a: &[&str]| Command::from_args(a);
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
            "nosuch",
        ] {
            assert!(!read_only(&args(&[w, "k"])), "{w}");
        }
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
