//! The job runner: takes queued runs from the database (the queue survives restarts), executes
//! them under the concurrency limits, records per-VM results and logs, broadcasts live progress
//! for SSE, applies retention after each successful backup, retries per job policy, and cancels.
//!
//! Restart rules (INV-7): at start every `running` run becomes `interrupted`, the `vbm-*`
//! snapshots of its VMs are swept, and it is retried when the job allows retries. `queued` runs
//! simply stay queued. On shutdown (SIGTERM, F8) active runs are cancelled with a reason and end
//! `cancelled`; the engine removes their snapshots before returning.

mod backup;
mod janitor;
pub mod limits;
mod operations;
mod recovery;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

use crate::backend::{Progress, ProgressSink};
use crate::context::Context;
use crate::ids::RunId;
use crate::run::{LogLine, NewRun, Run, RunKind, RunStatus};

use limits::Gates;

/// What SSE subscribers receive.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// Live progress of one VM.
    Progress {
        /// Run.
        run_id: RunId,
        /// Progress.
        progress: Progress,
    },
    /// A log line.
    Log {
        /// Run.
        run_id: RunId,
        /// Line.
        line: LogLine,
    },
    /// The run changed state.
    Status {
        /// Run.
        run_id: RunId,
        /// New state.
        status: RunStatus,
    },
}

impl RunEvent {
    /// The run the event belongs to.
    #[must_use]
    pub fn run_id(&self) -> &RunId {
        match self {
            Self::Progress { run_id, .. }
            | Self::Log { run_id, .. }
            | Self::Status { run_id, .. } => run_id,
        }
    }
}

#[derive(Debug, Default)]
struct Active {
    cancel: CancellationToken,
    reason: Option<String>,
    progress: HashMap<String, Progress>,
}

/// The runner; cheap to clone.
#[derive(Debug, Clone)]
pub struct Runner {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    ctx: Context,
    gates: Arc<Gates>,
    wake: Arc<Notify>,
    active: Mutex<HashMap<RunId, Active>>,
    events: broadcast::Sender<RunEvent>,
    tasks: TaskTracker,
    /// Cancelled when the server stops: background work (recovery sweeps) ends its waits.
    stopping: CancellationToken,
}

/// Why a cancel could not be done.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// The run already ended.
    #[error("run {0} already ended ({1})")]
    AlreadyEnded(RunId, &'static str),
    /// Database.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
}

impl Runner {
    /// A runner over the shared context.
    #[must_use]
    pub fn new(ctx: Context) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Inner {
                gates: Gates::new(&ctx.limits),
                ctx,
                wake: Arc::new(Notify::new()),
                active: Mutex::new(HashMap::new()),
                events,
                tasks: TaskTracker::new(),
                stopping: CancellationToken::new(),
            }),
        }
    }

    /// The notifier that makes the dispatcher look at the queue now.
    #[must_use]
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.inner.wake)
    }

    /// Subscribes to run events.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<RunEvent> {
        self.inner.events.subscribe()
    }

    /// Live progress of an active run, per VM.
    #[must_use]
    pub fn progress(&self, run: &RunId) -> Vec<Progress> {
        self.inner
            .active
            .lock()
            .ok()
            .and_then(|a| {
                a.get(run).map(|r| {
                    let mut p: Vec<_> = r.progress.values().cloned().collect();
                    p.sort_by(|a, b| a.vm.cmp(&b.vm));
                    p
                })
            })
            .unwrap_or_default()
    }

    /// Queues a run and wakes the dispatcher.
    ///
    /// # Errors
    /// Conflict when the job already has an active run; not found for an unknown job.
    pub async fn submit(&self, run: NewRun) -> crate::error::Result<Run> {
        let run = self
            .inner
            .ctx
            .db
            .run_create(run, self.inner.ctx.clock.now())
            .await?;
        self.inner.wake.notify_one();
        Ok(run)
    }

    /// Cancels a queued or running run.
    ///
    /// # Errors
    /// When the run does not exist or already ended.
    pub async fn cancel(&self, id: &RunId, reason: &str) -> Result<Run, CancelError> {
        let db = &self.inner.ctx.db;
        let run = db.run_get(id.clone()).await?;
        if run.status.is_terminal() {
            return Err(CancelError::AlreadyEnded(id.clone(), run.status.as_str()));
        }
        let signalled = self
            .inner
            .active
            .lock()
            .is_ok_and(|mut a| match a.get_mut(id) {
                Some(active) => {
                    active.reason = Some(reason.to_owned());
                    active.cancel.cancel();
                    true
                }
                None => false,
            });
        if !signalled {
            // Still queued: end it right here.
            let now = self.inner.ctx.clock.now();
            if db
                .run_finish(
                    id.clone(),
                    RunStatus::Cancelled,
                    Some(reason.to_owned()),
                    now,
                )
                .await?
            {
                self.emit(RunEvent::Status {
                    run_id: id.clone(),
                    status: RunStatus::Cancelled,
                });
            }
        }
        Ok(db.run_get(id.clone()).await?)
    }

    fn emit(&self, event: RunEvent) {
        let _ = self.inner.events.send(event);
    }

    async fn log(&self, run: &RunId, level: &'static str, message: String) {
        let now = self.inner.ctx.clock.now();
        match self
            .inner
            .ctx
            .db
            .run_log(run.clone(), level, message, now)
            .await
        {
            Ok(line) => self.emit(RunEvent::Log {
                run_id: run.clone(),
                line,
            }),
            Err(e) => tracing::warn!(run = %run, error = %e, "cannot store a run log line"),
        }
    }

    /// Dispatches queued runs until `shutdown`; then cancels active runs with a reason and waits
    /// for them to end (F8).
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let ctx = &self.inner.ctx;
            let now = ctx.clock.now();
            match ctx.db.runs_startable(now).await {
                Ok(runs) => {
                    for run in runs {
                        let already = self
                            .inner
                            .active
                            .lock()
                            .is_ok_and(|a| a.contains_key(&run.id));
                        if already {
                            continue;
                        }
                        self.start(run).await;
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the run queue"),
            }
            let wait = match ctx.db.next_delayed_run().await {
                Ok(Some(t)) => t
                    .duration_since(ctx.clock.now())
                    .try_into()
                    .unwrap_or(Duration::ZERO),
                _ => Duration::from_secs(30),
            }
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        self.inner.stopping.cancel();
        let ids: Vec<RunId> = self
            .inner
            .active
            .lock()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            let _ = self
                .cancel(&id, "cancelled: the server is shutting down")
                .await;
        }
        self.inner.tasks.close();
        if tokio::time::timeout(Duration::from_secs(60), self.inner.tasks.wait())
            .await
            .is_err()
        {
            tracing::error!(
                "runs did not end within 60 s of shutdown; they will be marked interrupted at the next start"
            );
        }
    }

    async fn start(&self, run: Run) {
        let ctx = &self.inner.ctx;
        match ctx.db.run_start(run.id.clone(), ctx.clock.now()).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(run = %run.id, error = %e, "cannot start run");
                return;
            }
        }
        let cancel = CancellationToken::new();
        if let Ok(mut a) = self.inner.active.lock() {
            a.insert(
                run.id.clone(),
                Active {
                    cancel: cancel.clone(),
                    ..Active::default()
                },
            );
        }
        self.emit(RunEvent::Status {
            run_id: run.id.clone(),
            status: RunStatus::Running,
        });
        ctx.metrics.running_jobs(1);
        let this = self.clone();
        self.inner.tasks.spawn(async move {
            let outcome = match run.kind {
                RunKind::Backup => backup::execute(&this, &run, &cancel).await,
                RunKind::Verify => operations::verify(&this, &run, &cancel).await,
                RunKind::Restore => operations::restore(&this, &run, &cancel).await,
                RunKind::Gc => operations::gc(&this, &run, &cancel).await,
            };
            let (mut status, mut reason) = outcome;
            let cancel_reason = this
                .inner
                .active
                .lock()
                .ok()
                .and_then(|mut a| a.remove(&run.id))
                .and_then(|a| a.reason);
            if cancel.is_cancelled() && status != RunStatus::Success {
                status = RunStatus::Cancelled;
                reason = Some(cancel_reason.unwrap_or_else(|| "cancelled".into()));
            }
            let ctx = &this.inner.ctx;
            if let Some(r) = &reason {
                this.log(
                    &run.id,
                    if status == RunStatus::Success {
                        "info"
                    } else {
                        "error"
                    },
                    r.clone(),
                )
                .await;
            }
            if let Err(e) = ctx
                .db
                .run_finish(run.id.clone(), status, reason, ctx.clock.now())
                .await
            {
                tracing::error!(run = %run.id, error = %e, "cannot record the end of a run");
            }
            ctx.metrics.running_jobs(-1);
            tracing::info!(run = %run.id, status = status.as_str(), "run ended");
            this.emit(RunEvent::Status {
                run_id: run.id.clone(),
                status,
            });
            if matches!(run.kind, RunKind::Backup | RunKind::Gc)
                && let Ok(stats) = ctx.backend.repo_stats().await
            {
                ctx.metrics
                    .set_repository(stats.used_bytes, stats.free_bytes);
            }
            if matches!(status, RunStatus::Failed | RunStatus::Partial) {
                let failed = ctx
                    .db
                    .run_vms(run.id.clone())
                    .await
                    .map(|vms| {
                        vms.into_iter()
                            .filter(|v| v.status != RunStatus::Success)
                            .map(|v| v.instance_uuid.to_string())
                            .collect()
                    })
                    .unwrap_or_default();
                this.maybe_retry(&run, failed).await;
            }
            this.inner.wake.notify_one();
        });
    }

    /// A progress sink for one operation of a run: every event goes to the live view and the
    /// SSE broadcast; events that carry a message also go, in order, to the persisted run log
    /// (byte counters do not). Await [`LogFeed::finish`] after the operation so that its lines
    /// precede the run's own. With `subject`, every event is attributed to it (a VM's inventory
    /// name: the engine names the VM by its selector until it has resolved it).
    fn progress_sink(&self, run: &RunId, subject: Option<String>) -> (ProgressSink, LogFeed) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
        let writer = {
            let this = self.clone();
            let run = run.clone();
            self.inner.tasks.spawn(async move {
                while let Some(p) = rx.recv().await {
                    let Some(message) = &p.message else { continue };
                    let level = match p.level.as_str() {
                        "warning" => "warn",
                        "error" => "error",
                        _ => "info",
                    };
                    this.log(&run, level, format!("{}: {message}", p.vm)).await;
                }
            })
        };
        let this = self.clone();
        let run = run.clone();
        let sink: ProgressSink = Arc::new(move |mut p: Progress| {
            if let Some(name) = &subject {
                p.vm.clone_from(name);
            }
            // The runner logs failures itself, with the VM's result.
            if p.message.is_some() && p.phase != "failed" {
                let _ = tx.send(p.clone());
            }
            if let Ok(mut a) = this.inner.active.lock()
                && let Some(active) = a.get_mut(&run)
            {
                active.progress.insert(p.vm.clone(), p.clone());
            }
            this.emit(RunEvent::Progress {
                run_id: run.clone(),
                progress: p,
            });
        });
        (sink, LogFeed { writer })
    }
}

/// The run-log writer of one progress sink.
#[derive(Debug)]
pub(crate) struct LogFeed {
    writer: tokio::task::JoinHandle<()>,
}

impl LogFeed {
    /// Waits until every message of the (dropped) sink is in the run log.
    pub(crate) async fn finish(self) {
        let _ = self.writer.await;
    }
}
