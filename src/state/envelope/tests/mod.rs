//! Tests of the stored format. The helpers shared by every file are here; each file holds
//! one promise the envelope makes:
//! - `round_trip`: what is written reads back exactly, and is written as documented;
//! - `corruption`: damage, forgery and truncation are errors, never other bytes or "plain";
//! - `limits`: nothing a stored value claims makes the proxy allocate beyond the limit;
//! - `format2`: dictionaries and deltas, and format 1 unchanged beside them.

mod corruption;
mod format2;
mod limits;
mod round_trip;

use super::*;
use crate::state::sample::agent_session_json;
use proptest::prelude::*;

const MAX: usize = 64 << 20;

/// A header with a valid header CRC around an arbitrary payload, as an attacker or a buggy
/// writer could produce.
fn forge(codec_id: u8, flags: u16, original_len: u32, crc: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&SIGNATURE);
    out.push(codec_id);
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    out.extend_from_slice(&original_len.to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
    let hc = crc32fast::hash(&out);
    out.extend_from_slice(&hc.to_be_bytes());
    out.extend_from_slice(&version_patch(7));
    out.extend_from_slice(payload);
    out
}

/// The reply-frame decoder must agree with [`decode`] on every input: the same verdict,
/// and the same bytes inside `$<len>\r\n...\r\n`.
fn bulk_agrees(stored: &[u8]) -> Result<(), TestCaseError> {
    match (decode(stored, MAX), decode_bulk(stored, MAX)) {
        (Err(_), Err(_)) | (Ok(Decoded::Plain), Ok(None)) => Ok(()),
        (Ok(Decoded::State { value, .. }), Ok(Some((frame, n)))) => {
            let mut want = format!("${}\r\n", value.len()).into_bytes();
            want.extend_from_slice(&value);
            want.extend_from_slice(b"\r\n");
            prop_assert_eq!(n, value.len());
            prop_assert_eq!(&frame[..], &want[..]);
            Ok(())
        }
        (a, b) => Err(TestCaseError::fail(format!(
            "decode {:?} but decode_bulk {:?}",
            a.map(|d| matches!(d, Decoded::Plain)),
            b.map(|f| f.map(|f| f.1))
        ))),
    }
}

fn decoded_value(stored: &[u8]) -> Vec<u8> {
    match decode(stored, MAX) {
        Ok(Decoded::State { value, .. }) => value,
        other => panic!("expected a state value, got {other:?}"),
    }
}

fn any_codec() -> impl Strategy<Value = Codec> {
    prop::sample::select(Codec::ALL.to_vec())
}

/// Random bytes, compressible bytes (small alphabet) and realistic JSON, up to `max` long.
fn value_up_to(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..max),
        prop::collection::vec(0u8..4, 0..max),
        (any::<u64>(), 0..max).prop_map(|(seed, len)| agent_session_json(seed, len)),
    ]
}

fn any_value() -> impl Strategy<Value = Vec<u8>> {
    value_up_to(8192)
}
