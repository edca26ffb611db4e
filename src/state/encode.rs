//! A write of a state value, encoded: the new value's envelope (whole, or in chunks that reuse
//! the previous version's frames), and the version it replaces as a delta against it (zstd's,
//! or a chunk map), with the cache of delta bases kept up to date. What the write script then
//! stores is `plan`'s business.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::cache::{Base, Chunked, ReplyFrame};
use super::codec::Codec;
use super::codec::chunked::{Chunk, Outcome};
use super::dict::{self, Trainer};
use super::envelope::{self, DictRef, Encoding, HEADER_LEN};
use super::rules::Rule;
use super::{StateEngine, codec, now_ms};

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
        if value.len() < PARALLEL_ENCODE {
            let (stored, chunks) = full();
            let encoded = Encoded {
                stored,
                chunks: chunks.map(|o| o.chunks),
                frame: None,
                delta: wants_delta.and_then(delta_of),
            };
            return self.finish_write(rule, key, value, encoded, predicted, base.as_ref());
        }
        // A big value: the caller is already off the async threads (see `plan_is_heavy`), and
        // its work is shared with other threads. The copy the cache keeps of it (2 ms of an
        // 8.5 MB checkpoint's write, with its page faults) is made while it is compressed.
        let cached = cache.is_some() && predicted > 0;
        std::thread::scope(|s| {
            let frame = cached.then(|| s.spawn(|| ReplyFrame::of(value)));
            let ((stored, chunks), delta) = match wants_delta {
                // After a version cut in chunks, the replaced version's delta is a map of the
                // new value's chunks, made once they are known; it costs less than comparing
                // them, so it needs no thread of its own. zstd's delta if it does not apply.
                Some(b) if value.len() >= CHUNKED_VALUE && b.previous().is_some() => {
                    let (stored, outcome) = full();
                    let delta = outcome
                        .as_ref()
                        .and_then(|o| chunk_delta_against(rule, b, value, o, crc, predicted))
                        .or_else(|| delta_of(b));
                    ((stored, outcome), delta)
                }
                // Otherwise the two compressions (whole, and the old value as a delta) run on
                // two threads.
                Some(b) => {
                    let d = s.spawn(|| delta_of(b));
                    let whole = full();
                    (whole, d.join().ok().flatten())
                }
                None => (full(), None),
            };
            let encoded = Encoded {
                stored,
                chunks: chunks.map(|o| o.chunks),
                frame: frame.and_then(|f| f.join().ok()),
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
}
