//! Building envelopes: a full value (format 1, or format 2 naming a dictionary) and a delta
//! against another version (format 2). The header itself is written by `header`.

use super::header::write_header;
use super::{FLAG_CHUNKS, FLAG_DELTA, FLAG_DICT, HEADER_LEN};
use crate::state::codec::chunked::Chunk;
use crate::state::codec::{self, Codec, ZstdRef, chunked};

/// A trained dictionary ready for compression at one level.
#[derive(Clone, Copy)]
pub struct DictRef<'a> {
    /// Its id, written in the header.
    pub id: u32,
    /// The prepared dictionary.
    pub cdict: &'a zstd::zstd_safe::CDict<'static>,
}

/// How a rule compresses a full (non-delta) value.
#[derive(Clone, Copy)]
pub struct Encoding<'a> {
    /// The codec.
    pub codec: Codec,
    /// The zstd level (ignored by the other codecs).
    pub level: i32,
    /// Values shorter than this are stored uncompressed.
    pub min_size: usize,
    /// A trained dictionary (zstd only).
    pub dict: Option<DictRef<'a>>,
}

/// Encodes `value` into a stored envelope of format 1 with the codec's default level.
///
/// This is the encoder statecar used before format 2, kept as it was: the fuzz target, the
/// codec benchmark and the compatibility tests write old-format values with it. See
/// [`encode_with`] for what a rule writes.
pub fn encode(
    value: &[u8],
    codec: Codec,
    min_size: usize,
    timestamp_ms: u64,
    version: u32,
) -> Vec<u8> {
    let level = codec::ZSTD_LEVEL;
    let enc = Encoding {
        codec,
        level,
        min_size,
        dict: None,
    };
    encode_with(value, &enc, timestamp_ms, version)
}

/// Encodes `value` as a full (self-contained) envelope.
///
/// The payload is compressed only when `value.len() >= min_size` and the result is strictly
/// smaller than `value`; otherwise it is stored with codec none, so reading never pays for a
/// decompression that saved nothing. With a dictionary (zstd) the envelope is format 2 and
/// names it; otherwise it is format 1. `version` is written with its complement; the Lua
/// script that assigns versions in Redis may overwrite both (see
/// [`version_patch`](super::version_patch)).
pub fn encode_with(value: &[u8], enc: &Encoding<'_>, timestamp_ms: u64, version: u32) -> Vec<u8> {
    let crc = crc32fast::hash(value);
    encode_with_crc(value, enc, crc, timestamp_ms, version)
}

/// [`encode_with`] for a value whose CRC-32 the caller already has (a versioned write needs
/// it for the delta's header too).
pub fn encode_with_crc(
    value: &[u8],
    enc: &Encoding<'_>,
    value_crc: u32,
    timestamp_ms: u64,
    version: u32,
) -> Vec<u8> {
    let codec = enc.codec;
    let dict = enc.dict.filter(|_| codec == Codec::Zstd);
    let ext = if dict.is_some() { 4 } else { 0 };
    let room = match codec {
        Codec::Lz4 => lz4_flex::block::get_maximum_output_size(value.len()),
        _ => value.len(),
    };
    let mut out = Vec::with_capacity(HEADER_LEN + ext + room);
    out.resize(HEADER_LEN + ext, 0);
    let wants = codec != Codec::None && value.len() >= enc.min_size;
    let compressed = wants
        && match dict {
            Some(d) => {
                let start = out.len();
                codec::zstd_append(value, &mut out, enc.level, ZstdRef::Dict(d.cdict))
                    && (out.len() - start < value.len() || {
                        out.truncate(start);
                        false
                    })
            }
            None => codec.compress_append_level(value, &mut out, enc.level),
        };
    let (codec, flags, ext_bytes) = match (compressed, dict) {
        (true, Some(d)) => (codec, FLAG_DICT, d.id.to_be_bytes().to_vec()),
        (true, None) => (codec, 0, Vec::new()),
        (false, _) => (Codec::None, 0, Vec::new()),
    };
    if !compressed {
        out.truncate(HEADER_LEN);
        out.extend_from_slice(value);
    } else if ext_bytes.is_empty() && ext > 0 {
        // Compressed without the dictionary after all: no extension.
        out.drain(HEADER_LEN..HEADER_LEN + ext);
    }
    write_header(
        &mut out,
        codec,
        flags,
        &ext_bytes,
        timestamp_ms,
        value.len(),
        value_crc,
        version,
    );
    out
}

/// Encodes a big `value` as a full envelope (format 1, zstd) whose payload is one frame per
/// content-defined chunk (`value_crc` is its CRC-32), copying the frames of the chunks `prev`
/// (the value's previous version, as it was encoded) already holds; see `codec::chunked`. Also returns the chunks,
/// with frame ranges relative to the payload, for the next version. `None` if zstd failed or
/// the payload would not be smaller than the value (the caller then encodes it as usual).
pub fn encode_chunked(
    value: &[u8],
    level: i32,
    value_crc: u32,
    prev: Option<chunked::Previous<'_>>,
    timestamp_ms: u64,
    version: u32,
) -> Option<(Vec<u8>, chunked::Outcome)> {
    // No room reserved here: `compress_chunked` reserves exactly what the payload takes.
    let mut out = vec![0u8; HEADER_LEN];
    let outcome = chunked::compress_chunked(value, level, prev, &mut out)?;
    if out.len() - HEADER_LEN >= value.len() {
        return None;
    }
    write_header(
        &mut out,
        Codec::Zstd,
        0,
        &[],
        timestamp_ms,
        value.len(),
        value_crc,
        version,
    );
    Some((out, outcome))
}

/// Encodes `value` as a delta against `base` (the bytes of version `base_version`): a format-2
/// envelope whose payload is a zstd frame compressed with `base` as its reference prefix,
/// decodable with `zstd -d --patch-from=<base>`. `None` if zstd failed.
pub fn encode_delta(
    value: &[u8],
    base: &[u8],
    base_version: u32,
    level: i32,
    timestamp_ms: u64,
    version: u32,
) -> Option<Vec<u8>> {
    let crcs = Crcs {
        value: crc32fast::hash(value),
        base: crc32fast::hash(base),
    };
    encode_delta_known(
        value,
        base,
        crcs,
        base_version,
        level,
        timestamp_ms,
        version,
    )
}

/// The CRC-32s of a delta's value and base, when the caller has them already (they are in
/// the two versions' headers): an 8 MB value takes 0.7 ms to checksum.
#[derive(Clone, Copy, Debug)]
pub struct Crcs {
    /// Of the value the delta encodes.
    pub value: u32,
    /// Of the base it is a delta against.
    pub base: u32,
}

/// [`encode_delta`] with both checksums known.
pub fn encode_delta_known(
    value: &[u8],
    base: &[u8],
    crcs: Crcs,
    base_version: u32,
    level: i32,
    timestamp_ms: u64,
    version: u32,
) -> Option<Vec<u8>> {
    let head = DeltaHead {
        crcs,
        base_version,
        timestamp_ms,
        version,
    };
    head.wrap(FLAG_DELTA, value.len(), value.len() / 8 + 64, |out| {
        codec::zstd_append(value, out, level, ZstdRef::Prefix(base))
    })
}

/// `value` (cut into `value_chunks`) as a chunk map of `base` (cut into `base_chunks`), the
/// next newer version (`codec::chunk_delta`); `None` when the map does not apply (fewer than
/// half of the value's bytes found in the base, a table that does not describe its value),
/// and the caller makes a delta of zstd's own. `sources`: for each chunk of `base`, the chunk
/// of `value` with the same bytes, when the caller knows (the outcome of compressing `base`).
pub fn encode_chunk_delta(
    value: &[u8],
    value_chunks: &[Chunk],
    base: &[u8],
    base_chunks: &[Chunk],
    sources: Option<&[Option<usize>]>,
    level: i32,
    head: DeltaHead,
) -> Option<Vec<u8>> {
    let mut out = head.wrap(FLAG_DELTA | FLAG_CHUNKS, value.len(), 4096, |out| {
        codec::chunk_delta::encode(value, value_chunks, base, base_chunks, sources, level, out)
    })?;
    out.shrink_to_fit();
    Some(out)
}

/// What the header of a delta says besides its flags and the value's length.
#[derive(Clone, Copy, Debug)]
pub struct DeltaHead {
    /// The value's and the base's checksums.
    pub crcs: Crcs,
    /// The version the delta is against.
    pub base_version: u32,
    /// When the value was first written.
    pub timestamp_ms: u64,
    /// The value's version.
    pub version: u32,
}

impl DeltaHead {
    /// The envelope, with `flags`, of a value of `value_len` bytes whose payload `payload`
    /// appends (room for `room` bytes of it reserved); `None` if it could not.
    fn wrap(
        &self,
        flags: u16,
        value_len: usize,
        room: usize,
        payload: impl FnOnce(&mut Vec<u8>) -> bool,
    ) -> Option<Vec<u8>> {
        let mut ext = [0u8; 8];
        ext[..4].copy_from_slice(&self.base_version.to_be_bytes());
        ext[4..].copy_from_slice(&self.crcs.base.to_be_bytes());
        let mut out = Vec::with_capacity(HEADER_LEN + 8 + room);
        out.resize(HEADER_LEN + 8, 0);
        if !payload(&mut out) {
            return None;
        }
        write_header(
            &mut out,
            Codec::Zstd,
            flags,
            &ext,
            self.timestamp_ms,
            value_len,
            self.crcs.value,
            self.version,
        );
        Some(out)
    }
}
