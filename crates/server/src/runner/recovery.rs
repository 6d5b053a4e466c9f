//! Crash recovery (INV-7, F2, F6) and retries.
//!
//! At start every run left `running` becomes `interrupted`. For each of its VMs:
//! - a backup the engine committed just before the stop (its manifest names the run's snapshot
//!   `vbm-<run id>`) is already in the catalog — the catalog is synchronised from the repository
//!   before recovery — and the VM's result becomes `success` with that backup (F2);
//! - the VM's `vbm-*` snapshots are swept in the background (vCenter may be down), under the
//!   VM's lock so that the sweep never runs beside a new backup of the VM, retried with backoff
//!   (F6, INV-6);
//! - the run is retried per job policy for the VMs that did not succeed.

use std::collections::HashSet;
use std::time::Duration;

use super::Runner;
use crate::backend::CatalogEntry;
use crate::db::BackupRecord;
use crate::ids::{InstanceUuid, VcenterId};
use crate::run::{NewRun, Run, RunKind, RunStatus, RunVm, Trigger};

/// Attempts of a recovery sweep, and the delay before the second (multiplied by 6 after).
const SWEEP_ATTEMPTS: u32 = 3;
const SWEEP_FIRST_DELAY: Duration = Duration::from_secs(5);

fn entry_of(b: &BackupRecord) -> CatalogEntry {
    CatalogEntry {
        id: b.id.clone(),
        job_id: b.job_id.clone(),
        vcenter: b.vcenter.clone(),
        vm_name: b.vm_name.clone(),
        instance_uuid: b.instance_uuid.clone(),
        mode: b.mode.clone(),
        started: b.started,
        finished: b.finished,
        logical_bytes: b.logical_bytes,
        bytes_read: b.bytes_read,
        bytes_written: b.bytes_written,
        verify: None,
        manifest: b.manifest.clone(),
    }
}

impl Runner {
    /// Crash recovery: marks runs left `running` as `interrupted`, credits backups they
    /// committed, sweeps their VMs' snapshots in the background and queues retries.
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
            let mut done: HashSet<InstanceUuid> = vms
                .iter()
                .filter(|v| v.status == RunStatus::Success)
                .map(|v| v.instance_uuid.clone())
                .collect();
            if run.kind == RunKind::Backup {
                for vm in vms.iter().filter(|v| v.status != RunStatus::Success) {
                    if self.credit_committed(&run, vm).await {
                        done.insert(vm.instance_uuid.clone());
                    }
                }
            }
            self.spawn_sweeps(
                &run,
                vms.iter()
                    .filter(|v| v.status != RunStatus::Queued || v.started_at.is_some())
                    .map(|v| {
                        (
                            v.vcenter_id.clone(),
                            v.instance_uuid.clone(),
                            v.vm_name.clone(),
                        )
                    })
                    .collect(),
            );
            let pending: Vec<String> = vms
                .iter()
                .filter(|v| !done.contains(&v.instance_uuid))
                .map(|v| v.instance_uuid.to_string())
                .collect();
            if vms.is_empty() || !pending.is_empty() {
                self.maybe_retry(&run, pending).await;
            }
        }
        Ok(count)
    }

    /// F2: the engine committed this VM's backup (the manifest exists and names this run's
    /// snapshot) but the server died before recording it: record it now.
    async fn credit_committed(&self, run: &Run, vm: &RunVm) -> bool {
        let ctx = &self.inner.ctx;
        let snapshot = format!("vbm-{}", run.id);
        let Ok(Some(backup)) = ctx
            .db
            .backup_by_snapshot(snapshot, vm.instance_uuid.to_string())
            .await
        else {
            return false;
        };
        let mut record = vm.clone();
        record.status = RunStatus::Success;
        record.backup_id = Some(backup.id.clone());
        record.mode = Some(backup.mode.clone());
        record.bytes_read = backup.bytes_read;
        record.bytes_written = backup.bytes_written;
        record.error = None;
        record.finished_at = Some(backup.finished);
        if ctx.db.run_vm_put(run.id.clone(), record).await.is_err() {
            return false;
        }
        let _ = ctx
            .db
            .backup_record(entry_of(&backup), Some(run.id.clone()))
            .await;
        self.log(
            &run.id,
            "info",
            format!(
                "VM {}: backup {} was committed before the stop; recorded as this run's result",
                vm.vm_name, backup.id
            ),
        )
        .await;
        true
    }

    /// Sweeps the `vbm-*` snapshots of the VMs an interrupted run touched, in the background.
    fn spawn_sweeps(&self, run: &Run, vms: Vec<(VcenterId, InstanceUuid, String)>) {
        if vms.is_empty() {
            return;
        }
        let this = self.clone();
        let run_id = run.id.clone();
        self.inner.tasks.spawn(async move {
            let stopping = this.inner.stopping.clone();
            for (vc, uuid, name) in vms {
                let Some(_lock) = this.inner.gates.lock_vm(&vc, &uuid, &stopping).await else {
                    return;
                };
                let mut delay = SWEEP_FIRST_DELAY;
                for attempt in 1..=SWEEP_ATTEMPTS {
                    let result = match this.inner.ctx.target(vc.clone()).await {
                        Ok(target) => this
                            .inner
                            .ctx
                            .backend
                            .sweep_snapshots(target, uuid.clone())
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
                            .await;
                            break;
                        }
                        Err(e) if attempt < SWEEP_ATTEMPTS => {
                            this.log(
                                &run_id,
                                "warn",
                                format!(
                                    "could not sweep snapshots of VM {name} (attempt {attempt}): {e}; retrying in {} s",
                                    delay.as_secs()
                                ),
                            )
                            .await;
                            tokio::select! {
                                () = stopping.cancelled() => return,
                                () = tokio::time::sleep(delay) => {}
                            }
                            delay = delay.saturating_mul(6);
                        }
                        Err(e) => {
                            this.log(
                                &run_id,
                                "warn",
                                format!(
                                    "could not sweep snapshots of VM {name}: {e}; the next backup of the VM removes them"
                                ),
                            )
                            .await;
                        }
                    }
                }
            }
        });
    }

    /// Queues a retry when the job allows one more attempt (`vms` empty: all of them).
    pub(super) async fn maybe_retry(&self, run: &Run, vms: Vec<String>) {
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
                .await;
            }
            Err(e) => {
                self.log(&run.id, "warn", format!("no retry queued: {e}"))
                    .await;
            }
        }
    }
}
