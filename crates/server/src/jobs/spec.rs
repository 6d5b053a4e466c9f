//! The job definition as the API receives and stores it, and its validation.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::JobId;
use crate::jobs::retention::Retention;
use crate::jobs::selection::VmSelection;
use crate::scheduler::CronSchedule;
use crate::vcenter::FieldError;

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupMode {
    /// CBT incremental forever (the first backup of a VM is full), with an optional periodic full.
    #[default]
    Incremental,
    /// Every backup reads the whole disk.
    Full,
}

/// When a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Five-field cron expression (`min hour day-of-month month day-of-week`), e.g. `30 2 * * *`.
    pub cron: String,
    /// IANA time zone the expression is read in, e.g. `Europe/Berlin`; default `UTC`.
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".to_owned()
}

/// A job as `POST /jobs` and `PUT /jobs/{id}` receive it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// Unique name, 1-64 characters of letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// Which VMs, per vCenter (1-16 entries; several vCenters in one job are fine).
    pub sources: Vec<VmSelection>,
    /// Backup mode.
    #[serde(default)]
    pub mode: BackupMode,
    /// With `incremental`: every N-th backup of a VM is a full one (1-1000; none = never).
    #[serde(default)]
    pub full_every: Option<u32>,
    /// Schedule; none = manual runs only.
    #[serde(default)]
    pub schedule: Option<ScheduleSpec>,
    /// Retention applied after each successful backup.
    #[serde(default)]
    pub retention: Retention,
    /// Quiesce the guest file systems (VMware Tools) for the snapshot.
    #[serde(default)]
    pub quiesce: bool,
    /// VMs of this job backed up at once (1-64).
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Retries of a failed or interrupted run (0-10).
    #[serde(default)]
    pub retries: u32,
    /// Delay before a retry, seconds (0-86400).
    #[serde(default = "default_retry_delay")]
    pub retry_delay_secs: u32,
    /// Backup window: a scheduled run may start at most this many minutes after its time
    /// (1-10080); a run missed while the server was down is caught up only inside it. None =
    /// until the next scheduled time.
    #[serde(default)]
    pub window_minutes: Option<u32>,
    /// Disabled jobs keep their schedule but do not run by it.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Recovery point objective, minutes (1-525600): a VM this job protects without a successful
    /// backup for longer is overdue (job view `protection`, metric `vbm_backup_overdue`). None =
    /// one schedule interval plus two hours; jobs without a schedule are then not monitored.
    #[serde(default)]
    pub rpo_minutes: Option<u32>,
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn default_retry_delay() -> u32 {
    300
}

/// A stored job.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Job {
    /// Id.
    pub id: JobId,
    /// The definition.
    #[serde(flatten)]
    pub spec: JobSpec,
    /// Created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

fn range(errors: &mut Vec<FieldError>, field: &str, value: u32, min: u32, max: u32) {
    if !(min..=max).contains(&value) {
        errors.push(FieldError::new(
            field,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
}

impl JobSpec {
    /// Validates the job; returns every problem at once. Cron and time zone are parsed here.
    ///
    /// # Errors
    /// The problems.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        crate::vcenter::check_name("name", &self.name, &mut errors);
        if self.sources.is_empty() || self.sources.len() > 16 {
            errors.push(FieldError::new("sources", "must hold 1 to 16 entries"));
        }
        for (i, source) in self.sources.iter().enumerate() {
            source.validate(&format!("sources[{i}]"), &mut errors);
        }
        if let Some(n) = self.full_every {
            range(&mut errors, "full_every", n, 1, 1000);
        }
        if let Some(schedule) = &self.schedule
            && let Err(e) = CronSchedule::parse(&schedule.cron, &schedule.timezone)
        {
            errors.push(e);
        }
        self.retention.validate(&mut errors);
        range(&mut errors, "concurrency", self.concurrency, 1, 64);
        range(&mut errors, "retries", self.retries, 0, 10);
        range(
            &mut errors,
            "retry_delay_secs",
            self.retry_delay_secs,
            0,
            86_400,
        );
        if let Some(w) = self.window_minutes {
            range(&mut errors, "window_minutes", w, 1, 10_080);
        }
        if let Some(r) = self.rpo_minutes {
            range(&mut errors, "rpo_minutes", r, 1, 525_600);
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> Result<JobSpec, String> {
        serde_json::from_value(json).map_err(|e| e.to_string())
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = spec(serde_json::json!({"name": "a", "sources": [], "admin": true})).unwrap_err();
        assert!(err.contains("unknown field `admin`"), "{err}");
    }

    #[test]
    fn validation_names_every_bad_field() {
        let job = spec(serde_json::json!({
            "name": "nightly; DROP TABLE jobs",
            "sources": [{"vcenter_id": "123e4567-e89b-42d3-a456-426614174000", "name_patterns": ["web-*"]}],
            "schedule": {"cron": "61 2 * * *", "timezone": "Mars/Olympus"},
            "concurrency": 0,
            "retries": 99,
        }))
        .unwrap();
        let errors = job.validate().unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"name"), "{errors:?}");
        assert!(fields.contains(&"schedule.timezone") || fields.contains(&"schedule.cron"));
        assert!(fields.contains(&"concurrency"));
        assert!(fields.contains(&"retries"));
    }
}
