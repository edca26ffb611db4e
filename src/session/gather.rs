//! The batch being gathered for the client's shared connection: plain commands (and state
//! commands with their reply reshaping) pile up here while the client's input holds complete
//! commands, and leave together in one write.

use std::sync::Arc;

use bytes::BytesMut;

use crate::state::transform::Reshape;
use crate::upstream::node::Node;

/// A batch is sent once it holds this many commands or bytes, to bound per-batch memory.
pub const MAX_COMMANDS: usize = 128;
/// See [`MAX_COMMANDS`].
pub const MAX_BYTES: usize = 256 * 1024;

/// Commands gathered for one shared connection.
#[derive(Default)]
pub struct Gather {
    /// The commands, back to back, as they go upstream.
    pub bytes: BytesMut,
    /// Metric id of each command.
    pub ids: Vec<u16>,
    /// State commands: index in the batch and how to reshape their replies.
    pub reshapes: Vec<(u16, Box<Reshape>)>,
    /// Their replies are dropped (`CLIENT REPLY OFF/SKIP`).
    pub discard: bool,
    /// Cluster: the node the batch goes to.
    pub route: Option<Arc<Node>>,
    /// Cluster: where each command ends in `bytes` (to re-send one Redis redirected).
    pub ends: Vec<u32>,
    /// Every command only reads (so the batch may be retried).
    pub read_only: bool,
}

impl Gather {
    /// How many commands are gathered.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Nothing gathered.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether the batch must be sent now.
    pub fn full(&self) -> bool {
        self.ids.len() >= MAX_COMMANDS || self.bytes.len() >= MAX_BYTES
    }

    /// Adds one command.
    pub fn add(&mut self, raw: &[u8], id: u16, reshape: Option<Box<Reshape>>, read_only: bool) {
        if self.ids.is_empty() {
            self.read_only = true;
        }
        self.read_only &= read_only;
        if let Some(r) = reshape {
            self.reshapes.push((self.ids.len() as u16, r));
        }
        self.bytes.extend_from_slice(raw);
        self.ids.push(id);
        if self.route.is_some() {
            self.ends.push(self.bytes.len() as u32);
        }
    }

    /// Forgets everything gathered (the client left).
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.ids.clear();
        self.reshapes.clear();
        self.ends.clear();
        self.route = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_only_holds_only_if_every_command_reads() {
        let mut g = Gather::default();
        g.add(b"*1\r\n$4\r\nPING\r\n", 1, None, true);
        assert!(g.read_only);
        g.add(b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n", 2, None, false);
        assert!(!g.read_only);
        assert_eq!(g.len(), 2);
        assert!(!g.full());
        g.clear();
        assert!(g.is_empty());
        g.add(b"*1\r\n$4\r\nPING\r\n", 1, None, true);
        assert!(g.read_only, "a new batch starts read-only again");
    }
}
