//! Client requests: the one strict parser every command goes through.
//!
//! Its accept/reject decision and its error texts are Redis's own (`processMultibulkBuffer` and
//! `processInlineBuffer` in Redis 7.0's networking.c, `string2ll` in util.c), so that nothing Redis
//! would refuse is ever written to a connection that other clients share: Redis closes a
//! connection after a protocol error, and every command queued on it with it.
//!
//! Each byte of a header is looked at once; bulk data is skipped by its length. A command that
//! arrives in pieces is resumed where the last read stopped. The result holds the command's bytes
//! exactly as they came (forwarded without re-encoding) and the position of each argument in them.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::encode::encode_multibulk;
use super::inline::split_args;
use super::{Limits, ProtocolError};

/// Redis's `PROTO_INLINE_MAX_SIZE`: the most bytes a header line or an inline command may take
/// before its end is seen.
pub const INLINE_MAX: usize = 64 * 1024;
/// Redis's limits for a client that must authenticate first (`authRequired`).
const UNAUTH_MAX_ARGS: i64 = 10;
const UNAUTH_MAX_BULK: i64 = 16384;

/// Positions of a command's arguments inside its bytes; most commands have a handful.
pub type Args = SmallVec<[Range<usize>; 6]>;

/// One complete client command: its bytes and where each argument is in them.
#[derive(Debug, Clone)]
pub struct Request {
    raw: Bytes,
    args: Args,
}

impl Request {
    /// Encodes `args` as a RESP2 multibulk (for commands statecar builds, and inline commands).
    pub fn from_args<I, A>(args: I) -> Request
    where
        I: IntoIterator<Item = A>,
        A: AsRef<[u8]>,
    {
        let args: Vec<A> = args.into_iter().collect();
        let mut raw =
            BytesMut::with_capacity(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
        let ranges = encode_multibulk(&mut raw, &args);
        Request {
            raw: raw.freeze(),
            args: ranges,
        }
    }

    /// The command exactly as it goes upstream (a RESP2 multibulk).
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// How many arguments, the name included.
    pub fn argc(&self) -> usize {
        self.args.len()
    }

    /// Argument `i` (0 is the command name).
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.args.get(i).map(|r| &self.raw[r.clone()])
    }

    /// Argument `i` as a shared slice of the command's bytes (no copy).
    pub fn arg_bytes(&self, i: usize) -> Option<Bytes> {
        self.args.get(i).map(|r| self.raw.slice(r.clone()))
    }

    /// The command name as the client spelled it.
    pub fn name(&self) -> &[u8] {
        self.arg(0).unwrap_or_default()
    }

    /// Every argument, the name first.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        self.args.iter().map(|r| &self.raw[r.clone()])
    }

    /// Every argument as shared slices (for code that keeps them).
    pub fn args_bytes(&self) -> Vec<Bytes> {
        self.args
            .iter()
            .map(|r| self.raw.slice(r.clone()))
            .collect()
    }
}

/// What the parser found at the start of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A whole command, consumed from the buffer.
    Command(Request),
    /// An empty inline line or a multibulk of length <= 0: consumed, nothing to run (Redis
    /// resets the client and goes on, without a reply).
    Nothing,
}

/// A multibulk command that has partly arrived, waiting for the data of a bulk argument.
#[derive(Debug)]
pub struct Pending<'a> {
    /// The command name.
    pub name: &'a [u8],
    /// Its first argument, if it has arrived.
    pub first: Option<&'a [u8]>,
    /// The awaited argument's position (0 is the name).
    pub index: usize,
    /// How many arguments the command has, the name included.
    pub argc: u64,
    /// The awaited argument's length.
    pub bulk: usize,
}

/// What [`RequestParser::stream_off`] gave up.
#[derive(Debug, PartialEq, Eq)]
pub struct StreamOff {
    /// Bytes at the front of the buffer (and still to come) that belong to the command up to
    /// the end of the streamed argument.
    pub forward: usize,
    /// Arguments after it.
    pub tail_args: u64,
}

/// Where the parser is inside a multibulk command that has not fully arrived yet.
#[derive(Debug, Default)]
struct Progress {
    /// Offset (from the command's first byte) of the next byte to look at.
    pos: usize,
    /// Arguments still to come; 0 before the `*` header is read.
    remaining: u64,
    /// Length of the bulk whose header was read but whose data has not arrived.
    bulk: Option<usize>,
    args: Args,
}

/// Reads complete commands off the front of a client's input buffer.
#[derive(Debug, Default)]
pub struct RequestParser {
    progress: Progress,
}

/// The first `c` in `buf`. Redis searches its query buffer as a C string, so for Redis a NUL
/// byte before the line end hides it and the client waits for more input (up to 64 KB, then
/// "too big ..."); statecar does not reproduce that stall (docs/DESIGN.md, "Protocol errors"):
/// a NUL in a header makes the number invalid, and an inline line ends at its NUL.
fn find(buf: &[u8], c: u8) -> Option<usize> {
    memchr::memchr(c, buf)
}

/// Redis's `string2ll`: optional `-`, no `+`, no leading zeros (but "0"), no "-0", at most 20
/// characters, no overflow.
pub fn string2ll(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() >= 21 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    if neg {
        // -(i64::MIN) fits in u64; anything larger does not fit in i64.
        if v > i64::MAX as u64 + 1 {
            return None;
        }
        Some((v as i128).wrapping_neg() as i64)
    } else {
        i64::try_from(v).ok()
    }
}

impl RequestParser {
    /// Parses the next command at the front of `buf`, removing its bytes. `Ok(None)` means more
    /// input is needed. `unauthenticated` applies Redis's tighter limits for a client that has
    /// yet to authenticate. After an error the connection must be closed (as Redis does): the
    /// parser's state is no longer meaningful.
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        unauthenticated: bool,
    ) -> Result<Option<Parsed>, ProtocolError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        // After `stream_off` the buffer starts inside a multibulk, at its next argument.
        if first != b'*' && self.progress.remaining == 0 {
            return parse_inline(buf, limits.max_inline_len);
        }
        self.multibulk(buf, limits, unauthenticated)
    }

    /// The command whose bulk argument is being waited for, as far as it has arrived: its
    /// arguments so far, how many it has in all, and the awaited argument's length. The session
    /// uses it to forward a big argument while it arrives (session/cut_through.rs).
    pub fn pending_command<'a>(&self, buf: &'a [u8]) -> Option<Pending<'a>> {
        let p = &self.progress;
        let bulk = p.bulk?;
        let arg = |i: usize| p.args.get(i).and_then(|r| buf.get(r.clone()));
        Some(Pending {
            name: arg(0)?,
            first: arg(1),
            index: p.args.len(),
            argc: (p.args.len() as u64).saturating_add(p.remaining),
            bulk,
        })
    }

    /// Hands the rest of the awaited bulk argument to the caller, who forwards it unparsed:
    /// the first `forward` bytes of the buffer (everything up to the argument's end and the
    /// two bytes after it, which Redis skips unread) are no longer the parser's. The next
    /// `next` then reads the arguments after it, if any, as a command of their own, whose bytes
    /// start at the front of the buffer. None when no bulk is awaited.
    pub fn stream_off(&mut self) -> Option<StreamOff> {
        let p = &mut self.progress;
        let bulk = p.bulk?;
        let forward = p.pos.saturating_add(bulk).saturating_add(2);
        let tail_args = p.remaining.saturating_sub(1);
        *p = Progress {
            remaining: tail_args,
            ..Progress::default()
        };
        Some(StreamOff { forward, tail_args })
    }

    /// Whether a command has been partly read (its bytes are still in the buffer).
    pub fn in_progress(&self) -> bool {
        self.progress.pos > 0
    }

    /// The length of the bulk argument being waited for, if its header has been read: the
    /// session reserves room for it in one step, as Redis does for big arguments.
    pub fn pending_bulk(&self) -> Option<usize> {
        self.progress.bulk
    }

    fn multibulk(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
        unauthenticated: bool,
    ) -> Result<Option<Parsed>, ProtocolError> {
        let p = &mut self.progress;
        if p.remaining == 0 {
            // The `*<count>\r` header: found by its '\r'; the byte after it is skipped unread.
            let Some(cr) = find(buf, b'\r') else {
                if buf.len() > INLINE_MAX {
                    return Err(ProtocolError::new(b"too big mbulk count string"));
                }
                return Ok(None);
            };
            if cr + 2 > buf.len() {
                return Ok(None);
            }
            let n = match string2ll(&buf[1..cr]) {
                Some(n) if n <= i64::from(i32::MAX) && n <= limits.max_multibulk_len as i64 => n,
                _ => return Err(ProtocolError::new(b"invalid multibulk length")),
            };
            if n > UNAUTH_MAX_ARGS && unauthenticated {
                return Err(ProtocolError::new(b"unauthenticated multibulk length"));
            }
            if n <= 0 {
                let _ = buf.split_to(cr + 2);
                return Ok(Some(Parsed::Nothing));
            }
            p.pos = cr + 2;
            p.remaining = n as u64;
            p.args.clear();
            p.args.reserve((n as usize).min(1024));
        }
        while p.remaining > 0 {
            let bulk = match p.bulk {
                Some(len) => len,
                None => {
                    let rest = &buf[p.pos..];
                    let Some(cr) = find(rest, b'\r') else {
                        if rest.len() > INLINE_MAX {
                            return Err(ProtocolError::new(b"too big bulk count string"));
                        }
                        return Ok(None);
                    };
                    if cr + 2 > rest.len() {
                        return Ok(None);
                    }
                    if rest[0] != b'$' {
                        return Err(ProtocolError::expected_dollar(rest[0]));
                    }
                    let len = match string2ll(&rest[1..cr]) {
                        Some(n) if n >= 0 && n as u64 <= limits.max_bulk_len as u64 => n,
                        _ => return Err(ProtocolError::new(b"invalid bulk length")),
                    };
                    if len > UNAUTH_MAX_BULK && unauthenticated {
                        return Err(ProtocolError::new(b"unauthenticated bulk length"));
                    }
                    p.pos += cr + 2;
                    let len = len as usize;
                    p.bulk = Some(len);
                    len
                }
            };
            // The data and the two bytes after it, which Redis skips without looking at them.
            let end = p.pos.saturating_add(bulk);
            if end.saturating_add(2) > buf.len() {
                return Ok(None);
            }
            p.args.push(p.pos..end);
            p.pos = end + 2;
            p.bulk = None;
            p.remaining -= 1;
        }
        let raw = buf.split_to(p.pos).freeze();
        let args = std::mem::take(&mut p.args);
        *p = Progress::default();
        Ok(Some(Parsed::Command(Request { raw, args })))
    }
}

/// A telnet-style command line, split as Redis's `sdssplitargs` splits it, and re-encoded as a
/// multibulk for the upstream connection.
fn parse_inline(buf: &mut BytesMut, max: usize) -> Result<Option<Parsed>, ProtocolError> {
    // Redis refuses more than 64 KB buffered without a newline, which depends on how its reads
    // split the input; statecar refuses a line longer than that wherever the reads split it,
    // which agrees with Redis whenever Redis's answer does not depend on timing.
    let nl = match find(buf, b'\n') {
        Some(nl) if nl <= max => nl,
        None if buf.len() <= max => return Ok(None),
        _ => return Err(ProtocolError::new(b"too big inline request")),
    };
    let line = buf.split_to(nl + 1);
    let mut line = &line[..nl];
    if let Some(stripped) = line.strip_suffix(b"\r") {
        line = stripped;
    }
    let args = split_args(line).ok_or(ProtocolError::new(b"unbalanced quotes in request"))?;
    if args.is_empty() {
        return Ok(Some(Parsed::Nothing));
    }
    Ok(Some(Parsed::Command(Request::from_args(args))))
}

#[cfg(test)]
mod tests;
