//! State keys: which keys they are (rules, glob), how their values are stored (codec,
//! envelope, dict), how versions are kept (scripts, keys, history, and the delta bases in
//! cache), what each command becomes upstream (plan), and how replies are turned back into
//! what the client wrote (transform).

pub mod cache;
pub mod codec;
pub mod dict;
pub mod envelope;
pub mod followup;
pub mod glob;
pub mod history;
pub mod keys;
pub mod plan;
pub mod rules;
pub mod scripts;
pub mod transform;

/// Realistic test data (agent sessions, checkpoints, small documents), shared with the tests and
/// benchmarks; not part of the library.
#[cfg(test)]
#[allow(dead_code)]
#[path = "../../tests/common/agent_data.rs"]
pub(crate) mod sample;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use cache::{Base, BaseCache, Chunked, ReplyFrame};
use codec::Codec;
use codec::chunked::{Chunk, Outcome};
use dict::Trainer;
use envelope::{Decoded, DictRef, Encoding, EnvelopeError, HEADER_LEN, Refs};
use rules::{Rule, Rules};
use scripts::Scripts;

/// Running totals for STATE.STATS (Prometheus has the same figures with labels).
#[derive(Default)]
pub struct Totals {
    /// Older versions stored as deltas.
    pub deltas: AtomicU64,
    /// Older versions stored whole (no base cached, another writer in between, or a periodic
    /// full version).
    pub full_copies: AtomicU64,
    /// Values written compressed with a trained dictionary.
    pub dict_writes: AtomicU64,
    /// Dictionaries trained by this process.
    pub dicts_trained: AtomicU64,
    /// State values written.
    pub writes: AtomicU64,
    /// State values read and verified.
    pub reads: AtomicU64,
    /// Bytes clients wrote to state keys.
    pub bytes_in: AtomicU64,
    /// Bytes those values take in Redis.
    pub bytes_stored: AtomicU64,
    /// Values that failed verification.
    pub corruptions: AtomicU64,
    /// Reads answered from an older version because the newest was damaged.
    pub fallbacks: AtomicU64,
    /// Bytes of big values whose compressed chunks were copied from the key's previous
    /// version instead of compressed again (`codec::chunked`).
    pub chunk_bytes_reused: AtomicU64,
    /// Big values uploaded to a staging key before their write script, which renamed them
    /// into place (`session/stage.rs`).
    pub values_staged: AtomicU64,
}

/// Everything a session needs to treat state keys.
pub struct StateEngine {
    /// The configured rules.
    pub rules: Rules,
    /// Largest value we will decode.
    pub max_decoded: usize,
    /// The Lua scripts.
    pub scripts: Scripts,
    /// Counters for STATE.STATS, kept across configuration reloads.
    pub totals: Arc<Totals>,
    /// Per rule (by index): the current values kept as delta bases (rules with deltas).
    bases: Vec<Option<BaseCache>>,
    /// Per rule (by index): the dictionary in use and its training (`dictionary = "auto"`).
    trainers: Vec<Option<Trainer>>,
}

/// Values at least this long are encoded with their two compressions (whole, and the
/// replaced version as a delta) on two threads.
pub const PARALLEL_ENCODE: usize = 1 << 20;

/// A versioned write's new value at least this long is compressed in chunks whose frames its
/// next version can reuse (`codec::chunked`): an 8 MB checkpoint then costs the compression
/// of the few chunks a step changed instead of all of it.
pub const CHUNKED_VALUE: usize = codec::PARALLEL_FRAMES;

/// A versioned write, encoded (see [`StateEngine::encode_write`]).
pub struct EncodedWrite {
    /// The new value's envelope.
    pub stored: Bytes,
    /// The header the key must hold for `delta` to be stored (empty: no delta).
    pub base_header: Bytes,
    /// The replaced version as a delta against the new value (empty: none).
    pub delta: Bytes,
    /// The version stamped into `stored` (0: unknown, the script stamps it).
    pub predicted: u32,
    /// The first 36 bytes of `stored`, for the cache once the version is known.
    pub header: [u8; HEADER_LEN],
    /// `stored`'s chunks when it is a big value compressed in chunks (`codec::chunked`), for
    /// the cache once the version is known.
    pub chunks: Option<Arc<Chunked>>,
}

/// What a write's compressions made, before the write is counted and cached.
struct Encoded {
    /// The new value's envelope.
    stored: Vec<u8>,
    /// Its chunks, when it was compressed in chunks.
    chunks: Option<Vec<Chunk>>,
    /// The value's reply frame, when it was already copied into one for the cache.
    frame: Option<ReplyFrame>,
    /// The replaced version as a delta against the new value.
    delta: Option<Vec<u8>>,
}

/// A value read back from Redis.
pub enum ReadValue {
    /// What the client wrote (or a legacy plain value, as stored).
    Value(Bytes),
    /// The stored value is damaged.
    Damaged(EnvelopeError),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A key for error messages: printable and bounded.
pub fn show_key(key: &[u8]) -> String {
    let s: String = key.escape_ascii().to_string();
    if s.len() > 200 {
        format!("{}...", &s[..200])
    } else {
        s
    }
}

/// `base`'s value as a delta against `value` (whose CRC-32 is `crc`), the version a write is
/// about to make `predicted`: what the history keeps of the version the write replaces.
fn delta_against(
    rule: &Rule,
    base: &Base,
    value: &[u8],
    crc: u32,
    predicted: u32,
) -> Option<Vec<u8>> {
    let crcs = envelope::Crcs {
        value: base.crc(),
        base: crc,
    };
    envelope::encode_delta_known(
        &base.value(),
        value,
        crcs,
        predicted,
        rule.level,
        base.timestamp_ms(),
        base.version,
    )
}

/// The replaced version of a big value as a chunk map of the new one (`codec::chunk_delta`),
/// when both were cut in chunks: `new` is how the new value was compressed in chunks.
fn chunk_delta_against(
    rule: &Rule,
    base: &Base,
    value: &[u8],
    new: &Outcome,
    crc: u32,
    predicted: u32,
) -> Option<Vec<u8>> {
    let prev = base.previous()?;
    let head = envelope::DeltaHead {
        crcs: envelope::Crcs {
            value: base.crc(),
            base: crc,
        },
        base_version: predicted,
        timestamp_ms: base.timestamp_ms(),
        version: base.version,
    };
    envelope::encode_chunk_delta(
        prev.value,
        prev.chunks,
        value,
        &new.chunks,
        Some(&new.sources),
        rule.level,
        head,
    )
}

impl StateEngine {
    /// Builds the engine from validated configuration.
    pub fn new(rules: Rules, max_decoded: usize) -> StateEngine {
        StateEngine::with_totals(rules, max_decoded, Arc::default())
    }

    /// Builds an engine that continues the counters of a previous one (configuration reload).
    pub fn with_totals(rules: Rules, max_decoded: usize, totals: Arc<Totals>) -> StateEngine {
        let bases = rules
            .iter()
            .map(|r| (r.versioning && r.delta.on).then(|| BaseCache::new(r.delta.cache_bytes)))
            .collect();
        let trainers = rules
            .iter()
            .map(|r| r.dictionary.then(Trainer::default))
            .collect();
        StateEngine {
            rules,
            max_decoded,
            scripts: Scripts::default(),
            totals,
            bases,
            trainers,
        }
    }

    /// The delta bases of `rule`, when it keeps deltas.
    pub fn bases(&self, rule: &Rule) -> Option<&BaseCache> {
        self.bases.get(rule.index).and_then(Option::as_ref)
    }

    /// The dictionary machinery of `rule`, when it has `dictionary = "auto"`.
    pub fn trainer(&self, rule: &Rule) -> Option<&Trainer> {
        self.trainers.get(rule.index).and_then(Option::as_ref)
    }

    /// Encodes `value` (whose CRC-32 is `crc`) whole for `rule`, with the rule's dictionary
    /// when it has one in use.
    fn encode_full(&self, rule: &Rule, value: &[u8], crc: u32, ts: u64, version: u32) -> Vec<u8> {
        let trainer = self.trainer(rule);
        let dict = trainer
            .filter(|_| value.len() <= dict::MAX_DICT_VALUE)
            .and_then(Trainer::active);
        let cdict = dict.as_ref().and_then(|d| d.cdict(rule.level));
        let enc = Encoding {
            codec: rule.codec,
            level: rule.level,
            min_size: rule.min_size,
            dict: match (&dict, &cdict) {
                (Some(d), Some(c)) => Some(DictRef { id: d.id, cdict: c }),
                _ => None,
            },
        };
        let stored = envelope::encode_with_crc(value, &enc, crc, ts, version);
        if let Some(t) = trainer {
            let with_dict = envelope::inspect(&stored)
                .ok()
                .flatten()
                .filter(|m| m.dict.is_some())
                .map(|m| stored.len() - m.header_len);
            if with_dict.is_some() {
                self.totals.dict_writes.fetch_add(1, Ordering::Relaxed);
            }
            t.offer(value, with_dict);
        }
        stored
    }

    /// Encodes a write of `value` to `key` for a versioned `rule`: the new envelope (stamped
    /// with the version it will get if the key still holds the cached base), and, when the
    /// proxy holds the key's current value, that value as a delta against the new one with
    /// the header the write script must find in the key. The new value becomes the key's
    /// cached base at once, so a write pipelined right behind this one finds it.
    pub fn encode_write(&self, rule: &Rule, key: &Bytes, value: &Bytes) -> EncodedWrite {
        let ts = now_ms();
        let cache = self.bases(rule);
        let base = cache.and_then(|c| c.get(key));
        let predicted = base
            .as_ref()
            .and_then(|b| b.version.checked_add(1))
            .unwrap_or(0);
        let wants_delta = base
            .as_ref()
            .filter(|b| predicted > 0 && !rule.full_version(b.version));
        // Both versions' checksums are needed twice (in the envelope and in the delta's
        // header), and are computed once: the base's is in its header.
        let crc = crc32fast::hash(value);
        let delta_of = |b: &Base| delta_against(rule, b, value, crc, predicted);
        let full = || self.encode_whole(rule, value, crc, ts, predicted, base.as_ref());
        // The copy the cache keeps of a big value (2 ms of an 8.5 MB checkpoint's write, with
        // its page faults) is made on a thread of its own while the value is compressed.
        let cached = cache.is_some() && predicted > 0;
        let copy_aside = cached && value.len() >= PARALLEL_ENCODE;
        std::thread::scope(|s| {
            let frame = copy_aside.then(|| s.spawn(|| ReplyFrame::of(value)));
            // A large value's two compressions (whole, and the old value as a delta) run on
            // two threads: the caller is already off the async threads (see `plan_is_heavy`).
            let ((stored, chunks), delta) = match wants_delta {
                // A big value after a version cut in chunks: the replaced version's delta is a map
                // of the new value's chunks, made once they are known; it costs about as much as
                // comparing them, so it needs no thread of its own. zstd's delta if it does not
                // apply.
                Some(b) if value.len() >= CHUNKED_VALUE && b.previous().is_some() => {
                    let (stored, outcome) = full();
                    let delta = outcome
                        .as_ref()
                        .and_then(|o| chunk_delta_against(rule, b, value, o, crc, predicted))
                        .or_else(|| delta_of(b));
                    ((stored, outcome), delta)
                }
                Some(b) if value.len() >= PARALLEL_ENCODE => {
                    let d = s.spawn(|| delta_of(b));
                    let whole = full();
                    (whole, d.join().ok().flatten())
                }
                Some(b) => (full(), delta_of(b)),
                None => (full(), None),
            };
            let frame = frame.and_then(|f| f.join().ok());
            let encoded = Encoded {
                stored,
                chunks: chunks.map(|o| o.chunks),
                frame,
                delta,
            };
            self.finish_write(rule, key, value, encoded, predicted, base.as_ref())
        })
    }

    /// The new value of a versioned write, whole: a big zstd value in chunks that reuse the
    /// frames of the previous version's unchanged chunks (`codec::chunked`), with the chunks
    /// for the next write; anything else as [`encode_full`](Self::encode_full) does.
    fn encode_whole(
        &self,
        rule: &Rule,
        value: &[u8],
        crc: u32,
        ts: u64,
        version: u32,
        base: Option<&Base>,
    ) -> (Vec<u8>, Option<Outcome>) {
        let chunked = value.len() >= CHUNKED_VALUE
            && value.len() >= rule.min_size
            && rule.codec == Codec::Zstd
            && self.trainer(rule).is_none();
        if chunked {
            let prev = base.and_then(Base::previous);
            if let Some((stored, outcome)) =
                envelope::encode_chunked(value, rule.level, crc, prev, ts, version)
            {
                self.totals
                    .chunk_bytes_reused
                    .fetch_add(outcome.reused as u64, Ordering::Relaxed);
                return (stored, Some(outcome));
            }
        }
        (self.encode_full(rule, value, crc, ts, version), None)
    }

    /// No rules: a plain transparent proxy.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule for `key`, if it is a state key. statecar's own keys never are.
    pub fn rule_for(&self, key: &[u8]) -> Option<&Rule> {
        if keys::is_reserved(key) {
            return None;
        }
        self.rules.match_key(key)
    }

    /// Encodes a value for `rule` without a history (the version, if any, is filled in by the
    /// write script).
    pub fn encode(&self, rule: &Rule, value: &[u8]) -> Bytes {
        let stored = self.encode_full(rule, value, crc32fast::hash(value), now_ms(), 0);
        self.count_write(rule, value.len(), stored.len());
        Bytes::from(stored)
    }

    /// Encodes `value` as the version a rollback writes: whole, created when it was first
    /// saved, stamped with the version it will get if the key still holds `base`.
    pub fn encode_rollback(
        &self,
        rule: &Rule,
        key: &Bytes,
        value: &Bytes,
        created_ms: u64,
        base: Option<&Base>,
    ) -> EncodedWrite {
        let predicted = base.and_then(|b| b.version.checked_add(1)).unwrap_or(0);
        let crc = crc32fast::hash(value);
        let stored = self.encode_full(rule, value, crc, created_ms, predicted);
        let delta = base
            .filter(|b| rule.delta.on && predicted > 0 && !rule.full_version(b.version))
            .and_then(|b| delta_against(rule, b, value, crc, predicted));
        let encoded = Encoded {
            stored,
            chunks: None,
            frame: None,
            delta,
        };
        self.finish_write(rule, key, value, encoded, predicted, base)
    }

    /// What both kinds of write end with: the write counted, the new value made the key's
    /// cached base (when its version is predicted), and the delta paired with the header of
    /// the base it was made from.
    fn finish_write(
        &self,
        rule: &Rule,
        key: &Bytes,
        value: &Bytes,
        encoded: Encoded,
        predicted: u32,
        base: Option<&Base>,
    ) -> EncodedWrite {
        let Encoded {
            stored,
            chunks,
            frame,
            delta,
        } = encoded;
        self.count_write(rule, value.len(), stored.len());
        let stored = Bytes::from(stored);
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&stored[..HEADER_LEN]);
        let chunks = chunks.map(|chunks| {
            Arc::new(Chunked {
                stored: stored.clone(),
                chunks,
            })
        });
        if let (Some(c), true) = (self.bases(rule), predicted > 0) {
            let frame = frame.unwrap_or_else(|| ReplyFrame::of(value));
            c.put(
                key,
                Base::from_reply(header, predicted, frame).with_chunks(chunks.clone()),
            );
        }
        let (base_header, delta) = match (base, delta) {
            (Some(b), Some(d)) => (Bytes::copy_from_slice(&b.header), Bytes::from(d)),
            _ => (Bytes::new(), Bytes::new()),
        };
        EncodedWrite {
            stored,
            base_header,
            delta,
            predicted,
            header,
            chunks,
        }
    }

    fn count_write(&self, rule: &Rule, original: usize, stored: usize) {
        self.totals.writes.fetch_add(1, Ordering::Relaxed);
        self.totals
            .bytes_in
            .fetch_add(original as u64, Ordering::Relaxed);
        self.totals
            .bytes_stored
            .fetch_add(stored as u64, Ordering::Relaxed);
        crate::telemetry::state_write(rule.index, original, stored);
    }

    /// Remembers what `key` holds now (a value just read and verified, as its reply frame),
    /// as the base of its next write's delta and the answer to its next GET.
    pub fn remember(&self, key: &Bytes, stored: &[u8], frame: Bytes) {
        let Some(rule) = self.rule_for(key) else {
            return;
        };
        let (Some(cache), Some(head)) = (self.bases(rule), stored.get(..HEADER_LEN)) else {
            return;
        };
        if cache.holds(key, head) {
            return;
        }
        let Ok(Some(meta)) = envelope::inspect(stored) else {
            return;
        };
        if meta.base.is_some() {
            return;
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(head);
        let Some(b) = Base::from_frame(header, meta.version, frame) else {
            return;
        };
        // A big zstd value written in chunks (by any statecar) lends its frames to the key's
        // next write, as if this proxy had written it.
        let chunked = usize::try_from(meta.original_len).is_ok_and(|n| n >= CHUNKED_VALUE)
            && meta.codec == Codec::Zstd
            && meta.dict.is_none()
            && meta.header_len == HEADER_LEN;
        let chunks = chunked
            .then(|| codec::chunked::chunks_of(stored.get(HEADER_LEN..)?))
            .flatten()
            .map(|chunks| {
                Arc::new(Chunked {
                    stored: Bytes::copy_from_slice(stored),
                    chunks,
                })
            });
        cache.put(key, b.with_chunks(chunks));
    }

    /// The reply for a GET of `key` when Redis holds `stored` and the proxy already has that
    /// exact value (same header: version, length, CRC32, time): the cached frame, without
    /// decompressing. The stored payload is checked by every read that misses the cache,
    /// STATE.LOAD and `statecar verify`.
    pub fn cached_frame(&self, key: &[u8], stored: &[u8]) -> Option<Bytes> {
        let cache = self.rule_for(key).and_then(|r| self.bases(r))?;
        let frame = cache.frame_if(key, stored.get(..HEADER_LEN)?)?;
        self.totals.reads.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::state_read(stored.len(), frame.len());
        Some(frame)
    }

    /// Forgets the cached base of `key` (deleted).
    pub fn forget(&self, key: &[u8]) {
        if let Some(c) = self.rule_for(key).and_then(|r| self.bases(r)) {
            c.remove(key);
        }
    }

    /// Verifies and decodes a stored value; plain (pre-statecar) values come back as they are.
    /// A value compressed with a dictionary this process has not loaded yet is
    /// [`EnvelopeError::NeedsDictionary`] (the caller fetches it and tries again).
    pub fn decode(&self, key: &[u8], stored: &Bytes) -> ReadValue {
        self.totals.reads.fetch_add(1, Ordering::Relaxed);
        let dict = envelope::inspect(stored)
            .ok()
            .flatten()
            .and_then(|m| m.dict)
            .and_then(dict::lookup);
        let refs = Refs {
            base: None,
            dict: dict.as_deref().map(dict::Dictionary::ddict),
        };
        match envelope::decode_with(stored, self.max_decoded, refs) {
            Ok(Decoded::Plain) => ReadValue::Value(stored.clone()),
            Ok(Decoded::State { value, .. }) => {
                crate::telemetry::state_read(stored.len(), value.len());
                ReadValue::Value(Bytes::from(value))
            }
            Err(e) => {
                self.totals.corruptions.fetch_add(1, Ordering::Relaxed);
                crate::telemetry::checksum_failure();
                tracing::warn!(key = %show_key(key), error = %e, "state value failed verification");
                ReadValue::Damaged(e)
            }
        }
    }

    /// The fast path of [`StateEngine::decode`] for a reply: the stored value as the bulk
    /// string frame the client gets (`reply` itself for a plain value). `None` when the value
    /// fails verification, so the caller takes the slow path, which reports it.
    pub fn decode_frame(&self, stored: &[u8], reply: &Bytes) -> Option<Bytes> {
        // Only the dictionary byte decides whether a lookup is needed; a damaged header is
        // reported by the slow path.
        let dict = match stored.get(6..8) {
            Some(f) if u16::from_be_bytes([f[0], f[1]]) & envelope::FLAG_DICT != 0 => {
                let id = envelope::inspect(stored)
                    .ok()
                    .flatten()
                    .and_then(|m| m.dict)?;
                Some(dict::lookup(id)?)
            }
            _ => None,
        };
        let refs = Refs {
            base: None,
            dict: dict.as_deref().map(dict::Dictionary::ddict),
        };
        match envelope::decode_bulk_with(stored, self.max_decoded, refs) {
            Ok(frame) => {
                self.totals.reads.fetch_add(1, Ordering::Relaxed);
                match frame {
                    Some((frame, len)) => {
                        crate::telemetry::state_read(stored.len(), len);
                        Some(frame)
                    }
                    None => Some(reply.clone()),
                }
            }
            Err(_) => None,
        }
    }

    /// The error a client gets for a damaged value.
    pub fn damaged_error(key: &[u8], e: &EnvelopeError) -> String {
        format!(
            "ERR statecar: state key '{}' failed verification: {e}",
            show_key(key)
        )
    }
}
