//! Runs: one execution of a job (or a restore / verify / GC operation), with per-VM results and
//! a log. The model only; [`crate::runner`] executes, [`crate::db`] stores.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{BackupId, InstanceUuid, JobId, RunId, VcenterId};

/// State of a run. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for its start time or a free slot.
    Queued,
    /// Being executed.
    Running,
    /// Everything succeeded.
    Success,
    /// Some VMs succeeded, some failed.
    Partial,
    /// Nothing succeeded.
    Failed,
    /// Cancelled by a user or by shutdown (the reason says which).
    Cancelled,
    /// The server stopped (crash, kill) while it ran; its snapshots are swept at the next start.
    Interrupted,
    /// A scheduled occurrence that fell outside its window.
    Missed,
}

impl RunStatus {
    /// Database / API spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Success => "success",
            Self::Partial => "partial",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Interrupted => "interrupted",
            Self::Missed => "missed",
        }
    }

    /// Parses the database spelling.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "success" => Self::Success,
            "partial" => Self::Partial,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            "interrupted" => Self::Interrupted,
            "missed" => Self::Missed,
            _ => return None,
        })
    }

    /// Whether the run is over.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }
}

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// Back up the job's VMs.
    Backup,
    /// Restore one backup.
    Restore,
    /// Verify one backup.
    Verify,
    /// Repository garbage collection.
    Gc,
}

impl RunKind {
    /// Database / API spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Backup => "backup",
            Self::Restore => "restore",
            Self::Verify => "verify",
            Self::Gc => "gc",
        }
    }

    /// Parses the database spelling.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "backup" => Self::Backup,
            "restore" => Self::Restore,
            "verify" => Self::Verify,
            "gc" => Self::Gc,
            _ => return None,
        })
    }
}

/// Why a run started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// Its schedule, on time.
    Schedule,
    /// Its schedule, caught up after downtime or a clock jump.
    CatchUp,
    /// A user ("run now", restore, verify).
    Manual,
    /// A retry of a failed or interrupted run.
    Retry,
    /// The server (GC).
    System,
}

impl Trigger {
    /// Database / API spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::CatchUp => "catch_up",
            Self::Manual => "manual",
            Self::Retry => "retry",
            Self::System => "system",
        }
    }

    /// Parses the database spelling.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "schedule" => Self::Schedule,
            "catch_up" => Self::CatchUp,
            "manual" => Self::Manual,
            "retry" => Self::Retry,
            "system" => Self::System,
            _ => return None,
        })
    }
}

/// A run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Run {
    /// Id.
    pub id: RunId,
    /// What it does.
    pub kind: RunKind,
    /// The job (backups), if it still exists.
    pub job_id: Option<JobId>,
    /// The job's name at the time (kept when the job is deleted).
    pub job_name: Option<String>,
    /// Why it started.
    pub trigger: Trigger,
    /// State.
    pub status: RunStatus,
    /// 1 for the first attempt, 2 for the first retry, …
    pub attempt: u32,
    /// The run this one retries.
    pub retry_of: Option<RunId>,
    /// The schedule occurrence it stands for.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub scheduled_for: Option<Timestamp>,
    /// Not started before this time (retry delay).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub not_before: Option<Timestamp>,
    /// Created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Started.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// Finished.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// Why it ended as it did (failure summary, cancel reason).
    pub reason: Option<String>,
    /// Operation parameters (restore target, backup id, VM filter of a retry).
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
}

/// A new run to insert.
#[derive(Debug, Clone)]
pub struct NewRun {
    /// Id.
    pub id: RunId,
    /// Kind.
    pub kind: RunKind,
    /// Job.
    pub job_id: Option<JobId>,
    /// Trigger.
    pub trigger: Trigger,
    /// Attempt.
    pub attempt: u32,
    /// Retried run.
    pub retry_of: Option<RunId>,
    /// Occurrence.
    pub scheduled_for: Option<Timestamp>,
    /// Earliest start.
    pub not_before: Option<Timestamp>,
    /// Parameters.
    pub params: serde_json::Value,
    /// Initial status (queued, or missed for schedule records).
    pub status: RunStatus,
    /// Initial reason.
    pub reason: Option<String>,
}

impl NewRun {
    /// A queued run with defaults.
    #[must_use]
    pub fn queued(kind: RunKind, job_id: Option<JobId>, trigger: Trigger) -> Self {
        Self {
            id: RunId::generate(),
            kind,
            job_id,
            trigger,
            attempt: 1,
            retry_of: None,
            scheduled_for: None,
            not_before: None,
            params: serde_json::json!({}),
            status: RunStatus::Queued,
            reason: None,
        }
    }
}

/// The result for one VM of a backup run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunVm {
    /// vCenter.
    pub vcenter_id: VcenterId,
    /// VM.
    pub instance_uuid: InstanceUuid,
    /// Name at the time.
    pub vm_name: String,
    /// `queued`, `running`, `success`, `failed`, `cancelled`, `interrupted`.
    pub status: RunStatus,
    /// `full` / `incremental`, once known.
    pub mode: Option<String>,
    /// The restore point made.
    pub backup_id: Option<BackupId>,
    /// Bytes read from vCenter.
    pub bytes_read: u64,
    /// Bytes written to the repository.
    pub bytes_written: u64,
    /// The error, precise and human-readable.
    pub error: Option<String>,
    /// Warnings.
    pub warnings: Vec<String>,
    /// Started.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// Finished.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

/// One line of a run's log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LogLine {
    /// Sequence number (use as a cursor).
    pub seq: i64,
    /// When.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// `info`, `warn`, `error`.
    pub level: String,
    /// Text (control characters escaped).
    pub message: String,
}

/// Escapes control characters so that a VM name cannot forge log lines (I6).
#[must_use]
pub fn escape_control(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers I6
    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape_control("vm\n2026-01-01 INFO admin logged in\u{1b}[31m"),
            "vm\\n2026-01-01 INFO admin logged in\\u{1b}[31m"
        );
    }

    #[test]
    fn spellings_round_trip() {
        for s in [
            RunStatus::Queued,
            RunStatus::Running,
            RunStatus::Success,
            RunStatus::Partial,
            RunStatus::Failed,
            RunStatus::Cancelled,
            RunStatus::Interrupted,
            RunStatus::Missed,
        ] {
            assert_eq!(RunStatus::parse(s.as_str()), Some(s));
        }
    }
}
