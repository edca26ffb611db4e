//! One client connection, served by one task: commands in, routed, replies out in order.
//!
//! The task reads the client's bytes, parses each command once ([`crate::protocol`]), looks it
//! up once ([`crate::command`]) and dispatches it ([`dispatch`]): plain commands are gathered
//! into a batch for the client's shared upstream connection ([`gather`], [`links`]); commands
//! that change connection state or block go to a dedicated connection ([`pinned`]); a few are
//! answered here ([`local`]). Every command leaves an item in the [`pipeline`], which hands
//! replies to the [`output`] buffer in command order; the same task writes them to the socket.
//!
//! Whenever a client's commands move from one upstream connection to another, the session first
//! waits until everything sent on the old one has been answered (a barrier), so Redis always
//! executes a client's commands in the client's order. While it waits it keeps writing replies
//! and reading (a bounded amount of) input, so no client can stall itself.

mod batch;
mod client;
mod cluster;
mod cut_through;
mod dedicated;
mod dispatch;
mod events;
mod gather;
mod links;
mod local;
mod memory;
mod output;
pub mod pause;
pub mod pinned;
mod pipeline;
pub mod registry;
mod reshape;
pub mod retry;
mod stage;
mod state_plan;
mod subscriptions;
mod transaction;

use std::future::Future;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::auth::Auth;
use crate::command::Command;
use crate::config::Config;
use crate::fair_share::FairShare;
use crate::protocol::{Parsed, RequestParser};
use crate::signal::Signal;
use crate::state::StateEngine;
use crate::telemetry;
use crate::upstream::Upstream;

use client::ClientState;
use gather::Gather;
use links::Links;
use output::Output;
use pinned::{Pinned, Relayed};
use pipeline::{Item, Pipeline};
use subscriptions::Subscriptions;
use transaction::Transaction;

/// Input buffered while the session waits (barrier, blocking command) before it stops reading.
const MAX_BUFFER_WHILE_WAITING: usize = 1024 * 1024;
/// How long closing a connection may take (a TLS close_notify to a client that reads nothing).
const SHUTDOWN_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything sessions share.
pub struct Ctx {
    /// Validated configuration (replaced on SIGHUP; sessions read limits from it).
    pub cfg: ArcSwap<Config>,
    /// Upstream connections.
    pub upstream: Arc<Upstream>,
    /// Sidecar credentials.
    pub auth: Auth,
    /// State-key handling (replaced on SIGHUP: new rules apply to the next command).
    pub state: ArcSwap<StateEngine>,
    /// Source of client ids.
    pub next_id: AtomicU64,
    /// Cancelled on SIGTERM: sessions stop reading and finish what they have.
    pub drain: Signal,
    /// Every connected client (CLIENT LIST, CLIENT KILL, the memory budget).
    pub clients: Arc<registry::Registry>,
    /// A CLIENT PAUSE sent through statecar, while it lasts.
    pub pause: pause::Pause,
}

/// Where a client connection comes from and goes to (for CLIENT LIST).
#[derive(Debug, Clone, Copy)]
pub struct Ends {
    /// The client's address.
    pub peer: SocketAddr,
    /// statecar's side.
    pub local: Option<SocketAddr>,
    /// The socket's file descriptor.
    pub fd: i32,
}

/// Whether the session keeps going after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Next command.
    Continue,
    /// Stop reading; close once what is queued is written.
    Stop,
}

/// The command being dispatched.
struct Current {
    /// Its metric id.
    metric: u16,
    /// When the input it came in was read.
    read_at: Instant,
    /// It only reads (so its batch may be retried).
    read_only: bool,
    /// A state script went out as EVALSHA and its reply is not handled yet: nothing may
    /// overtake it (a NOSCRIPT is answered by re-sending it as EVAL).
    evalsha_in_flight: bool,
}

/// The client's socket and the bytes read from it.
struct ClientIo<S> {
    rd: ReadHalf<S>,
    wr: WriteHalf<S>,
    inbuf: BytesMut,
    parser: RequestParser,
    /// The client closed its side.
    eof: bool,
    /// The client is to be disconnected now, without writing what is queued (output buffer
    /// over its limit, a write failed).
    gone: bool,
    /// Input and output bytes as last accounted in the memory budget.
    accounted: (usize, usize),
    /// The command being read is read whole, though its argument is big: it could not be
    /// streamed (`cut_through`), and is not tried again until the next command.
    read_whole: bool,
    /// Bytes read and written since the other clients last had a turn.
    share: FairShare,
}

/// The client's own upstream connection, while it has one (MULTI/WATCH, blocking commands,
/// SUBSCRIBE, CLIENT REPLY and other connection state that cannot live on a shared connection).
#[derive(Default)]
struct Dedicated {
    pinned: Option<Pinned>,
    /// Replies and pushes from the dedicated connection's relay (kept after unpinning until
    /// the relay has handed over everything).
    relay: Option<mpsc::Receiver<Relayed>>,
    /// Another client's tracking redirect asked for a connection of this client's own; taken
    /// at the next turn of the event loop.
    wanted: bool,
}

/// One client.
pub struct Session<S> {
    ctx: Arc<Ctx>,
    io: ClientIo<S>,
    client: ClientState,
    pipeline: Pipeline,
    out: Output,
    gather: Gather,
    links: Links,
    ded: Dedicated,
    tx: Transaction,
    subs: Subscriptions,
    cur: Current,
    /// This client's entry in the registry (removed when the session ends).
    me: registry::Registered,
    /// CLIENT KILL, the memory budget or SIGTERM, as one future kept across turns.
    signals: Pin<Box<dyn Future<Output = Event> + Send>>,
    /// The configuration, as of the last change seen (SIGHUP replaces it).
    cfg: Arc<Config>,
}

/// Something that happened while the session waited.
enum Event {
    /// The front of the pipeline may be complete.
    Replied,
    /// The socket took some bytes.
    Wrote(std::io::Result<usize>),
    /// The client sent some bytes (0: it closed its side).
    Read(std::io::Result<usize>),
    /// The relay had something.
    Relay(Option<Relayed>),
    /// The output buffer's soft-limit time may have run out.
    SoftDeadline,
    /// SIGTERM: finish what was read, then close.
    Drain,
    /// CLIENT KILL or the memory budget: disconnect now.
    Killed,
    /// Another client's CLIENT TRACKING REDIRECT names this client, which has no connection
    /// of its own for Redis to send the invalidations to: take one.
    PinWanted,
}

/// The events that come from outside the client's own traffic, as one future the event loop
/// polls last; re-armed after a `PinWanted`, which can happen again.
fn signals(me: &registry::ClientInfo, ctx: &Ctx) -> Pin<Box<dyn Future<Output = Event> + Send>> {
    let killed = me.killed();
    let drain = ctx.drain.clone().cancelled_owned();
    let pin = me.pin_wanted();
    Box::pin(async move {
        tokio::select! {
            _ = killed => Event::Killed,
            _ = drain => Event::Drain,
            _ = pin => Event::PinWanted,
        }
    })
}

/// Serves one client until it leaves.
pub async fn serve<S>(ctx: Arc<Ctx>, stream: S, ends: Ends)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let peer = ends.peer;
    let me = ctx.clients.register(id, ends.peer, ends.local, ends.fd);
    let signals = signals(&me.info, &ctx);
    let (rd, wr) = tokio::io::split(stream);
    let cfg = ctx.cfg.load_full();
    let authed = !ctx.auth.required();
    let mut s = Session {
        io: ClientIo {
            rd,
            wr,
            inbuf: BytesMut::with_capacity(1024),
            parser: RequestParser::default(),
            eof: false,
            gone: false,
            accounted: (0, 0),
            read_whole: false,
            share: FairShare::default(),
        },
        client: ClientState::new(id, cfg.upstream.url.db, authed),
        pipeline: Pipeline::default(),
        out: Output::new(cfg.clients.output),
        gather: Gather::default(),
        links: Links::new(cfg.upstream.retry_on_timeout),
        ded: Dedicated::default(),
        tx: Transaction::default(),
        subs: Subscriptions::default(),
        cur: Current {
            metric: 0,
            read_at: Instant::now(),
            read_only: false,
            evalsha_in_flight: false,
        },
        me,
        signals,
        cfg: cfg.clone(),
        ctx,
    };
    tracing::debug!(client = id, %peer, "client connected");
    s.run().await;
    if let Some(p) = s.ded.pinned.take() {
        p.abandon();
    }
    let _ = tokio::time::timeout(SHUTDOWN_LIMIT, s.io.wr.shutdown()).await;
    tracing::debug!(client = id, "client disconnected");
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    async fn run(&mut self) {
        loop {
            if self.io.gone {
                return;
            }
            if std::mem::take(&mut self.ded.wanted) {
                Box::pin(self.pin_for_redirect()).await;
            }
            if !self.client.closing {
                self.dispatch_input().await;
            }
            self.flush_batch().await;
            if !self.settle().await || !self.write_now() {
                return;
            }
            if self.ctx.drain.is_cancelled() {
                self.client.closing = true;
            }
            if self.client.closing && self.pipeline.is_empty() && self.out.q.is_empty() {
                return;
            }
            let read = !self.client.closing && self.input_room();
            let ev = self.next_event(read).await;
            if !self.handle(ev) {
                return;
            }
        }
    }

    /// Parses and dispatches every complete command in the input buffer.
    async fn dispatch_input(&mut self) {
        self.refresh_config();
        while !self.client.closing && !self.io.gone {
            let unauthenticated = !self.client.authed;
            match self
                .io
                .parser
                .next(&mut self.io.inbuf, &self.cfg.limits, unauthenticated)
            {
                Ok(Some(Parsed::Command(req))) => {
                    self.io.read_whole = false;
                    let cmd = Command::new(req);
                    if !cmd.entry().is_unknown() {
                        self.me.info.touch(cmd.entry().index);
                    }
                    if self.dispatch(cmd).await == Flow::Stop {
                        self.client.closing = true;
                    }
                    self.publish();
                }
                Ok(Some(Parsed::Nothing)) => {}
                Ok(None) => {
                    // A big argument may go to Redis while it arrives.
                    let Some(entry) = self.cut_through_candidate() else {
                        break;
                    };
                    match Box::pin(self.cut_through(entry)).await {
                        Some(flow) => {
                            if flow == Flow::Stop {
                                self.client.closing = true;
                            }
                            self.publish();
                        }
                        None => break,
                    }
                }
                Err(e) => self.protocol_error(e).await,
            }
        }
        if self.io.inbuf.is_empty() && self.io.inbuf.capacity() > 64 * 1024 {
            self.io.inbuf = BytesMut::with_capacity(1024);
        }
    }

    /// Answers malformed input as Redis does, with the error, and closes the connection.
    async fn protocol_error(&mut self, e: crate::protocol::ProtocolError) {
        telemetry::command_rejected("protocol_error");
        tracing::debug!(client = self.client.id, error = %e, "malformed input; closing");
        self.flush_batch().await;
        self.pipeline.push(Item::Ready(e.to_reply()));
        self.client.closing = true;
    }

    /// Takes the configuration SIGHUP installed, if it changed (a pointer comparison per
    /// batch of input; limits apply from the next command).
    fn refresh_config(&mut self) {
        let now = self.ctx.cfg.load();
        if !Arc::ptr_eq(&now, &self.cfg) {
            self.cfg = arc_swap::Guard::into_inner(now);
        }
    }

    /// Whether to read more input now: not while the client has `limits.max_pending_requests`
    /// commands awaiting replies (one that never reads its replies cannot queue unbounded work
    /// in Redis).
    fn input_room(&self) -> bool {
        self.pipeline.outstanding() < self.cfg.clients.max_pending_requests.max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<F, A, B, C, Fut>(_: &F) -> usize
    where
        F: FnOnce(A, B, C) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// Every connected client is one `serve` future in a task, whatever it does; the rare
    /// paths (a wait for room in the pipeline, a state reshape, a cluster redirect, a blocking
    /// command) are awaited boxed so that an idle client does not carry them. It was 5.6 KB
    /// (6.7 KB with TLS) before they were, 2.7 KB (3.9 KB) after (docs/BENCHMARKS.md,
    /// "Smaller futures and a faster name lookup").
    #[test]
    fn an_idle_client_holds_a_small_future() {
        let plain = future_size(&serve::<tokio::net::TcpStream>);
        let tls = future_size(&serve::<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>);
        eprintln!("serve future: {plain} bytes (TCP), {tls} bytes (TLS)");
        assert!(plain <= 3584, "a client's serve future is {plain} bytes");
        assert!(tls <= 4608, "a TLS client's serve future is {tls} bytes");
    }
}
