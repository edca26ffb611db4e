//! zstd: one frame (self-contained, with a trained dictionary, or against a base version's
//! bytes as a delta), several frames on several threads for large values, and decoding that
//! never writes past the expected length.

use std::cell::RefCell;

use zstd::zstd_safe;

use super::{Codec, CodecError, ZSTD_LEVEL, corrupt_msg, with_context};

thread_local! {
    // One context per thread, reused: why, on the thread-locals of codec/mod.rs.
    static ZSTD_CCTX: RefCell<Option<zstd_safe::CCtx<'static>>> = const { RefCell::new(None) };
    static ZSTD_DCTX: RefCell<Option<zstd_safe::DCtx<'static>>> = const { RefCell::new(None) };
    // Output room for zstd below `PARALLEL_FRAMES` (at most about 2 MiB per thread).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn zstd_compress(input: &[u8]) -> Option<Vec<u8>> {
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
        if let ZstdRef::Prefix(prefix) = with {
            // A delta of neighbouring versions is a tiny fraction of the value (1.4 KB for
            // 8 MB): try a small room first rather than zero (and fault in) a worst-case one.
            let small = (input.len() / 16).saturating_add(64 << 10).min(bound);
            out.resize(start + small, 0);
            if let Some(n) = long_delta(input, prefix, level, &mut out[start..]) {
                out.truncate(start + n);
                return true;
            }
            if small == bound {
                out.truncate(start);
                return false;
            }
        }
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
    let part = input.len().div_ceil(frame_threads());
    let parts: Vec<&[u8]> = input.chunks(part).collect();
    let mut at = 0;
    for f in frames_on_threads(&parts, level)? {
        dst.get_mut(at..at + f.len())?.copy_from_slice(&f);
        at += f.len();
    }
    Some(at)
}

/// Threads that compress a big value's frames: what the machine has, from two to four.
fn frame_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, usize::from)
        .clamp(2, 4)
}

/// Each of `parts` as one self-contained frame, in order: consecutive runs of parts of about
/// equal bytes, one run per thread (`frame_threads`).
pub(super) fn frames_on_threads(parts: &[&[u8]], level: i32) -> Option<Vec<Vec<u8>>> {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let share = total.div_ceil(frame_threads()).max(1);
    let mut runs: Vec<&[&[u8]]> = Vec::new();
    let (mut from, mut acc) = (0, 0);
    for (i, p) in parts.iter().enumerate() {
        acc += p.len();
        if acc >= share {
            runs.push(&parts[from..=i]);
            (from, acc) = (i + 1, 0);
        }
    }
    if from < parts.len() {
        runs.push(&parts[from..]);
    }
    std::thread::scope(|s| {
        let jobs: Vec<_> = runs
            .into_iter()
            .map(|run| {
                s.spawn(move || {
                    run.iter()
                        .map(|p| zstd_frame(p, level))
                        .collect::<Option<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(parts.len());
        for j in jobs {
            all.extend(j.join().ok()??);
        }
        Some(all)
    })
}

/// `input` as one self-contained frame at `level`, in a vector of its exact size (whatever
/// its length: no frames of its own on other threads).
pub(super) fn zstd_frame(input: &[u8], level: i32) -> Option<Vec<u8>> {
    let mut v = vec![0u8; zstd_safe::compress_bound(input.len())];
    let n = with_context(&ZSTD_CCTX, zstd_safe::CCtx::try_create, |cctx| {
        zstd_with(cctx, input, &mut v, level, ZstdRef::None)
    })
    .flatten()?;
    v.truncate(n);
    Some(v)
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

/// Appends `input` as one zstd frame against `prefix` with long-distance matching, whatever
/// their size: level 1's own match finder keeps too few positions of a prefix of a few hundred
/// KiB to find the copies a neighbouring version is made of (`chunk_delta`).
pub(super) fn long_delta_append(
    input: &[u8],
    prefix: &[u8],
    level: i32,
    out: &mut Vec<u8>,
) -> bool {
    let start = out.len();
    out.resize(start + zstd_safe::compress_bound(input.len()), 0);
    let done = long_delta(input, prefix, level, &mut out[start..]);
    out.truncate(start + done.unwrap_or(0));
    done.is_some()
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

pub(super) fn zstd_decompress(payload: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
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
