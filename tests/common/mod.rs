//! Test harness: a real `redis-server` and a real `statecar` process per test, each on a free
//! port, plus a raw RESP connection for protocol-level assertions.
//!
//! Nothing here relies on timing for correctness: waits are polls with a generous deadline
//! ([`WAIT`]) that only exist so that a broken proxy fails the test instead of hanging it.

#![allow(dead_code)]

pub mod agent_data;
pub mod cluster;
pub mod exchange;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The longest any single wait may take before the test is failed instead of hanging.
pub const WAIT: Duration = Duration::from_secs(20);

/// A blocking HTTP GET on loopback; returns (status code, body).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

/// The value of a Prometheus sample, summed over its label sets (0 when absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|r| r.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Runs `statecar verify` with a proxy's own config file: (success, its report).
pub fn statecar_verify(sc: &Statecar) -> (bool, String) {
    let out = Command::new(statecar_bin())
        .args(["verify", "--config"])
        .arg(sc.dir().join("statecar.toml"))
        .output()
        .expect("run statecar verify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// The process id of the redis-server on `port` (from INFO server).
pub fn redis_pid(port: u16) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "INFO", "server"])
        .output()
        .expect("redis-cli");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .map(|p| p.trim().to_string())
        .expect("process_id in INFO server")
}

/// Sends `sig` (e.g. "-STOP") to process `pid` with kill(1).
pub fn signal(sig: &str, pid: &str) {
    let st = Command::new("kill")
        .args([sig, pid])
        .status()
        .expect("kill");
    assert!(st.success(), "kill {sig} {pid}");
}

/// A Redis and a statecar with its metrics listener on a free port (the third value).
pub fn with_metrics(extra: &str) -> (RedisServer, Statecar, u16) {
    let redis = RedisServer::start();
    let mut last = String::new();
    // Both ports are tried again if either was taken meanwhile.
    for _ in 0..10 {
        let mport = free_port();
        let port = free_port();
        let extra = format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n{extra}");
        let text = config_text(port, redis.port(), &extra);
        match Statecar::spawn(port, &text, &[], &[]) {
            Ok(sc) => return (redis, sc, mport),
            Err(e) => last = e,
        }
    }
    panic!("could not start statecar with metrics: {last}");
}

/// A port nobody listens on right now (never 6379/6380).
///
/// It is taken below the kernel's range for outgoing connections: a port from `bind(0)` is in
/// that range, and any connection opened before the server binds it (another test's client,
/// statecar's upstream pool) could take it as its own end ("Address already in use"). Calls
/// in one process walk the range from a start that depends on the process id, so two tests
/// running side by side are never handed the same port.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const FLOOR: usize = 10_240;
    let low = outgoing_ports_from();
    if low > FLOOR + 1_000 {
        let span = low - FLOOR;
        let start = (std::process::id() as usize).wrapping_mul(7_919) % span;
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            if n >= span {
                break;
            }
            let port = u16::try_from(FLOOR + (start + n) % span).expect("port below 65536");
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let p = l.local_addr().unwrap().port();
        if p != 6379 && p != 6380 {
            return p;
        }
    }
}

/// The first port of the kernel's range for outgoing connections (32768 unless changed).
fn outgoing_ports_from() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// Sends PING over a plain blocking socket and returns the first reply line, if any.
fn sync_ping(port: u16) -> Option<String> {
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n").ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            return Some(String::from_utf8_lossy(&buf[..i]).into_owned());
        }
    }
}

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

// ---------------------------------------------------------------------------------------------
// redis-server
// ---------------------------------------------------------------------------------------------

/// A `redis-server` child process on a free port, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a fresh, empty, non-persistent redis-server.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts redis-server with extra command-line options (e.g. `["--requirepass", "x"]`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut last = String::new();
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let port = free_port();
            match spawn_redis(port, dir.path(), &extra) {
                Ok(child) => {
                    return RedisServer {
                        child: Some(child),
                        port,
                        dir,
                        extra,
                    };
                }
                Err(e) => last = e,
            }
        }
        panic!("could not start redis-server: {last}");
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and wait until it is gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + WAIT;
        loop {
            match spawn_redis(self.port, self.dir.path(), &self.extra) {
                Ok(c) => {
                    self.child = Some(c);
                    return;
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("could not restart redis-server on {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `--enable-debug-command local` where redis-server knows it (7.0 and later), so that tests
/// can use DEBUG SLEEP.
fn debug_command_args() -> &'static [&'static str] {
    static ARGS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
    ARGS.get_or_init(|| {
        let out = Command::new("redis-server").arg("--version").output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let major = text
            .split("v=")
            .nth(1)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse::<u32>().ok())
            .unwrap_or(0);
        if major >= 7 {
            &["--enable-debug-command", "local"]
        } else {
            &[]
        }
    })
}

fn spawn_redis(port: u16, dir: &Path, extra: &[String]) -> Result<Child, String> {
    let log =
        std::fs::File::create(dir.join(format!("redis-{port}.log"))).map_err(|e| e.to_string())?;
    let mut child = Command::new("redis-server")
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .args(debug_command_args())
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot run redis-server (is it on PATH?): {e}"))?;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            let log =
                std::fs::read_to_string(dir.join(format!("redis-{port}.log"))).unwrap_or_default();
            return Err(format!("redis-server exited with {st}: {log}"));
        }
        if let Some(line) = sync_ping(port) {
            // PONG, or NOAUTH when started with --requirepass: either way it is up.
            if line == "+PONG" || line.starts_with("-NOAUTH") {
                return Ok(child);
            }
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("redis-server on port {port} did not answer PING"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---------------------------------------------------------------------------------------------
// statecar
// ---------------------------------------------------------------------------------------------

/// Path of the binary under test.
pub fn statecar_bin() -> &'static str {
    env!("CARGO_BIN_EXE_statecar")
}

/// A `statecar` child process, killed on drop (its stderr printed if the test failed).
pub struct Statecar {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    stderr_path: PathBuf,
    exit: Option<ExitStatus>,
}

/// The config text for a proxy on `listen_port` in front of `upstream_port`, plus `extra`.
///
/// `extra` is appended as is; `{UPSTREAM_PORT}` in it is replaced. When it has its own
/// `[upstream]` table without a `url`, the url line is inserted into that table.
pub fn config_text(listen_port: u16, upstream_port: u16, extra: &str) -> String {
    let extra = extra.replace("{UPSTREAM_PORT}", &upstream_port.to_string());
    let url_line = format!("url = \"redis://127.0.0.1:{upstream_port}\"");
    let mut text = format!("listen = \"127.0.0.1:{listen_port}\"\n");
    let has_upstream = extra.lines().any(|l| l.trim() == "[upstream]");
    if has_upstream {
        let has_url = extra.lines().any(|l| l.trim_start().starts_with("url"));
        for line in extra.lines() {
            text.push_str(line);
            text.push('\n');
            if line.trim() == "[upstream]" && !has_url {
                text.push_str(&url_line);
                text.push('\n');
            }
        }
    } else {
        text.push_str(&extra);
        text.push_str("\n[upstream]\n");
        text.push_str(&url_line);
        text.push('\n');
    }
    text
}

impl Statecar {
    /// Starts statecar with a config file in front of the redis on `upstream_port`.
    pub fn start(upstream_port: u16, extra_toml: &str) -> Statecar {
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port();
            let text = config_text(port, upstream_port, extra_toml);
            match Statecar::spawn(port, &text, &[], &[]) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("could not start statecar: {last}");
    }

    /// Starts statecar with exactly this config file text (plus flags/env), listening on `port`.
    /// Returns the stderr text if it exits before serving.
    pub fn spawn(
        port: u16,
        config: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Statecar, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(statecar_bin());
        if !config.is_empty() {
            let path = dir.path().join("statecar.toml");
            std::fs::write(&path, config).unwrap();
            cmd.arg("--config").arg(&path);
        }
        Statecar::spawn_cmd(cmd, port, dir, args, envs)
    }

    fn spawn_cmd(
        mut cmd: Command,
        port: u16,
        dir: tempfile::TempDir,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Result<Statecar, String> {
        let stderr_path = dir.path().join("statecar.stderr");
        let err = std::fs::File::create(&stderr_path).unwrap();
        for (k, _) in std::env::vars() {
            if k.starts_with("STATECAR_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot run statecar: {e}"))?;
        let mut s = Statecar {
            child: Some(child),
            port,
            dir,
            stderr_path,
            exit: None,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(Ok(Some(st))) = s.child.as_mut().map(|c| c.try_wait()) {
                s.child = None;
                return Err(format!("statecar exited with {st}: {}", s.stderr()));
            }
            if sync_ping(port).is_some() {
                return Ok(s);
            }
            if Instant::now() > deadline {
                return Err(format!("statecar did not answer on {port}: {}", s.stderr()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs the binary to completion (for configurations that must fail) and returns
    /// (exit status, stderr).
    pub fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String) {
        let mut cmd = Command::new(statecar_bin());
        for (k, _) in std::env::vars() {
            if k.starts_with("STATECAR_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run statecar");
        let mut err = String::new();
        let mut pipe = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let _ = pipe.read_to_string(&mut err);
            err
        });
        let st = match wait_exit(&mut child, WAIT) {
            Some(st) => st,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("statecar {args:?} did not exit (it should have refused to start)");
            }
        };
        (st, reader.join().unwrap())
    }

    /// Client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("statecar not running").id()
    }

    /// Everything it wrote on stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM failed");
    }

    /// Waits (up to `limit`) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.exit {
            return Some(st);
        }
        let st = wait_exit(self.child.as_mut()?, limit)?;
        self.exit = Some(st);
        Some(st)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.exit.is_none() && matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Number of open file descriptors of the process (Linux).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .count()
    }

    /// Its temp dir (config file and stderr live there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Statecar {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- statecar (port {}) stderr ----\n{}\n---- end of statecar stderr ----",
                self.port,
                self.stderr()
            );
        }
    }
}

/// A redis-server and a statecar in front of it.
pub fn start_pair(extra_toml: &str) -> (RedisServer, Statecar) {
    let redis = RedisServer::start();
    let sc = Statecar::start(redis.port(), extra_toml);
    (redis, sc)
}

// ---------------------------------------------------------------------------------------------
// async helpers
// ---------------------------------------------------------------------------------------------

/// Awaits `fut`, failing the test with `what` if it takes longer than [`WAIT`].
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

/// Polls `check` every 20 ms until it returns true, failing the test after [`WAIT`].
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("condition not reached after {WAIT:?}: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A redis-rs multiplexed connection with generous timeouts (redis-rs defaults to 500 ms).
pub async fn client(port: u16) -> redis::aio::MultiplexedConnection {
    client_url(&format!("redis://127.0.0.1:{port}/")).await
}

/// Like [`client`] for any URL (credentials, db, `?protocol=resp3`).
pub async fn client_url(url: &str) -> redis::aio::MultiplexedConnection {
    let c = redis::Client::open(url).expect("redis url");
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(WAIT))
        .set_response_timeout(Some(WAIT));
    within(
        &format!("connect to {url}"),
        c.get_multiplexed_async_connection_with_config(&cfg),
    )
    .await
    .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// raw RESP
// ---------------------------------------------------------------------------------------------

/// One RESP2/RESP3 frame as received.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+...`
    Simple(String),
    /// `-...` (without the dash)
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` with data
    Bulk(Vec<u8>),
    /// `$-1`
    NullBulk,
    /// `*-1`
    NullArray,
    /// RESP3 `_`
    Null,
    /// `*n`
    Array(Vec<Frame>),
    /// RESP3 `%n`
    Map(Vec<(Frame, Frame)>),
    /// RESP3 `~n`
    Set(Vec<Frame>),
    /// RESP3 `>n`
    Push(Vec<Frame>),
    /// RESP3 `,x`
    Double(String),
    /// RESP3 `#t` / `#f`
    Bool(bool),
    /// RESP3 `(n`
    BigNum(String),
    /// RESP3 `=n` (format, text)
    Verbatim(String, Vec<u8>),
    /// RESP3 `|n` (the attribute itself; the annotated value is the next frame)
    Attribute(Vec<(Frame, Frame)>),
    /// RESP3 `!n`
    BlobError(Vec<u8>),
}

/// `+OK`
pub fn ok() -> Frame {
    Frame::Simple("OK".into())
}

/// A bulk string frame.
pub fn bulk(s: impl AsRef<[u8]>) -> Frame {
    Frame::Bulk(s.as_ref().to_vec())
}

/// An array of bulk strings.
pub fn bulks(items: &[&str]) -> Frame {
    Frame::Array(items.iter().map(bulk).collect())
}

/// An integer frame.
pub fn int(n: i64) -> Frame {
    Frame::Int(n)
}

/// The value of an integer reply (panics on anything else).
pub fn as_int(f: &Frame) -> i64 {
    match f {
        Frame::Int(n) => *n,
        other => panic!("expected an integer reply, got {other:?}"),
    }
}

/// An error frame with exactly this text.
pub fn err(s: &str) -> Frame {
    Frame::Error(s.into())
}

impl Frame {
    /// The error text, if this is an error.
    pub fn error_text(&self) -> Option<&str> {
        match self {
            Frame::Error(s) => Some(s),
            _ => None,
        }
    }

    /// True for an error frame.
    pub fn is_error(&self) -> bool {
        matches!(self, Frame::Error(_) | Frame::BlobError(_))
    }

    /// Bulk/simple/verbatim contents as a string (panics otherwise).
    pub fn text(&self) -> String {
        match self {
            Frame::Bulk(b) | Frame::Verbatim(_, b) => String::from_utf8_lossy(b).into_owned(),
            Frame::Simple(s) => s.clone(),
            other => panic!("expected a string reply, got {other:?}"),
        }
    }

    /// The map entries of a RESP3 map, or of a RESP2 flat key/value array.
    pub fn pairs(&self) -> Vec<(Frame, Frame)> {
        match self {
            Frame::Map(m) => m.clone(),
            Frame::Array(a) => a.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect(),
            other => panic!("expected a map, got {other:?}"),
        }
    }

    /// Looks up a string key in a map/flat array.
    pub fn get(&self, key: &str) -> Option<Frame> {
        self.pairs().into_iter().find_map(|(k, v)| {
            let ks = match &k {
                Frame::Bulk(b) | Frame::Verbatim(_, b) => String::from_utf8_lossy(b).into_owned(),
                Frame::Simple(s) => s.clone(),
                _ => return None,
            };
            (ks == key).then_some(v)
        })
    }
}

/// Encodes one command as a RESP multibulk.
pub fn encode<A: AsRef<[u8]>>(args: &[A]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        let a = a.as_ref();
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn line(buf: &[u8], pos: usize) -> Result<Option<(&[u8], usize)>, String> {
    match buf[pos..].windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&buf[pos..pos + i], pos + i + 2))),
        None => Ok(None),
    }
}

fn num(l: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(l)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad length {:?}", String::from_utf8_lossy(l)))
}

/// Parses one frame from `buf[pos..]`: `Ok(None)` if incomplete, else the frame and the end.
pub fn parse_frame(buf: &[u8], pos: usize) -> Result<Option<(Frame, usize)>, String> {
    if pos >= buf.len() {
        return Ok(None);
    }
    let kind = buf[pos];
    let Some((l, next)) = line(buf, pos + 1)? else {
        return Ok(None);
    };
    let text = || String::from_utf8_lossy(l).into_owned();
    let blob = |n: i64| -> Option<(Vec<u8>, usize)> {
        let n = n as usize;
        if buf.len() < next + n + 2 {
            return None;
        }
        Some((buf[next..next + n].to_vec(), next + n + 2))
    };
    macro_rules! items {
        ($n:expr) => {{
            let mut v = Vec::new();
            let mut p = next;
            for _ in 0..$n {
                match parse_frame(buf, p)? {
                    Some((f, e)) => {
                        v.push(f);
                        p = e;
                    }
                    None => return Ok(None),
                }
            }
            (v, p)
        }};
    }
    let pairs = |v: Vec<Frame>| -> Vec<(Frame, Frame)> {
        v.chunks(2).map(|c| (c[0].clone(), c[1].clone())).collect()
    };
    Ok(Some(match kind {
        b'+' => (Frame::Simple(text()), next),
        b'-' => (Frame::Error(text()), next),
        b':' => (Frame::Int(num(l)?), next),
        b'_' => (Frame::Null, next),
        b',' => (Frame::Double(text()), next),
        b'#' => (Frame::Bool(l == b"t"), next),
        b'(' => (Frame::BigNum(text()), next),
        b'$' | b'=' | b'!' => {
            let n = num(l)?;
            if n < 0 {
                (Frame::NullBulk, next)
            } else {
                let Some((data, end)) = blob(n) else {
                    return Ok(None);
                };
                let f = match kind {
                    b'$' => Frame::Bulk(data),
                    b'!' => Frame::BlobError(data),
                    _ => {
                        let fmt = String::from_utf8_lossy(&data[..3.min(data.len())]).into_owned();
                        Frame::Verbatim(fmt, data[4.min(data.len())..].to_vec())
                    }
                };
                (f, end)
            }
        }
        b'*' | b'~' | b'>' => {
            let n = num(l)?;
            if n < 0 {
                (Frame::NullArray, next)
            } else {
                let (v, end) = items!(n);
                let f = match kind {
                    b'*' => Frame::Array(v),
                    b'~' => Frame::Set(v),
                    _ => Frame::Push(v),
                };
                (f, end)
            }
        }
        b'%' | b'|' => {
            let n = num(l)?;
            let (v, end) = items!(n * 2);
            if kind == b'%' {
                (Frame::Map(pairs(v)), end)
            } else {
                (Frame::Attribute(pairs(v)), end)
            }
        }
        other => return Err(format!("unexpected type byte {:?}", other as char)),
    }))
}

/// Why a read ended without a frame.
#[derive(Debug, PartialEq)]
pub enum ReadEnd {
    /// The peer closed the connection (or reset it).
    Closed,
    /// Nothing complete arrived within the deadline.
    Timeout,
}

/// A plain TCP connection speaking RESP by hand.
pub struct RawConn {
    pub stream: tokio::net::TcpStream,
    buf: Vec<u8>,
    start: usize,
    port: u16,
}

impl RawConn {
    /// Connects to 127.0.0.1:port.
    pub async fn connect(port: u16) -> RawConn {
        let stream = within(
            &format!("connect to port {port}"),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        .unwrap_or_else(|e| panic!("connect to {port}: {e}"));
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            buf: Vec::new(),
            start: 0,
            port,
        }
    }

    /// Writes raw bytes.
    pub async fn send(&mut self, bytes: &[u8]) {
        within("write to socket", self.stream.write_all(bytes))
            .await
            .unwrap_or_else(|e| panic!("write to port {}: {e}", self.port));
    }

    /// Writes raw bytes; an error (the peer closed) is returned instead of failing the test.
    pub async fn try_send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        within("write to socket", self.stream.write_all(bytes)).await
    }

    /// Writes one command.
    pub async fn send_cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) {
        self.send(&encode(args)).await;
    }

    /// Reads one frame, failing the test on EOF or after [`WAIT`].
    pub async fn read(&mut self) -> Frame {
        match self.read_for(WAIT).await {
            Ok(f) => f,
            Err(e) => panic!("expected a reply on port {}, got {e:?}", self.port),
        }
    }

    /// Reads one frame's raw bytes.
    pub async fn read_raw(&mut self) -> Vec<u8> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        let start = self.start;
        self.read_keep().await;
        self.buf[start..self.start].to_vec()
    }

    async fn read_keep(&mut self) -> Frame {
        // Like read(), but the consumed bytes stay in the buffer until the next read.
        loop {
            match parse_frame(&self.buf, self.start) {
                Ok(Some((f, end))) => {
                    self.start = end;
                    return f;
                }
                Ok(None) => {}
                Err(e) => panic!("unparseable reply: {e}"),
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = within("read from socket", self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|e| panic!("read from port {}: {e}", self.port));
            assert!(n > 0, "connection closed before a whole reply arrived");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads one frame within `limit`.
    pub async fn read_for(&mut self, limit: Duration) -> Result<Frame, ReadEnd> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.start > 0 && self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            }
            match parse_frame(&self.buf, self.start) {
                Ok(Some((f, end))) => {
                    self.start = end;
                    return Ok(f);
                }
                Ok(None) => {}
                Err(e) => panic!(
                    "unparseable reply on port {}: {e}: {:?}",
                    self.port,
                    String::from_utf8_lossy(&self.buf[self.start..])
                ),
            }
            let mut chunk = vec![0u8; 256 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(ReadEnd::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(ReadEnd::Closed),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads one frame; `Err(Closed)` on EOF/reset (fails the test after [`WAIT`]).
    pub async fn try_read(&mut self) -> Result<Frame, ReadEnd> {
        match self.read_for(WAIT).await {
            Err(ReadEnd::Timeout) => panic!("no reply within {WAIT:?} on port {}", self.port),
            r => r,
        }
    }

    /// Reads `n` frames.
    pub async fn read_n(&mut self, n: usize) -> Vec<Frame> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.read().await);
        }
        v
    }

    /// Sends a command and reads its reply.
    pub async fn cmd<A: AsRef<[u8]>>(&mut self, args: &[A]) -> Frame {
        self.send_cmd(args).await;
        self.read().await
    }

    /// Asserts that the peer closes the connection without sending any further frame.
    pub async fn expect_closed(&mut self) {
        match self.read_for(WAIT).await {
            Err(ReadEnd::Closed) => {}
            Err(ReadEnd::Timeout) => panic!(
                "connection to port {} still open after {WAIT:?} (expected it closed)",
                self.port
            ),
            Ok(f) => panic!("expected the connection closed, got another reply {f:?}"),
        }
    }

    /// Reads whatever arrives until EOF (bounded by [`WAIT`]); returns the unparsed bytes.
    pub async fn read_to_eof(&mut self) -> Vec<u8> {
        let mut out = self.buf[self.start..].to_vec();
        self.buf.clear();
        self.start = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!(
                    "connection to port {} not closed within {WAIT:?}",
                    self.port
                ),
                Ok(Ok(0)) | Ok(Err(_)) => return out,
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Like [`RawConn::read_to_eof`], but `Err(bytes so far)` if the peer has not closed
    /// within `limit`.
    pub async fn try_read_to_eof(&mut self, limit: Duration) -> Result<Vec<u8>, Vec<u8>> {
        let mut out = self.buf[self.start..].to_vec();
        self.buf.clear();
        self.start = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(out),
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(out),
                Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// True if nothing arrives within `limit` (used only to show that a reply is absent,
    /// after which a sentinel command proves ordering).
    pub async fn nothing_pending(&mut self, limit: Duration) -> bool {
        matches!(self.read_for(limit).await, Err(ReadEnd::Timeout))
    }
}

/// Parses every complete frame in `bytes` (ignores an incomplete tail).
pub fn parse_all(bytes: &[u8]) -> Result<Vec<Frame>, String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((f, end)) = parse_frame(bytes, pos)? {
        out.push(f);
        pos = end;
    }
    Ok(out)
}

/// `INFO <section>` field value from a connection (direct to redis, usually).
pub async fn info_field(conn: &mut RawConn, section: &str, field: &str) -> Option<String> {
    let info = conn.cmd(&["INFO", section]).await.text();
    info.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// Waits until redis (direct connection) reports at least `n` blocked clients.
pub async fn wait_blocked(direct: &mut RawConn, n: usize) {
    eventually(&format!("{n} client(s) blocked in redis"), async || {
        let v = info_field(direct, "clients", "blocked_clients").await;
        v.and_then(|s| s.parse::<usize>().ok()).unwrap_or(0) >= n
    })
    .await;
}

/// Number of clients connected to redis, per `CLIENT LIST`.
pub async fn redis_client_count(direct: &mut RawConn) -> usize {
    direct.cmd(&["CLIENT", "LIST"]).await.text().lines().count()
}

/// Deterministic pseudo-random bytes (xorshift), so failures are reproducible.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}
