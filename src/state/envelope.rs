//! The stored format of a state key's value: a 36-byte header followed by the payload.
//!
//! ```text
//! 0..4   magic  E5 'S' 'C' 'K'
//! 4      format version (1)
//! 5      codec id
//! 6..8   flags (u16, reserved, 0)
//! 8..16  timestamp, ms since the Unix epoch (u64)
//! 16..20 original length (u32)
//! 20..24 CRC32 of the original bytes
//! 24..28 CRC32 of bytes 0..24
//! 28..32 version (u32)
//! 32..36 !version (u32)
//! 36..   payload
//! ```
//!
//! All integers are big-endian. docs/FORMAT.md explains each field; in short, the header CRC
//! stops at 24 so that the Lua script that assigns version numbers can patch 28..36 inside Redis
//! without recomputing anything, and the version is stored twice (once inverted) so a damaged
//! version is still detected.

use super::codec::{Codec, CodecError};

/// First four bytes of every envelope. 0xE5 followed by ASCII is never valid UTF-8, so text
/// values written before statecar cannot start this way.
pub const MAGIC: [u8; 4] = [0xE5, b'S', b'C', b'K'];
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Length of the header; the payload starts here.
pub const HEADER_LEN: usize = 36;
/// Offset of the 8 bytes (version, !version) that the Lua script overwrites.
pub const VERSION_OFFSET: usize = 28;

/// Bytes covered by the header CRC: everything the writer fixes, nothing the Lua script patches.
const HEADER_CRC_SPAN: usize = 24;
/// The first five bytes of a version-1 envelope, used to tell envelopes from plain values.
const SIGNATURE: [u8; 5] = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], FORMAT_VERSION];

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
    /// Length of the whole stored value, header included.
    pub stored_len: usize,
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

/// Why a stored value that looks like an envelope cannot be trusted.
///
/// Messages are short and lowercase, meant to follow a key name in a Redis error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Bytes 0..24 do not match the header CRC.
    #[error("header checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x})")]
    HeaderChecksum {
        /// CRC found at 24..28.
        stored: u32,
        /// CRC of bytes 0..24.
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
    /// Reserved flag bits are set (written by a newer statecar, or damaged).
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
        /// Length the header requires (or HEADER_LEN when the header itself is cut).
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
}

impl From<CodecError> for EnvelopeError {
    fn from(e: CodecError) -> Self {
        EnvelopeError::Decompress(e)
    }
}

/// Encodes `value` into a stored envelope.
///
/// The payload is compressed with `codec` only when `value.len() >= min_size` and the result is
/// strictly smaller than `value`; otherwise it is stored with codec none, so reading never pays
/// for a decompression that saved nothing. `version` is written with its complement; the Lua
/// script that assigns versions in Redis may overwrite both (see [`version_patch`]).
pub fn encode(
    value: &[u8],
    codec: Codec,
    min_size: usize,
    timestamp_ms: u64,
    version: u32,
) -> Vec<u8> {
    let compressed = if codec != Codec::None && value.len() >= min_size {
        Some(codec.compress(value)).filter(|c| c.len() < value.len())
    } else {
        None
    };
    let (codec, payload) = match &compressed {
        Some(c) => (codec, c.as_slice()),
        None => (Codec::None, value),
    };
    // Values over 4 GiB cannot be stored in Redis (512 MiB limit) and are rejected far earlier
    // by the proxy; saturating keeps this total and guarantees such a header never verifies.
    let original_len = u32::try_from(value.len()).unwrap_or(u32::MAX);

    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&SIGNATURE);
    out.push(codec.id());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&timestamp_ms.to_be_bytes());
    out.extend_from_slice(&original_len.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(value).to_be_bytes());
    let header_crc = crc32fast::hash(&out[..HEADER_CRC_SPAN]);
    out.extend_from_slice(&header_crc.to_be_bytes());
    out.extend_from_slice(&version_patch(version));
    out.extend_from_slice(payload);
    out
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
/// `max_decoded` before anything is allocated.
pub fn decode(stored: &[u8], max_decoded: usize) -> Result<Decoded, EnvelopeError> {
    let Some(meta) = inspect(stored)? else {
        return Ok(Decoded::Plain);
    };
    let original_len = meta.original_len as usize;
    if original_len > max_decoded {
        return Err(EnvelopeError::TooLarge {
            claimed: meta.original_len,
            max: max_decoded,
        });
    }
    let value = meta
        .codec
        .decompress(&stored[HEADER_LEN..], original_len)?;
    let computed = crc32fast::hash(&value);
    if computed != meta.crc32 {
        return Err(EnvelopeError::ChecksumMismatch {
            stored: meta.crc32,
            computed,
        });
    }
    Ok(Decoded::State { value, meta })
}

/// Reads and verifies the header only (no decompression); `Ok(None)` means a plain value.
///
/// Checks the header CRC, the version pair, the format byte, the flags and the codec id, and
/// for codec none that the payload has exactly the original length. It does not check the
/// payload's CRC, so a damaged compressed payload passes here and fails in [`decode`].
///
/// # Which values are plain
/// A value written before statecar was deployed has no header and must be returned untouched,
/// but a damaged envelope must never be mistaken for such a value and returned raw. The first
/// five bytes (magic and format version) decide:
/// - empty, or shorter than [`HEADER_LEN`] and differing from the signature's first bytes in
///   at least one position: plain. A short value that is an exact prefix of the signature is a
///   truncated envelope (error).
/// - [`HEADER_LEN`] bytes or more: plain when they differ from the signature in two or more
///   positions. Exactly one differing byte is a damaged envelope (error): one flipped byte
///   would otherwise turn corruption into "legacy" data. Magic intact but another format byte
///   is a format this build cannot read (error).
///
/// The price is that a pre-statecar value within one byte of `E5 53 43 4B 01` is unreadable
/// through the proxy; text never starts with 0xE5 followed by ASCII, and any binary value has
/// a chance of about 2^-30 of being that close.
pub fn inspect(stored: &[u8]) -> Result<Option<Meta>, EnvelopeError> {
    let sig_len = stored.len().min(SIGNATURE.len());
    let differing = stored[..sig_len]
        .iter()
        .zip(SIGNATURE)
        .filter(|(a, b)| **a != *b)
        .count();
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
    if header[4] != FORMAT_VERSION {
        return Err(EnvelopeError::UnsupportedFormat(header[4]));
    }

    let be32 = |at: usize| u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    let stored_header_crc = be32(24);
    let computed = crc32fast::hash(&header[..HEADER_CRC_SPAN]);
    if stored_header_crc != computed {
        return Err(EnvelopeError::HeaderChecksum {
            stored: stored_header_crc,
            computed,
        });
    }
    let version = be32(VERSION_OFFSET);
    let check = be32(VERSION_OFFSET + 4);
    if check != !version {
        return Err(EnvelopeError::VersionPair { version, check });
    }
    let flags = u16::from_be_bytes([header[6], header[7]]);
    if flags != 0 {
        return Err(EnvelopeError::UnsupportedFlags(flags));
    }
    let codec = Codec::from_id(header[5]).ok_or(EnvelopeError::UnknownCodec(header[5]))?;
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&header[8..16]);
    let meta = Meta {
        codec,
        original_len: be32(16),
        crc32: be32(20),
        version,
        timestamp_ms: u64::from_be_bytes(ts),
        stored_len: stored.len(),
    };
    // Only codec none has a payload length known from the header; compressed payloads are
    // checked by decompressing them.
    let payload_len = stored.len() - HEADER_LEN;
    let original_len = meta.original_len as usize;
    if codec == Codec::None && payload_len != original_len {
        return Err(if payload_len < original_len {
            EnvelopeError::Truncated {
                len: stored.len(),
                expected: HEADER_LEN + original_len,
            }
        } else {
            EnvelopeError::Decompress(CodecError::TrailingBytes {
                codec: codec.name(),
                count: payload_len - original_len,
            })
        });
    }
    Ok(Some(meta))
}

#[cfg(test)]
mod scratch {
    use super::*;
    use crate::state::sample::agent_session_json;
    #[test]
    fn scratch_ratio() {
        for size in [1024usize, 16 * 1024, 256*1024] {
            for seed in 0..3 {
                let v = agent_session_json(seed, size);
                let r: Vec<String> = [Codec::Lz4, Codec::Zlib, Codec::Zstd].iter().map(|c| format!("{c} {:.2}", v.len() as f64 / c.compress(&v).len() as f64)).collect();
                eprintln!("{size} seed {seed}: {r:?}");
            }
        }
        eprintln!("{}", String::from_utf8_lossy(&agent_session_json(1, 4096)));
    }
}
