//! Resource sanity without timing: idle connections cost little and are given back.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_idle_connections_are_served_and_released() {
    let (_redis, sc) = start_pair("");
    let port = sc.port();
    // Warm up: shared and leased upstream connections exist before the baseline.
    let mut warm = RawConn::connect(port).await;
    for _ in 0..20 {
        assert_eq!(warm.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    }
    assert_eq!(warm.cmd(&["MULTI"]).await, ok());
    assert_eq!(warm.cmd(&["EXEC"]).await, Frame::Array(vec![]));
    let base_fds = sc.fd_count();
    let base_rss = rss_kb(sc.pid());

    let mut conns = Vec::with_capacity(1000);
    for _ in 0..1000 {
        conns.push(RawConn::connect(port).await);
    }
    for c in conns.iter_mut() {
        c.send_cmd(&["PING"]).await;
    }
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(
            c.read().await,
            Frame::Simple("PONG".into()),
            "connection {i}"
        );
    }
    let during = sc.fd_count();
    assert!(
        during >= base_fds + 1000,
        "statecar has {during} fds with 1000 clients connected (baseline {base_fds})"
    );
    let rss = rss_kb(sc.pid());
    let per_client = rss.saturating_sub(base_rss) as f64 / 1000.0;
    eprintln!("RSS {base_rss} kB -> {rss} kB with 1000 idle clients: {per_client:.1} kB each");
    assert!(
        per_client <= 64.0,
        "each idle client costs {per_client:.1} kB of RSS (sanity bound 64 kB)"
    );

    drop(conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = sc.fd_count();
        if n <= base_fds + 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "statecar still has {n} fds 10 s after the clients left (baseline {base_fds})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(warm.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

/// Redis's client ids of the connections opened as `user` on database `db` (CLIENT LIST).
async fn upstream_ids(direct: &mut RawConn, user: &str, db: u32) -> Vec<String> {
    let Frame::Bulk(list) = direct.cmd(&["CLIENT", "LIST"]).await else {
        panic!("CLIENT LIST did not answer a bulk string")
    };
    let (u, d) = (format!(" user={user} "), format!(" db={db} "));
    let mut ids: Vec<String> = String::from_utf8_lossy(&list)
        .lines()
        .filter(|l| l.contains(&u) && l.contains(&d))
        .filter_map(|l| l.strip_prefix("id="))
        .filter_map(|l| l.split(' ').next().map(str::to_string))
        .collect();
    ids.sort();
    ids
}

/// How many connections Redis has open as `user` on database `db`.
async fn upstream_conns(direct: &mut RawConn, user: &str, db: u32) -> usize {
    upstream_ids(direct, user, db).await.len()
}

/// A client that SELECTs another database or AUTHs as an ACL user makes statecar open shared
/// (and, for a transaction, leased) connections for that (db, identity). Once no connected
/// client uses them they are closed (`upstream.pool_idle_timeout_ms`), while the pools of
/// clients still connected, idle or not, stay open; a later client of the same identity gets
/// them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_connections_nobody_uses_are_closed() {
    let (redis, sc) = start_pair("[upstream]\npool_idle_timeout_ms = 200\n");
    let mut direct = RawConn::connect(redis.port()).await;
    let setuser = ["ACL", "SETUSER", "agent", "on", ">pw", "~*", "+@all"];
    assert_eq!(direct.cmd(&setuser).await, ok());

    // `stays` keeps using db 0 as agent (connected, idle); `leaves` also uses db 3, then goes.
    let mut stays = RawConn::connect(sc.port()).await;
    assert_eq!(stays.cmd(&["AUTH", "agent", "pw"]).await, ok());
    assert_eq!(stays.cmd(&["SET", "k0", "v"]).await, ok());
    let mut leaves = RawConn::connect(sc.port()).await;
    assert_eq!(leaves.cmd(&["AUTH", "agent", "pw"]).await, ok());
    assert_eq!(leaves.cmd(&["SELECT", "3"]).await, ok());
    assert_eq!(leaves.cmd(&["SET", "k3", "v"]).await, ok());
    // A transaction runs on a leased connection, given back idle after EXEC.
    assert_eq!(leaves.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        leaves.cmd(&["INCR", "n3"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(leaves.cmd(&["EXEC"]).await, Frame::Array(vec![int(1)]));
    assert!(upstream_conns(&mut direct, "agent", 3).await > 0);
    assert!(upstream_conns(&mut direct, "agent", 0).await > 0);

    drop(leaves);
    eventually("agent's db 3 connections closed", async || {
        upstream_conns(&mut direct, "agent", 3).await == 0
    })
    .await;
    // Several timeouts have passed by now: the pool a connected client holds is still open,
    // and serves it.
    assert!(upstream_conns(&mut direct, "agent", 0).await > 0);
    assert_eq!(stays.cmd(&["GET", "k0"]).await, bulk("v"));
    assert_eq!(stays.cmd(&["ACL", "WHOAMI"]).await, bulk("agent"));

    drop(stays);
    eventually("agent's db 0 connections closed", async || {
        upstream_conns(&mut direct, "agent", 0).await == 0
    })
    .await;
    // statecar's own connections (the readiness probe's) stay.
    assert!(upstream_conns(&mut direct, "default", 0).await > 0);

    // The identity comes back: its pool opens again.
    let mut back = RawConn::connect(sc.port()).await;
    assert_eq!(back.cmd(&["AUTH", "agent", "pw"]).await, ok());
    assert_eq!(back.cmd(&["SELECT", "3"]).await, ok());
    assert_eq!(back.cmd(&["GET", "k3"]).await, bulk("v"));
    assert_eq!(back.cmd(&["ACL", "WHOAMI"]).await, bulk("agent"));
    assert!(upstream_conns(&mut direct, "agent", 3).await > 0);
}

/// "Unused" means no client was assigned a connection of the pool for the whole timeout, not
/// only that none was connected when the sweeps looked: clients that each connect for a moment
/// (a worker per request) keep the pool, and its connections, open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_come_and_go_keep_their_pool() {
    let (redis, sc) = start_pair("[upstream]\npool_idle_timeout_ms = 600\nmax_connections = 2\n");
    let mut direct = RawConn::connect(redis.port()).await;
    let setuser = ["ACL", "SETUSER", "agent", "on", ">pw", "~*", "+@all"];
    assert_eq!(direct.cmd(&setuser).await, ok());
    let mut first = RawConn::connect(sc.port()).await;
    assert_eq!(first.cmd(&["AUTH", "agent", "pw"]).await, ok());
    assert_eq!(first.cmd(&["SELECT", "3"]).await, ok());
    assert_eq!(first.cmd(&["SET", "k", "v"]).await, ok());
    drop(first);
    // The pool's two connections, once both are up.
    eventually("agent's db 3 pool open", async || {
        upstream_conns(&mut direct, "agent", 3).await == 2
    })
    .await;
    let opened = upstream_ids(&mut direct, "agent", 3).await;
    // Connected for a few milliseconds out of every 50, for 3 s (10 sweeps, 5 timeouts): the
    // sweeps nearly always find the pool without a client.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let mut c = RawConn::connect(sc.port()).await;
        assert_eq!(c.cmd(&["AUTH", "agent", "pw"]).await, ok());
        assert_eq!(c.cmd(&["SELECT", "3"]).await, ok());
        assert_eq!(c.cmd(&["GET", "k"]).await, bulk("v"));
        drop(c);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        upstream_ids(&mut direct, "agent", 3).await,
        opened,
        "the pool of clients that came every 50 ms was closed and opened again"
    );
    // Once they stop coming, it is closed.
    eventually("agent's db 3 connections closed", async || {
        upstream_conns(&mut direct, "agent", 3).await == 0
    })
    .await;
}
