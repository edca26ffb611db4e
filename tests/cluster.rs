//! statecar in front of a real Redis Cluster (3 primaries, 3 replicas on free ports): routing
//! by slot, split multi-key commands, every-node commands, SCAN and STATE.LIST across nodes,
//! transactions, pub/sub, blocking commands, state keys; then a failover and a reshard under
//! load with no acknowledged write lost and no reply crossing clients.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::cluster::{RedisCluster, cli, writer_load};
use common::*;

const RULES: &str = "[[state]]\npattern = \"s:*\"\ncompression = \"lz4\"\nmin_size = 16\nversioning = true\nmax_versions = 5\n";

fn start(cluster: &RedisCluster, extra: &str) -> Statecar {
    Statecar::start(
        cluster.nodes[0].port(),
        &format!(
            "[upstream]\nmode = \"cluster\"\nnodes = {}\ntimeout_ms = 3000\n{extra}",
            cluster.seeds_toml()
        ),
    )
}

/// `CLUSTER KEYSLOT` from Redis itself.
fn keyslot(port: u16, key: &str) -> u16 {
    cli(port, &["cluster", "keyslot", key])
        .trim()
        .parse()
        .unwrap()
}

/// A GET straight to the node that owns the key (no proxy, no redirect).
fn direct_get(cluster: &RedisCluster, key: &str) -> String {
    let owner = cluster.owner(keyslot(cluster.nodes[0].port(), key));
    cli(owner, &["get", key]).trim_end().to_string()
}

fn json(i: usize) -> String {
    format!(
        "{{\"session\":{i},\"messages\":[{}]}}",
        (0..20)
            .map(|m| format!("{{\"role\":\"user\",\"text\":\"message {m} of session {i}\"}}"))
            .collect::<Vec<_>>()
            .join(",")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_route_split_and_fan_out_across_the_cluster() {
    let cluster = RedisCluster::start(3, 1);
    let sc = start(&cluster, RULES);
    let mut c = RawConn::connect(sc.port()).await;

    // Keys on every primary, each stored where Redis Cluster says it belongs.
    for i in 0..60 {
        assert_eq!(
            c.cmd(&["SET", &format!("k{i}"), &format!("v{i}")]).await,
            ok()
        );
    }
    for i in 0..60 {
        assert_eq!(direct_get(&cluster, &format!("k{i}")), format!("v{i}"));
    }

    // Split commands, joined in the client's order.
    let mut mset = vec!["MSET".to_string()];
    for i in 0..40 {
        mset.push(format!("m{i}"));
        mset.push(format!("mv{i}"));
    }
    assert_eq!(c.cmd(&mset).await, ok());
    let mut mget = vec!["MGET".to_string()];
    for i in (0..40).rev() {
        mget.push(format!("m{i}"));
    }
    mget.push("missing".into());
    let expected: Vec<Frame> = (0..40)
        .rev()
        .map(|i| bulk(format!("mv{i}")))
        .chain([Frame::NullBulk])
        .collect();
    assert_eq!(c.cmd(&mget).await, Frame::Array(expected));
    assert_eq!(
        c.cmd(&["EXISTS", "m1", "m2", "m3", "nope", "m1"]).await,
        int(4)
    );
    assert_eq!(c.cmd(&["TOUCH", "m1", "m2", "nope"]).await, int(2));
    assert_eq!(c.cmd(&["UNLINK", "m1", "m2"]).await, int(2));

    // Commands that cannot be split get Redis's own error.
    let cross = err("CROSSSLOT Keys in request don't hash to the same slot");
    assert_eq!(c.cmd(&["MSETNX", "a", "1", "b", "2"]).await, cross);
    assert_eq!(c.cmd(&["RENAME", "k1", "k2"]).await, cross);
    assert_eq!(c.cmd(&["SUNION", "k1", "k2"]).await, cross);
    assert_eq!(c.cmd(&["MSETNX", "{t}a", "1", "{t}b", "2"]).await, int(1));

    // Every-node commands.
    let total = 60 + 38 + 2;
    assert_eq!(c.cmd(&["DBSIZE"]).await, int(total));
    let Frame::Array(keys) = c.cmd(&["KEYS", "*"]).await else {
        panic!("KEYS reply")
    };
    assert_eq!(keys.len(), total as usize);
    let mut seen = HashSet::new();
    let mut cursor = "0".to_string();
    let mut rounds = 0;
    loop {
        let r = c.cmd(&["SCAN", &cursor, "COUNT", "7"]).await;
        let Frame::Array(parts) = r else {
            panic!("SCAN reply {r:?}")
        };
        let Frame::Array(batch) = &parts[1] else {
            panic!("SCAN keys")
        };
        for k in batch {
            seen.insert(k.text());
        }
        cursor = parts[0].text();
        rounds += 1;
        if cursor == "0" {
            break;
        }
        assert!(rounds < 1000, "SCAN never finished");
    }
    assert_eq!(seen.len(), total as usize, "SCAN walked every primary");

    // Transactions in one slot work; across slots Redis refuses them.
    assert_eq!(c.cmd(&["MULTI"]).await, ok());
    assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("QUEUED".into()));
    assert_eq!(
        c.cmd(&["SET", "{u}a", "1"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["INCR", "{u}b"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        Frame::Array(vec![Frame::Simple("PONG".into()), ok(), int(1)])
    );
    // RESET leaves a transaction that no key has pinned yet.
    assert_eq!(c.cmd(&["MULTI"]).await, ok());
    assert_eq!(c.cmd(&["RESET"]).await, Frame::Simple("RESET".into()));
    assert_eq!(c.cmd(&["SET", "{u}r", "1"]).await, ok());
    assert_eq!(c.cmd(&["DISCARD"]).await, err("ERR DISCARD without MULTI"));
    assert_eq!(c.cmd(&["WATCH", "{u}a"]).await, ok());
    assert_eq!(c.cmd(&["MULTI"]).await, ok());
    c.cmd(&["SET", "{u}a", "2"]).await;
    let other = (0..100)
        .map(|i| format!("x{i}"))
        .find(|k| keyslot(cluster.nodes[0].port(), k) != keyslot(cluster.nodes[0].port(), "{u}a"))
        .unwrap();
    // Redis answers MOVED at queue time when the key lives on another node, and CROSSSLOT
    // at EXEC when it lives on the same node: either way nothing runs.
    c.cmd(&["SET", &other, "2"]).await;
    let exec = c.cmd(&["EXEC"]).await;
    assert!(
        exec.error_text()
            .is_some_and(|e| e.starts_with("EXECABORT") || e.starts_with("CROSSSLOT")),
        "{exec:?}"
    );
    assert_eq!(c.cmd(&["GET", "{u}a"]).await, bulk("1"));
    assert_eq!(c.cmd(&["WATCH", "k1", "k2"]).await, cross);

    // A blocking command waits on its key's node.
    let mut waiter = RawConn::connect(sc.port()).await;
    waiter.send_cmd(&["BLPOP", "queue", "10"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.cmd(&["RPUSH", "queue", "job"]).await, int(1));
    assert_eq!(
        within("BLPOP through the cluster", waiter.read()).await,
        bulks(&["queue", "job"])
    );

    // Pub/sub: messages published through one client reach another's subscription.
    let mut sub = RawConn::connect(sc.port()).await;
    sub.send_cmd(&["SUBSCRIBE", "news"]).await;
    assert_eq!(
        sub.read().await,
        Frame::Array(vec![bulk("subscribe"), bulk("news"), int(1)])
    );
    let mut ssub = RawConn::connect(sc.port()).await;
    ssub.send_cmd(&["SSUBSCRIBE", "shard-news"]).await;
    assert_eq!(
        ssub.read().await,
        Frame::Array(vec![bulk("ssubscribe"), bulk("shard-news"), int(1)])
    );
    eventually("PUBLISH reaches the subscriber", async || {
        c.cmd(&["PUBLISH", "news", "hello"]).await != int(0)
    })
    .await;
    assert_eq!(
        within("message", sub.read()).await,
        Frame::Array(vec![bulk("message"), bulk("news"), bulk("hello")])
    );
    assert_eq!(c.cmd(&["SPUBLISH", "shard-news", "hi"]).await, int(1));
    assert_eq!(
        within("smessage", ssub.read()).await,
        Frame::Array(vec![bulk("smessage"), bulk("shard-news"), bulk("hi")])
    );

    // Scripts reach every primary; FLUSHALL empties them all.
    let sha = c.cmd(&["SCRIPT", "LOAD", "return 7"]).await.text();
    assert_eq!(
        c.cmd(&["SCRIPT", "EXISTS", &sha, "0000"]).await,
        Frame::Array(vec![int(1), int(0)])
    );
    for n in cluster.nodes.iter().take(3) {
        let owner_is_primary = cli(n.port(), &["role"]).starts_with("master");
        if owner_is_primary {
            assert_eq!(cli(n.port(), &["script", "exists", &sha]).trim(), "1");
        }
    }
    assert_eq!(c.cmd(&["EVALSHA", &sha, "1", "k5"]).await, int(7));
    assert_eq!(c.cmd(&["FLUSHALL"]).await, ok());
    assert_eq!(c.cmd(&["DBSIZE"]).await, int(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_keys_work_on_every_node() {
    let cluster = RedisCluster::start(3, 1);
    let sc = start(&cluster, RULES);
    let mut c = RawConn::connect(sc.port()).await;
    for i in 0..30 {
        assert_eq!(c.cmd(&["SET", &format!("s:{i}"), &json(i)]).await, ok());
        assert_eq!(
            c.cmd(&["SET", &format!("s:{i}"), &json(i + 100)]).await,
            ok()
        );
    }
    let mut owners = HashSet::new();
    for i in 0..30 {
        let key = format!("s:{i}");
        assert_eq!(c.cmd(&["GET", &key]).await, bulk(json(i + 100)));
        let owner = cluster.owner(keyslot(cluster.nodes[0].port(), &key));
        owners.insert(owner);
        // Stored compressed, with its history beside it on the same node.
        let stored = cli(owner, &["strlen", &key])
            .trim()
            .parse::<usize>()
            .unwrap();
        assert!(stored < json(i + 100).len(), "{key} is stored compressed");
        let hist = format!("__statecar:h:{{{key}}}");
        assert_eq!(
            cli(owner, &["exists", &hist]).trim(),
            "1",
            "{hist} on {owner}"
        );
    }
    assert_eq!(owners.len(), 3, "the state keys spread over every primary");

    // MGET and MSET mixing state keys of several slots and plain keys.
    assert_eq!(
        c.cmd(&["MSET", "s:a", &json(1), "plain", "p", "s:b", &json(2)])
            .await,
        ok()
    );
    assert_eq!(
        c.cmd(&["MGET", "s:b", "plain", "s:3", "s:a"]).await,
        Frame::Array(vec![
            bulk(json(2)),
            bulk("p"),
            bulk(json(103)),
            bulk(json(1))
        ])
    );

    // Versions, rollback, STATE.LIST over every node.
    let versions = c.cmd(&["STATE.VERSIONS", "s:7"]).await;
    let Frame::Array(v) = &versions else {
        panic!("{versions:?}")
    };
    assert_eq!(v.len(), 2);
    assert!(!c.cmd(&["STATE.ROLLBACK", "s:7", "1"]).await.is_error());
    assert_eq!(c.cmd(&["GET", "s:7"]).await, bulk(json(7)));
    let mut listed = HashSet::new();
    let mut cursor = "0".to_string();
    loop {
        let r = c.cmd(&["STATE.LIST", &cursor, "COUNT", "5"]).await;
        let Frame::Array(parts) = r else {
            panic!("STATE.LIST {r:?}")
        };
        let Frame::Array(keys) = &parts[1] else {
            panic!("keys")
        };
        listed.extend(keys.iter().map(Frame::text));
        cursor = parts[0].text();
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(listed.len(), 32, "every state key listed once: {listed:?}");
    assert!(listed.iter().all(|k| k.starts_with("s:")));

    // DEL takes key and history, on whichever node they live.
    assert_eq!(c.cmd(&["DEL", "s:1", "s:2", "s:3", "plain"]).await, int(4));
    for k in ["s:1", "s:2", "s:3"] {
        let owner = cluster.owner(keyslot(cluster.nodes[0].port(), k));
        assert_eq!(
            cli(owner, &["exists", &format!("__statecar:h:{{{k}}}")]).trim(),
            "0"
        );
    }

    // The offline tools find the nodes themselves.
    let (ok, report) = statecar_verify(&sc);
    assert!(ok, "statecar verify in cluster mode: {report}");
    let out = std::process::Command::new(statecar_bin())
        .args(["decode", "--config"])
        .arg(sc.dir().join("statecar.toml"))
        .arg("s:9")
        .output()
        .expect("statecar decode");
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), json(109));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_and_reshard_under_load_lose_nothing() {
    let cluster = RedisCluster::start(3, 1);
    let mport = free_port();
    let sc = start(
        &cluster,
        &format!("{RULES}[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for id in 0..6 {
        tasks.push(tokio::spawn(writer_load(sc.port(), id, stop.clone())));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A manual failover: the replica of the primary that owns slot 0 takes over.
    let topo = cluster.topology();
    let old = cluster.owner(0);
    let replica = cluster
        .nodes
        .iter()
        .map(|n| n.port())
        .find(|&p| {
            p != old && cli(p, &["role"]).lines().nth(2).map(str::trim) == Some(&old.to_string())
        })
        .expect("a replica of the slot-0 primary");
    assert_eq!(cli(replica, &["cluster", "failover"]).trim(), "OK");
    eventually("the replica is primary for slot 0", async || {
        cluster.owner(0) == replica
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A reshard: 300 slots move from one primary to another while clients run.
    let ids: HashMap<u16, String> = topo.iter().map(|(p, id, _)| (*p, id.clone())).collect();
    let from = cluster.owner(16383);
    let to = cluster.owner(8000);
    let entry = format!("127.0.0.1:{}", cluster.nodes[0].port());
    common::cluster::redis_cli(&[
        "--cluster",
        "reshard",
        &entry,
        "--cluster-from",
        &ids[&from],
        "--cluster-to",
        &ids[&to],
        "--cluster-slots",
        "300",
        "--cluster-yes",
    ]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);

    let mut all = HashMap::new();
    let mut writes = 0;
    let mut errors = Vec::new();
    for t in tasks {
        let (acked, n, e) = within("load clients finish", t).await.expect("client task");
        all.extend(acked.into_iter().map(|(k, (v, _))| (k, v)));
        writes += n;
        errors.extend(e);
    }
    println!(
        "{writes} pipelined rounds, {} acknowledged keys, {} errors: {:?}",
        all.len(),
        errors.len(),
        errors.iter().take(5).collect::<Vec<_>>()
    );
    assert!(all.len() > 100, "the load made progress");
    let (_, metrics) = http_get(mport, "/metrics").expect("scrape");
    let redirects = metric_sum(&metrics, "statecar_cluster_redirects_total");
    let changes = metric_sum(&metrics, "statecar_upstream_topology_changes_total");
    println!("{redirects} redirects followed, {changes} slot maps installed");
    assert!(
        changes >= 3.0,
        "statecar saw the failover and the reshard ({changes} slot maps)"
    );

    // Every acknowledged write is there, through statecar and straight from the cluster.
    let mut c = RawConn::connect(sc.port()).await;
    for (k, v) in &all {
        assert_eq!(
            c.cmd(&["GET", k]).await,
            bulk(v),
            "acknowledged write to {k}"
        );
    }
    for (k, v) in all.iter().filter(|(k, _)| k.starts_with('c')).take(50) {
        assert_eq!(&direct_get(&cluster, k), v);
    }
    // statecar converged: no more redirects are needed for fresh commands.
    for i in 0..200 {
        assert_eq!(c.cmd(&["SET", &format!("after{i}"), "1"]).await, ok());
    }
    let (ok, report) = statecar_verify(&sc);
    assert!(
        ok,
        "state keys and histories agree after failover and reshard: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ask_and_tryagain_during_a_slot_migration_are_followed() {
    let cluster = RedisCluster::start(3, 0);
    let mport = free_port();
    let sc = start(
        &cluster,
        &format!("{RULES}[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"),
    );
    let mut c = RawConn::connect(sc.port()).await;
    let p0 = cluster.nodes[0].port();
    // Two keys of one slot: one stays behind on the source, one is created after the slot
    // started migrating (so it only exists on the target).
    let slot = keyslot(p0, "{m}old");
    assert_eq!(c.cmd(&["SET", "{m}old", "1"]).await, ok());
    let src = cluster.owner(slot);
    let dst = cluster
        .nodes
        .iter()
        .map(|n| n.port())
        .find(|&p| p != src)
        .unwrap();
    let ids: HashMap<u16, String> = cluster
        .topology()
        .into_iter()
        .map(|(p, id, _)| (p, id))
        .collect();
    let s = slot.to_string();
    assert_eq!(
        cli(dst, &["cluster", "setslot", &s, "importing", &ids[&src]]).trim(),
        "OK"
    );
    assert_eq!(
        cli(src, &["cluster", "setslot", &s, "migrating", &ids[&dst]]).trim(),
        "OK"
    );
    // A new key in a migrating slot goes to the target (ASK), and reads follow it there.
    assert_eq!(c.cmd(&["SET", "{m}new", "2"]).await, ok());
    assert_eq!(cli(dst, &["asking"]).trim(), "OK");
    assert_eq!(c.cmd(&["GET", "{m}new"]).await, bulk("2"));
    assert_eq!(c.cmd(&["GET", "{m}old"]).await, bulk("1"));
    // A new state key is two keys (value and history): Redis refuses multi-key writes of
    // missing keys in a slot that is moving, and statecar retries for a while, then says so.
    let r = c.cmd(&["SET", "s:{m}", &json(5)]).await;
    assert!(
        r.error_text().is_some_and(|e| e.starts_with("TRYAGAIN")),
        "{r:?}"
    );
    // A multi-key command with one key on each side gets TRYAGAIN until the move is done.
    let mut slow = RawConn::connect(sc.port()).await;
    slow.send_cmd(&["MGET", "{m}old", "{m}new"]).await;
    common::cluster::redis_cli(&[
        "-p",
        &src.to_string(),
        "migrate",
        "127.0.0.1",
        &dst.to_string(),
        "",
        "0",
        "5000",
        "keys",
        "{m}old",
    ]);
    for p in [src, dst] {
        cli(p, &["cluster", "setslot", &s, "node", &ids[&dst]]);
    }
    let r = within("MGET during the migration", slow.read()).await;
    assert!(
        r == Frame::Array(vec![bulk("1"), bulk("2")]) || r.is_error(),
        "MGET gave the values or a TRYAGAIN error, nothing else: {r:?}"
    );
    assert_eq!(
        c.cmd(&["MGET", "{m}old", "{m}new"]).await,
        Frame::Array(vec![bulk("1"), bulk("2")])
    );
    // Once the slot has moved, the state key is written where its slot now lives (twice, so
    // it has an older version in its history too).
    assert_eq!(c.cmd(&["SET", "s:{m}", &json(4)]).await, ok());
    assert_eq!(c.cmd(&["SET", "s:{m}", &json(5)]).await, ok());
    assert_eq!(c.cmd(&["GET", "s:{m}"]).await, bulk(json(5)));
    assert_eq!(
        cli(dst, &["exists", "s:{m}", "__statecar:h:s:{m}"]).trim(),
        "2"
    );
    let (_, metrics) = http_get(mport, "/metrics").expect("scrape");
    assert!(
        metrics.contains("statecar_cluster_redirects_total{kind=\"ask\"}"),
        "ASK redirects were followed"
    );
}
