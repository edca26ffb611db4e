//! Pub/sub (RESP2 and RESP3 pushes) and blocking commands through statecar.

mod common;

use common::*;

fn msg(kind: &str, parts: &[&str]) -> Frame {
    let mut v = vec![bulk(kind)];
    v.extend(parts.iter().map(bulk));
    Frame::Array(v)
}

fn sub_reply(kind: &str, name: &str, n: i64) -> Frame {
    Frame::Array(vec![bulk(kind), bulk(name), int(n)])
}

// ------------------------------------------------------------------------------------------
// 3. pub/sub
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_resp2_subscribe_publish_unsubscribe() {
    let (redis, sc) = start_pair("");
    let mut s = RawConn::connect(sc.port()).await;
    let mut p = RawConn::connect(sc.port()).await;

    s.send_cmd(&["SUBSCRIBE", "ch1", "ch2"]).await;
    assert_eq!(s.read().await, sub_reply("subscribe", "ch1", 1));
    assert_eq!(s.read().await, sub_reply("subscribe", "ch2", 2));
    assert_eq!(
        s.cmd(&["PSUBSCRIBE", "news.*"]).await,
        sub_reply("psubscribe", "news.*", 3)
    );

    assert_eq!(p.cmd(&["PUBLISH", "ch1", "hello"]).await, int(1));
    assert_eq!(p.cmd(&["PUBLISH", "news.sport", "goal"]).await, int(1));
    assert_eq!(p.cmd(&["PUBLISH", "elsewhere", "x"]).await, int(0));
    assert_eq!(s.read().await, msg("message", &["ch1", "hello"]));
    assert_eq!(
        s.read().await,
        msg("pmessage", &["news.*", "news.sport", "goal"])
    );

    // Many messages arrive complete and in order, binary-safe.
    let mut bytes = Vec::new();
    for i in 0..200 {
        bytes.extend(encode(&[
            "PUBLISH",
            "ch2",
            &format!("m{i}\r\n{}", "p".repeat(i)),
        ]));
    }
    p.send(&bytes).await;
    for _ in 0..200 {
        assert_eq!(p.read().await, int(1));
    }
    for i in 0..200 {
        assert_eq!(
            s.read().await,
            msg("message", &["ch2", &format!("m{i}\r\n{}", "p".repeat(i))])
        );
    }

    // PING and forbidden commands in subscribed mode, exactly as Redis answers them.
    let mut d = RawConn::connect(redis.port()).await;
    assert_eq!(
        d.cmd(&["SUBSCRIBE", "direct"]).await,
        sub_reply("subscribe", "direct", 1)
    );
    for c in [
        &["PING"][..],
        &["PING", "hi"],
        &["GET", "k"],
        &["SET", "k", "v"],
        &["MULTI"],
    ] {
        let got = s.cmd(c).await;
        let want = d.cmd(c).await;
        assert_eq!(got, want, "{c:?} in subscribed mode");
    }
    assert_eq!(
        s.cmd(&["PING"]).await,
        Frame::Array(vec![bulk("pong"), bulk("")])
    );
    let e = s.cmd(&["GET", "k"]).await;
    assert!(
        e.error_text()
            .is_some_and(|t| t.contains("Can't execute 'get'")),
        "{e:?}"
    );

    // UNSUBSCRIBE one channel: no more messages from it, the others still arrive.
    assert_eq!(
        s.cmd(&["UNSUBSCRIBE", "ch1"]).await,
        sub_reply("unsubscribe", "ch1", 2)
    );
    assert_eq!(p.cmd(&["PUBLISH", "ch1", "gone"]).await, int(0));
    assert_eq!(p.cmd(&["PUBLISH", "ch2", "still"]).await, int(1));
    assert_eq!(s.read().await, msg("message", &["ch2", "still"]));

    // Unsubscribe from everything: normal commands work again on the same connection.
    assert_eq!(
        s.cmd(&["UNSUBSCRIBE"]).await,
        sub_reply("unsubscribe", "ch2", 1)
    );
    assert_eq!(
        s.cmd(&["PUNSUBSCRIBE"]).await,
        sub_reply("punsubscribe", "news.*", 0)
    );
    assert_eq!(p.cmd(&["PUBLISH", "ch2", "nobody"]).await, int(0));
    assert_eq!(s.cmd(&["SET", "after", "sub"]).await, ok());
    assert_eq!(s.cmd(&["GET", "after"]).await, bulk("sub"));
    assert_eq!(s.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    assert_eq!(s.cmd(&["MULTI"]).await, ok());
    assert_eq!(s.cmd(&["EXEC"]).await, Frame::Array(vec![]));

    // And it can subscribe again.
    assert_eq!(
        s.cmd(&["SUBSCRIBE", "again"]).await,
        sub_reply("subscribe", "again", 1)
    );
    assert_eq!(p.cmd(&["PUBLISH", "again", "yes"]).await, int(1));
    assert_eq!(s.read().await, msg("message", &["again", "yes"]));
    // Unsubscribing from something never subscribed, as Redis does.
    let got = s.cmd(&["UNSUBSCRIBE", "never"]).await;
    let want = d.cmd(&["UNSUBSCRIBE", "never"]).await;
    assert_eq!(got, sub_reply("unsubscribe", "never", 1));
    assert_eq!(want, sub_reply("unsubscribe", "never", 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_unsubscribe_without_subscriptions_answers_like_redis() {
    let (redis, sc) = start_pair("");
    let mut s = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    for c in [
        &["UNSUBSCRIBE"][..],
        &["PUNSUBSCRIBE"],
        &["UNSUBSCRIBE", "a", "b"],
    ] {
        let mut bytes = encode(c);
        bytes.extend(encode(&["PING", "end"]));
        s.send(&bytes).await;
        d.send(&bytes).await;
        loop {
            let got = s.read().await;
            let want = d.read().await;
            assert_eq!(got, want, "{c:?}");
            if got == bulk("end") {
                break;
            }
        }
    }
    assert_eq!(s.cmd(&["GET", "x"]).await, Frame::NullBulk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_resp3_messages_are_pushes_and_commands_still_work() {
    let (_redis, sc) = start_pair("");
    let mut s = RawConn::connect(sc.port()).await;
    let mut p = RawConn::connect(sc.port()).await;
    let h = s.cmd(&["HELLO", "3"]).await;
    assert!(matches!(h, Frame::Map(_)), "{h:?}");
    assert_eq!(
        s.cmd(&["SUBSCRIBE", "ch"]).await,
        Frame::Push(vec![bulk("subscribe"), bulk("ch"), int(1)])
    );
    assert_eq!(
        s.cmd(&["PSUBSCRIBE", "p.*"]).await,
        Frame::Push(vec![bulk("psubscribe"), bulk("p.*"), int(2)])
    );
    assert_eq!(p.cmd(&["PUBLISH", "ch", "m1"]).await, int(1));
    assert_eq!(
        s.read().await,
        Frame::Push(vec![bulk("message"), bulk("ch"), bulk("m1")])
    );
    assert_eq!(p.cmd(&["PUBLISH", "p.x", "m2"]).await, int(1));
    assert_eq!(
        s.read().await,
        Frame::Push(vec![bulk("pmessage"), bulk("p.*"), bulk("p.x"), bulk("m2")])
    );

    // Normal commands get normal RESP3 replies on the same connection, with pushes mixed in.
    assert_eq!(p.cmd(&["HSET", "h", "f", "v"]).await, int(1));
    let mut pushes = Vec::new();
    let mut replies = Vec::new();
    for i in 0..50 {
        assert_eq!(p.cmd(&["PUBLISH", "ch", &format!("n{i}")]).await, int(1));
        let mut bytes = encode(&["SET", "k", &format!("v{i}")]);
        bytes.extend(encode(&["GET", "k"]));
        bytes.extend(encode(&["HGETALL", "h"]));
        bytes.extend(encode(&["GET", "missing"]));
        bytes.extend(encode(&["PING"]));
        s.send(&bytes).await;
        let mut got = Vec::new();
        while got.len() < 5 {
            match s.read().await {
                Frame::Push(v) => pushes.push(v),
                f => got.push(f),
            }
        }
        assert_eq!(
            got,
            vec![
                ok(),
                bulk(format!("v{i}")),
                Frame::Map(vec![(bulk("f"), bulk("v"))]),
                Frame::Null,
                Frame::Simple("PONG".into()),
            ],
            "round {i}"
        );
        replies.push(got);
    }
    // Every message arrived, in order (the last ones may still be on their way).
    while pushes.len() < 50 {
        match s.read().await {
            Frame::Push(v) => pushes.push(v),
            other => panic!("unexpected reply {other:?}"),
        }
    }
    for (i, v) in pushes.iter().enumerate() {
        assert_eq!(v, &vec![bulk("message"), bulk("ch"), bulk(format!("n{i}"))]);
    }
    assert_eq!(
        s.cmd(&["UNSUBSCRIBE", "ch"]).await,
        Frame::Push(vec![bulk("unsubscribe"), bulk("ch"), int(1)])
    );
    assert_eq!(p.cmd(&["PUBLISH", "ch", "late"]).await, int(0));
    assert_eq!(s.cmd(&["GET", "k"]).await, bulk("v49"));
    // Back to RESP2 after leaving subscribed mode.
    assert_eq!(
        s.cmd(&["PUNSUBSCRIBE"]).await,
        Frame::Push(vec![bulk("punsubscribe"), bulk("p.*"), int(0)])
    );
    assert!(matches!(s.cmd(&["HELLO", "2"]).await, Frame::Array(_)));
    assert_eq!(s.cmd(&["HGETALL", "h"]).await, bulks(&["f", "v"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_each_get_every_message() {
    let (_redis, sc) = start_pair("");
    let mut subs = Vec::new();
    for i in 0..20 {
        let mut s = RawConn::connect(sc.port()).await;
        assert_eq!(
            s.cmd(&["SUBSCRIBE", "fan"]).await,
            sub_reply("subscribe", "fan", 1)
        );
        if i % 2 == 0 {
            assert_eq!(
                s.cmd(&["SUBSCRIBE", &format!("own{i}")]).await,
                sub_reply("subscribe", &format!("own{i}"), 2)
            );
        }
        subs.push(s);
    }
    let mut p = RawConn::connect(sc.port()).await;
    for m in 0..20 {
        assert_eq!(p.cmd(&["PUBLISH", "fan", &format!("f{m}")]).await, int(20));
    }
    for i in (0..20).step_by(2) {
        assert_eq!(
            p.cmd(&["PUBLISH", &format!("own{i}"), "private"]).await,
            int(1)
        );
    }
    for (i, s) in subs.iter_mut().enumerate() {
        for m in 0..20 {
            assert_eq!(
                s.read().await,
                msg("message", &["fan", &format!("f{m}")]),
                "subscriber {i}"
            );
        }
        if i % 2 == 0 {
            assert_eq!(
                s.read().await,
                msg("message", &[&format!("own{i}"), "private"])
            );
        }
        assert_eq!(
            s.cmd(&["PING"]).await,
            Frame::Array(vec![bulk("pong"), bulk("")])
        );
    }
}

// ------------------------------------------------------------------------------------------
// 4. blocking commands
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_are_woken_by_other_clients() {
    let (redis, sc) = start_pair("");
    let mut direct = RawConn::connect(redis.port()).await;
    let mut a = RawConn::connect(sc.port()).await;
    let mut b = RawConn::connect(sc.port()).await;

    // BLPOP
    a.send_cmd(&["BLPOP", "bq", "0"]).await;
    wait_blocked(&mut direct, 1).await;
    assert_eq!(b.cmd(&["RPUSH", "bq", "x"]).await, int(1));
    assert_eq!(a.read().await, bulks(&["bq", "x"]));

    // BRPOP over several keys
    a.send_cmd(&["BRPOP", "bq1", "bq2", "0"]).await;
    wait_blocked(&mut direct, 1).await;
    assert_eq!(b.cmd(&["RPUSH", "bq2", "y", "z"]).await, int(2));
    assert_eq!(a.read().await, bulks(&["bq2", "z"]));

    // BRPOPLPUSH
    a.send_cmd(&["BRPOPLPUSH", "src", "dst", "0"]).await;
    wait_blocked(&mut direct, 1).await;
    assert_eq!(b.cmd(&["RPUSH", "src", "v1"]).await, int(1));
    assert_eq!(a.read().await, bulk("v1"));
    assert_eq!(b.cmd(&["LRANGE", "dst", "0", "-1"]).await, bulks(&["v1"]));

    // BLMOVE
    a.send_cmd(&["BLMOVE", "src", "dst", "LEFT", "RIGHT", "0"])
        .await;
    wait_blocked(&mut direct, 1).await;
    assert_eq!(b.cmd(&["RPUSH", "src", "v2"]).await, int(1));
    assert_eq!(a.read().await, bulk("v2"));
    assert_eq!(
        b.cmd(&["LRANGE", "dst", "0", "-1"]).await,
        bulks(&["v1", "v2"])
    );

    // BLMPOP
    a.send_cmd(&["BLMPOP", "0", "2", "m1", "m2", "LEFT", "COUNT", "2"])
        .await;
    wait_blocked(&mut direct, 1).await;
    assert_eq!(b.cmd(&["RPUSH", "m2", "a", "b", "c"]).await, int(3));
    assert_eq!(
        a.read().await,
        Frame::Array(vec![bulk("m2"), bulks(&["a", "b"])])
    );

    // BZPOPMIN
    a.send_cmd(&["BZPOPMIN", "zq", "0"]).await;
    wait_blocked(&mut direct, 1).await;
    assert_eq!(b.cmd(&["ZADD", "zq", "2", "two", "1", "one"]).await, int(2));
    assert_eq!(a.read().await, bulks(&["zq", "one", "1"]));

    // XREAD BLOCK woken by XADD
    a.send_cmd(&["XREAD", "BLOCK", "0", "STREAMS", "st", "$"])
        .await;
    wait_blocked(&mut direct, 1).await;
    let id = b.cmd(&["XADD", "st", "*", "field", "value"]).await.text();
    assert_eq!(
        a.read().await,
        Frame::Array(vec![Frame::Array(vec![
            bulk("st"),
            Frame::Array(vec![Frame::Array(vec![
                bulk(&id),
                bulks(&["field", "value"])
            ])]),
        ])])
    );

    // XREADGROUP BLOCK
    assert_eq!(b.cmd(&["XGROUP", "CREATE", "st", "g", "$"]).await, ok());
    a.send_cmd(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c1",
        "BLOCK",
        "0",
        "STREAMS",
        "st",
        ">",
    ])
    .await;
    wait_blocked(&mut direct, 1).await;
    let id2 = b.cmd(&["XADD", "st", "*", "f2", "v2"]).await.text();
    assert_eq!(
        a.read().await,
        Frame::Array(vec![Frame::Array(vec![
            bulk("st"),
            Frame::Array(vec![Frame::Array(vec![bulk(&id2), bulks(&["f2", "v2"])])]),
        ])])
    );

    // A blocking command in the middle of a pipeline keeps the pipeline's order.
    let mut bytes = encode(&["SET", "pa", "1"]);
    bytes.extend(encode(&["BLPOP", "pq", "0"]));
    bytes.extend(encode(&["INCR", "pa"]));
    bytes.extend(encode(&["GET", "pa"]));
    a.send(&bytes).await;
    assert_eq!(a.read().await, ok());
    wait_blocked(&mut direct, 1).await;
    assert_eq!(
        b.cmd(&["GET", "pa"]).await,
        bulk("1"),
        "INCR must wait behind BLPOP"
    );
    assert_eq!(b.cmd(&["LPUSH", "pq", "w"]).await, int(1));
    assert_eq!(a.read().await, bulks(&["pq", "w"]));
    assert_eq!(a.read().await, int(2));
    assert_eq!(a.read().await, bulk("2"));

    // WAIT with no replicas answers at once.
    assert_eq!(a.cmd(&["WAIT", "0", "0"]).await, int(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_timeouts_return_nil_like_redis() {
    let (redis, sc) = start_pair("");
    let mut a = RawConn::connect(sc.port()).await;
    let mut d = RawConn::connect(redis.port()).await;
    for c in [
        &["BLPOP", "empty", "0.1"][..],
        &["BRPOP", "empty", "0.1"],
        &["BLMOVE", "empty", "dst", "LEFT", "LEFT", "0.1"],
        &["BZPOPMIN", "empty", "0.1"],
        &["XREAD", "BLOCK", "100", "STREAMS", "emptys", "$"],
    ] {
        a.send_cmd(c).await;
        d.send_cmd(c).await;
        let got = a.read_raw().await;
        let want = d.read_raw().await;
        assert_eq!(
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want),
            "{c:?} timing out"
        );
    }
    a.send_cmd(&["BLPOP", "empty", "0.1"]).await;
    assert_eq!(a.read_raw().await, b"*-1\r\n");
    // RESP3: a null.
    assert!(matches!(a.cmd(&["HELLO", "3"]).await, Frame::Map(_)));
    assert_eq!(a.cmd(&["BLPOP", "empty", "0.1"]).await, Frame::Null);
    // Errors from blocking commands pass through.
    assert_eq!(a.cmd(&["SET", "str", "x"]).await, ok());
    assert!(matches!(d.cmd(&["HELLO", "3"]).await, Frame::Map(_)));
    for c in [
        &["BLPOP", "str", "0"][..],
        &["BLPOP", "k", "notanumber"],
        &["BLPOP", "k"],
    ] {
        let got = a.cmd(c).await;
        let want = d.cmd(c).await;
        assert!(got.is_error(), "{c:?}: {got:?}");
        assert_eq!(got, want, "{c:?}");
    }
    assert_eq!(a.cmd(&["GET", "str"]).await, bulk("x"));
}

/// A blocked client holds no shared connection: with one shared upstream connection, five
/// clients blocked forever do not slow anybody else down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_client_never_stalls_anyone_else() {
    let (redis, sc) = start_pair("[upstream]\nmax_connections = 1\n");
    let mut direct = RawConn::connect(redis.port()).await;
    let mut blocked = Vec::new();
    for i in 0..5 {
        let mut c = RawConn::connect(sc.port()).await;
        c.send_cmd(&["BLPOP", &format!("wake{i}"), "0"]).await;
        blocked.push(c);
    }
    wait_blocked(&mut direct, 5).await;

    let mut o = RawConn::connect(sc.port()).await;
    for i in 0..500 {
        let v = format!("value-{i}");
        assert_eq!(o.cmd(&["SET", "busy", &v]).await, ok());
        assert_eq!(o.cmd(&["GET", "busy"]).await, bulk(&v));
    }
    // Transactions and other clients' pipelines too.
    let mut con = client(sc.port()).await;
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.cmd("INCR").arg("busyn").ignore();
        if i == 99 {
            pipe.cmd("GET").arg("busyn");
        }
    }
    let (n,): (i64,) = pipe.query_async(&mut con).await.unwrap();
    assert_eq!(n, 100);
    assert_eq!(o.cmd(&["MULTI"]).await, ok());
    assert_eq!(o.cmd(&["EXEC"]).await, Frame::Array(vec![]));

    // Still blocked, all five.
    assert_eq!(
        info_field(&mut direct, "clients", "blocked_clients")
            .await
            .as_deref(),
        Some("5")
    );
    for i in 0..5 {
        assert_eq!(
            o.cmd(&["RPUSH", &format!("wake{i}"), &format!("w{i}")])
                .await,
            int(1)
        );
    }
    for (i, c) in blocked.iter_mut().enumerate() {
        assert_eq!(
            c.read().await,
            bulks(&[&format!("wake{i}"), &format!("w{i}")])
        );
        assert_eq!(c.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    }
}

/// Clients that disconnect while blocked leave nothing behind: their upstream connections are
/// closed, the lease pool does not run dry, and Redis does not accumulate connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_disconnecting_while_blocked_do_not_leak() {
    let (redis, sc) = start_pair("[upstream]\nmax_leased_connections = 16\ntimeout_ms = 5000\n");
    let mut direct = RawConn::connect(redis.port()).await;
    for i in 0..300 {
        if i % 10 == 0 {
            // Every tenth: the earlier ones are gone from Redis, and this one really is
            // blocked in Redis before it vanishes.
            eventually("abandoned BLPOPs released in redis", async || {
                info_field(&mut direct, "clients", "blocked_clients")
                    .await
                    .as_deref()
                    == Some("0")
            })
            .await;
        }
        let mut c = RawConn::connect(sc.port()).await;
        c.send_cmd(&["BLPOP", "leakq", "0"]).await;
        if i % 10 == 0 {
            wait_blocked(&mut direct, 1).await;
        }
        drop(c);
    }
    eventually("blocked clients released in redis", async || {
        info_field(&mut direct, "clients", "blocked_clients")
            .await
            .as_deref()
            == Some("0")
    })
    .await;
    eventually("redis connection count bounded", async || {
        redis_client_count(&mut direct).await <= 40
    })
    .await;
    let n = redis_client_count(&mut direct).await;
    assert!(
        n <= 40,
        "redis has {n} connections after 300 abandoned BLPOPs"
    );

    // Nothing was popped by a ghost: a value pushed now is still there...
    let mut o = RawConn::connect(sc.port()).await;
    assert_eq!(o.cmd(&["RPUSH", "leakq", "keep"]).await, int(1));
    assert_eq!(
        o.cmd(&["LRANGE", "leakq", "0", "-1"]).await,
        bulks(&["keep"])
    );
    // ...and blocking still works for a live client.
    assert_eq!(
        o.cmd(&["BLPOP", "leakq", "0"]).await,
        bulks(&["leakq", "keep"])
    );
    let mut c = RawConn::connect(sc.port()).await;
    c.send_cmd(&["BLPOP", "leakq2", "0"]).await;
    wait_blocked(&mut direct, 1).await;
    assert_eq!(o.cmd(&["RPUSH", "leakq2", "z"]).await, int(1));
    assert_eq!(c.read().await, bulks(&["leakq2", "z"]));
    assert_eq!(o.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
    // All 16 leases are usable at once.
    let mut many = Vec::new();
    for i in 0..16 {
        let mut c = RawConn::connect(sc.port()).await;
        c.send_cmd(&["BLPOP", &format!("lease{i}"), "0"]).await;
        many.push(c);
    }
    wait_blocked(&mut direct, 16).await;
    for i in 0..16 {
        assert_eq!(o.cmd(&["RPUSH", &format!("lease{i}"), "x"]).await, int(1));
    }
    for (i, c) in many.iter_mut().enumerate() {
        assert_eq!(c.read().await, bulks(&[&format!("lease{i}"), "x"]));
    }
}

// ------------------------------------------------------------------------------------------
// connection-scoped features: MONITOR and CLIENT TRACKING
// ------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_streams_other_clients_commands() {
    let (_redis, sc) = start_pair("");
    let mut m = RawConn::connect(sc.port()).await;
    let mut o = RawConn::connect(sc.port()).await;
    assert_eq!(m.cmd(&["MONITOR"]).await, ok());
    assert_eq!(o.cmd(&["SET", "mon:key", "mon-value"]).await, ok());
    let mut seen = Vec::new();
    loop {
        match m.read().await {
            Frame::Simple(line) => {
                if line.contains("\"SET\" \"mon:key\" \"mon-value\"") {
                    break;
                }
                seen.push(line);
                assert!(seen.len() < 1000, "MONITOR never showed the SET: {seen:?}");
            }
            other => panic!("MONITOR produced {other:?}"),
        }
    }
    // The monitoring client can leave; the others are unaffected.
    drop(m);
    assert_eq!(o.cmd(&["GET", "mon:key"]).await, bulk("mon-value"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_resp3_gets_invalidation_pushes() {
    let (_redis, sc) = start_pair("");
    let mut t = RawConn::connect(sc.port()).await;
    let mut o = RawConn::connect(sc.port()).await;
    assert!(matches!(t.cmd(&["HELLO", "3"]).await, Frame::Map(_)));
    assert_eq!(o.cmd(&["SET", "tk", "v1"]).await, ok());
    assert_eq!(t.cmd(&["CLIENT", "TRACKING", "ON"]).await, ok());
    assert_eq!(t.cmd(&["GET", "tk"]).await, bulk("v1"));
    assert_eq!(o.cmd(&["SET", "tk", "v2"]).await, ok());
    assert_eq!(
        t.read().await,
        Frame::Push(vec![bulk("invalidate"), bulks(&["tk"])]),
        "tracking client must be told that tk changed"
    );
    assert_eq!(t.cmd(&["GET", "tk"]).await, bulk("v2"));
    assert_eq!(t.cmd(&["CLIENT", "TRACKING", "OFF"]).await, ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_tracking_resp2_redirect_to_a_subscriber() {
    let (_redis, sc) = start_pair("");
    let mut sub = RawConn::connect(sc.port()).await;
    let mut t = RawConn::connect(sc.port()).await;
    let mut o = RawConn::connect(sc.port()).await;
    let Frame::Int(id) = sub.cmd(&["CLIENT", "ID"]).await else {
        panic!("CLIENT ID did not return an integer");
    };
    assert_eq!(
        sub.cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await,
        sub_reply("subscribe", "__redis__:invalidate", 1)
    );
    assert_eq!(
        t.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id.to_string()])
            .await,
        ok(),
        "REDIRECT to the id CLIENT ID returned"
    );
    assert_eq!(t.cmd(&["GET", "rk"]).await, Frame::NullBulk);
    assert_eq!(o.cmd(&["SET", "rk", "x"]).await, ok());
    assert_eq!(
        sub.read().await,
        Frame::Array(vec![
            bulk("message"),
            bulk("__redis__:invalidate"),
            bulks(&["rk"])
        ])
    );
}

/// The client a tracking redirect points at leaves: Redis tells the tracking client the
/// redirect broke (the connection that client held is closed, as a direct client's would be),
/// and a later client that gets a dedicated connection never receives the tracker's
/// invalidations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_target_that_leaves_breaks_the_redirect() {
    let (_redis, sc) = start_pair("[upstream]\nmax_leased_connections = 4\n");
    let mut target = RawConn::connect(sc.port()).await;
    let mut t = RawConn::connect(sc.port()).await;
    let mut o = RawConn::connect(sc.port()).await;
    let Frame::Int(id) = target.cmd(&["CLIENT", "ID"]).await else {
        panic!("CLIENT ID did not return an integer");
    };
    assert_eq!(
        target.cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await,
        sub_reply("subscribe", "__redis__:invalidate", 1)
    );
    let _ = t.cmd(&["HELLO", "3"]).await;
    assert_eq!(
        t.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id.to_string()])
            .await,
        ok()
    );
    assert_eq!(t.cmd(&["GET", "rb"]).await, Frame::Null);
    // TRACKINGINFO names the client the tracker named, not Redis's connection.
    let redirect_of = |f: Frame| match f {
        Frame::Map(m) => m
            .into_iter()
            .find(|(k, _)| *k == bulk("redirect"))
            .map(|(_, v)| v),
        other => panic!("CLIENT TRACKINGINFO: {other:?}"),
    };
    assert_eq!(
        redirect_of(t.cmd(&["CLIENT", "TRACKINGINFO"]).await),
        Some(int(id))
    );
    assert_eq!(target.cmd(&["QUIT"]).await, ok());
    drop(target);
    // Later clients take dedicated connections; none of them may be the target's old one.
    let mut later = Vec::new();
    for _ in 0..3 {
        let mut c = RawConn::connect(sc.port()).await;
        assert_eq!(
            c.cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await,
            sub_reply("subscribe", "__redis__:invalidate", 1)
        );
        later.push(c);
    }
    assert_eq!(o.cmd(&["SET", "rb", "x"]).await, ok());
    let broken = t.read().await;
    assert_eq!(
        broken,
        Frame::Push(vec![bulk("tracking-redir-broken"), int(id)]),
        "the tracking client is told"
    );
    assert_eq!(
        redirect_of(t.cmd(&["CLIENT", "TRACKINGINFO"]).await),
        Some(int(id)),
        "a broken redirect still names the client"
    );
    for c in &mut later {
        assert!(
            c.read_for(std::time::Duration::from_millis(200))
                .await
                .is_err(),
            "another client received the tracker's invalidation"
        );
    }
}

/// A RESP3 subscriber may run any command, HELLO 2 included; its messages then arrive as RESP2
/// arrays, which statecar must still tell from replies (Redis allows it, and keeps delivering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resp3_subscription_keeps_delivering_after_hello_2() {
    let (_redis, sc) = start_pair("");
    let mut s = RawConn::connect(sc.port()).await;
    let mut p = RawConn::connect(sc.port()).await;
    let _ = s.cmd(&["HELLO", "3"]).await;
    assert_eq!(
        s.cmd(&["SUBSCRIBE", "r3"]).await,
        Frame::Push(vec![bulk("subscribe"), bulk("r3"), int(1)])
    );
    let _ = s.cmd(&["HELLO", "2"]).await;
    assert_eq!(p.cmd(&["PUBLISH", "r3", "hi"]).await, int(1));
    assert_eq!(
        s.read().await,
        Frame::Array(vec![bulk("message"), bulk("r3"), bulk("hi")])
    );
    assert_eq!(p.cmd(&["PUBLISH", "r3", "again"]).await, int(1));
    assert_eq!(
        s.read().await,
        Frame::Array(vec![bulk("message"), bulk("r3"), bulk("again")])
    );
    assert_eq!(
        s.cmd(&["UNSUBSCRIBE", "r3"]).await,
        Frame::Array(vec![bulk("unsubscribe"), bulk("r3"), int(0)])
    );
    assert_eq!(s.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

/// REDIRECT to a client that holds no connection of its own: that client takes one, as a
/// direct client always has one. A RESP3 target then receives the invalidation pushes; a RESP2
/// target receives them as messages once it subscribes to `__redis__:invalidate`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_client_without_a_connection_reaches_it() {
    let (_redis, sc) = start_pair("");
    let mut o = RawConn::connect(sc.port()).await;
    // RESP3 target.
    let mut target = RawConn::connect(sc.port()).await;
    let _ = target.cmd(&["HELLO", "3"]).await;
    let Frame::Int(id) = target.cmd(&["CLIENT", "ID"]).await else {
        panic!("CLIENT ID did not return an integer");
    };
    let mut t = RawConn::connect(sc.port()).await;
    assert_eq!(
        t.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id.to_string()])
            .await,
        ok()
    );
    assert_eq!(t.cmd(&["GET", "nr"]).await, Frame::NullBulk);
    target.send_cmd(&["CLIENT", "REPLY", "OFF"]).await;
    assert_eq!(o.cmd(&["SET", "nr", "1"]).await, ok());
    assert_eq!(
        target.read().await,
        Frame::Push(vec![bulk("invalidate"), bulks(&["nr"])]),
        "the RESP3 target receives the push, CLIENT REPLY OFF or not"
    );
    // RESP2 target, which subscribes after the redirect was set.
    let mut target2 = RawConn::connect(sc.port()).await;
    let Frame::Int(id2) = target2.cmd(&["CLIENT", "ID"]).await else {
        panic!("CLIENT ID did not return an integer");
    };
    let mut t2 = RawConn::connect(sc.port()).await;
    assert_eq!(
        t2.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", &id2.to_string()])
            .await,
        ok()
    );
    assert_eq!(t2.cmd(&["GET", "nr2"]).await, Frame::NullBulk);
    assert_eq!(
        target2.cmd(&["SUBSCRIBE", "__redis__:invalidate"]).await,
        sub_reply("subscribe", "__redis__:invalidate", 1)
    );
    assert_eq!(o.cmd(&["SET", "nr2", "1"]).await, ok());
    assert_eq!(
        target2.read().await,
        Frame::Array(vec![
            bulk("message"),
            bulk("__redis__:invalidate"),
            bulks(&["nr2"])
        ])
    );
    // A redirect to nobody is still Redis's error.
    assert_eq!(
        t2.cmd(&["CLIENT", "TRACKING", "ON", "REDIRECT", "987654"])
            .await
            .error_text(),
        Some("ERR The client ID you want redirect to does not exist")
    );
}
