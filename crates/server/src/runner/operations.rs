//! Runs that are not backups: verify one restore point, restore one, garbage collection.

use tokio_util::sync::CancellationToken;

use super::Runner;
use crate::backend::{BackendError, RestoreTarget};
use crate::ids::BackupId;
use crate::run::{Run, RunStatus};
use crate::vcenter::VcenterTarget;

fn backup_param(run: &Run) -> Result<BackupId, String> {
    run.params
        .get("backup_id")
        .and_then(|v| v.as_str())
        .ok_or_else(|| "run has no backup_id parameter".to_owned())
        .and_then(|s| BackupId::parse(s).map_err(|e| e.to_string()))
}

fn failed(e: &BackendError, what: &str) -> (RunStatus, Option<String>) {
    match e {
        BackendError::Cancelled(r) => (RunStatus::Cancelled, Some(r.clone())),
        other => (RunStatus::Failed, Some(format!("{what} failed: {other}"))),
    }
}

impl Runner {
    /// The vCenter a backup came from (the manifest records its name), to connect to for a
    /// verify's disk-size comparison or an in-place restore.
    async fn vcenter_of_backup(&self, id: &BackupId) -> Option<VcenterTarget> {
        let ctx = &self.inner.ctx;
        let backup = ctx.db.backup_get(id.clone()).await.ok()?;
        let row = ctx.db.vcenter_by_name(backup.vcenter).await.ok()??;
        ctx.target(row.vcenter.id).await.ok()
    }
}

/// Verifies one restore point and records the verdict of it and of every other restore point
/// found to share damaged data (S-D5).
pub(super) async fn verify(
    runner: &Runner,
    run: &Run,
    cancel: &CancellationToken,
) -> (RunStatus, Option<String>) {
    let ctx = &runner.inner.ctx;
    let id = match backup_param(run) {
        Ok(id) => id,
        Err(e) => return (RunStatus::Failed, Some(e)),
    };
    runner
        .log(&run.id, "info", format!("verifying backup {id}"))
        .await;
    let vcenter = runner.vcenter_of_backup(&id).await;
    let (sink, feed) = runner.progress_sink(&run.id, None);
    let result = ctx
        .backend
        .verify(id.clone(), vcenter, sink, cancel.clone())
        .await;
    feed.finish().await;
    let outcome = match result {
        Ok(o) => o,
        Err(e) => return failed(&e, "verify"),
    };
    for verdict in &outcome.backups {
        match ctx.db.backup_set_verified(verdict.clone()).await {
            Ok(_) => {}
            Err(e) => {
                return (
                    RunStatus::Failed,
                    Some(format!(
                        "cannot record the verify result of {}: {e}",
                        verdict.id
                    )),
                );
            }
        }
    }
    for line in &outcome.problems {
        runner.log(&run.id, "error", line.clone()).await;
    }
    if outcome.ok {
        (
            RunStatus::Success,
            Some(format!("backup {id} verified: ok")),
        )
    } else {
        let damaged: Vec<String> = outcome
            .backups
            .iter()
            .filter(|b| !b.ok)
            .map(|b| b.id.to_string())
            .collect();
        (
            RunStatus::Failed,
            Some(format!(
                "verify found damage in backup(s) {}: {}",
                damaged.join(", "),
                outcome.problems.first().map_or("", String::as_str)
            )),
        )
    }
}

/// Restores one restore point.
pub(super) async fn restore(
    runner: &Runner,
    run: &Run,
    cancel: &CancellationToken,
) -> (RunStatus, Option<String>) {
    let ctx = &runner.inner.ctx;
    let id = match backup_param(run) {
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
        RestoreTarget::NewVm { vcenter_id, .. }
        | RestoreTarget::InPlace {
            vcenter_id: Some(vcenter_id),
            ..
        } => match ctx.target(vcenter_id.clone()).await {
            Ok(t) => Some(t),
            Err(e) => return (RunStatus::Failed, Some(e.to_string())),
        },
        RestoreTarget::InPlace {
            vcenter_id: None, ..
        } => runner.vcenter_of_backup(&id).await,
        RestoreTarget::Directory { .. } => None,
    };
    runner
        .log(&run.id, "info", format!("restoring backup {id}"))
        .await;
    let (sink, feed) = runner.progress_sink(&run.id, None);
    let result = ctx
        .backend
        .restore(id, target, vcenter, sink, cancel.clone())
        .await;
    feed.finish().await;
    match result {
        Ok(outcome) => {
            for w in &outcome.warnings {
                runner.log(&run.id, "warn", w.clone()).await;
            }
            (
                RunStatus::Success,
                Some(format!(
                    "restored {} file(s), {} bytes, to {}; every file matches its manifest digest",
                    outcome.files, outcome.bytes_restored, outcome.target
                )),
            )
        }
        Err(e) => failed(&e, "restore"),
    }
}

/// Garbage collection; refused while the database cannot be written (S-D3) or is damaged (S-D8).
pub(super) async fn gc(
    runner: &Runner,
    run: &Run,
    cancel: &CancellationToken,
) -> (RunStatus, Option<String>) {
    let ctx = &runner.inner.ctx;
    if let Some(m) = ctx.db.maintenance() {
        return (RunStatus::Failed, Some(format!("GC refused: {m}")));
    }
    if let Err(e) = ctx.db.probe_writable().await {
        return (
            RunStatus::Failed,
            Some(format!(
                "GC refused while the database cannot be written: {e}"
            )),
        );
    }
    runner
        .log(&run.id, "info", "garbage collection started".into())
        .await;
    let (sink, feed) = runner.progress_sink(&run.id, None);
    let result = ctx.backend.gc(sink, cancel.clone()).await;
    feed.finish().await;
    match result {
        Ok(o) => {
            for s in &o.skipped {
                runner
                    .log(&run.id, "warn", format!("GC could not delete {s}"))
                    .await;
            }
            (
                RunStatus::Success,
                Some(format!(
                    "garbage collection freed {} bytes ({} chunks; {} unreferenced chunks younger than the grace period kept; {} crash leftovers removed; {} stale locks cleared)",
                    o.bytes_freed,
                    o.chunks_deleted,
                    o.chunks_kept_recent,
                    o.partial_backups_removed,
                    o.stale_locks_cleared
                )),
            )
        }
        Err(e) => failed(&e, "garbage collection"),
    }
}
