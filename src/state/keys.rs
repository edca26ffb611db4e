//! Where a state key's history lives.
//!
//! The history of `key` is a hash named `__statecar:h:` + key (with the key wrapped in `{}` when
//! it has no hash tag of its own), so that on Redis Cluster it hashes to the same slot as the key
//! and the Lua scripts that touch both stay legal there.

use bytes::{Bytes, BytesMut};

use crate::route::hash_tag;

/// Prefix of every key statecar itself creates. Client commands never see these through
/// STATE.LIST; SCAN and KEYS show them, as they are ordinary Redis keys.
pub const RESERVED_PREFIX: &[u8] = b"__statecar:";

const HISTORY_PREFIX: &[u8] = b"__statecar:h:";

/// The history hash for `key`.
pub fn history_key(key: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HISTORY_PREFIX.len() + key.len() + 2);
    out.extend_from_slice(HISTORY_PREFIX);
    if hash_tag(key).is_some() {
        // The key's own tag is the first one in the history key too.
        out.extend_from_slice(key);
    } else {
        out.extend_from_slice(b"{");
        out.extend_from_slice(key);
        out.extend_from_slice(b"}");
    }
    out.freeze()
}

/// Keys in statecar's own namespace.
pub fn is_reserved(key: &[u8]) -> bool {
    key.starts_with(RESERVED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_shares_the_hash_tag() {
        assert_eq!(&history_key(b"session:1")[..], b"__statecar:h:{session:1}");
        assert_eq!(
            &history_key(b"user:{42}:s")[..],
            b"__statecar:h:user:{42}:s"
        );
        assert_eq!(
            hash_tag(&history_key(b"session:1")),
            Some(&b"session:1"[..])
        );
        assert_eq!(hash_tag(&history_key(b"user:{42}:s")), Some(&b"42"[..]));
        assert_eq!(hash_tag(b"a{}b"), None);
        assert!(is_reserved(&history_key(b"x")));
    }
}
