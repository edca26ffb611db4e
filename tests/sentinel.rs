//! statecar in front of a Sentinel-managed primary (1 primary, 1 replica, 3 sentinels, all
//! local): it finds the primary through the sentinels and follows a forced failover under
//! load, failing what was in flight with a clear error and serving from the new primary.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{Sentinel, cli, try_cli, writer_load};
use common::*;

const RULES: &str = "[[state]]\npattern = \"s:*\"\ncompression = \"lz4\"\nmin_size = 16\nversioning = true\nmax_versions = 5\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_forced_failover_under_load() {
    let primary = RedisServer::start();
    let replica =
        RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port().to_string()]);
    eventually("the replica is in sync", async || {
        cli(replica.port(), &["info", "replication"]).contains("master_link_status:up")
    })
    .await;
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(primary.port())).collect();
    eventually("the sentinels see each other and the replica", async || {
        let s = cli(sentinels[0].port(), &["sentinel", "master", "mymaster"]);
        s.contains("num-other-sentinels\n2") && s.contains("num-slaves\n1")
    })
    .await;
    let list: Vec<String> = sentinels
        .iter()
        .map(|s| format!("\"127.0.0.1:{}\"", s.port()))
        .collect();
    let mport = free_port();
    // The url points nowhere useful on purpose: the sentinels decide where commands go.
    let sc = Statecar::start(
        free_port(),
        &format!(
            "[upstream]\nmode = \"sentinel\"\nsentinels = [{}]\nmaster_name = \"mymaster\"\n\
             timeout_ms = 2000\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n{RULES}",
            list.join(", ")
        ),
    );
    let mut c = RawConn::connect(sc.port()).await;
    // Two versions, so the key has a history hash as well.
    assert_eq!(c.cmd(&["SET", "s:doc", "first"]).await, ok());
    assert_eq!(c.cmd(&["SET", "s:doc", &"state ".repeat(50)]).await, ok());
    assert_eq!(c.cmd(&["GET", "s:doc"]).await, bulk("state ".repeat(50)));
    assert_eq!(
        cli(primary.port(), &["exists", "__statecar:h:{s:doc}"]).trim(),
        "1",
        "statecar writes to the primary the sentinels named"
    );

    // A subscriber is pinned to the old primary: it must not silently stay there.
    let mut sub = RawConn::connect(sc.port()).await;
    sub.send_cmd(&["SUBSCRIBE", "events"]).await;
    assert_eq!(
        sub.read().await,
        Frame::Array(vec![bulk("subscribe"), bulk("events"), int(1)])
    );

    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..4 {
        tasks.push(tokio::spawn(writer_load(sc.port(), id, stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let failover_at = Instant::now();
    assert_eq!(
        cli(sentinels[0].port(), &["sentinel", "failover", "mymaster"]).trim(),
        "OK"
    );
    eventually("the replica is promoted", async || {
        try_cli(replica.port(), &["role"]).is_some_and(|r| r.starts_with("master"))
    })
    .await;
    // statecar follows: a write through it lands on the new primary.
    eventually("statecar writes to the new primary", async || {
        c.cmd(&["SET", "probe", "after"]).await == ok()
            && try_cli(replica.port(), &["get", "probe"]).is_some_and(|v| v.trim() == "after")
    })
    .await;
    let switched_at = Instant::now();
    within(
        "the old primary's subscriber is disconnected",
        sub.read_to_eof(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);

    let mut acked = HashMap::new();
    let mut errors = Vec::new();
    let mut rounds = 0;
    for t in tasks {
        let (a, n, e) = within("load clients finish", t).await.expect("client task");
        acked.extend(a);
        rounds += n;
        errors.extend(e);
    }
    println!(
        "{rounds} pipelined rounds, {} acknowledged keys, {} errors, switched {:?} after the failover command: {:?}",
        acked.len(),
        errors.len(),
        switched_at - failover_at,
        errors.iter().take(5).collect::<Vec<_>>()
    );
    // Commands caught by the switch fail with an error that says what happened.
    for e in &errors {
        assert!(
            e.contains("upstream") || e.contains("READONLY") || e.contains("failover"),
            "unclear error during failover: {e}"
        );
    }
    let (_, metrics) = http_get(mport, "/metrics").expect("scrape");
    assert!(metric_sum(&metrics, "statecar_upstream_topology_changes_total") >= 2.0);

    // Writes acknowledged well before the failover (replication had caught up) and after
    // statecar switched are all on the new primary. Writes acknowledged by the old primary in
    // the moment of the switch can be lost by Redis's asynchronous replication itself.
    let mut checked = 0;
    for (k, (v, at)) in &acked {
        if *at + Duration::from_secs(1) < failover_at || *at > switched_at {
            assert_eq!(
                c.cmd(&["GET", k]).await,
                bulk(v),
                "acknowledged write to {k}"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "enough writes were checked ({checked})");
    let (ok, report) = statecar_verify(&sc);
    assert!(ok, "state keys verify on the new primary: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_answering_sentinel_commands_fail_clearly() {
    let sc = Statecar::start(
        free_port(),
        &format!(
            "[upstream]\nmode = \"sentinel\"\nsentinels = [\"127.0.0.1:{}\"]\nmaster_name = \"mymaster\"\nconnect_timeout_ms = 300\n",
            free_port()
        ),
    );
    let mut c = RawConn::connect(sc.port()).await;
    let r = c.cmd(&["GET", "k"]).await;
    let text = r.error_text().unwrap_or_default();
    assert!(
        text.contains("mymaster") && text.contains("not known"),
        "{r:?}"
    );
}
