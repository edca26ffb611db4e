//! Replies from Redis: where each frame ends, whatever Redis can send.
//!
//! statecar forwards replies as the bytes Redis wrote; it only has to know where one ends. The
//! scanner keeps its place across reads (an 8 MB reply arriving in 64 KB pieces is scanned once,
//! not from the start on every read) and places no limit on nesting or size: any reply Redis can
//! produce, from a Lua table nested hundreds deep to a RESP3 attribute or push, must be forwarded,
//! because refusing one would mean dropping a connection that other clients share.

use super::ProtocolError;

/// Top bit of an open aggregate's count: the aggregate is a RESP3 attribute, which precedes the
/// element it annotates rather than being one.
const ATTRIBUTE: u64 = 1 << 63;

/// Resumable search for the end of one reply frame.
#[derive(Debug, Default)]
pub struct ReplyScanner {
    /// Offset of the next header not yet read.
    pos: usize,
    /// Children still owed by each open aggregate, innermost last.
    open: Vec<u64>,
    /// The most aggregates open at once so far.
    deepest: usize,
    /// How long the buffer must grow before the bulk string being waited for is whole (0: not
    /// waiting for one).
    needs: usize,
}

/// A length or count from a reply header: any non-negative i64 (Redis is trusted), or -1.
fn parse_len(line: &[u8]) -> Option<i64> {
    let (neg, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

fn bad(what: &str) -> ProtocolError {
    ProtocolError::new(what.as_bytes())
}

impl ReplyScanner {
    /// Forgets partial progress (after the caller took a frame).
    pub fn reset(&mut self) {
        self.pos = 0;
        self.open.clear();
        self.deepest = 0;
        self.needs = 0;
    }

    /// How deeply the frame scanned so far nests (0 for a simple value).
    pub fn deepest(&self) -> usize {
        self.deepest
    }

    /// How many bytes beyond the `buffered` ones the bulk string being waited for still needs
    /// (0 when not waiting for one): what a reader reserves room for at once.
    pub fn missing(&self, buffered: usize) -> usize {
        self.needs.saturating_sub(buffered)
    }

    /// Returns `Some(len)` once a whole frame occupies `buf[..len]`; `None` while more is needed.
    /// `buf` must start where the frame starts and only grow between calls.
    pub fn scan(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        loop {
            let start = self.pos;
            let Some(rest) = buf.get(start..).filter(|r| !r.is_empty()) else {
                return Ok(None);
            };
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                return Ok(None);
            };
            if nl == 0 || rest[nl - 1] != b'\r' {
                return Err(bad("invalid line ending in reply"));
            }
            let kind = rest[0];
            // A bare "\r\n" has no type byte: its "type" is the '\r'.
            let line = rest.get(1..nl - 1).unwrap_or_default();
            let header_end = start + nl + 1;
            match kind {
                b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => self.pos = header_end,
                b'$' | b'=' | b'!' => match parse_len(line) {
                    Some(-1) if kind == b'$' => self.pos = header_end,
                    Some(n) if n >= 0 => {
                        let end = (n as usize)
                            .checked_add(2)
                            .and_then(|n| n.checked_add(header_end))
                            .ok_or_else(|| bad("invalid bulk length in reply"))?;
                        if buf.len() < end {
                            self.needs = end;
                            return Ok(None);
                        }
                        self.needs = 0;
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(bad("bulk string not terminated by CRLF in reply"));
                        }
                        self.pos = end;
                    }
                    _ => return Err(bad("invalid bulk length in reply")),
                },
                b'*' | b'~' | b'>' | b'%' | b'|' => {
                    self.pos = header_end;
                    let n = match parse_len(line) {
                        Some(-1) if kind == b'*' => 0,
                        Some(n) if n >= 0 => n as u64,
                        _ => return Err(bad("invalid aggregate length in reply")),
                    };
                    let children = if matches!(kind, b'%' | b'|') {
                        n.checked_mul(2)
                            .filter(|c| c & ATTRIBUTE == 0)
                            .ok_or_else(|| bad("invalid aggregate length in reply"))?
                    } else {
                        n
                    };
                    if children > 0 {
                        self.open
                            .push(children | if kind == b'|' { ATTRIBUTE } else { 0 });
                        self.deepest = self.deepest.max(self.open.len());
                        continue;
                    }
                    if kind == b'|' {
                        // An empty attribute: the annotated element still follows.
                        continue;
                    }
                }
                other => {
                    return Err(ProtocolError(
                        [
                            &b"unexpected type byte in reply: '"[..],
                            &other.escape_ascii().collect::<Vec<u8>>(),
                            b"'",
                        ]
                        .concat(),
                    ));
                }
            }
            if self.finish_element() {
                return Ok(Some(self.pos));
            }
        }
    }

    /// Records that one element ended; true when that completed the whole frame.
    fn finish_element(&mut self) -> bool {
        while let Some(top) = self.open.last_mut() {
            let left = (*top & !ATTRIBUTE) - 1;
            if left > 0 {
                *top = left | (*top & ATTRIBUTE);
                return false;
            }
            let was_attribute = *top & ATTRIBUTE != 0;
            self.open.pop();
            if was_attribute {
                // The attribute is done; the element it annotates still follows.
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(b: &[u8]) -> Result<Option<usize>, ProtocolError> {
        ReplyScanner::default().scan(b)
    }

    /// `n` nested one-element aggregates around `:1`.
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
    fn missing_says_how_much_of_a_partial_bulk_is_still_to_come() {
        let mut sc = ReplyScanner::default();
        let mut buf = b"*2\r\n$3\r\nabc\r\n$2000000\r\nxy".to_vec();
        assert_eq!(sc.missing(0), 0);
        assert_eq!(sc.scan(&buf).unwrap(), None);
        // "*2\r\n$3\r\nabc\r\n" is 13 bytes, "$2000000\r\n" 10, then 2,000,000 + CRLF.
        assert_eq!(sc.missing(0), 13 + 10 + 2_000_002);
        assert_eq!(sc.missing(buf.len()), 2_000_000);
        buf.resize(13 + 10 + 2_000_000, b'x');
        buf.extend_from_slice(b"\r\n");
        assert_eq!(sc.scan(&buf).unwrap(), Some(buf.len()));
        assert_eq!(sc.missing(0), 0);
        sc.reset();
        assert_eq!(sc.scan(b"$10\r\nab").unwrap(), None);
        assert_eq!(sc.missing(0), 17);
        assert_eq!(sc.missing(7), 10);
        assert_eq!(sc.missing(100), 0);
        sc.reset();
        assert_eq!(sc.missing(0), 0);
    }

    #[test]
    fn resp3_with_nesting_and_attributes() {
        let reply = b"%2\r\n+a\r\n*2\r\n:1\r\n_\r\n$1\r\nb\r\n|1\r\n+k\r\n+v\r\n,1.5\r\n";
        assert_eq!(scan(reply).unwrap(), Some(reply.len()));
        assert_eq!(scan(&reply[..reply.len() - 7]).unwrap(), None);
        let tail = b"|1\r\n+k\r\n+v\r\n,1.5\r\n";
        assert_eq!(scan(tail).unwrap(), Some(tail.len()));
        assert_eq!(scan(b"*-1\r\n$-1\r\n").unwrap(), Some(5));
        assert_eq!(scan(b"*0\r\n").unwrap(), Some(4));
        assert_eq!(scan(b">3\r\n+message\r\n+c\r\n+m\r\n").unwrap(), Some(22));
    }

    #[test]
    fn any_depth_is_forwarded() {
        for kind in [b'*', b'~', b'>', b'%'] {
            for depth in [1, 64, 65, 200, 10_000] {
                let r = nested(kind, depth);
                assert_eq!(
                    scan(&r).unwrap(),
                    Some(r.len()),
                    "{} x{depth}",
                    kind as char
                );
            }
        }
        // Attributes annotate the element after them, at any depth too.
        let mut r = Vec::new();
        for _ in 0..200 {
            r.extend_from_slice(b"|1\r\n+k\r\n+v\r\n*1\r\n");
        }
        r.extend_from_slice(b":1\r\n");
        assert_eq!(scan(&r).unwrap(), Some(r.len()));
        assert_eq!(scan(&r[..r.len() - 1]).unwrap(), None);
    }

    #[test]
    fn resumes_across_reads() {
        let reply = b"*3\r\n$3\r\nfoo\r\n*1\r\n:42\r\n$-1\r\n";
        let mut s = ReplyScanner::default();
        for cut in 0..reply.len() {
            assert_eq!(s.scan(&reply[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(s.scan(reply).unwrap(), Some(reply.len()));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bad in [
            &b"\r\n"[..],
            b"x\r\n",
            b"$-2\r\n",
            b"*-2\r\n",
            b"$1\r\nab\r\n",
            b"$99999999999999999999\r\n",
            b"%9223372036854775807\r\n",
            b"+a\n",
        ] {
            assert!(scan(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_split_finds_the_same_end(depth in 0usize..300, cut in 0usize..2000) {
            let input = nested(b'*', depth);
            let cut = cut.min(input.len());
            let mut s = ReplyScanner::default();
            let first = s.scan(&input[..cut]).unwrap();
            let end = match first {
                Some(n) => n,
                None => s.scan(&input).unwrap().unwrap_or(0),
            };
            proptest::prop_assert_eq!(end, input.len());
        }
    }
}
