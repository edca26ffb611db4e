//! One client connection: commands in, routed, replies out in order.
//!
//! The reader half (this module) parses commands and routes each one: plain commands are
//! gathered into a batch for the client's shared upstream connection; commands that change
//! connection state or block go to a leased connection; a few are answered here. The writer half
//! ([`writer`]) sends replies back in command order. Whenever a client's commands move from one
//! upstream connection to another, the reader first waits until everything sent on the old one
//! has been answered (a barrier), so Redis always executes a client's commands in its order.

mod cluster;
mod local;
pub mod pinned;
pub mod retry;
pub mod writer;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadHalf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::command::{self, Kind, Local, SubKind};
use crate::config::Config;
use crate::protocol::{Command, Parsed, RequestParser};
use crate::reply;
use crate::state::StateEngine;
use crate::state::plan::Plan;
use crate::state::transform::{Pending, Reshape, Transform};
use crate::telemetry;
use crate::upstream::conn::{Batch, SharedConn};
use crate::upstream::lease::Returned;
use crate::upstream::node::Node;
use crate::upstream::{PoolKey, Upstream};
use pinned::{Expect, NOT_COUNTED, Pinned};
use tokio::time::Instant;
use writer::Out;

/// A batch is sent once it holds this many commands or bytes, to bound per-item memory.
const BATCH_MAX_COMMANDS: usize = 128;
const BATCH_MAX_BYTES: usize = 256 * 1024;
/// `conns` key of the primary's connections (no node id is this large).
const PRIMARY: u64 = u64::MAX;
/// Input buffered while the session waits (barrier, blocking command) before it stops reading.
const MAX_BUFFER_WHILE_WAITING: usize = 1024 * 1024;

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
    pub drain: CancellationToken,
}

/// Whether the session keeps going after a command.
#[derive(Debug, PartialEq, Eq)]
pub enum Flow {
    /// Next command.
    Continue,
    /// Close the connection (after the queued replies).
    Stop,
}

/// `CLIENT REPLY` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReplyMode {
    On,
    Off,
    Skip,
}

/// One client's connection state.
pub struct Session<S> {
    ctx: Arc<Ctx>,
    id: u64,
    rd: ReadHalf<S>,
    inbuf: BytesMut,
    parser: RequestParser,
    out: mpsc::Sender<Out>,
    closed: watch::Receiver<bool>,
    /// RESP version the client speaks.
    proto: u8,
    db: u32,
    name: Option<Bytes>,
    authed: bool,
    reply_mode: ReplyMode,
    /// Shared connections this client uses, by node id (`PRIMARY` for the standalone or
    /// Sentinel server) and pool key; dropped when the topology epoch changes.
    conns: Vec<(u64, PoolKey, SharedConn)>,
    epoch: u64,
    /// Cluster: the node the command being dispatched goes to (`None`: the primary).
    route: Option<Arc<Node>>,
    batch: BytesMut,
    batch_n: usize,
    batch_ids: Vec<u16>,
    /// State commands in the batch: their index and how to reshape their replies.
    batch_reshapes: Vec<(u16, Box<Reshape>)>,
    batch_discard: bool,
    /// Cluster: the node the gathered batch goes to, and where each command in it ends (to
    /// re-send one that Redis redirected).
    batch_route: Option<Arc<Node>>,
    batch_ends: Vec<u32>,
    /// Cluster: MULTI was answered but no connection is pinned until a key picks the node;
    /// keyless commands queued meanwhile.
    deferred_multi: Option<Vec<Command>>,
    /// Metric id of the command being dispatched.
    cur: u16,
    /// When the input being processed was read.
    read_at: Instant,
    /// A state script was sent by SHA and its reply has not been handled yet.
    evalsha_in_flight: bool,
    pinned: Option<Pinned>,
    /// Subscriptions, mirrored so we know how many confirmations each command produces.
    subs: [HashSet<Bytes>; 3],
    /// Commands on shared connections whose replies are not yet written (see `pending_room`).
    pending: Arc<Semaphore>,
    pending_max: usize,
    /// Set when `upstream.retry_on_timeout` is on (see [`retry`]).
    retry_gate: Option<Arc<retry::Gate>>,
    /// Every command in the current batch only reads (so it may be retried).
    batch_ro: bool,
    /// The command being dispatched only reads.
    next_ro: bool,
}

/// Serves one client until it leaves.
pub async fn serve<S>(ctx: Arc<Ctx>, stream: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let id = ctx.next_id.fetch_add(1, Ordering::Relaxed);
    let (rd, wr) = tokio::io::split(stream);
    let cfg = ctx.cfg.load_full();
    let (out_tx, out_rx) = mpsc::channel(cfg.max_pending_requests);
    let (closed_tx, closed_rx) = watch::channel(false);
    let writer = tokio::spawn(writer::run(wr, out_rx, closed_tx, cfg.output_limits, id));
    let db = cfg.upstream.url.db;
    let authed = !ctx.auth.required();
    let pending_max = cfg.max_pending_requests.clamp(1, 1 << 20);
    let mut s = Session {
        ctx,
        id,
        rd,
        inbuf: BytesMut::with_capacity(1024),
        parser: RequestParser::default(),
        out: out_tx,
        closed: closed_rx,
        proto: 2,
        db,
        name: None,
        authed,
        reply_mode: ReplyMode::On,
        conns: Vec::new(),
        epoch: 0,
        route: None,
        batch: BytesMut::new(),
        batch_n: 0,
        batch_ids: Vec::new(),
        batch_reshapes: Vec::new(),
        batch_discard: false,
        batch_route: None,
        batch_ends: Vec::new(),
        deferred_multi: None,
        cur: 0,
        read_at: Instant::now(),
        evalsha_in_flight: false,
        pinned: None,
        subs: Default::default(),
        pending: Arc::new(Semaphore::new(pending_max)),
        pending_max,
        retry_gate: cfg
            .upstream
            .retry_on_timeout
            .then(|| Arc::new(retry::Gate::default())),
        batch_ro: true,
        next_ro: false,
    };
    tracing::debug!(client = id, %peer, "client connected");
    s.run().await;
    if let Some(p) = s.pinned.take() {
        p.abandon();
    }
    drop(s);
    let _ = writer.await;
    tracing::debug!(client = id, "client disconnected");
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    async fn run(&mut self) {
        loop {
            let limits = self.ctx.cfg.load().limits.clone();
            loop {
                match self.parser.next(&mut self.inbuf, &limits) {
                    Ok(Some(Parsed::Command(cmd))) => {
                        if self.dispatch(cmd).await == Flow::Stop || self.out.is_closed() {
                            self.flush_batch().await;
                            return;
                        }
                    }
                    Ok(Some(Parsed::Nothing)) => {}
                    Ok(None) => break,
                    Err(e) => {
                        crate::telemetry::command_rejected("protocol_error");
                        tracing::debug!(client = self.id, error = %e, "malformed input; closing");
                        self.flush_batch().await;
                        let _ = self
                            .out
                            .send(Out::Ready(reply::error(&format!("ERR {e}"))))
                            .await;
                        let _ = self.out.send(Out::Close).await;
                        return;
                    }
                }
            }
            self.flush_batch().await;
            if self.inbuf.is_empty() && self.inbuf.capacity() > 64 * 1024 {
                self.inbuf = BytesMut::with_capacity(1024);
            } else if self.inbuf.capacity() - self.inbuf.len() < 512 {
                self.inbuf.reserve(16 * 1024);
            }
            tokio::select! {
                r = self.rd.read_buf(&mut self.inbuf) => match r {
                    Ok(0) | Err(_) => return,
                    Ok(_) => self.read_at = Instant::now(),
                },
                _ = self.closed.changed() => return,
                _ = self.ctx.drain.cancelled() => return,
            }
        }
    }

    /// The pool key for this client's current db and protocol.
    fn key(&self) -> PoolKey {
        PoolKey {
            db: self.db,
            proto: self.proto,
        }
    }

    /// Whether this command's reply is to be dropped (`CLIENT REPLY OFF/SKIP`).
    fn take_discard(&mut self) -> bool {
        match self.reply_mode {
            ReplyMode::On => false,
            ReplyMode::Off => true,
            ReplyMode::Skip => {
                self.reply_mode = ReplyMode::On;
                true
            }
        }
    }

    /// Queues a locally produced reply (respecting `CLIENT REPLY`).
    async fn reply(&mut self, b: impl Into<Bytes>) -> Flow {
        let b = b.into();
        telemetry::command(self.cur, b.first() == Some(&b'-'));
        if self.take_discard() {
            return Flow::Continue;
        }
        self.flush_batch().await;
        self.push(Out::Ready(b)).await
    }

    async fn push(&mut self, o: Out) -> Flow {
        if self.out.send(o).await.is_err() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// Sends the gathered plain commands to the shared connection.
    async fn flush_batch(&mut self) {
        if self.batch_n == 0 {
            return;
        }
        // The writer is gone (client left or was disconnected): Redis must not be asked for
        // replies nobody will read.
        let room = match self.out.is_closed() {
            true => None,
            false => self.pending_room(self.batch_n).await,
        };
        let Some(room) = room else {
            self.batch.clear();
            self.batch_ids.clear();
            self.batch_reshapes.clear();
            self.batch_ends.clear();
            self.batch_route = None;
            self.batch_n = 0;
            return;
        };
        let route = self.batch_route.take();
        let conn = self.conn_for(route.as_ref());
        let (tx, rx) = oneshot::channel();
        let bytes = self.batch.split().freeze();
        let redirect = route.map(|node| {
            Box::new(writer::Redirectable {
                cmds: bytes.clone(),
                ends: std::mem::take(&mut self.batch_ends),
                node,
                key: self.key(),
                up: self.ctx.upstream.clone(),
            })
        });
        // Cluster batches are not retried: a redirect already re-sends what needs it.
        let retryable = self.batch_ro && redirect.is_none();
        let batch = Batch {
            bytes,
            replies: self.batch_n,
            tx,
        };
        let retry = retry::send(&conn, self.retry_gate.as_ref(), batch, retryable);
        self.batch_n = 0;
        let _ = self
            .out
            .send(Out::Batch(writer::BatchOut {
                rx,
                ids: std::mem::take(&mut self.batch_ids),
                reshapes: std::mem::take(&mut self.batch_reshapes),
                started: self.read_at,
                discard: self.batch_discard,
                redirect,
                room,
                retry,
            }))
            .await;
    }

    /// Room for `n` more commands awaiting replies from a shared connection: a client has at
    /// most `limits.max_pending_requests` of them, and waits (is not read from) beyond that,
    /// so one that never reads its replies cannot queue unbounded work in Redis. None if the
    /// client left while waiting.
    async fn pending_room(&mut self, n: usize) -> Option<OwnedSemaphorePermit> {
        if self.out.is_closed() {
            return None;
        }
        let n = n.clamp(1, self.pending_max) as u32;
        if let Ok(p) = self.pending.clone().try_acquire_many_owned(n) {
            return Some(p);
        }
        let fut = self.pending.clone().acquire_many_owned(n);
        self.wait(fut).await?.ok()
    }

    /// Adds a plain command to the batch for the shared connection.
    async fn forward(&mut self, raw: &[u8]) -> Flow {
        self.forward_with(raw, None).await
    }

    /// Adds a command to the batch; `reshape` turns its reply into what the client expects
    /// (state keys), so state and plain commands share one upstream batch and one reply slice.
    async fn forward_with(&mut self, raw: &[u8], reshape: Option<Box<Reshape>>) -> Flow {
        let discard = self.take_discard();
        let other_node = match (&self.route, &self.batch_route) {
            (Some(a), Some(b)) => a.id != b.id,
            _ => false,
        };
        if self.batch_n > 0 && (discard != self.batch_discard || other_node) {
            self.flush_batch().await;
        }
        self.batch_discard = discard;
        if self.batch_n == 0 {
            self.batch_ro = true;
        }
        let ro = std::mem::take(&mut self.next_ro);
        // A state command is retried only if it went out as a plain read (not a script).
        self.batch_ro &= ro && (reshape.is_none() || retry::read_only_raw(raw));
        if let Some(r) = reshape {
            self.batch_reshapes.push((self.batch_n as u16, r));
        }
        self.batch.extend_from_slice(raw);
        self.batch_n += 1;
        self.batch_ids.push(self.cur);
        if let Some(node) = &self.route {
            // Cluster: remember the node and where this command ends, for redirects.
            if self.batch_route.is_none() {
                self.batch_route = Some(node.clone());
            }
            self.batch_ends.push(self.batch.len() as u32);
        }
        if self.batch_n >= BATCH_MAX_COMMANDS || self.batch.len() >= BATCH_MAX_BYTES {
            self.flush_batch().await;
        }
        Flow::Continue
    }

    /// Waits for `fut` while still watching the client: returns None if it went away.
    async fn wait<T>(&mut self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::pin!(fut);
        loop {
            let room = self.inbuf.len() < MAX_BUFFER_WHILE_WAITING;
            if self.inbuf.capacity() - self.inbuf.len() < 1024 {
                self.inbuf.reserve(16 * 1024);
            }
            tokio::select! {
                biased;
                v = &mut fut => return Some(v),
                r = self.rd.read_buf(&mut self.inbuf), if room => match r {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                },
                _ = self.closed.changed() => return None,
            }
        }
    }

    /// Waits until every reply queued so far is written: the next command may go elsewhere.
    async fn barrier(&mut self) -> bool {
        self.flush_batch().await;
        let (tx, rx) = oneshot::channel();
        if self.push(Out::Barrier(tx)).await == Flow::Stop {
            return false;
        }
        matches!(self.wait(rx).await, Some(Ok(())))
    }

    async fn dispatch(&mut self, mut cmd: Command) -> Flow {
        if self.evalsha_in_flight {
            // The previous state write went out as EVALSHA; if Redis lost the script it is
            // re-sent as EVAL, and nothing of ours may overtake it.
            self.evalsha_in_flight = false;
            if !Box::pin(self.barrier()).await {
                return Flow::Stop;
            }
        }
        let kind = command::classify(&cmd.args);
        self.cur = telemetry::command_id(&cmd.args[0]);
        self.next_ro = false;
        if !self.authed
            && !matches!(
                kind,
                Kind::Local(Local::Auth | Local::Hello | Local::Quit | Local::Reset)
            )
        {
            crate::telemetry::command_rejected("noauth");
            return self
                .reply(reply::error("NOAUTH Authentication required."))
                .await;
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let state = self.ctx.state.load();
            let route = match kind {
                Kind::Local(Local::State) => "state",
                Kind::Local(_) => "local",
                _ if cmd.args[1..].iter().any(|k| state.rule_for(k).is_some()) => "state",
                _ if self.pinned.is_some() => "pinned",
                Kind::Multi | Kind::Watch | Kind::Subscribe(_) | Kind::Monitor => "pinned",
                Kind::Blocking => "leased",
                _ => "plain",
            };
            tracing::debug!(client = self.id, command = %cmd.name(), route, "route");
        }
        if self.denied(&cmd) {
            crate::telemetry::command_rejected("denied");
            let name = String::from_utf8_lossy(&cmd.args[0]).to_lowercase();
            return self
                .reply(reply::error(&format!(
                    "NOPERM statecar: the '{name}' command is disabled by configuration (security.deny_commands)"
                )))
                .await;
        }
        if self.cluster()
            && let Some(flow) = Box::pin(self.route_cluster(kind, &cmd)).await
        {
            return flow;
        }
        // Rare paths are boxed: an idle client's future is as large as its largest await.
        if let Kind::Local(l) = kind {
            return Box::pin(self.local(l, cmd)).await;
        }
        if kind == Kind::Refused {
            return self
                .reply(reply::error(&format!(
                    "ERR {} is not supported through statecar",
                    cmd.name()
                )))
                .await;
        }
        if self.pinned.is_some() {
            return Box::pin(self.dispatch_pinned(kind, cmd)).await;
        }
        let state = (kind == Kind::Plain)
            .then(|| self.ctx.state.load())
            .filter(|state| !state.is_empty());
        let plan = match state {
            // Compressing a large value here would hold up every client on this thread.
            Some(s) if s.plan_is_heavy(&cmd) => {
                let s = arc_swap::Guard::into_inner(s);
                let (c, p) = Box::pin(crate::state::plan::plan_on_pool(s, cmd)).await;
                cmd = c;
                p
            }
            Some(s) => s.plan(&cmd),
            None => None,
        };
        if let Some(plan) = plan {
            self.next_ro = self.retry_gate.is_some() && retry::read_only(&cmd.args);
            return Box::pin(self.run_plan(plan)).await;
        }
        match kind {
            Kind::Plain => {
                self.next_ro = self.retry_gate.is_some() && retry::read_only(&cmd.args);
                self.forward(&cmd.raw).await
            }
            Kind::Blocking => Box::pin(self.blocking(cmd)).await,
            Kind::EndTransaction => {
                let name = cmd.name();
                self.reply(reply::error(&format!("ERR {name} without MULTI")))
                    .await
            }
            Kind::Unwatch => self.reply(Bytes::from_static(reply::OK)).await,
            Kind::Unsubscribe(k) => Box::pin(self.unsubscribe_unpinned(k, &cmd)).await,
            Kind::Multi | Kind::Watch | Kind::Subscribe(_) | Kind::Monitor => {
                if let Some(flow) = Box::pin(self.pin()).await {
                    return flow;
                }
                Box::pin(self.dispatch_pinned(kind, cmd)).await
            }
            Kind::Local(_) | Kind::Refused => Flow::Continue,
        }
    }

    /// Whether `security.deny_commands` forbids this command (by name, or `NAME|SUB`).
    fn denied(&self, cmd: &Command) -> bool {
        let cfg = self.ctx.cfg.load();
        if cfg.deny_commands.is_empty() {
            return false;
        }
        // Compared in place: this runs for every command once a deny-list is configured.
        let name = &cmd.args[0];
        let sub = cmd.args.get(1);
        cfg.deny_commands.iter().any(|d| {
            let d = d.as_bytes();
            match d.iter().position(|&c| c == b'|') {
                None => d.eq_ignore_ascii_case(name),
                Some(bar) => {
                    d[..bar].eq_ignore_ascii_case(name)
                        && sub.is_some_and(|s| d[bar + 1..].eq_ignore_ascii_case(s))
                }
            }
        })
    }

    /// Leases a dedicated connection for this client; `Some(flow)` if that failed.
    async fn pin(&mut self) -> Option<Flow> {
        if !self.barrier().await {
            return Some(Flow::Stop);
        }
        let pool = self.node().leases().clone();
        let key = self.key();
        match self.wait(pool.acquire(key)).await {
            None => Some(Flow::Stop),
            Some(Err(e)) => Some(self.reply(Bytes::from(e.to_resp())).await),
            Some(Ok(lease)) => {
                let addr = pool.addr().to_string();
                self.pinned = Some(Pinned::start(lease, pool, self.out.clone(), addr));
                None
            }
        }
    }

    /// Gives the dedicated connection back once the client no longer needs it.
    async fn maybe_unpin(&mut self) -> Flow {
        let done = matches!(&self.pinned, Some(p) if !p.in_multi && !p.watching && !p.sticky);
        if !done {
            return Flow::Continue;
        }
        let Some(p) = self.pinned.take() else {
            return Flow::Continue;
        };
        match self.wait(p.finish()).await {
            Some(Ok(())) => Flow::Continue,
            _ => Flow::Stop,
        }
    }

    /// Sends a command on the pinned connection.
    async fn send_pinned(&mut self, raw: &[u8], mut expect: Option<Expect>) -> Flow {
        if let Some(Expect::Replies {
            cmd,
            swallow: false,
            ..
        }) = &mut expect
            && *cmd == NOT_COUNTED
        {
            *cmd = self.cur;
        }
        let Some(p) = self.pinned.as_mut() else {
            return Flow::Stop;
        };
        if p.is_broken() {
            return Flow::Stop;
        }
        match p.send(raw, expect).await {
            Ok(()) => Flow::Continue,
            Err(e) => {
                tracing::debug!(client = self.id, error = %e, "dedicated connection write failed");
                Flow::Stop
            }
        }
    }

    fn subscribed_resp2(&self) -> bool {
        self.proto == 2 && self.subs.iter().any(|s| !s.is_empty())
    }

    async fn dispatch_pinned(&mut self, kind: Kind, cmd: Command) -> Flow {
        if self.subscribed_resp2() && !command::allowed_while_subscribed(&cmd.args) {
            let name = String::from_utf8_lossy(&cmd.args[0]).to_lowercase();
            return self
                .reply(reply::error(&format!(
                    "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                )))
                .await;
        }
        let plan = matches!(kind, Kind::Plain | Kind::Blocking)
            .then(|| self.ctx.state.load())
            .filter(|state| !state.is_empty())
            .and_then(|state| state.plan(&cmd));
        if let Some(plan) = plan {
            return self.run_plan_pinned(plan).await;
        }
        let discard = self.take_discard();
        let mut expect = Expect::replies(1, discard);
        let mut unpin_after = false;
        let mut end_tx = None;
        {
            let Some(p) = self.pinned.as_mut() else {
                return Flow::Stop;
            };
            match kind {
                Kind::Multi => {
                    if !p.in_multi {
                        p.queued.clear();
                        p.poisoned = false;
                    }
                    p.in_multi = true;
                }
                Kind::EndTransaction if p.in_multi => {
                    end_tx = Some((std::mem::take(&mut p.queued), p.poisoned));
                    p.in_multi = false;
                    p.watching = false;
                    unpin_after = true;
                }
                Kind::EndTransaction => {}
                Kind::Watch => {
                    if !p.in_multi {
                        p.watching = true;
                    }
                }
                Kind::Unwatch => {
                    if !p.in_multi {
                        p.watching = false;
                        unpin_after = true;
                    }
                }
                Kind::Monitor => {
                    p.sticky = true;
                    p.dirty = true;
                    expect = Expect::Replies {
                        frames: 1,
                        swallow: discard,
                        then_stream: true,
                        notify: None,
                        reshape: None,
                        cmd: NOT_COUNTED,
                    };
                }
                _ => {
                    if p.in_multi {
                        p.queued.push(None);
                    }
                }
            }
        }
        let exec = cmd.args[0].eq_ignore_ascii_case(b"EXEC");
        if let Some((queued, poisoned)) = end_tx
            && exec
        {
            if poisoned {
                // A command was refused by us at queue time: Redis would abort the whole
                // transaction, so discard it upstream and say so.
                let raw = Command::from_args([Bytes::from_static(b"DISCARD")]).raw;
                if self.send_pinned(&raw, Some(Expect::replies(1, true))).await == Flow::Stop {
                    return Flow::Stop;
                }
                let e = reply::error("EXECABORT Transaction discarded because of previous errors.");
                if !discard && self.push(Out::Ready(e)).await == Flow::Stop {
                    return Flow::Stop;
                }
                return self.maybe_unpin().await;
            }
            if queued.iter().any(Option::is_some) {
                let reshape = self.reshape(Box::new(Pending {
                    transform: Transform::Exec(queued),
                    retry: None,
                }));
                expect = Expect::Replies {
                    frames: 1,
                    swallow: discard,
                    then_stream: false,
                    notify: None,
                    reshape: Some(reshape),
                    cmd: NOT_COUNTED,
                };
            }
        }
        match kind {
            Kind::Subscribe(k) | Kind::Unsubscribe(k)
                if !(kind == Kind::Subscribe(k) && cmd.args.len() < 2) =>
            {
                let subscribe = matches!(kind, Kind::Subscribe(_));
                let frames = self.track_subscriptions(k, subscribe, &cmd.args[1..]);
                if let Some(p) = self.pinned.as_mut() {
                    p.sticky = true;
                    p.dirty = true;
                }
                // In RESP3 the confirmations are pushes, which the relay forwards on its own.
                let e = (self.proto == 2).then(|| Expect::replies(frames, discard));
                self.send_pinned(&cmd.raw, e).await
            }
            _ => {
                if self.send_pinned(&cmd.raw, Some(expect)).await == Flow::Stop {
                    return Flow::Stop;
                }
                if unpin_after {
                    return self.maybe_unpin().await;
                }
                Flow::Continue
            }
        }
    }

    /// Binds a transform to this session's engine, protocol and shared connection.
    fn reshape(&mut self, pending: Box<Pending>) -> Box<Reshape> {
        Box::new(Reshape {
            pending,
            engine: self.ctx.state.load_full(),
            proto: self.proto,
            conn: Some(self.shared_conn()),
        })
    }

    /// The client's shared connection to the routed node for its current db and protocol.
    fn shared_conn(&mut self) -> SharedConn {
        let route = self.route.clone();
        self.conn_for(route.as_ref())
    }

    /// The client's shared connection to `node` (`None`: the primary). A client keeps the
    /// connection it was given so its commands reach Redis in order.
    fn conn_for(&mut self, node: Option<&Arc<Node>>) -> SharedConn {
        let key = self.key();
        let epoch = self.ctx.upstream.epoch();
        if epoch != self.epoch {
            self.conns.clear();
            self.epoch = epoch;
        }
        // A node retired since it was routed to: its replacement answers, or redirects.
        let node = node.filter(|n| !n.is_retired());
        let id = node.map_or(PRIMARY, |n| n.id);
        if let Some((_, _, c)) = self.conns.iter().find(|(i, k, _)| *i == id && *k == key) {
            return c.clone();
        }
        let c = match node {
            Some(n) => n.assign(key),
            None => self.ctx.upstream.assign(key),
        };
        self.conns.push((id, key, c.clone()));
        c
    }

    /// The node the current command goes to.
    fn node(&self) -> Arc<Node> {
        match &self.route {
            Some(n) if !n.is_retired() => n.clone(),
            _ => self.ctx.upstream.primary(),
        }
    }

    /// Turns a script plan into an upstream command.
    ///
    /// With Redis 7 it is an FCALL of statecar's function library, which needs no script body
    /// and survives SCRIPT FLUSH, so it pipelines like any command. Without functions, EVALSHA
    /// saves sending the script body, but a NOSCRIPT reply (after a SCRIPT FLUSH) can only be
    /// retried safely if nothing of this client's runs in between; so EVALSHA is used only when
    /// the client has nothing else queued (the next command then waits for the reply), and EVAL
    /// otherwise. Inside MULTI (`allow_fast` false) it is always EVAL: an error there would only
    /// surface at EXEC.
    fn script_plan(&mut self, plan: Plan, allow_fast: bool) -> Plan {
        let Plan::Script { call, transform } = plan else {
            return plan;
        };
        let state = self.ctx.state.load();
        let script = state.scripts.get(call.script);
        // STATE.ROLLBACK finishes on the reply path (it writes the version it read): the
        // client's next command waits for it, as after an EVALSHA.
        if call.script == crate::state::scripts::ScriptKind::Rollback {
            self.evalsha_in_flight = true;
        }
        if allow_fast && self.ctx.upstream.functions() {
            Plan::Send {
                raw: state.scripts.fcall(call.script, &call.keys, &call.args),
                pending: Box::new(Pending {
                    transform,
                    retry: Some(call),
                }),
            }
        } else if allow_fast && self.inbuf.is_empty() {
            self.evalsha_in_flight = true;
            Plan::Send {
                raw: script.evalsha(&call.keys, &call.args),
                pending: Box::new(Pending {
                    transform,
                    retry: Some(call),
                }),
            }
        } else {
            Plan::Send {
                raw: script.eval(&call.keys, &call.args),
                pending: Box::new(Pending {
                    transform,
                    retry: None,
                }),
            }
        }
    }

    /// Runs a state plan on the shared connection, in its place in the pipeline.
    async fn run_plan(&mut self, plan: Plan) -> Flow {
        match self.script_plan(plan, true) {
            Plan::Reject(e) | Plan::Fail(e) => self.reply(e).await,
            Plan::Send { raw, pending } => {
                let reshape = self.reshape(pending);
                self.forward_with(&raw, Some(reshape)).await
            }
            // script_plan converts every script; never drop a command silently if that changes.
            Plan::Script { .. } => {
                self.reply(reply::error(
                    "ERR statecar: internal error: unplanned script",
                ))
                .await
            }
        }
    }

    /// Runs a state plan on the pinned connection (inside MULTI the transform waits for EXEC).
    /// Scripts go as EVAL here: inside MULTI a NOSCRIPT would only surface at EXEC.
    async fn run_plan_pinned(&mut self, plan: Plan) -> Flow {
        let in_multi = self.pinned.as_ref().is_some_and(|p| p.in_multi);
        match self.script_plan(plan, false) {
            Plan::Reject(e) => {
                if in_multi && let Some(p) = self.pinned.as_mut() {
                    p.poisoned = true;
                }
                self.reply(e).await
            }
            Plan::Fail(e) if in_multi => {
                // Queue a command that fails with the same error when EXEC runs it.
                let msg = String::from_utf8_lossy(&e[1..e.len().saturating_sub(2)]).into_owned();
                let raw = Command::from_args([
                    Bytes::from_static(b"EVAL"),
                    Bytes::from_static(b"return redis.error_reply(ARGV[1])"),
                    Bytes::from_static(b"0"),
                    Bytes::from(msg),
                ])
                .raw;
                if let Some(p) = self.pinned.as_mut() {
                    p.queued.push(None);
                }
                let discard = self.take_discard();
                self.send_pinned(&raw, Some(Expect::replies(1, discard)))
                    .await
            }
            Plan::Fail(e) => self.reply(e).await,
            Plan::Send { raw, pending } => {
                let discard = self.take_discard();
                let expect = if in_multi {
                    if let Some(p) = self.pinned.as_mut() {
                        p.queued.push(Some(pending.transform));
                    }
                    Expect::replies(1, discard)
                } else {
                    Expect::Replies {
                        frames: 1,
                        swallow: discard,
                        then_stream: false,
                        notify: None,
                        reshape: Some(self.reshape(pending)),
                        cmd: NOT_COUNTED,
                    }
                };
                self.send_pinned(&raw, Some(expect)).await
            }
            // script_plan converts every script; never drop a command silently if that changes.
            Plan::Script { .. } => {
                self.reply(reply::error(
                    "ERR statecar: internal error: unplanned script",
                ))
                .await
            }
        }
    }

    /// Updates the mirrored subscriptions; returns how many confirmations Redis will send.
    fn track_subscriptions(&mut self, k: SubKind, subscribe: bool, names: &[Bytes]) -> usize {
        let set = &mut self.subs[k as usize];
        if subscribe {
            set.extend(names.iter().cloned());
            names.len()
        } else if names.is_empty() {
            let n = set.len().max(1);
            set.clear();
            n
        } else {
            for n in names {
                set.remove(n);
            }
            names.len()
        }
    }

    /// UNSUBSCRIBE without any subscription: answered as Redis does, without a connection.
    async fn unsubscribe_unpinned(&mut self, k: SubKind, cmd: &Command) -> Flow {
        let kind = match k {
            SubKind::Channel => "unsubscribe",
            SubKind::Pattern => "punsubscribe",
            SubKind::Shard => "sunsubscribe",
        };
        let names: Vec<reply::Value> = if cmd.args.len() > 1 {
            cmd.args[1..]
                .iter()
                .map(|a| reply::Value::Bulk(a.clone()))
                .collect()
        } else {
            vec![reply::Value::Null]
        };
        let mut out = BytesMut::new();
        for n in names {
            reply::Value::Push(vec![reply::Value::text(kind), n, reply::Value::Int(0)])
                .encode_into(self.proto, &mut out);
        }
        self.reply(out.freeze()).await
    }

    /// A blocking command on a leased connection, given back as soon as it is answered.
    async fn blocking(&mut self, cmd: Command) -> Flow {
        if !self.barrier().await {
            return Flow::Stop;
        }
        let pool = self.node().leases().clone();
        let key = self.key();
        let mut lease = match self.wait(pool.acquire(key)).await {
            None => return Flow::Stop,
            Some(Err(e)) => return self.reply(Bytes::from(e.to_resp())).await,
            Some(Ok(l)) => l,
        };
        let addr = pool.addr().to_string();
        let work = lease.call(&cmd.raw, &addr);
        let r = self.wait(work).await;
        match r {
            // The client left while blocked: the command is still pending in Redis, so the
            // connection can never be reused.
            None => {
                pool.release(lease, Returned::Broken);
                Flow::Stop
            }
            Some(Ok(frame)) => {
                pool.release(lease, Returned::Clean);
                self.reply(frame).await
            }
            Some(Err(e)) => {
                pool.release(lease, Returned::Broken);
                self.reply(Bytes::from(e.to_resp())).await
            }
        }
    }
}
