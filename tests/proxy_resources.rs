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
