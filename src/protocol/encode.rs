//! Encoding commands statecar sends itself.

use std::ops::Range;

use bytes::BytesMut;

use super::request::Args;

/// Appends `args` to `out` as a RESP2 array of bulk strings; returns where each argument's
/// data sits in `out` (offsets from where this command starts).
pub fn encode_multibulk<A: AsRef<[u8]>>(out: &mut BytesMut, args: &[A]) -> Args {
    let base = out.len();
    let mut ranges = Args::with_capacity(args.len());
    let mut n = itoa::Buffer::new();
    out.reserve(16 + args.iter().map(|a| a.as_ref().len() + 16).sum::<usize>());
    out.extend_from_slice(b"*");
    out.extend_from_slice(n.format(args.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(b"$");
        out.extend_from_slice(n.format(a.len()).as_bytes());
        out.extend_from_slice(b"\r\n");
        let start = out.len() - base;
        out.extend_from_slice(a);
        ranges.push(Range {
            start,
            end: start + a.len(),
        });
        out.extend_from_slice(b"\r\n");
    }
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_reports_argument_positions() {
        let mut out = BytesMut::from(&b"xx"[..]);
        let r = encode_multibulk(&mut out, &[&b"GET"[..], b"key"]);
        assert_eq!(&out[..], b"xx*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n");
        assert_eq!(&out[2..][r[1].clone()], b"key");
    }
}
