//! Which keys a command touches, and so where a Redis Cluster wants it.
//!
//! A cluster serves each of its 16384 slots from one primary; a command can run there only if
//! all its keys hash to one slot. This module finds a command's keys (Redis's own key
//! positions for the common commands, the first argument otherwise), computes their slot, and
//! says what to do with the ones that span slots: split them (MGET, MSET, DEL, UNLINK, EXISTS,
//! TOUCH, as cluster clients do), send them to every primary (DBSIZE, FLUSHALL, KEYS, SCRIPT),
//! or refuse them with Redis's CROSSSLOT error.

use bytes::Bytes;

use crate::state::keys::hash_tag;

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

/// The cluster slot of `key` (its hash tag's, when it has one).
pub fn slot(key: &[u8]) -> u16 {
    crc16(hash_tag(key).unwrap_or(key)) % SLOTS as u16
}

/// How the replies of a command sent to several primaries become one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// Integers added up (DEL, EXISTS, DBSIZE, ...).
    Sum,
    /// `+OK` when every part says so (MSET, FLUSHALL, SCRIPT FLUSH).
    AllOk,
    /// One array per key, put back in the client's key order (MGET).
    Positional,
    /// Arrays concatenated (KEYS).
    Concat,
    /// Arrays of 0/1 combined element-wise with AND (SCRIPT EXISTS).
    And,
    /// The first part's reply, unless some part failed (SCRIPT LOAD, FUNCTION LOAD).
    First,
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

/// Where a command's keys are.
enum Keys {
    None,
    /// Arguments `first..` up to `args.len() - from_end`, every `step`-th.
    Range {
        first: usize,
        from_end: usize,
        step: usize,
    },
    /// Arguments `first..=last` (fewer if the command is short).
    Fixed {
        first: usize,
        last: usize,
    },
    /// A key count at `at`, then that many keys; `extra` is a key before the count.
    Counted {
        at: usize,
        extra: Option<usize>,
    },
    /// After the STREAMS token, the first half of what follows.
    Streams,
}

fn parse_usize(b: &[u8]) -> Option<usize> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

/// Where `args` (name first) goes in a cluster.
pub fn route(args: &[Bytes]) -> Route {
    let Some(name) = args.first() else {
        return Route::Keyless;
    };
    let mut buf = [0u8; 32];
    let Some(n) = crate::command::upper(name, &mut buf) else {
        return Route::Keyless;
    };
    let sub = |i: usize| {
        args.get(i)
            .map(|a| a.to_ascii_uppercase())
            .unwrap_or_default()
    };
    let keys = match &buf[..n] {
        b"MGET" => return split(args, 1, Merge::Positional),
        b"DEL" | b"UNLINK" | b"EXISTS" | b"TOUCH" => return split(args, 1, Merge::Sum),
        b"MSET" => return split(args, 2, Merge::AllOk),
        b"MSETNX" => Keys::Range {
            first: 1,
            from_end: 0,
            step: 2,
        },
        b"DBSIZE" => return Route::All(Merge::Sum),
        b"FLUSHALL" | b"FLUSHDB" => return Route::All(Merge::AllOk),
        b"KEYS" => return Route::All(Merge::Concat),
        b"SCAN" => return Route::Scan,
        b"SCRIPT" => {
            return match sub(1).as_slice() {
                b"EXISTS" => Route::All(Merge::And),
                b"FLUSH" => Route::All(Merge::AllOk),
                b"LOAD" => Route::All(Merge::First),
                _ => Route::Keyless,
            };
        }
        b"FUNCTION" => {
            return match sub(1).as_slice() {
                b"LOAD" | b"DELETE" | b"FLUSH" | b"RESTORE" => Route::All(Merge::First),
                _ => Route::Keyless,
            };
        }
        b"PING" | b"ECHO" | b"INFO" | b"TIME" | b"CONFIG" | b"COMMAND" | b"CLUSTER"
        | b"LASTSAVE" | b"SAVE" | b"BGSAVE" | b"BGREWRITEAOF" | b"PUBLISH" | b"PUBSUB"
        | b"RANDOMKEY" | b"SLOWLOG" | b"LATENCY" | b"DEBUG" | b"ROLE" | b"LOLWUT" | b"SWAPDB"
        | b"WAIT" | b"WAITAOF" | b"READONLY" | b"READWRITE" | b"ACL" | b"MODULE" | b"SHUTDOWN"
        | b"FAILOVER" | b"REPLICAOF" | b"SLAVEOF" | b"ASKING" | b"SUBSCRIBE" | b"PSUBSCRIBE"
        | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE" | b"MONITOR" | b"MULTI" | b"EXEC" | b"DISCARD"
        | b"UNWATCH" | b"SUNSUBSCRIBE" => Keys::None,
        b"MEMORY" if sub(1) == b"USAGE" => Keys::Fixed { first: 2, last: 2 },
        b"MEMORY" => Keys::None,
        b"OBJECT" | b"XINFO" => Keys::Fixed { first: 2, last: 2 },
        b"XGROUP" if matches!(sub(1).as_slice(), b"HELP") => Keys::None,
        b"XGROUP" => Keys::Fixed { first: 2, last: 2 },
        b"BLPOP" | b"BRPOP" | b"BZPOPMIN" | b"BZPOPMAX" => Keys::Range {
            first: 1,
            from_end: 1,
            step: 1,
        },
        b"SINTER" | b"SUNION" | b"SDIFF" | b"SINTERSTORE" | b"SUNIONSTORE" | b"SDIFFSTORE"
        | b"PFCOUNT" | b"PFMERGE" | b"WATCH" | b"SSUBSCRIBE" => Keys::Range {
            first: 1,
            from_end: 0,
            step: 1,
        },
        b"BITOP" => Keys::Range {
            first: 2,
            from_end: 0,
            step: 1,
        },
        b"RENAME" | b"RENAMENX" | b"SMOVE" | b"LMOVE" | b"BLMOVE" | b"RPOPLPUSH"
        | b"BRPOPLPUSH" | b"COPY" | b"GEOSEARCHSTORE" | b"ZRANGESTORE" | b"LCS" => {
            Keys::Fixed { first: 1, last: 2 }
        }
        b"EVAL" | b"EVALSHA" | b"EVAL_RO" | b"EVALSHA_RO" | b"FCALL" | b"FCALL_RO" => {
            Keys::Counted { at: 2, extra: None }
        }
        b"ZUNIONSTORE" | b"ZINTERSTORE" | b"ZDIFFSTORE" => Keys::Counted {
            at: 2,
            extra: Some(1),
        },
        b"ZUNION" | b"ZINTER" | b"ZDIFF" | b"ZINTERCARD" | b"SINTERCARD" | b"LMPOP" | b"ZMPOP" => {
            Keys::Counted { at: 1, extra: None }
        }
        b"BLMPOP" | b"BZMPOP" => Keys::Counted { at: 2, extra: None },
        b"XREAD" | b"XREADGROUP" => Keys::Streams,
        _ if args.len() > 1 => Keys::Fixed { first: 1, last: 1 },
        _ => Keys::None,
    };
    same_slot(key_indices(args, keys).map(|i| &args[i][..]))
}

fn key_indices(args: &[Bytes], keys: Keys) -> Box<dyn Iterator<Item = usize> + '_> {
    let len = args.len();
    match keys {
        Keys::None => Box::new(std::iter::empty()),
        Keys::Range {
            first,
            from_end,
            step,
        } => Box::new((first..len.saturating_sub(from_end)).step_by(step)),
        Keys::Fixed { first, last } => Box::new(first..(last + 1).min(len)),
        Keys::Counted { at, extra } => {
            let n = args.get(at).and_then(|a| parse_usize(a)).unwrap_or(0);
            let end = (at + 1).saturating_add(n).min(len);
            Box::new(extra.into_iter().chain(at + 1..end))
        }
        Keys::Streams => {
            let Some(p) = args.iter().position(|a| a.eq_ignore_ascii_case(b"STREAMS")) else {
                return Box::new(std::iter::empty());
            };
            let rest = len - p - 1;
            Box::new(p + 1..p + 1 + rest / 2)
        }
    }
}

fn same_slot<'a>(mut keys: impl Iterator<Item = &'a [u8]>) -> Route {
    let Some(first) = keys.next() else {
        return Route::Keyless;
    };
    let s = slot(first);
    if keys.all(|k| slot(k) == s) {
        Route::Slot(s)
    } else {
        Route::CrossSlot
    }
}

fn split(args: &[Bytes], step: usize, merge: Merge) -> Route {
    match same_slot(args[1..].iter().step_by(step).map(|k| &k[..])) {
        Route::CrossSlot => Route::Split { merge, step },
        r => r,
    }
}

/// The keys of a splittable command grouped by slot, in first-appearance order: each group
/// is (slot, indices of the keys' first arguments).
pub fn group_by_slot(args: &[Bytes], step: usize) -> Vec<(u16, Vec<usize>)> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for i in (1..args.len()).step_by(step) {
        let s = slot(&args[i]);
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
        let v: Vec<Bytes> = args.iter().map(|a| Bytes::from(a.to_string())).collect();
        route(&v)
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
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        let v: Vec<Bytes> = ["MSET", "foo", "1", "bar", "2", "{foo}z", "3"]
            .iter()
            .map(|a| Bytes::from(a.to_string()))
            .collect();
        assert_eq!(
            group_by_slot(&v, 2),
            vec![(12182, vec![1, 5]), (5061, vec![3])]
        );
    }
}
