//! The client's replies in command order.
//!
//! Each command (or batch of commands) leaves an [`Item`] here saying where its reply will come
//! from: bytes already known, a batch on a shared connection, a reply several cluster nodes make
//! up, or replies relayed from the client's dedicated connection. Items are taken from the front
//! only, so a slow reply holds back only the replies behind it from the same client, exactly as
//! Redis orders them. The session moves finished items into its output buffer.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::output::OutQueue;
use super::reshape::{Redirectable, reshape_batch};
use super::retry::{self, Retry};
use crate::state::transform::Reshape;
use crate::telemetry;
use crate::upstream::batch::{BatchResult, Replies};

/// A reply still being put together from several upstream replies (cluster fan-out).
pub type Joined = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// A batch sent to a shared connection, whose replies the client is waiting for.
pub struct BatchOut {
    /// Where the replies arrive.
    pub rx: oneshot::Receiver<BatchResult>,
    /// The outcome, once `rx` gave it (None: the connection task dropped the batch).
    pub done: Option<Option<BatchResult>>,
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
}

/// Where the next reply (or replies) of the client come from.
pub enum Item {
    /// Bytes known now (replies statecar makes itself, a blocking command's reply).
    Ready(Bytes),
    /// The replies of a batch on a shared connection.
    Batch(BatchOut),
    /// One command answered by several nodes (cluster).
    Joined(JoinedOut),
    /// The next `n` replies the dedicated connection's relay delivers.
    Relayed(usize),
}

impl Item {
    /// How many commands' replies this item holds.
    fn commands(&self) -> usize {
        match self {
            Item::Ready(_) => 0,
            Item::Batch(b) => b.ids.len(),
            Item::Joined(_) => 1,
            Item::Relayed(n) => *n,
        }
    }
}

/// The items, front first, and how many commands they wait for.
#[derive(Default)]
pub struct Pipeline {
    items: VecDeque<Item>,
    outstanding: usize,
}

impl Pipeline {
    /// Nothing is waiting: every earlier reply has reached the output buffer.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Commands whose replies have not arrived yet (`limits.max_pending_requests` bounds it).
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// Adds an item at the back.
    pub fn push(&mut self, item: Item) {
        self.outstanding += item.commands();
        self.items.push_back(item);
    }

    /// Moves every item that is complete now into `out`, front first; stops at the first one
    /// still waiting.
    pub async fn settle(&mut self, out: &mut OutQueue) {
        loop {
            let Some(front) = self.items.front_mut() else {
                return;
            };
            let result = match front {
                Item::Ready(_) => None,
                Item::Batch(b) => match b.done.take() {
                    Some(done) => Some(done),
                    None => match b.rx.try_recv() {
                        Ok(r) => Some(Some(r)),
                        Err(oneshot::error::TryRecvError::Empty) => return,
                        // The connection task dropped the batch without answering (it is
                        // shutting down): the client gets nothing for it.
                        Err(oneshot::error::TryRecvError::Closed) => Some(None),
                    },
                },
                Item::Joined(j) => match futures_util::FutureExt::now_or_never(&mut j.fut) {
                    Some(bytes) => Some(Some(joined_result(bytes))),
                    None => return,
                },
                Item::Relayed(_) => return,
            };
            let Some(front) = self.pop() else { return };
            match (front, result) {
                (Item::Ready(b), _) => out.push(&b),
                (item, Some(Some(r))) => self.complete(item, r, out).await,
                (Item::Batch(b), Some(None)) if !b.discard => {
                    // Never leave a command without a reply: the client counts them.
                    for _ in &b.ids {
                        out.push_slice(b"-ERR statecar: upstream connection task gone\r\n");
                    }
                }
                (_, _) => {}
            }
        }
    }

    /// Resolves when the front item's reply has arrived (never, for an item the session
    /// completes itself). Cancel-safe: nothing is taken until [`Pipeline::settle`].
    pub async fn front_ready(&mut self) {
        match self.items.front_mut() {
            Some(Item::Batch(b)) if b.done.is_none() => {
                // Awaiting the receiver by reference is cancel-safe; once it has answered it
                // must not be polled again, so the answer is kept for `settle`.
                let r = (&mut b.rx).await;
                b.done = Some(r.ok());
            }
            Some(Item::Batch(_)) => {}
            Some(Item::Joined(j)) => {
                // Polled here with the task's waker; the value is taken by `settle`, which
                // polls it once more (a finished boxed future answers again only if it is
                // written to, so the result is kept instead).
                let bytes = (&mut j.fut).await;
                j.fut = Box::pin(std::future::ready(bytes));
            }
            _ => std::future::pending().await,
        }
    }

    /// A reply relayed from the dedicated connection: it belongs to the front item.
    pub fn relayed(&mut self, reply: Bytes, out: &mut OutQueue) {
        match self.items.front_mut() {
            Some(Item::Relayed(n)) => {
                out.push(&reply);
                *n -= 1;
                self.outstanding = self.outstanding.saturating_sub(1);
                if *n == 0 {
                    self.items.pop_front();
                }
            }
            _ => {
                // The relay only forwards replies the session asked for; one it did not ask
                // for still goes to the client rather than vanishing.
                tracing::warn!("relayed reply with no command waiting for it");
                out.push(&reply);
            }
        }
    }

    fn pop(&mut self) -> Option<Item> {
        let item = self.items.pop_front()?;
        self.outstanding = self.outstanding.saturating_sub(item.commands());
        Some(item)
    }

    /// Puts a batch back at the front (a read-only batch sent again after its connection
    /// failed).
    fn push_front(&mut self, item: Item) {
        self.outstanding += item.commands();
        self.items.push_front(item);
    }

    /// Handles the reply the front item was waiting for.
    async fn complete(&mut self, item: Item, r: BatchResult, out: &mut OutQueue) {
        match item {
            Item::Batch(BatchOut {
                ids,
                mut reshapes,
                started,
                discard,
                redirect,
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
                                if let Err(f) =
                                    Box::pin(reshape_batch(Err(f), reshapes, &[], None)).await
                                    && !discard
                                {
                                    out.push(&f.partial);
                                }
                                self.push_front(Item::Batch(BatchOut {
                                    rx,
                                    done: None,
                                    ids: rest.to_vec(),
                                    reshapes: later
                                        .into_iter()
                                        .map(|(i, r)| (i - answered as u16, r))
                                        .collect(),
                                    started,
                                    discard,
                                    redirect: None,
                                    retry: None,
                                }));
                                return;
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
                    moved = Box::pin(red.fix(replies)).await;
                }
                if !reshapes.is_empty() {
                    let key = redirect.as_ref().map(|red| red.key.clone());
                    // Boxed, as the other rare awaits here: every batch's settling would
                    // otherwise carry a state reshape's future (about 1.7 KB).
                    r = Box::pin(reshape_batch(r, reshapes, &moved, key)).await;
                }
                telemetry::round_trip(started.elapsed());
                put_batch(out, r, &ids, discard);
            }
            Item::Joined(JoinedOut {
                id,
                started,
                discard,
                ..
            }) => {
                telemetry::round_trip(started.elapsed());
                put_batch(out, r, &[id], discard);
            }
            Item::Ready(b) => out.push(&b),
            Item::Relayed(_) => {}
        }
    }
}

fn joined_result(bytes: Bytes) -> BatchResult {
    let errors = u128::from(matches!(bytes.first(), Some(b'-')));
    Ok(Replies { bytes, errors })
}

/// Turns a batch outcome into the bytes the client sees: the replies that arrived, then one
/// error per command that was not answered.
fn put_batch(out: &mut OutQueue, r: BatchResult, ids: &[u16], discard: bool) {
    match r {
        Ok(r) => {
            for (i, id) in ids.iter().enumerate() {
                telemetry::command(*id, i < 128 && r.errors & (1 << i) != 0);
            }
            if !discard {
                out.push(&r.bytes);
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
            out.push(&f.partial);
            let line = f.error.to_resp_outcome(f.sent);
            for _ in f.received..ids.len() {
                out.push_slice(&line);
            }
        }
    }
}
