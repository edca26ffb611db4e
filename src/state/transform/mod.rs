//! The reply path for state keys: turns what Redis holds back into what the client wrote.
//!
//! Each command that touches a state key is sent upstream as exactly one command (a plain read
//! or a Lua script), in its place in the client's pipeline, together with a [`Transform`] that
//! reshapes its reply. Keeping it to one upstream command per client command keeps ordering,
//! pipelining and MULTI/EXEC exactly as Redis has them.
//!
//! This file holds the transforms, the dispatch (with the retries that keep a lost script or
//! function library from failing a command) and EXEC; the replies themselves are beside it, by
//! what they read: `read` (a stored value), `write` (the WRITE script's outcome), `history`
//! (the version history) and `state_commands` (STATE.TRAIN, STATE.LIST, STATE.STATS).

mod history;
mod read;
mod state_commands;
mod write;

pub use history::{decode_tags, encode_tags};
pub use read::redis_range;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::types::BytesFrame;

use std::sync::Arc;

use super::StateEngine;
use super::envelope::HEADER_LEN;
use super::followup::Link;
use super::scripts::ScriptKind;
use crate::protocol::reply::{Value, error};

/// What the reply of a state write becomes for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteShape {
    /// `+OK` (SETEX, PSETEX, MSET).
    Ok,
    /// `+OK`, or nil when NX/XX prevented the write (SET).
    OkOrNil,
    /// The previous value (SET ... GET, GETSET).
    Old,
    /// 1 or 0 (SETNX, MSETNX).
    Int,
    /// The version number written (STATE.SAVE).
    Version,
}

/// How to reshape one reply.
#[derive(Debug, Clone)]
pub enum Transform {
    /// One stored value (GET, GETDEL, GETEX).
    Value {
        /// The key it came from.
        key: Bytes,
    },
    /// GETRANGE/SUBSTR, computed on the decoded value.
    Range {
        /// The key.
        key: Bytes,
        /// Redis-style inclusive range.
        start: i64,
        /// End of the range.
        end: i64,
    },
    /// MGET: the positions that hold state keys.
    Values {
        /// `Some(key)` for state keys.
        keys: Vec<Option<Bytes>>,
    },
    /// STRLEN: original length from the header.
    Strlen {
        /// The key.
        key: Bytes,
    },
    /// The WRITE script's `{done, old, version, trimmed, versions, deltas}`.
    Write {
        /// The (first) key written.
        key: Bytes,
        /// What the client's command returns.
        shape: WriteShape,
        /// For the delta cache, by pair index: what each versioned key now holds.
        notes: Vec<(usize, CacheNote)>,
    },
    /// STATE.ROLLBACK: the version's entries; the transform writes it as the newest version.
    Rollback {
        /// The key.
        key: Bytes,
    },
    /// STATE.TRAIN: SCAN's first reply; the transform reads values, trains and stores.
    Train {
        /// A key of the rule.
        key: Bytes,
        /// How many values to train on.
        samples: usize,
    },
    /// STATE.LOAD
    Load {
        /// The key.
        key: Bytes,
    },
    /// STATE.VERSIONS
    Versions,
    /// STATE.LIST: SCAN's reply filtered to state keys.
    List,
    /// STATE.STATS: INFO memory plus the proxy's totals.
    Stats,
    /// EXEC: one entry per queued command.
    Exec(Vec<Option<Transform>>),
    /// A script whose reply is the client's reply (DEL, EXPIRE, ...).
    Passthrough,
    /// An answer statecar knows itself (STATE.RULE); the upstream command only keeps its place.
    Fixed(Value),
    /// INFO: Redis's text with `connected_clients` set to statecar's own client count.
    Info {
        /// statecar's clients when the command was read.
        connected_clients: usize,
    },
}

/// What a versioned write left in a key, for the delta cache once its version is known.
#[derive(Debug, Clone)]
pub struct CacheNote {
    /// The key.
    pub key: Bytes,
    /// The header written, stamped with `predicted`.
    pub header: [u8; HEADER_LEN],
    /// The value written.
    pub value: Bytes,
    /// The version stamped (0: none; the script stamped the real one).
    pub predicted: u32,
    /// How the value was compressed in chunks, if it was (a big value).
    pub chunks: Option<std::sync::Arc<crate::state::cache::Chunked>>,
}

/// A transform plus what is needed to re-send its script with EVAL if Redis lost it.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The reshaping.
    pub transform: Transform,
    /// The script call, for NOSCRIPT.
    pub retry: Option<Box<ScriptCall>>,
}

/// A script invocation, kept so it can be re-sent as EVAL.
#[derive(Debug, Clone)]
pub struct ScriptCall {
    /// Which script.
    pub script: ScriptKind,
    /// Its KEYS.
    pub keys: Vec<Bytes>,
    /// Its ARGV.
    pub args: Vec<Bytes>,
    /// Which argument is a value the script can take from a staging key instead (the WRITE
    /// script's value, when it writes one key: `session/stage.rs`).
    pub stageable: Option<usize>,
}

impl ScriptCall {
    /// The value the script can take from a staging key instead of its arguments.
    pub fn stageable_value(&self) -> Option<&Bytes> {
        self.args.get(self.stageable?)
    }

    /// Makes the script take its [`stageable_value`](Self::stageable_value) from `stage`
    /// (which holds it already; the script finds it as its last key).
    pub fn take_value_from(&mut self, stage: Bytes) {
        if let Some(v) = self.stageable.take().and_then(|i| self.args.get_mut(i)) {
            *v = Bytes::new();
            self.keys.push(stage);
        }
    }
}

use crate::protocol::frames::split_array;

pub(super) fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-') | Some(b'!'))
}

pub(super) fn bulk_of(frame: &BytesFrame) -> Option<Option<Bytes>> {
    match frame {
        BytesFrame::Null => Some(None),
        BytesFrame::BlobString { data, .. } | BytesFrame::SimpleString { data, .. } => {
            Some(Some(data.clone()))
        }
        _ => None,
    }
}

pub(super) fn int_of(frame: &BytesFrame) -> Option<i64> {
    match frame {
        BytesFrame::Number { data, .. } => Some(*data),
        _ => None,
    }
}

pub(super) fn unexpected(what: &str) -> Bytes {
    error(&format!(
        "ERR statecar: unexpected reply from Redis to {what}"
    ))
}

/// A transform bound to what it needs to run on the reply path (writer or pinned relay).
pub struct Reshape {
    /// The transform and retry data.
    pub pending: Box<Pending>,
    /// Rules, limits, counters.
    pub engine: std::sync::Arc<StateEngine>,
    /// The client's RESP version at the time of the command.
    pub proto: u8,
    /// For follow-ups.
    pub conn: Option<Link>,
}

impl Reshape {
    /// Reshapes one reply frame.
    pub async fn apply(&self, reply: Bytes) -> Bytes {
        Apply {
            engine: &self.engine,
            proto: self.proto,
            conn: self.conn.as_ref(),
            in_exec: false,
        }
        .run(&self.pending, reply)
        .await
    }
}

/// Context for applying a transform.
pub struct Apply<'a> {
    /// The engine (rules, limits, counters).
    pub engine: &'a Arc<StateEngine>,
    /// The client's RESP version.
    pub proto: u8,
    /// A shared connection for follow-ups (NOSCRIPT retry, previous-version fallback,
    /// dictionaries, the second step of STATE.ROLLBACK).
    pub conn: Option<&'a Link>,
    /// Reshaping an element of an EXEC reply: no follow-up may write (it would run outside
    /// the transaction).
    pub in_exec: bool,
}

impl Apply<'_> {
    /// Applies `p` to one reply frame.
    pub async fn run(&self, p: &Pending, reply: Bytes) -> Bytes {
        // The common case, a state GET: a plain read, so neither of the script cases below
        // applies, and no boxed future for it.
        if let Transform::Value { key } = &p.transform {
            return self.value(key, reply).await;
        }
        if reply.starts_with(b"-ERR Function not found") {
            // Commands pipelined behind this one have run already, so re-running it now could
            // put it after a read of the same key that the client sent later. It did not run:
            // say so, and load the library again for the next ones.
            tracing::warn!(
                "Redis lost statecar's function library (FUNCTION FLUSH?); loading it again"
            );
            if let Some(conn) = self.conn {
                let _ = conn.call(self.engine.scripts.function_load.clone()).await;
            }
            return error(
                "ERR statecar: Redis lost statecar's function library (FUNCTION FLUSH or DELETE?); \
                 it is loaded again, and this command did not run: retry it",
            );
        }
        let reply = if reply.starts_with(b"-NOSCRIPT")
            && let (Some(retry), Some(conn)) = (&p.retry, self.conn)
        {
            tracing::info!("Redis lost the statecar scripts (SCRIPT FLUSH?); resending with EVAL");
            let cmd = self
                .engine
                .scripts
                .get(retry.script)
                .eval(&retry.keys, &retry.args);
            match conn.call(cmd).await {
                Ok(b) => b,
                Err(e) => e,
            }
        } else {
            reply
        };
        self.transform(&p.transform, reply).await
    }

    fn transform<'s>(
        &'s self,
        t: &'s Transform,
        reply: Bytes,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Bytes> + Send + 's>> {
        Box::pin(async move {
            if is_error(&reply) {
                return reply;
            }
            match t {
                Transform::Passthrough => reply,
                Transform::Fixed(v) => v.encode(self.proto),
                Transform::Info { connected_clients } => crate::protocol::info::replace_field(
                    &reply,
                    "connected_clients",
                    &connected_clients.to_string(),
                )
                .unwrap_or(reply),
                Transform::Value { key } => self.value(key, reply).await,
                Transform::Range { key, start, end } => self.range(key, *start, *end, reply).await,
                Transform::Values { keys } => self.values(keys, reply).await,
                Transform::Strlen { key } => self.strlen(key, reply),
                Transform::Write { key, shape, notes } => {
                    self.write(key, *shape, notes, reply).await
                }
                Transform::Rollback { key } => self.rollback(key, reply).await,
                Transform::Train { key, samples } => self.train(key, *samples, reply).await,
                Transform::Load { key } => self.load(key, reply).await,
                Transform::Versions => self.versions(reply),
                Transform::List => self.list(reply),
                Transform::Stats => self.stats(reply),
                Transform::Exec(items) => self.exec(items, reply).await,
            }
        })
    }

    pub(super) fn bulk(&self, v: Option<Bytes>) -> Bytes {
        match v {
            Some(b) => Value::Bulk(b).encode(self.proto),
            None => Value::Null.encode(self.proto),
        }
    }

    async fn exec(&self, items: &[Option<Transform>], reply: Bytes) -> Bytes {
        let Some(elements) = split_array(&reply) else {
            // nil (WATCH abort) or an error: nothing to reshape.
            return reply;
        };
        if elements.len() != items.len() {
            return reply;
        }
        let mut out = BytesMut::new();
        out.extend_from_slice(format!("*{}\r\n", elements.len()).as_bytes());
        let inner = Apply {
            engine: self.engine,
            proto: self.proto,
            conn: self.conn,
            in_exec: true,
        };
        for (e, t) in elements.into_iter().zip(items) {
            match t {
                Some(t) => out.extend_from_slice(&inner.transform(t, e).await),
                None => out.extend_from_slice(&e),
            }
        }
        out.freeze()
    }
}
