//! Big state values reach Redis before their write script: as a plain `SET` of a private
//! staging key, which the script then `RENAME`s into place.
//!
//! Why: Redis hashes every byte of every string it hands a Lua script (its Lua interns
//! strings, and Redis hashes all of a string's bytes, not a sample), at about 1.7 ns a byte
//! here: a versioned write of an 8.5 MB checkpoint (1.5 MB stored) held Redis, and every
//! other client of it, for 3.4 ms inside the FCALL, against 70 us for a plain SET of the
//! same bytes. A plain SET and a RENAME cost Redis microseconds whatever the size.
//!
//! The write stays one atomic step: the script does everything it did (version check,
//! history, trim, TTL) and only takes the value from the staging key. What it costs: one more
//! round trip before the write, which this client waits for (its replies keep flowing). So
//! only values stored in [`STAGED_VALUE`] bytes or more are staged, where that round trip is
//! small against what it saves. Not staged: writes of several keys (MSET), writes inside
//! MULTI (the script goes as EVAL there), Redis without functions, and Redis Cluster (a
//! redirect could split the upload from its write).
//!
//! Nothing is left behind for long: the staging key expires after [`STAGE_TTL_MS`] if the
//! write never runs (statecar killed in between), and the script deletes it when the write
//! does not happen (NX, XX, a version check). If the upload is gone when the script runs
//! (evicted, or expired because Redis stalled), the script writes nothing and answers an error.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

use super::Session;
use crate::protocol::encode_multibulk;
use crate::state::keys::staging_key;
use crate::state::plan::Plan;

/// A one-key write whose stored value is at least this long is staged. An FCALL with a
/// 64 KB argument costs Redis about 125 us, the staging SET and RENAME together under 10.
pub const STAGED_VALUE: usize = 64 * 1024;

/// How long an upload waits for its write script before Redis drops it.
pub const STAGE_TTL_MS: u64 = 60_000;

impl<S: AsyncRead + AsyncWrite + Send + Unpin + 'static> Session<S> {
    /// Uploads the value of a big one-key write to a staging key and makes the plan's script
    /// take it from there. Any other plan, or an upload Redis refused, is left as it was (the
    /// value then goes inside the script call). `None`: the client left while it waited.
    pub(super) async fn stage(&mut self, mut plan: Plan) -> Option<Plan> {
        let Plan::Script { call, .. } = &mut plan else {
            return Some(plan);
        };
        let up = &self.ctx.upstream;
        if !up.functions() || up.is_cluster() {
            return Some(plan);
        }
        let (Some(value), Some(key)) = (call.stageable_value(), call.keys.first()) else {
            return Some(plan);
        };
        if value.len() < STAGED_VALUE {
            return Some(plan);
        }
        let stage = staging_key(key, next_id().as_bytes());
        let ttl = STAGE_TTL_MS.to_string();
        let mut set = BytesMut::with_capacity(value.len() + stage.len() + 64);
        encode_multibulk(
            &mut set,
            &[b"SET".as_slice(), &stage, value, b"PX", ttl.as_bytes()],
        );
        // The client's earlier commands go first, as they would before the write: a FLUSHDB
        // (or SWAPDB) batched ahead of it would otherwise run after the upload and drop it.
        self.flush_batch().await;
        let conn = self.shared_conn();
        let reply = self
            .wait(crate::upstream::conn::call(&conn, set.freeze(), 1))
            .await?;
        if matches!(reply, Ok(ref r) if r.as_ref() == b"+OK\r\n") {
            call.take_value_from(stage);
            self.ctx
                .state
                .load()
                .totals
                .values_staged
                .fetch_add(1, Ordering::Relaxed);
        }
        Some(plan)
    }
}

/// A name part no other write (of this process or another statecar) uses: the process's
/// random start value and a counter.
fn next_id() -> String {
    static START: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    format!("{start:x}.{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_within_a_process() {
        let a = next_id();
        let b = next_id();
        assert_ne!(a, b);
        assert_eq!(a.split('.').next(), b.split('.').next());
    }
}
