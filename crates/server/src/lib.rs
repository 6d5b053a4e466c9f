//! # vbm-server — the service
//!
//! `vbm serve`: the state database (SQLite, WAL, embedded migrations), vCenter connections with
//! encrypted credentials, jobs and schedules, the job runner, retention after each backup, the
//! REST API under `/api/v1` with its OpenAPI document, authentication, and Prometheus metrics.
//!
//! It must not know how a VM is backed up (that is `vbm-engine`) nor parse vSphere or repository
//! formats itself; everything it needs from them passes through [`backend::Backend`]. Nothing
//! below it depends on it.
//!
//! Shape (STYLE.md): [`AppState`] is cheap to clone, [`router`] is a pure function of it, and
//! [`serve`] takes a bound listener and a shutdown future.

pub mod api;
pub mod backend;
pub mod clock;
pub mod config;
pub mod context;
pub mod crypto;
pub mod db;
pub mod error;
pub mod failpoint;
pub mod ids;
pub mod jobs;
pub mod metrics;
pub mod run;
pub mod runner;
pub mod scheduler;
pub mod vcenter;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use api::router;
use backend::{Backend, VmSummary};
use clock::Clock;
use config::Config;
use context::Context;
use crypto::{MasterKey, Secret};
use db::{ApiKeyRecord, Db};
use ids::VcenterId;
use metrics::{JobVm, Metrics};
use run::{NewRun, RunKind, Trigger};
use runner::Runner;

/// Name of the database file in the data directory.
pub const DB_FILE: &str = "vbm.db";
/// Name of the master key file in the data directory.
pub const KEY_FILE: &str = "master.key";

/// Why the service cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The data directory cannot be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Database.
    #[error(transparent)]
    Db(#[from] db::Error),
    /// Master key.
    #[error(transparent)]
    Crypto(#[from] crypto::Error),
}

/// How to open the service state.
#[derive(Debug, Clone)]
pub struct Options {
    /// Data directory.
    pub data_dir: PathBuf,
    /// Configuration.
    pub config: Config,
    /// Content of `VBM_MASTER_KEY`, if set.
    pub master_key: Option<String>,
}

const INVENTORY_TTL: Duration = Duration::from_secs(30);

type InventoryCache = Mutex<HashMap<VcenterId, (Instant, Arc<Vec<VmSummary>>)>>;

#[derive(Debug)]
struct Inner {
    ctx: Context,
    runner: Runner,
    config: Config,
    scheduler_wake: Arc<Notify>,
    inventory: InventoryCache,
}

/// The application state shared by handlers and background tasks; cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

fn open_data_dir(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        })
}

impl AppState {
    /// Opens the database and master key in the data directory and builds the state around a
    /// backend and a clock.
    ///
    /// # Errors
    /// Unusable data directory, database or key.
    pub fn open(
        options: Options,
        backend: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StartError> {
        open_data_dir(&options.data_dir)?;
        let db = Db::open(&options.data_dir.join(DB_FILE))?;
        let key = MasterKey::load(
            options.master_key.as_deref(),
            &options.data_dir.join(KEY_FILE),
        )?;
        let ctx = Context {
            db,
            backend,
            clock,
            key,
            metrics: Arc::new(Metrics::new()),
            limits: options.config.limits.clone(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                runner: Runner::new(ctx.clone()),
                ctx,
                config: options.config,
                scheduler_wake: Arc::new(Notify::new()),
                inventory: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// Shared parts.
    #[must_use]
    pub fn ctx(&self) -> &Context {
        &self.inner.ctx
    }

    /// The runner.
    #[must_use]
    pub fn runner(&self) -> &Runner {
        &self.inner.runner
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Makes the scheduler re-read schedules now.
    pub fn wake_scheduler(&self) {
        self.inner.scheduler_wake.notify_one();
    }

    /// The VMs of a vCenter, cached for 30 s.
    ///
    /// # Errors
    /// Not found, backend errors.
    pub async fn inventory(&self, id: &VcenterId) -> error::Result<Arc<Vec<VmSummary>>> {
        if let Ok(cache) = self.inner.inventory.lock()
            && let Some((at, vms)) = cache.get(id)
            && at.elapsed() < INVENTORY_TTL
        {
            return Ok(Arc::clone(vms));
        }
        let target = self.ctx().target(id.clone()).await?;
        let vms = Arc::new(self.ctx().backend.list_vms(target).await?);
        if let Ok(mut cache) = self.inner.inventory.lock() {
            cache.insert(id.clone(), (Instant::now(), Arc::clone(&vms)));
        }
        Ok(vms)
    }

    /// Drops a vCenter's cached inventory.
    pub fn forget_inventory(&self, id: &VcenterId) {
        if let Ok(mut cache) = self.inner.inventory.lock() {
            cache.remove(id);
        }
    }

    /// Makes the catalog equal to the repository (R4, F2). Returns (added, removed).
    ///
    /// # Errors
    /// Backend or database errors.
    pub async fn sync_catalog(&self) -> error::Result<(usize, usize)> {
        self.ctx().sync_catalog().await
    }

    async fn seed_metrics(&self) {
        let jobs: HashMap<String, String> = self
            .ctx()
            .db
            .job_all()
            .await
            .map(|all| {
                all.into_iter()
                    .map(|j| (j.job.id.to_string(), j.job.spec.name))
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(rows) = self.ctx().db.backup_last_success().await {
            for (job_id, vm, at) in rows {
                let job = jobs.get(&job_id).cloned().unwrap_or(job_id);
                self.ctx()
                    .metrics
                    .seed_last_success(&JobVm { job, vm }, at.as_second());
            }
        }
    }

    /// Recomputes `vbm_backup_overdue` for every job and protected VM (R3), and the repository
    /// gauges when a repository is configured.
    pub async fn refresh_metrics(&self) {
        let ctx = self.ctx();
        let now = ctx.clock.now();
        let mut values = Vec::new();
        if let Ok(jobs) = ctx.db.job_all().await {
            for row in jobs {
                let Ok(seen) = ctx.db.job_seen_vms(row.job.id.clone()).await else {
                    continue;
                };
                let p = jobs::protection::assess(&row.job, seen, now);
                for vm in p.vms {
                    values.push((
                        JobVm {
                            job: row.job.spec.name.clone(),
                            vm: vm.vm_name,
                        },
                        vm.overdue,
                    ));
                }
            }
        }
        ctx.metrics.set_overdue(values);
    }

    /// Startup work before serving: the catalog first (so that recovery sees backups a crash
    /// committed but did not record, F2), then crash recovery, then metrics seeding.
    async fn start(&self) {
        if self.ctx().db.maintenance().is_some() {
            return;
        }
        match self.sync_catalog().await {
            Ok((added, removed)) if added + removed > 0 => {
                tracing::info!(added, removed, "catalog synchronised with the repository");
            }
            Ok(_) => {}
            Err(e) => tracing::info!(reason = %e, "catalog not synchronised"),
        }
        match self.runner().recover().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(runs = n, "marked runs interrupted by the last stop"),
            Err(e) => tracing::error!(error = %e, "crash recovery failed"),
        }
        self.seed_metrics().await;
        if let Ok(stats) = self.ctx().backend.repo_stats().await {
            self.ctx()
                .metrics
                .set_repository(stats.used_bytes, stats.free_bytes);
        }
    }
}

/// Creates an API key in the data directory's database; the token is shown once.
///
/// # Errors
/// Unusable data directory or database.
pub async fn create_api_key(
    data_dir: &Path,
    name: &str,
) -> Result<(ApiKeyRecord, Secret), StartError> {
    open_data_dir(data_dir)?;
    let db = Db::open(&data_dir.join(DB_FILE))?;
    let (token, hash) = crypto::new_api_key();
    let record = db
        .api_key_create(name.to_owned(), hash, jiff::Timestamp::now())
        .await?;
    Ok((record, token))
}

async fn gc_loop(state: AppState, shutdown: CancellationToken) {
    let gc = &state.config().gc;
    if gc.cron.is_empty() {
        return;
    }
    let Ok(schedule) = scheduler::CronSchedule::parse(&gc.cron, &gc.timezone) else {
        return;
    };
    loop {
        let now = state.ctx().clock.now();
        let Some(next) = schedule.next_after(now) else {
            return;
        };
        let wait: Duration = next
            .duration_since(now)
            .try_into()
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait.min(Duration::from_secs(3600))) => {}
        }
        if state.ctx().clock.now() >= next && state.ctx().db.maintenance().is_none() {
            let _ = state
                .runner()
                .submit(NewRun::queued(RunKind::Gc, None, Trigger::System))
                .await;
        }
    }
}

/// Keeps a daily `VACUUM INTO` copy of the database (7 kept), never a copy of the live file (R4).
async fn db_backup_loop(state: AppState, data_dir: PathBuf, shutdown: CancellationToken) {
    let dir = data_dir.join("db-backups");
    loop {
        if state.ctx().db.maintenance().is_none() && std::fs::create_dir_all(&dir).is_ok() {
            let day = state.ctx().clock.now().strftime("%Y%m%d").to_string();
            let dest = dir.join(format!("vbm-{day}.db"));
            if let Err(e) = state.ctx().db.backup_to(dest).await {
                tracing::warn!(error = %e, "daily database copy failed");
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
                files.sort();
                let excess = files.len().saturating_sub(7);
                for old in files.into_iter().take(excess) {
                    let _ = std::fs::remove_file(old);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
        }
    }
}

/// Serves the API on `listener` and runs the scheduler and runner until `shutdown` completes;
/// then stops accepting, cancels active runs with a reason and waits for them (F8).
///
/// # Errors
/// I/O errors of the listener.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state.start().await;
    let stop = CancellationToken::new();
    let mut background = Vec::new();
    if state.ctx().db.maintenance().is_none() {
        background.push(tokio::spawn(scheduler::run(
            state.ctx().db.clone(),
            Arc::clone(&state.ctx().clock),
            Arc::clone(&state.inner.scheduler_wake),
            state.runner().waker(),
            stop.clone(),
        )));
        background.push(tokio::spawn(state.runner().clone().run(stop.clone())));
        background.push(tokio::spawn(gc_loop(state.clone(), stop.clone())));
        background.push(tokio::spawn(state.runner().clone().snapshot_sweeper(
            Duration::from_secs(state.config().snapshots.sweep_interval_secs),
            stop.clone(),
        )));
        if let Some(dir) = state.ctx().db.path().parent() {
            background.push(tokio::spawn(db_backup_loop(
                state.clone(),
                dir.to_owned(),
                stop.clone(),
            )));
        }
    }
    let http = &state.config().http;
    let limits = (
        Duration::from_secs(http.header_timeout_secs),
        http.max_connections,
    );
    let app = router(state.clone());
    let stop_http = stop.clone();
    let served = serve_http(listener, app, limits, async move {
        shutdown.await;
        tracing::info!("shutting down: cancelling active runs");
        stop_http.cancel();
    })
    .await;
    stop.cancel();
    for task in background {
        let _ = task.await;
    }
    served
}

/// Accepts HTTP/1.1 connections until `shutdown` completes, then lets open requests finish.
///
/// `axum::serve` sets no timer, so hyper's header-read timeout never fires and a client that
/// trickles its headers (slowloris) holds a connection forever; this loop gives every connection
/// a deadline for its headers and caps the connections served at once (I2). Body reads are
/// bounded by the router's body timeout.
async fn serve_http(
    listener: TcpListener,
    app: axum::Router,
    (header_timeout, max_connections): (Duration, usize),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors or a connection reset before accept: keep serving the
                    // connections we have and try again shortly rather than dying.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection closed with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Open requests finish (runs were cancelled, so their event streams end); a client that
    // holds a connection open longer does not keep the process alive.
    if tokio::time::timeout(Duration::from_secs(30), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 30 s after shutdown began: closing them");
    }
    Ok(())
}

/// A multi-threaded runtime for `vbm serve` (the binary does not depend on tokio's features).
///
/// # Errors
/// When the OS refuses threads.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
