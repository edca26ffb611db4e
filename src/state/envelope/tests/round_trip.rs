//! What is written reads back exactly, with the header the documentation describes and the
//! codec the rule asked for when it pays off.

use super::*;

proptest! {
    #[test]
    fn round_trip(
        value in any_value(),
        codec in any_codec(),
        min_size in prop_oneof![Just(0usize), 0usize..5000, Just(usize::MAX)],
        ts in any::<u64>(),
        version in any::<u32>(),
    ) {
        let enc = encode(&value, codec, min_size, ts, version);
        bulk_agrees(&enc)?;
        let meta = match decode(&enc, MAX) {
            Ok(Decoded::State { value: v, meta }) => {
                prop_assert_eq!(&v, &value);
                meta
            }
            other => return Err(TestCaseError::fail(format!("{other:?}"))),
        };
        prop_assert_eq!(Some(meta.clone()), inspect(&enc).ok().flatten());
        prop_assert_eq!(meta.original_len as usize, value.len());
        prop_assert_eq!(meta.crc32, crc32fast::hash(&value));
        prop_assert_eq!(meta.version, version);
        prop_assert_eq!(meta.timestamp_ms, ts);
        prop_assert_eq!(meta.stored_len, enc.len());
        if meta.codec == Codec::None {
            prop_assert_eq!(enc.len(), HEADER_LEN + value.len());
        } else {
            prop_assert_eq!(meta.codec, codec);
            prop_assert!(value.len() >= min_size);
            prop_assert!(enc.len() - HEADER_LEN < value.len());
        }
        // Compression is used whenever it is allowed and pays off.
        let packed = codec.compress(&value);
        let should_compress =
            codec != Codec::None && value.len() >= min_size && packed.len() < value.len();
        prop_assert_eq!(meta.codec != Codec::None, should_compress);
    }

    #[test]
    fn garbage_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, MAX);
        bulk_agrees(&bytes)?;
        let _ = inspect(&bytes);
        // Garbage behind a valid signature and header CRC.
        for id in 0..=4u8 {
            let forged = forge(id, 0, bytes.len() as u32 * 2 + 1, 0, &bytes);
            prop_assert!(decode(&forged, MAX).is_err());
        }
    }
}

#[test]
fn inspect_reads_the_header_only() {
    let value = agent_session_json(8, 8192);
    let mut enc = encode(&value, Codec::Zstd, 0, 1234, 5);
    let last = enc.len() - 1;
    enc[last] ^= 0xff;
    let meta = inspect(&enc)
        .ok()
        .flatten()
        .map(|m| (m.codec, m.original_len, m.version));
    assert_eq!(meta, Some((Codec::Zstd, 8192, 5)));
    assert!(decode(&enc, MAX).is_err());
}

#[test]
fn small_or_incompressible_values_are_stored_plainly() {
    let value = agent_session_json(6, 4096);
    let enc = encode(&value, Codec::Lz4, 4097, 0, 1);
    assert_eq!(enc[5], Codec::None.id());
    let enc = encode(&value, Codec::Lz4, 4096, 0, 1);
    assert_eq!(enc[5], Codec::Lz4.id());
    let enc = encode(b"abc", Codec::Zstd, 0, 0, 1);
    assert_eq!(enc[5], Codec::None.id());
    assert_eq!(decoded_value(&enc), b"abc");
}

#[test]
fn version_patch_is_what_the_lua_script_writes() {
    assert_eq!(version_patch(1), [0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe]);
    assert_eq!(version_patch(0), [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]);
    let value = agent_session_json(3, 3000);
    let enc = encode(&value, Codec::Zlib, 0, 77, 0);
    for version in [1u32, 2, 1000, u32::MAX] {
        // The script does: string.sub(v, 1, 28) .. patch .. string.sub(v, 37)
        let mut patched = enc[..VERSION_OFFSET].to_vec();
        patched.extend_from_slice(&version_patch(version));
        patched.extend_from_slice(&enc[HEADER_LEN..]);
        let mut set = enc.clone();
        set_version(&mut set, version);
        assert_eq!(patched, set);
        match decode(&patched, MAX) {
            Ok(Decoded::State { value: v, meta }) => {
                assert_eq!(v, value);
                assert_eq!(meta.version, version);
                assert_eq!(meta.timestamp_ms, 77);
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn error_messages_read_well_after_a_key_name() {
    let cases = [
        (
            EnvelopeError::TooLarge {
                claimed: 4_294_967_295,
                max: 67_108_864,
            },
            "decoded size 4294967295 exceeds limit 67108864",
        ),
        (EnvelopeError::UnknownCodec(9), "unknown codec id 9"),
        (
            EnvelopeError::Truncated {
                len: 20,
                expected: 36,
            },
            "truncated (20 bytes, expected 36)",
        ),
        (
            EnvelopeError::DamagedMagic {
                found: [0xe5, 0x53, 0x43, 0x4a, 0x01],
            },
            "damaged header magic (found [e5, 53, 43, 4a, 01])",
        ),
        (
            EnvelopeError::Decompress(CodecError::TooLong {
                codec: "lz4",
                expected: 10,
            }),
            "lz4 data decodes to more than 10 bytes",
        ),
    ];
    for (e, want) in cases {
        assert_eq!(e.to_string(), want);
    }
}
