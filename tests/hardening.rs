//! Faults from issue 5 that need no special network setup: a Redis that stops answering, and
//! statecar killed with SIGKILL in the middle of versioned writes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_gives_timeouts_then_recovers() {
    let redis = RedisServer::start();
    let sc = Statecar::start(
        redis.port(),
        "[upstream]\ntimeout_ms = 500\nconnect_timeout_ms = 500\n",
    );
    let mut c = RawConn::connect(sc.port()).await;
    c.send_cmd(&["SET", "k", "v"]).await;
    assert_eq!(c.read().await, ok());

    let pid = redis_pid(redis.port());
    signal("-STOP", &pid);
    c.send_cmd(&["GET", "k"]).await;
    let reply = within("timeout error while Redis is paused", c.read()).await;
    let text = reply.error_text().unwrap_or_default().to_string();
    signal("-CONT", &pid);
    assert!(
        text.contains("upstream timeout") && text.contains("500 ms"),
        "expected a timeout error naming the deadline, got {reply:?}"
    );

    eventually("statecar serves again after Redis resumes", async || {
        c.send_cmd(&["GET", "k"]).await;
        c.read().await == bulk("v")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_versioned_writes_leaves_every_history_whole() {
    let rules = "[[state]]\npattern = \"s:*\"\ncompression = \"lz4\"\nmax_versions = 10000\n";
    sigkill_during_writes(rules, |w, i| {
        format!("writer {w} write {i} {}", "x".repeat(200)).into_bytes()
    })
    .await;
}

/// The same with delta histories (zstd, format 2): the values are growing agent checkpoints,
/// so nearly every older version is a delta against the next, and a kill at any point must
/// leave each of them decodable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delta_writes_leaves_every_version_decodable() {
    let rules = "[[state]]\npattern = \"s:*\"\ncompression = \"zstd\"\nmax_versions = 10000\n";
    sigkill_during_writes(rules, |w, i| {
        let mut c = common::agent_data::Checkpoints::new(w as u64);
        c.advance(u64::from(i % 30));
        let mut v = c.checkpoint();
        v.extend_from_slice(format!(" writer {w} write {i}").as_bytes());
        v
    })
    .await;
}

async fn sigkill_during_writes(rules: &str, value: fn(usize, u32) -> Vec<u8>) {
    let redis = RedisServer::start();
    let mut sc = Statecar::start(redis.port(), rules);
    let port = sc.port();
    let mut writers = Vec::new();
    for w in 0..8 {
        writers.push(tokio::spawn(async move {
            let mut c = RawConn::connect(port).await;
            let mut acked = 0u32;
            for i in 0..100_000u32 {
                let value = value(w, i);
                let key = format!("s:{}", w % 4);
                if c.try_send(&encode(&[&b"SET"[..], key.as_bytes(), &value]))
                    .await
                    .is_err()
                {
                    break;
                }
                match c.try_read().await {
                    Ok(f) if f == ok() => acked += 1,
                    _ => break,
                }
            }
            acked
        }));
    }
    // Let the writers get going, then kill statecar without warning.
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal("-KILL", &sc.pid().to_string());
    let _ = sc.wait_exit(Duration::from_secs(10));
    let mut acked = 0;
    for w in writers {
        acked += w.await.expect("writer task");
    }
    assert!(acked > 0, "no write was acknowledged before the kill");

    // Every key decodes and its history is numbered 1..last with no gap, the key holding `last`.
    let cfg = sc.dir().join("statecar.toml");
    let out = Command::new(statecar_bin())
        .arg("verify")
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("statecar verify");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "verify found problems:\n{report}");
    assert!(report.contains("4 state keys"), "{report}");
    assert!(report.contains(" 0 problems"), "{report}");
    assert!(
        !report.contains("versions between"),
        "a history has a gap:\n{report}"
    );
    let versions: u64 = report
        .split_whitespace()
        .zip(report.split_whitespace().skip(1))
        .find(|(_, w)| *w == "versions")
        .and_then(|(n, _)| n.parse().ok())
        .expect("version count in the verify report");
    assert!(
        versions >= acked as u64,
        "{acked} writes were acknowledged but only {versions} versions exist"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_commands_get_noperm_and_others_pass() {
    let redis = RedisServer::start();
    let sc = Statecar::start(
        redis.port(),
        "[security]\ndeny_commands = [\"FLUSHALL\", \"config|set\"]\n",
    );
    let mut c = RawConn::connect(sc.port()).await;
    for cmd in [&["flushall"][..], &["CONFIG", "set", "maxmemory", "1"][..]] {
        c.send_cmd(cmd).await;
        let reply = c.read().await;
        assert!(
            reply.error_text().is_some_and(|t| t.starts_with("NOPERM")),
            "{cmd:?} should be refused, got {reply:?}"
        );
    }
    c.send_cmd(&["CONFIG", "GET", "maxmemory"]).await;
    assert!(!c.read().await.is_error(), "CONFIG GET is not denied");
    c.send_cmd(&["SET", "k", "v"]).await;
    assert_eq!(c.read().await, ok());

    // Inside MULTI a denied command aborts the whole transaction at EXEC, as Redis does for a
    // command its ACLs refuse: the SET queued before it must not run.
    for cmd in [
        &["MULTI"][..],
        &["SET", "k", "changed"],
        &["FLUSHALL"],
        &["EXEC"],
    ] {
        c.send_cmd(cmd).await;
    }
    assert_eq!(c.read().await, ok());
    assert_eq!(c.read().await, Frame::Simple("QUEUED".into()));
    assert!(
        c.read()
            .await
            .error_text()
            .is_some_and(|t| t.starts_with("NOPERM"))
    );
    assert_eq!(
        c.read().await.error_text(),
        Some("EXECABORT Transaction discarded because of previous errors.")
    );
    c.send_cmd(&["GET", "k"]).await;
    assert_eq!(c.read().await, bulk("v"));
}

/// SELECT, AUTH and HELLO inside MULTI would switch the connection between the transaction's
/// own commands; statecar refuses them at queue time, so EXEC aborts and nothing runs (what
/// Redis does for any command refused at queue time). The connection keeps its database and
/// protocol, and the next transaction works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_auth_and_hello_inside_multi_abort_the_transaction() {
    let redis = RedisServer::start();
    let sc = Statecar::start(redis.port(), "");
    let mut c = RawConn::connect(sc.port()).await;
    for switch in [
        &["SELECT", "1"][..],
        &["HELLO", "3"],
        &["AUTH", "default", "nopass"],
    ] {
        for cmd in [
            &["MULTI"][..],
            &["SET", "tx:k", "changed"],
            switch,
            &["EXEC"],
        ] {
            c.send_cmd(cmd).await;
        }
        assert_eq!(c.read().await, ok());
        assert_eq!(c.read().await, Frame::Simple("QUEUED".into()));
        let refused = c.read().await;
        assert_eq!(
            refused.error_text().map(str::to_owned),
            Some(format!(
                "ERR {} inside MULTI is not supported by statecar",
                switch[0]
            )),
            "{switch:?}"
        );
        assert_eq!(
            c.read().await.error_text(),
            Some("EXECABORT Transaction discarded because of previous errors."),
            "{switch:?}"
        );
        c.send_cmd(&["GET", "tx:k"]).await;
        assert_eq!(c.read().await, Frame::NullBulk, "{switch:?}: nothing ran");
    }
    // Still database 0, RESP2, and transactions work.
    for cmd in [&["MULTI"][..], &["SET", "tx:k", "v"], &["EXEC"]] {
        c.send_cmd(cmd).await;
    }
    assert_eq!(c.read().await, ok());
    assert_eq!(c.read().await, Frame::Simple("QUEUED".into()));
    assert_eq!(c.read().await, Frame::Array(vec![ok()]));
    let mut d = RawConn::connect(redis.port()).await;
    d.send_cmd(&["GET", "tx:k"]).await;
    assert_eq!(d.read().await, bulk("v"));
}
