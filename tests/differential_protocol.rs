//! Request parsing, differentially and end to end: the same client bytes go to a real
//! redis-server directly and to statecar (no state rules) in front of another, identical one, and
//! statecar must send back exactly Redis's bytes and close the connection exactly when Redis
//! does. The specification is Redis 7.0's own parser (networking.c: processInlineBuffer,
//! processMultibulkBuffer; util.c: string2ll; sds.c: sdssplitargs):
//!
//! - a `*`/`$` header ends at the first `\r` (strchr, so a NUL before it means "wait"); the
//!   byte after that `\r` is skipped unchecked; the number is string2ll's: no `+`, no leading
//!   zero, no `-0`, at most 20 characters, within i64;
//! - a multibulk count <= 0 is ignored, one over INT_MAX is `invalid multibulk length`;
//!   a bulk length < 0 or over proto-max-bulk-len (512 MB) is `invalid bulk length`;
//! - the two bytes after bulk data are not checked;
//! - inside a multibulk, a header not starting with `$` is `expected '$', got 'c'` (CR and LF
//!   shown as a space);
//! - inline lines end at the first `\n` (a NUL before it means "wait"), split by sdssplitargs
//!   (quotes, `\x` escapes, a closing quote followed by a non-space is an error); an empty
//!   line is ignored; 64 KB without an end is `too big inline request` (or `too big mbulk/bulk
//!   count string` for headers);
//! - after a protocol error Redis answers what came before, sends the error, and closes.
//!
//! statecar runs with its default limits, which are Redis's defaults where Redis has one
//! (512 MB bulk length, 64 KB inline); Redis 7.0 has no argument-count limit below INT_MAX.
//!
//! This file holds a fixed corpus of known edge cases, and the limits Redis applies to clients
//! that have not authenticated; differential_generated.rs generates streams. Every case is
//! followed by `ECHO <marker>` so that a connection that survives is seen to have answered
//! everything (see `common::exchange`). Commands in cases are idempotent (PING, ECHO, SET,
//! GET, EXISTS, STRLEN, unknown commands) so that a case can be re-run against Redis.

mod common;

use common::exchange::{Sides, differential, differential_unmarked, show};
use common::*;

/// One fixed case: a name, the bytes, and whether the marker command follows them (not when
/// the case is about a line with no end: the marker's `\n` would end it).
struct Case {
    name: String,
    bytes: Vec<u8>,
    marker: bool,
}

fn case(name: &str, bytes: impl AsRef<[u8]>) -> Case {
    Case {
        name: name.to_string(),
        bytes: bytes.as_ref().to_vec(),
        marker: true,
    }
}

fn case_alone(name: &str, bytes: impl AsRef<[u8]>) -> Case {
    Case {
        marker: false,
        ..case(name, bytes)
    }
}

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Runs the cases one after the other (so that a case that breaks something is named, not the
/// cases that happen to run beside it) and returns one line per mismatch.
async fn run_cases(dp: u16, pp: u16, cases: Vec<Case>) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, c) in cases.into_iter().enumerate() {
        let r = if c.marker {
            differential(dp, pp, &c.bytes, &format!("fixed-marker-{i}")).await
        } else {
            differential_unmarked(dp, pp, &c.bytes).await
        };
        if let Err(e) = r {
            failures.push(format!("case {i} ({}):\n      {e}", c.name));
        }
    }
    failures
}

fn fixed_corpus() -> Vec<Case> {
    let mut v = vec![
        // Signs, leading zeros, -0 (string2ll refuses them all).
        case("$+4", b"*1\r\n$+4\r\nPING\r\n"),
        case("$04", b"*1\r\n$04\r\nPING\r\n"),
        case("*+1", b"*+1\r\n$4\r\nPING\r\n"),
        case("*01", b"*01\r\n$4\r\nPING\r\n"),
        case("*00", b"*00\r\n"),
        case("$-0", b"*1\r\n$-0\r\n"),
        case("*-0", b"*-0\r\n"),
        case("$00", b"*1\r\n$00\r\n\r\n"),
        case("$ 4", b"*1\r\n$ 4\r\nPING\r\n"),
        case("$4 ", b"*1\r\n$4 \r\nPING\r\n"),
        case("* 1", b"* 1\r\n$4\r\nPING\r\n"),
        case("*1a", b"*1a\r\n"),
        case("*0x1", b"*0x1\r\n"),
        case("empty count", b"*\r\n"),
        case("empty bulk length", b"*1\r\n$\r\n"),
        case("$-", b"*1\r\n$-\r\n"),
        // Lengths <= 0: a multibulk count <= 0 is skipped, a bulk length < 0 is an error.
        case("*0 then PING", cat(&[b"*0\r\n", PING])),
        case("*-1 then PING", cat(&[b"*-1\r\n", PING])),
        case("*-5 then PING", cat(&[b"*-5\r\n", PING])),
        case(
            "*i64::MIN then PING",
            cat(&[b"*-9223372036854775808\r\n", PING]),
        ),
        case("*0 then bulk header", b"*0\r\n$4\r\nPING\r\n"),
        case("$-1", b"*1\r\n$-1\r\n"),
        case("$-5", b"*1\r\n$-5\r\n"),
        case("$0 empty command name", b"*1\r\n$0\r\n\r\n"),
        case("$0 argument", b"*2\r\n$4\r\nECHO\r\n$0\r\n\r\n"),
        // Overflow and the limits.
        case("*20 digits", b"*99999999999999999999\r\n"),
        case("*21 digits", b"*123456789012345678901\r\n"),
        case("*i64::MAX", b"*9223372036854775807\r\n"),
        case("*i64::MAX+1", b"*9223372036854775808\r\n"),
        case("*u64::MAX+1", b"*18446744073709551616\r\n"),
        case("*i64::MIN-1", b"*-9223372036854775809\r\n"),
        case("*INT_MAX+1", b"*2147483648\r\n"),
        case(
            "*INT_MAX waits for arguments",
            b"*2147483647\r\n$4\r\nPING\r\n",
        ),
        case(
            "*1048577 (Redis 7.0 has no argument-count limit below INT_MAX)",
            b"*1048577\r\n$4\r\nPING\r\n",
        ),
        case("$proto-max-bulk-len+1", b"*1\r\n$536870913\r\n"),
        case("$proto-max-bulk-len waits", b"*1\r\n$536870912\r\n"),
        case("$INT_MAX+1", b"*1\r\n$2147483648\r\n"),
        case("$20 digits", b"*1\r\n$99999999999999999999\r\n"),
        case("$u64::MAX", b"*1\r\n$18446744073709551615\r\n"),
        case("$i64::MIN", b"*1\r\n$-9223372036854775808\r\n"),
        case("$21 digits", b"*1\r\n$123456789012345678901\r\n"),
        // Missing or wrong CRLF in headers: a header ends at the first '\r', the next byte is
        // skipped unchecked; a NUL before the '\r' leaves Redis waiting.
        case("* header ends with LF only", b"*1\n$4\r\nPING\r\n"),
        case("* header CR then '$' skipped", b"*1\r$4\r\nPING\r\n"),
        case("* header CR then X skipped", b"*1\rX$4\r\nPING\r\n"),
        case("$ header ends with LF only", b"*1\r\n$4\nPING\r\n"),
        case("$ header CR then X skipped", b"*1\r\n$4\rXPING\r\n"),
        case("$ header CR then data", b"*1\r\n$4\rPING\r\n"),
        case("* header CR at the end", b"*1\r"),
        case("$ header CR at the end", b"*1\r\n$4\r"),
        case("NUL in bulk data", b"*2\r\n$4\r\nECHO\r\n$3\r\na\0b\r\n"),
        case("NUL in a command name", b"*1\r\n$4\r\nPI\0G\r\n"),
        // The two bytes after bulk data are not checked.
        case("trailer xx", cat(&[b"*1\r\n$4\r\nPINGxx", PING])),
        case("trailer LF LF", b"*1\r\n$4\r\nPING\n\n"),
        case("no trailer", b"*1\r\n$4\r\nPING"),
        case("data one short", b"*1\r\n$4\r\nPIN\r\n"),
        case("data one long", b"*1\r\n$3\r\nPING\r\n"),
        case("CRLF inside data", b"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n"),
        case(
            "trailer eats the next header",
            b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPINGab*",
        ),
        // Type bytes other than '$' inside a multibulk.
        case("':' in multibulk", b"*1\r\n:4\r\n"),
        case("'+' in multibulk", b"*1\r\n+PING\r\n"),
        case("'-' in multibulk", b"*1\r\n-4\r\n"),
        case("nested array", b"*2\r\n$4\r\nECHO\r\n*1\r\n$1\r\na\r\n"),
        case("inline word in multibulk", b"*1\r\nPING\r\n"),
        case("LF as type byte", b"*1\r\n\n4\r\n"),
        case("CR as type byte", b"*1\r\n\r\n"),
        case("0xff as type byte", b"*1\r\n\xff4\r\n"),
        case("space as type byte", b"*1\r\n 4\r\n"),
        case(
            "array header ends early",
            cat(&[b"*2\r\n$4\r\nECHO\r\n", PING]),
        ),
        // RESP types at the top level are inline commands for Redis.
        case("top-level bulk", b"$4\r\nPING\r\n"),
        case("top-level integer", b":1\r\n"),
        case("top-level RESP3 map", b"%1\r\n"),
        case("inline '*' after a space", b"  *1\r\n"),
        // Inline commands: sdssplitargs.
        case(
            "inline escapes",
            b"ECHO \"a\\x41\\x4g\\n\\r\\t\\b\\a\\\\\\\"\"\r\n",
        ),
        case("inline \\x not hex", b"ECHO \"\\xZZ\" \"\\x4\" \"\\x\"\r\n"),
        case("inline quote then non-space", b"ECHO \"abc\"d\r\n"),
        case("inline single quote then non-space", b"ECHO 'abc'd\r\n"),
        case("inline unbalanced double", b"ECHO \"ab\r\n"),
        case("inline unbalanced single", b"ECHO 'ab\r\n"),
        case("inline escaped closing quote", b"ECHO \"ab\\\"\r\n"),
        case("inline quote inside a word", b"ECHO a\"b\"c\r\n"),
        case("inline quote opens inside a word", b"ECHO a\"b c\"\r\n"),
        case(
            "inline single-quote escapes",
            b"ECHO 'a\\'b' 'c\\\"d' 'e\\nf'\r\n",
        ),
        case("inline empty quotes", b"ECHO \"\"\r\nECHO ''\r\n"),
        case("inline quoted command name", b"\"PING\" 'x'\r\n"),
        case("inline tabs", b"ECHO\thello\r\n"),
        case(
            "inline vertical tab and form feed",
            b"ECHO \x0b\x0ca\x0bb\r\n",
        ),
        case("inline VT inside a word", b"ECHO\x0bx\r\n"),
        case("inline leading and trailing blanks", b"   ECHO   x   \r\n"),
        case("inline CR CR LF", b"ECHO x\r\r\n"),
        case("inline CR inside quotes", b"ECHO \"x\r\"\r\n"),
        case("inline LF only", b"ECHO x\nPING\n"),
        case("inline 0xff bytes", b"ECHO \xff\xfe\r\n"),
        case("inline unknown command", b"NOSUCH a 'b c' \"d\"\r\n"),
        case("inline arity error", b"GET\r\n"),
        // Empty lines.
        case("empty CRLF line", cat(&[b"\r\n", PING])),
        case("empty LF line", cat(&[b"\n", PING])),
        case("blank line", cat(&[b"   \r\n\t\n", PING])),
        case("CR-only line", cat(&[b"\r\r\n", PING])),
        // Valid commands before the bad one are answered; nothing after it runs.
        case(
            "SET GET then bad count",
            cat(&[
                &encode(&["SET", "mixed1", "v"]),
                &encode(&["GET", "mixed1"]),
                b"*x\r\n",
                &encode(&["SET", "mixed1", "after"]),
            ]),
        ),
        case(
            "inline then unbalanced",
            b"PING\r\nECHO one\r\nECHO \"two\r\nPING\r\n",
        ),
        case(
            "PING then $+4",
            cat(&[PING, b"*1\r\n$+4\r\nPING\r\n", PING]),
        ),
        case(
            "mixed inline and multibulk",
            cat(&[
                b"SET mixed2 x\r\n",
                &encode(&["GET", "mixed2"]),
                b"EXISTS mixed2\n",
            ]),
        ),
        case(
            "QUIT in a pipeline",
            cat(&[PING, b"QUIT\r\n", &encode(&["SET", "mixed3", "after"])]),
        ),
        case(
            "a big argument",
            cat(&[
                b"*3\r\n$3\r\nSET\r\n$6\r\nbigarg\r\n$40000\r\n",
                &vec![b'v'; 40_000],
                b"\r\n",
                &encode(&["STRLEN", "bigarg"]),
            ]),
        ),
    ];
    // Inline lines near the 64 KB limit. With its "\r\n", a line of 65535 bytes never has more
    // than 65536 bytes buffered without a '\n', so Redis answers it however reads split.
    let mut long = b"ECHO ".to_vec();
    long.resize(65_535, b'x');
    long.extend_from_slice(b"\r\n");
    v.push(case("inline line of 65535 bytes", &long));
    // Without any '\n': 65536 bytes wait, one more is an error.
    v.push(case_alone("65536 bytes, no newline", vec![b'a'; 65_536]));
    v.push(case_alone("65537 bytes, no newline", vec![b'a'; 65_537]));
    let mut count = b"*".to_vec();
    count.resize(65_536, b'1');
    v.push(case_alone("* header of 65536 bytes", &count));
    count.push(b'1');
    v.push(case_alone("* header of 65537 bytes", &count));
    let mut bulk_hdr = b"*1\r\n$".to_vec();
    bulk_hdr.resize(4 + 65_536, b'1');
    v.push(case_alone("$ header of 65536 bytes", &bulk_hdr));
    bulk_hdr.push(b'1');
    v.push(case_alone("$ header of 65537 bytes", &bulk_hdr));
    v
}

/// A NUL byte before the end of a header or inline line: Redis's C-string search does not see
/// the line end and the client waits for more input (64 KB, then an error). statecar answers
/// instead, a documented deviation (docs/DESIGN.md, "Protocol errors"): a NUL in a header makes
/// its number invalid, an inline line ends at its NUL. Nothing reaches Redis's shared
/// connections either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_bytes_in_lines_are_answered_not_stalled() {
    let mut env = Sides::start(&[], "");
    let port = env.sc.port();
    for (bytes, want) in [
        (
            &b"*1\0\r\n$4\r\nPING\r\n"[..],
            &b"-ERR Protocol error: invalid multibulk length\r\n"[..],
        ),
        (
            b"*1\r\n$4\0\r\nPING\r\n",
            b"-ERR Protocol error: invalid bulk length\r\n",
        ),
    ] {
        let mut c = common::RawConn::connect(port).await;
        c.send(bytes).await;
        assert_eq!(c.read_to_eof().await, want, "{}", show(bytes, 40));
    }
    let mut c = common::RawConn::connect(port).await;
    c.send(b"ECHO a\0b\r\n\0\r\nPING\r\n").await;
    assert_eq!(c.read().await, common::bulk("a"));
    assert_eq!(c.read().await, common::Frame::Simple("PONG".into()));
    env.assert_still_serving().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_corpus_of_edge_cases_answers_like_redis() {
    let mut env = Sides::start(&[], "");
    let failures = run_cases(env.direct.port(), env.sc.port(), fixed_corpus()).await;
    assert!(
        failures.is_empty(),
        "{} case(s) where statecar did not answer as Redis:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    env.assert_still_serving().await;
}

/// Redis with requirepass refuses big headers from a client that has not authenticated
/// (`unauthenticated multibulk length` over 10 arguments, `unauthenticated bulk length` over
/// 16384 bytes) and checks the command name and arity before NOAUTH. statecar with its own
/// password must do the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_limits_answer_like_redis_with_requirepass() {
    let mut env = Sides::start(&["--requirepass", "pw"], "[auth]\npassword = \"pw\"\n");
    let ten: Vec<u8> = cat(&[b"*10\r\n", &b"$1\r\na\r\n".repeat(10)]);
    let eleven_args = {
        let mut a = vec!["RPUSH".to_string(), "unauth-l".to_string()];
        a.extend((0..9).map(|i| i.to_string()));
        encode(&a)
    };
    let bulk16384 = encode(&[&b"ECHO"[..], &vec![b'e'; 16_384]]);
    let bulk16385 = encode(&[&b"ECHO"[..], &vec![b'e'; 16_385]]);
    let cases = vec![
        case("*11 before AUTH", b"*11\r\n"),
        case("*12 HELLO before AUTH", b"*12\r\n$5\r\nHELLO\r\n"),
        case("*10 before AUTH", &ten),
        case("eleven arguments before AUTH", &eleven_args),
        case("$16385 before AUTH", b"*1\r\n$16385\r\n"),
        case("ECHO of 16384 bytes before AUTH", &bulk16384),
        case("ECHO of 16385 bytes before AUTH", &bulk16385),
        case(
            "AUTH with a $16385 password",
            b"*2\r\n$4\r\nAUTH\r\n$16385\r\n",
        ),
        case("*INT_MAX+1 before AUTH", b"*2147483648\r\n"),
        case("$-0 before AUTH", b"*1\r\n$-0\r\n"),
        case("*-5 then PING before AUTH", cat(&[b"*-5\r\n", PING])),
        case("PING before AUTH", PING),
        case("arity error before AUTH", b"GET\r\n"),
        case("unknown command before AUTH", b"NOSUCH x\r\n"),
        case("AUTH with no argument", b"AUTH\r\n"),
        case(
            "AUTH, then eleven arguments",
            cat(&[b"AUTH pw\r\n", &eleven_args]),
        ),
        case(
            "AUTH default, then $16385",
            cat(&[b"AUTH default pw\r\n", &bulk16385]),
        ),
        case("wrong AUTH, then *11", b"AUTH nope\r\n*11\r\n"),
        case(
            "wrong AUTH, then $16385",
            cat(&[b"AUTH nope\r\n", &bulk16385]),
        ),
    ];
    let failures = run_cases(env.direct.port(), env.sc.port(), cases).await;
    assert!(
        failures.is_empty(),
        "{} case(s) where statecar ([auth] password) did not answer as Redis \
         (requirepass):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    assert!(env.sc.is_running(), "statecar died");
    let mut c = RawConn::connect(env.sc.port()).await;
    assert_eq!(c.cmd(&["AUTH", "pw"]).await, ok());
    assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

/// The comparison itself is sound: with a second Redis in statecar's place, the corpus shows
/// no difference. (A case on which Redis is not deterministic, or a harness that reads too
/// little, would show up here instead of as a statecar failure.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_against_redis_shows_no_difference_on_the_corpus() {
    let (first, second) = (RedisServer::start(), RedisServer::start());
    let failures = run_cases(first.port(), second.port(), fixed_corpus()).await;
    assert!(
        failures.is_empty(),
        "two Redis servers differ on the fixed corpus:\n  {}",
        failures.join("\n  ")
    );
}
