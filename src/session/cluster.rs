//! Cluster routing for one client: pick the node for each command by its keys' slot, split
//! multi-key commands across slots, run keyless "every node" commands everywhere, walk SCAN
//! through every primary, and pin transactions to the node of their first key.
//!
//! Commands for one node are batched as in standalone mode; a client's commands for different
//! nodes travel independently (they touch different keys, so their order between nodes is
//! not observable except through the replies, which the writer still returns in order).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;

use super::client::ReplyMode;
use super::pipeline::{Item, Joined, JoinedOut};
use super::{Flow, Session};
use crate::command::Command;
use crate::command::Kind;
use crate::command::Local;
use crate::protocol::frames::split_array;
use crate::protocol::reply;
use crate::route::{self, CROSSSLOT, Merge, Route};
use crate::state::plan::Plan;
use crate::upstream::batch::Batch;
use crate::upstream::cluster;
use crate::upstream::node::Node;

/// SCAN cursors carry the primary's index in their low bits: `node_cursor * SCAN_NODES + i`.
const SCAN_NODES: u64 = 1024;

fn error_frame(b: &[u8]) -> bool {
    matches!(b.first(), Some(b'-' | b'!'))
}

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    /// Routes a command in cluster mode: sets `self.links.route` and returns None to let normal
    /// dispatch continue, or handles the command and returns its flow.
    pub(super) async fn route_cluster(&mut self, kind: Kind, cmd: &Command) -> Option<Flow> {
        if self.ded.pinned.is_some() {
            // The pinned connection's node decides; Redis answers MOVED or CROSSSLOT itself
            // for keys that do not belong there (and aborts the transaction, as it would).
            return None;
        }
        let topo = self.ctx.upstream.topology();
        if let Kind::Local(l) = kind {
            if l != Local::State {
                return None;
            }
            let name = cmd.name().to_ascii_uppercase();
            if name == b"STATE.LIST" {
                return Some(self.cluster_scan(cmd, true).await);
            }
            self.links.route = Some(match cmd.arg(1) {
                Some(k) if name != b"STATE.STATS" => topo.node_for_slot(route::slot(k)).clone(),
                _ => topo.primary.clone(),
            });
            return None;
        }
        let r = route::route(cmd);
        if self.tx.deferred.is_some() {
            return self.deferred_multi_command(kind, cmd, r).await;
        }
        match (kind, r) {
            (Kind::Multi, _) => {
                self.tx.deferred = Some(Vec::new());
                Some(self.reply(Bytes::from_static(reply::OK)).await)
            }
            (_, Route::Keyless) => {
                self.links.route = Some(
                    self.gather
                        .route
                        .clone()
                        .filter(|n| !n.is_retired())
                        .unwrap_or_else(|| topo.primary.clone()),
                );
                None
            }
            (_, Route::Slot(s)) => {
                self.links.route = Some(topo.node_for_slot(s).clone());
                None
            }
            (_, Route::CrossSlot) => Some(self.reply(reply::error(CROSSSLOT)).await),
            (Kind::Plain, Route::Split { merge, step }) => {
                Some(self.cluster_split(cmd, merge, step).await)
            }
            (Kind::Plain, Route::All(merge)) => Some(self.cluster_all(cmd, merge).await),
            (Kind::Plain, Route::Scan) => Some(self.cluster_scan(cmd, false).await),
            // A blocking or pinning command that would need several nodes: Redis's error.
            _ => Some(self.reply(reply::error(CROSSSLOT)).await),
        }
    }

    /// A command after a MULTI whose node is not chosen yet.
    async fn deferred_multi_command(
        &mut self,
        kind: Kind,
        cmd: &Command,
        r: Route,
    ) -> Option<Flow> {
        let topo = self.ctx.upstream.topology();
        let node = match (kind, r) {
            (Kind::Multi, _) => {
                return Some(
                    self.reply(reply::error("ERR MULTI calls can not be nested"))
                        .await,
                );
            }
            (Kind::EndTransaction, _) if cmd.name().eq_ignore_ascii_case(b"DISCARD") => {
                self.tx.deferred = None;
                return Some(self.reply(Bytes::from_static(reply::OK)).await);
            }
            (Kind::EndTransaction, _) => topo.primary.clone(),
            (_, Route::Keyless) => {
                // Answered now, as Redis would; it runs in the transaction once pinned.
                if let Some(q) = self.tx.deferred.as_mut() {
                    q.push(cmd.clone());
                }
                return Some(self.reply(Bytes::from_static(b"+QUEUED\r\n")).await);
            }
            (_, Route::Slot(s)) => topo.node_for_slot(s).clone(),
            // Redis itself refuses what cannot run in one slot, and aborts the EXEC.
            _ => topo.primary.clone(),
        };
        let queued = self.tx.deferred.take().unwrap_or_default();
        self.links.route = Some(node);
        match Box::pin(self.pin()).await {
            Err(None) => return Some(Flow::Stop),
            Err(Some(e)) => return Some(self.reply(Bytes::from(e.to_resp())).await),
            Ok(()) => {}
        }
        // MULTI and the keyless commands were answered already: their replies are dropped.
        let multi = Command::from_args(["MULTI"]);
        let saved = self.client.reply_mode;
        self.client.reply_mode = ReplyMode::Skip;
        let f = Box::pin(self.dispatch_pinned(Kind::Multi, multi)).await;
        if f == Flow::Stop {
            return Some(f);
        }
        for c in queued {
            self.client.reply_mode = ReplyMode::Skip;
            let k = c.kind();
            if Box::pin(self.dispatch_pinned(k, c)).await == Flow::Stop {
                return Some(Flow::Stop);
            }
        }
        self.client.reply_mode = saved;
        None
    }

    /// Sends one single-slot command (state-planned if it touches state keys) to its node and
    /// returns the future of its final reply (redirects followed, state values decoded).
    fn send_part(&mut self, cmd: Command, node: Arc<Node>) -> Joined {
        self.links.route = Some(node.clone());
        let plan = Some(self.ctx.state.load())
            .filter(|s| !s.is_empty())
            .and_then(|s| s.plan(&cmd));
        let fast = self.ctx.upstream.functions();
        let (raw, reshape) = match plan.map(|p| self.script_plan(p, fast)) {
            None => (cmd.raw().clone(), None),
            Some(Plan::Send { raw, pending }) => {
                let r = self.reshape(pending);
                (raw, Some(r))
            }
            Some(Plan::Reject(e) | Plan::Fail(e)) => return Box::pin(async move { e }),
            Some(Plan::Script { .. }) => {
                return Box::pin(async {
                    reply::error("ERR statecar: internal error: unplanned script")
                });
            }
        };
        let conn = self.shared_conn();
        let (tx, rx) = oneshot::channel();
        conn.send(Batch {
            bytes: raw.clone(),
            replies: 1,
            tx,
        });
        let up = self.ctx.upstream.clone();
        let key = self.client.key();
        Box::pin(async move {
            let reply = match rx.await {
                Ok(Ok(r)) => r.bytes,
                Ok(Err(f)) => Bytes::from(f.error.to_resp()),
                Err(_) => reply::error("ERR statecar: upstream connection task gone"),
            };
            let moved = error_frame(&reply);
            let (reply, node) = cluster::follow(&up, key.clone(), node, &raw, reply).await;
            match reshape {
                Some(mut r) => {
                    if moved {
                        r.conn = Some(super::state_plan::follow_up(node.assign(key)));
                    }
                    r.apply(reply).await
                }
                None => reply,
            }
        })
    }

    /// Queues a reply that several parts make up.
    async fn push_joined(&mut self, fut: Joined) -> Flow {
        let discard = self.client.take_discard();
        self.flush_batch().await;
        self.pipeline.push(Item::Joined(JoinedOut {
            fut,
            id: self.cur.metric,
            started: self.cur.read_at,
            discard,
        }));
        Flow::Continue
    }

    /// MGET, MSET, DEL, UNLINK, EXISTS, TOUCH over several slots: one command per slot, the
    /// replies joined in the client's order.
    async fn cluster_split(&mut self, cmd: &Command, merge: Merge, step: usize) -> Flow {
        if !(cmd.argc() - 1).is_multiple_of(step) {
            // Let Redis give its arity error for the malformed command.
            self.links.route = Some(self.ctx.upstream.primary());
            return self.forward(cmd.raw()).await;
        }
        self.flush_batch().await;
        let topo = self.ctx.upstream.topology();
        let groups = route::group_by_slot(cmd, step);
        let all = cmd.args_bytes();
        let mut parts = Vec::with_capacity(groups.len());
        let mut positions = Vec::with_capacity(groups.len());
        for (slot, idx) in groups {
            let mut args = Vec::with_capacity(1 + idx.len() * step);
            args.push(all[0].clone());
            for &i in &idx {
                args.extend(all[i..i + step].iter().cloned());
            }
            let node = topo.node_for_slot(slot).clone();
            parts.push(self.send_part(Command::from_args(args), node));
            positions.push(idx.iter().map(|i| (i - 1) / step).collect::<Vec<_>>());
        }
        let total = (cmd.argc() - 1) / step;
        self.push_joined(Box::pin(async move {
            let mut replies = Vec::with_capacity(parts.len());
            for p in parts {
                replies.push(p.await);
            }
            merge_replies(merge, replies, &positions, total)
        }))
        .await
    }

    /// DBSIZE, FLUSHALL, KEYS, SCRIPT ...: the same command on every primary.
    async fn cluster_all(&mut self, cmd: &Command, merge: Merge) -> Flow {
        self.flush_batch().await;
        let topo = self.ctx.upstream.topology();
        let mut parts = Vec::new();
        for node in topo.all() {
            self.links.route = Some(node.clone());
            let conn = self.shared_conn();
            let (tx, rx) = oneshot::channel();
            conn.send(Batch {
                bytes: cmd.raw().clone(),
                replies: 1,
                tx,
            });
            parts.push(rx);
        }
        self.push_joined(Box::pin(async move {
            let mut replies = Vec::with_capacity(parts.len());
            for rx in parts {
                replies.push(match rx.await {
                    Ok(Ok(r)) => r.bytes,
                    Ok(Err(f)) => Bytes::from(f.error.to_resp()),
                    Err(_) => reply::error("ERR statecar: upstream connection task gone"),
                });
            }
            merge_replies(merge, replies, &[], 0)
        }))
        .await
    }

    /// SCAN (and STATE.LIST, which is SCAN underneath) through every primary in turn: the
    /// cursor the client sees carries which primary is being walked.
    async fn cluster_scan(&mut self, cmd: &Command, state_list: bool) -> Flow {
        let Some(cursor) = cmd
            .arg(1)
            .and_then(|c| std::str::from_utf8(c).ok())
            .and_then(|c| c.parse::<u64>().ok())
        else {
            if state_list {
                // The planner gives the arity and cursor errors.
                self.links.route = Some(self.ctx.upstream.primary());
                let plan = self.ctx.state.load().plan_state(cmd);
                return self.run_plan(plan).await;
            }
            return self.reply(reply::error("ERR invalid cursor")).await;
        };
        self.flush_batch().await;
        let masters = self.ctx.upstream.topology().all();
        if masters.len() as u64 > SCAN_NODES {
            return self
                .reply(reply::error(
                    "ERR statecar: SCAN through more than 1024 cluster primaries is not supported",
                ))
                .await;
        }
        let index = (cursor % SCAN_NODES) as usize;
        let Some(node) = masters.get(index).cloned() else {
            // The cluster shrank during the walk: the walk is over.
            let empty = reply::Value::Array(vec![
                reply::Value::Bulk(Bytes::from_static(b"0")),
                reply::Value::Array(Vec::new()),
            ]);
            return self.reply(empty.encode(self.client.proto)).await;
        };
        let mut args = cmd.args_bytes();
        args[1] = Bytes::from((cursor / SCAN_NODES).to_string());
        let sub = Command::from_args(args);
        let (raw, reshape) = if state_list {
            match self.ctx.state.load().plan_state(&sub) {
                Plan::Send { raw, pending } => {
                    self.links.route = Some(node.clone());
                    (raw, Some(self.reshape(pending)))
                }
                Plan::Reject(e) | Plan::Fail(e) => return self.reply(e).await,
                Plan::Script { .. } => {
                    return self
                        .reply(reply::error(
                            "ERR statecar: internal error: unplanned script",
                        ))
                        .await;
                }
            }
        } else {
            (sub.raw().clone(), None)
        };
        self.links.route = Some(node);
        let conn = self.shared_conn();
        let (tx, rx) = oneshot::channel();
        conn.send(Batch {
            bytes: raw,
            replies: 1,
            tx,
        });
        let nodes = masters.len() as u64;
        self.push_joined(Box::pin(async move {
            let reply = match rx.await {
                Ok(Ok(r)) => r.bytes,
                Ok(Err(f)) => Bytes::from(f.error.to_resp()),
                Err(_) => reply::error("ERR statecar: upstream connection task gone"),
            };
            let reply = rewrite_scan_cursor(reply, index as u64, nodes);
            match reshape {
                Some(r) => r.apply(reply).await,
                None => reply,
            }
        }))
        .await
    }
}

/// Puts the primary's index into a SCAN reply's cursor (or moves on to the next primary when
/// this one is done).
fn rewrite_scan_cursor(reply: Bytes, index: u64, nodes: u64) -> Bytes {
    if error_frame(&reply) {
        return reply;
    }
    let Some(items) = split_array(&reply) else {
        return reply;
    };
    let [cursor, keys] = items.as_slice() else {
        return reply;
    };
    let Some(next) = crate::upstream::connect::decode_reply(cursor)
        .and_then(|f| redis_protocol::resp3::types::Resp3Frame::as_bytes(&f).map(|b| b.to_vec()))
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return reply;
    };
    let composite = if next == 0 {
        if index + 1 < nodes { index + 1 } else { 0 }
    } else {
        match next
            .checked_mul(SCAN_NODES)
            .and_then(|c| c.checked_add(index))
        {
            Some(c) => c,
            None => return reply::error("ERR statecar: SCAN cursor too large to route"),
        }
    };
    let c = composite.to_string();
    let mut out = BytesMut::with_capacity(reply.len() + 8);
    out.extend_from_slice(b"*2\r\n");
    out.extend_from_slice(format!("${}\r\n{c}\r\n", c.len()).as_bytes());
    out.extend_from_slice(keys);
    out.freeze()
}

/// Joins the replies of a command's parts into the reply the client expects.
fn merge_replies(
    merge: Merge,
    replies: Vec<Bytes>,
    positions: &[Vec<usize>],
    total: usize,
) -> Bytes {
    if let Some(e) = replies.iter().find(|r| error_frame(r)) {
        return e.clone();
    }
    let ints = |r: &Bytes| -> Option<i64> {
        let s = std::str::from_utf8(r.strip_prefix(b":")?).ok()?;
        s.trim_end().parse().ok()
    };
    let bad = || reply::error("ERR statecar: unexpected reply from a cluster node");
    match merge {
        Merge::Sum => {
            let mut sum = 0i64;
            for r in &replies {
                match ints(r) {
                    Some(n) => sum += n,
                    None => return bad(),
                }
            }
            Bytes::from(format!(":{sum}\r\n"))
        }
        Merge::AllOk => match replies.iter().find(|r| r.as_ref() != reply::OK) {
            Some(other) => other.clone(),
            None => Bytes::from_static(reply::OK),
        },
        Merge::First => replies.into_iter().next().unwrap_or_else(bad),
        Merge::Positional => {
            let mut slots: Vec<Option<Bytes>> = vec![None; total];
            for (r, pos) in replies.iter().zip(positions) {
                let Some(items) = split_array(r) else {
                    return bad();
                };
                if items.len() != pos.len() {
                    return bad();
                }
                for (item, &p) in items.into_iter().zip(pos) {
                    if let Some(s) = slots.get_mut(p) {
                        *s = Some(item);
                    }
                }
            }
            let mut out = BytesMut::new();
            out.extend_from_slice(format!("*{total}\r\n").as_bytes());
            for s in slots {
                match s {
                    Some(item) => out.extend_from_slice(&item),
                    None => return bad(),
                }
            }
            out.freeze()
        }
        Merge::Concat => {
            let mut all = Vec::new();
            for r in &replies {
                match split_array(r) {
                    Some(items) => all.extend(items),
                    None => return bad(),
                }
            }
            let mut out = BytesMut::new();
            out.extend_from_slice(format!("*{}\r\n", all.len()).as_bytes());
            for i in all {
                out.extend_from_slice(&i);
            }
            out.freeze()
        }
        Merge::And => {
            let mut acc: Option<Vec<bool>> = None;
            for r in &replies {
                let Some(items) = split_array(r) else {
                    return bad();
                };
                let bits: Vec<bool> = items.iter().map(|i| ints(i) == Some(1)).collect();
                acc = Some(match acc {
                    None => bits,
                    Some(a) if a.len() == bits.len() => {
                        a.iter().zip(&bits).map(|(x, y)| *x && *y).collect()
                    }
                    Some(_) => return bad(),
                });
            }
            let acc = acc.unwrap_or_default();
            let mut out = BytesMut::new();
            out.extend_from_slice(format!("*{}\r\n", acc.len()).as_bytes());
            for b in acc {
                out.extend_from_slice(if b { b":1\r\n" } else { b":0\r\n" });
            }
            out.freeze()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn merges_replies() {
        assert_eq!(
            merge_replies(Merge::Sum, vec![b(":2\r\n"), b(":3\r\n")], &[], 0),
            b(":5\r\n")
        );
        assert_eq!(
            merge_replies(Merge::AllOk, vec![b("+OK\r\n"), b("-ERR x\r\n")], &[], 0),
            b("-ERR x\r\n")
        );
        assert_eq!(
            merge_replies(
                Merge::Positional,
                vec![b("*2\r\n$1\r\na\r\n$-1\r\n"), b("*1\r\n$1\r\nb\r\n")],
                &[vec![0, 2], vec![1]],
                3
            ),
            b("*3\r\n$1\r\na\r\n$1\r\nb\r\n$-1\r\n")
        );
        assert_eq!(
            merge_replies(
                Merge::And,
                vec![b("*2\r\n:1\r\n:1\r\n"), b("*2\r\n:1\r\n:0\r\n")],
                &[],
                0
            ),
            b("*2\r\n:1\r\n:0\r\n")
        );
        assert_eq!(
            merge_replies(
                Merge::Concat,
                vec![b("*1\r\n$1\r\na\r\n"), b("*0\r\n")],
                &[],
                0
            ),
            b("*1\r\n$1\r\na\r\n")
        );
    }

    #[test]
    fn scan_cursors_walk_every_primary() {
        let r = |c: &str| b(&format!("*2\r\n${}\r\n{c}\r\n*1\r\n$1\r\nk\r\n", c.len()));
        assert_eq!(
            rewrite_scan_cursor(r("17"), 1, 3),
            r(&(17 * SCAN_NODES + 1).to_string())
        );
        assert_eq!(rewrite_scan_cursor(r("0"), 1, 3), r("2"));
        assert_eq!(rewrite_scan_cursor(r("0"), 2, 3), r("0"));
    }
}
