//! RESP on the wire: finding frame boundaries, enforcing limits, and parsing commands.
//!
//! redis-protocol does the parsing proper, but it has no limits and re-parses an incomplete frame
//! from the start on every read. A proxy must refuse a `$999999999` header before buffering it and
//! must not go quadratic on an 8 MB value arriving in 64 KB pieces, so a small resumable
//! [`Scanner`] finds where each frame ends (and checks the limits) first; only complete frames are
//! handed to redis-protocol.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::RangeFrame;
use thiserror::Error;

/// The longest header line (`*123\r\n`, `$456\r\n`) accepted before the input is called malformed.
const MAX_HEADER_LINE: usize = 64 * 1024;

/// Limits on what a client may send, mirroring Redis's own.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest bulk string (Redis: proto-max-bulk-len, 512 MB).
    pub max_bulk_len: usize,
    /// Most arguments in one command.
    pub max_multibulk_len: usize,
    /// Longest inline (telnet-style) command line.
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_len: 64 * 1024,
        }
    }
}

/// Malformed input; the text is what Redis itself says after `-ERR Protocol error: `.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("Protocol error: {0}")]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(s: impl Into<String>) -> Self {
        ProtocolError(s.into())
    }
}

/// Which side of the proxy a frame comes from: clients may only send arrays of bulk strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// A client request (RESP2 multibulk).
    Request,
    /// A reply or push from Redis (any RESP2/RESP3 type).
    Reply,
}

/// Resumable search for the end of one RESP frame.
///
/// Keeps the offset of the next unread header and the number of children still owed by each open
/// aggregate, so that each byte is examined once however the frame is split across reads.
#[derive(Debug, Default)]
pub struct Scanner {
    pos: usize,
    /// Children still expected at each open aggregate level; `true` marks a RESP3 attribute,
    /// which precedes the element it annotates rather than being one.
    open: Vec<(u64, bool)>,
}

fn parse_int(line: &[u8]) -> Option<i64> {
    if line.is_empty() || line.len() > 20 {
        return None;
    }
    std::str::from_utf8(line).ok()?.parse::<i64>().ok()
}

impl Scanner {
    /// Forget any partial progress (after the caller consumed a frame).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.open.clear();
    }

    /// Returns `Some(len)` once a whole frame occupies `buf[..len]`.
    pub fn scan(
        &mut self,
        buf: &[u8],
        side: Side,
        limits: &Limits,
    ) -> Result<Option<usize>, ProtocolError> {
        loop {
            let start = self.pos;
            if start >= buf.len() {
                return Ok(None);
            }
            let rest = &buf[start..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > MAX_HEADER_LINE {
                    return Err(ProtocolError::new(match rest[0] {
                        b'*' => "too big mbulk count string",
                        _ => "too big bulk count string",
                    }));
                }
                return Ok(None);
            };
            if nl == 0 || rest[nl - 1] != b'\r' {
                return Err(ProtocolError::new("invalid line ending"));
            }
            let kind = rest[0];
            // A bare "\r\n" has no room for a type byte: its "type" is the '\r' (empty line).
            let line = rest.get(1..nl - 1).unwrap_or_default();
            let header_len = nl + 1;
            if side == Side::Request {
                let depth = self.open.len();
                if depth == 0 && kind != b'*' {
                    return Err(ProtocolError::new(format!(
                        "expected '*', got '{}'",
                        kind as char
                    )));
                }
                if depth > 0 && kind != b'$' {
                    return Err(ProtocolError::new(format!(
                        "expected '$', got '{}'",
                        kind as char
                    )));
                }
            }
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {
                    self.pos = start + header_len;
                }
                b'$' | b'=' | b'!' => {
                    let len = parse_int(line);
                    match len {
                        Some(-1) if side == Side::Reply => self.pos = start + header_len,
                        Some(n) if n >= 0 && (n as u64) <= limits.max_bulk_len as u64 => {
                            let end = start + header_len + n as usize + 2;
                            if buf.len() < end {
                                return Ok(None);
                            }
                            if &buf[end - 2..end] != b"\r\n" {
                                return Err(ProtocolError::new(
                                    "bulk string not terminated by CRLF",
                                ));
                            }
                            self.pos = end;
                        }
                        _ => return Err(ProtocolError::new("invalid bulk length")),
                    }
                }
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    let n = parse_int(line);
                    let n = match n {
                        Some(-1) if side == Side::Reply => {
                            self.pos = start + header_len;
                            if self.finish_element() {
                                return Ok(Some(self.pos));
                            }
                            continue;
                        }
                        Some(n) if n >= 0 && (n as u64) <= limits.max_multibulk_len as u64 => {
                            n as u64
                        }
                        Some(n) if n <= 0 && side == Side::Request => {
                            // Redis ignores `*0` and `*-1`; the caller skips an empty command.
                            self.pos = start + header_len;
                            return Ok(Some(self.pos));
                        }
                        _ => return Err(ProtocolError::new("invalid multibulk length")),
                    };
                    self.pos = start + header_len;
                    if self.open.len() >= 64 {
                        return Err(ProtocolError::new("nesting too deep"));
                    }
                    let children = if matches!(kind, b'%' | b'|') {
                        n * 2
                    } else {
                        n
                    };
                    if children > 0 {
                        self.open.push((children, kind == b'|'));
                        continue;
                    }
                    if kind == b'|' {
                        continue;
                    }
                }
                other => {
                    return Err(ProtocolError::new(format!(
                        "unexpected type byte '{}'",
                        other.escape_ascii()
                    )));
                }
            }
            if self.finish_element() {
                return Ok(Some(self.pos));
            }
        }
    }

    /// Records that one element ended; returns true when that completed the whole frame.
    fn finish_element(&mut self) -> bool {
        while let Some(top) = self.open.last_mut() {
            top.0 -= 1;
            if top.0 > 0 {
                return false;
            }
            let (_, was_attribute) = self.open.pop().unwrap_or((0, false));
            if was_attribute {
                // The attribute is done; the element it annotates still follows.
                return false;
            }
        }
        true
    }
}

/// One client command: its raw bytes (forwarded untouched) and its arguments.
#[derive(Debug, Clone)]
pub struct Command {
    /// The command exactly as it goes upstream (multibulk; inline commands are re-encoded).
    pub raw: Bytes,
    /// Arguments, `args[0]` being the command name as the client spelled it.
    pub args: Vec<Bytes>,
}

impl Command {
    /// Builds a command from arguments, encoding it as a RESP2 multibulk.
    pub fn from_args<I, A>(args: I) -> Command
    where
        I: IntoIterator<Item = A>,
        A: Into<Bytes>,
    {
        let args: Vec<Bytes> = args.into_iter().map(Into::into).collect();
        let mut raw =
            BytesMut::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
        encode_multibulk(&mut raw, &args);
        Command {
            raw: raw.freeze(),
            args,
        }
    }

    /// The command name, upper-cased.
    pub fn name(&self) -> String {
        self.args
            .first()
            .map(|a| String::from_utf8_lossy(a).to_ascii_uppercase())
            .unwrap_or_default()
    }

    /// Argument `i`, if present.
    pub fn arg(&self, i: usize) -> Option<&Bytes> {
        self.args.get(i)
    }
}

/// Appends `args` to `out` as a RESP2 array of bulk strings.
pub fn encode_multibulk<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) {
    let mut itoa = itoa_buf();
    out.extend_from_slice(b"*");
    out.extend_from_slice(fmt_usize(&mut itoa, args.len()));
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(b"$");
        out.extend_from_slice(fmt_usize(&mut itoa, a.len()));
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn itoa_buf() -> [u8; 20] {
    [0u8; 20]
}

fn fmt_usize(buf: &mut [u8; 20], mut n: usize) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// What the request parser found at the start of the buffer.
#[derive(Debug)]
pub enum Parsed {
    /// A command, which consumed that many bytes.
    Command(Command),
    /// An empty line or `*0`: consumed, nothing to run.
    Nothing,
}

/// Reads complete client commands off the front of a buffer.
#[derive(Debug, Default)]
pub struct RequestParser {
    scanner: Scanner,
}

impl RequestParser {
    /// Parses the next command from `buf`, consuming its bytes; `Ok(None)` means "need more".
    pub fn next(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<Parsed>, ProtocolError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != b'*' {
            return parse_inline(buf, limits);
        }
        let Some(len) = self.scanner.scan(buf, Side::Request, limits)? else {
            return Ok(None);
        };
        self.scanner.reset();
        let raw = buf.split_to(len).freeze();
        let frame = match redis_protocol::resp2::decode::decode_range(&raw) {
            Ok(Some((frame, _))) => frame,
            Ok(None) => return Err(ProtocolError::new("incomplete frame")),
            Err(e) => return Err(ProtocolError::new(e.details().to_string())),
        };
        let RangeFrame::Array(items) = frame else {
            return Ok(Some(Parsed::Nothing));
        };
        if items.is_empty() {
            return Ok(Some(Parsed::Nothing));
        }
        let mut args = Vec::with_capacity(items.len());
        for item in items {
            match item {
                RangeFrame::BulkString((s, e)) => args.push(raw.slice(s..e)),
                _ => return Err(ProtocolError::new("expected bulk string")),
            }
        }
        Ok(Some(Parsed::Command(Command { raw, args })))
    }
}

/// Parses a telnet-style inline command (`SET k v\r\n`) the way Redis's sdssplitargs does.
fn parse_inline(buf: &mut BytesMut, limits: &Limits) -> Result<Option<Parsed>, ProtocolError> {
    let Some(nl) = memchr::memchr(b'\n', buf) else {
        if buf.len() > limits.max_inline_len {
            return Err(ProtocolError::new("too big inline request"));
        }
        return Ok(None);
    };
    if nl > limits.max_inline_len {
        return Err(ProtocolError::new("too big inline request"));
    }
    let line = buf.split_to(nl + 1);
    let mut line = &line[..nl];
    if line.last() == Some(&b'\r') {
        line = &line[..line.len() - 1];
    }
    let args =
        split_args(line).ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
    if args.is_empty() {
        return Ok(Some(Parsed::Nothing));
    }
    Ok(Some(Parsed::Command(Command::from_args(args))))
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Splits a line into arguments with Redis's quoting rules; `None` on unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    // Redis splits a C string: a NUL byte ends the line.
    let line = &line[..memchr::memchr(0, line).unwrap_or(line.len())];
    let mut args = Vec::new();
    let mut i = 0;
    let n = line.len();
    loop {
        while i < n && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= n {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut in_dq = false;
        let mut in_sq = false;
        loop {
            if in_dq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\'
                    && i + 3 < n
                    && line[i + 1] == b'x'
                    && hex_val(line[i + 2]).is_some()
                    && hex_val(line[i + 3]).is_some()
                {
                    let hi = hex_val(line[i + 2]).unwrap_or(0);
                    let lo = hex_val(line[i + 3]).unwrap_or(0);
                    cur.push(hi * 16 + lo);
                    i += 3;
                } else if c == b'\\' && i + 1 < n {
                    i += 1;
                    cur.push(match line[i] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 8,
                        b'a' => 7,
                        other => other,
                    });
                } else if c == b'"' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    in_dq = false;
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if in_sq {
                if i >= n {
                    return None;
                }
                let c = line[i];
                if c == b'\\' && i + 1 < n && line[i + 1] == b'\'' {
                    i += 1;
                    cur.push(b'\'');
                } else if c == b'\'' {
                    if i + 1 < n && !line[i + 1].is_ascii_whitespace() {
                        return None;
                    }
                    in_sq = false;
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                if i >= n {
                    break;
                }
                match line[i] {
                    b' ' | b'\n' | b'\r' | b'\t' | b'\0' => break,
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    c => cur.push(c),
                }
            }
            i += 1;
        }
        if in_dq || in_sq {
            return None;
        }
        args.push(cur);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut p = RequestParser::default();
        let mut out = Vec::new();
        while let Some(parsed) = p.next(&mut buf, &Limits::default())? {
            if let Parsed::Command(c) = parsed {
                out.push(c.args.iter().map(|a| a.to_vec()).collect());
            }
        }
        Ok(out)
    }

    #[test]
    fn parses_pipelined_multibulk_and_inline() {
        let cmds = parse_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nSET a \"b c\"\r\n").unwrap();
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0], vec![b"GET".to_vec(), b"k".to_vec()]);
        assert_eq!(cmds[1], vec![b"PING".to_vec()]);
        assert_eq!(
            cmds[2],
            vec![b"SET".to_vec(), b"a".to_vec(), b"b c".to_vec()]
        );
    }

    #[test]
    fn waits_for_partial_frames_byte_by_byte() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        let mut buf = BytesMut::new();
        let mut p = RequestParser::default();
        for (i, b) in input.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = p.next(&mut buf, &Limits::default()).unwrap();
            if i + 1 < input.len() {
                assert!(r.is_none(), "complete too early at byte {i}");
            } else {
                assert!(matches!(r, Some(Parsed::Command(_))));
            }
        }
    }

    #[test]
    fn rejects_over_limit_lengths_before_buffering() {
        let limits = Limits {
            max_bulk_len: 10,
            max_multibulk_len: 4,
            max_inline_len: 16,
        };
        let mut p = RequestParser::default();
        let e = p
            .next(&mut BytesMut::from(&b"*5\r\n"[..]), &limits)
            .unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: invalid multibulk length");
        let mut p = RequestParser::default();
        let e = p
            .next(&mut BytesMut::from(&b"*1\r\n$11\r\n"[..]), &limits)
            .unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: invalid bulk length");
        let mut p = RequestParser::default();
        let e = p
            .next(&mut BytesMut::from(&b"*1\r\n:1\r\n"[..]), &limits)
            .unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: expected '$', got ':'");
        let mut p = RequestParser::default();
        let e = p
            .next(&mut BytesMut::from(&[b'A'; 40][..]), &limits)
            .unwrap_err();
        assert_eq!(e.to_string(), "Protocol error: too big inline request");
        let mut p = RequestParser::default();
        let e = p
            .next(&mut BytesMut::from(&b"SET \"a\r\n"[..]), &limits)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "Protocol error: unbalanced quotes in request"
        );
    }

    #[test]
    fn scans_resp3_replies_with_nesting_and_attributes() {
        // The second value of the map carries an attribute: still one frame, ending at 1.5.
        let reply = b"%2\r\n+a\r\n*2\r\n:1\r\n_\r\n$1\r\nb\r\n|1\r\n+k\r\n+v\r\n,1.5\r\n";
        let mut s = Scanner::default();
        let n = s.scan(reply, Side::Reply, &Limits::default()).unwrap();
        assert_eq!(n, Some(reply.len()));
        let mut s = Scanner::default();
        let cut = &reply[..reply.len() - 7];
        assert_eq!(s.scan(cut, Side::Reply, &Limits::default()).unwrap(), None);
        let mut s = Scanner::default();
        let tail = b"|1\r\n+k\r\n+v\r\n,1.5\r\n";
        assert_eq!(
            s.scan(tail, Side::Reply, &Limits::default()).unwrap(),
            Some(tail.len())
        );
        let mut s = Scanner::default();
        assert_eq!(
            s.scan(b"*-1\r\n$-1\r\n", Side::Reply, &Limits::default())
                .unwrap(),
            Some(5)
        );
    }

    #[test]
    fn scanner_resumes_across_reads() {
        let reply = b"*3\r\n$3\r\nfoo\r\n*1\r\n:42\r\n$-1\r\n";
        let mut s = Scanner::default();
        for cut in 0..reply.len() {
            let r = s
                .scan(&reply[..cut], Side::Reply, &Limits::default())
                .unwrap();
            assert_eq!(r, None, "cut {cut}");
        }
        assert_eq!(
            s.scan(reply, Side::Reply, &Limits::default()).unwrap(),
            Some(reply.len())
        );
    }

    #[test]
    fn split_args_handles_quotes_and_escapes() {
        assert_eq!(
            split_args(b"set k \"a\\x41\\n\" 'it\\'s'").unwrap(),
            vec![
                b"set".to_vec(),
                b"k".to_vec(),
                b"aA\n".to_vec(),
                b"it's".to_vec()
            ]
        );
        assert!(split_args(b"\"abc").is_none());
        assert_eq!(
            split_args(b"PING a\0b").unwrap(),
            vec![b"PING".to_vec(), b"a".to_vec()]
        );
        assert_eq!(split_args(b"\0").unwrap(), Vec::<Vec<u8>>::new());
        assert!(split_args(b"\"a\"b").is_none());
    }

    fn limits(bulk: usize, multibulk: usize) -> Limits {
        Limits {
            max_bulk_len: bulk,
            max_multibulk_len: multibulk,
            max_inline_len: 64,
        }
    }

    fn request_error(input: &[u8], l: &Limits) -> Option<String> {
        let mut buf = BytesMut::from(input);
        let mut p = RequestParser::default();
        loop {
            match p.next(&mut buf, l) {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(e) => return Some(e.0),
            }
        }
    }

    fn reply_scan(input: &[u8], l: &Limits) -> Result<Option<usize>, String> {
        Scanner::default()
            .scan(input, Side::Reply, l)
            .map_err(|e| e.0)
    }

    /// `n` nested one-element arrays around `:1`.
    fn nested(kind: u8, n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(kind);
            v.extend_from_slice(b"1\r\n");
            if kind == b'%' || kind == b'|' {
                v.extend_from_slice(b"+k\r\n");
            }
        }
        v.extend_from_slice(b":1\r\n");
        v
    }

    #[test]
    fn reply_nesting_is_limited_to_64_levels_for_every_aggregate() {
        for kind in [b'*', b'~', b'>', b'%'] {
            let ok = nested(kind, 64);
            assert_eq!(reply_scan(&ok, &Limits::default()), Ok(Some(ok.len())));
            let deep = nested(kind, 65);
            assert_eq!(
                reply_scan(&deep, &Limits::default()),
                Err("nesting too deep".to_string()),
                "{}",
                kind as char
            );
            // Refused as soon as the 65th header is seen, before the rest arrives.
            let cut = deep.len() - 4;
            assert_eq!(
                reply_scan(&deep[..cut], &Limits::default()),
                Err("nesting too deep".to_string())
            );
        }
        // Attributes count as a level too.
        let deep = nested(b'|', 65);
        assert!(reply_scan(&deep, &Limits::default()).is_err());
    }

    /// Found by the reply_parser fuzz target: a line that is only "\r\n" used to slice
    /// `rest[1..0]` and panic, on the reply side and inside a client's multibulk.
    #[test]
    fn empty_lines_are_errors_not_panics() {
        let l = Limits::default();
        assert_eq!(
            reply_scan(b"\r\n,1ve\n", &l),
            Err("unexpected type byte '\\r'".to_string())
        );
        assert_eq!(reply_scan(b"*1\r\n\r\n", &l).map_err(|_| ()), Err(()));
        assert_eq!(
            request_error(b"*1\r\n\r\n", &l).as_deref(),
            Some("expected '$', got '\r'")
        );
        assert_eq!(
            crate::reply::error("ERR Protocol error: expected '$', got '\r'").as_ref(),
            b"-ERR Protocol error: expected '$', got ' '\r\n",
            "the client sees Redis's wording, on one line"
        );
    }

    #[test]
    fn requests_cannot_nest_at_all() {
        let l = Limits::default();
        assert_eq!(
            request_error(b"*1\r\n*1\r\n$4\r\nPING\r\n", &l).as_deref(),
            Some("expected '$', got '*'")
        );
        assert_eq!(
            request_error(b"*2\r\n$3\r\nGET\r\n%1\r\n", &l).as_deref(),
            Some("expected '$', got '%'")
        );
    }

    #[test]
    fn header_lines_without_an_end_are_refused_past_64k() {
        let l = Limits::default();
        let mut long = b"*".to_vec();
        long.extend(std::iter::repeat_n(b'1', MAX_HEADER_LINE));
        assert_eq!(
            request_error(&long, &l).as_deref(),
            Some("too big mbulk count string")
        );
        let mut inner = b"*1\r\n$".to_vec();
        inner.extend(std::iter::repeat_n(b'1', MAX_HEADER_LINE));
        assert_eq!(
            request_error(&inner, &l).as_deref(),
            Some("too big bulk count string")
        );
        assert_eq!(
            reply_scan(&long, &l),
            Err("too big mbulk count string".to_string())
        );
        // Just under the limit is only "not yet complete".
        assert_eq!(request_error(&long[..MAX_HEADER_LINE], &l), None);
    }

    #[test]
    fn absurd_numbers_are_invalid_lengths() {
        let l = Limits::default();
        for (input, want) in [
            (
                &b"*99999999999999999999999\r\n"[..],
                "invalid multibulk length",
            ),
            (b"*9223372036854775807\r\n", "invalid multibulk length"),
            (b"*1\r\n$9223372036854775807\r\n", "invalid bulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$-2\r\n", "invalid bulk length"),
            (b"*1\r\n$1x\r\n", "invalid bulk length"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\n$\r\n", "invalid bulk length"),
        ] {
            assert_eq!(request_error(input, &l).as_deref(), Some(want), "{input:?}");
        }
        // Replies: nulls are fine, other negatives are not.
        assert_eq!(reply_scan(b"$-1\r\n", &l), Ok(Some(5)));
        assert_eq!(
            reply_scan(b"$-2\r\n", &l),
            Err("invalid bulk length".to_string())
        );
        assert_eq!(
            reply_scan(b"*-2\r\n", &l),
            Err("invalid multibulk length".to_string())
        );
        assert_eq!(
            reply_scan(b"%99999999999999999999\r\n", &l),
            Err("invalid multibulk length".to_string())
        );
    }

    proptest::proptest! {
        #[test]
        fn bulk_length_at_the_limit_waits_and_one_over_is_refused(limit in 1usize..100_000) {
            let l = limits(limit, 8);
            let at = format!("*1\r\n${limit}\r\n");
            proptest::prop_assert_eq!(request_error(at.as_bytes(), &l), None);
            let over = format!("*1\r\n${}\r\n", limit + 1);
            let err = request_error(over.as_bytes(), &l);
            proptest::prop_assert_eq!(err.as_deref(), Some("invalid bulk length"));
            // The same on the reply side, with that limit.
            proptest::prop_assert_eq!(reply_scan(at.as_bytes(), &l), Ok(None));
            proptest::prop_assert!(reply_scan(over.as_bytes(), &l).is_err());
        }

        #[test]
        fn array_count_at_the_limit_waits_and_one_over_is_refused(limit in 1usize..1_000_000) {
            let l = limits(16, limit);
            let at = format!("*{limit}\r\n$1\r\na\r\n");
            proptest::prop_assert_eq!(request_error(at.as_bytes(), &l), None);
            let over = format!("*{}\r\n", limit + 1);
            let err = request_error(over.as_bytes(), &l);
            proptest::prop_assert_eq!(err.as_deref(), Some("invalid multibulk length"));
            for kind in ['*', '~', '>', '%'] {
                let over = format!("{kind}{}\r\n", limit + 1);
                proptest::prop_assert!(reply_scan(over.as_bytes(), &l).is_err(), "{}", kind);
                let at = format!("{kind}{limit}\r\n");
                proptest::prop_assert_eq!(reply_scan(at.as_bytes(), &l), Ok(None));
            }
        }

        #[test]
        fn nesting_error_does_not_depend_on_where_reads_split(
            depth in 60usize..70,
            cut in 0usize..400,
        ) {
            let input = nested(b'*', depth);
            let cut = cut.min(input.len());
            let whole = reply_scan(&input, &Limits::default());
            let mut s = Scanner::default();
            let first = s.scan(&input[..cut], Side::Reply, &Limits::default());
            let resumed = match first {
                Err(e) => Err(e.0),
                Ok(Some(n)) => Ok(Some(n)),
                Ok(None) => s.scan(&input, Side::Reply, &Limits::default()).map_err(|e| e.0),
            };
            proptest::prop_assert_eq!(&whole, &resumed);
            proptest::prop_assert_eq!(whole.is_err(), depth > 64);
        }

        #[test]
        fn inline_length_limit_holds_for_any_line(len in 1usize..300, newline in proptest::bool::ANY) {
            let l = limits(16, 8);
            let mut input = vec![b'a'; len];
            if newline {
                input.extend_from_slice(b"\r\n");
            }
            let err = request_error(&input, &l);
            // Up to max_inline_len bytes before the newline are fine; more never are.
            let refused = if newline { len + 1 > l.max_inline_len } else { len > l.max_inline_len };
            proptest::prop_assert_eq!(err.is_some(), refused, "{:?}", err);
        }
    }
}
