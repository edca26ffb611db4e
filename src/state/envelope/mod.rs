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
//!
//! The work is split by direction: `encoder` builds envelopes, `header` writes and verifies
//! the header (the one part both directions share), `decoder` checks and decompresses the
//! payload.

mod decoder;
mod encoder;
mod header;
#[cfg(test)]
mod tests;

pub use decoder::{Decoded, Refs, decode, decode_bulk, decode_bulk_with, decode_with};
pub use encoder::{
    Crcs, DeltaHead, DictRef, Encoding, encode, encode_chunk_delta, encode_chunked, encode_delta,
    encode_delta_known, encode_with, encode_with_crc,
};
pub use header::{inspect, set_version, version_patch};

use super::codec::{Codec, CodecError};

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
/// With [`FLAG_DELTA`]: the payload is a chunk map of the base (`codec::chunk_delta`), not a
/// zstd frame against it.
pub const FLAG_CHUNKS: u16 = 0x0004;

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
    /// The delta is a chunk map of the base ([`FLAG_CHUNKS`]).
    pub chunk_map: bool,
    /// Where the payload starts (the header's length, extension included).
    pub header_len: usize,
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
