//! The replies that read a key's version history: STATE.LOAD of a version, STATE.VERSIONS,
//! the second step of STATE.ROLLBACK (which writes the version it read as the newest one),
//! and the `on_corruption = "previous_version"` fallback; and the metadata they show (tags
//! are stored in the history hash, encoded here).
//!
//! A version stored as a delta is decoded through its bases (`state::history`); the scripts
//! return the entries needed, the version asked for first.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::BytesFrame;

use super::read::DECODE_OFF_THREAD;
use super::{Apply, CacheNote, WriteShape, bulk_of, int_of, is_error, unexpected};
use crate::protocol::encode_multibulk;
use crate::protocol::frames::decode as decode_reply;
use crate::protocol::reply::{Value, error};
use crate::state::envelope::{self, HEADER_LEN, Meta};
use crate::state::followup::{dicts_needed, load_dicts};
use crate::state::history::{self, ChainError, Version};
use crate::state::keys::history_key;
use crate::state::{StateEngine, dict, show_key};

impl Apply<'_> {
    pub(super) async fn newest_intact(&self, key: &Bytes) -> Option<Bytes> {
        let conn = self.conn?;
        let mut cmd = BytesMut::new();
        encode_multibulk(&mut cmd, &[&b"HGETALL"[..], &history_key(key)]);
        let reply = conn.call(cmd.freeze()).await.ok()?;
        // HGETALL is an array in RESP2 and a map in RESP3.
        let flat: Vec<BytesFrame> = match decode_reply(&reply)? {
            BytesFrame::Array { data, .. } => data,
            BytesFrame::Map { data, .. } => data.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => return None,
        };
        let (live, kept) = history_fields(&flat);
        load_dicts(
            Some(conn),
            &dicts_needed(live.values().chain(kept.values())),
        )
        .await;
        // The key itself is the damaged one: its versions are read from the history alone.
        let all = history::decode_all(&live, &kept, None, self.engine.max_decoded, &dict::lookup);
        all.into_iter()
            .rev()
            .find_map(|(_, r)| r.ok().flatten())
            .map(|v| Bytes::from(v.value))
    }

    /// Decodes the first of a chain of entries (loading the dictionaries they need).
    pub(super) async fn decode_chain(
        &self,
        entries: &[(u32, Bytes)],
    ) -> Result<Option<Version>, ChainError> {
        load_dicts(self.conn, &dicts_needed(entries.iter().map(|(_, b)| b))).await;
        let max = self.engine.max_decoded;
        let big = entries.iter().map(|(_, b)| b.len()).sum::<usize>() >= DECODE_OFF_THREAD;
        if big {
            let owned = entries.to_vec();
            return tokio::task::spawn_blocking(move || {
                history::decode_chain(&owned, max, &dict::lookup)
            })
            .await
            .unwrap_or(Err(ChainError {
                version: 0,
                error: envelope::EnvelopeError::NeedsBase(0),
            }));
        }
        history::decode_chain(entries, max, &dict::lookup)
    }

    /// STATE.ROLLBACK's second step: version v's content becomes the newest version.
    pub(super) async fn rollback(&self, key: &Bytes, reply: Bytes) -> Bytes {
        if self.in_exec {
            // The write would run after EXEC, outside the transaction: nothing was changed.
            return error(
                "ERR statecar: STATE.ROLLBACK cannot run inside MULTI (it reads the version, \
                 then writes it); run it outside the transaction",
            );
        }
        let Some(BytesFrame::Array { data, .. }) = decode_reply(&reply) else {
            return unexpected("STATE.ROLLBACK");
        };
        let (Some(entries), Some(Some(tags))) =
            (entry_pairs(data.first()), data.get(1).and_then(bulk_of))
        else {
            return unexpected("STATE.ROLLBACK");
        };
        let current = data.get(2).and_then(bulk_of).flatten();
        let (Some(rule), Some(conn)) = (self.engine.rule_for(key), self.conn) else {
            return error("ERR statecar: STATE.ROLLBACK needs a connection to Redis");
        };
        let target = match self.decode_chain(&entries).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                return error(&format!(
                    "ERR statecar: version of '{}' holds a value statecar did not write",
                    show_key(key)
                ));
            }
            Err(e) => {
                self.engine.decode(key, &Bytes::new());
                return error(&StateEngine::damaged_error(key, &e.error));
            }
        };
        // The key's current value, as the base of the delta the replaced version becomes.
        let base = match &current {
            Some(stored) => match self.decode_chain(&[(0, stored.clone())]).await {
                Ok(Some(v)) if v.meta.base.is_none() && stored.len() >= HEADER_LEN => {
                    let mut header = [0u8; HEADER_LEN];
                    header.copy_from_slice(&stored[..HEADER_LEN]);
                    Some(crate::state::cache::Base::from_value(
                        header,
                        v.meta.version,
                        &v.value,
                    ))
                }
                _ => None,
            },
            None => None,
        };
        let value = Bytes::from(target.value);
        let w =
            self.engine
                .encode_rollback(rule, key, &value, target.meta.timestamp_ms, base.as_ref());
        let keys = [key.clone(), history_key(key)];
        let args = [
            Bytes::from_static(b"SET"),
            Bytes::new(),
            Bytes::from_static(b"0"),
            Bytes::new(),
            tags,
            w.stored,
            Bytes::from(crate::state::plan::window(rule).to_string()),
            Bytes::from_static(b"KEEPTTL"),
            Bytes::new(),
            w.base_header,
            w.delta,
            Bytes::from(w.predicted.to_string()),
        ];
        let cmd = self.engine.scripts.write.eval(&keys, &args);
        let reply = match conn.call(cmd).await {
            Ok(b) => b,
            Err(e) => return e,
        };
        let note = CacheNote {
            key: key.clone(),
            header: w.header,
            value,
            predicted: w.predicted,
            chunks: w.chunks.clone(),
        };
        if is_error(&reply) {
            self.forget_note(&note);
            return reply;
        }
        self.write(key, WriteShape::Version, &[(0, note)], reply)
            .await
    }

    pub(super) async fn load(&self, key: &Bytes, reply: Bytes) -> Bytes {
        let f = decode_reply(&reply);
        let Some(BytesFrame::Array { data, .. }) = f else {
            return match f {
                Some(BytesFrame::Null) => Value::Null.encode(self.proto),
                _ => unexpected("STATE.LOAD"),
            };
        };
        let (Some(entries), Some(Some(tags)), Some(pttl)) = (
            entry_pairs(data.first()),
            data.get(1).and_then(bulk_of),
            data.get(2).and_then(int_of),
        ) else {
            return unexpected("STATE.LOAD");
        };
        let Some((_, stored)) = entries.first().cloned() else {
            return unexpected("STATE.LOAD");
        };
        let version = data.get(3).and_then(int_of).unwrap_or(0);
        let (value, meta) = match self.decode_chain(&entries).await {
            Ok(Some(Version { value, mut meta })) => {
                // History entries written before format 2 keep version 0 in their header;
                // the script names the version.
                if meta.version == 0 {
                    meta.version = version as u32;
                }
                (Bytes::from(value), Some(meta))
            }
            Ok(None) => (stored.clone(), None),
            Err(e) => {
                self.engine
                    .totals
                    .corruptions
                    .fetch_add(1, Ordering::Relaxed);
                crate::telemetry::checksum_failure();
                tracing::warn!(key = %show_key(key), error = %e, "state value failed verification");
                return error(&StateEngine::damaged_error(key, &e.error));
            }
        };
        let ttl = if pttl < 0 { pttl } else { (pttl + 999) / 1000 };
        let mut fields = vec![(Value::text("value"), Value::Bulk(value))];
        fields.extend(meta_fields(meta.as_ref(), stored.len(), &tags));
        fields.push((Value::text("ttl"), Value::Int(ttl)));
        Value::Map(fields).encode(self.proto)
    }

    pub(super) fn versions(&self, reply: Bytes) -> Bytes {
        let Some(BytesFrame::Array { data, .. }) = decode_reply(&reply) else {
            return unexpected("STATE.VERSIONS");
        };
        let current = data
            .get(1)
            .and_then(bulk_of)
            .flatten()
            .and_then(|h| envelope::inspect(&h).ok().flatten())
            .map(|m| m.version);
        let Some(BytesFrame::Array { data: list, .. }) = data.first() else {
            return unexpected("STATE.VERSIONS");
        };
        let mut listed = Vec::new();
        for entry in list {
            let BytesFrame::Array { data: e, .. } = entry else {
                continue;
            };
            let (Some(v), Some(Some(header)), Some(stored_len), Some(Some(tags))) = (
                e.first().and_then(int_of),
                e.get(1).and_then(bulk_of),
                e.get(2).and_then(int_of),
                e.get(3).and_then(bulk_of),
            ) else {
                continue;
            };
            listed.push((v, envelope::inspect(&header), stored_len, tags));
        }
        let mut headers = kept_bases(data.get(2));
        for (v, header, _, _) in &listed {
            headers.insert(*v, header.clone());
        }
        let readable = readable_versions(&headers);
        let mut out = Vec::new();
        for (v, header, stored_len, tags) in listed {
            let meta = header.ok().flatten();
            let mut fields = meta_fields(meta.as_ref(), stored_len as usize, &tags);
            fields[0] = (Value::text("version"), Value::Int(v));
            fields.push((
                Value::text("current"),
                Value::Int((current == Some(v as u32)) as i64),
            ));
            let intact = readable.get(&v).copied().unwrap_or(false);
            fields.push((Value::text("intact"), Value::Int(intact as i64)));
            out.push(Value::Map(fields));
        }
        Value::Array(out).encode(self.proto)
    }
}

/// What `envelope::inspect` says of a stored version's first bytes: Ok(Some) an envelope,
/// Ok(None) a value without one (written around statecar, read as it is), Err damaged.
type Header = Result<Option<Meta>, envelope::EnvelopeError>;

/// The headers of the versions kept only as bases, from STATE.VERSIONS's third element
/// (absent in a reply of an older library: then none).
fn kept_bases(frame: Option<&BytesFrame>) -> BTreeMap<i64, Header> {
    let mut kept = BTreeMap::new();
    let Some(BytesFrame::Array { data, .. }) = frame else {
        return kept;
    };
    for entry in data {
        let BytesFrame::Array { data: e, .. } = entry else {
            continue;
        };
        if let (Some(v), Some(Some(header))) =
            (e.first().and_then(int_of), e.get(1).and_then(bulk_of))
        {
            kept.insert(v, envelope::inspect(&header));
        }
    }
    kept
}

/// Which versions STATE.LOAD can read, as far as their headers tell: a value without an
/// envelope, or an envelope whose header verifies and which, if it is a delta, finds its base
/// there with the checksum it names, itself readable. Deltas point to newer versions only, so
/// one pass from the newest settles every chain. (A damaged payload shows only when it is
/// decoded: STATE.LOAD, `statecar verify`.)
fn readable_versions(headers: &BTreeMap<i64, Header>) -> BTreeMap<i64, bool> {
    let mut readable = BTreeMap::new();
    for (&v, header) in headers.iter().rev() {
        let ok = match header {
            Err(_) => false,
            Ok(None) => true,
            Ok(Some(m)) => m.base.as_ref().is_none_or(|base| {
                let b = i64::from(base.version);
                readable.get(&b).copied().unwrap_or(false)
                    && matches!(headers.get(&b), Some(Ok(Some(bm))) if bm.crc32 == base.crc32)
            }),
        };
        readable.insert(v, ok);
    }
    readable
}

/// The `<v>` fields and the kept bases (`d<v>`) of a history hash's HGETALL.
fn history_fields(flat: &[BytesFrame]) -> (BTreeMap<u32, Bytes>, BTreeMap<u32, Bytes>) {
    let (mut live, mut kept) = (BTreeMap::new(), BTreeMap::new());
    for pair in flat.chunks(2) {
        let [k, v] = pair else { continue };
        let (Some(Some(k)), Some(Some(v))) = (bulk_of(k), bulk_of(v)) else {
            continue;
        };
        let name = String::from_utf8_lossy(&k);
        if let Ok(n) = name.parse::<u32>() {
            live.insert(n, v);
        } else if let Some(n) = name.strip_prefix('d').and_then(|n| n.parse::<u32>().ok()) {
            kept.insert(n, v);
        }
    }
    (live, kept)
}

/// `{version, bytes, ...}` as (version, bytes) pairs.
fn entry_pairs(frame: Option<&BytesFrame>) -> Option<Vec<(u32, Bytes)>> {
    let Some(BytesFrame::Array { data, .. }) = frame else {
        return None;
    };
    data.chunks(2)
        .map(|p| match p {
            [v, b] => Some((u32::try_from(int_of(v)?).ok()?, bulk_of(b)??)),
            _ => None,
        })
        .collect()
}

/// Tags are stored in the history hash as `<len>:<bytes>` runs, so any byte may appear in one.
pub fn encode_tags(tags: &[Bytes]) -> Bytes {
    let mut out = BytesMut::new();
    for t in tags {
        out.extend_from_slice(t.len().to_string().as_bytes());
        out.extend_from_slice(b":");
        out.extend_from_slice(t);
    }
    out.freeze()
}

/// Inverse of [`encode_tags`]; a damaged blob yields the tags read so far.
pub fn decode_tags(blob: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < blob.len() {
        let Some(colon) = blob[i..].iter().position(|&c| c == b':') else {
            break;
        };
        let Some(len) = std::str::from_utf8(&blob[i..i + colon])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        let start = i + colon + 1;
        if start + len > blob.len() {
            break;
        }
        out.push(Bytes::copy_from_slice(&blob[start..start + len]));
        i = start + len;
    }
    out
}

fn meta_fields(meta: Option<&Meta>, stored_len: usize, tags: &[u8]) -> Vec<(Value, Value)> {
    let (version, created, size, codec, checksum) = match meta {
        Some(m) => (
            m.version as i64,
            Value::Int(m.timestamp_ms as i64),
            m.original_len as i64,
            m.codec.name(),
            Value::text(&format!("{:08x}", m.crc32)),
        ),
        None => (0, Value::Null, stored_len as i64, "plain", Value::Null),
    };
    vec![
        (Value::text("version"), Value::Int(version)),
        (Value::text("created"), created),
        (Value::text("size"), Value::Int(size)),
        (Value::text("stored_size"), Value::Int(stored_len as i64)),
        (Value::text("codec"), Value::text(codec)),
        (Value::text("checksum"), checksum),
        (
            Value::text("tags"),
            Value::Array(decode_tags(tags).into_iter().map(Value::Bulk).collect()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip_any_bytes() {
        let tags = vec![
            Bytes::from_static(b"a:b"),
            Bytes::from_static(b""),
            Bytes::from_static(b"\r\n9:"),
        ];
        assert_eq!(decode_tags(&encode_tags(&tags)), tags);
    }
}
