//! Restore into vCenter: as a new VM (upload the files to a new directory, rewrite the VMX for the
//! new name and identity, register) or in place (power off, unregister, overwrite the VM's files,
//! register again).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vbm_repo::{
    BackupId, BackupReader, FileKind, ManifestDisk, ManifestFile, Repository, Sha256Hasher,
};
use vbm_vsphere::{Client, DatastoreFile, DatastorePath, Descriptor, Inventory, MoRef, PowerState};

use super::{Piece, RestoreReport, RestoredFile, open_file, open_for_restore, pieces};
use crate::error::{Error, Result};
use crate::progress::{Level, Meter, Phase, ProgressEvent, ProgressSink};
use crate::vmx::Vmx;

/// Where and how to restore a backup as a new VM.
#[derive(Debug, Clone, Serialize)]
pub struct VcenterTarget {
    /// The new VM's name (also its directory on the datastore).
    pub name: String,
    /// Datastore name for all its files.
    pub datastore: String,
    /// VM folder path below the datacenter's VM folder (`Prod/Web`); `None` = its root.
    pub folder: Option<String>,
    /// Cluster, standalone host or resource pool (name or inventory path); `None` = the first
    /// cluster (or host) of the datastore's datacenter.
    pub resource_pool: Option<String>,
    /// Host to register on (name); optional.
    pub host: Option<String>,
    /// Power the VM on after registering it.
    pub power_on: bool,
}

/// Options of [`restore_in_place`].
#[derive(Debug, Clone, Copy, Default)]
pub struct InPlaceOptions {
    /// The caller confirmed that the VM's current disks and configuration are overwritten.
    pub confirm: bool,
    /// Power on afterwards; `None` restores the power state the VM had.
    pub power_on: Option<bool>,
}

/// Restores a backup as a new VM named `target.name` on `target.datastore`.
///
/// # Errors
/// [`Error::InvalidInput`] when the name or directory is taken or the datastore cannot hold raw
/// disks; [`Error::NotFound`] for unknown datastore/folder/pool; digest mismatches (the uploaded
/// files are removed again); vSphere errors.
pub async fn restore_to_vcenter(
    client: &Client,
    repo: &Repository,
    id: &BackupId,
    target: &VcenterTarget,
    workers: usize,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<RestoreReport> {
    let (backup, _lock) = open_for_restore(repo, id).await?;
    let manifest = backup.manifest().clone();
    let label = target.name.clone();
    if target.name.is_empty()
        || target.name.contains(['/', '\\', '"', '\n', '\r'])
        || target.name.len() > 80
    {
        return Err(Error::InvalidInput(format!(
            "{:?} cannot be a VM name (1–80 characters, no / \\ \" or line breaks)",
            target.name
        )));
    }
    progress.event(&ProgressEvent::message(
        Phase::Connecting,
        &label,
        Level::Info,
        "reading the vCenter inventory",
    ));
    let inventory = client.infrastructure().await?;
    let placement = Placement::resolve(&inventory, target)?;
    let needed = manifest.logical_bytes();
    if placement.free_bytes < needed {
        return Err(Error::InvalidInput(format!(
            "datastore {} has {} bytes free; the restore needs {needed}",
            target.datastore, placement.free_bytes
        )));
    }
    match client.find_vm_by_name(&target.name).await {
        Ok(_) => {
            return Err(Error::InvalidInput(format!(
                "a VM named {:?} already exists",
                target.name
            )));
        }
        Err(vbm_vsphere::Error::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let dir = DatastorePath::new(placement.datastore_name.clone(), target.name.clone());
    if let Ok(entries) = client.list_directory(&placement.datastore, &dir).await
        && !entries.is_empty()
    {
        return Err(Error::InvalidInput(format!(
            "{dir} already exists and is not empty"
        )));
    }
    client
        .make_directory(&dir, Some(&placement.datacenter), true)
        .await?;

    let mut uploaded: Vec<DatastoreFile> = Vec::new();
    let result = upload_as_new(
        client,
        repo,
        &backup,
        &placement,
        &dir,
        target,
        workers,
        progress,
        cancel,
        &mut uploaded,
    )
    .await;
    let (files, vmx_path) = match result {
        Ok(r) => r,
        Err(e) => {
            for file in uploaded.iter().rev() {
                let _ = client.delete(file).await;
            }
            let _ = client
                .delete_datastore_file(&dir, Some(&placement.datacenter))
                .await;
            return Err(e);
        }
    };
    progress.event(&ProgressEvent::message(
        Phase::Restoring,
        &label,
        Level::Info,
        format!("registering {vmx_path}"),
    ));
    let vm = client
        .register_vm(
            &placement.folder,
            &vmx_path,
            Some(&target.name),
            &placement.pool,
            placement.host.as_ref(),
        )
        .await?;
    let mut warnings = Vec::new();
    if manifest.disks.iter().any(|d| d.change_id.is_some()) {
        warnings.push(
            "the restored VM starts without Changed Block Tracking; its first backup is full"
                .to_owned(),
        );
    }
    if target.power_on {
        progress.event(&ProgressEvent::message(
            Phase::Restoring,
            &label,
            Level::Info,
            "powering on",
        ));
        client.power_on(&vm, None).await?;
    }
    let bytes_restored = files.iter().map(|f| f.size_bytes).sum();
    progress.event(&ProgressEvent::message(
        Phase::Done,
        &label,
        Level::Info,
        format!(
            "registered {} ({vm}); every uploaded file matches its digest",
            target.name
        ),
    ));
    Ok(RestoreReport {
        backup_id: id.clone(),
        target: target.name.clone(),
        vm: Some(vm.to_string()),
        files,
        bytes_restored,
        warnings,
    })
}

/// Restores a backup over the VM it came from: powers it off, unregisters it, overwrites its
/// configuration, NVRAM and disks with the backup's (byte-identical), and registers it again.
///
/// # Errors
/// [`Error::InvalidInput`] without confirmation or when the VM's disks no longer match the
/// backup; [`Error::Refused`] when the VM has snapshots; digest mismatches; vSphere errors (after
/// the unregister, the VM is registered again even on failure, so it never disappears).
pub async fn restore_in_place(
    client: &Client,
    repo: &Repository,
    id: &BackupId,
    options: InPlaceOptions,
    workers: usize,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<RestoreReport> {
    let (backup, _lock) = open_for_restore(repo, id).await?;
    let manifest = backup.manifest().clone();
    if !options.confirm {
        return Err(Error::InvalidInput(format!(
            "an in-place restore overwrites the disks and configuration of VM {:?}; confirm it explicitly",
            manifest.vm_name
        )));
    }
    let uuid = manifest.vm_instance_uuid.clone().ok_or_else(|| {
        Error::InvalidInput(
            "the backup does not record the VM's instance UUID; restore it as a new VM".into(),
        )
    })?;
    let vm =
        crate::backup::resolve_vm(client, &crate::backup::VmSelector::InstanceUuid(uuid)).await?;
    let label = vm.display_name.clone();
    if !vm.snapshots.is_empty() {
        return Err(Error::Refused(format!(
            "{label} has snapshots; its disk files are the base of a snapshot chain: delete its snapshots first or restore as a new VM"
        )));
    }
    let vmx_path = vm
        .vmx_path
        .clone()
        .ok_or_else(|| Error::NotFound(format!("configuration file of {label}")))?;
    let dc_path = vm
        .datacenter_path
        .clone()
        .ok_or_else(|| Error::NotFound(format!("datacenter of {label}")))?;
    let folder = vm
        .folder
        .clone()
        .ok_or_else(|| Error::NotFound(format!("folder of {label}")))?;
    let pool = vm
        .resource_pool
        .clone()
        .ok_or_else(|| Error::NotFound(format!("resource pool of {label}")))?;
    let host = vm.host.clone();

    // Where each backed-up disk goes: the VM's current descriptor of the same device.
    let mut disk_targets = Vec::new();
    for disk in &manifest.disks {
        let current = vm.disk(disk.device_key).ok_or_else(|| {
            Error::InvalidInput(format!(
                "{label} no longer has the disk with device key {} ({}); restore as a new VM",
                disk.device_key, disk.label
            ))
        })?;
        let descriptor_file = descriptor_of(&manifest.files, disk)?;
        let current_descriptor = DatastorePath::parse(&current.file_name)?;
        if current_descriptor.file_name() != basename(&descriptor_file.path) {
            return Err(Error::InvalidInput(format!(
                "{} of {label} is now {current_descriptor}, not {}: restore as a new VM",
                disk.label, descriptor_file.path
            )));
        }
        disk_targets.push((disk.clone(), descriptor_file.clone(), current_descriptor));
    }
    if vm.disks.len() > manifest.disks.len() {
        tracing::warn!(vm = %label, "the VM has disks that are not in the backup; they stay on the datastore but are detached by the restored configuration");
    }

    let was_on = vm.power_state == PowerState::PoweredOn;
    if vm.power_state != PowerState::PoweredOff {
        progress.event(&ProgressEvent::message(
            Phase::Restoring,
            &label,
            Level::Info,
            "powering off",
        ));
        client.power_off(&vm.moref).await?;
    }
    progress.event(&ProgressEvent::message(
        Phase::Restoring,
        &label,
        Level::Info,
        "unregistering",
    ));
    client.unregister_vm(&vm.moref).await?;

    let uploaded = overwrite_files(
        client,
        repo,
        &backup,
        &dc_path,
        &vmx_path,
        &disk_targets,
        workers,
        &label,
        progress,
        cancel,
    )
    .await;
    progress.event(&ProgressEvent::message(
        Phase::Restoring,
        &label,
        Level::Info,
        format!("registering {vmx_path}"),
    ));
    let registered = client
        .register_vm(&folder, &vmx_path, Some(&vm.name), &pool, host.as_ref())
        .await;
    match (uploaded, registered) {
        (Ok(files), Ok(moref)) => {
            if options.power_on.unwrap_or(was_on) {
                client.power_on(&moref, None).await?;
            }
            let bytes_restored = files.iter().map(|f| f.size_bytes).sum();
            progress.event(&ProgressEvent::message(
                Phase::Done,
                &label,
                Level::Info,
                "restored in place; every file matches its digest",
            ));
            Ok(RestoreReport {
                backup_id: id.clone(),
                target: label,
                vm: Some(moref.to_string()),
                files,
                bytes_restored,
                warnings: Vec::new(),
            })
        }
        (Err(e), _) => Err(Error::Refused(format!(
            "in-place restore of {label} failed while overwriting its files ({e}); the VM was registered again but its files may be partly overwritten: run the restore again"
        ))),
        (Ok(_), Err(e)) => Err(Error::Refused(format!(
            "{label}: the files were restored but registering the VM again failed ({e}); register {vmx_path} in vCenter"
        ))),
    }
}

/// The backup's descriptor file for a disk: the descriptor in the disk file's directory whose
/// extent is the disk file.
fn descriptor_of<'a>(files: &'a [ManifestFile], disk: &ManifestDisk) -> Result<&'a ManifestFile> {
    let dir = dirname(&disk.file);
    files
        .iter()
        .filter(|f| f.kind == FileKind::Descriptor && dirname(&f.path) == dir)
        .find(|f| {
            let stem = basename(&f.path).trim_end_matches(".vmdk");
            basename(&disk.file) == format!("{stem}-flat.vmdk")
        })
        .or_else(|| {
            files
                .iter()
                .find(|f| f.kind == FileKind::Descriptor && dirname(&f.path) == dir)
        })
        .ok_or_else(|| Error::NotFound(format!("descriptor of {} in the backup", disk.file)))
}

fn basename(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, b)| b)
}

fn dirname(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Resolved morefs for a new VM.
struct Placement {
    datacenter: MoRef,
    datacenter_path: String,
    datastore: MoRef,
    datastore_name: String,
    free_bytes: u64,
    folder: MoRef,
    pool: MoRef,
    host: Option<MoRef>,
}

impl Placement {
    fn resolve(inv: &Inventory, target: &VcenterTarget) -> Result<Self> {
        let ds = inv
            .datastores
            .iter()
            .find(|d| d.name == target.datastore || d.display_name == target.datastore)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "datastore {:?} not found (have: {})",
                    target.datastore,
                    inv.datastores
                        .iter()
                        .map(|d| d.display_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if ds.is_object_backed() {
            return Err(Error::InvalidInput(format!(
                "datastore {} is {}: object-backed datastores have no flat disk files vbm can upload",
                ds.display_name, ds.kind
            )));
        }
        let dc_ref = ds.datacenter.clone().ok_or_else(|| {
            Error::NotFound(format!("datacenter of datastore {}", ds.display_name))
        })?;
        let dc = inv
            .datacenters
            .iter()
            .find(|d| d.moref == dc_ref)
            .ok_or_else(|| Error::NotFound(format!("datacenter {dc_ref}")))?;
        let wanted_folder = target.folder.as_deref().unwrap_or("").trim_matches('/');
        let folder = inv
            .vm_folders
            .iter()
            .filter(|f| f.datacenter.as_ref() == Some(&dc_ref))
            .find(|f| f.path == wanted_folder || vbm_vsphere::decode_name(&f.path) == wanted_folder)
            .map(|f| f.moref.clone())
            .or_else(|| {
                if wanted_folder.is_empty() {
                    dc.vm_folder.clone()
                } else {
                    None
                }
            })
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "VM folder {wanted_folder:?} in datacenter {}",
                    dc.display_name
                ))
            })?;
        let pool = match target.resource_pool.as_deref() {
            Some(wanted) => inv
                .compute_resources
                .iter()
                .filter(|c| c.datacenter.as_ref() == Some(&dc_ref))
                .find(|c| c.name == wanted || c.display_name == wanted)
                .and_then(|c| c.resource_pool.clone())
                .or_else(|| {
                    inv.resource_pools
                        .iter()
                        .filter(|p| p.datacenter.as_ref() == Some(&dc_ref))
                        .find(|p| {
                            p.inventory_path == wanted
                                || p.inventory_path.ends_with(&format!("/{wanted}"))
                                || p.name == wanted
                        })
                        .map(|p| p.moref.clone())
                })
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "cluster, host or resource pool {wanted:?} in datacenter {}",
                        dc.display_name
                    ))
                })?,
            None => {
                let mut candidates: Vec<_> = inv
                    .compute_resources
                    .iter()
                    .filter(|c| c.datacenter.as_ref() == Some(&dc_ref) && c.resource_pool.is_some())
                    .collect();
                candidates.sort_by_key(|c| !c.is_cluster);
                candidates
                    .first()
                    .and_then(|c| c.resource_pool.clone())
                    .ok_or_else(|| {
                        Error::NotFound(format!(
                            "no cluster or host with a resource pool in datacenter {}",
                            dc.display_name
                        ))
                    })?
            }
        };
        let host = match target.host.as_deref() {
            Some(wanted) => Some(
                inv.hosts
                    .iter()
                    .find(|h| h.name == wanted)
                    .map(|h| h.moref.clone())
                    .ok_or_else(|| Error::NotFound(format!("host {wanted:?}")))?,
            ),
            None => None,
        };
        Ok(Self {
            datacenter: dc_ref,
            datacenter_path: dc.path.clone(),
            datastore: ds.moref.clone(),
            datastore_name: ds.name.clone(),
            free_bytes: ds.free_bytes,
            folder,
            pool,
            host,
        })
    }
}

/// Uploads the backup's files into `dir` under the new name; returns them and the VMX path.
#[allow(clippy::too_many_arguments)]
async fn upload_as_new(
    client: &Client,
    repo: &Repository,
    backup: &BackupReader,
    placement: &Placement,
    dir: &DatastorePath,
    target: &VcenterTarget,
    workers: usize,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
    uploaded: &mut Vec<DatastoreFile>,
) -> Result<(Vec<RestoredFile>, DatastorePath)> {
    let manifest = backup.manifest();
    let name = &target.name;
    let at = |file: &str| DatastoreFile::new(placement.datacenter_path.clone(), dir.join(file));
    let mut restored = Vec::new();
    // New disk names: <name>.vmdk, <name>_1.vmdk, …; the old descriptor path → the new name.
    let mut renames: Vec<(String, String)> = Vec::new();
    for (n, disk) in manifest.disks.iter().enumerate() {
        let base = if n == 0 {
            name.clone()
        } else {
            format!("{name}_{n}")
        };
        let (descriptor_name, flat_name) = (format!("{base}.vmdk"), format!("{base}-flat.vmdk"));
        let descriptor_file = descriptor_of(&manifest.files, disk)?;
        let disk_file = manifest
            .file_by_path(&disk.file)
            .ok_or_else(|| Error::NotFound(format!("{} in the backup", disk.file)))?;
        let flat = at(&flat_name);
        uploaded.push(flat.clone());
        restored.push(
            upload(
                client, repo, backup, disk_file, &flat, workers, name, progress, cancel,
            )
            .await?,
        );
        let bytes = read_whole(repo, backup, descriptor_file).await?;
        let mut descriptor = Descriptor::from_bytes(&bytes)?;
        let old_extent = descriptor.flat_extent_file()?.to_owned();
        descriptor.rename_extent(&old_extent, &flat_name)?;
        let text = descriptor.to_string().into_bytes();
        let file = at(&descriptor_name);
        uploaded.push(file.clone());
        put_bytes(client, &file, text).await?;
        restored.push(RestoredFile {
            path: file.path.to_string(),
            size_bytes: descriptor_file.size_bytes,
            sha256: String::new(),
        });
        renames.push((descriptor_file.path.clone(), descriptor_name));
    }
    let config = manifest
        .files
        .iter()
        .find(|f| f.kind == FileKind::Config)
        .ok_or_else(|| Error::NotFound("the backup has no VM configuration".into()))?;
    let vmx_dir = dirname(&config.path).to_owned();
    let mut vmx = Vmx::parse(&String::from_utf8_lossy(
        &read_whole(repo, backup, config).await?,
    ));
    let mut unmatched = Vec::new();
    vmx.rewrite_for_restore(name, |old| match match_disk(old, &vmx_dir, &renames) {
        Some(new) => new,
        None => {
            unmatched.push(old.to_owned());
            old.to_owned()
        }
    });
    if !unmatched.is_empty() {
        return Err(Error::InvalidInput(format!(
            "the backed-up VMX names disks that are not in the backup: {}",
            unmatched.join(", ")
        )));
    }
    if let Some(nvram) = manifest.files.iter().find(|f| f.kind == FileKind::Nvram) {
        let file = at(&format!("{name}.nvram"));
        uploaded.push(file.clone());
        restored.push(
            upload(
                client, repo, backup, nvram, &file, workers, name, progress, cancel,
            )
            .await?,
        );
    }
    let vmx_text = vmx.to_text().into_bytes();
    let vmx_file = at(&format!("{name}.vmx"));
    uploaded.push(vmx_file.clone());
    let size = vmx_text.len() as u64;
    put_bytes(client, &vmx_file, vmx_text).await?;
    restored.push(RestoredFile {
        path: vmx_file.path.to_string(),
        size_bytes: size,
        sha256: String::new(),
    });
    Ok((restored, vmx_file.path))
}

/// The new descriptor name for a VMX disk entry (relative to the VMX's directory, or absolute
/// `/vmfs/volumes/<ds>/<dir>/<file>`), matched against the backup's descriptor paths.
fn match_disk(vmx_value: &str, vmx_dir: &str, renames: &[(String, String)]) -> Option<String> {
    let wanted = if let Some(rest) = vmx_value.strip_prefix("/vmfs/volumes/") {
        // <ds>/<dir>/<file>: compare the last two components.
        let parts: Vec<&str> = rest.split('/').collect();
        if parts.len() < 2 {
            return None;
        }
        parts[parts.len().saturating_sub(2)..].join("/")
    } else if vmx_dir.is_empty() {
        vmx_value.to_owned()
    } else {
        format!("{vmx_dir}/{vmx_value}")
    };
    renames
        .iter()
        .find(|(old, _)| *old == wanted || old.ends_with(&format!("/{wanted}")))
        .map(|(_, new)| new.clone())
}

async fn read_whole(
    repo: &Repository,
    backup: &BackupReader,
    file: &ManifestFile,
) -> Result<Vec<u8>> {
    let reader = open_file(backup, file).await?;
    let mut out = Vec::with_capacity(usize::try_from(file.size_bytes).unwrap_or(0));
    let mut stream = Box::pin(pieces(repo, &reader, 1));
    while let Some(piece) = stream.next().await {
        match piece? {
            Piece::Data(_, d) => out.extend_from_slice(&d),
            Piece::Zeros(n) => out.resize(out.len() + usize::try_from(n).unwrap_or(0), 0),
        }
    }
    Ok(out)
}

async fn put_bytes(client: &Client, file: &DatastoreFile, bytes: Vec<u8>) -> Result<()> {
    let len = bytes.len() as u64;
    let body = futures_util::stream::iter([Ok::<Bytes, std::io::Error>(Bytes::from(bytes))]);
    client.put(file, len, body).await?;
    Ok(())
}

/// Streams one file of the backup to the datastore (zeros included: HTTP has no holes), hashing
/// it on the way; fails if the digest differs from the manifest's.
#[allow(clippy::too_many_arguments)]
async fn upload(
    client: &Client,
    repo: &Repository,
    backup: &BackupReader,
    file: &ManifestFile,
    dest: &DatastoreFile,
    workers: usize,
    vm: &str,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<RestoredFile> {
    let reader = open_file(backup, file).await?;
    let zeros = Bytes::from(vec![
        0u8;
        reader.index().map_or(0, |i| i.chunk_size() as usize)
    ]);
    let meter = Arc::new(Meter::new(
        Phase::Restoring,
        vm,
        Some(&file.path),
        file.size_bytes,
    ));
    // The file's SHA-256 is computed on its own thread, beside the upload (Bytes clones are
    // cheap); progress events come back through a channel because the body runs inside the
    // HTTP client.
    let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Bytes>(workers.max(1) * 2);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut hasher = Sha256Hasher::new();
        while let Some(bytes) = hash_rx.blocking_recv() {
            hasher.update(&bytes);
        }
        hasher.finish().to_hex()
    });
    let (event_tx, mut event_rx) = tokio::sync::mpsc::unbounded_channel::<ProgressEvent>();
    let (m, token) = (meter.clone(), cancel.clone());
    let body = pieces(repo, &reader, workers).then(move |piece| {
        let (hash_tx, event_tx, m, token, zeros) = (
            hash_tx.clone(),
            event_tx.clone(),
            m.clone(),
            token.clone(),
            zeros.clone(),
        );
        async move {
            if token.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let bytes = match piece? {
                Piece::Data(_, d) => Bytes::from(d),
                Piece::Zeros(n) => zeros.slice(..usize::try_from(n).unwrap_or(0).min(zeros.len())),
            };
            hash_tx
                .send(bytes.clone())
                .await
                .map_err(|_| Error::Internal("the digest thread stopped".into()))?;
            m.add(bytes.len() as u64, &|e: &ProgressEvent| {
                let _ = event_tx.send(e.clone());
            });
            Ok::<Bytes, Error>(bytes)
        }
    });
    progress.event(&ProgressEvent::message(
        Phase::Restoring,
        vm,
        Level::Info,
        format!("uploading {}", dest.path),
    ));
    let put = client.put(dest, file.size_bytes, body);
    tokio::pin!(put);
    let uploaded = loop {
        tokio::select! {
            r = &mut put => break r,
            Some(event) = event_rx.recv() => progress.event(&event),
        }
    };
    let sha256 = hasher.await.map_err(|e| Error::join(&e))?;
    uploaded?;
    meter.flush(progress);
    if sha256 != file.sha256.to_hex() {
        return Err(super::mismatch(repo, backup, file, &reader, sha256).await);
    }
    Ok(RestoredFile {
        path: dest.path.to_string(),
        size_bytes: file.size_bytes,
        sha256,
    })
}

/// Overwrites a VM's files with the backup's (in-place restore).
#[allow(clippy::too_many_arguments)]
async fn overwrite_files(
    client: &Client,
    repo: &Repository,
    backup: &BackupReader,
    dc_path: &str,
    vmx_path: &DatastorePath,
    disks: &[(ManifestDisk, ManifestFile, DatastorePath)],
    workers: usize,
    vm: &str,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<Vec<RestoredFile>> {
    let manifest = backup.manifest();
    let mut restored = Vec::new();
    for (disk, descriptor_file, current_descriptor) in disks {
        let disk_file = manifest
            .file_by_path(&disk.file)
            .ok_or_else(|| Error::NotFound(format!("{} in the backup", disk.file)))?;
        let bytes = read_whole(repo, backup, descriptor_file).await?;
        let descriptor = Descriptor::from_bytes(&bytes)?;
        let flat = DatastoreFile::new(
            dc_path.to_owned(),
            current_descriptor
                .parent()
                .join(descriptor.flat_extent_file()?),
        );
        restored.push(
            upload(
                client, repo, backup, disk_file, &flat, workers, vm, progress, cancel,
            )
            .await?,
        );
        let file = DatastoreFile::new(dc_path.to_owned(), current_descriptor.clone());
        restored.push(
            upload(
                client,
                repo,
                backup,
                descriptor_file,
                &file,
                workers,
                vm,
                progress,
                cancel,
            )
            .await?,
        );
    }
    let config = manifest
        .files
        .iter()
        .find(|f| f.kind == FileKind::Config)
        .ok_or_else(|| Error::NotFound("the backup has no VM configuration".into()))?;
    let vmx_bytes = read_whole(repo, backup, config).await?;
    let vmx = Vmx::parse(&String::from_utf8_lossy(&vmx_bytes));
    if let Some(nvram) = manifest.files.iter().find(|f| f.kind == FileKind::Nvram) {
        let name = vmx
            .get("nvram")
            .map_or_else(|| basename(&nvram.path).to_owned(), str::to_owned);
        let path = crate::backup::resolve_vmx_relative(vmx_path, &name);
        restored.push(
            upload(
                client,
                repo,
                backup,
                nvram,
                &DatastoreFile::new(dc_path.to_owned(), path),
                workers,
                vm,
                progress,
                cancel,
            )
            .await?,
        );
    }
    restored.push(
        upload(
            client,
            repo,
            backup,
            config,
            &DatastoreFile::new(dc_path.to_owned(), vmx_path.clone()),
            workers,
            vm,
            progress,
            cancel,
        )
        .await?,
    );
    Ok(restored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmx_disk_entries_map_to_the_renamed_descriptors() {
        let renames = vec![
            ("web01/web01.vmdk".to_owned(), "new.vmdk".to_owned()),
            ("web01/web01_1.vmdk".to_owned(), "new_1.vmdk".to_owned()),
        ];
        assert_eq!(
            match_disk("web01.vmdk", "web01", &renames).as_deref(),
            Some("new.vmdk")
        );
        assert_eq!(
            match_disk("/vmfs/volumes/ds 2/web01/web01_1.vmdk", "web01", &renames).as_deref(),
            Some("new_1.vmdk")
        );
        assert_eq!(match_disk("other.vmdk", "web01", &renames), None);
    }
}
