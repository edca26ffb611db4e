//! One client cannot hurt another (issue 12).
//!
//! statecar in front of a real redis-server with `upstream.max_connections = 2`, so that every
//! client shares an upstream connection with others. Twelve clients pipeline INCRs on one
//! counter and SETs of known values, counting what was acknowledged, while a hostile client
//! sends, one connection each, malformed requests, a deep Lua reply, a busy script and a busy
//! function that are then killed through statecar, CLIENT KILL of itself, QUIT in the middle
//! of a pipeline, connections that vanish mid-pipeline, mid-bulk and mid-transaction, and
//! CLIENT REPLY OFF followed by PSUBSCRIBE.
//!
//! What must hold:
//! - every hostile input is answered exactly as a second, identical Redis answers it directly
//!   (every byte, and whether the connection is closed), and leaves the same keys behind;
//! - the other clients get no error at all, except `-BUSY` while a script or function runs,
//!   which is what Redis itself gives a direct client in that moment (counted separately);
//! - no acknowledged write is lost or doubled: the counter ends at exactly the number of
//!   acknowledged INCRs, every acknowledged SET reads back its value, and a SET answered BUSY
//!   left nothing.
//!
//! memory_budget.rs covers the other half of "one client cannot hurt another": memory.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::exchange::{IDLE, Outcome, Until, differential, read_outcome};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LOAD_CLIENTS: usize = 12;
/// INCR+SET pairs per pipelined write.
const PAIRS: usize = 8;
const COUNTER: &str = "iso:counter";

/// Redis's two BUSY replies (script, function): the only errors other clients may get.
const BUSY_SCRIPT: &str =
    "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE.";
const BUSY_FUNCTION: &str =
    "BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE.";

/// Both Redis servers get the same options: the busy threshold low, so a script is BUSY soon.
const REDIS_ARGS: &[&str] = &["--busy-reply-threshold", "100"];

// ---------------------------------------------------------------------------------------------
// the clients under load
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Load {
    stop: AtomicBool,
    rounds: AtomicU64,
    acked_incrs: AtomicU64,
    busy_replies: AtomicU64,
    failures: Mutex<Vec<(String, String)>>,
}

/// What one load client saw: SETs acknowledged (key, value) and SETs answered BUSY (keys).
#[derive(Default)]
struct Writes {
    acked: Vec<(String, String)>,
    busy: Vec<String>,
}

async fn load_client(c: usize, port: u16, load: Arc<Load>) -> Writes {
    let mut writes = Writes::default();
    let mut conn = RawConn::connect(port).await;
    let mut seq: u64 = 0;
    // (what went wrong, where): the first groups the report, the second is an example.
    let fail = |what: String, at: String| load.failures.lock().unwrap().push((what, at));
    while !load.stop.load(Ordering::SeqCst) {
        let mut bytes = Vec::new();
        let mut keys = Vec::new();
        for _ in 0..PAIRS {
            seq += 1;
            let key = format!("iso:set:{c}:{seq}");
            let value = format!("value-{c}-{seq}");
            bytes.extend(encode(&["INCR", COUNTER]));
            bytes.extend(encode(&["SET", &key, &value]));
            keys.push((key, value));
        }
        if let Err(e) = conn.try_send(&bytes).await {
            fail(format!("write failed: {e}"), format!("load client {c}"));
            return writes;
        }
        for (key, value) in keys {
            for is_incr in [true, false] {
                let reply = match conn.read_for(WAIT).await {
                    Ok(f) => f,
                    Err(e) => {
                        fail(
                            format!("no reply: {e:?}"),
                            format!("load client {c}, {key}"),
                        );
                        return writes;
                    }
                };
                match (&reply, is_incr) {
                    (Frame::Int(_), true) => {
                        load.acked_incrs.fetch_add(1, Ordering::SeqCst);
                    }
                    (f, false) if *f == ok() => writes.acked.push((key.clone(), value.clone())),
                    (Frame::Error(e), _) if e == BUSY_SCRIPT || e == BUSY_FUNCTION => {
                        load.busy_replies.fetch_add(1, Ordering::SeqCst);
                        if !is_incr {
                            writes.busy.push(key.clone());
                        }
                    }
                    (other, _) => fail(
                        format!("{other:?}"),
                        format!(
                            "load client {c}, {} for {key}",
                            if is_incr { "INCR" } else { "SET" }
                        ),
                    ),
                }
            }
        }
        load.rounds.fetch_add(1, Ordering::SeqCst);
    }
    writes
}

// ---------------------------------------------------------------------------------------------
// hostile scenarios, played against Redis directly and through statecar
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Step {
    /// Write these bytes on connection i (opened on first use).
    Send(usize, Vec<u8>),
    /// Write the command whose arguments are these, `{id}` replaced by what `ReadId(i)` read.
    SendWithId(usize, Vec<&'static str>),
    /// Read what arrives on connection i; compared with what Redis sent.
    Read(usize),
    /// Read one integer reply (CLIENT ID) on connection i, kept for `SendWithId`; the value
    /// itself differs between servers and is not compared.
    ReadId(usize),
    /// Wait until Redis answers a direct PING with BUSY: a script runs past the threshold.
    WaitBusy,
    /// Close connection i without reading.
    Drop(usize),
}

struct Scenario {
    name: &'static str,
    steps: Vec<Step>,
    /// Commands sent to Redis directly afterwards; their replies are compared too.
    probes: Vec<Vec<&'static str>>,
}

/// Everything a run of a scenario produced, in order: the outcomes of `Read` steps, then the
/// probe replies (as outcomes), plus anything that went wrong along the way.
struct Played {
    outcomes: Vec<Outcome>,
    problems: Vec<String>,
}

async fn play(
    port: u16,
    observer: &mut RawConn,
    sc: &Scenario,
    expected: Option<&[Outcome]>,
) -> Played {
    let mut conns: HashMap<usize, TcpStream> = HashMap::new();
    let mut ids: HashMap<usize, i64> = HashMap::new();
    let mut out = Played {
        outcomes: Vec::new(),
        problems: Vec::new(),
    };
    for step in &sc.steps {
        match step {
            Step::Send(i, bytes) => {
                let s = open(&mut conns, *i, port).await;
                let _ = tokio::time::timeout(WAIT, s.write_all(bytes)).await;
            }
            Step::SendWithId(i, args) => {
                let Some(id) = ids.get(i).copied() else {
                    out.problems
                        .push(format!("no CLIENT ID for connection {i}"));
                    continue;
                };
                let args: Vec<String> = args
                    .iter()
                    .map(|a| a.replace("{id}", &id.to_string()))
                    .collect();
                let s = open(&mut conns, *i, port).await;
                let _ = tokio::time::timeout(WAIT, s.write_all(&encode(&args))).await;
            }
            Step::Read(i) => {
                let s = open(&mut conns, *i, port).await;
                let k = out.outcomes.len();
                let until = match expected.and_then(|e| e.get(k)) {
                    Some(e) => Until::Like {
                        marker: b"",
                        expected: e,
                    },
                    None => Until::Settled {
                        marker: b"",
                        idle: IDLE,
                    },
                };
                out.outcomes.push(read_outcome(s, until).await);
            }
            Step::ReadId(i) => {
                let s = open(&mut conns, *i, port).await;
                match read_integer(s).await {
                    Ok(id) => {
                        ids.insert(*i, id);
                    }
                    Err(e) => out
                        .problems
                        .push(format!("CLIENT ID on connection {i}: {e}")),
                }
            }
            Step::WaitBusy => {
                if let Err(e) = wait_busy(observer).await {
                    out.problems.push(e);
                }
            }
            Step::Drop(i) => {
                conns.remove(i);
            }
        }
    }
    drop(conns);
    for p in &sc.probes {
        let raw = {
            observer.send_cmd(p).await;
            observer.read_raw().await
        };
        out.outcomes.push(Outcome {
            reply: raw,
            closed: false,
        });
    }
    out
}

async fn open(conns: &mut HashMap<usize, TcpStream>, i: usize, port: u16) -> &mut TcpStream {
    if let std::collections::hash_map::Entry::Vacant(v) = conns.entry(i) {
        let s = within("connect", TcpStream::connect(("127.0.0.1", port)))
            .await
            .unwrap_or_else(|e| panic!("connect to {port}: {e}"));
        s.set_nodelay(true).unwrap();
        v.insert(s);
    }
    conns.get_mut(&i).unwrap()
}

/// Reads one `:n\r\n` reply.
async fn read_integer(s: &mut TcpStream) -> Result<i64, String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 256];
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..end]).into_owned();
            return line
                .strip_prefix(':')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("not an integer reply: {line:?}"));
        }
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Err(_) => return Err(format!("no reply within {WAIT:?}")),
            Ok(Ok(0)) | Ok(Err(_)) => return Err("connection closed".into()),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Polls Redis with PING until it answers BUSY (the script is past busy-reply-threshold).
async fn wait_busy(observer: &mut RawConn) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match observer.cmd(&["PING"]).await {
            Frame::Error(e) if e.starts_with("BUSY") => return Ok(()),
            _ if tokio::time::Instant::now() > deadline => {
                return Err(format!(
                    "the script never made Redis BUSY within {WAIT:?} (it did not reach Redis?)"
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Ends any script or function still running (a scenario that failed may leave one), and
/// waits until Redis serves again.
async fn unbusy(observer: &mut RawConn) {
    for kill in [["SCRIPT", "KILL"], ["FUNCTION", "KILL"]] {
        observer.send_cmd(&kill).await;
        let _ = observer.read().await;
    }
    eventually("Redis no longer BUSY", async || {
        observer.cmd(&["PING"]).await == Frame::Simple("PONG".into())
    })
    .await;
}

fn cmd(args: &[&str]) -> Vec<u8> {
    encode(args)
}

fn cmds(list: &[&[&str]]) -> Vec<u8> {
    list.iter().flat_map(|a| encode(a)).collect()
}

const DEEP_LUA: &str = "local t = {} for i=1,200 do t = {t} end return t";
const FUNCTION_LIB: &str =
    "#!lua name=isolib\nredis.register_function('spin', function() while true do end end)";

fn scenarios() -> Vec<Scenario> {
    use Step::*;
    let ping = cmd(&["PING"]);
    vec![
        Scenario {
            name: "deep Lua reply (200 nested arrays)",
            steps: vec![
                Send(0, cmd(&["EVAL", DEEP_LUA, "0"])),
                Read(0),
                Send(0, ping.clone()),
                Read(0),
            ],
            probes: vec![],
        },
        Scenario {
            name: "busy script, SCRIPT KILL from another connection",
            steps: vec![
                Send(0, cmd(&["EVAL", "while true do end", "0"])),
                WaitBusy,
                Send(1, cmd(&["SCRIPT", "KILL"])),
                Read(1),
                Read(0),
                Send(0, ping.clone()),
                Read(0),
            ],
            probes: vec![vec!["PING"]],
        },
        Scenario {
            name: "busy function, FUNCTION KILL from another connection",
            steps: vec![
                Send(0, cmd(&["FUNCTION", "LOAD", "REPLACE", FUNCTION_LIB])),
                Read(0),
                Send(0, cmd(&["FCALL", "spin", "0"])),
                WaitBusy,
                Send(1, cmd(&["FUNCTION", "KILL"])),
                Read(1),
                Read(0),
                Send(0, ping.clone()),
                Read(0),
            ],
            probes: vec![vec!["PING"]],
        },
        Scenario {
            name: "CLIENT KILL ID of itself (SKIPME yes, the default: nothing killed)",
            steps: vec![
                Send(0, cmd(&["CLIENT", "ID"])),
                ReadId(0),
                SendWithId(0, vec!["CLIENT", "KILL", "ID", "{id}"]),
                Read(0),
                Send(0, ping.clone()),
                Read(0),
            ],
            probes: vec![],
        },
        Scenario {
            name: "CLIENT KILL ID of itself, SKIPME no",
            steps: vec![
                Send(0, cmd(&["CLIENT", "ID"])),
                ReadId(0),
                SendWithId(0, vec!["CLIENT", "KILL", "ID", "{id}", "SKIPME", "no"]),
                Send(0, cmd(&["SET", "iso:killed:after", "1"])),
                Read(0),
            ],
            probes: vec![vec!["EXISTS", "iso:killed:after"]],
        },
        Scenario {
            name: "QUIT in the middle of a pipeline",
            steps: vec![
                Send(
                    0,
                    cmds(&[
                        &["SET", "iso:quit:a", "1"],
                        &["INCR", "iso:quit:n"],
                        &["QUIT"],
                        &["SET", "iso:quit:b", "1"],
                        &["INCR", "iso:quit:n"],
                    ]),
                ),
                Read(0),
            ],
            probes: vec![
                vec!["EXISTS", "iso:quit:a"],
                vec!["EXISTS", "iso:quit:b"],
                vec!["GET", "iso:quit:n"],
            ],
        },
        Scenario {
            name: "clients vanishing mid-pipeline, mid-bulk and mid-transaction",
            steps: vec![
                Send(0, cmd(&["INCR", "iso:vanish:n"]).repeat(2000)),
                Drop(0),
                Send(
                    1,
                    [
                        &b"*3\r\n$3\r\nSET\r\n$15\r\niso:vanish:bulk\r\n$100000\r\n"[..],
                        &[b'b'; 50_000],
                    ]
                    .concat(),
                ),
                Drop(1),
                Send(2, cmds(&[&["MULTI"], &["INCR", "iso:vanish:multi"]])),
                Drop(2),
            ],
            probes: vec![
                vec!["EXISTS", "iso:vanish:bulk"],
                vec!["EXISTS", "iso:vanish:multi"],
            ],
        },
        Scenario {
            name: "CLIENT REPLY OFF, then PSUBSCRIBE * (Redis 7 still sends pub/sub frames)",
            steps: vec![
                Send(
                    0,
                    cmds(&[&["CLIENT", "REPLY", "OFF"], &["PSUBSCRIBE", "*"]]),
                ),
                Read(0),
                Send(1, cmd(&["PUBLISH", "iso:ch", "hello"])),
                Read(1),
                Read(0),
                Send(0, ping.clone()),
                Read(0),
            ],
            probes: vec![],
        },
    ]
}

/// Malformed requests: each on its own connection, followed by a marker command.
fn malformed() -> Vec<(&'static str, Vec<u8>)> {
    let ping = encode(&["PING"]);
    vec![
        ("$+4", b"*1\r\n$+4\r\nPING\r\n".to_vec()),
        ("$04", b"*1\r\n$04\r\nPING\r\n".to_vec()),
        ("*+1", b"*+1\r\n$4\r\nPING\r\n".to_vec()),
        ("*01", b"*01\r\n$4\r\nPING\r\n".to_vec()),
        ("$-0", b"*1\r\n$-0\r\n".to_vec()),
        ("*-0", b"*-0\r\n".to_vec()),
        ("*-5 then PING", [&b"*-5\r\n"[..], &ping].concat()),
        ("*INT_MAX+1", b"*2147483648\r\n".to_vec()),
        ("$ 20 digits", b"*1\r\n$99999999999999999999\r\n".to_vec()),
        (
            "unchecked bulk trailer",
            [&b"*1\r\n$4\r\nPINGxx"[..], &ping].concat(),
        ),
        ("':' in a multibulk", b"*1\r\n:4\r\n".to_vec()),
        ("empty line in a multibulk (fuzz)", b"*1\r\n\r\n".to_vec()),
        (
            "header CR, next byte skipped",
            b"*1\r\n$4\rXPING\r\n".to_vec(),
        ),
        ("quote then non-space", b"ECHO \"abc\"d\r\n".to_vec()),
        (
            "good commands before a bad one",
            [
                &encode(&["SET", "iso:mal:a", "1"])[..],
                b"*1\r\n$+4\r\nPING\r\n",
                &encode(&["SET", "iso:mal:b", "1"]),
            ]
            .concat(),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_cannot_hurt_another() {
    let redis = RedisServer::start_with(REDIS_ARGS);
    let reference = RedisServer::start_with(REDIS_ARGS);
    let mut sc = Statecar::start(redis.port(), "[upstream]\nmax_connections = 2\n");
    let (pp, rp) = (sc.port(), reference.port());
    let mut observer = RawConn::connect(redis.port()).await;
    let mut ref_observer = RawConn::connect(rp).await;

    let load = Arc::new(Load::default());
    let clients: Vec<_> = (0..LOAD_CLIENTS)
        .map(|c| tokio::spawn(load_client(c, pp, load.clone())))
        .collect();
    // Every client under way before the first hostile input.
    eventually("every load client finished a round", async || {
        load.rounds.load(Ordering::SeqCst) >= 2 * LOAD_CLIENTS as u64
            || !load.failures.lock().unwrap().is_empty()
    })
    .await;

    let mut hostile_failures = Vec::new();
    for (i, (name, bytes)) in malformed().into_iter().enumerate() {
        if let Err(e) = differential(rp, pp, &bytes, &format!("iso-marker-{i}")).await {
            hostile_failures.push(format!("malformed input {name:?}:\n      {e}"));
        }
    }
    for sc_ in scenarios() {
        let want = play(rp, &mut ref_observer, &sc_, None).await;
        unbusy(&mut ref_observer).await;
        assert!(
            want.problems.is_empty(),
            "scenario {:?} against Redis directly: {:?}",
            sc_.name,
            want.problems
        );
        let got = play(pp, &mut observer, &sc_, Some(&want.outcomes)).await;
        unbusy(&mut observer).await;
        let mut diffs = got.problems.clone();
        for (k, w) in want.outcomes.iter().enumerate() {
            let g = got.outcomes.get(k);
            if g != Some(w) {
                diffs.push(format!(
                    "read {k}: redis {w:?}\n        statecar {}",
                    g.map_or("(nothing)".to_string(), |g| format!("{g:?}"))
                ));
            }
        }
        if !diffs.is_empty() {
            hostile_failures.push(format!(
                "scenario {:?}:\n      {}",
                sc_.name,
                diffs.join("\n      ")
            ));
        }
    }
    let rounds_during = load.rounds.load(Ordering::SeqCst);

    load.stop.store(true, Ordering::SeqCst);
    let mut writes = Vec::new();
    for c in clients {
        writes.push(within("load client to finish", c).await.unwrap());
    }

    // What the other clients saw.
    let failures = load.failures.lock().unwrap().clone();
    let acked = load.acked_incrs.load(Ordering::SeqCst);
    let counter = match observer.cmd(&["GET", COUNTER]).await {
        Frame::Bulk(b) => String::from_utf8_lossy(&b)
            .parse::<u64>()
            .unwrap_or(u64::MAX),
        Frame::NullBulk => 0,
        other => panic!("GET {COUNTER}: {other:?}"),
    };
    let mut wrong_values = Vec::new();
    let mut acked_sets = 0usize;
    for w in &writes {
        acked_sets += w.acked.len();
        for chunk in w.acked.chunks(500) {
            let mut args = vec!["MGET"];
            args.extend(chunk.iter().map(|(k, _)| k.as_str()));
            let Frame::Array(values) = observer.cmd(&args).await else {
                panic!("MGET failed")
            };
            for ((k, v), got) in chunk.iter().zip(values) {
                if got != bulk(v) {
                    wrong_values.push(format!("{k}: acknowledged {v:?}, Redis has {got:?}"));
                }
            }
        }
        for chunk in w.busy.chunks(500) {
            let mut args = vec!["EXISTS"];
            args.extend(chunk.iter().map(|k| k.as_str()));
            let n = observer.cmd(&args).await;
            if n != int(0) {
                wrong_values.push(format!("{n:?} of the SETs answered BUSY were written"));
            }
        }
    }
    eprintln!(
        "isolation: {LOAD_CLIENTS} clients, {rounds_during} rounds during the hostile inputs, \
         {acked} INCRs and {acked_sets} SETs acknowledged, {} BUSY replies, counter {counter}",
        load.busy_replies.load(Ordering::SeqCst)
    );

    let mut report = Vec::new();
    if !failures.is_empty() {
        let mut kinds: Vec<(String, usize, String)> = Vec::new();
        for (what, at) in &failures {
            match kinds.iter_mut().find(|k| &k.0 == what) {
                Some(k) => k.1 += 1,
                None => kinds.push((what.clone(), 1, at.clone())),
            }
        }
        let lines: Vec<String> = kinds
            .iter()
            .map(|(what, n, at)| format!("{n} x {what} (first: {at})"))
            .collect();
        report.push(format!(
            "{} error(s) for the other clients (other than BUSY):\n    {}",
            failures.len(),
            lines.join("\n    ")
        ));
    }
    if counter != acked {
        report.push(format!(
            "counter is {counter}, but {acked} INCRs were acknowledged ({})",
            if counter > acked {
                "writes that were not acknowledged ran: a client that retries counts twice"
            } else {
                "acknowledged writes were lost"
            }
        ));
    }
    if !wrong_values.is_empty() {
        report.push(format!(
            "{} SET(s) do not read back as acknowledged, e.g.:\n    {}",
            wrong_values.len(),
            wrong_values[..wrong_values.len().min(10)].join("\n    ")
        ));
    }
    if !hostile_failures.is_empty() {
        report.push(format!(
            "{} hostile input(s) not answered as Redis answers them directly:\n  {}",
            hostile_failures.len(),
            hostile_failures.join("\n  ")
        ));
    }
    if !sc.is_running() {
        report.push("statecar died".into());
    }
    assert!(report.is_empty(), "{}", report.join("\n"));
    assert!(acked > 0 && acked_sets > 0, "the load did not run");
}
