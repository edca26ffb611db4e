//! End-to-end cost of state keys through statecar (issue 3, "Performance": "End to end" and
//! "Redis memory"), against plain keys with the same values in the same run.
//!
//! Run it with `benches/state_bench.sh`, which builds statecar, starts its own redis-server and a
//! statecar with a `session:*` rule (lz4, versioning, max_versions = 10), and then runs
//! `cargo bench --bench state_e2e` with STATECAR_PORT and REDIS_PORT set. Without those two
//! variables (or under `cargo test`) this program prints how to run it and exits successfully.
//!
//! 1. Throughput: C connections, each pipelining D commands, for T seconds per run. Per case
//!    (GET or SET, value size, D) the targets run one after the other in each round: state key
//!    through statecar, plain key through statecar, plain key directly on Redis; R rounds; the
//!    report shows medians, and ratios are medians of the per-round ratios.
//! 2. Redis memory: used_memory for N distinct agent-session states written through statecar once,
//!    then with 10 versions each, against the same values stored plain (1 copy and 10 copies).
//!
//! The load generator is a small RESP2 client on one tokio thread (like redis-benchmark, one
//! thread), so it takes as little CPU as possible from Redis and statecar. Every reply is
//! checked: SET must answer +OK, GET must return the value's length, and one GET in 32 is
//! compared byte for byte with what was written.

#[path = "../tests/common/agent_data.rs"]
#[allow(dead_code)]
mod agent_data;
use agent_data::agent_session_json;

use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Res<T> = Result<T, String>;

const HELP: &str = "state_e2e: needs a running redis-server and statecar; run it with
    benches/state_bench.sh            (builds, starts both on free ports, runs this, cleans up)
or by hand:
    STATECAR_PORT=<statecar port> REDIS_PORT=<redis port> cargo bench --bench state_e2e
where statecar has the rule
    [[state]]
    pattern = \"session:*\"
    compression = \"lz4\"
    versioning = true
    max_versions = 10
Knobs: BENCH_CONNS (32), BENCH_DEPTHS (1,16), BENCH_SECONDS (3), ROUNDS (3), BENCH_SIZES
(1024,16384), BENCH_KEYS (1000), BENCH_WARMUP_MS (500), BENCH_PARTS (throughput,memory),
MEM_STATES (10000), MAX_VERSIONS (10), STATECAR_PID / REDIS_PID (CPU per op), STATE_BENCH_OUT
(also write the markdown report to this file). For profiling one path: BENCH_OPS (GET,SET),
BENCH_TARGETS (state,plain,direct), BENCH_PREFILL (1; 0 reuses the keys of an earlier run).";

// ------------------------------------------------------------------------------------------
// configuration

struct Cfg {
    sc_port: u16,
    redis_port: u16,
    conns: usize,
    depths: Vec<usize>,
    secs: Duration,
    warmup: Duration,
    rounds: usize,
    sizes: Vec<usize>,
    keys: usize,
    throughput: bool,
    memory: bool,
    /// Which operations and targets to run (for profiling one path; all by default).
    ops: String,
    targets: String,
    /// Whether to FLUSHALL and prefill before the throughput runs (off: reuse earlier data).
    prefill: bool,
    mem_states: usize,
    max_versions: usize,
    pids: Vec<(&'static str, u32)>,
    clk_tck: f64,
}

fn env_or<T: FromStr>(name: &str, default: T) -> Res<T> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .map_err(|_| format!("{name}={v} is not a valid value")),
        _ => Ok(default),
    }
}

fn env_list(name: &str, default: &str) -> Res<Vec<usize>> {
    let v = std::env::var(name).unwrap_or_else(|_| default.to_string());
    v.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| format!("{name}: '{s}' is not a number"))
        })
        .collect()
}

impl Cfg {
    fn from_env(sc_port: u16, redis_port: u16) -> Res<Cfg> {
        let parts = std::env::var("BENCH_PARTS").unwrap_or_else(|_| "throughput,memory".into());
        let mut pids = Vec::new();
        for (label, var) in [("statecar", "STATECAR_PID"), ("redis", "REDIS_PID")] {
            if let Ok(p) = std::env::var(var) {
                pids.push((label, p.trim().parse().map_err(|_| format!("{var}={p}"))?));
            }
        }
        Ok(Cfg {
            sc_port,
            redis_port,
            conns: env_or("BENCH_CONNS", 32)?,
            depths: env_list("BENCH_DEPTHS", "1,16")?,
            secs: Duration::from_secs_f64(env_or("BENCH_SECONDS", 3.0)?),
            warmup: Duration::from_millis(env_or("BENCH_WARMUP_MS", 500)?),
            rounds: env_or("ROUNDS", 3)?,
            sizes: env_list("BENCH_SIZES", "1024,16384")?,
            keys: env_or("BENCH_KEYS", 1000)?,
            throughput: parts.contains("throughput"),
            memory: parts.contains("memory"),
            ops: std::env::var("BENCH_OPS").unwrap_or_else(|_| "GET,SET".into()),
            targets: std::env::var("BENCH_TARGETS").unwrap_or_else(|_| "state,plain,direct".into()),
            prefill: env_or("BENCH_PREFILL", 1u8)? == 1,
            mem_states: env_or("MEM_STATES", 10_000)?,
            max_versions: env_or("MAX_VERSIONS", 10)?,
            pids,
            clk_tck: env_or("CLK_TCK", 100.0)?,
        })
    }
}

// ------------------------------------------------------------------------------------------
// a minimal RESP2 client

fn push_cmd(out: &mut Vec<u8>, args: &[&[u8]]) {
    let _ = write!(out, "*{}\r\n", args.len());
    for a in args {
        let _ = write!(out, "${}\r\n", a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

fn cmd_bytes(args: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::with_capacity(args.iter().map(|a| a.len() + 16).sum::<usize>() + 16);
    push_cmd(&mut v, args);
    v
}

/// A reply, borrowed from the read buffer.
#[derive(Debug)]
enum Frame<'a> {
    Simple(&'a [u8]),
    Error(&'a [u8]),
    Int(i64),
    Bulk(Option<&'a [u8]>),
    /// Parsed (so the buffer can move past it) but not kept: no benchmark reply is an array.
    Array,
}

fn parse_int(b: &[u8]) -> Res<i64> {
    std::str::from_utf8(b)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad integer in reply: {}", b.escape_ascii()))
}

/// Parses one reply starting at `pos`: `Ok(None)` when it is not complete yet, otherwise the
/// reply and the position just after it.
fn parse(buf: &[u8], pos: usize) -> Res<Option<(Frame<'_>, usize)>> {
    if pos >= buf.len() {
        return Ok(None);
    }
    let Some(nl) = memchr::memchr(b'\n', &buf[pos..]) else {
        return Ok(None);
    };
    let nl = pos + nl;
    if nl < pos + 2 || buf[nl - 1] != b'\r' {
        return Err("malformed reply line".into());
    }
    let body = &buf[pos + 1..nl - 1];
    let next = nl + 1;
    let frame = match buf[pos] {
        b'+' => (Frame::Simple(body), next),
        b'-' => (Frame::Error(body), next),
        b':' => (Frame::Int(parse_int(body)?), next),
        b'$' => {
            let n = parse_int(body)?;
            if n < 0 {
                (Frame::Bulk(None), next)
            } else {
                let n = n as usize;
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                (Frame::Bulk(Some(&buf[next..next + n])), next + n + 2)
            }
        }
        b'*' => {
            let n = parse_int(body)?;
            if n < 0 {
                (Frame::Array, next)
            } else {
                let mut p = next;
                for _ in 0..n {
                    match parse(buf, p)? {
                        Some((_, np)) => p = np,
                        None => return Ok(None),
                    }
                }
                (Frame::Array, p)
            }
        }
        c => return Err(format!("unexpected reply type byte {:?}", c as char)),
    };
    Ok(Some(frame))
}

/// An owned reply, for the administrative commands.
#[derive(Debug)]
enum Reply {
    Simple(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
}

impl Reply {
    fn from_frame(f: &Frame<'_>) -> Res<Reply> {
        Ok(match f {
            Frame::Simple(s) => Reply::Simple(String::from_utf8_lossy(s).into_owned()),
            Frame::Error(e) => return Err(String::from_utf8_lossy(e).into_owned()),
            Frame::Int(i) => Reply::Int(*i),
            Frame::Bulk(b) => Reply::Bulk(b.map(|b| b.to_vec())),
            Frame::Array => return Err("unexpected array reply".into()),
        })
    }

    fn int(&self) -> Res<i64> {
        match self {
            Reply::Int(i) => Ok(*i),
            other => Err(format!("expected an integer, got {other:?}")),
        }
    }

    fn text(&self) -> Res<String> {
        match self {
            Reply::Bulk(Some(b)) => Ok(String::from_utf8_lossy(b).into_owned()),
            Reply::Simple(s) => Ok(s.clone()),
            other => Err(format!("expected a string, got {other:?}")),
        }
    }
}

struct Conn {
    s: TcpStream,
    rbuf: BytesMut,
}

impl Conn {
    async fn connect(port: u16) -> Res<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(Conn {
            s,
            rbuf: BytesMut::with_capacity(64 * 1024),
        })
    }

    async fn fill(&mut self) -> Res<()> {
        if self.rbuf.capacity() - self.rbuf.len() < 32 * 1024 {
            self.rbuf.reserve(64 * 1024);
        }
        let n = self
            .s
            .read_buf(&mut self.rbuf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed by the server".into());
        }
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) -> Res<()> {
        self.s
            .write_all(bytes)
            .await
            .map_err(|e| format!("write: {e}"))
    }

    /// Reads one reply and hands it to `f` (which sees it borrowed from the buffer).
    async fn recv<T>(&mut self, mut f: impl FnMut(&Frame<'_>) -> Res<T>) -> Res<T> {
        loop {
            if let Some((frame, used)) = parse(&self.rbuf, 0)? {
                let out = f(&frame);
                self.rbuf.advance(used);
                return out;
            }
            self.fill().await?;
        }
    }

    async fn cmd(&mut self, args: &[&[u8]]) -> Res<Reply> {
        self.send(&cmd_bytes(args)).await?;
        self.recv(Reply::from_frame).await
    }

    /// Sends prepared commands `depth` at a time and checks that no reply is an error.
    async fn pipeline(&mut self, reqs: &[Vec<u8>], depth: usize) -> Res<()> {
        let mut batch = Vec::new();
        for chunk in reqs.chunks(depth.max(1)) {
            batch.clear();
            for r in chunk {
                batch.extend_from_slice(r);
            }
            self.send(&batch).await?;
            for _ in chunk {
                self.recv(|f| match f {
                    Frame::Error(e) => Err(String::from_utf8_lossy(e).into_owned()),
                    _ => Ok(()),
                })
                .await?;
            }
        }
        Ok(())
    }
}

/// Sends all of `reqs` over `conns` connections (each pipelining 32), in parallel.
async fn load_all(port: u16, reqs: Vec<Vec<u8>>, conns: usize) -> Res<()> {
    let reqs = Arc::new(reqs);
    let per = reqs.len().div_ceil(conns.max(1)).max(1);
    let mut set = tokio::task::JoinSet::new();
    for start in (0..reqs.len()).step_by(per) {
        let reqs = reqs.clone();
        set.spawn(async move {
            let mut c = Conn::connect(port).await?;
            let end = (start + per).min(reqs.len());
            c.pipeline(&reqs[start..end], 32).await
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// throughput

/// xorshift64*: the key sequence of one connection.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[derive(Clone)]
enum Expect {
    Ok,
    Values(Arc<Vec<Vec<u8>>>),
}

#[derive(Clone)]
struct Target {
    label: &'static str,
    port: u16,
    reqs: Arc<Vec<Vec<u8>>>,
    expect: Expect,
}

struct Measured {
    ops_s: f64,
    /// CPU microseconds per operation for each entry of `Cfg::pids`.
    cpu_us: Vec<f64>,
}

fn check_reply(f: &Frame<'_>, expect: &Expect, key: usize, full: bool) -> Res<()> {
    match (f, expect) {
        (Frame::Simple(b"OK"), Expect::Ok) => Ok(()),
        (Frame::Bulk(Some(v)), Expect::Values(vals)) => {
            let want = &vals[key];
            if v.len() != want.len() || (full && v != &want.as_slice()) {
                Err(format!(
                    "GET returned {} bytes that differ from the {} bytes written",
                    v.len(),
                    want.len()
                ))
            } else {
                Ok(())
            }
        }
        (Frame::Error(e), _) => Err(format!("error reply: {}", String::from_utf8_lossy(e))),
        (other, _) => Err(format!("unexpected reply {other:?}")),
    }
}

/// One connection's load: batches of `depth` random keys until `end`; returns the operations
/// whose batch completed inside `[start, end]`.
async fn worker(
    mut c: Conn,
    t: Target,
    depth: usize,
    start: Instant,
    end: Instant,
    seed: u64,
) -> Res<u64> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let n = t.reqs.len() as u64;
    let mut batch = Vec::new();
    let mut keys = Vec::with_capacity(depth);
    let mut ops = 0u64;
    let mut sent = 0u64;
    while Instant::now() < end {
        batch.clear();
        keys.clear();
        for _ in 0..depth {
            let k = (rng.next() % n) as usize;
            batch.extend_from_slice(&t.reqs[k]);
            keys.push(k);
        }
        c.send(&batch).await?;
        for &k in &keys {
            sent += 1;
            let full = sent % 32 == 1;
            c.recv(|f| check_reply(f, &t.expect, k, full))
                .await
                .map_err(|e| format!("{} on key #{k}: {e}", t.label))?;
        }
        let done = Instant::now();
        if done >= start && done <= end {
            ops += depth as u64;
        }
    }
    Ok(ops)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

async fn measure(cfg: &Cfg, t: &Target, depth: usize) -> Res<Measured> {
    let mut conns = Vec::with_capacity(cfg.conns);
    for _ in 0..cfg.conns {
        conns.push(Conn::connect(t.port).await?);
    }
    let start = Instant::now() + cfg.warmup;
    let end = start + cfg.secs;
    let mut set = tokio::task::JoinSet::new();
    for (i, c) in conns.into_iter().enumerate() {
        set.spawn(worker(c, t.clone(), depth, start, end, i as u64 + 1));
    }
    tokio::time::sleep_until(start.into()).await;
    let c0: Vec<Option<u64>> = cfg.pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    tokio::time::sleep_until(end.into()).await;
    let c1: Vec<Option<u64>> = cfg.pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let mut ops = 0;
    while let Some(r) = set.join_next().await {
        ops += r.map_err(|e| e.to_string())??;
    }
    if ops == 0 {
        return Err(format!("{}: no operation completed", t.label));
    }
    let cpu_us = c0
        .iter()
        .zip(&c1)
        .map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => (b - a) as f64 / cfg.clk_tck * 1e6 / ops as f64,
            _ => f64::NAN,
        })
        .collect();
    Ok(Measured {
        ops_s: ops as f64 / cfg.secs.as_secs_f64(),
        cpu_us,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    if v.iter().all(|x| x.is_nan()) {
        return (f64::NAN, f64::NAN);
    }
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

struct Case {
    op: &'static str,
    size: usize,
    depth: usize,
    /// rounds x [state via statecar, plain via statecar, plain direct]
    rounds: Vec<[Measured; 3]>,
}

fn state_key(i: usize) -> Vec<u8> {
    format!("session:{i:06}").into_bytes()
}

/// Same length as the state key, so the requests differ only in what statecar does with them.
fn plain_key(i: usize) -> Vec<u8> {
    format!("plain:k:{i:06}").into_bytes()
}

async fn throughput(cfg: &Cfg, admin: &mut Conn) -> Res<Vec<Case>> {
    let mut cases = Vec::new();
    for &size in &cfg.sizes {
        eprintln!(
            "[state_e2e] prefill: {} keys per kind, {size} B values",
            cfg.keys
        );
        if cfg.prefill {
            admin.cmd(&[b"FLUSHALL", b"SYNC"]).await?;
        }
        let values: Vec<Vec<u8>> = (0..cfg.keys)
            .map(|i| agent_session_json(i as u64, size))
            .collect();
        let values = Arc::new(values);
        let set_reqs = |key: fn(usize) -> Vec<u8>| -> Arc<Vec<Vec<u8>>> {
            Arc::new(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| cmd_bytes(&[b"SET", &key(i), v]))
                    .collect(),
            )
        };
        let get_reqs = |key: fn(usize) -> Vec<u8>| -> Arc<Vec<Vec<u8>>> {
            Arc::new(
                (0..cfg.keys)
                    .map(|i| cmd_bytes(&[b"GET", &key(i)]))
                    .collect(),
            )
        };
        let (state_set, plain_set) = (set_reqs(state_key), set_reqs(plain_key));
        let (state_get, plain_get) = (get_reqs(state_key), get_reqs(plain_key));
        // max_versions writes per state key, so the history is full and every SET measured
        // below also trims one version (the steady state of a long-lived key).
        if cfg.prefill {
            for _ in 0..cfg.max_versions.max(1) {
                load_all(cfg.sc_port, state_set.to_vec(), 8).await?;
            }
            load_all(cfg.redis_port, plain_set.to_vec(), 8).await?;
        }

        for &depth in &cfg.depths {
            for op in ["GET", "SET"] {
                if !cfg.ops.to_uppercase().contains(op) {
                    continue;
                }
                let targets = if op == "GET" {
                    let e = Expect::Values(values.clone());
                    [
                        Target {
                            label: "state GET via statecar",
                            port: cfg.sc_port,
                            reqs: state_get.clone(),
                            expect: e.clone(),
                        },
                        Target {
                            label: "plain GET via statecar",
                            port: cfg.sc_port,
                            reqs: plain_get.clone(),
                            expect: e.clone(),
                        },
                        Target {
                            label: "plain GET direct",
                            port: cfg.redis_port,
                            reqs: plain_get.clone(),
                            expect: e,
                        },
                    ]
                } else {
                    [
                        Target {
                            label: "state SET via statecar",
                            port: cfg.sc_port,
                            reqs: state_set.clone(),
                            expect: Expect::Ok,
                        },
                        Target {
                            label: "plain SET via statecar",
                            port: cfg.sc_port,
                            reqs: plain_set.clone(),
                            expect: Expect::Ok,
                        },
                        Target {
                            label: "plain SET direct",
                            port: cfg.redis_port,
                            reqs: plain_set.clone(),
                            expect: Expect::Ok,
                        },
                    ]
                };
                let mut rounds = Vec::new();
                for r in 0..cfg.rounds {
                    let mut ms = Vec::new();
                    for (t, kind) in targets.iter().zip(["state", "plain", "direct"]) {
                        if !cfg.targets.contains(kind) {
                            ms.push(Measured {
                                ops_s: f64::NAN,
                                cpu_us: vec![f64::NAN; cfg.pids.len()],
                            });
                            continue;
                        }
                        let m = measure(cfg, t, depth).await?;
                        eprintln!(
                            "[state_e2e] {op} {size} B P{depth} c{} round {}: {:<24} {:>9.0} ops/s",
                            cfg.conns,
                            r + 1,
                            t.label,
                            m.ops_s
                        );
                        ms.push(m);
                    }
                    let arr: [Measured; 3] = ms.try_into().map_err(|_| "three targets")?;
                    rounds.push(arr);
                }
                cases.push(Case {
                    op,
                    size,
                    depth,
                    rounds,
                });
            }
        }
    }
    Ok(cases)
}

// ------------------------------------------------------------------------------------------
// memory

struct MemSnap {
    used: i64,
    dataset: i64,
    clients: i64,
}

async fn mem_snap(admin: &mut Conn) -> Res<MemSnap> {
    // Let Redis shrink client query buffers (clientsCron) and settle lazy frees.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let info = admin.cmd(&[b"INFO", b"memory"]).await?.text()?;
    let field = |name: &str| -> Res<i64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("INFO memory has no {name}"))
    };
    Ok(MemSnap {
        used: field("used_memory")?,
        dataset: field("used_memory_dataset")?,
        clients: field("mem_clients_normal")?,
    })
}

struct MemRow {
    what: String,
    copies: usize,
    used: i64,
    dataset: i64,
}

struct MemReport {
    states: usize,
    size: usize,
    rows: Vec<MemRow>,
    /// (what, MEMORY USAGE bytes, payload bytes)
    samples: Vec<(String, i64, i64)>,
    stored_avg: f64,
    hlen: i64,
}

fn mem_state_key(i: usize) -> Vec<u8> {
    format!("session:m:{i:06}").into_bytes()
}

fn mem_plain_key(i: usize) -> Vec<u8> {
    format!("plain:m:{i:06}").into_bytes()
}

fn mem_plain_hist(i: usize) -> Vec<u8> {
    format!("plain:mh:{i:06}").into_bytes()
}

/// Version `j` of state `i`: distinct content for every (i, j).
fn mem_value(i: usize, j: usize, size: usize) -> Vec<u8> {
    agent_session_json(1_000_000 + (i as u64) * 64 + j as u64, size)
}

async fn memory(cfg: &Cfg, admin: &mut Conn) -> Res<MemReport> {
    let (n, size, versions) = (cfg.mem_states, 16 * 1024, cfg.max_versions.max(1));
    let mut rows = Vec::new();
    let mut samples = Vec::new();
    let sample_ids: Vec<usize> = [0, n / 3, 2 * n / 3, n.saturating_sub(1)].to_vec();
    let history = |i: usize| {
        let mut h = b"__statecar:h:{".to_vec();
        h.extend_from_slice(&mem_state_key(i));
        h.push(b'}');
        h
    };

    // --- through statecar
    admin.cmd(&[b"FLUSHALL", b"SYNC"]).await?;
    let base = mem_snap(admin).await?;
    for j in 0..versions {
        eprintln!(
            "[state_e2e] memory: writing version {} of {n} states through statecar",
            j + 1
        );
        let reqs = (0..n)
            .map(|i| cmd_bytes(&[b"SET", &mem_state_key(i), &mem_value(i, j, size)]))
            .collect();
        load_all(cfg.sc_port, reqs, 8).await?;
        if j == 0 || j + 1 == versions {
            let s = mem_snap(admin).await?;
            rows.push(MemRow {
                what: if j == 0 {
                    "statecar, written once (the key; no older version, so no history)".into()
                } else {
                    format!(
                        "statecar, written {versions} times (the key + {} older versions)",
                        versions - 1
                    )
                },
                copies: j + 1,
                used: s.used - base.used,
                dataset: s.dataset - base.dataset,
            });
            eprintln!(
                "[state_e2e] memory: used_memory +{:.1} MB (clients {:.1} MB)",
                (s.used - base.used) as f64 / 1e6,
                s.clients as f64 / 1e6
            );
        }
    }
    let mut stored = 0i64;
    for &i in &sample_ids {
        let k = mem_state_key(i);
        let h = history(i);
        let len = admin.cmd(&[b"STRLEN", &k]).await?.int()?;
        stored += len;
        let mk = admin
            .cmd(&[b"MEMORY", b"USAGE", &k, b"SAMPLES", b"0"])
            .await?
            .int()?;
        let mh = admin
            .cmd(&[b"MEMORY", b"USAGE", &h, b"SAMPLES", b"0"])
            .await?
            .int()?;
        samples.push((format!("`{}`", String::from_utf8_lossy(&k)), mk, len));
        samples.push((format!("`{}`", String::from_utf8_lossy(&h)), mh, -1));
    }
    let hlen = admin.cmd(&[b"HLEN", &history(0)]).await?.int()?;
    // Reads back through statecar must give the last version written.
    let mut sc = Conn::connect(cfg.sc_port).await?;
    for &i in &sample_ids {
        let got = sc.cmd(&[b"GET", &mem_state_key(i)]).await?;
        if !matches!(&got, Reply::Bulk(Some(v)) if *v == mem_value(i, versions - 1, size)) {
            return Err(format!(
                "GET of state {i} through statecar did not return the last write"
            ));
        }
    }

    // --- plain, directly on Redis
    admin.cmd(&[b"FLUSHALL", b"SYNC"]).await?;
    let base = mem_snap(admin).await?;
    eprintln!("[state_e2e] memory: writing {n} plain values directly");
    let reqs = (0..n)
        .map(|i| cmd_bytes(&[b"SET", &mem_plain_key(i), &mem_value(i, 0, size)]))
        .collect();
    load_all(cfg.redis_port, reqs, 8).await?;
    let s = mem_snap(admin).await?;
    rows.insert(
        0,
        MemRow {
            what: "plain, 1 copy (string key)".into(),
            copies: 1,
            used: s.used - base.used,
            dataset: s.dataset - base.dataset,
        },
    );
    for &i in &sample_ids {
        let k = mem_plain_key(i);
        let mk = admin
            .cmd(&[b"MEMORY", b"USAGE", &k, b"SAMPLES", b"0"])
            .await?
            .int()?;
        let len = admin.cmd(&[b"STRLEN", &k]).await?.int()?;
        samples.push((format!("`{}`", String::from_utf8_lossy(&k)), mk, len));
    }
    if versions > 1 {
        eprintln!(
            "[state_e2e] memory: adding {} older plain versions per value (hash)",
            versions - 1
        );
        for j in 1..versions {
            let reqs = (0..n)
                .map(|i| {
                    cmd_bytes(&[
                        b"HSET",
                        &mem_plain_hist(i),
                        j.to_string().as_bytes(),
                        &mem_value(i, j, size),
                    ])
                })
                .collect();
            load_all(cfg.redis_port, reqs, 8).await?;
        }
        let s = mem_snap(admin).await?;
        rows.insert(
            2,
            MemRow {
                what: format!(
                    "plain, {versions} copies (string key + hash of {} older)",
                    versions - 1
                ),
                copies: versions,
                used: s.used - base.used,
                dataset: s.dataset - base.dataset,
            },
        );
        let h = mem_plain_hist(0);
        let mh = admin
            .cmd(&[b"MEMORY", b"USAGE", &h, b"SAMPLES", b"0"])
            .await?
            .int()?;
        samples.push((format!("`{}`", String::from_utf8_lossy(&h)), mh, -1));
    }
    admin.cmd(&[b"FLUSHALL", b"SYNC"]).await?;
    Ok(MemReport {
        states: n,
        size,
        rows,
        samples,
        stored_avg: stored as f64 / sample_ids.len() as f64,
        hlen,
    })
}

// ------------------------------------------------------------------------------------------
// report

fn fmt_int(x: f64) -> String {
    if x.is_nan() {
        return "n/a".into();
    }
    let s = format!("{:.0}", x);
    let (sign, digits) = s.split_at(if s.starts_with('-') { 1 } else { 0 });
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn fmt_size(b: usize) -> String {
    if b.is_multiple_of(1024) {
        format!("{} KB", b / 1024)
    } else {
        format!("{b} B")
    }
}

fn fmt_f(x: f64, digits: usize) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.digits$}")
    }
}

/// A ratio: "0.93x", or "n/a" when a target was not run.
fn fmt_x(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else {
        format!("{x:.2}x")
    }
}

fn report(cfg: &Cfg, cases: &[Case], mem: Option<&MemReport>) -> String {
    let mut o = String::new();
    let pid_col = |label: &str| cfg.pids.iter().position(|(l, _)| *l == label);
    if !cases.is_empty() {
        let _ = writeln!(
            o,
            "Throughput: {} connections, pipeline depth P, {} s per run after {} ms warm-up, {} \
             round(s); in each round the three targets run one after the other (state key via \
             statecar, plain key via statecar, plain key directly on Redis). ops/s are medians \
             over rounds; ratios are medians of the per-round ratios, with the lowest and highest \
             round in brackets. Keyspace {} keys per kind, random keys; every state key has its \
             full history ({} versions), so each measured SET also trims one.\n",
            cfg.conns,
            fmt_f(cfg.secs.as_secs_f64(), 1),
            cfg.warmup.as_millis(),
            cfg.rounds,
            cfg.keys,
            cfg.max_versions
        );
        let _ = writeln!(
            o,
            "| op | value | P | state via statecar ops/s | plain via statecar ops/s | plain direct ops/s | **state / plain** | target | plain via statecar / direct | state / direct |"
        );
        let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|---|--:|--:|");
        let mut verdicts = Vec::new();
        for c in cases {
            let col = |t: usize| median(c.rounds.iter().map(|r| r[t].ops_s).collect());
            let ratios = |a: usize, b: usize| -> Vec<f64> {
                c.rounds.iter().map(|r| r[a].ops_s / r[b].ops_s).collect()
            };
            let sp = ratios(0, 1);
            let (lo, hi) = min_max(&sp);
            let target = if c.op == "GET" { 0.9 } else { 0.5 };
            let m = median(sp.clone());
            let verdict = if m.is_nan() {
                "n/a"
            } else if m >= target {
                "meets"
            } else {
                "**misses**"
            };
            verdicts.push(m >= target);
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} | {} | **{}** ({}-{}) | >= {:.1}x: {} | {} | {} |",
                if c.op == "SET" {
                    "SET (versioned)"
                } else {
                    "GET"
                },
                fmt_size(c.size),
                c.depth,
                fmt_int(col(0)),
                fmt_int(col(1)),
                fmt_int(col(2)),
                fmt_x(m),
                fmt_f(lo, 2),
                fmt_f(hi, 2),
                target,
                verdict,
                fmt_x(median(ratios(1, 2))),
                fmt_x(median(ratios(0, 2))),
            );
        }
        if let (Some(si), Some(ri)) = (pid_col("statecar"), pid_col("redis")) {
            let _ = writeln!(
                o,
                "\nCPU time per operation (user + system from /proc/PID/stat, 10 ms ticks, \
                 microseconds; medians over rounds). On 2 shared cores this decides the \
                 throughput ratios and is less sensitive to other load than ops/s.\n"
            );
            let _ = writeln!(
                o,
                "| op | value | P | statecar, state key | statecar, plain key | redis, state key | redis, plain via statecar | redis, direct |"
            );
            let _ = writeln!(o, "|---|---|--:|--:|--:|--:|--:|--:|");
            for c in cases {
                let cpu = |t: usize, p: usize| {
                    fmt_f(median(c.rounds.iter().map(|r| r[t].cpu_us[p]).collect()), 1)
                };
                let _ = writeln!(
                    o,
                    "| {} | {} | {} | {} | {} | {} | {} | {} |",
                    c.op,
                    fmt_size(c.size),
                    c.depth,
                    cpu(0, si),
                    cpu(1, si),
                    cpu(0, ri),
                    cpu(1, ri),
                    cpu(2, ri)
                );
            }
        }
        let met = verdicts.iter().filter(|v| **v).count();
        let _ = writeln!(
            o,
            "\nTargets (GET >= 0.9x, versioned SET >= 0.5x of plain through statecar): {met} of {} cases meet them.",
            verdicts.len()
        );
    }
    if let Some(m) = mem {
        let plain1 = m
            .rows
            .iter()
            .find(|r| r.what.starts_with("plain") && r.copies == 1);
        let plain_n = m
            .rows
            .iter()
            .find(|r| r.what.starts_with("plain") && r.copies > 1);
        let _ = writeln!(
            o,
            "\nRedis memory: {} distinct agent-session JSON states of {} each, written through \
             statecar (lz4, max_versions = {}), against the same values stored plain directly \
             in Redis. `used_memory` from INFO memory, delta over an empty database (FLUSHALL) \
             measured 1.2 s after the writes; `used_memory_dataset` excludes Redis' own overhead \
             (client buffers, dictionaries of the keyspace). MB = 10^6 bytes.\n",
            fmt_int(m.states as f64),
            fmt_size(m.size),
            cfg.max_versions
        );
        let _ = writeln!(
            o,
            "| stored | versions kept | used_memory delta | per state | dataset delta | vs plain 1 copy | vs plain, same versions |"
        );
        let _ = writeln!(o, "|---|--:|--:|--:|--:|--:|--:|");
        for r in &m.rows {
            let vs1 = plain1.map_or(f64::NAN, |p| r.used as f64 / p.used as f64);
            let same = if r.copies == 1 {
                plain1
            } else {
                plain_n.filter(|p| p.copies == r.copies)
            };
            let vs_same = same.map_or(f64::NAN, |p| r.used as f64 / p.used as f64);
            let _ = writeln!(
                o,
                "| {} | {} | {:.1} MB | {} B | {:.1} MB | {:.2}x | {:.2}x |",
                r.what,
                r.copies,
                r.used as f64 / 1e6,
                fmt_int(r.used as f64 / m.states as f64),
                r.dataset as f64 / 1e6,
                vs1,
                vs_same
            );
        }
        let _ = writeln!(
            o,
            "\nCross-check with `MEMORY USAGE key SAMPLES 0` (bytes Redis attributes to one key, \
             allocator size classes included) on sample keys; average stored size of a state \
             value (header + lz4) {} B for {} B of JSON ({:.2}x smaller); a full history hash \
             has {} fields ({} versions + bookkeeping).\n",
            fmt_int(m.stored_avg),
            fmt_int(m.size as f64),
            m.size as f64 / m.stored_avg,
            m.hlen,
            cfg.max_versions
        );
        let _ = writeln!(o, "| key | MEMORY USAGE | STRLEN (stored bytes) |");
        let _ = writeln!(o, "|---|--:|--:|");
        for (k, mu, len) in &m.samples {
            let len = if *len < 0 {
                "(hash)".to_string()
            } else {
                fmt_int(*len as f64)
            };
            let _ = writeln!(o, "| {k} | {} | {len} |", fmt_int(*mu as f64));
        }
    }
    o
}

// ------------------------------------------------------------------------------------------

async fn sanity(cfg: &Cfg, admin: &mut Conn) -> Res<()> {
    let mut sc = Conn::connect(cfg.sc_port).await?;
    let v = agent_session_json(7, 4096);
    // Two writes: the first version moves into the history when the second arrives.
    sc.cmd(&[b"SET", b"session:__bench_probe", b"first"])
        .await?;
    sc.cmd(&[b"SET", b"session:__bench_probe", &v]).await?;
    let stored = admin.cmd(&[b"GET", b"session:__bench_probe"]).await?;
    let hist = admin
        .cmd(&[b"EXISTS", b"__statecar:h:{session:__bench_probe}"])
        .await?
        .int()?;
    let back = sc.cmd(&[b"GET", b"session:__bench_probe"]).await?;
    sc.cmd(&[b"DEL", b"session:__bench_probe"]).await?;
    match (&stored, &back) {
        (Reply::Bulk(Some(s)), Reply::Bulk(Some(b)))
            if s.len() < v.len() && *b == v && hist == 1 =>
        {
            Ok(())
        }
        _ => Err(
            "statecar does not treat session:* as a versioned, compressed state key \
             (check its [[state]] rule)"
                .into(),
        ),
    }
}

async fn run(cfg: Cfg) -> Res<String> {
    let mut admin = Conn::connect(cfg.redis_port).await?;
    admin.cmd(&[b"PING"]).await?;
    sanity(&cfg, &mut admin).await?;
    let cases = if cfg.throughput {
        throughput(&cfg, &mut admin).await?
    } else {
        Vec::new()
    };
    let mem = if cfg.memory {
        Some(memory(&cfg, &mut admin).await?)
    } else {
        None
    };
    Ok(report(&cfg, &cases, mem.as_ref()))
}

fn main() {
    let ports = (
        std::env::var("STATECAR_PORT")
            .ok()
            .and_then(|p| p.parse::<u16>().ok()),
        std::env::var("REDIS_PORT")
            .ok()
            .and_then(|p| p.parse::<u16>().ok()),
    );
    let (Some(sc_port), Some(redis_port)) = ports else {
        println!("{HELP}");
        return;
    };
    // `cargo bench` passes --bench; `cargo test --all-targets` does not. A benchmark of several
    // minutes has no place in a test run.
    if !std::env::args().any(|a| a == "--bench") {
        println!("state_e2e: skipped (run it with `cargo bench --bench state_e2e`)");
        return;
    }
    let cfg = match Cfg::from_env(sc_port, redis_port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("state_e2e: {e}");
            std::process::exit(2);
        }
    };
    let out_file = std::env::var("STATE_BENCH_OUT").ok();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cfg)) {
        Ok(md) => {
            println!("{md}");
            if let Some(f) = out_file
                && let Err(e) = std::fs::write(&f, &md)
            {
                eprintln!("state_e2e: cannot write {f}: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("state_e2e: FAILED: {e}");
            std::process::exit(1);
        }
    }
}
