//! Every codec round-trips, refuses a wrong length either way, stops bombs at the expected
//! length, and fails cleanly on truncated, trailing or random bytes.

use super::*;
use zstd::zstd_safe;

fn sample() -> Vec<u8> {
    crate::state::sample::agent_session_json(7, 16 * 1024)
}

#[test]
fn ids_and_names_round_trip() {
    for c in Codec::ALL {
        assert_eq!(Codec::from_id(c.id()), Some(c));
        assert_eq!(Codec::parse(c.name()), Some(c));
        assert_eq!(Codec::parse(&c.name().to_uppercase()), Some(c));
    }
    assert_eq!(Codec::from_id(4), None);
    assert_eq!(Codec::from_id(255), None);
    assert_eq!(Codec::parse("lz5"), None);
    assert_eq!(Codec::parse(""), None);
}

#[test]
fn round_trip_every_codec() {
    let input = sample();
    for c in Codec::ALL {
        let packed = c.compress(&input);
        assert_eq!(
            c.decompress(&packed, input.len()).as_ref(),
            Ok(&input),
            "{c}"
        );
        if c != Codec::None {
            assert!(packed.len() < input.len(), "{c} did not compress");
        }
        let empty = c.compress(b"");
        assert_eq!(c.decompress(&empty, 0), Ok(Vec::new()), "{c}");
    }
}

#[test]
fn wrong_length_is_rejected_both_ways() {
    let input = sample();
    for c in Codec::ALL {
        let packed = c.compress(&input);
        let short = c.decompress(&packed, input.len() - 1);
        assert!(
            matches!(
                short,
                Err(CodecError::TooLong { .. } | CodecError::TrailingBytes { .. })
            ),
            "{c}: {short:?}"
        );
        let long = c.decompress(&packed, input.len() + 1);
        assert!(
            matches!(long, Err(CodecError::TooShort { .. })),
            "{c}: {long:?}"
        );
    }
}

#[test]
fn bombs_stop_at_original_len() {
    // 64 MiB of zeros packs into a few KiB; claiming 1 KiB must fail after 1 KiB of work.
    let zeros = vec![0u8; 64 << 20];
    for c in [Codec::Lz4, Codec::Zlib, Codec::Zstd] {
        let bomb = c.compress(&zeros);
        assert!(bomb.len() < 1 << 20, "{c}: {}", bomb.len());
        let r = c.decompress(&bomb, 1024);
        assert_eq!(
            r,
            Err(CodecError::TooLong {
                codec: c.name(),
                expected: 1024
            }),
            "{c}"
        );
    }
}

#[test]
fn truncated_payloads_fail() {
    let input = sample();
    for c in Codec::ALL {
        let packed = c.compress(&input);
        for cut in [0, 1, packed.len() / 2, packed.len() - 4, packed.len() - 1] {
            assert!(
                c.decompress(&packed[..cut], input.len()).is_err(),
                "{c} cut at {cut}"
            );
        }
    }
}

#[test]
fn trailing_bytes_fail() {
    let input = sample();
    for c in Codec::ALL {
        let mut packed = c.compress(&input);
        packed.push(0);
        assert!(c.decompress(&packed, input.len()).is_err(), "{c}");
    }
}

#[test]
fn garbage_never_panics() {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for len in 0..300usize {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for c in Codec::ALL {
            let _ = c.decompress(&bytes, len * 3);
        }
    }
}

#[test]
fn large_values_are_several_frames_that_decode_as_one() {
    let mut c = crate::state::sample::Checkpoints::new(3);
    c.advance(2000);
    let big = c.checkpoint();
    assert!(big.len() >= PARALLEL_FRAMES, "{}", big.len());
    let mut out = Vec::new();
    assert!(zstd_append(&big, &mut out, 1, ZstdRef::None));
    let mut frames = 0;
    let mut rest = &out[..];
    while !rest.is_empty() {
        let n = zstd_safe::find_frame_compressed_size(rest).unwrap_or(rest.len());
        rest = &rest[n..];
        frames += 1;
    }
    assert!(frames >= 2, "{frames} frame(s)");
    let mut back = vec![0u8; big.len()];
    assert_eq!(
        zstd_decompress_with(&out, &mut back, ZstdBase::None),
        Ok(())
    );
    assert!(back == big);
    // One byte short of the whole: the frames overflow the output.
    let mut short = vec![0u8; big.len() - 1];
    assert!(zstd_decompress_with(&out, &mut short, ZstdBase::None).is_err());
}
