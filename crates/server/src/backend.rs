//! The one boundary between the service and the parts that touch vCenter and the repository
//! (`vbm-engine`, `vbm-vsphere`, `vbm-repo`). The runner, the API and the scheduler only see this
//! trait; [`engine`] implements it with the real engine. Tests of the queue and scheduler logic
//! use a scripted implementation so that they are exact and fast; API tests use the real one.
//!
//! Contract for implementations:
//! - every call may be cancelled through its token and then returns [`BackendError::Cancelled`]
//!   after cleaning up (no snapshot left behind);
//! - `backup` returns only once the manifest is durably written (the backup exists);
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
}

impl Default for InstanceUuid {
    fn default() -> Self {
        Self::generate()
    }
}

/// A live progress event of one VM (mirrors the engine's `ProgressEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// `connecting`, `snapshot`, `downloading`, `compressing`, `done`, …
    pub phase: String,
    /// VM name.
    pub vm: String,
    /// Disk label, when per disk.
    pub disk: Option<String>,
    /// Bytes done.
    pub bytes_done: u64,
    /// Bytes in total, when known.
    pub bytes_total: Option<u64>,
    /// Bytes per second.
    pub rate: Option<f64>,
    /// Seconds left.
    pub eta_secs: Option<u64>,
    /// Free text.
    pub message: Option<String>,
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

/// A restore point as the repository describes it (the catalog is rebuilt from these: R4).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Id.
    pub id: BackupId,
    /// Job that made it, if recorded.
    pub job_id: Option<String>,
    /// vCenter label.
    pub vcenter: String,
    /// VM name at backup time.
    pub vm_name: String,
    /// VM instance UUID.
    pub instance_uuid: Option<String>,
    /// `full` / `incremental`.
    pub mode: String,
    /// Start.
    pub started: Timestamp,
    /// End.
    pub finished: Timestamp,
    /// Logical size (sum of disk capacities / file sizes).
    pub logical_bytes: u64,
    /// Bytes read from vCenter.
    pub bytes_read: u64,
    /// Bytes newly written to the repository.
    pub bytes_written: u64,
    /// The manifest, as stored.
    pub manifest: serde_json::Value,
}

/// Result of a verify.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct VerifyOutcome {
    /// No damage found.
    pub ok: bool,
    /// What is damaged, one line each.
    pub problems: Vec<String>,
}

/// Repository usage.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RepoStats {
    /// Restore points.
    pub backups: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Bytes used by the repository.
    pub used_bytes: u64,
    /// Free bytes on its file system.
    pub free_bytes: u64,
    /// Sum of logical sizes of all backups.
    pub logical_bytes: u64,
}

/// Where a restore goes.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "target", rename_all = "snake_case", deny_unknown_fields)]
pub enum RestoreTarget {
    /// Files into a directory on the server (absolute path; created; must be empty).
    Directory {
        /// The directory.
        path: String,
    },
    /// A new VM in a vCenter.
    NewVm {
        /// vCenter id.
        vcenter_id: crate::ids::VcenterId,
        /// Datastore name.
        datastore: String,
        /// New VM name.
        name: String,
        /// Power on afterwards.
        #[serde(default)]
        power_on: bool,
    },
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
    /// Backs up one VM.
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
    fn catalog(&self) -> BoxFuture<'static, Result<Vec<CatalogEntry>, BackendError>>;
    /// Verifies one restore point (full read, digests).
    fn verify(
        &self,
        backup: BackupId,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<VerifyOutcome, BackendError>>;
    /// Deletes restore points (retention); chunks go at the next GC.
    fn delete_backups(&self, ids: Vec<BackupId>) -> BoxFuture<'static, Result<(), BackendError>>;
    /// Garbage collection; returns freed bytes.
    fn gc(&self, cancel: CancellationToken) -> BoxFuture<'static, Result<u64, BackendError>>;
    /// Repository usage.
    fn repo_stats(&self) -> BoxFuture<'static, Result<RepoStats, BackendError>>;
    /// Restores a backup.
    fn restore(
        &self,
        backup: BackupId,
        target: RestoreTarget,
        vcenter: Option<VcenterTarget>,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), BackendError>>;
}
