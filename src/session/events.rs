//! The session's event loop: waiting for whatever comes next (replies, the socket, the
//! relay, input, signals) without ever blocking the client's replies behind its input.

use std::io::IoSlice;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::output::MAX_SLICES;
use super::pinned::Relayed;
use super::{Event, MAX_BUFFER_WHILE_WAITING, Session};

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    /// Moves finished replies to the output buffer and writes what the socket takes at once.
    /// False if the client must be disconnected (output buffer over its limit).
    pub(super) async fn settle(&mut self) -> bool {
        if self.io.gone {
            return false;
        }
        self.pipeline.settle(&mut self.out.q).await;
        if !self.account() {
            self.io.gone = true;
            return false;
        }
        if let Some(which) = self.out.over_limit() {
            self.out.report_disconnect(self.client.id, which);
            self.io.gone = true;
            return false;
        }
        true
    }

    /// Waits for the next thing to happen. Cancel-safe: every branch either takes nothing or
    /// returns what it took in the event.
    pub(super) async fn next_event(&mut self, read: bool) -> Event {
        // A client moving a big value does not hold the thread for all of it.
        self.io.share.take_turn().await;
        if self.io.inbuf.capacity() - self.io.inbuf.len() < 512 {
            let want = self.io.parser.pending_bulk().unwrap_or(0);
            // A big argument's room is taken in one step (up to 16 MiB at a time), as Redis
            // does: growing by small steps copied an 8 MB value about twice over. Untouched
            // room is not resident, and the memory budget counts what was received.
            self.io.inbuf.reserve(want.clamp(16 * 1024, 16 << 20));
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = self.out.q.slices(&mut slices);
        let deadline = self.out.soft_deadline();
        tokio::select! {
            biased;
            _ = self.pipeline.front_ready() => Event::Replied,
            r = self.io.wr.write_vectored(&slices[..n]), if n > 0 => Event::Wrote(r),
            r = recv_relay(&mut self.ded.relay) => Event::Relay(r),
            // Neither capped at a fair share nor counted towards it, unlike the writes: with
            // the clients' reads taking turns, eight clients uploading huge values grew their
            // buffers side by side, and statecar's peak resident memory went over
            // tests/memory_budget.rs's ceiling (84-370 MiB against 145). A streamed argument
            // (cut_through.rs) counts what it writes to Redis instead.
            r = self.io.rd.read_buf(&mut self.io.inbuf), if read => Event::Read(r),
            _ = sleep_until(deadline), if deadline.is_some() => Event::SoftDeadline,
            // Last: it is only polled when nothing else is ready, that is when the task is
            // about to sleep (the loop also checks the flags behind it on every turn).
            ev = &mut self.signals => {
                // Each signal is acted on once.
                self.signals = Box::pin(std::future::pending());
                ev
            }
        }
    }

    /// Writes what the socket takes now without waiting, saving a turn of the event loop
    /// for the common case of a reply that fits in the socket buffer.
    pub(super) fn write_now(&mut self) -> bool {
        if self.out.q.is_empty() {
            return true;
        }
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = self.out.q.slices(&mut slices);
        match futures_util::FutureExt::now_or_never(self.io.wr.write_vectored(&slices[..n])) {
            None => true,
            Some(r) => self.handle(Event::Wrote(r)),
        }
    }

    /// Redis's `tracking-redir-broken` push names the Redis connection the redirect pointed
    /// at; the client named a statecar client (the RESP2 form, a message on
    /// `__redis__:invalidate`, carries no id).
    fn redir_broken_in_statecar_ids(&self, b: bytes::Bytes) -> bytes::Bytes {
        const PREFIX: &[u8] = b">2\r\n$21\r\ntracking-redir-broken\r\n:";
        match self.client.modes.redirect {
            Some(id) if b.starts_with(PREFIX) => {
                bytes::Bytes::from(format!(">2\r\n$21\r\ntracking-redir-broken\r\n:{id}\r\n"))
            }
            _ => b,
        }
    }

    /// Applies an event; false when the client is gone.
    pub(super) fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Replied | Event::SoftDeadline => true,
            Event::Wrote(Ok(0)) | Event::Wrote(Err(_)) => {
                self.io.gone = true;
                false
            }
            Event::Wrote(Ok(n)) => {
                self.io.share.moved(n);
                self.out.q.advance(n);
                true
            }
            // The client closed its side: what it already sent is still answered (a client that
            // half-closes after its last command reads the replies), then the session ends.
            Event::Read(Ok(0)) => {
                self.io.eof = true;
                self.client.closing = true;
                true
            }
            Event::Read(Err(_)) => {
                self.io.gone = true;
                false
            }
            Event::Read(Ok(_)) => {
                self.cur.read_at = Instant::now();
                self.me.info.active();
                true
            }
            Event::Relay(Some(Relayed::Reply(b))) => {
                self.pipeline.relayed(b, &mut self.out.q);
                true
            }
            Event::Relay(Some(Relayed::Push(b))) => {
                self.out.pubsub();
                let b = self.redir_broken_in_statecar_ids(b);
                self.out.q.push(&b);
                true
            }
            Event::Relay(Some(Relayed::Stream(b))) => {
                self.out.q.push(&b);
                true
            }
            Event::Relay(Some(Relayed::Closed)) => {
                self.client.closing = true;
                true
            }
            Event::Relay(None) => {
                self.ded.relay = None;
                true
            }
            Event::Drain => {
                self.client.closing = true;
                true
            }
            Event::Killed => {
                self.io.gone = true;
                false
            }
            // Taken by the event loop at its next turn (it needs to await); the signals are
            // armed again, since this one can come back and the others must still come.
            Event::PinWanted => {
                self.ded.wanted = true;
                self.signals = super::signals(&self.me.info, &self.ctx);
                true
            }
        }
    }

    /// Waits for `fut` while the client's replies keep flowing; None if the client went away.
    pub(super) async fn wait<T>(&mut self, fut: impl std::future::Future<Output = T>) -> Option<T> {
        tokio::pin!(fut);
        loop {
            if !self.settle().await {
                return None;
            }
            let room = self.io.inbuf.len() < MAX_BUFFER_WHILE_WAITING && !self.client.closing;
            let ev = tokio::select! {
                biased;
                v = &mut fut => return Some(v),
                ev = self.next_event(room) => ev,
            };
            // A client that hung up while waiting (blocked in BLPOP, say) is gone: what it
            // waits for is abandoned.
            if !self.handle(ev) || self.io.eof {
                return None;
            }
        }
    }

    /// Waits until every reply queued so far has reached the output buffer: the next command
    /// may go elsewhere. False if the client went away meanwhile.
    pub(super) async fn barrier(&mut self) -> bool {
        self.flush_batch().await;
        loop {
            if !self.settle().await {
                return false;
            }
            if self.pipeline.is_empty() {
                return true;
            }
            let room = self.io.inbuf.len() < MAX_BUFFER_WHILE_WAITING && !self.client.closing;
            let ev = self.next_event(room).await;
            if !self.handle(ev) || self.io.eof {
                return false;
            }
        }
    }
}

/// The relay's next item, or never when there is no relay.
async fn recv_relay(relay: &mut Option<mpsc::Receiver<Relayed>>) -> Option<Relayed> {
    match relay {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
