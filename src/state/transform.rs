//! The reply path for state keys: turns what Redis holds back into what the client wrote.
//!
//! Each command that touches a state key is sent upstream as exactly one command (a plain read
//! or a Lua script), in its place in the client's pipeline, together with a [`Transform`] that
//! reshapes its reply. Keeping it to one upstream command per client command keeps ordering,
//! pipelining and MULTI/EXEC exactly as Redis has them.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};

use super::envelope::{self, Decoded, Meta};
use super::keys::history_key;
use super::rules::OnCorruption;
use super::scripts::ScriptKind;
use super::{ReadValue, StateEngine, show_key};
use crate::protocol::encode_multibulk;
use crate::protocol::frames::decode as decode_reply;
use crate::protocol::reply::{Value, error};

/// The follow-ups a reshape may need (a NOSCRIPT retry, the history read of a fallback to the
/// newest intact version) go to Redis on the connection the command went to. The session
/// provides this; the state layer knows commands, not connections.
pub trait FollowUp: Send + Sync {
    /// Sends one command and returns its reply frame, or the error line the client should get.
    fn call(
        &self,
        cmd: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, Bytes>> + Send + '_>>;
}

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
    /// The WRITE script's `{done, old, version}`.
    Write {
        /// The (first) key written.
        key: Bytes,
        /// What the client's command returns.
        shape: WriteShape,
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

fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-') | Some(b'!'))
}

fn bulk_of(frame: &BytesFrame) -> Option<Option<Bytes>> {
    match frame {
        BytesFrame::Null => Some(None),
        BytesFrame::BlobString { data, .. } | BytesFrame::SimpleString { data, .. } => {
            Some(Some(data.clone()))
        }
        _ => None,
    }
}

fn int_of(frame: &BytesFrame) -> Option<i64> {
    match frame {
        BytesFrame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

fn unexpected(what: &str) -> Bytes {
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

/// A transform bound to what it needs to run on the reply path (writer or pinned relay).
pub struct Reshape {
    /// The transform and retry data.
    pub pending: Box<Pending>,
    /// Rules, limits, counters.
    pub engine: std::sync::Arc<StateEngine>,
    /// The client's RESP version at the time of the command.
    pub proto: u8,
    /// For follow-ups.
    pub conn: Option<std::sync::Arc<dyn FollowUp>>,
}

impl Reshape {
    /// Reshapes one reply frame.
    pub async fn apply(&self, reply: Bytes) -> Bytes {
        Apply {
            engine: &self.engine,
            proto: self.proto,
            conn: self.conn.as_deref(),
        }
        .run(&self.pending, reply)
        .await
    }
}

/// Context for applying a transform.
pub struct Apply<'a> {
    /// The engine (rules, limits, counters).
    pub engine: &'a StateEngine,
    /// The client's RESP version.
    pub proto: u8,
    /// A shared connection for follow-ups (NOSCRIPT retry, previous-version fallback).
    pub conn: Option<&'a dyn FollowUp>,
}

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
                Transform::Value { key } => self.value(key, reply).await,
                Transform::Range { key, start, end } => self.range(key, *start, *end, reply).await,
                Transform::Values { keys } => self.values(keys, reply).await,
                Transform::Strlen { key } => self.strlen(key, reply),
                Transform::Write { key, shape } => self.write(key, *shape, reply).await,
                Transform::Load { key } => self.load(key, reply),
                Transform::Versions => self.versions(reply),
                Transform::List => self.list(reply),
                Transform::Stats => self.stats(reply),
                Transform::Exec(items) => self.exec(items, reply).await,
                Transform::Fixed(v) => v.encode(self.proto),
            }
        })
    }

    fn bulk(&self, v: Option<Bytes>) -> Bytes {
        match v {
            Some(b) => Value::Bulk(b).encode(self.proto),
            None => Value::Null.encode(self.proto),
        }
    }

    /// Decodes a stored value, falling back to the newest intact version where configured.
    async fn read(&self, key: &Bytes, stored: Bytes) -> Result<Bytes, Bytes> {
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

    async fn newest_intact(&self, key: &Bytes) -> Option<Bytes> {
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
        let mut versions: Vec<(u64, Bytes)> = Vec::new();
        for pair in flat.chunks(2) {
            let [k, v] = pair else { continue };
            let (Some(Some(k)), Some(Some(v))) = (bulk_of(k), bulk_of(v)) else {
                continue;
            };
            if let Some(n) = std::str::from_utf8(&k)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                versions.push((n, v));
            }
        }
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        for (_, stored) in versions {
            if let Ok(Decoded::State { value, .. }) =
                envelope::decode(&stored, self.engine.max_decoded)
            {
                return Some(Bytes::from(value));
            }
        }
        None
    }

    async fn value(&self, key: &Bytes, reply: Bytes) -> Bytes {
        // An intact value needs no parser; a damaged one goes the slow way, which reports it.
        if let Some(stored) = bulk_payload(&reply)
            && let Some(frame) = self.engine.decode_frame(stored, &reply)
        {
            return frame;
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

    async fn write(&self, key: &Bytes, shape: WriteShape, reply: Bytes) -> Bytes {
        let Some(BytesFrame::Array { data, .. }) = decode_reply(&reply) else {
            return unexpected("a state write");
        };
        let done = data.first().and_then(int_of).unwrap_or(0);
        let version = data.get(2).and_then(int_of).unwrap_or(0);
        if version > 0 {
            crate::telemetry::version_written(data.get(3).and_then(int_of).unwrap_or(0));
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

    fn load(&self, key: &Bytes, reply: Bytes) -> Bytes {
        let f = decode_reply(&reply);
        let Some(BytesFrame::Array { data, .. }) = f else {
            return match f {
                Some(BytesFrame::Null) => Value::Null.encode(self.proto),
                _ => unexpected("STATE.LOAD"),
            };
        };
        let (Some(Some(stored)), Some(Some(tags)), Some(pttl)) = (
            data.first().and_then(bulk_of),
            data.get(1).and_then(bulk_of),
            data.get(2).and_then(int_of),
        ) else {
            return unexpected("STATE.LOAD");
        };
        let version = data.get(3).and_then(int_of).unwrap_or(0);
        let (value, meta) = match envelope::decode(&stored, self.engine.max_decoded) {
            Ok(Decoded::State { value, mut meta }) => {
                // History entries keep version 0 in their header; the script names the version.
                if meta.version == 0 {
                    meta.version = version as u32;
                }
                (Bytes::from(value), Some(meta))
            }
            Ok(Decoded::Plain) => (stored.clone(), None),
            Err(e) => {
                self.engine.decode(key, &stored);
                return error(&StateEngine::damaged_error(key, &e));
            }
        };
        let ttl = if pttl < 0 { pttl } else { (pttl + 999) / 1000 };
        let mut fields = vec![(Value::text("value"), Value::Bulk(value))];
        fields.extend(meta_fields(meta.as_ref(), stored.len(), &tags));
        fields.push((Value::text("ttl"), Value::Int(ttl)));
        Value::Map(fields).encode(self.proto)
    }

    fn versions(&self, reply: Bytes) -> Bytes {
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
        let mut out = Vec::new();
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
            let meta = envelope::inspect(&header).ok().flatten();
            let mut fields = meta_fields(meta.as_ref(), stored_len as usize, &tags);
            fields[0] = (Value::text("version"), Value::Int(v));
            fields.push((
                Value::text("current"),
                Value::Int((current == Some(v as u32)) as i64),
            ));
            fields.push((Value::text("intact"), Value::Int(meta.is_some() as i64)));
            out.push(Value::Map(fields));
        }
        Value::Array(out).encode(self.proto)
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
        for (e, t) in elements.into_iter().zip(items) {
            match t {
                Some(t) => out.extend_from_slice(&self.transform(t, e).await),
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
