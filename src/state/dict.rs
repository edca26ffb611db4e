//! Trained zstd dictionaries: what one is, how one is trained, and the registry of those this
//! process knows.
//!
//! Small JSON values share most of their structure (field names, enum values, common words)
//! but each is too short for a compressor to learn it: zstd alone stores a 1 KB document in
//! about 0.6 of its size. A dictionary trained on the rule's own values carries that shared
//! part, and the same document then takes about 0.3 (docs/BENCHMARKS.md). A dictionary lives
//! in Redis under `__statecar:dict:<id>` (raw zstd dictionary bytes, readable by any zstd
//! tool), each value compressed with one names its id in the envelope header, and dictionaries
//! are never deleted by statecar: a value written with one can always be read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use zstd::zstd_safe::{CDict, DDict};

/// Prefix of the Redis key holding dictionary `<id>` (decimal).
pub const DICT_KEY_PREFIX: &[u8] = b"__statecar:dict:";

/// The Redis key that holds dictionary `id`.
pub fn dict_key(id: u32) -> Bytes {
    let mut k = DICT_KEY_PREFIX.to_vec();
    k.extend_from_slice(id.to_string().as_bytes());
    Bytes::from(k)
}

/// One trained dictionary, prepared for decoding and (per level, on demand) for encoding.
pub struct Dictionary {
    /// Its id (also inside the dictionary, as zstd records it).
    pub id: u32,
    /// The dictionary as stored in Redis.
    pub raw: Bytes,
    ddict: DDict<'static>,
    cdicts: Mutex<Vec<(i32, Arc<CDict<'static>>)>>,
}

impl std::fmt::Debug for Dictionary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dictionary")
            .field("id", &self.id)
            .field("len", &self.raw.len())
            .finish()
    }
}

impl Dictionary {
    /// Prepares `raw` (zstd dictionary format) as dictionary `id`. `None` when zstd rejects
    /// it or it names another id: a damaged or foreign key is never used.
    pub fn new(id: u32, raw: Bytes) -> Option<Dictionary> {
        if zstd::zstd_safe::get_dict_id_from_dict(&raw).map(u32::from) != Some(id) {
            return None;
        }
        let ddict = DDict::try_create(&raw)?;
        Some(Dictionary {
            id,
            raw,
            ddict,
            cdicts: Mutex::new(Vec::new()),
        })
    }

    /// For decoding.
    pub fn ddict(&self) -> &DDict<'static> {
        &self.ddict
    }

    /// For encoding at `level` (prepared once per level).
    pub fn cdict(&self, level: i32) -> Option<Arc<CDict<'static>>> {
        let mut all = self.cdicts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = all.iter().find(|(l, _)| *l == level) {
            return Some(c.clone());
        }
        let c = Arc::new(CDict::try_create(&self.raw, level)?);
        all.push((level, c.clone()));
        Some(c)
    }
}

/// Every dictionary this process has loaded, by id. Process-wide: a dictionary never changes
/// under its id (the id is zstd's hash of its content), so configuration reloads keep them.
fn registry() -> &'static RwLock<HashMap<u32, Arc<Dictionary>>> {
    static REGISTRY: OnceLock<RwLock<HashMap<u32, Arc<Dictionary>>>> = OnceLock::new();
    REGISTRY.get_or_init(RwLock::default)
}

/// A loaded dictionary by id.
pub fn lookup(id: u32) -> Option<Arc<Dictionary>> {
    registry()
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&id)
        .cloned()
}

/// Loads `raw` as dictionary `id` (if it is one) and returns it.
pub fn register(id: u32, raw: Bytes) -> Option<Arc<Dictionary>> {
    if let Some(d) = lookup(id) {
        return Some(d);
    }
    let d = Arc::new(Dictionary::new(id, raw)?);
    registry()
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, d.clone());
    Some(d)
}

/// Values longer than this are neither sampled nor compressed with the dictionary: a
/// dictionary pays on values too small to have much shared history of their own.
pub const MAX_DICT_VALUE: usize = 64 * 1024;
/// Samples kept per rule for training (and retraining).
const MAX_SAMPLES: usize = 1000;
/// Sample bytes kept per rule.
const MAX_SAMPLE_BYTES: usize = 4 << 20;
/// A rule trains its first dictionary once it has seen this many values...
pub const MIN_SAMPLES: usize = 200;
/// ... and this many bytes of them.
pub const MIN_SAMPLE_BYTES: usize = 64 * 1024;
/// Largest dictionary trained. On 0.5-2 KB JSON records 16 KB does as well as 64 KB
/// (docs/BENCHMARKS.md) and is quicker to train, load and send.
pub const DICT_SIZE: usize = 16 * 1024;
/// Values measured with a dictionary before its ratio becomes the reference for drift...
const BASELINE_VALUES: u64 = 1000;
/// ... and per drift window after that.
const WINDOW_VALUES: u64 = 2000;
/// Retrain when a window's stored/original ratio is this much worse than the reference
/// (1.25: a quarter more bytes than when the dictionary was new).
const DRIFT: f64 = 1.25;

/// Trains a dictionary of at most `max_size` bytes from `samples`. CPU-heavy (tens to
/// hundreds of milliseconds): callers run it off the async threads.
pub fn train(samples: &[Bytes], max_size: usize) -> Result<(u32, Bytes), String> {
    let raw = zstd::dict::from_samples(samples, max_size)
        .map_err(|e| format!("zstd could not train a dictionary: {e}"))?;
    let id = zstd::zstd_safe::get_dict_id_from_dict(&raw)
        .map(u32::from)
        .ok_or_else(|| "zstd trained a dictionary without an id".to_string())?;
    Ok((id, Bytes::from(raw)))
}

/// What a rule's dictionary machinery wants done in the background (it needs Redis).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Look up the rule's current dictionary in Redis (first use after a start or reload).
    Lookup,
    /// Train one from the samples and store it.
    Train,
}

const IDLE: u8 = 0;
const BUSY: u8 = 1;

/// One rule's dictionary: the one in use, the samples it is (re)trained from, and its ratio.
pub struct Trainer {
    active: arc_swap::ArcSwapOption<Dictionary>,
    samples: Mutex<Samples>,
    /// Whether the rule's current dictionary was looked up in Redis yet.
    looked_up: AtomicBool,
    /// A lookup or training is running.
    busy: AtomicU8,
    /// Original and stored bytes of values compressed with the active dictionary, in the
    /// current window, and the number of such values.
    window: Mutex<Window>,
}

#[derive(Default)]
struct Samples {
    kept: Vec<Bytes>,
    bytes: usize,
    seen: u64,
    rng: u64,
}

#[derive(Default)]
struct Window {
    values: u64,
    original: u64,
    stored: u64,
    /// stored/original when the dictionary was new (0: not measured yet).
    reference: f64,
    drifted: bool,
}

impl Default for Trainer {
    fn default() -> Self {
        Trainer {
            active: arc_swap::ArcSwapOption::empty(),
            samples: Mutex::new(Samples {
                rng: 0x9e37_79b9_7f4a_7c15,
                ..Samples::default()
            }),
            looked_up: AtomicBool::new(false),
            busy: AtomicU8::new(IDLE),
            window: Mutex::new(Window::default()),
        }
    }
}

impl Trainer {
    /// The dictionary values are compressed with now.
    pub fn active(&self) -> Option<Arc<Dictionary>> {
        self.active.load_full()
    }

    /// Makes `d` the dictionary new values are compressed with (it is stored in Redis).
    pub fn activate(&self, d: Arc<Dictionary>) {
        self.looked_up.store(true, Ordering::Relaxed);
        let same = self.active().is_some_and(|a| a.id == d.id);
        self.active.store(Some(d));
        if !same {
            *self.window.lock().unwrap_or_else(|p| p.into_inner()) = Window::default();
        }
    }

    /// Notes a value written: kept as a training sample (reservoir sampling over everything
    /// seen, so samples follow what the rule stores now), and, when it was compressed with
    /// the active dictionary, counted towards its ratio.
    pub fn offer(&self, value: &[u8], stored_payload: Option<usize>) {
        if value.len() <= MAX_DICT_VALUE && !value.is_empty() {
            let mut s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            s.seen += 1;
            s.rng ^= s.rng << 13;
            s.rng ^= s.rng >> 7;
            s.rng ^= s.rng << 17;
            let full = s.kept.len() >= MAX_SAMPLES || s.bytes + value.len() > MAX_SAMPLE_BYTES;
            if !full {
                s.bytes += value.len();
                s.kept.push(Bytes::copy_from_slice(value));
            } else if !s.kept.is_empty() && s.rng % s.seen < MAX_SAMPLES as u64 {
                let i = (s.rng / 7 % s.kept.len() as u64) as usize;
                s.bytes = s.bytes - s.kept[i].len() + value.len();
                s.kept[i] = Bytes::copy_from_slice(value);
            }
        }
        if let Some(stored) = stored_payload {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            w.values += 1;
            w.original += value.len() as u64;
            w.stored += stored as u64;
            let limit = if w.reference == 0.0 {
                BASELINE_VALUES
            } else {
                WINDOW_VALUES
            };
            if w.values >= limit && w.original > 0 {
                let ratio = w.stored as f64 / w.original as f64;
                if w.reference == 0.0 {
                    w.reference = ratio;
                } else if ratio > w.reference * DRIFT {
                    w.drifted = true;
                }
                (w.values, w.original, w.stored) = (0, 0, 0);
            }
        }
    }

    /// What should run in the background now, if anything; the caller then owns the job
    /// and must call [`Trainer::done`] when it ends.
    pub fn due(&self) -> Option<Work> {
        if self.busy.load(Ordering::Relaxed) != IDLE {
            return None;
        }
        let work = if !self.looked_up.load(Ordering::Relaxed) {
            Work::Lookup
        } else {
            let drifted = self
                .window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drifted;
            let s = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            let enough = s.kept.len() >= MIN_SAMPLES && s.bytes >= MIN_SAMPLE_BYTES;
            if enough && (self.active.load().is_none() || drifted) {
                Work::Train
            } else {
                return None;
            }
        };
        self.busy
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| work)
    }

    /// Claims the trainer for a training asked for by a client (STATE.TRAIN); `None` while
    /// another job runs. End it with [`Trainer::done`].
    pub fn claim(&self) -> Option<Work> {
        self.busy
            .compare_exchange(IDLE, BUSY, Ordering::AcqRel, Ordering::Relaxed)
            .ok()
            .map(|_| Work::Train)
    }

    /// Ends a job started by [`Trainer::due`]. A lookup that failed is retried later.
    pub fn done(&self, work: Work, ok: bool) {
        if work == Work::Lookup && ok {
            self.looked_up.store(true, Ordering::Relaxed);
        }
        if work == Work::Train && ok {
            self.window
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .drifted = false;
        }
        self.busy.store(IDLE, Ordering::Release);
    }

    /// Marks a lookup as done without a job (a dictionary was found another way).
    pub fn looked_up(&self) {
        self.looked_up.store(true, Ordering::Relaxed);
    }

    /// The current samples.
    pub fn samples(&self) -> Vec<Bytes> {
        self.samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .kept
            .clone()
    }
}

/// The Redis key naming a rule's current dictionary (its id, decimal): another statecar in
/// front of the same Redis, or this one after a restart, picks it up from there.
pub fn active_key(pattern: &[u8]) -> Bytes {
    let mut k = b"__statecar:dict:active:".to_vec();
    k.extend_from_slice(pattern);
    Bytes::from(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::sample::small_document;

    fn samples(n: u64) -> Vec<Bytes> {
        (0..n).map(|i| Bytes::from(small_document(3, i))).collect()
    }

    #[test]
    fn trains_registers_and_refuses_foreign_bytes() {
        let (id, raw) = train(&samples(300), DICT_SIZE).unwrap_or_else(|e| panic!("{e}"));
        assert!(raw.len() <= DICT_SIZE);
        assert!(id >= 32768, "zstd's id range");
        let d = register(id, raw.clone()).unwrap_or_else(|| panic!("not a dictionary"));
        assert_eq!(lookup(id).map(|d| d.id), Some(id));
        assert!(d.cdict(1).is_some() && d.cdict(3).is_some());
        // Another id, or bytes that are no dictionary, are never loaded.
        assert!(Dictionary::new(id.wrapping_add(1), raw).is_none());
        assert!(Dictionary::new(id, Bytes::from_static(b"not a dictionary")).is_none());
    }

    #[test]
    fn training_is_due_after_a_lookup_and_enough_samples() {
        let t = Trainer::default();
        assert_eq!(t.due(), Some(Work::Lookup));
        assert_eq!(t.due(), None, "one job at a time");
        t.done(Work::Lookup, true);
        for s in samples(MIN_SAMPLES as u64 - 1) {
            t.offer(&s, None);
        }
        assert_eq!(t.due(), None);
        for s in samples(3000) {
            t.offer(&s, None);
        }
        assert_eq!(t.due(), Some(Work::Train));
        assert!(t.samples().len() <= MAX_SAMPLES);
        t.done(Work::Train, false);
        assert_eq!(t.due(), Some(Work::Train), "a failed training is retried");
        t.done(Work::Train, true);
        let (id, raw) = train(&t.samples(), DICT_SIZE).unwrap_or_else(|e| panic!("{e}"));
        let d = register(id, raw).unwrap_or_else(|| panic!("not a dictionary"));
        t.activate(d);
        assert_eq!(
            t.due(),
            None,
            "an active dictionary is kept while its ratio holds"
        );
        // The ratio drifts: a quarter worse than when the dictionary was new.
        for _ in 0..BASELINE_VALUES {
            t.offer(b"x", Some(30));
        }
        for _ in 0..WINDOW_VALUES {
            t.offer(b"x", Some(40));
        }
        assert_eq!(t.due(), Some(Work::Train));
    }
}
