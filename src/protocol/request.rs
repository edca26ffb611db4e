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
mod tests {
    use super::*;

    fn run(input: &[u8], limits: &Limits, unauth: bool) -> (Vec<Vec<Vec<u8>>>, Option<String>) {
        let mut buf = BytesMut::from(input);
        let mut p = RequestParser::default();
        let mut out = Vec::new();
        loop {
            match p.next(&mut buf, limits, unauth) {
                Ok(Some(Parsed::Command(c))) => out.push(c.args().map(<[u8]>::to_vec).collect()),
                Ok(Some(Parsed::Nothing)) => {}
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(String::from_utf8_lossy(&e.0).into_owned())),
            }
        }
    }

    fn cmds(input: &[u8]) -> Vec<Vec<Vec<u8>>> {
        let (c, e) = run(input, &Limits::default(), false);
        assert_eq!(e, None, "{input:?}");
        c
    }

    fn err(input: &[u8]) -> Option<String> {
        run(input, &Limits::default(), false).1
    }

    fn v(args: &[&str]) -> Vec<Vec<u8>> {
        args.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    #[test]
    fn pipelined_multibulk_and_inline() {
        let c = cmds(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\nSET a \"b c\"\r\n");
        assert_eq!(
            c,
            vec![v(&["GET", "k"]), v(&["PING"]), v(&["SET", "a", "b c"])]
        );
    }

    #[test]
    fn raw_bytes_are_kept_and_ranges_point_into_them() {
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*1\r\n"[..]);
        let mut p = RequestParser::default();
        let Ok(Some(Parsed::Command(r))) = p.next(&mut buf, &Limits::default(), false) else {
            panic!("no command");
        };
        assert_eq!(&r.raw()[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(r.arg(1), Some(&b"k"[..]));
        assert_eq!(&r.arg_bytes(0).unwrap()[..], b"GET");
        assert_eq!(&buf[..], b"*1\r\n", "the next command stays");
    }

    #[test]
    fn a_streamed_argument_leaves_the_rest_of_its_command_to_parse() {
        let limits = Limits::default();
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nhel"[..]);
        assert!(p.next(&mut buf, &limits, false).unwrap().is_none());
        let pending = p.pending_command(&buf).expect("a bulk is awaited");
        assert_eq!(
            (pending.name, pending.first),
            (&b"SET"[..], Some(&b"k"[..]))
        );
        assert_eq!((pending.index, pending.argc, pending.bulk), (2, 5, 10));
        let off = p.stream_off().expect("a bulk is awaited");
        // "*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\n" is 25 bytes, then 10 of data and CRLF.
        assert_eq!(
            off,
            StreamOff {
                forward: 37,
                tail_args: 2
            }
        );
        assert!(p.stream_off().is_none() && p.pending_command(&buf).is_none());
        // The caller forwards those 37 bytes; what follows is the tail and the next command.
        buf.clear();
        buf.extend_from_slice(b"$2\r\nEX\r\n$2\r\n10\r\n*1\r\n$4\r\nPING\r\n");
        let Ok(Some(Parsed::Command(tail))) = p.next(&mut buf, &limits, false) else {
            panic!("no tail");
        };
        assert_eq!(&tail.raw()[..], b"$2\r\nEX\r\n$2\r\n10\r\n");
        assert_eq!(
            tail.args().collect::<Vec<_>>(),
            vec![&b"EX"[..], &b"10"[..]]
        );
        let Ok(Some(Parsed::Command(ping))) = p.next(&mut buf, &limits, false) else {
            panic!("no PING");
        };
        assert_eq!(ping.name(), b"PING");
        // A tail is parsed as strictly as a whole command.
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n"[..]);
        assert!(p.next(&mut buf, &limits, false).unwrap().is_none());
        assert_eq!(p.stream_off().map(|o| o.tail_args), Some(0));
        let mut p = RequestParser::default();
        let mut buf = BytesMut::from(&b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n"[..]);
        assert!(p.next(&mut buf, &limits, false).unwrap().is_none());
        assert!(p.stream_off().is_some());
        let mut buf = BytesMut::from(&b"x2\r\nEX\r\n"[..]);
        assert_eq!(
            p.next(&mut buf, &limits, false).unwrap_err().0,
            &b"expected '$', got 'x'"[..]
        );
    }

    #[test]
    fn resumes_byte_by_byte() {
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
        let mut buf = BytesMut::new();
        let mut p = RequestParser::default();
        for (i, b) in input.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = p.next(&mut buf, &Limits::default(), false).unwrap();
            if i + 1 < input.len() {
                assert!(r.is_none(), "complete too early at byte {i}");
            } else {
                let Some(Parsed::Command(c)) = r else {
                    panic!()
                };
                assert_eq!(
                    c.args().map(<[u8]>::to_vec).collect::<Vec<_>>(),
                    v(&["SET", "k", "hello"])
                );
            }
        }
    }

    #[test]
    fn numbers_follow_string2ll() {
        assert_eq!(string2ll(b"0"), Some(0));
        assert_eq!(string2ll(b"-1"), Some(-1));
        assert_eq!(string2ll(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(string2ll(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"+1",
            b"01",
            b"00",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"-9223372036854775809",
            b"123456789012345678901",
            b"1x",
        ] {
            assert_eq!(string2ll(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn redis_wording_for_bad_lengths() {
        for (input, want) in [
            (&b"*+1\r\n"[..], "invalid multibulk length"),
            (b"*01\r\n", "invalid multibulk length"),
            (b"*-0\r\n", "invalid multibulk length"),
            (b"*2147483648\r\n", "invalid multibulk length"),
            (b"*99999999999999999999999\r\n", "invalid multibulk length"),
            (b"*x\r\n", "invalid multibulk length"),
            (b"*1\r\n$+4\r\nPING\r\n", "invalid bulk length"),
            (b"*1\r\n$04\r\nPING\r\n", "invalid bulk length"),
            (b"*1\r\n$-0\r\n", "invalid bulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$\r\n", "invalid bulk length"),
            (b"*1\r\n$536870913\r\n", "invalid bulk length"),
            (b"*1\r\n:1\r\n", "expected '$', got ':'"),
            (b"*1\r\n*1\r\n", "expected '$', got '*'"),
        ] {
            assert_eq!(err(input).as_deref(), Some(want), "{input:?}");
        }
        // The largest values Redis accepts only wait for more input.
        assert_eq!(err(b"*2147483647\r\n"), None);
        assert_eq!(err(b"*1\r\n$536870912\r\n"), None);
    }

    #[test]
    fn lengths_of_zero_or_less_are_ignored_and_the_next_command_runs() {
        assert_eq!(cmds(b"*-5\r\n*1\r\n$4\r\nPING\r\n"), vec![v(&["PING"])]);
        assert_eq!(cmds(b"*0\r\n*-1\r\nPING\r\n"), vec![v(&["PING"])]);
    }

    #[test]
    fn header_line_endings_are_found_by_cr_and_the_next_byte_is_not_checked() {
        // Redis skips the byte after '\r' and the two bytes after bulk data without reading
        // them: these are accepted exactly as Redis accepts them.
        assert_eq!(cmds(b"*1\rX$4\r\nPINGxx"), vec![v(&["PING"])]);
        // A '\r' with nothing after it yet: wait.
        assert_eq!(cmds(b"*1\r"), Vec::<Vec<Vec<u8>>>::new());
        assert_eq!(cmds(b"*1\r\n$4\r\nPING\r"), Vec::<Vec<Vec<u8>>>::new());
        // A '\n' without '\r' is part of the number.
        assert_eq!(
            err(b"*1\n$4\r\nPING\r\n").as_deref(),
            Some("invalid multibulk length")
        );
        // The type byte is only checked once the header's '\r' is there.
        assert_eq!(err(b"*1\r\n:1"), None);
    }

    #[test]
    fn a_nul_does_not_stall_the_client() {
        // Redis waits for more input here (its C-string search stops at the NUL); statecar
        // answers instead (docs/DESIGN.md).
        assert_eq!(
            err(b"*1\0\r\n$4\r\nPING\r\n").as_deref(),
            Some("invalid multibulk length")
        );
        assert_eq!(
            err(b"*1\r\n$4\0\r\nPING\r\n").as_deref(),
            Some("invalid bulk length")
        );
        assert_eq!(
            cmds(b"PING a\0b\r\nPING\r\n"),
            vec![v(&["PING", "a"]), v(&["PING"])]
        );
        // Header lines with no end at all are refused past 64 KB, as by Redis.
        let mut big = b"*1".to_vec();
        big.resize(INLINE_MAX + 1, b'1');
        assert_eq!(err(&big).as_deref(), Some("too big mbulk count string"));
        let mut big = b"*1\r\n$1".to_vec();
        big.resize(INLINE_MAX + 5, b'1');
        assert_eq!(err(&big).as_deref(), Some("too big bulk count string"));
    }

    #[test]
    fn bulk_data_may_hold_anything() {
        assert_eq!(
            cmds(b"*2\r\n$4\r\nECHO\r\n$3\r\n\0\r\n\r\n"),
            vec![vec![b"ECHO".to_vec(), b"\0\r\n".to_vec()]]
        );
    }

    #[test]
    fn unauthenticated_limits() {
        let l = Limits::default();
        let (_, e) = run(b"*11\r\n", &l, true);
        assert_eq!(e.as_deref(), Some("unauthenticated multibulk length"));
        let (_, e) = run(b"*10\r\n", &l, true);
        assert_eq!(e, None);
        let (_, e) = run(b"*2\r\n$4\r\nAUTH\r\n$16385\r\n", &l, true);
        assert_eq!(e.as_deref(), Some("unauthenticated bulk length"));
        let (_, e) = run(b"*2\r\n$4\r\nAUTH\r\n$16384\r\n", &l, true);
        assert_eq!(e, None);
        // Validity comes first: a bad number is "invalid", authenticated or not.
        let (_, e) = run(b"*+11\r\n", &l, true);
        assert_eq!(e.as_deref(), Some("invalid multibulk length"));
    }

    #[test]
    fn configured_limits_are_lower_bounds_on_what_is_refused() {
        let l = Limits {
            max_bulk_len: 10,
            max_multibulk_len: 4,
            max_inline_len: 16,
        };
        assert_eq!(
            run(b"*5\r\n", &l, false).1.as_deref(),
            Some("invalid multibulk length")
        );
        assert_eq!(run(b"*4\r\n", &l, false).1, None);
        assert_eq!(
            run(b"*1\r\n$11\r\n", &l, false).1.as_deref(),
            Some("invalid bulk length")
        );
        assert_eq!(run(b"*1\r\n$10\r\n", &l, false).1, None);
        assert_eq!(
            run(&[b'a'; 17], &l, false).1.as_deref(),
            Some("too big inline request")
        );
        assert_eq!(run(&[b'a'; 16], &l, false).1, None);
    }

    #[test]
    fn inline_lines() {
        assert_eq!(cmds(b"\r\n\n  \r\nPING\n"), vec![v(&["PING"])]);
        assert_eq!(
            err(b"SET \"a\r\n").as_deref(),
            Some("unbalanced quotes in request")
        );
        let mut long = vec![b'a'; INLINE_MAX + 1];
        assert_eq!(err(&long).as_deref(), Some("too big inline request"));
        long.truncate(INLINE_MAX);
        assert_eq!(err(&long), None);
        // An inline command is forwarded as a multibulk.
        let mut buf = BytesMut::from(&b"GET k\r\n"[..]);
        let Ok(Some(Parsed::Command(r))) =
            RequestParser::default().next(&mut buf, &Limits::default(), false)
        else {
            panic!()
        };
        assert_eq!(&r.raw()[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
    }

    #[test]
    fn a_bad_command_after_good_ones_leaves_them_parsed() {
        let (c, e) = run(
            b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n$+1\r\n",
            &Limits::default(),
            false,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(e.as_deref(), Some("invalid bulk length"));
    }

    proptest::proptest! {
        /// Any split of any valid pipeline parses to the same commands as the whole.
        #[test]
        fn splitting_never_changes_the_result(
            args in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..20), 1..6),
            cut in 0usize..200,
        ) {
            let req = Request::from_args(&args);
            let mut whole = req.raw().to_vec();
            whole.extend_from_slice(req.raw());
            let cut = cut.min(whole.len());
            let mut buf = BytesMut::from(&whole[..cut]);
            let mut p = RequestParser::default();
            let mut got = Vec::new();
            loop {
                match p.next(&mut buf, &Limits::default(), false) {
                    Ok(Some(Parsed::Command(c))) => got.push(c.args().map(<[u8]>::to_vec).collect::<Vec<_>>()),
                    Ok(Some(Parsed::Nothing)) => {}
                    Ok(None) => break,
                    Err(e) => proptest::prop_assert!(false, "{:?}", e),
                }
            }
            buf.extend_from_slice(&whole[cut..]);
            loop {
                match p.next(&mut buf, &Limits::default(), false) {
                    Ok(Some(Parsed::Command(c))) => got.push(c.args().map(<[u8]>::to_vec).collect::<Vec<_>>()),
                    Ok(Some(Parsed::Nothing)) => {}
                    Ok(None) => break,
                    Err(e) => proptest::prop_assert!(false, "{:?}", e),
                }
            }
            proptest::prop_assert_eq!(got, vec![args.clone(), args]);
            proptest::prop_assert!(buf.is_empty());
        }
    }
}
