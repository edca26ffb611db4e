//! What a client holds in the sidecar, and the budgets on it.
//!
//! Redis guards its memory with `client-query-buffer-limit` (one client's unfinished command)
//! and, since 7.0, `maxmemory-clients` (all clients together: over it, the client using the most
//! is evicted). statecar does the same for the bytes it buffers: a client whose input passes
//! `limits.max_client_query_buffer` is disconnected, and when all clients together hold more
//! than `limits.max_client_memory`, the one holding the most is disconnected, with a log line
//! naming it and a metric. A sidecar that holds every upload of every client would otherwise be
//! OOM-killed, dropping all of them at once.

use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::telemetry;

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    /// Publishes the connection state CLIENT LIST shows (a few relaxed stores per command).
    pub(super) fn publish(&self) {
        use super::registry::flag;
        use crate::command::SubKind;
        let mut flags = 0;
        if self.subs.any() {
            flags |= flag::PUBSUB;
        }
        if self.tx.in_multi {
            flags |= flag::MULTI;
        }
        if self.client.modes.no_evict {
            flags |= flag::NO_EVICT;
        }
        if self.client.modes.monitor {
            flags |= flag::MONITOR;
        }
        if self.client.modes.tracking {
            flags |= flag::TRACKING;
        }
        if self.client.modes.blocked {
            flags |= flag::BLOCKED;
        }
        let multi = if self.tx.in_multi {
            self.tx.queued.len() as i64
        } else {
            -1
        };
        self.me.info.publish(
            self.client.db,
            self.client.proto,
            flags,
            [
                self.subs.count(SubKind::Channel),
                self.subs.count(SubKind::Pattern),
                self.subs.count(SubKind::Shard),
            ],
            multi,
        );
    }

    /// Publishes what this client holds and enforces the budgets. False if this client must
    /// be disconnected now.
    pub(super) fn account(&mut self) -> bool {
        let qbuf = self.io.inbuf.len();
        let omem = self.out.q.len();
        if (qbuf, omem) == self.io.accounted {
            // Nothing changed since the last check (the common case between reads).
            return !self.me.info.is_killed();
        }
        self.io.accounted = (qbuf, omem);
        let clients = &self.ctx.clients;
        let total = clients.account(&self.me.info, qbuf, omem);
        let cfg = &self.cfg;
        if qbuf > cfg.clients.max_query_buffer {
            telemetry::client_rejected("query_buffer");
            tracing::warn!(
                client = self.client.id,
                addr = self.me.info.addr(),
                query_buffer = qbuf,
                limit = cfg.clients.max_query_buffer,
                "closing client that reached max query buffer length (limits.max_client_query_buffer)"
            );
            return false;
        }
        let budget = cfg.clients.max_memory;
        if budget > 0 && total > budget {
            // Evict until under budget (each victim's bytes leave the total at once).
            while clients.memory() > budget {
                let Some((victim, held)) = clients.evict_largest() else {
                    break;
                };
                telemetry::client_rejected("memory_budget");
                tracing::warn!(
                    client = victim.id,
                    addr = victim.addr(),
                    held,
                    total,
                    budget,
                    "clients hold more than limits.max_client_memory; disconnecting the client that holds the most"
                );
            }
            telemetry::client_memory(clients.memory());
            if self.me.info.is_killed() {
                return false;
            }
        }
        true
    }
}
