//! What each command family becomes upstream (`plan/`): the script and its arguments, the
//! plain command, or the error Redis would give, without a Redis behind it. End-to-end
//! behaviour is tested against a real redis-server in tests/state_keys.rs; these pin the
//! planner's own decisions.

use bytes::Bytes;

use crate::command::Command;
use crate::state::codec::Codec;
use crate::state::envelope;
use crate::state::plan::Plan;
use crate::state::rules::{HEAVY_FAST_VALUE, HEAVY_VALUE};
use crate::state::rules::{Rule, RuleConfig, Rules};
use crate::state::scripts::ScriptKind;
use crate::state::transform::{Transform, WriteShape};
use crate::state::{StateEngine, now_ms};

fn rule(i: usize, toml: &str) -> Rule {
    let c: RuleConfig = toml::from_str(toml).unwrap_or_else(|e| panic!("{e}"));
    Rule::from_config(i, &c).unwrap_or_else(|e| panic!("{e}"))
}

fn engine() -> StateEngine {
    StateEngine::new(
        Rules::new(vec![
            rule(
                0,
                "pattern = \"s:*\"\ncompression = \"zstd\"\nmax_versions = 5\ndefault_ttl_s = 60",
            ),
            rule(
                1,
                "pattern = \"n:*\"\ncompression = \"lz4\"\nversioning = false",
            ),
            rule(
                2,
                "pattern = \"d:*\"\ncompression = \"zstd\"\ndictionary = \"auto\"",
            ),
        ]),
        64 << 20,
    )
}

fn cmd(args: &[&[u8]]) -> Command {
    Command::from_args(args.iter().map(|a| Bytes::copy_from_slice(a)))
}

fn plan(e: &StateEngine, args: &[&[u8]]) -> Option<Plan> {
    e.plan(&cmd(args))
}

/// [`plan`] for text arguments.
fn plan_s(e: &StateEngine, args: &[&str]) -> Option<Plan> {
    let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
    plan(e, &a)
}

/// The error text of a Reject/Fail plan.
fn error_of(p: Option<Plan>) -> (bool, String) {
    match p {
        Some(Plan::Reject(b)) => (true, String::from_utf8_lossy(&b).trim_end().to_string()),
        Some(Plan::Fail(b)) => (false, String::from_utf8_lossy(&b).trim_end().to_string()),
        other => panic!("expected an error plan, got {other:?}"),
    }
}

/// The script call of a Script plan.
fn script(p: Option<Plan>) -> (ScriptKind, Vec<Bytes>, Vec<Bytes>, Transform) {
    match p {
        Some(Plan::Script { call, transform }) => (call.script, call.keys, call.args, transform),
        other => panic!("expected a script, got {other:?}"),
    }
}

fn text(b: &Bytes) -> &str {
    std::str::from_utf8(b).unwrap_or("<bytes>")
}

#[test]
fn reads_are_plain_commands_with_a_decoding_transform() {
    let e = engine();
    match plan(&e, &[b"GET", b"s:1"]) {
        Some(Plan::Send { raw, pending }) => {
            assert_eq!(raw, cmd(&[b"GET", b"s:1"]).raw().clone());
            assert!(matches!(pending.transform, Transform::Value { ref key } if key == "s:1"));
        }
        other => panic!("{other:?}"),
    }
    // Plain keys and wrong arity go through untouched (Redis answers the arity error).
    assert!(plan(&e, &[b"GET", b"plain"]).is_none());
    assert!(plan(&e, &[b"GET", b"s:1", b"x"]).is_none());
    match plan(&e, &[b"MGET", b"plain", b"s:1", b"n:2"]) {
        Some(Plan::Send { pending, .. }) => match pending.transform {
            Transform::Values { keys } => assert_eq!(
                keys,
                vec![
                    None,
                    Some(Bytes::from_static(b"s:1")),
                    Some(Bytes::from_static(b"n:2"))
                ]
            ),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    assert!(plan(&e, &[b"MGET", b"a", b"b"]).is_none());
    // GETRANGE reads the whole value and cuts it after decoding.
    match plan(&e, &[b"GETRANGE", b"s:1", b"0", b"-1"]) {
        Some(Plan::Send { raw, pending }) => {
            assert_eq!(raw, cmd(&[b"GET", b"s:1"]).raw().clone());
            assert!(matches!(
                pending.transform,
                Transform::Range {
                    start: 0,
                    end: -1,
                    ..
                }
            ));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        error_of(plan(&e, &[b"SUBSTR", b"s:1", b"a", b"1"])),
        (
            false,
            "-ERR value is not an integer or out of range".to_string()
        )
    );
    let (kind, keys, _, t) = script(plan(&e, &[b"STRLEN", b"s:1"]));
    assert_eq!((kind, keys.len()), (ScriptKind::Strlen, 1));
    assert!(matches!(t, Transform::Strlen { .. }));
}

#[test]
fn set_options_are_checked_as_redis_checks_them() {
    let e = engine();
    for (args, want) in [
        (&["SET", "s:1", "v", "NX", "XX"][..], "-ERR syntax error"),
        (
            &["SET", "s:1", "v", "EX", "10", "PX", "10"],
            "-ERR syntax error",
        ),
        (
            &["SET", "s:1", "v", "KEEPTTL", "EX", "1"],
            "-ERR syntax error",
        ),
        (&["SET", "s:1", "v", "EX"], "-ERR syntax error"),
        (
            &["SET", "s:1", "v", "EX", "x"],
            "-ERR value is not an integer or out of range",
        ),
        (
            &["SET", "s:1", "v", "EX", "0"],
            "-ERR invalid expire time in 'set' command",
        ),
        (
            &["SETEX", "s:1", "-5", "v"],
            "-ERR invalid expire time in 'setex' command",
        ),
        (
            &["PSETEX", "s:1", "1.5", "v"],
            "-ERR value is not an integer or out of range",
        ),
    ] {
        assert_eq!(
            error_of(plan_s(&e, args)),
            (false, want.to_string()),
            "{args:?}"
        );
    }
    // Repeats of one option are fine; the last expiry wins.
    let (_, _, args, _) = script(plan(
        &e,
        &[
            b"SET", b"s:1", b"v", b"EX", b"10", b"EX", b"20", b"NX", b"NX",
        ],
    ));
    assert_eq!((text(&args[1]), text(&args[7])), ("NX", "PX"));
    assert_eq!(text(&args[8]), "20000");
}

#[test]
fn writes_send_one_script_with_the_encoded_value_and_its_history_window() {
    let e = engine();
    let (kind, keys, args, t) = script(plan(&e, &[b"SET", b"s:1", b"hello world", b"GET"]));
    assert_eq!(kind, ScriptKind::Write);
    assert_eq!(
        keys,
        vec![
            Bytes::from_static(b"s:1"),
            Bytes::from_static(b"__statecar:h:{s:1}")
        ]
    );
    // mode, cond, want_old, expect, tags; then value, max_versions, ttl mode and value,
    // base header, delta, predicted version.
    assert_eq!(args.len(), 5 + 7);
    assert_eq!(
        (
            text(&args[0]),
            text(&args[1]),
            text(&args[2]),
            text(&args[3])
        ),
        ("SET", "", "1", "")
    );
    let stored = &args[5];
    match envelope::decode(stored, 1 << 20) {
        Ok(envelope::Decoded::State { value, .. }) => assert_eq!(value, b"hello world"),
        other => panic!("{other:?}"),
    }
    assert_eq!(text(&args[6]), "5");
    // No expiry given: the rule's default, relative.
    assert_eq!((text(&args[7]), text(&args[8])), ("PX", "60000"));
    // Nothing cached yet: no delta, no predicted version.
    assert!(args[9].is_empty() && args[10].is_empty());
    assert_eq!(text(&args[11]), "0");
    assert!(
        matches!(t, Transform::Write { shape: WriteShape::Old, ref notes, .. } if notes.len() == 1)
    );

    // Each write command's shape and condition.
    for (args, cond, shape) in [
        (&["SETNX", "s:1", "v"][..], "NX", WriteShape::Int),
        (&["GETSET", "s:1", "v"], "", WriteShape::Old),
        (&["SETEX", "s:1", "5", "v"], "", WriteShape::Ok),
        (&["SET", "s:1", "v", "XX"], "XX", WriteShape::OkOrNil),
    ] {
        let (_, _, a, t) = script(plan_s(&e, args));
        assert_eq!(text(&a[1]), cond, "{args:?}");
        assert!(
            matches!(t, Transform::Write { shape: s, .. } if s == shape),
            "{args:?}"
        );
    }
    // KEEPTTL and absolute expiries.
    let (_, _, a, _) = script(plan(&e, &[b"SET", b"s:1", b"v", b"KEEPTTL"]));
    assert_eq!(text(&a[7]), "KEEPTTL");
    let at = (now_ms() / 1000 + 100).to_string();
    let (_, _, a, _) = script(plan(&e, &[b"SET", b"s:1", b"v", b"EXAT", at.as_bytes()]));
    assert_eq!(
        (text(&a[7]), text(&a[8])),
        ("PXAT", format!("{at}000").as_str())
    );
    // A rule without versioning: no history key, window 0.
    let (_, keys, a, _) = script(plan(&e, &[b"SET", b"n:1", b"v"]));
    assert_eq!(keys[0], keys[1]);
    assert_eq!(text(&a[6]), "0");
}

#[test]
fn a_cached_value_makes_the_next_write_a_delta_with_the_header_it_needs() {
    let e = engine();
    let old = crate::state::sample::agent_session_json(1, 8000);
    let mut new = old.clone();
    new.extend_from_slice(b" and one more step");
    // What a GET of version 7 would leave in the cache.
    let stored = envelope::encode(&old, Codec::Zstd, 64, 111, 7);
    let key = Bytes::from_static(b"s:c");
    let frame = envelope::decode_bulk(&stored, 1 << 20)
        .ok()
        .flatten()
        .map(|(f, _)| f)
        .unwrap_or_else(|| panic!("frame"));
    e.remember(&key, &stored, frame.clone());
    // A GET of the key while it holds that value is answered from the cache.
    assert_eq!(e.cached_frame(b"s:c", &stored), Some(frame));
    let (_, _, a, _) = script(plan(&e, &[b"SET", b"s:c", &new]));
    assert_eq!(
        &a[9][..],
        &stored[..envelope::HEADER_LEN],
        "the base header"
    );
    assert_eq!(text(&a[11]), "8", "stamped with the version it will get");
    let meta = envelope::inspect(&a[5])
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("meta"));
    assert_eq!(meta.version, 8);
    // The delta is version 7 against the new value, with 7's original time.
    let delta = &a[10];
    let dm = envelope::inspect(delta)
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("meta"));
    assert_eq!((dm.version, dm.timestamp_ms), (7, 111));
    assert_eq!(dm.base.map(|b| b.version), Some(8));
    let refs = envelope::Refs {
        base: Some(&new),
        dict: None,
    };
    assert!(matches!(
        envelope::decode_with(delta, 1 << 20, refs),
        Ok(envelope::Decoded::State { value, .. }) if value == old
    ));
    // A write pipelined right behind finds the new value cached: version 9 against 8.
    let (_, _, a2, _) = script(plan(&e, &[b"SET", b"s:c", b"third"]));
    assert_eq!(&a2[9][..], &a[5][..envelope::HEADER_LEN]);
    assert_eq!(text(&a2[11]), "9");
    // DEL forgets it.
    let _ = plan(&e, &[b"DEL", b"s:c"]);
    let (_, _, a3, _) = script(plan(&e, &[b"SET", b"s:c", b"fourth"]));
    assert!(a3[9].is_empty() && a3[10].is_empty());
}

#[test]
fn multi_key_writes_keep_plain_keys_plain() {
    let e = engine();
    let (kind, keys, args, t) = script(plan(&e, &[b"MSET", b"plain", b"p", b"s:1", b"v"]));
    assert_eq!(kind, ScriptKind::Write);
    assert_eq!(keys.len(), 4);
    assert_eq!(keys[0], keys[1], "a plain key has no history");
    assert_eq!(&args[5][..], b"p", "stored as written");
    assert_eq!(text(&args[6]), "0");
    assert!(matches!(
        t,
        Transform::Write {
            shape: WriteShape::Ok,
            ..
        }
    ));
    let (_, _, args, t) = script(plan(&e, &[b"MSETNX", b"s:1", b"v"]));
    assert_eq!(text(&args[0]), "MSETNX");
    assert!(matches!(
        t,
        Transform::Write {
            shape: WriteShape::Int,
            ..
        }
    ));
    assert!(plan(&e, &[b"MSET", b"a", b"1", b"b", b"2"]).is_none());
    assert!(
        plan(&e, &[b"MSET", b"s:1"]).is_none(),
        "arity: Redis answers"
    );
    assert!(plan(&e, &[b"MSET", b"s:1", b"v", b"s:2"]).is_none());
}

#[test]
fn deletes_and_expiry_commands_carry_the_histories() {
    let e = engine();
    let (kind, keys, args, _) = script(plan(&e, &[b"DEL", b"s:1", b"plain", b"n:1", b"s:2"]));
    assert_eq!(kind, ScriptKind::Delete);
    // The client's keys, then the histories of the versioned ones only.
    assert_eq!(keys.len(), 4 + 2);
    assert_eq!(&keys[4][..], b"__statecar:h:{s:1}");
    assert_eq!((text(&args[0]), text(&args[1])), ("DEL", "4"));
    assert!(plan(&e, &[b"UNLINK", b"plain", b"n:1"]).is_none());
    for c in ["EXPIRE", "PEXPIRE", "EXPIREAT", "PEXPIREAT"] {
        let (kind, keys, args, _) = script(plan_s(&e, &[c, "s:1", "100"]));
        assert_eq!(kind, ScriptKind::KeyThenSync);
        assert_eq!(keys.len(), 2);
        assert_eq!(&args[0][..], c.as_bytes());
    }
    let (kind, _, _, _) = script(plan(&e, &[b"PERSIST", b"s:1"]));
    assert_eq!(kind, ScriptKind::KeyThenSync);
    assert!(
        plan(&e, &[b"EXPIRE", b"n:1", b"100"]).is_none(),
        "no history to follow"
    );
    let (kind, _, args, t) = script(plan(&e, &[b"GETEX", b"s:1", b"EX", b"9"]));
    assert_eq!(kind, ScriptKind::KeyThenSync);
    assert_eq!(args.len(), 3);
    assert!(matches!(t, Transform::Value { .. }));
    assert!(plan(&e, &[b"GETDEL", b"s:1", b"x"]).is_none());
}

#[test]
fn commands_that_would_misread_the_envelope_are_refused() {
    let e = engine();
    for args in [
        &["APPEND", "s:1", "x"][..],
        &["INCR", "s:1"],
        &["SETRANGE", "s:1", "0", "x"],
        &["OBJECT", "ENCODING", "s:1"],
        &["RENAME", "plain", "s:1"],
        &["BITOP", "AND", "dest", "plain", "s:1"],
    ] {
        let (reject, msg) = error_of(plan_s(&e, args));
        assert!(reject, "{args:?}: a queueing error, so MULTI aborts");
        assert!(
            msg.contains("is not supported on state key 's:1'"),
            "{args:?}: {msg}"
        );
    }
    assert!(plan(&e, &[b"APPEND", b"plain", b"x"]).is_none());
    assert!(plan(&e, &[b"OBJECT", b"ENCODING", b"plain"]).is_none());
}

#[test]
fn state_commands_parse_their_options() {
    let e = engine();
    let ps = |args: &[&str]| {
        let a: Vec<&[u8]> = args.iter().map(|s| s.as_bytes()).collect();
        e.plan_state(&cmd(&a))
    };
    // STATE.SAVE: VERSION, TAGS (up to the next option), EX.
    let (_, _, a, t) = script(Some(ps(&[
        "STATE.SAVE",
        "s:1",
        "v",
        "TAGS",
        "a",
        "b c",
        "EX",
        "30",
        "VERSION",
        "4",
    ])));
    assert_eq!(text(&a[3]), "4");
    assert_eq!(text(&a[4]), "1:a3:b c");
    assert_eq!((text(&a[7]), text(&a[8])), ("PX", "30000"));
    assert!(matches!(
        t,
        Transform::Write {
            shape: WriteShape::Version,
            ..
        }
    ));
    for (args, want) in [
        (&["STATE.SAVE", "s:1"][..], "wrong number of arguments"),
        (
            &["STATE.SAVE", "s:1", "v", "VERSION", "0"],
            "must be a positive integer",
        ),
        (&["STATE.SAVE", "s:1", "v", "FOO"], "syntax error"),
        (&["STATE.SAVE", "n:1", "v"], "keeps no versions"),
        (&["STATE.SAVE", "plain", "v"], "is not a state key"),
        (&["STATE.LOAD", "s:1", "VERSION", "x"], "not an integer"),
        (&["STATE.LOAD", "s:1", "REVISION", "1"], "syntax error"),
        (&["STATE.LOAD", "n:1", "VERSION", "1"], "keeps no versions"),
        (&["STATE.VERSIONS"], "wrong number of arguments"),
        (&["STATE.ROLLBACK", "s:1", "-1"], "not an integer"),
        (&["STATE.DELVERSION", "n:1", "1"], "keeps no versions"),
        (&["STATE.LIST", "0", "COUNT", "0"], "not an integer"),
        (&["STATE.STATS", "x"], "wrong number of arguments"),
        (&["STATE.TRAIN", "s:1"], "has no dictionary"),
        (&["STATE.TRAIN", "d:1", "SAMPLES", "5"], "SAMPLES must be"),
        (&["STATE.NOPE"], "unknown command"),
    ] {
        let (_, msg) = error_of(Some(ps(args)));
        assert!(msg.contains(want), "{args:?}: {msg}");
    }
    let (kind, keys, a, t) = script(Some(ps(&["STATE.LOAD", "s:1", "VERSION", "3"])));
    assert_eq!(
        (kind, keys.len(), text(&a[0]), text(&a[1])),
        (ScriptKind::Load, 2, "3", "5")
    );
    assert!(matches!(t, Transform::Load { .. }));
    let (kind, _, a, t) = script(Some(ps(&["STATE.ROLLBACK", "s:1", "2"])));
    assert_eq!((kind, text(&a[0])), (ScriptKind::Rollback, "2"));
    assert!(
        matches!(t, Transform::Rollback { .. }),
        "finished on the reply path"
    );
    let (kind, _, _, t) = script(Some(ps(&["STATE.DELVERSION", "s:1", "2"])));
    assert_eq!(kind, ScriptKind::DelVersion);
    assert!(matches!(t, Transform::Passthrough));
    // STATE.LIST: a SCAN with the client's pattern (there are three rules here).
    match ps(&["STATE.LIST", "7", "MATCH", "s:*", "COUNT", "9"]) {
        Plan::Send { raw, .. } => assert_eq!(
            raw,
            cmd(&[
                b"SCAN", b"7", b"MATCH", b"s:*", b"COUNT", b"9", b"TYPE", b"string"
            ])
            .raw()
            .clone()
        ),
        other => panic!("{other:?}"),
    }
    match ps(&["STATE.TRAIN", "d:1", "SAMPLES", "50"]) {
        Plan::Send { raw, pending } => {
            let scan: &[&[u8]] = &[
                b"SCAN", b"0", b"MATCH", b"d:*", b"COUNT", b"1000", b"TYPE", b"string",
            ];
            assert_eq!(raw, cmd(scan).raw().clone());
            assert!(matches!(
                pending.transform,
                Transform::Train { samples: 50, .. }
            ));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn only_large_writes_to_state_keys_are_planned_off_thread() {
    let e = engine();
    let big = vec![b'x'; HEAVY_VALUE];
    assert!(e.plan_is_heavy(&cmd(&[b"SET", b"s:1", &big])));
    assert!(!e.plan_is_heavy(&cmd(&[b"SET", b"plain", &big])));
    assert!(!e.plan_is_heavy(&cmd(&[b"SET", b"s:1", b"small"])));
    assert!(e.plan_is_heavy(&cmd(&[b"MSET", b"plain", b"x", b"s:1", &big])));
    assert!(!e.plan_is_heavy(&cmd(&[b"MSET", b"plain", &big])));
    assert!(!e.plan_is_heavy(&cmd(&[b"GET", b"s:1"])));
    // The value of SETEX comes after the seconds.
    assert!(e.plan_is_heavy(&cmd(&[b"SETEX", b"s:1", b"60", &big])));
    // lz4 without a delta history costs about a copy: off-thread only from 256 KiB.
    assert!(!e.plan_is_heavy(&cmd(&[b"SET", b"n:1", &big])));
    assert!(!e.plan_is_heavy(&cmd(&[b"MSET", b"n:1", &big, b"s:1", b"small"])));
    let huge = vec![b'x'; HEAVY_FAST_VALUE];
    assert!(e.plan_is_heavy(&cmd(&[b"SET", b"n:1", &huge])));
    assert!(e.plan_is_heavy(&cmd(&[b"MSET", b"s:1", b"small", b"n:1", &huge])));
}
