//! What a client hands a shared connection (a [`Batch`]) and what it gets back: the replies,
//! or how far the batch got before the connection failed.

use bytes::Bytes;
use tokio::sync::oneshot;

use super::UpstreamError;

/// Several commands from one client, sent together; their replies come back together.
pub struct Batch {
    /// The commands, RESP-encoded, back to back.
    pub bytes: Bytes,
    /// How many replies they produce.
    pub replies: usize,
    /// Where the replies go.
    pub tx: oneshot::Sender<BatchResult>,
}

/// The replies of a batch, or how far it got before the connection failed.
pub type BatchResult = Result<Replies, BatchFailure>;

/// A batch's replies, back to back, and which of them are errors.
#[derive(Debug)]
pub struct Replies {
    /// The reply frames as Redis sent them.
    pub bytes: Bytes,
    /// Bit i is set when reply i is an error (for the first 128 replies).
    pub errors: u128,
}

/// A batch that was cut short: the replies that did arrive, and why the rest did not.
#[derive(Debug)]
pub struct BatchFailure {
    /// Complete replies received before the failure.
    pub partial: Bytes,
    /// How many replies `partial` holds.
    pub received: usize,
    /// What went wrong.
    pub error: UpstreamError,
    /// Some of the batch's bytes reached Redis, so its unanswered commands may have run;
    /// false when none did (they certainly did not run).
    pub sent: bool,
}

impl BatchFailure {
    /// A batch that never left statecar.
    pub fn unsent(error: UpstreamError) -> BatchFailure {
        BatchFailure {
            partial: Bytes::new(),
            received: 0,
            error,
            sent: false,
        }
    }
}

/// Answers a batch with `e`, after the `received` complete replies in `partial`.
pub(super) fn fail(
    tx: oneshot::Sender<BatchResult>,
    partial: Bytes,
    received: usize,
    e: &UpstreamError,
) {
    let _ = tx.send(Err(BatchFailure {
        partial,
        received,
        error: e.clone(),
        sent: false,
    }));
}
