//! AUTH and HELLO: who the client is, and which protocol it speaks.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::pinned::Expect;
use super::super::{Flow, Session};
use super::{name_error, parse_i64};
use crate::command::Command;
use crate::protocol::reply::{self, Value};

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
            return self
                .reply(reply::error(
                    "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?",
                ))
                .await;
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
            self.client.authed = true;
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
}
