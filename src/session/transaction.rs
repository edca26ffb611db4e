//! The client's transaction: MULTI ... EXEC, and WATCH before it.
//!
//! A transaction runs on a dedicated connection, so that nobody else's command can land inside
//! it. statecar mirrors what Redis knows about it: whether MULTI is open, whether WATCH is
//! active, the reply reshaping of each queued command (state keys: applied to the EXEC reply),
//! and whether a command was refused at queue time (Redis then aborts EXEC). If MULTI cannot get
//! its dedicated connection, the transaction is doomed: nothing is sent, queued commands are
//! only acknowledged, and EXEC fails as a whole, so no command ever runs outside it.

use crate::command::Command;
use crate::state::transform::Transform;

/// A transaction in progress, if any.
#[derive(Default, Debug)]
pub struct Transaction {
    /// MULTI was answered and EXEC/DISCARD not yet.
    pub in_multi: bool,
    /// WATCH is active.
    pub watching: bool,
    /// Inside MULTI: the reshaping of each queued command, for the EXEC reply.
    pub queued: Vec<Option<Transform>>,
    /// A queued command was refused here, so EXEC must fail as Redis fails it (EXECABORT).
    pub poisoned: bool,
    /// MULTI could not get a dedicated connection: why. Nothing of the transaction is sent.
    pub doomed: Option<String>,
    /// Cluster: MULTI was answered but no connection is pinned until a key picks the node;
    /// keyless commands queued meanwhile.
    pub deferred: Option<Vec<Command>>,
    /// The last CLIENT PAUSE (`Some(Some((ms, write_only)))`) or UNPAUSE (`Some(None)`)
    /// queued: it takes effect at EXEC, as in Redis (see session::pause).
    pub pause: Option<Option<(u64, bool)>>,
}

impl Transaction {
    /// MULTI: a fresh transaction (a nested MULTI keeps the open one, as Redis does).
    pub fn begin(&mut self) {
        if !self.in_multi {
            self.queued.clear();
            self.poisoned = false;
            self.pause = None;
        }
        self.in_multi = true;
    }

    /// EXEC or DISCARD: what was queued, and whether EXEC must abort.
    pub fn end(&mut self) -> (Vec<Option<Transform>>, bool) {
        self.in_multi = false;
        self.watching = false;
        self.doomed = None;
        (
            std::mem::take(&mut self.queued),
            std::mem::take(&mut self.poisoned),
        )
    }

    /// Whether the client still needs its dedicated connection for the transaction.
    pub fn holds_connection(&self) -> bool {
        self.in_multi || self.watching
    }

    /// Forgets everything (RESET, or the dedicated connection was lost).
    pub fn clear(&mut self) {
        *self = Transaction::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_multi_keeps_the_queue_and_exec_hands_it_back() {
        let mut t = Transaction::default();
        t.begin();
        t.queued.push(None);
        t.poisoned = true;
        t.begin();
        assert_eq!(
            t.queued.len(),
            1,
            "a nested MULTI does not reset the transaction"
        );
        let (q, poisoned) = t.end();
        assert_eq!(q.len(), 1);
        assert!(poisoned);
        assert!(!t.in_multi && !t.poisoned && !t.holds_connection());
        t.watching = true;
        assert!(t.holds_connection());
    }
}
