//! A real Redis Cluster (3 primaries, 3 replicas) and a real Sentinel setup (1 primary,
//! 1 replica, 3 sentinels), all local on free ports, for the scale-out tests.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Frame, RawConn, RedisServer, WAIT, encode, free_port, ok};

/// Runs redis-cli with `args` and returns stdout (panics with stderr if it fails).
pub fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run redis-cli");
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `redis-cli -p PORT args...`, or None if it failed: for polling a node that may close the
/// connection meanwhile (Sentinel kills the normal clients of a replica it promotes).
pub fn try_cli(port: u16, args: &[&str]) -> Option<String> {
    let out = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `redis-cli -p PORT args...`
pub fn cli(port: u16, args: &[&str]) -> String {
    let p = port.to_string();
    let mut all = vec!["-p", p.as_str()];
    all.extend_from_slice(args);
    redis_cli(&all)
}

/// A local Redis Cluster.
pub struct RedisCluster {
    /// Every node, primaries first as created (redis-cli --cluster create assigns the first
    /// three as primaries).
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `primaries` primaries with `replicas` replicas each and waits until every node
    /// reports `cluster_state:ok` and the same slot coverage.
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        let n = primaries * (1 + replicas);
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let bus = free_port().to_string();
            nodes.push(RedisServer::start_with(&[
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus,
                "--cluster-node-timeout",
                "2000",
                "--cluster-config-file",
                &format!("nodes-{bus}.conf"),
            ]));
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addrs.iter().map(String::as_str));
        let r = replicas.to_string();
        args.extend(["--cluster-replicas", &r, "--cluster-yes"]);
        redis_cli(&args);
        let c = RedisCluster { nodes };
        c.wait_ok(n);
        c
    }

    /// Waits until every running node says the cluster is ok and knows `nodes` nodes.
    pub fn wait_ok(&self, nodes: usize) {
        let deadline = Instant::now() + WAIT * 3;
        loop {
            let ok = self.nodes.iter().all(|s| {
                let info = cli(s.port(), &["cluster", "info"]);
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{nodes}"))
                    && info.contains("cluster_slots_ok:16384")
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Seed list for statecar's `upstream.nodes`.
    pub fn seeds_toml(&self) -> String {
        let list: Vec<String> = self
            .nodes
            .iter()
            .take(2)
            .map(|s| format!("\"127.0.0.1:{}\"", s.port()))
            .collect();
        format!("[{}]", list.join(", "))
    }

    /// `(port, node id, is primary)` of each node, as the first node sees them.
    pub fn topology(&self) -> Vec<(u16, String, bool)> {
        let text = cli(self.nodes[0].port(), &["cluster", "nodes"]);
        text.lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                let port = f
                    .get(1)?
                    .split('@')
                    .next()?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()?;
                Some((port, f[0].to_string(), f.get(2)?.contains("master")))
            })
            .collect()
    }

    /// The port of the primary serving `slot`.
    pub fn owner(&self, slot: u16) -> u16 {
        let text = cli(self.nodes[0].port(), &["cluster", "slots"]);
        // redis-cli prints each range as: start, end, ip, port, id, ... one value a line.
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        while i + 3 < lines.len() {
            if let (Ok(a), Ok(b)) = (lines[i].parse::<u16>(), lines[i + 1].parse::<u16>())
                && a <= slot
                && slot <= b
                && let Ok(p) = lines[i + 3].parse::<u16>()
            {
                return p;
            }
            i += 1;
        }
        panic!("no owner for slot {slot} in {text}");
    }
}

/// A sentinel process.
pub struct Sentinel {
    child: Option<Child>,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Sentinel {
    /// Starts a sentinel monitoring `master_port` as `mymaster` (quorum 2, 1 s down-after).
    pub fn start(master_port: u16) -> Sentinel {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 5000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let log = std::fs::File::create(dir.path().join("sentinel.log")).expect("log");
        let child = Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("run redis-server --sentinel");
        let deadline = Instant::now() + WAIT;
        loop {
            let ok = Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "sentinel did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Sentinel {
            child: Some(child),
            port,
            _dir: dir,
        }
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One client's pipelined writes and reads until `stop`: each value names its client and
/// sequence number, so a reply that belongs to another client fails the test. Returns the
/// acknowledged writes (key -> value, when), the rounds, and the error replies seen.
pub async fn writer_load(
    port: u16,
    id: usize,
    stop: Arc<AtomicBool>,
) -> (HashMap<String, (String, Instant)>, usize, Vec<String>) {
    let mut c = RawConn::connect(port).await;
    let mut acked = HashMap::new();
    let mut errors = Vec::new();
    let mut n = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let key = if n.is_multiple_of(3) {
            format!("s:{id}:{}", n % 50)
        } else {
            format!("c{id}:{n}")
        };
        let value = format!("client {id} write {n} x{}", "x".repeat(n % 64));
        // A pipeline of three: SET, GET of the same key, GET of the client's marker key.
        let mut batch = encode(&["SET", &key, &value]);
        batch.extend(encode(&["GET", &key]));
        batch.extend(encode(&["GET", &format!("marker{id}")]));
        if n == 0 {
            batch = [
                encode(&["SET", &format!("marker{id}"), &format!("m{id}")]),
                batch,
            ]
            .concat();
        }
        c.send(&batch).await;
        if n == 0 {
            assert_eq!(c.read().await, ok());
        }
        let set = c.read().await;
        let get = c.read().await;
        let marker = c.read().await;
        match (&set, &get) {
            (Frame::Simple(s), Frame::Bulk(v)) if s == "OK" => {
                assert_eq!(
                    String::from_utf8_lossy(v),
                    value,
                    "client {id} read back another value"
                );
                acked.insert(key, (value, Instant::now()));
            }
            (Frame::Simple(s), other) if s == "OK" => {
                // Acknowledged even though the read failed.
                acked.insert(key, (value, Instant::now()));
                errors.push(format!("{other:?}"));
            }
            (e, _) => errors.push(format!("{e:?}")),
        }
        if let Frame::Bulk(m) = &marker {
            assert_eq!(
                m,
                format!("m{id}").as_bytes(),
                "client {id} got a foreign reply"
            );
        }
        n += 1;
    }
    (acked, n, errors)
}
