//! Retention: a pure plan of which restore points of one VM a policy keeps, and why (PBS
//! `compute_prune_info`, restic `ApplyPolicy`). Executing the plan is the runner's job.
//!
//! Guards against clocks that jump (FAULT-MATRIX T1/T2): `max_age_days` counts back from the
//! *newest* backup, not from "now", so a clock 30 days fast deletes nothing; the newest backup is
//! always kept; backups dated in the future are kept and flagged; and a plan that would remove
//! more than half of a VM's backups (and more than two) is blocked until confirmed.

use std::collections::HashSet;

use jiff::{Timestamp, ToSpan, tz::TimeZone};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::BackupId;
use crate::vcenter::FieldError;

/// A retention policy; every rule is optional and they combine (a backup any rule keeps stays).
/// With no rule at all, everything is kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest N (1-10000).
    #[serde(default)]
    pub keep_last: Option<u32>,
    /// Keep everything at most this many days older than the newest backup (1-36500).
    #[serde(default)]
    pub max_age_days: Option<u32>,
    /// Keep the newest backup of each of the last N days (UTC).
    #[serde(default)]
    pub keep_daily: Option<u32>,
    /// … of each of the last N ISO weeks.
    #[serde(default)]
    pub keep_weekly: Option<u32>,
    /// … of each of the last N months.
    #[serde(default)]
    pub keep_monthly: Option<u32>,
    /// … of each of the last N years.
    #[serde(default)]
    pub keep_yearly: Option<u32>,
}

impl Retention {
    pub(crate) fn validate(&self, errors: &mut Vec<FieldError>) {
        let rules = [
            ("retention.keep_last", self.keep_last, 10_000),
            ("retention.max_age_days", self.max_age_days, 36_500),
            ("retention.keep_daily", self.keep_daily, 10_000),
            ("retention.keep_weekly", self.keep_weekly, 10_000),
            ("retention.keep_monthly", self.keep_monthly, 10_000),
            ("retention.keep_yearly", self.keep_yearly, 1_000),
        ];
        for (field, value, max) in rules {
            if let Some(v) = value
                && !(1..=max).contains(&v)
            {
                errors.push(FieldError::new(
                    field,
                    format!("must be between 1 and {max}, got {v}"),
                ));
            }
        }
    }

    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One restore point as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Id.
    pub id: BackupId,
    /// When the backup was taken.
    pub taken: Timestamp,
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Decision {
    /// The backup.
    pub backup_id: BackupId,
    /// When it was taken.
    #[schema(value_type = String, format = DateTime)]
    pub taken: Timestamp,
    /// Why it is kept (rule names) or removed (`"no rule keeps it"`).
    pub reasons: Vec<String>,
}

/// What a policy does to one VM's backups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct RetentionPlan {
    /// Kept, newest first.
    pub keep: Vec<Decision>,
    /// Removed, newest first.
    pub remove: Vec<Decision>,
    /// Set when the plan must not run without confirmation (the T1 guard).
    pub blocked: Option<String>,
}

/// Computes the plan. Pure: same input, same plan.
#[must_use]
pub fn plan(policy: &Retention, backups: &[Candidate], now: Timestamp) -> RetentionPlan {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    sorted.sort_by(|a, b| b.taken.cmp(&a.taken).then_with(|| b.id.cmp(&a.id)));
    let mut reasons: Vec<Vec<String>> = vec![Vec::new(); sorted.len()];
    if policy.is_empty() {
        for r in &mut reasons {
            r.push("no retention rule".to_owned());
        }
    }
    for (i, b) in sorted.iter().enumerate() {
        if b.taken > now {
            reasons[i].push("dated in the future (clock skew?)".to_owned());
        }
    }
    if let Some(first) = reasons.first_mut() {
        first.push("newest".to_owned());
    }
    if let Some(n) = policy.keep_last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push("keep_last".to_owned());
        }
    }
    if let (Some(days), Some(newest)) = (policy.max_age_days, sorted.first()) {
        let anchor = newest.taken.min(now);
        let limit = anchor
            .checked_sub(i64::from(days).saturating_mul(24).hours())
            .unwrap_or(Timestamp::MIN);
        for (i, b) in sorted.iter().enumerate() {
            if b.taken >= limit {
                reasons[i].push("max_age_days".to_owned());
            }
        }
    }
    let buckets: [(Option<u32>, &str, BucketKey); 4] = [
        (policy.keep_daily, "keep_daily", |t| day(t).to_string()),
        (policy.keep_weekly, "keep_weekly", |t| {
            let w = day(t).iso_week_date();
            format!("{}-W{}", w.year(), w.week())
        }),
        (policy.keep_monthly, "keep_monthly", |t| {
            let d = day(t);
            format!("{}-{}", d.year(), d.month())
        }),
        (policy.keep_yearly, "keep_yearly", |t| {
            day(t).year().to_string()
        }),
    ];
    for (count, name, key) in buckets {
        let Some(count) = count else { continue };
        let mut seen = HashSet::new();
        for (i, b) in sorted.iter().enumerate() {
            if seen.len() >= count as usize {
                break;
            }
            if seen.insert(key(b.taken)) {
                reasons[i].push(name.to_owned());
            }
        }
    }
    let mut keep = Vec::new();
    let mut remove = Vec::new();
    for (b, r) in sorted.iter().zip(reasons) {
        let decision = |reasons| Decision {
            backup_id: b.id.clone(),
            taken: b.taken,
            reasons,
        };
        if r.is_empty() {
            remove.push(decision(vec!["no rule keeps it".to_owned()]));
        } else {
            keep.push(decision(r));
        }
    }
    let blocked = (remove.len() > 2 && remove.len() * 2 > sorted.len()).then(|| {
        format!(
            "would remove {} of {} backups at once; confirm to apply",
            remove.len(),
            sorted.len()
        )
    });
    RetentionPlan {
        keep,
        remove,
        blocked,
    }
}

/// Maps a time to its GFS bucket (day, week, month, year).
type BucketKey = fn(Timestamp) -> String;

fn day(t: Timestamp) -> jiff::civil::Date {
    t.to_zoned(TimeZone::UTC).date()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn daily(n: usize, from: &str) -> Vec<Candidate> {
        let start = at(from);
        (0..n)
            .map(|i| Candidate {
                id: BackupId::parse(&format!("vm/b{i:03}")).unwrap(),
                taken: start.checked_add((i as i64 * 24).hours()).unwrap(),
            })
            .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let backups = daily(5, "2026-01-01T02:00:00Z");
        let p = plan(
            &Retention {
                keep_last: Some(3),
                ..Retention::default()
            },
            &backups,
            at("2026-01-06T00:00:00Z"),
        );
        let kept: Vec<_> = p.keep.iter().map(|d| d.backup_id.as_str()).collect();
        assert_eq!(kept, ["vm/b004", "vm/b003", "vm/b002"]);
        assert_eq!(p.remove.len(), 2);
        assert!(p.blocked.is_none());
    }

    // covers T1: a clock 30 days fast must not wipe history.
    #[test]
    fn max_age_counts_from_the_newest_backup() {
        let backups = daily(10, "2026-01-01T02:00:00Z");
        let policy = Retention {
            max_age_days: Some(7),
            ..Retention::default()
        };
        let normal = plan(&policy, &backups, at("2026-01-10T03:00:00Z"));
        let jumped = plan(&policy, &backups, at("2026-02-10T03:00:00Z"));
        assert_eq!(normal, jumped);
        assert_eq!(normal.keep.len(), 8);
    }

    #[test]
    fn newest_always_kept_and_mass_removal_blocked() {
        let backups = daily(10, "2026-01-01T02:00:00Z");
        let p = plan(
            &Retention {
                keep_daily: Some(1),
                ..Retention::default()
            },
            &backups,
            at("2026-01-11T00:00:00Z"),
        );
        assert_eq!(p.keep.len(), 1);
        assert!(p.blocked.unwrap().contains("would remove 9 of 10"));
    }

    // covers T2: backups from the future are kept and flagged.
    #[test]
    fn future_backups_are_kept() {
        let backups = daily(3, "2026-01-01T02:00:00Z");
        let p = plan(
            &Retention {
                keep_last: Some(1),
                ..Retention::default()
            },
            &backups,
            at("2026-01-02T00:00:00Z"),
        );
        assert_eq!(p.keep.len(), 2);
        assert!(p.keep[0].reasons.iter().any(|r| r.contains("future")));
    }

    #[test]
    fn gfs_monthly() {
        let backups = daily(70, "2026-01-01T02:00:00Z");
        let p = plan(
            &Retention {
                keep_monthly: Some(3),
                ..Retention::default()
            },
            &backups,
            at("2026-04-01T00:00:00Z"),
        );
        let kept: Vec<_> = p.keep.iter().map(|d| d.taken.to_string()).collect();
        assert_eq!(
            kept,
            [
                "2026-03-11T02:00:00Z",
                "2026-02-28T02:00:00Z",
                "2026-01-31T02:00:00Z"
            ]
        );
    }

    #[test]
    fn empty_policy_keeps_everything() {
        let backups = daily(4, "2026-01-01T02:00:00Z");
        let p = plan(&Retention::default(), &backups, at("2027-01-01T00:00:00Z"));
        assert_eq!(p.keep.len(), 4);
        assert!(p.remove.is_empty());
    }
}
