//! The stored format: arbitrary stored values, and forged envelopes of both formats (a valid
//! header CRC around fuzzed codec ids, lengths, checksums, extensions and payloads, so the
//! fuzzer gets past the header checks), and chunk maps against fuzzed bases. decode must never panic, never return more than the limit, and never return bytes
//! whose CRC32 or length differ from the header's; decode_bulk must agree with decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use statecar::state::codec::Codec;
use statecar::state::envelope::{self, Decoded, HEADER_LEN};

const MAX: usize = 1 << 20;

fn check(stored: &[u8], max: usize) {
    let inspected = envelope::inspect(stored);
    let decoded = envelope::decode(stored, max);
    // The reply path's decoder (straight into a RESP bulk frame) must reach the same verdict
    // and the same bytes.
    match (&decoded, envelope::decode_bulk(stored, max)) {
        (Ok(Decoded::State { value, .. }), Ok(Some((frame, n)))) => {
            let head = format!("${}\r\n", value.len());
            assert_eq!(n, value.len());
            assert_eq!(&frame[..head.len()], head.as_bytes());
            assert_eq!(&frame[head.len()..frame.len() - 2], &value[..]);
            assert_eq!(&frame[frame.len() - 2..], b"\r\n");
        }
        (Ok(Decoded::Plain), Ok(None)) | (Err(_), Err(_)) => {}
        _ => panic!("decode and decode_bulk disagree"),
    }
    match decoded {
        Ok(Decoded::State { value, meta }) => {
            assert!(value.len() <= max, "decoded past the limit");
            assert_eq!(value.len(), meta.original_len as usize);
            assert_eq!(
                crc32fast::hash(&value),
                meta.crc32,
                "returned data failing its CRC"
            );
            assert_eq!(inspected.ok().flatten(), Some(meta));
        }
        Ok(Decoded::Plain) => assert_eq!(inspected, Ok(None)),
        Err(_) => {}
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, MAX);
    if data.len() < 10 {
        return;
    }
    // A chunk map (a big version's delta) against fuzzed base bytes: an error or exactly
    // `out` filled, never a panic or a read out of bounds.
    let (base, map) = data.split_at(data.len() / 3);
    let mut out = vec![0u8; usize::from(data[2]) * 64];
    let _ = statecar::state::codec::chunk_delta::decode(map, base, &mut out);
    // A forged header: [codec id][flags lo][original_len u32][crc mode][version u32] + payload.
    let codec = data[0] % 6; // ids 4 and 5 are unknown codecs
    let flags = u16::from(data[1] & 0x01);
    let claimed = u32::from_be_bytes([data[2], data[3], data[4], data[5]]) % (2 * MAX as u32);
    let crc_mode = data[6];
    let version = u32::from_be_bytes([0, 0, data[7], data[8]]);
    let payload = &data[9..];
    // The CRC either matches the payload as the plain value (so codec none verifies), or
    // comes from the fuzz input.
    let crc = if crc_mode & 1 == 0 {
        crc32fast::hash(payload)
    } else {
        u32::from_be_bytes([
            payload.first().copied().unwrap_or(0),
            crc_mode,
            data[1],
            data[0],
        ])
    };
    // Format 1 (no extension), or format 2 with a fuzzed extension: a delta's base (8 bytes) or
    // a dictionary id (4 bytes), which decode must refuse cleanly without the base or the
    // dictionary.
    let (format, flags, ext): (u8, u16, &[u8]) = match data[1] & 0x06 {
        0x02 if payload.len() >= 8 => (
            envelope::FORMAT_VERSION,
            envelope::FLAG_DELTA,
            &payload[..8],
        ),
        0x04 if payload.len() >= 4 => {
            (envelope::FORMAT_VERSION, envelope::FLAG_DICT, &payload[..4])
        }
        _ => (envelope::FORMAT_V1, flags, &[][..]),
    };
    let mut h = Vec::with_capacity(HEADER_LEN + ext.len() + payload.len());
    h.extend_from_slice(&envelope::MAGIC);
    h.push(format);
    h.push(codec);
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
    h.extend_from_slice(&claimed.to_be_bytes());
    h.extend_from_slice(&crc.to_be_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&h[..24]);
    hasher.update(ext);
    h.extend_from_slice(&hasher.finalize().to_be_bytes());
    h.extend_from_slice(&envelope::version_patch(version));
    h.extend_from_slice(ext);
    h.extend_from_slice(payload);
    check(&h, MAX);
    check(&h, (claimed as usize) / 2);
    // And what the encoder makes always decodes to what it was given.
    if payload.len() > MAX {
        return;
    }
    let c = Codec::from_id(codec % 4).unwrap_or(Codec::None);
    let enc = envelope::encode(payload, c, usize::from(crc_mode), 5, version);
    match envelope::decode(&enc, MAX) {
        Ok(Decoded::State { value, .. }) => assert_eq!(value, payload),
        other => panic!("encoder output did not decode: {other:?}"),
    }
});
