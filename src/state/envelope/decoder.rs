//! Reading an envelope back: the header is verified (`header::inspect`), the claimed length
//! is checked against the caller's limit before anything is allocated, and the payload is
//! decompressed and checked against the CRC32 of the original bytes.

use bytes::{Bytes, BytesMut};

use super::header::inspect;
use super::{EnvelopeError, Meta};
use crate::state::codec::{self, Codec, ZstdBase};

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

/// What a payload is decoded against: the base version's bytes for a delta, the dictionary
/// for a dictionary-compressed value. Callers learn which from [`inspect`].
#[derive(Clone, Copy, Default)]
pub struct Refs<'a> {
    /// The original bytes of the delta's base version.
    pub base: Option<&'a [u8]>,
    /// The dictionary named in the header.
    pub dict: Option<&'a zstd::zstd_safe::DDict<'static>>,
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
            if meta.chunk_map {
                codec::chunk_delta::decode(payload, bytes, out)?;
            } else {
                codec::zstd_decompress_with(payload, out, ZstdBase::Prefix(bytes))?;
            }
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
