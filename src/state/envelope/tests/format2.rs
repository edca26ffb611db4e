//! Format 2: values compressed with a trained dictionary and versions stored as deltas, and
//! format 1 written byte for byte as before beside them.

use super::*;
use crate::state::envelope::header::{header_crc, write_header};
use bytes::Bytes;

use crate::state::dict::{self, Dictionary};
use crate::state::sample::{Checkpoints, small_document};

fn trained() -> std::sync::Arc<Dictionary> {
    let samples: Vec<Bytes> = (0..300)
        .map(|i| Bytes::from(small_document(11, i)))
        .collect();
    let (id, raw) = dict::train(&samples, dict::DICT_SIZE).unwrap_or_else(|e| panic!("{e}"));
    dict::register(id, raw).unwrap_or_else(|| panic!("not a dictionary"))
}

fn with_dict(value: &[u8], d: &Dictionary) -> Vec<u8> {
    let cdict = d.cdict(1).unwrap_or_else(|| panic!("cdict"));
    let enc = Encoding {
        codec: Codec::Zstd,
        level: 1,
        min_size: 0,
        dict: Some(DictRef {
            id: d.id,
            cdict: &cdict,
        }),
    };
    encode_with(value, &enc, 77, 4)
}

fn two_checkpoints() -> (Vec<u8>, Vec<u8>) {
    let mut c = Checkpoints::new(4);
    c.advance(12);
    let old = c.checkpoint();
    c.step();
    (old, c.checkpoint())
}

/// Every single-byte flip of a format-2 envelope fails or (in the payload) decodes to the
/// original, with the given references.
fn flips_with_refs(original: &[u8], enc: &[u8], refs: Refs<'_>) -> usize {
    let mut benign = 0;
    let mut v = enc.to_vec();
    for i in 0..enc.len() {
        for m in [0x01u8, 0x80, 0xff] {
            v[i] ^= m;
            match decode_with(&v, MAX, refs) {
                Err(_) => {}
                Ok(Decoded::State { value, .. }) if value == original && i >= 48 => benign += 1,
                Ok(other) => panic!("flip {m:#x} at {i}: {other:?}"),
            }
            v[i] ^= m;
        }
    }
    benign
}

#[test]
fn format_1_is_byte_for_byte_what_statecar_wrote_before() {
    // Hand-built from the format-1 table of docs/FORMAT.md.
    let value = b"hello, world";
    let mut want = vec![0xE5, b'S', b'C', b'K', 1, 0, 0, 0];
    want.extend_from_slice(&1_700_000_000_123u64.to_be_bytes());
    want.extend_from_slice(&(value.len() as u32).to_be_bytes());
    want.extend_from_slice(&crc32fast::hash(value).to_be_bytes());
    let hc = crc32fast::hash(&want);
    want.extend_from_slice(&hc.to_be_bytes());
    want.extend_from_slice(&7u32.to_be_bytes());
    want.extend_from_slice(&(!7u32).to_be_bytes());
    want.extend_from_slice(value);
    assert_eq!(encode(value, Codec::Lz4, 64, 1_700_000_000_123, 7), want);
    // A rule without a dictionary writes format 1 too, whatever its level.
    let json = agent_session_json(1, 4096);
    for level in [-3, 1, 9] {
        let enc = Encoding {
            codec: Codec::Zstd,
            level,
            min_size: 0,
            dict: None,
        };
        let e = encode_with(&json, &enc, 1, 1);
        assert_eq!(e[4], FORMAT_V1);
        assert_eq!(decoded_value(&e), json);
    }
}

#[test]
fn dictionary_values_name_their_dictionary_and_need_it() {
    let d = trained();
    let doc = small_document(12, 5);
    let enc = with_dict(&doc, &d);
    assert_eq!(enc[4], FORMAT_VERSION);
    let meta = inspect(&enc)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("meta"));
    assert_eq!(
        (meta.dict, meta.base, meta.header_len),
        (Some(d.id), None, 40)
    );
    assert!(
        enc.len() < encode(&doc, Codec::Zstd, 0, 0, 0).len(),
        "the dictionary helps"
    );
    assert_eq!(decode(&enc, MAX), Err(EnvelopeError::NeedsDictionary(d.id)));
    let refs = Refs {
        base: None,
        dict: Some(d.ddict()),
    };
    match decode_with(&enc, MAX, refs) {
        Ok(Decoded::State { value, .. }) => assert_eq!(value, doc),
        other => panic!("{other:?}"),
    }
    // The reply-frame decoder agrees.
    let (frame, n) = decode_bulk_with(&enc, MAX, refs)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("bulk"));
    assert_eq!(n, doc.len());
    assert_eq!(&frame[frame.len() - 2 - n..frame.len() - 2], &doc[..]);
    // Another dictionary is refused by zstd (the frame names its dictionary too).
    let other: Vec<Bytes> = (0..300)
        .map(|i| Bytes::from(small_document(99, i)))
        .collect();
    let (id2, raw2) = dict::train(&other, 4096).unwrap_or_else(|e| panic!("{e}"));
    let d2 = dict::register(id2, raw2).unwrap_or_else(|| panic!("dict"));
    let wrong = Refs {
        base: None,
        dict: Some(d2.ddict()),
    };
    assert!(decode_with(&enc, MAX, wrong).is_err());
    assert!(flips_with_refs(&doc, &enc, refs) * 100 < enc.len() * 3);
}

#[test]
fn deltas_decode_against_their_base_only() {
    let (old, new) = two_checkpoints();
    let delta = encode_delta(&old, &new, 14, 1, 5, 13).unwrap_or_else(|| panic!("delta"));
    assert!(
        delta.len() < 1000,
        "a delta of one agent step: {} bytes",
        delta.len()
    );
    let meta = inspect(&delta)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("meta"));
    assert_eq!(meta.version, 13);
    assert_eq!(
        meta.base,
        Some(Base {
            version: 14,
            crc32: crc32fast::hash(&new)
        })
    );
    assert_eq!(meta.header_len, 44);
    assert_eq!(decode(&delta, MAX), Err(EnvelopeError::NeedsBase(14)));
    let refs = Refs {
        base: Some(&new),
        dict: None,
    };
    match decode_with(&delta, MAX, refs) {
        Ok(Decoded::State { value, .. }) => assert_eq!(value, old),
        other => panic!("{other:?}"),
    }
    let wrong = Refs {
        base: Some(&old),
        dict: None,
    };
    assert!(matches!(
        decode_with(&delta, MAX, wrong),
        Err(EnvelopeError::BaseMismatch { version: 14, .. })
    ));
    flips_with_refs(&old, &delta, refs);
    for cut in 1..delta.len() {
        assert!(
            decode_with(&delta[..cut], MAX, refs).is_err(),
            "cut at {cut}"
        );
    }
    // Large values: long-distance matching finds the base however far back.
    let mut c = Checkpoints::new(8);
    c.advance(700);
    let big_old = c.checkpoint();
    c.step();
    let big_new = c.checkpoint();
    assert!(big_new.len() > 1 << 20);
    let d = encode_delta(&big_old, &big_new, 2, 1, 5, 1).unwrap_or_else(|| panic!("delta"));
    assert!(
        d.len() < 4096,
        "{} bytes for one step of a 1 MB checkpoint",
        d.len()
    );
    let refs = Refs {
        base: Some(&big_new),
        dict: None,
    };
    assert!(
        matches!(decode_with(&d, MAX, refs), Ok(Decoded::State { value, .. }) if value == big_old)
    );
}

#[test]
fn the_header_extension_is_covered_and_flags_are_strict() {
    let (old, new) = two_checkpoints();
    let delta = encode_delta(&old, &new, 2, 1, 5, 1).unwrap_or_else(|| panic!("delta"));
    // The extension (base version and CRC) is inside the header CRC.
    for i in 36..44 {
        let mut v = delta.clone();
        v[i] ^= 0x10;
        assert!(
            matches!(inspect(&v), Err(EnvelopeError::HeaderChecksum { .. })),
            "byte {i}"
        );
    }
    // Only the first 36 bytes: too short for the extension. 48: enough.
    assert!(matches!(
        inspect(&delta[..36]),
        Err(EnvelopeError::Truncated { expected: 44, .. })
    ));
    assert!(matches!(inspect(&delta[..MAX_HEADER_LEN]), Ok(Some(_))));
    // Forged flag combinations with valid CRCs are refused.
    let forge2 = |codec: Codec, flags: u16, ext: &[u8]| {
        let mut out = vec![0u8; HEADER_LEN + ext.len()];
        out.extend_from_slice(b"payload");
        let crc = crc32fast::hash(b"payload");
        write_header(&mut out, codec, flags, ext, 1, b"payload".len(), crc, 1);
        out[4] = FORMAT_VERSION;
        let hc = header_crc(&out[..HEADER_CRC_SPAN], ext);
        out[24..28].copy_from_slice(&hc.to_be_bytes());
        out
    };
    for (codec, flags, ext) in [
        (Codec::Zstd, FLAG_DELTA | FLAG_DICT, &[0u8; 12][..]),
        (Codec::Zstd, 0, &[][..]),
        (Codec::Zstd, 0x0004, &[][..]),
        (Codec::Lz4, FLAG_DELTA, &[0u8; 8][..]),
        (Codec::None, FLAG_DICT, &[0u8; 4][..]),
        (Codec::Zstd, FLAG_DICT | FLAG_CHUNKS, &[0u8; 4][..]),
        (
            Codec::Zstd,
            FLAG_DELTA | FLAG_DICT | FLAG_CHUNKS,
            &[0u8; 12][..],
        ),
        (Codec::Lz4, FLAG_DELTA | FLAG_CHUNKS, &[0u8; 8][..]),
    ] {
        let v = forge2(codec, flags, ext);
        assert_eq!(
            inspect(&v),
            Err(EnvelopeError::UnsupportedFlags(flags)),
            "{codec} {flags:#x}"
        );
    }
    // Format 1 never has flags.
    let mut v = encode(b"abcdef", Codec::None, 0, 1, 1);
    v[7] = 1;
    let hc = crc32fast::hash(&v[..HEADER_CRC_SPAN]);
    v[24..28].copy_from_slice(&hc.to_be_bytes());
    assert_eq!(inspect(&v), Err(EnvelopeError::UnsupportedFlags(1)));
}

#[test]
fn a_value_one_byte_from_the_format_2_signature_is_damaged_not_plain() {
    let mut v = vec![0xE5, b'S', b'C', b'J', 2];
    v.resize(60, b'x');
    assert!(matches!(
        decode(&v, MAX),
        Err(EnvelopeError::DamagedMagic { .. })
    ));
    let mut v = vec![0xE5, b'S', b'C', b'K', 3];
    v.resize(60, b'x');
    assert_eq!(decode(&v, MAX), Err(EnvelopeError::UnsupportedFormat(3)));
    // Two bytes off both signatures: plain.
    let mut v = vec![0xE5, b'S', b'C', b'J', 7];
    v.resize(60, b'x');
    assert_eq!(decode(&v, MAX), Ok(Decoded::Plain));
}

/// A big version as a chunk map of the next one: flagged delta and chunk map, read only
/// against the base it names (its CRC checked first), and decoded exactly.
#[test]
fn a_chunk_map_delta_reads_back_against_its_base_only() {
    use crate::state::codec::chunked::compress_chunked;
    let mut cps = Checkpoints::new(5);
    while cps.checkpoint().len() < 3 << 20 {
        cps.advance(200);
    }
    let old = cps.checkpoint();
    cps.step();
    let new = cps.checkpoint();
    let table = |v: &[u8]| {
        let mut payload = Vec::new();
        compress_chunked(v, 1, None, &mut payload)
            .unwrap_or_else(|| panic!("compresses"))
            .chunks
    };
    let crcs = Crcs {
        value: crc32fast::hash(&old),
        base: crc32fast::hash(&new),
    };
    let head = DeltaHead {
        crcs,
        base_version: 8,
        timestamp_ms: 1_000,
        version: 7,
    };
    let stored = encode_chunk_delta(&old, &table(&old), &new, &table(&new), None, 1, head)
        .unwrap_or_else(|| panic!("consecutive checkpoints share most chunks"));
    assert!(stored.len() < 64 << 10, "{} bytes", stored.len());
    let meta = inspect(&stored)
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|| panic!("an envelope"));
    assert!(meta.chunk_map);
    assert_eq!(meta.base.map(|b| b.version), Some(8));
    assert_eq!(meta.version, 7);
    assert!(matches!(
        decode(&stored, usize::MAX),
        Err(EnvelopeError::NeedsBase(8))
    ));
    let refs = |b| Refs {
        base: Some(b),
        dict: None,
    };
    match decode_with(&stored, usize::MAX, refs(&new)) {
        Ok(Decoded::State { value, .. }) => assert!(value == old, "decoded"),
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert!(matches!(
        decode_with(&stored, usize::MAX, refs(&old)),
        Err(EnvelopeError::BaseMismatch { version: 8, .. })
    ));
}
