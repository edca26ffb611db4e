//! Agent checkpoints through statecar: what a version history costs in Redis memory, how fast
//! versioned writes go, and what 8 MB checkpoints cost, against plain Redis in the same run.
//!
//! Run it with `benches/checkpoint_bench.sh`, which builds statecar, starts its own
//! redis-server and a statecar with the rules below, runs `cargo bench --bench checkpoints` with
//! REDIS_PORT, STATECAR_PORT (and the PIDs) set, and stops both. Without the ports (or under
//! `cargo test`) this program prints how to run it and exits successfully.
//!
//! Parts (BENCH_PARTS, all by default):
//! - `memory`: SESSIONS agent sessions of 40 steps (tests/common/agent_data.rs `Checkpoints`:
//!   LangGraph-style JSON, about 2 KB at step 1 and 71-78 KB at step 40), written step by step;
//!   Redis `MEMORY USAGE` of the key plus its history, with 10 and 40 versions kept, as a
//!   multiple of one plain copy of the last checkpoint. Against: every checkpoint plain (one
//!   key each), the seed library's way (each version zlib-6, one key each), and statecar with
//!   deltas (zstd, the default), without deltas (zstd) and with lz4.
//! - `docs`: DOCS small JSON records (0.5-2 KB) stored plain, through a zstd rule, and through
//!   a zstd rule with `dictionary = "auto"` (first pass: trained on the fly; second pass: all
//!   written with the dictionary), MEMORY USAGE summed, dictionary keys included.
//! - `writes`: CONNS connections, each writing the next checkpoint of its own sessions
//!   (steps 1-40, 36 KB on average), one at a time: versioned SET through statecar against a
//!   plain SET of the same values through statecar and directly; then GET of those keys.
//! - `big`: 8 MB checkpoints, one connection: versioned SET through statecar against plain SET
//!   directly and through statecar, and GET; while they run, a second connection reads a small
//!   key every 2 ms and the report gives its slowest replies.
//! - `oldest`: a session with a bounded context (about 70 KB per checkpoint) saved 1,000
//!   times under max_versions = 1000: time to read the oldest and other versions.
//!
//! Timings are medians of ROUNDS rounds with the targets interleaved within each round, and
//! ratios are medians of per-round ratios with the range in brackets: this machine is shared.

#[path = "../tests/common/agent_data.rs"]
#[allow(dead_code)]
mod agent_data;
#[path = "support/resp.rs"]
#[allow(dead_code)]
mod resp;

use std::fmt::Write as _;
use std::io::Write as _;
use std::str::FromStr;
use std::time::{Duration, Instant};

use agent_data::{Checkpoints, small_document};
use resp::{Conn, Frame, Res, cmd_bytes};

const HELP: &str = "checkpoints: needs a running redis-server and statecar; run it with
    benches/checkpoint_bench.sh       (builds, starts both on free ports, runs this, cleans up)
Knobs: BENCH_PARTS (memory,docs,writes,big,oldest), ROUNDS (3), BENCH_SECONDS (3),
SESSIONS (20), DOCS (5000), CONNS (8), BIG_WRITES (6), OLD_VERSIONS (1000), STATECAR_PID and
REDIS_PID (CPU per operation), CHECKPOINT_BENCH_OUT (also write the report to this file).";

struct Cfg {
    sc: u16,
    redis: u16,
    parts: String,
    rounds: usize,
    secs: Duration,
    sessions: u64,
    docs: u64,
    conns: usize,
    big_writes: usize,
    old_versions: u32,
    pids: Vec<(&'static str, u32)>,
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

fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
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

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}-{hi:.2}")
}

/// `MEMORY USAGE key SAMPLES 0`, 0 for a missing key.
async fn mem(d: &mut Conn, key: &[u8]) -> Res<i64> {
    match d.cmd(&[b"MEMORY", b"USAGE", key, b"SAMPLES", b"0"]).await? {
        Frame::Bulk(None) => Ok(0),
        f => f.int(),
    }
}

fn history_key(key: &[u8]) -> Vec<u8> {
    [b"__statecar:h:{".as_slice(), key, b"}"].concat()
}

/// Memory of a key and its history.
async fn mem_with_history(d: &mut Conn, key: &[u8]) -> Res<i64> {
    Ok(mem(d, key).await? + mem(d, &history_key(key)).await?)
}

fn zlib6(v: &[u8]) -> Vec<u8> {
    use flate2::write::ZlibEncoder;
    let mut e = ZlibEncoder::new(Vec::new(), flate2::Compression::new(6));
    let _ = e.write_all(v);
    e.finish().unwrap_or_default()
}

/// The 40 checkpoints of session `seed`.
fn session(seed: u64, steps: usize) -> Vec<Vec<u8>> {
    let mut c = Checkpoints::new(seed);
    (0..steps)
        .map(|i| {
            if i > 0 {
                c.step();
            }
            c.checkpoint()
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// memory

struct MemRow {
    what: String,
    ten: f64,
    forty: f64,
}

async fn memory(cfg: &Cfg, out: &mut String) -> Res<()> {
    let mut d = Conn::connect(cfg.redis).await?;
    let mut p = Conn::connect(cfg.sc).await?;
    d.cmd(&[b"FLUSHALL"]).await?;
    let names = [
        (
            "every checkpoint plain (what langgraph-checkpoint-redis keeps)",
            "plain",
        ),
        ("the seed library's way: each version zlib-6", "zlib"),
        ("statecar, zstd with delta history (default)", "m"),
        ("statecar, zstd, `delta = false`", "mz"),
        ("statecar, lz4 (no deltas by default)", "ml"),
        ("statecar, lz4, `delta = true`", "mld"),
    ];
    let mut totals = vec![[0i64; 2]; names.len()];
    let mut one_plain = 0i64;
    let mut last_sizes = Vec::new();
    for seed in 1..=cfg.sessions {
        let cps = session(seed, 40);
        let last = cps.last().cloned().unwrap_or_default();
        last_sizes.push(last.len());
        let k1 = format!("one:{seed}");
        d.cmd(&[b"SET", k1.as_bytes(), &last]).await?;
        one_plain += mem(&mut d, k1.as_bytes()).await?;
        for (w, n) in [10usize, 40].iter().enumerate() {
            let kept = &cps[40 - n..];
            for (i, c) in kept.iter().enumerate() {
                let k = format!("pv{n}:{seed}:{i}");
                d.cmd(&[b"SET", k.as_bytes(), c]).await?;
                totals[0][w] += mem(&mut d, k.as_bytes()).await?;
                let k = format!("zv{n}:{seed}:{i}");
                d.cmd(&[b"SET", k.as_bytes(), &zlib6(c)]).await?;
                totals[1][w] += mem(&mut d, k.as_bytes()).await?;
            }
            for (j, prefix) in ["m", "mz", "ml", "mld"].iter().enumerate() {
                let k = format!("{prefix}{n}:{seed}");
                for c in &cps {
                    p.cmd(&[b"SET", k.as_bytes(), c]).await?;
                }
                totals[2 + j][w] += mem_with_history(&mut d, k.as_bytes()).await?;
            }
        }
    }
    let rows: Vec<MemRow> = names
        .iter()
        .zip(&totals)
        .map(|((what, _), t)| MemRow {
            what: what.to_string(),
            ten: t[0] as f64 / one_plain as f64,
            forty: t[1] as f64 / one_plain as f64,
        })
        .collect();
    let avg_last = last_sizes.iter().sum::<usize>() / last_sizes.len().max(1);
    let _ = writeln!(
        out,
        "#### Memory per session\n\n{} sessions of 40 steps (last checkpoint {} bytes on average), \
         written step by step; Redis `MEMORY USAGE ... SAMPLES 0` of the key and its history \
         (or of every key a layout uses), summed over sessions, as a multiple of one plain copy \
         of each session's last checkpoint ({} bytes in Redis on average).\n",
        cfg.sessions,
        avg_last,
        one_plain / cfg.sessions.max(1) as i64
    );
    let _ = writeln!(out, "| kept | 10 versions | 40 versions |\n|---|--:|--:|");
    for r in rows {
        let _ = writeln!(out, "| {} | {:.2}x | {:.2}x |", r.what, r.ten, r.forty);
    }
    let _ = writeln!(out);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// small documents

async fn docs(cfg: &Cfg, out: &mut String) -> Res<()> {
    let mut d = Conn::connect(cfg.redis).await?;
    let mut p = Conn::connect(cfg.sc).await?;
    let n = cfg.docs;
    let all: Vec<Vec<u8>> = (0..n).map(|i| small_document(7, i)).collect();
    let bytes: usize = all.iter().map(Vec::len).sum();
    let write = |prefix: &'static str| {
        let reqs: Vec<Vec<u8>> = all
            .iter()
            .enumerate()
            .map(|(i, v)| cmd_bytes(&[b"SET", format!("{prefix}{i}").as_bytes(), v]))
            .collect();
        reqs
    };
    d.pipeline(&write("sdp:"), 32).await?;
    p.pipeline(&write("doc:"), 32).await?;
    // The dictionary rule: trained on the fly from the first values (written one by one so
    // training can start while they arrive, as in an application), then all again.
    for r in write("ddoc:") {
        p.send(&r).await?;
        p.recv().await?;
    }
    // Training runs in the background: wait for it before the second pass.
    let mut id = String::new();
    for _ in 0..200 {
        let k = b"__statecar:dict:active:ddoc:*";
        if let Frame::Bulk(Some(b)) = d.cmd(&[b"GET", k]).await? {
            id = String::from_utf8_lossy(&b).into_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.pipeline(&write("ddoc:b:"), 32).await?;
    let keys_of = |prefix: &'static str| {
        let keys: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
        keys
    };
    let mut t = [0i64; 4];
    for (j, prefix) in ["sdp:", "doc:", "ddoc:", "ddoc:b:"].iter().enumerate() {
        for k in keys_of(prefix) {
            t[j] += mem_with_history(&mut d, k.as_bytes()).await?;
        }
    }
    let dict_mem = if id.is_empty() {
        0
    } else {
        mem(&mut d, format!("__statecar:dict:{id}").as_bytes()).await?
            + mem(&mut d, b"__statecar:dict:active:ddoc:*").await?
    };
    let _ = writeln!(
        out,
        "#### Small documents\n\n{n} JSON records of 0.5-2 KB ({} bytes on average; \
         tests/common/agent_data.rs `small_document`), MEMORY USAGE summed, as a multiple of \
         the same records stored plain. The dictionary rows include the dictionary's own keys \
         ({dict_mem} bytes, dictionary id {}).\n",
        bytes / n.max(1) as usize,
        if id.is_empty() { "none trained" } else { &id }
    );
    let _ = writeln!(out, "| stored | bytes in Redis | vs plain |\n|---|--:|--:|");
    let rows = [
        ("plain", t[0]),
        ("statecar, zstd", t[1]),
        (
            "statecar, zstd, `dictionary = \"auto\"`: first pass (trained after the first values)",
            t[2] + dict_mem,
        ),
        (
            "statecar, zstd, `dictionary = \"auto\"`: every value written with the dictionary",
            t[3] + dict_mem,
        ),
    ];
    for (what, b) in rows {
        let _ = writeln!(out, "| {what} | {b} | {:.2}x |", b as f64 / t[0] as f64);
    }
    let _ = writeln!(out);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// write rate

/// Each connection's writes: the checkpoints of its own sessions, steps 1-40 in turn.
fn write_plan(conn: usize, sessions: usize) -> Vec<(usize, Vec<u8>)> {
    let cps: Vec<Vec<Vec<u8>>> = (0..sessions)
        .map(|s| session(1000 + (conn * sessions + s) as u64, 40))
        .collect();
    let mut out = Vec::new();
    for step in 0..40 {
        for (s, c) in cps.iter().enumerate() {
            out.push((s, c[step].clone()));
        }
    }
    out
}

struct Run {
    ops_s: f64,
    cpu_us: Vec<f64>,
}

/// `conns` connections for `secs`, each sending its next command and waiting for the reply.
async fn run_for(
    cfg: &Cfg,
    port: u16,
    plans: &[Vec<Vec<u8>>],
    check: fn(&Frame) -> bool,
) -> Res<Run> {
    let start = Instant::now() + Duration::from_millis(300);
    let end = start + cfg.secs;
    let mut set = tokio::task::JoinSet::new();
    for plan in plans {
        let plan = plan.clone();
        let mut c = Conn::connect(port).await?;
        set.spawn(async move {
            let mut ops = 0u64;
            let mut i = 0;
            loop {
                let now = Instant::now();
                if now >= end {
                    return Ok::<u64, String>(ops);
                }
                c.send(&plan[i % plan.len()]).await?;
                let f = c.recv().await?;
                if !check(&f) {
                    return Err(format!("unexpected reply {}", f.brief()));
                }
                if now >= start {
                    ops += 1;
                }
                i += 1;
            }
        });
    }
    tokio::time::sleep_until(start.into()).await;
    let c0: Vec<Option<u64>> = cfg.pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    tokio::time::sleep_until(end.into()).await;
    let c1: Vec<Option<u64>> = cfg.pids.iter().map(|(_, p)| cpu_ticks(*p)).collect();
    let mut ops = 0;
    while let Some(r) = set.join_next().await {
        ops += r.map_err(|e| e.to_string())??;
    }
    let cpu_us = c0
        .iter()
        .zip(&c1)
        .map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => (b - a) as f64 * 10_000.0 / ops.max(1) as f64,
            _ => f64::NAN,
        })
        .collect();
    Ok(Run {
        ops_s: ops as f64 / cfg.secs.as_secs_f64(),
        cpu_us,
    })
}

fn is_ok(f: &Frame) -> bool {
    matches!(f, Frame::Simple(s) if s == "OK")
}

fn is_value(f: &Frame) -> bool {
    matches!(f, Frame::Bulk(Some(b)) if !b.is_empty())
}

async fn writes(cfg: &Cfg, out: &mut String) -> Res<()> {
    let sessions = 4;
    let plans: Vec<Vec<(usize, Vec<u8>)>> =
        (0..cfg.conns).map(|c| write_plan(c, sessions)).collect();
    let avg = plans.iter().flatten().map(|(_, v)| v.len()).sum::<usize>()
        / plans.iter().map(Vec::len).sum::<usize>().max(1);
    let cmds = |prefix: &str, verb: &[u8]| -> Vec<Vec<Vec<u8>>> {
        plans
            .iter()
            .enumerate()
            .map(|(c, plan)| {
                plan.iter()
                    .map(|(s, v)| {
                        let k = format!("{prefix}{c}:{s}");
                        if verb == b"GET" {
                            cmd_bytes(&[b"GET", k.as_bytes()])
                        } else {
                            cmd_bytes(&[b"SET", k.as_bytes(), v])
                        }
                    })
                    .collect()
            })
            .collect()
    };
    let (state_set, plain_set) = (cmds("w:", b"SET"), cmds("pw:", b"SET"));
    let (state_get, plain_get) = (cmds("w:", b"GET"), cmds("pw:", b"GET"));
    let mut rows: Vec<(&str, Vec<[Run; 3]>)> = vec![("SET", Vec::new()), ("GET", Vec::new())];
    for _ in 0..cfg.rounds {
        for (op, (s, p)) in [
            ("SET", (&state_set, &plain_set)),
            ("GET", (&state_get, &plain_get)),
        ] {
            let check = if op == "SET" { is_ok } else { is_value };
            let state = run_for(cfg, cfg.sc, s, check).await?;
            let plain = run_for(cfg, cfg.sc, p, check).await?;
            let direct = run_for(cfg, cfg.redis, p, check).await?;
            if let Some(r) = rows.iter_mut().find(|r| r.0 == op) {
                r.1.push([state, plain, direct]);
            }
        }
    }
    let _ = writeln!(
        out,
        "#### Versioned write rate\n\n{} connections, each writing the next checkpoint of its own \
         {sessions} sessions (steps 1-40 in turn, {avg} bytes on average; a session that \
         reaches step 40 starts again at step 1) and waiting for the reply, {:.0} s per run, \
         {} round(s), the three targets one after the other in each round. State keys: zstd, \
         max_versions = 10, deltas. Then GET of the same keys. ops/s are medians; ratios are \
         medians of per-round ratios (range in brackets). CPU per operation from /proc \
         (user + system, 10 ms ticks).\n",
        cfg.conns,
        cfg.secs.as_secs_f64(),
        cfg.rounds
    );
    let _ = writeln!(
        out,
        "| op | state key via statecar | plain key via statecar | plain key direct | **state / plain via statecar** | plain via statecar / direct | statecar CPU us/op (state, plain) | redis CPU us/op (state, plain via sc, direct) |\n|---|--:|--:|--:|--:|--:|--:|--:|"
    );
    for (op, runs) in &rows {
        let col = |i: usize| median(runs.iter().map(|r| r[i].ops_s).collect());
        let ratio: Vec<f64> = runs.iter().map(|r| r[0].ops_s / r[1].ops_s).collect();
        let pd: Vec<f64> = runs.iter().map(|r| r[1].ops_s / r[2].ops_s).collect();
        let cpu = |i: usize, who: usize| {
            median(
                runs.iter()
                    .map(|r| r[i].cpu_us.get(who).copied().unwrap_or(f64::NAN))
                    .collect(),
            )
        };
        let _ = writeln!(
            out,
            "| {op} | {:.0} | {:.0} | {:.0} | **{:.2}x** ({}) | {:.2}x ({}) | {:.0}, {:.0} | {:.0}, {:.0}, {:.0} |",
            col(0),
            col(1),
            col(2),
            median(ratio.clone()),
            range(&ratio),
            median(pd.clone()),
            range(&pd),
            cpu(0, 0),
            cpu(1, 0),
            cpu(0, 1),
            cpu(1, 1),
            cpu(2, 1),
        );
    }
    let _ = writeln!(out);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// 8 MB checkpoints

async fn timed(c: &mut Conn, cmd: &[u8], check: fn(&Frame) -> bool) -> Res<f64> {
    let t = Instant::now();
    c.send(cmd).await?;
    let f = c.recv().await?;
    if !check(&f) {
        return Err(format!("unexpected reply {}", f.brief()));
    }
    Ok(t.elapsed().as_secs_f64())
}

/// Another client: reads a small key every 2 ms until stopped, on its own thread and runtime,
/// so that its reply times are statecar's (or Redis's), not the wait for this process's main
/// task, which copies 8 MB in and out without yielding for milliseconds at a time.
struct Probe {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Res<Vec<f64>>>,
}

impl Probe {
    fn start(port: u16) -> Probe {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async move {
                let mut c = Conn::connect(port).await?;
                c.cmd(&[b"SET", b"probe:small", b"x"]).await?;
                let mut times = Vec::new();
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    c.send(&cmd_bytes(&[b"GET", b"probe:small"])).await?;
                    c.recv().await?;
                    times.push(t.elapsed().as_secs_f64() * 1000.0);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(times)
            })
        });
        Probe { stop, thread }
    }

    fn finish(self) -> Res<Vec<f64>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .join()
            .map_err(|_| "probe thread panicked".to_string())?
    }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

async fn big(cfg: &Cfg, out: &mut String) -> Res<()> {
    let mut c = Checkpoints::new(77);
    while c.checkpoint().len() < 8 << 20 {
        c.advance(250);
    }
    let values: Vec<Vec<u8>> = (0..cfg.big_writes)
        .map(|_| {
            c.step();
            c.checkpoint()
        })
        .collect();
    let size = values[0].len();
    let mut sc = Conn::connect(cfg.sc).await?;
    let mut rd = Conn::connect(cfg.redis).await?;
    let set = |k: &str, v: &[u8]| cmd_bytes(&[b"SET", k.as_bytes(), v]);
    // Warm up: the key exists (its first version costs no delta), and caches are filled.
    sc.cmd(&[b"SET", b"big:1", &values[0]]).await?;
    let mut rounds: Vec<[f64; 6]> = Vec::new();
    let mut probes: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 0..cfg.rounds {
        let mut t = [0f64; 6];
        // versioned SET through statecar, with the probe running
        let pr = Probe::start(cfg.sc);
        for v in &values {
            t[0] += timed(&mut sc, &set("big:1", v), is_ok).await?;
        }
        let times = pr.finish()?;
        if round == 0 {
            probes.push(("versioned SET through statecar".into(), times));
        }
        let pr = Probe::start(cfg.sc);
        for v in &values {
            t[1] += timed(&mut sc, &set("pbig:1", v), is_ok).await?;
        }
        let times = pr.finish()?;
        if round == 0 {
            probes.push(("plain SET through statecar".into(), times));
        }
        let pr = Probe::start(cfg.redis);
        for v in &values {
            t[2] += timed(&mut rd, &set("pbig:2", v), is_ok).await?;
        }
        let times = pr.finish()?;
        if round == 0 {
            probes.push(("plain SET direct (the probe direct too)".into(), times));
        }
        let pr = Probe::start(cfg.sc);
        for _ in &values {
            t[3] += timed(&mut sc, &cmd_bytes(&[b"GET", b"big:1"]), is_value).await?;
        }
        let times = pr.finish()?;
        if round == 0 {
            probes.push(("state GET through statecar".into(), times));
        }
        for _ in &values {
            t[4] += timed(&mut sc, &cmd_bytes(&[b"GET", b"pbig:1"]), is_value).await?;
        }
        for _ in &values {
            t[5] += timed(&mut rd, &cmd_bytes(&[b"GET", b"pbig:2"]), is_value).await?;
        }
        for x in &mut t {
            *x = *x * 1000.0 / values.len() as f64;
        }
        rounds.push(t);
    }
    let col = |i: usize| median(rounds.iter().map(|r| r[i]).collect());
    let ratio = |a: usize, b: usize| -> (f64, String) {
        let v: Vec<f64> = rounds.iter().map(|r| r[b] / r[a]).collect();
        (median(v.clone()), range(&v))
    };
    let stored = sc
        .cmd(&[b"STATE.LOAD", b"big:1"])
        .await?
        .field("stored_size")
        .and_then(|s| s.int().ok())
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "#### 8 MB checkpoints\n\nOne connection, {} different checkpoints of {} bytes (each one \
         step further than the last; stored as {} bytes with zstd) written one after the other, \
         {} round(s); milliseconds per operation (median of rounds), throughput ratios (time of \
         the reference / time of the target; median of rounds, range in brackets).\n",
        values.len(),
        size,
        stored,
        cfg.rounds
    );
    let _ = writeln!(
        out,
        "| operation | ms/op | vs direct Redis |\n|---|--:|--:|"
    );
    let (r0, g0) = ratio(0, 2);
    let (r1, g1) = ratio(1, 2);
    let (r3, g3) = ratio(3, 5);
    let (r4, g4) = ratio(4, 5);
    let _ = writeln!(
        out,
        "| versioned SET (zstd, delta history) through statecar | {:.1} | **{r0:.2}x** ({g0}) |",
        col(0)
    );
    let _ = writeln!(
        out,
        "| plain SET through statecar | {:.1} | **{r1:.2}x** ({g1}) |",
        col(1)
    );
    let _ = writeln!(out, "| plain SET, direct | {:.1} | 1.00x |", col(2));
    let _ = writeln!(
        out,
        "| state GET through statecar | {:.1} | {r3:.2}x ({g3}) |",
        col(3)
    );
    let _ = writeln!(
        out,
        "| plain GET through statecar | {:.1} | {r4:.2}x ({g4}) |",
        col(4)
    );
    let _ = writeln!(out, "| plain GET, direct | {:.1} | 1.00x |", col(5));
    let _ = writeln!(
        out,
        "\nAnother client's small GETs (every 2 ms, from its own thread) through the same statecar meanwhile, or directly to Redis for the direct SETs (first round):\n\n| while | GETs | median ms | p99 ms | max ms |\n|---|--:|--:|--:|--:|"
    );
    for (what, mut t) in probes {
        let n = t.len();
        let (m, p99, mx) = (pct(&mut t, 0.5), pct(&mut t, 0.99), pct(&mut t, 1.0));
        let _ = writeln!(out, "| {what} | {n} | {m:.2} | {p99:.2} | {mx:.2} |");
    }
    let _ = writeln!(out);
    Ok(())
}

// ------------------------------------------------------------------------------------------
// reading old versions

async fn oldest(cfg: &Cfg, out: &mut String) -> Res<()> {
    let n = cfg.old_versions;
    let mut c = Checkpoints::new(5).keep_last(40);
    c.advance(39);
    let mut p = Conn::connect(cfg.sc).await?;
    let mut d = Conn::connect(cfg.redis).await?;
    let mut last = Vec::new();
    // One save at a time, as an agent saves a checkpoint per step (pipelined saves of one key
    // keep deltas too, except those sent before the key's first reply: docs/STATE.md).
    for i in 0..n {
        if i > 0 {
            c.step();
        }
        last = c.checkpoint();
        p.cmd(&[b"SET", b"long:1", &last]).await?;
    }
    d.cmd(&[b"SET", b"plong:1", &last]).await?;
    let mut rows = Vec::new();
    let reads = 20;
    let versions = [
        n,
        n - 1,
        n.saturating_sub(31).max(1),
        n.saturating_sub(62).max(1),
        2,
        1,
    ];
    for v in versions {
        let vs = v.to_string();
        let cmd = cmd_bytes(&[b"STATE.LOAD", b"long:1", b"VERSION", vs.as_bytes()]);
        let mut times = Vec::new();
        for _ in 0..reads {
            let t = Instant::now();
            p.send(&cmd).await?;
            let f = p.recv().await?;
            if f.field("value").is_none() {
                return Err(format!("STATE.LOAD VERSION {v}: {}", f.brief()));
            }
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        rows.push((v, median(times)));
    }
    let mut times = Vec::new();
    for _ in 0..reads {
        let t = Instant::now();
        d.send(&cmd_bytes(&[b"GET", b"plong:1"])).await?;
        d.recv().await?;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let direct = median(times);
    let h = mem_with_history(&mut d, b"long:1").await?;
    let one = mem(&mut d, b"plong:1").await?;
    let _ = writeln!(
        out,
        "#### Reading old versions\n\nOne session with a bounded context (the last 40 steps, \
         {} bytes per checkpoint) saved {n} times under `max_versions = 1000` (zstd, deltas, \
         `delta_chain = 64`: every 64th version is kept whole). The whole history takes {:.2}x \
         of one plain copy in Redis. Median of {reads} `STATE.LOAD ... VERSION v` through \
         statecar, against a plain GET of the same size directly ({direct:.2} ms).\n",
        last.len(),
        h as f64 / one as f64,
    );
    let _ = writeln!(
        out,
        "| version | deltas applied (at most) | ms |\n|---|--:|--:|"
    );
    for (v, ms) in rows {
        let chain = if v == n {
            0
        } else {
            // Up to the next multiple of 64, or the key.
            let next_full = v.div_ceil(64) * 64;
            if next_full >= n { n - v } else { next_full - v }
        };
        let label = if v == n {
            format!("{v} (current)")
        } else if v == 1 {
            format!("{v} (oldest)")
        } else {
            v.to_string()
        };
        let _ = writeln!(out, "| {label} | {chain} | {ms:.2} |");
    }
    let _ = writeln!(out);
    Ok(())
}

// ------------------------------------------------------------------------------------------

async fn run(cfg: Cfg) -> Res<String> {
    let mut out = String::new();
    let mut d = Conn::connect(cfg.redis).await?;
    d.cmd(&[b"FLUSHALL"]).await?;
    if cfg.parts.contains("memory") {
        memory(&cfg, &mut out).await?;
    }
    if cfg.parts.contains("docs") {
        docs(&cfg, &mut out).await?;
    }
    if cfg.parts.contains("writes") {
        writes(&cfg, &mut out).await?;
    }
    if cfg.parts.contains("big") {
        big(&cfg, &mut out).await?;
    }
    if cfg.parts.contains("oldest") {
        oldest(&cfg, &mut out).await?;
    }
    let mut sc = Conn::connect(cfg.sc).await?;
    if let Frame::Array(Some(items)) = sc.cmd(&[b"STATE.STATS"]).await? {
        let stats: Vec<String> = items
            .chunks(2)
            .filter_map(|kv| match kv {
                [Frame::Bulk(Some(k)), Frame::Int(v)] => {
                    Some(format!("{} {v}", String::from_utf8_lossy(k)))
                }
                _ => None,
            })
            .filter(|s| {
                s.starts_with("versions_") || s.starts_with("dictionar") || s.starts_with("chunk_")
            })
            .collect();
        let _ = writeln!(
            out,
            "statecar's own count over the run (STATE.STATS): {}.\n",
            stats.join(", ")
        );
    }
    Ok(out)
}

fn main() {
    let port = |v: &str| std::env::var(v).ok().and_then(|p| p.parse::<u16>().ok());
    let (Some(sc), Some(redis)) = (port("STATECAR_PORT"), port("REDIS_PORT")) else {
        println!("{HELP}");
        return;
    };
    if !std::env::args().any(|a| a == "--bench") {
        println!("checkpoints: skipped (run it with benches/checkpoint_bench.sh)");
        return;
    }
    let cfg = (|| -> Res<Cfg> {
        let mut pids = Vec::new();
        for (label, var) in [("statecar", "STATECAR_PID"), ("redis", "REDIS_PID")] {
            if let Ok(p) = std::env::var(var) {
                pids.push((label, p.trim().parse().map_err(|_| format!("{var}={p}"))?));
            }
        }
        Ok(Cfg {
            sc,
            redis,
            parts: std::env::var("BENCH_PARTS")
                .unwrap_or_else(|_| "memory,docs,writes,big,oldest".into()),
            rounds: env_or("ROUNDS", 3)?,
            secs: Duration::from_secs_f64(env_or("BENCH_SECONDS", 3.0)?),
            sessions: env_or("SESSIONS", 20)?,
            docs: env_or("DOCS", 5000)?,
            conns: env_or("CONNS", 8)?,
            big_writes: env_or("BIG_WRITES", 6)?,
            old_versions: env_or("OLD_VERSIONS", 1000)?,
            pids,
        })
    })();
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            eprintln!("checkpoints: {e}");
            std::process::exit(2);
        }
    };
    let out_file = std::env::var("CHECKPOINT_BENCH_OUT").ok();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("checkpoints: tokio runtime: {e}");
            std::process::exit(2);
        }
    };
    match rt.block_on(run(cfg)) {
        Ok(md) => {
            println!("{md}");
            if let Some(f) = out_file
                && let Err(e) = std::fs::write(&f, &md)
            {
                eprintln!("checkpoints: cannot write {f}: {e}");
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("checkpoints: FAILED: {e}");
            std::process::exit(1);
        }
    }
}
