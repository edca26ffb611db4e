//! `statecar dev`: statecar with a Redis of its own, for a first run and for development.
//!
//! When the configured upstream answers, dev mode just fronts it, like `statecar run`. When it
//! does not (a fresh machine, a container without an init system to start Redis), statecar
//! starts a private `redis-server` on a free loopback port with its data in a local folder,
//! fronts that one instead, and stops it when statecar stops.
//!
//! The child must never outlive statecar, however statecar ends:
//! - SIGTERM/SIGINT: statecar drains, then sends the child SIGTERM (Redis saves its data and
//!   exits) and waits for it ([`DevRedis::stop`]).
//! - statecar killed outright (SIGKILL, a crash): the kernel sends the child SIGTERM, because it
//!   asked for that with `prctl(PR_SET_PDEATHSIG)` between fork and exec. That signal follows the
//!   *thread* that forked, so the child is spawned from the main thread, which lives as long as
//!   the process.
//!
//! The child gets a process group of its own, so a Ctrl-C in the terminal reaches statecar only:
//! statecar finishes what is in flight before its Redis goes away.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{Config, Mode};
use crate::upstream::url::{Addr, UpstreamUrl};

/// How long the private Redis may take to answer PING after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the private Redis may take to save and exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a reachability check of the configured upstream waits per address.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Why dev mode could not start its Redis.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// The data folder could not be created.
    #[error("dev: cannot create the data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `redis-server` could not be run at all.
    #[error(
        "dev: the configured upstream {upstream} does not answer, and redis-server cannot be run to start one ({source}); install Redis (Debian/Ubuntu: apt-get install redis-server) or point --upstream at a running Redis"
    )]
    Spawn {
        /// The configured upstream that did not answer.
        upstream: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// `redis-server` started but exited or never answered.
    #[error("dev: redis-server on 127.0.0.1:{port} {what}; its log ({log}) ends with:\n{tail}")]
    NotReady {
        /// Its port.
        port: u16,
        /// What went wrong.
        what: String,
        /// Its log file.
        log: String,
        /// The last lines of that log.
        tail: String,
    },
    /// No free port could be found.
    #[error("dev: cannot find a free port on 127.0.0.1: {0}")]
    NoPort(std::io::Error),
}

/// A private `redis-server` child process.
pub struct DevRedis {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    /// What the configured upstream was (shown in the banner).
    configured: String,
}

impl DevRedis {
    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (Redis saves its data and exits), waits, and kills it if it is still there
    /// after [`STOP_TIMEOUT`].
    pub fn stop(mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet (so the
        // pid cannot have been reused).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                tracing::info!(pid, "dev redis-server stopped");
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(
            pid,
            "dev redis-server did not stop after SIGTERM; killing it"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DevRedis {
    fn drop(&mut self) {
        // Only reached when stop() was not called (an early return on an error path).
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Points `cfg` at the private Redis on `port` (a standalone server, no TLS, no password),
/// keeping the configured database index. Used at start and on every SIGHUP reload.
pub fn point_at(cfg: &mut Config, port: u16) {
    cfg.upstream.url = UpstreamUrl {
        tls: false,
        host: "127.0.0.1".to_string(),
        port,
        username: None,
        password: None,
        db: cfg.upstream.url.db,
    };
    cfg.upstream.tls = None;
    cfg.upstream.mode = Mode::Standalone;
}

/// The addresses that tell whether the configured upstream is there.
fn probe_addrs(cfg: &Config) -> Vec<Addr> {
    match &cfg.upstream.mode {
        Mode::Standalone => vec![cfg.upstream.url.node()],
        Mode::Cluster { seeds } => seeds.clone(),
        Mode::Sentinel { sentinels, .. } => sentinels.clone(),
    }
}

/// Whether something that speaks RESP answers at `addr`: a reply line to PING (`+PONG`, or an
/// error such as `-NOAUTH`, which still means a Redis is there). Over TLS a connection is enough.
fn answers(addr: &Addr, tls: bool) -> bool {
    let Ok(addrs) = (addr.host.as_str(), addr.port).to_socket_addrs() else {
        return false;
    };
    for sa in addrs {
        let Ok(mut s) = TcpStream::connect_timeout(&sa, PROBE_TIMEOUT) else {
            continue;
        };
        if tls {
            return true;
        }
        let _ = s.set_read_timeout(Some(PROBE_TIMEOUT));
        let _ = s.set_write_timeout(Some(PROBE_TIMEOUT));
        if s.write_all(b"*1\r\n$4\r\nPING\r\n").is_err() {
            continue;
        }
        let mut first = [0u8; 1];
        if matches!(s.read(&mut first), Ok(1) if first[0] == b'+' || first[0] == b'-') {
            return true;
        }
    }
    false
}

/// True when the configured upstream (or one of its seeds or sentinels) answers.
pub fn upstream_reachable(cfg: &Config) -> bool {
    let tls = cfg.upstream.tls.is_some();
    probe_addrs(cfg).iter().any(|a| answers(a, tls))
}

fn free_port() -> Result<u16, DevError> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(DevError::NoPort)?;
    l.local_addr().map(|a| a.port()).map_err(DevError::NoPort)
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn ping(port: u16) -> bool {
    answers(
        &Addr {
            host: "127.0.0.1".to_string(),
            port,
        },
        false,
    )
}

/// Starts `redis-server` on a free port with its data in `data_dir` and waits until it answers.
///
/// Call from the main thread (see the module comment on PDEATHSIG).
pub fn start_redis(data_dir: &Path, configured: &str) -> Result<DevRedis, DevError> {
    std::fs::create_dir_all(data_dir).map_err(|source| DevError::DataDir {
        path: data_dir.display().to_string(),
        source,
    })?;
    let data_dir = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    let log = data_dir.join("redis.log");
    // Another process may take the port between our probe and Redis's bind: try a few.
    let mut last = None;
    for _ in 0..5 {
        let port = free_port()?;
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--daemonize", "no"])
            .arg("--dir")
            .arg(&data_dir)
            .arg("--logfile")
            .arg(&log)
            // Redis's own default snapshot points stay in force: the data is saved now and
            // then, and on the SIGTERM that stops it, so the next dev session finds it again.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: between fork and exec only async-signal-safe calls (setpgid, prctl, getppid)
        // and errors that do not allocate.
        unsafe {
            cmd.pre_exec(move || {
                libc::setpgid(0, 0);
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // statecar may have died before the prctl took effect: then nobody would
                // signal this child, so do not start it.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| DevError::Spawn {
            upstream: configured.to_string(),
            source,
        })?;
        let mut dev = DevRedis {
            child,
            port,
            data_dir: data_dir.clone(),
            log: log.clone(),
            configured: configured.to_string(),
        };
        let deadline = Instant::now() + START_TIMEOUT;
        let err = loop {
            if let Ok(Some(st)) = dev.child.try_wait() {
                break DevError::NotReady {
                    port,
                    what: format!("exited at start ({st})"),
                    log: log.display().to_string(),
                    tail: log_tail(&log),
                };
            }
            if ping(port) {
                return Ok(dev);
            }
            if Instant::now() > deadline {
                break DevError::NotReady {
                    port,
                    what: format!("did not answer PING within {}s", START_TIMEOUT.as_secs()),
                    log: log.display().to_string(),
                    tail: log_tail(&log),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(dev);
        let port_taken = matches!(&err, DevError::NotReady { tail, .. } if tail.contains("Address already in use"));
        if !port_taken {
            return Err(err);
        }
        last = Some(err);
    }
    Err(last.unwrap_or_else(|| DevError::NoPort(std::io::Error::other("no port tried"))))
}

/// What `statecar dev` prints once it knows its upstream: where everything is.
pub fn banner(cfg: &Config, dev: Option<&DevRedis>) -> String {
    let mut out = String::from("statecar dev\n");
    let line = |out: &mut String, what: &str, text: String| {
        out.push_str(&format!("  {what:<10} {text}\n"));
    };
    line(
        &mut out,
        "statecar",
        format!(
            "{}   (try: redis-cli -p {} set session:1 x)",
            cfg.listen,
            cfg.listen.port()
        ),
    );
    match dev {
        Some(d) => {
            line(
                &mut out,
                "redis",
                format!(
                    "redis://127.0.0.1:{}   (redis-server pid {}, started by statecar because {} does not answer; it stops with statecar)",
                    d.port,
                    d.pid(),
                    d.configured
                ),
            );
            line(&mut out, "data", d.data_dir.display().to_string());
            line(&mut out, "redis log", d.log.display().to_string());
        }
        None => line(
            &mut out,
            "redis",
            format!(
                "{}   (the configured upstream, {:?} mode; it answers, so dev mode fronts it)",
                cfg.upstream.url.redacted(),
                cfg.upstream.mode
            ),
        ),
    }
    match cfg.metrics_listen {
        Some(m) => line(&mut out, "metrics", format!("http://{m}/metrics")),
        None => line(&mut out, "metrics", "off ([metrics] listen)".to_string()),
    }
    for r in cfg.rules.iter() {
        let history = if r.versioning {
            format!("{} versions", r.max_versions)
        } else {
            "no history".to_string()
        };
        let ttl = match r.default_ttl_ms {
            Some(ms) => format!(", default TTL {}s", ms / 1000),
            None => String::new(),
        };
        line(
            &mut out,
            "state key",
            format!(
                "{} ({}, {history}{ttl})",
                String::from_utf8_lossy(&r.pattern),
                r.codec
            ),
        );
    }
    out.push_str("  Ctrl-C stops statecar");
    if dev.is_some() {
        out.push_str(" and its redis-server");
    }
    out.push('\n');
    out
}
