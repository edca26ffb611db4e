//! The protocol tests from before the strict parser (issue 12), on the new types. Their
//! assertions are kept, except where issue 12 changed the behaviour on purpose (replies have no
//! limits: see the comments).

use bytes::BytesMut;

use super::inline::split_args;
use super::*;

fn parse_all(input: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    let mut buf = BytesMut::from(input);
    let mut p = RequestParser::default();
    let mut out = Vec::new();
    while let Some(parsed) = p.next(&mut buf, &Limits::default(), false)? {
        if let Parsed::Command(c) = parsed {
            out.push(c.args().map(|a| a.to_vec()).collect());
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
        let r = p.next(&mut buf, &Limits::default(), false).unwrap();
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
        .next(&mut BytesMut::from(&b"*5\r\n"[..]), &limits, false)
        .unwrap_err();
    assert_eq!(e.to_string(), "Protocol error: invalid multibulk length");
    let mut p = RequestParser::default();
    let e = p
        .next(&mut BytesMut::from(&b"*1\r\n$11\r\n"[..]), &limits, false)
        .unwrap_err();
    assert_eq!(e.to_string(), "Protocol error: invalid bulk length");
    let mut p = RequestParser::default();
    let e = p
        .next(&mut BytesMut::from(&b"*1\r\n:1\r\n"[..]), &limits, false)
        .unwrap_err();
    assert_eq!(e.to_string(), "Protocol error: expected '$', got ':'");
    let mut p = RequestParser::default();
    let e = p
        .next(&mut BytesMut::from(&[b'A'; 40][..]), &limits, false)
        .unwrap_err();
    assert_eq!(e.to_string(), "Protocol error: too big inline request");
    let mut p = RequestParser::default();
    let e = p
        .next(&mut BytesMut::from(&b"SET \"a\r\n"[..]), &limits, false)
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
    let mut s = ReplyScanner::default();
    let n = s.scan(reply).unwrap();
    assert_eq!(n, Some(reply.len()));
    let mut s = ReplyScanner::default();
    let cut = &reply[..reply.len() - 7];
    assert_eq!(s.scan(cut).unwrap(), None);
    let mut s = ReplyScanner::default();
    let tail = b"|1\r\n+k\r\n+v\r\n,1.5\r\n";
    assert_eq!(s.scan(tail).unwrap(), Some(tail.len()));
    let mut s = ReplyScanner::default();
    assert_eq!(s.scan(b"*-1\r\n$-1\r\n").unwrap(), Some(5));
}

#[test]
fn scanner_resumes_across_reads() {
    let reply = b"*3\r\n$3\r\nfoo\r\n*1\r\n:42\r\n$-1\r\n";
    let mut s = ReplyScanner::default();
    for cut in 0..reply.len() {
        let r = s.scan(&reply[..cut]).unwrap();
        assert_eq!(r, None, "cut {cut}");
    }
    assert_eq!(s.scan(reply).unwrap(), Some(reply.len()));
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

const MAX_HEADER_LINE: usize = request::INLINE_MAX;

fn request_error(input: &[u8], l: &Limits) -> Option<String> {
    let mut buf = BytesMut::from(input);
    let mut p = RequestParser::default();
    loop {
        match p.next(&mut buf, l, false) {
            Ok(Some(_)) => {}
            Ok(None) => return None,
            Err(e) => return Some(String::from_utf8_lossy(&e.0).into_owned()),
        }
    }
}

/// Replies have no limits (issue 12: any reply Redis can send is forwarded); `_l` is kept so
/// the assertions read as before.
fn reply_scan(input: &[u8], _l: &Limits) -> Result<Option<usize>, String> {
    ReplyScanner::default()
        .scan(input)
        .map_err(|e| String::from_utf8_lossy(&e.0).into_owned())
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

/// Before issue 12 replies were cut at 64 levels and the shared connection reset; a Lua
/// script can legally nest far deeper, so any depth is now forwarded.
#[test]
fn reply_nesting_is_limited_to_64_levels_for_every_aggregate() {
    for kind in [b'*', b'~', b'>', b'%'] {
        let ok = nested(kind, 64);
        assert_eq!(reply_scan(&ok, &Limits::default()), Ok(Some(ok.len())));
        let deep = nested(kind, 65);
        assert_eq!(
            reply_scan(&deep, &Limits::default()),
            Ok(Some(deep.len())),
            "{}",
            kind as char
        );
        let cut = deep.len() - 4;
        assert_eq!(reply_scan(&deep[..cut], &Limits::default()), Ok(None));
    }
}

/// Found by the reply_parser fuzz target: a line that is only "\r\n" used to slice
/// `rest[1..0]` and panic, on the reply side and inside a client's multibulk.
#[test]
fn empty_lines_are_errors_not_panics() {
    let l = Limits::default();
    assert!(reply_scan(b"\r\n,1ve\n", &l).is_err());
    assert_eq!(reply_scan(b"*1\r\n\r\n", &l).map_err(|_| ()), Err(()));
    assert_eq!(
        request_error(b"*1\r\n\r\n", &l).as_deref(),
        Some("expected '$', got '\r'")
    );
    assert_eq!(
        crate::protocol::reply::error("ERR Protocol error: expected '$', got '\r'").as_ref(),
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
    // A reply header is Redis's: it is waited for, however long.
    assert_eq!(reply_scan(&long, &l), Ok(None));
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
    assert!(reply_scan(b"$-2\r\n", &l).is_err());
    assert!(reply_scan(b"*-2\r\n", &l).is_err());
    assert!(reply_scan(b"%99999999999999999999\r\n", &l).is_err());
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
        // Replies have no such limit: both wait for their data.
        proptest::prop_assert_eq!(reply_scan(at.as_bytes(), &l), Ok(None));
        proptest::prop_assert_eq!(reply_scan(over.as_bytes(), &l), Ok(None));
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
            proptest::prop_assert_eq!(reply_scan(over.as_bytes(), &l), Ok(None), "{}", kind);
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
        let mut s = ReplyScanner::default();
        let first = s.scan(&input[..cut]);
        let resumed = match first {
            Err(e) => Err(String::from_utf8_lossy(&e.0).into_owned()),
            Ok(Some(n)) => Ok(Some(n)),
            Ok(None) => s.scan(&input).map_err(|e| String::from_utf8_lossy(&e.0).into_owned()),
        };
        proptest::prop_assert_eq!(&whole, &resumed);
        // Any depth is a whole frame now (see reply_nesting_is_limited_...).
        proptest::prop_assert_eq!(whole, Ok(Some(input.len())));
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
