//! The proxy core as a Redis client sees it: pipelining under concurrency, transactions,
//! SELECT, HELLO, AUTH, binary safety, error pass-through and per-connection state.
//!
//! Every test runs a real redis-server and a real statecar process on free ports.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use redis::Value;

/// Sends the same command to the proxy and straight to Redis and asserts identical replies.
async fn same_as_redis(proxy: &mut RawConn, direct: &mut RawConn, args: &[&str]) -> Frame {
    let p = proxy.cmd(args).await;
    let d = direct.cmd(args).await;
    assert_eq!(
        p, d,
        "reply to {args:?} through statecar differs from Redis's"
    );
    p
}

// ------------------------------------------------------------------------------------------
// 1. concurrency and pipelining
// ------------------------------------------------------------------------------------------

/// The commands of one client's pipeline and the replies it must get, from a local model.
struct Model {
    c: u32,
    strings: HashMap<String, String>,
    counter: i64,
    appended: String,
}

impl Model {
    fn command(&mut self, seq: usize) -> (Vec<String>, Frame) {
        let c = self.c;
        match seq % 5 {
            0 => {
                let k = format!("c{c}:s{}", seq % 7);
                let v = format!("v:{c}:{seq}:{}", "x".repeat(seq % 50));
                self.strings.insert(k.clone(), v.clone());
                (vec!["SET".into(), k, v], ok())
            }
            1 => {
                let k = format!("c{c}:s{}", (seq * 3) % 7);
                let want = match self.strings.get(&k) {
                    Some(v) => bulk(v),
                    None => Frame::NullBulk,
                };
                (vec!["GET".into(), k], want)
            }
            2 => {
                self.counter += 1;
                (vec!["INCR".into(), format!("c{c}:n")], int(self.counter))
            }
            3 => {
                let piece = format!("|{c}.{seq}");
                self.appended.push_str(&piece);
                (
                    vec!["APPEND".into(), format!("c{c}:a"), piece],
                    int(self.appended.len() as i64),
                )
            }
            _ => (vec!["GET".into(), format!("c{c}:a")], bulk(&self.appended)),
        }
    }
}

fn frame_to_value(f: &Frame) -> Value {
    match f {
        Frame::Simple(s) if s == "OK" => Value::Okay,
        Frame::Simple(s) => Value::SimpleString(s.clone()),
        Frame::Bulk(b) => Value::BulkString(b.clone()),
        Frame::NullBulk => Value::Nil,
        Frame::Int(n) => Value::Int(*n),
        other => panic!("not used in this test: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_pipelining_each_get_their_own_replies() {
    let (_redis, sc) = start_pair("");
    let port = sc.port();
    let mut tasks = Vec::new();
    for c in 0..100u32 {
        tasks.push(tokio::spawn(async move {
            let mut model = Model {
                c,
                strings: HashMap::new(),
                counter: 0,
                appended: String::new(),
            };
            if c % 2 == 0 {
                // redis-rs: each pipeline goes out in one write.
                let mut con = client(port).await;
                for round in 0..2 {
                    let mut pipe = redis::pipe();
                    let mut want = Vec::new();
                    for i in 0..200 {
                        let (args, reply) = model.command(round * 200 + i);
                        let cmd = pipe.cmd(&args[0]);
                        for a in &args[1..] {
                            cmd.arg(a);
                        }
                        want.push(frame_to_value(&reply));
                    }
                    let got: Vec<Value> = pipe.query_async(&mut con).await.unwrap();
                    assert_eq!(got.len(), want.len(), "client {c}: reply count");
                    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                        assert_eq!(g, w, "client {c}, round {round}, command {i}: wrong reply");
                    }
                }
            } else {
                // Raw socket: one write per command, all sent before any reply is read.
                let mut con = RawConn::connect(port).await;
                for round in 0..2 {
                    let mut want = Vec::new();
                    for i in 0..200 {
                        let (args, reply) = model.command(round * 200 + i);
                        con.send_cmd(&args).await;
                        want.push(reply);
                    }
                    for (i, w) in want.iter().enumerate() {
                        let g = con.read().await;
                        assert_eq!(&g, w, "client {c}, round {round}, command {i}: wrong reply");
                    }
                }
            }
        }));
    }
    for t in tasks {
        within("a pipelining client", t).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_clients_incrementing_shared_keys_give_an_exact_total() {
    let (redis, sc) = start_pair("");
    let port = sc.port();
    let mut tasks = Vec::new();
    for c in 0..100u32 {
        tasks.push(tokio::spawn(async move {
            let mut con = RawConn::connect(port).await;
            let mut last = [0i64; 4];
            for chunk in 0..4 {
                let mut keys = Vec::new();
                for i in 0..25 {
                    let k = (c as usize + chunk * 25 + i) % 4;
                    con.send_cmd(&["INCR", &format!("shared:{k}")]).await;
                    keys.push(k);
                }
                for k in keys {
                    match con.read().await {
                        Frame::Int(n) => {
                            // One client's INCRs on one key are executed in its order.
                            assert!(
                                n > last[k],
                                "client {c}: INCR shared:{k} went from {} to {n}",
                                last[k]
                            );
                            last[k] = n;
                        }
                        other => panic!("client {c}: INCR replied {other:?}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        within("an incrementing client", t).await.unwrap();
    }
    let mut direct = RawConn::connect(redis.port()).await;
    for k in 0..4 {
        assert_eq!(
            direct.cmd(&["GET", &format!("shared:{k}")]).await,
            bulk("2500"),
            "shared:{k} lost or duplicated increments"
        );
    }
}

// ------------------------------------------------------------------------------------------
// 2. transactions
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_discard_and_execabort() {
    let (redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut direct = RawConn::connect(redis.port()).await;

    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        a.cmd(&["SET", "t:a", "1"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(
        a.cmd(&["INCR", "t:a"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(a.cmd(&["GET", "t:a"]).await, Frame::Simple("QUEUED".into()));
    assert_eq!(
        a.cmd(&["LPUSH", "t:a", "x"]).await,
        Frame::Simple("QUEUED".into())
    );
    let exec = a.cmd(&["EXEC"]).await;
    let Frame::Array(items) = &exec else {
        panic!("EXEC replied {exec:?}");
    };
    assert_eq!(items.len(), 4, "{exec:?}");
    assert_eq!(items[0], ok());
    assert_eq!(items[1], int(2));
    assert_eq!(items[2], bulk("2"));
    assert!(
        items[3]
            .error_text()
            .is_some_and(|e| e.starts_with("WRONGTYPE")),
        "a runtime error inside EXEC is its element: {exec:?}"
    );

    // DISCARD drops the queued commands.
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        a.cmd(&["SET", "t:b", "1"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(a.cmd(&["DISCARD"]).await, ok());
    assert_eq!(a.cmd(&["GET", "t:b"]).await, Frame::NullBulk);
    assert_eq!(direct.cmd(&["EXISTS", "t:b"]).await, int(0));

    // EXEC / DISCARD without MULTI, MULTI nested: Redis's own errors.
    same_as_redis(&mut a, &mut direct, &["EXEC"]).await;
    same_as_redis(&mut a, &mut direct, &["DISCARD"]).await;
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(direct.cmd(&["MULTI"]).await, ok());
    same_as_redis(&mut a, &mut direct, &["MULTI"]).await;
    // A syntax error while queueing aborts the transaction with EXECABORT.
    same_as_redis(&mut a, &mut direct, &["SET", "t:c"]).await;
    same_as_redis(&mut a, &mut direct, &["NOSUCHCOMMAND", "x"]).await;
    same_as_redis(&mut a, &mut direct, &["SET", "t:c", "1"]).await;
    let abort = same_as_redis(&mut a, &mut direct, &["EXEC"]).await;
    assert!(
        abort
            .error_text()
            .is_some_and(|e| e.starts_with("EXECABORT")),
        "EXEC after a queueing error: {abort:?}"
    );
    assert_eq!(direct.cmd(&["EXISTS", "t:c"]).await, int(0));
    // The connection is usable afterwards, outside any transaction.
    assert_eq!(a.cmd(&["SET", "t:d", "ok"]).await, ok());
    assert_eq!(a.cmd(&["GET", "t:d"]).await, bulk("ok"));
    same_as_redis(&mut a, &mut direct, &["EXEC"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_aborts_when_another_client_writes_and_unwatch_clears() {
    let (_redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut b = RawConn::connect(sc.port()).await;
    let queued = Frame::Simple("QUEUED".into());

    // Another client's write aborts the transaction: EXEC returns a null array.
    assert_eq!(a.cmd(&["SET", "w", "start"]).await, ok());
    assert_eq!(a.cmd(&["WATCH", "w"]).await, ok());
    assert_eq!(a.cmd(&["GET", "w"]).await, bulk("start"));
    assert_eq!(b.cmd(&["SET", "w", "theirs"]).await, ok());
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["SET", "w", "mine"]).await, queued);
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::NullArray);
    assert_eq!(a.cmd(&["GET", "w"]).await, bulk("theirs"));

    // Nobody else writes: EXEC runs.
    assert_eq!(a.cmd(&["WATCH", "w2"]).await, ok());
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["INCR", "w2"]).await, queued);
    assert_eq!(a.cmd(&["INCR", "w2"]).await, queued);
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![int(1), int(2)]));

    // WATCH is cleared by EXEC: a later write by another client does not abort the next one.
    assert_eq!(b.cmd(&["SET", "w2", "10"]).await, ok());
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["INCR", "w2"]).await, queued);
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![int(11)]));

    // UNWATCH forgets the watched key.
    assert_eq!(a.cmd(&["WATCH", "w3"]).await, ok());
    assert_eq!(b.cmd(&["SET", "w3", "theirs"]).await, ok());
    assert_eq!(a.cmd(&["UNWATCH"]).await, ok());
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["SET", "w3", "mine"]).await, queued);
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![ok()]));
    assert_eq!(b.cmd(&["GET", "w3"]).await, bulk("mine"));

    // DISCARD also clears WATCH.
    assert_eq!(a.cmd(&["WATCH", "w4"]).await, ok());
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["DISCARD"]).await, ok());
    assert_eq!(b.cmd(&["SET", "w4", "theirs"]).await, ok());
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["SET", "w4", "mine"]).await, queued);
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![ok()]));

    // A key watched by several clients: the first EXEC wins, the second aborts.
    assert_eq!(a.cmd(&["WATCH", "w5"]).await, ok());
    assert_eq!(b.cmd(&["WATCH", "w5"]).await, ok());
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(b.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["SET", "w5", "a"]).await, queued);
    assert_eq!(b.cmd(&["SET", "w5", "b"]).await, queued);
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![ok()]));
    assert_eq!(b.cmd(&["EXEC"]).await, Frame::NullArray);
    assert_eq!(b.cmd(&["GET", "w5"]).await, bulk("a"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transaction_between_plain_commands_keeps_order() {
    let (_redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut bytes = Vec::new();
    let cmds: &[&[&str]] = &[
        &["SET", "p0", "a"],
        &["INCR", "p1"],
        &["MULTI"],
        &["INCR", "p1"],
        &["APPEND", "p0", "b"],
        &["EXEC"],
        &["GET", "p0"],
        &["INCR", "p1"],
        &["WATCH", "p0"],
        &["MULTI"],
        &["GET", "p0"],
        &["EXEC"],
        &["PING"],
        &["GET", "p1"],
    ];
    for c in cmds {
        bytes.extend(encode(c));
    }
    a.send(&bytes).await;
    let q = || Frame::Simple("QUEUED".into());
    let want = vec![
        ok(),
        int(1),
        ok(),
        q(),
        q(),
        Frame::Array(vec![int(2), int(2)]),
        bulk("ab"),
        int(3),
        ok(),
        ok(),
        q(),
        Frame::Array(vec![bulk("ab")]),
        Frame::Simple("PONG".into()),
        bulk("3"),
    ];
    assert_eq!(a.read_n(want.len()).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_clients_running_transactions_concurrently() {
    let (redis, sc) = start_pair("");
    let port = sc.port();
    let mut tasks = Vec::new();
    for c in 0..50u32 {
        tasks.push(tokio::spawn(async move {
            let mut con = RawConn::connect(port).await;
            for t in 0..20i64 {
                let mut bytes = encode(&["MULTI"]);
                bytes.extend(encode(&["INCR", "tx:total"]));
                bytes.extend(encode(&["INCR", &format!("tx:c{c}")]));
                bytes.extend(encode(&["EXEC"]));
                con.send(&bytes).await;
                let r = con.read_n(4).await;
                assert_eq!(r[0], ok(), "client {c} tx {t}");
                assert_eq!(r[1], Frame::Simple("QUEUED".into()), "client {c} tx {t}");
                assert_eq!(r[2], Frame::Simple("QUEUED".into()), "client {c} tx {t}");
                match &r[3] {
                    Frame::Array(v) if v.len() == 2 => {
                        assert!(
                            matches!(v[0], Frame::Int(n) if (1..=1000).contains(&n)),
                            "{v:?}"
                        );
                        assert_eq!(v[1], int(t + 1), "client {c} tx {t}: its own counter");
                    }
                    other => panic!("client {c} tx {t}: EXEC replied {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        within("a transaction client", t).await.unwrap();
    }
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(direct.cmd(&["GET", "tx:total"]).await, bulk("1000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_based_compare_and_set_from_many_clients_is_exact() {
    let (redis, sc) = start_pair("");
    let port = sc.port();
    let mut tasks = Vec::new();
    for c in 0..20u32 {
        tasks.push(tokio::spawn(async move {
            let mut con = RawConn::connect(port).await;
            let mut done = 0;
            let mut attempts = 0;
            while done < 10 {
                attempts += 1;
                assert!(attempts < 10_000, "client {c}: CAS never succeeds");
                assert_eq!(con.cmd(&["WATCH", "cas"]).await, ok());
                let cur = match con.cmd(&["GET", "cas"]).await {
                    Frame::NullBulk => 0,
                    Frame::Bulk(b) => String::from_utf8(b).unwrap().parse::<i64>().unwrap(),
                    other => panic!("GET cas: {other:?}"),
                };
                let mut bytes = encode(&["MULTI"]);
                bytes.extend(encode(&["SET", "cas", &(cur + 1).to_string()]));
                bytes.extend(encode(&["EXEC"]));
                con.send(&bytes).await;
                let r = con.read_n(3).await;
                assert_eq!(r[0], ok());
                assert_eq!(r[1], Frame::Simple("QUEUED".into()));
                match &r[2] {
                    Frame::NullArray => {}
                    Frame::Array(v) if v == &vec![ok()] => done += 1,
                    other => panic!("client {c}: EXEC replied {other:?}"),
                }
            }
        }));
    }
    for t in tasks {
        within("a CAS client", t).await.unwrap();
    }
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(direct.cmd(&["GET", "cas"]).await, bulk("200"));
}

// ------------------------------------------------------------------------------------------
// 5. SELECT
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_is_per_client() {
    let (redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut b = RawConn::connect(sc.port()).await;
    let mut direct = RawConn::connect(redis.port()).await;

    assert_eq!(a.cmd(&["SELECT", "2"]).await, ok());
    assert_eq!(a.cmd(&["SET", "k", "a"]).await, ok());
    assert_eq!(
        b.cmd(&["GET", "k"]).await,
        Frame::NullBulk,
        "client B is still on db 0"
    );
    assert_eq!(a.cmd(&["GET", "k"]).await, bulk("a"));
    assert_eq!(direct.cmd(&["GET", "k"]).await, Frame::NullBulk);
    assert_eq!(direct.cmd(&["SELECT", "2"]).await, ok());
    assert_eq!(direct.cmd(&["GET", "k"]).await, bulk("a"));
    assert_eq!(direct.cmd(&["SELECT", "0"]).await, ok());

    // Out of range and malformed indexes: Redis's errors, and the db does not change.
    same_as_redis(&mut a, &mut direct, &["SELECT", "99999"]).await;
    let e = a.cmd(&["SELECT", "99999"]).await;
    assert_eq!(e, err("ERR DB index is out of range"));
    same_as_redis(&mut a, &mut direct, &["SELECT", "-1"]).await;
    same_as_redis(&mut a, &mut direct, &["SELECT", "abc"]).await;
    same_as_redis(&mut a, &mut direct, &["SELECT"]).await;
    assert_eq!(
        a.cmd(&["GET", "k"]).await,
        bulk("a"),
        "a failed SELECT keeps db 2"
    );

    // Pipelined SELECTs take effect exactly between the commands around them.
    let mut bytes = Vec::new();
    for c in [
        &["SELECT", "0"][..],
        &["SET", "p", "x0"],
        &["SELECT", "1"],
        &["SET", "p", "x1"],
        &["SELECT", "0"],
        &["GET", "p"],
        &["SELECT", "1"],
        &["GET", "p"],
        &["SELECT", "7"],
        &["GET", "p"],
    ] {
        bytes.extend(encode(c));
    }
    a.send(&bytes).await;
    let r = a.read_n(10).await;
    assert_eq!(
        r,
        vec![
            ok(),
            ok(),
            ok(),
            ok(),
            ok(),
            bulk("x0"),
            ok(),
            bulk("x1"),
            ok(),
            Frame::NullBulk
        ]
    );

    // Transactions and blocking commands run in the selected db too.
    assert_eq!(a.cmd(&["SELECT", "3"]).await, ok());
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        a.cmd(&["SET", "m", "in3"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![ok()]));
    assert_eq!(a.cmd(&["RPUSH", "q", "item"]).await, int(1));
    assert_eq!(a.cmd(&["BLPOP", "q", "1"]).await, bulks(&["q", "item"]));
    assert_eq!(direct.cmd(&["SELECT", "3"]).await, ok());
    assert_eq!(direct.cmd(&["GET", "m"]).await, bulk("in3"));
    assert_eq!(direct.cmd(&["SELECT", "0"]).await, ok());
    assert_eq!(direct.cmd(&["EXISTS", "m"]).await, int(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_db_from_the_upstream_url() {
    let redis = RedisServer::start();
    let sc = Statecar::start(
        redis.port(),
        "[upstream]\nurl = \"redis://127.0.0.1:{UPSTREAM_PORT}/3\"\n",
    );
    let mut a = RawConn::connect(sc.port()).await;
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(a.cmd(&["SET", "k3", "v"]).await, ok());
    assert_eq!(direct.cmd(&["EXISTS", "k3"]).await, int(0));
    assert_eq!(direct.cmd(&["SELECT", "3"]).await, ok());
    assert_eq!(direct.cmd(&["GET", "k3"]).await, bulk("v"));
    // Leased connections start in db 3 as well.
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["GET", "k3"]).await, Frame::Simple("QUEUED".into()));
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![bulk("v")]));
    // SELECT 0 really goes to db 0, and RESET goes back to the URL's db.
    assert_eq!(a.cmd(&["SELECT", "0"]).await, ok());
    assert_eq!(a.cmd(&["GET", "k3"]).await, Frame::NullBulk);
    assert_eq!(a.cmd(&["RESET"]).await, Frame::Simple("RESET".into()));
    assert_eq!(a.cmd(&["GET", "k3"]).await, bulk("v"));
}

/// With a single leased connection, whatever one client did on it (db, protocol, name,
/// subscriptions) must not leak into the next client that gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_connection_is_reset_before_the_next_client_gets_it() {
    let (redis, sc) = start_pair("[upstream]\nmax_leased_connections = 1\n");
    let mut direct = RawConn::connect(redis.port()).await;
    let mut a = RawConn::connect(sc.port()).await;
    let mut b = RawConn::connect(sc.port()).await;
    let queued = Frame::Simple("QUEUED".into());

    // A: db 5, RESP3, a transaction. B (db 0, RESP2) gets the same connection next.
    assert_eq!(a.cmd(&["SELECT", "5"]).await, ok());
    assert!(matches!(a.cmd(&["HELLO", "3"]).await, Frame::Map(_)));
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["SET", "lk", "a"]).await, queued);
    assert_eq!(a.cmd(&["HSET", "lh", "f", "v"]).await, queued);
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![ok(), int(1)]));

    assert_eq!(b.cmd(&["HSET", "lh", "g", "w"]).await, int(1));
    assert_eq!(b.cmd(&["MULTI"]).await, ok());
    assert_eq!(b.cmd(&["SET", "lk", "b"]).await, queued);
    assert_eq!(b.cmd(&["HGETALL", "lh"]).await, queued);
    assert_eq!(b.cmd(&["GET", "missing"]).await, queued);
    assert_eq!(
        b.cmd(&["EXEC"]).await,
        Frame::Array(vec![ok(), bulks(&["g", "w"]), Frame::NullBulk]),
        "B's transaction ran in RESP2 on db 0"
    );
    assert_eq!(direct.cmd(&["GET", "lk"]).await, bulk("b"));
    assert_eq!(direct.cmd(&["SELECT", "5"]).await, ok());
    assert_eq!(direct.cmd(&["GET", "lk"]).await, bulk("a"));
    assert_eq!(direct.cmd(&["SELECT", "0"]).await, ok());

    // A subscribes and leaves; B's next transaction must not see A's messages.
    let mut s = RawConn::connect(sc.port()).await;
    assert_eq!(
        s.cmd(&["SUBSCRIBE", "leak"]).await,
        Frame::Array(vec![bulk("subscribe"), bulk("leak"), int(1)])
    );
    assert_eq!(
        s.cmd(&["UNSUBSCRIBE"]).await,
        Frame::Array(vec![bulk("unsubscribe"), bulk("leak"), int(0)])
    );
    drop(s);
    // A half-finished transaction and a WATCH are left behind by a client that vanishes.
    let mut w = RawConn::connect(sc.port()).await;
    assert_eq!(w.cmd(&["WATCH", "lk"]).await, ok());
    assert_eq!(w.cmd(&["MULTI"]).await, ok());
    assert_eq!(w.cmd(&["SET", "lk", "vanished"]).await, queued);
    drop(w);

    assert_eq!(b.cmd(&["PUBLISH", "leak", "x"]).await, int(0));
    assert_eq!(b.cmd(&["SET", "lk", "changed"]).await, ok());
    assert_eq!(b.cmd(&["MULTI"]).await, ok());
    assert_eq!(b.cmd(&["GET", "lk"]).await, queued);
    assert_eq!(b.cmd(&["PING"]).await, queued);
    assert_eq!(
        b.cmd(&["EXEC"]).await,
        Frame::Array(vec![bulk("changed"), Frame::Simple("PONG".into())]),
        "no stale WATCH, MULTI or subscription from earlier clients"
    );
    assert_eq!(direct.cmd(&["GET", "lk"]).await, bulk("changed"));
    assert!(
        b.nothing_pending(Duration::from_millis(200)).await,
        "B received something it did not ask for"
    );
}

// ------------------------------------------------------------------------------------------
// 6. HELLO
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_switches_protocol_per_client() {
    let (redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut other = RawConn::connect(sc.port()).await;
    let mut direct = RawConn::connect(redis.port()).await;

    assert_eq!(a.cmd(&["HSET", "h", "f1", "v1", "f2", "v2"]).await, int(2));
    assert_eq!(a.cmd(&["SADD", "s", "m"]).await, int(1));
    assert_eq!(a.cmd(&["ZADD", "z", "1.5", "m"]).await, int(1));

    // HELLO with no version: the current (RESP2) protocol, as a flat array.
    let h = a.cmd(&["HELLO"]).await;
    assert!(matches!(h, Frame::Array(_)), "{h:?}");
    assert_eq!(h.get("proto"), Some(int(2)));

    let h = a.cmd(&["HELLO", "3"]).await;
    assert!(
        matches!(h, Frame::Map(_)),
        "HELLO 3 must answer a map: {h:?}"
    );
    assert_eq!(h.get("proto"), Some(int(3)));
    assert_eq!(h.get("server").map(|f| f.text()), Some("redis".into()));
    assert!(h.get("version").is_some() && h.get("id").is_some() && h.get("mode").is_some());

    assert!(matches!(direct.cmd(&["HELLO", "3"]).await, Frame::Map(_)));
    let hg = a.cmd(&["HGETALL", "h"]).await;
    assert_eq!(
        hg,
        Frame::Map(vec![(bulk("f1"), bulk("v1")), (bulk("f2"), bulk("v2"))])
    );
    assert_eq!(a.cmd(&["GET", "nokey"]).await, Frame::Null);
    assert_eq!(a.cmd(&["SMEMBERS", "s"]).await, Frame::Set(vec![bulk("m")]));
    assert_eq!(
        a.cmd(&["ZSCORE", "z", "m"]).await,
        Frame::Double("1.5".into())
    );
    for c in [
        &["HGETALL", "h"][..],
        &["HGETALL", "nokey"],
        &["GET", "nokey"],
        &["SMEMBERS", "s"],
        &["ZRANGE", "z", "0", "-1", "WITHSCORES"],
        &["EXISTS", "h"],
        &["CONFIG", "GET", "maxmemory"],
        &["LPOP", "nokey"],
        &["XRANGE", "nokey", "-", "+"],
    ] {
        same_as_redis(&mut a, &mut direct, c).await;
    }
    // Raw bytes too: a missing key is `_`.
    a.send_cmd(&["GET", "nokey"]).await;
    assert_eq!(a.read_raw().await, b"_\r\n");

    // Another client is unaffected.
    assert_eq!(other.cmd(&["GET", "nokey"]).await, Frame::NullBulk);
    assert_eq!(
        other.cmd(&["HGETALL", "h"]).await,
        bulks(&["f1", "v1", "f2", "v2"])
    );

    // Back to RESP2.
    let h = a.cmd(&["HELLO", "2"]).await;
    assert!(matches!(h, Frame::Array(_)), "{h:?}");
    assert_eq!(h.get("proto"), Some(int(2)));
    assert_eq!(direct.cmd(&["HELLO", "2"]).await.get("proto"), Some(int(2)));
    assert_eq!(
        a.cmd(&["HGETALL", "h"]).await,
        bulks(&["f1", "v1", "f2", "v2"])
    );
    a.send_cmd(&["GET", "nokey"]).await;
    assert_eq!(a.read_raw().await, b"$-1\r\n");
    same_as_redis(&mut a, &mut direct, &["ZSCORE", "z", "m"]).await;

    // Unsupported versions and junk: Redis's errors, and the protocol stays as it was.
    let e = same_as_redis(&mut a, &mut direct, &["HELLO", "4"]).await;
    assert!(
        e.error_text().is_some_and(|t| t.starts_with("NOPROTO")),
        "{e:?}"
    );
    same_as_redis(&mut a, &mut direct, &["HELLO", "1"]).await;
    same_as_redis(&mut a, &mut direct, &["HELLO", "x"]).await;
    assert_eq!(a.cmd(&["GET", "nokey"]).await, Frame::NullBulk);

    // HELLO SETNAME sets the client name.
    let h = a.cmd(&["HELLO", "3", "SETNAME", "helloname"]).await;
    assert!(matches!(h, Frame::Map(_)), "{h:?}");
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, bulk("helloname"));
    // HELLO AUTH with the default user when no password is configured works as in Redis.
    let h = a.cmd(&["HELLO", "2", "AUTH", "default", "anything"]).await;
    let d = direct
        .cmd(&["HELLO", "2", "AUTH", "default", "anything"])
        .await;
    assert_eq!(h.is_error(), d.is_error(), "proxy {h:?} vs redis {d:?}");
    assert_eq!(
        a.cmd(&["HGETALL", "h"]).await,
        bulks(&["f1", "v1", "f2", "v2"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_inside_a_pipeline_switches_exactly_there() {
    let (_redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut bytes = Vec::new();
    for c in [
        &["HSET", "h2", "f", "v"][..],
        &["HGETALL", "h2"],
        &["HELLO", "3"],
        &["HGETALL", "h2"],
        &["GET", "nokey"],
        &["HELLO", "2"],
        &["HGETALL", "h2"],
        &["GET", "nokey"],
    ] {
        bytes.extend(encode(c));
    }
    a.send(&bytes).await;
    let r = a.read_n(8).await;
    assert_eq!(r[0], int(1));
    assert_eq!(r[1], bulks(&["f", "v"]));
    assert!(matches!(r[2], Frame::Map(_)), "{:?}", r[2]);
    assert_eq!(r[3], Frame::Map(vec![(bulk("f"), bulk("v"))]));
    assert_eq!(r[4], Frame::Null);
    assert!(matches!(r[5], Frame::Array(_)), "{:?}", r[5]);
    assert_eq!(r[6], bulks(&["f", "v"]));
    assert_eq!(r[7], Frame::NullBulk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_resp3_client_works() {
    let (_redis, sc) = start_pair("");
    let mut con = client_url(&format!("redis://127.0.0.1:{}/?protocol=resp3", sc.port())).await;
    let _: () = redis::cmd("HSET")
        .arg("h")
        .arg("a")
        .arg("1")
        .arg("b")
        .arg("2")
        .query_async(&mut con)
        .await
        .unwrap();
    let m: HashMap<String, String> = redis::cmd("HGETALL")
        .arg("h")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(m.len(), 2);
    assert_eq!(m["a"], "1");
    assert_eq!(m["b"], "2");
    let raw: Value = redis::cmd("HGETALL")
        .arg("h")
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(
        matches!(raw, Value::Map(_)),
        "RESP3 map expected, got {raw:?}"
    );
    let missing: Value = redis::cmd("GET")
        .arg("nope")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(missing, Value::Nil);
}

// ------------------------------------------------------------------------------------------
// 7. AUTH
// ------------------------------------------------------------------------------------------

const AUTH_TOML: &str = r#"
[auth]
password = "pw"

[[auth.users]]
name = "alice"
password = "wonderland"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_gate_password_and_users() {
    let (redis, sc) = start_pair(AUTH_TOML);
    let noauth = err("NOAUTH Authentication required.");
    let mut a = RawConn::connect(sc.port()).await;
    assert_eq!(a.cmd(&["PING"]).await, noauth);
    assert_eq!(a.cmd(&["SET", "secret", "x"]).await, noauth);
    assert_eq!(a.cmd(&["MULTI"]).await, noauth);
    assert_eq!(a.cmd(&["SUBSCRIBE", "c"]).await, noauth);
    assert_eq!(a.cmd(&["BLPOP", "q", "1"]).await, noauth);
    assert_eq!(a.cmd(&["SELECT", "1"]).await, noauth);
    a.send(b"PING\r\n").await;
    assert_eq!(a.read().await, noauth, "inline commands are gated too");
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(
        direct.cmd(&["EXISTS", "secret"]).await,
        int(0),
        "nothing reached redis"
    );

    let wrong = a.cmd(&["AUTH", "nope"]).await;
    assert!(
        wrong
            .error_text()
            .is_some_and(|e| e.starts_with("WRONGPASS")),
        "{wrong:?}"
    );
    assert_eq!(a.cmd(&["PING"]).await, noauth);
    let wrong = a.cmd(&["AUTH", "alice", "pw"]).await;
    assert!(
        wrong
            .error_text()
            .is_some_and(|e| e.starts_with("WRONGPASS")),
        "{wrong:?}"
    );
    assert_eq!(a.cmd(&["AUTH", "pw"]).await, ok());
    assert_eq!(a.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    assert_eq!(a.cmd(&["SET", "secret", "x"]).await, ok());

    // Named users; the default user by name.
    let mut b = RawConn::connect(sc.port()).await;
    assert_eq!(b.cmd(&["AUTH", "alice", "wonderland"]).await, ok());
    assert_eq!(b.cmd(&["GET", "secret"]).await, bulk("x"));
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&["AUTH", "default", "pw"]).await, ok());
    assert_eq!(c.cmd(&["GET", "secret"]).await, bulk("x"));
    let mut c2 = RawConn::connect(sc.port()).await;
    let wrong = c2.cmd(&["AUTH", "bob", "wonderland"]).await;
    assert!(
        wrong
            .error_text()
            .is_some_and(|e| e.starts_with("WRONGPASS")),
        "{wrong:?}"
    );
    assert_eq!(c2.cmd(&["GET", "secret"]).await, noauth);

    // HELLO before AUTH is refused; HELLO 3 AUTH user pass authenticates and switches.
    let mut d = RawConn::connect(sc.port()).await;
    let e = d.cmd(&["HELLO", "3"]).await;
    assert!(
        e.error_text().is_some_and(|t| t.starts_with("NOAUTH")),
        "{e:?}"
    );
    let e = d.cmd(&["HELLO", "3", "AUTH", "alice", "bad"]).await;
    assert!(
        e.error_text().is_some_and(|t| t.starts_with("WRONGPASS")),
        "{e:?}"
    );
    assert_eq!(d.cmd(&["GET", "secret"]).await, noauth);
    let h = d.cmd(&["HELLO", "3", "AUTH", "alice", "wonderland"]).await;
    assert!(matches!(h, Frame::Map(_)), "{h:?}");
    assert_eq!(h.get("proto"), Some(int(3)));
    assert_eq!(d.cmd(&["GET", "nokey"]).await, Frame::Null);
    assert_eq!(d.cmd(&["GET", "secret"]).await, bulk("x"));

    // RESET logs the client out again, as in Redis with requirepass.
    assert_eq!(d.cmd(&["RESET"]).await, Frame::Simple("RESET".into()));
    assert_eq!(d.cmd(&["GET", "secret"]).await, noauth);

    // A real client with credentials in its URL.
    let mut rc = client_url(&format!("redis://:pw@127.0.0.1:{}/", sc.port())).await;
    let v: String = redis::cmd("GET")
        .arg("secret")
        .query_async(&mut rc)
        .await
        .unwrap();
    assert_eq!(v, "x");
    let mut rc = client_url(&format!(
        "redis://alice:wonderland@127.0.0.1:{}/",
        sc.port()
    ))
    .await;
    let v: String = redis::cmd("GET")
        .arg("secret")
        .query_async(&mut rc)
        .await
        .unwrap();
    assert_eq!(v, "x");
    let bad = redis::Client::open(format!("redis://alice:nope@127.0.0.1:{}/", sc.port()))
        .unwrap()
        .get_multiplexed_async_connection()
        .await;
    assert!(bad.is_err(), "a wrong password must not connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_without_a_configured_password_answers_like_redis() {
    let (redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut direct = RawConn::connect(redis.port()).await;
    let e = same_as_redis(&mut a, &mut direct, &["AUTH", "whatever"]).await;
    assert!(
        e.error_text().is_some_and(
            |t| t.starts_with("ERR AUTH <password> called without any password configured")
        ),
        "{e:?}"
    );
    same_as_redis(&mut a, &mut direct, &["AUTH"]).await;
    assert_eq!(a.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

/// An ACL user deleted (Redis closes statecar's connections opened as that user, and their
/// reconnects are refused) and created again: a client that authenticates as it again is served
/// at once, not answered with the refused reconnect's error (redis-py's credential tests do
/// exactly this between tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_created_again_is_served_at_once() {
    let (redis, sc) = start_pair("");
    let mut direct = RawConn::connect(redis.port()).await;
    let setuser = ["ACL", "SETUSER", "agent", "on", ">pw", "~*", "+@all"];
    assert_eq!(direct.cmd(&setuser).await, ok());
    let mut first = RawConn::connect(sc.port()).await;
    assert_eq!(first.cmd(&["AUTH", "agent", "pw"]).await, ok());
    assert_eq!(first.cmd(&["SET", "who", "agent"]).await, ok());
    for round in 0..20 {
        assert_eq!(direct.cmd(&["ACL", "DELUSER", "agent"]).await, int(1));
        assert_eq!(direct.cmd(&setuser).await, ok());
        let mut c = RawConn::connect(sc.port()).await;
        assert_eq!(c.cmd(&["AUTH", "agent", "pw"]).await, ok(), "round {round}");
        assert_eq!(c.cmd(&["GET", "who"]).await, bulk("agent"), "round {round}");
        assert_eq!(
            c.cmd(&["ACL", "WHOAMI"]).await,
            bulk("agent"),
            "round {round}"
        );
    }
    // Deleted for good: the identity's connections try again only when a command needs them,
    // not on a timer forever.
    assert_eq!(direct.cmd(&["ACL", "DELUSER", "agent"]).await, int(1));
    let connections = |f: Frame| -> u64 {
        let Frame::Bulk(b) = f else {
            panic!("INFO: {f:?}")
        };
        String::from_utf8_lossy(&b)
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no total_connections_received"))
    };
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let before = connections(direct.cmd(&["INFO", "stats"]).await);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let after = connections(direct.cmd(&["INFO", "stats"]).await);
    assert_eq!(
        after, before,
        "statecar kept reconnecting as a deleted user"
    );
}

// ------------------------------------------------------------------------------------------
// 8. binary safety and size
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_safe_values_and_keys() {
    let (redis, sc) = start_pair("");
    let mut con = client(sc.port()).await;
    let all: Vec<u8> = (0..=255u8).cycle().take(256 * 4).collect();
    let crlf = b"line1\r\nline2\r\n\r\n$5\r\nhello\r\n*1\r\n".to_vec();
    let empty: Vec<u8> = Vec::new();
    let bin_key: Vec<u8> = vec![0, 1, 2, b'\r', b'\n', 255, b' ', b'*'];
    for (k, v) in [
        (b"all".to_vec(), &all),
        (b"crlf".to_vec(), &crlf),
        (b"empty".to_vec(), &empty),
        (bin_key.clone(), &crlf),
    ] {
        let _: () = redis::cmd("SET")
            .arg(&k)
            .arg(v)
            .query_async(&mut con)
            .await
            .unwrap();
        let got: Vec<u8> = redis::cmd("GET")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(&got, v, "value of key {k:?} not byte-exact");
        let n: usize = redis::cmd("STRLEN")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(n, v.len());
    }
    // Raw bytes on the wire, and the value as Redis stores it.
    let mut raw = RawConn::connect(sc.port()).await;
    assert_eq!(raw.cmd(&[&b"GET"[..], b"empty"]).await, Frame::Bulk(vec![]));
    raw.send_cmd(&[&b"GET"[..], b"empty"]).await;
    assert_eq!(raw.read_raw().await, b"$0\r\n\r\n");
    assert_eq!(
        raw.cmd(&[&b"GET"[..], &bin_key]).await,
        Frame::Bulk(crlf.clone())
    );
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(
        direct.cmd(&[&b"GET"[..], b"all"]).await,
        Frame::Bulk(all.clone())
    );
    assert_eq!(
        direct.cmd(&[&b"GET"[..], &bin_key]).await,
        Frame::Bulk(crlf.clone())
    );
    // Binary hash fields and list elements.
    assert_eq!(raw.cmd(&[&b"HSET"[..], b"bh", &all, &crlf]).await, int(1));
    assert_eq!(
        raw.cmd(&[&b"HGET"[..], b"bh", &all]).await,
        Frame::Bulk(crlf.clone())
    );
    assert_eq!(raw.cmd(&[&b"RPUSH"[..], b"bl", &empty, &all]).await, int(2));
    assert_eq!(
        raw.cmd(&[&b"LRANGE"[..], b"bl", b"0", b"-1"]).await,
        Frame::Array(vec![Frame::Bulk(vec![]), Frame::Bulk(all.clone())])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_megabyte_values_round_trip_byte_exact() {
    let (redis, sc) = start_pair("");
    let port = sc.port();
    let mut tasks = Vec::new();
    // Three clients move 8 MB values at once while a fourth runs small commands.
    for c in 0..3u64 {
        tasks.push(tokio::spawn(async move {
            let big = pseudo_random_bytes(c + 1, 8 * 1024 * 1024);
            let mut con = RawConn::connect(port).await;
            let key = format!("big{c}");
            // Pipelined with small commands on both sides.
            let mut bytes = encode(&["SET", "small", "s"]);
            bytes.extend(encode(
                &[key.as_bytes(), b"".as_slice()][..0]
                    .iter()
                    .collect::<Vec<_>>(),
            ));
            bytes.extend(encode(&[b"SET".as_slice(), key.as_bytes(), &big]));
            bytes.extend(encode(&["STRLEN", &key]));
            bytes.extend(encode(&["GET", &key]));
            bytes.extend(encode(&["PING"]));
            con.send(&bytes).await;
            assert_eq!(con.read().await, ok());
            assert_eq!(con.read().await, ok(), "SET of 8 MB");
            assert_eq!(con.read().await, int(big.len() as i64));
            match con.read().await {
                Frame::Bulk(got) => {
                    assert_eq!(got.len(), big.len(), "client {c}: 8 MB value length");
                    assert!(got == big, "client {c}: 8 MB value not byte-exact");
                }
                other => panic!("GET of 8 MB: {:?}", std::mem::discriminant(&other)),
            }
            assert_eq!(con.read().await, Frame::Simple("PONG".into()));
            // The same through redis-rs.
            let mut rc = client(port).await;
            let got: Vec<u8> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut rc)
                .await
                .unwrap();
            assert!(
                got == big,
                "client {c}: 8 MB value via redis-rs not byte-exact"
            );
        }));
    }
    tasks.push(tokio::spawn(async move {
        let mut con = RawConn::connect(port).await;
        for i in 0..300 {
            let v = format!("small-{i}");
            assert_eq!(con.cmd(&["SET", "smallkey", &v]).await, ok());
            assert_eq!(con.cmd(&["GET", "smallkey"]).await, bulk(&v));
        }
    }));
    for t in tasks {
        within("8 MB clients", t).await.unwrap();
    }
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(direct.cmd(&["STRLEN", "big2"]).await, int(8 * 1024 * 1024));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mset_mget_of_a_thousand_keys() {
    let (_redis, sc) = start_pair("");
    let mut con = client(sc.port()).await;
    let mut m = redis::cmd("MSET");
    for i in 0..1000 {
        m.arg(format!("mk:{i}"))
            .arg(format!("value-{i}-{}", "z".repeat(i % 17)));
    }
    let _: () = m.query_async(&mut con).await.unwrap();
    let mut g = redis::cmd("MGET");
    for i in 0..1000 {
        g.arg(format!("mk:{i}"));
    }
    g.arg("mk:missing");
    let got: Vec<Option<String>> = g.query_async(&mut con).await.unwrap();
    assert_eq!(got.len(), 1001);
    for (i, v) in got.iter().take(1000).enumerate() {
        assert_eq!(
            v.as_deref(),
            Some(format!("value-{i}-{}", "z".repeat(i % 17)).as_str())
        );
    }
    assert_eq!(got[1000], None);
    let n: i64 = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(n, 1000);
}

// ------------------------------------------------------------------------------------------
// 9. errors pass through
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_pass_through_unchanged() {
    let (redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(a.cmd(&["LPUSH", "list", "x"]).await, int(1));
    assert_eq!(a.cmd(&["SET", "str", "abc"]).await, ok());
    let cases: &[&[&str]] = &[
        &["GET", "list"],
        &["FOOBAR", "x", "y"],
        &["GET"],
        &["SET", "k"],
        &["INCR", "str"],
        &["LPUSH", "str", "x"],
        &["HSET", "h", "f"],
        &["EXPIRE", "str", "notanumber"],
        &["ZADD", "z", "x", "m"],
        &["XADD", "s", "bad-id", "f", "v"],
        &["EVAL", "return redis.call('nosuch')", "0"],
        &["CONFIG", "GET"],
        &["OBJECT", "ENCODING"],
    ];
    for c in cases {
        let f = same_as_redis(&mut a, &mut direct, c).await;
        assert!(f.is_error(), "{c:?} should be an error: {f:?}");
    }
    let wrongtype = a.cmd(&["GET", "list"]).await;
    assert_eq!(
        wrongtype,
        err("WRONGTYPE Operation against a key holding the wrong kind of value")
    );
    // Errors inside a pipeline do not disturb the replies around them.
    let mut bytes = Vec::new();
    for c in [
        &["SET", "pe", "1"][..],
        &["INCR", "list"],
        &["INCR", "pe"],
        &["NOSUCH"],
        &["GET", "pe"],
    ] {
        bytes.extend(encode(c));
    }
    a.send(&bytes).await;
    let r = a.read_n(5).await;
    assert_eq!(r[0], ok());
    assert!(
        r[1].error_text()
            .is_some_and(|e| e.starts_with("WRONGTYPE")),
        "{:?}",
        r[1]
    );
    assert_eq!(r[2], int(2));
    assert!(
        r[3].error_text()
            .is_some_and(|e| e.starts_with("ERR unknown command")),
        "{:?}",
        r[3]
    );
    assert_eq!(r[4], bulk("2"));
    assert_eq!(a.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    // redis-rs sees them as server errors, and its connection keeps working.
    let mut con = client(sc.port()).await;
    let e = redis::cmd("GET")
        .arg("list")
        .query_async::<Value>(&mut con)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("WRONGTYPE"), "{e}");
    let v: String = redis::cmd("GET")
        .arg("str")
        .query_async(&mut con)
        .await
        .unwrap();
    assert_eq!(v, "abc");
}

// ------------------------------------------------------------------------------------------
// 10. CLIENT SETNAME/GETNAME, CLIENT REPLY, QUIT, RESET
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_names_are_per_client() {
    let (redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut b = RawConn::connect(sc.port()).await;
    let mut c = RawConn::connect(sc.port()).await;
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "alice"]).await, ok());
    assert_eq!(b.cmd(&["CLIENT", "SETNAME", "bob"]).await, ok());
    // Interleave traffic so that all three share upstream connections.
    for i in 0..20 {
        assert_eq!(a.cmd(&["SET", &format!("n{i}"), "a"]).await, ok());
        assert_eq!(b.cmd(&["GET", &format!("n{i}")]).await, bulk("a"));
    }
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, bulk("alice"));
    assert_eq!(b.cmd(&["CLIENT", "GETNAME"]).await, bulk("bob"));
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]).await, Frame::NullBulk);
    // A name survives a transaction (on another upstream connection) and can be cleared.
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(a.cmd(&["EXEC"]).await, Frame::Array(vec![]));
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, bulk("alice"));
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", ""]).await, ok());
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, Frame::NullBulk);
    // Invalid names: Redis's error.
    same_as_redis(&mut c, &mut direct, &["CLIENT", "SETNAME", "has space"]).await;
    same_as_redis(&mut c, &mut direct, &["CLIENT", "SETNAME", "new\nline"]).await;
    assert_eq!(c.cmd(&["CLIENT", "GETNAME"]).await, Frame::NullBulk);
}

/// A client's own CLIENT INFO / CLIENT LIST line shows `qbuf` and `omem` as Redis shows them
/// to a direct client: the command being run counts in the query buffer (26 bytes for
/// `CLIENT INFO`), and the output fits the fixed reply buffer, which `omem` leaves out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_client_line_shows_qbuf_and_omem_as_redis_does() {
    let (redis, sc) = start_pair("");
    let mut direct = RawConn::connect(redis.port()).await;
    let mut a = RawConn::connect(sc.port()).await;
    for (conn, who) in [(&mut direct, "direct"), (&mut a, "statecar")] {
        for sub in ["INFO", "LIST"] {
            let r = conn.cmd(&["CLIENT", sub]).await;
            let text = match &r {
                Frame::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
                other => panic!("{who} CLIENT {sub}: {other:?}"),
            };
            // CLIENT LIST: the caller's own line is the one running CLIENT|LIST.
            let own = text
                .lines()
                .find(|l| l.contains(&format!("cmd=client|{}", sub.to_lowercase())))
                .unwrap_or_else(|| panic!("{who} CLIENT {sub}: {text}"));
            assert!(own.contains(" qbuf=26 "), "{who} CLIENT {sub}: {own}");
            assert!(own.contains(" omem=0 "), "{who} CLIENT {sub}: {own}");
        }
    }
}

/// INFO's `connected_clients` counts statecar's clients, as Redis counts its own (the test
/// suite's CLIENT KILL tests rely on it), in RESP2 and RESP3 and inside MULTI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_counts_statecars_clients() {
    let (_redis, sc) = start_pair("");
    let mut conns = Vec::new();
    for _ in 0..5 {
        let mut c = RawConn::connect(sc.port()).await;
        assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
        conns.push(c);
    }
    let field = |f: &Frame| -> String {
        let text = match f {
            Frame::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Frame::Verbatim(_, b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("INFO: {other:?}"),
        };
        text.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .unwrap_or_else(|| panic!("no connected_clients in {text}"))
            .to_string()
    };
    let r = conns[0].cmd(&["INFO", "clients"]).await;
    assert_eq!(field(&r), "5");
    let _ = conns[1].cmd(&["HELLO", "3"]).await;
    let r = conns[1].cmd(&["INFO"]).await;
    assert_eq!(field(&r), "5", "RESP3");
    drop(conns.pop());
    // Redis's count inside a transaction is the transaction's connection's own view; what
    // matters is that the reply sits in EXEC's array.
    assert_eq!(conns[0].cmd(&["MULTI"]).await, ok());
    assert_eq!(
        conns[0].cmd(&["INFO", "clients"]).await,
        Frame::Simple("QUEUED".into())
    );
    let r = conns[0].cmd(&["EXEC"]).await;
    assert!(matches!(&r, Frame::Array(v) if v.len() == 1), "{r:?}");
    let mut n = String::new();
    for _ in 0..100 {
        n = field(&conns[0].cmd(&["INFO", "clients"]).await);
        if n == "4" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(n, "4", "a client that left is no longer counted");
}

/// Sends the same byte stream to the proxy and to Redis and collects replies up to the final
/// PING's PONG: CLIENT REPLY must drop exactly the replies Redis drops.
async fn replies_until_pong(conn: &mut RawConn, script: &[&[&str]]) -> Vec<Frame> {
    let mut bytes = Vec::new();
    for c in script {
        bytes.extend(encode(c));
    }
    bytes.extend(encode(&["PING", "sentinel"]));
    conn.send(&bytes).await;
    let mut out = Vec::new();
    loop {
        let f = conn.read().await;
        if f == bulk("sentinel") {
            return out;
        }
        out.push(f);
        assert!(out.len() < 100, "runaway replies: {out:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_on_skip_like_redis() {
    let (redis, sc) = start_pair("");
    let script = |k: &'static str| -> Vec<Vec<&'static str>> {
        vec![
            vec!["CLIENT", "REPLY", "OFF"],
            vec!["SET", k, "1"],
            vec!["INCR", k],
            vec!["GET", k],
            vec!["NOSUCHCOMMAND"],
            vec!["CLIENT", "REPLY", "ON"],
            vec!["GET", k],
            vec!["CLIENT", "REPLY", "SKIP"],
            vec!["SET", k, "5"],
            vec!["GET", k],
            vec!["CLIENT", "REPLY", "SKIP"],
            vec!["CLIENT", "REPLY", "SKIP"],
            vec!["INCR", k],
            vec!["GET", k],
            vec!["CLIENT", "REPLY", "OFF"],
            vec!["MULTI"],
            vec!["INCR", k],
            vec!["EXEC"],
            vec!["CLIENT", "REPLY", "ON"],
            vec!["GET", k],
        ]
    };
    let as_refs = |v: &Vec<Vec<&'static str>>| -> Vec<Vec<&'static str>> { v.clone() };
    let ps = as_refs(&script("rp"));
    let ds = as_refs(&script("rd"));
    let ps: Vec<&[&str]> = ps.iter().map(|v| v.as_slice()).collect();
    let ds: Vec<&[&str]> = ds.iter().map(|v| v.as_slice()).collect();
    let mut a = RawConn::connect(sc.port()).await;
    let mut direct = RawConn::connect(redis.port()).await;
    let got = replies_until_pong(&mut a, &ps).await;
    let want = replies_until_pong(&mut direct, &ds).await;
    assert_eq!(
        got, want,
        "CLIENT REPLY through statecar differs from Redis"
    );
    assert_eq!(
        got,
        vec![ok(), bulk("2"), bulk("5"), bulk("6"), ok(), bulk("7")],
        "exactly these replies are sent"
    );
    assert_eq!(a.cmd(&["GET", "rp"]).await, bulk("7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_replies_ok_and_closes_without_running_what_follows() {
    let (redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    assert_eq!(a.cmd(&["SET", "beforequit", "1"]).await, ok());
    let mut bytes = encode(&["SET", "pipelined", "1"]);
    bytes.extend(encode(&["QUIT"]));
    bytes.extend(encode(&["SET", "afterquit", "1"]));
    a.send(&bytes).await;
    assert_eq!(a.read().await, ok());
    assert_eq!(a.read().await, ok(), "QUIT answers +OK");
    a.expect_closed().await;
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(direct.cmd(&["GET", "pipelined"]).await, bulk("1"));
    assert_eq!(direct.cmd(&["EXISTS", "afterquit"]).await, int(0));
    // QUIT inside a transaction and while subscribed also closes.
    let mut b = RawConn::connect(sc.port()).await;
    assert_eq!(b.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        b.cmd(&["SET", "inmulti", "1"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(b.cmd(&["QUIT"]).await, ok());
    b.expect_closed().await;
    assert_eq!(direct.cmd(&["EXISTS", "inmulti"]).await, int(0));
    let mut s = RawConn::connect(sc.port()).await;
    assert_eq!(
        s.cmd(&["SUBSCRIBE", "q"]).await,
        Frame::Array(vec![bulk("subscribe"), bulk("q"), int(1)])
    );
    assert_eq!(s.cmd(&["QUIT"]).await, ok());
    s.expect_closed().await;
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_restores_db_protocol_name_and_transaction_state() {
    let (redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut direct = RawConn::connect(redis.port()).await;
    assert_eq!(a.cmd(&["SELECT", "3"]).await, ok());
    assert_eq!(a.cmd(&["HSET", "rh", "f", "v"]).await, int(1));
    assert!(matches!(a.cmd(&["HELLO", "3"]).await, Frame::Map(_)));
    assert_eq!(a.cmd(&["CLIENT", "SETNAME", "nm"]).await, ok());
    assert_eq!(a.cmd(&["WATCH", "rh"]).await, ok());
    assert_eq!(a.cmd(&["MULTI"]).await, ok());
    assert_eq!(
        a.cmd(&["SET", "rx", "y"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(a.cmd(&["RESET"]).await, Frame::Simple("RESET".into()));
    // db 0, RESP2, no name, no transaction.
    assert_eq!(a.cmd(&["HGETALL", "rh"]).await, Frame::Array(vec![]));
    assert_eq!(a.cmd(&["GET", "nokey"]).await, Frame::NullBulk);
    assert_eq!(a.cmd(&["CLIENT", "GETNAME"]).await, Frame::NullBulk);
    same_as_redis(&mut a, &mut direct, &["EXEC"]).await;
    assert_eq!(direct.cmd(&["SELECT", "3"]).await, ok());
    assert_eq!(
        direct.cmd(&["EXISTS", "rx"]).await,
        int(0),
        "RESET discarded the transaction"
    );
    assert_eq!(direct.cmd(&["SELECT", "0"]).await, ok());
    assert_eq!(a.cmd(&["SET", "r0", "zero"]).await, ok());
    assert_eq!(direct.cmd(&["GET", "r0"]).await, bulk("zero"));

    // RESET leaves subscribed mode.
    let mut s = RawConn::connect(sc.port()).await;
    let mut p = RawConn::connect(sc.port()).await;
    assert_eq!(
        s.cmd(&["SUBSCRIBE", "rc"]).await,
        Frame::Array(vec![bulk("subscribe"), bulk("rc"), int(1)])
    );
    assert_eq!(s.cmd(&["RESET"]).await, Frame::Simple("RESET".into()));
    let _ = p.cmd(&["PUBLISH", "rc", "after-reset"]).await;
    assert_eq!(
        s.cmd(&["PING"]).await,
        Frame::Simple("PONG".into()),
        "no message after RESET"
    );
    assert_eq!(s.cmd(&["GET", "r0"]).await, bulk("zero"));
}
