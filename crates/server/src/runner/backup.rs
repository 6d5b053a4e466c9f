//! One backup run: resolve the job's VMs at run time, back each up under the limits, record
//! results, update metrics, apply retention, and finally synchronise the catalog with the
//! repository (which is the truth: R4, F2).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::join_all;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Runner;
use crate::backend::{BackendError, BackupTask, RetentionRequest, VmSummary};
use crate::ids::{InstanceUuid, VcenterId};
use crate::jobs::{BackupMode, Job};
use crate::metrics::JobVm;
use crate::run::{Run, RunStatus, RunVm};
use crate::vcenter::VcenterTarget;

struct Planned {
    target: VcenterTarget,
    vm: VmSummary,
}

fn vm_filter(run: &Run) -> Option<HashSet<String>> {
    run.params.get("vms").and_then(|v| v.as_array()).map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    })
}

fn queued_vm(vc: &VcenterId, vm: &VmSummary) -> RunVm {
    RunVm {
        vcenter_id: vc.clone(),
        instance_uuid: vm.instance_uuid.clone(),
        vm_name: vm.name.clone(),
        status: RunStatus::Queued,
        mode: None,
        backup_id: None,
        bytes_read: 0,
        bytes_written: 0,
        error: None,
        warnings: Vec::new(),
        started_at: None,
        finished_at: None,
    }
}

/// Executes a backup run; returns its final status and a summary.
pub(super) async fn execute(
    runner: &Runner,
    run: &Run,
    cancel: &CancellationToken,
) -> (RunStatus, Option<String>) {
    let ctx = &runner.inner.ctx;
    let Some(job_id) = run.job_id.clone() else {
        return (
            RunStatus::Failed,
            Some("the job of this run was deleted".into()),
        );
    };
    let job = match ctx.db.job_get(job_id).await {
        Ok(j) => j.job,
        Err(e) => return (RunStatus::Failed, Some(format!("cannot load the job: {e}"))),
    };
    let filter = vm_filter(run);
    let mut planned = Vec::new();
    let mut source_errors = Vec::new();
    for source in &job.spec.sources {
        let target = match ctx.target(source.vcenter_id.clone()).await {
            Ok(t) => t,
            Err(e) => {
                source_errors.push(format!("vCenter {}: {e}", source.vcenter_id));
                continue;
            }
        };
        runner
            .log(
                &run.id,
                "info",
                format!("listing VMs of vCenter {}", target.name),
            )
            .await;
        let inventory = match ctx.backend.list_vms(target.clone()).await {
            Ok(i) => i,
            Err(e) => {
                source_errors.push(format!("vCenter {}: cannot list VMs: {e}", target.name));
                continue;
            }
        };
        for vm in source.resolve(&inventory) {
            if filter
                .as_ref()
                .is_some_and(|f| !f.contains(vm.instance_uuid.as_str()))
            {
                continue;
            }
            planned.push(Planned {
                target: target.clone(),
                vm: vm.clone(),
            });
        }
    }
    for e in &source_errors {
        runner.log(&run.id, "error", e.clone()).await;
    }
    if planned.is_empty() {
        let reason = if source_errors.is_empty() {
            "the job's selection matched no VM in the inventory".to_owned()
        } else {
            format!("no VM could be backed up: {}", source_errors.join("; "))
        };
        return (RunStatus::Failed, Some(reason));
    }
    for p in &planned {
        let _ = ctx
            .db
            .run_vm_put(run.id.clone(), queued_vm(&p.target.id, &p.vm))
            .await;
    }
    runner
        .log(&run.id, "info", format!("{} VM(s) selected", planned.len()))
        .await;
    let job_gate = Arc::new(Semaphore::new(job.spec.concurrency as usize));
    let results = join_all(planned.into_iter().map(|p| {
        let gate = Arc::clone(&job_gate);
        let job = &job;
        async move {
            let Ok(_permit) = gate.acquire_owned().await else {
                return false;
            };
            backup_vm(runner, run, job, p, cancel).await
        }
    }))
    .await;
    let ok = results.iter().filter(|r| **r).count();
    let failed = results.len() - ok + source_errors.len();
    // Retention removed backups and the repository may have changed under us (another vbm,
    // a manual deletion): the catalog follows the repository.
    match ctx.sync_catalog().await {
        Ok((added, removed)) if added + removed > 0 => {
            runner
                .log(
                    &run.id,
                    "info",
                    format!(
                        "catalog synchronised with the repository: {added} added, {removed} removed"
                    ),
                )
                .await;
        }
        Ok(_) => {}
        Err(e) => {
            runner
                .log(&run.id, "warn", format!("catalog not synchronised: {e}"))
                .await;
        }
    }
    let summary = format!("{ok} VM(s) backed up, {failed} failed");
    let status = if failed == 0 {
        RunStatus::Success
    } else if ok > 0 {
        RunStatus::Partial
    } else {
        RunStatus::Failed
    };
    (status, Some(summary))
}

async fn choose_mode(runner: &Runner, job: &Job, vm: &InstanceUuid) -> BackupMode {
    match (job.spec.mode, job.spec.full_every) {
        (BackupMode::Full, _) => BackupMode::Full,
        (BackupMode::Incremental, None) => BackupMode::Incremental,
        (BackupMode::Incremental, Some(n)) => {
            let previous = runner
                .inner
                .ctx
                .db
                .backups_of(job.id.to_string(), vm.to_string())
                .await
                .map(|b| b.len())
                .unwrap_or(0);
            if previous % (n as usize) == 0 {
                BackupMode::Full
            } else {
                BackupMode::Incremental
            }
        }
    }
}

async fn backup_vm(
    runner: &Runner,
    run: &Run,
    job: &Job,
    p: Planned,
    cancel: &CancellationToken,
) -> bool {
    let ctx = &runner.inner.ctx;
    let labels = JobVm {
        job: job.spec.name.clone(),
        vm: p.vm.name.clone(),
    };
    let mut record = queued_vm(&p.target.id, &p.vm);
    if runner
        .inner
        .gates
        .vm_busy(&p.target.id, &p.vm.instance_uuid)
    {
        runner
            .log(
                &run.id,
                "info",
                format!(
                    "VM {} is being backed up by another run; waiting",
                    p.vm.name
                ),
            )
            .await;
    }
    let Some(pass) = runner
        .inner
        .gates
        .enter(
            &p.target.id,
            &p.vm.instance_uuid,
            p.vm.host.as_deref(),
            cancel,
        )
        .await
    else {
        record.status = RunStatus::Cancelled;
        record.error = Some("cancelled before it started".into());
        let _ = ctx.db.run_vm_put(run.id.clone(), record).await;
        return false;
    };
    let mode = choose_mode(runner, job, &p.vm.instance_uuid).await;
    record.status = RunStatus::Running;
    record.started_at = Some(ctx.clock.now());
    record.mode = Some(
        match mode {
            BackupMode::Full => "full",
            BackupMode::Incremental => "incremental",
        }
        .into(),
    );
    let _ = ctx.db.run_vm_put(run.id.clone(), record.clone()).await;
    runner
        .log(
            &run.id,
            "info",
            format!(
                "backing up VM {} ({})",
                p.vm.name,
                record.mode.as_deref().unwrap_or("")
            ),
        )
        .await;
    ctx.metrics.running_backups(1);
    ctx.metrics.backup_started(&labels);
    let started = Instant::now();
    let task = BackupTask {
        job_id: job.id.clone(),
        run_id: run.id.clone(),
        vm: p.vm.clone(),
        mode,
        quiesce: job.spec.quiesce,
    };
    let (sink, feed) = runner.progress_sink(&run.id, Some(p.vm.name.clone()));
    let result = ctx
        .backend
        .backup(p.target.clone(), task, sink, cancel.clone())
        .await;
    feed.finish().await;
    ctx.metrics.running_backups(-1);
    drop(pass);
    let now = ctx.clock.now();
    record.finished_at = Some(now);
    let ok = match result {
        Ok(outcome) => {
            let entry = outcome.entry;
            record.status = RunStatus::Success;
            record.backup_id = Some(entry.id.clone());
            record.mode = Some(entry.mode.clone());
            record.bytes_read = entry.bytes_read;
            record.bytes_written = entry.bytes_written;
            record.warnings = outcome.warnings;
            ctx.metrics.backup_succeeded(
                &labels,
                started.elapsed().as_secs_f64(),
                entry.logical_bytes,
                entry.bytes_read,
                entry.bytes_written,
                entry.finished.as_second(),
            );
            // The manifest is durable; the catalog row is not yet (F2: a crash here is
            // repaired by the catalog sync and recovery at the next start).
            crate::failpoint::hit("manifest.after_write_before_db_commit");
            if let Err(e) = ctx
                .db
                .backup_record(entry.clone(), Some(run.id.clone()))
                .await
            {
                runner.log(&run.id, "error", format!("backup {} is in the repository but not in the catalog yet ({e}); the next catalog sync adds it", entry.id)).await;
            }
            runner
                .log(
                    &run.id,
                    "info",
                    format!("VM {} backed up as {}", p.vm.name, entry.id),
                )
                .await;
            true
        }
        Err(e) => {
            record.status = if matches!(e, BackendError::Cancelled(_)) {
                RunStatus::Cancelled
            } else {
                RunStatus::Failed
            };
            record.error = Some(e.to_string());
            ctx.metrics.backup_failed(&labels);
            runner
                .log(&run.id, "error", format!("VM {} failed: {e}", p.vm.name))
                .await;
            false
        }
    };
    let _ = ctx.db.run_vm_put(run.id.clone(), record).await;
    if ok {
        apply_retention(runner, run, job, &p.vm).await;
    }
    ok
}

/// Retention after a successful backup, per job and VM, with the repository's planner. Nothing
/// is deleted while the database cannot be written (S-D3) or is damaged (S-D8); a plan a guard
/// blocked (T1) is logged and left for an operator to confirm (`POST /jobs/{id}/retention`).
async fn apply_retention(runner: &Runner, run: &Run, job: &Job, vm: &VmSummary) {
    let ctx = &runner.inner.ctx;
    if ctx.db.maintenance().is_some() || job.spec.retention.is_empty() {
        return;
    }
    let mut request = RetentionRequest {
        job_id: job.id.clone(),
        instance_uuid: vm.instance_uuid.clone(),
        policy: job.spec.retention.clone(),
        now: ctx.clock.now(),
        apply: false,
        force: false,
    };
    // Plan first: the write probe (and the deletion) only when something would go.
    match ctx.backend.retention(request.clone()).await {
        Ok(preview) if preview.plan.remove.is_empty() || preview.plan.blocked.is_some() => {
            if let Some(why) = &preview.plan.blocked {
                runner
                    .log(
                        &run.id,
                        "warn",
                        format!("retention for VM {} not applied: {why}", vm.name),
                    )
                    .await;
            }
            return;
        }
        Ok(_) => {}
        Err(e) => {
            runner
                .log(
                    &run.id,
                    "warn",
                    format!("retention for VM {} failed: {e}", vm.name),
                )
                .await;
            return;
        }
    }
    if let Err(e) = ctx.db.probe_writable().await {
        runner
            .log(
                &run.id,
                "warn",
                format!(
                    "retention for VM {} not applied: the database cannot be written ({e}); nothing was deleted",
                    vm.name
                ),
            )
            .await;
        return;
    }
    request.apply = true;
    match ctx.backend.retention(request).await {
        Ok(outcome) => {
            if let Some(why) = &outcome.plan.blocked {
                runner
                    .log(
                        &run.id,
                        "warn",
                        format!("retention for VM {} not applied: {why}", vm.name),
                    )
                    .await;
            }
            if !outcome.removed.is_empty() {
                let _ = ctx.db.backup_forget(outcome.removed.clone()).await;
                let ids: Vec<String> = outcome.removed.iter().map(ToString::to_string).collect();
                runner
                    .log(
                        &run.id,
                        "info",
                        format!(
                            "retention removed {} backup(s) of VM {} (matched no keep rule): {}",
                            ids.len(),
                            vm.name,
                            ids.join(", ")
                        ),
                    )
                    .await;
            }
        }
        Err(e) => {
            runner
                .log(
                    &run.id,
                    "warn",
                    format!("retention for VM {} failed: {e}", vm.name),
                )
                .await;
        }
    }
}
