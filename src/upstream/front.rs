//! What the sessions read of a shared connection before they send on it: whether its oldest
//! unanswered batch has waited too long, or a big transfer holds it (its task writes both).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long a connection's oldest unanswered batch may wait before the connection counts as
/// stalled (a slow script, DEBUG SLEEP, a KEYS over millions of keys, a Redis that stopped):
/// clients with nothing in flight on it move to another connection rather than queue behind
/// it, so they reach Redis and get what a direct client gets (often `-BUSY`). Far above the
/// time any ordinary batch waits, far below `timeout_ms`.
pub const STALLED_AFTER: Duration = Duration::from_millis(100);

/// A connection still to receive, or to write, this many bytes of one reply or batch counts as
/// busy: clients with nothing in flight on it move to another connection rather than wait
/// behind the transfer (an 8 MB GET kept another client's small GET behind it for about 6 ms).
pub(super) const BIG_TRANSFER: usize = 1024 * 1024;

/// The moment [`Front`] times are counted from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// What the sessions read of a connection before sending on it (its task writes it): when the
/// oldest unanswered batch was sent, and whether a big transfer is under way.
#[derive(Default)]
pub(super) struct Front {
    /// Microseconds since [`EPOCH`], plus one, when the oldest unanswered batch was sent (0:
    /// none is).
    since: AtomicU64,
    /// Still to receive or write [`BIG_TRANSFER`] bytes or more of one reply or batch.
    busy: AtomicBool,
}

impl Front {
    pub(super) fn set(&self, since: Option<Instant>) {
        let v = since.map_or(0, |t| {
            u64::try_from(t.saturating_duration_since(*EPOCH).as_micros())
                .unwrap_or(u64::MAX)
                .saturating_add(1)
        });
        self.since.store(v, Ordering::Relaxed);
    }

    /// Set on every turn of the connection's loop; stored only when it changes, so the cache
    /// line the sessions read is not written per command.
    pub(super) fn set_busy(&self, busy: bool) {
        if self.busy.load(Ordering::Relaxed) != busy {
            self.busy.store(busy, Ordering::Relaxed);
        }
    }

    pub(super) fn busy(&self) -> bool {
        self.busy.load(Ordering::Relaxed)
    }

    pub(super) fn waited(&self, now: Instant) -> Duration {
        match self.since.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            v => now
                .saturating_duration_since(*EPOCH)
                .saturating_sub(Duration::from_micros(v - 1)),
        }
    }
}
