//! Issue 5, the parts that need many connections or a long run: slow readers (output-buffer
//! limits), clients vanishing mid-pipeline and mid-transaction, thousands of connections, and
//! recovery after Redis is killed under load. Figures are printed (`--nocapture`) for
//! docs/RELIABILITY.md; the assertions are about correctness and generous bounds, not speed.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncWriteExt;

fn rss_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Log text without terminal colour codes.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A blocking HTTP GET on loopback; returns the body.
fn http_body(port: u16, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    );
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// The value of one sample line (`name{labels}`) on /metrics, 0 if absent.
async fn metric(port: u16, series: &str) -> f64 {
    let series = series.to_string();
    let body = tokio::task::spawn_blocking(move || http_body(port, "/metrics"))
        .await
        .unwrap_or_default();
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{series} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Samples statecar's RSS every 50 ms until stopped; returns the largest value seen.
fn rss_sampler(pid: u32, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut max = rss_kb(pid);
        while !stop.load(Ordering::Relaxed) {
            max = max.max(rss_kb(pid));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        max.max(rss_kb(pid))
    })
}

/// Sends `GET key` in pipelined groups of 8 and never reads a reply, until statecar closes
/// the connection (a write fails) or `max` commands were sent. Returns how many were sent and
/// whether the connection was closed.
async fn send_gets_without_reading(port: u16, key: &str, max: usize) -> (usize, bool) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let group = encode(&["GET", key]).repeat(8);
    let mut sent = 0;
    while sent < max {
        match tokio::time::timeout(WAIT, s.write_all(&group)).await {
            Ok(Ok(())) => sent += 8,
            Ok(Err(_)) => return (sent, true),
            // statecar stopped reading us and did not close: the test fails on `false`.
            Err(_) => return (sent, false),
        }
    }
    // Everything may fit in socket buffers before statecar has even read it: keep poking
    // (a PING every 50 ms) until the connection turns out closed, for at most WAIT.
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        match tokio::time::timeout(WAIT, s.write_all(&encode(&["PING"]))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return (sent, true),
            Err(_) => return (sent, false),
        }
    }
    (sent, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_at_the_hard_limit_and_others_are_unaffected() {
    let (_redis, sc, mport) =
        with_metrics("[limits]\nmax_output_buffer = 4194304\noutput_buffer_soft_limit = 0\n");
    let port = sc.port();
    let value = pseudo_random_bytes(7, 512 * 1024);
    let mut setup = RawConn::connect(port).await;
    assert_eq!(setup.cmd(&[&b"SET"[..], b"big", &value]).await, ok());
    let base_rss = rss_kb(sc.pid());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = rss_sampler(sc.pid(), stop.clone());

    // A well-behaved client runs alongside the whole time and must get every reply right.
    let done = Arc::new(AtomicBool::new(false));
    let good = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut c = RawConn::connect(port).await;
            let mut rounds = 0u32;
            let mut slowest = Duration::ZERO;
            while !done.load(Ordering::Relaxed) || rounds < 50 {
                let v = format!("good value {rounds}");
                let t = Instant::now();
                assert_eq!(c.cmd(&["SET", "good", &v]).await, ok());
                assert_eq!(c.cmd(&["GET", "good"]).await, bulk(&v));
                slowest = slowest.max(t.elapsed());
                rounds += 1;
            }
            (rounds, slowest)
        })
    };

    // 20 000 GETs of 512 KB would be 10 GB of replies.
    let (sent, closed) = send_gets_without_reading(port, "big", 20_000).await;
    done.store(true, Ordering::Relaxed);
    let (rounds, slowest) = good.await.expect("good client");
    stop.store(true, Ordering::Relaxed);
    let max_rss = sampler.await.unwrap_or(0);
    assert!(
        closed,
        "the client that never reads was not disconnected after {sent} GETs"
    );
    eventually("the disconnect is counted", async || {
        metric(
            mport,
            "statecar_client_output_buffer_disconnects_total{class=\"normal\",limit=\"hard\"}",
        )
        .await
            == 1.0
    })
    .await;
    let log = strip_ansi(&sc.stderr());
    let warning = log
        .lines()
        .find(|l| l.contains("client output buffer over its limit"))
        .unwrap_or_else(|| panic!("no warning logged:\n{log}"));
    assert!(
        warning.contains("WARN")
            && warning.contains("client=")
            && warning.contains("limit=\"hard\""),
        "the warning names the client and the limit: {warning}"
    );
    let growth_mb = max_rss.saturating_sub(base_rss) as f64 / 1024.0;
    eprintln!(
        "slow reader (hard limit 4 MB, 512 KB replies): disconnected (it had written {sent} \
         GETs, {:.0} MB of replies, into its socket); statecar RSS {base_rss} kB -> peak \
         {max_rss} kB (+{growth_mb:.1} MB); the other client did {rounds} SET+GET rounds, \
         slowest {slowest:?}",
        sent as f64 * 0.5
    );
    // Typically +73 MB: the batch being written (up to 128 replies of 512 KB) is exempt. On a
    // loaded machine the upstream connection may meanwhile be reading the next batch's replies
    // into its buffer, which grows by doubling: +146 MB was seen once in seven runs. Without a
    // limit this client would hold gigabytes.
    assert!(
        growth_mb < 192.0,
        "statecar grew by {growth_mb:.1} MB while holding replies for a client that reads nothing"
    );
    // The proxy is still fine.
    assert!(!setup.cmd(&["GET", "good"]).await.is_error());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_is_cut_at_the_pubsub_soft_limit() {
    let (_redis, sc, mport) = with_metrics(
        "[limits]\npubsub_max_output_buffer = 0\npubsub_output_buffer_soft_limit = 1048576\n\
         pubsub_output_buffer_soft_s = 1\n",
    );
    let port = sc.port();
    let message = "m".repeat(64 * 1024);

    // The slow subscriber subscribes, then never reads again.
    let mut slow = RawConn::connect(port).await;
    slow.send_cmd(&["SUBSCRIBE", "news"]).await;
    assert_eq!(
        slow.read().await,
        Frame::Array(vec![bulk("subscribe"), bulk("news"), int(1)])
    );
    // A subscriber that reads everything, at the same time.
    let mut fast = RawConn::connect(port).await;
    fast.send_cmd(&["SUBSCRIBE", "news"]).await;
    assert_eq!(
        fast.read().await,
        Frame::Array(vec![bulk("subscribe"), bulk("news"), int(1)])
    );

    let published = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (published, stop, message) = (published.clone(), stop.clone(), message.clone());
        tokio::spawn(async move {
            let mut p = RawConn::connect(port).await;
            // Bounded: 20 000 messages of 64 KB; the slow subscriber is cut long before.
            for i in 0..20_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Frame::Int(_) = p.cmd(&["PUBLISH", "news", &format!("{i}:{message}")]).await
                else {
                    panic!("PUBLISH failed");
                };
                published.store(i + 1, Ordering::Relaxed);
                if i % 64 == 63 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };
    let reader = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            match fast.read_for(Duration::from_secs(3)).await {
                Ok(Frame::Array(parts)) => {
                    let text = parts[2].text();
                    let (seq, body) = text.split_once(':').expect("seq:body");
                    assert_eq!(seq.parse::<u64>().ok(), Some(n), "message out of order");
                    assert_eq!(body.len(), 64 * 1024);
                    n += 1;
                }
                Ok(other) => panic!("unexpected frame {other:?}"),
                Err(_) => return n,
            }
        }
    });
    eventually("the slow subscriber is disconnected", async || {
        metric(
            mport,
            "statecar_client_output_buffer_disconnects_total{class=\"pubsub\",limit=\"soft\"}",
        )
        .await
            == 1.0
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    publisher.await.expect("publisher");
    let received = reader.await.expect("reader");
    let sent = published.load(Ordering::Relaxed);
    eprintln!(
        "slow subscriber (pubsub soft limit 1 MB for 1 s, 64 KB messages): cut after {sent} \
         messages; the reading subscriber got all {received}"
    );
    assert_eq!(received, sent, "the reading subscriber missed messages");
    // The slow one's connection is closed (after whatever was already in its socket).
    let rest = slow.read_to_eof().await;
    assert!(
        rest.len() < sent as usize * 66 * 1024,
        "more than was published?"
    );
    assert_eq!(
        metric(
            mport,
            "statecar_client_output_buffer_disconnects_total{class=\"normal\",limit=\"hard\"}"
        )
        .await,
        0.0
    );
}

/// A statecar started through `sh -c 'ulimit -Sn N; exec statecar ...'`, killed on drop.
struct LowLimitStatecar {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl LowLimitStatecar {
    async fn start(soft_nofile: u64, upstream_port: u16, extra: &str) -> LowLimitStatecar {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let cfg = dir.path().join("statecar.toml");
        std::fs::write(&cfg, config_text(port, upstream_port, extra)).expect("write config");
        let err = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -Sn {soft_nofile} && exec \"$@\""))
            .arg("sh")
            .arg(statecar_bin())
            .arg("--config")
            .arg(&cfg)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(err)
            .spawn()
            .expect("spawn statecar");
        let s = LowLimitStatecar {
            child,
            port,
            _dir: dir,
        };
        eventually(
            "statecar answers",
            async || match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(mut c) => {
                    let _ = c.write_all(b"PING\r\n").await;
                    let mut b = [0u8; 7];
                    use tokio::io::AsyncReadExt;
                    c.read_exact(&mut b).await.is_ok() && &b == b"+PONG\r\n"
                }
                Err(_) => false,
            },
        )
        .await;
        s
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// (soft, hard) "Max open files" from /proc/PID/limits.
    fn nofile(&self) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.pid()))
            .expect("/proc/PID/limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("Max open files line");
        let nums: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (nums[0], nums[1])
    }

    fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for LowLimitStatecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's open-file limit so that it can hold `need` descriptors; returns the
/// hard limit if that is impossible.
fn make_room_for_fds(need: u64) -> Result<(), u64> {
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap_or((0, 0));
    if hard < need {
        // Root (CI) may raise the hard limit itself.
        if rlimit::Resource::NOFILE.set(need, need).is_err() {
            return Err(hard);
        }
        return Ok(());
    }
    if soft < need {
        rlimit::Resource::NOFILE.set(hard, hard).map_err(|_| hard)?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_concurrent_clients_share_a_bounded_pool() {
    const CLIENTS: usize = 5000;
    // The test holds the client ends; statecar (which inherits the hard limit) the others.
    if let Err(hard) = make_room_for_fds(CLIENTS as u64 + 1000) {
        eprintln!(
            "SKIPPED five_thousand_concurrent_clients_share_a_bounded_pool: the open-file hard \
             limit is {hard} and cannot be raised to {} (run as root, or raise `ulimit -Hn`)",
            CLIENTS + 1000
        );
        return;
    }
    let redis = RedisServer::start();
    // statecar starts with a soft limit of 512 and must raise it itself to serve 5000 clients.
    let sc = LowLimitStatecar::start(512, redis.port(), "").await;
    let (soft, hard) = sc.nofile();
    assert_eq!(
        soft, hard,
        "statecar did not raise its open-file soft limit to the hard limit"
    );
    let mut direct = RawConn::connect(redis.port()).await;
    let base_rss = rss_kb(sc.pid());
    let t = Instant::now();
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        conns.push(RawConn::connect(sc.port).await);
    }
    let connected_in = t.elapsed();
    // Every client does a SET and a GET of its own key and value, all at the same time.
    for (i, c) in conns.iter_mut().enumerate() {
        c.send_cmd(&["SET", &format!("conn:{i}"), &format!("value {i}")])
            .await;
    }
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(c.read().await, ok(), "client {i}");
        c.send_cmd(&["GET", &format!("conn:{i}")]).await;
    }
    for (i, c) in conns.iter_mut().enumerate() {
        assert_eq!(c.read().await, bulk(format!("value {i}")), "client {i}");
    }
    let round_trips_in = t.elapsed();
    for (i, c) in conns.iter_mut().enumerate().step_by(97) {
        assert_eq!(
            c.cmd(&["PING"]).await,
            Frame::Simple("PONG".into()),
            "client {i}"
        );
    }
    let fds = sc.fd_count();
    assert!(
        fds >= CLIENTS,
        "statecar has {fds} descriptors with {CLIENTS} clients connected"
    );
    let rss = rss_kb(sc.pid());
    // Redis sees statecar's shared connections (8 by default), not 5000 clients.
    let upstream = redis_client_count(&mut direct).await - 1;
    let per_client = rss.saturating_sub(base_rss) as f64 / CLIENTS as f64;
    eprintln!(
        "{CLIENTS} clients: connected in {connected_in:?}, SET+GET on all in {round_trips_in:?}; \
         statecar fds {fds}, open-file limit {soft}/{hard}; RSS {base_rss} kB -> {rss} kB \
         ({per_client:.1} kB per client); Redis sees {upstream} connections from statecar"
    );
    assert!(
        upstream <= 8 + 256,
        "Redis sees {upstream} connections (max_connections 8 + max_leased_connections 256)"
    );
    assert!(
        upstream <= 8,
        "plain commands only use the shared connections: {upstream}"
    );
    assert!(
        per_client <= 64.0,
        "{per_client:.1} kB of RSS per connected client (sanity bound 64 kB)"
    );
    drop(conns);
    eventually("statecar closes the 5000 connections", async || {
        sc.fd_count() < 100
    })
    .await;
}

/// What a vanishing client does before it drops its socket.
async fn vanish(port: u16, kind: usize, n: usize) {
    let mut c = RawConn::connect(port).await;
    let me = format!("{kind}:{n}");
    // Half of them read the first reply (so the command surely reached Redis), half do not.
    let read_first = n.is_multiple_of(2);
    match kind {
        0 => {
            // Half a pipeline: whole commands, then one cut in the middle of a bulk string.
            let mut bytes = Vec::new();
            for i in 0..20 {
                bytes.extend_from_slice(&encode(&["SET", &format!("v:{me}:{i}"), "x"]));
            }
            bytes.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$4\r\nv:ha\r\n$100\r\nonly part");
            c.send(&bytes).await;
        }
        1 => {
            let mut bytes = encode(&["MULTI"]);
            bytes.extend_from_slice(&encode(&["SET", &format!("v:{me}"), "in a transaction"]));
            bytes.extend_from_slice(&encode(&["SET", "s:shared", &me]));
            bytes.extend_from_slice(&encode(&["INCR", "v:counter"]));
            c.send(&bytes).await;
        }
        2 => c.send_cmd(&["WATCH", "v:watched", "s:shared"]).await,
        3 => {
            c.send_cmd(&["SUBSCRIBE", "v:news", &format!("v:{me}")])
                .await
        }
        4 => c.send_cmd(&["BLPOP", &format!("v:list:{me}"), "0"]).await,
        _ => {
            // A pipeline of state reads and versioned writes, never read.
            let mut bytes = Vec::new();
            for i in 0..50 {
                bytes.extend_from_slice(&encode(&["SET", "s:shared", &format!("{me}:{i}")]));
                bytes.extend_from_slice(&encode(&["GET", "s:shared"]));
            }
            c.send(&bytes).await;
        }
    }
    if read_first && kind != 4 {
        let _ = c.read_for(WAIT).await;
    }
    drop(c);
}

/// `n` clients, each inside MULTI (so each holds a dedicated connection).
async fn pin_clients(port: u16, n: usize) -> Vec<RawConn> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = RawConn::connect(port).await;
        c.send_cmd(&["MULTI"]).await;
        v.push(c);
    }
    for c in v.iter_mut() {
        assert_eq!(c.read().await, ok());
    }
    v
}

/// Ends the clients' transactions (their connections go back clean) and closes them.
async fn release_clients(mut v: Vec<RawConn>) {
    for c in v.iter_mut() {
        c.send_cmd(&["DISCARD"]).await;
    }
    for c in v.iter_mut() {
        assert_eq!(c.read().await, ok());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_vanishing_mid_pipeline_and_mid_transaction_leave_nothing_behind() {
    let (redis, sc, mport) = with_metrics(
        "[[state]]\npattern = \"s:*\"\ncompression = \"lz4\"\nversioning = true\nmax_versions = 5\n",
    );
    let port = sc.port();
    let mut direct = RawConn::connect(redis.port()).await;
    let mut probe = RawConn::connect(port).await;
    assert_eq!(probe.cmd(&["SET", "s:shared", "start"]).await, ok());
    const ROUNDS: usize = 20;
    const CLIENTS: usize = 50;
    // Baseline: shared connections and 50 dedicated ones exist.
    release_clients(pin_clients(port, CLIENTS).await).await;
    let mut rss_after = Vec::new();
    let mut upstream_after = Vec::new();
    for round in 0..ROUNDS {
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|n| tokio::spawn(vanish(port, n % 6, round * CLIENTS + n)))
            .collect();
        for t in tasks {
            t.await.expect("vanishing client");
        }
        // Statecar notices every departure: only the probe client is left, and no dedicated
        // connection stays leased.
        eventually("statecar sees the clients gone", async || {
            metric(mport, "statecar_client_connections").await == 1.0
                && metric(mport, "statecar_upstream_leased_in_use").await == 0.0
        })
        .await;
        // Still correct for the client that stayed.
        let v = format!("round {round}");
        assert_eq!(probe.cmd(&["SET", "v:probe", &v]).await, ok());
        assert_eq!(probe.cmd(&["GET", "v:probe"]).await, bulk(&v));
        rss_after.push(rss_kb(sc.pid()));
        upstream_after.push(redis_client_count(&mut direct).await - 1);
    }
    let (u5, u20) = (upstream_after[4], upstream_after[ROUNDS - 1]);
    let (r5, r20) = (rss_after[4], rss_after[ROUNDS - 1]);
    eprintln!(
        "{ROUNDS} rounds x {CLIENTS} vanishing clients: statecar RSS after round 5 {r5} kB, \
         after round 20 {r20} kB; connections Redis sees from statecar after round 5 {u5}, \
         after round 20 {u20} (per round: {upstream_after:?})"
    );
    assert!(
        r20 <= r5 + 16 * 1024,
        "statecar RSS grew from {r5} kB to {r20} kB between rounds 5 and 20"
    );
    // The idle dedicated connections kept for reuse are at most what one round used at once.
    assert!(
        u20 <= 8 + CLIENTS,
        "{u20} upstream connections (shared 8 + at most {CLIENTS} leased at once)"
    );
    // No upstream connection was left subscribed, in MULTI, watching or blocked.
    let list = direct.cmd(&["CLIENT", "LIST"]).await.text();
    for line in list.lines().filter(|l| l.contains("name=statecar")) {
        let dirty = ["sub=1", "psub=1", "watch=1", "cmd=blpop"]
            .iter()
            .any(|f| line.split_whitespace().any(|w| w == *f))
            || line
                .split_whitespace()
                .any(|w| w.starts_with("multi=") && w != "multi=-1");
        assert!(
            !dirty,
            "a connection kept a vanished client's state: {line}"
        );
    }
    // No connection is lost track of: with 50 clients in MULTI at once, every idle dedicated
    // connection is reused before a new one is opened, so Redis must see exactly statecar's
    // shared connections plus at most those 50, as it did before the rounds.
    let pinned = pin_clients(port, CLIENTS).await;
    let with_pinned = redis_client_count(&mut direct).await - 1;
    release_clients(pinned).await;
    eprintln!("with {CLIENTS} clients in MULTI after the rounds: Redis sees {with_pinned}");
    assert!(
        with_pinned <= 8 + CLIENTS,
        "Redis holds {with_pinned} connections from statecar: some are no longer in its pool"
    );
    // Blocked clients that left are not still blocked in Redis, transactions left nothing
    // half-done, and everything still works, transactions and pub/sub included.
    assert_eq!(
        info_field(&mut direct, "clients", "blocked_clients")
            .await
            .as_deref(),
        Some("0")
    );
    assert_eq!(probe.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        probe.cmd(&["SET", "s:shared", "end"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(probe.cmd(&["EXEC"]).await, Frame::Array(vec![ok()]));
    assert_eq!(probe.cmd(&["GET", "s:shared"]).await, bulk("end"));
    let mut sub = RawConn::connect(port).await;
    sub.send_cmd(&["SUBSCRIBE", "v:news"]).await;
    assert_eq!(
        sub.read().await,
        Frame::Array(vec![bulk("subscribe"), bulk("v:news"), int(1)])
    );
    assert_eq!(probe.cmd(&["PUBLISH", "v:news", "hello"]).await, int(1));
    assert_eq!(
        sub.read().await,
        Frame::Array(vec![bulk("message"), bulk("v:news"), bulk("hello")])
    );
    let (ok, report) = statecar_verify(&sc);
    assert!(ok && report.contains(" 0 problems"), "{report}");
}

/// One load client of the recovery test: pipelines of 10 commands (versioned state writes, two
/// to the same key so the second stores the first as a delta, plain writes and reads of its
/// own keys) until `stop`. Every value it writes names it, so a
/// reply meant for another client cannot pass unnoticed. Returns (wrong replies, errors, last
/// acknowledged state write).
async fn mixed_load(port: u16, c: usize, stop: Arc<AtomicBool>) -> (Vec<String>, u64, u64) {
    let mut conn = RawConn::connect(port).await;
    let mut wrong = Vec::new();
    let mut errors = 0u64;
    let mut last_acked = 0u64;
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut bytes = Vec::new();
        let mut expect = Vec::new();
        for _ in 0..2 {
            seq += 1;
            let v = format!("c{c}-{seq}-{}", "y".repeat(300));
            bytes.extend_from_slice(&encode(&["SET", &format!("s:{c}"), &v]));
            bytes.extend_from_slice(&encode(&["SET", &format!("p:{c}:{}", seq % 8), &v]));
            bytes.extend_from_slice(&encode(&["GET", &format!("p:{c}:{}", seq % 8)]));
            bytes.extend_from_slice(&encode(&["GET", &format!("s:{c}")]));
            bytes.extend_from_slice(&encode(&["PING"]));
            expect.extend([Some(seq), None, Some(0), Some(0), None]);
        }
        if conn.try_send(&bytes).await.is_err() {
            wrong.push("connection closed by statecar".into());
            return (wrong, errors, last_acked);
        }
        for (i, e) in expect.iter().enumerate() {
            let f = match conn.try_read().await {
                Ok(f) => f,
                Err(_) => {
                    wrong.push("connection closed by statecar".into());
                    return (wrong, errors, last_acked);
                }
            };
            match (i % 5, &f) {
                (_, Frame::Error(_)) => errors += 1,
                (0, f) if *f == ok() => last_acked = last_acked.max(e.unwrap_or(0)),
                (1, f) if *f == ok() => {}
                (2 | 3, Frame::Bulk(b)) if b.starts_with(format!("c{c}-").as_bytes()) => {}
                // A key lost in the restart (nothing is persisted) reads as nil.
                (2 | 3, Frame::NullBulk) => {}
                (4, Frame::Simple(s)) if s == "PONG" => {}
                _ => wrong.push(format!("client {c} reply {i}: {f:?}")),
            }
        }
    }
    (wrong, errors, last_acked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_redis_is_killed_under_mixed_load() {
    let mut redis = RedisServer::start();
    let sc = Statecar::start(
        redis.port(),
        "[upstream]\ntimeout_ms = 2000\nconnect_timeout_ms = 500\n\
         [[state]]\npattern = \"s:*\"\ncompression = \"zstd\"\nversioning = true\n\
         max_versions = 10000\n",
    );
    let port = sc.port();
    const CLIENTS: usize = 6;
    let stop = Arc::new(AtomicBool::new(false));
    let load: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(mixed_load(port, c, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    // Redis answers PING directly now; how long until a command through statecar works?
    let restarted = Instant::now();
    let mut probe = RawConn::connect(port).await;
    let mut attempts = 0;
    let recovery = loop {
        attempts += 1;
        if probe.cmd(&["SET", "p:probe", "back"]).await == ok() {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "no successful reply through statecar 30 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    // Load keeps running on the restarted Redis for a while.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    let mut wrong = Vec::new();
    let mut errors = 0;
    let mut acked = Vec::new();
    for t in load {
        let (w, e, a) = t.await.expect("load client");
        wrong.extend(w);
        errors += e;
        acked.push(a);
    }
    eprintln!(
        "recovery: first successful reply through statecar {recovery:?} after redis-server was \
         back ({attempts} attempts); {CLIENTS} clients saw {errors} error replies and {} wrong \
         replies",
        wrong.len()
    );
    assert!(
        wrong.is_empty(),
        "replies that were not the client's own: {wrong:?}"
    );
    assert!(
        errors > 0,
        "the kill was not noticed at all (the test did not test anything)"
    );
    // Each client's state key holds its newest acknowledged write (or a later one whose
    // acknowledgement was lost), and histories and values agree.
    let mut check = RawConn::connect(port).await;
    for (c, &a) in acked.iter().enumerate() {
        let Frame::Bulk(v) = check.cmd(&["GET", &format!("s:{c}")]).await else {
            panic!("client {c}: no value after the load")
        };
        let v = String::from_utf8_lossy(&v).into_owned();
        let seq: u64 = v
            .strip_prefix(&format!("c{c}-"))
            .and_then(|r| r.split('-').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("client {c}: unexpected value {v}"));
        assert!(
            seq >= a,
            "client {c}: value {seq} older than the acknowledged {a}"
        );
    }
    let (ok, report) = statecar_verify(&sc);
    assert!(
        ok && report.contains(" 0 problems"),
        "verify after the restart:\n{report}"
    );
    assert!(
        report.contains(&format!("{CLIENTS} state keys")),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_on_timeout_repeats_reads_once_and_never_writes() {
    let (redis, sc, mport) = with_metrics(
        "[upstream]\ntimeout_ms = 300\nconnect_timeout_ms = 10000\nretry_on_timeout = true\n\
         [[state]]\npattern = \"s:*\"\ncompression = \"lz4\"\n",
    );
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, ok());
    assert_eq!(c.cmd(&["SET", "s:1", "state value"]).await, ok());
    let pid = redis_pid(redis.port());

    // Reads (a plain pipeline and a state key) sent while Redis is frozen: the first attempt
    // times out, the retry waits on the reconnect, and the client gets the values.
    let mut reads = RawConn::connect(sc.port()).await;
    let mut state_read = RawConn::connect(sc.port()).await;
    // A write and a mixed pipeline at the same time: never repeated, they get the error.
    let mut writes = RawConn::connect(sc.port()).await;
    signal("-STOP", &pid);
    let mut pipeline = encode(&["GET", "k"]);
    pipeline.extend_from_slice(&encode(&["MGET", "k", "nothing"]));
    reads.send(&pipeline).await;
    state_read.send_cmd(&["GET", "s:1"]).await;
    let mut mixed = encode(&["INCR", "counter"]);
    mixed.extend_from_slice(&encode(&["GET", "k"]));
    writes.send(&mixed).await;
    // Wait until statecar has given up on the first attempts and sent the reads again, then
    // let Redis go.
    eventually("reads retried after the timeout", async || {
        metric(mport, "statecar_upstream_retries_total").await >= 2.0
    })
    .await;
    signal("-CONT", &pid);
    assert_eq!(reads.read().await, bulk("v"));
    assert_eq!(
        reads.read().await,
        Frame::Array(vec![bulk("v"), Frame::NullBulk])
    );
    assert_eq!(state_read.read().await, bulk("state value"));
    for _ in 0..2 {
        let f = writes.read().await;
        assert!(
            f.error_text()
                .is_some_and(|t| t.contains("upstream timeout")),
            "a pipeline with a write must not be retried: {f:?}"
        );
    }
    // The INCR reached Redis at most once (Redis may still run what was already in its
    // socket, but statecar never sent it twice).
    let n = match c.cmd(&["GET", "counter"]).await {
        Frame::Bulk(b) => String::from_utf8_lossy(&b).parse::<i64>().unwrap_or(-1),
        Frame::NullBulk => 0,
        other => panic!("{other:?}"),
    };
    assert!(n <= 1, "INCR ran {n} times");
    assert_eq!(metric(mport, "statecar_upstream_retries_total").await, 2.0);
}

/// Regression (found by the reply_parser fuzz target): an empty line inside a command used to
/// panic the client's session task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_line_inside_a_command_is_a_protocol_error() {
    let (_redis, sc) = start_pair("[limits]\nmax_clients = 2\n");
    for _ in 0..4 {
        // More times than max_clients: a session that died without being counted out would
        // leave statecar refusing everyone.
        let mut c = RawConn::connect(sc.port()).await;
        c.send(b"*1\r\n\r\n").await;
        assert_eq!(
            c.read().await,
            err("ERR Protocol error: expected '$', got ' '")
        );
        c.expect_closed().await;
    }
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    assert!(!sc.stderr().contains("panicked"), "{}", sc.stderr());
}
