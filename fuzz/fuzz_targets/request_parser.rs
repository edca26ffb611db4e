//! Client command parser: RESP multibulk and inline commands, under small and default limits.
//!
//! Besides "never panics", two properties: the result does not depend on how the input is split
//! across reads (the scanner is resumable), and every command respects the limits and
//! re-parses from its own raw bytes to the same arguments.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use statecar::protocol::{Limits, Parsed, RequestParser};

/// Commands (as argument lists) and the error, if any, from feeding `input` in `chunk`-byte
/// pieces (0: all at once).
fn parse(input: &[u8], chunk: usize, limits: &Limits) -> (Vec<Vec<Vec<u8>>>, Option<String>) {
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let step = if chunk == 0 {
        input.len().max(1)
    } else {
        chunk
    };
    for piece in input.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            let buf_before = buf.to_vec();
            let multibulk = buf.first() == Some(&b'*');
            match parser.next(&mut buf, limits, false) {
                Ok(Some(Parsed::Command(cmd))) => {
                    assert!(buf.len() < before, "a command consumed nothing");
                    assert!(cmd.argc() > 0);
                    if multibulk {
                        assert!(cmd.argc() <= limits.max_multibulk_len);
                        for a in cmd.args() {
                            assert!(a.len() <= limits.max_bulk_len, "bulk over the limit");
                        }
                    } else {
                        // An inline command is its line, up to and with the first '\n'.
                        let nl = input_line_end(&buf_before);
                        assert_eq!(Some(before - buf.len()), nl, "inline line length");
                    }
                    // The raw bytes forwarded upstream say exactly the same thing.
                    let mut again = BytesMut::from(&cmd.raw()[..]);
                    let mut p2 = RequestParser::default();
                    let big = Limits {
                        max_bulk_len: usize::MAX >> 1,
                        max_multibulk_len: usize::MAX >> 1,
                        max_inline_len: usize::MAX >> 1,
                    };
                    match p2.next(&mut again, &big, false) {
                        Ok(Some(Parsed::Command(c2))) => {
                            assert!(c2.args().eq(cmd.args()), "re-parsed arguments differ")
                        }
                        other => panic!("raw bytes of a command do not re-parse: {other:?}"),
                    }
                    assert!(again.is_empty(), "raw bytes longer than the command");
                    out.push(cmd.args().map(|a| a.to_vec()).collect());
                }
                Ok(Some(Parsed::Nothing)) => assert!(buf.len() < before, "nothing consumed"),
                Ok(None) => break,
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }
    (out, None)
}

/// Where an inline command's line ends (just past its '\n').
fn input_line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&c| c == b'\n').map(|i| i + 1)
}

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, input)) = data.split_first() else {
        return;
    };
    let limits = if knobs & 0x80 != 0 {
        Limits::default()
    } else {
        Limits {
            max_bulk_len: 64,
            max_multibulk_len: 8,
            max_inline_len: 128,
        }
    };
    let whole = parse(input, 0, &limits);
    let chunk = usize::from(knobs & 0x0f) + 1;
    let pieces = parse(input, chunk, &limits);
    assert_eq!(
        whole, pieces,
        "result depends on how the input was split ({chunk}-byte reads)"
    );
});
