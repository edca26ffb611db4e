//! Big values as one zstd frame per content-defined chunk, so that the next version of the
//! same value compresses only the chunks that changed and copies the others' frames.
//!
//! Why: an 8 MB agent checkpoint changes in a few places per step (a timestamp and an id at
//! the top, the step's messages appended, the metadata at the end), yet compressing it whole
//! costs about 22 ms of CPU (10.9 ms on two cores). The value is cut where its own bytes say
//! (a rolling "gear" hash of about the last 64 bytes, as FastCDC does), so an edit moves only
//! the cut points near it: every other chunk has exactly the bytes it had in the previous
//! version, and its frame is reused. The payload stays what FORMAT.md promises for zstd:
//! concatenated standard frames, which every zstd decoder reads as one stream.
//!
//! Cost: each chunk loses the matches it could have found in the others, about 3-4% more
//! bytes than the two to four frames of `parallel_frames` on agent checkpoints
//! (docs/BENCHMARKS.md, "Big versioned writes").

use std::collections::HashMap;
use std::ops::Range;

use super::zstd_frames::{frames_on_threads, zstd_frame};

/// Chunks are at least this long: the cut search starts here (and the bytes before it are not
/// hashed at all), which bounds the number of frames and the ratio lost to them.
const MIN_CHUNK: usize = 64 << 10;
/// A cut where `CUT_BITS` high bits of the rolling hash (all but the topmost) are zero: on
/// average 128 KiB after `MIN_CHUNK`.
const CUT_BITS: u32 = 17;
const CUT_MASK: u64 = !(u64::MAX >> CUT_BITS) >> 1;
/// ... and at most this long, cut there whatever the content (long runs of one byte).
const MAX_CHUNK: usize = 1 << 20;
/// Fresh chunks of at least this many bytes in all are compressed on several threads.
const PARALLEL_BYTES: usize = 1 << 20;

/// One random 64-bit number per byte value (splitmix64 from a fixed seed): the gear hash adds
/// the byte's number to the hash shifted by one, so a bit of the hash depends on at most the
/// last 64 bytes, and a cut point depends only on the bytes just before it.
const GEAR: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut x: u64 = 0x5374_6174_6563_6172; // "Statecar"
    let mut i = 0;
    while i < 256 {
        x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
};

/// `GEAR` shifted left by one: the first byte of a pair, which the second shifts once more.
const GEAR_SHIFTED: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = GEAR[i] << 1;
        i += 1;
    }
    table
};

/// Values at least this long have their cut points found on two threads.
const PARALLEL_CUTS: usize = 4 << 20;

/// Where `data` is cut: the end of every chunk, the last one `data.len()`.
///
/// A cut point depends only on where the chunk before it ended and on the bytes after that,
/// so from any cut point on, the rest of the cuts are the same whoever finds them. A long value
/// is therefore searched on two threads: the second half as if a chunk began at its start,
/// and the first half up to where it runs into one of the second half's cut points (about a
/// chunk past the middle); the second half's cuts from there on are the ones a single pass
/// would have found. (About 3.7 ms for 8.5 MB on one thread.)
pub fn cut_points(data: &[u8]) -> Vec<usize> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    if data.len() < PARALLEL_CUTS || threads < 2 {
        return cuts_from(data, 0, data.len());
    }
    let half = data.len() / 2;
    std::thread::scope(|s| {
        let tail = s.spawn(|| cuts_from(data, half, data.len()));
        let mut ends = cuts_from(data, 0, half);
        let Ok(tail) = tail.join() else {
            return cuts_from(data, 0, data.len());
        };
        let mut at = ends.last().copied().unwrap_or(0);
        loop {
            if at >= data.len() {
                return ends;
            }
            if at == half {
                ends.extend_from_slice(&tail);
                return ends;
            }
            if let Ok(i) = tail.binary_search(&at) {
                ends.extend_from_slice(&tail[i + 1..]);
                return ends;
            }
            at = next_cut(data, at);
            ends.push(at);
        }
    })
}

/// The cut points of `data` (as [`cut_points`] finds them) and, for each chunk, the chunk of
/// `prev` it copies byte for byte, if any, found by comparing rather than hashing.
///
/// A cut point depends only on the bytes since the chunk began, so a chunk of `data` that
/// begins at a cut point with the bytes of a chunk of `prev` that ended at a cut point of its
/// own (every chunk but the last, which ended where `prev` did) ends where that one did: it
/// is compared (memcmp, several times faster than the rolling hash) and not hashed. Where the
/// bytes differ, the rolling hash finds the next cut, and the chunk after it is looked up by
/// its first 8 bytes. An 8.5 MB checkpoint a step changed in a few places is cut in about
/// 1 ms instead of 2.3-5 ms on two threads.
fn guided_cuts(data: &[u8], prev: Previous<'_>) -> (Vec<usize>, Vec<Option<usize>>) {
    let last = prev.chunks.len().saturating_sub(1);
    let lead = |b: &[u8], at: usize| {
        b.get(at..at.saturating_add(8))
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_le_bytes)
    };
    let mut by_lead: HashMap<u64, Vec<usize>> = HashMap::new();
    for (j, c) in prev.chunks[..last].iter().enumerate() {
        if let Some(w) = lead(prev.value, c.value.start) {
            by_lead.entry(w).or_default().push(j);
        }
    }
    let same_at = |at: usize, j: usize| {
        j < last
            && prev.chunks.get(j).is_some_and(|c| {
                let n = c.value.len();
                data.get(at..at.saturating_add(n)) == prev.value.get(c.value.clone())
            })
    };
    let mut ends = Vec::with_capacity(prev.chunks.len() + 2);
    let mut from = Vec::with_capacity(prev.chunks.len() + 2);
    let (mut at, mut expected) = (0, 0);
    while at < data.len() {
        let candidates = lead(data, at).and_then(|w| by_lead.get(&w));
        let hit = std::iter::once(expected)
            .chain(candidates.into_iter().flatten().copied())
            .find(|&j| same_at(at, j));
        match hit {
            Some(j) => {
                at += prev.chunks[j].value.len();
                expected = j + 1;
            }
            None => at = next_cut(data, at),
        }
        ends.push(at);
        from.push(hit);
    }
    (ends, from)
}

/// The cut points after a chunk that begins at `start`, up to the first one at or past
/// `until` (or the end).
fn cuts_from(data: &[u8], start: usize, until: usize) -> Vec<usize> {
    let mut ends = Vec::with_capacity((until - start.min(until)) / (MIN_CHUNK * 2) + 1);
    let mut at = start;
    while at < data.len() && (ends.is_empty() || at < until) {
        at = next_cut(data, at);
        ends.push(at);
    }
    ends
}

/// The end of the chunk that begins at `start` (< `data.len()`).
fn next_cut(data: &[u8], start: usize) -> usize {
    let end = data.len().min(start.saturating_add(MAX_CHUNK));
    let mut cut = end;
    let from = start.saturating_add(MIN_CHUNK);
    if from < end {
        let mut h = 0u64;
        // Two bytes a step (FastCDC's "rolling two bytes"), testing the cut condition at
        // both: `first` is the hash after the first byte shifted left by one, so it is
        // tested with the mask shifted too. The mask leaves out the top bit, which that
        // shift loses, so every position is tested on the same bits and an insertion of
        // odd length moves no later cut point.
        for (i, p) in data[from..end].chunks_exact(2).enumerate() {
            let first = (h << 2).wrapping_add(GEAR_SHIFTED[usize::from(p[0])]);
            if first & (CUT_MASK << 1) == 0 {
                cut = from + 2 * i + 1;
                break;
            }
            h = first.wrapping_add(GEAR[usize::from(p[1])]);
            if h & CUT_MASK == 0 {
                cut = from + 2 * i + 2;
                break;
            }
        }
    }
    cut
}

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
        Some(p) => guided_cuts(input, p),
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
    use crate::state::codec::{ZstdBase, ZstdRef, zstd_append, zstd_decompress_with};

    /// Text-like bytes that do not repeat (a tiny LCG), so chunks are not all alike.
    fn sample(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                b"abcdefghij klmnop,{}\":0123"[(x >> 59) as usize % 26]
            })
            .collect()
    }

    fn decode(payload: &[u8], len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        zstd_decompress_with(payload, &mut out, ZstdBase::None).expect("decodes");
        out
    }

    #[test]
    fn cut_points_respect_the_bounds_and_cover_the_value() {
        for data in [
            Vec::new(),
            vec![7u8; 10],
            vec![0u8; 3 << 20],
            sample(5 << 20, 1),
        ] {
            let ends = cut_points(&data);
            let mut at = 0;
            for (i, &e) in ends.iter().enumerate() {
                let len = e - at;
                assert!(len <= MAX_CHUNK, "chunk {i} is {len} bytes");
                if i + 1 < ends.len() {
                    assert!(len > MIN_CHUNK, "chunk {i} is {len} bytes");
                }
                at = e;
            }
            assert_eq!(at, data.len());
        }
        // One byte repeated never satisfies the cut condition: cut at the maximum.
        assert_eq!(cut_points(&vec![0u8; 3 << 20]), [1 << 20, 2 << 20, 3 << 20]);
    }

    #[test]
    fn two_threads_find_the_cut_points_one_would() {
        let mut runs = sample(9 << 20, 3);
        runs[2 << 20..5 << 20].fill(b'x'); // cut every MAX_CHUNK from wherever a chunk began
        for data in [sample(PARALLEL_CUTS, 1), sample(9 << 20, 2), runs] {
            assert_eq!(cut_points(&data), cuts_from(&data, 0, data.len()));
        }
    }

    #[test]
    fn cuts_guided_by_the_previous_version_are_the_ones_hashing_finds() {
        let old = sample(6 << 20, 11);
        let mut first = Vec::new();
        let o = compress_chunked(&old, 1, None, &mut first).expect("compresses");
        let prev = Previous {
            value: &old,
            payload: &first,
            chunks: &o.chunks,
        };
        let mut edited = old.clone();
        edited[20] = b'#'; // the top changes every step
        edited.splice(3_000_000..3_000_000, b"a new message".iter().copied());
        edited.drain(4_000_000..4_000_100);
        edited.extend_from_slice(&sample(300_000, 12)); // and messages are appended
        let mut runs = old.clone();
        runs[1 << 20..3 << 20].fill(b'x'); // chunks cut at their maximum length
        let mut moved = old[2 << 20..].to_vec(); // the front gone: every chunk found by lookup
        moved.extend_from_slice(&old[..2 << 20]);
        for data in [
            old.clone(),
            edited,
            runs,
            moved,
            sample(5 << 20, 13),
            Vec::new(),
        ] {
            let (ends, from) = guided_cuts(&data, prev);
            assert_eq!(ends, cut_points(&data));
            assert_eq!(from.len(), ends.len());
            let mut at = 0;
            for (&end, f) in ends.iter().zip(&from) {
                if let Some(j) = f {
                    assert_eq!(data[at..end], old[o.chunks[*j].value.clone()]);
                }
                at = end;
            }
        }
        // Unchanged, every chunk but the last is found by comparison.
        let (_, from) = guided_cuts(&old, prev);
        assert_eq!(from.iter().flatten().count(), o.chunks.len() - 1);
    }

    #[test]
    fn an_edit_moves_only_the_cut_points_near_it() {
        let old = sample(6 << 20, 2);
        let mut new = old.clone();
        new.splice(3_000_000..3_000_000, b"a new message".iter().copied());
        new[100] = b'#';
        let (a, b) = (cut_points(&old), cut_points(&new));
        let shifted: Vec<usize> = a
            .iter()
            .filter(|&&e| e > 3_000_000)
            .map(|e| e + 13)
            .collect();
        let kept = shifted.iter().filter(|e| b.contains(e)).count();
        assert!(
            kept + 1 >= shifted.len(),
            "{kept} of {} kept",
            shifted.len()
        );
        assert!(a.len() > 20);
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
