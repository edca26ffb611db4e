//! Faults and hostile input: Redis dying under load, malformed and oversized input, SIGTERM
//! draining, and configuration mistakes.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

// ------------------------------------------------------------------------------------------
// 11. Redis killed and restarted under load
// ------------------------------------------------------------------------------------------

const CLIENTS: usize = 20;

#[derive(Default)]
struct Shared {
    /// Bumped just before and just after Redis is killed: an acknowledged write is only
    /// known to be in Redis if no kill happened between sending it and reading a later reply.
    generation: AtomicU64,
    stop: AtomicBool,
    restarted: AtomicBool,
    /// Per client: successful GETs so far.
    good_reads: Vec<AtomicU64>,
    /// Per client: errors seen since the kill.
    errors_after_kill: Vec<AtomicU64>,
    /// Per client: consecutive fully successful rounds after the restart.
    streak_after_restart: Vec<AtomicU64>,
    failures: Mutex<Vec<String>>,
    error_kinds: Mutex<HashSet<String>>,
}

impl Shared {
    fn fail(&self, s: String) {
        self.failures.lock().unwrap().push(s);
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// One client hammering SET/GET on its own key, checking every reply it gets.
async fn load_client(c: usize, port: u16, sh: Arc<Shared>) {
    let mut con = RawConn::connect(port).await;
    let key = format!("load:{c}");
    let mut next_idx: u64 = 0;
    // (index, generation when that SET was sent) of the last SET that returned OK.
    let mut floor: Option<(u64, u64)> = None;
    let mut round: u64 = 0;
    while !sh.stop.load(Ordering::SeqCst) {
        round += 1;
        let pairs = if round.is_multiple_of(2) { 3 } else { 1 };
        let gen_sent = sh.generation.load(Ordering::SeqCst);
        let mut bytes = Vec::new();
        let mut idxs = Vec::new();
        for _ in 0..pairs {
            next_idx += 1;
            idxs.push(next_idx);
            bytes.extend(encode(&["SET", &key, &format!("c{c}-{next_idx}")]));
            bytes.extend(encode(&["GET", &key]));
        }
        if con.try_send(&bytes).await.is_err() {
            sh.fail(format!(
                "client {c}: statecar closed the connection (write failed)"
            ));
            return;
        }
        let mut all_ok = true;
        for idx in idxs {
            // SET reply
            match con.read_for(WAIT).await {
                Ok(Frame::Simple(s)) if s == "OK" => floor = Some((idx, gen_sent)),
                Ok(Frame::Error(e)) => {
                    all_ok = false;
                    note_error(&sh, c, &e);
                }
                Ok(other) => {
                    sh.fail(format!("client {c}: SET replied {other:?}"));
                    return;
                }
                Err(e) => {
                    sh.fail(format!("client {c}: no reply to SET: {e:?}"));
                    return;
                }
            }
            // GET reply
            let got = con.read_for(WAIT).await;
            let gen_now = sh.generation.load(Ordering::SeqCst);
            let floor_valid = floor.filter(|&(_, g)| g == gen_now);
            match got {
                Ok(Frame::Bulk(v)) => {
                    let v = String::from_utf8_lossy(&v).into_owned();
                    let Some((owner, n)) = v
                        .strip_prefix('c')
                        .and_then(|r| r.split_once('-'))
                        .and_then(|(a, b)| {
                            Some((a.parse::<usize>().ok()?, b.parse::<u64>().ok()?))
                        })
                    else {
                        sh.fail(format!("client {c}: GET returned a foreign value {v:?}"));
                        return;
                    };
                    if owner != c {
                        sh.fail(format!(
                            "client {c}: GET returned client {owner}'s value {v:?}"
                        ));
                        return;
                    }
                    if n > next_idx {
                        sh.fail(format!("client {c}: GET returned {v:?}, never written"));
                        return;
                    }
                    if let Some((f, _)) = floor_valid
                        && n < f
                    {
                        sh.fail(format!(
                            "client {c}: GET returned {v:?} after c{c}-{f} was acknowledged (stale)"
                        ));
                        return;
                    }
                    sh.good_reads[c].fetch_add(1, Ordering::SeqCst);
                }
                Ok(Frame::NullBulk) => {
                    if let Some((f, _)) = floor_valid {
                        sh.fail(format!(
                            "client {c}: GET returned nil after c{c}-{f} was acknowledged, with no restart in between"
                        ));
                        return;
                    }
                    all_ok = false;
                }
                Ok(Frame::Error(e)) => {
                    all_ok = false;
                    note_error(&sh, c, &e);
                }
                Ok(other) => {
                    sh.fail(format!("client {c}: GET replied {other:?}"));
                    return;
                }
                Err(e) => {
                    sh.fail(format!("client {c}: no reply to GET: {e:?}"));
                    return;
                }
            }
        }
        if sh.restarted.load(Ordering::SeqCst) {
            if all_ok {
                sh.streak_after_restart[c].fetch_add(1, Ordering::SeqCst);
            } else {
                sh.streak_after_restart[c].store(0, Ordering::SeqCst);
            }
        }
        if !all_ok {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Still connected and consistent at the end.
    let last = format!("c{c}-final");
    let r = con.cmd(&["SET", &key, &last]).await;
    if r != ok() {
        sh.fail(format!("client {c}: final SET replied {r:?}"));
        return;
    }
    let r = con.cmd(&["GET", &key]).await;
    if r != bulk(&last) {
        sh.fail(format!("client {c}: final GET replied {r:?}"));
    }
}

fn note_error(sh: &Shared, c: usize, e: &str) {
    if !e.starts_with("ERR upstream") {
        sh.fail(format!(
            "client {c}: unexpected error while Redis was down: {e:?}"
        ));
        return;
    }
    sh.errors_after_kill[c].fetch_add(1, Ordering::SeqCst);
    // Keep the kind of error, without the details, for the report.
    let kind: String = e.split(['(', ':']).next().unwrap_or(e).to_string();
    sh.error_kinds.lock().unwrap().insert(kind);
}

async fn wait_all(sh: &Shared, what: &str, limit: Duration, f: impl Fn(usize) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if !sh.failures.lock().unwrap().is_empty() {
            return;
        }
        let missing: Vec<usize> = (0..CLIENTS).filter(|&c| !f(c)).collect();
        if missing.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            sh.fail(format!(
                "{what}: clients {missing:?} still waiting after {limit:?}"
            ));
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() {
    let mut redis = RedisServer::start();
    let sc = Statecar::start(redis.port(), "[upstream]\nconnect_timeout_ms = 1000\n");
    let sh = Arc::new(Shared {
        good_reads: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        errors_after_kill: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        streak_after_restart: (0..CLIENTS).map(|_| AtomicU64::new(0)).collect(),
        ..Default::default()
    });
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(load_client(c, sc.port(), sh.clone())));
    }
    wait_all(&sh, "warm-up", WAIT, |c| {
        sh.good_reads[c].load(Ordering::SeqCst) >= 20
    })
    .await;
    for c in 0..CLIENTS {
        sh.errors_after_kill[c].store(0, Ordering::SeqCst);
    }
    assert!(
        sh.failures.lock().unwrap().is_empty(),
        "{:?}",
        sh.failures.lock().unwrap()
    );

    sh.generation.fetch_add(1, Ordering::SeqCst);
    tokio::task::block_in_place(|| redis.kill());
    sh.generation.fetch_add(1, Ordering::SeqCst);

    // Everyone notices, and keeps going for about a second.
    wait_all(&sh, "errors while Redis is down", WAIT, |c| {
        sh.errors_after_kill[c].load(Ordering::SeqCst) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    sh.restarted.store(true, Ordering::SeqCst);
    for c in 0..CLIENTS {
        sh.streak_after_restart[c].store(0, Ordering::SeqCst);
    }
    tokio::task::block_in_place(|| redis.restart());
    wait_all(
        &sh,
        "recovery after restart",
        Duration::from_secs(30),
        |c| sh.streak_after_restart[c].load(Ordering::SeqCst) >= 20,
    )
    .await;

    sh.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        within("a load client to finish", t).await.unwrap();
    }
    let failures = sh.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failures: {failures:#?}");
    eprintln!(
        "errors seen while Redis was down: {:?}",
        sh.error_kinds.lock().unwrap()
    );
    // The proxy itself is fine.
    let mut p = RawConn::connect(sc.port()).await;
    assert_eq!(p.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

/// With Redis down from the start, clients get a clear error quickly (no hang), transactions
/// and blocking commands too, and everything works once Redis appears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_gives_clear_errors_then_recovers() {
    let mut redis = RedisServer::start();
    let sc = Statecar::start(redis.port(), "[upstream]\nconnect_timeout_ms = 1000\n");
    tokio::task::block_in_place(|| redis.kill());
    let mut a = RawConn::connect(sc.port()).await;
    for c in [&["GET", "k"][..], &["SET", "k", "v"], &["BLPOP", "q", "1"]] {
        let r = a.cmd(c).await;
        let e = r
            .error_text()
            .unwrap_or_else(|| panic!("{c:?} with Redis down: {r:?}"));
        assert!(e.starts_with("ERR upstream"), "{c:?}: {e}");
        assert!(
            e.contains(&redis.port().to_string()),
            "the error names the upstream: {e}"
        );
    }
    // A transaction that cannot get its connection fails as a whole, at EXEC (issue 12:
    // nothing queued after MULTI may run outside it), with the same clear error.
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        a.cmd(&["SET", "k", "v"]).await,
        Frame::Simple("QUEUED".into())
    );
    let r = a.cmd(&["EXEC"]).await;
    let e = r
        .error_text()
        .unwrap_or_else(|| panic!("EXEC with Redis down: {r:?}"));
    assert!(e.starts_with("EXECABORT"), "EXEC: {e}");
    assert!(e.contains("upstream"), "EXEC: {e}");
    assert!(
        e.contains(&redis.port().to_string()),
        "the error names the upstream: {e}"
    );
    tokio::task::block_in_place(|| redis.restart());
    eventually("statecar reconnects", async || {
        a.cmd(&["PING"]).await == Frame::Simple("PONG".into())
    })
    .await;
    assert_eq!(a.cmd(&["SET", "k", "v"]).await, ok());
    assert_eq!(a.cmd(&["GET", "k"]).await, bulk("v"));
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["INCR", "n"]).await, Frame::Simple("QUEUED".into()));
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![int(1)]));
    assert_eq!(a.cmd(&["RPUSH", "q", "x"]).await, int(1));
    assert_eq!(a.cmd(&["BLPOP", "q", "1"]).await, bulks(&["q", "x"]));
}

// ------------------------------------------------------------------------------------------
// 12. malformed and hostile input
// ------------------------------------------------------------------------------------------

/// Sends `bytes` to statecar and to Redis: both must answer the same error line and close.
async fn protocol_error_like_redis(proxy_port: u16, redis_port: u16, bytes: &[u8], want: &str) {
    let mut p = RawConn::connect(proxy_port).await;
    let _ = p.try_send(bytes).await;
    let got = p.try_read().await;
    let mut d = RawConn::connect(redis_port).await;
    let _ = d.try_send(bytes).await;
    let from_redis = d.try_read().await;
    assert_eq!(
        from_redis,
        Ok(err(want)),
        "test expectation disagrees with Redis itself for {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
    );
    assert_eq!(
        got,
        Ok(err(want)),
        "statecar's answer to {:?}",
        String::from_utf8_lossy(&bytes[..bytes.len().min(60)])
    );
    p.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_redis_protocol_errors_and_is_closed() {
    let (redis, mut sc) = start_pair("");
    let (pp, rp) = (sc.port(), redis.port());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"*abc\r\n".to_vec(),
            "ERR Protocol error: invalid multibulk length",
        ),
        (
            b"*1\r\n$abc\r\n".to_vec(),
            "ERR Protocol error: invalid bulk length",
        ),
        (
            b"*1\r\n:5\r\n".to_vec(),
            "ERR Protocol error: expected '$', got ':'",
        ),
        (
            b"*2\r\n$3\r\nGET\r\n+x\r\n".to_vec(),
            "ERR Protocol error: expected '$', got '+'",
        ),
        (
            vec![b'a'; 70_000],
            "ERR Protocol error: too big inline request",
        ),
        (
            b"SET \"abc\r\n".to_vec(),
            "ERR Protocol error: unbalanced quotes in request",
        ),
        (
            b"*1\r\n$999999999999\r\n".to_vec(),
            "ERR Protocol error: invalid bulk length",
        ),
        (
            b"*99999999999\r\n".to_vec(),
            "ERR Protocol error: invalid multibulk length",
        ),
        (
            b"*1\r\n$-5\r\n".to_vec(),
            "ERR Protocol error: invalid bulk length",
        ),
    ];
    for (bytes, want) in &cases {
        protocol_error_like_redis(pp, rp, bytes, want).await;
    }

    // Valid commands before the bad one are answered first, as by Redis.
    let mut bytes = encode(&["SET", "before", "1"]);
    bytes.extend(encode(&["INCR", "before"]));
    bytes.extend(b"*x\r\n");
    bytes.extend(encode(&["SET", "after", "1"]));
    let mut p = RawConn::connect(pp).await;
    p.send(&bytes).await;
    assert_eq!(p.read().await, ok());
    assert_eq!(p.read().await, int(2));
    assert_eq!(
        p.read().await,
        err("ERR Protocol error: invalid multibulk length")
    );
    p.expect_closed().await;
    let mut direct = RawConn::connect(rp).await;
    assert_eq!(
        direct.cmd(&["EXISTS", "after"]).await,
        int(0),
        "nothing after the error runs"
    );

    // Inline commands work (Redis accepts them), including quoting.
    let mut p = RawConn::connect(pp).await;
    p.send(b"SET inline \"two words\"\r\nGET inline\r\nPING\n")
        .await;
    assert_eq!(p.read().await, ok());
    assert_eq!(p.read().await, bulk("two words"));
    assert_eq!(p.read().await, Frame::Simple("PONG".into()));
    // Empty lines and `*0` are ignored, as by Redis.
    p.send(b"\r\n*0\r\nPING\r\n").await;
    assert_eq!(p.read().await, Frame::Simple("PONG".into()));

    assert!(sc.is_running(), "statecar died");
    let mut q = RawConn::connect(pp).await;
    assert_eq!(q.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_limits_refuse_oversized_input() {
    let (redis, mut sc) = start_pair(
        "[limits]\nmax_bulk_len = 1048576\nmax_multibulk_len = 100\nmax_inline_len = 1024\n",
    );
    let pp = sc.port();
    // A 100 MB bulk header is refused at once, before 100 MB are sent.
    let mut p = RawConn::connect(pp).await;
    p.send(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$104857600\r\n")
        .await;
    let r = p.try_read().await;
    assert!(
        matches!(&r, Ok(Frame::Error(e)) if e.starts_with("ERR Protocol error")),
        "100 MB bulk with max_bulk_len = 1 MB: {r:?}"
    );
    p.expect_closed().await;
    // Just under the limit is fine.
    let mut p = RawConn::connect(pp).await;
    let v = vec![b'v'; 1048576];
    assert_eq!(p.cmd(&[&b"SET"[..], b"atlimit", &v]).await, ok());
    // One byte over is not.
    let mut p = RawConn::connect(pp).await;
    let v = vec![b'v'; 1048577];
    let _ = p.try_send(&encode(&[&b"SET"[..], b"over", &v])).await;
    let r = p.try_read().await;
    assert!(
        matches!(&r, Ok(Frame::Error(e)) if e.starts_with("ERR Protocol error")),
        "{r:?}"
    );
    p.expect_closed().await;
    // Too many arguments.
    let mut p = RawConn::connect(pp).await;
    let mut args = vec!["RPUSH".to_string(), "l".to_string()];
    args.extend((0..98).map(|i| i.to_string()));
    assert_eq!(p.cmd(&args).await, int(98));
    args.push("one-too-many".into());
    let _ = p.try_send(&encode(&args)).await;
    let r = p.try_read().await;
    assert!(
        matches!(&r, Ok(Frame::Error(e)) if e.starts_with("ERR Protocol error")),
        "{r:?}"
    );
    p.expect_closed().await;
    // A long inline line.
    let mut p = RawConn::connect(pp).await;
    let _ = p.try_send(&vec![b'x'; 4000]).await;
    let r = p.try_read().await;
    assert_eq!(r, Ok(err("ERR Protocol error: too big inline request")));
    p.expect_closed().await;

    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(direct.cmd(&["EXISTS", "big", "over"]).await, int(0));
    assert!(sc.is_running());
    let mut q = RawConn::connect(pp).await;
    assert_eq!(q.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanishing_and_garbage_clients_do_not_hurt_the_proxy() {
    let (redis, mut sc) = start_pair("");
    let pp = sc.port();
    let mut direct = RawConn::connect(redis.port()).await;
    let mut watcher = RawConn::connect(pp).await;
    assert_eq!(watcher.cmd(&["SET", "w", "1"]).await, ok());

    // Half a command, then gone: it never runs.
    for _ in 0..20 {
        let mut p = RawConn::connect(pp).await;
        p.send(b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$5\r\nva").await;
        drop(p);
    }
    // Half a pipeline: the complete commands run, the partial one does not.
    let mut p = RawConn::connect(pp).await;
    let mut bytes = encode(&["SET", "whole", "1"]);
    bytes.extend(b"*3\r\n$3\r\nSET\r\n$4\r\nhalf");
    p.send(&bytes).await;
    assert_eq!(p.read().await, ok());
    drop(p);

    // A client that pipelines a lot of big replies and leaves without reading them.
    assert_eq!(
        watcher
            .cmd(&[&b"SET"[..], b"bigv", &vec![b'b'; 100_000]])
            .await,
        ok()
    );
    for _ in 0..5 {
        let mut p = RawConn::connect(pp).await;
        let mut bytes = Vec::new();
        for _ in 0..500 {
            bytes.extend(encode(&["GET", "bigv"]));
        }
        p.send(&bytes).await;
        drop(p);
    }

    // Random garbage, 60 different blobs; each client then half-closes its connection, after
    // which statecar must answer what it can and close (Redis closes at once).
    let mut stuck = Vec::new();
    for seed in 0..60u64 {
        let mut blob = pseudo_random_bytes(seed, 64 + (seed as usize * 97) % 4000);
        // Never a plausible inline command name: start with a RESP type byte or high bytes.
        blob[0] = [b'*', b'$', 0xff, b'*'][seed as usize % 4];
        let mut p = RawConn::connect(pp).await;
        let _ = p.try_send(&blob).await;
        let _ = p.stream.shutdown().await;
        match p.try_read_to_eof(Duration::from_secs(5)).await {
            Ok(rest) => {
                let frames = parse_all(&rest)
                    .unwrap_or_else(|e| panic!("seed {seed}: unparseable reply: {e}"));
                assert!(
                    frames.iter().all(|f| matches!(f, Frame::Error(_))),
                    "seed {seed}: garbage produced non-error replies {frames:?}"
                );
            }
            Err(_) => {
                // No point going on: a wedged session may have taken a worker thread with it.
                stuck.push(seed);
                break;
            }
        }
    }
    assert!(
        stuck.is_empty(),
        "statecar neither answered nor closed the connection after garbage from seeds {stuck:?} \
         (pseudo_random_bytes(seed, 64 + seed * 97 % 4000), first byte replaced)"
    );

    assert!(sc.is_running(), "statecar died");
    assert_eq!(
        watcher.cmd(&["GET", "w"]).await,
        bulk("1"),
        "an existing client is unaffected"
    );
    assert_eq!(direct.cmd(&["EXISTS", "half"]).await, int(0));
    assert_eq!(direct.cmd(&["GET", "whole"]).await, bulk("1"));
    let mut q = RawConn::connect(pp).await;
    assert_eq!(q.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    for i in 0..100 {
        assert_eq!(q.cmd(&["SET", "after", &i.to_string()]).await, ok());
        assert_eq!(q.cmd(&["GET", "after"]).await, bulk(i.to_string()));
    }
}

/// Inline commands containing bytes that are not separators for Redis's parser (NUL, form
/// feed, vertical tab) must neither hang the connection nor the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inline_commands_with_control_bytes_do_not_hang() {
    let (_redis, mut sc) = start_pair("");
    for (i, line) in [
        &b"PING a\x00b\r\n"[..],
        b"PING \x00\r\n",
        b"\x00\r\n",
        b"PING a\x0cb\r\n",
        b"PING a\x0bb\r\n",
    ]
    .iter()
    .enumerate()
    {
        let mut p = RawConn::connect(sc.port()).await;
        let mut bytes = line.to_vec();
        bytes.extend(encode(&["PING", "sentinel"]));
        p.send(&bytes).await;
        // Whatever the answer to the odd line, the connection must not stall: either the
        // sentinel comes back or the connection is closed.
        let mut got = Vec::new();
        loop {
            match p.read_for(Duration::from_secs(10)).await {
                Ok(f) if f == bulk("sentinel") => break,
                Ok(f) => got.push(f),
                Err(ReadEnd::Closed) => break,
                Err(ReadEnd::Timeout) => panic!(
                    "case {i} {:?}: no sentinel reply and no close within 10 s (got {got:?})",
                    String::from_utf8_lossy(line)
                ),
            }
        }
        assert!(sc.is_running(), "statecar died on case {i}");
        let mut q = RawConn::connect(sc.port()).await;
        assert_eq!(
            q.cmd(&["PING"]).await,
            Frame::Simple("PONG".into()),
            "statecar stopped serving after case {i}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 13. drain on SIGTERM
// ------------------------------------------------------------------------------------------

/// (tx_queue, rx_queue) of the TCP socket `local_port` -> `remote_port`, from /proc/net/tcp.
fn tcp_queues(local_port: u16, remote_port: u16) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 {
            continue;
        }
        let port = |s: &str| u16::from_str_radix(s.rsplit(':').next()?, 16).ok();
        if port(f[1]) == Some(local_port) && port(f[2]) == Some(remote_port) {
            let (tx, rx) = f[4].split_once(':')?;
            return Some((
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ));
        }
    }
    None
}

/// Waits until everything written on `conn` has been read by the process at `peer_port`:
/// our send queue is empty (the peer's kernel acknowledged it all) and the peer's receive
/// queue is empty (its owner read it). Not a sleep: a fact read from the kernel.
async fn wait_read_by_peer(conn: &RawConn, peer_port: u16, what: &str) {
    let me = conn.stream.local_addr().unwrap().port();
    eventually(what, async || {
        matches!(tcp_queues(me, peer_port), Some((0, _)))
            && matches!(tcp_queues(peer_port, me), Some((_, 0)))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_pipelines_then_exits_zero() {
    let (redis, mut sc) = start_pair("");
    let pp = sc.port();
    let mut a = RawConn::connect(pp).await;
    let mut idle = RawConn::connect(pp).await;
    assert_eq!(a.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    assert_eq!(idle.cmd(&["PING"]).await, Frame::Simple("PONG".into()));

    // Redis is made busy so that A's pipeline is still in flight when SIGTERM arrives.
    let mut sleeper = RawConn::connect(redis.port()).await;
    sleeper.send_cmd(&["DEBUG", "SLEEP", "3"]).await;
    wait_read_by_peer(&sleeper, redis.port(), "redis read DEBUG SLEEP").await;

    let mut bytes = Vec::new();
    for _ in 0..200 {
        bytes.extend(encode(&["INCR", "drain"]));
    }
    bytes.extend(encode(&["GET", "drain"]));
    a.send(&bytes).await;
    wait_read_by_peer(&a, pp, "statecar read the pipeline").await;

    sc.sigterm();
    // New connections are refused while the old ones drain.
    eventually("listener closed after SIGTERM", async || {
        tokio::net::TcpStream::connect(("127.0.0.1", pp))
            .await
            .is_err()
    })
    .await;
    let running = sc.is_running();
    if sleeper.nothing_pending(Duration::from_millis(1)).await {
        // Redis is still asleep, so A's commands are unanswered: statecar must still be there.
        assert!(running, "statecar exited with commands in flight");
    }

    for i in 1..=200 {
        assert_eq!(
            a.read().await,
            int(i),
            "reply {i} of the in-flight pipeline"
        );
    }
    assert_eq!(a.read().await, bulk("200"));
    a.expect_closed().await;
    idle.expect_closed().await;
    let st = sc
        .wait_exit(WAIT)
        .expect("statecar did not exit after draining");
    assert!(st.success(), "exit status after SIGTERM: {st}");
    assert_eq!(sleeper.read().await, ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_only_idle_clients_exits_promptly() {
    let (_redis, mut sc) = start_pair("");
    let mut conns = Vec::new();
    for _ in 0..10 {
        let mut c = RawConn::connect(sc.port()).await;
        assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
        conns.push(c);
    }
    sc.sigterm();
    for c in &mut conns {
        c.expect_closed().await;
    }
    let st = sc.wait_exit(WAIT).expect("statecar did not exit");
    assert!(st.success(), "{st}");
}

// ------------------------------------------------------------------------------------------
// 14. configuration
// ------------------------------------------------------------------------------------------

fn write_config(dir: &tempfile::TempDir, text: &str) -> String {
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn bad_config_fails_with_one_line_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[upstream]\nmax_conections = 3\n",
            "upstream.max_conections",
        ),
        ("[upstream]\ntimeout_ms = \"soon\"\n", "upstream.timeout_ms"),
        (
            "[upstream]\nmax_connections = 0\n",
            "upstream.max_connections",
        ),
        ("listen = \"nowhere\"\n", "listen"),
        ("[upstream]\nurl = \"http://x\"\n", "upstream.url"),
        ("[limits]\nmax_bulk_len = -1\n", "limits.max_bulk_len"),
        ("bogus = 1\n", "bogus"),
    ];
    for (text, field) in cases {
        let path = write_config(&dir, text);
        let (st, stderr) = Statecar::run_to_exit(&["--config", &path], &[]);
        assert!(!st.success(), "config {text:?} was accepted");
        let lines: Vec<&str> = stderr.trim().lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "config {text:?}: want one stderr line, got {stderr:?}"
        );
        assert!(
            lines[0].contains(field),
            "config {text:?}: {:?} does not name {field}",
            lines[0]
        );
    }
    // A missing file too.
    let (st, stderr) = Statecar::run_to_exit(&["--config", "/nonexistent/statecar.toml"], &[]);
    assert!(!st.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("/nonexistent/statecar.toml"), "{stderr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_without_a_config_file_from_flags() {
    let redis = RedisServer::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = redis.url();
    let sc = Statecar::spawn(port, "", &["--listen", &listen, "--upstream", &url], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut a = RawConn::connect(sc.port()).await;
    assert_eq!(a.cmd(&["SET", "flags", "yes"]).await, ok());
    let mut d = RawConn::connect(redis.port()).await;
    assert_eq!(d.cmd(&["GET", "flags"]).await, bulk("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_configure_listen_and_upstream() {
    let redis = RedisServer::start();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("{}/4", redis.url());
    let sc = Statecar::spawn(
        port,
        "",
        &[],
        &[("STATECAR_LISTEN", &listen), ("STATECAR_UPSTREAM", &url)],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut a = RawConn::connect(sc.port()).await;
    assert_eq!(a.cmd(&["SET", "env", "yes"]).await, ok());
    let mut d = RawConn::connect(redis.port()).await;
    assert_eq!(d.cmd(&["SELECT", "4"]).await, ok());
    assert_eq!(d.cmd(&["GET", "env"]).await, bulk("yes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_config_file() {
    let redis = RedisServer::start();
    let file_port = free_port();
    let port = free_port();
    // The file points at a port where nothing listens; the flag fixes it.
    let dead = free_port();
    let text = format!(
        "listen = \"127.0.0.1:{file_port}\"\n[upstream]\nurl = \"redis://127.0.0.1:{dead}\"\nmax_connections = 2\n"
    );
    let listen = format!("127.0.0.1:{port}");
    let url = redis.url();
    let sc = Statecar::spawn(port, &text, &["--listen", &listen, "--upstream", &url], &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut a = RawConn::connect(sc.port()).await;
    assert_eq!(a.cmd(&["SET", "over", "ride"]).await, ok());
    let mut d = RawConn::connect(redis.port()).await;
    assert_eq!(d.cmd(&["GET", "over"]).await, bulk("ride"));
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", file_port))
            .await
            .is_err(),
        "the file's listen address must not be used when --listen is given"
    );
}
