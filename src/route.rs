//! Where a command goes in a Redis Cluster: the slot of its keys.
//!
//! A cluster serves each of its 16384 slots from one primary; a command can run there only if
//! all its keys hash to one slot. The keys are the ones the command table's key specifications
//! name (Redis's own positions); what to do with keys that span slots is the table's routing
//! column: split them (MGET, MSET, DEL, UNLINK, EXISTS, TOUCH, as cluster clients do), send the
//! command to every primary (DBSIZE, FLUSHALL, KEYS, SCRIPT), or refuse it with Redis's
//! CROSSSLOT error.

pub use crate::command::Merge;
use crate::command::{Command, Routing, keys};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// Redis's error for keys in different slots.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// CRC16-CCITT (XMODEM), the checksum Redis Cluster hashes keys with.
const fn crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut b = 0;
        while b < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            b += 1;
        }
        t[i] = crc;
        i += 1;
    }
    t
}

static CRC16: [u16; 256] = crc16_table();

fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0u16, |crc, &b| {
        (crc << 8) ^ CRC16[((crc >> 8) as u8 ^ b) as usize]
    })
}

/// The hash tag Redis Cluster uses for `key`: the bytes between the first `{` and the first `}`
/// after it, when that is non-empty.
pub fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&c| c == b'{')?;
    let close = key[open + 1..].iter().position(|&c| c == b'}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

/// The cluster slot of `key` (its hash tag's, when it has one).
pub fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS as u16
}

/// Where a command goes in a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// No key: any primary will do.
    Keyless,
    /// Every key is in this slot.
    Slot(u16),
    /// Keys in several slots of a command that cannot be split.
    CrossSlot,
    /// Keys in several slots of a command that can be split per slot; `step` is 1 for a key
    /// list and 2 for key/value pairs.
    Split {
        /// How the parts' replies are joined.
        merge: Merge,
        /// Arguments per key.
        step: usize,
    },
    /// Must run on every primary.
    All(Merge),
    /// SCAN: walks the primaries one after another.
    Scan,
}

/// Where `cmd` goes in a cluster.
pub fn route(cmd: &Command) -> Route {
    let entry = cmd.entry();
    match entry.routing {
        Routing::All(m) => return Route::All(m),
        Routing::Scan => return Route::Scan,
        Routing::Split { merge, step } => {
            return match same_slot(cmd, keys::positions(cmd).into_iter()) {
                Route::CrossSlot => Route::Split { merge, step },
                r => r,
            };
        }
        Routing::ByKeys => {}
    }
    if entry.is_unknown() {
        // A command Redis does not list (a module's): its first argument, as cluster clients
        // assume.
        return same_slot(cmd, (cmd.argc() > 1).then_some(1).into_iter());
    }
    same_slot(cmd, keys::positions(cmd).into_iter())
}

fn same_slot(cmd: &Command, mut keys: impl Iterator<Item = usize>) -> Route {
    let key = |i: usize| cmd.arg(i).unwrap_or_default();
    let Some(first) = keys.next() else {
        return Route::Keyless;
    };
    let s = slot(key(first));
    if keys.all(|k| slot(key(k)) == s) {
        Route::Slot(s)
    } else {
        Route::CrossSlot
    }
}

/// The keys of a splittable command grouped by slot, in first-appearance order: each group
/// is (slot, indices of the keys' first arguments).
pub fn group_by_slot(cmd: &Command, step: usize) -> Vec<(u16, Vec<usize>)> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for i in (1..cmd.argc()).step_by(step.max(1)) {
        let s = slot(cmd.arg(i).unwrap_or_default());
        match groups.iter_mut().find(|(g, _)| *g == s) {
            Some((_, v)) => v.push(i),
            None => groups.push((s, vec![i])),
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> Route {
        route(&Command::from_args(args))
    }

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT` on redis-server 7.0.15.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        assert_eq!(slot(b"foo{}{bar}"), slot(b"foo{}{bar}"));
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b""), 0);
        assert_eq!(hash_tag(b"a{}b"), None);
        assert_eq!(hash_tag(b"a{x}b"), Some(&b"x"[..]));
    }

    #[test]
    fn routes_by_key_positions() {
        assert_eq!(r(&["GET", "foo"]), Route::Slot(12182));
        assert_eq!(r(&["PING"]), Route::Keyless);
        assert_eq!(r(&["MGET", "{a}1", "{a}2"]), Route::Slot(slot(b"a")));
        assert_eq!(
            r(&["MGET", "foo", "bar"]),
            Route::Split {
                merge: Merge::Positional,
                step: 1
            }
        );
        assert_eq!(
            r(&["MSET", "foo", "1", "bar", "2"]),
            Route::Split {
                merge: Merge::AllOk,
                step: 2
            }
        );
        assert_eq!(r(&["MSETNX", "foo", "1", "bar", "2"]), Route::CrossSlot);
        assert_eq!(r(&["RENAME", "foo", "bar"]), Route::CrossSlot);
        assert_eq!(r(&["BLPOP", "foo", "0"]), Route::Slot(12182));
        assert_eq!(r(&["BLPOP", "foo", "bar", "0"]), Route::CrossSlot);
        assert_eq!(r(&["EVAL", "return 1", "0"]), Route::Keyless);
        assert_eq!(
            r(&["EVAL", "return 1", "1", "foo", "bar"]),
            Route::Slot(12182)
        );
        assert_eq!(
            r(&["ZUNIONSTORE", "foo", "2", "{foo}a", "bar"]),
            Route::CrossSlot
        );
        assert_eq!(
            r(&["XREAD", "COUNT", "2", "STREAMS", "foo", "{foo}x", "0", "0"]),
            Route::Slot(12182)
        );
        assert_eq!(r(&["OBJECT", "ENCODING", "foo"]), Route::Slot(12182));
        assert_eq!(r(&["SCRIPT", "flush"]), Route::All(Merge::AllOk));
        assert_eq!(r(&["dbsize"]), Route::All(Merge::Sum));
        assert_eq!(r(&["scan", "0"]), Route::Scan);
        assert_eq!(r(&["JSON.GET", "foo", "$"]), Route::Slot(12182));
        assert_eq!(r(&["ECHO", "foo"]), Route::Keyless);
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        let c = Command::from_args(["MSET", "foo", "1", "bar", "2", "{foo}z", "3"]);
        assert_eq!(
            group_by_slot(&c, 2),
            vec![(12182, vec![1, 5]), (5061, vec![3])]
        );
    }
}
