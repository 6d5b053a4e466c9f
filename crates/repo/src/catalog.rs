//! The catalog: which VMs and backups the repository holds, rebuilt from the repository alone
//! (FAULT-MATRIX R4) — manifests are the source of truth, a server database is only a cache.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::backend::ListEntry;
use crate::error::{Error, Result};
use crate::id::{BackupId, VmKey};
use crate::layout;
use crate::manifest::{BackupMode, Manifest};
use crate::repository::Repository;
use crate::verify::VerifyState;

/// One backup as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackupSummary {
    /// `<vm-key>/<timestamp>`.
    pub id: BackupId,
    /// VM display name.
    pub vm_name: String,
    /// When it started.
    pub started: Timestamp,
    /// When it finished.
    pub finished: Timestamp,
    /// Full or incremental.
    pub mode: BackupMode,
    /// Sum of the file sizes.
    pub logical_bytes: u64,
    /// Bytes newly stored by this backup.
    pub written_bytes: u64,
    /// `logical_bytes / written_bytes` (how much deduplication and compression saved); absent
    /// when the backup wrote nothing new.
    pub dedup_ratio: Option<f64>,
    /// Last verification result, if verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifyState>,
}

/// A committed backup with its manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    /// The id.
    pub id: BackupId,
    /// Its manifest.
    pub manifest: Manifest,
    /// Its last verification, if any.
    pub verify: Option<VerifyState>,
}

impl CatalogEntry {
    /// The listing form.
    #[must_use]
    pub fn summary(&self) -> BackupSummary {
        let logical = self.manifest.logical_bytes();
        let written = self.manifest.bytes_written;
        BackupSummary {
            id: self.id.clone(),
            vm_name: self.manifest.vm_name.clone(),
            started: self.manifest.started,
            finished: self.manifest.finished,
            mode: self.manifest.mode,
            logical_bytes: logical,
            written_bytes: written,
            dedup_ratio: ratio(logical, written),
            verify: self.verify.clone(),
        }
    }
}

/// `a / b`, or `None` when nothing was written (a ratio would be infinite).
fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

/// Every VM and backup of a repository.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Backups per VM, oldest first.
    pub vms: BTreeMap<VmKey, Vec<CatalogEntry>>,
    /// Backups whose manifest could not be read, with the reason.
    pub unreadable: Vec<(BackupId, String)>,
    /// Backup directories without a manifest (in progress, or left by a crash).
    pub partial: Vec<BackupId>,
}

impl Catalog {
    /// Builds the catalog by reading every manifest.
    ///
    /// # Errors
    /// I/O errors listing the repository (a damaged manifest is recorded in `unreadable`).
    pub fn load(repo: &Repository) -> Result<Catalog> {
        let listing = repo.list_backups()?;
        let mut catalog = Catalog {
            partial: listing.partial,
            ..Catalog::default()
        };
        for id in listing.committed {
            match repo.read_manifest(&id) {
                Ok(manifest) => {
                    let verify = crate::verify::read_state(repo, &id);
                    catalog
                        .vms
                        .entry(id.vm().clone())
                        .or_default()
                        .push(CatalogEntry {
                            id,
                            manifest,
                            verify,
                        });
                }
                Err(Error::BackupNotFound(_)) => {} // pruned meanwhile
                Err(e) => catalog.unreadable.push((id, e.to_string())),
            }
        }
        Ok(catalog)
    }

    /// All committed backups, by VM then time.
    pub fn entries(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.vms.values().flatten()
    }

    /// The newest backup of `vm`.
    #[must_use]
    pub fn latest(&self, vm: &VmKey) -> Option<&CatalogEntry> {
        self.vms.get(vm).and_then(|v| v.last())
    }
}

/// Repository-wide figures (`vbm repo stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RepoStats {
    /// Repository id.
    pub id: String,
    /// Whether encrypted.
    pub encrypted: bool,
    /// Chunk size.
    pub chunk_size: u32,
    /// zstd level.
    pub compression_level: i32,
    /// Number of VMs with backups.
    pub vms: u64,
    /// Committed backups.
    pub backups: u64,
    /// Manifest-less backup directories.
    pub partial_backups: u64,
    /// Manifests that could not be read.
    pub unreadable_backups: u64,
    /// Chunk files.
    pub chunks: u64,
    /// Bytes in chunk files.
    pub chunk_bytes: u64,
    /// Quarantined chunks (`.bad`).
    pub bad_chunks: u64,
    /// Sum of all backups' logical sizes.
    pub logical_bytes: u64,
    /// `logical_bytes / chunk_bytes`; absent for an empty store.
    pub dedup_ratio: Option<f64>,
}

impl RepoStats {
    /// Computes the figures (reads every manifest, lists every chunk).
    ///
    /// # Errors
    /// I/O errors.
    pub fn compute(repo: &Repository) -> Result<RepoStats> {
        let catalog = Catalog::load(repo)?;
        let (mut chunks, mut chunk_bytes, mut bad) = (0u64, 0u64, 0u64);
        repo.backend().list(&layout::chunks_dir(), true, &mut |e| {
            if let ListEntry::Object { path, meta } = e {
                let name = path.file_name();
                if layout::parse_chunk_name(name).is_some() {
                    chunks += 1;
                    chunk_bytes += meta.size;
                } else if name.ends_with(crate::format::BAD_SUFFIX) {
                    bad += 1;
                }
            }
            Ok(())
        })?;
        let logical: u64 = catalog.entries().map(|e| e.manifest.logical_bytes()).sum();
        let config = repo.config();
        Ok(RepoStats {
            id: config.id.clone(),
            encrypted: repo.is_encrypted(),
            chunk_size: config.chunk_size,
            compression_level: config.compression_level,
            vms: catalog.vms.len() as u64,
            backups: catalog.entries().count() as u64,
            partial_backups: catalog.partial.len() as u64,
            unreadable_backups: catalog.unreadable.len() as u64,
            chunks,
            chunk_bytes,
            bad_chunks: bad,
            logical_bytes: logical,
            dedup_ratio: ratio(logical, chunk_bytes),
        })
    }
}
