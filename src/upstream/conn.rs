//! One shared, pipelined connection to Redis.
//!
//! Many clients send batches of commands here; one task writes them back to back (so commands
//! from many clients leave in few syscalls) and hands each batch its replies, in order, as one
//! contiguous slice of the read buffer: no reply is copied or re-encoded on the way back.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::connect;
use super::node::Endpoint;
use super::{PoolKey, Upstream, UpstreamError};
use crate::protocol::ReplyScanner;
use crate::telemetry;

/// Write buffer size above which we stop taking new batches until Redis has read some.
const HIGH_WATER: usize = 1024 * 1024;
/// First and last delay between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// Several commands from one client, sent together; their replies come back together.
pub struct Batch {
    /// The commands, RESP-encoded, back to back.
    pub bytes: Bytes,
    /// How many replies they produce.
    pub replies: usize,
    /// Where the replies go.
    pub tx: oneshot::Sender<BatchResult>,
}

/// The replies of a batch, or how far it got before the connection failed.
pub type BatchResult = Result<Replies, BatchFailure>;

/// A batch's replies, back to back, and which of them are errors.
#[derive(Debug)]
pub struct Replies {
    /// The reply frames as Redis sent them.
    pub bytes: Bytes,
    /// Bit i is set when reply i is an error (for the first 128 replies).
    pub errors: u128,
}

/// A batch that was cut short: the replies that did arrive, and why the rest did not.
#[derive(Debug)]
pub struct BatchFailure {
    /// Complete replies received before the failure.
    pub partial: Bytes,
    /// How many replies `partial` holds.
    pub received: usize,
    /// What went wrong.
    pub error: UpstreamError,
}

/// Handle to a shared connection task.
#[derive(Clone)]
pub struct SharedConn {
    tx: Arc<mpsc::UnboundedSender<Batch>>,
}

impl SharedConn {
    /// Starts the connection task (it connects at once and reconnects by itself).
    pub fn spawn(
        upstream: Weak<Upstream>,
        ep: Arc<Endpoint>,
        key: PoolKey,
        index: usize,
    ) -> SharedConn {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(upstream, ep, key, index, rx));
        SharedConn { tx: Arc::new(tx) }
    }

    /// How many handles to this connection exist besides the pool's own: about the number of
    /// clients assigned to it.
    pub fn users(&self) -> usize {
        Arc::strong_count(&self.tx).saturating_sub(1)
    }

    /// Queues a batch; it is answered through its `tx` in every case.
    pub fn send(&self, batch: Batch) {
        if let Err(mpsc::error::SendError(b)) = self.tx.send(batch) {
            let _ = b.tx.send(Err(BatchFailure {
                partial: Bytes::new(),
                received: 0,
                error: UpstreamError::Closed {
                    addr: "shared connection task".into(),
                },
            }));
        }
    }
}

struct InFlight {
    remaining: usize,
    received: usize,
    errors: u128,
    tx: oneshot::Sender<BatchResult>,
    sent_at: Instant,
}

fn fail(tx: oneshot::Sender<BatchResult>, partial: Bytes, received: usize, e: &UpstreamError) {
    let _ = tx.send(Err(BatchFailure {
        partial,
        received,
        error: e.clone(),
    }));
}

/// Answers every batch still sent to a retired node with the reason, until the last handle
/// to it is gone (sessions drop theirs when they see the new topology).
async fn refuse_all(ep: &Endpoint, held: Option<Batch>, rx: &mut mpsc::UnboundedReceiver<Batch>) {
    let e = ep.retired_error();
    if let Some(b) = held {
        fail(b.tx, Bytes::new(), 0, &e);
    }
    while let Some(b) = rx.recv().await {
        fail(b.tx, Bytes::new(), 0, &e);
    }
}

async fn run(
    upstream: Weak<Upstream>,
    ep: Arc<Endpoint>,
    key: PoolKey,
    index: usize,
    mut rx: mpsc::UnboundedReceiver<Batch>,
) {
    let mut backoff = BACKOFF_MIN;
    // A batch that arrived during the backoff and triggered an early reconnect.
    let mut held: Option<Batch> = None;
    loop {
        if ep.retired().is_cancelled() {
            return refuse_all(&ep, held, &mut rx).await;
        }
        let Some(up) = upstream.upgrade() else { return };
        let cfg = up.config().clone();
        let attempt_at = Instant::now();
        drop(up);
        let connected = tokio::select! {
            c = connect::connect(&cfg, &ep.addr, &key) => c,
            _ = ep.retired().cancelled() => continue,
        };
        let Some(up) = upstream.upgrade() else { return };
        match connected {
            Ok(c) => {
                up.note_connect(true, Some(&c.info));
                telemetry::upstream_connect(true);
                tracing::debug!(
                    db = key.db,
                    proto = key.proto,
                    index,
                    "shared upstream connection open"
                );
                drop(up);
                backoff = BACKOFF_MIN;
                let mut conn = Serving {
                    addr: ep.name.clone(),
                    timeout: Duration::from_millis(cfg.timeout_ms),
                    timeout_ms: cfg.timeout_ms,
                    inflight: VecDeque::new(),
                    rbuf: c.rbuf,
                    wbuf: BytesMut::with_capacity(16 * 1024),
                    scanner: ReplyScanner::default(),
                    consumed: 0,
                };
                telemetry::upstream_connections(1);
                if let Some(b) = held.take() {
                    conn.push(b);
                }
                let res = conn.serve(c.stream, &mut rx, &ep).await;
                telemetry::upstream_connections(-1);
                match res {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, index, "shared upstream connection failed; reconnecting");
                        telemetry::upstream_reconnect();
                        conn.fail_all(&e);
                        if let Some(up) = upstream.upgrade() {
                            up.request_refresh();
                        }
                    }
                }
            }
            Err(e) => {
                up.note_connect(false, None);
                telemetry::upstream_connect(false);
                drop(up);
                tracing::warn!(error = %e, index, node = %ep.name, "cannot connect to upstream");
                if let Some(b) = held.take() {
                    fail(b.tx, Bytes::new(), 0, &e);
                }
                // Fail fast while Redis is away, but try again as soon as someone needs it
                // and a minimum pause has passed.
                let wake = attempt_at + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                loop {
                    while let Ok(b) = rx.try_recv() {
                        fail(b.tx, Bytes::new(), 0, &e);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => break,
                        _ = ep.retired().cancelled() => break,
                        b = rx.recv() => match b {
                            None => return,
                            Some(b) => {
                                if Instant::now() >= attempt_at + BACKOFF_MIN * 4 {
                                    // Keep it: the reconnect below will serve or fail it.
                                    held = Some(b);
                                    break;
                                }
                                fail(b.tx, Bytes::new(), 0, &e);
                            }
                        }
                    }
                }
            }
        }
    }
}

struct Serving {
    addr: String,
    timeout: Duration,
    timeout_ms: u64,
    inflight: VecDeque<InFlight>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    scanner: ReplyScanner,
    /// Bytes of `rbuf` holding complete replies of the head batch.
    consumed: usize,
}

impl Serving {
    async fn serve(
        &mut self,
        stream: connect::Stream,
        rx: &mut mpsc::UnboundedReceiver<Batch>,
        ep: &Endpoint,
    ) -> Result<(), UpstreamError> {
        let (mut rd, mut wr) = tokio::io::split(stream);
        self.deliver()?;
        // One timer, re-armed only when the oldest outstanding batch changes: building a new
        // timer on every turn of this loop was a visible share of the per-command cost.
        let timer = tokio::time::sleep(self.timeout);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(64 * 1024);
            }
            let deadline = self.inflight.front().map(|f| f.sent_at + self.timeout);
            if let Some(d) = deadline
                && armed != Some(d)
            {
                timer.as_mut().reset(d);
                armed = Some(d);
            }
            tokio::select! {
                biased;
                r = rd.read_buf(&mut self.rbuf) => {
                    let n = r.map_err(|e| UpstreamError::io(&self.addr, &e))?;
                    if n == 0 {
                        return Err(UpstreamError::Closed { addr: self.addr.clone() });
                    }
                    self.deliver()?;
                }
                r = wr.write(&self.wbuf), if !self.wbuf.is_empty() => {
                    let n = r.map_err(|e| UpstreamError::io(&self.addr, &e))?;
                    self.wbuf.advance(n);
                }
                b = rx.recv(), if self.wbuf.len() < HIGH_WATER => {
                    let Some(b) = b else { return Ok(()) };
                    self.push(b);
                    while self.wbuf.len() < HIGH_WATER {
                        match rx.try_recv() {
                            Ok(b) => self.push(b),
                            Err(_) => break,
                        }
                    }
                    // Write at once rather than waiting for another turn of the loop.
                    if !self.wbuf.is_empty() {
                        let n = wr.write(&self.wbuf).await.map_err(|e| UpstreamError::io(&self.addr, &e))?;
                        self.wbuf.advance(n);
                    }
                }
                _ = ep.retired().cancelled() => return Err(ep.retired_error()),
                _ = &mut timer, if deadline.is_some() => {
                    return Err(UpstreamError::Timeout { addr: self.addr.clone(), ms: self.timeout_ms });
                }
            }
            if self.wbuf.is_empty() && self.wbuf.capacity() > 4 * HIGH_WATER {
                self.wbuf = BytesMut::with_capacity(16 * 1024);
            }
        }
    }

    fn push(&mut self, b: Batch) {
        self.wbuf.extend_from_slice(&b.bytes);
        self.inflight.push_back(InFlight {
            remaining: b.replies,
            received: 0,
            errors: 0,
            tx: b.tx,
            sent_at: Instant::now(),
        });
    }

    /// Hands every complete batch its replies.
    fn deliver(&mut self) -> Result<(), UpstreamError> {
        loop {
            let start = self.consumed;
            if start >= self.rbuf.len() {
                return Ok(());
            }
            let Some(len) =
                self.scanner
                    .scan(&self.rbuf[start..])
                    .map_err(|e| UpstreamError::Protocol {
                        addr: self.addr.clone(),
                        detail: e.to_string(),
                    })?
            else {
                return Ok(());
            };
            self.scanner.reset();
            if self.rbuf[start] == b'>' {
                // A RESP3 push nobody asked for on a shared connection: drop it.
                let tail = self.rbuf.split_off(start);
                self.rbuf.extend_from_slice(&tail[len..]);
                continue;
            }
            let Some(head) = self.inflight.front_mut() else {
                return Err(UpstreamError::Protocol {
                    addr: self.addr.clone(),
                    detail: "reply with no command outstanding".into(),
                });
            };
            if matches!(self.rbuf[start], b'-' | b'!') && head.received < 128 {
                head.errors |= 1 << head.received;
            }
            self.consumed += len;
            head.remaining -= 1;
            head.received += 1;
            if head.remaining == 0 {
                let bytes = self.rbuf.split_to(self.consumed).freeze();
                self.consumed = 0;
                if let Some(done) = self.inflight.pop_front() {
                    telemetry::upstream_latency(done.sent_at.elapsed());
                    let _ = done.tx.send(Ok(Replies {
                        bytes,
                        errors: done.errors,
                    }));
                }
            }
        }
    }

    fn fail_all(&mut self, e: &UpstreamError) {
        let mut first = true;
        while let Some(f) = self.inflight.pop_front() {
            let partial = if first {
                self.rbuf
                    .split_to(self.consumed.min(self.rbuf.len()))
                    .freeze()
            } else {
                Bytes::new()
            };
            let received = if first { f.received } else { 0 };
            first = false;
            fail(f.tx, partial, received, e);
        }
        self.consumed = 0;
    }
}

/// Convenience for one-off commands through a shared connection (follow-ups, probes).
pub async fn call(conn: &SharedConn, bytes: Bytes, replies: usize) -> Result<Bytes, BatchFailure> {
    let (tx, rx) = oneshot::channel();
    conn.send(Batch { bytes, replies, tx });
    rx.await.map(|r| r.map(|r| r.bytes)).unwrap_or_else(|_| {
        Err(BatchFailure {
            partial: Bytes::new(),
            received: 0,
            error: UpstreamError::Closed {
                addr: "shared connection task".into(),
            },
        })
    })
}
