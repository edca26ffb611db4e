//! A damaged, forged or truncated envelope is an error: never other bytes, and never mistaken
//! for a plain (pre-statecar) value.

use super::*;

/// Flipping bytes of `enc` (the encoding of `original`) must never yield Plain or bytes
/// other than `original`. In the header and in uncompressed payloads it must always fail.
/// In a compressed payload a flip can land on bits the decoder ignores (deflate padding,
/// a zstd window descriptor that is still large enough, an LZ4 match offset that points at
/// identical bytes); the value then decodes to exactly the original, which the CRC of the
/// original bytes proves, and that is accepted rather than turning a correct read into an
/// error. Returns how many flips decoded to the original.
fn check_flips(original: &[u8], enc: &[u8], masks: &[u8]) -> Result<usize, TestCaseError> {
    let codec = inspect(enc).ok().flatten().map(|m| m.codec);
    let mut benign = 0;
    let mut flipped = enc.to_vec();
    for i in 0..enc.len() {
        for &m in masks {
            flipped[i] ^= m;
            let r = decode(&flipped, MAX);
            bulk_agrees(&flipped)?;
            flipped[i] ^= m;
            match r {
                Err(_) => {}
                Ok(Decoded::State { value, .. })
                    if i >= HEADER_LEN && codec != Some(Codec::None) && value == original =>
                {
                    benign += 1;
                }
                Ok(other) => {
                    return Err(TestCaseError::fail(format!(
                        "flip {m:#04x} at {i} of {} ({codec:?}) decoded to {}",
                        enc.len(),
                        match other {
                            Decoded::Plain => "Plain".to_string(),
                            Decoded::State { value, .. } if value == original =>
                                "the original".to_string(),
                            Decoded::State { value, .. } => format!("{} other bytes", value.len()),
                        }
                    )));
                }
            }
        }
    }
    Ok(benign)
}

proptest! {
    // Each case decodes the value once per byte and mask, so cases are fewer and smaller.
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn every_single_byte_corruption_is_detected(
        value in value_up_to(1500),
        codec in any_codec(),
    ) {
        let enc = encode(&value, codec, 0, 1_700_000_000_000, 3);
        check_flips(&value, &enc, &[0x01, 0x80, 0xff])?;
    }

    #[test]
    fn truncation_at_every_length_fails(value in value_up_to(3000), codec in any_codec()) {
        let enc = encode(&value, codec, 0, 5, 5);
        // Cutting to nothing leaves an empty string, which is a legitimate plain value.
        prop_assert_eq!(decode(&enc[..0], MAX), Ok(Decoded::Plain));
        for cut in 1..enc.len() {
            let r = decode(&enc[..cut], MAX);
            prop_assert!(r.is_err(), "cut at {} of {}: {:?}", cut, enc.len(), r);
        }
    }
}

#[test]
fn sample_values_detect_every_flip_with_many_masks() {
    let masks = [0x01, 0x10, 0x80, 0xff, 0x5a];
    let mut benign = 0;
    let mut total = 0;
    for codec in Codec::ALL {
        for (seed, len) in [(1u64, 1024usize), (2, 4096)] {
            let value = agent_session_json(seed, len);
            let enc = encode(&value, codec, 0, 42, 9);
            benign += check_flips(&value, &enc, &masks)
                .map_err(|e| e.to_string())
                .unwrap();
            total += enc.len() * masks.len();
        }
    }
    // Benign flips exist but are rare; many would mean the CRC is not being checked.
    assert!(benign * 1000 < total, "{benign} of {total} flips decoded");
}

#[test]
fn forged_codec_ids_are_rejected() {
    let value = b"hello".to_vec();
    let crc = crc32fast::hash(&value);
    for id in 4..=255u8 {
        let forged = forge(id, 0, 5, crc, &value);
        assert_eq!(decode(&forged, MAX), Err(EnvelopeError::UnknownCodec(id)));
        assert_eq!(inspect(&forged), Err(EnvelopeError::UnknownCodec(id)));
    }
    // A known but wrong codec id: raw bytes labelled lz4 / zlib / zstd.
    for c in [Codec::Lz4, Codec::Zlib, Codec::Zstd] {
        let forged = forge(c.id(), 0, 5, crc, &value);
        assert!(decode(&forged, MAX).is_err(), "{c}");
    }
}

#[test]
fn legacy_values_are_plain() {
    let json = br#"{"session":"legacy","n":1}"#.repeat(4);
    for v in [
        &b""[..],
        b"x",
        b"hello world",
        &json,
        &[0xE5, b'S', 0, 0, 1, 2, 3], // short, not a signature prefix
        &[0u8; 100],
    ] {
        assert_eq!(decode(v, MAX), Ok(Decoded::Plain), "{v:?}");
        assert_eq!(inspect(v), Ok(None));
    }
    // Two signature bytes off, however long: plain.
    let mut v = encode(&json, Codec::Lz4, 0, 0, 1);
    v[0] = b'{';
    v[4] = 7;
    assert_eq!(decode(&v, MAX), Ok(Decoded::Plain));
}

#[test]
fn one_byte_off_the_signature_is_an_error() {
    let enc = encode(
        b"some state value that is long enough",
        Codec::None,
        0,
        0,
        1,
    );
    for i in 0..4 {
        let mut v = enc.clone();
        v[i] ^= 0x20;
        assert!(
            matches!(decode(&v, MAX), Err(EnvelopeError::DamagedMagic { .. })),
            "byte {i}"
        );
    }
    let mut v = enc.clone();
    v[4] = 3;
    assert_eq!(decode(&v, MAX), Err(EnvelopeError::UnsupportedFormat(3)));
    // Format 2 is known: a format-1 header relabelled as 2 fails its header CRC.
    let mut v = enc.clone();
    v[4] = FORMAT_VERSION;
    assert!(matches!(
        decode(&v, MAX),
        Err(EnvelopeError::HeaderChecksum { .. })
    ));
    // Short exact prefixes are truncated envelopes.
    for cut in 1..HEADER_LEN {
        assert_eq!(
            decode(&enc[..cut], MAX),
            Err(EnvelopeError::Truncated {
                len: cut,
                expected: HEADER_LEN
            })
        );
    }
}

#[test]
fn header_field_checks() {
    let value = agent_session_json(4, 2048);
    let enc = encode(&value, Codec::Lz4, 0, 99, 12);

    let mut v = enc.clone();
    v[10] ^= 1; // timestamp
    assert!(matches!(
        decode(&v, MAX),
        Err(EnvelopeError::HeaderChecksum { .. })
    ));

    let mut v = enc.clone();
    v[VERSION_OFFSET + 3] ^= 1;
    assert_eq!(
        decode(&v, MAX),
        Err(EnvelopeError::VersionPair {
            version: 13,
            check: !12
        })
    );

    let forged = forge(Codec::None.id(), 1, 3, crc32fast::hash(b"abc"), b"abc");
    assert_eq!(
        decode(&forged, MAX),
        Err(EnvelopeError::UnsupportedFlags(1))
    );

    let forged = forge(Codec::None.id(), 0, 3, 0xdead_beef, b"abc");
    let err = decode(&forged, MAX).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "checksum mismatch (stored 0xdeadbeef, computed 0x{:08x})",
            crc32fast::hash(b"abc")
        )
    );

    let forged = forge(Codec::None.id(), 0, 4, crc32fast::hash(b"abcd"), b"abc");
    assert_eq!(
        decode(&forged, MAX),
        Err(EnvelopeError::Truncated {
            len: HEADER_LEN + 3,
            expected: HEADER_LEN + 4
        })
    );

    let forged = forge(Codec::None.id(), 0, 3, crc32fast::hash(b"abc"), b"abcd");
    assert!(matches!(
        decode(&forged, MAX),
        Err(EnvelopeError::Decompress(CodecError::TrailingBytes {
            count: 1,
            ..
        }))
    ));
}
