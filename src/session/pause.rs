//! What statecar knows of a `CLIENT PAUSE` that went through it.
//!
//! During `CLIENT PAUSE ms WRITE` Redis holds every write (and `MAY_REPLICATE`) command until
//! the pause ends, and with it everything queued behind that command on the same connection.
//! Directly, only the writer waits; behind a pool, other clients' reads share that connection.
//! So while a pause sent through statecar lasts, a command Redis would hold goes on a leased
//! connection of its own (as a blocking command does), and only its client waits.
//!
//! A pause sent to Redis by someone else (another statecar, Sentinel during a failover) is not
//! seen here; the shared links' stall detection (upstream::conn) covers it: clients with nothing
//! in flight move off a connection whose oldest command has waited too long.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crate::command::Entry;

/// The newest pause statecar forwarded and Redis accepted.
#[derive(Debug)]
pub struct Pause {
    /// Where `until_ms` counts from.
    base: Instant,
    /// When the pause ends, in ms since `base`; 0: no pause.
    until_ms: AtomicU64,
    /// `WRITE` (true) or `ALL`.
    write_only: AtomicBool,
}

impl Default for Pause {
    fn default() -> Self {
        Pause {
            base: Instant::now(),
            until_ms: AtomicU64::new(0),
            write_only: AtomicBool::new(false),
        }
    }
}

impl Pause {
    /// Redis accepted `CLIENT PAUSE timeout_ms [WRITE|ALL]`: like Redis, the newest pause
    /// replaces the previous one.
    pub fn start(&self, timeout_ms: u64, write_only: bool) {
        let until = self.now_ms().saturating_add(timeout_ms);
        self.write_only.store(write_only, Ordering::Relaxed);
        self.until_ms.store(until, Ordering::Relaxed);
    }

    /// Redis accepted `CLIENT UNPAUSE`.
    pub fn end(&self) {
        self.until_ms.store(0, Ordering::Relaxed);
    }

    /// Whether a command Redis would hold now should get a connection of its own. Under
    /// `ALL` every command waits, directly as through statecar, so nothing moves.
    pub fn holds(&self, e: &Entry) -> bool {
        let until = self.until_ms.load(Ordering::Relaxed);
        until != 0
            && self.write_only.load(Ordering::Relaxed)
            && self.now_ms() < until
            && e.held_by_write_pause()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;

    #[test]
    fn a_write_pause_holds_writes_and_may_replicate_commands_only() {
        let p = Pause::default();
        let set = Command::from_args(["SET", "k", "v"]);
        let get = Command::from_args(["GET", "k"]);
        let publish = Command::from_args(["PUBLISH", "c", "m"]);
        assert!(!p.holds(set.entry()), "no pause yet");
        p.start(60_000, true);
        assert!(p.holds(set.entry()));
        assert!(p.holds(publish.entry()));
        assert!(!p.holds(get.entry()));
        p.start(60_000, false);
        assert!(!p.holds(set.entry()), "under ALL nothing moves");
        p.start(60_000, true);
        p.end();
        assert!(!p.holds(set.entry()));
        p.start(0, true);
        assert!(!p.holds(set.entry()), "a pause of 0 ms is over at once");
    }
}
