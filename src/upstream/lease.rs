//! Dedicated ("leased") connections for clients that need a connection of their own: MULTI,
//! WATCH, pub/sub, blocking commands, MONITOR, client tracking.
//!
//! The pool is bounded by `upstream.max_leased_connections`. A connection is returned after use
//! and kept open; if the client left state on it (subscriptions, tracking, a half transaction) it
//! is `RESET` and re-handshaked before anyone else gets it, and if a reply was still outstanding
//! it is closed, since nothing can make it safe again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::connect::{self, Stream, check_handshake_reply, handshake_commands, read_frame};
use super::node::Endpoint;
use super::settings::UpstreamConfig;
use super::{PoolKey, Upstream, UpstreamError};
use crate::protocol::{ReplyScanner, encode_multibulk};
use crate::telemetry;

/// A dedicated connection, open and on the right db and protocol.
pub struct LeasedConn {
    /// The stream.
    pub stream: Stream,
    /// Unconsumed bytes read from it.
    pub rbuf: BytesMut,
    /// What it was opened as.
    pub key: PoolKey,
    /// Redis's id for the connection, from the handshake.
    pub upstream_id: Option<i64>,
}

/// How a returned connection was left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    /// Nothing outstanding and no state changed: reuse as is.
    Clean,
    /// Nothing outstanding, but connection state may have changed: RESET first.
    Dirty,
    /// A reply may still be coming, or the connection failed: close it.
    Broken,
}

/// The bounded pool of dedicated connections.
pub struct LeasePool {
    cfg: Arc<UpstreamConfig>,
    upstream: Weak<Upstream>,
    ep: Arc<Endpoint>,
    /// Shared by every node: `max_leased_connections` bounds them all together.
    permits: Arc<Semaphore>,
    /// Connections given back clean, each with when it was given back.
    idle: Mutex<HashMap<PoolKey, Vec<(Instant, LeasedConn)>>>,
}

/// A connection checked out of the pool, with its permit.
pub struct Lease {
    /// The connection; taken out by whoever drives it and given back to [`LeasePool::release`].
    pub conn: LeasedConn,
    /// The slot it occupies in the pool; dropping it frees the slot.
    pub permit: OwnedSemaphorePermit,
}

impl Lease {
    /// Sends one command and reads its reply (nothing else is in flight on a lease used so).
    pub async fn call(&mut self, raw: &[u8], addr: &str) -> Result<bytes::Bytes, UpstreamError> {
        crate::fair_share::write_all(&mut self.conn.stream, raw)
            .await
            .map_err(|e| UpstreamError::io(addr, &e))?;
        let mut scanner = ReplyScanner::default();
        read_frame(
            &mut self.conn.stream,
            &mut self.conn.rbuf,
            &mut scanner,
            addr,
        )
        .await
    }
}

impl LeasePool {
    /// An empty pool for the node at `ep`.
    pub fn new(
        cfg: Arc<UpstreamConfig>,
        upstream: Weak<Upstream>,
        ep: Arc<Endpoint>,
        permits: Arc<Semaphore>,
    ) -> Arc<LeasePool> {
        Arc::new(LeasePool {
            permits,
            cfg,
            upstream,
            ep,
            idle: Mutex::new(HashMap::new()),
        })
    }

    /// `host:port` of the node.
    pub fn addr(&self) -> &str {
        &self.ep.name
    }

    /// The node's retirement switch: a pinned relay stops when it fires.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.ep
    }

    /// Closes the idle connections (the node was retired).
    pub fn close_idle(&self) {
        if let Ok(mut m) = self.idle.lock() {
            m.clear();
        }
    }

    /// Closes the idle connections given back at least `idle` before `now`; returns how many.
    /// Idle connections hold no slot of `max_leased_connections`, so without this every
    /// (db, protocol, identity) a transaction or a blocking command ever used would keep its
    /// connections open in Redis until statecar restarts.
    pub fn close_unused(&self, now: Instant, idle: Duration) -> usize {
        let Ok(mut m) = self.idle.lock() else {
            return 0;
        };
        let mut closed = 0;
        m.retain(|_, conns| {
            let before = conns.len();
            conns.retain(|(at, _)| now.saturating_duration_since(*at) < idle);
            closed += before - conns.len();
            !conns.is_empty()
        });
        closed
    }

    /// Leases a connection for `key`, waiting up to `timeout_ms` for a free slot.
    pub async fn acquire(self: &Arc<Self>, key: PoolKey) -> Result<Lease, UpstreamError> {
        if self.ep.retired().is_cancelled() {
            return Err(self.ep.retired_error());
        }
        let wait = Duration::from_millis(self.cfg.timeout_ms);
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                telemetry::lease_wait();
                match tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await {
                    Ok(Ok(p)) => p,
                    _ => {
                        return Err(UpstreamError::NoLease {
                            max: self.cfg.max_leased_connections,
                            ms: self.cfg.timeout_ms,
                        });
                    }
                }
            }
        };
        self.open(key, permit).await
    }

    /// Leases a connection for `key` if more than half the slots are free now; None otherwise.
    /// For work that can go another way (a big argument can be sent whole on the shared
    /// connection): it never takes the last slots that MULTI, blocking commands and
    /// subscribers need.
    pub async fn try_acquire(self: &Arc<Self>, key: PoolKey) -> Option<Lease> {
        if self.ep.retired().is_cancelled()
            || self.permits.available_permits() <= self.cfg.max_leased_connections / 2
        {
            return None;
        }
        let permit = self.permits.clone().try_acquire_owned().ok()?;
        self.open(key, permit).await.ok()
    }

    /// An idle connection for `key`, or a new one, in the slot `permit` holds.
    async fn open(
        self: &Arc<Self>,
        key: PoolKey,
        permit: OwnedSemaphorePermit,
    ) -> Result<Lease, UpstreamError> {
        loop {
            let candidate = self
                .idle
                .lock()
                .ok()
                .and_then(|mut m| m.get_mut(&key).and_then(|v| v.pop()))
                .map(|(_, c)| c);
            match candidate {
                Some(c) if !c.stream.is_stale() => {
                    telemetry::leased_in_use(1);
                    return Ok(Lease { conn: c, permit });
                }
                Some(_) => continue,
                None => break,
            }
        }
        let c = connect::connect(&self.cfg, &self.ep.addr, &key).await;
        if let Some(up) = self.upstream.upgrade() {
            up.note_connect(c.is_ok(), c.as_ref().ok().map(|c| &c.info));
        }
        telemetry::upstream_connect(c.is_ok());
        let c = c?;
        telemetry::leased_in_use(1);
        Ok(Lease {
            conn: LeasedConn {
                stream: c.stream,
                rbuf: c.rbuf,
                key,
                upstream_id: c.info.id,
            },
            permit,
        })
    }

    /// Takes a connection back, resetting or closing it as `how` requires.
    pub fn release(self: &Arc<Self>, lease: Lease, how: Returned) {
        telemetry::leased_in_use(-1);
        let Lease { conn, permit } = lease;
        match how {
            Returned::Clean if conn.rbuf.is_empty() => self.put_idle(conn),
            Returned::Broken => drop((conn, permit)),
            _ => {
                let pool = self.clone();
                tokio::spawn(async move {
                    match pool.reset(conn).await {
                        Ok(c) => pool.put_idle(c),
                        Err(e) => {
                            tracing::debug!(error = %e, "leased connection not reusable; closed")
                        }
                    }
                    drop(permit);
                });
            }
        }
    }

    fn put_idle(&self, conn: LeasedConn) {
        if self.ep.retired().is_cancelled() {
            return;
        }
        if let Ok(mut m) = self.idle.lock() {
            m.entry(conn.key.clone())
                .or_default()
                .push((Instant::now(), conn));
        }
    }

    /// `RESET` drops subscriptions, MULTI, WATCH, tracking and the name, and logs out; the
    /// handshake then restores our credentials, protocol and database.
    async fn reset(&self, mut conn: LeasedConn) -> Result<LeasedConn, UpstreamError> {
        let addr = self.ep.name.clone();
        let mut out = BytesMut::new();
        encode_multibulk(&mut out, &[b"RESET".as_slice()]);
        let n = handshake_commands(&self.cfg, &conn.key, &mut out);
        let deadline = Duration::from_millis(self.cfg.timeout_ms);
        let work = async {
            conn.stream
                .write_all(&out)
                .await
                .map_err(|e| UpstreamError::io(&addr, &e))?;
            let mut scanner = ReplyScanner::default();
            let mut rbuf = std::mem::take(&mut conn.rbuf);
            let first = read_frame(&mut conn.stream, &mut rbuf, &mut scanner, &addr).await?;
            if first.as_ref() != b"+RESET\r\n" {
                return Err(UpstreamError::Handshake {
                    addr: addr.clone(),
                    step: "RESET",
                    reply: String::from_utf8_lossy(&first).trim().to_string(),
                });
            }
            let mut info = connect::ServerInfo::default();
            for step in 0..n {
                let f = read_frame(&mut conn.stream, &mut rbuf, &mut scanner, &addr).await?;
                check_handshake_reply(&addr, step, &f, &mut info)?;
            }
            conn.upstream_id = info.id;
            if !rbuf.is_empty() {
                return Err(UpstreamError::Protocol {
                    addr: addr.clone(),
                    detail: "unexpected data after RESET".into(),
                });
            }
            Ok::<_, UpstreamError>(())
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(Ok(())) => Ok(conn),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(UpstreamError::Timeout {
                addr,
                ms: self.cfg.timeout_ms,
            }),
        }
    }
}
