//! Real clients from other ecosystems through statecar: redis-cli and redis-py.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

/// Runs redis-cli with `args` against `port` (stdin optional) and returns its stdout.
fn redis_cli(port: u16, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut child = Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli (is it on PATH?)");
    if let Some(input) = stdin {
        let mut s = child.stdin.take().unwrap();
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = s.write_all(&input);
        });
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_through_statecar_matches_redis() {
    let (_redis, sc) = start_pair("");
    let reference = RedisServer::start();
    let (p, r) = (sc.port(), reference.port());
    let script: &[(&[&str], &str)] = &[
        (&["SET", "k", "v"], "OK\n"),
        (&["GET", "k"], "v\n"),
        (&["INCR", "n"], "1\n"),
        (&["INCR", "n"], "2\n"),
        (&["LPUSH", "l", "a", "b", "c"], "3\n"),
        (&["LRANGE", "l", "0", "-1"], "c\nb\na\n"),
        (&["HSET", "h", "f1", "v1", "f2", "v2"], "2\n"),
        (&["HGETALL", "h"], "f1\nv1\nf2\nv2\n"),
        (&["GET", "missing"], "\n"),
        (&["TYPE", "l"], "list\n"),
        (&["SADD", "s", "x"], "1\n"),
        (&["ECHO", "two words"], "two words\n"),
        (&["GET", "l"], ""),
        (&["--no-raw", "INCR", "n"], "(integer) 3\n"),
        (
            &["--no-raw", "LRANGE", "l", "0", "-1"],
            "1) \"c\"\n2) \"b\"\n3) \"a\"\n",
        ),
        (&["--no-raw", "GET", "missing"], "(nil)\n"),
        (&["-3", "HGETALL", "h"], "f1 v1\nf2 v2\n"),
        (
            &["-3", "--no-raw", "HGETALL", "h"],
            "1# \"f1\" => \"v1\"\n2# \"f2\" => \"v2\"\n",
        ),
        (&["-3", "--no-raw", "GET", "missing"], "(nil)\n"),
        (&["-3", "--no-raw", "SMEMBERS", "s"], "1~ \"x\"\n"),
        (&["-n", "2", "SET", "indb2", "yes"], "OK\n"),
        (&["-n", "2", "GET", "indb2"], "yes\n"),
        (&["GET", "indb2"], "\n"),
    ];
    tokio::task::block_in_place(|| {
        for (args, want) in script {
            let got = redis_cli(p, args, None);
            let from_redis = redis_cli(r, args, None);
            assert_eq!(got, from_redis, "redis-cli {args:?}: statecar vs redis");
            if !want.is_empty() {
                assert_eq!(&got, want, "redis-cli {args:?}");
            } else {
                // Errors: compare to Redis only (its wording is Redis's).
                assert!(got.contains("WRONGTYPE"), "redis-cli {args:?}: {got:?}");
            }
        }
        // Commands on stdin, one per line.
        let got = redis_cli(p, &[], Some(b"SET piped 1\nINCR piped\nGET piped\n"));
        assert_eq!(got, "OK\n2\n2\n");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_pipe_mass_insertion() {
    let (redis, sc) = start_pair("");
    let mut input = Vec::new();
    for i in 0..5000 {
        input.extend(encode(&[
            "SET",
            &format!("mass:{i}"),
            &format!("value {i}"),
        ]));
    }
    for _ in 0..1000 {
        input.extend(encode(&["INCR", "mass:counter"]));
    }
    let out = tokio::task::block_in_place(|| redis_cli(sc.port(), &["--pipe"], Some(&input)));
    assert!(
        out.contains("errors: 0, replies: 6000"),
        "redis-cli --pipe said: {out}"
    );
    let mut d = RawConn::connect(redis.port()).await;
    assert_eq!(d.cmd(&["DBSIZE"]).await, int(5001));
    assert_eq!(d.cmd(&["GET", "mass:4999"]).await, bulk("value 4999"));
    assert_eq!(d.cmd(&["GET", "mass:counter"]).await, bulk("1000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_client_suite() {
    let (_redis, sc) = start_pair("");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/redis_py_client.py"
    );
    let have_redis_py = Command::new("python3")
        .args(["-c", "import redis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have_redis_py {
        if std::env::var("STATECAR_ALLOW_SKIP").as_deref() == Ok("1") {
            eprintln!(
                "SKIPPED redis_py_client_suite: python3 cannot `import redis` (pip install redis)"
            );
            return;
        }
        panic!(
            "python3 cannot `import redis`: install redis-py (pip install redis), \
             or set STATECAR_ALLOW_SKIP=1 to skip this test"
        );
    }
    let out = tokio::task::block_in_place(|| {
        Command::new("python3")
            .arg(script)
            .arg(sc.port().to_string())
            .output()
            .expect("run python3")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "redis-py suite failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("redis-py suite passed"),
        "{stdout}\n{stderr}"
    );
}

/// AUTH checked by Redis (ACL users, a password set on Redis), CLIENT describing statecar's own
/// clients, and transactions, through redis-py in both protocols (issue 12; redis-py's own ACL
/// and CLIENT tests are the model).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_py_connection_state() {
    let (redis, sc) = start_pair("");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/connection_state_redis_py.py"
    );
    // Redis with a password of its own, statecar without one: the clients authenticate.
    let locked = RedisServer::start_with(&["--requirepass", "sekret"]);
    let sc_locked = Statecar::start(locked.port(), "");
    let runs = [
        (sc.port(), redis.port(), "2", "main"),
        (sc.port(), redis.port(), "3", "main"),
        (sc_locked.port(), locked.port(), "2", "requirepass"),
        (sc_locked.port(), locked.port(), "3", "requirepass"),
    ];
    for (port, redis_port, protocol, mode) in runs {
        let out = tokio::task::block_in_place(|| {
            Command::new("python3")
                .arg(script)
                .arg(port.to_string())
                .arg(redis_port.to_string())
                .arg(protocol)
                .arg(mode)
                .output()
                .expect("run python3")
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains("connection state passed"),
            "redis-py connection state ({mode}, RESP{protocol}) failed:\n{stdout}\n{stderr}\nstatecar log:\n{}",
            sc.stderr()
        );
    }
}
