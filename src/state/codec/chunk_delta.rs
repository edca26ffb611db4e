//! A big older version as a *chunk map* of the next newer one: the runs of its chunks that the
//! newer version still holds byte for byte are copied from it, and only the others are
//! compressed, each against the nearby bytes of the newer version.
//!
//! Why: a big value's versions are cut into the same content-defined chunks
//! (`codec::chunked`), and both versions' chunk tables are at hand when the newer one is
//! written. zstd's delta (`zstd --patch-from`) finds the same matches by indexing all of the
//! newer version with its long-distance matcher: 10 ms of CPU for an 8.5 MB checkpoint, on the
//! write's path. The map takes about as long as comparing the chunks it copies.
//!
//! Payload (docs/FORMAT.md, "Chunk maps"): segments until the payload ends, each
//! - `c`, offset (u64 BE), length (u64 BE): that range of the newer version's bytes;
//! - `z`, offset, length (u64 BE each), frame length (u64 BE), frame: one zstd frame that
//!   records its content size, decompressed against that range of the newer version as its
//!   raw-content prefix (what `zstd --patch-from` does with a whole file).

use std::ops::Range;

use super::chunked::{Chunk, same_chunks, tiles};
use super::zstd_frames::{ZstdBase, long_delta_append, zstd_decompress_with};
use super::{CodecError, corrupt_msg};

/// The bytes of the newer version a changed chunk is compressed against: from where the
/// chunk's unchanged predecessor ended in the newer version. Long enough for a chunk and what
/// was inserted next to it, short enough for level 1's window (512 KiB) to hold the prefix
/// and the chunk.
const PREFIX_MAX: usize = 256 << 10;

const COPY: u8 = b'c';
const FRAME: u8 = b'z';

/// Appends to `out` the chunk map of `old` (cut as `old_chunks` say) against `new` (cut as
/// `new_chunks` say). False, and `out` as it was, when fewer than half of `old`'s bytes are
/// found in `new` (a delta of zstd's own then does better), a table does not describe its
/// value, or zstd fails. `sources`, when given, says for each chunk of `new` which chunk of
/// `old` has the same bytes (as `compress_chunked` of `new` against `old` found them), so
/// they are not compared again.
pub fn encode(
    old: &[u8],
    old_chunks: &[Chunk],
    new: &[u8],
    new_chunks: &[Chunk],
    sources: Option<&[Option<usize>]>,
    level: i32,
    out: &mut Vec<u8>,
) -> bool {
    let start = out.len();
    let done = Map {
        old,
        old_chunks,
        new,
        new_chunks,
        sources,
    }
    .write(level, out);
    if !done {
        out.truncate(start);
    }
    done
}

/// Two versions and their chunk tables.
struct Map<'a> {
    old: &'a [u8],
    old_chunks: &'a [Chunk],
    new: &'a [u8],
    new_chunks: &'a [Chunk],
    sources: Option<&'a [Option<usize>]>,
}

impl Map<'_> {
    fn write(&self, level: i32, out: &mut Vec<u8>) -> bool {
        let Map {
            old,
            old_chunks,
            new,
            new_chunks,
            sources,
        } = *self;
        if !tiles(old_chunks.iter().map(|c| &c.value), old.len())
            || !tiles(new_chunks.iter().map(|c| &c.value), new.len())
        {
            return false;
        }
        // Where each old chunk is in the new value, if it is there byte for byte.
        let found: Vec<Option<usize>> = match sources.filter(|s| s.len() == new_chunks.len()) {
            Some(sources) => {
                let mut found = vec![None; old_chunks.len()];
                for (c, j) in new_chunks.iter().zip(sources) {
                    let slot = j.and_then(|j| Some((found.get_mut(j)?, old_chunks.get(j)?)));
                    if let Some((slot @ None, o)) = slot
                        && o.value.len() == c.value.len()
                    {
                        *slot = Some(c.value.start);
                    }
                }
                found
            }
            None => same_chunks(
                old,
                old_chunks.iter().map(|c| c.value.clone()),
                new,
                new_chunks,
            )
            .into_iter()
            .map(|j| Some(new_chunks.get(j?)?.value.start))
            .collect(),
        };
        let copied: usize = old_chunks
            .iter()
            .zip(&found)
            .filter(|(_, f)| f.is_some())
            .map(|(c, _)| c.value.len())
            .sum();
        if copied < old.len() / 2 {
            return false;
        }
        let mut run: Option<Range<usize>> = None;
        // Where the last copied chunk ended in the new value.
        let mut after = 0;
        for (i, c) in old_chunks.iter().enumerate() {
            if let Some(at) = found[i] {
                let end = at + c.value.len();
                run = match run {
                    Some(r) if r.end == at => Some(r.start..end),
                    Some(r) => {
                        push_copy(out, r);
                        Some(at..end)
                    }
                    None => Some(at..end),
                };
                after = end;
                continue;
            }
            if let Some(r) = run.take() {
                push_copy(out, r);
            }
            let next = found[i + 1..].iter().flatten().next().copied();
            let from = after.min(new.len());
            let to = match next {
                Some(n) if n > from => n,
                _ => new.len(),
            }
            .min(from.saturating_add(PREFIX_MAX));
            out.push(FRAME);
            out.extend_from_slice(&(from as u64).to_be_bytes());
            out.extend_from_slice(&((to - from) as u64).to_be_bytes());
            let len_at = out.len();
            out.extend_from_slice(&[0u8; 8]);
            if !long_delta_append(&old[c.value.clone()], &new[from..to], level, out) {
                return false;
            }
            let frame_len = (out.len() - len_at - 8) as u64;
            out[len_at..len_at + 8].copy_from_slice(&frame_len.to_be_bytes());
        }
        if let Some(r) = run {
            push_copy(out, r);
        }
        true
    }
}

fn push_copy(out: &mut Vec<u8>, r: Range<usize>) {
    out.push(COPY);
    out.extend_from_slice(&(r.start as u64).to_be_bytes());
    out.extend_from_slice(&(r.len() as u64).to_be_bytes());
}

/// Rebuilds the older version from its chunk map `payload` and the newer version's bytes
/// `base`, into `out`, which it must fill exactly. Every offset and length is checked: a
/// damaged map is an error, never a read out of bounds.
pub fn decode(payload: &[u8], base: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let bad = |detail: &str| corrupt_msg("zstd", &format!("chunk map: {detail}"));
    let mut rest = payload;
    let mut at = 0usize;
    let take_u64 = |rest: &mut &[u8]| -> Result<usize, CodecError> {
        let (n, tail) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| bad("segment cut short"))?;
        *rest = tail;
        usize::try_from(u64::from_be_bytes(*n)).map_err(|_| bad("length out of range"))
    };
    while let Some((&kind, tail)) = rest.split_first() {
        rest = tail;
        let offset = take_u64(&mut rest)?;
        let len = take_u64(&mut rest)?;
        let range = offset
            .checked_add(len)
            .and_then(|end| base.get(offset..end))
            .ok_or_else(|| bad("range outside the base"))?;
        match kind {
            COPY => {
                let end = at
                    .checked_add(len)
                    .filter(|&e| e <= out.len())
                    .ok_or_else(|| bad("longer than the value"))?;
                out[at..end].copy_from_slice(range);
                at = end;
            }
            FRAME => {
                let frame_len = take_u64(&mut rest)?;
                let (frame, tail) = rest
                    .split_at_checked(frame_len)
                    .ok_or_else(|| bad("frame cut short"))?;
                rest = tail;
                let n = match zstd::zstd_safe::get_frame_content_size(frame) {
                    Ok(Some(n)) => usize::try_from(n).map_err(|_| bad("frame too long"))?,
                    _ => return Err(bad("frame without its content size")),
                };
                let end = at
                    .checked_add(n)
                    .filter(|&e| e <= out.len())
                    .ok_or_else(|| bad("longer than the value"))?;
                zstd_decompress_with(frame, &mut out[at..end], ZstdBase::Prefix(range))?;
                at = end;
            }
            _ => return Err(bad("unknown segment")),
        }
    }
    if at != out.len() {
        return Err(bad("shorter than the value"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::chunked::compress_chunked;
    use super::*;

    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let words = [
            &b"messages"[..],
            b"tool_call",
            b"content",
            b"{\"id\":",
            b"0.25,",
        ];
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(words[(x % 5) as usize]);
            v.extend_from_slice(&x.to_le_bytes()[..3]);
        }
        v.truncate(len);
        v
    }

    fn chunks_of(value: &[u8]) -> Vec<Chunk> {
        let mut payload = Vec::new();
        compress_chunked(value, 1, None, &mut payload)
            .expect("compresses")
            .chunks
    }

    #[test]
    fn an_edited_version_is_mostly_copies_and_decodes_exactly() {
        let old = sample(3 << 20, 7);
        // A new version: an edit near the top, an insertion in the middle, more at the end.
        let mut new = old.clone();
        new[100..108].copy_from_slice(b"EDITED!!");
        let mid = new.len() / 2;
        new.splice(mid..mid, sample(40_000, 9));
        new.extend_from_slice(&sample(300_000, 11));
        let (oc, nc) = (chunks_of(&old), chunks_of(&new));
        let mut map = Vec::new();
        assert!(encode(&old, &oc, &new, &nc, None, 1, &mut map));
        assert!(map.len() < 64 << 10, "{} bytes", map.len());
        let mut back = vec![0u8; old.len()];
        decode(&map, &new, &mut back).expect("decodes");
        assert!(back == old);
        // What a write does: the new value compressed against the old one knows which of
        // its chunks are old ones, and the map made from that is the same.
        let mut old_payload = Vec::new();
        let first = compress_chunked(&old, 1, None, &mut old_payload).expect("compresses");
        let prev = super::super::chunked::Previous {
            value: &old,
            payload: &old_payload,
            chunks: &first.chunks,
        };
        let second = compress_chunked(&new, 1, Some(prev), &mut Vec::new()).expect("compresses");
        assert_eq!(second.chunks, nc);
        assert!(second.sources.iter().flatten().count() * 2 > nc.len());
        let mut known = Vec::new();
        let sources = Some(second.sources.as_slice());
        assert!(encode(&old, &oc, &new, &nc, sources, 1, &mut known));
        assert!(known == map);
        // Against the wrong base, or with the wrong length, it is an error, not a panic.
        let mut short = vec![0u8; old.len() - 1];
        assert!(decode(&map, &new, &mut short).is_err());
        assert!(decode(&map, &new[..new.len() / 3], &mut back).is_err());
    }

    #[test]
    fn a_version_cut_short_or_grown_at_the_front_decodes_exactly() {
        let old = sample(3 << 20, 13);
        // The newer version lost the older one's last chunks: their prefix is empty.
        let shorter = old[..old.len() - 700_000].to_vec();
        // The newer version has new bytes before everything the older one had.
        let mut longer = sample(100_000, 17);
        longer.extend_from_slice(&old);
        for new in [shorter, longer] {
            let (oc, nc) = (chunks_of(&old), chunks_of(&new));
            let mut map = Vec::new();
            assert!(encode(&old, &oc, &new, &nc, None, 1, &mut map));
            let mut back = vec![0u8; old.len()];
            decode(&map, &new, &mut back).expect("decodes");
            assert!(back == old);
        }
    }

    #[test]
    fn unrelated_versions_and_stale_tables_are_left_to_zstd() {
        let old = sample(2 << 20, 1);
        let new = sample(2 << 20, 2);
        let (oc, nc) = (chunks_of(&old), chunks_of(&new));
        let mut map = vec![1, 2, 3];
        assert!(!encode(&old, &oc, &new, &nc, None, 1, &mut map));
        assert_eq!(map, [1, 2, 3]);
        // A table for other bytes than the value's.
        assert!(!encode(&old[1..], &oc, &new, &nc, None, 1, &mut map));
    }

    #[test]
    fn a_damaged_map_is_an_error() {
        let old = sample(2 << 20, 3);
        let mut new = old.clone();
        new[5000] ^= 1;
        let (oc, nc) = (chunks_of(&old), chunks_of(&new));
        let mut map = Vec::new();
        assert!(encode(&old, &oc, &new, &nc, None, 1, &mut map));
        let mut out = vec![0u8; old.len()];
        for cut in [0, 1, 9, 17, map.len() / 2, map.len() - 1] {
            let r = decode(&map[..cut], &new, &mut out);
            assert!(r.is_err() || cut == 0 && old.is_empty(), "cut at {cut}");
        }
        let mut bad = map.clone();
        bad[1] = 0xFF; // the first offset, far outside the base
        assert!(decode(&bad, &new, &mut out).is_err());
        bad = map.clone();
        bad[0] = b'x';
        assert!(decode(&bad, &new, &mut out).is_err());
    }
}
