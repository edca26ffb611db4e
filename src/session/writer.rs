//! The reply side of a client connection: writes replies in the order the commands came.
//!
//! The reader queues one [`Out`] per command (or per batch of commands); this task takes each in
//! turn, so a slow reply holds back only the replies behind it from the same client, exactly as
//! Redis orders them. Replies that are already there are gathered into one write.
//!
//! Replies are taken as soon as they arrive, whether or not the client is reading, and counted
//! until its socket accepts them: that is the client's output buffer, limited as Redis's
//! `client-output-buffer-limit` does (a hard limit that disconnects at once, a soft limit that
//! disconnects after a while), with a separate class for pub/sub clients.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot, watch};

use std::sync::Arc;

use super::retry::{self, Retry};
use crate::config::{BufferLimit, OutputLimits};
use crate::state::transform::Reshape;
use crate::telemetry;
use crate::upstream::cluster;
use crate::upstream::conn::{BatchResult, Replies};
use crate::upstream::node::Node;
use crate::upstream::{PoolKey, Upstream};
use tokio::time::Instant;

/// Replies of this size or more are queued as they are instead of being copied together.
const DIRECT_WRITE: usize = 16 * 1024;
/// Small replies are gathered into chunks of about this size.
const GATHER: usize = 64 * 1024;
/// Most buffers handed to one vectored write.
const MAX_SLICES: usize = 32;
/// How long closing a connection may take (a TLS close_notify to a client that reads nothing).
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(1);

/// Cluster: what is needed to re-send commands that Redis redirected (MOVED, ASK, TRYAGAIN).
pub struct Redirectable {
    /// The commands as sent, back to back.
    pub cmds: Bytes,
    /// Where each command ends in `cmds`.
    pub ends: Vec<u32>,
    /// The node they were sent to.
    pub node: Arc<Node>,
    /// The client's database and protocol.
    pub key: PoolKey,
    /// For redirect targets and slot map refreshes.
    pub up: Arc<Upstream>,
}

impl Redirectable {
    /// Replaces every redirected reply in `r` with the reply from where it was sent on to.
    /// Returns, for each redirected command, the node that finally answered (for follow-ups).
    async fn fix(&self, r: &mut Replies) -> Vec<(usize, Arc<Node>)> {
        let frames = cluster::frames(&r.bytes);
        let mut changed = false;
        let mut out = Vec::with_capacity(frames.len());
        let mut moved = Vec::new();
        for (i, f) in frames.into_iter().enumerate() {
            let redirected = i < 128
                && r.errors & (1 << i) != 0
                && cluster::redirect(&f, &self.node.ep.addr).is_some();
            if !redirected {
                out.push(f);
                continue;
            }
            let start = if i == 0 {
                0
            } else {
                self.ends.get(i - 1).copied().unwrap_or(0) as usize
            };
            let end = self.ends.get(i).copied().unwrap_or(0) as usize;
            if start >= end || end > self.cmds.len() {
                out.push(f);
                continue;
            }
            let cmd = self.cmds.slice(start..end);
            let (reply, node) =
                cluster::follow(&self.up, self.key, self.node.clone(), &cmd, f).await;
            if matches!(reply.first(), Some(b'-' | b'!')) {
                r.errors |= 1 << i;
            } else {
                r.errors &= !(1 << i);
            }
            out.push(reply);
            moved.push((i, node));
            changed = true;
        }
        if changed {
            let mut b = BytesMut::with_capacity(out.iter().map(Bytes::len).sum());
            for f in out {
                b.extend_from_slice(&f);
            }
            r.bytes = b.freeze();
        }
        moved
    }
}

/// Reshapes the replies of the state commands in a batch (also those that arrived before the
/// connection failed, so an encoded value never reaches the client).
async fn reshape_batch(
    r: BatchResult,
    reshapes: Vec<(u16, Box<Reshape>)>,
    moved: &[(usize, Arc<Node>)],
    key: Option<PoolKey>,
) -> BatchResult {
    let (bytes, received) = match &r {
        Ok(replies) => (replies.bytes.clone(), usize::MAX),
        Err(f) => (f.partial.clone(), f.received),
    };
    let mut errors = match &r {
        Ok(replies) => replies.errors,
        Err(_) => 0,
    };
    // One pass over the reply frames: runs of frames that stay as they are become one slice,
    // reshaped frames their own part; the parts are joined once at the end (or not at all when
    // the whole batch is one reshaped reply, as for a lone state GET).
    let mut parts: Vec<Bytes> = Vec::with_capacity(2 * reshapes.len() + 1);
    let mut reshapes = reshapes.into_iter().peekable();
    let mut kept_from = 0;
    for (i, frame) in cluster::frame_ranges(&bytes).enumerate() {
        if i >= received {
            // A failed batch: replies after the last one received stay as they are.
            break;
        }
        // `reshapes` is in command order, so the next one is for this frame or a later one.
        if let Some((_, mut reshape)) = reshapes.next_if(|(j, _)| *j as usize == i) {
            if let (Some((_, node)), Some(key)) = (moved.iter().find(|(m, _)| *m == i), key) {
                // Follow-ups (NOSCRIPT, previous version) go where the command ended up.
                reshape.conn = Some(node.assign(key));
            }
            let out = reshape.apply(bytes.slice(frame.clone())).await;
            if i < 128 {
                if matches!(out.first(), Some(b'-' | b'!')) {
                    errors |= 1 << i;
                } else {
                    errors &= !(1 << i);
                }
            }
            if kept_from < frame.start {
                parts.push(bytes.slice(kept_from..frame.start));
            }
            parts.push(out);
            kept_from = frame.end;
        }
    }
    if kept_from < bytes.len() {
        parts.push(bytes.slice(kept_from..));
    }
    let joined = match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in &parts {
                b.extend_from_slice(p);
            }
            b.freeze()
        }
    };
    match r {
        Ok(_) => Ok(Replies {
            bytes: joined,
            errors,
        }),
        Err(mut f) => {
            f.partial = joined;
            Err(f)
        }
    }
}

/// A reply still being put together from several upstream replies (cluster fan-out).
pub type Joined = std::pin::Pin<Box<dyn std::future::Future<Output = Bytes> + Send>>;

/// A batch sent to a shared connection, whose replies the client is waiting for.
pub struct BatchOut {
    /// Where the replies arrive.
    pub rx: oneshot::Receiver<BatchResult>,
    /// Metric ids of the commands, in order.
    pub ids: Vec<u16>,
    /// State commands among them: index and reshaping.
    pub reshapes: Vec<(u16, Box<Reshape>)>,
    /// When the batch was read.
    pub started: Instant,
    /// `CLIENT REPLY OFF/SKIP`: consume but do not send.
    pub discard: bool,
    /// Cluster: how to follow redirects.
    pub redirect: Option<Box<Redirectable>>,
    /// The batch's place in `limits.max_pending_requests`, freed once it is answered.
    pub room: OwnedSemaphorePermit,
    /// How to send it again if its connection fails (`upstream.retry_on_timeout`).
    pub retry: Option<Box<Retry>>,
}

/// One command whose reply several nodes make up (cluster split and fan-out).
pub struct JoinedOut {
    /// Produces the joined reply.
    pub fut: Joined,
    /// Metric id of the command.
    pub id: u16,
    /// When it was read.
    pub started: Instant,
    /// `CLIENT REPLY OFF/SKIP`.
    pub discard: bool,
    /// Its place in `limits.max_pending_requests`.
    pub room: OwnedSemaphorePermit,
}

/// Something to send to the client, in order.
pub enum Out {
    /// Bytes that are ready now.
    Ready(Bytes),
    /// A pub/sub message or RESP3 push relayed from a dedicated connection: sent like `Ready`,
    /// and from then on the client's output buffer is limited as a pub/sub client's.
    Message(Bytes),
    /// The replies of a batch on a shared connection.
    Batch(BatchOut),
    /// One command answered by several nodes (cluster): the parts were sent already.
    Joined(JoinedOut),
    /// Signals when everything queued before it has been written.
    Barrier(oneshot::Sender<()>),
    /// Write what is queued, then close the connection.
    Close,
}

/// Shared flag: set when the connection is finished, so the reader stops too.
pub type Closed = watch::Sender<bool>;

/// Reply bytes waiting for the client's socket, in order: large replies as they came, small
/// ones copied together.
#[derive(Default)]
struct OutQueue {
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    len: usize,
}

impl OutQueue {
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, b: &Bytes) {
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

    fn push_slice(&mut self, b: &[u8]) {
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
    fn counted(&self) -> usize {
        let exempt = self.chunks.front().map_or(self.tail.len(), Bytes::len);
        self.len - exempt
    }

    /// Fills `out` with the next buffers to write; returns how many.
    fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let mut n = 0;
        for c in self.chunks.iter().take(MAX_SLICES) {
            out[n] = IoSlice::new(c);
            n += 1;
        }
        if n < MAX_SLICES && !self.tail.is_empty() {
            out[n] = IoSlice::new(&self.tail);
            n += 1;
        }
        n
    }

    fn advance(&mut self, mut n: usize) {
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

/// The item at the head of the queue that the writer is waiting for.
enum Front {
    None,
    Batch(BatchOut),
    Joined(JoinedOut),
    Barrier(oneshot::Sender<()>),
    Close,
}

impl Front {
    fn waiting(&self) -> bool {
        matches!(self, Front::Batch(_) | Front::Joined(_))
    }
}

/// Waits for the reply the front item is waiting for (never resolves otherwise).
async fn front_reply(front: &mut Front) -> Option<BatchResult> {
    match front {
        Front::Batch(b) => (&mut b.rx).await.ok(),
        Front::Joined(JoinedOut { fut, .. }) => {
            let bytes = fut.as_mut().await;
            let errors = u128::from(matches!(bytes.first(), Some(b'-')));
            Some(Ok(Replies { bytes, errors }))
        }
        _ => std::future::pending().await,
    }
}

/// Which output-buffer class a client is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Normal,
    PubSub,
}

/// Why the writer stopped.
enum End {
    /// Everything was written (the reader hung up, or `Close`).
    Done,
    /// Disconnected for exceeding an output-buffer limit.
    OverLimit,
}

struct Writer {
    q: OutQueue,
    limits: OutputLimits,
    class: Class,
    /// When the held bytes went over the soft limit (reset when they drop under it).
    soft_since: Option<Instant>,
    client: u64,
}

impl Writer {
    fn limit(&self) -> BufferLimit {
        match self.class {
            Class::Normal => self.limits.normal,
            Class::PubSub => self.limits.pubsub,
        }
    }

    /// Checks the limits; `Some(which)` means the client must be disconnected now.
    fn over_limit(&mut self) -> Option<&'static str> {
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
    fn soft_deadline(&self) -> Option<Instant> {
        self.soft_since
            .and_then(|s| s.checked_add(self.limit().soft_for))
    }

    /// Turns a batch outcome into the bytes the client sees: the replies that arrived, then one
    /// error per command that was not answered.
    fn put_batch(&mut self, r: BatchResult, ids: &[u16], discard: bool) {
        let replies = ids.len();
        match r {
            Ok(r) => {
                for (i, id) in ids.iter().enumerate() {
                    telemetry::command(*id, i < 128 && r.errors & (1 << i) != 0);
                }
                if !discard {
                    self.q.push(&r.bytes);
                }
            }
            Err(f) => {
                telemetry::upstream_error(f.error.kind());
                for (i, id) in ids.iter().enumerate() {
                    telemetry::command(*id, i >= f.received);
                }
                if discard {
                    return;
                }
                self.q.push(&f.partial);
                let line = f.error.to_resp();
                for _ in f.received..replies {
                    self.q.push_slice(&line);
                }
            }
        }
    }

    /// Handles the reply the front item was waiting for. Returns the new front: nothing, or
    /// the same item waiting again when a failed read-only batch was sent once more.
    async fn complete(&mut self, front: Front, r: Option<BatchResult>) -> Front {
        // None: the connection task dropped the batch without answering (it is shutting down);
        // the client then gets nothing for it, as before.
        let Some(r) = r else { return Front::None };
        match front {
            Front::Batch(BatchOut {
                ids,
                mut reshapes,
                started,
                discard,
                redirect,
                room,
                retry,
                ..
            }) => {
                let r = match (r, retry) {
                    (Err(f), Some(retry))
                        if retry::retryable(&f.error) && f.received < ids.len() =>
                    {
                        let answered = f.received;
                        match retry.again(answered) {
                            Some(rx) => {
                                telemetry::upstream_retry();
                                let (done, rest) = ids.split_at(answered);
                                for id in done {
                                    telemetry::command(*id, false);
                                }
                                // The replies that did arrive are reshaped now; the others
                                // keep their reshaping, renumbered for the re-sent tail.
                                let later = reshapes.split_off(
                                    reshapes.partition_point(|(i, _)| (*i as usize) < answered),
                                );
                                let f = match reshape_batch(Err(f), reshapes, &[], None).await {
                                    Err(f) => f,
                                    Ok(_) => return Front::None,
                                };
                                if !discard {
                                    self.q.push(&f.partial);
                                }
                                return Front::Batch(BatchOut {
                                    rx,
                                    ids: rest.to_vec(),
                                    reshapes: later
                                        .into_iter()
                                        .map(|(i, r)| (i - answered as u16, r))
                                        .collect(),
                                    started,
                                    discard,
                                    redirect: None,
                                    room,
                                    retry: None,
                                });
                            }
                            None => Err(f),
                        }
                    }
                    (r, _) => r,
                };
                let mut r = r;
                let mut moved = Vec::new();
                if let (Some(red), Ok(replies)) = (&redirect, &mut r)
                    && replies.errors != 0
                {
                    moved = red.fix(replies).await;
                }
                if !reshapes.is_empty() {
                    let key = redirect.as_ref().map(|red| red.key);
                    r = reshape_batch(r, reshapes, &moved, key).await;
                }
                telemetry::round_trip(started.elapsed());
                self.put_batch(r, &ids, discard);
                drop(room);
            }
            Front::Joined(JoinedOut {
                id,
                started,
                discard,
                room,
                ..
            }) => {
                telemetry::round_trip(started.elapsed());
                self.put_batch(r, &[id], discard);
                drop(room);
            }
            _ => {}
        }
        Front::None
    }

    /// Takes a new item from the reader: bytes go to the queue, the rest becomes the front.
    fn accept(&mut self, item: Out) -> Front {
        match item {
            Out::Ready(b) => {
                self.q.push(&b);
                Front::None
            }
            Out::Message(b) => {
                self.class = Class::PubSub;
                self.q.push(&b);
                Front::None
            }
            Out::Batch(b) => Front::Batch(b),
            Out::Joined(j) => Front::Joined(j),
            Out::Barrier(tx) => Front::Barrier(tx),
            Out::Close => Front::Close,
        }
    }

    async fn serve<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        rx: &mut mpsc::Receiver<Out>,
    ) -> std::io::Result<End> {
        let mut front = Front::None;
        let mut reader_gone = false;
        loop {
            // Take everything that is already there, without waiting, so it leaves in one write.
            let mut taken = 0;
            while taken < 256 {
                taken += 1;
                match &mut front {
                    Front::None if !reader_gone => match rx.try_recv() {
                        Ok(item) => front = self.accept(item),
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => reader_gone = true,
                    },
                    Front::Batch(b) => match b.rx.try_recv() {
                        Ok(r) => {
                            let f = std::mem::replace(&mut front, Front::None);
                            front = self.complete(f, Some(r)).await;
                        }
                        Err(oneshot::error::TryRecvError::Empty) => break,
                        Err(oneshot::error::TryRecvError::Closed) => {
                            let f = std::mem::replace(&mut front, Front::None);
                            front = self.complete(f, None).await;
                        }
                    },
                    Front::Barrier(_) if self.q.is_empty() => {
                        if let Front::Barrier(tx) = std::mem::replace(&mut front, Front::None) {
                            let _ = tx.send(());
                        }
                    }
                    Front::Close if self.q.is_empty() => return Ok(End::Done),
                    _ => break,
                }
            }
            if reader_gone && matches!(front, Front::None) && self.q.is_empty() {
                return Ok(End::Done);
            }
            if let Some(which) = self.over_limit() {
                self.disconnect(which);
                return Ok(End::OverLimit);
            }
            let deadline = self.soft_deadline();
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let n_slices = self.q.slices(&mut slices);
            let can_take = matches!(front, Front::None) && !reader_gone;
            tokio::select! {
                biased;
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                }, if deadline.is_some() => {}
                r = wr.write_vectored(&slices[..n_slices]), if n_slices > 0 => {
                    let n = r?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::WriteZero.into());
                    }
                    self.q.advance(n);
                }
                r = front_reply(&mut front), if front.waiting() => {
                    let f = std::mem::replace(&mut front, Front::None);
                    front = self.complete(f, r).await;
                }
                item = rx.recv(), if can_take => match item {
                    Some(item) => front = self.accept(item),
                    None => reader_gone = true,
                },
            }
        }
    }

    fn disconnect(&self, which: &'static str) {
        let class = match self.class {
            Class::Normal => "normal",
            Class::PubSub => "pubsub",
        };
        let lim = self.limit();
        telemetry::client_rejected("output_buffer");
        telemetry::output_buffer_disconnect(class, which);
        tracing::warn!(
            client = self.client,
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

/// Runs until the reader hangs up, the client goes away, a `Close` is reached, or the client's
/// output buffer goes over its limits.
pub async fn run<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Out>,
    closed: Closed,
    limits: OutputLimits,
    client: u64,
) {
    let mut w = Writer {
        q: OutQueue::default(),
        limits,
        class: Class::Normal,
        soft_since: None,
        client,
    };
    match w.serve(&mut wr, &mut rx).await {
        Ok(End::Done) => {}
        Ok(End::OverLimit) => {}
        Err(e) => tracing::debug!(client, error = %e, "client write failed"),
    }
    // Stop the reader first, so that nothing new is queued for a client being disconnected.
    let _ = closed.send(true);
    drop(rx);
    let _ = tokio::time::timeout(SHUTDOWN_LIMIT, wr.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut w = Writer {
            q: OutQueue::default(),
            limits: lim(100_000, 40_000, 3600),
            class: Class::Normal,
            soft_since: None,
            client: 1,
        };
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
        let mut w = Writer {
            q: OutQueue::default(),
            limits: OutputLimits { normal, pubsub },
            class: Class::Normal,
            soft_since: None,
            client: 1,
        };
        let chunk = Bytes::from(vec![0u8; 30_000]);
        for _ in 0..4 {
            w.q.push(&chunk);
        }
        assert_eq!(w.over_limit(), None);
        let _ = w.accept(Out::Message(Bytes::from_static(b">1\r\n+x\r\n")));
        assert_eq!(w.over_limit(), Some("hard"));
    }
}
