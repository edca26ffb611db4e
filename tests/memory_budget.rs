//! A memory budget for the whole sidecar (issue 12): clients uploading huge values at once
//! must not take statecar's memory past `limits.max_client_memory` (all clients' buffers
//! together, Redis 7's maxmemory-clients), and one client past `limits.max_client_query_buffer`
//! (Redis's client-query-buffer-limit) is disconnected, while the other clients keep getting
//! correct answers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;
use tokio::io::AsyncWriteExt;

/// A field of /proc/PID/status in bytes (VmRSS, VmHWM).
fn proc_status_bytes(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

const MIB: u64 = 1024 * 1024;
/// The whole sidecar's budget for client buffers, and one client's share.
const BUDGET: u64 = 64 * MIB;
const PER_CLIENT: u64 = 48 * MIB;
/// What the process may hold beyond the budget: code, allocator slack, socket buffers, and a
/// buffer being copied while it grows. Without a budget the peak is far above (8 x 64 MiB
/// today; up to 8 x 48 MiB with only the per-client limit).
const SLACK: u64 = 64 * MIB;
const UPLOADERS: usize = 8;
/// Each uploader sends the first 64 MB of a 400 MB SET, and stops there.
const UPLOAD: usize = 64 * 1024 * 1024;
const DECLARED: usize = 400 * 1000 * 1000;

/// Issue 12's memory case: several clients each upload the first 64 MB of a 400 MB SET at
/// once. With `max_client_query_buffer` at 48 MiB each of them is over its own limit, and
/// together (8 x 48 MiB) they would be far over the 64 MiB `max_client_memory`: statecar must
/// disconnect them (as Redis does with client-query-buffer-limit and maxmemory-clients) and its
/// peak resident memory must stay within the budget plus a fixed slack, while other clients
/// keep getting correct answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_budget_holds_while_clients_upload_huge_values() {
    let (redis, mut sc) = start_pair(&format!(
        "[limits]\nmax_client_memory = {BUDGET}\nmax_client_query_buffer = {PER_CLIENT}\n"
    ));
    let pp = sc.port();
    let pid = sc.pid();

    // Others at work before, during and after the uploads.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            tokio::spawn(async move {
                let mut c = RawConn::connect(pp).await;
                let mut problems = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let key = format!("mem:{w}");
                    let v = format!("{w}-{i}");
                    let mut bytes = encode(&["SET", &key, &v]);
                    bytes.extend(encode(&["GET", &key]));
                    if c.try_send(&bytes).await.is_err() {
                        problems.push(format!("worker {w}: connection closed"));
                        break;
                    }
                    for want in [ok(), bulk(&v)] {
                        match c.read_for(WAIT).await {
                            Ok(f) if f == want => {}
                            other => problems.push(format!("worker {w}: {other:?}, want {want:?}")),
                        }
                    }
                    if !problems.is_empty() {
                        break;
                    }
                    rounds.fetch_add(1, Ordering::SeqCst);
                }
                problems
            })
        })
        .collect();
    eventually("workers under way", async || {
        rounds.load(Ordering::SeqCst) >= 8
    })
    .await;

    let rss_before = proc_status_bytes(pid, "VmRSS");
    let header = format!("*3\r\n$3\r\nSET\r\n$7\r\nmem:big\r\n${DECLARED}\r\n");
    let uploads: Vec<_> = (0..UPLOADERS)
        .map(|u| {
            let header = header.clone();
            tokio::spawn(async move {
                let mut c = RawConn::connect(pp).await;
                let mut sent = 0usize;
                let chunk = vec![b'x'; 1024 * 1024];
                let mut wrote = c.stream.write_all(header.as_bytes()).await.is_ok();
                while wrote && sent < UPLOAD {
                    match tokio::time::timeout(WAIT, c.stream.write_all(&chunk)).await {
                        Ok(Ok(())) => sent += chunk.len(),
                        Ok(Err(_)) => wrote = false,
                        Err(_) => {
                            return Err(format!(
                                "uploader {u}: statecar neither read nor closed for {WAIT:?} \
                                 after {} MiB",
                                sent / 1024 / 1024
                            ));
                        }
                    }
                }
                // Whether cut while writing or after: the connection must end up closed, with
                // nothing but an error before that.
                match c.try_read_to_eof(WAIT).await {
                    Ok(rest) => {
                        let frames = parse_all(&rest).unwrap_or_default();
                        if frames.iter().any(|f| !f.is_error()) {
                            return Err(format!("uploader {u}: got {frames:?}"));
                        }
                        Ok(sent)
                    }
                    Err(_) => Err(format!(
                        "uploader {u}: sent {} MiB, over its {} MiB limit, and is still \
                         connected",
                        sent / 1024 / 1024,
                        PER_CLIENT / MIB
                    )),
                }
            })
        })
        .collect();
    let mut problems = Vec::new();
    for u in uploads {
        // Each uploader bounds its own writes and reads with WAIT.
        if let Err(e) = u.await.unwrap() {
            problems.push(e);
        }
    }
    let peak = proc_status_bytes(pid, "VmHWM");

    stop.store(true, Ordering::SeqCst);
    for w in workers {
        problems.extend(within("worker", w).await.unwrap());
    }
    let mut direct = RawConn::connect(redis.port()).await;
    if direct.cmd(&["EXISTS", "mem:big"]).await != int(0) {
        problems.push("a partial upload was written".into());
    }
    eprintln!(
        "memory budget: RSS before {} MiB, peak {} MiB, budget {} MiB + slack {} MiB",
        rss_before / MIB,
        peak / MIB,
        BUDGET / MIB,
        SLACK / MIB
    );
    if peak > rss_before + BUDGET + SLACK {
        problems.push(format!(
            "statecar's peak RSS {} MiB is over {} MiB before + {} MiB budget + {} MiB slack",
            peak / MIB,
            rss_before / MIB,
            BUDGET / MIB,
            SLACK / MIB
        ));
    }
    assert!(sc.is_running(), "statecar died (OOM?)");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let mut c = RawConn::connect(pp).await;
    assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

/// Threads in statecar's process right now.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// State writes from 16 KiB are encoded off the async threads. Many clients writing at once
/// must share a bounded set of threads ([`statecar::blocking_threads`]: each keeps compression
/// contexts and scratch memory), and every write still lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_state_writers_share_a_bounded_set_of_threads() {
    const WRITERS: usize = 48;
    const WRITES: usize = 3;
    // Level 12: each write's encoding takes longer than statecar takes to read the next
    // client's, so writes pile up on the blocking pool as they do under real load (48 threads
    // without the cap).
    let rule = "[[state]]\npattern = \"s:*\"\ncompression = \"zstd\"\ncompression_level = 12\n";
    let (_redis, sc) = start_pair(&format!("{rule}max_versions = 5\n"));
    let (port, pid) = (sc.port(), sc.pid());
    let before = threads(pid);
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(Ordering::Relaxed) {
                most = most.max(threads(pid));
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            most
        })
    };
    // Embeddings-like digits (they compress about 2:1, so each write's encoding takes a
    // while), made before the writers start so that they send as fast as statecar reads.
    let bodies: Vec<Arc<String>> = (0..WRITERS)
        .map(|w| {
            let mut x = (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut v = String::with_capacity(260 * 1024);
            while v.len() < 128 * 1024 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                v.push_str(&format!("0.{:06},", x % 1_000_000));
            }
            Arc::new(v)
        })
        .collect();
    let value = |body: &str, i: usize| format!("{{\"step\":{i},\"embedding\":[{body}0]}}");
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let body = bodies[w].clone();
            tokio::spawn(async move {
                let mut c = RawConn::connect(port).await;
                let key = format!("s:{w}");
                let values: Vec<String> = (0..WRITES).map(|i| value(&body, i)).collect();
                for v in &values {
                    assert_eq!(c.cmd(&["SET", &key, v]).await, ok());
                }
                assert_eq!(c.cmd(&["GET", &key]).await, bulk(&values[WRITES - 1]));
            })
        })
        .collect();
    for w in writers {
        within("a state writer", w).await.expect("writer task");
    }
    done.store(true, Ordering::Relaxed);
    let most = sampler.await.expect("sampler");
    let bound = before + statecar::blocking_threads();
    assert!(
        most <= bound,
        "{WRITERS} state writers made statecar run {most} threads (started with {before}; at \
         most {bound} expected)"
    );
}
