//! Garbage collection: mark every chunk the committed backups reference, sweep the rest — but
//! never a chunk that a running backup may have just referenced. The algorithm and its safety
//! argument are in the crate documentation; `docs/adr/0002-gc-safety-time-fence.md` explains the choice.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::Cancel;
use crate::backend::{ConditionalDelete, ListEntry, ObjectMeta, ObjectPath, list_objects};
use crate::digest::ChunkDigest;
use crate::error::{Error, Result};
use crate::format::{CHUNK_HEADER_LEN, TMP_MARKER, TRASH_SUFFIX};
use crate::id::BackupId;
use crate::layout;
use crate::lock::{LockKind, LockRecord};
use crate::repository::Repository;
use crate::verify::manifest_indexes;

/// Temporary files and manifest-less backup directories are removed only when older than this
/// (or the grace period, if longer), whatever the grace: a put in progress or a writer on a
/// host with a skewed clock must not lose its files to a GC run with a short grace.
pub const LEFTOVER_MIN_AGE: Duration = Duration::from_secs(3600);

/// Options of [`gc`].
#[derive(Debug, Clone, Default)]
pub struct GcOptions {
    /// Report what would be deleted, delete nothing, change nothing.
    pub dry_run: bool,
    /// Overrides the repository's grace period (tests use a short one).
    pub grace: Option<Duration>,
    /// Overrides [`LEFTOVER_MIN_AGE`] for temp files and partial backups (for recovery right
    /// after a crash when no writer can be running, and for tests).
    pub leftover_age: Option<Duration>,
}

/// Where GC is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcPhase {
    /// The lock is held, the cutoff computed.
    Started,
    /// The backups to mark are listed; their manifests and indexes are read next.
    Listed,
    /// Every reference is known; the sweep is next.
    Marked,
    /// Deleting.
    Sweeping,
    /// Finished.
    Done,
}

/// Progress of a GC run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcProgress {
    /// Phase.
    pub phase: GcPhase,
    /// Backups whose references are marked.
    pub backups_marked: u64,
    /// Distinct chunks marked.
    pub chunks_marked: u64,
    /// Candidates handled in the sweep.
    pub swept: u64,
    /// Candidates to sweep.
    pub to_sweep: u64,
}

/// A deletion GC could not do (immutable file, read-only storage).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedDelete {
    /// The object.
    pub path: String,
    /// Why.
    pub reason: String,
}

/// What a GC run did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// When GC started.
    pub started: Timestamp,
    /// Unreferenced chunks modified before this were deleted.
    pub cutoff: Timestamp,
    /// Backups whose references were marked.
    pub backups_marked: u64,
    /// Distinct chunks referenced.
    pub chunks_marked: u64,
    /// Chunk files seen.
    pub chunks_examined: u64,
    /// Chunks deleted (or that would be).
    pub chunks_deleted: u64,
    /// Bytes freed (or that would be).
    pub bytes_freed: u64,
    /// Unreferenced chunks kept because they are younger than the cutoff.
    pub chunks_kept_recent: u64,
    /// Quarantined (`.bad`) chunks present (never deleted by GC).
    pub bad_chunks: u64,
    /// Temporary files older than the grace period removed.
    pub temp_files_removed: u64,
    /// Objects restored from `.trash` (left by a GC that died mid-delete).
    pub trash_restored: u64,
    /// Manifest-less backup directories removed.
    pub partial_backups_removed: Vec<BackupId>,
    /// Stale locks cleared, with the reason.
    pub stale_locks_cleared: Vec<String>,
    /// Deletions that failed because the object is immutable or the storage read-only.
    pub skipped: Vec<SkippedDelete>,
}

/// Runs garbage collection.
///
/// # Errors
/// [`Error::GcAborted`] when a manifest or index cannot be read (nothing deleted),
/// [`Error::LockConflict`] when another GC runs, [`Error::Cancelled`], I/O errors (a partial
/// sweep is safe; the next run continues).
pub fn gc(
    repo: &Repository,
    options: &GcOptions,
    progress: &mut dyn FnMut(&GcProgress),
    cancel: &Cancel,
) -> Result<GcReport> {
    let lock = if options.dry_run {
        None
    } else {
        Some(repo.inner.locks.exclusive(LockKind::Gc)?)
    };
    let renew = || lock.as_ref().map_or(Ok(()), |l| l.renew_if_due());
    let started = repo.clock().now();
    let grace = SignedDuration::try_from(
        options
            .grace
            .unwrap_or(Duration::from_secs(repo.config().gc_grace_secs)),
    )
    .unwrap_or(SignedDuration::MAX);
    let old = |t: Timestamp| t.checked_sub(grace).unwrap_or(Timestamp::MIN);
    let leftover_age = match options.leftover_age {
        Some(age) => SignedDuration::try_from(age).unwrap_or(SignedDuration::MAX),
        None => grace.max(SignedDuration::try_from(LEFTOVER_MIN_AGE).unwrap_or(grace)),
    };
    let leftover_before = started.checked_sub(leftover_age).unwrap_or(Timestamp::MIN);

    // Writers: the oldest active one bounds the cutoff; stale ones lose their lease.
    let mut oldest = started;
    let mut active_backups = BTreeSet::new();
    let mut stale_locks_cleared = Vec::new();
    for info in repo.inner.locks.list()? {
        match (&info.record, &info.stale) {
            (
                Ok(LockRecord {
                    kind: LockKind::Backup,
                    backup,
                    started: s,
                    ..
                }),
                None,
            ) => {
                oldest = oldest.min(*s);
                if let Some(b) = backup {
                    active_backups.insert(b.clone());
                }
            }
            (
                Ok(LockRecord {
                    kind: LockKind::Gc, ..
                }),
                _,
            ) => {}
            (_, Some(reason)) => {
                if !options.dry_run {
                    repo.inner.locks.clear(&info)?;
                }
                stale_locks_cleared.push(format!("{}: {reason}", info.path));
            }
            _ => {}
        }
    }
    let cutoff = old(oldest);
    let mut report = GcReport {
        dry_run: options.dry_run,
        started,
        cutoff,
        backups_marked: 0,
        chunks_marked: 0,
        chunks_examined: 0,
        chunks_deleted: 0,
        bytes_freed: 0,
        chunks_kept_recent: 0,
        bad_chunks: 0,
        temp_files_removed: 0,
        trash_restored: 0,
        partial_backups_removed: Vec::new(),
        stale_locks_cleared,
        skipped: Vec::new(),
    };
    let mut p = GcProgress {
        phase: GcPhase::Started,
        backups_marked: 0,
        chunks_marked: 0,
        swept: 0,
        to_sweep: 0,
    };
    progress(&p);

    // Mark.
    let listing = repo.list_backups()?;
    if let Some(first) = listing.unrecognized.first() {
        return Err(Error::GcAborted {
            reason: format!(
                "{} unrecognized entr{} under backups/ (first: {first}); they might hold \
                 references: move them out of the repository",
                listing.unrecognized.len(),
                if listing.unrecognized.len() == 1 {
                    "y"
                } else {
                    "ies"
                }
            ),
        });
    }
    p.phase = GcPhase::Listed;
    progress(&p);
    let mut marked: HashSet<ChunkDigest> = HashSet::new();
    for id in &listing.committed {
        cancel.check()?;
        renew()?;
        let manifest = match repo.read_manifest(id) {
            Ok(m) => m,
            Err(Error::BackupNotFound(_)) => continue, // pruned meanwhile
            Err(e) => {
                return Err(Error::GcAborted {
                    reason: format!("cannot read the manifest of {id}: {e}"),
                });
            }
        };
        match manifest_indexes(repo, id, &manifest) {
            Ok(indexes) => {
                for index in indexes {
                    marked.extend(index.digests().iter().copied());
                }
            }
            Err(e) => {
                if matches!(repo.read_manifest(id), Err(Error::BackupNotFound(_))) {
                    continue; // pruned while we read it
                }
                return Err(Error::GcAborted {
                    reason: format!("cannot read an index of {id}: {e}"),
                });
            }
        }
        report.backups_marked += 1;
        p.backups_marked = report.backups_marked;
    }
    marked.remove(&ChunkDigest::ZERO);
    report.chunks_marked = marked.len() as u64;
    p.chunks_marked = report.chunks_marked;
    p.phase = GcPhase::Marked;
    progress(&p);

    // Sweep: first a complete listing, then deletions.
    let mut candidates: Vec<(ObjectPath, ObjectMeta)> = Vec::new();
    let mut temps = Vec::new();
    let mut trash = Vec::new();
    repo.backend().list(&layout::chunks_dir(), true, &mut |e| {
        let ListEntry::Object { path, meta } = e else {
            return Ok(());
        };
        let name = path.file_name();
        if let Some(d) = layout::parse_chunk_name(name) {
            report.chunks_examined += 1;
            if marked.contains(&d) {
                return Ok(());
            }
            if meta.modified >= cutoff && meta.size >= CHUNK_HEADER_LEN as u64 {
                report.chunks_kept_recent += 1;
            } else {
                candidates.push((path, meta));
            }
        } else if name.contains(TMP_MARKER) {
            if meta.modified < leftover_before {
                temps.push(path);
            }
        } else if name.ends_with(crate::format::BAD_SUFFIX) {
            report.bad_chunks += 1;
        } else if name.ends_with(TRASH_SUFFIX) {
            trash.push((path, meta));
        }
        Ok(())
    })?;
    for (path, meta) in trash {
        let Some(orig) = path
            .as_str()
            .strip_suffix(TRASH_SUFFIX)
            .and_then(|s| ObjectPath::new(s).ok())
        else {
            continue;
        };
        if !options.dry_run {
            // Any access restores it (see LocalBackend); then it is judged like any chunk.
            repo.backend().stat(&orig)?;
        }
        report.trash_restored += 1;
        let unmarked =
            layout::parse_chunk_name(orig.file_name()).is_some_and(|d| !marked.contains(&d));
        if unmarked && meta.modified < cutoff {
            candidates.push((orig, meta));
        }
    }
    p.phase = GcPhase::Sweeping;
    p.to_sweep = candidates.len() as u64;
    progress(&p);
    for (path, meta) in candidates {
        cancel.check()?;
        renew()?;
        p.swept += 1;
        if options.dry_run {
            report.chunks_deleted += 1;
            report.bytes_freed += meta.size;
            continue;
        }
        match repo.backend().delete_if_older(&path, cutoff) {
            Ok(ConditionalDelete::Deleted { size }) => {
                report.chunks_deleted += 1;
                report.bytes_freed += size;
            }
            Ok(ConditionalDelete::Kept { .. }) => report.chunks_kept_recent += 1,
            Ok(ConditionalDelete::Missing) => {}
            Err(e @ (Error::ReadOnly { .. } | Error::PermissionDenied { .. })) => {
                report.skipped.push(SkippedDelete {
                    path: path.to_string(),
                    reason: format!("cannot delete (immutable or read-only): {e}"),
                });
            }
            Err(e) => return Err(e),
        }
        if p.swept.is_multiple_of(256) {
            progress(&p);
        }
    }

    // Leftovers: temp files anywhere, and partial backups whose writer is gone.
    for dir in [layout::backups_dir(), layout::locks_dir()] {
        repo.backend().list(&dir, true, &mut |e| {
            if let ListEntry::Object { path, meta } = e
                && path.file_name().contains(TMP_MARKER)
                && meta.modified < leftover_before
            {
                temps.push(path);
            }
            Ok(())
        })?;
    }
    for path in temps {
        if !options.dry_run {
            match repo.backend().delete(&path) {
                Ok(()) => {}
                Err(e @ (Error::ReadOnly { .. } | Error::PermissionDenied { .. })) => {
                    report.skipped.push(SkippedDelete {
                        path: path.to_string(),
                        reason: e.to_string(),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        report.temp_files_removed += 1;
    }
    for id in listing.partial {
        if active_backups.contains(&id) {
            continue;
        }
        let dir = layout::backup_dir(&id);
        let files = list_objects(repo.backend().as_ref(), &dir)?;
        if files.iter().any(|(_, m)| m.modified >= leftover_before) {
            continue;
        }
        if !options.dry_run {
            match repo.backend().delete_prefix(&dir) {
                Ok(()) => {}
                Err(e @ (Error::ReadOnly { .. } | Error::PermissionDenied { .. })) => {
                    report.skipped.push(SkippedDelete {
                        path: dir.to_string(),
                        reason: e.to_string(),
                    });
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        report.partial_backups_removed.push(id);
    }
    p.phase = GcPhase::Done;
    progress(&p);
    if let Some(l) = lock {
        l.release()?;
    }
    tracing::info!(
        deleted = report.chunks_deleted,
        freed = report.bytes_freed,
        skipped = report.skipped.len(),
        "garbage collection finished"
    );
    Ok(report)
}
