//! The job runner: takes queued runs from the database (the queue survives restarts), executes
//! them under the concurrency limits, records per-VM results and logs, broadcasts live progress
//! for SSE, applies retention after each successful backup, retries per job policy, and cancels.
//!
//! Restart rules (INV-7): at start every `running` run becomes `interrupted`, the `vbm-*`
//! snapshots of its VMs are swept, and it is retried when the job allows retries. `queued` runs
//! simply stay queued. On shutdown (SIGTERM, F8) active runs are cancelled with a reason and end
//! `cancelled`; the engine removes their snapshots before returning.

mod backup;
pub mod limits;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use utoipa::ToSchema;

use crate::backend::{BackendError, Progress, ProgressSink, RestoreTarget};
use crate::context::Context;
use crate::ids::{BackupId, RunId};
use crate::run::{LogLine, NewRun, Run, RunKind, RunStatus, Trigger};

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

    /// Crash recovery (INV-7): marks runs left `running` as `interrupted`, sweeps their VMs'
    /// snapshots in the background and queues retries per job policy.
    ///
    /// # Errors
    /// Database errors.
    pub async fn recover(&self) -> crate::error::Result<usize> {
        let ctx = &self.inner.ctx;
        let now = ctx.clock.now();
        let interrupted = ctx.db.recover_interrupted(now).await?;
        let count = interrupted.len();
        for (run, vms) in interrupted {
            tracing::warn!(run = %run.id, "run was interrupted by a server stop; marked interrupted");
            self.log(
                &run.id,
                "error",
                "interrupted: the server stopped while this run was active".into(),
            )
            .await;
            // Sweep snapshots of every VM the run touched (vCenter may be down: background).
            let this = self.clone();
            let run_id = run.id.clone();
            let sweep_vms: Vec<_> = vms
                .iter()
                .map(|v| {
                    (
                        v.vcenter_id.clone(),
                        v.instance_uuid.clone(),
                        v.vm_name.clone(),
                    )
                })
                .collect();
            self.inner.tasks.spawn(async move {
                for (vc, uuid, name) in sweep_vms {
                    let result = match this.inner.ctx.target(vc).await {
                        Ok(target) => this
                            .inner
                            .ctx
                            .backend
                            .sweep_snapshots(target, uuid)
                            .await
                            .map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                    match result {
                        Ok(n) => {
                            this.log(
                                &run_id,
                                "info",
                                format!("swept {n} leftover vbm snapshot(s) of VM {name}"),
                            )
                            .await
                        }
                        Err(e) => {
                            this.log(
                                &run_id,
                                "warn",
                                format!("could not sweep snapshots of VM {name}: {e}"),
                            )
                            .await
                        }
                    }
                }
            });
            self.maybe_retry(
                &run,
                vms.iter()
                    .filter(|v| v.status != RunStatus::Success)
                    .map(|v| v.instance_uuid.to_string())
                    .collect(),
            )
            .await;
        }
        Ok(count)
    }

    /// Queues a retry when the job allows one more attempt.
    async fn maybe_retry(&self, run: &Run, vms: Vec<String>) {
        let ctx = &self.inner.ctx;
        let Some(job_id) = &run.job_id else { return };
        if run.kind != RunKind::Backup {
            return;
        }
        let Ok(job) = ctx.db.job_get(job_id.clone()).await else {
            return;
        };
        if run.attempt > job.job.spec.retries {
            return;
        }
        let mut retry = NewRun::queued(RunKind::Backup, Some(job_id.clone()), Trigger::Retry);
        retry.attempt = run.attempt + 1;
        retry.retry_of = Some(run.id.clone());
        retry.scheduled_for = run.scheduled_for;
        retry.not_before = ctx
            .clock
            .now()
            .checked_add(jiff::SignedDuration::from_secs(i64::from(
                job.job.spec.retry_delay_secs,
            )))
            .ok();
        if !vms.is_empty() {
            retry.params = serde_json::json!({ "vms": vms });
        }
        match self.submit(retry).await {
            Ok(r) => {
                self.log(
                    &run.id,
                    "info",
                    format!(
                        "retry {} queued as run {} (attempt {})",
                        run.attempt, r.id, r.attempt
                    ),
                )
                .await
            }
            Err(e) => {
                self.log(&run.id, "warn", format!("no retry queued: {e}"))
                    .await
            }
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
                RunKind::Verify => this.execute_verify(&run, &cancel).await,
                RunKind::Restore => this.execute_restore(&run, &cancel).await,
                RunKind::Gc => this.execute_gc(&run, &cancel).await,
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

    fn progress_sink(&self, run: &RunId) -> ProgressSink {
        let this = self.clone();
        let run = run.clone();
        Arc::new(move |p: Progress| {
            if let Ok(mut a) = this.inner.active.lock()
                && let Some(active) = a.get_mut(&run)
            {
                active.progress.insert(p.vm.clone(), p.clone());
            }
            this.emit(RunEvent::Progress {
                run_id: run.clone(),
                progress: p,
            });
        })
    }

    fn backup_param(run: &Run) -> Result<BackupId, String> {
        run.params
            .get("backup_id")
            .and_then(|v| v.as_str())
            .ok_or_else(|| "run has no backup_id parameter".to_owned())
            .and_then(|s| BackupId::parse(s).map_err(|e| e.to_string()))
    }

    async fn execute_verify(
        &self,
        run: &Run,
        cancel: &CancellationToken,
    ) -> (RunStatus, Option<String>) {
        let ctx = &self.inner.ctx;
        let id = match Self::backup_param(run) {
            Ok(id) => id,
            Err(e) => return (RunStatus::Failed, Some(e)),
        };
        self.log(&run.id, "info", format!("verifying backup {id}"))
            .await;
        match ctx
            .backend
            .verify(id.clone(), self.progress_sink(&run.id), cancel.clone())
            .await
        {
            Ok(outcome) => {
                let ok = outcome.ok;
                let summary = if ok {
                    "verify passed".to_owned()
                } else {
                    format!("verify found damage: {}", outcome.problems.join("; "))
                };
                if let Err(e) = ctx
                    .db
                    .backup_set_verified(id, outcome, ctx.clock.now())
                    .await
                {
                    return (
                        RunStatus::Failed,
                        Some(format!("cannot record the verify result: {e}")),
                    );
                }
                (
                    if ok {
                        RunStatus::Success
                    } else {
                        RunStatus::Failed
                    },
                    Some(summary),
                )
            }
            Err(e) => (RunStatus::Failed, Some(format!("verify failed: {e}"))),
        }
    }

    async fn execute_restore(
        &self,
        run: &Run,
        cancel: &CancellationToken,
    ) -> (RunStatus, Option<String>) {
        let ctx = &self.inner.ctx;
        let id = match Self::backup_param(run) {
            Ok(id) => id,
            Err(e) => return (RunStatus::Failed, Some(e)),
        };
        let target: RestoreTarget = match run
            .params
            .get("restore")
            .cloned()
            .map(serde_json::from_value)
        {
            Some(Ok(t)) => t,
            _ => {
                return (
                    RunStatus::Failed,
                    Some("run has no valid restore target".into()),
                );
            }
        };
        let vcenter = match &target {
            RestoreTarget::NewVm { vcenter_id, .. } => match ctx.target(vcenter_id.clone()).await {
                Ok(t) => Some(t),
                Err(e) => return (RunStatus::Failed, Some(e.to_string())),
            },
            RestoreTarget::Directory { .. } => None,
        };
        self.log(&run.id, "info", format!("restoring backup {id}"))
            .await;
        match ctx
            .backend
            .restore(
                id,
                target,
                vcenter,
                self.progress_sink(&run.id),
                cancel.clone(),
            )
            .await
        {
            Ok(()) => (RunStatus::Success, Some("restore finished".into())),
            Err(e) => (RunStatus::Failed, Some(format!("restore failed: {e}"))),
        }
    }

    async fn execute_gc(
        &self,
        run: &Run,
        cancel: &CancellationToken,
    ) -> (RunStatus, Option<String>) {
        let ctx = &self.inner.ctx;
        if let Some(m) = ctx.db.maintenance() {
            return (RunStatus::Failed, Some(format!("GC refused: {m}")));
        }
        self.log(&run.id, "info", "garbage collection started".into())
            .await;
        match ctx.backend.gc(cancel.clone()).await {
            Ok(freed) => (
                RunStatus::Success,
                Some(format!("garbage collection freed {freed} bytes")),
            ),
            Err(BackendError::Cancelled(r)) => (RunStatus::Cancelled, Some(r)),
            Err(e) => (
                RunStatus::Failed,
                Some(format!("garbage collection failed: {e}")),
            ),
        }
    }
}
