//! STATE.RULE: the rule that decides a key, as clients (the Python package) read it to check
//! that statecar does what they were configured for.

mod common;

use common::*;

const RULES: &str = r#"
[[state]]
pattern = "state:*"
compression = "zlib"
versioning = true
max_versions = 25
default_ttl_s = 90
on_corruption = "previous_version"

[[state]]
pattern = "plain:*"
compression = "none"
min_size = 0
versioning = false
"#;

fn int_of(f: &Frame) -> i64 {
    match f {
        Frame::Int(n) => *n,
        other => panic!("expected an integer, got {other:?}"),
    }
}

#[tokio::test]
async fn state_rule_reports_the_matching_rule_in_resp2_and_resp3() {
    let (_redis, sc) = start_pair(RULES);
    let mut c = RawConn::connect(sc.port()).await;

    let r = c.cmd(&["STATE.RULE", "state:abc"]).await;
    assert!(matches!(r, Frame::Array(_)), "RESP2 flat array: {r:?}");
    let keys: Vec<String> = r.pairs().iter().map(|(k, _)| k.text()).collect();
    assert_eq!(
        keys,
        [
            "pattern",
            "index",
            "compression",
            "min_size",
            "versioning",
            "max_versions",
            "default_ttl_s",
            "on_corruption"
        ]
    );
    assert_eq!(r.get("pattern"), Some(bulk("state:*")));
    assert_eq!(r.get("index").as_ref().map(int_of), Some(0));
    assert_eq!(r.get("compression"), Some(bulk("zlib")));
    assert_eq!(r.get("min_size").as_ref().map(int_of), Some(64));
    assert_eq!(r.get("versioning").as_ref().map(int_of), Some(1));
    assert_eq!(r.get("max_versions").as_ref().map(int_of), Some(25));
    assert_eq!(r.get("default_ttl_s").as_ref().map(int_of), Some(90));
    assert_eq!(r.get("on_corruption"), Some(bulk("previous_version")));

    let r = c.cmd(&["state.rule", "plain:x"]).await;
    assert_eq!(r.get("index").as_ref().map(int_of), Some(1));
    assert_eq!(r.get("compression"), Some(bulk("none")));
    assert_eq!(r.get("min_size").as_ref().map(int_of), Some(0));
    assert_eq!(r.get("versioning").as_ref().map(int_of), Some(0));
    assert_eq!(r.get("default_ttl_s").as_ref().map(int_of), Some(-1));
    assert_eq!(r.get("on_corruption"), Some(bulk("error")));

    // No rule: nil, and statecar's own keys are never state keys.
    assert_eq!(c.cmd(&["STATE.RULE", "other"]).await, Frame::NullBulk);
    assert_eq!(
        c.cmd(&["STATE.RULE", "__statecar:h:{state:abc}"]).await,
        Frame::NullBulk
    );

    // Arity, with Redis's wording.
    assert_eq!(
        c.cmd(&["STATE.RULE"]).await,
        err("ERR wrong number of arguments for 'state.rule' command")
    );
    assert_eq!(
        c.cmd(&["STATE.RULE", "a", "b"]).await,
        err("ERR wrong number of arguments for 'state.rule' command")
    );

    // RESP3: a map, and a null for no rule.
    assert!(matches!(c.cmd(&["HELLO", "3"]).await, Frame::Map(_)));
    let r = c.cmd(&["STATE.RULE", "state:abc"]).await;
    assert!(matches!(r, Frame::Map(_)), "RESP3 map: {r:?}");
    assert_eq!(r.get("max_versions").as_ref().map(int_of), Some(25));
    assert_eq!(c.cmd(&["STATE.RULE", "other"]).await, Frame::Null);
}

#[tokio::test]
async fn state_rule_keeps_its_place_in_pipelines_and_transactions() {
    let (_redis, sc) = start_pair(RULES);
    let mut c = RawConn::connect(sc.port()).await;

    let mut batch = Vec::new();
    batch.extend(encode(&["SET", "state:1", "v"]));
    batch.extend(encode(&["STATE.RULE", "state:1"]));
    batch.extend(encode(&["GET", "state:1"]));
    c.send(&batch).await;
    let replies = c.read_n(3).await;
    assert_eq!(replies[0], ok());
    assert_eq!(replies[1].get("pattern"), Some(bulk("state:*")));
    assert_eq!(replies[2], bulk("v"));

    assert_eq!(c.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        c.cmd(&["STATE.RULE", "plain:1"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["GET", "state:1"]).await,
        Frame::Simple("QUEUED".into())
    );
    match c.cmd(&["EXEC"]).await {
        Frame::Array(items) => {
            assert_eq!(items.len(), 2);
            assert_eq!(items[0].get("pattern"), Some(bulk("plain:*")));
            assert_eq!(items[1], bulk("v"));
        }
        other => panic!("EXEC: {other:?}"),
    }
}
