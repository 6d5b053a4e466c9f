//! `vbm serve`: the service — REST API, scheduler, runner and metrics on one address.
//!
//! Prints one JSON line `{"listening": "ADDR"}` on stdout once it accepts connections (so that
//! `--listen 127.0.0.1:0` can be used by scripts and tests), then logs to stderr. SIGTERM or
//! SIGINT stop it gracefully: running jobs end `cancelled` with a reason (F8).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use vbm_server::backend::engine::{EngineBackend, EngineSettings};
use vbm_server::clock::SystemClock;
use vbm_server::config::{Config, LogFormat};
use vbm_server::{AppState, Options};

use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Data directory: state database, master key, database copies (local disk, not NFS).
    #[arg(long, env = "VBM_DATA")]
    data: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080 (port 0 = any free port).
    #[arg(long, env = "VBM_LISTEN")]
    listen: Option<String>,
    /// Configuration file (TOML, see deploy/vbm.toml).
    #[arg(long, env = "VBM_CONFIG")]
    config: Option<PathBuf>,
    /// Backup repository directory.
    #[arg(long, env = "VBM_REPO")]
    repo: Option<PathBuf>,
    /// Create the repository if its directory is absent or empty (never in a non-empty one).
    #[arg(long, env = "VBM_INIT_REPO")]
    init_repo: bool,
    /// Log format: text or json (overrides the config file).
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    match &args.config {
        Some(path) => Ok(Config::load(path)?),
        None => Ok(Config::default()),
    }
}

/// Installs the service's log subscriber (level from `VBM_LOG`, else the config file; text or
/// JSON lines on stderr). Runs before the CLI's default subscriber, which then stays unused.
pub(crate) fn init_logging(args: &Args) {
    use tracing_subscriber::EnvFilter;
    let config = load_config(args).unwrap_or_default();
    let level = std::env::var("VBM_LOG").unwrap_or(config.log.level);
    let json = match args.log_format.as_deref() {
        Some(f) => f == "json",
        None => config.log.format == LogFormat::Json,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(level))
        .with_writer(std::io::stderr)
        .with_ansi(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

pub(crate) fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = load_config(&args)?;
    let data_dir = args
        .data
        .clone()
        .or_else(|| config.data_dir.clone())
        .context(
            "no data directory: pass --data DIR (or VBM_DATA, or data_dir in the config file)",
        )?;
    let listen = args
        .listen
        .clone()
        .or_else(|| config.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".to_owned());
    let settings = EngineSettings {
        repo: args.repo.clone().or_else(|| config.repo.clone()),
        key_file: config.repo_key_file.clone(),
        init_repo: args.init_repo,
        streams: config.engine.streams as usize,
        workers: match config.engine.workers {
            0 => EngineSettings::default().workers,
            n => n as usize,
        },
        max_request_bytes: config.engine.max_request_bytes,
        gc_grace: config.gc.grace_secs.map(std::time::Duration::from_secs),
    };
    let options = Options {
        data_dir,
        config,
        master_key: std::env::var("VBM_MASTER_KEY").ok(),
    };
    let runtime = vbm_server::runtime()?;
    runtime.block_on(async move {
        let backend = EngineBackend::with_settings(settings);
        if let Err(e) = backend.open_repository() {
            // Not fatal: the API, schedules and history work without it, and every use retries.
            tracing::error!(error = %e, "the backup repository is not usable");
        }
        let backend = Arc::new(backend);
        let state = AppState::open(options, backend, Arc::new(SystemClock))?;
        let listener = tokio::net::TcpListener::bind(&listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let addr = listener.local_addr()?;
        output::line(&serde_json::json!({ "listening": addr.to_string() }).to_string())?;
        tracing::info!(%addr, maintenance = state.ctx().db.maintenance().is_some(), "vbm serve listening");
        vbm_server::serve(listener, state, vbm_server::shutdown_signal()).await?;
        tracing::info!("vbm serve stopped");
        Ok(ExitCode::SUCCESS)
    })
}
