//! The real backend: `vbm-engine` for backups, restores, verify and the snapshot sweep,
//! `vbm-vsphere` for inventory and connection tests, `vbm-repo` (through the engine's re-export)
//! for the catalog, retention, GC and stats.
//!
//! Every call connects to vCenter for its own duration and logs out at the end (a few sessions,
//! never a leak: N8). Repository work is blocking file I/O and runs on the blocking pool
//! ([`repository`]). The repository is opened on first use and kept open; `--init-repo` creates
//! it in an absent or empty directory, never in a non-empty one (an unmounted volume's empty
//! mount point is the one case that flag cannot tell apart, hence it is opt-in).

mod convert;
mod repository;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;
use vbm_engine::vbm_repo::{InitOptions, Repository};
use vbm_engine::{BackupOptions, ModeRequest, VmSelector};

use super::{
    Backend, BackendError, BackupOutcome, BackupTask, CatalogListing, ConnectionInfo, GcOutcome,
    ProgressSink, RepoStats, RestoreOutcome, RestoreTarget, RetentionOutcome, RetentionRequest,
    VbmSnapshot, VerifyOutcome, VmSummary,
};
use crate::ids::{BackupId, InstanceUuid};
use crate::jobs::BackupMode;
use crate::vcenter::{Trust, VcenterTarget};

/// How the engine backend works; `Default` is what `vbm serve` uses without a config file.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// The repository directory (`None`: backups are refused with a clear reason).
    pub repo: Option<PathBuf>,
    /// Key file of an encrypted repository (default: the repository's default location).
    pub key_file: Option<PathBuf>,
    /// Create the repository when its directory is absent or empty.
    pub init_repo: bool,
    /// Parallel range requests per disk.
    pub streams: usize,
    /// Threads hashing, compressing and decoding chunks.
    pub workers: usize,
    /// Largest single HTTP range request.
    pub max_request_bytes: u64,
    /// GC grace period (default: the one recorded in the repository).
    pub gc_grace: Option<Duration>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            repo: None,
            key_file: None,
            init_repo: false,
            streams: 4,
            workers: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            max_request_bytes: 32 << 20,
            gc_grace: None,
        }
    }
}

#[derive(Debug)]
struct Inner {
    settings: EngineSettings,
    opened: Mutex<Option<Repository>>,
    /// One retention at a time in this process: plans are computed from a listing and executed
    /// after it, so two overlapping ones must not interleave (the repository's own prune lock is
    /// taken only by its whole-VM `prune`).
    retention: tokio::sync::Mutex<()>,
}

/// The engine-backed implementation of [`Backend`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct EngineBackend {
    inner: Arc<Inner>,
}

impl EngineBackend {
    /// A backend over the repository at `repo` with default settings.
    #[must_use]
    pub fn new(repo: Option<PathBuf>) -> Self {
        Self::with_settings(EngineSettings {
            repo,
            ..EngineSettings::default()
        })
    }

    /// A backend with explicit settings.
    #[must_use]
    pub fn with_settings(settings: EngineSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings,
                opened: Mutex::new(None),
                retention: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Opens (or with `init_repo`, creates) the repository now, so that a wrong path shows at
    /// start-up; later calls retry when this fails.
    ///
    /// # Errors
    /// [`BackendError::Unavailable`] with the reason.
    pub fn open_repository(&self) -> Result<(), BackendError> {
        self.inner.open().map(|_| ())
    }
}

impl Inner {
    /// The open repository (blocking: reads `repo.json`).
    fn open(&self) -> Result<Repository, BackendError> {
        let Some(dir) = &self.settings.repo else {
            return Err(BackendError::Unavailable(
                "no backup repository is configured (set `repo` in vbm.toml or pass --repo)"
                    .to_owned(),
            ));
        };
        if let Ok(guard) = self.opened.lock()
            && let Some(repo) = guard.as_ref()
        {
            return Ok(repo.clone());
        }
        let repo = match Repository::open_local(dir, self.settings.key_file.as_deref()) {
            Ok(repo) => repo,
            Err(open_error) if self.settings.init_repo && absent_or_empty(dir) => {
                let repo = Repository::init_local(dir, &InitOptions::default()).map_err(|e| {
                    BackendError::Unavailable(format!(
                        "cannot create the backup repository {}: {e}",
                        dir.display()
                    ))
                })?;
                tracing::info!(repo = %dir.display(), previous = %open_error, "created a new backup repository");
                repo
            }
            Err(e) => {
                return Err(BackendError::Unavailable(format!(
                    "cannot open the backup repository {}: {e}{}",
                    dir.display(),
                    if absent_or_empty(dir) {
                        " (start vbm serve with --init-repo to create it)"
                    } else {
                        ""
                    }
                )));
            }
        };
        if let Ok(mut guard) = self.opened.lock() {
            *guard = Some(repo.clone());
        }
        Ok(repo)
    }

    /// [`Inner::open`] on the blocking pool.
    async fn repository(self: &Arc<Self>) -> Result<Repository, BackendError> {
        let this = Arc::clone(self);
        blocking(move || this.open()).await
    }
}

fn absent_or_empty(dir: &std::path::Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

/// Runs blocking repository work off the async threads.
async fn blocking<T, F>(f: F) -> Result<T, BackendError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, BackendError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| BackendError::Failed {
            message: format!("internal error: a repository task failed ({e})"),
            retryable: true,
        })?
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
    BackendError::Connection(format!(
        "vCenter {}: {}",
        target.name,
        convert::redact(&e.to_string(), Some(target))
    ))
}

/// Connects and logs in; a cancel while connecting ends the wait.
async fn connect(
    target: &VcenterTarget,
    cancel: &CancellationToken,
) -> Result<vbm_vsphere::Client, BackendError> {
    let options = connect_options(target)?;
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(BackendError::Cancelled("cancelled while connecting to vCenter".into())),
        connected = vbm_vsphere::Client::connect(options) => connected.map_err(|e| connection_error(target, &e)),
    }
}

async fn logout(client: vbm_vsphere::Client) {
    if let Err(e) = client.logout().await {
        tracing::debug!(error = %e, "vCenter logout failed");
    }
}

/// The engine's progress sink around the service's.
fn engine_sink(progress: ProgressSink) -> impl Fn(&vbm_engine::ProgressEvent) + Send + Sync {
    move |event: &vbm_engine::ProgressEvent| progress(convert::progress(event))
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
                    logout(client).await;
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
            let client = connect(&target, &CancellationToken::new()).await?;
            let listed = client.list_vms().await;
            logout(client).await;
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
                        vbm_snapshots: vm
                            .flat_snapshots()
                            .into_iter()
                            .filter(|s| s.name.starts_with(vbm_engine::SNAPSHOT_PREFIX))
                            .map(|s| VbmSnapshot {
                                name: s.name,
                                created: s.create_time.map(|t| t.to_string()),
                            })
                            .collect(),
                    })
                })
                .collect())
        })
    }

    fn backup(
        &self,
        target: VcenterTarget,
        task: BackupTask,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<BackupOutcome, BackendError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let repo = inner.repository().await?;
            let client = connect(&target, &cancel).await?;
            let mut options =
                BackupOptions::new(VmSelector::InstanceUuid(task.vm.instance_uuid.to_string()));
            options.job_id = task.job_id.to_string();
            options.run_id = vbm_engine::RunId::from_string(task.run_id.as_str());
            options.mode = match task.mode {
                BackupMode::Full => ModeRequest::Full,
                BackupMode::Incremental => ModeRequest::Incremental,
            };
            options.quiesce = task.quiesce;
            options.vcenter.clone_from(&target.name);
            options.streams = inner.settings.streams.max(1);
            options.workers = inner.settings.workers.max(1);
            options.max_request_bytes = inner.settings.max_request_bytes.max(1 << 20);
            let sink = engine_sink(progress);
            let result = vbm_engine::backup(&client, &repo, &options, &sink, &cancel).await;
            logout(client).await;
            let report = result.map_err(|e| convert::engine_error(e, Some(&target)))?;
            let entry = convert::entry(&report.backup_id, &report.manifest, None)?;
            Ok(BackupOutcome {
                entry,
                warnings: report.warnings,
            })
        })
    }

    fn sweep_snapshots(
        &self,
        target: VcenterTarget,
        vm: InstanceUuid,
    ) -> BoxFuture<'static, Result<u32, BackendError>> {
        Box::pin(async move {
            let client = connect(&target, &CancellationToken::new()).await?;
            let result = sweep(&client, &vm, &target).await;
            logout(client).await;
            result
        })
    }

    fn catalog(&self) -> BoxFuture<'static, Result<CatalogListing, BackendError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let repo = inner.repository().await?;
            blocking(move || repository::catalog(&repo)).await
        })
    }

    fn verify(
        &self,
        backup: BackupId,
        vcenter: Option<VcenterTarget>,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<VerifyOutcome, BackendError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let repo = inner.repository().await?;
            let id = repository::repo_id(&backup)?;
            {
                let (repo, id) = (repo.clone(), id.clone());
                blocking(move || {
                    repo.read_manifest(&id)
                        .map(|_| ())
                        .map_err(convert::repo_error)
                })
                .await?;
            }
            // The vCenter part (disk sizes) is optional: without a connection the repository
            // checks still run, and the log says why the comparison was skipped.
            let client = match &vcenter {
                Some(target) => match connect(target, &cancel).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        progress(super::Progress::message(
                            "verifying",
                            &backup.to_string(),
                            "warning",
                            format!("disk sizes not compared with vCenter: {e}"),
                        ));
                        None
                    }
                },
                None => None,
            };
            let sink = engine_sink(progress);
            let result = vbm_engine::verify(
                &repo,
                Some(vec![id]),
                false,
                client.as_ref(),
                &sink,
                &cancel,
            )
            .await;
            if let Some(c) = client {
                logout(c).await;
            }
            let outcome = result.map_err(|e| convert::engine_error(e, vcenter.as_ref()))?;
            blocking(move || convert::verify_outcome(&repo, &outcome)).await
        })
    }

    fn retention(
        &self,
        request: RetentionRequest,
    ) -> BoxFuture<'static, Result<RetentionOutcome, BackendError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let repo = inner.repository().await?;
            let _one_at_a_time = inner.retention.lock().await;
            blocking(move || repository::retention(&repo, &request)).await
        })
    }

    fn gc(
        &self,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<GcOutcome, BackendError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let repo = inner.repository().await?;
            let flag = vbm_engine::vbm_repo::Cancel::new();
            let watcher = {
                let (flag, cancel) = (flag.clone(), cancel.clone());
                tokio::spawn(async move {
                    cancel.cancelled().await;
                    flag.cancel();
                })
            };
            let grace = inner.settings.gc_grace;
            let result = blocking(move || repository::gc(&repo, grace, &progress, &flag)).await;
            watcher.abort();
            result
        })
    }

    fn repo_stats(&self) -> BoxFuture<'static, Result<RepoStats, BackendError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let repo = inner.repository().await?;
            let dir = inner.settings.repo.clone().unwrap_or_default();
            blocking(move || repository::stats(&repo, &dir)).await
        })
    }

    fn restore(
        &self,
        backup: BackupId,
        target: RestoreTarget,
        vcenter: Option<VcenterTarget>,
        progress: ProgressSink,
        cancel: CancellationToken,
    ) -> BoxFuture<'static, Result<RestoreOutcome, BackendError>> {
        let inner = Arc::clone(&self.inner);
        Box::pin(async move {
            let repo = inner.repository().await?;
            let id = repository::repo_id(&backup)?;
            let workers = inner.settings.workers.max(1);
            let sink = engine_sink(progress);
            let report = match target {
                RestoreTarget::Directory { path } => {
                    let options = vbm_engine::DirOptions {
                        overwrite: false,
                        workers,
                    };
                    vbm_engine::restore_to_dir(
                        &repo,
                        &id,
                        std::path::Path::new(&path),
                        &options,
                        &sink,
                        &cancel,
                    )
                    .await
                    .map_err(|e| convert::engine_error(e, None))?
                }
                RestoreTarget::NewVm {
                    datastore,
                    name,
                    folder,
                    resource_pool,
                    host,
                    power_on,
                    ..
                } => {
                    let vc = vcenter.ok_or_else(|| {
                        BackendError::NotFound("the target vCenter does not exist".into())
                    })?;
                    let client = connect(&vc, &cancel).await?;
                    let place = vbm_engine::VcenterTarget {
                        name,
                        datastore,
                        folder,
                        resource_pool,
                        host,
                        power_on,
                    };
                    let result = vbm_engine::restore_to_vcenter(
                        &client, &repo, &id, &place, workers, &sink, &cancel,
                    )
                    .await;
                    logout(client).await;
                    result.map_err(|e| convert::engine_error(e, Some(&vc)))?
                }
                RestoreTarget::InPlace {
                    confirm, power_on, ..
                } => {
                    let vc = vcenter.ok_or_else(|| {
                        BackendError::NotFound(
                            "no vCenter to restore in place into: name one with vcenter_id".into(),
                        )
                    })?;
                    let client = connect(&vc, &cancel).await?;
                    let result = vbm_engine::restore_in_place(
                        &client,
                        &repo,
                        &id,
                        vbm_engine::InPlaceOptions { confirm, power_on },
                        workers,
                        &sink,
                        &cancel,
                    )
                    .await;
                    logout(client).await;
                    result.map_err(|e| convert::engine_error(e, Some(&vc)))?
                }
            };
            Ok(RestoreOutcome {
                target: report.target,
                files: report.files.len() as u64,
                bytes_restored: report.bytes_restored,
                warnings: report.warnings,
            })
        })
    }
}

/// Removes the `vbm-*` snapshots of one VM; a VM that no longer exists has none. Snapshots
/// that could not be removed make a retryable error naming them.
async fn sweep(
    client: &vbm_vsphere::Client,
    vm: &InstanceUuid,
    target: &VcenterTarget,
) -> Result<u32, BackendError> {
    let found = vbm_engine::resolve_vm(client, &VmSelector::InstanceUuid(vm.to_string())).await;
    let vm = match found {
        Ok(vm) => vm,
        Err(vbm_engine::Error::NotFound(_)) => return Ok(0),
        Err(e) => return Err(convert::engine_error(e, Some(target))),
    };
    let report =
        vbm_engine::sweep_snapshots(client, &vm.moref, None, vbm_engine::RemovePolicy::default())
            .await
            .map_err(|e| convert::engine_error(e, Some(target)))?;
    if !report.failed.is_empty() {
        let failed: Vec<String> = report
            .failed
            .iter()
            .map(|(name, why)| format!("{name} ({why})"))
            .collect();
        return Err(BackendError::Failed {
            message: convert::redact(
                &format!(
                    "removed {} snapshot(s) of {}, but could not remove {}",
                    report.removed.len(),
                    vm.display_name,
                    failed.join(", ")
                ),
                Some(target),
            ),
            retryable: true,
        });
    }
    Ok(u32::try_from(report.removed.len()).unwrap_or(u32::MAX))
}
