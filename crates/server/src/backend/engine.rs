//! The real backend: `vbm-engine` for backups, restores and verify, `vbm-vsphere` for inventory
//! and connection tests, `vbm-repo` for the catalog, retention deletes, GC and stats.
//!
//! Connection tests and inventory go through `vbm-vsphere` today. The engine and repository
//! crates are being written alongside this one; until their APIs land, backup, restore, verify,
//! GC, catalog and snapshot sweep report [`BackendError::Unavailable`] with that reason, so the
//! service runs, stores and schedules everything and records precise failures.

use std::path::PathBuf;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{
    Backend, BackendError, BackupOutcome, BackupTask, CatalogEntry, ConnectionInfo, ProgressSink,
    RepoStats, RestoreTarget, VerifyOutcome, VmSummary,
};
use crate::ids::{BackupId, InstanceUuid};
use crate::vcenter::{Trust, VcenterTarget};

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

fn connect_options(target: &VcenterTarget) -> Result<vbm_vsphere::ConnectOptions, BackendError> {
    let trust = match &target.trust {
        Trust::System => vbm_vsphere::Trust::SystemRoots,
        Trust::CaPem { pem } => vbm_vsphere::Trust::CaPem(pem.clone()),
        Trust::Thumbprint { sha256 } => vbm_vsphere::Trust::Pinned(
            vbm_vsphere::Thumbprint::parse(sha256)
                .map_err(|e| BackendError::Connection(e.to_string()))?,
        ),
        Trust::Insecure => vbm_vsphere::Trust::Insecure,
    };
    let password = target
        .password
        .as_ref()
        .map(|p| p.expose().to_owned())
        .ok_or_else(|| {
            BackendError::Connection(format!(
                "no password for vCenter {}: store one or set VCENTER_PASSWORD",
                target.name
            ))
        })?;
    Ok(vbm_vsphere::ConnectOptions::new(
        target.url.clone(),
        target.username.clone(),
        vbm_vsphere::Secret::new(password),
    )
    .trust(trust)
    .config(vbm_vsphere::ClientConfig::default()))
}

fn connection_error(target: &VcenterTarget, e: &vbm_vsphere::Error) -> BackendError {
    let text = e.to_string();
    let message = match &target.password {
        Some(p) if !p.expose().is_empty() => text.replace(p.expose(), "<redacted>"),
        _ => text,
    };
    BackendError::Connection(format!("vCenter {}: {message}", target.name))
}

impl Backend for EngineBackend {
    fn test_connection(
        &self,
        target: VcenterTarget,
    ) -> BoxFuture<'static, Result<ConnectionInfo, BackendError>> {
        Box::pin(async move {
            let pinned = match &target.trust {
                Trust::Thumbprint { sha256 } => Some(sha256.to_ascii_uppercase()),
                _ => None,
            };
            let options = connect_options(&target)?;
            match vbm_vsphere::Client::connect(options).await {
                Ok(client) => {
                    let product = client.service_content().ok().map(|s| s.about.full_name);
                    let _ = client.logout().await;
                    Ok(ConnectionInfo {
                        thumbprint_sha256: pinned,
                        trusted: true,
                        login_ok: true,
                        product,
                        error: None,
                    })
                }
                Err(e) => Ok(ConnectionInfo {
                    thumbprint_sha256: pinned,
                    trusted: false,
                    login_ok: false,
                    product: None,
                    error: Some(connection_error(&target, &e).to_string()),
                }),
            }
        })
    }

    fn list_vms(
        &self,
        target: VcenterTarget,
    ) -> BoxFuture<'static, Result<Vec<VmSummary>, BackendError>> {
        Box::pin(async move {
            let client = vbm_vsphere::Client::connect(connect_options(&target)?)
                .await
                .map_err(|e| connection_error(&target, &e))?;
            let listed = client.list_vms().await;
            let _ = client.logout().await;
            let vms = listed.map_err(|e| connection_error(&target, &e))?;
            Ok(vms
                .into_iter()
                .filter(|vm| !vm.template)
                .filter_map(|vm| {
                    let uuid = InstanceUuid::parse(vm.instance_uuid.as_deref()?).ok()?;
                    Some(VmSummary {
                        name: vm.display_name.clone(),
                        instance_uuid: uuid,
                        moref: vm.moref.value.clone(),
                        folder: vbm_vsphere::decode_name(&vm.folder_path),
                        host: vm.host.as_ref().map(|h| h.value.clone()),
                        power_state: vm.power_state.as_str().to_owned(),
                        capacity_bytes: vm.disks.iter().map(|d| d.capacity_bytes).sum(),
                        cbt_enabled: vm.cbt_enabled,
                    })
                })
                .collect())
        })
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
