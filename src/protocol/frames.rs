//! Taking replies apart without a general parser: frame boundaries, array elements, bulk
//! payloads. Used where statecar must look inside a reply (state keys, cluster redirects,
//! transactions); everything else is forwarded as bytes.

use std::ops::Range;

use bytes::Bytes;
use redis_protocol::resp3::types::BytesFrame;

use super::scan::ReplyScanner;

/// Where each reply frame in `bytes` (frames back to back) lies; anything that does not scan as
/// a whole frame is the last range.
pub fn frame_ranges(bytes: &[u8]) -> impl Iterator<Item = Range<usize>> + '_ {
    let mut pos = 0;
    std::iter::from_fn(move || {
        if pos >= bytes.len() {
            return None;
        }
        let n = match ReplyScanner::default().scan(&bytes[pos..]) {
            Ok(Some(n)) => n,
            _ => bytes.len() - pos,
        };
        let r = pos..pos + n;
        pos += n;
        Some(r)
    })
}

/// Splits a run of reply frames into frames.
pub fn frames(bytes: &Bytes) -> Vec<Bytes> {
    frame_ranges(bytes).map(|r| bytes.slice(r)).collect()
}

/// Everything after the first frame (the reply that follows ASKING's `+OK`).
pub fn skip_first(both: &Bytes) -> Bytes {
    match ReplyScanner::default().scan(both) {
        Ok(Some(n)) => both.slice(n..),
        _ => both.clone(),
    }
}

/// Splits an array reply into its element frames; None if it is not a (non-null) array.
pub fn split_array(frame: &Bytes) -> Option<Vec<Bytes>> {
    let rest = frame.strip_prefix(b"*")?;
    let nl = memchr::memchr(b'\n', rest)?;
    let n = super::request::string2ll(rest.get(..nl.checked_sub(1)?)?)?;
    let n = usize::try_from(n).ok()?;
    let mut out = Vec::with_capacity(n.min(1024));
    let mut pos = nl + 2;
    for _ in 0..n {
        let len = ReplyScanner::default().scan(frame.get(pos..)?).ok()??;
        out.push(frame.slice(pos..pos + len));
        pos += len;
    }
    Some(out)
}

/// The payload of a complete bulk string frame (`$<len>\r\n<payload>\r\n`).
pub fn bulk_payload(frame: &[u8]) -> Option<&[u8]> {
    let rest = frame.strip_prefix(b"$")?;
    let nl = memchr::memchr(b'\n', rest)?;
    let n = super::request::string2ll(rest.get(..nl.checked_sub(1)?)?)?;
    let n = usize::try_from(n).ok()?;
    let payload = rest.get(nl + 1..)?;
    (payload.len() == n.checked_add(2)? && payload.ends_with(b"\r\n")).then(|| &payload[..n])
}

/// Whether a reply frame is an error (`-` simple error or `!` blob error).
pub fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-' | b'!'))
}

/// Deepest nesting [`decode`] accepts: its parser recurses, and a reply Redis produces for a
/// client (a Lua table nested thousands deep) must never exhaust a thread's stack.
pub const DECODE_MAX_DEPTH: usize = 128;

/// Parses a complete reply frame into a RESP3 frame (RESP3's types include RESP2's), for the
/// few replies statecar reads in full. None if it is not one whole frame or nests deeper than
/// [`DECODE_MAX_DEPTH`]. RESP2 is tried first when the frame starts like RESP2.
pub fn decode(frame: &Bytes) -> Option<BytesFrame> {
    let mut s = ReplyScanner::default();
    if s.scan(frame).ok()?? != frame.len() || s.deepest() > DECODE_MAX_DEPTH {
        return None;
    }
    let resp2_first = matches!(frame.first(), Some(b'+' | b'-' | b':' | b'$' | b'*'));
    if resp2_first && let Ok(Some((f, _))) = redis_protocol::resp2::decode::decode_bytes(frame) {
        return Some(f.into_resp3());
    }
    match redis_protocol::resp3::decode::complete::decode_bytes(frame) {
        Ok(Some((f, _))) => Some(f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_back_to_back_frames_and_keep_a_partial_tail() {
        let b = b"+OK\r\n*2\r\n:1\r\n:2\r\n$-1\r\n+partial";
        let r: Vec<_> = frame_ranges(b).collect();
        assert_eq!(r, vec![0..5, 5..17, 17..22, 22..30]);
    }

    #[test]
    fn arrays_and_bulks() {
        let a = Bytes::from_static(b"*3\r\n:1\r\n*1\r\n+x\r\n$2\r\nab\r\n");
        let items = split_array(&a).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(&items[1][..], b"*1\r\n+x\r\n");
        assert_eq!(split_array(&Bytes::from_static(b"*-1\r\n")), None);
        assert_eq!(split_array(&Bytes::from_static(b"*2\r\n:1\r\n")), None);
        assert_eq!(bulk_payload(b"$2\r\nab\r\n"), Some(&b"ab"[..]));
        assert_eq!(bulk_payload(b"$0\r\n\r\n"), Some(&b""[..]));
        assert_eq!(bulk_payload(b"$3\r\nab\r\n"), None);
        assert_eq!(bulk_payload(b"$-1\r\n"), None);
        assert_eq!(
            skip_first(&Bytes::from_static(b"+OK\r\n:1\r\n")),
            Bytes::from_static(b":1\r\n")
        );
    }

    #[test]
    fn bulk_payloads_refuse_every_malformed_shape() {
        assert_eq!(bulk_payload(b"$3\r\nabc\r\n"), Some(&b"abc"[..]));
        assert_eq!(bulk_payload(b"$3\r\nabcd\r\n"), None);
        assert_eq!(bulk_payload(b"$3\r\nabcXY"), None);
        assert_eq!(bulk_payload(b"$\r\n\r\n"), None);
        assert_eq!(bulk_payload(b"+OK\r\n"), None);
        assert_eq!(bulk_payload(b"$99999999999999\r\nx\r\n"), None);
    }

    #[test]
    fn arrays_split_with_null_and_nested_elements() {
        let f = Bytes::from_static(b"*3\r\n$1\r\na\r\n$-1\r\n*1\r\n:1\r\n");
        let parts = split_array(&f).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(&parts[1][..], b"$-1\r\n");
        assert_eq!(&parts[2][..], b"*1\r\n:1\r\n");
    }
}
