//! Where a value is cut into chunks (`codec::chunked`): content-defined cut points, so that an
//! edit moves only the cut points near it.
//!
//! The value is cut where a rolling "gear" hash of about the last 64 bytes has its top bits
//! zero, as FastCDC does. A cut point depends only on where its chunk began and on the bytes
//! after that, which is what lets two threads search halves of a long value, and lets a new
//! version be cut by comparing it with the previous version's chunks ([`guided_cuts`]).

use std::collections::HashMap;
use std::ops::Range;

/// Chunks are at least this long: the cut search starts here (and the bytes before it are not
/// hashed at all), which bounds the number of frames and the ratio lost to them.
const MIN_CHUNK: usize = 64 << 10;
/// A cut where `CUT_BITS` high bits of the rolling hash (all but the topmost) are zero: on
/// average 128 KiB after `MIN_CHUNK`.
const CUT_BITS: u32 = 17;
const CUT_MASK: u64 = !(u64::MAX >> CUT_BITS) >> 1;
/// ... and at most this long, cut there whatever the content (long runs of one byte).
pub(super) const MAX_CHUNK: usize = 1 << 20;

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
/// `prev` (cut into `prev_chunks` by [`cut_points`]) it copies byte for byte, if any (its
/// index), found by comparing rather than hashing.
///
/// A cut point depends only on the bytes since the chunk began, so a chunk of `data` that
/// begins at a cut point with the bytes of a chunk of `prev` that ended at a cut point of its
/// own (every chunk but the last, which ended where `prev` did) ends where that one did: it
/// is compared (memcmp, several times faster than the rolling hash) and not hashed. Where the
/// bytes differ, the rolling hash finds the next cut, and the chunk after it is looked up by
/// its first 8 bytes. An 8.5 MB checkpoint a step changed in a few places is cut in about
/// 1 ms instead of 2.3-5 ms on two threads.
pub(super) fn guided_cuts(
    data: &[u8],
    prev: &[u8],
    prev_chunks: &[Range<usize>],
) -> (Vec<usize>, Vec<Option<usize>>) {
    let g = guide(data, prev, prev_chunks);
    (g.ends, g.from)
}

/// What [`guided_cuts`] found, and how many bytes it compared in vain.
struct Guided {
    ends: Vec<usize>,
    from: Vec<Option<usize>>,
    wasted: usize,
}

fn guide(data: &[u8], prev: &[u8], prev_chunks: &[Range<usize>]) -> Guided {
    let last = prev_chunks.len().saturating_sub(1);
    let word = |b: &[u8], at: usize| {
        b.get(at..at.saturating_add(8))
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_le_bytes)
    };
    let mut by_lead: HashMap<u64, Vec<usize>> = HashMap::new();
    for (j, c) in prev_chunks[..last].iter().enumerate() {
        if let Some(w) = word(prev, c.start) {
            by_lead.entry(w).or_default().push(j);
        }
    }
    // Comparisons that fail may cost at most twice the value's length in all, whatever its
    // bytes: chunks that all begin and end alike would otherwise be compared with every one
    // of them at every cut. Past that, the rolling hash alone cuts.
    let mut budget = data.len().saturating_mul(2);
    let mut g = Guided {
        ends: Vec::with_capacity(prev_chunks.len() + 2),
        from: Vec::with_capacity(prev_chunks.len() + 2),
        wasted: 0,
    };
    let (mut at, mut expected) = (0, 0);
    while at < data.len() {
        let candidates = word(data, at).and_then(|w| by_lead.get(&w));
        let mut hit = None;
        for j in std::iter::once(expected).chain(candidates.into_iter().flatten().copied()) {
            let Some(c) = prev_chunks.get(j).filter(|_| j < last) else {
                continue;
            };
            let n = c.len();
            let end = at.saturating_add(n);
            // The last 8 bytes first: most chunks that are not the same differ there.
            let tail = |b: &[u8], e: usize| word(b, e.saturating_sub(8));
            if n > budget || end > data.len() || tail(data, end) != tail(prev, c.end) {
                continue;
            }
            if data.get(at..end) == prev.get(c.clone()) {
                hit = Some(j);
                break;
            }
            budget -= n;
            g.wasted += n;
        }
        match hit {
            Some(j) => {
                at += prev_chunks[j].len();
                expected = j + 1;
            }
            None => at = next_cut(data, at),
        }
        g.ends.push(at);
        g.from.push(hit);
    }
    g
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Text-like bytes that do not repeat (a tiny LCG), so chunks are not all alike.
    pub(in crate::state::codec) fn sample(len: usize, seed: u64) -> Vec<u8> {
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
        let ends = cut_points(&old);
        let starts = std::iter::once(0).chain(ends.iter().copied());
        let chunks: Vec<Range<usize>> = starts
            .zip(ends.iter().copied())
            .map(|(a, b)| a..b)
            .collect();
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
            let (ends, from) = guided_cuts(&data, &old, &chunks);
            assert_eq!(ends, cut_points(&data));
            assert_eq!(from.len(), ends.len());
            let mut at = 0;
            for (&end, f) in ends.iter().zip(&from) {
                if let Some(j) = f {
                    assert_eq!(data[at..end], old[chunks[*j].clone()]);
                }
                at = end;
            }
        }
        // Unchanged, every chunk but the last is found by comparison.
        let (_, from) = guided_cuts(&old, &old, &chunks);
        assert_eq!(from.iter().flatten().count(), chunks.len() - 1);
    }

    #[test]
    fn chunks_that_all_look_alike_are_not_compared_with_each_other_at_every_cut() {
        // Chunks of 1 MiB (a run of one byte is cut at the maximum length) that begin and end
        // with the same bytes and differ in their middle, against a version whose middles
        // differ from all of them: every chunk is a candidate at every cut, and none is it.
        let chunks = 16;
        let with_middle = |mark: u8| {
            let mut v = vec![b'x'; chunks << 20];
            for c in 0..chunks {
                v[(c << 20) + (512 << 10)] = mark + c as u8;
            }
            v
        };
        let old = with_middle(b'A');
        let ends = cut_points(&old);
        assert_eq!(
            ends.len(),
            chunks,
            "the sample is not cut where the test needs it"
        );
        let starts = std::iter::once(0).chain(ends.iter().copied());
        let old_chunks: Vec<Range<usize>> = starts
            .zip(ends.iter().copied())
            .map(|(a, b)| a..b)
            .collect();
        let new = with_middle(b'a');
        let g = guide(&new, &old, &old_chunks);
        assert_eq!(g.ends, cut_points(&new));
        assert!(g.from.iter().all(Option::is_none));
        assert!(
            g.wasted <= 2 * new.len(),
            "{} bytes compared in vain",
            g.wasted
        );
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
}
