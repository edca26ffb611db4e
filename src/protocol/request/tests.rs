//! The request parser against the inputs Redis accepts and rejects.

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
