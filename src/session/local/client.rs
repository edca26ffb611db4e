//! CLIENT: statecar describes and acts on its own clients, as Redis does on its own.
//!
//! Behind a pool, Redis's CLIENT LIST would show statecar's upstream connections, all named
//! `statecar`, and CLIENT KILL would find nobody (or, worse, a shared connection). So CLIENT ID,
//! INFO, LIST, KILL, GETNAME, SETNAME, REPLY and NO-EVICT are answered from statecar's registry of
//! clients; ids given to TRACKING REDIRECT and UNBLOCK are translated to the Redis connection the
//! named client holds; PAUSE, UNPAUSE and HELP are Redis-wide and go to Redis.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::client::ReplyMode;
use super::super::pinned::{Expect, NOT_COUNTED};
use super::super::registry::ClientInfo;
use super::super::{Flow, Session};
use super::{name_error, parse_i64};
use crate::command::Command;
use crate::protocol::reply::{self, Value};

/// Redis's answer to a bad option.
const SYNTAX: &str = "ERR syntax error";

/// CLIENT KILL's filters.
#[derive(Default)]
struct KillFilter {
    addr: Option<Vec<u8>>,
    laddr: Option<Vec<u8>>,
    kind: Option<&'static str>,
    id: Option<u64>,
    user: Option<String>,
    skipme: bool,
}

impl KillFilter {
    fn matches(&self, c: &ClientInfo, me: u64) -> bool {
        self.addr
            .as_deref()
            .is_none_or(|a| a == c.addr().as_bytes())
            && self
                .laddr
                .as_deref()
                .is_none_or(|a| a == c.laddr().as_bytes())
            && self.kind.is_none_or(|k| k == c.kind())
            && self.id.is_none_or(|id| id == c.id)
            && self.user.as_deref().is_none_or(|u| u == c.user())
            && !(self.skipme && c.id == me)
    }
}

/// Redis's client type names (`getClientTypeByName`); statecar's clients are normal or pubsub.
fn client_type(name: &[u8]) -> Option<&'static str> {
    match name.to_ascii_lowercase().as_slice() {
        b"normal" => Some("normal"),
        b"pubsub" => Some("pubsub"),
        b"slave" | b"replica" => Some("replica"),
        b"master" => Some("master"),
        _ => None,
    }
}

/// A text reply as Redis's `addReplyVerbatim` sends it: verbatim in RESP3, bulk in RESP2.
fn verbatim(proto: u8, text: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(text.len() + 16);
    if proto >= 3 {
        out.extend_from_slice(format!("={}\r\ntxt:", text.len() + 4).as_bytes());
    } else {
        out.extend_from_slice(format!("${}\r\n", text.len()).as_bytes());
    }
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
    out.into()
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    pub(super) async fn client_command(&mut self, cmd: Command) -> Flow {
        if let Some(e) = cmd.rejection() {
            return self.reply(e).await;
        }
        let args = cmd.args_bytes();
        let sub = args[1].to_ascii_uppercase();
        if self.tx.in_multi && sub != b"REPLY" {
            // Inside a transaction Redis queues it: it runs at EXEC, on the transaction's
            // connection. Its slot in EXEC's reply is counted so the state replies around it
            // are decoded at the right positions.
            self.tx.queued.push(None);
            if sub == b"UNPAUSE" {
                self.tx.pause = Some(None);
            } else if sub == b"PAUSE"
                && let Some(p) = pause_args(&args)
            {
                self.tx.pause = Some(Some(p));
            }
            let discard = self.client.take_discard();
            return self
                .send_pinned(cmd.raw(), Some(Expect::replies(1, discard)))
                .await;
        }
        match sub.as_slice() {
            b"ID" => self.reply(format!(":{}\r\n", self.client.id)).await,
            b"INFO" => {
                let mut line = self.me.info.line_with(Some(self.own_qbuf(&cmd)));
                line.push(b'\n');
                let b = verbatim(self.client.proto, &line);
                self.reply(b).await
            }
            b"LIST" => {
                let own = self.own_qbuf(&cmd);
                self.client_list(&args, own).await
            }
            b"KILL" => self.client_kill(&args).await,
            b"SETNAME" => {
                if let Some(e) = name_error(&args[2]) {
                    return self.reply(e).await;
                }
                self.client.name = (!args[2].is_empty()).then(|| args[2].clone());
                self.me.info.set_name(self.client.name.clone());
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
            b"REPLY" => match args[2].to_ascii_uppercase().as_slice() {
                b"ON" => {
                    self.client.reply_mode = ReplyMode::On;
                    self.reply(Bytes::from_static(reply::OK)).await
                }
                b"OFF" => {
                    self.client.reply_mode = ReplyMode::Off;
                    Flow::Continue
                }
                b"SKIP" => {
                    if self.client.reply_mode == ReplyMode::On {
                        self.client.reply_mode = ReplyMode::Skip;
                    }
                    Flow::Continue
                }
                _ => self.reply(reply::error(SYNTAX)).await,
            },
            b"NO-EVICT" => match args[2].to_ascii_uppercase().as_slice() {
                b"ON" => {
                    self.client.modes.no_evict = true;
                    self.reply(Bytes::from_static(reply::OK)).await
                }
                b"OFF" => {
                    self.client.modes.no_evict = false;
                    self.reply(Bytes::from_static(reply::OK)).await
                }
                _ => self.reply(reply::error(SYNTAX)).await,
            },
            b"UNBLOCK" => self.client_unblock(&args).await,
            b"GETREDIR" => {
                let n = match (self.client.modes.tracking, self.client.modes.redirect) {
                    (false, _) => -1,
                    (true, None) => 0,
                    (true, Some(id)) => id as i64,
                };
                self.reply(format!(":{n}\r\n")).await
            }
            b"TRACKING" => self.client_tracking(args).await,
            // Connection-scoped, on the connection that tracks.
            // Tracking with a redirect: tracking pinned the connection (sticky) already.
            b"TRACKINGINFO"
                if self.client.modes.redirect.is_some() && self.ded.pinned.is_some() =>
            {
                self.client_trackinginfo(cmd.raw()).await
            }
            b"CACHING" | b"TRACKINGINFO" => self.send_on_own_connection(cmd.raw()).await,
            b"PAUSE" | b"UNPAUSE" if self.ded.pinned.is_none() => self.client_pause(cmd).await,
            // Redis-wide (PAUSE, UNPAUSE) or text (HELP): Redis answers.
            _ => {
                if self.ded.pinned.is_some() {
                    let discard = self.client.take_discard();
                    self.send_pinned(cmd.raw(), Some(Expect::replies(1, discard)))
                        .await
                } else {
                    self.forward(cmd.raw()).await
                }
            }
        }
    }

    /// CLIENT PAUSE / UNPAUSE. After the client's earlier commands (as Redis runs them in
    /// order), on a connection of its own: a shared one may be stuck behind a write the pause
    /// holds, and an UNPAUSE queued there would never arrive. Once Redis accepts, statecar
    /// knows the pause (session::pause) and moves the commands it holds off shared connections.
    async fn client_pause(&mut self, cmd: Command) -> Flow {
        if !self.barrier().await {
            return Flow::Stop;
        }
        let fut = self.on_connection_of_its_own(cmd.raw());
        let Some(r) = self.wait(fut).await else {
            return Flow::Stop;
        };
        if r.as_ref() == reply::OK {
            let args = cmd.args_bytes();
            if args[1].eq_ignore_ascii_case(b"UNPAUSE") {
                self.ctx.pause.end();
            } else if let Some((ms, write_only)) = pause_args(&args) {
                self.ctx.pause.start(ms, write_only);
            }
        }
        self.reply(r).await
    }

    /// CLIENT TRACKINGINFO of a client whose tracking redirects: Redis's answer, with the
    /// `redirect` field naming the statecar client the client named (Redis names its
    /// connection).
    async fn client_trackinginfo(&mut self, raw: &[u8]) -> Flow {
        let id = self.client.modes.redirect.unwrap_or_default();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let e = Expect::Replies {
            frames: 1,
            swallow: true,
            then_stream: false,
            notify: Some(tx),
            reshape: None,
            cmd: NOT_COUNTED,
        };
        if self.send_pinned(raw, Some(e)).await == Flow::Stop {
            return Flow::Stop;
        }
        match self.wait(rx).await {
            Some(Ok(r)) => self.reply(with_redirect_id(r, id)).await,
            _ => Flow::Stop,
        }
    }

    /// Sends a command to the client's dedicated connection, leasing one for the rest of the
    /// client's life if it has none.
    async fn send_on_own_connection(&mut self, raw: &[u8]) -> Flow {
        if self.ded.pinned.is_none() {
            match self.pin().await {
                Err(None) => return Flow::Stop,
                Err(Some(e)) => return self.reply(Bytes::from(e.to_resp())).await,
                Ok(()) => {}
            }
        }
        if let Some(p) = self.ded.pinned.as_mut() {
            p.sticky = true;
            p.dirty = true;
        }
        let discard = self.client.take_discard();
        self.send_pinned(raw, Some(Expect::replies(1, discard)))
            .await
    }

    /// The client's query buffer as Redis would show it while this command runs: what is
    /// still unread plus the command itself.
    fn own_qbuf(&self, cmd: &Command) -> usize {
        self.io.inbuf.len().saturating_add(cmd.raw().len())
    }

    async fn client_list(&mut self, args: &[Bytes], own_qbuf: usize) -> Flow {
        let all = self.ctx.clients.all();
        let mut out = Vec::new();
        let me = self.client.id;
        let mut emit = |c: &ClientInfo| {
            out.extend_from_slice(&c.line_with((c.id == me).then_some(own_qbuf)));
            out.push(b'\n');
        };
        if args.len() == 4 && args[2].eq_ignore_ascii_case(b"TYPE") {
            let Some(kind) = client_type(&args[3]) else {
                let t = String::from_utf8_lossy(&args[3]).into_owned();
                return self
                    .reply(reply::error(&format!("ERR Unknown client type '{t}'")))
                    .await;
            };
            all.iter()
                .filter(|c| c.kind() == kind)
                .for_each(|c| emit(c));
        } else if args.len() > 3 && args[2].eq_ignore_ascii_case(b"ID") {
            let mut ids = Vec::new();
            for a in &args[3..] {
                match parse_i64(a) {
                    Some(id) => ids.push(id),
                    None => return self.reply(reply::error("ERR Invalid client ID")).await,
                }
            }
            for id in ids {
                if let Some(c) = u64::try_from(id)
                    .ok()
                    .and_then(|id| self.ctx.clients.get(id))
                {
                    emit(&c);
                }
            }
        } else if args.len() != 2 {
            return self.reply(reply::error(SYNTAX)).await;
        } else {
            all.iter().for_each(|c| emit(c));
        }
        let b = verbatim(self.client.proto, &out);
        self.reply(b).await
    }

    async fn client_kill(&mut self, args: &[Bytes]) -> Flow {
        let mut f = KillFilter {
            skipme: true,
            ..KillFilter::default()
        };
        let old_form = args.len() == 3;
        if old_form {
            f.addr = Some(args[2].to_vec());
            f.skipme = false;
        } else {
            let mut i = 2;
            while i < args.len() {
                let Some(value) = args.get(i + 1) else {
                    return self.reply(reply::error(SYNTAX)).await;
                };
                match args[i].to_ascii_uppercase().as_slice() {
                    b"ID" => match parse_i64(value).filter(|&n| n >= 1) {
                        Some(n) => f.id = Some(n as u64),
                        None => {
                            return self
                                .reply(reply::error("ERR client-id should be greater than 0"))
                                .await;
                        }
                    },
                    b"TYPE" => match client_type(value) {
                        Some(k) => f.kind = Some(k),
                        None => {
                            let t = String::from_utf8_lossy(value).into_owned();
                            return self
                                .reply(reply::error(&format!("ERR Unknown client type '{t}'")))
                                .await;
                        }
                    },
                    b"ADDR" => f.addr = Some(value.to_vec()),
                    b"LADDR" => f.laddr = Some(value.to_vec()),
                    b"USER" => {
                        let name = String::from_utf8_lossy(value).into_owned();
                        if !self.user_exists(value).await {
                            return self
                                .reply(reply::error(&format!("ERR No such user '{name}'")))
                                .await;
                        }
                        f.user = Some(name);
                    }
                    b"SKIPME" => match value.to_ascii_uppercase().as_slice() {
                        b"YES" => f.skipme = true,
                        b"NO" => f.skipme = false,
                        _ => return self.reply(reply::error(SYNTAX)).await,
                    },
                    _ => return self.reply(reply::error(SYNTAX)).await,
                }
                i += 2;
            }
        }
        let me = self.client.id;
        let mut killed = 0;
        let mut close_me = false;
        for c in self.ctx.clients.all() {
            if !f.matches(&c, me) {
                continue;
            }
            if c.id == me {
                close_me = true;
            } else {
                crate::telemetry::client_rejected("client_kill");
                c.kill();
            }
            killed += 1;
        }
        let flow = match (old_form, killed) {
            (true, 0) => self.reply(reply::error("ERR No such client")).await,
            (true, _) => self.reply(Bytes::from_static(reply::OK)).await,
            (false, n) => self.reply(format!(":{n}\r\n")).await,
        };
        // Redis closes the killing client after its reply.
        if close_me { Flow::Stop } else { flow }
    }

    /// Whether Redis knows the ACL user `name` (CLIENT KILL USER checks it, as Redis does).
    async fn user_exists(&mut self, name: &[u8]) -> bool {
        let conn = self.shared_conn();
        let raw = Command::from_args([&b"ACL"[..], b"GETUSER", name])
            .raw()
            .clone();
        match self.wait(crate::upstream::conn::call(&conn, raw, 1)).await {
            Some(Ok(r)) => r.first() == Some(&b'*') || r.first() == Some(&b'%'),
            _ => false,
        }
    }

    /// CLIENT UNBLOCK: a statecar client blocked in a blocking command waits on a Redis
    /// connection of its own; Redis is asked to unblock that one.
    async fn client_unblock(&mut self, args: &[Bytes]) -> Flow {
        let Some(id) = parse_i64(&args[2]) else {
            return self
                .reply(reply::error("ERR value is not an integer or out of range"))
                .await;
        };
        let how: &[u8] = match args.get(3).map(|a| a.to_ascii_uppercase()) {
            None => b"TIMEOUT",
            Some(h) if h == b"TIMEOUT" => b"TIMEOUT",
            Some(h) if h == b"ERROR" => b"ERROR",
            Some(_) => {
                return self
                    .reply(reply::error(
                        "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
                    ))
                    .await;
            }
        };
        let target = u64::try_from(id)
            .ok()
            .and_then(|id| self.ctx.clients.get(id))
            .filter(|c| c.flags() & super::super::registry::flag::BLOCKED != 0)
            .map(|c| c.upstream_id.load(std::sync::atomic::Ordering::Relaxed))
            .filter(|&u| u >= 0);
        let Some(upstream_id) = target else {
            return self.reply(Bytes::from_static(b":0\r\n")).await;
        };
        let raw = Command::from_args([
            &b"CLIENT"[..],
            b"UNBLOCK",
            upstream_id.to_string().as_bytes(),
            how,
        ])
        .raw()
        .clone();
        self.forward(&raw).await
    }

    /// CLIENT TRACKING: on the client's dedicated connection, with a REDIRECT id translated to
    /// the Redis connection of the statecar client it names.
    async fn client_tracking(&mut self, mut args: Vec<Bytes>) -> Flow {
        let on = args[2].eq_ignore_ascii_case(b"ON");
        let mut redirect = None;
        if let Some(at) = args
            .iter()
            .position(|a| a.eq_ignore_ascii_case(b"REDIRECT"))
            && let Some(v) = args.get(at + 1)
        {
            let target: Option<Arc<ClientInfo>> = parse_i64(v)
                .and_then(|id| u64::try_from(id).ok())
                .and_then(|id| self.ctx.clients.get(id));
            if target.as_ref().is_some_and(|t| t.id == self.client.id) && self.ded.pinned.is_none()
            {
                // To itself: the connection this command goes on is the one.
                match self.pin().await {
                    Err(None) => return Flow::Stop,
                    Err(Some(e)) => return self.reply(Bytes::from(e.to_resp())).await,
                    Ok(()) => {}
                }
            }
            let upstream = match &target {
                Some(t) => upstream_connection_of(t.clone(), self.client.id).await,
                None => None,
            };
            match (target, upstream) {
                (Some(t), Some(u)) => {
                    t.mark_redirect_target();
                    redirect = Some(t.id);
                    args[at + 1] = Bytes::from(u.to_string());
                }
                _ => {
                    return self
                        .reply(reply::error(
                            "ERR The client ID you want redirect to does not exist",
                        ))
                        .await;
                }
            }
        }
        let raw = Command::from_args(&args).raw().clone();
        let flow = self.send_on_own_connection(&raw).await;
        self.client.modes.tracking = on;
        self.client.modes.redirect = if on { redirect } else { None };
        flow
    }
}

/// `CLIENT PAUSE timeout [WRITE|ALL]`: the timeout in milliseconds and whether only writes are
/// held; None for a timeout Redis refuses (not a non-negative integer).
fn pause_args(args: &[Bytes]) -> Option<(u64, bool)> {
    let ms = args
        .get(2)
        .and_then(|a| parse_i64(a))
        .and_then(|n| u64::try_from(n).ok())?;
    let write_only = args
        .get(3)
        .is_some_and(|a| a.eq_ignore_ascii_case(b"WRITE"));
    Some((ms, write_only))
}

/// Redis's id for the connection `t` holds, asking `t` to take one of its own if it has none
/// (its session does so at its next turn; it may be busy, so the wait is bounded). `me`: the
/// asking client, which cannot wait for itself.
async fn upstream_connection_of(t: Arc<ClientInfo>, me: u64) -> Option<i64> {
    use std::sync::atomic::Ordering::Relaxed;
    let id = t.upstream_id.load(Relaxed);
    if id >= 0 || t.id == me {
        return (id >= 0).then_some(id);
    }
    t.want_pin();
    for _ in 0..200 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let id = t.upstream_id.load(Relaxed);
        if id >= 0 {
            return Some(id);
        }
        if t.is_killed() {
            break;
        }
    }
    None
}

/// A CLIENT TRACKINGINFO reply (RESP2 array or RESP3 map) with its `redirect` integer set to
/// `id`; unchanged if it has none.
fn with_redirect_id(reply: Bytes, id: u64) -> Bytes {
    const KEY: &[u8] = b"$8\r\nredirect\r\n:";
    let Some(at) = reply.windows(KEY.len()).position(|w| w == KEY) else {
        return reply;
    };
    let start = at + KEY.len();
    let Some(len) = reply[start..].windows(2).position(|w| w == b"\r\n") else {
        return reply;
    };
    let mut out = Vec::with_capacity(reply.len() + 8);
    out.extend_from_slice(&reply[..start]);
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(&reply[start + len..]);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trackinginfo_redirect_is_rewritten_in_both_protocols() {
        let resp2 = Bytes::from_static(
            b"*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:123\r\n$8\r\nprefixes\r\n*0\r\n",
        );
        assert_eq!(
            with_redirect_id(resp2, 7).as_ref(),
            b"*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:7\r\n$8\r\nprefixes\r\n*0\r\n"
        );
        let resp3 = Bytes::from_static(
            b"%3\r\n$5\r\nflags\r\n~1\r\n$2\r\non\r\n$8\r\nredirect\r\n:-1\r\n$8\r\nprefixes\r\n*0\r\n",
        );
        assert_eq!(
            with_redirect_id(resp3, 12).as_ref(),
            b"%3\r\n$5\r\nflags\r\n~1\r\n$2\r\non\r\n$8\r\nredirect\r\n:12\r\n$8\r\nprefixes\r\n*0\r\n"
        );
        let err = Bytes::from_static(b"-ERR x\r\n");
        assert_eq!(with_redirect_id(err.clone(), 1), err);
    }
}
