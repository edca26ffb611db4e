//! The reply side of a client connection: writes replies in the order the commands came.
//!
//! The reader queues one [`Out`] per command (or per batch of commands); this task awaits each in
//! turn, so a slow reply holds back only the replies behind it from the same client, exactly as
//! Redis orders them. Replies that are already there are gathered into one write.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use std::sync::Arc;

use crate::state::transform::Reshape;
use crate::telemetry;
use crate::upstream::cluster;
use crate::upstream::conn::{BatchResult, Replies};
use crate::upstream::node::Node;
use crate::upstream::{PoolKey, Upstream};
use tokio::time::Instant;

/// Replies of this size or more are written directly instead of being copied into the buffer.
const DIRECT_WRITE: usize = 64 * 1024;

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
    let mut frames = cluster::frames(&bytes);
    let mut errors = match &r {
        Ok(replies) => replies.errors,
        Err(_) => 0,
    };
    for (i, mut reshape) in reshapes {
        let i = i as usize;
        if i >= received || i >= frames.len() {
            continue;
        }
        if let (Some((_, node)), Some(key)) = (moved.iter().find(|(m, _)| *m == i), key) {
            // Follow-ups (NOSCRIPT, previous version) go where the command ended up.
            reshape.conn = Some(node.assign(key));
        }
        let out = reshape.apply(frames[i].clone()).await;
        if i < 128 {
            if matches!(out.first(), Some(b'-' | b'!')) {
                errors |= 1 << i;
            } else {
                errors &= !(1 << i);
            }
        }
        frames[i] = out;
    }
    let mut b = BytesMut::with_capacity(frames.iter().map(Bytes::len).sum());
    for f in &frames {
        b.extend_from_slice(f);
    }
    match r {
        Ok(_) => Ok(Replies {
            bytes: b.freeze(),
            errors,
        }),
        Err(mut f) => {
            f.partial = b.freeze();
            Err(f)
        }
    }
}

/// A reply still being put together from several upstream replies (cluster fan-out).
pub type Joined = std::pin::Pin<Box<dyn std::future::Future<Output = Bytes> + Send>>;

/// Something to send to the client, in order.
pub enum Out {
    /// Bytes that are ready now.
    Ready(Bytes),
    /// The replies of a batch on a shared connection.
    Batch {
        /// Where the replies arrive.
        rx: oneshot::Receiver<BatchResult>,
        /// Metric ids of the commands, in order.
        ids: Vec<u16>,
        /// State commands among them: index and reshaping.
        reshapes: Vec<(u16, Box<Reshape>)>,
        /// When the batch was read.
        started: Instant,
        /// `CLIENT REPLY OFF/SKIP`: consume but do not send.
        discard: bool,
        /// Cluster: how to follow redirects.
        redirect: Option<Box<Redirectable>>,
    },
    /// One command answered by several nodes (cluster): the parts were sent already.
    Joined {
        /// Produces the joined reply.
        fut: Joined,
        /// Metric id of the command.
        id: u16,
        /// When it was read.
        started: Instant,
        /// `CLIENT REPLY OFF/SKIP`.
        discard: bool,
    },
    /// Signals when everything queued before it has been written.
    Barrier(oneshot::Sender<()>),
    /// Write what is queued, then close the connection.
    Close,
}

/// Shared flag: set when the connection is finished, so the reader stops too.
pub type Closed = watch::Sender<bool>;

struct Writer<W> {
    wr: W,
    buf: BytesMut,
    max_output: usize,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            self.wr.write_all(&self.buf).await?;
            self.buf.clear();
            if self.buf.capacity() > 4 * DIRECT_WRITE {
                self.buf = BytesMut::new();
            }
        }
        Ok(())
    }

    async fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        if b.len() >= DIRECT_WRITE {
            self.flush().await?;
            self.wr.write_all(b).await?;
        } else {
            self.buf.extend_from_slice(b);
            if self.buf.len() >= DIRECT_WRITE {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Takes a reply that is already there, or flushes what is buffered before waiting for it
    /// (so earlier replies are not held back by a slow one). None if its sender is gone.
    async fn wait<T>(&mut self, rx: &mut oneshot::Receiver<T>) -> std::io::Result<Option<T>> {
        if let Ok(v) = rx.try_recv() {
            return Ok(Some(v));
        }
        self.flush().await?;
        Ok(rx.await.ok())
    }

    /// Turns a batch outcome into the bytes the client sees: the replies that arrived, then one
    /// error per command that was not answered.
    async fn put_batch(
        &mut self,
        r: BatchResult,
        ids: &[u16],
        discard: bool,
    ) -> std::io::Result<()> {
        let replies = ids.len();
        match r {
            Ok(r) => {
                for (i, id) in ids.iter().enumerate() {
                    telemetry::command(*id, i < 128 && r.errors & (1 << i) != 0);
                }
                if discard {
                    return Ok(());
                }
                self.put(&r.bytes).await
            }
            Err(f) => {
                telemetry::upstream_error(f.error.kind());
                for (i, id) in ids.iter().enumerate() {
                    telemetry::command(*id, i >= f.received);
                }
                if discard {
                    return Ok(());
                }
                self.put(&f.partial).await?;
                let line = f.error.to_resp();
                for _ in f.received..replies {
                    self.put(&line).await?;
                }
                Ok(())
            }
        }
    }
}

/// Runs until the reader hangs up, the client goes away, or a `Close` is reached.
pub async fn run<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Out>,
    closed: Closed,
    max_output: usize,
) {
    let mut w = Writer {
        wr,
        buf: BytesMut::new(),
        max_output,
    };
    let res: std::io::Result<()> = async {
        loop {
            let item = match rx.try_recv() {
                Ok(i) => i,
                Err(mpsc::error::TryRecvError::Empty) => {
                    w.flush().await?;
                    match rx.recv().await {
                        Some(i) => i,
                        None => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            };
            match item {
                Out::Ready(b) => w.put(&b).await?,
                Out::Batch {
                    mut rx,
                    ids,
                    reshapes,
                    started,
                    discard,
                    redirect,
                } => {
                    let Some(mut r) = w.wait(&mut rx).await? else {
                        continue;
                    };
                    let mut moved = Vec::new();
                    if let (Some(red), Ok(replies)) = (&redirect, &mut r)
                        && replies.errors != 0
                    {
                        moved = red.fix(replies).await;
                    }
                    if !reshapes.is_empty() {
                        let key = redirect.as_ref().map(|r| r.key);
                        r = reshape_batch(r, reshapes, &moved, key).await;
                    }
                    telemetry::round_trip(started.elapsed());
                    w.put_batch(r, &ids, discard).await?;
                }
                Out::Joined {
                    fut,
                    id,
                    started,
                    discard,
                } => {
                    w.flush().await?;
                    let bytes = fut.await;
                    let errors = u128::from(matches!(bytes.first(), Some(b'-')));
                    telemetry::round_trip(started.elapsed());
                    w.put_batch(Ok(Replies { bytes, errors }), &[id], discard)
                        .await?;
                }
                Out::Barrier(tx) => {
                    w.flush().await?;
                    let _ = tx.send(());
                }
                Out::Close => break,
            }
            if w.buf.len() > w.max_output {
                telemetry::client_rejected("output_buffer");
                tracing::warn!("client output buffer over limits.max_output_buffer; disconnecting");
                return Ok(());
            }
        }
        w.flush().await?;
        Ok(())
    }
    .await;
    if let Err(e) = res {
        tracing::debug!(error = %e, "client write failed");
    }
    let _ = w.wr.shutdown().await;
    let _ = closed.send(true);
}
