//! TLS on both sides, against a real `redis-server` listening on its own TLS port, with
//! certificates generated here by rcgen: statecar -> Redis over `rediss://`, clients -> statecar
//! over TLS (redis-cli and a tokio-rustls client), mTLS, a wrong CA, and bad files at start.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any wait may take before the test fails instead of hanging.
const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().expect("local addr").port();
        if p != 6379 && p != 6380 {
            return p;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// certificates
// ---------------------------------------------------------------------------------------------

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate signed by it,
/// plus an unrelated CA with its own client certificate; all as PEM files in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
}

fn make_ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().expect("ca key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).expect("self-sign ca");
    (cert, Issuer::new(p, key))
}

fn make_leaf(
    issuer: &Issuer<'static, KeyPair>,
    cn: &str,
    sans: &[&str],
    eku: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut p = CertificateParams::new(sans).expect("leaf params");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![eku];
    let cert = p.signed_by(&key, issuer).expect("sign leaf");
    (cert.pem(), key.serialize_pem())
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).expect("write pem");
        };
        let (ca, issuer) = make_ca("statecar test CA");
        write("ca.crt", &ca.pem());
        let (crt, key) = make_leaf(
            &issuer,
            "localhost",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        write("server.crt", &crt);
        write("server.key", &key);
        let (crt, key) = make_leaf(
            &issuer,
            "statecar-client",
            &["statecar-client"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("client.crt", &crt);
        write("client.key", &key);
        let (other, other_issuer) = make_ca("some other CA");
        write("other-ca.crt", &other.pem());
        let (crt, key) = make_leaf(
            &other_issuer,
            "stranger",
            &["stranger"],
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        write("stranger.crt", &crt);
        write("stranger.key", &key);
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path as it goes into a TOML string or a command line.
    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// A rustls client config trusting our CA, with the named client cert/key (if any).
    fn client_config(&self, client: Option<&str>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.crt")).expect("ca file") {
            roots.add(c.expect("ca pem")).expect("add ca");
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("tls versions")
        .with_root_certificates(roots);
        let cfg = match client {
            None => builder.with_no_client_auth(),
            Some(name) => {
                let certs: Vec<CertificateDer<'static>> =
                    CertificateDer::pem_file_iter(self.path(&format!("{name}.crt")))
                        .expect("client cert")
                        .map(|c| c.expect("client cert pem"))
                        .collect();
                let key = PrivateKeyDer::from_pem_file(self.path(&format!("{name}.key")))
                    .expect("client key");
                builder
                    .with_client_auth_cert(certs, key)
                    .expect("client auth")
            }
        };
        Arc::new(cfg)
    }
}

// ---------------------------------------------------------------------------------------------
// processes
// ---------------------------------------------------------------------------------------------

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A child process whose output goes to `log`, killed on drop (log printed if the test failed).
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Proc {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "---- {} (port {}) log ----\n{}\n---- end ----",
                self.name,
                self.port,
                self.log_text()
            );
        }
    }
}

/// Spawns `cmd` with its output in a log file and waits until the log contains `ready`.
fn spawn_until(
    name: &'static str,
    mut cmd: Command,
    port: u16,
    dir: tempfile::TempDir,
    ready: &str,
) -> Result<Proc, String> {
    let log = dir.path().join(format!("{name}.log"));
    let f = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().map_err(|e| e.to_string())?)
        .stderr(f)
        .spawn()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    let mut p = Proc {
        name,
        child,
        log,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + WAIT;
    loop {
        if p.log_text().contains(ready) {
            return Ok(p);
        }
        if !p.is_running() {
            return Err(format!("{name} exited: {}", p.log_text()));
        }
        if Instant::now() > deadline {
            return Err(format!("{name} not ready on {port}: {}", p.log_text()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// redis-server with only a TLS port (`--port 0`), using the PKI's server certificate.
fn start_redis_tls(pki: &Pki, auth_clients: bool) -> Proc {
    let mut last = String::new();
    for _ in 0..10 {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(["--tls-cert-file", &pki.p("server.crt")])
            .args(["--tls-key-file", &pki.p("server.key")])
            .args(["--tls-ca-cert-file", &pki.p("ca.crt")])
            .args([
                "--tls-auth-clients",
                if auth_clients { "yes" } else { "no" },
            ]);
        match spawn_until(
            "redis-server",
            cmd,
            port,
            dir,
            "Ready to accept connections",
        ) {
            Ok(p) => return p,
            Err(e) => last = e,
        }
    }
    panic!("could not start redis-server with TLS: {last}");
}

/// statecar with `config` (`{LISTEN}` replaced by the chosen port), ready once it logs that it
/// started (a plain PING cannot probe a TLS listener).
fn start_statecar(config: &str) -> Proc {
    let mut last = String::new();
    for _ in 0..10 {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("statecar.toml");
        std::fs::write(&path, config.replace("{LISTEN}", &port.to_string())).expect("config");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_statecar"));
        cmd.arg("--config")
            .arg(&path)
            .args(["--log-level", "info,statecar=debug"]);
        for (k, _) in std::env::vars() {
            if k.starts_with("STATECAR_") {
                cmd.env_remove(k);
            }
        }
        match spawn_until("statecar", cmd, port, dir, "statecar started") {
            Ok(p) => return p,
            Err(e) => last = e,
        }
    }
    panic!("could not start statecar: {last}");
}

/// Runs statecar (no subcommand: the proxy) with `config`; it must exit on its own.
fn run_to_exit(config: &str) -> (ExitStatus, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("statecar.toml");
    std::fs::write(&path, config).expect("config");
    let err = dir.path().join("stderr");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_statecar"));
    for (k, _) in std::env::vars() {
        if k.starts_with("STATECAR_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .arg("--config")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).expect("stderr file"))
        .spawn()
        .expect("run statecar");
    let st = match wait_exit(&mut child, WAIT) {
        Some(st) => st,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("statecar did not exit with config:\n{config}");
        }
    };
    (st, std::fs::read_to_string(&err).unwrap_or_default())
}

// ---------------------------------------------------------------------------------------------
// a minimal RESP2 client over any stream
// ---------------------------------------------------------------------------------------------

#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Some(s.as_bytes().to_vec()))
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Parses one reply at `pos`; `None` when more bytes are needed.
fn parse(buf: &[u8], pos: usize) -> Option<(Reply, usize)> {
    let end = pos + buf.get(pos..)?.windows(2).position(|w| w == b"\r\n")?;
    let line = String::from_utf8_lossy(&buf[pos + 1..end]).into_owned();
    let next = end + 2;
    match *buf.get(pos)? {
        b'+' => Some((Reply::Simple(line), next)),
        b'-' => Some((Reply::Error(line), next)),
        b':' => Some((Reply::Int(line.parse().ok()?), next)),
        b'$' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Reply::Bulk(None), next));
            }
            let stop = next + n as usize;
            if buf.len() < stop + 2 {
                return None;
            }
            Some((Reply::Bulk(Some(buf[next..stop].to_vec())), stop + 2))
        }
        b'*' => {
            let n: i64 = line.parse().ok()?;
            if n < 0 {
                return Some((Reply::Array(None), next));
            }
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..n {
                let (r, p) = parse(buf, at)?;
                items.push(r);
                at = p;
            }
            Some((Reply::Array(Some(items)), at))
        }
        other => panic!("unexpected RESP type byte {other:?} in {buf:?}"),
    }
}

struct Conn<S> {
    s: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    /// Sends a command and reads its reply; `Err` on EOF or an I/O error (e.g. a TLS alert).
    async fn try_cmd(&mut self, args: &[&str]) -> std::io::Result<Reply> {
        self.s.write_all(&encode(args)).await?;
        self.s.flush().await?;
        loop {
            if let Some((r, used)) = parse(&self.buf, 0) {
                self.buf.drain(..used);
                return Ok(r);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.s.read(&mut chunk))
                .await
                .map_err(|_| std::io::Error::other("no reply within WAIT"))??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn cmd(&mut self, args: &[&str]) -> Reply {
        match self.try_cmd(args).await {
            Ok(r) => r,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }
}

async fn plain(port: u16) -> Conn<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to statecar");
    Conn { s, buf: Vec::new() }
}

/// A TLS connection to 127.0.0.1:`port`, verifying the name "localhost".
async fn tls(
    port: u16,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<Conn<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    let s = tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("TLS handshake timed out"))??;
    Ok(Conn { s, buf: Vec::new() })
}

/// A plain HTTP/1.0 GET; the whole response as text.
async fn http_get(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to metrics");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .expect("send request");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .expect("metrics response in time")
        .expect("read metrics");
    String::from_utf8_lossy(&out).into_owned()
}

/// Runs redis-cli over TLS against statecar (as "localhost", verified with our CA).
fn redis_cli(pki: &Pki, port: u16, client: Option<&str>, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--cacert", &pki.p("ca.crt")]).args([
        "-h",
        "localhost",
        "-p",
        &port.to_string(),
    ]);
    if let Some(name) = client {
        cmd.args(["--cert", &pki.p(&format!("{name}.crt"))])
            .args(["--key", &pki.p(&format!("{name}.key"))]);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    if wait_exit(&mut child, WAIT).is_none() {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("redis-cli output");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

fn upstream_toml(redis: &Proc, upstream_tls: &str) -> String {
    format!(
        "[upstream]\nurl = \"rediss://localhost:{}\"\nconnect_timeout_ms = 2000\n\n\
         [upstream.tls]\n{upstream_tls}\n",
        redis.port
    )
}

// ---------------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------------

/// (1) statecar -> Redis over TLS, client over plain TCP: the shared pool, a leased connection
/// (MULTI/EXEC) and a state key (envelope + Lua scripts) all work through `rediss://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_upstream_with_plain_client() {
    let pki = Pki::new();
    let redis = start_redis_tls(&pki, false);
    let sc = start_statecar(&format!(
        "listen = \"127.0.0.1:{{LISTEN}}\"\n\n[[state]]\npattern = \"session:*\"\n\n{}",
        upstream_toml(&redis, &format!("ca_file = \"{}\"", pki.p("ca.crt")))
    ));
    let mut c = plain(sc.port).await;
    assert_eq!(c.cmd(&["SET", "plain", "hello"]).await, ok());
    assert_eq!(c.cmd(&["GET", "plain"]).await, bulk("hello"));
    assert_eq!(c.cmd(&["MULTI"]).await, ok());
    assert_eq!(c.cmd(&["INCR", "n"]).await, Reply::Simple("QUEUED".into()));
    assert_eq!(
        c.cmd(&["EXEC"]).await,
        Reply::Array(Some(vec![Reply::Int(1)]))
    );
    let doc = "{\"user\":1,\"cart\":[1,2,3]}".repeat(20);
    assert_eq!(c.cmd(&["SET", "session:1", &doc]).await, ok());
    assert_eq!(c.cmd(&["SET", "session:1", "v2"]).await, ok());
    assert_eq!(c.cmd(&["GET", "session:1"]).await, bulk("v2"));
    match c.cmd(&["STATE.VERSIONS", "session:1"]).await {
        Reply::Array(Some(v)) => assert_eq!(v.len(), 2, "{v:?}"),
        other => panic!("STATE.VERSIONS: {other:?}"),
    }

    // Straight to Redis over TLS: the plain key is there, the state key is stored encoded.
    let mut direct = tls(redis.port, pki.client_config(None))
        .await
        .expect("direct TLS to redis");
    assert_eq!(direct.cmd(&["GET", "plain"]).await, bulk("hello"));
    assert_ne!(direct.cmd(&["GET", "session:1"]).await, bulk("v2"));

    // Idle leased TLS connections are reused, not judged stale and reopened each time: more
    // transactions from new clients open no new connections to Redis.
    let before = connections_received(&mut direct).await;
    for i in 0..5 {
        let mut c = plain(sc.port).await;
        assert_eq!(c.cmd(&["MULTI"]).await, ok());
        assert_eq!(c.cmd(&["INCR", "n"]).await, Reply::Simple("QUEUED".into()));
        assert_eq!(
            c.cmd(&["EXEC"]).await,
            Reply::Array(Some(vec![Reply::Int(i + 2)]))
        );
        drop(c);
        // Let the session hand its lease back before the next client asks for one.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = connections_received(&mut direct).await;
    assert!(after <= before + 1, "{before} -> {after} connections");
}

async fn connections_received<S: AsyncRead + AsyncWrite + Unpin>(c: &mut Conn<S>) -> u64 {
    let Reply::Bulk(Some(info)) = c.cmd(&["INFO", "stats"]).await else {
        panic!("INFO stats");
    };
    String::from_utf8_lossy(&info)
        .lines()
        .find_map(|l| l.strip_prefix("total_connections_received:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("total_connections_received")
}

/// (2) client -> statecar over TLS with redis-cli, statecar -> Redis over TLS with a client
/// certificate (Redis runs with `tls-auth-clients yes`). A plain-text client gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_with_redis_cli_and_upstream_client_cert() {
    let pki = Pki::new();
    let redis = start_redis_tls(&pki, true);
    let sc = start_statecar(&format!(
        "listen = \"127.0.0.1:{{LISTEN}}\"\n\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n\n{}",
        pki.p("server.crt"),
        pki.p("server.key"),
        upstream_toml(
            &redis,
            &format!(
                "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
                 server_name = \"localhost\"",
                pki.p("ca.crt"),
                pki.p("client.crt"),
                pki.p("client.key")
            )
        )
    ));
    // A client that connects and never starts its handshake holds up nobody else.
    let _silent = TcpStream::connect(("127.0.0.1", sc.port))
        .await
        .expect("connect");
    assert_eq!(redis_cli(&pki, sc.port, None, &["SET", "k", "v1"]), "OK");
    assert_eq!(redis_cli(&pki, sc.port, None, &["GET", "k"]), "v1");

    // Our own TLS client too, several commands on one connection.
    let mut c = tls(sc.port, pki.client_config(None))
        .await
        .expect("TLS to statecar");
    assert_eq!(c.cmd(&["GET", "k"]).await, bulk("v1"));
    assert_eq!(c.cmd(&["APPEND", "k", "+more"]).await, Reply::Int(7));
    assert_eq!(c.cmd(&["GET", "k"]).await, bulk("v1+more"));

    // Plain text on a TLS port: no RESP reply, the connection is closed.
    let mut p = plain(sc.port).await;
    if let Ok(r) = p.try_cmd(&["PING"]).await {
        panic!("plain-text PING answered on a TLS port: {r:?}");
    }
}

/// (3) mTLS: with `client_ca_file`, a client without a certificate (or with one from another
/// CA) is refused; one with a certificate from the CA is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_requires_a_client_certificate() {
    let pki = Pki::new();
    let redis = start_redis_tls(&pki, false);
    let metrics_port = free_port();
    let sc = start_statecar(&format!(
        "listen = \"127.0.0.1:{{LISTEN}}\"\n\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n\n\
         [tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n\n{}",
        pki.p("server.crt"),
        pki.p("server.key"),
        pki.p("ca.crt"),
        upstream_toml(&redis, &format!("ca_file = \"{}\"", pki.p("ca.crt")))
    ));

    // With TLS 1.3 the client's handshake can finish before the server checks the client's
    // certificate; the refusal then arrives as an alert on the first read.
    for who in [None, Some("stranger")] {
        let refused = match tls(sc.port, pki.client_config(who)).await {
            Err(_) => true,
            Ok(mut c) => c.try_cmd(&["PING"]).await.is_err(),
        };
        assert!(refused, "client with certificate {who:?} was served");
    }
    let out = redis_cli(&pki, sc.port, None, &["PING"]);
    assert_ne!(out, "PONG", "redis-cli without a certificate was served");
    // Each refusal is counted (polled: the count lands just after the alert is sent).
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = http_get(metrics_port, "/metrics").await;
        let rejected: f64 = metrics
            .lines()
            .find(|l| l.starts_with("statecar_clients_rejected_total{reason=\"tls_handshake\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        if rejected >= 3.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{rejected} tls_handshake rejections counted, expected 3:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut c = tls(sc.port, pki.client_config(Some("client")))
        .await
        .expect("mTLS to statecar");
    assert_eq!(c.cmd(&["SET", "m", "tls"]).await, ok());
    assert_eq!(c.cmd(&["GET", "m"]).await, bulk("tls"));
    assert_eq!(
        redis_cli(&pki, sc.port, Some("client"), &["GET", "m"]),
        "tls"
    );
}

/// (4) The wrong CA for Redis: commands fail with a clear error that names the certificate
/// problem, and statecar keeps running (and keeps answering).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_upstream_ca_gives_a_clear_error() {
    let pki = Pki::new();
    let redis = start_redis_tls(&pki, false);
    let mut sc = start_statecar(&format!(
        "listen = \"127.0.0.1:{{LISTEN}}\"\n\n{}",
        upstream_toml(&redis, &format!("ca_file = \"{}\"", pki.p("other-ca.crt")))
    ));
    let mut c = plain(sc.port).await;
    for _ in 0..3 {
        match c.cmd(&["SET", "k", "v"]).await {
            Reply::Error(e) => {
                assert!(e.starts_with("ERR upstream unavailable"), "{e}");
                assert!(e.contains("TLS"), "{e}");
                assert!(e.contains("certificate"), "{e}");
            }
            other => panic!("SET through a wrong CA: {other:?}"),
        }
    }
    assert!(sc.is_running(), "statecar died");
    let mut again = plain(sc.port).await;
    assert!(matches!(again.cmd(&["GET", "k"]).await, Reply::Error(_)));
    assert!(sc.is_running(), "statecar died");
}

/// Redis with `tls-auth-clients yes` and no client certificate configured: the refusal (an
/// alert after the TLS 1.3 handshake) is reported as such, with a pointer to the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_upstream_client_cert_is_explained() {
    let pki = Pki::new();
    let redis = start_redis_tls(&pki, true);
    let mut sc = start_statecar(&format!(
        "listen = \"127.0.0.1:{{LISTEN}}\"\n\n{}",
        upstream_toml(&redis, &format!("ca_file = \"{}\"", pki.p("ca.crt")))
    ));
    let mut c = plain(sc.port).await;
    match c.cmd(&["GET", "k"]).await {
        Reply::Error(e) => {
            assert!(e.starts_with("ERR upstream unavailable"), "{e}");
            assert!(e.contains("upstream.tls.cert_file"), "{e}");
        }
        other => panic!("GET without a client certificate: {other:?}"),
    }
    assert!(sc.is_running(), "statecar died");
}

/// `insecure_skip_verify` connects without a CA and says so loudly in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_skip_verify_works_and_warns() {
    let pki = Pki::new();
    let redis = start_redis_tls(&pki, false);
    let sc = start_statecar(&format!(
        "listen = \"127.0.0.1:{{LISTEN}}\"\n\n{}",
        upstream_toml(&redis, "insecure_skip_verify = true")
    ));
    let mut c = plain(sc.port).await;
    assert_eq!(c.cmd(&["SET", "k", "v"]).await, ok());
    assert_eq!(c.cmd(&["GET", "k"]).await, bulk("v"));
    let log = sc.log_text();
    assert!(
        log.contains("WARN") && log.contains("insecure_skip_verify"),
        "{log}"
    );
}

/// (5) Bad TLS files stop statecar at start with one line naming the field.
#[test]
fn bad_tls_files_fail_at_start_naming_the_field() {
    let pki = Pki::new();
    std::fs::write(pki.path("junk.pem"), "not a certificate\n").expect("junk");
    let listen = "listen = \"127.0.0.1:1\"\n";
    let server = |cert: &str, key: &str, extra: &str| {
        format!(
            "{listen}[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n{extra}",
            pki.p(cert),
            pki.p(key)
        )
    };
    let rediss = |tls: &str| {
        format!("{listen}[upstream]\nurl = \"rediss://localhost:1\"\n[upstream.tls]\n{tls}\n")
    };
    let junk_ca = format!("client_ca_file = \"{}\"\n", pki.p("junk.pem"));
    let cases = [
        (
            server("missing.crt", "server.key", ""),
            "tls.cert_file",
            "cannot read",
        ),
        (
            server("junk.pem", "server.key", ""),
            "tls.cert_file",
            "no PEM certificate",
        ),
        (
            server("server.crt", "missing.key", ""),
            "tls.key_file",
            "cannot read",
        ),
        (
            server("server.crt", "client.key", ""),
            "tls.key_file",
            "does not match",
        ),
        (
            server("server.crt", "server.key", &junk_ca),
            "tls.client_ca_file",
            "no PEM certificate",
        ),
        (
            format!("{listen}[tls]\nkey_file = \"{}\"\n", pki.p("server.key")),
            "tls.cert_file",
            "required",
        ),
        (
            rediss(&format!("ca_file = \"{}\"", pki.p("missing.crt"))),
            "upstream.tls.ca_file",
            "cannot read",
        ),
        (
            rediss(&format!(
                "cert_file = \"{}\"\nkey_file = \"{}\"",
                pki.p("client.crt"),
                pki.p("server.key")
            )),
            "upstream.tls.key_file",
            "does not match",
        ),
        (
            rediss("server_name = \"bad name\""),
            "upstream.tls.server_name",
            "not a valid",
        ),
        (
            format!(
                "{listen}[upstream]\nurl = \"redis://localhost:1\"\n[upstream.tls]\n\
                 ca_file = \"{}\"\n",
                pki.p("ca.crt")
            ),
            "upstream.tls",
            "rediss://",
        ),
    ];
    for (config, field, problem) in cases {
        let (st, err) = run_to_exit(&config);
        assert_eq!(st.code(), Some(2), "{config}\n{err}");
        let err = err.trim();
        assert!(!err.contains('\n'), "more than one line: {err}");
        assert!(err.contains(&format!(": {field}: ")), "{field}: {err}");
        assert!(err.contains(problem), "{problem}: {err}");
    }

    // And a good set of files passes the same checks.
    let good = pki.path("good.toml");
    let ca = format!("client_ca_file = \"{}\"\n", pki.p("ca.crt"));
    std::fs::write(&good, server("server.crt", "server.key", &ca)).expect("config");
    let check = Command::new(env!("CARGO_BIN_EXE_statecar"))
        .arg("--config")
        .arg(&good)
        .arg("check-config")
        .output()
        .expect("check-config");
    assert!(check.status.success(), "{check:?}");
}
