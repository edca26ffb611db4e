//! A big argument goes to Redis while it arrives ("cut-through"), on a connection of the
//! client's own.
//!
//! Stored and forwarded, an 8 MB SET is two transfers one after the other: the client's to
//! statecar, then statecar's to Redis, while the shared connection carrying it holds every other
//! client's commands behind those 8 MB. From [`MIN_ARGUMENT`] bytes on, a plain command's
//! argument is passed on as it comes instead, so the two transfers overlap and statecar keeps
//! at most [`WINDOW`] bytes of it. It goes on a leased connection: on a shared one, a client
//! that stopped sending halfway would hold up everyone queued behind its half-sent command.
//!
//! Only the common case is streamed; anything else is read whole and goes the usual way, as
//! before: a command statecar rewrites or answers (a state key, `STATE.*`), a client with a
//! connection of its own already (MULTI, SUBSCRIBE, ...), a Redis Cluster, a command `CLIENT
//! PAUSE WRITE` holds, a denied command, and any time half or more of the dedicated connections
//! are in use (transactions, blocking commands and subscribers need them more).

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{Flow, Session};
use crate::command::spec::{Begin, Find};
use crate::command::{Entry, Kind};
use crate::protocol::Parsed;
use crate::protocol::request::StreamOff;
use crate::telemetry;
use crate::upstream::UpstreamError;
use crate::upstream::lease::{Lease, Returned};

/// Arguments at least this long are streamed. Below it one more copy costs less than taking a
/// dedicated connection and waiting for the client's earlier replies.
pub(super) const MIN_ARGUMENT: usize = 1 << 20;
/// Bytes read from the client ahead of what Redis has taken.
const WINDOW: usize = 512 * 1024;

/// How streaming the argument ended.
enum Pumped {
    /// All of it was passed on (or, after an upstream failure, read and dropped).
    Done,
    /// The client went away halfway.
    Gone,
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    /// The command whose big argument is arriving, if it may go to Redis as it arrives.
    pub(super) fn cut_through_candidate(&self) -> Option<&'static Entry> {
        if self.io.read_whole {
            return None;
        }
        let p = self.io.parser.pending_command(&self.io.inbuf)?;
        // A command longer than the client's query-buffer limit is read whole, and hits the
        // limit as it would in Redis's own query buffer (the client is disconnected).
        if p.bulk < MIN_ARGUMENT
            || p.bulk >= self.cfg.clients.max_query_buffer
            || !self.client.authed
            || self.client.closing
            || self.ded.pinned.is_some()
            || self.tx.in_multi
            || self.tx.doomed.is_some()
            || self.cur.evalsha_in_flight
            || self.ctx.upstream.is_cluster()
        {
            return None;
        }
        let entry = crate::command::lookup(p.name, p.first);
        let fits = usize::try_from(p.argc).is_ok_and(|n| entry.spec.arity_ok(n));
        if entry.kind != Kind::Plain
            || entry.is_unknown()
            || entry.unknown_sub
            || entry.statecar
            || !fits
            || self.ctx.pause.holds(entry)
            || self.denied_name(p.name, p.first, entry)
        {
            return None;
        }
        let state = self.ctx.state.load();
        if entry.state && !state.is_empty() {
            // The state engine reads such a command whole when a key of it is a state key: only
            // a command with one key, first, which has arrived and is not one, may stream.
            let one_key_first = matches!(
                entry.spec.keys,
                [k] if matches!(k.begin, Begin::Index(1))
                    && matches!(k.find, Find::Range { lastkey: 0, .. })
            );
            let key = p.first.filter(|_| one_key_first && p.index >= 2)?;
            if crate::state::keys::is_reserved(key) || state.rule_for(key).is_some() {
                return None;
            }
        }
        Some(entry)
    }

    /// Sends the command being read on a leased connection, its big argument as it arrives, and
    /// queues Redis's reply. None when no connection could be taken (`LeasePool::try_acquire`):
    /// the command is then read whole and goes the usual way.
    pub(super) async fn cut_through(&mut self, entry: &'static Entry) -> Option<Flow> {
        let pool = self.links.node(&self.ctx.upstream).leases().clone();
        let Some(mut lease) = pool.try_acquire(self.client.key()).await else {
            self.io.read_whole = true;
            return None;
        };
        let addr = pool.addr().to_string();
        self.cur.metric = entry.metric;
        self.cur.read_only = false;
        self.me.info.touch(entry.index);
        // Redis must run the client's earlier commands, sent on another connection, first.
        if !self.barrier().await {
            pool.release(lease, Returned::Clean);
            return Some(Flow::Stop);
        }
        let Some(StreamOff { forward, tail_args }) = self.io.parser.stream_off() else {
            pool.release(lease, Returned::Clean);
            return None;
        };
        telemetry::argument_streamed();
        let mut sent: Result<(), UpstreamError> = Ok(());
        if let Pumped::Gone = self.pump(&mut lease, forward, &mut sent, &addr).await {
            // Redis holds half a command on it: the connection can never be reused.
            pool.release(lease, Returned::Broken);
            return Some(Flow::Stop);
        }
        let tail = if tail_args == 0 {
            Bytes::new()
        } else {
            match self.read_tail().await {
                Some(Ok(tail)) => tail,
                Some(Err(e)) => {
                    pool.release(lease, Returned::Broken);
                    self.protocol_error(e).await;
                    return Some(Flow::Stop);
                }
                None => {
                    pool.release(lease, Returned::Broken);
                    return Some(Flow::Stop);
                }
            }
        };
        if let Err(e) = sent {
            pool.release(lease, Returned::Broken);
            return Some(self.reply(Bytes::from(e.to_resp())).await);
        }
        let r = self.wait(lease.call(&tail, &addr)).await;
        Some(self.end_lease(&pool, lease, r).await)
    }

    /// Passes the next `need` bytes of the client's input (what is buffered first) to the
    /// lease, reading more as Redis takes it, with the client's other events handled meanwhile.
    /// After a failed write the rest is read and dropped, and `sent` holds the error.
    async fn pump(
        &mut self,
        lease: &mut Lease,
        mut need: usize,
        sent: &mut Result<(), UpstreamError>,
        addr: &str,
    ) -> Pumped {
        // Two buffers take turns: the client's bytes are read into `inbuf` while `chunk` is
        // written, then they swap, so neither is allocated again (nor its pages faulted in).
        let mut chunk = BytesMut::new();
        loop {
            if chunk.is_empty() && need > 0 && !self.io.inbuf.is_empty() {
                if self.io.inbuf.len() <= need {
                    std::mem::swap(&mut chunk, &mut self.io.inbuf);
                } else {
                    chunk = self.io.inbuf.split_to(need);
                }
                need -= chunk.len();
            }
            if sent.is_err() {
                chunk.clear();
            }
            if chunk.is_empty() && need == 0 {
                return Pumped::Done;
            }
            if !self.settle().await {
                return Pumped::Gone;
            }
            self.io.share.take_turn().await;
            if self.io.inbuf.capacity() - self.io.inbuf.len() < WINDOW / 4 {
                self.io.inbuf.reserve(WINDOW);
            }
            let read = need > self.io.inbuf.len() && self.io.inbuf.len() < WINDOW;
            let step = tokio::select! {
                biased;
                r = lease.conn.stream.write(&chunk), if !chunk.is_empty() => Ok(r),
                ev = self.next_event(read) => Err(ev),
            };
            match step {
                Ok(Ok(n)) if n > 0 => {
                    chunk.advance(n);
                    self.io.share.moved(n);
                }
                Ok(Ok(_)) => {
                    let e = std::io::Error::from(std::io::ErrorKind::WriteZero);
                    *sent = Err(UpstreamError::io(addr, &e));
                }
                Ok(Err(e)) => *sent = Err(UpstreamError::io(addr, &e)),
                Err(ev) => {
                    // The argument's bytes count in both directions here (the session's own
                    // reads do not: events.rs says why).
                    if let super::Event::Read(Ok(n)) = ev {
                        self.io.share.moved(n);
                    }
                    // A client that closes its side before the end of the argument never
                    // finishes the command.
                    if !self.handle(ev) || (self.io.eof && need > self.io.inbuf.len()) {
                        return Pumped::Gone;
                    }
                }
            }
        }
    }

    /// The arguments after the streamed one, parsed as strictly as any command; None if the
    /// client went away first.
    async fn read_tail(&mut self) -> Option<Result<Bytes, crate::protocol::ProtocolError>> {
        loop {
            let unauthenticated = !self.client.authed;
            match self
                .io
                .parser
                .next(&mut self.io.inbuf, &self.cfg.limits, unauthenticated)
            {
                Ok(Some(Parsed::Command(tail))) => return Some(Ok(tail.raw().clone())),
                // A tail always has an argument; nothing to send if it had none.
                Ok(Some(Parsed::Nothing)) => return Some(Ok(Bytes::new())),
                Err(e) => return Some(Err(e)),
                Ok(None) if self.io.eof => return None,
                Ok(None) => {}
            }
            if !self.settle().await {
                return None;
            }
            let ev = self.next_event(true).await;
            if !self.handle(ev) {
                return None;
            }
        }
    }
}
