//! STATE.RULE: which `[[state]]` rule decides a key, and what it says.
//!
//! Clients that keep their own idea of the policy (the Python `RedisStatePersistence` takes
//! `compression_type`, `max_versions` and `default_ttl`) ask this to find out whether statecar
//! will do what they were told, and fail loudly when it will not.
//!
//! The answer is statecar's own, but it travels like every other STATE.* reply: the upstream
//! command is a PING whose reply is replaced by the rule. So STATE.RULE keeps its place in a
//! pipeline and inside MULTI is queued and answered in the EXEC reply, with no special path in
//! the session. PING has no effect on Redis and is answered at once.

use bytes::{Bytes, BytesMut};

use super::Plan;
use crate::command::Command;
use crate::protocol::encode_multibulk;
use crate::protocol::reply::{Value, wrong_arity};
use crate::state::StateEngine;
use crate::state::rules::Rule;
use crate::state::transform::{Pending, Transform};

/// The reply for `rule`: a map in RESP3, a flat array in RESP2 (as STATE.LOAD).
fn describe(rule: &Rule) -> Value {
    let int = |n: u64| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let ttl_s = rule
        .default_ttl_ms
        .map_or(Value::Int(-1), |ms| int(ms / 1000));
    Value::Map(vec![
        (Value::text("pattern"), Value::bulk(rule.pattern.clone())),
        (Value::text("index"), int(rule.index as u64)),
        (Value::text("compression"), Value::text(rule.codec.name())),
        (Value::text("min_size"), int(rule.min_size as u64)),
        (
            Value::text("versioning"),
            Value::Int(i64::from(rule.versioning)),
        ),
        (
            Value::text("max_versions"),
            int(u64::from(rule.max_versions)),
        ),
        (Value::text("default_ttl_s"), ttl_s),
        (
            Value::text("on_corruption"),
            Value::text(rule.on_corruption.name()),
        ),
    ])
}

impl StateEngine {
    /// Plans `STATE.RULE key`: the rule that matches the key, or nil when none does (the key is
    /// passed through untouched, as statecar's own `__statecar:` keys always are).
    pub(super) fn plan_rule(&self, cmd: &Command) -> Plan {
        if cmd.argc() != 2 {
            return Plan::Reject(wrong_arity("state.rule"));
        }
        let answer = self
            .rule_for(cmd.arg(1).unwrap_or_default())
            .map_or(Value::Null, describe);
        let mut raw = BytesMut::new();
        encode_multibulk(&mut raw, &[&b"PING"[..]]);
        Plan::Send {
            raw: Bytes::from(raw),
            pending: Box::new(Pending {
                transform: Transform::Fixed(answer),
                retry: None,
            }),
        }
    }
}
