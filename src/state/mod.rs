//! State keys: which keys they are (rules, glob), how their values are stored (codec,
//! envelope, dict), how versions are kept (scripts, keys, history, and the delta bases in
//! cache), what each command becomes upstream (plan), and how replies are turned back into
//! what the client wrote (transform).

pub mod cache;
pub mod codec;
pub mod dict;
mod encode;
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

use cache::{Base, BaseCache, Chunked};
use codec::Codec;
use dict::Trainer;
use envelope::{Decoded, EnvelopeError, HEADER_LEN, Refs};
use rules::{Rule, Rules};
use scripts::Scripts;

pub use encode::{CHUNKED_VALUE, EncodedWrite, PARALLEL_ENCODE};

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
