//! AUTH and HELLO: who the client is, and which protocol it speaks.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::pinned::Expect;
use super::super::{Flow, Session};
use super::{name_error, parse_i64};
use crate::command::Command;
use crate::protocol::encode_multibulk;
use crate::protocol::reply::{self, Value};
use crate::upstream::{Identity, connect};

/// What Redis said to a client's credentials.
enum Verdict {
    /// Accepted: the client now runs as this identity.
    Accepted(Arc<Identity>),
    /// Redis's answer (WRONGPASS, or the error for AUTH on a server without a password).
    Refused(Bytes),
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    fn wrongpass(&self) -> Bytes {
        crate::telemetry::auth_failure();
        tracing::warn!(client = self.client.id, "failed authentication attempt");
        reply::error("WRONGPASS invalid username-password pair or user is disabled.")
    }

    pub(super) async fn auth(&mut self, cmd: &Command) -> Flow {
        let args = cmd.args_bytes();
        let (user, pass) = match args.len() {
            2 => (None, &args[1]),
            3 => (Some(&args[1][..]), &args[2]),
            _ => return self.reply(reply::wrong_arity("auth")).await,
        };
        if !self.ctx.auth.required() {
            // statecar has no password of its own: Redis checks the credentials, and the
            // client's commands then run as that user.
            let user = String::from_utf8_lossy(user.unwrap_or(b"default")).into_owned();
            let pass = String::from_utf8_lossy(pass).into_owned();
            return match self.check_with_redis(cmd.raw(), user, pass).await {
                None => Flow::Stop,
                Some(Err(e)) => self.reply(Bytes::from(e.to_resp())).await,
                Some(Ok(Verdict::Refused(e))) => self.reply(e).await,
                Some(Ok(Verdict::Accepted(id))) => {
                    if !self.become_identity(id).await {
                        return Flow::Stop;
                    }
                    self.reply(Bytes::from_static(reply::OK)).await
                }
            };
        }
        if self.ctx.auth.check(user, pass) {
            self.client.authed = true;
            self.reply(Bytes::from_static(reply::OK)).await
        } else {
            let e = self.wrongpass();
            self.reply(e).await
        }
    }

    pub(super) async fn hello(&mut self, cmd: &Command) -> Flow {
        let args = cmd.args_bytes();
        let mut proto = self.client.proto;
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
        let mut became = None;
        if let Some((u, p)) = auth {
            if !self.ctx.auth.required() {
                // Redis checks them (the same AUTH a HELLO AUTH does).
                let raw = Command::from_args([&b"AUTH"[..], u, p]).raw().clone();
                let user = String::from_utf8_lossy(u).into_owned();
                let pass = String::from_utf8_lossy(p).into_owned();
                match self.check_with_redis(&raw, user, pass).await {
                    None => return Flow::Stop,
                    Some(Err(e)) => return self.reply(Bytes::from(e.to_resp())).await,
                    Some(Ok(Verdict::Refused(e))) => return self.reply(e).await,
                    Some(Ok(Verdict::Accepted(id))) => became = Some(id),
                }
            } else if !self.ctx.auth.check(Some(u), p) {
                let e = self.wrongpass();
                return self.reply(e).await;
            }
            self.client.authed = true;
        }
        if let Some(id) = became
            && !self.become_identity(id).await
        {
            return Flow::Stop;
        }
        if !self.client.authed {
            return self
                .reply(reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"))
                .await;
        }
        if let Some(n) = setname {
            if let Some(e) = name_error(n) {
                return self.reply(e).await;
            }
            self.client.name = (!n.is_empty()).then(|| n.clone());
            self.me.info.set_name(self.client.name.clone());
        }
        if proto != self.client.proto {
            if self.ded.pinned.is_some() {
                // The dedicated connection must speak the new protocol too.
                let raw = Command::from_args(["HELLO", &proto.to_string()])
                    .raw()
                    .clone();
                let swallow = Expect::replies(1, true);
                if let Some(p) = self.ded.pinned.as_mut() {
                    p.dirty = true;
                }
                if self.send_pinned(&raw, Some(swallow)).await == Flow::Stop {
                    return Flow::Stop;
                }
            } else if !self.barrier().await {
                return Flow::Stop;
            }
            self.client.proto = proto;
        }
        let v = Value::Map(vec![
            (Value::text("server"), Value::text("redis")),
            (
                Value::text("version"),
                Value::text(&self.ctx.upstream.version()),
            ),
            (Value::text("proto"), Value::Int(self.client.proto as i64)),
            (Value::text("id"), Value::Int(self.client.id as i64)),
            (Value::text("mode"), Value::text("standalone")),
            (Value::text("role"), Value::text("master")),
            (Value::text("modules"), Value::Array(vec![])),
        ]);
        let b = v.encode(self.client.proto);
        self.reply(b).await
    }

    /// Sends the client's AUTH to Redis on a connection of its own. None: the client left.
    async fn check_with_redis(
        &mut self,
        auth: &[u8],
        user: String,
        password: String,
    ) -> Option<Result<Verdict, crate::upstream::UpstreamError>> {
        let node = self.links.node(&self.ctx.upstream);
        let up = self.ctx.upstream.clone();
        let work = async move { connect::one_off(up.config(), &node.ep.addr, auth, 1).await };
        let r = self.wait(work).await?;
        Some(r.map(|frames| {
            let reply = frames.into_iter().next().unwrap_or_default();
            if reply.as_ref() == reply::OK {
                self.ctx.upstream.credentials_accepted();
                Verdict::Accepted(Arc::new(Identity { user, password }))
            } else {
                crate::telemetry::auth_failure();
                tracing::warn!(
                    client = self.client.id,
                    "failed authentication attempt (refused by Redis)"
                );
                Verdict::Refused(reply)
            }
        }))
    }

    /// From now on the client's commands go to connections opened as `id`. Its earlier
    /// commands are answered first, so the switch happens exactly here in its pipeline.
    async fn become_identity(&mut self, id: Arc<Identity>) -> bool {
        if !self.barrier().await {
            return false;
        }
        self.me.info.set_user(&id.user);
        if self.ded.pinned.is_some() {
            // The dedicated connection changes user too.
            let mut raw = BytesMut::new();
            encode_multibulk(
                &mut raw,
                &[&b"AUTH"[..], id.user.as_bytes(), id.password.as_bytes()],
            );
            if let Some(p) = self.ded.pinned.as_mut() {
                p.dirty = true;
            }
            if self.send_pinned(&raw, Some(Expect::replies(1, true))).await == Flow::Stop {
                return false;
            }
        }
        self.client.identity = Some(id);
        self.client.authed = true;
        true
    }
}
