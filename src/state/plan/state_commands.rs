//! The STATE.* commands: saving and loading versions, listing state keys, training a
//! dictionary, the proxy's totals. Each is still exactly one upstream command (a script, or a
//! SCAN or INFO whose reply the transform completes), so it keeps its place in a pipeline and
//! in MULTI.

use bytes::Bytes;

use super::write::{Ttl, window};
use super::{Plan, parse_i64, upper};
use crate::command::Command;
use crate::protocol::encode_multibulk;
use crate::protocol::reply::{error, wrong_arity};
use crate::state::keys::history_key;
use crate::state::rules::Rule;
use crate::state::scripts::ScriptKind;
use crate::state::transform::{Pending, Transform, WriteShape, encode_tags};
use crate::state::{StateEngine, show_key};

/// Values STATE.TRAIN reads unless told otherwise.
const DEFAULT_TRAIN_SAMPLES: usize = 1000;

impl StateEngine {
    /// Plans a STATE.* command.
    pub fn plan_state(&self, cmd: &Command) -> Plan {
        let args = cmd.args_bytes();
        let a = &args;
        let name = upper(&a[0]);
        let lname = String::from_utf8_lossy(&name).to_lowercase();
        let arity = || Plan::Reject(wrong_arity(&lname));
        let need_rule = |k: &Bytes| -> Result<&Rule, Plan> {
            self.rule_for(k).ok_or_else(|| {
                Plan::Fail(error(&format!(
                    "ERR statecar: '{}' is not a state key (no [[state]] rule matches it)",
                    show_key(k)
                )))
            })
        };
        let need_versioned = |k: &Bytes| -> Result<&Rule, Plan> {
            let r = need_rule(k)?;
            if !r.versioning {
                return Err(Plan::Fail(error(&format!(
                    "ERR statecar: state key '{}' keeps no versions (rule {} has versioning = false)",
                    show_key(k),
                    r.index
                ))));
            }
            Ok(r)
        };
        let unwrap = |p: Option<Plan>| {
            p.unwrap_or_else(|| Plan::Fail(error("ERR statecar: internal planning error")))
        };
        match name.as_slice() {
            b"STATE.SAVE" => {
                if a.len() < 3 {
                    return arity();
                }
                let rule = match need_versioned(&a[1]) {
                    Ok(r) => r,
                    Err(p) => return p,
                };
                let mut version = None;
                let mut tags: Vec<Bytes> = Vec::new();
                let mut ttl = Ttl::None;
                let mut i = 3;
                let keyword_at = |j: usize| -> Option<Vec<u8>> {
                    let u = upper(a.get(j)?);
                    (matches!(u.as_slice(), b"VERSION" | b"EX")
                        && a.get(j + 1).and_then(|n| parse_i64(n)).is_some())
                    .then_some(u)
                };
                while i < a.len() {
                    let opt = upper(&a[i]);
                    match opt.as_slice() {
                        b"VERSION" | b"EX" if i + 1 < a.len() => {
                            let Some(n) = parse_i64(&a[i + 1]) else {
                                return Plan::Fail(error(
                                    "ERR value is not an integer or out of range",
                                ));
                            };
                            if n <= 0 {
                                return Plan::Fail(error(&format!(
                                    "ERR {} must be a positive integer",
                                    String::from_utf8_lossy(&opt)
                                )));
                            }
                            if opt == b"VERSION" {
                                version = Some(n);
                            } else {
                                let Some(ms) = n.checked_mul(1000) else {
                                    return Plan::Fail(error(
                                        "ERR invalid expire time in 'state.save' command",
                                    ));
                                };
                                ttl = Ttl::Px(ms);
                            }
                            i += 2;
                        }
                        b"TAGS" => {
                            i += 1;
                            while i < a.len() && keyword_at(i).is_none() {
                                tags.push(a[i].clone());
                                i += 1;
                            }
                        }
                        _ => return Plan::Fail(error("ERR syntax error")),
                    }
                }
                let pair = self.write_pair(Some(rule), &a[1], &a[2], ttl);
                unwrap(self.write(
                    vec![pair],
                    b"SET",
                    b"",
                    false,
                    version,
                    encode_tags(&tags),
                    WriteShape::Version,
                ))
            }
            b"STATE.LOAD" => {
                let version = match a.len() {
                    2 => Bytes::new(),
                    4 if upper(&a[2]) == b"VERSION" => match parse_i64(&a[3]) {
                        Some(n) if n > 0 => a[3].clone(),
                        _ => {
                            return Plan::Fail(error(
                                "ERR value is not an integer or out of range",
                            ));
                        }
                    },
                    4 => return Plan::Fail(error("ERR syntax error")),
                    _ => return arity(),
                };
                let rule = match if version.is_empty() {
                    need_rule(&a[1])
                } else {
                    need_versioned(&a[1])
                } {
                    Ok(r) => r,
                    Err(p) => return p,
                };
                unwrap(self.script(
                    ScriptKind::Load,
                    vec![a[1].clone(), self.hist(rule, &a[1])],
                    vec![version, Bytes::from(window(rule).to_string())],
                    Transform::Load { key: a[1].clone() },
                ))
            }
            b"STATE.VERSIONS" => {
                if a.len() != 2 {
                    return arity();
                }
                let rule = match need_versioned(&a[1]) {
                    Ok(r) => r,
                    Err(p) => return p,
                };
                unwrap(self.script(
                    ScriptKind::Versions,
                    vec![a[1].clone(), history_key(&a[1])],
                    vec![Bytes::from(window(rule).to_string())],
                    Transform::Versions,
                ))
            }
            b"STATE.DELVERSION" | b"STATE.ROLLBACK" => {
                if a.len() != 3 {
                    return arity();
                }
                let rule = match need_versioned(&a[1]) {
                    Ok(r) => r,
                    Err(p) => return p,
                };
                if !matches!(parse_i64(&a[2]), Some(n) if n > 0) {
                    return Plan::Fail(error("ERR value is not an integer or out of range"));
                }
                let (kind, args, t) = if name == b"STATE.DELVERSION" {
                    (
                        ScriptKind::DelVersion,
                        vec![a[2].clone(), Bytes::from(window(rule).to_string())],
                        Transform::Passthrough,
                    )
                } else {
                    // Reads the version; the reply path writes it as the newest one.
                    (
                        ScriptKind::Rollback,
                        vec![a[2].clone(), Bytes::from(window(rule).to_string())],
                        Transform::Rollback { key: a[1].clone() },
                    )
                };
                unwrap(self.script(kind, vec![a[1].clone(), history_key(&a[1])], args, t))
            }
            b"STATE.LIST" => {
                let mut i = 1;
                let mut cursor = Bytes::from_static(b"0");
                if let Some(c) = a.get(1)
                    && parse_i64(c).is_some()
                {
                    cursor = c.clone();
                    i = 2;
                }
                let mut pattern: Option<Bytes> = None;
                let mut count = Bytes::from_static(b"100");
                while i < a.len() {
                    match upper(&a[i]).as_slice() {
                        b"MATCH" if i + 1 < a.len() => pattern = Some(a[i + 1].clone()),
                        b"COUNT" if i + 1 < a.len() => {
                            if !matches!(parse_i64(&a[i + 1]), Some(n) if n > 0) {
                                return Plan::Fail(error(
                                    "ERR value is not an integer or out of range",
                                ));
                            }
                            count = a[i + 1].clone();
                        }
                        _ => return Plan::Fail(error("ERR syntax error")),
                    }
                    i += 2;
                }
                // Redis filters by the client's pattern, or by the only rule's; rule matching
                // (and hiding statecar's own keys) happens on the reply.
                let scan_match = match (&pattern, self.rules.len()) {
                    (Some(p), _) => Some(p.clone()),
                    (None, 1) => self
                        .rules
                        .iter()
                        .next()
                        .map(|r| Bytes::from(r.pattern.clone())),
                    (None, _) => None,
                };
                let mut args: Vec<&[u8]> = vec![b"SCAN", &cursor];
                if let Some(m) = &scan_match {
                    args.extend([&b"MATCH"[..], m]);
                }
                args.extend([&b"COUNT"[..], &count, &b"TYPE"[..], &b"string"[..]]);
                let mut raw = bytes::BytesMut::new();
                encode_multibulk(&mut raw, &args);
                Plan::Send {
                    raw: raw.freeze(),
                    pending: Box::new(Pending {
                        transform: Transform::List,
                        retry: None,
                    }),
                }
            }
            b"STATE.RULE" => self.plan_rule(cmd),
            b"STATE.TRAIN" => {
                let samples = match a.len() {
                    2 => DEFAULT_TRAIN_SAMPLES,
                    4 if upper(&a[2]) == b"SAMPLES" => match parse_i64(&a[3]) {
                        Some(n) if (10..=100_000).contains(&n) => n as usize,
                        _ => {
                            return Plan::Fail(error(
                                "ERR SAMPLES must be an integer from 10 to 100000",
                            ));
                        }
                    },
                    4 => return Plan::Fail(error("ERR syntax error")),
                    _ => return arity(),
                };
                let rule = match need_rule(&a[1]) {
                    Ok(r) => r,
                    Err(p) => return p,
                };
                if !rule.dictionary {
                    return Plan::Fail(error(&format!(
                        "ERR statecar: rule {} of '{}' has no dictionary (set dictionary = \"auto\")",
                        rule.index,
                        show_key(&a[1])
                    )));
                }
                // The reply path reads on from this first SCAN page.
                let mut raw = bytes::BytesMut::new();
                encode_multibulk(
                    &mut raw,
                    &[
                        &b"SCAN"[..],
                        b"0",
                        b"MATCH",
                        &rule.pattern,
                        b"COUNT",
                        b"1000",
                        b"TYPE",
                        b"string",
                    ],
                );
                Plan::Send {
                    raw: raw.freeze(),
                    pending: Box::new(Pending {
                        transform: Transform::Train {
                            key: a[1].clone(),
                            samples,
                        },
                        retry: None,
                    }),
                }
            }
            b"STATE.STATS" => {
                if a.len() != 1 {
                    return arity();
                }
                let mut raw = bytes::BytesMut::new();
                encode_multibulk(&mut raw, &[&b"INFO"[..], &b"memory"[..]]);
                Plan::Send {
                    raw: raw.freeze(),
                    pending: Box::new(Pending {
                        transform: Transform::Stats,
                        retry: None,
                    }),
                }
            }
            _ => Plan::Reject(error(&format!(
                "ERR unknown command '{}', with args beginning with: ",
                String::from_utf8_lossy(&a[0])
            ))),
        }
    }
}
