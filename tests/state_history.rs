//! Delta histories and trained dictionaries end to end (format 2): every version decodes and
//! verifies on its own terms through statecar and without it, whatever the interleaving of
//! writers; histories and values written by format 1 keep working; dictionaries are trained,
//! stored in Redis and found again by another process.
//!
//! Each test runs its own redis-server and statecar (tests/common). No timed assertions.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::agent_data::{Checkpoints, small_document};
use common::*;
use statecar::state::codec::Codec;
use statecar::state::envelope;

macro_rules! args {
    ($($x:expr),* $(,)?) => {
        Vec::<Vec<u8>>::from([$(AsRef::<[u8]>::as_ref(&$x).to_vec()),*])
    };
}

fn hist(key: &str) -> String {
    format!("__statecar:h:{{{key}}}")
}

fn as_bytes(f: &Frame) -> Vec<u8> {
    match f {
        Frame::Bulk(b) => b.clone(),
        other => panic!("expected a bulk string, got {}", brief(other)),
    }
}

fn brief(f: &Frame) -> String {
    match f {
        Frame::Bulk(b) if b.len() > 100 => format!("Bulk({} bytes)", b.len()),
        other => format!("{other:?}"),
    }
}

/// The value of STATE.LOAD key VERSION v (None: no such version).
async fn load(p: &mut RawConn, key: &str, v: u64) -> Option<Vec<u8>> {
    let r = p.cmd(&["STATE.LOAD", key, "VERSION", &v.to_string()]).await;
    match r {
        Frame::NullBulk | Frame::Null => None,
        r => {
            Some(as_bytes(&r.get("value").unwrap_or_else(|| {
                panic!("STATE.LOAD {key} {v}: {}", brief(&r))
            })))
        }
    }
}

async fn versions(p: &mut RawConn, key: &str) -> Vec<i64> {
    match p.cmd(&["STATE.VERSIONS", key]).await {
        Frame::Array(items) => items
            .iter()
            .map(|e| as_int(&e.get("version").unwrap_or(Frame::Null)))
            .collect(),
        other => panic!("STATE.VERSIONS {key}: {other:?}"),
    }
}

/// STATE.VERSIONS's (version, intact) pairs, after checking that `intact` says exactly which
/// versions STATE.LOAD can read.
async fn intact_flags(p: &mut RawConn, key: &str) -> Vec<(i64, bool)> {
    let entries = match p.cmd(&["STATE.VERSIONS", key]).await {
        Frame::Array(items) => items,
        other => panic!("STATE.VERSIONS {key}: {other:?}"),
    };
    let mut flags = Vec::new();
    for e in entries {
        let v = as_int(&e.get("version").unwrap_or(Frame::Null));
        let intact = as_int(&e.get("intact").unwrap_or(Frame::Null)) == 1;
        let r = p.cmd(&["STATE.LOAD", key, "VERSION", &v.to_string()]).await;
        assert_eq!(
            intact,
            !r.is_error(),
            "{key} version {v}: intact {intact}, STATE.LOAD {}",
            brief(&r)
        );
        flags.push((v, intact));
    }
    flags
}

async fn mem(d: &mut RawConn, key: &str) -> i64 {
    as_int(&d.cmd(&["MEMORY", "USAGE", key, "SAMPLES", "0"]).await)
}

/// The history hash's field `f` as stored, if any.
async fn field(d: &mut RawConn, key: &str, f: &str) -> Option<Vec<u8>> {
    match d.cmd(&["HGET", &hist(key), f]).await {
        Frame::Bulk(b) => Some(b),
        _ => None,
    }
}

/// The checkpoints of one session, steps 1..=n.
fn session(seed: u64, n: usize) -> Vec<Vec<u8>> {
    let mut c = Checkpoints::new(seed);
    (0..n)
        .map(|i| {
            if i > 0 {
                c.step();
            }
            c.checkpoint()
        })
        .collect()
}

struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

async fn run_statecar(args: &[&str]) -> Run {
    let mut cmd = Command::new(statecar_bin());
    for (k, _) in std::env::vars() {
        if k.starts_with("STATECAR_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("statecar {args:?}");
    let out = within(&what, tokio::task::spawn_blocking(move || cmd.output()))
        .await
        .unwrap()
        .expect("run statecar");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `statecar decode KEY --version v` (no proxy) prints `cps[v - 1]` for each of `versions`.
async fn decodes_without_the_proxy(
    url: &str,
    key: &str,
    cps: &[Vec<u8>],
    versions: impl IntoIterator<Item = usize>,
) {
    for v in versions {
        let version = v.to_string();
        let run = run_statecar(&["decode", key, "--version", &version, "--upstream", url]).await;
        assert_eq!(run.code, 0, "decode {key} --version {v}: {}", run.stderr);
        assert!(run.stdout == cps[v - 1], "decode {key} --version {v}");
    }
}

fn verify_clean(sc: &Statecar) -> String {
    let (ok, report) = statecar_verify(sc);
    assert!(ok && report.contains(" 0 problems"), "verify:\n{report}");
    report
}

const RULES: &str = r#"
[[state]]
pattern = "cp:*"
compression = "zstd"
versioning = true
max_versions = 40

[[state]]
pattern = "short:*"
compression = "zstd"
versioning = true
max_versions = 10

[[state]]
pattern = "long:*"
compression = "zstd"
versioning = true
max_versions = 300
delta_chain = 16

[[state]]
pattern = "old:*"
compression = "lz4"
versioning = true
max_versions = 10
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_session_is_kept_as_deltas_and_every_version_reads_back() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let cps = session(3, 40);
    for c in &cps {
        assert_eq!(p.cmd(&args!["SET", "cp:a", c]).await, ok());
    }
    assert_eq!(p.cmd(&["GET", "cp:a"]).await, bulk(&cps[39]));
    assert_eq!(versions(&mut p, "cp:a").await, (1..=40).collect::<Vec<_>>());
    for (i, c) in cps.iter().enumerate() {
        assert!(
            load(&mut p, "cp:a", i as u64 + 1).await.as_deref() == Some(&c[..]),
            "version {}",
            i + 1
        );
    }
    // The key holds the newest whole; each older version is a small delta against the next.
    assert_eq!(
        field(&mut d, "cp:a", "40").await,
        None,
        "never stored twice"
    );
    for v in 1..40 {
        let e = field(&mut d, "cp:a", &v.to_string()).await.expect("entry");
        let meta = envelope::inspect(&e).ok().flatten().expect("header");
        assert_eq!(meta.base.map(|b| b.version), Some(v + 1), "version {v}");
        assert!(e.len() < 2000, "version {v}: {} bytes", e.len());
    }
    // Key and history together take less than one plain copy.
    let stored = mem(&mut d, "cp:a").await + mem(&mut d, &hist("cp:a")).await;
    assert_eq!(d.cmd(&args!["SET", "plain:a", cps[39]]).await, ok());
    let plain = mem(&mut d, "plain:a").await;
    assert!(
        stored < plain,
        "40 versions take {stored} bytes, one plain copy {plain}"
    );

    // Without the proxy: every version decodes and verifies.
    let url = redis.url();
    decodes_without_the_proxy(&url, "cp:a", &cps, [1, 17, 39, 40]).await;
    let run = run_statecar(&["decode", "cp:a", "--versions", "--upstream", &url]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let text = String::from_utf8_lossy(&run.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains(": ok ")).count(),
        40,
        "{text}"
    );
    assert!(
        text.contains("1: ok version 1 ") && text.contains(" delta_of 2"),
        "{text}"
    );
    let report = verify_clean(&sc);
    assert!(report.contains("40 versions checked"), "{report}");

    // A damaged delta fails alone and its own chain, never the newer versions.
    let e20 = field(&mut d, "cp:a", "20").await.expect("entry");
    let mut bad = e20.clone();
    let n = bad.len();
    bad[n - 3] ^= 0x40;
    d.cmd(&args!["HSET", hist("cp:a"), "20", bad]).await;
    for v in [1u64, 19, 20] {
        let r = p
            .cmd(&["STATE.LOAD", "cp:a", "VERSION", &v.to_string()])
            .await;
        assert!(
            r.error_text()
                .is_some_and(|e| e.contains("failed verification")),
            "version {v} reads through the damaged 20: {}",
            brief(&r)
        );
    }
    assert!(load(&mut p, "cp:a", 21).await.as_deref() == Some(&cps[20][..]));
    let (ok, report) = statecar_verify(&sc);
    assert!(!ok && report.contains("version 20 DAMAGED"), "{report}");
}

/// A checkpoint of more than 2 MiB is compressed one chunk per zstd frame, and its next
/// version copies the frames of the chunks that did not change (STATE.STATS
/// `chunk_bytes_reused`): every version still reads back, decodes without the proxy (the
/// payload is standard concatenated frames) and verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_checkpoints_reuse_their_unchanged_chunks_and_every_version_reads_back() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let mut c = Checkpoints::new(11);
    while c.checkpoint().len() < 3 << 20 {
        c.advance(200);
    }
    let cps: Vec<Vec<u8>> = (0..4)
        .map(|_| {
            c.step();
            c.checkpoint()
        })
        .collect();
    for cp in &cps {
        assert_eq!(p.cmd(&args!["SET", "cp:big", cp]).await, ok());
    }
    assert!(p.cmd(&["GET", "cp:big"]).await == bulk(&cps[3]), "GET");
    for (i, cp) in cps.iter().enumerate() {
        assert!(
            load(&mut p, "cp:big", i as u64 + 1).await.as_deref() == Some(&cp[..]),
            "version {}",
            i + 1
        );
    }
    // Writes 2 to 4 each found most of their chunks in the version before.
    let stats = p.cmd(&["STATE.STATS"]).await;
    let reused = as_int(&stats.get("chunk_bytes_reused").expect("stat"));
    let later: i64 = cps[1..].iter().map(|c| c.len() as i64).sum();
    assert!(
        reused > later / 2 && reused <= later,
        "{reused} of {later} bytes reused"
    );
    // What Redis holds is an ordinary envelope: this library decodes it, as does
    // `statecar decode` for every version.
    let stored = as_bytes(&d.cmd(&["GET", "cp:big"]).await);
    match envelope::decode(&stored, 64 << 20) {
        Ok(envelope::Decoded::State { value, .. }) => assert!(value == cps[3], "decoded"),
        other => panic!("not a state value: {:?}", other.map(|_| ())),
    }
    // The older versions are chunk maps of the next newer one (format 2, flags 0x0005:
    // delta and chunk map), a small fraction of the value.
    for v in 1..=3 {
        let entry = as_bytes(&d.cmd(&["HGET", &hist("cp:big"), &v.to_string()]).await);
        assert_eq!(
            entry[4..8],
            [2, 3, 0, 5],
            "version {v}: format, codec, flags"
        );
        assert!(
            entry.len() < cps[v - 1].len() / 100,
            "version {v}: {} bytes",
            entry.len()
        );
    }
    let url = redis.url();
    decodes_without_the_proxy(&url, "cp:big", &cps, 1..=4).await;
    let report = verify_clean(&sc);
    assert!(report.contains("4 versions checked"), "{report}");

    // Another statecar writes the key in between: the first one's cached chunks (and delta
    // base) are stale. Its next write may still copy frames of chunks it holds byte for byte,
    // its delta is refused, and every version reads back right, through either proxy. A
    // value read back lends its chunks too.
    let other = Statecar::start(redis.port(), RULES);
    let mut q = RawConn::connect(other.port()).await;
    let more: Vec<Vec<u8>> = (0..3)
        .map(|_| {
            c.step();
            c.checkpoint()
        })
        .collect();
    assert_eq!(q.cmd(&args!["SET", "cp:big", more[0]]).await, ok());
    assert_eq!(p.cmd(&args!["SET", "cp:big", more[1]]).await, ok());
    for conn in [&mut p, &mut q] {
        assert!(conn.cmd(&["GET", "cp:big"]).await == bulk(&more[1]), "GET");
    }
    // The second statecar wrote its version with nothing to copy from; the GET just now
    // taught it the chunks of the value the first one wrote, so its next write copies most.
    let stats = q.cmd(&["STATE.STATS"]).await;
    assert_eq!(as_int(&stats.get("chunk_bytes_reused").expect("stat")), 0);
    assert_eq!(q.cmd(&args!["SET", "cp:big", more[2]]).await, ok());
    let stats = q.cmd(&["STATE.STATS"]).await;
    let reused = as_int(&stats.get("chunk_bytes_reused").expect("stat"));
    assert!(reused > more[2].len() as i64 / 2, "{reused} bytes reused");
    let all: Vec<Vec<u8>> = cps.iter().chain(&more).cloned().collect();
    for conn in [&mut p, &mut q] {
        assert!(conn.cmd(&["GET", "cp:big"]).await == bulk(&all[6]), "GET");
        for (i, cp) in all.iter().enumerate() {
            assert!(
                load(conn, "cp:big", i as u64 + 1).await.as_deref() == Some(&cp[..]),
                "version {}",
                i + 1
            );
        }
    }
    let report = verify_clean(&sc);
    assert!(report.contains("7 versions checked"), "{report}");
}

/// Two statecars, and a client straight on Redis, write one key at once: every base is stale
/// now and then. No version may be torn, lost or numbered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_through_two_statecars_never_tear_a_history() {
    let redis = RedisServer::start();
    let a = Statecar::start(redis.port(), RULES);
    let b = Statecar::start(redis.port(), RULES);
    let values: Vec<Vec<u8>> = session(11, 40);
    // The direct client's writes land among the statecars' writes, never after the last of
    // them, however fast the machine: halfway through, each writer waits for all of them.
    let direct_done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (w, port) in [a.port(), b.port(), a.port(), b.port()]
        .into_iter()
        .enumerate()
    {
        let values = values.clone();
        let direct_done = direct_done.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = RawConn::connect(port).await;
            let mut written = Vec::new();
            for i in 0..60 {
                let mut waited = 0;
                while i == 30 && direct_done.load(std::sync::atomic::Ordering::SeqCst) < 5 {
                    waited += 1;
                    assert!(waited < 2_000, "the direct client's writes never came");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                // Each writer's own variant of the session, so every version is distinct.
                let mut v = values[(i + w * 7) % values.len()].clone();
                v.extend_from_slice(format!(" writer {w} write {i}").as_bytes());
                // Half the time two writes pipelined: the second's base is the first.
                if i % 2 == 0 {
                    let mut v2 = v.clone();
                    v2.extend_from_slice(b" second");
                    let mut bytes = encode(&args!["SET", "cp:shared", v]);
                    bytes.extend(encode(&args!["SET", "cp:shared", v2]));
                    c.send(&bytes).await;
                    assert_eq!(c.read().await, ok());
                    assert_eq!(c.read().await, ok());
                    written.extend([v, v2]);
                } else {
                    assert_eq!(c.cmd(&args!["SET", "cp:shared", v]).await, ok());
                    written.push(v);
                }
            }
            written
        }));
    }
    // Meanwhile a client that bypasses statecar overwrites the key a few times.
    let mut d = RawConn::connect(redis.port()).await;
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(2)).await;
        d.cmd(&args!["SET", "cp:shared", format!("direct {i}")])
            .await;
        direct_done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let mut written = BTreeSet::new();
    for t in tasks {
        written.extend(within("writer", t).await.unwrap());
    }
    let mut p = RawConn::connect(a.port()).await;
    let listed = versions(&mut p, "cp:shared").await;
    let last = *listed.last().expect("versions");
    assert_eq!(
        listed,
        ((last - 39)..=last).collect::<Vec<_>>(),
        "a window without gaps"
    );
    let mut seen = BTreeSet::new();
    for v in listed {
        let value = load(&mut p, "cp:shared", v as u64)
            .await
            .expect("listed version");
        assert!(
            written.contains(&value) || value.starts_with(b"direct "),
            "version {v} is none of the writes"
        );
        assert!(seen.insert(value), "version {v} repeats another");
    }
    // Both statecars read the same, and verify finds nothing wrong.
    let mut q = RawConn::connect(b.port()).await;
    assert_eq!(
        q.cmd(&["GET", "cp:shared"]).await,
        p.cmd(&["GET", "cp:shared"]).await
    );
    verify_clean(&a);
    // Stale bases happened and were stored whole instead; most versions are still deltas.
    let stats = p.cmd(&["STATE.STATS"]).await;
    let deltas = as_int(&stats.get("versions_stored_as_deltas").expect("stat"));
    assert!(deltas > 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delversion_keeps_the_bytes_an_older_delta_needs_and_nothing_longer() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let cps = session(5, 10);
    for c in &cps {
        assert_eq!(p.cmd(&args!["SET", "short:a", c]).await, ok());
    }
    // 4 is a delta against 5: deleting 5 hides it but keeps its bytes for 4.
    assert_eq!(p.cmd(&["STATE.DELVERSION", "short:a", "5"]).await, int(1));
    assert_eq!(load(&mut p, "short:a", 5).await, None);
    assert_eq!(
        versions(&mut p, "short:a").await,
        vec![1, 2, 3, 4, 6, 7, 8, 9, 10]
    );
    assert!(
        field(&mut d, "short:a", "d5").await.is_some(),
        "kept as a base"
    );
    assert!(load(&mut p, "short:a", 4).await.as_deref() == Some(&cps[3][..]));
    assert!(load(&mut p, "short:a", 1).await.as_deref() == Some(&cps[0][..]));
    // 4 reads through the kept bytes of 5: still intact.
    let flags = intact_flags(&mut p, "short:a").await;
    assert!(flags.iter().all(|(_, ok)| *ok), "{flags:?}");
    assert_eq!(p.cmd(&["STATE.DELVERSION", "short:a", "5"]).await, int(0));
    let r = p.cmd(&["STATE.ROLLBACK", "short:a", "5"]).await;
    assert!(r.is_error(), "rollback to a deleted version: {r:?}");
    // Deleting 4 too: 3 reads through 4 and 4 through 5, so both stay as bases.
    assert_eq!(p.cmd(&["STATE.DELVERSION", "short:a", "4"]).await, int(1));
    assert!(
        field(&mut d, "short:a", "d4").await.is_some(),
        "3 still needs 4"
    );
    assert!(
        field(&mut d, "short:a", "d5").await.is_some(),
        "... and 4 needs 5"
    );
    assert!(load(&mut p, "short:a", 3).await.as_deref() == Some(&cps[2][..]));
    let flags = intact_flags(&mut p, "short:a").await;
    assert!(flags.iter().all(|(_, ok)| *ok), "{flags:?}");
    verify_clean(&sc);
    // Deleting 1, 2 and 3: once nothing older reads through them, the kept 4 and 5 go too.
    for v in ["1", "2", "3"] {
        assert_eq!(p.cmd(&["STATE.DELVERSION", "short:a", v]).await, int(1));
    }
    for f in ["d3", "d4", "d5", "3"] {
        assert!(
            field(&mut d, "short:a", f).await.is_none(),
            "{f} outlived its readers"
        );
    }
    assert_eq!(versions(&mut p, "short:a").await, vec![6, 7, 8, 9, 10]);
    assert!(load(&mut p, "short:a", 6).await.as_deref() == Some(&cps[5][..]));
    verify_clean(&sc);
    // The oldest leaving the window takes kept bytes at their own turn.
    let more = session(6, 6);
    for c in &more {
        assert_eq!(p.cmd(&args!["SET", "short:a", c]).await, ok());
    }
    assert_eq!(
        versions(&mut p, "short:a").await,
        (7..=16).collect::<Vec<_>>()
    );
    let names = match d.cmd(&["HKEYS", &hist("short:a")]).await {
        Frame::Array(a) => a.iter().map(Frame::text).collect::<BTreeSet<_>>(),
        other => panic!("{other:?}"),
    };
    assert!(
        !names.iter().any(|n| n.starts_with('d')),
        "kept bases outlived their window: {names:?}"
    );
    // The current version cannot be deleted.
    let r = p.cmd(&["STATE.DELVERSION", "short:a", "16"]).await;
    assert!(r.is_error(), "{r:?}");
    verify_clean(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_a_write_around_statecar_cut_off_are_not_intact() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let cps = session(8, 6);
    for c in &cps[..4] {
        assert_eq!(p.cmd(&args!["SET", "short:b", c]).await, ok());
    }
    let all = |n: std::ops::RangeInclusive<i64>| n.map(|v| (v, true)).collect::<Vec<_>>();
    assert_eq!(intact_flags(&mut p, "short:b").await, all(1..=4));
    // A client writing straight to Redis replaces version 4, which 3 is a delta against (and
    // 2 and 1 through it). The key itself reads as what that client wrote.
    assert_eq!(
        d.cmd(&["SET", "short:b", "written around statecar"]).await,
        ok()
    );
    assert_eq!(
        intact_flags(&mut p, "short:b").await,
        vec![(1, false), (2, false), (3, false), (4, true)]
    );
    // statecar's next writes replace it (a value without an envelope is not kept as a
    // version); the versions after it are sound, the ones before it stay cut off until they
    // leave the window.
    for c in &cps[4..] {
        assert_eq!(p.cmd(&args!["SET", "short:b", c]).await, ok());
    }
    let mut expected = vec![(1, false), (2, false), (3, false)];
    expected.extend(all(5..=6));
    assert_eq!(intact_flags(&mut p, "short:b").await, expected);
    assert_eq!(load(&mut p, "short:b", 4).await, None);
    assert!(load(&mut p, "short:b", 5).await.as_deref() == Some(&cps[4][..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_to_a_delta_writes_it_as_the_newest_version() {
    let (_redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let cps = session(8, 8);
    for c in &cps {
        assert_eq!(p.cmd(&args!["SET", "short:r", c]).await, ok());
    }
    assert_eq!(p.cmd(&["EXPIRE", "short:r", "5000"]).await, int(1));
    // Pipelined: the GET behind the ROLLBACK sees the rolled-back value.
    let mut bytes = encode(&["STATE.ROLLBACK", "short:r", "3"]);
    bytes.extend(encode(&["GET", "short:r"]));
    bytes.extend(encode(&["STATE.LOAD", "short:r", "VERSION", "8"]));
    p.send(&bytes).await;
    assert_eq!(p.read().await, int(9));
    assert_eq!(p.read().await, bulk(&cps[2]));
    let r = p.read().await;
    assert_eq!(
        r.get("value"),
        Some(bulk(&cps[7])),
        "version 8 is now a delta"
    );
    let ttl = as_int(&p.cmd(&["TTL", "short:r"]).await);
    assert!(ttl > 0 && ttl <= 5000, "ROLLBACK keeps the TTL: {ttl}");
    for (v, c) in cps.iter().enumerate() {
        assert!(load(&mut p, "short:r", v as u64 + 1).await.as_deref() == Some(&c[..]));
    }
    assert!(load(&mut p, "short:r", 9).await.as_deref() == Some(&cps[2][..]));
    // A write after the rollback deltas against it as usual.
    assert_eq!(p.cmd(&args!["SET", "short:r", cps[7]]).await, ok());
    assert!(load(&mut p, "short:r", 9).await.as_deref() == Some(&cps[2][..]));
    // Inside MULTI it cannot run (it reads, then writes): an error in its slot, nothing done.
    assert_eq!(p.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        p.cmd(&["STATE.ROLLBACK", "short:r", "2"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(
        p.cmd(&["GET", "short:r"]).await,
        Frame::Simple("QUEUED".into())
    );
    let r = p.cmd(&["EXEC"]).await;
    let Frame::Array(items) = r else {
        panic!("EXEC: {r:?}")
    };
    assert!(
        items[0]
            .error_text()
            .is_some_and(|e| e.contains("cannot run inside MULTI")),
        "{:?}",
        items[0]
    );
    assert_eq!(items[1], bulk(&cps[7]));
    assert_eq!(
        versions(&mut p, "short:r").await,
        (1..=10).collect::<Vec<_>>()
    );
    verify_clean(&sc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_any_of_many_versions_follows_a_bounded_chain() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let mut c = Checkpoints::new(21).keep_last(10);
    let mut cps = Vec::new();
    for i in 0..120 {
        if i > 0 {
            c.step();
        }
        cps.push(c.checkpoint());
        assert_eq!(p.cmd(&args!["SET", "long:a", cps[i]]).await, ok());
    }
    // delta_chain = 16: every 16th version is whole, the others deltas.
    for v in 1..120u64 {
        let e = field(&mut d, "long:a", &v.to_string())
            .await
            .expect("entry");
        let meta = envelope::inspect(&e).ok().flatten().expect("header");
        assert_eq!(meta.base.is_none(), v % 16 == 0, "version {v}");
    }
    for v in [1u64, 2, 15, 16, 17, 100, 119, 120] {
        assert!(
            load(&mut p, "long:a", v).await.as_deref() == Some(&cps[v as usize - 1][..]),
            "version {v}"
        );
    }
    verify_clean(&sc);
}

/// Values and histories written by statecar before format 2 (built here with the format-1
/// encoder that wrote them, in the old layout where the history also held the newest
/// version) keep reading, verifying and rolling back, and new writes continue them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn format_1_histories_keep_reading_verifying_and_rolling_back() {
    let (redis, sc) = start_pair(RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let cps = session(30, 5);
    for (key, codec) in [("short:legacy", Codec::Zstd), ("old:legacy", Codec::Lz4)] {
        let h = hist(key);
        for (i, c) in cps.iter().enumerate() {
            let v = i as u32 + 1;
            // The old write script: the history copy keeps version 0, the key is stamped.
            let entry = envelope::encode(c, codec, 64, 1_700_000_000_000 + u64::from(v), 0);
            assert_eq!(entry[4], 1, "format 1");
            d.cmd(&args![
                "HSET",
                h,
                v.to_string(),
                entry,
                "t".to_string() + &v.to_string(),
                format!("3:old")
            ])
            .await;
        }
        d.cmd(&args!["HSET", h, "last", "5"]).await;
        let key_env = envelope::encode(&cps[4], codec, 64, 1_700_000_000_005, 5);
        assert_eq!(d.cmd(&args!["SET", key, key_env]).await, ok());

        assert_eq!(p.cmd(&["GET", key]).await, bulk(&cps[4]));
        assert_eq!(versions(&mut p, key).await, vec![1, 2, 3, 4, 5]);
        for (i, c) in cps.iter().enumerate() {
            assert!(
                load(&mut p, key, i as u64 + 1).await.as_deref() == Some(&c[..]),
                "{key} v{}",
                i + 1
            );
        }
        let r = p.cmd(&["STATE.LOAD", key]).await;
        assert_eq!(r.get("version"), Some(int(5)));
        assert_eq!(r.get("tags"), Some(bulks(&["old"])));
        // Roll back to a format-1 version, then write on: the history continues in format 2.
        assert_eq!(p.cmd(&["STATE.ROLLBACK", key, "2"]).await, int(6));
        assert_eq!(p.cmd(&["GET", key]).await, bulk(&cps[1]));
        assert_eq!(p.cmd(&args!["SET", key, cps[2]]).await, ok());
        assert_eq!(versions(&mut p, key).await, (1..=7).collect::<Vec<_>>());
        for (v, want) in [(1, &cps[0]), (5, &cps[4]), (6, &cps[1]), (7, &cps[2])] {
            assert!(
                load(&mut p, key, v).await.as_deref() == Some(&want[..]),
                "{key} v{v}"
            );
        }
    }
    verify_clean(&sc);
    let run = run_statecar(&[
        "decode",
        "short:legacy",
        "--versions",
        "--upstream",
        &redis.url(),
    ])
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(String::from_utf8_lossy(&run.stdout).lines().count(), 7);
}

const DICT_RULES: &str = r#"
[[state]]
pattern = "doc:*"
compression = "zstd"
versioning = true
max_versions = 3
dictionary = "auto"

[[state]]
pattern = "nodict:*"
compression = "zstd"
"#;

async fn wait_for_dictionary(d: &mut RawConn) -> String {
    let mut id = String::new();
    eventually("a dictionary was trained and recorded", async || {
        match d.cmd(&["GET", "__statecar:dict:active:doc:*"]).await {
            Frame::Bulk(b) => {
                id = String::from_utf8_lossy(&b).into_owned();
                true
            }
            _ => false,
        }
    })
    .await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dictionaries_are_trained_stored_and_found_again_without_the_proxy() {
    let redis = RedisServer::start();
    let mut sc = Statecar::start(redis.port(), DICT_RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let docs: Vec<Vec<u8>> = (0..600).map(|i| small_document(40, i)).collect();
    for (i, doc) in docs.iter().enumerate().take(400) {
        assert_eq!(p.cmd(&args!["SET", format!("doc:{i}"), doc]).await, ok());
    }
    let id = wait_for_dictionary(&mut d).await;
    let raw = as_bytes(&d.cmd(&["GET", &format!("__statecar:dict:{id}")]).await);
    assert!(raw.len() <= 16 * 1024, "{} bytes", raw.len());
    for (i, doc) in docs.iter().enumerate().skip(400) {
        assert_eq!(p.cmd(&args!["SET", format!("doc:{i}"), doc]).await, ok());
    }
    // New values name the dictionary and are smaller than without it.
    let stored = as_bytes(&d.cmd(&["GET", "doc:599"]).await);
    let meta = envelope::inspect(&stored).ok().flatten().expect("header");
    assert_eq!(meta.dict.map(|x| x.to_string()), Some(id.clone()));
    let plain_zstd = envelope::encode(&docs[599], Codec::Zstd, 0, 0, 0);
    assert!(
        stored.len() < plain_zstd.len(),
        "{} vs {}",
        stored.len(),
        plain_zstd.len()
    );
    for i in [0usize, 399, 400, 599] {
        assert_eq!(p.cmd(&["GET", &format!("doc:{i}")]).await, bulk(&docs[i]));
    }
    // Another statecar, started later, reads them (it fetches the dictionary from Redis), and
    // so does `statecar decode`.
    let other = Statecar::start(redis.port(), DICT_RULES);
    let mut q = RawConn::connect(other.port()).await;
    assert_eq!(q.cmd(&["GET", "doc:599"]).await, bulk(&docs[599]));
    let r = q.cmd(&["STATE.LOAD", "doc:598"]).await;
    assert_eq!(r.get("value"), Some(bulk(&docs[598])));
    let run = run_statecar(&["decode", "doc:599", "--upstream", &redis.url()]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout == docs[599]);
    assert!(
        run.stderr.contains(&format!("dictionary {id}")),
        "{}",
        run.stderr
    );
    verify_clean(&sc);
    // The later statecar picks the dictionary up for its own writes too.
    assert_eq!(q.cmd(&args!["SET", "doc:new", docs[1]]).await, ok());
    eventually(
        "the second statecar writes with the dictionary",
        async || {
            assert_eq!(q.cmd(&args!["SET", "doc:new", docs[2]]).await, ok());
            let s = as_bytes(&d.cmd(&["GET", "doc:new"]).await);
            envelope::inspect(&s)
                .ok()
                .flatten()
                .and_then(|m| m.dict)
                .is_some()
        },
    )
    .await;

    // STATE.TRAIN trains a new one from the stored values on demand.
    let r = p.cmd(&["STATE.TRAIN", "doc:1", "SAMPLES", "300"]).await;
    let new_id = match r {
        Frame::Int(n) => n.to_string(),
        other => panic!("STATE.TRAIN: {other:?}"),
    };
    assert_eq!(
        d.cmd(&["GET", "__statecar:dict:active:doc:*"]).await,
        bulk(&new_id)
    );
    // Both dictionaries stay: values written with the first one still read.
    assert!(matches!(
        d.cmd(&["EXISTS", &format!("__statecar:dict:{id}")]).await,
        Frame::Int(1)
    ));
    assert_eq!(p.cmd(&["GET", "doc:599"]).await, bulk(&docs[599]));
    for (cmd, want) in [
        (args!["STATE.TRAIN", "nodict:1"], "has no dictionary"),
        (args!["STATE.TRAIN", "plain:1"], "is not a state key"),
        (
            args!["STATE.TRAIN", "doc:1", "SAMPLES", "3"],
            "SAMPLES must be",
        ),
        (args!["STATE.TRAIN", "doc:1", "FOO", "3"], "syntax error"),
    ] {
        let r = p.cmd(&cmd).await;
        assert!(
            r.error_text().is_some_and(|e| e.contains(want)),
            "{cmd:?}: {r:?}"
        );
    }
    assert!(p.cmd(&["STATE.TRAIN"]).await.is_error());
    // A statecar killed and started again finds everything where it was.
    signal("-KILL", &sc.pid().to_string());
    let _ = sc.wait_exit(WAIT);
    let again = Statecar::start(redis.port(), DICT_RULES);
    let mut a = RawConn::connect(again.port()).await;
    for i in [0usize, 450, 599] {
        assert_eq!(a.cmd(&["GET", &format!("doc:{i}")]).await, bulk(&docs[i]));
    }
    verify_clean(&again);
}

/// A dictionary a value names but Redis lost (deleted by hand) makes that value an error
/// naming the key, never wrong bytes; other values are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_dictionary_is_a_clear_error() {
    let redis = RedisServer::start();
    let sc = Statecar::start(redis.port(), DICT_RULES);
    let mut p = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    let docs: Vec<Vec<u8>> = (0..300).map(|i| small_document(41, i)).collect();
    for (i, doc) in docs.iter().enumerate() {
        assert_eq!(p.cmd(&args!["SET", format!("doc:{i}"), doc]).await, ok());
    }
    let id = wait_for_dictionary(&mut d).await;
    assert_eq!(p.cmd(&args!["SET", "doc:x", docs[7]]).await, ok());
    let stored = as_bytes(&d.cmd(&["GET", "doc:x"]).await);
    assert!(
        envelope::inspect(&stored)
            .ok()
            .flatten()
            .and_then(|m| m.dict)
            .is_some()
    );
    assert_eq!(
        d.cmd(&["DEL", &format!("__statecar:dict:{id}")]).await,
        int(1)
    );
    // This process still has it loaded; a fresh one does not.
    let other = Statecar::start(redis.port(), DICT_RULES);
    let mut q = RawConn::connect(other.port()).await;
    let r = q.cmd(&["GET", "doc:x"]).await;
    assert!(
        r.error_text()
            .is_some_and(|e| e.contains("doc:x") && e.contains(&format!("dictionary {id}"))),
        "{r:?}"
    );
    assert_eq!(
        q.cmd(&["GET", "doc:0"]).await,
        bulk(&docs[0]),
        "written before training"
    );
    let run = run_statecar(&["decode", "doc:x", "--upstream", &redis.url()]).await;
    assert_eq!(run.code, 1);
    assert!(run.stdout.is_empty());
}
