//! Routing a command that touches state keys: what to send to Redis and how to reshape the reply.
//!
//! Every command becomes exactly one upstream command (so pipelines and MULTI keep their order
//! and atomicity) or a local error. Options are validated here with Redis's own error texts,
//! because once a value is encoded Redis never sees the client's original command.
//!
//! The plain commands (reads, writes, deletes, expiry, and the ones refused on state keys) are
//! planned here; the pieces with rules of their own are beside it: `write` (how one key's
//! value and expiry go to the WRITE script), `set` (SET's options), `state_commands` (the
//! STATE.* commands) and `rule_info` (STATE.RULE).

mod rule_info;
mod set;
mod state_commands;
#[cfg(test)]
mod tests;
mod write;

pub(crate) use write::window;

use std::sync::Arc;

use bytes::Bytes;

use super::keys::history_key;
use super::rules::{HEAVY_VALUE, Rule};
use super::scripts::ScriptKind;
use super::transform::{Pending, ScriptCall, Transform, WriteShape};
use super::{StateEngine, show_key};
use crate::command::Command;
use crate::protocol::encode_multibulk;
use crate::protocol::reply::error;
use write::Ttl;

/// What to do with a command.
#[derive(Debug)]
pub enum Plan {
    /// Refuse it as Redis refuses an unknown command: an error at once, and inside MULTI the
    /// transaction is aborted at EXEC (a queueing error).
    Reject(Bytes),
    /// It fails as Redis fails a command with bad arguments: an error reply, which inside MULTI
    /// is queued and returned in its place in the EXEC reply.
    Fail(Bytes),
    /// Run a Lua script (the session picks EVALSHA or EVAL) and reshape its reply.
    Script {
        /// The script call.
        call: Box<ScriptCall>,
        /// The reply transform.
        transform: Transform,
    },
    /// Send `raw` upstream and reshape its reply with `pending`.
    Send {
        /// The upstream command.
        raw: Bytes,
        /// The reply transform.
        pending: Box<Pending>,
    },
}

fn reject(msg: &str) -> Option<Plan> {
    Some(Plan::Reject(error(msg)))
}

fn fail(msg: &str) -> Option<Plan> {
    Some(Plan::Fail(error(msg)))
}

fn not_int() -> Option<Plan> {
    fail("ERR value is not an integer or out of range")
}

/// Redis's checks on an expiry: positive, and no overflow once made absolute milliseconds.
fn expiry_ms(n: i64, seconds: bool, relative: bool) -> Option<i64> {
    if n <= 0 {
        return None;
    }
    let ms = if seconds { n.checked_mul(1000)? } else { n };
    if relative {
        ms.checked_add(super::now_ms() as i64)?;
    }
    Some(ms)
}

fn parse_i64(b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?;
    if s.starts_with('+') || s.is_empty() {
        return None;
    }
    s.parse().ok()
}

fn upper(b: &[u8]) -> Vec<u8> {
    b.to_ascii_uppercase()
}

/// Plans `cmd` on the blocking pool (see [`StateEngine::plan_is_heavy`]); gives the command
/// back with the plan.
pub async fn plan_on_pool(engine: Arc<StateEngine>, cmd: Command) -> (Command, Option<Plan>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::task::spawn_blocking(move || {
        let plan = engine.plan(&cmd);
        let _ = tx.send((cmd, plan));
    });
    match rx.await {
        Ok(r) => r,
        // The pool dropped the job (runtime shutting down): fail this command clearly.
        Err(_) => (
            Command::from_args([Bytes::from_static(b"PING")]),
            Some(Plan::Fail(error(
                "ERR statecar: shutting down; the write was not encoded",
            ))),
        ),
    }
}

impl StateEngine {
    fn plain_send(&self, raw: &Bytes, t: Transform) -> Option<Plan> {
        Some(Plan::Send {
            raw: raw.clone(),
            pending: Box::new(Pending {
                transform: t,
                retry: None,
            }),
        })
    }

    fn script(
        &self,
        kind: ScriptKind,
        keys: Vec<Bytes>,
        args: Vec<Bytes>,
        transform: Transform,
    ) -> Option<Plan> {
        Some(Plan::Script {
            call: Box::new(ScriptCall {
                script: kind,
                keys,
                args,
                stageable: None,
            }),
            transform,
        })
    }

    /// The history key to pass to scripts: the key itself when the rule keeps no history.
    fn hist(&self, rule: &Rule, key: &Bytes) -> Bytes {
        if rule.versioning {
            history_key(key)
        } else {
            key.clone()
        }
    }

    /// Whether planning `cmd` compresses enough bytes that it should run on the blocking pool
    /// ([`plan_on_pool`]) rather than on the thread that serves other clients: a write to a
    /// state key of a value of at least its rule's [`Rule::heavy_from`] bytes. Cheap: looks
    /// at argument lengths first.
    pub fn plan_is_heavy(&self, cmd: &Command) -> bool {
        if cmd.argc() < 3 || !cmd.args().skip(2).any(|v| v.len() >= HEAVY_VALUE) {
            return false;
        }
        // Only writes to state keys compress anything.
        if !cmd.entry().state {
            return false;
        }
        let name = cmd.name();
        let multi = name.eq_ignore_ascii_case(b"MSET") || name.eq_ignore_ascii_case(b"MSETNX");
        if multi {
            let mut args = cmd.args().skip(1);
            std::iter::from_fn(|| Some((args.next()?, args.next()?)))
                .any(|(k, v)| self.rule_for(k).is_some_and(|r| v.len() >= r.heavy_from()))
        } else {
            // SET, SETEX, STATE.SAVE...: the key first; the value is among the rest.
            cmd.arg(1)
                .and_then(|k| self.rule_for(k))
                .is_some_and(|r| cmd.args().skip(2).any(|v| v.len() >= r.heavy_from()))
        }
    }

    /// Plans `cmd`; `None` means it touches no state key and goes through untouched.
    pub fn plan(&self, cmd: &Command) -> Option<Plan> {
        // The command table says which commands can involve a state key at all.
        if !cmd.entry().state {
            return None;
        }
        let args = cmd.args_bytes();
        let a = &args;
        let name = upper(a.first()?);
        let rule_of = |i: usize| a.get(i).and_then(|k| self.rule_for(k));
        match name.as_slice() {
            b"GET" => {
                rule_of(1)?;
                if a.len() != 2 {
                    return None;
                }
                self.plain_send(cmd.raw(), Transform::Value { key: a[1].clone() })
            }
            b"MGET" => {
                let keys: Vec<Option<Bytes>> = a[1..]
                    .iter()
                    .map(|k| self.rule_for(k).map(|_| k.clone()))
                    .collect();
                if keys.iter().all(Option::is_none) {
                    return None;
                }
                self.plain_send(cmd.raw(), Transform::Values { keys })
            }
            b"GETRANGE" | b"SUBSTR" => {
                rule_of(1)?;
                if a.len() != 4 {
                    return None;
                }
                let (Some(start), Some(end)) = (parse_i64(&a[2]), parse_i64(&a[3])) else {
                    return not_int();
                };
                let mut raw = bytes::BytesMut::new();
                encode_multibulk(&mut raw, &[&b"GET"[..], &a[1]]);
                self.plain_send(
                    &raw.freeze(),
                    Transform::Range {
                        key: a[1].clone(),
                        start,
                        end,
                    },
                )
            }
            b"STRLEN" => {
                rule_of(1)?;
                if a.len() != 2 {
                    return None;
                }
                self.script(
                    ScriptKind::Strlen,
                    vec![a[1].clone()],
                    vec![],
                    Transform::Strlen { key: a[1].clone() },
                )
            }
            b"GETDEL" | b"GETEX" => {
                let rule = rule_of(1)?;
                if a.len() < 2 || (name == b"GETDEL" && a.len() != 2) || a.len() > 4 {
                    return None;
                }
                let key = a[1].clone();
                if name == b"GETDEL" {
                    self.forget(&key);
                }
                let mut args = vec![a[0].clone()];
                args.extend(a[2..].iter().cloned());
                self.script(
                    ScriptKind::KeyThenSync,
                    vec![key.clone(), self.hist(rule, &key)],
                    args,
                    Transform::Value { key },
                )
            }
            b"SET" => self.plan_set(a),
            b"SETNX" | b"GETSET" => {
                let rule = rule_of(1)?;
                if a.len() != 3 {
                    return None;
                }
                let pair = self.write_pair(Some(rule), &a[1], &a[2], Ttl::None);
                let (cond, want_old, shape): (&'static [u8], bool, WriteShape) = if name == b"SETNX"
                {
                    (b"NX", false, WriteShape::Int)
                } else {
                    (b"", true, WriteShape::Old)
                };
                self.write(
                    vec![pair],
                    b"SET",
                    cond,
                    want_old,
                    None,
                    Bytes::new(),
                    shape,
                )
            }
            b"SETEX" | b"PSETEX" => {
                let rule = rule_of(1)?;
                if a.len() != 4 {
                    return None;
                }
                let Some(t) = parse_i64(&a[2]) else {
                    return not_int();
                };
                let cmdname = String::from_utf8_lossy(&name).to_lowercase();
                let Some(ms) = expiry_ms(t, name == b"SETEX", true) else {
                    return fail(&format!("ERR invalid expire time in '{cmdname}' command"));
                };
                let pair = self.write_pair(Some(rule), &a[1], &a[3], Ttl::Px(ms));
                self.write(
                    vec![pair],
                    b"SET",
                    b"",
                    false,
                    None,
                    Bytes::new(),
                    WriteShape::Ok,
                )
            }
            b"MSET" | b"MSETNX" => {
                if a.len() < 3 || a.len().is_multiple_of(2) {
                    // Redis answers the arity error itself (and aborts a MULTI for it).
                    return None;
                }
                if !a[1..].iter().step_by(2).any(|k| self.rule_for(k).is_some()) {
                    return None;
                }
                let pairs = a[1..]
                    .chunks(2)
                    .map(|kv| self.write_pair(self.rule_for(&kv[0]), &kv[0], &kv[1], Ttl::None))
                    .collect();
                let (mode, shape): (&'static [u8], WriteShape) = if name == b"MSET" {
                    (b"SET", WriteShape::Ok)
                } else {
                    (b"MSETNX", WriteShape::Int)
                };
                self.write(pairs, mode, b"", false, None, Bytes::new(), shape)
            }
            b"DEL" | b"UNLINK" => {
                for k in &a[1..] {
                    self.forget(k);
                }
                let hist: Vec<Bytes> = a[1..]
                    .iter()
                    .filter_map(|k| {
                        self.rule_for(k)
                            .filter(|r| r.versioning)
                            .map(|_| history_key(k))
                    })
                    .collect();
                if hist.is_empty() {
                    return None;
                }
                let mut keys: Vec<Bytes> = a[1..].to_vec();
                let n = keys.len();
                keys.extend(hist);
                self.script(
                    ScriptKind::Delete,
                    keys,
                    vec![a[0].clone(), Bytes::from(n.to_string())],
                    Transform::Passthrough,
                )
            }
            b"EXPIRE" | b"PEXPIRE" | b"EXPIREAT" | b"PEXPIREAT" | b"PERSIST" => {
                let rule = rule_of(1)?;
                let arity_ok = if name == b"PERSIST" {
                    a.len() == 2
                } else {
                    (3..=4).contains(&a.len())
                };
                if !rule.versioning || !arity_ok {
                    return None;
                }
                let mut args = vec![a[0].clone()];
                args.extend(a[2..].iter().cloned());
                self.script(
                    ScriptKind::KeyThenSync,
                    vec![a[1].clone(), history_key(&a[1])],
                    args,
                    Transform::Passthrough,
                )
            }
            b"APPEND" | b"SETRANGE" | b"INCR" | b"DECR" | b"INCRBY" | b"DECRBY"
            | b"INCRBYFLOAT" | b"SETBIT" | b"GETBIT" | b"BITCOUNT" | b"BITPOS" | b"BITFIELD"
            | b"BITFIELD_RO" | b"MOVE" | b"DUMP" | b"RESTORE" | b"OBJECT" => {
                let i = if name == b"OBJECT" { 2 } else { 1 };
                rule_of(i)?;
                self.refuse(&name, &a[i])
            }
            b"RENAME" | b"RENAMENX" | b"COPY" | b"LCS" => {
                let k = (1..=2).find(|&i| rule_of(i).is_some())?;
                self.refuse(&name, &a[k])
            }
            b"BITOP" => {
                let k = a.iter().skip(2).find(|k| self.rule_for(k).is_some())?;
                self.refuse(&name, k)
            }
            _ => None,
        }
    }

    fn refuse(&self, name: &[u8], key: &[u8]) -> Option<Plan> {
        reject(&format!(
            "ERR statecar: {} is not supported on state key '{}' (its value is stored encoded); read it with GET and write it with SET",
            String::from_utf8_lossy(name),
            show_key(key)
        ))
    }
}
