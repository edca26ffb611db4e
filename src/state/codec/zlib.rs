//! zlib (RFC 1950) at [`ZLIB_LEVEL`], compressed and decompressed with a context kept per
//! thread; decompression stops at the expected length, and a stream that would go on is told
//! apart from one that only has its end marker left without allocating.

use std::cell::RefCell;

use flate2::{Compression, FlushCompress, FlushDecompress, Status};

use super::{Codec, CodecError, ZLIB_LEVEL, corrupt_msg, with_context};

thread_local! {
    // One context per thread, reused: why, on the thread-locals of codec/mod.rs.
    static ZLIB_COMPRESS: RefCell<Option<flate2::Compress>> = const { RefCell::new(None) };
    static ZLIB_DECOMPRESS: RefCell<Option<flate2::Decompress>> = const { RefCell::new(None) };
}

pub(super) fn deflate(input: &[u8]) -> Option<Vec<u8>> {
    with_context(
        &ZLIB_COMPRESS,
        || Some(flate2::Compress::new(Compression::new(ZLIB_LEVEL), true)),
        |z| {
            z.reset();
            // Room for the worst case (stored blocks: 5 bytes per 16 KiB, plus zlib header and
            // adler32) so one Finish call normally completes.
            let mut out = Vec::with_capacity(input.len() + input.len() / 16_000 * 5 + 64);
            loop {
                let consumed = usize::try_from(z.total_in()).ok()?;
                let rest = input.get(consumed..)?;
                match z.compress_vec(rest, &mut out, FlushCompress::Finish).ok()? {
                    Status::StreamEnd => return Some(out),
                    // Out of room despite the estimate: grow and continue rather than fail.
                    Status::Ok | Status::BufError => out.reserve(out.capacity().max(64)),
                }
            }
        },
    )
    .flatten()
}

pub(super) fn inflate(payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let codec = Codec::Zlib.name();
    with_context(
        &ZLIB_DECOMPRESS,
        || Some(flate2::Decompress::new(true)),
        |z| {
            z.reset(true);
            inflate_with(z, payload, out)
        },
    )
    .unwrap_or_else(|| Err(corrupt_msg(codec, "no decoder")))
}

fn inflate_with(
    z: &mut flate2::Decompress,
    payload: &[u8],
    out: &mut [u8],
) -> Result<(), CodecError> {
    let codec = Codec::Zlib.name();
    let original_len = out.len();
    let corrupt = |e: flate2::DecompressError| CodecError::Corrupt {
        codec,
        detail: e.to_string(),
    };
    // FlushDecompress::None, not Finish: miniz refuses to continue after a Finish call that ran
    // out of room, and the overflow probe below needs to continue.
    let status = z
        .decompress(payload, out, FlushDecompress::None)
        .map_err(corrupt)?;
    // Totals never exceed the slice lengths handed in, so these conversions cannot saturate.
    let produced = usize::try_from(z.total_out()).unwrap_or(usize::MAX);
    let consumed = usize::try_from(z.total_in()).unwrap_or(usize::MAX);
    if status == Status::StreamEnd {
        if produced != original_len {
            return Err(CodecError::TooShort {
                codec,
                expected: original_len,
                actual: produced,
            });
        }
        if consumed != payload.len() {
            return Err(CodecError::TrailingBytes {
                codec,
                count: payload.len().saturating_sub(consumed),
            });
        }
        return Ok(());
    }
    if produced < original_len {
        // Input ran out before the stream's end marker.
        return Err(CodecError::TooShort {
            codec,
            expected: original_len,
            actual: produced,
        });
    }
    // Output is full but the stream has not ended: either more data follows (a bomb, or a
    // header that lies about the length), or only the end marker and checksum are left, or
    // the input stops short of them. One more byte of room tells these apart without
    // allocating.
    let mut probe = [0u8; 1];
    let rest = payload.get(consumed..).unwrap_or_default();
    let status = z
        .decompress(rest, &mut probe, FlushDecompress::None)
        .map_err(corrupt)?;
    if z.total_out() > original_len as u64 {
        Err(CodecError::TooLong {
            codec,
            expected: original_len,
        })
    } else if status == Status::StreamEnd && z.total_in() == payload.len() as u64 {
        Ok(())
    } else {
        Err(corrupt_msg(codec, "stream does not end"))
    }
}
