//! `statecar dev`: with no Redis reachable it starts a private redis-server, serves state keys
//! through it, prints where everything is, and never leaves that redis-server behind, whether
//! statecar stops on SIGTERM or is killed outright. With a reachable upstream it fronts that.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{RedisServer, WAIT, free_port, http_get, statecar_bin};

/// A `statecar dev` process with the repository's own config/statecar.toml (the one README's
/// command uses), on free ports.
struct Dev {
    child: Child,
    port: u16,
    metrics: u16,
    banner: String,
    stderr: std::path::PathBuf,
}

impl Dev {
    fn start(upstream: &str, data_dir: &Path, logs: &Path) -> Dev {
        let port = free_port();
        let metrics = free_port();
        let stderr = logs.join(format!("statecar-{port}.stderr"));
        let mut cmd = Command::new(statecar_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("STATECAR_") || k == "NO_COLOR" {
                cmd.env_remove(k);
            }
        }
        let config = concat!(env!("CARGO_MANIFEST_DIR"), "/config/statecar.toml");
        let mut child = cmd
            .args(["dev", "--config", config])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics}")])
            .args(["--upstream", upstream])
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("run statecar dev");
        // The banner ends with the Ctrl-C line; read it on a thread so a hang fails the test.
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut banner = String::new();
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                banner.push_str(&line);
                banner.push('\n');
                if line.contains("Ctrl-C") {
                    break;
                }
            }
            let _ = tx.send(banner);
        });
        let banner = rx.recv_timeout(WAIT).unwrap_or_else(|_| {
            panic!(
                "statecar dev printed no banner: {}",
                std::fs::read_to_string(&stderr).unwrap_or_default()
            )
        });
        let dev = Dev {
            child,
            port,
            metrics,
            banner,
            stderr,
        };
        let deadline = Instant::now() + WAIT;
        while redis_cli(dev.port, &["PING"]) != "PONG" {
            assert!(
                Instant::now() < deadline,
                "statecar dev did not serve on {port}: {}\n{}",
                dev.banner,
                dev.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dev
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The private Redis's port and pid, from the banner's `redis` line.
    fn private_redis(&self) -> Option<(u16, u32)> {
        let line = self
            .banner
            .lines()
            .find(|l| l.trim_start().starts_with("redis "))?;
        let port = line
            .split("redis://127.0.0.1:")
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        let pid = line
            .split("redis-server pid ")
            .nth(1)?
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()?;
        Some((port, pid))
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st;
            }
            assert!(Instant::now() < deadline, "statecar dev did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: &str) {
        common::signal(sig, &self.child.id().to_string());
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// A process is gone once it no longer exists or is a zombie waiting for a reaper (in a
/// container, PID 1 may never reap it; it runs no code any more either way).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

fn wait_gone(pid: u32, port: u16) {
    let deadline = Instant::now() + WAIT;
    while !process_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "the private redis-server (pid {pid}) outlived statecar"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_ne!(
        redis_cli(port, &["PING"]),
        "PONG",
        "something still answers on the private redis port {port}"
    );
}

/// An address where nothing listens.
fn nowhere() -> String {
    format!("redis://127.0.0.1:{}", free_port())
}

#[test]
fn dev_mode_serves_through_a_private_redis_and_stops_it_on_sigterm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let mut dev = Dev::start(&nowhere(), &data, tmp.path());
    let (rport, rpid) = dev
        .private_redis()
        .unwrap_or_else(|| panic!("no private redis in the banner:\n{}", dev.banner));
    assert!(
        !process_gone(rpid),
        "redis-server pid {rpid} is not running"
    );
    assert!(
        dev.banner.contains(&format!("127.0.0.1:{}", dev.port))
            && dev
                .banner
                .contains(&format!("http://127.0.0.1:{}/metrics", dev.metrics))
            && dev.banner.contains(&data.display().to_string())
            && dev.banner.contains("session:*"),
        "the banner says where everything is:\n{}",
        dev.banner
    );

    // README's demo lines.
    assert_eq!(
        redis_cli(dev.port, &["set", "session:1", "{\"hello\":\"world\"}"]),
        "OK"
    );
    assert_eq!(
        redis_cli(dev.port, &["get", "session:1"]),
        "{\"hello\":\"world\"}"
    );
    let versions = redis_cli(dev.port, &["state.versions", "session:1"]);
    assert!(
        versions.starts_with("version\n1\n"),
        "STATE.VERSIONS: {versions}"
    );
    // The value is stored encoded in the private Redis, not as written.
    assert_ne!(
        redis_cli(rport, &["get", "session:1"]),
        "{\"hello\":\"world\"}"
    );
    let (code, body) = http_get(dev.metrics, "/metrics").expect("GET /metrics");
    assert_eq!(code, 200);
    assert!(body.contains("statecar_"), "metrics: {body}");
    assert!(
        data.join("redis.log").exists(),
        "redis.log in the data folder"
    );

    dev.signal("-TERM");
    let st = dev.wait_exit();
    assert!(st.success(), "statecar dev exit: {st}\n{}", dev.stderr());
    wait_gone(rpid, rport);
    // Redis saved on its way out, and the stderr log is plain text (stderr is a file).
    assert!(
        data.join("dump.rdb").exists(),
        "dump.rdb in the data folder"
    );
    let log = dev.stderr();
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
    );
    assert!(log.contains("statecar started"), "log: {log}");

    // The next dev session finds the data again.
    let mut dev2 = Dev::start(&nowhere(), &data, tmp.path());
    assert_eq!(
        redis_cli(dev2.port, &["get", "session:1"]),
        "{\"hello\":\"world\"}"
    );
    let (rport2, rpid2) = dev2.private_redis().expect("private redis");
    dev2.signal("-INT");
    assert!(dev2.wait_exit().success(), "{}", dev2.stderr());
    wait_gone(rpid2, rport2);
}

#[test]
fn dev_mode_redis_does_not_outlive_a_killed_statecar() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut dev = Dev::start(&nowhere(), &tmp.path().join("data"), tmp.path());
    let (rport, rpid) = dev.private_redis().expect("private redis in the banner");
    assert_eq!(redis_cli(rport, &["PING"]), "PONG");
    dev.signal("-KILL");
    dev.wait_exit();
    wait_gone(rpid, rport);
}

#[test]
fn dev_mode_fronts_a_reachable_upstream_and_starts_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start();
    let data = tmp.path().join("data");
    let mut dev = Dev::start(&redis.url(), &data, tmp.path());
    assert!(
        dev.private_redis().is_none() && dev.banner.contains(&redis.url()),
        "banner:\n{}",
        dev.banner
    );
    assert!(!data.exists(), "no data folder without a private redis");
    assert_eq!(redis_cli(dev.port, &["set", "session:9", "v"]), "OK");
    assert_eq!(redis_cli(redis.port(), &["exists", "session:9"]), "1");
    dev.signal("-TERM");
    assert!(dev.wait_exit().success());
    // The configured Redis is not ours to stop.
    assert_eq!(redis_cli(redis.port(), &["PING"]), "PONG");
}
