//! Compression codecs for state values.
//!
//! Every codec writes its library's standard format (LZ4 block, RFC 1950 zlib stream, zstd frame)
//! so that a value can be recovered with stock tools if statecar is ever gone; see docs/FORMAT.md.
//!
//! Decompression is bounded by the caller's `original_len`: the output buffer is allocated once at
//! exactly that size and nothing a payload says can make it grow. This is what stops a small
//! stored value (a "bomb") from exhausting the proxy's memory.
//!
//! LZ4 is small enough to live here; zlib (`zlib`) and zstd (`zstd_frames`: dictionaries,
//! deltas against a base, several frames for large values; `chunked`: a big value's frames
//! reused by its next version) have files of their own.

pub mod chunk_delta;
pub mod chunked;
mod cuts;
#[cfg(test)]
mod tests;
mod zlib;
mod zstd_frames;

pub use zstd_frames::{PARALLEL_FRAMES, ZstdBase, ZstdRef, zstd_append, zstd_decompress_with};

use std::cell::RefCell;
use std::thread::LocalKey;

use zlib::{deflate, inflate};
use zstd_frames::{zstd_compress, zstd_decompress};

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

fn corrupt_msg(codec: &'static str, detail: &str) -> CodecError {
    CodecError::Corrupt {
        codec,
        detail: detail.to_string(),
    }
}

// Setting up a codec context costs more than compressing a small value with it (a fresh miniz
// compressor made zlib on 1 KiB about 4x slower than a reused one). Each thread keeps one
// context per codec and direction (here, and in `zlib` and `zstd_frames`), resets it before
// use, and holds on to its memory (a few MiB per thread at most).
thread_local! {
    static LZ4_TABLE: RefCell<lz4_flex::block::CompressTable> =
        RefCell::new(lz4_flex::block::CompressTable::default());
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
