//! A transaction through statecar is all or nothing, also when statecar cannot get the
//! dedicated upstream connection that MULTI needs (issue 12): `MULTI; SET a 1; INCR b; EXEC`
//! must then run nothing. The queued commands must not run outside a transaction (their
//! replies are `+QUEUED` or errors, never `+OK`/`:n`), EXEC fails with an error (EXECABORT or
//! another), a and b keep their values, and the client is left out of MULTI (a PING after it
//! is answered PONG, as after EXECABORT on Redis).
//!
//! Two ways to be without a dedicated connection: Redis's password changed after statecar
//! connected (the shared connections stay authenticated, every new connection fails its
//! handshake), and every dedicated connection taken (`max_leased_connections = 1`, held by a
//! client blocked in BLPOP). Each is tried with the commands pipelined in one write and sent
//! one at a time.

mod common;

use common::*;

/// Sends the transaction for keys `a` (holding "orig") and `b` (holding 10) and checks it ran
/// nothing. Returns what went wrong, if anything.
async fn transaction_runs_nothing(
    proxy_port: u16,
    direct: &mut RawConn,
    variant: &str,
    pipelined: bool,
) -> Vec<String> {
    let a = format!("atomic:{variant}:a");
    let b = format!("atomic:{variant}:b");
    assert_eq!(direct.cmd(&["SET", &a, "orig"]).await, ok());
    assert_eq!(direct.cmd(&["SET", &b, "10"]).await, ok());
    let commands: Vec<Vec<&str>> = vec![
        vec!["MULTI"],
        vec!["SET", &a, "1"],
        vec!["INCR", &b],
        vec!["EXEC"],
        vec!["PING"],
    ];
    let mut c = RawConn::connect(proxy_port).await;
    let mut replies = Vec::new();
    if pipelined {
        let bytes: Vec<u8> = commands.iter().flat_map(|a| encode(a)).collect();
        c.send(&bytes).await;
        for _ in &commands {
            replies.push(c.read_for(WAIT).await);
        }
    } else {
        for cmd in &commands {
            if c.try_send(&encode(cmd)).await.is_err() {
                replies.push(Err(ReadEnd::Closed));
                continue;
            }
            replies.push(c.read_for(WAIT).await);
        }
    }
    let mut problems = Vec::new();
    let queued = Frame::Simple("QUEUED".into());
    for (i, name) in [(1, "SET"), (2, "INCR")] {
        match &replies[i] {
            Ok(f) if *f == queued || f.is_error() => {}
            other => problems.push(format!(
                "{variant}: {name} inside the failed MULTI was answered {other:?} (it ran \
                 outside the transaction?)"
            )),
        }
    }
    match &replies[3] {
        Ok(f) if f.is_error() => {}
        other => problems.push(format!(
            "{variant}: EXEC answered {other:?}, not an error (MULTI: {:?})",
            replies[0]
        )),
    }
    if replies[4] != Ok(Frame::Simple("PONG".into())) {
        problems.push(format!(
            "{variant}: PING after the transaction answered {:?}",
            replies[4]
        ));
    }
    let now_a = direct.cmd(&["GET", &a]).await;
    let now_b = direct.cmd(&["GET", &b]).await;
    if now_a != bulk("orig") || now_b != bulk("10") {
        problems.push(format!(
            "{variant}: after the failed transaction a = {} (was \"orig\"), b = {} (was \"10\"); \
             replies were {replies:?}",
            now_a.text(),
            now_b.text()
        ));
    }
    problems
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_whose_dedicated_connection_fails_its_handshake_runs_nothing() {
    let (redis, sc) = start_pair("");
    let mut direct = RawConn::connect(redis.port()).await;
    // The shared connection exists and is authenticated before the password changes.
    let mut c = RawConn::connect(sc.port()).await;
    assert_eq!(c.cmd(&["SET", "atomic:warm", "1"]).await, ok());
    assert_eq!(
        direct
            .cmd(&["CONFIG", "SET", "requirepass", "changed"])
            .await,
        ok()
    );
    // From now on a new connection to Redis cannot authenticate (statecar's url has none).
    let mut fresh = RawConn::connect(redis.port()).await;
    assert!(
        fresh
            .cmd(&["PING"])
            .await
            .error_text()
            .is_some_and(|e| e.starts_with("NOAUTH")),
        "the password change should refuse new connections"
    );
    // ...but the shared connection still serves.
    assert_eq!(c.cmd(&["GET", "atomic:warm"]).await, bulk("1"));

    let mut problems = transaction_runs_nothing(sc.port(), &mut direct, "pipelined", true).await;
    problems.extend(transaction_runs_nothing(sc.port(), &mut direct, "one-by-one", false).await);
    assert_eq!(
        direct.cmd(&["CONFIG", "SET", "requirepass", ""]).await,
        ok()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_with_every_dedicated_connection_taken_runs_nothing() {
    let (redis, sc) = start_pair("[upstream]\nmax_leased_connections = 1\n");
    let mut direct = RawConn::connect(redis.port()).await;
    // The only dedicated connection is held by a client blocked for good.
    let mut holder = RawConn::connect(sc.port()).await;
    holder.send_cmd(&["BLPOP", "atomic:never", "0"]).await;
    wait_blocked(&mut direct, 1).await;

    let mut problems = transaction_runs_nothing(sc.port(), &mut direct, "pipelined", true).await;
    problems.extend(transaction_runs_nothing(sc.port(), &mut direct, "one-by-one", false).await);

    assert_eq!(direct.cmd(&["RPUSH", "atomic:never", "x"]).await, int(1));
    assert_eq!(holder.read().await, bulks(&["atomic:never", "x"]));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
