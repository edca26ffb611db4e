//! The stored format of a state key's value: a header followed by the payload.
//!
//! ```text
//! 0..4   magic  E5 'S' 'C' 'K'
//! 4      format version: 1 (no header extension) or 2 (extension present)
//! 5      codec id
//! 6..8   flags (u16): 0x0001 delta, 0x0002 dictionary; format 1 has none
//! 8..16  timestamp, ms since the Unix epoch (u64)
//! 16..20 original length (u32)
//! 20..24 CRC32 of the original bytes
//! 24..28 CRC32 of bytes 0..24, then of the extension (format 2)
//! 28..32 version (u32)
//! 32..36 !version (u32)
//! 36..   format 2 only, by flags: dictionary id (u32); delta base version (u32) and the CRC32
//!        of the base version's bytes (u32)
//! ..     payload
//! ```
//!
//! All integers are big-endian. docs/FORMAT.md explains each field; in short, the header CRC
//! skips 24..36 so that the Lua script that assigns version numbers can patch 28..36 inside
//! Redis without recomputing anything, and the version is stored twice (once inverted) so a
//! damaged version is still detected. A value that needs no extension is written in format 1,
//! byte for byte what statecar before format 2 wrote, so older statecars keep reading it.

use bytes::{Bytes, BytesMut};

use super::codec::{self, Codec, CodecError, ZstdBase, ZstdRef};

/// First four bytes of every envelope. 0xE5 followed by ASCII is never valid UTF-8, so text
/// values written before statecar cannot start this way.
pub const MAGIC: [u8; 4] = [0xE5, b'S', b'C', b'K'];
/// The format without a header extension (every value before dictionaries and deltas).
pub const FORMAT_V1: u8 = 1;
/// The newest format this build writes and reads: a header extension, named by the flags.
pub const FORMAT_VERSION: u8 = 2;
/// Length of the fixed header; the payload (format 1) or the extension (format 2) starts here.
pub const HEADER_LEN: usize = 36;
/// The longest header, extension included: what a caller reading only the header fetches.
pub const MAX_HEADER_LEN: usize = HEADER_LEN + 12;
/// Offset of the 8 bytes (version, !version) that the Lua script overwrites.
pub const VERSION_OFFSET: usize = 28;
/// Flag: the payload is a zstd frame compressed against another version's bytes (a delta).
pub const FLAG_DELTA: u16 = 0x0001;
/// Flag: the payload is a zstd frame compressed with a trained dictionary.
pub const FLAG_DICT: u16 = 0x0002;

/// Bytes covered by the header CRC: everything the writer fixes, nothing the Lua script patches.
const HEADER_CRC_SPAN: usize = 24;
/// The first five bytes of a format-1 envelope.
const SIGNATURE: [u8; 5] = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], FORMAT_V1];
/// The first five bytes of a format-2 envelope.
const SIGNATURE_V2: [u8; 5] = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], FORMAT_VERSION];

/// The version a delta is decoded against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Base {
    /// Its version number.
    pub version: u32,
    /// CRC32 of its original bytes: decoding checks it before using them.
    pub crc32: u32,
}

/// What the header of a verified envelope says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Codec of the payload.
    pub codec: Codec,
    /// Length of the value the client wrote.
    pub original_len: u32,
    /// CRC32 of the value the client wrote.
    pub crc32: u32,
    /// Version number (as last patched by the Lua script).
    pub version: u32,
    /// When the value was encoded, ms since the Unix epoch.
    pub timestamp_ms: u64,
    /// Length of the bytes inspected: the whole stored value, header included, unless the
    /// caller passed only a prefix to [`inspect`].
    pub stored_len: usize,
    /// The trained dictionary the payload needs, by id.
    pub dict: Option<u32>,
    /// The version whose bytes the payload is a delta against.
    pub base: Option<Base>,
    /// Where the payload starts (the header's length, extension included).
    pub header_len: usize,
}

/// Result of decoding a stored value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// The value carries no statecar header (it was written before statecar): use it as it is.
    Plain,
    /// A verified envelope: the original bytes and the header's metadata.
    State {
        /// The bytes the client wrote.
        value: Vec<u8>,
        /// The header.
        meta: Meta,
    },
}

/// Why a stored value that looks like an envelope cannot be trusted (or cannot be decoded
/// without more context).
///
/// Messages are short and lowercase, meant to follow a key name in a Redis error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Bytes 0..24 (and the extension) do not match the header CRC.
    #[error("header checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})")]
    HeaderChecksum {
        /// CRC found at 24..28.
        stored: u32,
        /// CRC of bytes 0..24 and the extension.
        computed: u32,
    },
    /// Bytes 32..36 are not the bitwise NOT of bytes 28..32.
    #[error("version field damaged (version {version}, check 0x{check:08x})")]
    VersionPair {
        /// Value at 28..32.
        version: u32,
        /// Value at 32..36.
        check: u32,
    },
    /// The codec id is not one this build knows.
    #[error("unknown codec id {0}")]
    UnknownCodec(u8),
    /// The magic matches but the format byte is not one this build reads.
    #[error("unsupported format version {0}")]
    UnsupportedFormat(u8),
    /// Flag bits this build does not know, or a combination it never writes (written by a
    /// newer statecar, or damaged).
    #[error("unsupported flags 0x{0:04x}")]
    UnsupportedFlags(u16),
    /// The header claims more decoded bytes than the configured maximum.
    #[error("decoded size {claimed} exceeds limit {max}")]
    TooLarge {
        /// Original length from the header.
        claimed: u32,
        /// The caller's limit.
        max: usize,
    },
    /// The value is shorter than its header says it must be.
    #[error("truncated ({len} bytes, expected {expected})")]
    Truncated {
        /// Stored length.
        len: usize,
        /// Length the header requires (or the header's own length when it is cut).
        expected: usize,
    },
    /// The payload did not decompress to exactly the original length.
    #[error("{0}")]
    Decompress(CodecError),
    /// The decoded bytes do not match the stored CRC.
    #[error("checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})")]
    ChecksumMismatch {
        /// CRC found at 20..24.
        stored: u32,
        /// CRC of the decoded bytes.
        computed: u32,
    },
    /// One byte of the five-byte signature is wrong: a damaged envelope, not a plain value.
    #[error("damaged header magic (found {found:02x?})")]
    DamagedMagic {
        /// The first five bytes as stored.
        found: [u8; 5],
    },
    /// A delta was given no base, or the version it names is missing from the history.
    #[error("stored as a delta against version {0}, which is not available")]
    NeedsBase(u32),
    /// The bytes given as a delta's base are not the version it was made against.
    #[error(
        "delta base version {version} does not match (expected crc32 0x{expected:08x}, found 0x{found:08x})"
    )]
    BaseMismatch {
        /// The base version.
        version: u32,
        /// CRC32 the delta's header records for it.
        expected: u32,
        /// CRC32 of the bytes given.
        found: u32,
    },
    /// The payload needs a trained dictionary that is not available.
    #[error("compressed with dictionary {0}, which is not available")]
    NeedsDictionary(u32),
}

impl From<CodecError> for EnvelopeError {
    fn from(e: CodecError) -> Self {
        EnvelopeError::Decompress(e)
    }
}

/// What a payload is decoded against: the base version's bytes for a delta, the dictionary
/// for a dictionary-compressed value. Callers learn which from [`inspect`].
#[derive(Clone, Copy, Default)]
pub struct Refs<'a> {
    /// The original bytes of the delta's base version.
    pub base: Option<&'a [u8]>,
    /// The dictionary named in the header.
    pub dict: Option<&'a zstd::zstd_safe::DDict<'static>>,
}

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
/// script that assigns versions in Redis may overwrite both (see [`version_patch`]).
pub fn encode_with(value: &[u8], enc: &Encoding<'_>, timestamp_ms: u64, version: u32) -> Vec<u8> {
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
        value,
        version,
    );
    out
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
    let mut ext = [0u8; 8];
    ext[..4].copy_from_slice(&base_version.to_be_bytes());
    ext[4..].copy_from_slice(&crc32fast::hash(base).to_be_bytes());
    let mut out = Vec::with_capacity(HEADER_LEN + 8 + value.len() / 8 + 64);
    out.resize(HEADER_LEN + 8, 0);
    if !codec::zstd_append(value, &mut out, level, ZstdRef::Prefix(base)) {
        return None;
    }
    write_header(
        &mut out,
        Codec::Zstd,
        FLAG_DELTA,
        &ext,
        timestamp_ms,
        value,
        version,
    );
    Some(out)
}

/// Fills in the header (and extension) of `out`, whose payload is already in place.
fn write_header(
    out: &mut [u8],
    codec: Codec,
    flags: u16,
    ext: &[u8],
    timestamp_ms: u64,
    value: &[u8],
    version: u32,
) {
    // Values over 4 GiB cannot be stored in Redis (512 MiB limit) and are rejected far earlier
    // by the proxy; saturating keeps this total and guarantees such a header never verifies.
    let original_len = u32::try_from(value.len()).unwrap_or(u32::MAX);
    out[..5].copy_from_slice(if ext.is_empty() {
        &SIGNATURE
    } else {
        &SIGNATURE_V2
    });
    out[5] = codec.id();
    out[6..8].copy_from_slice(&flags.to_be_bytes());
    out[8..16].copy_from_slice(&timestamp_ms.to_be_bytes());
    out[16..20].copy_from_slice(&original_len.to_be_bytes());
    out[20..24].copy_from_slice(&crc32fast::hash(value).to_be_bytes());
    out[HEADER_LEN..HEADER_LEN + ext.len()].copy_from_slice(ext);
    let header_crc = header_crc(&out[..HEADER_CRC_SPAN], ext);
    out[HEADER_CRC_SPAN..VERSION_OFFSET].copy_from_slice(&header_crc.to_be_bytes());
    out[VERSION_OFFSET..HEADER_LEN].copy_from_slice(&version_patch(version));
}

/// CRC32 of the fixed header's first 24 bytes followed by the extension.
fn header_crc(fixed: &[u8], ext: &[u8]) -> u32 {
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
/// If `buf` is shorter than [`HEADER_LEN`]: it must come from [`encode`], never from Redis.
pub fn set_version(buf: &mut [u8], version: u32) {
    buf[VERSION_OFFSET..HEADER_LEN].copy_from_slice(&version_patch(version));
}

/// Decodes a stored value, verifying every check, with at most `max_decoded` bytes of output.
///
/// Returns [`Decoded::Plain`] for values that are not envelopes (see [`inspect`] for the rule)
/// and an error for anything that looks like an envelope but fails a check; the caller must
/// never hand the stored bytes to a client in that case. `original_len` is compared with
/// `max_decoded` before anything is allocated. A delta or a dictionary-compressed value
/// fails with [`EnvelopeError::NeedsBase`] / [`EnvelopeError::NeedsDictionary`]: use
/// [`decode_with`].
pub fn decode(stored: &[u8], max_decoded: usize) -> Result<Decoded, EnvelopeError> {
    decode_with(stored, max_decoded, Refs::default())
}

/// [`decode`] with what a delta or dictionary-compressed payload needs.
pub fn decode_with(
    stored: &[u8],
    max_decoded: usize,
    refs: Refs<'_>,
) -> Result<Decoded, EnvelopeError> {
    let Some(meta) = checked_meta(stored, max_decoded)? else {
        return Ok(Decoded::Plain);
    };
    let mut value = vec![0u8; meta.original_len as usize];
    payload_into(stored, &meta, &mut value, refs)?;
    Ok(Decoded::State { value, meta })
}

/// Like [`decode`], but gives the value as a whole RESP bulk string (`$<len>\r\n<value>\r\n`,
/// the same in RESP2 and RESP3), ready for the client, with the value's length; `Ok(None)`
/// means a plain value.
///
/// The value is decompressed straight into the reply frame, which a state GET then sends as it
/// is: one allocation, and no copy of the value after decompression.
pub fn decode_bulk(
    stored: &[u8],
    max_decoded: usize,
) -> Result<Option<(Bytes, usize)>, EnvelopeError> {
    decode_bulk_with(stored, max_decoded, Refs::default())
}

/// [`decode_bulk`] with what a delta or dictionary-compressed payload needs.
pub fn decode_bulk_with(
    stored: &[u8],
    max_decoded: usize,
    refs: Refs<'_>,
) -> Result<Option<(Bytes, usize)>, EnvelopeError> {
    let Some(meta) = checked_meta(stored, max_decoded)? else {
        return Ok(None);
    };
    let n = meta.original_len as usize;
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(n).as_bytes();
    let head = 1 + digits.len() + 2;
    let mut buf = BytesMut::with_capacity(head + n + 2);
    buf.extend_from_slice(b"$");
    buf.extend_from_slice(digits);
    buf.extend_from_slice(b"\r\n");
    buf.resize(head + n, 0);
    payload_into(stored, &meta, &mut buf[head..], refs)?;
    buf.extend_from_slice(b"\r\n");
    Ok(Some((buf.freeze(), n)))
}

/// The verified header of an envelope whose claimed length is within `max_decoded` and whose
/// payload is not obviously short; `None` for a plain value.
fn checked_meta(stored: &[u8], max_decoded: usize) -> Result<Option<Meta>, EnvelopeError> {
    let Some(meta) = inspect(stored)? else {
        return Ok(None);
    };
    let original_len = meta.original_len as usize;
    if original_len > max_decoded {
        return Err(EnvelopeError::TooLarge {
            claimed: meta.original_len,
            max: max_decoded,
        });
    }
    if meta.codec == Codec::None && stored.len() - meta.header_len < original_len {
        return Err(EnvelopeError::Truncated {
            len: stored.len(),
            expected: meta.header_len + original_len,
        });
    }
    Ok(Some(meta))
}

/// Decodes the payload into `out` (exactly the original length) and checks its CRC32.
fn payload_into(
    stored: &[u8],
    meta: &Meta,
    out: &mut [u8],
    refs: Refs<'_>,
) -> Result<(), EnvelopeError> {
    let payload = &stored[meta.header_len..];
    match (meta.base, meta.dict) {
        (Some(base), _) => {
            let bytes = refs.base.ok_or(EnvelopeError::NeedsBase(base.version))?;
            let found = crc32fast::hash(bytes);
            if found != base.crc32 {
                return Err(EnvelopeError::BaseMismatch {
                    version: base.version,
                    expected: base.crc32,
                    found,
                });
            }
            codec::zstd_decompress_with(payload, out, ZstdBase::Prefix(bytes))?;
        }
        (None, Some(id)) => {
            let dict = refs.dict.ok_or(EnvelopeError::NeedsDictionary(id))?;
            codec::zstd_decompress_with(payload, out, ZstdBase::Dict(dict))?;
        }
        (None, None) => meta.codec.decompress_into(payload, out)?,
    }
    let computed = crc32fast::hash(out);
    if computed != meta.crc32 {
        return Err(EnvelopeError::ChecksumMismatch {
            stored: meta.crc32,
            computed,
        });
    }
    Ok(())
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
/// [`MAX_HEADER_LEN`] bytes (`GETRANGE key 0 47`); `stored_len` in the result is the length of
/// what was passed, so a caller holding only the prefix should take the length from `STRLEN`.
/// A damaged payload passes here and fails in [`decode`].
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
        FLAG_DELTA | FLAG_DICT
    };
    // Format 2 always has an extension, and a frame cannot have both a dictionary and a base.
    let valid = flags & !known == 0
        && (format == FORMAT_V1 || flags != 0)
        && flags != FLAG_DELTA | FLAG_DICT;
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
        header_len,
    };
    Ok(Some(meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sample::agent_session_json;
    use proptest::prelude::*;
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    // Counts allocations on the current thread while armed, so tests can prove that forged
    // headers are rejected before any allocation. Pass-through otherwise; thread-local so tests
    // running in parallel do not disturb each other.
    struct CountingAlloc;

    thread_local! {
        static ARMED: Cell<bool> = const { Cell::new(false) };
        static ALLOCS: Cell<usize> = const { Cell::new(0) };
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    fn note(size: usize) {
        // try_with: the allocator can run during thread teardown, after the slots are gone.
        if ARMED.try_with(Cell::get).unwrap_or(false) {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    }

    unsafe impl GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc(layout) }
        }
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            note(layout.size());
            unsafe { System.alloc_zeroed(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            note(new_size);
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: CountingAlloc = CountingAlloc;

    /// Runs `f`, returning its result, the number of heap allocations it made on this thread
    /// and the largest one.
    fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize, usize) {
        ALLOCS.with(|a| a.set(0));
        LARGEST.with(|l| l.set(0));
        ARMED.with(|a| a.set(true));
        let r = f();
        ARMED.with(|a| a.set(false));
        (r, ALLOCS.with(Cell::get), LARGEST.with(Cell::get))
    }

    const MAX: usize = 64 << 20;

    /// A header with a valid header CRC around an arbitrary payload, as an attacker or a buggy
    /// writer could produce.
    fn forge(codec_id: u8, flags: u16, original_len: u32, crc: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&SIGNATURE);
        out.push(codec_id);
        out.extend_from_slice(&flags.to_be_bytes());
        out.extend_from_slice(&1_700_000_000_000u64.to_be_bytes());
        out.extend_from_slice(&original_len.to_be_bytes());
        out.extend_from_slice(&crc.to_be_bytes());
        let hc = crc32fast::hash(&out);
        out.extend_from_slice(&hc.to_be_bytes());
        out.extend_from_slice(&version_patch(7));
        out.extend_from_slice(payload);
        out
    }

    /// The reply-frame decoder must agree with [`decode`] on every input: the same verdict,
    /// and the same bytes inside `$<len>\r\n...\r\n`.
    fn bulk_agrees(stored: &[u8]) -> Result<(), TestCaseError> {
        match (decode(stored, MAX), decode_bulk(stored, MAX)) {
            (Err(_), Err(_)) | (Ok(Decoded::Plain), Ok(None)) => Ok(()),
            (Ok(Decoded::State { value, .. }), Ok(Some((frame, n)))) => {
                let mut want = format!("${}\r\n", value.len()).into_bytes();
                want.extend_from_slice(&value);
                want.extend_from_slice(b"\r\n");
                prop_assert_eq!(n, value.len());
                prop_assert_eq!(&frame[..], &want[..]);
                Ok(())
            }
            (a, b) => Err(TestCaseError::fail(format!(
                "decode {:?} but decode_bulk {:?}",
                a.map(|d| matches!(d, Decoded::Plain)),
                b.map(|f| f.map(|f| f.1))
            ))),
        }
    }

    fn decoded_value(stored: &[u8]) -> Vec<u8> {
        match decode(stored, MAX) {
            Ok(Decoded::State { value, .. }) => value,
            other => panic!("expected a state value, got {other:?}"),
        }
    }

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
                                Decoded::State { value, .. } =>
                                    format!("{} other bytes", value.len()),
                            }
                        )));
                    }
                }
            }
        }
        Ok(benign)
    }

    fn any_codec() -> impl Strategy<Value = Codec> {
        prop::sample::select(Codec::ALL.to_vec())
    }

    /// Random bytes, compressible bytes (small alphabet) and realistic JSON, up to `max` long.
    fn value_up_to(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..max),
            prop::collection::vec(0u8..4, 0..max),
            (any::<u64>(), 0..max).prop_map(|(seed, len)| agent_session_json(seed, len)),
        ]
    }

    fn any_value() -> impl Strategy<Value = Vec<u8>> {
        value_up_to(8192)
    }

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
    fn forged_huge_length_is_too_large_without_allocating() {
        let forged = forge(Codec::Lz4.id(), 0, u32::MAX, 0, &[0x1f, 0, 0, 0]);
        let (r, count, _) = allocations(|| decode(&forged, MAX));
        assert_eq!(
            r,
            Err(EnvelopeError::TooLarge {
                claimed: u32::MAX,
                max: MAX
            })
        );
        assert_eq!(count, 0, "decode allocated before rejecting");
        // inspect does not apply the limit: listing can still show the claim.
        assert_eq!(
            inspect(&forged).map(|m| m.map(|m| m.original_len)),
            Ok(Some(u32::MAX))
        );
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
    fn bombs_fail_with_bounded_allocation() {
        let zeros = vec![0u8; 64 << 20];
        let small = 4096u32;
        for c in [Codec::Lz4, Codec::Zlib, Codec::Zstd] {
            let payload = c.compress(&zeros);
            // Header honest about the CRC of what it claims, lying about the length.
            let forged = forge(
                c.id(),
                0,
                small,
                crc32fast::hash(&zeros[..small as usize]),
                &payload,
            );
            let (r, _, largest) = allocations(|| decode(&forged, MAX));
            assert!(
                matches!(
                    r,
                    Err(EnvelopeError::Decompress(CodecError::TooLong { .. }))
                ),
                "{c}: {r:?}"
            );
            // Decoder state (zlib's window) is allocated too; nothing scales with the bomb.
            assert!(largest <= 64 * 1024, "{c}: allocated {largest} bytes");
        }
        // Honest header, but over the configured maximum.
        let enc = encode(&zeros, Codec::Zstd, 0, 0, 1);
        assert!(enc.len() < 64 * 1024);
        let (r, count, _) = allocations(|| decode(&enc, 1 << 20));
        assert_eq!(
            r,
            Err(EnvelopeError::TooLarge {
                claimed: 64 << 20,
                max: 1 << 20
            })
        );
        assert_eq!(count, 0);
        // Payload producing less than claimed.
        let tiny = Codec::Zstd.compress(&zeros[..100]);
        let forged = forge(Codec::Zstd.id(), 0, 1000, 0, &tiny);
        assert!(matches!(
            decode(&forged, MAX),
            Err(EnvelopeError::Decompress(CodecError::TooShort { .. }))
        ));
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

    #[test]
    fn decoded_size_limit_is_inclusive() {
        let value = agent_session_json(11, 5000);
        for codec in Codec::ALL {
            let enc = encode(&value, codec, 0, 1, 1);
            assert!(
                matches!(decode(&enc, value.len()), Ok(Decoded::State { .. })),
                "{codec}: exactly at the limit"
            );
            let (r, count, _) = allocations(|| decode(&enc, value.len() - 1));
            assert_eq!(
                r,
                Err(EnvelopeError::TooLarge {
                    claimed: value.len() as u32,
                    max: value.len() - 1
                }),
                "{codec}: one over"
            );
            assert_eq!(count, 0, "{codec}: allocated before refusing");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the header claims beyond the limit and whatever follows it, nothing is
        /// allocated; within the limit, the allocation never exceeds the claim (plus decoder
        /// state), however large the payload would inflate.
        #[test]
        fn claimed_sizes_bound_allocation(
            codec in any_codec(),
            max in 1usize..(1 << 16),
            claimed in any::<u32>(),
            payload in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let forged = forge(codec.id(), 0, claimed, 0, &payload);
            let (r, count, largest) = allocations(|| decode(&forged, max));
            if claimed as usize > max {
                prop_assert_eq!(r, Err(EnvelopeError::TooLarge { claimed, max }));
                prop_assert_eq!(count, 0);
            } else {
                if let Ok(Decoded::State { value, meta }) = &r {
                    prop_assert_eq!(value.len(), claimed as usize);
                    prop_assert_eq!(crc32fast::hash(value), meta.crc32);
                }
                prop_assert!(
                    largest <= (claimed as usize).max(64 * 1024),
                    "allocated {} for a claim of {}", largest, claimed
                );
            }
        }

        /// Bombs: a small payload that inflates far beyond the claim is cut off at the claim.
        #[test]
        fn bombs_are_cut_at_the_claimed_length(
            codec in prop::sample::select(vec![Codec::Lz4, Codec::Zlib, Codec::Zstd]),
            real in (1usize << 16)..(1 << 22),
            claimed in 0u32..(1 << 15),
        ) {
            let zeros = vec![0u8; real];
            let forged = forge(codec.id(), 0, claimed, 0, &codec.compress(&zeros));
            let (r, _, largest) = allocations(|| decode(&forged, MAX));
            prop_assert!(
                matches!(r, Err(EnvelopeError::Decompress(CodecError::TooLong { .. }))),
                "{:?}", r
            );
            prop_assert!(largest <= 64 * 1024 + claimed as usize, "allocated {}", largest);
        }
    }

    // ---------------------------------------------------------------------------------------
    // format 2: dictionaries and deltas

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
            write_header(&mut out, codec, flags, ext, 1, b"payload", 1);
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
}
