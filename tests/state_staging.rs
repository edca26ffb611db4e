//! Big state values are uploaded to a private staging key before their write script, which
//! renames them into place (src/session/stage.rs): Redis never hands their bytes to Lua.
//! What a client sees must not change: the value, the history, every SET option and expiry,
//! and nothing of statecar's left behind in Redis.
//!
//! Each test runs its own redis-server and statecar (tests/common). No timed assertions.

mod common;

use common::*;

macro_rules! args {
    ($($x:expr),* $(,)?) => {
        Vec::<Vec<u8>>::from([$(AsRef::<[u8]>::as_ref(&$x).to_vec()),*])
    };
}

const RULES: &str = r#"
[[state]]
pattern = "big:*"
compression = "zstd"
versioning = true
max_versions = 5

[[state]]
pattern = "flat:*"
compression = "lz4"
"#;

/// Every bulk string in a reply, depth first.
fn strings(f: &Frame, out: &mut Vec<String>) {
    match f {
        Frame::Bulk(b) => out.push(String::from_utf8_lossy(b).into_owned()),
        Frame::Array(items) => items.iter().for_each(|i| strings(i, out)),
        Frame::Map(pairs) => pairs.iter().for_each(|(k, v)| {
            strings(k, out);
            strings(v, out);
        }),
        _ => {}
    }
}

async fn staged(p: &mut RawConn) -> i64 {
    let stats = p.cmd(&["STATE.STATS"]).await;
    as_int(
        &stats
            .get("values_staged")
            .expect("values_staged in STATE.STATS"),
    )
}

/// statecar's staging keys left in Redis.
async fn leftovers(d: &mut RawConn) -> Frame {
    d.cmd(&["KEYS", "__statecar:s:*"]).await
}

/// How many times Redis ran `cmd`, from INFO commandstats.
async fn calls(d: &mut RawConn, cmd: &str) -> i64 {
    let info = d.cmd(&["INFO", "commandstats"]).await.text();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a count"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_values_are_renamed_into_place_and_read_back_with_their_history() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    // Random bytes: zstd cannot shrink them, so each is stored in about its own length.
    let values: Vec<Vec<u8>> = (0..4).map(|i| pseudo_random_bytes(i, 200_000)).collect();
    for v in &values {
        assert_eq!(p.cmd(&args!["SET", "big:a", v]).await, ok());
    }
    assert_eq!(staged(&mut p).await, 4);
    assert_eq!(calls(&mut d, "rename").await, 4);
    assert!(p.cmd(&["GET", "big:a"]).await == bulk(&values[3]), "GET");
    for (i, v) in values.iter().enumerate() {
        let r = p
            .cmd(&["STATE.LOAD", "big:a", "VERSION", &(i + 1).to_string()])
            .await;
        assert!(r.get("value") == Some(bulk(v)), "version {}", i + 1);
    }
    // SET ... GET answers the value it replaced, decoded.
    let next = pseudo_random_bytes(9, 200_000);
    assert!(p.cmd(&args!["SET", "big:a", next, "GET"]).await == bulk(&values[3]));
    // A rule without history stages too; a small value never does.
    let flat = pseudo_random_bytes(5, 100_000);
    assert_eq!(p.cmd(&args!["SET", "flat:x", flat]).await, ok());
    assert!(p.cmd(&["GET", "flat:x"]).await == bulk(&flat));
    assert_eq!(p.cmd(&["SET", "big:small", "tiny"]).await, ok());
    assert_eq!(staged(&mut p).await, 6);
    assert_eq!(leftovers(&mut d).await, Frame::Array(vec![]));
    let (ok, report) = statecar_verify(&sc);
    assert!(ok, "{report}");
}

/// Expiry options and conditions behave as they do without staging (and as SET does in
/// Redis), and a write that does not happen leaves no upload behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_write_keeps_every_set_option_and_leaves_nothing_behind() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let v = |i| pseudo_random_bytes(i, 150_000);
    let hist = "__statecar:h:{big:t}";

    assert_eq!(p.cmd(&args!["SET", "big:t", v(1), "EX", "100"]).await, ok());
    let ttl = as_int(&d.cmd(&["PTTL", "big:t"]).await);
    assert!(ttl > 90_000 && ttl <= 100_000, "EX 100: {ttl}");
    // The second write moves version 1 into the history, which follows the key's expiry.
    assert_eq!(p.cmd(&args!["SET", "big:t", v(2), "KEEPTTL"]).await, ok());
    let kept = as_int(&d.cmd(&["PTTL", "big:t"]).await);
    assert!(kept > 0 && kept <= ttl, "KEEPTTL: {kept} after {ttl}");
    assert!(as_int(&d.cmd(&["PTTL", hist]).await) > 0, "history TTL");
    assert_eq!(p.cmd(&args!["SET", "big:t", v(3)]).await, ok());
    assert_eq!(
        d.cmd(&["PTTL", "big:t"]).await,
        int(-1),
        "plain SET clears the TTL"
    );
    assert_eq!(d.cmd(&["PTTL", hist]).await, int(-1));
    assert_eq!(
        p.cmd(&args!["SET", "big:t", v(4), "PX", "50000"]).await,
        ok()
    );
    let px = as_int(&d.cmd(&["PTTL", "big:t"]).await);
    assert!(px > 40_000 && px <= 50_000, "PX: {px}");

    // Conditions that refuse the write: the reply Redis gives, the key unchanged.
    assert_eq!(
        p.cmd(&args!["SET", "big:t", v(5), "NX"]).await,
        Frame::NullBulk
    );
    assert_eq!(
        p.cmd(&args!["SET", "big:none", v(6), "XX"]).await,
        Frame::NullBulk
    );
    let refused = p
        .cmd(&args!["STATE.SAVE", "big:t", v(7), "VERSION", "2"])
        .await;
    assert!(
        refused
            .error_text()
            .is_some_and(|e| e.starts_with("STATEVERSION")),
        "{refused:?}"
    );
    assert!(p.cmd(&["GET", "big:t"]).await == bulk(v(4)));
    assert_eq!(d.cmd(&["EXISTS", "big:none"]).await, int(0));
    assert_eq!(leftovers(&mut d).await, Frame::Array(vec![]));
    assert_eq!(staged(&mut p).await, 7);

    // An absolute expiry in the past deletes the key, as SET does in Redis.
    assert_eq!(d.cmd(&["SET", "direct", "x", "PXAT", "1"]).await, ok());
    assert_eq!(d.cmd(&["EXISTS", "direct"]).await, int(0));
    assert_eq!(p.cmd(&args!["SET", "big:t", v(8), "PXAT", "1"]).await, ok());
    assert_eq!(d.cmd(&["EXISTS", "big:t"]).await, int(0));
    assert_eq!(leftovers(&mut d).await, Frame::Array(vec![]));
    drop(sc);
}

/// The write script refuses a staging key that is gone (evicted, or expired because Redis
/// stalled) and writes nothing: called here directly, as statecar calls it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_script_refuses_an_upload_that_is_gone() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let first = pseudo_random_bytes(1, 100_000);
    assert_eq!(p.cmd(&args!["SET", "big:g", first]).await, ok());
    let mut names = Vec::new();
    strings(&d.cmd(&["FUNCTION", "LIST"]).await, &mut names);
    let lib = names
        .into_iter()
        .find(|w| w.starts_with("statecar_") && w.ends_with("_write"))
        .expect("statecar's write function is loaded");
    let hist = "__statecar:h:{big:g}";
    let stage = "__statecar:s:{big:g}:gone";
    let r = d
        .cmd(&[
            "FCALL", &lib, "3", "big:g", hist, stage, "SET", "", "0", "", "", "", "5", "", "", "",
            "", "0",
        ])
        .await;
    assert!(
        r.error_text()
            .is_some_and(|e| e.contains("uploaded value of big:g was gone")),
        "{r:?}"
    );
    assert!(p.cmd(&["GET", "big:g"]).await == bulk(&first));
    assert_eq!(d.cmd(&["HGET", hist, "last"]).await, Frame::NullBulk);
    drop(sc);
}

/// A client whose ACL user may not RENAME still writes big values: the function reads the
/// upload instead of renaming it (and deletes it), so the write is what it was without staging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_who_may_not_rename_still_writes_big_values() {
    let (redis, sc) = start_pair(RULES);
    let mut d = RawConn::connect(redis.port()).await;
    let setuser = [
        "ACL", "SETUSER", "agent", "on", ">pw", "~*", "+@all", "-rename",
    ];
    assert_eq!(d.cmd(&setuser).await, ok());
    let mut p = RawConn::connect(sc.port()).await;
    assert_eq!(p.cmd(&["AUTH", "agent", "pw"]).await, ok());
    let values: Vec<Vec<u8>> = (0..3)
        .map(|i| pseudo_random_bytes(20 + i, 120_000))
        .collect();
    for v in &values {
        assert_eq!(p.cmd(&args!["SET", "big:acl", v, "EX", "100"]).await, ok());
    }
    assert_eq!(calls(&mut d, "rename").await, 0);
    assert_eq!(staged(&mut p).await, 3);
    assert!(p.cmd(&["GET", "big:acl"]).await == bulk(&values[2]));
    let r = p.cmd(&["STATE.LOAD", "big:acl", "VERSION", "1"]).await;
    assert!(r.get("value") == Some(bulk(&values[0])), "version 1");
    let ttl = as_int(&d.cmd(&["PTTL", "big:acl"]).await);
    assert!(ttl > 90_000 && ttl <= 100_000, "EX 100: {ttl}");
    assert_eq!(leftovers(&mut d).await, Frame::Array(vec![]));
    drop(sc);
}

/// A client's earlier commands run before its upload, as they run before its write: a
/// pipelined FLUSHDB (or SWAPDB, or a DEL of statecar's keys) ahead of a big write must not
/// drop the upload that write needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_write_pipelined_behind_flushdb_finds_its_upload() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let value = pseudo_random_bytes(40, 150_000);
    // The FLUSHDB and the second write arrive while statecar uploads the first one's value, so
    // they are parsed together, the write right behind the FLUSHDB.
    for _ in 0..3 {
        let mut all = encode(&args!["SET", "big:e", value]);
        all.extend_from_slice(&encode(&["FLUSHDB"]));
        all.extend_from_slice(&encode(&args!["SET", "big:f", value]));
        p.send(&all).await;
        assert_eq!(p.read().await, ok(), "the first write");
        assert_eq!(p.read().await, ok(), "FLUSHDB");
        assert_eq!(p.read().await, ok(), "the write behind it");
    }
    assert_eq!(staged(&mut p).await, 6);
    assert!(p.cmd(&["GET", "big:f"]).await == bulk(&value));
    assert_eq!(leftovers(&mut d).await, Frame::Array(vec![]));
    drop(sc);
}
