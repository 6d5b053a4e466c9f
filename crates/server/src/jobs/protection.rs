//! Protection (FAULT-MATRIX R3): which VMs a job protects, and which of them have no successful
//! backup within the job's recovery point objective — also when no run "failed", e.g. when a VM
//! silently dropped out of the job's selection (renamed, moved, a pattern edited).
//!
//! A VM is protected by a job when the job names it explicitly, or has backed it up or tried to
//! (its runs' per-VM results, its backups in the catalog). It stops being protected only by an
//! explicit decision: an `exclude` rule that matches it, or removing its vCenter from the job.

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;
use utoipa::ToSchema;

use crate::ids::VcenterId;
use crate::jobs::selection::glob;
use crate::jobs::{Job, JobSpec};
use crate::scheduler::CronSchedule;

/// What the job knows about one VM (from run results and the catalog).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenVm {
    /// The vCenter, when a run recorded it.
    pub vcenter_id: Option<VcenterId>,
    /// Instance UUID (lowercase).
    pub instance_uuid: String,
    /// Latest known name.
    pub vm_name: String,
    /// When the job first tried or made a backup of it.
    pub first_seen: Option<Timestamp>,
    /// Its newest successful backup by this job.
    pub last_success: Option<Timestamp>,
}

/// One protected VM.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct VmProtection {
    /// Instance UUID.
    pub instance_uuid: String,
    /// Latest known name.
    pub vm_name: String,
    /// Newest successful backup by this job.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_success: Option<Timestamp>,
    /// No successful backup within the RPO.
    pub overdue: bool,
}

/// A job's protection state.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Protection {
    /// The RPO in force (minutes): the job's `rpo_minutes`, else one schedule interval plus
    /// two hours; `null` for a job without either (not monitored).
    pub rpo_minutes: Option<u64>,
    /// Protected VMs, by name.
    pub vms: Vec<VmProtection>,
    /// How many are overdue.
    pub overdue: usize,
}

/// The RPO of a job: `rpo_minutes`, or the longest gap between its next scheduled runs plus two
/// hours (a daily job: 26 h).
#[must_use]
pub fn rpo(spec: &JobSpec, now: Timestamp) -> Option<SignedDuration> {
    if let Some(m) = spec.rpo_minutes {
        return Some(SignedDuration::from_mins(i64::from(m)));
    }
    let schedule = spec.schedule.as_ref()?;
    let cron = CronSchedule::parse(&schedule.cron, &schedule.timezone).ok()?;
    let mut at = cron.next_after(now)?;
    let mut longest = SignedDuration::ZERO;
    for _ in 0..8 {
        let next = cron.next_after(at)?;
        longest = longest.max(next.duration_since(at));
        at = next;
    }
    Some(longest.saturating_add(SignedDuration::from_hours(2)))
}

/// Whether the job's definition deliberately leaves the VM out.
fn deliberately_unprotected(spec: &JobSpec, vm: &SeenVm) -> bool {
    let sources: Vec<_> = spec
        .sources
        .iter()
        .filter(|s| vm.vcenter_id.as_ref().is_none_or(|vc| *vc == s.vcenter_id))
        .collect();
    if sources.is_empty() {
        return true;
    }
    sources.iter().all(|s| {
        s.exclude
            .iter()
            .any(|e| e.eq_ignore_ascii_case(&vm.instance_uuid) || glob(e, &vm.vm_name))
    })
}

/// The protection state of a job at `now`.
#[must_use]
pub fn assess(job: &Job, mut seen: Vec<SeenVm>, now: Timestamp) -> Protection {
    for source in &job.spec.sources {
        for uuid in &source.vms {
            if !seen.iter().any(|v| v.instance_uuid == uuid.as_str()) {
                seen.push(SeenVm {
                    vcenter_id: Some(source.vcenter_id.clone()),
                    instance_uuid: uuid.to_string(),
                    vm_name: uuid.to_string(),
                    first_seen: Some(job.created_at),
                    last_success: None,
                });
            }
        }
    }
    let rpo = rpo(&job.spec, now);
    let mut vms: Vec<VmProtection> = seen
        .into_iter()
        .filter(|vm| !deliberately_unprotected(&job.spec, vm))
        .map(|vm| {
            let since = vm.last_success.or(vm.first_seen).unwrap_or(job.created_at);
            let overdue = rpo.is_some_and(|rpo| now.duration_since(since) > rpo);
            VmProtection {
                instance_uuid: vm.instance_uuid,
                vm_name: vm.vm_name,
                last_success: vm.last_success,
                overdue,
            }
        })
        .collect();
    vms.sort_by(|a, b| (&a.vm_name, &a.instance_uuid).cmp(&(&b.vm_name, &b.instance_uuid)));
    Protection {
        rpo_minutes: rpo.map(|d| u64::try_from(d.as_mins()).unwrap_or(0)),
        overdue: vms.iter().filter(|v| v.overdue).count(),
        vms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{InstanceUuid, JobId};
    use crate::jobs::VmSelection;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn job(vc: &VcenterId, exclude: &[&str], rpo_minutes: Option<u32>) -> Job {
        let spec: JobSpec = serde_json::from_value(serde_json::json!({
            "name": "nightly",
            "sources": [VmSelection {
                vcenter_id: vc.clone(),
                vms: vec![],
                folders: vec![],
                name_patterns: vec!["web*".into()],
                exclude: exclude.iter().map(|s| (*s).to_owned()).collect(),
            }],
            "schedule": {"cron": "30 2 * * *", "timezone": "UTC"},
        }))
        .unwrap();
        Job {
            id: JobId::generate(),
            spec: JobSpec {
                rpo_minutes,
                ..spec
            },
            created_at: at("2026-01-01T00:00:00Z"),
            updated_at: at("2026-01-01T00:00:00Z"),
        }
    }

    fn seen(vc: &VcenterId, name: &str, last: &str) -> SeenVm {
        SeenVm {
            vcenter_id: Some(vc.clone()),
            instance_uuid: InstanceUuid::generate().to_string(),
            vm_name: name.into(),
            first_seen: Some(at("2026-01-01T02:30:00Z")),
            last_success: Some(at(last)),
        }
    }

    // covers R3: a VM that dropped out of the selection is overdue after one RPO.
    #[test]
    fn a_vm_without_a_recent_backup_is_overdue() {
        let vc = VcenterId::generate();
        let j = job(&vc, &[], None);
        let now = at("2026-01-03T03:00:00Z");
        let p = assess(
            &j,
            vec![
                seen(&vc, "web01", "2026-01-03T02:31:00Z"),
                seen(&vc, "app01", "2026-01-01T02:31:00Z"),
            ],
            now,
        );
        assert_eq!(p.rpo_minutes, Some(26 * 60));
        assert_eq!(p.overdue, 1);
        let app = p.vms.iter().find(|v| v.vm_name == "app01").unwrap();
        assert!(app.overdue);
    }

    #[test]
    fn explicit_exclusions_and_removed_vcenters_end_protection() {
        let vc = VcenterId::generate();
        let j = job(&vc, &["app*"], Some(60));
        let now = at("2026-02-01T00:00:00Z");
        let p = assess(
            &j,
            vec![
                seen(&vc, "app01", "2026-01-01T02:31:00Z"),
                seen(&VcenterId::generate(), "web09", "2026-01-01T02:31:00Z"),
            ],
            now,
        );
        assert!(p.vms.is_empty(), "{p:?}");
    }

    #[test]
    fn manual_jobs_without_rpo_are_not_monitored() {
        let vc = VcenterId::generate();
        let mut j = job(&vc, &[], None);
        j.spec.schedule = None;
        let p = assess(
            &j,
            vec![seen(&vc, "web01", "2026-01-01T02:31:00Z")],
            at("2027-01-01T00:00:00Z"),
        );
        assert_eq!(p.rpo_minutes, None);
        assert_eq!(p.overdue, 0);
    }
}
