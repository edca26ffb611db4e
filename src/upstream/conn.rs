//! One shared, pipelined connection to Redis.
//!
//! Many clients send batches of commands here; one task writes them back to back (so commands
//! from many clients leave in few syscalls) and hands each batch its replies, in order, as one
//! contiguous slice of the read buffer: no reply is copied or re-encoded on the way back.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::batch::{Batch, BatchFailure, BatchResult, Replies, fail};
use super::connect;
use super::front::{BIG_TRANSFER, Front, STALLED_AFTER};
use super::node::Endpoint;
use super::{PoolKey, Upstream, UpstreamError};
use crate::fair_share::FairShare;
use crate::protocol::ReplyScanner;
use crate::telemetry;

/// Write buffer size above which we stop taking new batches until Redis has read some.
const HIGH_WATER: usize = 1024 * 1024;
/// First and last delay between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(1000);

/// Handle to a shared connection task.
#[derive(Clone)]
pub struct SharedConn {
    tx: Arc<mpsc::UnboundedSender<Batch>>,
    front: Arc<Front>,
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
        let front = Arc::new(Front::default());
        tokio::spawn(run(upstream, ep, key, index, rx, front.clone()));
        SharedConn {
            tx: Arc::new(tx),
            front,
        }
    }

    /// Whether the oldest unanswered batch here has waited longer than [`STALLED_AFTER`], or
    /// the connection is in the middle of a big transfer ([`BIG_TRANSFER`]): a client with
    /// nothing in flight here does better elsewhere.
    pub fn stalled(&self, now: Instant) -> bool {
        self.front.busy() || self.front.waited(now) > STALLED_AFTER
    }

    /// How many handles to this connection exist besides the pool's own: about the number of
    /// clients assigned to it.
    pub fn users(&self) -> usize {
        Arc::strong_count(&self.tx).saturating_sub(1)
    }

    /// Queues a batch; it is answered through its `tx` in every case.
    pub fn send(&self, batch: Batch) {
        if let Err(mpsc::error::SendError(b)) = self.tx.send(batch) {
            let _ = b.tx.send(Err(BatchFailure::unsent(UpstreamError::Closed {
                addr: "shared connection task".into(),
            })));
        }
    }
}

struct InFlight {
    remaining: usize,
    received: usize,
    errors: u128,
    /// None once the batch was answered with a timeout: its late replies are read and dropped.
    tx: Option<oneshot::Sender<BatchResult>>,
    sent_at: Instant,
    /// Where its bytes begin in everything ever written on the connection.
    start: u64,
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
    front: Arc<Front>,
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
        // Taken before the attempt: credentials accepted while it runs count as a change.
        let epoch_at_attempt = up.auth_epoch();
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
                    queued: 0,
                    written: 0,
                    cfg: Arc::new(cfg.clone()),
                    front: front.clone(),
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
                // Refused credentials may be accepted later (the ACL user is created again).
                let refused_at =
                    matches!(e, UpstreamError::Handshake { .. }).then_some(epoch_at_attempt);
                drop(up);
                tracing::warn!(error = %e, index, node = %ep.name, "cannot connect to upstream");
                if let Some(b) = held.take() {
                    fail(b.tx, Bytes::new(), 0, &e);
                }
                // Fail fast while Redis is away, but try again as soon as someone needs it
                // and a minimum pause has passed. Refused credentials (an ACL user deleted) are
                // tried again only when a command needs the connection: retrying them on a
                // timer kept every connection of a gone identity reconnecting forever.
                let wake = attempt_at + backoff;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                loop {
                    while let Ok(b) = rx.try_recv() {
                        fail(b.tx, Bytes::new(), 0, &e);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake), if refused_at.is_none() => break,
                        _ = ep.retired().cancelled() => break,
                        b = rx.recv() => match b {
                            None => return,
                            Some(b) => {
                                let credentials_changed = refused_at.is_some_and(|at| {
                                    upstream.upgrade().is_some_and(|u| u.auth_epoch() != at)
                                });
                                if credentials_changed || Instant::now() >= attempt_at + BACKOFF_MIN * 4 {
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
    /// Bytes ever put in `wbuf`, and ever written to the socket.
    queued: u64,
    written: u64,
    cfg: Arc<super::settings::UpstreamConfig>,
    front: Arc<Front>,
}

/// Whether Redis answers a PING on a connection of its own within the deadline (any answer
/// counts, BUSY and LOADING included: Redis is alive, just slow for this connection).
async fn alive(cfg: Arc<super::settings::UpstreamConfig>, addr: super::url::Addr) -> bool {
    let mut bytes = BytesMut::new();
    let n = connect::auth_command(&cfg, &mut bytes);
    crate::protocol::encode_multibulk(&mut bytes, &[b"PING".as_slice()]);
    connect::one_off(&cfg, &addr, &bytes, n + 1).await.is_ok()
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
        // Kept across turns: making a fresh one per turn was a visible share of the cost.
        let retired = ep.retired().clone().cancelled_owned();
        tokio::pin!(retired);
        // One timer, re-armed only when the moment to check changes: building a new timer on
        // every turn of this loop was a visible share of the per-command cost.
        let timer = tokio::time::sleep(self.timeout);
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        // A liveness check of Redis on another connection, while a batch is overdue.
        let mut probe: Option<std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>> =
            None;
        // Until when overdue batches may keep waiting (Redis answered a probe).
        let mut grace_until: Option<Instant> = None;
        // A big reply does not hold the thread for all of it.
        let mut share = FairShare::default();
        loop {
            let incoming = self
                .scanner
                .missing(self.rbuf.len().saturating_sub(self.consumed));
            self.front
                .set_busy(incoming >= BIG_TRANSFER || self.wbuf.len() >= BIG_TRANSFER);
            share.take_turn().await;
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                // A big reply's room at once, from its length (Redis's lengths are real):
                // grown step by step, the buffer was copied as it grew.
                self.rbuf.reserve(incoming.max(64 * 1024));
            }
            let oldest = self
                .inflight
                .iter()
                .find(|f| f.tx.is_some())
                .map(|f| f.sent_at + self.timeout);
            let check = match (oldest, grace_until) {
                (Some(d), Some(g)) => Some(d.max(g)),
                (d, _) => d,
            };
            if let Some(d) = check
                && armed != Some(d)
            {
                timer.as_mut().reset(d);
                armed = Some(d);
            }
            tokio::select! {
                biased;
                r = crate::fair_share::read_buf(&mut rd, &mut self.rbuf) => {
                    let n = r.map_err(|e| UpstreamError::io(&self.addr, &e))?;
                    if n == 0 {
                        return Err(UpstreamError::Closed { addr: self.addr.clone() });
                    }
                    share.moved(n);
                    self.deliver()?;
                }
                r = wr.write(&self.wbuf), if !self.wbuf.is_empty() => {
                    let n = r.map_err(|e| UpstreamError::io(&self.addr, &e))?;
                    self.wbuf.advance(n);
                    self.written += n as u64;
                }
                b = rx.recv(), if self.wbuf.len() < HIGH_WATER => {
                    let Some(b) = b else { return Ok(()) };
                    self.push(b);
                    self.drain_queue(rx);
                    // With other batches outstanding (several clients at once), the sessions
                    // woken by the same readiness poll run first and their batches join this
                    // write: Redis then reads 55-85 times per 1,000 commands instead of
                    // 80-200, and spends a third less CPU on them (docs/BENCHMARKS.md). Alone
                    // (one client, nothing outstanding) the batch goes at once.
                    if self.inflight.len() > 1 {
                        tokio::task::yield_now().await;
                        self.drain_queue(rx);
                    }
                    // Write at once rather than waiting for another turn of the loop.
                    if !self.wbuf.is_empty() {
                        let n = wr.write(&self.wbuf).await.map_err(|e| UpstreamError::io(&self.addr, &e))?;
                        self.wbuf.advance(n);
                        self.written += n as u64;
                    }
                }
                alive = async { match probe.as_mut() { Some(p) => p.await, None => std::future::pending().await } }, if probe.is_some() => {
                    probe = None;
                    if alive {
                        // Slow, not dead: the overdue commands keep waiting for Redis.
                        grace_until = Some(Instant::now() + self.timeout);
                    } else {
                        grace_until = None;
                        self.abandon_overdue();
                    }
                }
                _ = &mut retired => return Err(ep.retired_error()),
                _ = &mut timer, if check.is_some() && probe.is_none() => {
                    armed = None;
                    let now = Instant::now();
                    let overdue = self.inflight.iter().any(|f| f.tx.is_some() && f.sent_at + self.timeout <= now);
                    if overdue && grace_until.is_none_or(|g| g <= now) {
                        probe = Some(Box::pin(alive(self.cfg.clone(), ep.addr.clone())));
                    }
                }
            }
            if self.wbuf.is_empty() && self.wbuf.capacity() > 4 * HIGH_WATER {
                self.wbuf = BytesMut::with_capacity(16 * 1024);
            }
            if self.inflight.is_empty() {
                grace_until = None;
            }
        }
    }

    /// Takes every batch already queued, up to the write buffer's high-water mark.
    fn drain_queue(&mut self, rx: &mut mpsc::UnboundedReceiver<Batch>) {
        while self.wbuf.len() < HIGH_WATER {
            match rx.try_recv() {
                Ok(b) => self.push(b),
                Err(_) => break,
            }
        }
    }

    fn push(&mut self, b: Batch) {
        self.wbuf.extend_from_slice(&b.bytes);
        let sent_at = Instant::now();
        if self.inflight.is_empty() {
            self.front.set(Some(sent_at));
        }
        self.inflight.push_back(InFlight {
            remaining: b.replies,
            received: 0,
            errors: 0,
            tx: Some(b.tx),
            sent_at,
            start: self.queued,
        });
        self.queued += b.bytes.len() as u64;
    }

    /// Redis answers nobody: every batch past its deadline gets a timeout error now, saying
    /// whether it may still run. The connection is kept (Redis may resume and run them); their
    /// replies, when they come, are dropped.
    fn abandon_overdue(&mut self) {
        let now = Instant::now();
        let e = UpstreamError::Timeout {
            addr: self.addr.clone(),
            ms: self.timeout_ms,
        };
        for (i, f) in self.inflight.iter_mut().enumerate() {
            if f.sent_at + self.timeout > now {
                break;
            }
            let Some(tx) = f.tx.take() else { continue };
            let partial = if i == 0 {
                let p = self
                    .rbuf
                    .split_to(self.consumed.min(self.rbuf.len()))
                    .freeze();
                self.consumed = 0;
                p
            } else {
                Bytes::new()
            };
            let received = f.received;
            let _ = tx.send(Err(BatchFailure {
                partial,
                received,
                error: e.clone(),
                sent: f.start < self.written,
            }));
        }
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
            if head.tx.is_none() {
                // Answered already (timed out): the late reply is dropped.
                let _ = self.rbuf.split_to(self.consumed);
                self.consumed = 0;
            }
            if head.remaining == 0 {
                let bytes = self.rbuf.split_to(self.consumed).freeze();
                self.consumed = 0;
                if bytes.len() >= BIG_TRANSFER {
                    // What follows a big reply moves to a buffer of its own: the big allocation
                    // is then freed as soon as the reply is forwarded, and the replies after it
                    // do not start megabytes into it (where BytesMut would later copy them back
                    // to the front to make room).
                    self.rbuf = BytesMut::from(&self.rbuf[..]);
                }
                let done = self.inflight.pop_front();
                self.front.set(self.inflight.front().map(|f| f.sent_at));
                if let Some(done) = done
                    && let Some(tx) = done.tx
                {
                    telemetry::upstream_latency(done.sent_at.elapsed());
                    let _ = tx.send(Ok(Replies {
                        bytes,
                        errors: done.errors,
                    }));
                }
            }
        }
    }

    /// The connection broke: every outstanding batch gets the error, saying whether it may
    /// have run (some of its bytes were written) or certainly did not.
    fn fail_all(&mut self, e: &UpstreamError) {
        self.front.set(None);
        self.front.set_busy(false);
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
            if let Some(tx) = f.tx {
                let _ = tx.send(Err(BatchFailure {
                    partial,
                    received,
                    error: e.clone(),
                    sent: f.start < self.written,
                }));
            }
        }
        self.consumed = 0;
    }
}

/// Convenience for one-off commands through a shared connection (follow-ups, probes).
pub async fn call(conn: &SharedConn, bytes: Bytes, replies: usize) -> Result<Bytes, BatchFailure> {
    let (tx, rx) = oneshot::channel();
    conn.send(Batch { bytes, replies, tx });
    rx.await.map(|r| r.map(|r| r.bytes)).unwrap_or_else(|_| {
        Err(BatchFailure::unsent(UpstreamError::Closed {
            addr: "shared connection task".into(),
        }))
    })
}
