//! CLIENT: the subcommands that describe or change the client's own connection.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::client::ReplyMode;
use super::super::pinned::Expect;
use super::super::{Flow, Session};
use super::name_error;
use crate::command::Command;
use crate::protocol::reply::{self, Value};

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    pub(super) async fn client_command(&mut self, cmd: Command) -> Flow {
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
                self.client.name = (!args[2].is_empty()).then(|| args[2].clone());
                self.reply(Bytes::from_static(reply::OK)).await
            }
            b"GETNAME" => {
                let v = match &self.client.name {
                    Some(n) => Value::Bulk(n.clone()),
                    None => Value::Null,
                };
                let b = v.encode(self.client.proto);
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
                        self.client.reply_mode = ReplyMode::On;
                        self.reply(Bytes::from_static(reply::OK)).await
                    }
                    (3, Some(b"OFF")) => {
                        self.client.reply_mode = ReplyMode::Off;
                        Flow::Continue
                    }
                    (3, Some(b"SKIP")) => {
                        if self.client.reply_mode == ReplyMode::On {
                            self.client.reply_mode = ReplyMode::Skip;
                        }
                        Flow::Continue
                    }
                    _ => self.reply(reply::error("ERR syntax error")).await,
                }
            }
            // Connection-scoped features: the client needs a connection of its own for life.
            b"ID" | b"TRACKING" | b"CACHING" | b"GETREDIR" | b"TRACKINGINFO" | b"NO-EVICT"
            | b"NO-TOUCH" | b"INFO" => {
                if self.pinned.is_none() {
                    match self.pin().await {
                        Err(None) => return Flow::Stop,
                        Err(Some(e)) => return self.reply(Bytes::from(e.to_resp())).await,
                        Ok(()) => {}
                    }
                }
                if let Some(p) = self.pinned.as_mut() {
                    p.sticky = true;
                    p.dirty = true;
                }
                let discard = self.client.take_discard();
                let e = Expect::replies(1, discard);
                self.send_pinned(cmd.raw(), Some(e)).await
            }
            _ => {
                if self.pinned.is_some() {
                    let discard = self.client.take_discard();
                    let e = Expect::replies(1, discard);
                    self.send_pinned(cmd.raw(), Some(e)).await
                } else {
                    self.forward(cmd.raw()).await
                }
            }
        }
    }
}
