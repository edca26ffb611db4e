//! Commands the session answers itself: connection state that Redis would keep per connection
//! but that, behind a pool, belongs to the client's session instead.

mod auth;
mod client;
mod info;
mod select;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::client::ReplyMode;
use super::{Flow, Session};
use crate::command::{Command, Local};
use crate::protocol::reply;

/// A number argument as Redis reads it.
fn parse_i64(b: &[u8]) -> Option<i64> {
    crate::protocol::request::string2ll(b)
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

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    pub(super) async fn local(&mut self, l: Local, cmd: Command) -> Flow {
        if self.tx.in_multi && matches!(l, Local::Auth | Local::Hello | Local::Select) {
            // Redis would queue them and switch the connection at EXEC, between the
            // transaction's own commands; statecar answers them itself, so it cannot. Refused
            // at queue time, which makes EXEC abort the whole transaction, as Redis does for
            // any command refused at queue time: nothing runs half in one identity or database.
            if let Some(e) = cmd.rejection() {
                return self.reply(e).await;
            }
            self.tx.poisoned = true;
            let name = String::from_utf8_lossy(cmd.name()).to_ascii_uppercase();
            return self
                .reply(reply::error(&format!(
                    "ERR {name} inside MULTI is not supported by statecar"
                )))
                .await;
        }
        match l {
            Local::Auth => self.auth(&cmd).await,
            Local::Hello => self.hello(&cmd).await,
            Local::Select => self.select(&cmd).await,
            Local::Quit => {
                self.flush_batch().await;
                if !self.client.take_discard() {
                    self.push_ready(Bytes::from_static(reply::OK));
                }
                Flow::Stop
            }
            Local::Reset => self.reset().await,
            Local::Client => self.client_command(cmd).await,
            Local::Info => self.info(cmd).await,
            Local::State => {
                let plan = self.ctx.state.load().plan_state(&cmd);
                if self.ded.pinned.is_some() {
                    self.run_plan_pinned(plan).await
                } else {
                    self.run_plan(plan).await
                }
            }
        }
    }

    /// RESET: the connection as new (the dedicated connection, if any, is given back).
    async fn reset(&mut self) -> Flow {
        if let Some(mut p) = self.ded.pinned.take() {
            p.dirty = true;
            match self.wait(p.finish()).await {
                Some(Ok(())) => {}
                _ => return Flow::Stop,
            }
        } else if !self.barrier().await {
            return Flow::Stop;
        }
        self.me
            .info
            .upstream_id
            .store(-1, std::sync::atomic::Ordering::Relaxed);
        self.client.db = self.ctx.upstream.config().url.db;
        self.client.proto = 2;
        self.client.name = None;
        self.me.info.set_name(None);
        self.client.modes.tracking = false;
        self.client.modes.redirect = None;
        self.client.modes.monitor = false;
        self.client.modes.no_evict = false;
        self.client.reply_mode = ReplyMode::On;
        self.client.authed = !self.ctx.auth.required();
        self.client.identity = None;
        self.me.info.set_user("default");
        self.tx.clear();
        self.subs.clear();
        self.push_ready(Bytes::from_static(b"+RESET\r\n"));
        Flow::Continue
    }
}
