//! Retention: which backups to keep, as a pure function ([`plan`]) with a reason per backup, and
//! its crash-safe execution ([`prune`]).
//!
//! Rules (a backup is kept if **any** rule keeps it):
//! - `keep_last N`: the N newest;
//! - `max_age_days D`: everything younger than D days (restic's keep-within);
//! - `keep_daily/weekly/monthly/yearly N`: the newest backup of each of the N most recent days /
//!   ISO weeks / months / years that have backups (UTC).
//!
//! Guards (FAULT-MATRIX T1, T3): the newest backup of each VM is always kept; backups dated in
//! the future (beyond a tolerance) are flagged, kept, and **not counted** by any rule, so they
//! cannot displace real ones; backups held by a read lock are kept; and a plan that would remove
//! more than `max_remove_share` of a VM's backups is refused unless forced (a clock that jumped
//! forward must not wipe history).
//!
//! Execution removes `manifest.json` first (the backup disappears atomically), then the rest of
//! the directory. It is idempotent: a crash at any point leaves either the backup intact or
//! invisible, and running the same policy again reaches the same final set (F3).

use std::collections::{BTreeMap, BTreeSet};

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::Cancel;
use crate::error::{Error, Result};
use crate::id::{BackupId, VmKey};
use crate::layout;
use crate::lock::{LockKind, LockRecord};
use crate::repository::Repository;

/// A retention policy. `None` means the rule is not used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Keep the N newest backups.
    pub keep_last: Option<u32>,
    /// Keep every backup younger than this many days.
    pub max_age_days: Option<u32>,
    /// Keep the newest backup of each of the N most recent days.
    pub keep_daily: Option<u32>,
    /// … ISO weeks.
    pub keep_weekly: Option<u32>,
    /// … months.
    pub keep_monthly: Option<u32>,
    /// … years.
    pub keep_yearly: Option<u32>,
}

impl RetentionPolicy {
    fn is_empty(&self) -> bool {
        self.keep_last.is_none()
            && self.max_age_days.is_none()
            && self.keep_daily.is_none()
            && self.keep_weekly.is_none()
            && self.keep_monthly.is_none()
            && self.keep_yearly.is_none()
    }
}

/// Safety limits of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneGuards {
    /// Refuse a plan removing more than this share (0–1) of any VM's backups…
    pub max_remove_share: f64,
    /// …unless forced.
    pub force: bool,
    /// Backups dated more than this after "now" are future-dated.
    pub future_tolerance: SignedDuration,
}

impl Default for PruneGuards {
    fn default() -> Self {
        PruneGuards {
            max_remove_share: 0.5,
            force: false,
            future_tolerance: SignedDuration::from_mins(10),
        }
    }
}

/// A backup as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The backup.
    pub id: BackupId,
    /// Held by a read lock (a restore is using it).
    pub in_use: bool,
}

/// Keep or remove.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Stays.
    Keep,
    /// Goes.
    Remove,
}

/// The decision about one backup, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanEntry {
    /// The backup.
    pub id: BackupId,
    /// Keep or remove.
    pub action: Action,
    /// Every rule that keeps it, or why it is removed.
    pub reasons: Vec<String>,
    /// Dated in the future (not counted by the rules; review it).
    pub future_dated: bool,
}

/// A complete prune plan (serialisable: dry runs and API previews print it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrunePlan {
    /// The time the plan was computed for.
    pub now: Timestamp,
    /// The policy.
    pub policy: RetentionPolicy,
    /// One entry per backup, by VM then time.
    pub entries: Vec<PlanEntry>,
    /// Why the plan must not run (guard tripped), if so.
    pub refused: Option<String>,
}

impl PrunePlan {
    /// The backups the plan removes.
    pub fn removals(&self) -> impl Iterator<Item = &BackupId> {
        self.entries
            .iter()
            .filter(|e| e.action == Action::Remove)
            .map(|e| &e.id)
    }
}

type BucketFn = fn(Timestamp) -> (i32, i32, i32);

fn day(t: Timestamp) -> (i32, i32, i32) {
    let d = t.to_zoned(TimeZone::UTC).date();
    (
        i32::from(d.year()),
        i32::from(d.month()),
        i32::from(d.day()),
    )
}

fn week(t: Timestamp) -> (i32, i32, i32) {
    let w = t.to_zoned(TimeZone::UTC).date().iso_week_date();
    (i32::from(w.year()), i32::from(w.week()), 0)
}

fn month(t: Timestamp) -> (i32, i32, i32) {
    let d = t.to_zoned(TimeZone::UTC).date();
    (i32::from(d.year()), i32::from(d.month()), 0)
}

fn year(t: Timestamp) -> (i32, i32, i32) {
    (i32::from(t.to_zoned(TimeZone::UTC).date().year()), 0, 0)
}

/// Computes what `policy` keeps and removes at `now`. Pure: no I/O, deterministic.
#[must_use]
pub fn plan(
    candidates: &[Candidate],
    policy: &RetentionPolicy,
    guards: &PruneGuards,
    now: Timestamp,
) -> PrunePlan {
    let mut by_vm: BTreeMap<&VmKey, Vec<&Candidate>> = BTreeMap::new();
    for c in candidates {
        by_vm.entry(c.id.vm()).or_default().push(c);
    }
    let mut entries = Vec::new();
    let mut refused = None;
    if policy.is_empty() {
        refused = Some("no retention rule given; nothing would be kept by rule".into());
    }
    let future_limit = now.checked_add(guards.future_tolerance).unwrap_or(now);
    for (vm, mut list) in by_vm {
        // Newest first.
        list.sort_by(|a, b| b.id.cmp(&a.id));
        list.dedup_by(|a, b| a.id == b.id);
        let mut reasons: Vec<Vec<String>> = vec![Vec::new(); list.len()];
        let future: Vec<bool> = list.iter().map(|c| c.id.time() > future_limit).collect();
        let counted: Vec<usize> = (0..list.len()).filter(|&i| !future[i]).collect();
        if let Some(&newest) = counted.first() {
            reasons[newest].push("newest backup of the VM (always kept)".into());
        }
        for &i in &counted {
            if list[i].in_use {
                reasons[i].push("in use by a restore (read lock)".into());
            }
        }
        if let Some(n) = policy.keep_last {
            for (rank, &i) in counted.iter().take(n as usize).enumerate() {
                reasons[i].push(format!("keep-last {n} (#{})", rank + 1));
            }
        }
        if let Some(days) = policy.max_age_days {
            let limit = now
                .checked_sub(SignedDuration::from_hours(24 * i64::from(days)))
                .unwrap_or(now);
            for &i in &counted {
                if list[i].id.time() >= limit {
                    reasons[i].push(format!("younger than max-age {days} days"));
                }
            }
        }
        let rules: [(&str, Option<u32>, BucketFn); 4] = [
            ("keep-daily", policy.keep_daily, day),
            ("keep-weekly", policy.keep_weekly, week),
            ("keep-monthly", policy.keep_monthly, month),
            ("keep-yearly", policy.keep_yearly, year),
        ];
        for (name, n, bucket) in rules {
            let Some(n) = n else { continue };
            let mut last = None;
            let mut kept = 0u32;
            for &i in &counted {
                if kept >= n {
                    break;
                }
                let b = bucket(list[i].id.time());
                if last != Some(b) {
                    last = Some(b);
                    kept += 1;
                    reasons[i].push(format!("{name} {n} (#{kept})"));
                }
            }
        }
        let mut removed = 0usize;
        for (i, c) in list.iter().enumerate() {
            let (action, why) = if future[i] {
                (
                    Action::Keep,
                    vec![format!(
                        "dated in the future ({}); not counted by the rules, review it",
                        c.id.time()
                    )],
                )
            } else if reasons[i].is_empty() {
                removed += 1;
                (Action::Remove, vec!["matched no keep rule".into()])
            } else {
                (Action::Keep, std::mem::take(&mut reasons[i]))
            };
            entries.push(PlanEntry {
                id: c.id.clone(),
                action,
                reasons: why,
                future_dated: future[i],
            });
        }
        let share = removed as f64 / list.len().max(1) as f64;
        if removed > 0 && share > guards.max_remove_share && !guards.force && refused.is_none() {
            refused = Some(format!(
                "would remove {removed} of {} backups of VM {vm} ({:.0} %, limit {:.0} %); check \
                 the clock and the policy, then use --force",
                list.len(),
                share * 100.0,
                guards.max_remove_share * 100.0
            ));
        }
    }
    entries.sort_by(|a, b| a.id.cmp(&b.id));
    PrunePlan {
        now,
        policy: policy.clone(),
        entries,
        refused,
    }
}

/// Options of [`prune`].
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// The policy.
    pub policy: RetentionPolicy,
    /// Guards.
    pub guards: PruneGuards,
    /// Only this VM.
    pub vm: Option<VmKey>,
    /// Compute and return the plan only.
    pub dry_run: bool,
}

/// The result of [`prune`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneReport {
    /// The plan.
    pub plan: PrunePlan,
    /// Backups removed by this run.
    pub removed: Vec<BackupId>,
    /// Whether it was a dry run.
    pub dry_run: bool,
}

/// Plans and (unless dry-run) executes retention under the exclusive prune lock.
///
/// # Errors
/// [`Error::PruneRefused`] when a guard trips (nothing removed), [`Error::LockConflict`], I/O
/// errors (removal stops; what was removed is consistent).
pub fn prune(
    repo: &Repository,
    options: &PruneOptions,
    progress: &mut dyn FnMut(&BackupId),
    cancel: &Cancel,
) -> Result<PruneReport> {
    let lock = if options.dry_run {
        None
    } else {
        Some(repo.inner.locks.exclusive(LockKind::Prune)?)
    };
    let listing = repo.list_backups()?;
    let in_use: BTreeSet<BackupId> = repo
        .inner
        .locks
        .list()?
        .into_iter()
        .filter(|l| l.stale.is_none())
        .filter_map(|l| match l.record {
            Ok(LockRecord {
                kind: LockKind::Read,
                backup: Some(b),
                ..
            }) => Some(b),
            _ => None,
        })
        .collect();
    let candidates: Vec<Candidate> = listing
        .committed
        .into_iter()
        .filter(|id| options.vm.as_ref().is_none_or(|vm| id.vm() == vm))
        .map(|id| Candidate {
            in_use: in_use.contains(&id),
            id,
        })
        .collect();
    let plan = plan(
        &candidates,
        &options.policy,
        &options.guards,
        repo.clock().now(),
    );
    if options.dry_run {
        return Ok(PruneReport {
            plan,
            removed: Vec::new(),
            dry_run: true,
        });
    }
    if let Some(reason) = &plan.refused {
        return Err(Error::PruneRefused {
            reason: reason.clone(),
        });
    }
    let mut removed = Vec::new();
    for id in plan.removals() {
        cancel.check()?;
        if let Some(l) = &lock {
            l.renew_if_due()?;
        }
        remove_backup(repo, id)?;
        progress(id);
        removed.push(id.clone());
    }
    if let Some(l) = lock {
        l.release()?;
    }
    Ok(PruneReport {
        plan,
        removed,
        dry_run: false,
    })
}

/// Removes one backup: the manifest first (commit point of the removal), then its directory.
///
/// # Errors
/// I/O errors; a rerun finishes the job.
pub fn remove_backup(repo: &Repository, id: &BackupId) -> Result<()> {
    let backend = repo.backend();
    backend.delete(&layout::manifest(id))?;
    backend.delete_prefix(&layout::backup_dir(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Candidate {
        Candidate {
            id: format!("vm-1/{s}").parse().unwrap(),
            in_use: false,
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn kept(p: &PrunePlan) -> Vec<String> {
        p.entries
            .iter()
            .filter(|e| e.action == Action::Keep)
            .map(|e| e.id.time_str())
            .collect()
    }

    #[test]
    fn keep_last_keeps_newest_and_explains() {
        let cands = vec![
            c("2026-01-01T000000Z"),
            c("2026-01-02T000000Z"),
            c("2026-01-03T000000Z"),
        ];
        let p = plan(
            &cands,
            &RetentionPolicy {
                keep_last: Some(2),
                ..Default::default()
            },
            &PruneGuards::default(),
            ts("2026-01-04T00:00:00Z"),
        );
        assert_eq!(kept(&p), vec!["2026-01-02T000000Z", "2026-01-03T000000Z"]);
        assert!(p.refused.is_none());
        let removed = &p.entries[0];
        assert_eq!(removed.reasons, vec!["matched no keep rule"]);
        assert!(p.entries[2].reasons.iter().any(|r| r.contains("newest")));
    }

    #[test]
    fn empty_policy_is_refused() {
        let p = plan(
            &[c("2026-01-01T000000Z")],
            &RetentionPolicy::default(),
            &PruneGuards::default(),
            ts("2026-01-04T00:00:00Z"),
        );
        assert!(p.refused.is_some());
    }
}
