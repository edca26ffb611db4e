//! The `statecar` binary: flags, configuration, logging, signals. The work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use statecar::config::{Config, FileConfig, Overrides};

/// A Redis-protocol sidecar that compresses, checksums and versions configured state keys.
#[derive(Parser, Debug)]
#[command(name = "statecar", version)]
struct Cli {
    /// TOML configuration file (optional: without it statecar is a transparent proxy).
    #[arg(long, env = "STATECAR_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Client listener address, e.g. 127.0.0.1:6380.
    #[arg(long, env = "STATECAR_LISTEN", global = true)]
    listen: Option<String>,
    /// Upstream Redis URL, redis://[user:password@]host:port[/db].
    #[arg(long, env = "STATECAR_UPSTREAM", global = true)]
    upstream: Option<String>,
    /// Upstream password (overrides the URL's; for Kubernetes Secrets).
    #[arg(
        long,
        env = "STATECAR_UPSTREAM_PASSWORD",
        hide_env_values = true,
        global = true
    )]
    upstream_password: Option<String>,
    /// Metrics and health listener, e.g. 127.0.0.1:9121.
    #[arg(long, env = "STATECAR_METRICS_LISTEN", global = true)]
    metrics_listen: Option<String>,
    /// Log level or tracing filter (error, warn, info, debug, trace).
    #[arg(long, env = "STATECAR_LOG_LEVEL", global = true)]
    log_level: Option<String>,
    /// Log format: text or json.
    #[arg(long, env = "STATECAR_LOG_FORMAT", global = true)]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the proxy (the default).
    Run,
    /// Run the proxy for development: in front of the configured upstream if it answers,
    /// otherwise in front of a private redis-server that statecar starts on a free port (with
    /// its data in --data-dir) and stops when it exits.
    Dev {
        /// Where the private redis-server keeps its data and log.
        #[arg(long, env = "STATECAR_DEV_DATA_DIR", default_value = ".statecar-dev")]
        data_dir: PathBuf,
    },
    /// Validate the configuration and exit.
    CheckConfig,
    /// Read a state key straight from Redis (no proxy), verify it and print it: the value's
    /// bytes go to stdout, its metadata to stderr.
    Decode {
        /// The key.
        key: String,
        /// Print this version from the history instead of the current value.
        #[arg(long)]
        version: Option<u64>,
        /// List the versions in the history, verified, instead of printing a value.
        #[arg(long)]
        versions: bool,
    },
    /// Verify every state key in Redis (current values and histories); exits 1 if any is damaged.
    Verify {
        /// Only keys matching this glob pattern.
        #[arg(long = "match")]
        pattern: Option<String>,
    },
}

fn overrides(cli: &Cli) -> Overrides {
    Overrides {
        listen: cli.listen.clone(),
        upstream: cli.upstream.clone(),
        upstream_password: cli.upstream_password.clone(),
        metrics_listen: cli.metrics_listen.clone(),
        log_level: cli.log_level.clone(),
        log_format: cli.log_format.clone(),
    }
}

fn load_from(path: Option<&PathBuf>, o: &Overrides) -> Result<Config, String> {
    let file = match path {
        Some(p) => FileConfig::load(p).map_err(|e| e.to_string())?,
        None => FileConfig::default(),
    };
    Config::build(file, o).map_err(|e| e.to_string())
}

fn load(cli: &Cli) -> Result<Config, String> {
    load_from(cli.config.as_ref(), &overrides(cli))
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    let cfg = match load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("statecar: {e}");
            return ExitCode::from(2);
        }
    };
    statecar::telemetry::init_logging(&cfg.log.level, cfg.log.json);
    match cli.command.take().unwrap_or(Cmd::Run) {
        Cmd::CheckConfig => {
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Cmd::Decode {
            key,
            version,
            versions,
        } => offline(
            || async move { statecar::offline::decode(&cfg, &key, version, versions).await },
        ),
        Cmd::Verify { pattern } => {
            offline(|| async move { statecar::offline::verify(&cfg, pattern.as_deref()).await })
        }
        Cmd::Run => serve(cfg, &cli, None),
        Cmd::Dev { data_dir } => {
            let dev = if statecar::dev::upstream_reachable(&cfg) {
                None
            } else {
                // Spawned here, on the main thread, which lives as long as the process: the
                // child's PDEATHSIG follows the thread that forked it.
                match statecar::dev::start_redis(&data_dir, &cfg.upstream.url.redacted()) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        eprintln!("statecar: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            };
            let mut cfg = cfg;
            let port = dev.as_ref().map(|d| d.port());
            if let Some(p) = port {
                statecar::dev::point_at(&mut cfg, p);
            }
            print!("{}", statecar::dev::banner(&cfg, dev.as_ref()));
            let code = serve(cfg, &cli, port);
            if let Some(d) = dev {
                d.stop();
            }
            code
        }
    }
}

/// Runs the proxy until SIGTERM/SIGINT. In dev mode (`dev_port`) every reloaded configuration is
/// pointed at the private Redis again.
fn serve(cfg: Config, cli: &Cli, dev_port: Option<u16>) -> ExitCode {
    // One thread by default, like twemproxy: a sidecar shares its node with the app (and
    // often Redis), and one thread saves every cross-thread wake-up per command.
    let mut rt = if cfg.process.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if cfg.process.worker_threads > 1 {
            b.worker_threads(cfg.process.worker_threads);
        }
        b
    };
    rt.enable_all()
        .max_blocking_threads(statecar::blocking_threads());
    let rt = match rt.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("statecar: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let path = cli.config.clone();
    let o = overrides(cli);
    let reload: statecar::Reloader = Box::new(move || {
        let mut c = load_from(path.as_ref(), &o)?;
        if let Some(p) = dev_port {
            statecar::dev::point_at(&mut c, p);
        }
        Ok(c)
    });
    match rt.block_on(statecar::run(Arc::new(cfg), Some(reload))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("statecar: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an offline command on a small runtime and turns its result into an exit code.
fn offline<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => ExitCode::from(rt.block_on(f()).clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("statecar: cannot start runtime: {e}");
            ExitCode::FAILURE
        }
    }
}
