//! State keys: which keys they are (rules), how their values are stored (codec, envelope), how
//! versions are kept (scripts, keys), and how replies are turned back into what the client
//! wrote (transform).

pub mod codec;
pub mod envelope;
pub mod keys;
pub mod plan;
mod rule_info;
pub mod rules;
pub mod sample;
pub mod scripts;
pub mod transform;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use envelope::{Decoded, EnvelopeError};
use rules::{Rule, Rules};
use scripts::Scripts;

/// Running totals for STATE.STATS (Prometheus has the same figures with labels).
#[derive(Default)]
pub struct Totals {
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
        StateEngine {
            rules,
            max_decoded,
            scripts: Scripts::default(),
            totals,
        }
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

    /// Encodes a value for `rule` (the version is filled in by the write script).
    pub fn encode(&self, rule: &Rule, value: &[u8]) -> Bytes {
        let stored = envelope::encode(value, rule.codec, rule.min_size, now_ms(), 0);
        self.totals.writes.fetch_add(1, Ordering::Relaxed);
        self.totals
            .bytes_in
            .fetch_add(value.len() as u64, Ordering::Relaxed);
        self.totals
            .bytes_stored
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        crate::telemetry::state_write(rule.index, value.len(), stored.len());
        Bytes::from(stored)
    }

    /// Verifies and decodes a stored value; plain (pre-statecar) values come back as they are.
    pub fn decode(&self, key: &[u8], stored: &Bytes) -> ReadValue {
        self.totals.reads.fetch_add(1, Ordering::Relaxed);
        match envelope::decode(stored, self.max_decoded) {
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
        match envelope::decode_bulk(stored, self.max_decoded) {
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
