//! Commands the session answers itself: connection state that Redis would keep per connection
//! but that, behind a pool, belongs to the client's session instead.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::pinned::{Expect, NOT_COUNTED};
use super::{Flow, ReplyMode, Session};
use crate::command::{Command, Local};
use crate::protocol::reply::{self, Value};
use crate::upstream::lease::Returned;

fn parse_i64(b: &[u8]) -> Option<i64> {
    std::str::from_utf8(b).ok()?.parse().ok()
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    pub(super) async fn local(&mut self, l: Local, cmd: Command) -> Flow {
        match l {
            Local::Auth => self.auth(&cmd).await,
            Local::Hello => self.hello(&cmd).await,
            Local::Select => self.select(&cmd).await,
            Local::Quit => {
                self.flush_batch().await;
                if !self.take_discard() {
                    let _ = self
                        .push(super::Out::Ready(Bytes::from_static(reply::OK)))
                        .await;
                }
                let _ = self.push(super::Out::Close).await;
                Flow::Stop
            }
            Local::Reset => self.reset().await,
            Local::Client => self.client(cmd).await,
            Local::State => {
                let plan = self.ctx.state.load().plan_state(&cmd);
                if self.pinned.is_some() {
                    self.run_plan_pinned(plan).await
                } else {
                    self.run_plan(plan).await
                }
            }
        }
    }

    fn wrongpass(&self) -> Bytes {
        crate::telemetry::auth_failure();
        tracing::warn!(client = self.id, "failed authentication attempt");
        reply::error("WRONGPASS invalid username-password pair or user is disabled.")
    }

    async fn auth(&mut self, cmd: &Command) -> Flow {
        let args = cmd.args_bytes();
        let (user, pass) = match args.len() {
            2 => (None, &args[1]),
            3 => (Some(&args[1][..]), &args[2]),
            _ => return self.reply(reply::wrong_arity("auth")).await,
        };
        if !self.ctx.auth.required() {
            return self
                .reply(reply::error(
                    "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ))
                .await;
        }
        if self.ctx.auth.check(user, pass) {
            self.authed = true;
            self.reply(Bytes::from_static(reply::OK)).await
        } else {
            let e = self.wrongpass();
            self.reply(e).await
        }
    }

    async fn hello(&mut self, cmd: &Command) -> Flow {
        let args = cmd.args_bytes();
        let mut proto = self.proto;
        let mut i = 1;
        if let Some(v) = args.get(1) {
            match parse_i64(v) {
                Some(2) => proto = 2,
                Some(3) => proto = 3,
                Some(_) => {
                    return self
                        .reply(reply::error("NOPROTO unsupported protocol version"))
                        .await;
                }
                None => {
                    return self
                        .reply(reply::error(
                            "ERR Protocol version is not an integer or out of range",
                        ))
                        .await;
                }
            }
            i = 2;
        }
        let mut auth: Option<(&Bytes, &Bytes)> = None;
        let mut setname: Option<&Bytes> = None;
        while i < args.len() {
            let opt = args[i].to_ascii_uppercase();
            let more = args.len() - i - 1;
            if opt == b"AUTH" && more >= 2 {
                auth = Some((&args[i + 1], &args[i + 2]));
                i += 3;
            } else if opt == b"SETNAME" && more >= 1 {
                setname = Some(&args[i + 1]);
                i += 2;
            } else {
                let o = String::from_utf8_lossy(&args[i]).into_owned();
                return self
                    .reply(reply::error(&format!(
                        "ERR Syntax error in HELLO option '{o}'"
                    )))
                    .await;
            }
        }
        if let Some((u, p)) = auth {
            if !self.ctx.auth.required() {
                // Redis accepts any password for a default user without one only if it is
                // "nopass"; with no auth configured we behave like that default user.
                if u.as_ref() != b"default" {
                    let e = self.wrongpass();
                    return self.reply(e).await;
                }
            } else if !self.ctx.auth.check(Some(u), p) {
                let e = self.wrongpass();
                return self.reply(e).await;
            }
            self.authed = true;
        }
        if !self.authed {
            return self
                .reply(reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"))
                .await;
        }
        if let Some(n) = setname {
            if let Some(e) = name_error(n) {
                return self.reply(e).await;
            }
            self.name = (!n.is_empty()).then(|| n.clone());
        }
        if proto != self.proto {
            if self.pinned.is_some() {
                // The dedicated connection must speak the new protocol too.
                let raw = Command::from_args(["HELLO", &proto.to_string()])
                    .raw()
                    .clone();
                let swallow = Expect::replies(1, true);
                if let Some(p) = self.pinned.as_mut() {
                    p.dirty = true;
                }
                if self.send_pinned(&raw, Some(swallow)).await == Flow::Stop {
                    return Flow::Stop;
                }
            } else if !self.barrier().await {
                return Flow::Stop;
            }
            self.proto = proto;
        }
        let v = Value::Map(vec![
            (Value::text("server"), Value::text("redis")),
            (
                Value::text("version"),
                Value::text(&self.ctx.upstream.version()),
            ),
            (Value::text("proto"), Value::Int(self.proto as i64)),
            (Value::text("id"), Value::Int(self.id as i64)),
            (Value::text("mode"), Value::text("standalone")),
            (Value::text("role"), Value::text("master")),
            (Value::text("modules"), Value::Array(vec![])),
        ]);
        let b = v.encode(self.proto);
        self.reply(b).await
    }

    async fn select(&mut self, cmd: &Command) -> Flow {
        if cmd.argc() != 2 {
            return self.reply(reply::wrong_arity("select")).await;
        }
        let Some(n) = parse_i64(cmd.arg(1).unwrap_or_default()) else {
            return self
                .reply(reply::error("ERR value is not an integer or out of range"))
                .await;
        };
        if n < 0 || n > u32::MAX as i64 {
            return self
                .reply(reply::error("ERR DB index is out of range"))
                .await;
        }
        let n = n as u32;
        if let Some(p) = &self.pinned {
            if p.in_multi {
                return self
                    .reply(reply::error(
                        "ERR SELECT inside MULTI is not supported by statecar",
                    ))
                    .await;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let discard = self.take_discard();
            if let Some(p) = self.pinned.as_mut() {
                p.dirty = true;
            }
            let e = Expect::Replies {
                frames: 1,
                swallow: discard,
                then_stream: false,
                notify: Some(tx),
                reshape: None,
                cmd: NOT_COUNTED,
            };
            if self.send_pinned(cmd.raw(), Some(e)).await == Flow::Stop {
                return Flow::Stop;
            }
            return match self.wait(rx).await {
                Some(Ok(r)) => {
                    if r.as_ref() == reply::OK {
                        self.db = n;
                    }
                    Flow::Continue
                }
                _ => Flow::Stop,
            };
        }
        if n == self.db || self.ctx.upstream.db_known_valid(n) {
            if !self.barrier().await {
                return Flow::Stop;
            }
            self.db = n;
            return self.reply(Bytes::from_static(reply::OK)).await;
        }
        // Unknown db: ask Redis on a dedicated connection, which is then reset.
        if !self.barrier().await {
            return Flow::Stop;
        }
        let pool = self.ctx.upstream.primary().leases().clone();
        let mut lease = match self.wait(pool.acquire(self.key())).await {
            None => return Flow::Stop,
            Some(Err(e)) => return self.reply(Bytes::from(e.to_resp())).await,
            Some(Ok(l)) => l,
        };
        let addr = pool.addr().to_string();
        let work = lease.call(cmd.raw(), &addr);
        match self.wait(work).await {
            None => {
                pool.release(lease, Returned::Broken);
                Flow::Stop
            }
            Some(Ok(frame)) => {
                let ok = frame.as_ref() == reply::OK;
                pool.release(lease, if ok { Returned::Dirty } else { Returned::Clean });
                if ok {
                    self.ctx.upstream.mark_db_valid(n);
                    self.db = n;
                }
                self.reply(frame).await
            }
            Some(Err(e)) => {
                pool.release(lease, Returned::Broken);
                self.reply(Bytes::from(e.to_resp())).await
            }
        }
    }

    async fn reset(&mut self) -> Flow {
        if let Some(mut p) = self.pinned.take() {
            p.dirty = true;
            match self.wait(p.finish()).await {
                Some(Ok(())) => {}
                _ => return Flow::Stop,
            }
        } else if !self.barrier().await {
            return Flow::Stop;
        }
        self.db = self.ctx.upstream.config().url.db;
        self.proto = 2;
        self.name = None;
        self.reply_mode = ReplyMode::On;
        self.authed = !self.ctx.auth.required();
        self.deferred_multi = None;
        for s in &mut self.subs {
            s.clear();
        }
        self.push(super::Out::Ready(Bytes::from_static(b"+RESET\r\n")))
            .await
    }

    async fn client(&mut self, cmd: Command) -> Flow {
        let args = cmd.args_bytes();
        let Some(sub) = args.get(1).map(|s| s.to_ascii_uppercase()) else {
            return self.reply(reply::wrong_arity("client")).await;
        };
        match sub.as_slice() {
            b"SETNAME" => {
                if args.len() != 3 {
                    return self.reply(reply::wrong_arity("client|setname")).await;
                }
                if let Some(e) = name_error(&args[2]) {
                    return self.reply(e).await;
                }
                self.name = (!args[2].is_empty()).then(|| args[2].clone());
                self.reply(Bytes::from_static(reply::OK)).await
            }
            b"GETNAME" => {
                let v = match &self.name {
                    Some(n) => Value::Bulk(n.clone()),
                    None => Value::Null,
                };
                let b = v.encode(self.proto);
                self.reply(b).await
            }
            b"SETINFO" => {
                if args.len() != 4 {
                    return self.reply(reply::wrong_arity("client|setinfo")).await;
                }
                self.reply(Bytes::from_static(reply::OK)).await
            }
            b"REPLY" => {
                let mode = args.get(2).map(|m| m.to_ascii_uppercase());
                match (args.len(), mode.as_deref()) {
                    (3, Some(b"ON")) => {
                        self.reply_mode = ReplyMode::On;
                        self.reply(Bytes::from_static(reply::OK)).await
                    }
                    (3, Some(b"OFF")) => {
                        self.reply_mode = ReplyMode::Off;
                        Flow::Continue
                    }
                    (3, Some(b"SKIP")) => {
                        if self.reply_mode == ReplyMode::On {
                            self.reply_mode = ReplyMode::Skip;
                        }
                        Flow::Continue
                    }
                    _ => self.reply(reply::error("ERR syntax error")).await,
                }
            }
            // Connection-scoped features: the client needs a connection of its own for life.
            b"ID" | b"TRACKING" | b"CACHING" | b"GETREDIR" | b"TRACKINGINFO" | b"NO-EVICT"
            | b"NO-TOUCH" | b"INFO" => {
                if self.pinned.is_none()
                    && let Some(flow) = self.pin().await
                {
                    return flow;
                }
                if let Some(p) = self.pinned.as_mut() {
                    p.sticky = true;
                    p.dirty = true;
                }
                let discard = self.take_discard();
                let e = Expect::replies(1, discard);
                self.send_pinned(cmd.raw(), Some(e)).await
            }
            _ => {
                if self.pinned.is_some() {
                    let discard = self.take_discard();
                    let e = Expect::replies(1, discard);
                    self.send_pinned(cmd.raw(), Some(e)).await
                } else {
                    self.forward(cmd.raw()).await
                }
            }
        }
    }
}

/// Redis refuses names with spaces, newlines or other special characters.
fn name_error(n: &[u8]) -> Option<Bytes> {
    if n.iter().any(|&c| !(b'!'..=b'~').contains(&c)) {
        Some(reply::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ))
    } else {
        None
    }
}
