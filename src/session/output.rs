//! The client's output buffer: reply bytes waiting for the socket, in order, and the limits on
//! how many of them a client may leave unread.
//!
//! Replies are taken as soon as they arrive, whether or not the client is reading, and counted
//! until its socket accepts them. That is Redis's `client-output-buffer-limit`: a hard limit that
//! disconnects at once and a soft limit that disconnects after a while, with a separate class
//! for pub/sub clients.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use tokio::time::Instant;

use crate::config::{BufferLimit, OutputLimits};
use crate::telemetry;

/// Replies of this size or more are queued as they are instead of being copied together.
const DIRECT_WRITE: usize = 16 * 1024;
/// Small replies are gathered into chunks of about this size.
const GATHER: usize = 64 * 1024;
/// Most buffers handed to one vectored write.
pub const MAX_SLICES: usize = 32;

/// Reply bytes waiting for the client's socket, in order: large replies as they came, small
/// ones copied together.
#[derive(Default)]
pub struct OutQueue {
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
}

impl OutQueue {
    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends a reply.
    pub fn push(&mut self, b: &Bytes) {
        if b.is_empty() {
            return;
        }
        self.len += b.len();
        if b.len() >= DIRECT_WRITE {
            self.seal();
            self.chunks.push_back(b.clone());
        } else {
            self.tail.extend_from_slice(b);
            if self.tail.len() >= GATHER {
                self.seal();
            }
        }
    }

    /// Appends bytes by copying them.
    pub fn push_slice(&mut self, b: &[u8]) {
        self.len += b.len();
        self.tail.extend_from_slice(b);
        if self.tail.len() >= GATHER {
            self.seal();
        }
    }

    /// Moves the gathered small replies behind the large ones.
    fn seal(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
    }

    /// Bytes held against the limits: everything except the chunk being written, so that one
    /// reply (or one pipelined batch) larger than the limits is still delivered.
    pub fn counted(&self) -> usize {
        let exempt = self.chunks.front().map_or(self.tail.len(), Bytes::len);
        self.len - exempt
    }

    /// Fills `out` with the next buffers to write; returns how many.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        // At most a fair share per write: a client reading fast would otherwise take megabytes
        // in one system call while the other clients wait for the thread.
        let mut room = crate::fair_share::SHARE;
        let mut n = 0;
        for c in self.chunks.iter().take(MAX_SLICES) {
            if room == 0 {
                return n;
            }
            let take = c.len().min(room);
            out[n] = IoSlice::new(&c[..take]);
            room -= take;
            n += 1;
        }
        if n < MAX_SLICES && !self.tail.is_empty() && room > 0 {
            out[n] = IoSlice::new(&self.tail[..self.tail.len().min(room)]);
            n += 1;
        }
        n
    }

    /// Drops `n` written bytes from the front.
    pub fn advance(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            match self.chunks.front_mut() {
                Some(c) if c.len() <= n => {
                    n -= c.len();
                    self.chunks.pop_front();
                }
                Some(c) => {
                    c.advance(n);
                    n = 0;
                }
                None => {
                    self.tail.advance(n);
                    n = 0;
                }
            }
        }
        if self.tail.is_empty() && self.tail.capacity() > 4 * GATHER {
            self.tail = BytesMut::new();
        }
    }
}

/// Which output-buffer class a client is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// An ordinary client (MONITOR output counts here, as in Redis).
    Normal,
    /// A client that has received pub/sub messages or RESP3 pushes.
    PubSub,
}

/// The output buffer with its limits.
pub struct Output {
    /// What waits for the socket.
    pub q: OutQueue,
    limits: OutputLimits,
    class: Class,
    /// When the held bytes went over the soft limit (reset when they drop under it).
    soft_since: Option<Instant>,
}

impl Output {
    /// An empty buffer with `limits`.
    pub fn new(limits: OutputLimits) -> Output {
        Output {
            q: OutQueue::default(),
            limits,
            class: Class::Normal,
            soft_since: None,
        }
    }

    /// From now on the client is limited as a pub/sub client.
    pub fn pubsub(&mut self) {
        self.class = Class::PubSub;
    }

    fn limit(&self) -> BufferLimit {
        match self.class {
            Class::Normal => self.limits.normal,
            Class::PubSub => self.limits.pubsub,
        }
    }

    /// Checks the limits; `Some(which)` means the client must be disconnected now.
    pub fn over_limit(&mut self) -> Option<&'static str> {
        let lim = self.limit();
        let held = self.q.counted();
        if lim.hard > 0 && held > lim.hard {
            return Some("hard");
        }
        if lim.soft > 0 && held > lim.soft {
            let now = Instant::now();
            let since = *self.soft_since.get_or_insert(now);
            // A soft time too large to add to a clock reading means "never".
            if since
                .checked_add(lim.soft_for)
                .is_some_and(|end| now >= end)
            {
                return Some("soft");
            }
        } else {
            self.soft_since = None;
        }
        None
    }

    /// When the soft limit will have been exceeded for long enough.
    pub fn soft_deadline(&self) -> Option<Instant> {
        self.soft_since
            .and_then(|s| s.checked_add(self.limit().soft_for))
    }

    /// Logs and counts a disconnection for going over a limit.
    pub fn report_disconnect(&self, client: u64, which: &'static str) {
        let class = match self.class {
            Class::Normal => "normal",
            Class::PubSub => "pubsub",
        };
        let lim = self.limit();
        telemetry::client_rejected("output_buffer");
        telemetry::output_buffer_disconnect(class, which);
        tracing::warn!(
            client,
            class,
            limit = which,
            held_bytes = self.q.counted(),
            hard = lim.hard,
            soft = lim.soft,
            soft_s = lim.soft_for.as_secs(),
            "client output buffer over its limit (limits.*output_buffer*); disconnecting"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lim(hard: usize, soft: usize, secs: u64) -> OutputLimits {
        let l = BufferLimit {
            hard,
            soft,
            soft_for: Duration::from_secs(secs),
        };
        OutputLimits {
            normal: l,
            pubsub: l,
        }
    }

    #[test]
    fn queue_keeps_order_and_counts_all_but_the_chunk_being_written() {
        let mut q = OutQueue::default();
        q.push(&Bytes::from_static(b"+a\r\n"));
        assert_eq!(q.counted(), 0, "the only chunk is the one being written");
        let big = Bytes::from(vec![b'x'; DIRECT_WRITE * 2]);
        q.push(&big);
        q.push(&Bytes::from_static(b"+b\r\n"));
        // Chunks: "+a\r\n" (sealed), big, tail "+b\r\n".
        assert_eq!(q.len, 8 + big.len());
        assert_eq!(q.counted(), big.len() + 4);
        let mut out = Vec::new();
        while !q.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            assert!(q.slices(&mut slices) > 0);
            let n = slices[0].len().min(5000);
            out.extend_from_slice(&slices[0][..n]);
            q.advance(n);
        }
        let mut want = b"+a\r\n".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"+b\r\n");
        assert_eq!(out, want);
        assert_eq!(q.counted(), 0);
    }

    #[test]
    fn small_replies_are_sealed_so_they_count() {
        let mut q = OutQueue::default();
        for _ in 0..(4 * GATHER / 4) {
            q.push(&Bytes::from_static(b"+m\r\n"));
        }
        // Everything but the first sealed chunk counts, however small each reply is.
        assert!(q.counted() >= 2 * GATHER, "{}", q.counted());
    }

    #[test]
    fn hard_limit_trips_at_once_and_soft_only_after_its_time() {
        let mut w = Output::new(lim(100_000, 40_000, 3600));
        let chunk = Bytes::from(vec![0u8; 30_000]);
        w.q.push(&chunk); // being written: exempt
        w.q.push(&chunk);
        assert_eq!(w.over_limit(), None);
        w.q.push(&chunk); // 60 000 counted: over soft, within its hour
        assert_eq!(w.over_limit(), None);
        assert!(w.soft_deadline().is_some());
        w.q.push(&chunk);
        w.q.push(&chunk); // 120 000 counted: over hard
        assert_eq!(w.over_limit(), Some("hard"));
        // Dropping under the soft limit forgets when it was crossed.
        w.q.advance(4 * 30_000);
        assert_eq!(w.over_limit(), None);
        assert!(w.soft_deadline().is_none());

        // A zero soft time disconnects as soon as the soft limit is exceeded.
        w.limits = lim(0, 40_000, 0);
        for _ in 0..3 {
            w.q.push(&chunk);
        }
        assert_eq!(w.over_limit(), Some("soft"));
        // 0 disables both.
        w.limits = lim(0, 0, 0);
        assert_eq!(w.over_limit(), None);
        // A soft time no clock can reach (u64::MAX seconds from the config) never trips, and
        // never panics.
        w.limits = lim(0, 40_000, u64::MAX);
        w.soft_since = None;
        assert_eq!(w.over_limit(), None);
        assert_eq!(w.soft_deadline(), None);
    }

    #[test]
    fn pubsub_class_has_its_own_limits() {
        let normal = BufferLimit {
            hard: 1_000_000,
            soft: 0,
            soft_for: Duration::ZERO,
        };
        let pubsub = BufferLimit {
            hard: 50_000,
            soft: 0,
            soft_for: Duration::ZERO,
        };
        let mut w = Output::new(OutputLimits { normal, pubsub });
        let chunk = Bytes::from(vec![0u8; 30_000]);
        for _ in 0..4 {
            w.q.push(&chunk);
        }
        assert_eq!(w.over_limit(), None);
        w.pubsub();
        assert_eq!(w.over_limit(), Some("hard"));
    }
}
