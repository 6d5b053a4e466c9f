//! The snapshot sweep (INV-6: a snapshot vbm creates is always removed).
//!
//! The engine removes its snapshot when a backup ends and sweeps a VM's `vbm-*` snapshots
//! before every backup of it; after a crash, recovery sweeps the VMs of interrupted runs. What
//! can still stay behind: a snapshot whose removal vCenter refused, one left while vCenter was
//! unreachable during recovery, or one on a VM that is no longer backed up. So every
//! `[snapshots] sweep_interval_secs` every vCenter's VMs are listed and a VM carrying a
//! `vbm-<run id>` snapshot of a run this server knows to be over is swept, under the VM's lock
//! (never beside a backup of the VM). A `vbm-*` snapshot of a run this server does not know (a
//! `vbm backup` from the command line, another vbm server) is reported, and its VM is not
//! swept: that backup may still be running. The `vbm_leftover_snapshots` gauge counts what
//! stays.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Runner;
use crate::backend::VmSummary;
use crate::db::Page;
use crate::ids::RunId;

impl Runner {
    /// Sweeps every `interval` until `shutdown` (never when `interval` is zero).
    pub async fn snapshot_sweeper(self, interval: Duration, shutdown: CancellationToken) {
        if interval.is_zero() {
            return;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            if self.inner.ctx.db.maintenance().is_some() {
                continue;
            }
            let left = self.sweep_leftover_snapshots(&shutdown).await;
            self.inner.ctx.metrics.set_leftover_snapshots(left);
        }
    }

    /// One pass over every vCenter; returns how many `vbm-*` snapshots stay.
    async fn sweep_leftover_snapshots(&self, stop: &CancellationToken) -> u64 {
        let ctx = &self.inner.ctx;
        let mut left = 0u64;
        let mut after = None;
        loop {
            let page = match ctx.db.vcenter_list(Page { limit: 100, after }).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, "snapshot sweep: cannot list vCenters");
                    return left;
                }
            };
            for row in page.items {
                let vc = row.vcenter;
                let target = match ctx.target(vc.id.clone()).await {
                    Ok(target) => target,
                    Err(e) => {
                        tracing::warn!(vcenter = %vc.name, error = %e, "snapshot sweep skipped");
                        continue;
                    }
                };
                let vms = match ctx.backend.list_vms(target.clone()).await {
                    Ok(vms) => vms,
                    Err(e) => {
                        tracing::warn!(vcenter = %vc.name, error = %e, "snapshot sweep: cannot list VMs");
                        continue;
                    }
                };
                for vm in vms.into_iter().filter(|vm| !vm.vbm_snapshots.is_empty()) {
                    if stop.is_cancelled() {
                        return left;
                    }
                    let Owners {
                        finished,
                        active,
                        foreign,
                    } = self.owners(&vm).await;
                    if !foreign.is_empty() {
                        tracing::warn!(
                            vcenter = %vc.name, vm = %vm.name, snapshots = ?foreign,
                            "vbm snapshot(s) of runs this server does not know: the VM is left alone"
                        );
                        left += (vm.vbm_snapshots.len() - active) as u64;
                        continue;
                    }
                    // A backup in progress: the next sweep looks again.
                    if finished.is_empty() || active > 0 {
                        left += finished.len() as u64;
                        continue;
                    }
                    let Some(_lock) = self
                        .inner
                        .gates
                        .lock_vm(&vc.id, &vm.instance_uuid, stop)
                        .await
                    else {
                        return left;
                    };
                    let swept = ctx
                        .backend
                        .sweep_snapshots(target.clone(), vm.instance_uuid.clone())
                        .await;
                    for run in &finished {
                        let (level, message) = match &swept {
                            Ok(_) => (
                                "info",
                                format!(
                                    "snapshot sweep: removed snapshot vbm-{run} this run left on VM {}",
                                    vm.name
                                ),
                            ),
                            Err(e) => (
                                "warn",
                                format!(
                                    "snapshot sweep: snapshot vbm-{run} this run left on VM {} is still there: {e}",
                                    vm.name
                                ),
                            ),
                        };
                        self.log(run, level, message).await;
                    }
                    if swept.is_err() {
                        left += finished.len() as u64;
                    }
                }
            }
            match page.next {
                Some(next) => after = Some(next),
                None => return left,
            }
        }
    }

    /// Whose `vbm-*` snapshots the VM carries.
    async fn owners(&self, vm: &VmSummary) -> Owners {
        let mut owners = Owners::default();
        for snapshot in &vm.vbm_snapshots {
            let run = snapshot
                .name
                .strip_prefix(vbm_engine::SNAPSHOT_PREFIX)
                .and_then(|id| RunId::parse(id).ok());
            let status = match &run {
                Some(id) => self
                    .inner
                    .ctx
                    .db
                    .run_get(id.clone())
                    .await
                    .ok()
                    .map(|r| r.status),
                None => None,
            };
            match (run, status) {
                (Some(id), Some(s)) if s.is_terminal() => owners.finished.push(id),
                (Some(_), Some(_)) => owners.active += 1,
                _ => owners.foreign.push(snapshot.name.clone()),
            }
        }
        owners
    }
}

/// The `vbm-*` snapshots of one VM by owner.
#[derive(Debug, Default)]
struct Owners {
    /// Runs of this server that are over: their snapshots are leftovers.
    finished: Vec<RunId>,
    /// Snapshots of this server's queued or running runs (a backup in progress).
    active: usize,
    /// Snapshots of runs this server does not know (command line, another server).
    foreign: Vec<String>,
}
