//! Verify / test restore (specification 2.3): the repository's checks — manifest, every file
//! present, every chunk decodes to its digest, every file's whole SHA-256 matches — plus, when a
//! vCenter is at hand, that each backed-up disk still has the capacity vCenter reports now.

use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vbm_repo::verify::{VerifyMode, VerifyOptions, VerifyReport};
use vbm_repo::{BackupId, Repository};
use vbm_vsphere::Client;

use crate::error::{Error, Result};
use crate::progress::{Level, Phase, ProgressEvent, ProgressSink};

/// A finding of the vCenter comparison.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VcenterFinding {
    /// The backup.
    pub backup: BackupId,
    /// The VM's name at backup time.
    pub vm: String,
    /// What differs, or what could not be compared.
    pub message: String,
    /// Whether this makes the verification fail (a size mismatch does; a VM that no longer
    /// exists does not).
    pub failure: bool,
}

/// Result of [`verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyOutcome {
    /// `true` when the repository checks and the vCenter comparison found nothing wrong.
    pub ok: bool,
    /// The repository's report (damaged backups, files and chunks).
    pub repository: VerifyReport,
    /// The vCenter comparison (empty without a vCenter).
    pub vcenter: Vec<VcenterFinding>,
}

/// Verifies `backups` (all committed backups when `None`): `quick` checks presence only, full
/// decodes everything. Damaged chunks are quarantined so the next backup stores them afresh.
///
/// # Errors
/// Repository listing errors, [`Error::Cancelled`]; damage is reported in the outcome, not as
/// an error. vCenter lookups that fail are findings, not errors.
pub async fn verify(
    repo: &Repository,
    backups: Option<Vec<BackupId>>,
    quick: bool,
    client: Option<&Client>,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<VerifyOutcome> {
    let options = VerifyOptions {
        mode: if quick {
            VerifyMode::Quick
        } else {
            VerifyMode::Full
        },
        backups,
        ..VerifyOptions::default()
    };
    verify_with(repo, options, client, progress, cancel).await
}

/// [`verify`] with the repository's full set of options (quarantine, threads, …).
///
/// # Errors
/// As [`verify`].
pub async fn verify_with(
    repo: &Repository,
    options: VerifyOptions,
    client: Option<&Client>,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<VerifyOutcome> {
    let repo_for_task = repo.clone();
    let flag = vbm_repo::Cancel::new();
    let flag_for_task = flag.clone();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressEvent>();
    let task = tokio::task::spawn_blocking(move || {
        let mut last = None;
        vbm_repo::verify::verify(
            &repo_for_task,
            &options,
            &mut |p| {
                if last != p.current {
                    last.clone_from(&p.current);
                    if let Some(id) = &p.current {
                        let _ = tx.send(ProgressEvent::message(
                            Phase::Verifying,
                            id.vm().as_str(),
                            Level::Info,
                            format!(
                                "verifying {id} ({}/{})",
                                p.backups_done + 1,
                                p.backups_total
                            ),
                        ));
                    }
                }
            },
            &flag_for_task,
        )
    });
    let mut task = std::pin::pin!(task);
    let report = loop {
        tokio::select! {
            Some(event) = rx.recv() => progress.event(&event),
            () = cancel.cancelled() => flag.cancel(),
            joined = &mut task => break joined.map_err(|e| Error::join(&e))?,
        }
    };
    let report = match report {
        Ok(r) => r,
        Err(vbm_repo::Error::Cancelled) => return Err(Error::Cancelled),
        Err(e) => return Err(e.into()),
    };
    let mut findings = Vec::new();
    if let Some(client) = client {
        for verdict in &report.backups {
            let manifest = {
                let (repo, id) = (repo.clone(), verdict.id.clone());
                match tokio::task::spawn_blocking(move || repo.read_manifest(&id))
                    .await
                    .map_err(|e| Error::join(&e))?
                {
                    Ok(m) => m,
                    Err(_) => continue, // already reported by the repository checks
                }
            };
            findings.extend(compare_with_vcenter(client, &verdict.id, &manifest).await);
        }
    }
    let ok = report.ok && !findings.iter().any(|f| f.failure);
    Ok(VerifyOutcome {
        ok,
        repository: report,
        vcenter: findings,
    })
}

async fn compare_with_vcenter(
    client: &Client,
    id: &BackupId,
    manifest: &vbm_repo::Manifest,
) -> Vec<VcenterFinding> {
    let finding = |message: String, failure: bool| VcenterFinding {
        backup: id.clone(),
        vm: manifest.vm_name.clone(),
        message,
        failure,
    };
    let Some(uuid) = &manifest.vm_instance_uuid else {
        return vec![finding(
            "the backup records no instance UUID: not compared with vCenter".into(),
            false,
        )];
    };
    let vm = match client.find_vm_by_instance_uuid(uuid).await {
        Ok(vm) => vm,
        Err(vbm_vsphere::Error::NotFound(_)) => {
            return vec![finding(
                format!(
                    "VM {} no longer exists in vCenter: disk sizes not compared",
                    manifest.vm_name
                ),
                false,
            )];
        }
        Err(e) => {
            return vec![finding(
                format!("could not read VM {} from vCenter: {e}", manifest.vm_name),
                false,
            )];
        }
    };
    let mut out = Vec::new();
    for disk in &manifest.disks {
        match vm.disk(disk.device_key) {
            Some(now) if now.capacity_bytes != disk.capacity_bytes => out.push(finding(
                format!(
                    "{} ({}): {} bytes in the backup, vCenter now reports {} bytes",
                    disk.label, disk.file, disk.capacity_bytes, now.capacity_bytes
                ),
                true,
            )),
            Some(_) => {}
            None => out.push(finding(
                format!(
                    "{} ({}) is no longer attached to the VM",
                    disk.label, disk.file
                ),
                false,
            )),
        }
    }
    out
}
