//! The one boundary between the service and the parts that touch vCenter and the repository
//! (`vbm-engine`, `vbm-vsphere`, `vbm-repo`). The runner, the API and the scheduler only see this
//! trait; [`engine`] implements it with the real engine. Tests of the queue and scheduler logic
//! use a scripted implementation so that they are exact and fast; API tests use the real one.
//!
//! Contract for implementations:
//! - every call may be cancelled through its token and then returns [`BackendError::Cancelled`]
//!   after cleaning up (no snapshot left behind);
//! - `backup` returns only once the manifest is durably written (the backup exists);
//! - `catalog` is complete or an error: a failed or partial listing never reads as "no backups";
//! - `retention` only ever considers the restore points of the one job and VM it is given, and
//!   never removes the newest one;
//! - errors carry a message fit for an operator: no secrets, no response bodies.

pub mod engine;

use std::sync::Arc;

use futures_util::future::BoxFuture;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::ids::{BackupId, InstanceUuid, JobId, RunId};
use crate::jobs::BackupMode;
use crate::jobs::retention::{Retention, RetentionPlan};
use crate::vcenter::VcenterTarget;

/// What went wrong in the backend.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    /// This build or configuration cannot do it (e.g. no repository configured).
    #[error("{0}")]
    Unavailable(String),
    /// The object does not exist (VM, backup).
    #[error("{0}")]
    NotFound(String),
    /// Cancelled on request.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// Cannot reach or log in to vCenter, or TLS trust failed.
    #[error("{0}")]
    Connection(String),
    /// Anything else; `retryable` says whether trying again may help.
    #[error("{message}")]
    Failed {
        /// Operator-facing text.
        message: String,
        /// Whether a retry may succeed.
        retryable: bool,
    },
}

/// Result of a connection test.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectionInfo {
    /// SHA-256 thumbprint of the server certificate (uppercase hex with colons), for the admin to
    /// pin; `null` over plain HTTP.
    pub thumbprint_sha256: Option<String>,
    /// Whether the certificate was trusted under the configured trust mode.
    pub trusted: bool,
    /// Whether logging in with the configured credentials worked.
    pub login_ok: bool,
    /// Product name and version, when logged in.
    pub product: Option<String>,
    /// What failed, if anything.
    pub error: Option<String>,
}

/// One VM of an inventory.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct VmSummary {
    /// Display name.
    pub name: String,
    /// `config.instanceUuid`.
    pub instance_uuid: InstanceUuid,
    /// Managed object id.
    pub moref: String,
    /// Folder path below the datacenter's VM folder.
    pub folder: String,
    /// Host the VM runs on (for per-host limits).
    pub host: Option<String>,
    /// `poweredOn`, `poweredOff`, `suspended`.
    pub power_state: String,
    /// Sum of disk capacities.
    pub capacity_bytes: u64,
    /// Whether CBT is on.
    pub cbt_enabled: bool,
    /// Its `vbm-*` snapshots: a backup in progress, or one a crash or an unreachable vCenter
    /// left behind (the snapshot sweep removes those of finished runs).
    pub vbm_snapshots: Vec<VbmSnapshot>,
}

/// A `vbm-*` snapshot on a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VbmSnapshot {
    /// `vbm-<run id>`.
    pub name: String,
    /// When it was taken (RFC 3339), as vCenter reports it.
    pub created: Option<String>,
}

impl Default for InstanceUuid {
    fn default() -> Self {
        Self::generate()
    }
}

/// A live progress event of one VM (mirrors the engine's `ProgressEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// `connecting`, `snapshot`, `downloading`, `compressing`, `restoring`, `verifying`, `gc`,
    /// `done`, `failed`.
    pub phase: String,
    /// VM name (or the backup / repository the event is about).
    pub vm: String,
    /// Disk label, when per disk.
    pub disk: Option<String>,
    /// Bytes done of the current phase.
    pub bytes_done: u64,
    /// Bytes the phase processes in total, when known.
    pub bytes_total: Option<u64>,
    /// Bytes per second.
    pub rate: Option<f64>,
    /// Seconds left.
    pub eta_secs: Option<u64>,
    /// `info`, `warning` or `error`: the severity of `message`.
    pub level: String,
    /// A line for the run log, when the event carries one.
    pub message: Option<String>,
}

impl Progress {
    /// An event that only carries a message.
    #[must_use]
    pub fn message(phase: &str, vm: &str, level: &str, message: impl Into<String>) -> Self {
        Self {
            phase: phase.to_owned(),
            vm: vm.to_owned(),
            disk: None,
            bytes_done: 0,
            bytes_total: None,
            rate: None,
            eta_secs: None,
            level: level.to_owned(),
            message: Some(message.into()),
        }
    }
}

/// Where progress goes.
pub type ProgressSink = Arc<dyn Fn(Progress) + Send + Sync>;

/// One VM backup to do.
#[derive(Debug, Clone)]
pub struct BackupTask {
    /// The job.
    pub job_id: JobId,
    /// The run (the snapshot is named `vbm-<run id>`).
    pub run_id: RunId,
    /// The VM.
    pub vm: VmSummary,
    /// Full or incremental.
    pub mode: BackupMode,
    /// Quiesce the guest.
    pub quiesce: bool,
}

/// What a backup produced.
#[derive(Debug, Clone)]
pub struct BackupOutcome {
    /// The catalog entry of the new restore point.
    pub entry: CatalogEntry,
    /// Warnings (e.g. CBT reset → full read).
    pub warnings: Vec<String>,
}

/// The last verification of a restore point, as the repository records it (`verify.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyState {
    /// No problem found.
    pub ok: bool,
    /// When.
    pub verified_at: Timestamp,
    /// Number of problems found.
    pub problems: u64,
}

/// A restore point as the repository describes it (the catalog is rebuilt from these: R4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Id.
    pub id: BackupId,
    /// Job that made it, if recorded.
    pub job_id: Option<String>,
    /// vCenter label (the vCenter's name in vbm when the backup was made).
    pub vcenter: String,
    /// VM name at backup time.
    pub vm_name: String,
    /// VM instance UUID (lowercase).
    pub instance_uuid: Option<String>,
    /// `full` / `incremental`.
    pub mode: String,
    /// Start.
    pub started: Timestamp,
    /// End.
    pub finished: Timestamp,
    /// Logical size (sum of the sizes of the files a restore writes).
    pub logical_bytes: u64,
    /// Bytes read from vCenter.
    pub bytes_read: u64,
    /// Bytes newly written to the repository.
    pub bytes_written: u64,
    /// The last verification recorded in the repository.
    pub verify: Option<VerifyState>,
    /// The manifest, as stored.
    pub manifest: serde_json::Value,
}

/// Every restore point of the repository.
#[derive(Debug, Clone, Default)]
pub struct CatalogListing {
    /// Committed restore points with readable manifests.
    pub entries: Vec<CatalogEntry>,
    /// Committed restore points whose manifest cannot be read now: their catalog rows are kept
    /// (an unreadable manifest is not a deleted one, S-D6).
    pub unreadable: Vec<BackupId>,
}

/// The verdict on one restore point of a verify run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifiedBackup {
    /// The restore point.
    pub id: BackupId,
    /// No damage found.
    pub ok: bool,
    /// When (as recorded in the repository).
    #[schema(value_type = String, format = DateTime)]
    pub verified_at: Timestamp,
    /// What is wrong, one line each.
    pub problems: Vec<String>,
}

/// Result of a verify.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyOutcome {
    /// No damage found.
    pub ok: bool,
    /// What is damaged, one line each (naming restore points, files and chunks).
    pub problems: Vec<String>,
    /// The verified restore point and every other one that shares damaged data.
    pub backups: Vec<VerifiedBackup>,
}

/// Repository usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RepoStats {
    /// Committed restore points.
    pub backups: u64,
    /// Backup directories without a manifest (being written, or left by a crash; not restore
    /// points, removed by GC).
    pub partial_backups: u64,
    /// Restore points whose manifest cannot be read.
    pub unreadable_backups: u64,
    /// VMs with restore points.
    pub vms: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Quarantined (corrupt) chunks.
    pub bad_chunks: u64,
    /// Bytes used by the repository (chunks, indexes, blobs, manifests).
    pub used_bytes: u64,
    /// Free bytes on its file system (for an unprivileged user).
    pub free_bytes: u64,
    /// Size of its file system.
    pub total_bytes: u64,
    /// Sum of logical sizes of all restore points.
    pub logical_bytes: u64,
    /// `logical_bytes / chunk bytes` (deduplication and compression).
    pub dedup_ratio: Option<f64>,
    /// Whether chunks are encrypted.
    pub encrypted: bool,
    /// Chunk size in bytes.
    pub chunk_size: u32,
}

/// Where a restore goes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "target", rename_all = "snake_case", deny_unknown_fields)]
pub enum RestoreTarget {
    /// Files into a directory on the server (absolute path; created; existing files are not
    /// overwritten).
    Directory {
        /// The directory.
        path: String,
    },
    /// A new VM in a vCenter.
    NewVm {
        /// vCenter id.
        vcenter_id: crate::ids::VcenterId,
        /// Datastore name for all files.
        datastore: String,
        /// New VM name (also its directory on the datastore).
        name: String,
        /// VM folder path below the datacenter's VM folder; default its root.
        #[serde(default)]
        folder: Option<String>,
        /// Cluster, host or resource pool (name or path); default the datastore's first cluster.
        #[serde(default)]
        resource_pool: Option<String>,
        /// Host to register on; optional.
        #[serde(default)]
        host: Option<String>,
        /// Power on afterwards.
        #[serde(default)]
        power_on: bool,
    },
    /// Over the original VM (found by its instance UUID): powers it off, overwrites its disks
    /// and configuration, registers it again. Refused without `confirm: true`.
    InPlace {
        /// The vCenter holding the VM; default the one the backup came from.
        #[serde(default)]
        vcenter_id: Option<crate::ids::VcenterId>,
        /// Must be `true`: the VM's current disks are overwritten.
        #[serde(default)]
        confirm: bool,
        /// Power on afterwards; default: the power state it had.
        #[serde(default)]
        power_on: Option<bool>,
    },
}

/// What a restore did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RestoreOutcome {
    /// Directory, or the VM's name.
    pub target: String,
    /// Files restored (each checked against the manifest's SHA-256).
    pub files: u64,
    /// Bytes restored.
    pub bytes_restored: u64,
    /// Non-fatal notes.
    pub warnings: Vec<String>,
}

/// Retention for one VM of one job.
#[derive(Debug, Clone)]
pub struct RetentionRequest {
    /// The job whose restore points are considered (others of the VM are never touched).
    pub job_id: JobId,
    /// The VM.
    pub instance_uuid: InstanceUuid,
    /// The job's policy.
    pub policy: Retention,
    /// "Now" for the age rules.
    pub now: Timestamp,
    /// Delete what the plan removes (otherwise only plan: the preview).
    pub apply: bool,
    /// Apply a plan that a guard blocked.
    pub force: bool,
}

/// The plan, and what was deleted.
#[derive(Debug, Clone)]
pub struct RetentionOutcome {
    /// What the policy keeps and removes, and why.
    pub plan: RetentionPlan,
    /// Restore points deleted (empty for a preview or a blocked plan).
    pub removed: Vec<BackupId>,
}

/// What a garbage collection did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct GcOutcome {
    /// Chunks deleted.
    pub chunks_deleted: u64,
    /// Bytes freed.
    pub bytes_freed: u64,
    /// Unreferenced chunks kept because they are younger than the grace period.
    pub chunks_kept_recent: u64,
    /// Manifest-less backup directories (crash leftovers) removed.
    pub partial_backups_removed: u64,
    /// Temporary files removed.
    pub temp_files_removed: u64,
    /// Stale locks cleared.
    pub stale_locks_cleared: u64,
    /// Deletions that failed (immutable files, read-only storage), one line each.
    pub skipped: Vec<String>,
}

/// The engine, vCenter and repository as the service uses them.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Connects, reports the certificate thumbprint and whether login works.
    fn test_connection(
        &self,
        target: VcenterTarget,
    ) -> BoxFuture<'static, Result<ConnectionInfo, BackendError>>;
    /// Lists the VMs of a vCenter.
    fn list_vms(
        &self,
        target: VcenterTarget,
    ) -> BoxFuture<'static, Result<Vec<VmSummary>, BackendError>>;
    /// Backs up one VM; returns once its manifest is durably written.
    fn backup(
        &self,
        target: VcenterTarget,
        task: BackupTask,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<BackupOutcome, BackendError>>;
    /// Removes the `vbm-*` snapshots of a VM left by crashed runs; returns how many.
    fn sweep_snapshots(
        &self,
        target: VcenterTarget,
        vm: InstanceUuid,
    ) -> BoxFuture<'static, Result<u32, BackendError>>;
    /// Every restore point in the repository.
    fn catalog(&self) -> BoxFuture<'static, Result<CatalogListing, BackendError>>;
    /// Verifies one restore point (full read, digests; with a vCenter, also disk sizes). Damaged
    /// chunks are quarantined and the result is recorded in the repository.
    fn verify(
        &self,
        backup: BackupId,
        vcenter: Option<VcenterTarget>,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<VerifyOutcome, BackendError>>;
    /// Plans (and with `apply`, executes) retention for one VM of one job.
    fn retention(
        &self,
        request: RetentionRequest,
    ) -> BoxFuture<'static, Result<RetentionOutcome, BackendError>>;
    /// Garbage collection.
    fn gc(
        &self,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<GcOutcome, BackendError>>;
    /// Repository usage.
    fn repo_stats(&self) -> BoxFuture<'static, Result<RepoStats, BackendError>>;
    /// Restores a backup (`vcenter`: the target vCenter of a VM restore).
    fn restore(
        &self,
        backup: BackupId,
        target: RestoreTarget,
        vcenter: Option<VcenterTarget>,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<RestoreOutcome, BackendError>>;
}
