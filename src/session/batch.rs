//! Plain commands on the client's shared connection: gathered into a batch while the input
//! holds complete commands, sent together, their replies awaited as one pipeline item.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::pipeline::{BatchOut, Item};
use super::{Flow, Session, reshape, retry};
use crate::telemetry;
use crate::upstream::batch::Batch;

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    /// Queues a reply made here (respecting `CLIENT REPLY`), in its place among the others.
    pub(super) async fn reply(&mut self, b: impl Into<Bytes>) -> Flow {
        let b = b.into();
        telemetry::command(self.cur.metric, b.first() == Some(&b'-'));
        if self.client.take_discard() {
            return Flow::Continue;
        }
        self.flush_batch().await;
        self.pipeline.push(Item::Ready(b));
        Flow::Continue
    }

    /// Sends the gathered commands to the shared connection.
    pub(super) async fn flush_batch(&mut self) {
        if self.gather.is_empty() {
            return;
        }
        let n = self.gather.len();
        let max = self.cfg.clients.max_pending_requests.max(1);
        // Room for `n` more commands awaiting replies; one batch may always go. Boxed: every
        // command's future holds this one's, and the wait is rare (see `make_room`).
        if self.pipeline.outstanding() > 0
            && self.pipeline.outstanding() + n > max
            && !Box::pin(self.make_room(n, max)).await
        {
            self.gather.clear();
            return;
        }
        if self.pipeline.outstanding() == 0 {
            self.links.leave_stalled(self.cur.read_at);
        }
        let route = self.gather.route.take();
        let conn = self
            .links
            .conn(&self.ctx.upstream, route.as_ref(), self.client.key());
        let (tx, rx) = oneshot::channel();
        let bytes = self.gather.bytes.split().freeze();
        let redirect = route.map(|node| {
            Box::new(reshape::Redirectable {
                cmds: bytes.clone(),
                ends: std::mem::take(&mut self.gather.ends),
                node,
                key: self.client.key(),
                up: self.ctx.upstream.clone(),
            })
        });
        // Cluster batches are not retried: a redirect already re-sends what needs it.
        let retryable = self.gather.read_only && redirect.is_none();
        let retry = retry::send(
            &conn,
            self.links.retry_gate.as_ref(),
            Batch {
                bytes,
                replies: n,
                tx,
            },
            retryable,
        );
        self.pipeline.push(Item::Batch(BatchOut {
            rx,
            done: None,
            ids: std::mem::take(&mut self.gather.ids),
            reshapes: std::mem::take(&mut self.gather.reshapes),
            started: self.cur.read_at,
            discard: self.gather.discard,
            redirect,
            retry,
        }));
    }

    /// Waits until `n` more commands fit under `max` awaiting replies (or nothing is
    /// outstanding). False if the client went away meanwhile.
    ///
    /// Its own function, awaited boxed, because of its size: the wait inlines the reply path
    /// (settling a batch, reshaping state replies), about 3 KB of future, which every plain
    /// command's futures used to hold, and move, along with a client's idle task
    /// (docs/BENCHMARKS.md, "Smaller futures and a faster name lookup").
    async fn make_room(&mut self, n: usize, max: usize) -> bool {
        while self.pipeline.outstanding() > 0 && self.pipeline.outstanding() + n > max {
            if !self.settle().await {
                return false;
            }
            if self.pipeline.outstanding() + n <= max {
                break;
            }
            let ev = self.next_event(false).await;
            if !self.handle(ev) {
                return false;
            }
        }
        true
    }

    /// Adds a plain command to the batch for the shared connection.
    pub(super) async fn forward(&mut self, raw: &[u8]) -> Flow {
        self.forward_with(raw, None).await
    }

    /// Adds a command to the batch; `reshape` turns its reply into what the client expects
    /// (state keys), so state and plain commands share one upstream batch.
    pub(super) async fn forward_with(
        &mut self,
        raw: &[u8],
        reshape: Option<Box<crate::state::transform::Reshape>>,
    ) -> Flow {
        let discard = self.client.take_discard();
        let other_node = match (&self.links.route, &self.gather.route) {
            (Some(a), Some(b)) => a.id != b.id,
            _ => false,
        };
        if !self.gather.is_empty() && (discard != self.gather.discard || other_node) {
            self.flush_batch().await;
        }
        self.gather.discard = discard;
        if self.gather.is_empty()
            && let Some(node) = &self.links.route
        {
            self.gather.route = Some(node.clone());
        }
        let ro = std::mem::take(&mut self.cur.read_only);
        // A state command is retried only if it went out as a plain read (not a script).
        let ro = ro && (reshape.is_none() || retry::read_only_raw(raw));
        self.gather.add(raw, self.cur.metric, reshape, ro);
        if self.gather.full() {
            self.flush_batch().await;
        }
        Flow::Continue
    }
}
