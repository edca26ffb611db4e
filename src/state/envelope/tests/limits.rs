//! Allocation is bounded by the claimed length and the configured limit, checked with an
//! allocator that counts what a test thread allocates: forged lengths are refused before any
//! allocation, and decompression bombs are cut at the claim.

use super::*;
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
