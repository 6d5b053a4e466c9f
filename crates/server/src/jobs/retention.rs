//! Retention: a job's policy, and the plan view the API shows (which restore points of one VM
//! the policy keeps, which it removes, and why).
//!
//! The plan itself is computed by the repository's pure planner (`vbm_repo::prune::plan`,
//! behind [`crate::backend::Backend::retention`]), so the CLI, the preview and the runner agree.
//! Its guards against clocks that jump (FAULT-MATRIX T1/T2): the newest backup of a VM is always
//! kept; backups dated in the future are kept, flagged and not counted by any rule; and a plan
//! that would remove more than half of a VM's backups is blocked until confirmed
//! (`POST /jobs/{id}/retention` with `force`).

use jiff::Timestamp;
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

    /// Whether no rule is set (everything is kept).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Decision {
    /// The backup.
    pub backup_id: BackupId,
    /// When it was taken (the time in its id).
    #[schema(value_type = String, format = DateTime)]
    pub taken: Timestamp,
    /// Why it is kept (every rule that keeps it) or removed (`matched no keep rule`).
    pub reasons: Vec<String>,
    /// Dated in the future (clock skew?): kept and not counted by the rules.
    pub future_dated: bool,
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
