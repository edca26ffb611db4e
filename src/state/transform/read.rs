//! Replies that carry a stored value (GET, GETDEL, GETEX, GETRANGE, MGET, STRLEN): verified
//! and decoded, from the delta cache when the proxy already holds that exact value, on the
//! blocking pool when it is large, and from the newest intact version when the rule says so.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::BytesFrame;

use super::{Apply, bulk_of, int_of, is_error, split_array, unexpected};
use crate::protocol::frames::bulk_payload;
use crate::protocol::frames::decode as decode_reply;
use crate::protocol::reply::{Value, error};
use crate::state::envelope;
use crate::state::followup::{dicts_needed, load_dicts};
use crate::state::rules::OnCorruption;
use crate::state::{ReadValue, StateEngine, show_key};

/// Stored values at least this long are decoded on the blocking pool, not on the thread that
/// serves other clients' replies.
pub(super) const DECODE_OFF_THREAD: usize = 1 << 20;

impl Apply<'_> {
    /// Decodes a stored value, falling back to the newest intact version where configured.
    pub(super) async fn read(&self, key: &Bytes, stored: Bytes) -> Result<Bytes, Bytes> {
        let ids = dicts_needed([&stored]);
        if !ids.is_empty() {
            load_dicts(self.conn, &ids).await;
        }
        match self.engine.decode(key, &stored) {
            ReadValue::Value(v) => Ok(v),
            ReadValue::Damaged(e) => {
                let fallback = self
                    .engine
                    .rule_for(key)
                    .is_some_and(|r| r.on_corruption == OnCorruption::PreviousVersion);
                if fallback && let Some(v) = self.newest_intact(key).await {
                    self.engine
                        .totals
                        .fallbacks
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(key = %show_key(key), "served the newest intact version instead");
                    return Ok(v);
                }
                Err(error(&StateEngine::damaged_error(key, &e)))
            }
        }
    }

    pub(super) async fn value(&self, key: &Bytes, reply: Bytes) -> Bytes {
        // An intact value needs no parser; a damaged one goes the slow way, which reports it.
        if let Some(stored) = bulk_payload(&reply) {
            if let Some(frame) = self.engine.cached_frame(key, stored) {
                return frame;
            }
            let at = stored.as_ptr() as usize - reply.as_ptr() as usize;
            let span = at..at + stored.len();
            // Decoded and remembered (which copies a big envelope into the cache) off the
            // async threads when big.
            let decode = move |engine: &StateEngine, key: &Bytes, reply: &Bytes| {
                let frame = engine.decode_frame(&reply[span.clone()], reply)?;
                if !std::ptr::eq(frame.as_ptr(), reply.as_ptr()) {
                    engine.remember(key, &reply[span.clone()], frame.clone());
                }
                Some(frame)
            };
            let frame = if stored.len() >= DECODE_OFF_THREAD {
                let (engine, k, r) = (self.engine.clone(), key.clone(), reply.clone());
                tokio::task::spawn_blocking(move || decode(&engine, &k, &r))
                    .await
                    .ok()
                    .flatten()
            } else {
                decode(self.engine, key, &reply)
            };
            if let Some(frame) = frame {
                return frame;
            }
        }
        let Some(f) = decode_reply(&reply) else {
            return unexpected("GET");
        };
        match bulk_of(&f) {
            Some(None) => reply,
            Some(Some(stored)) => match self.read(key, stored).await {
                Ok(v) => self.bulk(Some(v)),
                Err(e) => e,
            },
            None => reply,
        }
    }

    pub(super) async fn range(&self, key: &Bytes, start: i64, end: i64, reply: Bytes) -> Bytes {
        let Some(f) = decode_reply(&reply) else {
            return unexpected("GETRANGE");
        };
        let value = match bulk_of(&f) {
            Some(None) => Bytes::new(),
            Some(Some(stored)) => match self.read(key, stored).await {
                Ok(v) => v,
                Err(e) => return e,
            },
            None => return reply,
        };
        self.bulk(Some(redis_range(&value, start, end)))
    }

    pub(super) async fn values(&self, keys: &[Option<Bytes>], reply: Bytes) -> Bytes {
        let Some(items) = split_array(&reply).filter(|v| v.len() == keys.len()) else {
            return unexpected("MGET");
        };
        let mut out = BytesMut::new();
        out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
        for (item, key) in items.into_iter().zip(keys) {
            match key {
                None => out.extend_from_slice(&item),
                Some(key) => {
                    let v = self.value(key, item).await;
                    if is_error(&v) {
                        return v;
                    }
                    out.extend_from_slice(&v);
                }
            }
        }
        out.freeze()
    }

    pub(super) fn strlen(&self, key: &Bytes, reply: Bytes) -> Bytes {
        let Some(BytesFrame::Array { data, .. }) = decode_reply(&reply) else {
            return unexpected("STRLEN");
        };
        let (Some(Some(header)), Some(len)) =
            (data.first().and_then(bulk_of), data.get(1).and_then(int_of))
        else {
            return unexpected("STRLEN");
        };
        match envelope::inspect(&header) {
            Ok(Some(meta)) => Value::Int(meta.original_len as i64).encode(self.proto),
            Ok(None) => Value::Int(len).encode(self.proto),
            Err(e) => error(&StateEngine::damaged_error(key, &e)),
        }
    }
}

/// GETRANGE semantics on a byte string.
pub fn redis_range(v: &[u8], start: i64, end: i64) -> Bytes {
    let len = v.len() as i64;
    if start < 0 && end < 0 && start > end {
        return Bytes::new();
    }
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if end < 0 { len + end } else { end };
    s = s.max(0);
    e = e.max(0);
    if e >= len {
        e = len - 1;
    }
    if s > e || len == 0 {
        return Bytes::new();
    }
    Bytes::copy_from_slice(&v[s as usize..=e as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_matches_redis() {
        let v = b"This is a string";
        assert_eq!(&redis_range(v, 0, 3)[..], b"This");
        assert_eq!(&redis_range(v, -3, -1)[..], b"ing");
        assert_eq!(&redis_range(v, 0, -1)[..], v);
        assert_eq!(&redis_range(v, 10, 100)[..], b"string");
        assert_eq!(&redis_range(v, 5, 3)[..], b"");
        assert_eq!(&redis_range(b"", 0, -1)[..], b"");
    }
}
