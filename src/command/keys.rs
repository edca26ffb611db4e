//! Which arguments of a command are keys, found from the table's key specifications the way
//! Redis's `getKeysUsingKeySpecs` finds them (db.c), plus the two commands whose specifications
//! Redis marks incomplete (SORT's STORE, MIGRATE's KEYS).

use smallvec::SmallVec;

use super::Command;
use super::spec::{Begin, Find, KeySpec};

/// Positions of a command's keys (argument indexes), in Redis's order.
pub type KeyPositions = SmallVec<[usize; 4]>;

fn parse_count(b: &[u8]) -> Option<i64> {
    crate::protocol::request::string2ll(b)
}

/// The keys of one key specification; None when the arguments do not fit it (Redis then
/// reports a syntax or arity error itself).
fn spec_keys(spec: &KeySpec, cmd: &Command, out: &mut KeyPositions) -> Option<()> {
    let argc = cmd.argc() as i64;
    let first: i64 = match spec.begin {
        Begin::Index(i) => i64::from(i),
        Begin::Keyword { keyword, startfrom } => {
            let startfrom = i64::from(startfrom);
            let (start, end) = if startfrom > 0 {
                (startfrom, argc - 1)
            } else {
                (argc + startfrom, 1)
            };
            let mut i = start;
            let mut found = None;
            while i != end {
                if i >= argc || i < 1 {
                    break;
                }
                if cmd
                    .arg(i as usize)?
                    .eq_ignore_ascii_case(keyword.as_bytes())
                {
                    found = Some(i + 1);
                    break;
                }
                i += if start <= end { 1 } else { -1 };
            }
            match found {
                Some(f) => f,
                // Keyword absent: this specification has no keys here.
                None => return Some(()),
            }
        }
        Begin::Unknown => return None,
    };
    let (first, last, step) = match spec.find {
        Find::Range {
            lastkey,
            step,
            limit,
        } => {
            let lastkey = i64::from(lastkey);
            let last = if lastkey >= 0 {
                first + lastkey
            } else if limit == 0 {
                argc + lastkey
            } else {
                first + ((argc - first) / i64::from(limit) + lastkey)
            };
            (first, last, i64::from(step))
        }
        Find::Keynum {
            keynumidx,
            firstkey,
            step,
        } => {
            let at = usize::try_from(first + i64::from(keynumidx)).ok()?;
            let n = parse_count(cmd.arg(at)?).filter(|n| *n >= 0)?;
            let first = first + i64::from(firstkey);
            (first, first.checked_add(n)? - 1, i64::from(step))
        }
        Find::Unknown => return None,
    };
    if n_keys_empty(first, last) {
        return Some(());
    }
    if last >= argc || last < first || first >= argc || step <= 0 {
        return None;
    }
    let mut i = first;
    while i <= last {
        out.push(i as usize);
        i += step;
    }
    Some(())
}

/// A keynum of 0 gives `last = first - 1`: no keys, and not an error.
fn n_keys_empty(first: i64, last: i64) -> bool {
    last == first - 1
}

/// Every key of `cmd`, in argument order per specification; empty for keyless commands and
/// for arguments that do not fit the command (Redis answers those with an error). Shard
/// channels (SSUBSCRIBE, SPUBLISH) count: Redis Cluster routes them by slot like keys.
pub fn positions(cmd: &Command) -> KeyPositions {
    let mut out = KeyPositions::new();
    let spec = cmd.entry().spec;
    for ks in spec.keys {
        if matches!(ks.begin, Begin::Unknown) {
            continue;
        }
        if spec_keys(ks, cmd, &mut out).is_none() {
            return KeyPositions::new();
        }
    }
    match spec.name {
        // STORE may come anywhere among SORT's options.
        "sort" => {
            let mut i = 2;
            while i + 1 < cmd.argc() {
                let a = cmd.arg(i).unwrap_or_default();
                if a.eq_ignore_ascii_case(b"STORE") {
                    out.push(i + 1);
                    i += 2;
                } else if a.eq_ignore_ascii_case(b"LIMIT") {
                    i += 3;
                } else if a.eq_ignore_ascii_case(b"BY") || a.eq_ignore_ascii_case(b"GET") {
                    i += 2;
                } else {
                    i += 1;
                }
            }
        }
        // MIGRATE host port "" db timeout ... KEYS k1 k2: the key is empty and KEYS follows.
        "migrate" => {
            let keys_at = (6..cmd.argc())
                .find(|&i| cmd.arg(i).is_some_and(|a| a.eq_ignore_ascii_case(b"KEYS")));
            if let Some(k) = keys_at
                && cmd.arg(3).is_some_and(<[u8]>::is_empty)
            {
                out.clear();
                out.extend(k + 1..cmd.argc());
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(args: &[&str]) -> Vec<usize> {
        positions(&Command::from_args(args)).to_vec()
    }

    #[test]
    fn key_positions_follow_redis() {
        assert_eq!(keys(&["GET", "k"]), vec![1]);
        assert_eq!(keys(&["get"]), Vec::<usize>::new());
        assert_eq!(keys(&["MGET", "a", "b", "c"]), vec![1, 2, 3]);
        assert_eq!(keys(&["MSET", "a", "1", "b", "2"]), vec![1, 3]);
        assert_eq!(keys(&["BLPOP", "a", "b", "0"]), vec![1, 2]);
        assert_eq!(keys(&["EVAL", "s", "2", "a", "b", "x"]), vec![3, 4]);
        assert_eq!(keys(&["EVAL", "s", "0", "x"]), Vec::<usize>::new());
        assert_eq!(keys(&["EVAL", "s", "x"]), Vec::<usize>::new());
        assert_eq!(keys(&["ZUNIONSTORE", "d", "2", "a", "b"]), vec![1, 3, 4]);
        assert_eq!(
            keys(&["XREAD", "COUNT", "1", "STREAMS", "s1", "s2", "0", "0"]),
            vec![4, 5]
        );
        assert_eq!(keys(&["RENAME", "a", "b"]), vec![1, 2]);
        assert_eq!(keys(&["OBJECT", "ENCODING", "k"]), vec![2]);
        assert_eq!(keys(&["MEMORY", "USAGE", "k"]), vec![2]);
        assert_eq!(keys(&["PING"]), Vec::<usize>::new());
        assert_eq!(keys(&["SORT", "l", "BY", "w_*", "STORE", "d"]), vec![1, 5]);
        assert_eq!(
            keys(&["MIGRATE", "h", "1", "", "0", "5", "KEYS", "a", "b"]),
            vec![7, 8]
        );
        assert_eq!(keys(&["LMPOP", "2", "a", "b", "LEFT"]), vec![2, 3]);
        assert_eq!(keys(&["SET", "k", "v"]), vec![1]);
        assert_eq!(keys(&["WATCH", "a", "b"]), vec![1, 2]);
        assert_eq!(keys(&["SSUBSCRIBE", "c1", "c2"]), vec![1, 2]);
    }
}
