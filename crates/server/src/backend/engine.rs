//! The real backend: `vbm-engine` for backups, restores and verify, `vbm-vsphere` for inventory
//! and connection tests, `vbm-repo` for the catalog, retention deletes, GC and stats.
//!
//! The engine, vSphere client and repository crates are being written alongside this one; until
//! their APIs land, every call reports [`BackendError::Unavailable`] with that reason, so the
//! service runs, stores and schedules everything and records precise failures.

use std::path::PathBuf;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{
    Backend, BackendError, BackupOutcome, BackupTask, CatalogEntry, ConnectionInfo, ProgressSink,
    RepoStats, RestoreTarget, VerifyOutcome, VmSummary,
};
use crate::ids::{BackupId, InstanceUuid};
use crate::vcenter::VcenterTarget;

/// The engine-backed implementation of [`Backend`].
#[derive(Debug, Clone)]
pub struct EngineBackend {
    repo: Option<PathBuf>,
}

impl EngineBackend {
    /// A backend over the repository at `repo` (none: backups are refused with a clear reason).
    #[must_use]
    pub fn new(repo: Option<PathBuf>) -> Self {
        Self { repo }
    }

    fn unavailable<T: Send + 'static>(
        &self,
        what: &str,
    ) -> BoxFuture<'static, Result<T, BackendError>> {
        let message = match &self.repo {
            None if what != "vcenter" => {
                "no backup repository is configured (set `repo` in vbm.toml or pass --repo)"
                    .to_owned()
            }
            _ => format!("this vbm build cannot reach the {what} yet: the engine is not linked in"),
        };
        Box::pin(async move { Err(BackendError::Unavailable(message)) })
    }
}

impl Backend for EngineBackend {
    fn test_connection(
        &self,
        _target: VcenterTarget,
    ) -> BoxFuture<'static, Result<ConnectionInfo, BackendError>> {
        self.unavailable("vcenter")
    }

    fn list_vms(
        &self,
        _target: VcenterTarget,
    ) -> BoxFuture<'static, Result<Vec<VmSummary>, BackendError>> {
        self.unavailable("vcenter")
    }

    fn backup(
        &self,
        _target: VcenterTarget,
        _task: BackupTask,
        _progress: ProgressSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<BackupOutcome, BackendError>> {
        self.unavailable("repository")
    }

    fn sweep_snapshots(
        &self,
        _target: VcenterTarget,
        _vm: InstanceUuid,
    ) -> BoxFuture<'static, Result<u32, BackendError>> {
        self.unavailable("vcenter")
    }

    fn catalog(&self) -> BoxFuture<'static, Result<Vec<CatalogEntry>, BackendError>> {
        self.unavailable("repository")
    }

    fn verify(
        &self,
        _backup: BackupId,
        _progress: ProgressSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<VerifyOutcome, BackendError>> {
        self.unavailable("repository")
    }

    fn delete_backups(&self, _ids: Vec<BackupId>) -> BoxFuture<'static, Result<(), BackendError>> {
        self.unavailable("repository")
    }

    fn gc(&self, _cancel: CancellationToken) -> BoxFuture<'static, Result<u64, BackendError>> {
        self.unavailable("repository")
    }

    fn repo_stats(&self) -> BoxFuture<'static, Result<RepoStats, BackendError>> {
        self.unavailable("repository")
    }

    fn restore(
        &self,
        _backup: BackupId,
        _target: RestoreTarget,
        _vcenter: Option<VcenterTarget>,
        _progress: ProgressSink,
        _cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<(), BackendError>> {
        self.unavailable("repository")
    }
}
