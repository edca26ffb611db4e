//! How statecar tells a slow Redis from a dead one (issue 12): `upstream.timeout_ms` must never
//! fail commands that Redis is about to answer. A command behind a slow one on a shared
//! connection keeps waiting while Redis answers a PING on another connection (BUSY included);
//! only when Redis answers nobody do the overdue commands get a timeout error, which says that
//! they may still run. When a connection breaks, the error says whether each command may have
//! run.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// A script that keeps Redis busy for `ms` milliseconds (past lua-time-limit, so Redis answers
/// other connections BUSY meanwhile).
fn busy_script(ms: u64) -> Vec<String> {
    vec![
        "EVAL".into(),
        format!(
            "local t0 = redis.call('TIME') local start = t0[1] * 1000 + t0[2] / 1000 \
             while true do local t = redis.call('TIME') \
             if t[1] * 1000 + t[2] / 1000 - start > {ms} then break end end return 'done'"
        ),
        "0".into(),
    ]
}

/// Waits until the script keeps Redis busy: a direct client is told BUSY.
async fn script_runs(direct: &mut RawConn) {
    eventually("the script runs", async || {
        direct
            .cmd(&["PING"])
            .await
            .error_text()
            .is_some_and(|e| e.starts_with("BUSY"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_behind_a_slow_script_wait_instead_of_timing_out() {
    let redis = RedisServer::start_with(&["--lua-time-limit", "100"]);
    // One shared connection: every client's commands queue behind the script.
    let sc = Statecar::start(
        redis.port(),
        "[upstream]\nmax_connections = 1\ntimeout_ms = 500\nconnect_timeout_ms = 500\n",
    );
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(direct.cmd(&["SET", "k", "v"]).await, ok());
    let mut slow = RawConn::connect(sc.port()).await;
    let mut other = RawConn::connect(sc.port()).await;
    let started = Instant::now();
    slow.send_cmd(&busy_script(2500)).await;
    // The script is running (a direct client is told BUSY) before the other client asks.
    script_runs(&mut direct).await;
    other.send_cmd(&["GET", "k"]).await;
    assert_eq!(
        within("the GET behind the script", other.read()).await,
        bulk("v"),
        "a command queued behind a slow script is answered, not timed out"
    );
    assert_eq!(slow.read().await, bulk("done"));
    assert!(
        started.elapsed() > Duration::from_millis(2000),
        "the script really ran past timeout_ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_client_does_not_queue_behind_another_clients_slow_script() {
    let redis = RedisServer::start_with(&["--lua-time-limit", "100"]);
    // The default pool: both clients are given the same shared connection.
    let sc = Statecar::start(redis.port(), "");
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(direct.cmd(&["SET", "k", "v"]).await, ok());
    let mut slow = RawConn::connect(sc.port()).await;
    let mut other = RawConn::connect(sc.port()).await;
    assert_eq!(slow.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    assert_eq!(other.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    slow.send_cmd(&busy_script(20_000)).await;
    script_runs(&mut direct).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // What a direct client gets while the script runs, not a wait behind it.
    let r = within("the GET while the script runs", other.cmd(&["GET", "k"])).await;
    assert!(
        r.error_text().is_some_and(|e| e.starts_with("BUSY")),
        "an idle client reaches Redis past the slow script: {r:?}"
    );
    assert_eq!(other.cmd(&["SCRIPT", "KILL"]).await, ok());
    let killed = within("the killed script's reply", slow.read()).await;
    assert!(
        killed
            .error_text()
            .is_some_and(|e| e.contains("killed by user")),
        "{killed:?}"
    );
    assert_eq!(other.cmd(&["GET", "k"]).await, bulk("v"));
    assert_eq!(slow.cmd(&["GET", "k"]).await, bulk("v"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_times_out_with_may_still_run_and_the_late_reply_is_dropped() {
    let redis = RedisServer::start();
    let sc = Statecar::start(
        redis.port(),
        "[upstream]\nmax_connections = 1\ntimeout_ms = 300\nconnect_timeout_ms = 300\n",
    );
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&["SET", "n", "0"]).await, ok());
    let pid = redis_pid(redis.port());
    signal("-STOP", &pid);
    c.send_cmd(&["INCR", "n"]).await;
    let r = within("the timeout", c.read()).await;
    signal("-CONT", &pid);
    let e = r.error_text().unwrap_or_default().to_string();
    assert!(
        e.contains("upstream timeout") && e.contains("may still run"),
        "a timed-out command that reached Redis says it may still run: {r:?}"
    );
    // Redis resumes and runs the INCR; its late reply never reaches the client, whose next
    // command gets its own reply.
    eventually("the INCR ran once Redis resumed", async || {
        c.cmd(&["GET", "n"]).await == bulk("1")
    })
    .await;
    assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_connection_says_the_commands_may_have_run() {
    let mut redis = RedisServer::start();
    let sc = Statecar::start(redis.port(), "[upstream]\nmax_connections = 1\n");
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    // A command Redis holds (BLPOP would go to a lease; DEBUG SLEEP blocks the shared one).
    c.send_cmd(&["DEBUG", "SLEEP", "5"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::task::block_in_place(|| redis.kill());
    let r = within("the error", c.read()).await;
    let e = r.error_text().unwrap_or_default().to_string();
    assert!(
        e.contains("may or may not have run"),
        "a command sent before the connection broke: {r:?}"
    );
}

/// During `CLIENT PAUSE WRITE` (a failover uses one), Redis holds write commands, FUNCTION LOAD
/// among them. A new upstream connection only asks whether statecar's function library is there
/// (FUNCTION LIST, a read) and loads it only when it is missing, so it opens during the pause:
/// a client that needs a dedicated connection (SUBSCRIBE, MULTI) is served while writes wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_upstream_connections_open_during_client_pause_write() {
    let redis = RedisServer::start();
    let sc = Statecar::start(
        redis.port(),
        "[upstream]\nconnect_timeout_ms = 1000\n\n[[state]]\npattern = \"st:*\"\nversioning = true\n",
    );
    let mut c = RawConn::connect(sc.port()).await;
    // A state write: the library is loaded (by the connection that carried it).
    assert_eq!(c.cmd(&["SET", "st:a", "v1"]).await, ok());
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(
        direct.cmd(&["CLIENT", "PAUSE", "20000", "WRITE"]).await,
        ok()
    );

    let mut sub = RawConn::connect(sc.port()).await;
    sub.send_cmd(&["SUBSCRIBE", "news"]).await;
    assert_eq!(
        sub.read().await,
        Frame::Array(vec![bulk("subscribe"), bulk("news"), int(1)]),
        "a SUBSCRIBE during the pause gets its dedicated connection"
    );
    let mut tx = RawConn::connect(sc.port()).await;
    assert_eq!(tx.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        tx.cmd(&["GET", "st:a"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(tx.cmd(&["EXEC"]).await, Frame::Array(vec![bulk("v1")]));

    assert_eq!(direct.cmd(&["CLIENT", "UNPAUSE"]).await, ok());
    // Library calls work after the pause: the check found the library, nothing was lost.
    assert_eq!(c.cmd(&["SET", "st:a", "v2"]).await, ok());
    let versions = c.cmd(&["STATE.VERSIONS", "st:a"]).await;
    let Frame::Array(v) = &versions else {
        panic!("STATE.VERSIONS: {versions:?}")
    };
    assert_eq!(v.len(), 2, "{versions:?}");
}

/// `CLIENT PAUSE ms WRITE` through statecar: Redis holds the writes, and only their clients
/// wait. Another client's reads (on the same single shared connection) are answered during the
/// pause, the held write completes at `CLIENT UNPAUSE` (which reaches Redis although a write is
/// held), and nothing runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_held_by_client_pause_holds_only_its_own_client() {
    let redis = RedisServer::start();
    let sc = Statecar::start(redis.port(), "[upstream]\nmax_connections = 1\n");
    let mut admin = RawConn::connect(sc.port()).await;
    let mut writer = RawConn::connect(sc.port()).await;
    let mut reader = RawConn::connect(sc.port()).await;
    assert_eq!(reader.cmd(&["SET", "seen", "before"]).await, ok());
    // Longer than the harness's read limit: a read stuck behind the held write fails the test.
    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]).await,
        ok()
    );

    writer.send_cmd(&["INCR", "paused:ctr"]).await;
    for _ in 0..20 {
        assert_eq!(reader.cmd(&["GET", "seen"]).await, bulk("before"));
        assert_eq!(reader.cmd(&["GET", "paused:ctr"]).await, Frame::NullBulk);
    }
    assert!(
        writer.read_for(Duration::from_millis(200)).await.is_err(),
        "the write waits for the pause"
    );
    let mut direct = RawConn::connect(redis.port()).await;
    let blocked = direct.cmd(&["INFO", "clients"]).await;
    let Frame::Bulk(info) = &blocked else {
        panic!("INFO: {blocked:?}")
    };
    assert!(
        String::from_utf8_lossy(info).contains("blocked_clients:1"),
        "Redis holds exactly the writer's command: {}",
        String::from_utf8_lossy(info)
    );

    assert_eq!(admin.cmd(&["CLIENT", "UNPAUSE"]).await, ok());
    assert_eq!(writer.read().await, int(1));
    assert_eq!(reader.cmd(&["GET", "paused:ctr"]).await, bulk("1"));
    // After the pause writes share the connection again.
    assert_eq!(writer.cmd(&["INCR", "paused:ctr"]).await, int(2));

    // A pause queued in a transaction starts at EXEC, and is known the same way.
    let queued = Frame::Simple("QUEUED".into());
    assert_eq!(admin.cmd(&["MULTI"]).await, ok());
    assert_eq!(admin.cmd(&["SET", "seen", "tx"]).await, queued);
    assert_eq!(
        admin.cmd(&["CLIENT", "PAUSE", "60000", "WRITE"]).await,
        queued
    );
    assert_eq!(admin.cmd(&["EXEC"]).await, Frame::Array(vec![ok(), ok()]));
    writer.send_cmd(&["INCR", "paused:ctr"]).await;
    for _ in 0..20 {
        assert_eq!(reader.cmd(&["GET", "seen"]).await, bulk("tx"));
    }
    assert_eq!(admin.cmd(&["CLIENT", "UNPAUSE"]).await, ok());
    assert_eq!(writer.read().await, int(3));
}
