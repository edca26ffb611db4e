//! Turning a batch's raw replies into what the client expects: redirected commands followed
//! (cluster MOVED/ASK/TRYAGAIN) and state-key replies decoded, in one pass over the frames.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::protocol::frames::{frame_ranges, frames};
use crate::state::transform::Reshape;
use crate::upstream::batch::{BatchResult, Replies};
use crate::upstream::cluster;
use crate::upstream::node::Node;
use crate::upstream::{PoolKey, Upstream};

/// Cluster: what is needed to re-send commands that Redis redirected (MOVED, ASK, TRYAGAIN).
pub struct Redirectable {
    /// The commands as sent, back to back.
    pub cmds: Bytes,
    /// Where each command ends in `cmds`.
    pub ends: Vec<u32>,
    /// The node they were sent to.
    pub node: Arc<Node>,
    /// The client's database and protocol.
    pub key: PoolKey,
    /// For redirect targets and slot map refreshes.
    pub up: Arc<Upstream>,
}

impl Redirectable {
    /// Replaces every redirected reply in `r` with the reply from where it was sent on to.
    /// Returns, for each redirected command, the node that finally answered (for follow-ups).
    pub async fn fix(&self, r: &mut Replies) -> Vec<(usize, Arc<Node>)> {
        let frames = frames(&r.bytes);
        let mut changed = false;
        let mut out = Vec::with_capacity(frames.len());
        let mut moved = Vec::new();
        for (i, f) in frames.into_iter().enumerate() {
            let redirected = i < 128
                && r.errors & (1 << i) != 0
                && cluster::redirect(&f, &self.node.ep.addr).is_some();
            if !redirected {
                out.push(f);
                continue;
            }
            let start = if i == 0 {
                0
            } else {
                self.ends.get(i - 1).copied().unwrap_or(0) as usize
            };
            let end = self.ends.get(i).copied().unwrap_or(0) as usize;
            if start >= end || end > self.cmds.len() {
                out.push(f);
                continue;
            }
            let cmd = self.cmds.slice(start..end);
            let (reply, node) =
                cluster::follow(&self.up, self.key.clone(), self.node.clone(), &cmd, f).await;
            if matches!(reply.first(), Some(b'-' | b'!')) {
                r.errors |= 1 << i;
            } else {
                r.errors &= !(1 << i);
            }
            out.push(reply);
            moved.push((i, node));
            changed = true;
        }
        if changed {
            let mut b = BytesMut::with_capacity(out.iter().map(Bytes::len).sum());
            for f in out {
                b.extend_from_slice(&f);
            }
            r.bytes = b.freeze();
        }
        moved
    }
}

/// Reshapes the replies of the state commands in a batch (also those that arrived before the
/// connection failed, so an encoded value never reaches the client).
pub async fn reshape_batch(
    r: BatchResult,
    reshapes: Vec<(u16, Box<Reshape>)>,
    moved: &[(usize, Arc<Node>)],
    key: Option<PoolKey>,
) -> BatchResult {
    let (bytes, received) = match &r {
        Ok(replies) => (replies.bytes.clone(), usize::MAX),
        Err(f) => (f.partial.clone(), f.received),
    };
    let mut errors = match &r {
        Ok(replies) => replies.errors,
        Err(_) => 0,
    };
    // One pass over the reply frames: runs of frames that stay as they are become one slice,
    // reshaped frames their own part; the parts are joined once at the end (or not at all when
    // the whole batch is one reshaped reply, as for a lone state GET).
    let mut parts: Vec<Bytes> = Vec::with_capacity(2 * reshapes.len() + 1);
    let mut reshapes = reshapes.into_iter().peekable();
    let mut kept_from = 0;
    for (i, frame) in frame_ranges(&bytes).enumerate() {
        if i >= received {
            // A failed batch: replies after the last one received stay as they are.
            break;
        }
        // `reshapes` is in command order, so the next one is for this frame or a later one.
        if let Some((_, mut reshape)) = reshapes.next_if(|(j, _)| *j as usize == i) {
            if let (Some((_, node)), Some(key)) = (moved.iter().find(|(m, _)| *m == i), key.clone())
            {
                // Follow-ups (NOSCRIPT, previous version) go where the command ended up.
                reshape.conn = Some(super::state_plan::follow_up(node.assign(key)));
            }
            let out = reshape.apply(bytes.slice(frame.clone())).await;
            if i < 128 {
                if matches!(out.first(), Some(b'-' | b'!')) {
                    errors |= 1 << i;
                } else {
                    errors &= !(1 << i);
                }
            }
            if kept_from < frame.start {
                parts.push(bytes.slice(kept_from..frame.start));
            }
            parts.push(out);
            kept_from = frame.end;
        }
    }
    if kept_from < bytes.len() {
        parts.push(bytes.slice(kept_from..));
    }
    let joined = match parts.len() {
        0 => Bytes::new(),
        1 => parts.pop().unwrap_or_default(),
        _ => {
            let mut b = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
            for p in &parts {
                b.extend_from_slice(p);
            }
            b.freeze()
        }
    };
    match r {
        Ok(_) => Ok(Replies {
            bytes: joined,
            errors,
        }),
        Err(mut f) => {
            f.partial = joined;
            Err(f)
        }
    }
}
