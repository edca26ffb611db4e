//! The reply path for state keys: turns what Redis holds back into what the client wrote
//! (replies that read the version history are in `history_replies.rs`).
//!
//! Each command that touches a state key is sent upstream as exactly one command (a plain read
//! or a Lua script), in its place in the client's pipeline, together with a [`Transform`] that
//! reshapes its reply. Keeping it to one upstream command per client command keeps ordering,
//! pipelining and MULTI/EXEC exactly as Redis has them.

mod history;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::envelope::{self, HEADER_LEN, Meta};
use super::followup::Link;
use super::followup::{self, dicts_needed, load_dicts};
use super::rules::OnCorruption;
use super::scripts::ScriptKind;
use super::{ReadValue, StateEngine, show_key};
use crate::protocol::frames::decode as decode_reply;
use crate::protocol::reply::{Value, error};

/// What the reply of a state write becomes for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteShape {
    /// `+OK` (SETEX, PSETEX, MSET).
    Ok,
    /// `+OK`, or nil when NX/XX prevented the write (SET).
    OkOrNil,
    /// The previous value (SET ... GET, GETSET).
    Old,
    /// 1 or 0 (SETNX, MSETNX).
    Int,
    /// The version number written (STATE.SAVE).
    Version,
}

/// How to reshape one reply.
#[derive(Debug, Clone)]
pub enum Transform {
    /// One stored value (GET, GETDEL, GETEX).
    Value {
        /// The key it came from.
        key: Bytes,
    },
    /// GETRANGE/SUBSTR, computed on the decoded value.
    Range {
        /// The key.
        key: Bytes,
        /// Redis-style inclusive range.
        start: i64,
        /// End of the range.
        end: i64,
    },
    /// MGET: the positions that hold state keys.
    Values {
        /// `Some(key)` for state keys.
        keys: Vec<Option<Bytes>>,
    },
    /// STRLEN: original length from the header.
    Strlen {
        /// The key.
        key: Bytes,
    },
    /// The WRITE script's `{done, old, version, trimmed, versions, deltas}`.
    Write {
        /// The (first) key written.
        key: Bytes,
        /// What the client's command returns.
        shape: WriteShape,
        /// For the delta cache, by pair index: what each versioned key now holds.
        notes: Vec<(usize, CacheNote)>,
    },
    /// STATE.ROLLBACK: the version's entries; the transform writes it as the newest version.
    Rollback {
        /// The key.
        key: Bytes,
    },
    /// STATE.TRAIN: SCAN's first reply; the transform reads values, trains and stores.
    Train {
        /// A key of the rule.
        key: Bytes,
        /// How many values to train on.
        samples: usize,
    },
    /// STATE.LOAD
    Load {
        /// The key.
        key: Bytes,
    },
    /// STATE.VERSIONS
    Versions,
    /// STATE.LIST: SCAN's reply filtered to state keys.
    List,
    /// STATE.STATS: INFO memory plus the proxy's totals.
    Stats,
    /// EXEC: one entry per queued command.
    Exec(Vec<Option<Transform>>),
    /// A script whose reply is the client's reply (DEL, EXPIRE, ...).
    Passthrough,
    /// An answer statecar knows itself (STATE.RULE); the upstream command only keeps its place.
    Fixed(Value),
}

/// What a versioned write left in a key, for the delta cache once its version is known.
#[derive(Debug, Clone)]
pub struct CacheNote {
    /// The key.
    pub key: Bytes,
    /// The header written, stamped with `predicted`.
    pub header: [u8; HEADER_LEN],
    /// The value written.
    pub value: Bytes,
    /// The version stamped (0: none; the script stamped the real one).
    pub predicted: u32,
}

/// A transform plus what is needed to re-send its script with EVAL if Redis lost it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The reshaping.
    pub transform: Transform,
    /// The script call, for NOSCRIPT.
    pub retry: Option<Box<ScriptCall>>,
}

/// A script invocation, kept so it can be re-sent as EVAL.
#[derive(Debug, Clone)]
pub struct ScriptCall {
    /// Which script.
    pub script: ScriptKind,
    /// Its KEYS.
    pub keys: Vec<Bytes>,
    /// Its ARGV.
    pub args: Vec<Bytes>,
}

pub use crate::protocol::frames::split_array;

use crate::protocol::frames::bulk_payload;

pub(super) fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-') | Some(b'!'))
}

pub(super) fn bulk_of(frame: &BytesFrame) -> Option<Option<Bytes>> {
    match frame {
        BytesFrame::Null => Some(None),
        BytesFrame::BlobString { data, .. } | BytesFrame::SimpleString { data, .. } => {
            Some(Some(data.clone()))
        }
        _ => None,
    }
}

pub(super) fn int_of(frame: &BytesFrame) -> Option<i64> {
    match frame {
        BytesFrame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

pub(super) fn unexpected(what: &str) -> Bytes {
    error(&format!(
        "ERR statecar: unexpected reply from Redis to {what}"
    ))
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

pub(super) fn meta_fields(
    meta: Option<&Meta>,
    stored_len: usize,
    tags: &[u8],
) -> Vec<(Value, Value)> {
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

/// A transform bound to what it needs to run on the reply path (writer or pinned relay).
pub struct Reshape {
    /// The transform and retry data.
    pub pending: Box<Pending>,
    /// Rules, limits, counters.
    pub engine: std::sync::Arc<StateEngine>,
    /// The client's RESP version at the time of the command.
    pub proto: u8,
    /// For follow-ups.
    pub conn: Option<Link>,
}

impl Reshape {
    /// Reshapes one reply frame.
    pub async fn apply(&self, reply: Bytes) -> Bytes {
        Apply {
            engine: &self.engine,
            proto: self.proto,
            conn: self.conn.as_ref(),
            in_exec: false,
        }
        .run(&self.pending, reply)
        .await
    }
}

/// Context for applying a transform.
pub struct Apply<'a> {
    /// The engine (rules, limits, counters).
    pub engine: &'a Arc<StateEngine>,
    /// The client's RESP version.
    pub proto: u8,
    /// A shared connection for follow-ups (NOSCRIPT retry, previous-version fallback,
    /// dictionaries, the second step of STATE.ROLLBACK).
    pub conn: Option<&'a Link>,
    /// Reshaping an element of an EXEC reply: no follow-up may write (it would run outside
    /// the transaction).
    pub in_exec: bool,
}

/// Stored values at least this long are decoded on the blocking pool, not on the thread that
/// serves other clients' replies.
pub(super) const DECODE_OFF_THREAD: usize = 1 << 20;

impl Apply<'_> {
    /// Applies `p` to one reply frame.
    pub async fn run(&self, p: &Pending, reply: Bytes) -> Bytes {
        // The common case, a state GET: a plain read, so neither of the script cases below
        // applies, and no boxed future for it.
        if let Transform::Value { key } = &p.transform {
            return self.value(key, reply).await;
        }
        if reply.starts_with(b"-ERR Function not found") {
            // Commands pipelined behind this one have run already, so re-running it now could
            // put it after a read of the same key that the client sent later. It did not run:
            // say so, and load the library again for the next ones.
            tracing::warn!(
                "Redis lost statecar's function library (FUNCTION FLUSH?); loading it again"
            );
            if let Some(conn) = self.conn {
                let _ = conn.call(self.engine.scripts.function_load.clone()).await;
            }
            return error(
                "ERR statecar: Redis lost statecar's function library (FUNCTION FLUSH or DELETE?); \
                 it is loaded again, and this command did not run: retry it",
            );
        }
        let reply = if reply.starts_with(b"-NOSCRIPT")
            && let (Some(retry), Some(conn)) = (&p.retry, self.conn)
        {
            tracing::info!("Redis lost the statecar scripts (SCRIPT FLUSH?); resending with EVAL");
            let cmd = self
                .engine
                .scripts
                .get(retry.script)
                .eval(&retry.keys, &retry.args);
            match conn.call(cmd).await {
                Ok(b) => b,
                Err(e) => e,
            }
        } else {
            reply
        };
        self.transform(&p.transform, reply).await
    }

    fn transform<'s>(
        &'s self,
        t: &'s Transform,
        reply: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Bytes> + Send + 's>> {
        Box::pin(async move {
            if is_error(&reply) {
                return reply;
            }
            match t {
                Transform::Passthrough => reply,
                Transform::Fixed(v) => v.encode(self.proto),
                Transform::Value { key } => self.value(key, reply).await,
                Transform::Range { key, start, end } => self.range(key, *start, *end, reply).await,
                Transform::Values { keys } => self.values(keys, reply).await,
                Transform::Strlen { key } => self.strlen(key, reply),
                Transform::Write { key, shape, notes } => {
                    self.write(key, *shape, notes, reply).await
                }
                Transform::Rollback { key } => self.rollback(key, reply).await,
                Transform::Train { key, samples } => self.train(key, *samples, reply).await,
                Transform::Load { key } => self.load(key, reply).await,
                Transform::Versions => self.versions(reply),
                Transform::List => self.list(reply),
                Transform::Stats => self.stats(reply),
                Transform::Exec(items) => self.exec(items, reply).await,
            }
        })
    }

    pub(super) fn bulk(&self, v: Option<Bytes>) -> Bytes {
        match v {
            Some(b) => Value::Bulk(b).encode(self.proto),
            None => Value::Null.encode(self.proto),
        }
    }

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

    async fn value(&self, key: &Bytes, reply: Bytes) -> Bytes {
        // An intact value needs no parser; a damaged one goes the slow way, which reports it.
        if let Some(stored) = bulk_payload(&reply) {
            if let Some(frame) = self.engine.cached_frame(key, stored) {
                return frame;
            }
            let at = stored.as_ptr() as usize - reply.as_ptr() as usize;
            let span = at..at + stored.len();
            let frame = if stored.len() >= DECODE_OFF_THREAD {
                let (engine, r, sp) = (self.engine.clone(), reply.clone(), span.clone());
                tokio::task::spawn_blocking(move || engine.decode_frame(&r[sp], &r))
                    .await
                    .ok()
                    .flatten()
            } else {
                self.engine.decode_frame(stored, &reply)
            };
            if let Some(frame) = frame {
                if !std::ptr::eq(frame.as_ptr(), reply.as_ptr()) {
                    self.engine.remember(key, &reply[span], frame.clone());
                }
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

    async fn range(&self, key: &Bytes, start: i64, end: i64, reply: Bytes) -> Bytes {
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

    async fn values(&self, keys: &[Option<Bytes>], reply: Bytes) -> Bytes {
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

    fn strlen(&self, key: &Bytes, reply: Bytes) -> Bytes {
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

    pub(super) async fn write(
        &self,
        key: &Bytes,
        shape: WriteShape,
        notes: &[(usize, CacheNote)],
        reply: Bytes,
    ) -> Bytes {
        let Some(BytesFrame::Array { data, .. }) = decode_reply(&reply) else {
            self.forget_notes(notes);
            return unexpected("a state write");
        };
        let done = data.first().and_then(int_of).unwrap_or(0);
        let version = data.get(2).and_then(int_of).unwrap_or(0);
        if version > 0 {
            crate::telemetry::version_written(data.get(3).and_then(int_of).unwrap_or(0));
        }
        let list = |i: usize| -> Vec<i64> {
            match data.get(i) {
                Some(BytesFrame::Array { data, .. }) => data.iter().filter_map(int_of).collect(),
                _ => Vec::new(),
            }
        };
        let (versions, used) = (list(4), list(5));
        let t = &self.engine.totals;
        for (v, u) in versions.iter().zip(&used) {
            if *u == 1 {
                t.deltas.fetch_add(1, Ordering::Relaxed);
            } else if *v > 1 {
                t.full_copies.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (i, note) in notes {
            match versions.get(*i).and_then(|v| u32::try_from(*v).ok()) {
                Some(v) if done == 1 && v > 0 => self.note_written(note, v),
                _ => self.forget_note(note),
            }
        }
        if done == 1
            && let Some(rule) = self.engine.rule_for(key)
        {
            followup::dictionary_work(self.engine, rule, self.conn);
        }
        match shape {
            WriteShape::Ok => Bytes::from_static(crate::protocol::reply::OK),
            WriteShape::OkOrNil if done == 1 => Bytes::from_static(crate::protocol::reply::OK),
            WriteShape::OkOrNil => Value::Null.encode(self.proto),
            WriteShape::Int => Value::Int(done).encode(self.proto),
            WriteShape::Version => Value::Int(version).encode(self.proto),
            WriteShape::Old => match data.get(1).and_then(bulk_of) {
                Some(Some(stored)) => match self.read(key, stored).await {
                    Ok(v) => self.bulk(Some(v)),
                    Err(e) => e,
                },
                _ => Value::Null.encode(self.proto),
            },
        }
    }

    /// A versioned write took version `v`: its value is the key's delta base from now on.
    pub(super) fn note_written(&self, note: &CacheNote, v: u32) {
        if v == note.predicted {
            return; // cached when it was planned
        }
        let Some(cache) = self
            .engine
            .rule_for(&note.key)
            .and_then(|r| self.engine.bases(r))
        else {
            return;
        };
        let mut header = note.header;
        header[envelope::VERSION_OFFSET..HEADER_LEN].copy_from_slice(&envelope::version_patch(v));
        cache.remove_if(&note.key, &note.header);
        cache.put(
            &note.key,
            super::cache::Base::from_value(header, v, &note.value),
        );
    }

    /// A write that did not happen: its value must not stay cached as the key's.
    pub(super) fn forget_note(&self, note: &CacheNote) {
        if let Some(cache) = self
            .engine
            .rule_for(&note.key)
            .and_then(|r| self.engine.bases(r))
        {
            cache.remove_if(&note.key, &note.header);
        }
    }

    fn forget_notes(&self, notes: &[(usize, CacheNote)]) {
        for (_, n) in notes {
            self.forget_note(n);
        }
    }

    /// STATE.TRAIN: trains the rule's dictionary from its stored values.
    async fn train(&self, key: &Bytes, samples: usize, reply: Bytes) -> Bytes {
        let (Some(rule), Some(conn)) = (self.engine.rule_for(key), self.conn) else {
            return error("ERR statecar: STATE.TRAIN needs a connection to Redis");
        };
        let Some(trainer) = self.engine.trainer(rule) else {
            return error("ERR statecar: internal error: no dictionary for the rule");
        };
        // One training at a time per rule; a background one running counts.
        let Some(work) = trainer.claim() else {
            return error(
                "ERR statecar: a dictionary is being trained for this rule right now; try again",
            );
        };
        let r = followup::train_from_keys(self.engine, rule, conn, reply, samples).await;
        trainer.done(work, r.is_ok());
        match r {
            Ok(id) => Value::Int(i64::from(id)).encode(self.proto),
            Err(e) => error(&format!("ERR statecar: {e}")),
        }
    }

    fn list(&self, reply: Bytes) -> Bytes {
        let Some(BytesFrame::Array { data, .. }) = decode_reply(&reply) else {
            return unexpected("SCAN");
        };
        let (Some(Some(cursor)), Some(BytesFrame::Array { data: keys, .. })) =
            (data.first().and_then(bulk_of), data.get(1))
        else {
            return unexpected("SCAN");
        };
        let keys: Vec<Value> = keys
            .iter()
            .filter_map(|k| k.as_bytes())
            .filter(|k| self.engine.rule_for(k).is_some())
            .map(|k| Value::Bulk(Bytes::copy_from_slice(k)))
            .collect();
        Value::Array(vec![Value::Bulk(cursor), Value::Array(keys)]).encode(self.proto)
    }

    fn stats(&self, reply: Bytes) -> Bytes {
        use std::sync::atomic::Ordering::Relaxed;
        let info = decode_reply(&reply)
            .and_then(|f| {
                f.as_bytes()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            })
            .unwrap_or_default();
        let t = &self.engine.totals;
        let bytes_in = t.bytes_in.load(Relaxed);
        let stored = t.bytes_stored.load(Relaxed);
        let ratio = if stored > 0 {
            format!("{:.3}", bytes_in as f64 / stored as f64)
        } else {
            "0".to_string()
        };
        let mut fields = vec![
            (
                Value::text("rules"),
                Value::Int(self.engine.rules.len() as i64),
            ),
            (
                Value::text("writes"),
                Value::Int(t.writes.load(Relaxed) as i64),
            ),
            (
                Value::text("reads"),
                Value::Int(t.reads.load(Relaxed) as i64),
            ),
            (Value::text("bytes_written"), Value::Int(bytes_in as i64)),
            (Value::text("bytes_stored"), Value::Int(stored as i64)),
            (Value::text("compression_ratio"), Value::text(&ratio)),
            (
                Value::text("checksum_failures"),
                Value::Int(t.corruptions.load(Relaxed) as i64),
            ),
            (
                Value::text("previous_version_fallbacks"),
                Value::Int(t.fallbacks.load(Relaxed) as i64),
            ),
            (
                Value::text("versions_stored_as_deltas"),
                Value::Int(t.deltas.load(Relaxed) as i64),
            ),
            (
                Value::text("versions_stored_whole"),
                Value::Int(t.full_copies.load(Relaxed) as i64),
            ),
            (
                Value::text("dictionary_writes"),
                Value::Int(t.dict_writes.load(Relaxed) as i64),
            ),
            (
                Value::text("dictionaries_trained"),
                Value::Int(t.dicts_trained.load(Relaxed) as i64),
            ),
        ];
        for line in info.lines() {
            if let Some((k, v)) = line.trim().split_once(':')
                && matches!(
                    k,
                    "used_memory"
                        | "used_memory_human"
                        | "used_memory_peak"
                        | "used_memory_dataset"
                        | "maxmemory"
                        | "maxmemory_policy"
                        | "mem_fragmentation_ratio"
                )
            {
                let name = format!("upstream_{k}");
                let val = v
                    .parse::<i64>()
                    .map(Value::Int)
                    .unwrap_or_else(|_| Value::text(v));
                fields.push((Value::text(&name), val));
            }
        }
        Value::Map(fields).encode(self.proto)
    }

    async fn exec(&self, items: &[Option<Transform>], reply: Bytes) -> Bytes {
        let Some(elements) = split_array(&reply) else {
            // nil (WATCH abort) or an error: nothing to reshape.
            return reply;
        };
        if elements.len() != items.len() {
            return reply;
        }
        let mut out = BytesMut::new();
        out.extend_from_slice(format!("*{}\r\n", elements.len()).as_bytes());
        let inner = Apply {
            engine: self.engine,
            proto: self.proto,
            conn: self.conn,
            in_exec: true,
        };
        for (e, t) in elements.into_iter().zip(items) {
            match t {
                Some(t) => out.extend_from_slice(&inner.transform(t, e).await),
                None => out.extend_from_slice(&e),
            }
        }
        out.freeze()
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
    fn tags_round_trip_any_bytes() {
        let tags = vec![
            Bytes::from_static(b"a:b"),
            Bytes::from_static(b""),
            Bytes::from_static(b"\r\n9:"),
        ];
        assert_eq!(decode_tags(&encode_tags(&tags)), tags);
    }

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

    #[test]
    fn reads_bulk_payloads_without_a_parser() {
        assert_eq!(bulk_payload(b"$3\r\nabc\r\n"), Some(&b"abc"[..]));
        assert_eq!(bulk_payload(b"$0\r\n\r\n"), Some(&b""[..]));
        assert_eq!(bulk_payload(b"$-1\r\n"), None);
        assert_eq!(bulk_payload(b"$3\r\nabcd\r\n"), None);
        assert_eq!(bulk_payload(b"$3\r\nab\r\n"), None);
        assert_eq!(bulk_payload(b"$3\r\nabcXY"), None);
        assert_eq!(bulk_payload(b"$\r\n\r\n"), None);
        assert_eq!(bulk_payload(b"+OK\r\n"), None);
        assert_eq!(bulk_payload(b"$99999999999999\r\nx\r\n"), None);
    }

    #[test]
    fn splits_arrays_into_frames() {
        let f = Bytes::from_static(b"*3\r\n$1\r\na\r\n$-1\r\n*1\r\n:1\r\n");
        let parts = split_array(&f).unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(&parts[1][..], b"$-1\r\n");
        assert_eq!(&parts[2][..], b"*1\r\n:1\r\n");
    }
}
