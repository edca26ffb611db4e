//! The header: writing it around a payload that is already in place, and reading and
//! verifying it without touching the payload. Both directions live here so the layout is
//! written down in code once.

use super::{
    Base, EnvelopeError, FLAG_CHUNKS, FLAG_DELTA, FLAG_DICT, FORMAT_V1, FORMAT_VERSION,
    HEADER_CRC_SPAN, HEADER_LEN, MAGIC, Meta, SIGNATURE, SIGNATURE_V2, VERSION_OFFSET,
};
use crate::state::codec::Codec;

/// Fills in the header (and extension) of `out`, whose payload is already in place, for a
/// value of `value_len` bytes whose CRC-32 is `value_crc` (the callers compute it once: a
/// versioned write needs it for the delta against the value as well).
#[allow(clippy::too_many_arguments)]
pub(super) fn write_header(
    out: &mut [u8],
    codec: Codec,
    flags: u16,
    ext: &[u8],
    timestamp_ms: u64,
    value_len: usize,
    value_crc: u32,
    version: u32,
) {
    // Values over 4 GiB cannot be stored in Redis (512 MiB limit) and are rejected far earlier
    // by the proxy; saturating keeps this total and guarantees such a header never verifies.
    let original_len = u32::try_from(value_len).unwrap_or(u32::MAX);
    out[..5].copy_from_slice(if ext.is_empty() {
        &SIGNATURE
    } else {
        &SIGNATURE_V2
    });
    out[5] = codec.id();
    out[6..8].copy_from_slice(&flags.to_be_bytes());
    out[8..16].copy_from_slice(&timestamp_ms.to_be_bytes());
    out[16..20].copy_from_slice(&original_len.to_be_bytes());
    out[20..24].copy_from_slice(&value_crc.to_be_bytes());
    out[HEADER_LEN..HEADER_LEN + ext.len()].copy_from_slice(ext);
    let header_crc = header_crc(&out[..HEADER_CRC_SPAN], ext);
    out[HEADER_CRC_SPAN..VERSION_OFFSET].copy_from_slice(&header_crc.to_be_bytes());
    out[VERSION_OFFSET..HEADER_LEN].copy_from_slice(&version_patch(version));
}

/// CRC32 of the fixed header's first 24 bytes followed by the extension.
pub(super) fn header_crc(fixed: &[u8], ext: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(fixed);
    h.update(ext);
    h.finalize()
}

/// The 8 bytes stored at `VERSION_OFFSET..HEADER_LEN` for `version`: the version, then its
/// bitwise NOT, both big-endian.
pub fn version_patch(version: u32) -> [u8; 8] {
    let mut patch = [0u8; 8];
    patch[..4].copy_from_slice(&version.to_be_bytes());
    patch[4..].copy_from_slice(&(!version).to_be_bytes());
    patch
}

/// Writes `version` (and its complement) into an encoded envelope.
///
/// # Panics
/// If `buf` is shorter than [`HEADER_LEN`]: it must come from [`encode`](super::encode), never from
/// Redis.
pub fn set_version(buf: &mut [u8], version: u32) {
    buf[VERSION_OFFSET..HEADER_LEN].copy_from_slice(&version_patch(version));
}

/// How far `stored` is from the nearest known signature in its first five bytes (0 = an
/// envelope of a known format).
fn signature_distance(stored: &[u8]) -> usize {
    let n = stored.len().min(SIGNATURE.len());
    [SIGNATURE, SIGNATURE_V2]
        .iter()
        .map(|sig| {
            stored[..n]
                .iter()
                .zip(sig)
                .filter(|(a, b)| **a != **b)
                .count()
        })
        .min()
        .unwrap_or(0)
}

/// Reads and verifies the header only (no decompression); `Ok(None)` means a plain value.
///
/// Checks the header CRC, the version pair, the format byte, the flags and the codec id. The
/// payload is not looked at, so `stored` may be the whole value or just its first
/// [`MAX_HEADER_LEN`](super::MAX_HEADER_LEN) bytes (`GETRANGE key 0 47`); `stored_len` in the
/// result is the length of what was passed, so a caller holding only the prefix should take the
/// length from `STRLEN`.
/// A damaged payload passes here and fails in [`decode`](super::decode).
///
/// # Which values are plain
/// A value written before statecar was deployed has no header and must be returned untouched,
/// but a damaged envelope must never be mistaken for such a value and returned raw. The first
/// five bytes (magic and format version) decide, compared with the signatures of both formats
/// (`E5 53 43 4B 01` and `E5 53 43 4B 02`):
/// - empty, or shorter than [`HEADER_LEN`] and differing from both signatures' first bytes in
///   at least one position: plain. A short value that is an exact prefix of a signature is a
///   truncated envelope (error).
/// - [`HEADER_LEN`] bytes or more: plain when they differ from both signatures in two or more
///   positions. Exactly one differing byte is a damaged envelope (error): one flipped byte
///   would otherwise turn corruption into "legacy" data. Magic intact but another format byte
///   is a format this build cannot read (error).
///
/// The price is that a pre-statecar value within one byte of a signature, or a short one that
/// is an exact prefix of one (such as the single byte 0xE5), is unreadable through the proxy.
/// Text never starts with 0xE5 followed by ASCII; a random binary value of 36 bytes or more has
/// a chance of about 2^-29 of being that close.
pub fn inspect(stored: &[u8]) -> Result<Option<Meta>, EnvelopeError> {
    let differing = signature_distance(stored);
    if stored.len() < HEADER_LEN {
        return if stored.is_empty() || differing > 0 {
            Ok(None)
        } else {
            Err(EnvelopeError::Truncated {
                len: stored.len(),
                expected: HEADER_LEN,
            })
        };
    }
    if differing >= 2 {
        return Ok(None);
    }
    let Some(header) = stored.first_chunk::<HEADER_LEN>() else {
        return Err(EnvelopeError::Truncated {
            len: stored.len(),
            expected: HEADER_LEN,
        });
    };
    if header[..4] != MAGIC {
        let mut found = [0u8; 5];
        found.copy_from_slice(&header[..5]);
        return Err(EnvelopeError::DamagedMagic { found });
    }
    // Checked before the header CRC: bytes 0..5 are the only ones every format promises to
    // keep, a newer format may put its checks elsewhere.
    let format = header[4];
    if format != FORMAT_V1 && format != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedFormat(format));
    }
    let be32 = |b: &[u8], at: usize| u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let flags = u16::from_be_bytes([header[6], header[7]]);
    // The extension's length follows from the flags, which the header CRC covers; the flags
    // themselves are judged after the CRC, so damage reads as damage, not as a newer format.
    let ext_len = if format == FORMAT_V1 {
        0
    } else {
        4 * usize::from(flags & FLAG_DICT != 0) + 8 * usize::from(flags & FLAG_DELTA != 0)
    };
    let header_len = HEADER_LEN + ext_len;
    let Some(ext) = stored.get(HEADER_LEN..header_len) else {
        return Err(EnvelopeError::Truncated {
            len: stored.len(),
            expected: header_len,
        });
    };
    let stored_header_crc = be32(header, 24);
    let computed = header_crc(&header[..HEADER_CRC_SPAN], ext);
    if stored_header_crc != computed {
        return Err(EnvelopeError::HeaderChecksum {
            stored: stored_header_crc,
            computed,
        });
    }
    let version = be32(header, VERSION_OFFSET);
    let check = be32(header, VERSION_OFFSET + 4);
    if check != !version {
        return Err(EnvelopeError::VersionPair { version, check });
    }
    let known = if format == FORMAT_V1 {
        0
    } else {
        FLAG_DELTA | FLAG_DICT | FLAG_CHUNKS
    };
    // Format 2 always has an extension, a frame cannot have both a dictionary and a base, and
    // only a delta can be a chunk map.
    let valid = flags & !known == 0
        && (format == FORMAT_V1 || flags != 0)
        && flags & (FLAG_DELTA | FLAG_DICT) != FLAG_DELTA | FLAG_DICT
        && (flags & FLAG_CHUNKS == 0 || flags == FLAG_DELTA | FLAG_CHUNKS);
    if !valid {
        return Err(EnvelopeError::UnsupportedFlags(flags));
    }
    let codec = Codec::from_id(header[5]).ok_or(EnvelopeError::UnknownCodec(header[5]))?;
    if flags != 0 && codec != Codec::Zstd {
        // Deltas and dictionaries are zstd features; anything else is damage or a newer writer.
        return Err(EnvelopeError::UnsupportedFlags(flags));
    }
    let mut at = 0;
    let dict = (flags & FLAG_DICT != 0).then(|| {
        at += 4;
        be32(ext, 0)
    });
    let base = (flags & FLAG_DELTA != 0).then(|| Base {
        version: be32(ext, at),
        crc32: be32(ext, at + 4),
    });
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&header[8..16]);
    let meta = Meta {
        codec,
        original_len: be32(header, 16),
        crc32: be32(header, 20),
        version,
        timestamp_ms: u64::from_be_bytes(ts),
        stored_len: stored.len(),
        dict,
        base,
        chunk_map: flags & FLAG_CHUNKS != 0,
        header_len,
    };
    Ok(Some(meta))
}
