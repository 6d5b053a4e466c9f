//! Blocking repository work of the engine backend: the catalog, retention (the repository's own
//! planner with the job's policy), garbage collection and usage figures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use vbm_engine::vbm_repo::gc::{GcOptions, GcProgress};
use vbm_engine::vbm_repo::lock::LockKind;
use vbm_engine::vbm_repo::prune::{self, Action, PruneGuards, RetentionPolicy};
use vbm_engine::vbm_repo::{self, Cancel, Catalog, Repository, VmKey};

use super::convert;
use crate::backend::{
    BackendError, CatalogListing, GcOutcome, Progress, ProgressSink, RepoStats, RetentionOutcome,
    RetentionRequest,
};
use crate::ids::{BackupId, InstanceUuid};
use crate::jobs::retention::{Decision, Retention, RetentionPlan};

/// The repository's id of a service backup id.
pub(super) fn repo_id(id: &BackupId) -> Result<vbm_repo::BackupId, BackendError> {
    id.as_str()
        .parse()
        .map_err(|e| BackendError::NotFound(format!("no backup {id} in the repository ({e})")))
}

/// Every committed backup with its manifest and verify state.
pub(super) fn catalog(repo: &Repository) -> Result<CatalogListing, BackendError> {
    let catalog = Catalog::load(repo).map_err(convert::repo_error)?;
    let mut listing = CatalogListing::default();
    for e in catalog.entries() {
        listing
            .entries
            .push(convert::entry(&e.id, &e.manifest, e.verify.as_ref())?);
    }
    for (id, why) in &catalog.unreadable {
        tracing::warn!(backup = %id, reason = %why, "a manifest cannot be read; its catalog row is kept");
        listing.unreadable.push(convert::backup_id(id)?);
    }
    Ok(listing)
}

/// The repository key of a VM (`vbm_engine::vm_key`, which needs a whole `Vm`).
fn vm_key(uuid: &InstanceUuid) -> Result<VmKey, BackendError> {
    let clean: String = uuid
        .as_str()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    VmKey::new(format!("vm-{clean}")).map_err(convert::repo_error)
}

fn policy(r: &Retention) -> RetentionPolicy {
    RetentionPolicy {
        keep_last: r.keep_last,
        max_age_days: r.max_age_days,
        keep_daily: r.keep_daily,
        keep_weekly: r.keep_weekly,
        keep_monthly: r.keep_monthly,
        keep_yearly: r.keep_yearly,
    }
}

/// The job's committed backups of the VM (by the `job_id` their manifests record), which of
/// them a restore holds, grouped by the vCenter they were read through: the same instance UUID
/// in two vCenters (a replicated VM) shares a repository key, but each copy keeps its own
/// restore points. Group key: the vCenter's instance UUID (none for standalone hosts and older
/// manifests); value: the vCenter's name for messages and the candidates, oldest first.
type Groups = BTreeMap<Option<String>, (String, Vec<prune::Candidate>)>;

fn candidates(repo: &Repository, request: &RetentionRequest) -> Result<Groups, BackendError> {
    let key = vm_key(&request.instance_uuid)?;
    let listing = repo.list_backups().map_err(convert::repo_error)?;
    let in_use: BTreeSet<vbm_repo::BackupId> = repo
        .locks()
        .map_err(convert::repo_error)?
        .into_iter()
        .filter(|l| l.stale.is_none())
        .filter_map(|l| match l.record {
            Ok(r) if r.kind == LockKind::Read => r.backup,
            _ => None,
        })
        .collect();
    let job = request.job_id.to_string();
    let mut out = Groups::new();
    for id in listing.committed.into_iter().filter(|id| id.vm() == &key) {
        match repo.read_manifest(&id) {
            Ok(m) if m.job_id == job => {
                let group = out
                    .entry(m.vcenter_uuid.map(|u| u.to_ascii_lowercase()))
                    .or_insert_with(|| (m.vcenter.clone(), Vec::new()));
                group.1.push(prune::Candidate {
                    in_use: in_use.contains(&id),
                    id,
                });
            }
            Ok(_) => {}
            // Unreadable backups are never candidates: removing what cannot be read is a
            // decision for an operator (S-D6).
            Err(e) => {
                tracing::warn!(backup = %id, error = %e, "skipped by retention: manifest unreadable");
            }
        }
    }
    Ok(out)
}

fn view(plan: &prune::PrunePlan) -> Result<RetentionPlan, BackendError> {
    let mut keep = Vec::new();
    let mut remove = Vec::new();
    // Newest first, as the API shows it.
    for e in plan.entries.iter().rev() {
        let decision = Decision {
            backup_id: convert::backup_id(&e.id)?,
            taken: e.id.time(),
            reasons: e.reasons.clone(),
            future_dated: e.future_dated,
        };
        match e.action {
            Action::Keep => keep.push(decision),
            Action::Remove => remove.push(decision),
        }
    }
    Ok(RetentionPlan {
        keep,
        remove,
        blocked: plan.refused.clone(),
    })
}

/// Plans retention for one VM of one job with the repository's planner, and with `apply`
/// removes what it removes (manifest first: a removal is atomic; idempotent on a rerun, F3).
pub(super) fn retention(
    repo: &Repository,
    request: &RetentionRequest,
) -> Result<RetentionOutcome, BackendError> {
    let groups = candidates(repo, request)?;
    if request.policy.is_empty() {
        // No rule: everything stays (the planner would refuse the empty policy instead).
        let mut plan = RetentionPlan {
            keep: Vec::new(),
            remove: Vec::new(),
            blocked: None,
        };
        let mut all: Vec<&prune::Candidate> = groups.values().flat_map(|g| &g.1).collect();
        all.sort_by_key(|c| c.id.time());
        for c in all.into_iter().rev() {
            plan.keep.push(Decision {
                backup_id: convert::backup_id(&c.id)?,
                taken: c.id.time(),
                reasons: vec!["the job has no retention rule".into()],
                future_dated: false,
            });
        }
        return Ok(RetentionOutcome {
            plan,
            removed: Vec::new(),
        });
    }
    let guards = PruneGuards {
        force: request.force,
        ..PruneGuards::default()
    };
    let policy = policy(&request.policy);
    let plans: Vec<(&String, prune::PrunePlan)> = groups
        .values()
        .map(|(vcenter, c)| (vcenter, prune::plan(c, &policy, &guards, request.now)))
        .collect();
    // One group's guard holds back every removal of the VM: the operator confirms once.
    let blocked = plans.iter().find_map(|(_, p)| p.refused.clone());
    let mut removed = Vec::new();
    if request.apply && blocked.is_none() {
        for id in plans.iter().flat_map(|(_, p)| p.removals()) {
            prune::remove_backup(repo, id).map_err(convert::repo_error)?;
            tracing::info!(backup = %id, "retention removed a backup");
            removed.push(convert::backup_id(id)?);
        }
    }
    let mut merged = RetentionPlan {
        keep: Vec::new(),
        remove: Vec::new(),
        blocked,
    };
    for (vcenter, plan) in &plans {
        let mut one = view(plan)?;
        if plans.len() > 1 {
            for d in one.keep.iter_mut().chain(one.remove.iter_mut()) {
                d.reasons.push(format!(
                    "rules applied to the backups read through {vcenter} on their own"
                ));
            }
        }
        merged.keep.append(&mut one.keep);
        merged.remove.append(&mut one.remove);
    }
    merged.keep.sort_by_key(|d| std::cmp::Reverse(d.taken));
    merged.remove.sort_by_key(|d| std::cmp::Reverse(d.taken));
    Ok(RetentionOutcome {
        plan: merged,
        removed,
    })
}

/// Garbage collection; progress on each phase change, with sweep counts.
pub(super) fn gc(
    repo: &Repository,
    grace: Option<std::time::Duration>,
    progress: &ProgressSink,
    cancel: &Cancel,
) -> Result<GcOutcome, BackendError> {
    // Built from the default: the repository adds options over time, and a struct literal
    // would stop compiling each time it does.
    #[allow(clippy::field_reassign_with_default)]
    let options = {
        let mut o = GcOptions::default();
        o.grace = grace;
        o
    };
    let mut last = None;
    let mut on_progress = |p: &GcProgress| {
        if last != Some(p.phase) {
            last = Some(p.phase);
            let mut event = Progress::message(
                "gc",
                "repository",
                "info",
                format!(
                    "garbage collection: {} ({} backups, {} chunks marked)",
                    format!("{:?}", p.phase).to_lowercase(),
                    p.backups_marked,
                    p.chunks_marked
                ),
            );
            event.bytes_done = p.swept;
            event.bytes_total = (p.to_sweep > 0).then_some(p.to_sweep);
            progress(event);
        }
    };
    let report =
        vbm_repo::gc::gc(repo, &options, &mut on_progress, cancel).map_err(convert::repo_error)?;
    Ok(GcOutcome {
        chunks_deleted: report.chunks_deleted,
        bytes_freed: report.bytes_freed,
        chunks_kept_recent: report.chunks_kept_recent,
        partial_backups_removed: report.partial_backups_removed.len() as u64,
        temp_files_removed: report.temp_files_removed,
        stale_locks_cleared: report.stale_locks_cleared.len() as u64,
        skipped: report
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.path, s.reason))
            .collect(),
    })
}

/// Bytes of the files below `dir` (indexes, blobs, manifests: small next to the chunks).
fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(entry.path()),
                Ok(t) if t.is_file() => {
                    total += entry.metadata().map_or(0, |m| m.len());
                }
                _ => {}
            }
        }
    }
    total
}

/// Usage: the repository's own figures, plus the file system's free and total bytes
/// (`statvfs` of the repository directory; the repository does not report them).
pub(super) fn stats(repo: &Repository, dir: &Path) -> Result<RepoStats, BackendError> {
    let s = vbm_repo::RepoStats::compute(repo).map_err(convert::repo_error)?;
    let fs = rustix::fs::statvfs(dir).map_err(|e| BackendError::Failed {
        message: format!("statvfs of {}: {e}", dir.display()),
        retryable: true,
    })?;
    let used = s
        .chunk_bytes
        .saturating_add(tree_bytes(&dir.join("backups")));
    Ok(RepoStats {
        backups: s.backups,
        partial_backups: s.partial_backups,
        unreadable_backups: s.unreadable_backups,
        vms: s.vms,
        chunks: s.chunks,
        bad_chunks: s.bad_chunks,
        used_bytes: used,
        free_bytes: fs.f_bavail.saturating_mul(fs.f_frsize),
        total_bytes: fs.f_blocks.saturating_mul(fs.f_frsize),
        logical_bytes: s.logical_bytes,
        dedup_ratio: s.dedup_ratio,
        encrypted: s.encrypted,
        chunk_size: s.chunk_size,
    })
}

#[cfg(test)]
mod tests {
    use jiff::Timestamp;
    use prune::Candidate;

    use super::*;

    fn daily(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: format!("vm-1/2026-01-{:02}T020000Z", i + 1)
                    .parse()
                    .unwrap(),
                in_use: false,
            })
            .collect()
    }

    fn plan(r: &Retention, n: usize, now: &str) -> RetentionPlan {
        let now: Timestamp = now.parse().unwrap();
        view(&prune::plan(
            &daily(n),
            &policy(r),
            &PruneGuards::default(),
            now,
        ))
        .unwrap()
    }

    #[test]
    fn keep_last_keeps_the_newest_and_says_why() {
        let p = plan(
            &Retention {
                keep_last: Some(2),
                ..Retention::default()
            },
            3,
            "2026-01-04T00:00:00Z",
        );
        let kept: Vec<_> = p.keep.iter().map(|d| d.backup_id.to_string()).collect();
        assert_eq!(kept, ["vm-1/2026-01-03T020000Z", "vm-1/2026-01-02T020000Z"]);
        assert_eq!(p.remove[0].reasons, ["matched no keep rule"]);
        assert!(p.keep[0].reasons.iter().any(|r| r.contains("newest")));
        assert!(p.blocked.is_none());
    }

    // covers T1: a clock 30 days fast must not wipe history: the plan is blocked.
    #[test]
    fn a_clock_jump_blocks_mass_removal() {
        let policy = Retention {
            max_age_days: Some(7),
            ..Retention::default()
        };
        let normal = plan(&policy, 10, "2026-01-10T03:00:00Z");
        assert!(normal.blocked.is_none(), "{normal:?}");
        assert_eq!(normal.remove.len(), 3);
        let jumped = plan(&policy, 10, "2026-02-10T03:00:00Z");
        assert!(
            jumped
                .blocked
                .as_deref()
                .unwrap()
                .contains("would remove 9 of 10"),
            "{jumped:?}"
        );
        assert!(jumped.keep.iter().any(|d| d.reasons[0].contains("newest")));
    }

    // covers T2: backups from the future are kept, flagged and not counted.
    #[test]
    fn future_backups_are_kept_and_flagged() {
        let p = plan(
            &Retention {
                keep_last: Some(1),
                ..Retention::default()
            },
            3,
            "2026-01-02T00:00:00Z",
        );
        assert!(p.remove.is_empty(), "{p:?}");
        assert_eq!(p.keep.iter().filter(|d| d.future_dated).count(), 2);
    }

    #[test]
    fn vm_keys_match_the_engine() {
        let uuid = InstanceUuid::parse("5029AB5D-1A2B-4C3D-8E9F-0123456789AB").unwrap();
        assert_eq!(
            vm_key(&uuid).unwrap().as_str(),
            "vm-5029ab5d-1a2b-4c3d-8e9f-0123456789ab"
        );
    }
}
