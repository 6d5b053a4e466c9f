//! Translations between the engine's and repository's types and the service's: progress events,
//! manifests as catalog entries, verify reports as per-backup verdicts, and errors as
//! operator-facing messages without secrets (I11).

use vbm_engine::vbm_repo::{self, Manifest, Repository};

use crate::backend::{
    BackendError, CatalogEntry, Progress, VerifiedBackup, VerifyOutcome, VerifyState,
};
use crate::ids::BackupId;
use crate::vcenter::VcenterTarget;

/// The snake_case spelling of a serde unit enum (`Phase`, `Level`), so that new engine phases
/// pass through without a change here.
fn spelling<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// An engine progress event as the service broadcasts it.
pub(super) fn progress(event: &vbm_engine::ProgressEvent) -> Progress {
    #[allow(clippy::cast_precision_loss)] // a rate is an estimate
    let rate = (event.rate_bytes_per_sec > 0).then_some(event.rate_bytes_per_sec as f64);
    Progress {
        phase: spelling(&event.phase),
        vm: event.vm.clone(),
        disk: event.disk.clone(),
        bytes_done: event.bytes_done,
        bytes_total: (event.bytes_total > 0).then_some(event.bytes_total),
        rate,
        eta_secs: event.eta_seconds,
        level: spelling(&event.level),
        message: event.message.clone(),
    }
}

/// Removes the vCenter password from a message, should a lower layer ever echo it.
pub(super) fn redact(text: &str, target: Option<&VcenterTarget>) -> String {
    match target.and_then(|t| t.password.as_ref()) {
        Some(p) if !p.expose().is_empty() => text.replace(p.expose(), "<redacted>"),
        _ => text.to_owned(),
    }
}

/// An engine error as the service reports it.
pub(super) fn engine_error(e: vbm_engine::Error, target: Option<&VcenterTarget>) -> BackendError {
    let retryable = e.is_retryable();
    match e {
        vbm_engine::Error::Cancelled => BackendError::Cancelled(
            "the operation was cancelled; what it had created was cleaned up".into(),
        ),
        vbm_engine::Error::NotFound(m) => BackendError::NotFound(redact(&m, target)),
        vbm_engine::Error::Repo(e) => repo_error(e),
        other => BackendError::Failed {
            message: redact(&other.to_string(), target),
            retryable,
        },
    }
}

/// A repository error as the service reports it.
pub(super) fn repo_error(e: vbm_repo::Error) -> BackendError {
    match e {
        vbm_repo::Error::BackupNotFound(id) => {
            BackendError::NotFound(format!("backup {id} not found in the repository"))
        }
        vbm_repo::Error::Cancelled => BackendError::Cancelled("cancelled".into()),
        other => BackendError::Failed {
            retryable: other.is_retryable(),
            message: format!("repository: {other}"),
        },
    }
}

/// The service's id of a repository backup.
pub(super) fn backup_id(id: &vbm_repo::BackupId) -> Result<BackupId, BackendError> {
    BackupId::parse(&id.to_string()).map_err(|e| BackendError::Failed {
        message: format!("the repository holds a backup id vbm cannot use: {e}"),
        retryable: false,
    })
}

fn verify_state(state: &vbm_repo::verify::VerifyState) -> VerifyState {
    VerifyState {
        ok: state.state == "ok",
        verified_at: state.verified_at,
        problems: state.problems,
    }
}

/// A committed backup as a catalog entry; everything comes from the manifest (and the
/// repository's `verify.json`), so that a catalog rebuilt from the repository equals the one
/// recorded as backups finished (R4).
pub(super) fn entry(
    id: &vbm_repo::BackupId,
    manifest: &Manifest,
    verify: Option<&vbm_repo::verify::VerifyState>,
) -> Result<CatalogEntry, BackendError> {
    Ok(CatalogEntry {
        id: backup_id(id)?,
        job_id: (!manifest.job_id.is_empty()).then(|| manifest.job_id.clone()),
        vcenter: manifest.vcenter.clone(),
        vm_name: manifest.vm_name.clone(),
        instance_uuid: manifest
            .vm_instance_uuid
            .as_ref()
            .map(|u| u.to_ascii_lowercase()),
        mode: spelling(&manifest.mode),
        started: manifest.started,
        finished: manifest.finished,
        logical_bytes: manifest.logical_bytes(),
        bytes_read: manifest.bytes_read,
        bytes_written: manifest.bytes_written,
        verify: verify.map(verify_state),
        manifest: serde_json::to_value(manifest).map_err(|e| BackendError::Failed {
            message: format!("manifest of {id} does not serialise: {e}"),
            retryable: false,
        })?,
    })
}

/// The engine's verify result as per-backup verdicts with readable problem lines. The time of
/// each verdict is the one the repository recorded, so that a rebuilt catalog shows the same.
pub(super) fn verify_outcome(
    repo: &Repository,
    outcome: &vbm_engine::VerifyOutcome,
) -> Result<VerifyOutcome, BackendError> {
    let report = &outcome.repository;
    let mut problems = Vec::new();
    let mut backups = Vec::new();
    for verdict in &report.backups {
        let mut lines: Vec<String> = verdict
            .problems
            .iter()
            .map(|p| match &p.file {
                Some(file) => format!("{file}: {}", p.problem),
                None => p.problem.clone(),
            })
            .collect();
        let findings = outcome
            .vcenter
            .iter()
            .filter(|f| f.backup == verdict.id && f.failure);
        lines.extend(findings.map(|f| format!("vCenter: {}", f.message)));
        for line in &lines {
            problems.push(format!("backup {}: {line}", verdict.id));
        }
        let recorded = vbm_repo::verify::read_state(repo, &verdict.id);
        backups.push(VerifiedBackup {
            id: backup_id(&verdict.id)?,
            ok: lines.is_empty() && verdict.ok,
            verified_at: recorded.map_or_else(|| repo.clock().now(), |s| s.verified_at),
            problems: lines,
        });
    }
    for chunk in &report.chunks {
        let users: Vec<String> = chunk
            .referenced_by
            .iter()
            .map(|u| format!("{} ({})", u.backup, u.file))
            .collect();
        problems.push(format!(
            "chunk {} is {} ({}){}; used by {}",
            chunk.digest,
            spelling(&chunk.kind),
            chunk.detail,
            if chunk.quarantined {
                ", quarantined: the next backup stores it again"
            } else {
                ""
            },
            users.join(", ")
        ));
    }
    for finding in outcome.vcenter.iter().filter(|f| !f.failure) {
        tracing::info!(backup = %finding.backup, "{}", finding.message);
    }
    Ok(VerifyOutcome {
        ok: outcome.ok,
        problems,
        backups,
    })
}
