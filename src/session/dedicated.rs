//! Commands on the client's dedicated connection: transactions, WATCH, pub/sub, MONITOR and
//! client tracking keep state on the connection, so the client leases one of its own
//! ([`super::pinned`]) and keeps it while that state lives.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::pinned::{Expect, NOT_COUNTED, Pinned, RELAY_QUEUE};
use super::pipeline::Item;
use super::{Flow, Session};
use crate::command::{Command, Kind};
use crate::protocol::reply;
use crate::state::transform::{Pending, Transform};
use crate::upstream::UpstreamError;

/// Redis's answer to EXEC when the transaction cannot run.
const EXECABORT: &str = "EXECABORT Transaction discarded because of previous errors.";

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    /// Leases a dedicated connection for this client. `Err(None)`: the client left meanwhile;
    /// `Err(Some(e))`: no connection could be had.
    pub(super) async fn pin(&mut self) -> Result<(), Option<UpstreamError>> {
        if !self.barrier().await {
            return Err(None);
        }
        let pool = self.links.node(&self.ctx.upstream).leases().clone();
        let key = self.client.key();
        match self.wait(pool.acquire(key)).await {
            None => Err(None),
            Some(Err(e)) => Err(Some(e)),
            Some(Ok(lease)) => {
                let addr = pool.addr().to_string();
                let (tx, rx) = tokio::sync::mpsc::channel(RELAY_QUEUE);
                let upstream_id = lease.conn.upstream_id.unwrap_or(-1);
                self.me
                    .info
                    .upstream_id
                    .store(upstream_id, std::sync::atomic::Ordering::Relaxed);
                self.ded.pinned = Some(Pinned::start(lease, pool, tx, addr, self.me.info.clone()));
                self.ded.relay = Some(rx);
                Ok(())
            }
        }
    }

    /// Another client's tracking wants to redirect here and this client has no connection of
    /// its own: it takes one and keeps it for the rest of its life, as a direct client's
    /// connection is, so Redis can send it the invalidations (as pushes in RESP3, as messages
    /// once it subscribes to `__redis__:invalidate` in RESP2).
    pub(super) async fn pin_for_redirect(&mut self) {
        if self.ded.pinned.is_some() || self.client.closing {
            return;
        }
        match self.pin().await {
            Ok(()) => {
                if let Some(p) = self.ded.pinned.as_mut() {
                    p.sticky = true;
                }
            }
            Err(None) => self.client.closing = true,
            Err(Some(e)) => {
                tracing::warn!(client = self.client.id, error = %e, "no connection for a tracking redirect to this client");
            }
        }
    }

    /// Gives the dedicated connection back once the client no longer needs it.
    pub(super) async fn maybe_unpin(&mut self) -> Flow {
        let done = matches!(&self.ded.pinned, Some(p) if !p.sticky) && !self.tx.holds_connection();
        if !done {
            return Flow::Continue;
        }
        let Some(p) = self.ded.pinned.take() else {
            return Flow::Continue;
        };
        self.me
            .info
            .upstream_id
            .store(-1, std::sync::atomic::Ordering::Relaxed);
        // The relay hands over what is still outstanding before it gives the connection back;
        // the wait keeps taking it.
        match self.wait(p.finish()).await {
            Some(Ok(())) => Flow::Continue,
            _ => Flow::Stop,
        }
    }

    /// Sends a command on the pinned connection; its visible replies take their place in the
    /// pipeline.
    pub(super) async fn send_pinned(&mut self, raw: &[u8], mut expect: Option<Expect>) -> Flow {
        let mut visible = 0;
        if let Some(Expect::Replies {
            cmd,
            swallow: false,
            frames,
            ..
        }) = &mut expect
        {
            if *cmd == NOT_COUNTED {
                *cmd = self.cur.metric;
            }
            visible = *frames;
        }
        let Some(p) = self.ded.pinned.as_mut() else {
            return Flow::Stop;
        };
        if p.is_broken() {
            return Flow::Stop;
        }
        match p.send(raw, expect).await {
            Ok(()) => {
                if visible > 0 {
                    self.pipeline.push(Item::Relayed(visible));
                }
                Flow::Continue
            }
            Err(e) => {
                tracing::debug!(client = self.client.id, error = %e, "dedicated connection write failed");
                Flow::Stop
            }
        }
    }

    fn subscribed_resp2(&self) -> bool {
        self.client.proto == 2 && self.subs.any()
    }

    /// MULTI: a transaction on a dedicated connection. If none can be had, the transaction is
    /// doomed rather than refused: the client's next commands must not run outside it.
    pub(super) async fn multi(&mut self, cmd: Command) -> Flow {
        match Box::pin(self.pin()).await {
            Err(None) => Flow::Stop,
            Ok(()) => Box::pin(self.dispatch_pinned(Kind::Multi, cmd)).await,
            Err(Some(e)) => {
                tracing::warn!(client = self.client.id, error = %e, "MULTI without a dedicated connection: the transaction will be discarded");
                self.tx.begin();
                self.tx.doomed = Some(e.to_string());
                self.reply(Bytes::from_static(reply::OK)).await
            }
        }
    }

    /// A transaction with no connection behind it: commands are checked and acknowledged as
    /// Redis would, nothing is sent, and EXEC fails as a whole.
    pub(super) async fn dispatch_doomed(&mut self, kind: Kind, cmd: Command) -> Flow {
        match kind {
            Kind::EndTransaction if cmd.name().eq_ignore_ascii_case(b"DISCARD") => {
                self.tx.end();
                self.reply(Bytes::from_static(reply::OK)).await
            }
            Kind::EndTransaction => {
                let why = self.tx.doomed.clone().unwrap_or_default();
                self.tx.end();
                self.reply(reply::error(&format!(
                    "EXECABORT Transaction discarded: statecar could not get a dedicated upstream connection for it ({why}); nothing ran"
                )))
                .await
            }
            Kind::Multi => {
                self.reply(reply::error("ERR MULTI calls can not be nested"))
                    .await
            }
            Kind::Watch => {
                self.reply(reply::error("ERR WATCH inside MULTI is not allowed"))
                    .await
            }
            Kind::Local(crate::command::Local::Quit | crate::command::Local::Reset) => {
                self.tx.clear();
                Box::pin(self.dispatch(cmd)).await
            }
            _ => match cmd.rejection() {
                Some(e) => self.reply(e).await,
                None if cmd.entry().has(crate::command::spec::NO_MULTI) => {
                    self.reply(reply::error("ERR Command not allowed inside a transaction"))
                        .await
                }
                None => self.reply(Bytes::from_static(b"+QUEUED\r\n")).await,
            },
        }
    }

    pub(super) async fn dispatch_pinned(&mut self, kind: Kind, cmd: Command) -> Flow {
        if self.subscribed_resp2() && !cmd.allowed_while_subscribed() {
            let name = cmd.full_name();
            return self
                .reply(reply::error(&format!(
                    "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
                )))
                .await;
        }
        let plan = matches!(
            kind,
            Kind::Plain | Kind::Blocking | Kind::BlockingWithOption
        )
        .then(|| self.ctx.state.load())
        .filter(|state| !state.is_empty())
        .and_then(|state| state.plan(&cmd));
        if let Some(plan) = plan {
            return self.run_plan_pinned(plan).await;
        }
        // Subscription confirmations are pushes for Redis: CLIENT REPLY OFF does not hide them.
        let subscribing = matches!(kind, Kind::Subscribe(_) | Kind::Unsubscribe(_));
        let discard = self.client.take_discard() && !subscribing;
        let mut expect = Expect::replies(1, discard);
        let mut unpin_after = false;
        let mut end_tx = None;
        match kind {
            Kind::Multi => self.tx.begin(),
            Kind::EndTransaction if self.tx.in_multi => {
                let pause = self.tx.pause.take();
                end_tx = Some(self.tx.end());
                // A CLIENT PAUSE / UNPAUSE queued in the transaction starts at EXEC.
                if cmd.name().eq_ignore_ascii_case(b"EXEC")
                    && end_tx.as_ref().is_some_and(|(_, poisoned)| !poisoned)
                {
                    match pause {
                        Some(Some((ms, write_only))) => self.ctx.pause.start(ms, write_only),
                        Some(None) => self.ctx.pause.end(),
                        None => {}
                    }
                }
                unpin_after = true;
            }
            Kind::EndTransaction => {}
            Kind::Watch => {
                if !self.tx.in_multi {
                    self.tx.watching = true;
                }
            }
            Kind::Unwatch => {
                if !self.tx.in_multi {
                    self.tx.watching = false;
                    unpin_after = true;
                }
            }
            Kind::Monitor => {
                self.client.modes.monitor = true;
                if let Some(p) = self.ded.pinned.as_mut() {
                    p.sticky = true;
                    p.dirty = true;
                }
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
                if self.tx.in_multi {
                    self.tx.queued.push(None);
                }
            }
        }
        let exec = cmd.name().eq_ignore_ascii_case(b"EXEC");
        if let Some((queued, poisoned)) = end_tx
            && exec
        {
            if poisoned {
                // A command was refused by us at queue time: Redis would abort the whole
                // transaction, so discard it upstream and say so.
                let raw = Command::from_args(["DISCARD"]).raw().clone();
                if self.send_pinned(&raw, Some(Expect::replies(1, true))).await == Flow::Stop {
                    return Flow::Stop;
                }
                if !discard {
                    self.push_ready(reply::error(EXECABORT));
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
                if !(kind == Kind::Subscribe(k) && cmd.argc() < 2) =>
            {
                let subscribe = matches!(kind, Kind::Subscribe(_));
                let names = cmd.args_bytes();
                let frames = self.subs.track(k, subscribe, &names[1..]);
                if let Some(p) = self.ded.pinned.as_mut() {
                    p.sticky = true;
                    p.dirty = true;
                }
                // In RESP3 the confirmations are pushes, which the relay forwards on its own.
                let e = (self.client.proto == 2).then(|| Expect::replies(frames, false));
                self.send_pinned(cmd.raw(), e).await
            }
            _ => {
                if self.send_pinned(cmd.raw(), Some(expect)).await == Flow::Stop {
                    return Flow::Stop;
                }
                if unpin_after {
                    return self.maybe_unpin().await;
                }
                Flow::Continue
            }
        }
    }
}
