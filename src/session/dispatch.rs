//! Where each command goes: its row in the command table decides, once.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::pipeline::Item;
use super::{Flow, Session, retry};
use crate::command::{Command, Kind, Local, SubKind};
use crate::protocol::reply;
use crate::telemetry;
use crate::upstream::lease::Returned;

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    pub(super) async fn dispatch(&mut self, mut cmd: Command) -> Flow {
        if self.cur.evalsha_in_flight {
            // The previous state write went out as EVALSHA; if Redis lost the script it is
            // re-sent as EVAL, and nothing of ours may overtake it.
            self.cur.evalsha_in_flight = false;
            if !Box::pin(self.barrier()).await {
                return Flow::Stop;
            }
        }
        let kind = match cmd.kind() {
            // A cluster's INFO describes one node: it stays that node's answer.
            Kind::Local(Local::Info) if self.ctx.upstream.is_cluster() => Kind::Plain,
            k => k,
        };
        self.cur.metric = cmd.metric();
        self.cur.read_only = false;
        if !self.client.authed && !cmd.entry().has(crate::command::spec::NO_AUTH) {
            // Redis checks the name and the arity before authentication.
            if let Some(e) = cmd.rejection() {
                return self.reply(e).await;
            }
            telemetry::command_rejected("noauth");
            return self
                .reply(reply::error("NOAUTH Authentication required."))
                .await;
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            self.log_route(kind, &cmd);
        }
        if self.denied(&cmd) {
            telemetry::command_rejected("denied");
            // Inside MULTI a refused command aborts the transaction at EXEC, as Redis does
            // for a command its ACLs refuse at queue time.
            if self.tx.in_multi {
                self.tx.poisoned = true;
            }
            let name = String::from_utf8_lossy(cmd.name()).to_lowercase();
            return self
                .reply(reply::error(&format!(
                    "NOPERM statecar: the '{name}' command is disabled by configuration (security.deny_commands)"
                )))
                .await;
        }
        if self.tx.doomed.is_some() {
            return Box::pin(self.dispatch_doomed(kind, cmd)).await;
        }
        if self.ctx.upstream.is_cluster()
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
                    String::from_utf8_lossy(cmd.name()).to_ascii_uppercase()
                )))
                .await;
        }
        if self.ded.pinned.is_some() {
            return Box::pin(self.dispatch_pinned(kind, cmd)).await;
        }
        let state = (kind == Kind::Plain)
            .then(|| self.ctx.state.load())
            .filter(|state| !state.is_empty());
        let plan = match state {
            // Compressing a large value here would hold up every client on this thread: it is
            // encoded on the blocking pool while this client's earlier replies keep flowing.
            Some(s) if s.plan_is_heavy(&cmd) => {
                let s = arc_swap::Guard::into_inner(s);
                match Box::pin(self.wait(crate::state::plan::plan_on_pool(s, cmd))).await {
                    Some((c, p)) => {
                        cmd = c;
                        p
                    }
                    None => return Flow::Stop,
                }
            }
            Some(s) => s.plan(&cmd),
            None => None,
        };
        if let Some(plan) = plan {
            self.cur.read_only = self.links.retry_gate.is_some() && retry::read_only(&cmd);
            return Box::pin(self.run_plan(plan)).await;
        }
        match kind {
            // Redis would hold it until the pause ends, and every other client's command
            // queued behind it on a shared connection with it.
            Kind::Plain if self.ctx.pause.holds(cmd.entry()) => Box::pin(self.blocking(cmd)).await,
            Kind::Plain | Kind::BlockingWithOption => {
                self.cur.read_only = self.links.retry_gate.is_some() && retry::read_only(&cmd);
                self.forward(cmd.raw()).await
            }
            Kind::Blocking => Box::pin(self.blocking(cmd)).await,
            Kind::OutOfBand => Box::pin(self.out_of_band(cmd)).await,
            Kind::EndTransaction => {
                let name = String::from_utf8_lossy(cmd.name()).to_ascii_uppercase();
                self.reply(reply::error(&format!("ERR {name} without MULTI")))
                    .await
            }
            Kind::Unwatch => self.reply(Bytes::from_static(reply::OK)).await,
            Kind::Unsubscribe(k) => Box::pin(self.unsubscribe_unpinned(k, &cmd)).await,
            Kind::Multi => Box::pin(self.multi(cmd)).await,
            Kind::Watch | Kind::Subscribe(_) | Kind::Monitor => {
                match Box::pin(self.pin()).await {
                    Err(None) => return Flow::Stop,
                    Err(Some(e)) => return self.reply(Bytes::from(e.to_resp())).await,
                    Ok(()) => {}
                }
                Box::pin(self.dispatch_pinned(kind, cmd)).await
            }
            Kind::Local(_) | Kind::Refused => Flow::Continue,
        }
    }

    fn log_route(&self, kind: Kind, cmd: &Command) {
        let state = self.ctx.state.load();
        let route = match kind {
            Kind::Local(Local::State) => "state",
            Kind::Local(_) => "local",
            _ if cmd.args().skip(1).any(|k| state.rule_for(k).is_some()) => "state",
            _ if self.ded.pinned.is_some() => "pinned",
            Kind::Multi | Kind::Watch | Kind::Subscribe(_) | Kind::Monitor => "pinned",
            Kind::Blocking | Kind::OutOfBand => "leased",
            _ => "plain",
        };
        tracing::debug!(client = self.client.id, command = %cmd.full_name(), route, "route");
    }

    /// Whether `security.deny_commands` forbids this command: by name, `name|sub`, or ACL
    /// category (`@dangerous`).
    fn denied(&self, cmd: &Command) -> bool {
        self.denied_name(cmd.name(), cmd.arg(1), cmd.entry())
    }

    /// [`Self::denied`] for a command known by its name, first argument and row.
    pub(super) fn denied_name(
        &self,
        name: &[u8],
        sub: Option<&[u8]>,
        entry: &crate::command::Entry,
    ) -> bool {
        let cfg = &self.cfg;
        if cfg.deny_commands.is_empty() {
            return false;
        }
        // Compared in place: this runs for every command once a deny-list is configured.
        let acl = entry.spec.acl;
        cfg.deny_commands.iter().any(|d| {
            if let Some(cat) = d.strip_prefix('@') {
                return crate::command::spec::Acl::named(cat).is_some_and(|c| acl.has(c));
            }
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

    /// UNSUBSCRIBE without any subscription: answered as Redis does, without a connection.
    async fn unsubscribe_unpinned(&mut self, k: SubKind, cmd: &Command) -> Flow {
        let kind = match k {
            SubKind::Channel => "unsubscribe",
            SubKind::Pattern => "punsubscribe",
            SubKind::Shard => "sunsubscribe",
        };
        let names: Vec<reply::Value> = if cmd.argc() > 1 {
            cmd.args_bytes()[1..]
                .iter()
                .map(|a| reply::Value::Bulk(a.clone()))
                .collect()
        } else {
            vec![reply::Value::Null]
        };
        let mut out = bytes::BytesMut::new();
        for n in names {
            reply::Value::Push(vec![reply::Value::text(kind), n, reply::Value::Int(0)])
                .encode_into(self.client.proto, &mut out);
        }
        self.reply(out.freeze()).await
    }

    /// A blocking command on a leased connection, given back as soon as it is answered.
    async fn blocking(&mut self, cmd: Command) -> Flow {
        if !self.barrier().await {
            return Flow::Stop;
        }
        let pool = self.links.node(&self.ctx.upstream).leases().clone();
        let key = self.client.key();
        let mut lease = match self.wait(pool.acquire(key)).await {
            None => return Flow::Stop,
            Some(Err(e)) => return self.reply(Bytes::from(e.to_resp())).await,
            Some(Ok(l)) => l,
        };
        let addr = pool.addr().to_string();
        // CLIENT UNBLOCK names this client; Redis knows the lease.
        let upstream_id = lease.conn.upstream_id.unwrap_or(-1);
        self.me
            .info
            .upstream_id
            .store(upstream_id, std::sync::atomic::Ordering::Relaxed);
        self.client.modes.blocked = true;
        self.publish();
        let work = lease.call(cmd.raw(), &addr);
        let r = self.wait(work).await;
        self.client.modes.blocked = false;
        self.me
            .info
            .upstream_id
            .store(-1, std::sync::atomic::Ordering::Relaxed);
        // The client left while blocked: the command is still pending in Redis, so the
        // connection can never be reused (`end_lease`).
        self.end_lease(&pool, lease, r).await
    }

    /// Gives a lease back after its one command, and queues the reply: a connection whose
    /// client left before the reply (None), or that failed, is closed.
    pub(super) async fn end_lease(
        &mut self,
        pool: &std::sync::Arc<crate::upstream::lease::LeasePool>,
        lease: crate::upstream::lease::Lease,
        r: Option<Result<Bytes, crate::upstream::UpstreamError>>,
    ) -> Flow {
        match r {
            None => {
                pool.release(lease, Returned::Broken);
                Flow::Stop
            }
            Some(Ok(frame)) => {
                pool.release(lease, self.me.info.release_as(Returned::Clean));
                self.reply(frame).await
            }
            Some(Err(e)) => {
                pool.release(lease, Returned::Broken);
                self.reply(Bytes::from(e.to_resp())).await
            }
        }
    }

    /// SCRIPT KILL and FUNCTION KILL: they must reach Redis while a script keeps it busy, so
    /// they go at once on a connection of their own (authenticated as the client runs, but
    /// with no other handshake command, which Redis would answer BUSY). They do not wait for
    /// the client's earlier commands, which may be queued behind that very script; their reply
    /// still takes its place in the client's order.
    async fn out_of_band(&mut self, cmd: Command) -> Flow {
        let fut = self.on_connection_of_its_own(cmd.raw());
        let discard = self.client.take_discard();
        self.flush_batch().await;
        self.pipeline.push(Item::Joined(super::pipeline::JoinedOut {
            fut: Box::pin(fut),
            id: self.cur.metric,
            started: self.cur.read_at,
            discard,
        }));
        Flow::Continue
    }

    /// `raw` sent on a fresh connection to the client's node, authenticated as the client runs
    /// and with no other handshake command; resolves to Redis's reply (or the error).
    pub(super) fn on_connection_of_its_own(
        &self,
        raw: &[u8],
    ) -> impl std::future::Future<Output = Bytes> + Send + 'static {
        let node = self.links.node(&self.ctx.upstream);
        let up = self.ctx.upstream.clone();
        let mut bytes = bytes::BytesMut::new();
        let auths = match &self.client.identity {
            Some(id) => {
                crate::protocol::encode_multibulk(
                    &mut bytes,
                    &[&b"AUTH"[..], id.user.as_bytes(), id.password.as_bytes()],
                );
                1
            }
            None => crate::upstream::connect::auth_command(up.config(), &mut bytes),
        };
        bytes.extend_from_slice(raw);
        async move {
            match crate::upstream::connect::one_off(up.config(), &node.ep.addr, &bytes, auths + 1)
                .await
            {
                Ok(frames) => match frames.first() {
                    Some(auth) if auths == 1 && auth.first() == Some(&b'-') => auth.clone(),
                    _ => frames.last().cloned().unwrap_or_default(),
                },
                Err(e) => Bytes::from(e.to_resp()),
            }
        }
    }

    /// Queues a reply whose bytes are known, without counting a command (internal use).
    pub(super) fn push_ready(&mut self, b: Bytes) {
        self.pipeline.push(Item::Ready(b));
    }
}
