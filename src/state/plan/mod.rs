//! Routing a command that touches state keys: what to send to Redis and how to reshape the reply.
//!
//! Every command becomes exactly one upstream command (so pipelines and MULTI keep their order
//! and atomicity) or a local error. Options are validated here with Redis's own error texts,
//! because once a value is encoded Redis never sees the client's original command.

mod rule_info;

use std::sync::Arc;

use bytes::Bytes;

use super::keys::history_key;
use super::rules::Rule;
use super::scripts::ScriptKind;
use super::transform::{CacheNote, Pending, ScriptCall, Transform, WriteShape, encode_tags};
use super::{StateEngine, show_key};
use crate::command::Command;
use crate::protocol::encode_multibulk;
use crate::protocol::reply::{error, wrong_arity};

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

/// Writes with a value at least this long are planned (encoded) off the async threads: at
/// about 400 MB/s for zstd level 1 that is over half a millisecond of compression, which
/// would otherwise delay every other client served by the same thread.
pub const HEAVY_VALUE: usize = 256 * 1024;

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

/// Values STATE.TRAIN reads unless told otherwise.
const DEFAULT_TRAIN_SAMPLES: usize = 1000;

/// One key of a write, as the WRITE script takes it.
struct Pair {
    key: Bytes,
    hist: Bytes,
    /// value, max_versions, ttl mode, ttl value, base header, delta, predicted version.
    args: [Bytes; 7],
    note: Option<CacheNote>,
}

/// Expiry for a write, as the WRITE script takes it.
enum Ttl {
    None,
    Px(i64),
    PxAt(i64),
    Keep,
}

/// How many version numbers the rule's history keeps (0 without versioning).
pub(crate) fn window(rule: &Rule) -> u32 {
    if rule.versioning {
        rule.max_versions
    } else {
        0
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

    /// One key's part of a write: its keys and arguments for the WRITE script, and what the
    /// reply must tell the delta cache.
    fn write_pair(&self, rule: Option<&Rule>, key: &Bytes, value: &Bytes, ttl: Ttl) -> Pair {
        let maxv = rule.map_or(0, window);
        let (hist, stored, base, delta, predicted, note) = match rule {
            Some(r) if maxv > 0 => {
                let w = self.encode_write(r, key, value);
                let note = self.bases(r).map(|_| CacheNote {
                    key: key.clone(),
                    header: w.header,
                    value: value.clone(),
                    predicted: w.predicted,
                });
                (
                    self.hist(r, key),
                    w.stored,
                    w.base_header,
                    w.delta,
                    w.predicted,
                    note,
                )
            }
            Some(r) => {
                let stored = self.encode(r, value);
                (key.clone(), stored, Bytes::new(), Bytes::new(), 0, None)
            }
            None => (
                key.clone(),
                value.clone(),
                Bytes::new(),
                Bytes::new(),
                0,
                None,
            ),
        };
        let ttl = match (ttl, rule.and_then(|r| r.default_ttl_ms)) {
            (Ttl::None, Some(d)) => Ttl::Px(d as i64),
            (t, _) => t,
        };
        let (mode, val): (&'static [u8], String) = match ttl {
            Ttl::None => (b"", String::new()),
            Ttl::Px(ms) => (b"PX", ms.to_string()),
            Ttl::PxAt(ms) => (b"PXAT", ms.to_string()),
            Ttl::Keep => (b"KEEPTTL", String::new()),
        };
        Pair {
            key: key.clone(),
            hist,
            args: [
                stored,
                Bytes::from(maxv.to_string()),
                Bytes::from_static(mode),
                Bytes::from(val),
                base,
                delta,
                Bytes::from(predicted.to_string()),
            ],
            note,
        }
    }

    // One call site per write command; a struct would only rename these arguments.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        pairs: Vec<Pair>,
        mode: &'static [u8],
        cond: &'static [u8],
        want_old: bool,
        expect: Option<i64>,
        tags: Bytes,
        shape: WriteShape,
    ) -> Option<Plan> {
        let key = pairs.first().map(|p| p.key.clone()).unwrap_or_default();
        let mut keys = Vec::with_capacity(pairs.len() * 2);
        let mut args = vec![
            Bytes::from_static(mode),
            Bytes::from_static(cond),
            Bytes::from_static(if want_old { b"1" } else { b"0" }),
            expect
                .map(|e| Bytes::from(e.to_string()))
                .unwrap_or_default(),
            tags,
        ];
        let mut notes = Vec::new();
        for (i, p) in pairs.into_iter().enumerate() {
            keys.push(p.key);
            keys.push(p.hist);
            args.extend(p.args);
            if let Some(n) = p.note {
                notes.push((i, n));
            }
        }
        self.script(
            ScriptKind::Write,
            keys,
            args,
            Transform::Write { key, shape, notes },
        )
    }

    /// Whether planning `cmd` compresses enough bytes that it should run on the blocking pool
    /// ([`plan_on_pool`]) rather than on the thread that serves other clients: a write of a
    /// value of at least [`HEAVY_VALUE`] bytes. Cheap: looks at argument lengths only.
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
            cmd.args()
                .skip(1)
                .step_by(2)
                .any(|k| self.rule_for(k).is_some())
        } else {
            cmd.arg(1).is_some_and(|k| self.rule_for(k).is_some())
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

    /// SET with Redis's option rules: repeats of the same option are allowed (the last expiry
    /// wins), conflicting ones are a syntax error, and numbers are checked only after every
    /// option has parsed.
    fn plan_set(&self, a: &[Bytes]) -> Option<Plan> {
        let rule = a.get(1).and_then(|k| self.rule_for(k))?;
        if a.len() < 3 {
            return None;
        }
        let mut cond: &'static [u8] = b"";
        let mut get = false;
        let mut keep = false;
        // (unit, value): unit is one of EX, PX, EXAT, PXAT.
        let mut expire: Option<(Vec<u8>, &Bytes)> = None;
        let mut i = 3;
        while i < a.len() {
            let opt = upper(&a[i]);
            let unit_ok = |u: &[u8]| expire.as_ref().is_none_or(|(e, _)| e.as_slice() == u);
            match opt.as_slice() {
                b"NX" if cond != b"XX" => cond = b"NX",
                b"XX" if cond != b"NX" => cond = b"XX",
                b"GET" => get = true,
                b"KEEPTTL" if expire.is_none() => keep = true,
                b"EX" | b"PX" | b"EXAT" | b"PXAT" if !keep && unit_ok(&opt) && i + 1 < a.len() => {
                    expire = Some((opt.clone(), &a[i + 1]));
                    i += 1;
                }
                _ => return fail("ERR syntax error"),
            }
            i += 1;
        }
        let ttl = match expire {
            None if keep => Ttl::Keep,
            None => Ttl::None,
            Some((unit, v)) => {
                let Some(n) = parse_i64(v) else {
                    return not_int();
                };
                let seconds = unit.starts_with(b"E");
                let relative = !unit.ends_with(b"AT");
                let Some(ms) = expiry_ms(n, seconds, relative) else {
                    return fail("ERR invalid expire time in 'set' command");
                };
                if relative { Ttl::Px(ms) } else { Ttl::PxAt(ms) }
            }
        };
        let pair = self.write_pair(Some(rule), &a[1], &a[2], ttl);
        let shape = if get {
            WriteShape::Old
        } else {
            WriteShape::OkOrNil
        };
        self.write(vec![pair], b"SET", cond, get, None, Bytes::new(), shape)
    }

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

#[cfg(test)]
mod tests;
