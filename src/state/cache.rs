//! The bases of deltas: a bounded cache of state keys' current values in the proxy.
//!
//! A versioned write stores the version it replaces as a delta against the new value, so the
//! proxy needs the bytes the key holds now. It keeps the last value it wrote or read for each
//! key, with the header it was stored under, up to a byte budget per rule; the oldest entries
//! go first. The cache is only ever a hint: the write script uses a delta only when the key
//! still holds exactly that header (docs/STATE.md), so a stale or missing entry costs a full
//! copy in the history, never a wrong version.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::codec::chunked::{Chunk, Previous};
use super::envelope::HEADER_LEN;

/// What a key held, as the base of the next write's delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Base {
    /// The first 36 bytes of the stored envelope, version stamp included: what the write
    /// script compares with the key.
    pub header: [u8; HEADER_LEN],
    /// The version number in that header.
    pub version: u32,
    /// The value as a RESP bulk string (`$<len>\r\n<value>\r\n`): a GET that finds the key
    /// still holding `header` is answered with it as it is.
    frame: Bytes,
    /// Where the value starts in `frame`.
    head: usize,
    /// How a big value was encoded in chunks (`codec::chunked`), when this proxy wrote it
    /// that way: the next write of the key copies the frames of the chunks it still has.
    chunks: Option<Arc<Chunked>>,
}

/// A big value's envelope as written, with its chunks.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunked {
    /// The stored envelope (shared with the command that wrote it).
    pub stored: Bytes,
    /// The chunks; frame ranges are relative to the payload, after the header.
    pub chunks: Vec<Chunk>,
}

/// A value as the RESP bulk string a GET of it is answered with (`$<len>\r\n<value>\r\n`):
/// the form the cache keeps it in.
pub struct ReplyFrame {
    frame: Bytes,
    /// Where the value starts in `frame`.
    head: usize,
}

impl ReplyFrame {
    /// `value`, copied once into its reply frame.
    pub fn of(value: &[u8]) -> ReplyFrame {
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(value.len()).as_bytes();
        let mut frame = bytes::BytesMut::with_capacity(value.len() + digits.len() + 5);
        frame.extend_from_slice(b"$");
        frame.extend_from_slice(digits);
        frame.extend_from_slice(b"\r\n");
        let head = frame.len();
        frame.extend_from_slice(value);
        frame.extend_from_slice(b"\r\n");
        ReplyFrame {
            frame: frame.freeze(),
            head,
        }
    }
}

impl Base {
    /// A base for `value` (copied once into its reply frame).
    pub fn from_value(header: [u8; HEADER_LEN], version: u32, value: &[u8]) -> Base {
        Base::from_reply(header, version, ReplyFrame::of(value))
    }

    /// A base for a value already copied into its reply frame.
    pub fn from_reply(header: [u8; HEADER_LEN], version: u32, frame: ReplyFrame) -> Base {
        Base {
            header,
            version,
            frame: frame.frame,
            head: frame.head,
            chunks: None,
        }
    }

    /// The same base, remembering how its value was encoded in chunks (if it was).
    pub fn with_chunks(mut self, chunks: Option<Arc<Chunked>>) -> Base {
        self.chunks = chunks;
        self
    }

    /// The value's previous encoding in chunks, for the next write's
    /// [`compress_chunked`](super::codec::chunked::compress_chunked).
    pub fn previous(&self) -> Option<Previous<'_>> {
        let c = self.chunks.as_deref()?;
        Some(Previous {
            value: self
                .frame
                .get(self.head..self.frame.len().checked_sub(2)?)?,
            payload: c.stored.get(HEADER_LEN..)?,
            chunks: &c.chunks,
        })
    }

    /// Bytes this base holds (its frame, and its chunked envelope if any).
    fn bytes(&self) -> usize {
        self.frame.len()
            + self.chunks.as_ref().map_or(0, |c| {
                c.stored.len() + c.chunks.len() * std::mem::size_of::<Chunk>()
            })
    }

    /// A base for a value already in a reply frame (a decoded GET); `None` if `frame` is not
    /// a whole bulk string.
    pub fn from_frame(header: [u8; HEADER_LEN], version: u32, frame: Bytes) -> Option<Base> {
        let nl = memchr::memchr(b'\n', &frame)?;
        let head = nl + 1;
        (frame.first() == Some(&b'$') && frame.len() >= head + 2 && frame.ends_with(b"\r\n"))
            .then_some(Base {
                header,
                version,
                frame,
                head,
                chunks: None,
            })
    }

    /// The value.
    pub fn value(&self) -> Bytes {
        self.frame.slice(self.head..self.frame.len() - 2)
    }

    /// The CRC-32 of the value, from its header.
    pub fn crc(&self) -> u32 {
        let mut crc = [0u8; 4];
        crc.copy_from_slice(&self.header[20..24]);
        u32::from_be_bytes(crc)
    }

    /// When that version was first written (ms since the epoch), from its header.
    pub fn timestamp_ms(&self) -> u64 {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&self.header[8..16]);
        u64::from_be_bytes(ts)
    }
}

struct Entry {
    base: Base,
    seq: u64,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Bytes, Entry>,
    /// Keys in the order they were stored; an item whose `seq` is no longer the key's is stale.
    order: VecDeque<(Bytes, u64)>,
    bytes: usize,
    seq: u64,
}

/// Per-entry bookkeeping counted against the budget besides the key and value bytes.
const ENTRY_OVERHEAD: usize = 128;

/// A bounded map from key to [`Base`].
pub struct BaseCache {
    inner: Mutex<Inner>,
    budget: usize,
}

impl BaseCache {
    /// A cache holding at most about `budget` bytes of keys and values.
    pub fn new(budget: usize) -> BaseCache {
        BaseCache {
            inner: Mutex::new(Inner::default()),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map inconsistent in a way that
        // matters (entries are only hints), so a poisoned lock is used as it is.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached base of `key`.
    pub fn get(&self, key: &[u8]) -> Option<Base> {
        self.lock().map.get(key).map(|e| e.base.clone())
    }

    /// The reply frame of `key`'s value, if the key is cached with exactly `header` (the
    /// first 36 bytes of what Redis holds): the same version, length, CRC32 and time, so the
    /// same bytes.
    pub fn frame_if(&self, key: &[u8], header: &[u8]) -> Option<Bytes> {
        let g = self.lock();
        let e = g.map.get(key)?;
        (e.base.header[..] == *header).then(|| e.base.frame.clone())
    }

    /// Whether `key` is cached with exactly `header`.
    pub fn holds(&self, key: &[u8], header: &[u8]) -> bool {
        self.lock()
            .map
            .get(key)
            .is_some_and(|e| e.base.header[..] == *header)
    }

    /// Caches `base` for `key`, evicting the oldest entries beyond the budget. A value larger
    /// than a quarter of the budget is not cached (and replaces nothing).
    pub fn put(&self, key: &Bytes, base: Base) {
        let size = key.len() + base.bytes() + ENTRY_OVERHEAD;
        let mut g = self.lock();
        if size > self.budget / 4 {
            if let Some(old) = g.map.remove(key.as_ref()) {
                g.bytes -= key.len() + old.base.bytes() + ENTRY_OVERHEAD;
            }
            return;
        }
        g.seq += 1;
        let seq = g.seq;
        if let Some(old) = g.map.insert(key.clone(), Entry { base, seq }) {
            g.bytes -= key.len() + old.base.bytes() + ENTRY_OVERHEAD;
        }
        g.bytes += size;
        g.order.push_back((key.clone(), seq));
        while g.bytes > self.budget {
            let Some((k, s)) = g.order.pop_front() else {
                break;
            };
            if g.map.get(&k).is_some_and(|e| e.seq == s)
                && let Some(old) = g.map.remove(&k)
            {
                g.bytes -= k.len() + old.base.bytes() + ENTRY_OVERHEAD;
            }
        }
        // Rewrites of the same keys leave stale items behind; drop them once they dominate.
        if g.order.len() > 2 * g.map.len() + 64 {
            let Inner { map, order, .. } = &mut *g;
            order.retain(|(k, s)| map.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    /// Forgets `key`.
    pub fn remove(&self, key: &[u8]) {
        let mut g = self.lock();
        if let Some(old) = g.map.remove(key) {
            g.bytes -= key.len() + old.base.bytes() + ENTRY_OVERHEAD;
        }
    }

    /// Forgets `key` if it is still cached with `header` (a write that did not happen).
    pub fn remove_if(&self, key: &[u8], header: &[u8]) {
        let mut g = self.lock();
        if g.map.get(key).is_some_and(|e| e.base.header[..] == *header)
            && let Some(old) = g.map.remove(key)
        {
            g.bytes -= key.len() + old.base.bytes() + ENTRY_OVERHEAD;
        }
    }

    /// Bytes accounted now (keys, values and bookkeeping).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(v: u32, len: usize) -> Base {
        let mut header = [0u8; HEADER_LEN];
        header[28..32].copy_from_slice(&v.to_be_bytes());
        Base::from_value(header, v, &vec![b'x'; len])
    }

    #[test]
    fn serves_the_frame_only_for_the_same_header() {
        let c = BaseCache::new(10_000);
        let b = base(3, 5);
        assert_eq!(&b.value()[..], b"xxxxx");
        c.put(&Bytes::from_static(b"k"), b.clone());
        assert_eq!(
            c.frame_if(b"k", &b.header).as_deref(),
            Some(&b"$5\r\nxxxxx\r\n"[..])
        );
        assert_eq!(c.frame_if(b"k", &base(4, 5).header), None);
        assert_eq!(c.frame_if(b"other", &b.header), None);
        let f = Bytes::from_static(b"$2\r\nab\r\n");
        let g = Base::from_frame(b.header, 3, f).unwrap_or_else(|| panic!("frame"));
        assert_eq!(&g.value()[..], b"ab");
        assert!(Base::from_frame(b.header, 3, Bytes::from_static(b"+OK\r\n")).is_none());
    }

    #[test]
    fn keeps_the_newest_within_the_budget() {
        let c = BaseCache::new(10_000);
        for i in 0..100u32 {
            c.put(&Bytes::from(format!("k{i}")), base(i, 1000));
            assert!(c.bytes() <= 10_000, "{}", c.bytes());
        }
        assert!(c.get(b"k99").is_some());
        assert!(c.get(b"k0").is_none());
        // Rewriting one key many times neither grows the accounting nor evicts it.
        for i in 0..1000u32 {
            c.put(&Bytes::from_static(b"hot"), base(i, 500));
        }
        assert_eq!(c.get(b"hot").map(|b| b.version), Some(999));
        assert!(c.bytes() <= 10_000);
    }

    #[test]
    fn too_large_values_are_not_cached_and_replace_nothing_stale() {
        let c = BaseCache::new(10_000);
        let k = Bytes::from_static(b"k");
        c.put(&k, base(1, 100));
        c.put(&k, base(2, 5_000));
        assert_eq!(
            c.get(b"k"),
            None,
            "an older entry must not survive a newer write"
        );
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn remove_if_only_removes_the_same_header() {
        let c = BaseCache::new(10_000);
        let k = Bytes::from_static(b"k");
        c.put(&k, base(1, 10));
        c.remove_if(b"k", &base(2, 10).header);
        assert!(c.get(b"k").is_some());
        c.remove_if(b"k", &base(1, 10).header);
        assert!(c.get(b"k").is_none());
        assert!(c.is_empty());
    }
}
