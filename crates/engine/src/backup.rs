//! Backup of one VM, full or CBT-incremental, into a repository.
//!
//! The order of DESIGN.md "Data flow of one VM backup": resolve the VM (by instance UUID), sweep
//! `vbm-*` leftovers of crashed runs, refuse states that cannot be backed up correctly (ADR 30),
//! enable CBT if an incremental is wanted, create snapshot `vbm-<run>` — from here on its removal
//! is guaranteed — read each disk's changed (or allocated) areas into chunks, store VMX,
//! descriptors and nvram as blobs, remove the snapshot, and write the manifest **last**.

mod disk;
mod paths;

use std::sync::Arc;
use std::time::Instant;

use jiff::Timestamp;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vbm_repo::{
    BackupId, BackupMode, BackupWriter, BlobWriter, FileKind, FileName, FixedIndexReader, Manifest,
    ManifestDisk, ManifestFile, Repository, VmKey,
};
use vbm_vsphere::{ChangeId, Client, DatastoreFile, DatastorePath, MoRef, VirtualDisk, Vm};

use crate::error::{Error, Result};
use crate::plan;
use crate::progress::{Level, Phase, ProgressEvent, ProgressSink};
use crate::snapshots::{self, RemovePolicy, RunId, SNAPSHOT_PREFIX};
use crate::vmx::Vmx;

use paths::PathAllocator;

/// How to find the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmSelector {
    /// By `config.instanceUuid` (stable: what jobs store).
    InstanceUuid(String),
    /// By display name (must be unique in the vCenter).
    Name(String),
    /// By moref.
    MoRef(MoRef),
}

impl std::fmt::Display for VmSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InstanceUuid(u) => write!(f, "VM with instance UUID {u}"),
            Self::Name(n) => write!(f, "VM {n:?}"),
            Self::MoRef(m) => write!(f, "VM {m}"),
        }
    }
}

/// What kind of backup the caller wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeRequest {
    /// Read only what changed since the last backup where CBT allows it; each disk falls back to
    /// a full read (with a warning) when it does not.
    Incremental,
    /// Read every allocated area of every disk.
    Full,
}

/// Options of one VM backup.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// The VM.
    pub vm: VmSelector,
    /// The job this backup belongs to (free text; `manual` for ad-hoc backups).
    pub job_id: String,
    /// The run (names the snapshot).
    pub run_id: RunId,
    /// Full or incremental.
    pub mode: ModeRequest,
    /// Ask VMware Tools to quiesce the guest file systems.
    pub quiesce: bool,
    /// The vCenter's name for the manifest (host name of its URL).
    pub vcenter: String,
    /// Parallel HTTP range requests per disk.
    pub streams: usize,
    /// Threads hashing and compressing chunks.
    pub workers: usize,
    /// Largest single range request.
    pub max_request_bytes: u64,
    /// How snapshot removal is retried.
    pub remove_policy: RemovePolicy,
}

impl BackupOptions {
    /// Defaults: incremental, no quiesce, 4 streams, two workers per core, 32 MiB requests.
    #[must_use]
    pub fn new(vm: VmSelector) -> Self {
        Self {
            vm,
            job_id: "manual".to_owned(),
            run_id: RunId::new(),
            mode: ModeRequest::Incremental,
            quiesce: false,
            vcenter: String::new(),
            streams: 4,
            // Twice the cores: a worker waiting for its chunk's fsync leaves a core to another.
            workers: 2 * std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
            max_request_bytes: 32 << 20,
            remove_policy: RemovePolicy::default(),
        }
    }
}

/// Where the time of a backup went (for benchmarks and the run log).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Creating the snapshot (incl. enabling CBT).
    pub snapshot_create_seconds: f64,
    /// QueryChangedDiskAreas, all disks.
    pub cbt_query_seconds: f64,
    /// Reading, hashing, compressing and storing data, all disks (while the snapshot exists).
    pub data_seconds: f64,
    /// Removing the snapshot.
    pub snapshot_remove_seconds: f64,
    /// Computing the SHA-256 of incrementally read disks from the repository (after the snapshot
    /// is gone; local work, no vCenter involved).
    pub digest_seconds: f64,
    /// Writing the manifest.
    pub commit_seconds: f64,
}

/// What a successful backup did.
#[derive(Debug, Clone, Serialize)]
pub struct BackupReport {
    /// The new restore point.
    pub backup_id: BackupId,
    /// Full, or incremental when at least one disk was read incrementally.
    pub mode: BackupMode,
    /// Bytes fetched from the datastore (disk data, descriptors, VMX, nvram).
    pub bytes_read: u64,
    /// Bytes newly stored in the repository.
    pub bytes_written: u64,
    /// Size of all files of the backup as a restore writes them.
    pub logical_bytes: u64,
    /// Non-fatal problems (also in the manifest).
    pub warnings: Vec<String>,
    /// Time split.
    pub timings: Timings,
    /// The committed manifest.
    pub manifest: Manifest,
}

/// Backs up one VM into `repo`.
///
/// Cancellation (`cancel`) at any point removes the snapshot and leaves no visible backup.
///
/// # Errors
/// [`Error::Refused`] when the VM's state does not allow a correct backup (snapshots vbm did not
/// make, orphaned deltas, a template); vSphere, repository and I/O errors; [`Error::Cancelled`].
pub async fn backup(
    client: &Client,
    repo: &Repository,
    options: &BackupOptions,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<BackupReport> {
    let started = Timestamp::now();
    let mut ctx = Ctx {
        client,
        repo,
        options,
        progress,
        cancel,
        warnings: Vec::new(),
        vm_label: options.vm.to_string(),
        timings: Timings::default(),
        writer: None,
    };
    let result = ctx.run(started).await;
    if let Err(e) = &result {
        progress.event(&ProgressEvent::message(
            Phase::Failed,
            &ctx.vm_label,
            Level::Error,
            e.to_string(),
        ));
    }
    result
}

struct Ctx<'a> {
    client: &'a Client,
    repo: &'a Repository,
    options: &'a BackupOptions,
    progress: &'a dyn ProgressSink,
    cancel: &'a CancellationToken,
    warnings: Vec<String>,
    vm_label: String,
    timings: Timings,
    /// The backup being written, while the data phase runs: after a failure or cancel, it is
    /// aborted once the workers that still hold it have finished.
    writer: Option<Arc<BackupWriter>>,
}

/// A parent backup usable for incrementals.
struct Parent {
    id: BackupId,
    manifest: Manifest,
}

/// A backup whose data is stored, waiting for the snapshot removal and the commit.
struct Pending {
    writer: BackupWriter,
    manifest: Manifest,
    bytes_read: u64,
    /// Disk files of incremental reads whose SHA-256 is computed from their index after the
    /// snapshot is removed: (position in `manifest.files`, label, index).
    digests: Vec<(usize, String, FixedIndexReader)>,
}

impl Ctx<'_> {
    fn info(&self, phase: Phase, message: impl Into<String>) {
        self.progress.event(&ProgressEvent::message(
            phase,
            &self.vm_label,
            Level::Info,
            message,
        ));
    }

    fn warn(&mut self, phase: Phase, message: impl Into<String>) {
        let message = message.into();
        tracing::warn!(vm = %self.vm_label, "{message}");
        self.progress.event(&ProgressEvent::message(
            phase,
            &self.vm_label,
            Level::Warning,
            message.clone(),
        ));
        self.warnings.push(message);
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    async fn run(&mut self, started: Timestamp) -> Result<BackupReport> {
        self.info(Phase::Connecting, format!("resolving {}", self.options.vm));
        let vm = resolve_vm(self.client, &self.options.vm).await?;
        self.vm_label = vm.display_name.clone();
        let vm_key = vm_key(&vm)?;
        if vm.template {
            return Err(Error::Refused(format!(
                "{} is a template: templates cannot be snapshotted; back up a VM cloned from it",
                vm.display_name
            )));
        }
        self.check_cancel()?;

        // Leftovers of crashed runs first: they would otherwise count as "user snapshots".
        let sweep =
            snapshots::sweep_snapshots(self.client, &vm.moref, None, self.options.remove_policy)
                .await?;
        for name in &sweep.removed {
            self.warn(
                Phase::Connecting,
                format!("removed snapshot {name} left by an interrupted vbm run"),
            );
        }
        if let Some((name, why)) = sweep.failed.first() {
            return Err(Error::Refused(format!(
                "snapshot {name} left by an interrupted vbm run could not be removed ({why}); remove it in vCenter and run the backup again"
            )));
        }
        let vm = self.client.read_vm(&vm.moref).await?;
        refuse_unsafe_state(&vm)?;
        self.refuse_object_backed(&vm).await?;

        let wants_incremental = self.options.mode == ModeRequest::Incremental;
        let parent = if wants_incremental {
            self.find_parent(&vm_key).await
        } else {
            None
        };

        let snapshot_started = Instant::now();
        if wants_incremental && !vm.cbt_enabled {
            self.info(Phase::Snapshot, "enabling Changed Block Tracking");
            self.client.set_change_tracking(&vm.moref, true).await?;
            self.warn(Phase::Snapshot, format!("Changed Block Tracking was off on {}: enabled it; this backup reads every allocated block, the next one only changes", vm.display_name));
        }
        self.check_cancel()?;
        let name = snapshots::snapshot_name(&self.options.run_id);
        let description =
            snapshots::snapshot_description(&self.options.run_id, &self.options.job_id);
        self.info(Phase::Snapshot, format!("creating snapshot {name}"));
        let snapshot = match self
            .client
            .create_snapshot(&vm.moref, &name, &description, false, self.options.quiesce)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // The task may have created the snapshot although we saw an error (timeout,
                // lost connection): never leave it behind.
                if let Ok(Some(s)) = self.client.find_snapshot(&vm.moref, &name).await {
                    let _ = snapshots::remove_snapshot(self.client, &s, self.options.remove_policy)
                        .await;
                }
                return Err(e.into());
            }
        };
        self.timings.snapshot_create_seconds = snapshot_started.elapsed().as_secs_f64();

        // The data phase races cancellation; whatever happens, the snapshot is removed after.
        let data = tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(Error::Cancelled),
            r = self.read_data(&vm, &vm_key, &snapshot, &name, parent.as_ref(), started) => r,
        };

        self.info(Phase::Snapshot, format!("removing snapshot {name}"));
        let remove_started = Instant::now();
        let removed =
            snapshots::remove_snapshot(self.client, &snapshot, self.options.remove_policy).await;
        self.timings.snapshot_remove_seconds = remove_started.elapsed().as_secs_f64();
        let mut pending = match data {
            Ok(p) => p,
            Err(e) => {
                if let Some(writer) = self.writer.take() {
                    discard(writer).await;
                }
                if let Err(re) = removed {
                    tracing::error!(vm = %self.vm_label, snapshot = %name, error = %re, "could not remove the snapshot after a failed backup; the next run removes it");
                }
                return Err(e);
            }
        };
        if let Err(e) = removed {
            self.warn(Phase::Snapshot, format!("snapshot {name} could not be removed ({e}); the data is complete, and the next run removes the snapshot"));
        } else if let Ok(after) = self.client.read_vm(&vm.moref).await
            && after.consolidation_needed
        {
            self.warn(Phase::Snapshot, format!("{} needs disk consolidation after the snapshot removal; consolidate it in vCenter", vm.display_name));
        }
        if self.cancel.is_cancelled() {
            return Err(Error::Cancelled);
        }

        // The SHA-256 of disks read incrementally covers their unchanged data too: read it back
        // from the repository now that vCenter no longer keeps a snapshot for us.
        let digest_started = Instant::now();
        for (position, label, index) in std::mem::take(&mut pending.digests) {
            self.info(
                Phase::Compressing,
                format!(
                    "computing the SHA-256 of {label} (unchanged data is read from the repository)"
                ),
            );
            let repo = self.repo.clone();
            let threads = self.options.workers.max(1);
            let computed = tokio::select! {
                biased;
                () = self.cancel.cancelled() => Err(Error::Cancelled),
                r = tokio::task::spawn_blocking(move || repo.file_sha256(&index, threads)) => r.map_err(|e| Error::join(&e)),
            };
            let sha256 = match computed.and_then(|r| r.map_err(Error::from)) {
                Ok(sha) => sha,
                Err(e) => {
                    discard(Arc::new(pending.writer)).await;
                    return Err(match e {
                        Error::Repo(
                            inner @ (vbm_repo::Error::ChunkCorrupt { .. }
                            | vbm_repo::Error::ChunkMissing { .. }),
                        ) => Error::Refused(format!(
                            "{label}: the previous backup's data is damaged ({inner}); run 'vbm verify' (it quarantines damaged chunks) and back up again: the next backup reads that data from vCenter"
                        )),
                        other => other,
                    });
                }
            };
            if let Some(file) = pending.manifest.files.get_mut(position) {
                file.sha256 = sha256;
            }
        }
        self.timings.digest_seconds = digest_started.elapsed().as_secs_f64();

        self.info(Phase::Compressing, "writing the manifest");
        let commit_started = Instant::now();
        pending.manifest.finished = Timestamp::now();
        pending.manifest.warnings = self.warnings.clone();
        let Pending {
            writer,
            manifest,
            bytes_read,
            ..
        } = pending;
        // The repository may have moved the id on by a second (ids stay unique when the clock
        // repeats itself): the writer's id is the truth, not the start time.
        let backup_id = writer.id().clone();
        let manifest = tokio::task::spawn_blocking(move || writer.commit(manifest))
            .await
            .map_err(|e| Error::join(&e))??;
        self.timings.commit_seconds = commit_started.elapsed().as_secs_f64();
        let report = BackupReport {
            backup_id: backup_id.clone(),
            mode: manifest.mode,
            bytes_read,
            bytes_written: manifest.bytes_written,
            logical_bytes: manifest.logical_bytes(),
            warnings: manifest.warnings.clone(),
            timings: self.timings,
            manifest,
        };
        self.info(
            Phase::Done,
            format!(
                "backup {backup_id} complete: read {} bytes, stored {} new bytes",
                report.bytes_read, report.bytes_written
            ),
        );
        Ok(report)
    }

    /// The latest committed backup of the VM with a readable manifest, read from the same
    /// vCenter (or standalone host) as this backup; failing that, the latest from anywhere (the
    /// disks then fall back to full reads, with a warning that says why).
    async fn find_parent(&mut self, vm_key: &VmKey) -> Option<Parent> {
        let repo = self.repo.clone();
        let key = vm_key.clone();
        let source = (self.vcenter_uuid(), self.options.vcenter.clone());
        let found = tokio::task::spawn_blocking(move || -> vbm_repo::Result<Option<Parent>> {
            let listing = repo.list_backups()?;
            let mut elsewhere = None;
            for id in listing.committed.iter().rev().filter(|id| id.vm() == &key) {
                match repo.read_manifest(id) {
                    Ok(manifest) => {
                        let parent = Parent { id: id.clone(), manifest };
                        if other_source(&parent, source.0.as_deref(), &source.1).is_none() {
                            return Ok(Some(parent));
                        }
                        elsewhere.get_or_insert(parent);
                    }
                    Err(e) => tracing::warn!(backup = %id, error = %e, "skipping an unreadable backup as incremental parent"),
                }
            }
            Ok(elsewhere)
        })
        .await;
        match found {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                self.warn(
                    Phase::Connecting,
                    format!("could not list earlier backups ({e}): this backup is full"),
                );
                None
            }
            Err(e) => {
                self.warn(
                    Phase::Connecting,
                    format!("could not list earlier backups ({e}): this backup is full"),
                );
                None
            }
        }
    }

    #[allow(clippy::too_many_lines)] // one linear story: files, disks, blobs, manifest
    async fn read_data(
        &mut self,
        vm: &Vm,
        vm_key: &VmKey,
        snapshot: &MoRef,
        snapshot_name: &str,
        parent: Option<&Parent>,
        started: Timestamp,
    ) -> Result<Pending> {
        let client = self.client;
        let dc_path = vm
            .datacenter_path
            .clone()
            .ok_or_else(|| Error::NotFound(format!("datacenter of {}", vm.display_name)))?;
        let vmx_path = vm
            .vmx_path
            .clone()
            .ok_or_else(|| Error::NotFound(format!("configuration file of {}", vm.display_name)))?;
        let disks = client.snapshot_disks(snapshot).await?;
        for disk in &disks {
            if !disk.parents.is_empty() || disk.delta_disk_format.is_some() {
                return Err(Error::Refused(format!(
                    "{} of {} is a delta disk ({}) in snapshot {snapshot_name}: the VM has snapshots outside vbm's knowledge; consolidate it and run the backup again",
                    disk.label, vm.display_name, disk.file_name
                )));
            }
        }

        let repo = self.repo.clone();
        let key = vm_key.clone();
        let writer = tokio::task::spawn_blocking(move || repo.start_backup(&key, started))
            .await
            .map_err(|e| Error::join(&e))??;
        let writer = Arc::new(writer);
        self.writer = Some(writer.clone());
        let mut paths = PathAllocator::default();
        let mut files = Vec::new();
        let mut manifest_disks = Vec::new();
        let mut bytes_read = 0u64;
        let mut any_incremental = false;
        let mut digests = Vec::new();

        // The configuration file.
        let vmx_file = DatastoreFile::new(dc_path.clone(), vmx_path.clone());
        let vmx_bytes = client.get_bytes(&vmx_file, 16 << 20).await?;
        bytes_read += vmx_bytes.len() as u64;
        let vmx = Vmx::parse(&String::from_utf8_lossy(&vmx_bytes));
        let vmx_manifest_path = paths.allocate(&vmx_path);
        files.push(
            store_blob(
                &writer,
                "vmx",
                vmx_manifest_path,
                FileKind::Config,
                vmx_bytes,
            )
            .await?,
        );

        // NVRAM (absent on some VMs: a warning, not a failure).
        let nvram_name = vmx
            .get("nvram")
            .map_or_else(|| format!("{}.nvram", vmx_stem(&vmx_path)), str::to_owned);
        let nvram_path = resolve_vmx_relative(&vmx_path, &nvram_name);
        match client.get_bytes(&DatastoreFile::new(dc_path.clone(), nvram_path.clone()), 64 << 20).await {
            Ok(bytes) => {
                bytes_read += bytes.len() as u64;
                let path = paths.allocate(&nvram_path);
                files.push(store_blob(&writer, "nvram", path, FileKind::Nvram, bytes).await?);
            }
            Err(e) => self.warn(Phase::Downloading, format!("no NVRAM file backed up ({nvram_path}: {e}); a restored VM starts with default firmware settings")),
        }

        for disk in &disks {
            self.check_cancel()?;
            if disk.disk_mode.is_independent() {
                self.warn(Phase::Downloading, format!("{} ({}) is an independent disk: snapshots do not cover it, so it is not backed up", disk.label, disk.file_name));
                continue;
            }
            if disk.compatibility_mode.as_deref() == Some("physicalMode") {
                self.warn(Phase::Downloading, format!("{} ({}) is a physical-mode RDM: it cannot be snapshotted, so it is not backed up", disk.label, disk.file_name));
                continue;
            }
            let descriptor_path = DatastorePath::parse(&disk.file_name)?;
            let descriptor_bytes = client
                .get_bytes(
                    &DatastoreFile::new(dc_path.clone(), descriptor_path.clone()),
                    1 << 20,
                )
                .await?;
            bytes_read += descriptor_bytes.len() as u64;
            let descriptor = vbm_vsphere::Descriptor::from_bytes(&descriptor_bytes)?;
            if descriptor.has_parent() {
                return Err(Error::Refused(format!(
                    "{} of {}: descriptor {descriptor_path} has a parent disk (a snapshot delta); consolidate the VM and run the backup again",
                    disk.label, vm.display_name
                )));
            }
            let extent = descriptor.flat_extent_file().map_err(|e| {
                Error::Refused(format!(
                    "{} of {}: {e}; vbm backs up flat (VMFS/NFS) disks only",
                    disk.label, vm.display_name
                ))
            })?;
            let flat_path = descriptor_path.parent().join(extent);
            let capacity = disk.capacity_bytes;

            let (parent_index, areas) = self.disk_areas(vm, disk, snapshot, parent).await?;
            let incremental = parent_index.is_some();
            any_incremental |= incremental;
            let chunk_size = u64::from(self.repo.chunk_size());
            let disk_plan = plan::plan_disk(capacity, chunk_size, areas, incremental);
            let index_name = FileName::new(format!("disk-{}", disk.key)).map_err(Error::Repo)?;
            let data_started = Instant::now();
            let outcome = disk::back_up_disk(disk::DiskJob {
                client,
                repo: self.repo,
                writer: &writer,
                flat: DatastoreFile::new(dc_path.clone(), flat_path.clone()),
                plan: disk_plan,
                parent: parent_index,
                index_name,
                vm_name: &self.vm_label,
                label: &disk.label,
                streams: self.options.streams,
                workers: self.options.workers,
                max_request: self.options.max_request_bytes,
                progress: self.progress,
                cancel: self.cancel,
            })
            .await?;
            self.timings.data_seconds += data_started.elapsed().as_secs_f64();
            for w in outcome.warnings {
                self.warn(Phase::Downloading, w);
            }
            bytes_read += outcome.bytes_read;
            let descriptor_manifest_path = paths.allocate(&descriptor_path);
            let flat_manifest_path = paths.allocate(&flat_path);
            files.push(
                store_blob(
                    &writer,
                    &format!("disk-{}-vmdk", disk.key),
                    descriptor_manifest_path,
                    FileKind::Descriptor,
                    descriptor_bytes,
                )
                .await?,
            );
            if outcome.sha256.is_none() {
                digests.push((files.len(), disk.label.clone(), outcome.index.index.clone()));
            }
            files.push(ManifestFile {
                path: flat_manifest_path.clone(),
                size_bytes: capacity,
                // Filled in after the snapshot removal when it was not computed inline.
                sha256: outcome.sha256.unwrap_or_else(|| vbm_repo::Sha256::of(&[])),
                kind: FileKind::Disk,
                storage: outcome.index.storage(),
            });
            manifest_disks.push(ManifestDisk {
                device_key: disk.key,
                label: disk.label.clone(),
                capacity_bytes: capacity,
                change_id: disk.change_id.as_ref().map(|c| c.as_str().to_owned()),
                datastore: Some(descriptor_path.datastore.clone()),
                file: flat_manifest_path,
                index: outcome.index.name.clone(),
            });
        }

        self.writer = None;
        let writer = Arc::try_unwrap(writer)
            .map_err(|_| Error::Internal("a disk worker still holds the backup writer".into()))?;
        let manifest = Manifest {
            format_version: 0,
            job_id: self.options.job_id.clone(),
            vm_name: vm.display_name.clone(),
            vm_key: vm_key.clone(),
            vm_instance_uuid: vm.instance_uuid.clone(),
            vm_folder: Some(vbm_vsphere::decode_name(&vm.folder_path)),
            started,
            finished: started,
            vcenter: self.options.vcenter.clone(),
            vcenter_uuid: self.vcenter_uuid(),
            snapshot: snapshot_name.to_owned(),
            mode: if any_incremental {
                BackupMode::Incremental
            } else {
                BackupMode::Full
            },
            parent: if any_incremental {
                parent.map(|p| p.id.clone())
            } else {
                None
            },
            files,
            disks: manifest_disks,
            bytes_read,
            bytes_written: 0,
            chunks_new: 0,
            chunks_reused: 0,
            warnings: Vec::new(),
            vbm_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        Ok(Pending {
            writer,
            manifest,
            bytes_read,
            digests,
        })
    }

    /// Decides how to read one disk: the parent's index and the changed areas for an
    /// incremental, or `None` and the allocated areas (or the whole disk) for a full read. Every
    /// reason to fall back to a full read is a warning, never a failure (N11).
    async fn disk_areas(
        &mut self,
        vm: &Vm,
        disk: &VirtualDisk,
        snapshot: &MoRef,
        parent: Option<&Parent>,
    ) -> Result<(Option<Arc<FixedIndexReader>>, Vec<std::ops::Range<u64>>)> {
        let capacity = disk.capacity_bytes;
        let query_started = Instant::now();
        if let Some(parent) = parent {
            match self.incremental_base(disk, parent).await {
                Ok((index, since)) => match self.client.query_changed_disk_areas(&vm.moref, snapshot, disk.key, &since, capacity).await {
                    Ok(extents) => {
                        self.timings.cbt_query_seconds += query_started.elapsed().as_secs_f64();
                        return Ok((Some(index), extents.iter().map(|e| e.start..e.end()).collect()));
                    }
                    Err(e) => self.warn(Phase::Downloading, format!("full read of {}: CBT cannot report changes since the last backup ({e}); CBT was probably reset", disk.label)),
                },
                Err(reason) => self.warn(Phase::Downloading, format!("full read of {}: {reason}", disk.label)),
            }
        }
        let areas = if disk.change_id.is_some() {
            match self
                .client
                .query_changed_disk_areas(&vm.moref, snapshot, disk.key, &ChangeId::all(), capacity)
                .await
            {
                Ok(extents) => extents.iter().map(|e| e.start..e.end()).collect(),
                Err(e) => {
                    self.warn(
                        Phase::Downloading,
                        format!(
                            "{}: CBT cannot list allocated areas ({e}); reading the whole disk",
                            disk.label
                        ),
                    );
                    std::iter::once(0..capacity).collect()
                }
            }
        } else {
            std::iter::once(0..capacity).collect()
        };
        self.timings.cbt_query_seconds += query_started.elapsed().as_secs_f64();
        Ok((None, areas))
    }

    /// vSAN and vVols keep disks as objects: there is no flat extent to read over `/folder`,
    /// so a VM with such a disk is refused before any snapshot is made.
    async fn refuse_object_backed(&self, vm: &Vm) -> Result<()> {
        let backed_up: Vec<&VirtualDisk> = vm
            .disks
            .iter()
            .filter(|d| {
                !d.disk_mode.is_independent()
                    && d.compatibility_mode.as_deref() != Some("physicalMode")
            })
            .collect();
        let mut stores: Vec<MoRef> = backed_up
            .iter()
            .filter_map(|d| d.datastore.clone())
            .collect();
        stores.sort_by(|a, b| a.value.cmp(&b.value));
        stores.dedup();
        if stores.is_empty() {
            return Ok(());
        }
        let details = self.client.datastore_details(&stores).await?;
        for disk in backed_up {
            if let Some(ds) = details
                .iter()
                .find(|ds| disk.datastore.as_ref() == Some(&ds.moref))
                && ds.is_object_backed()
            {
                return Err(Error::Refused(format!(
                    "{} of {} is on {} datastore {}: object-backed datastores (vSAN, vVols) have no flat disk files to read over the datastore HTTP endpoint, which is how vbm reads disks",
                    disk.label, vm.display_name, ds.kind, ds.display_name
                )));
            }
        }
        Ok(())
    }

    /// The instance UUID of the vCenter this backup reads from (none for ESXi).
    fn vcenter_uuid(&self) -> Option<String> {
        self.client
            .service_content()
            .ok()
            .map(|c| c.about.instance_uuid)
            .filter(|u| !u.is_empty())
    }

    /// The parent's index and changeId for an incremental read of `disk`, or why there is none.
    async fn incremental_base(
        &self,
        disk: &VirtualDisk,
        parent: &Parent,
    ) -> std::result::Result<(Arc<FixedIndexReader>, ChangeId), String> {
        if let Some(why) = other_source(
            parent,
            self.vcenter_uuid().as_deref(),
            &self.options.vcenter,
        ) {
            return Err(why);
        }
        let Some(prev) = parent
            .manifest
            .disks
            .iter()
            .find(|d| d.device_key == disk.key)
        else {
            return Err(format!(
                "the last backup ({}) has no disk with device key {}",
                parent.id, disk.key
            ));
        };
        if prev.capacity_bytes != disk.capacity_bytes {
            return Err(format!(
                "the disk was resized ({} → {} bytes) since the last backup",
                prev.capacity_bytes, disk.capacity_bytes
            ));
        }
        let Some(prev_id) = prev.change_id.as_deref().map(ChangeId::new) else {
            return Err("the last backup recorded no CBT changeId".to_owned());
        };
        let Some(now_id) = &disk.change_id else {
            return Err("CBT is not active on the disk yet".to_owned());
        };
        if prev_id.epoch() != now_id.epoch() {
            return Err(format!(
                "CBT was reset since the last backup (changeId {} → {})",
                prev_id.as_str(),
                now_id.as_str()
            ));
        }
        if prev
            .datastore
            .as_deref()
            .is_some_and(|ds| ds != disk.datastore_name)
        {
            return Err(format!(
                "the disk moved from datastore {} to {}",
                prev.datastore.as_deref().unwrap_or(""),
                disk.datastore_name
            ));
        }
        let Some(file) = parent.manifest.files.iter().find(|f| f.path == prev.file) else {
            return Err("the last backup's manifest lacks the disk file".to_owned());
        };
        let vbm_repo::FileStorage::Index { name, sha256 } = &file.storage else {
            return Err("the last backup stored the disk without an index".to_owned());
        };
        let repo = self.repo.clone();
        let id = parent.id.clone();
        let (name, sha256) = (name.clone(), *sha256);
        // The index, and how many of its chunks are gone (quarantined by verify, or lost): an
        // incremental reuses every chunk it does not read, so all of them must be there.
        let (index, missing) = tokio::task::spawn_blocking(move || -> vbm_repo::Result<_> {
            let index = repo.open_backup(&id)?.open_index(&name, &sha256)?;
            let unique: std::collections::HashSet<_> = index.digests().iter().copied().collect();
            let mut missing = 0usize;
            for digest in unique {
                if !repo.has_chunk(&digest)? {
                    missing += 1;
                }
            }
            Ok((index, missing))
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("the last backup's index cannot be read ({e})"))?;
        if missing > 0 {
            return Err(format!(
                "{missing} chunk(s) of the last backup are missing or quarantined as damaged"
            ));
        }
        if u64::from(index.chunk_size()) != u64::from(self.repo.chunk_size())
            || index.logical_size() != disk.capacity_bytes
        {
            return Err("the last backup's index does not fit the disk".to_owned());
        }
        Ok((Arc::new(index), prev_id))
    }
}

/// Aborts an uncommitted backup once the worker tasks that still hold it are done, so that no
/// partial backup directory outlives the failed or cancelled run.
async fn discard(writer: Arc<BackupWriter>) {
    let mut writer = writer;
    for _ in 0..600 {
        match Arc::try_unwrap(writer) {
            Ok(w) => {
                let id = w.id().clone();
                match tokio::task::spawn_blocking(move || w.abort()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(backup = %id, error = %e, "could not remove the partial backup; GC removes it later")
                    }
                    Err(e) => {
                        tracing::warn!(backup = %id, error = %e, "could not remove the partial backup; GC removes it later")
                    }
                }
                return;
            }
            Err(shared) => {
                writer = shared;
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    tracing::warn!(backup = %writer.id(), "workers still hold the partial backup; it is removed when they finish");
}

async fn store_blob(
    writer: &Arc<BackupWriter>,
    name: &str,
    path: String,
    kind: FileKind,
    bytes: Vec<u8>,
) -> Result<ManifestFile> {
    let name = FileName::new(name).map_err(Error::Repo)?;
    let writer = writer.clone();
    let summary =
        tokio::task::spawn_blocking(move || writer.write_blob(BlobWriter::with_data(name, bytes)))
            .await
            .map_err(|e| Error::join(&e))??;
    Ok(ManifestFile {
        path,
        size_bytes: summary.size,
        sha256: summary.sha256,
        kind,
        storage: summary.storage(),
    })
}

/// Finds the VM.
///
/// # Errors
/// [`Error::NotFound`] or the vSphere error (ambiguous names list the candidates).
pub async fn resolve_vm(client: &Client, selector: &VmSelector) -> Result<Vm> {
    let found = match selector {
        VmSelector::InstanceUuid(uuid) => client.find_vm_by_instance_uuid(uuid).await,
        VmSelector::Name(name) => client.find_vm_by_name(name).await,
        VmSelector::MoRef(moref) => client.read_vm(moref).await,
    };
    match found {
        Ok(vm) => Ok(vm),
        Err(vbm_vsphere::Error::NotFound(_)) => {
            Err(Error::NotFound(format!("{selector} not found in vCenter")))
        }
        Err(e) => Err(e.into()),
    }
}

/// The repository key of a VM: its instance UUID (names change; the UUID does not).
///
/// # Errors
/// [`Error::Refused`] for a VM without any UUID.
pub fn vm_key(vm: &Vm) -> Result<VmKey> {
    let uuid = vm
        .instance_uuid
        .as_deref()
        .or(vm.bios_uuid.as_deref())
        .ok_or_else(|| {
            Error::Refused(format!(
                "{} has no instance or BIOS UUID; vbm identifies VMs by UUID",
                vm.display_name
            ))
        })?;
    let clean: String = uuid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    VmKey::new(format!("vm-{clean}")).map_err(Error::Repo)
}

/// Why `parent` was read from another vCenter or standalone host than the one this backup reads
/// (`uuid`: its instance UUID, none for a standalone host; `label`: its name), if it was. The
/// same instance UUID in two vCenters (a replicated or re-registered VM) is not the same disk:
/// its changeIds say nothing about the other's data.
fn other_source(parent: &Parent, uuid: Option<&str>, label: &str) -> Option<String> {
    let then = &parent.manifest;
    match (then.vcenter_uuid.as_deref(), uuid) {
        (Some(was), Some(now)) if !was.eq_ignore_ascii_case(now) => Some(format!(
            "the last backup ({}) was read through another vCenter ({} {was}, now {now})",
            parent.id, then.vcenter
        )),
        // Standalone ESXi hosts have no instance UUID: tell them apart by name.
        (None, None) if !then.vcenter.eq_ignore_ascii_case(label) => Some(format!(
            "the last backup ({}) was read from another host ({}, now {label})",
            parent.id, then.vcenter
        )),
        _ => None,
    }
}

/// ADR 30: refuse VMs whose base disks are not their current state.
fn refuse_unsafe_state(vm: &Vm) -> Result<()> {
    let foreign: Vec<String> = vm
        .flat_snapshots()
        .into_iter()
        .filter(|s| !s.name.starts_with(SNAPSHOT_PREFIX))
        .map(|s| s.display_name)
        .collect();
    if !foreign.is_empty() {
        return Err(Error::Refused(format!(
            "{} has {} snapshot(s) not created by vbm ({}): vbm reads the base disks, which would miss every change since the oldest snapshot; delete or consolidate them and run the backup again",
            vm.display_name,
            foreign.len(),
            foreign.join(", ")
        )));
    }
    if vm.consolidation_needed {
        return Err(Error::Refused(format!(
            "{} needs disk consolidation (orphaned snapshot deltas): consolidate it in vCenter and run the backup again",
            vm.display_name
        )));
    }
    if let Some(disk) = vm
        .disks
        .iter()
        .find(|d| !d.parents.is_empty() || d.delta_disk_format.is_some())
    {
        return Err(Error::Refused(format!(
            "{} of {} runs on a delta disk ({}) without a snapshot entry: consolidate the VM and run the backup again",
            disk.label, vm.display_name, disk.file_name
        )));
    }
    Ok(())
}

/// `web01` of `[ds] web01/web01.vmx`.
fn vmx_stem(vmx: &DatastorePath) -> String {
    let name = vmx.file_name();
    name.strip_suffix(".vmx").unwrap_or(name).to_owned()
}

/// A file named in a VMX: relative to the VMX's directory, or absolute under
/// `/vmfs/volumes/<datastore>/…`.
pub(crate) fn resolve_vmx_relative(vmx: &DatastorePath, name: &str) -> DatastorePath {
    if let Some(rest) = name.strip_prefix("/vmfs/volumes/")
        && let Some((datastore, path)) = rest.split_once('/')
    {
        return DatastorePath::new(datastore, path);
    }
    vmx.parent().join(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_relative_names_resolve_against_the_vmx_directory_or_vmfs_volumes() {
        let vmx = DatastorePath::new("ds1", "web01/web01.vmx");
        assert_eq!(
            resolve_vmx_relative(&vmx, "web01.nvram"),
            DatastorePath::new("ds1", "web01/web01.nvram")
        );
        assert_eq!(
            resolve_vmx_relative(&vmx, "/vmfs/volumes/ds 2/web01/d.vmdk"),
            DatastorePath::new("ds 2", "web01/d.vmdk")
        );
        assert_eq!(vmx_stem(&vmx), "web01");
    }
}
