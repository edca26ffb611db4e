//! SELECT: the client's database, kept per client; the shared connections are per database.

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::pinned::{Expect, NOT_COUNTED};
use super::super::{Flow, Session};
use super::parse_i64;
use crate::command::Command;
use crate::protocol::reply;
use crate::upstream::lease::Returned;

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    pub(super) async fn select(&mut self, cmd: &Command) -> Flow {
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
        if self.ded.pinned.is_some() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let discard = self.client.take_discard();
            if let Some(p) = self.ded.pinned.as_mut() {
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
                        self.client.db = n;
                    }
                    Flow::Continue
                }
                _ => Flow::Stop,
            };
        }
        if n == self.client.db || self.ctx.upstream.db_known_valid(n) {
            if !self.barrier().await {
                return Flow::Stop;
            }
            self.client.db = n;
            return self.reply(Bytes::from_static(reply::OK)).await;
        }
        // Unknown db: ask Redis on a dedicated connection, which is then reset.
        if !self.barrier().await {
            return Flow::Stop;
        }
        let pool = self.ctx.upstream.primary().leases().clone();
        let mut lease = match self.wait(pool.acquire(self.client.key())).await {
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
                    self.client.db = n;
                }
                self.reply(frame).await
            }
            Some(Err(e)) => {
                pool.release(lease, Returned::Broken);
                self.reply(Bytes::from(e.to_resp())).await
            }
        }
    }
}
