//! Big values as one zstd frame per content-defined chunk, so that the next version of the
//! same value compresses only the chunks that changed and copies the others' frames.
//!
//! Why: an 8 MB agent checkpoint changes in a few places per step (a timestamp and an id at
//! the top, the step's messages appended, the metadata at the end), yet compressing it whole
//! costs about 22 ms of CPU (10.9 ms on two cores). The value is cut where its own bytes say
//! (`codec::cuts`: a rolling "gear" hash of about the last 64 bytes, as FastCDC does), so an
//! edit moves only the cut points near it: every other chunk has exactly the bytes it had in
//! the previous version, and its frame is reused. The payload stays what FORMAT.md promises for zstd:
//! concatenated standard frames, which every zstd decoder reads as one stream.
//!
//! Cost: each chunk loses the matches it could have found in the others, about 3-4% more
//! bytes than the two to four frames of `parallel_frames` on agent checkpoints
//! (docs/BENCHMARKS.md, "Big versioned writes").

use std::collections::HashMap;
use std::ops::Range;

use super::cuts::{MAX_CHUNK, cut_points, guided_cuts};
use super::zstd_frames::{frames_on_threads, zstd_frame};

/// Fresh chunks of at least this many bytes in all are compressed on several threads.
const PARALLEL_BYTES: usize = 1 << 20;

/// One chunk of a chunked payload: its bytes in the value, its frame in the payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Where the chunk is in the value.
    pub value: Range<usize>,
    /// Where its frame is in the payload.
    pub frame: Range<usize>,
}

/// A value's previous version as it was encoded: what its chunks' frames can be reused from.
#[derive(Clone, Copy)]
pub struct Previous<'a> {
    /// The previous value.
    pub value: &'a [u8],
    /// Its payload (the concatenated frames).
    pub payload: &'a [u8],
    /// Its chunks.
    pub chunks: &'a [Chunk],
}

impl Previous<'_> {
    /// Whether the chunks describe this value and payload (a stale or foreign table is
    /// ignored rather than trusted).
    fn consistent(&self) -> bool {
        tiles(self.chunks.iter().map(|c| &c.value), self.value.len())
            && tiles(self.chunks.iter().map(|c| &c.frame), self.payload.len())
    }
}

/// Whether `ranges` cover `0..len` in order, back to back, none of them empty: a chunk table
/// that can describe a value of `len` bytes (or a payload of `len` bytes).
pub(super) fn tiles<'a>(ranges: impl Iterator<Item = &'a Range<usize>>, len: usize) -> bool {
    let mut at = 0;
    for r in ranges {
        if r.start != at || r.is_empty() {
            return false;
        }
        at = r.end;
    }
    at == len
}

/// For each of the `ranges` of `ours`, a chunk of `theirs` (cut into `their_chunks`, which must
/// [`tile`](tiles) it) with the same bytes, if there is one (its index). A chunk is looked up
/// by its length and its first and last 8 bytes, and taken only if all its bytes are equal.
pub(super) fn same_chunks(
    ours: &[u8],
    ranges: impl Iterator<Item = Range<usize>>,
    theirs: &[u8],
    their_chunks: &[Chunk],
) -> Vec<Option<usize>> {
    let index: HashMap<(usize, u64, u64), usize> = their_chunks
        .iter()
        .enumerate()
        .filter_map(|(j, c)| Some((fingerprint(theirs.get(c.value.clone())?), j)))
        .collect();
    ranges
        .map(|r| {
            let bytes = ours.get(r)?;
            let &j = index.get(&fingerprint(bytes))?;
            (theirs.get(their_chunks.get(j)?.value.clone())? == bytes).then_some(j)
        })
        .collect()
}

/// What a chunked compression did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The chunks, with frame ranges relative to where the payload starts in `out`.
    pub chunks: Vec<Chunk>,
    /// Bytes of the value whose frames were copied from the previous version.
    pub reused: usize,
    /// For each chunk, the previous version's chunk (its index) with the same bytes, if one
    /// was found: what the replaced version's chunk map needs not compare again.
    pub sources: Vec<Option<usize>>,
}

/// Appends `input` as one zstd frame per chunk to `out`, copying the frames of chunks that
/// `prev` already holds byte for byte. `None` (and `out` as it was) if zstd failed.
pub fn compress_chunked(
    input: &[u8],
    level: i32,
    prev: Option<Previous<'_>>,
    out: &mut Vec<u8>,
) -> Option<Outcome> {
    let start = out.len();
    let prev = prev.filter(Previous::consistent);
    let (ends, known) = match prev {
        Some(p) => {
            let known: Vec<Range<usize>> = p.chunks.iter().map(|c| c.value.clone()).collect();
            guided_cuts(input, p.value, &known)
        }
        None => {
            let ends = cut_points(input);
            let known = vec![None; ends.len()];
            (ends, known)
        }
    };
    let ranges = || {
        let starts = std::iter::once(0).chain(ends.iter().copied());
        starts.zip(ends.iter().copied()).map(|(a, b)| a..b)
    };
    // The chunks the cut search did not find in `prev` may still be there (its last chunk, or
    // one that moved): looked up by content.
    let sources: Vec<Option<usize>> = match prev {
        Some(p) => {
            let unknown = ranges().zip(&known).filter(|(_, k)| k.is_none());
            let mut found =
                same_chunks(input, unknown.map(|(r, _)| r), p.value, p.chunks).into_iter();
            known
                .iter()
                .map(|k| k.or_else(|| found.next().flatten()))
                .collect()
        }
        None => known,
    };
    let plan: Vec<(Range<usize>, Option<Range<usize>>)> = ranges()
        .zip(&sources)
        .map(|(v, j)| {
            let frame = j.and_then(|j| Some(prev?.chunks.get(j)?.frame.clone()));
            (v, frame)
        })
        .collect();
    let fresh: Vec<&[u8]> = plan
        .iter()
        .filter(|(_, r)| r.is_none())
        .map(|(v, _)| &input[v.clone()])
        .collect();
    let frames = compress_all(&fresh, level)?;
    // The payload's exact size is known now: the cache keeps this envelope, and counts its
    // length, so it should hold no spare room.
    let copied: usize = plan
        .iter()
        .filter_map(|(_, r)| r.as_ref())
        .map(Range::len)
        .sum();
    out.reserve_exact(copied + frames.iter().map(Vec::len).sum::<usize>());
    let mut frames = frames.into_iter();
    let mut outcome = Outcome {
        chunks: Vec::with_capacity(plan.len()),
        reused: 0,
        sources,
    };
    for (value, reuse) in plan {
        let at = out.len() - start;
        let copied = match (reuse, prev) {
            (Some(r), Some(p)) => p.payload.get(r).map(|f| {
                out.extend_from_slice(f);
                outcome.reused += value.len();
            }),
            _ => frames.next().map(|f| out.extend_from_slice(&f)),
        };
        if copied.is_none() {
            out.truncate(start);
            return None;
        }
        outcome.chunks.push(Chunk {
            value,
            frame: at..out.len() - start,
        });
    }
    Some(outcome)
}

/// The chunks of a payload of several zstd frames, read from the frames themselves (each
/// records its content size): a value this or another statecar wrote in chunks, read back,
/// serves its next write as well as one it wrote. `None` if a frame does not say its size,
/// or the frames are not chunks `cut_points` could have cut (one frame, or frames longer than
/// `MAX_CHUNK`, as a big value written without a history has): nothing could be reused, and
/// the cache would keep the envelope for nothing. The table is only a hint: a chunk is
/// reused only when its bytes are found equal.
pub fn chunks_of(payload: &[u8]) -> Option<Vec<Chunk>> {
    let mut chunks = Vec::new();
    let (mut at, mut value_at) = (0usize, 0usize);
    while at < payload.len() {
        let rest = payload.get(at..)?;
        let n = zstd::zstd_safe::find_frame_compressed_size(rest).ok()?;
        let size = zstd::zstd_safe::get_frame_content_size(rest.get(..n)?).ok()??;
        let size = usize::try_from(size)
            .ok()
            .filter(|&s| s > 0 && s <= MAX_CHUNK)?;
        let end = value_at.checked_add(size)?;
        chunks.push(Chunk {
            value: value_at..end,
            frame: at..at.checked_add(n)?,
        });
        (at, value_at) = (at + n, end);
    }
    (chunks.len() > 1).then_some(chunks)
}

fn fingerprint(bytes: &[u8]) -> (usize, u64, u64) {
    let word = |b: Option<&[u8]>| {
        b.and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let n = bytes.len();
    (
        n,
        word(bytes.get(..8)),
        word(bytes.get(n.saturating_sub(8)..)),
    )
}

/// Each of `chunks` as one frame, on several threads when there is enough to compress.
fn compress_all(chunks: &[&[u8]], level: i32) -> Option<Vec<Vec<u8>>> {
    let total: usize = chunks.iter().map(|c| c.len()).sum();
    if total < PARALLEL_BYTES || chunks.len() < 2 {
        return chunks.iter().map(|c| zstd_frame(c, level)).collect();
    }
    frames_on_threads(chunks, level)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::codec::cuts::tests::sample;
    use crate::state::codec::{ZstdBase, ZstdRef, zstd_append, zstd_decompress_with};

    fn decode(payload: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        zstd_decompress_with(payload, &mut out, ZstdBase::None).expect("decodes");
        out
    }

    #[test]
    fn unchanged_chunks_are_copied_and_everything_decodes() {
        let old = sample(6 << 20, 3);
        let mut first = Vec::new();
        let o1 = compress_chunked(&old, 1, None, &mut first).expect("compresses");
        assert_eq!(o1.reused, 0);
        assert_eq!(decode(&first, old.len()), old);

        let mut new = old.clone();
        new.splice(4_000_000..4_000_000, b"one more step".iter().copied());
        new[10] = b'!';
        let prev = Previous {
            value: &old,
            payload: &first,
            chunks: &o1.chunks,
        };
        let mut second = b"header".to_vec();
        let o2 = compress_chunked(&new, 1, Some(prev), &mut second).expect("compresses");
        assert!(
            o2.reused > new.len() * 3 / 4,
            "only {} of {} bytes reused",
            o2.reused,
            new.len()
        );
        assert_eq!(&second[..6], b"header");
        assert!(second.capacity() - second.len() < 64, "spare room");
        assert_eq!(decode(&second[6..], new.len()), new);
        // The table describes the new payload, so it can serve the next version in turn.
        let prev2 = Previous {
            value: &new,
            payload: &second[6..],
            chunks: &o2.chunks,
        };
        assert!(prev2.consistent());
        let mut third = Vec::new();
        let o3 = compress_chunked(&new, 1, Some(prev2), &mut third).expect("compresses");
        assert_eq!(o3.reused, new.len());
        assert_eq!(third, second[6..]);
    }

    #[test]
    fn the_chunks_are_read_back_from_the_frames() {
        let value = sample(4 << 20, 6);
        let mut payload = Vec::new();
        let o = compress_chunked(&value, 1, None, &mut payload).expect("compresses");
        assert_eq!(chunks_of(&payload), Some(o.chunks));
        // One frame: nothing to reuse. Not frames at all: no table.
        let one = zstd_frame(&value[..100_000], 1).expect("compresses");
        assert_eq!(chunks_of(&one), None);
        assert_eq!(chunks_of(&payload[..payload.len() - 1]), None);
        // The two to four frames of a big value written without a history are not chunks.
        let mut whole = Vec::new();
        assert!(zstd_append(&value, &mut whole, 1, ZstdRef::None));
        assert_eq!(chunks_of(&whole), None);
        assert_eq!(chunks_of(b"not zstd at all"), None);
    }

    #[test]
    fn a_table_that_does_not_describe_its_value_is_ignored() {
        let old = sample(3 << 20, 4);
        let mut payload = Vec::new();
        let o = compress_chunked(&old, 1, None, &mut payload).expect("compresses");
        let other = sample(3 << 20, 5);
        // Same chunks, other bytes: nothing matches, and the result is still right.
        let prev = Previous {
            value: &other,
            payload: &payload,
            chunks: &o.chunks,
        };
        let mut out = Vec::new();
        let r = compress_chunked(&old, 1, Some(prev), &mut out).expect("compresses");
        assert_eq!(r.reused, 0);
        assert_eq!(decode(&out, old.len()), old);
        // A table whose ranges do not fit the payload is not used at all.
        let prev = Previous {
            value: &old,
            payload: &payload[..payload.len() - 1],
            chunks: &o.chunks,
        };
        assert!(!prev.consistent());
        let mut out = Vec::new();
        let r = compress_chunked(&old, 1, Some(prev), &mut out).expect("compresses");
        assert_eq!(r.reused, 0);
        assert_eq!(decode(&out, old.len()), old);
    }
}
