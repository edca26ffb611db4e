//! Compression codecs for state values.
//!
//! Every codec writes its library's standard format (LZ4 block, RFC 1950 zlib stream, zstd frame)
//! so that a value can be recovered with stock tools if statecar is ever gone; see docs/FORMAT.md.
//!
//! Decompression is bounded by the caller's `original_len`: the output buffer is allocated once at
//! exactly that size and nothing a payload says can make it grow. This is what stops a small
//! stored value (a "bomb") from exhausting the proxy's memory.

use std::cell::RefCell;
use std::thread::LocalKey;

use flate2::{Compression, FlushCompress, FlushDecompress, Status};
use zstd::zstd_safe;

/// zlib level. 6 is zlib's own default and what Python's `zlib.compress` uses, so stored sizes
/// match what the seed library produced. Whoever picks zlib over lz4/zstd is picking ratio: on
/// the sample session JSON level 6 stores 1-5% less than level 3 for 1.6-2x the CPU, while
/// level 9 adds under 1% for up to twice the CPU again.
pub const ZLIB_LEVEL: u32 = 6;

/// zstd level of [`Codec::compress`] and of the format-1 encoder kept for compatibility
/// (`envelope::encode`). 3 is zstd's default: within about 10% of zlib 6's ratio on session
/// JSON at roughly five times its compression speed.
pub const ZSTD_LEVEL: i32 = 3;

/// zstd level a rule uses unless it sets `compression_level`. On agent checkpoints (40-80 KB of
/// LangGraph JSON) level 1 stores about 3% more than level 3 in half the time (51 us against
/// 85 us for 43 KB, `cargo bench --bench codec`), and the write path compresses every value
/// once in full plus once as a delta.
pub const ZSTD_RULE_LEVEL: i32 = 1;

/// A compression algorithm, identified in the stored header by a one-byte id.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Codec {
    /// Stored as is.
    None,
    /// LZ4 block format (no frame, no size prefix: the envelope header carries the size).
    Lz4,
    /// zlib stream (RFC 1950) at [`ZLIB_LEVEL`].
    Zlib,
    /// zstd frame at [`ZSTD_LEVEL`].
    Zstd,
}

/// Why a payload could not be decompressed to exactly the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The codec library rejected the payload.
    #[error("{codec} data is corrupt ({detail})")]
    Corrupt {
        /// Codec name.
        codec: &'static str,
        /// The library's description of the problem.
        detail: String,
    },
    /// The payload ended before producing the expected length.
    #[error("{codec} data decodes to {actual} bytes, expected {expected}")]
    TooShort {
        /// Codec name.
        codec: &'static str,
        /// Length the header promised.
        expected: usize,
        /// Length actually produced.
        actual: usize,
    },
    /// The payload would produce more than the expected length; decoding stopped at the limit.
    #[error("{codec} data decodes to more than {expected} bytes")]
    TooLong {
        /// Codec name.
        codec: &'static str,
        /// Length the header promised.
        expected: usize,
    },
    /// The stream ended properly but bytes follow it.
    #[error("{codec} data has {count} trailing bytes")]
    TrailingBytes {
        /// Codec name.
        codec: &'static str,
        /// Number of unused payload bytes.
        count: usize,
    },
}

impl Codec {
    /// Every codec, in id order.
    pub const ALL: [Codec; 4] = [Codec::None, Codec::Lz4, Codec::Zlib, Codec::Zstd];

    /// The id stored in the envelope header; never renumber, stored values depend on it.
    pub fn id(self) -> u8 {
        match self {
            Codec::None => 0,
            Codec::Lz4 => 1,
            Codec::Zlib => 2,
            Codec::Zstd => 3,
        }
    }

    /// The codec for a stored id, or `None` for an id this build does not know.
    pub fn from_id(id: u8) -> Option<Codec> {
        Codec::ALL.into_iter().find(|c| c.id() == id)
    }

    /// The lowercase name used in configuration and in STATE.LOAD metadata.
    pub fn name(self) -> &'static str {
        match self {
            Codec::None => "none",
            Codec::Lz4 => "lz4",
            Codec::Zlib => "zlib",
            Codec::Zstd => "zstd",
        }
    }

    /// Parses a configuration name, ignoring ASCII case (the seed library spelled them `LZ4`, `ZLIB`).
    pub fn parse(name: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(name))
    }

    /// Compresses `input` in this codec's standard format.
    ///
    /// The result may be larger than the input; callers decide whether compression paid off. If a
    /// codec library reports an error (possible only for zstd and zlib when their state cannot be
    /// allocated) the result is a copy of `input`: never smaller than the input, so
    /// [`crate::state::envelope::encode`] stores such a value uncompressed instead of labelling
    /// raw bytes as compressed.
    pub fn compress(self, input: &[u8]) -> Vec<u8> {
        let compressed = match self {
            Codec::None => return input.to_vec(),
            Codec::Lz4 => return lz4_flex::block::compress(input),
            Codec::Zlib => deflate(input),
            Codec::Zstd => zstd_compress(input),
        };
        compressed.unwrap_or_else(|| input.to_vec())
    }

    /// Appends `input` compressed to `out` when that is strictly smaller than `input`; returns
    /// whether it did (otherwise `out` is left as it was).
    ///
    /// The envelope encoder compresses straight after its header this way. For LZ4 that also
    /// reuses this thread's hash table: allocating and zeroing a fresh one per value was a
    /// visible share of a 1 KiB state write.
    pub fn compress_append(self, input: &[u8], out: &mut Vec<u8>) -> bool {
        self.compress_append_level(input, out, ZSTD_LEVEL)
    }

    /// [`Codec::compress_append`] with a zstd level (the other codecs have one fixed level).
    pub fn compress_append_level(self, input: &[u8], out: &mut Vec<u8>, level: i32) -> bool {
        let start = out.len();
        match self {
            Codec::None => false,
            Codec::Lz4 => {
                out.resize(
                    start + lz4_flex::block::get_maximum_output_size(input.len()),
                    0,
                );
                let n = LZ4_TABLE.with(|t| match t.try_borrow_mut() {
                    Ok(mut table) => lz4_flex::block::compress_into_with_table(
                        input,
                        &mut out[start..],
                        &mut table,
                    ),
                    Err(_) => lz4_flex::block::compress_into(input, &mut out[start..]),
                });
                match n {
                    Ok(n) if n < input.len() => {
                        out.truncate(start + n);
                        true
                    }
                    _ => {
                        out.truncate(start);
                        false
                    }
                }
            }
            Codec::Zstd => {
                let smaller = zstd_append(input, out, level, ZstdRef::None)
                    && out.len() - start < input.len();
                if !smaller {
                    out.truncate(start);
                }
                smaller
            }
            Codec::Zlib => {
                let c = self.compress(input);
                let smaller = c.len() < input.len();
                if smaller {
                    out.extend_from_slice(&c);
                }
                smaller
            }
        }
    }

    /// Decompresses `payload`, which must decode to exactly `original_len` bytes.
    ///
    /// Allocates `original_len` bytes once and never more, whatever the payload claims; the
    /// caller must already have checked `original_len` against its configured maximum.
    pub fn decompress(self, payload: &[u8], original_len: usize) -> Result<Vec<u8>, CodecError> {
        let mut out = vec![0u8; original_len];
        self.decompress_into(payload, &mut out)?;
        Ok(out)
    }

    /// Decompresses `payload` into `out`, which it must fill exactly.
    ///
    /// The reply path decodes straight into the buffer of the client's reply frame, after its
    /// `$<len>\r\n` header, so a state GET costs one allocation and no copy of the value.
    pub fn decompress_into(self, payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
        let original_len = out.len();
        match self {
            Codec::None => match payload.len() {
                n if n == original_len => {
                    out.copy_from_slice(payload);
                    Ok(())
                }
                n if n < original_len => Err(CodecError::TooShort {
                    codec: self.name(),
                    expected: original_len,
                    actual: n,
                }),
                n => Err(CodecError::TrailingBytes {
                    codec: self.name(),
                    count: n - original_len,
                }),
            },
            Codec::Lz4 => lz4_decompress(payload, out),
            Codec::Zlib => inflate(payload, out),
            Codec::Zstd => zstd_decompress(payload, out),
        }
    }
}

impl std::fmt::Display for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

fn lz4_decompress(payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let codec = Codec::Lz4.name();
    let original_len = out.len();
    match lz4_flex::block::decompress_into(payload, out) {
        Ok(n) if n == original_len => Ok(()),
        Ok(n) => Err(CodecError::TooShort {
            codec,
            expected: original_len,
            actual: n,
        }),
        Err(lz4_flex::block::DecompressError::OutputTooSmall { .. }) => Err(CodecError::TooLong {
            codec,
            expected: original_len,
        }),
        Err(e) => Err(CodecError::Corrupt {
            codec,
            detail: e.to_string(),
        }),
    }
}

fn deflate(input: &[u8]) -> Option<Vec<u8>> {
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

fn inflate(payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
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

fn corrupt_msg(codec: &'static str, detail: &str) -> CodecError {
    CodecError::Corrupt {
        codec,
        detail: detail.to_string(),
    }
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

thread_local! {
    // Setting up a codec context costs more than compressing a small value with it (a fresh
    // miniz compressor made zlib on 1 KiB about 4x slower than a reused one). Each thread keeps
    // one context per codec and direction, resets it before use, and holds on to its memory
    // (a few MiB per thread at most).
    static LZ4_TABLE: RefCell<lz4_flex::block::CompressTable> =
        RefCell::new(lz4_flex::block::CompressTable::default());
    static ZLIB_COMPRESS: RefCell<Option<flate2::Compress>> = const { RefCell::new(None) };
    static ZLIB_DECOMPRESS: RefCell<Option<flate2::Decompress>> = const { RefCell::new(None) };
    static ZSTD_CCTX: RefCell<Option<zstd_safe::CCtx<'static>>> = const { RefCell::new(None) };
    static ZSTD_DCTX: RefCell<Option<zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
    // Output room for zstd below `PARALLEL_FRAMES` (at most about 2 MiB per thread).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's cached context, creating it with `make` on first use. `None` when
/// the context cannot be created.
fn with_context<T, R>(
    slot: &'static LocalKey<RefCell<Option<T>>>,
    make: impl FnOnce() -> Option<T>,
    f: impl FnOnce(&mut T) -> R,
) -> Option<R> {
    slot.with(|cell| match cell.try_borrow_mut() {
        Ok(mut cached) => {
            if cached.is_none() {
                *cached = make();
            }
            cached.as_mut().map(f)
        }
        // Only reachable by re-entering from inside `f`; a private context keeps it correct.
        Err(_) => make().as_mut().map(f),
    })
}

fn zstd_compress(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    zstd_append(input, &mut out, ZSTD_LEVEL, ZstdRef::None).then_some(out)
}

/// What a zstd frame is compressed against, besides its own bytes.
#[derive(Clone, Copy)]
pub enum ZstdRef<'a> {
    /// Nothing: a self-contained frame.
    None,
    /// A trained dictionary (prepared for one level).
    Dict(&'a zstd_safe::CDict<'static>),
    /// Raw content that the frame may copy from as if it came right before it, as
    /// `zstd --patch-from` does: the delta history compresses a version against its newer
    /// neighbour this way.
    Prefix(&'a [u8]),
}

/// What a zstd frame is decompressed against; must be what it was compressed against.
#[derive(Clone, Copy)]
pub enum ZstdBase<'a> {
    /// Nothing.
    None,
    /// A trained dictionary.
    Dict(&'a zstd_safe::DDict<'static>),
    /// Raw content (the base version of a delta).
    Prefix(&'a [u8]),
}

/// Above this size a delta is compressed with long-distance matching and a window that spans
/// the whole base: the normal match finder of level 1 only looks about 128 KiB back, so a
/// multi-megabyte version would find almost nothing in its neighbour (measured on an 8 MiB
/// checkpoint: 1.5 MB without, 1.4 KB with).
const LONG_DELTA: usize = 1 << 20;

/// Appends `input` as one zstd frame at `level` (against `with`) to `out`; returns whether it
/// did. `out` is left as it was on failure.
pub fn zstd_append(input: &[u8], out: &mut Vec<u8>, level: i32, with: ZstdRef<'_>) -> bool {
    let start = out.len();
    let bound = zstd_safe::compress_bound(input.len());
    let big = match with {
        ZstdRef::Prefix(prefix) => prefix.len().saturating_add(input.len()) > LONG_DELTA,
        ZstdRef::None => input.len() >= PARALLEL_FRAMES,
        ZstdRef::Dict(_) => false,
    };
    if big {
        // zstd writes into initialized memory only (no unsafe here): zeroing the room costs
        // about what copying the result from a second buffer would.
        out.resize(start + bound, 0);
        let done = match with {
            ZstdRef::Prefix(prefix) => long_delta(input, prefix, level, &mut out[start..]),
            _ => parallel_frames(input, level, &mut out[start..]),
        };
        out.truncate(start + done.unwrap_or(0));
        return done.is_some();
    }
    // Small and medium values go through a scratch buffer kept per thread (zeroed once, as it
    // grows), so no write zeroes a fresh worst-case buffer; the result is copied once.
    let done = SCRATCH.with(|cell| {
        let mut scratch = match cell.try_borrow_mut() {
            Ok(s) => s,
            Err(_) => return None,
        };
        if scratch.len() < bound {
            scratch.resize(bound, 0);
        }
        let n = with_context(&ZSTD_CCTX, zstd_safe::CCtx::try_create, |cctx| {
            zstd_with(cctx, input, &mut scratch[..bound], level, with)
        })
        .flatten()?;
        out.extend_from_slice(scratch.get(..n)?);
        Some(())
    });
    if done.is_none() {
        out.truncate(start);
    }
    done.is_some()
}

/// Values at least this long are compressed as several zstd frames, one per thread: a
/// standard payload (zstd decoders read concatenated frames as one stream), and an 8 MB
/// checkpoint's compression takes about half the time on two cores. Each frame loses the
/// matches it could have found in the others: about 1% more bytes on agent checkpoints.
pub const PARALLEL_FRAMES: usize = 2 << 20;

/// `input` as consecutive frames compressed on their own threads; the written length.
fn parallel_frames(input: &[u8], level: i32, dst: &mut [u8]) -> Option<usize> {
    let threads = std::thread::available_parallelism()
        .map_or(2, usize::from)
        .clamp(2, 4);
    let part = input.len().div_ceil(threads);
    let frames: Vec<Option<Vec<u8>>> = std::thread::scope(|s| {
        let jobs: Vec<_> = input
            .chunks(part)
            .map(|chunk| {
                s.spawn(move || {
                    let mut v = vec![0u8; zstd_safe::compress_bound(chunk.len())];
                    let n = with_context(&ZSTD_CCTX, zstd_safe::CCtx::try_create, |cctx| {
                        zstd_with(cctx, chunk, &mut v, level, ZstdRef::None)
                    })
                    .flatten()?;
                    v.truncate(n);
                    Some(v)
                })
            })
            .collect();
        jobs.into_iter().map(|j| j.join().ok().flatten()).collect()
    });
    let mut at = 0;
    for f in frames {
        let f = f?;
        dst.get_mut(at..at + f.len())?.copy_from_slice(&f);
        at += f.len();
    }
    Some(at)
}

/// One frame with a reused context; the written length.
fn zstd_with(
    cctx: &mut zstd_safe::CCtx<'static>,
    input: &[u8],
    dst: &mut [u8],
    level: i32,
    with: ZstdRef<'_>,
) -> Option<usize> {
    // Every call sets its own level and leaves no dictionary or prefix behind: the one-shot
    // calls below load theirs for that frame only.
    match with {
        ZstdRef::None => {
            cctx.reset(zstd_safe::ResetDirective::SessionAndParameters)
                .ok()?;
            cctx.set_parameter(zstd_safe::CParameter::CompressionLevel(level))
                .ok()?;
            cctx.compress2(dst, input).ok()
        }
        ZstdRef::Dict(cdict) => cctx.compress_using_cdict(dst, input, cdict).ok(),
        // A raw-content dictionary is the same thing as a prefix to the decoder.
        ZstdRef::Prefix(prefix) => cctx.compress_using_dict(dst, input, prefix, level).ok(),
    }
}

/// A delta of a large value: a context of its own with long-distance matching and a window
/// covering base and value (one-shot calls derive their window from the level only).
fn long_delta(input: &[u8], prefix: &[u8], level: i32, dst: &mut [u8]) -> Option<usize> {
    use zstd_safe::CParameter as P;
    let span = prefix.len().saturating_add(input.len());
    // ceil(log2(span)), at least zstd's minimum and at most what any 64-bit decoder accepts.
    let window = (usize::BITS - span.saturating_sub(1).leading_zeros()).clamp(10, 30);
    let mut cctx = zstd_safe::CCtx::try_create()?;
    cctx.set_parameter(P::CompressionLevel(level)).ok()?;
    cctx.set_parameter(P::EnableLongDistanceMatching(true))
        .ok()?;
    cctx.set_parameter(P::WindowLog(window)).ok()?;
    cctx.ref_prefix(prefix).ok()?;
    cctx.compress2(dst, input).ok()
}

fn zstd_decompress(payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    zstd_decompress_with(payload, out, ZstdBase::None)
}

/// Decompresses one zstd payload into `out`, which it must fill exactly, against `base`.
pub fn zstd_decompress_with(
    payload: &[u8],
    out: &mut [u8],
    base: ZstdBase<'_>,
) -> Result<(), CodecError> {
    let codec = Codec::Zstd.name();
    let original_len = out.len();
    // Frames normally record their content size; checking the first frame's rejects a lying
    // header or a bomb before any work (further frames, if any, are bounded by `out` below).
    match zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n > original_len as u64 => {
            return Err(CodecError::TooLong {
                codec,
                expected: original_len,
            });
        }
        Ok(_) => {}
        Err(_) => return Err(corrupt_msg(codec, "invalid frame header")),
    }
    // One-shot decoding writes straight into `out` and needs no window buffer, unlike the
    // streaming decoder, whose window size the frame header chooses (up to 128 MiB).
    let result = with_context(&ZSTD_DCTX, zstd_safe::DCtx::try_create, |dctx| match base {
        ZstdBase::None => dctx.decompress(&mut out[..], payload),
        ZstdBase::Dict(ddict) => dctx.decompress_using_ddict(&mut out[..], payload, ddict),
        ZstdBase::Prefix(prefix) => dctx.decompress_using_dict(&mut out[..], payload, prefix),
    })
    .ok_or_else(|| corrupt_msg(codec, "no decoder"))?;
    let produced = match result {
        Ok(n) => n,
        Err(code) if code.wrapping_neg() == DST_TOO_SMALL => {
            return Err(CodecError::TooLong {
                codec,
                expected: original_len,
            });
        }
        Err(code) => return Err(corrupt_msg(codec, zstd_safe::get_error_name(code))),
    };
    if produced != original_len {
        return Err(CodecError::TooShort {
            codec,
            expected: original_len,
            actual: produced,
        });
    }
    Ok(())
}

// zstd reports errors as the negated value of this enum (ZSTD_getErrorCode does the same
// negation); the enum values are part of zstd's stable error API.
const DST_TOO_SMALL: usize =
    zstd_safe::zstd_sys::ZSTD_ErrorCode::ZSTD_error_dstSize_tooSmall as usize;

#[cfg(test)]
mod tests {
    use super::*;

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
}
