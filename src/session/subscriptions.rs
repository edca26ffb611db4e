//! The client's pub/sub subscriptions, mirrored so that statecar knows how many confirmations
//! each (un)subscribe produces and whether a RESP2 client is in subscribed mode.

use std::collections::HashSet;

use bytes::Bytes;

use crate::command::SubKind;

/// Channels, patterns and shard channels the client is subscribed to.
#[derive(Default, Debug)]
pub struct Subscriptions {
    sets: [HashSet<Bytes>; 3],
}

impl Subscriptions {
    /// Whether the client has any subscription.
    pub fn any(&self) -> bool {
        self.sets.iter().any(|s| !s.is_empty())
    }

    /// How many of one kind (for CLIENT LIST's sub, psub, ssub).
    pub fn count(&self, k: SubKind) -> usize {
        self.sets[k as usize].len()
    }

    /// Records a (un)subscribe; returns how many confirmations Redis sends for it.
    pub fn track(&mut self, k: SubKind, subscribe: bool, names: &[Bytes]) -> usize {
        let set = &mut self.sets[k as usize];
        if subscribe {
            set.extend(names.iter().cloned());
            names.len()
        } else if names.is_empty() {
            let n = set.len().max(1);
            set.clear();
            n
        } else {
            for n in names {
                set.remove(n);
            }
            names.len()
        }
    }

    /// Forgets everything (RESET).
    pub fn clear(&mut self) {
        for s in &mut self.sets {
            s.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &[&str]) -> Vec<Bytes> {
        s.iter().map(|x| Bytes::from(x.to_string())).collect()
    }

    #[test]
    fn confirmations_counted_as_redis_sends_them() {
        let mut s = Subscriptions::default();
        assert_eq!(s.track(SubKind::Channel, true, &b(&["a", "b"])), 2);
        assert_eq!(s.track(SubKind::Pattern, true, &b(&["p*"])), 1);
        assert!(s.any());
        assert_eq!(s.count(SubKind::Channel), 2);
        // UNSUBSCRIBE with no names: one confirmation per channel, at least one.
        assert_eq!(s.track(SubKind::Channel, false, &[]), 2);
        assert_eq!(s.track(SubKind::Channel, false, &[]), 1);
        assert_eq!(s.track(SubKind::Pattern, false, &b(&["p*"])), 1);
        assert!(!s.any());
    }
}
