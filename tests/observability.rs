//! Metrics, health probes, logs and configuration reload, checked with real tools: promtool,
//! a real Prometheus server scraping statecar, and a real redis-server going away and back.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn poll(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "not reached in 30 s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

const RULE: &str = "[[state]]\npattern = \"session:*\"\ncompression = \"lz4\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_show_what_happened() {
    let (_redis, sc, mport) = with_metrics(RULE);
    let mut c = RawConn::connect(sc.port()).await;
    let big = "x".repeat(10_000);
    for _ in 0..5 {
        c.send_cmd(&["SET", "session:1", &big]).await;
        assert_eq!(c.read().await, ok());
        c.send_cmd(&["GET", "session:1"]).await;
        assert_eq!(c.read().await, bulk(&big));
    }
    c.send_cmd(&["HGET", "session:1", "f"]).await;
    assert!(c.read().await.is_error());

    let (code, body) = http_get(mport, "/metrics").expect("scrape");
    assert_eq!(code, 200);
    for needle in [
        "statecar_commands_total{command=\"set\",outcome=\"ok\"} 5",
        "statecar_commands_total{command=\"get\",outcome=\"ok\"} 5",
        "statecar_commands_total{command=\"hget\",outcome=\"error\"} 1",
        "statecar_state_bytes_original_total{rule=\"0\"} 50000",
        "statecar_client_connections 1",
        "statecar_command_duration_seconds_bucket",
        "statecar_upstream_duration_seconds_bucket",
        "# HELP statecar_checksum_failures_total",
    ] {
        assert!(body.contains(needle), "missing {needle:?} in:\n{body}");
    }
    let stored: f64 = body
        .lines()
        .find(|l| l.starts_with("statecar_state_bytes_stored_total{rule=\"0\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("stored bytes metric");
    assert!(
        stored < 5000.0,
        "10 KB of 'x' x5 should compress far below 5 KB, got {stored}"
    );
    for line in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        assert!(
            line.starts_with("statecar_"),
            "metric without prefix: {line}"
        );
        assert!(
            !line.contains("session:1"),
            "a key leaked into a label: {line}"
        );
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) must be installed");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write to promtool");
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_statecar() {
    let (_redis, sc, mport) = with_metrics("");
    let mut c = RawConn::connect(sc.port()).await;
    c.send_cmd(&["SET", "k", "v"]).await;
    assert_eq!(c.read().await, ok());

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: statecar\n    static_configs:\n      - targets: ['127.0.0.1:{mport}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let pport = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{pport}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian package prometheus) must be installed");
    let mut answer = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some((200, body)) = http_get(
            pport,
            "/api/v1/query?query=statecar_commands_total%7Bcommand%3D%22set%22%7D",
        ) && body.contains("\"result\":[{")
        {
            answer = body;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(
        answer.contains("\"job\":\"statecar\"") && answer.contains("\"command\":\"set\""),
        "Prometheus never returned the scraped metric: {answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_redis_and_healthz_follows_the_process() {
    let (mut redis, _sc, mport) = with_metrics("");
    poll("ready", || {
        http_get(mport, "/readyz").map(|r| r.0) == Some(200)
    });
    assert_eq!(http_get(mport, "/healthz").map(|r| r.0), Some(200));
    redis.kill();
    poll("unready after redis died", || {
        http_get(mport, "/readyz").map(|r| r.0) == Some(503)
    });
    assert_eq!(http_get(mport, "/healthz").map(|r| r.0), Some(200));
    redis.restart();
    poll("ready again", || {
        http_get(mport, "/readyz").map(|r| r.0) == Some(200)
    });
    assert_eq!(http_get(mport, "/nope").map(|r| r.0), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_show_routes_without_values() {
    let redis = RedisServer::start();
    let port = free_port();
    let text = config_text(port, redis.port(), RULE);
    let sc = Statecar::spawn(
        port,
        &text,
        &["--log-format", "json", "--log-level", "debug"],
        &[],
    )
    .expect("start");
    let mut c = RawConn::connect(sc.port()).await;
    c.send_cmd(&["SET", "session:9", "top-secret-value"]).await;
    assert_eq!(c.read().await, ok());
    c.send_cmd(&["MULTI"]).await;
    assert_eq!(c.read().await, ok());
    c.send_cmd(&["EXEC"]).await;
    c.read().await;
    poll("route logged", || sc.stderr().contains("\"route\""));
    let logs = sc.stderr();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json_like(line), "not a JSON log line: {line}");
    }
    assert!(logs.contains("\"route\":\"state\""), "{logs}");
    assert!(logs.contains("\"route\":\"pinned\""), "{logs}");
    assert!(
        !logs.contains("top-secret-value"),
        "a value leaked into the logs"
    );
}

/// A JSON object line: braces balanced outside strings, starts with `{`, ends with `}`.
fn serde_json_like(line: &str) -> bool {
    let t = line.trim();
    if !(t.starts_with('{') && t.ends_with('}')) {
        return false;
    }
    let (mut depth, mut in_str, mut esc) = (0i32, false, false);
    for ch in t.chars() {
        match (in_str, esc, ch) {
            (true, true, _) => esc = false,
            (true, false, '\\') => esc = true,
            (true, false, '"') => in_str = false,
            (false, _, '"') => in_str = true,
            (false, _, '{') => depth += 1,
            (false, _, '}') => depth -= 1,
            _ => {}
        }
    }
    depth == 0 && !in_str
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_without_dropping_clients() {
    let redis = RedisServer::start();
    let port = free_port();
    let sc = Statecar::spawn(port, &config_text(port, redis.port(), ""), &[], &[]).expect("start");
    let mut c = RawConn::connect(sc.port()).await;
    c.send_cmd(&["SET", "session:1", "before"]).await;
    assert_eq!(c.read().await, ok());
    let mut direct = RawConn::connect(redis.port()).await;
    direct.send_cmd(&["GET", "session:1"]).await;
    assert_eq!(
        direct.read().await,
        bulk("before"),
        "no rule yet: stored as is"
    );

    let cfg_path = sc.dir().join("statecar.toml");
    let mut text = std::fs::read_to_string(&cfg_path).expect("config file");
    text.push_str(&format!("\n{RULE}"));
    std::fs::write(&cfg_path, text).expect("rewrite config");
    let status = Command::new("kill")
        .args(["-HUP", &sc.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(status.success());
    poll("reload logged", || {
        sc.stderr().contains("configuration reloaded")
    });

    // Same client connection, now a state key.
    c.send_cmd(&["SET", "session:1", "after"]).await;
    assert_eq!(c.read().await, ok());
    c.send_cmd(&["GET", "session:1"]).await;
    assert_eq!(c.read().await, bulk("after"));
    direct.send_cmd(&["GET", "session:1"]).await;
    let stored = direct.read().await;
    assert_ne!(stored, bulk("after"), "the new rule must encode the value");
    c.send_cmd(&["STATE.VERSIONS", "session:1"]).await;
    assert!(!c.read().await.is_error());
}
