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

const STAGE_PREFIX: &[u8] = b"__statecar:s:";

/// The history hash for `key`.
pub fn history_key(key: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(HISTORY_PREFIX.len() + key.len() + 2);
    out.extend_from_slice(HISTORY_PREFIX);
    push_tagged(&mut out, key);
    out.freeze()
}

/// A private key that holds a big encoded value of `key` for the moment between its upload
/// and the write script that renames it into place (`session/stage.rs`). `id` makes it unique
/// to one write; it shares `key`'s hash tag, as the history does.
pub fn staging_key(key: &[u8], id: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(STAGE_PREFIX.len() + key.len() + 3 + id.len());
    out.extend_from_slice(STAGE_PREFIX);
    push_tagged(&mut out, key);
    out.extend_from_slice(b":");
    out.extend_from_slice(id);
    out.freeze()
}

/// `key` so that its hash tag is the first one in what follows the prefix: its own tag, or
/// the whole key wrapped in `{}`.
fn push_tagged(out: &mut BytesMut, key: &[u8]) {
    if hash_tag(key).is_some() {
        out.extend_from_slice(key);
    } else {
        out.extend_from_slice(b"{");
        out.extend_from_slice(key);
        out.extend_from_slice(b"}");
    }
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

    #[test]
    fn staging_keys_share_the_hash_tag() {
        assert_eq!(
            &staging_key(b"session:1", b"7")[..],
            b"__statecar:s:{session:1}:7"
        );
        assert_eq!(
            hash_tag(&staging_key(b"user:{42}:s", b"7")),
            Some(&b"42"[..])
        );
        assert_ne!(staging_key(b"k", b"1"), staging_key(b"k", b"2"));
        assert!(is_reserved(&staging_key(b"k", b"1")));
    }
}
