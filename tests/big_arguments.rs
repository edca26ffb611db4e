//! Big arguments (1 MiB and more) go to Redis while they arrive, on a connection of the
//! client's own (docs/DESIGN.md, "Big arguments"): in order with the client's other commands,
//! with nothing left behind when the client stops halfway or sends a bad tail, and read whole
//! as before where statecar must see the whole command (state keys) or has no connection free.

mod common;

use common::*;

const RULE: &str = "[[state]]\npattern = \"session:*\"\ncompression = \"zstd\"\n";

/// A value of `n` bytes that no two offsets of which look alike.
fn value(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| b'a' + ((i / 7 + i * 31 + usize::from(seed)) % 26) as u8)
        .collect()
}

/// `*argc`, then each argument before the big one, then the big one's header.
fn head(argc: usize, before: &[&str], big_len: usize) -> Vec<u8> {
    let mut out = format!("*{argc}\r\n").into_bytes();
    for a in before {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out.extend_from_slice(format!("${big_len}\r\n").as_bytes());
    out
}

/// The bytes Redis holds for its clients' unfinished commands, from CLIENT LIST.
async fn redis_query_buffers(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(redis)
        .await
        .unwrap();
    list.lines()
        .flat_map(|l| l.split(' '))
        .filter_map(|f| f.strip_prefix("qbuf="))
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// Sends the start of `SET key big ...` (`argc` arguments) and half of `big`, and waits until
/// Redis holds that half: it was passed on before the client sent the rest.
async fn send_half(
    port: u16,
    argc: usize,
    key: &str,
    big: &[u8],
    direct: &mut redis::aio::MultiplexedConnection,
) -> RawConn {
    let mut c = RawConn::connect(port).await;
    c.send(&head(argc, &["SET", key], big.len())).await;
    c.send(&big[..big.len() / 2]).await;
    eventually("Redis holds half the argument", async || {
        redis_query_buffers(direct).await >= (big.len() / 2) as u64
    })
    .await;
    c
}

fn streamed(mport: u16) -> f64 {
    let (_, text) = http_get(mport, "/metrics").expect("metrics");
    metric_sum(&text, "statecar_arguments_streamed_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_argument_reaches_redis_while_it_arrives_and_others_are_served_meanwhile() {
    let (redis, sc, mport) = with_metrics("");
    let mut direct = client(redis.port()).await;
    let big = value(4 << 20, 1);
    // Half of it is in Redis before the client has sent the rest.
    let mut c = send_half(sc.port(), 5, "big", &big, &mut direct).await;
    // The client is stopped halfway; everyone else goes on.
    let mut other = RawConn::connect(sc.port()).await;
    assert_eq!(other.cmd(&["SET", "small", "1"]).await, ok());
    assert_eq!(other.cmd(&["GET", "small"]).await, bulk("1"));
    let mut rest = big[big.len() / 2..].to_vec();
    rest.extend_from_slice(b"\r\n$2\r\nEX\r\n$3\r\n100\r\n");
    rest.extend_from_slice(&encode(&["STRLEN", "big"]));
    c.send(&rest).await;
    assert_eq!(c.read().await, ok());
    assert_eq!(c.read().await, int(big.len() as i64));
    assert_eq!(c.cmd(&["GET", "big"]).await, Frame::Bulk(big.clone()));
    let ttl: i64 = redis::cmd("TTL")
        .arg("big")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(
        (1..=100).contains(&ttl),
        "the option after the value applied: TTL {ttl}"
    );
    assert_eq!(streamed(mport), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_around_big_arguments_keep_their_order() {
    let (redis, sc) = start_pair(RULE);
    let mut direct = client(redis.port()).await;
    let big = value(2 << 20, 2);
    let state = value(3 << 20, 3);
    let mut c = RawConn::connect(sc.port()).await;
    let mut all = Vec::new();
    for cmd in [
        encode(&["SET", "a", "1"]),
        encode(&["INCR", "a"]),
        encode(&[&b"APPEND"[..], b"big", &big]),
        encode(&["INCR", "a"]),
        encode(&[&b"HSET"[..], b"h", b"f", &big, b"g", b"2"]),
        encode(&[&b"SET"[..], b"session:1", &state]),
        encode(&["APPEND", "big", "!"]),
        encode(&["HSTRLEN", "h", "f"]),
        encode(&["GET", "a"]),
    ] {
        all.extend_from_slice(&cmd);
    }
    // Written in one go, as a pipelining client does, and read afterwards.
    c.send(&all).await;
    let replies = c.read_n(9).await;
    assert_eq!(
        replies,
        vec![
            ok(),
            int(2),
            int(big.len() as i64),
            int(3),
            int(2),
            ok(),
            int(big.len() as i64 + 1),
            int(big.len() as i64),
            bulk("3"),
        ]
    );
    // The state key was read whole and stored compressed; the others as they came.
    let stored: Vec<u8> = redis::cmd("GET")
        .arg("session:1")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert!(
        stored.len() < state.len() / 2,
        "stored {} bytes",
        stored.len()
    );
    assert_eq!(c.cmd(&["GET", "session:1"]).await, Frame::Bulk(state));
    let mut want = big.clone();
    want.push(b'!');
    assert_eq!(c.cmd(&["GET", "big"]).await, Frame::Bulk(want));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_halfway_leaves_nothing_behind() {
    let (redis, sc, mport) = with_metrics("[upstream]\nmax_leased_connections = 1\n");
    let mut direct = client(redis.port()).await;
    let big = value(2 << 20, 4);
    let c = send_half(sc.port(), 3, "gone", &big, &mut direct).await;
    drop(c);
    // Redis never ran it, and the one dedicated connection is free again for the next.
    eventually("Redis dropped the half command", async || {
        redis_query_buffers(&mut direct).await < 1024
    })
    .await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg("gone")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(exists, 0);
    let mut next = RawConn::connect(sc.port()).await;
    let mut cmd = head(3, &["SET", "next"], big.len());
    cmd.extend_from_slice(&big);
    cmd.extend_from_slice(b"\r\n");
    next.send(&cmd).await;
    assert_eq!(next.read().await, ok());
    assert_eq!(streamed(mport), 2.0, "the second one streamed too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_tail_after_a_big_argument_is_a_protocol_error() {
    let (redis, sc) = start_pair("");
    let mut direct = client(redis.port()).await;
    let big = value(1 << 20, 5);
    let mut c = RawConn::connect(sc.port()).await;
    let mut cmd = head(5, &["SET", "bad"], big.len());
    cmd.extend_from_slice(&big);
    cmd.extend_from_slice(b"\r\nx2\r\nEX\r\n$3\r\n100\r\n");
    c.send(&cmd).await;
    assert_eq!(
        c.read().await,
        err("ERR Protocol error: expected '$', got 'x'")
    );
    c.expect_closed().await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg("bad")
        .query_async(&mut direct)
        .await
        .unwrap();
    assert_eq!(exists, 0, "Redis never ran the half command");
    let mut other = RawConn::connect(sc.port()).await;
    assert_eq!(other.cmd(&["PING"]).await, Frame::Simple("PONG".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_dedicated_connection_free_a_big_argument_is_read_whole() {
    let (redis, sc, mport) = with_metrics("[upstream]\nmax_leased_connections = 1\n");
    let mut blocked = RawConn::connect(sc.port()).await;
    blocked.send_cmd(&["BLPOP", "q", "0"]).await;
    let mut direct = client(redis.port()).await;
    eventually("BLPOP holds the one dedicated connection", async || {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut direct)
            .await
            .unwrap();
        list.contains("cmd=blpop")
    })
    .await;
    let big = value(2 << 20, 6);
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&[&b"SET"[..], b"whole", &big]).await, ok());
    assert_eq!(c.cmd(&["STRLEN", "whole"]).await, int(big.len() as i64));
    assert_eq!(streamed(mport), 0.0);
    assert_eq!(c.cmd(&["LPUSH", "q", "x"]).await, int(1));
    assert_eq!(blocked.read().await, bulks(&["q", "x"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_arguments_leave_half_the_dedicated_connections_to_others() {
    let (redis, sc, mport) = with_metrics("[upstream]\nmax_leased_connections = 4\n");
    let mut direct = client(redis.port()).await;
    let mut blocked = Vec::new();
    for q in ["q1", "q2"] {
        let mut c = RawConn::connect(sc.port()).await;
        c.send_cmd(&["BLPOP", q, "0"]).await;
        blocked.push(c);
    }
    eventually(
        "two BLPOPs hold two of the four dedicated connections",
        async || {
            let list: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut direct)
                .await
                .unwrap();
            list.matches("cmd=blpop").count() == 2
        },
    )
    .await;
    let big = value(2 << 20, 7);
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&[&b"SET"[..], b"half", &big]).await, ok());
    assert_eq!(streamed(mport), 0.0, "half of them in use: read whole");
    assert_eq!(c.cmd(&["LPUSH", "q1", "x"]).await, int(1));
    assert_eq!(blocked[0].read().await, bulks(&["q1", "x"]));
    assert_eq!(c.cmd(&[&b"SET"[..], b"half", &big]).await, ok());
    assert_eq!(streamed(mport), 1.0, "three of four free: streamed");
    assert_eq!(c.cmd(&["STRLEN", "half"]).await, int(big.len() as i64));
}

/// Big replies come back whole, byte for byte, on every kind of connection statecar reads them
/// from (the shared connection, a MULTI's, a blocking command's lease, a subscriber's relay),
/// while another client's small commands keep getting their own answers meanwhile. These are
/// the loops that reserve a reply's room from its length and give other clients a turn every
/// 256 KiB (src/fair_share.rs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_replies_come_back_whole_on_every_kind_of_connection() {
    let (_redis, sc) = start_pair("");
    let big = value(10 << 20, 3);
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&[b"SET".as_slice(), b"big", &big]).await, ok());

    // Another client, busy with small commands the whole time.
    let port = sc.port();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let other = tokio::spawn(async move {
        let mut o = RawConn::connect(port).await;
        let mut i = 0u64;
        while !flag.load(std::sync::atomic::Ordering::SeqCst) {
            i += 1;
            let v = i.to_string();
            assert_eq!(o.cmd(&["SET", "small", &v]).await, ok());
            assert_eq!(o.cmd(&["GET", "small"]).await, bulk(&v));
        }
        i
    });

    // The shared connection, two in one batch.
    let mut two = encode(&["GET", "big"]);
    two.extend(encode(&["GET", "big"]));
    c.send(&two).await;
    assert_eq!(c.read().await, Frame::Bulk(big.clone()));
    assert_eq!(c.read().await, Frame::Bulk(big.clone()));
    // A transaction's connection.
    assert_eq!(c.cmd(&["MULTI"]).await, ok());
    assert_eq!(c.cmd(&["GET", "big"]).await, Frame::Simple("QUEUED".into()));
    assert_eq!(
        c.cmd(&["STRLEN", "big"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        Frame::Array(vec![Frame::Bulk(big.clone()), int(big.len() as i64)])
    );
    // A blocking command's lease.
    assert_eq!(c.cmd(&[b"RPUSH".as_slice(), b"list", &big]).await, int(1));
    assert_eq!(
        c.cmd(&["BLPOP", "list", "1"]).await,
        Frame::Array(vec![bulk("list"), Frame::Bulk(big.clone())])
    );
    // A subscriber's relay.
    let mut sub = RawConn::connect(sc.port()).await;
    sub.send_cmd(&["SUBSCRIBE", "ch"]).await;
    assert_eq!(
        sub.read().await,
        Frame::Array(vec![bulk("subscribe"), bulk("ch"), int(1)])
    );
    assert_eq!(c.cmd(&[b"PUBLISH".as_slice(), b"ch", &big]).await, int(1));
    assert_eq!(
        sub.read().await,
        Frame::Array(vec![bulk("message"), bulk("ch"), Frame::Bulk(big.clone())])
    );

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let rounds = other
        .await
        .expect("the other client's commands were all answered right");
    assert!(rounds > 0, "the other client got no command through");
}
