//! A client pinned to a dedicated connection (MULTI, WATCH, pub/sub, MONITOR, tracking).
//!
//! Commands are written straight to the leased connection; a relay task reads what comes back
//! and hands it to the client's session in arrival order. Each command leaves an [`Expect`]
//! telling the relay how many replies it produces; anything that is not a reply (RESP3 pushes,
//! RESP2 pub/sub messages, the MONITOR stream) passes straight through. Because one task forwards
//! everything in wire order, pushes and replies can never swap places.

use bytes::{Bytes, BytesMut};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::protocol::ReplyScanner;
use crate::state::transform::Reshape;
use crate::upstream::UpstreamError;
use crate::upstream::connect::{Stream, decode_reply, read_frame};
use crate::upstream::lease::{Lease, LeasePool, LeasedConn, Returned};
use crate::upstream::node::Endpoint;
use redis_protocol::resp3::types::{BytesFrame, Resp3Frame};
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Metric id meaning "internal command, do not count".
pub const NOT_COUNTED: u16 = u16::MAX;

/// How many relayed frames may wait for the session before the relay stops reading Redis.
pub const RELAY_QUEUE: usize = 1024;

/// What the relay hands the session, in wire order.
#[derive(Debug)]
pub enum Relayed {
    /// The reply to a command the session sent (it counts against the session's pipeline).
    Reply(Bytes),
    /// A RESP3 push or a RESP2 pub/sub message: goes out at once; the client is now limited
    /// as a pub/sub client.
    Push(Bytes),
    /// MONITOR output: goes out at once.
    Stream(Bytes),
    /// The connection is gone (every outstanding reply was answered with the error first):
    /// the client is closed, as if Redis had closed its connection.
    Closed,
}

/// What the relay should do with the replies of one command.
pub enum Expect {
    /// The next `frames` replies belong to the client (or are swallowed).
    Replies {
        /// How many reply frames.
        frames: usize,
        /// Consume without forwarding (CLIENT REPLY OFF, internal commands).
        swallow: bool,
        /// After these replies, everything is forwarded (MONITOR).
        then_stream: bool,
        /// Also hand the last reply to the session (SELECT needs to know if it worked).
        notify: Option<oneshot::Sender<Bytes>>,
        /// Reshape the reply (state keys).
        reshape: Option<Box<Reshape>>,
        /// Metric id of the command (set by the session when it sends).
        cmd: u16,
    },
    /// The session is unpinning: stop here and give the connection back.
    Finish,
}

impl Expect {
    /// The common case: one reply, forwarded.
    pub fn one() -> Expect {
        Expect::Replies {
            frames: 1,
            swallow: false,
            then_stream: false,
            notify: None,
            reshape: None,
            cmd: NOT_COUNTED,
        }
    }

    /// `frames` replies, forwarded unless `swallow`.
    pub fn replies(frames: usize, swallow: bool) -> Expect {
        Expect::Replies {
            frames,
            swallow,
            then_stream: false,
            notify: None,
            reshape: None,
            cmd: NOT_COUNTED,
        }
    }
}

/// How the relay ended.
pub enum RelayEnd {
    /// Reached `Finish`: the connection is idle and can be returned.
    Finished(ReadHalf<Stream>, BytesMut),
    /// The connection failed or the client went away.
    Failed,
}

/// The pinned state of a session.
pub struct Pinned {
    wr: WriteHalf<Stream>,
    expect: mpsc::UnboundedSender<Expect>,
    relay: JoinHandle<RelayEnd>,
    permit: OwnedSemaphorePermit,
    key: crate::upstream::PoolKey,
    pool: Arc<LeasePool>,
    addr: String,
    /// The connection's state no longer matches a fresh one (tracking, name, subscriptions).
    pub dirty: bool,
    /// Stays pinned until the client leaves (pub/sub, MONITOR, tracking).
    pub sticky: bool,
    /// Redis's id for the connection (what CLIENT TRACKING REDIRECT and CLIENT UNBLOCK need).
    pub upstream_id: Option<i64>,
    /// The client holding it (whether it must close on release: see `ClientInfo::release_as`).
    owner: Arc<super::registry::ClientInfo>,
}

impl Pinned {
    /// Starts relaying for a freshly leased connection.
    pub fn start(
        lease: Lease,
        pool: Arc<LeasePool>,
        out: mpsc::Sender<Relayed>,
        addr: String,
        owner: Arc<super::registry::ClientInfo>,
    ) -> Pinned {
        let Lease { conn, permit } = lease;
        let LeasedConn {
            stream,
            rbuf,
            key,
            upstream_id,
        } = conn;
        let (rd, wr) = tokio::io::split(stream);
        let (etx, erx) = mpsc::unbounded_channel();
        let ep = pool.endpoint().clone();
        let relay = tokio::spawn(relay(rd, rbuf, erx, out, addr.clone(), ep));
        Pinned {
            wr,
            expect: etx,
            relay,
            permit,
            key,
            pool,
            addr,
            dirty: false,
            sticky: false,
            upstream_id,
            owner,
        }
    }

    /// Sends a command whose replies the relay handles as `expect` says.
    pub async fn send(&mut self, raw: &[u8], expect: Option<Expect>) -> Result<(), UpstreamError> {
        if let Some(e) = expect
            && self.expect.send(e).is_err()
        {
            return Err(UpstreamError::Closed {
                addr: self.addr.clone(),
            });
        }
        crate::fair_share::write_all(&mut self.wr, raw)
            .await
            .map_err(|e| UpstreamError::io(&self.addr, &e))
    }

    /// True once the relay has stopped (the connection failed).
    pub fn is_broken(&self) -> bool {
        self.relay.is_finished()
    }

    /// Waits for every outstanding reply, then returns the connection to the pool.
    pub async fn finish(self) -> Result<(), UpstreamError> {
        self.give_back(None).await
    }

    /// Drops the connection without the client (it is gone). The connection goes back to the
    /// pool (reset) if its replies arrive within a short grace; otherwise the relay is stopped
    /// and the connection closed, since its late replies would reach the next user.
    pub fn abandon(mut self) {
        self.dirty = true;
        tokio::spawn(self.give_back(Some(std::time::Duration::from_millis(500))));
    }

    async fn give_back(self, grace: Option<std::time::Duration>) -> Result<(), UpstreamError> {
        let Pinned {
            wr,
            expect,
            mut relay,
            permit,
            key,
            pool,
            addr,
            dirty,
            upstream_id,
            owner,
            ..
        } = self;
        let _ = expect.send(Expect::Finish);
        let end = match grace {
            None => (&mut relay).await,
            Some(d) => match tokio::time::timeout(d, &mut relay).await {
                Ok(end) => end,
                Err(_) => {
                    relay.abort();
                    crate::telemetry::leased_in_use(-1);
                    return Err(UpstreamError::Closed { addr });
                }
            },
        };
        match end {
            Ok(RelayEnd::Finished(rd, rbuf)) => {
                let stream = rd.unsplit(wr);
                let how = owner.release_as(if dirty {
                    Returned::Dirty
                } else {
                    Returned::Clean
                });
                pool.release(
                    Lease {
                        conn: LeasedConn {
                            stream,
                            rbuf,
                            key,
                            upstream_id,
                        },
                        permit,
                    },
                    how,
                );
                Ok(())
            }
            _ => {
                crate::telemetry::leased_in_use(-1);
                Err(UpstreamError::Closed { addr })
            }
        }
    }
}

/// RESP2 pub/sub message frames, which arrive unasked while subscribed.
fn is_resp2_message(frame: &[u8]) -> bool {
    frame.starts_with(b"*3\r\n$7\r\nmessage\r\n")
        || frame.starts_with(b"*4\r\n$8\r\npmessage\r\n")
        || frame.starts_with(b"*3\r\n$8\r\nsmessage\r\n")
}

/// For an (un)subscribe confirmation (a RESP2 array or a RESP3 push), returns (is_shard,
/// remaining count). Both count: a RESP3 subscriber that switches to RESP2 (HELLO 2) gets its
/// messages as RESP2 arrays, which must still be told from replies.
fn subscription_count(frame: &Bytes) -> Option<(bool, i64)> {
    if !frame.starts_with(b"*3\r\n$") && !frame.starts_with(b">3\r\n$") {
        return None;
    }
    let (BytesFrame::Array { data, .. } | BytesFrame::Push { data, .. }) = decode_reply(frame)?
    else {
        return None;
    };
    let kind = data.first()?.as_bytes()?;
    let shard = match kind {
        b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe" => false,
        b"ssubscribe" | b"sunsubscribe" => true,
        _ => return None,
    };
    match data.get(2)? {
        BytesFrame::Number { data, .. } => Some((shard, *data)),
        _ => None,
    }
}

async fn relay(
    mut rd: ReadHalf<Stream>,
    mut rbuf: BytesMut,
    mut expect_rx: mpsc::UnboundedReceiver<Expect>,
    out: mpsc::Sender<Relayed>,
    addr: String,
    ep: Arc<Endpoint>,
) -> RelayEnd {
    let mut scanner = ReplyScanner::default();
    let mut head: Option<Expect> = None;
    let mut streaming = false;
    let mut subscribed = (0i64, 0i64);
    loop {
        // Finish is only honoured once every earlier reply has been relayed (head is empty).
        let frame = tokio::select! {
            biased;
            r = read_frame(&mut rd, &mut rbuf, &mut scanner, &addr) => match r {
                Ok(f) => f,
                Err(e) => return fail(e, head, &mut expect_rx, &out).await,
            },
            // The node was retired (failover): this client's pinned state cannot follow.
            _ = ep.retired().cancelled() => {
                return fail(ep.retired_error(), head, &mut expect_rx, &out).await;
            }
            e = expect_rx.recv(), if head.is_none() => match e {
                Some(Expect::Finish) | None => return RelayEnd::Finished(rd, rbuf),
                Some(e) => {
                    head = Some(e);
                    continue;
                }
            },
        };
        if let Some((shard, n)) = subscription_count(&frame) {
            if shard {
                subscribed.1 = n;
            } else {
                subscribed.0 = n;
            }
        }
        let push = frame.first() == Some(&b'>');
        let message = subscribed != (0, 0) && is_resp2_message(&frame);
        if streaming || push || message {
            // MONITOR output counts as a normal client's, as in Redis; messages as pub/sub.
            let item = if push || message {
                Relayed::Push(frame)
            } else {
                Relayed::Stream(frame)
            };
            if out.send(item).await.is_err() {
                return RelayEnd::Failed;
            }
            continue;
        }
        if head.is_none() {
            match expect_rx.try_recv() {
                Ok(Expect::Finish) | Err(_) => {
                    tracing::warn!(%addr, "reply with no command outstanding on a dedicated connection");
                    return RelayEnd::Failed;
                }
                Ok(e) => head = Some(e),
            }
        }
        let Some(Expect::Replies {
            frames,
            swallow,
            then_stream,
            notify,
            reshape,
            cmd,
        }) = head.take()
        else {
            return RelayEnd::Failed;
        };
        let last = frames <= 1;
        let frame = match &reshape {
            Some(r) => r.apply(frame).await,
            None => frame,
        };
        if !swallow && out.send(Relayed::Reply(frame.clone())).await.is_err() {
            return RelayEnd::Failed;
        }
        if last {
            if cmd != NOT_COUNTED {
                crate::telemetry::command(cmd, matches!(frame.first(), Some(b'-') | Some(b'!')));
            }
            if let Some(n) = notify {
                let _ = n.send(frame);
            }
            streaming |= then_stream;
        } else {
            head = Some(Expect::Replies {
                frames: frames - 1,
                swallow,
                then_stream,
                notify,
                reshape,
                cmd,
            });
        }
    }
}

/// Answers every outstanding reply with the error, then stops.
async fn fail(
    e: UpstreamError,
    head: Option<Expect>,
    expect_rx: &mut mpsc::UnboundedReceiver<Expect>,
    out: &mpsc::Sender<Relayed>,
) -> RelayEnd {
    tracing::warn!(error = %e, "dedicated upstream connection failed");
    let line = Bytes::from(e.to_resp());
    let mut pending: Vec<Expect> = head.into_iter().collect();
    while let Ok(x) = expect_rx.try_recv() {
        pending.push(x);
    }
    for x in pending {
        if let Expect::Replies {
            frames,
            swallow: false,
            ..
        } = x
        {
            for _ in 0..frames {
                let _ = out.send(Relayed::Reply(line.clone())).await;
            }
        }
    }
    // The client's dedicated connection is gone, as if Redis had closed it: close the client.
    let _ = out.send(Relayed::Closed).await;
    RelayEnd::Failed
}
