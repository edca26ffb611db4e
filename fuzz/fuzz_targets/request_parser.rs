//! Client command parser: RESP multibulk and inline commands, under small and default limits.
//!
//! Besides "never panics", three properties: the result does not depend on how the input is split
//! across reads (the scanner is resumable); every command respects the limits and re-parses from
//! its own raw bytes to the same arguments; and handing an awaited bulk over to the caller
//! (`stream_off`, as the session does with big arguments) leaves the rest of the command and the
//! commands after it parsed exactly as without it.
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

/// What `input` parses to, fed in `chunk`-byte pieces, when every awaited bulk argument is
/// handed over to the caller as soon as its header is read: per command its name, its argument
/// count, the streamed argument (or None when it was parsed whole) and the arguments after it.
type Streamed = (Vec<u8>, usize, Option<(usize, Vec<u8>)>, Vec<Vec<u8>>);

fn parse_streaming(input: &[u8], chunk: usize, limits: &Limits) -> (Vec<Streamed>, Option<String>) {
    /// A command whose bulk went to the caller, while its bytes are skipped.
    struct Open {
        name: Vec<u8>,
        argc: usize,
        index: usize,
        bulk: usize,
        tail_args: usize,
        skip: usize,
        taken: Vec<u8>,
    }
    let mut parser = RequestParser::default();
    let mut buf = BytesMut::new();
    let mut out: Vec<Streamed> = Vec::new();
    let mut open: Option<Open> = None;
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            if let Some(o) = open.as_mut() {
                let n = o.skip.min(buf.len());
                o.taken.extend_from_slice(&buf.split_to(n));
                o.skip -= n;
                if o.skip > 0 {
                    break;
                }
                if o.tail_args == 0 {
                    // The command ends with the streamed bulk.
                    let data = o.taken[o.taken.len() - 2 - o.bulk..o.taken.len() - 2].to_vec();
                    out.push((o.name.clone(), o.argc, Some((o.index, data)), Vec::new()));
                    open = None;
                    continue;
                }
            }
            match parser.next(&mut buf, limits, false) {
                Ok(Some(Parsed::Command(cmd))) => {
                    let args: Vec<Vec<u8>> = cmd.args().map(|a| a.to_vec()).collect();
                    match open.take() {
                        Some(o) => {
                            let data =
                                o.taken[o.taken.len() - 2 - o.bulk..o.taken.len() - 2].to_vec();
                            assert_eq!(o.index + 1 + args.len(), o.argc, "tail length");
                            out.push((o.name, o.argc, Some((o.index, data)), args));
                        }
                        None => out.push((args[0].clone(), args.len(), None, args)),
                    }
                }
                Ok(Some(Parsed::Nothing)) => assert!(open.is_none(), "a tail parsed as nothing"),
                Ok(None) => {
                    if open.is_some() {
                        break;
                    }
                    let Some(p) = parser.pending_command(&buf) else {
                        break;
                    };
                    let (name, index, bulk) = (p.name.to_vec(), p.index, p.bulk);
                    let argc = usize::try_from(p.argc).expect("argc");
                    let off = parser.stream_off().expect("a bulk is awaited");
                    let tail_args = usize::try_from(off.tail_args).expect("tail");
                    assert_eq!(tail_args, argc - index - 1);
                    open = Some(Open {
                        name,
                        argc,
                        index,
                        bulk,
                        tail_args,
                        skip: off.forward,
                        taken: Vec::new(),
                    });
                }
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
    // The same commands when each awaited bulk is handed over.
    let (streamed, error) = parse_streaming(input, chunk, &limits);
    assert_eq!(error, pieces.1, "handing a bulk over changed the error");
    assert_eq!(
        streamed.len(),
        pieces.0.len(),
        "handing a bulk over changed the commands"
    );
    for (got, want) in streamed.iter().zip(&pieces.0) {
        let (name, argc, big, tail) = got;
        assert_eq!(name, &want[0], "name");
        assert_eq!(*argc, want.len(), "argument count");
        match big {
            None => assert_eq!(tail, want, "arguments"),
            Some((index, data)) => {
                assert_eq!(data, &want[*index], "the streamed argument");
                assert_eq!(&tail[..], &want[index + 1..], "the arguments after it");
            }
        }
    }
});
