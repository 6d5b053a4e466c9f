//! Restore of a backup: to a local directory (byte-identical files, sparse where zero), to vCenter
//! as a new VM, or in place over the original VM. Every restored file is checked against the
//! SHA-256 the manifest recorded at backup time; a mismatch fails the restore loudly and leaves
//! no file under its final name.

mod vcenter;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{Stream, StreamExt, stream};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use vbm_repo::{BackupId, BackupReader, FileReader, ManifestFile, Repository, Sha256Hasher};

use crate::error::{Error, Result};
use crate::progress::{Level, Meter, Phase, ProgressEvent, ProgressSink};

pub use vcenter::{InPlaceOptions, VcenterTarget, restore_in_place, restore_to_vcenter};

/// One restored file.
#[derive(Debug, Clone, Serialize)]
pub struct RestoredFile {
    /// Where it went (local path, or `[ds] dir/file`).
    pub path: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// SHA-256 of what was written — equal to the manifest's.
    pub sha256: String,
}

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    /// The restore point.
    pub backup_id: BackupId,
    /// Directory, or the new/replaced VM's name.
    pub target: String,
    /// The VM's moref after a restore into vCenter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm: Option<String>,
    /// Every file restored, verified.
    pub files: Vec<RestoredFile>,
    /// Bytes restored (logical).
    pub bytes_restored: u64,
    /// Non-fatal notes.
    pub warnings: Vec<String>,
}

/// Options of [`restore_to_dir`].
#[derive(Debug, Clone)]
pub struct DirOptions {
    /// Replace files that already exist (otherwise an existing file is an error).
    pub overwrite: bool,
    /// Threads decoding chunks.
    pub workers: usize,
}

impl Default for DirOptions {
    fn default() -> Self {
        Self {
            overwrite: false,
            workers: std::thread::available_parallelism().map_or(2, std::num::NonZero::get),
        }
    }
}

/// Restores every file of a backup below `target` (its manifest paths, e.g. `web01/web01.vmx`).
/// Disk files are written sparse (zero chunks become holes). Each file is written under a
/// temporary name, verified against the manifest's SHA-256, synced, and only then renamed.
///
/// # Errors
/// [`Error::NotFound`] for an unknown backup, [`Error::InvalidInput`] when a file exists and
/// `overwrite` is off, [`Error::DigestMismatch`] / chunk errors naming the digest for damaged
/// data, I/O errors, [`Error::Cancelled`].
pub async fn restore_to_dir(
    repo: &Repository,
    id: &BackupId,
    target: &Path,
    options: &DirOptions,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<RestoreReport> {
    let (backup, _lock) = open_for_restore(repo, id).await?;
    let vm = backup.manifest().vm_name.clone();
    progress.event(&ProgressEvent::message(
        Phase::Restoring,
        &vm,
        Level::Info,
        format!("restoring {id} to {}", target.display()),
    ));
    tokio::fs::create_dir_all(target)
        .await
        .map_err(|e| Error::io(format!("creating {}", target.display()), e))?;
    let mut files = Vec::new();
    for file in &backup.manifest().files {
        let dest = confined(target, &file.path)?;
        if !options.overwrite && tokio::fs::try_exists(&dest).await.unwrap_or(true) {
            return Err(Error::InvalidInput(format!(
                "{} already exists (restore with overwrite to replace it)",
                dest.display()
            )));
        }
        let restored = restore_file(
            repo,
            &backup,
            file,
            &dest,
            options.workers,
            &vm,
            progress,
            cancel,
        )
        .await?;
        files.push(restored);
    }
    let bytes_restored = files.iter().map(|f| f.size_bytes).sum();
    progress.event(&ProgressEvent::message(
        Phase::Done,
        &vm,
        Level::Info,
        format!(
            "restored {} files ({bytes_restored} bytes), all digests match",
            files.len()
        ),
    ));
    Ok(RestoreReport {
        backup_id: id.clone(),
        target: target.display().to_string(),
        vm: None,
        files,
        bytes_restored,
        warnings: Vec::new(),
    })
}

/// Opens a backup and takes its read lock (prune keeps it while we read). A read-only
/// repository cannot take the lock; restore proceeds without it.
async fn open_for_restore(
    repo: &Repository,
    id: &BackupId,
) -> Result<(BackupReader, Option<vbm_repo::LockGuard>)> {
    let repo = repo.clone();
    let id = id.clone();
    tokio::task::spawn_blocking(move || {
        let backup = match repo.open_backup(&id) {
            Ok(b) => b,
            Err(vbm_repo::Error::BackupNotFound(_)) => {
                return Err(Error::NotFound(format!(
                    "backup {id} not found in the repository"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let lock = match repo.lock_backup_for_read(&id) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(backup = %id, error = %e, "restoring without a read lock");
                None
            }
        };
        Ok((backup, lock))
    })
    .await
    .map_err(|e| Error::join(&e))?
}

/// `target/relative`, refusing anything that would leave `target` (the manifest parser already
/// rejects such paths; this is the second line of defence, FAULT-MATRIX I3).
fn confined(target: &Path, relative: &str) -> Result<PathBuf> {
    let mut out = target.to_path_buf();
    for part in relative.split('/') {
        if part.is_empty()
            || part == "."
            || part == ".."
            || part.contains('\\')
            || part.contains('\0')
        {
            return Err(Error::InvalidInput(format!(
                "unsafe path {relative:?} in the manifest"
            )));
        }
        out.push(part);
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn restore_file(
    repo: &Repository,
    backup: &BackupReader,
    file: &ManifestFile,
    dest: &Path,
    workers: usize,
    vm: &str,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<RestoredFile> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| Error::io(format!("creating {}", parent.display()), e))?;
    }
    let partial = partial_name(dest);
    let reader = open_file(backup, file).await?;
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .map_err(|e| Error::io(format!("creating {}", partial.display()), e))?;
    let meter = Meter::new(Phase::Restoring, vm, Some(&file.path), file.size_bytes);
    let written = write_sparse(
        repo,
        reader.clone(),
        out,
        file.size_bytes,
        workers,
        &meter,
        progress,
        cancel,
    )
    .await;
    let sha256 = match written {
        Ok(sha) => sha,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    if sha256 != file.sha256.to_hex() {
        let _ = std::fs::remove_file(&partial);
        return Err(mismatch(repo, backup, file, &reader, sha256).await);
    }
    tokio::fs::rename(&partial, dest).await.map_err(|e| {
        Error::io(
            format!("renaming {} to {}", partial.display(), dest.display()),
            e,
        )
    })?;
    meter.flush(progress);
    Ok(RestoredFile {
        path: dest.display().to_string(),
        size_bytes: file.size_bytes,
        sha256,
    })
}

fn partial_name(dest: &Path) -> PathBuf {
    let mut name = dest
        .file_name()
        .map(std::ffi::OsStr::to_os_string)
        .unwrap_or_default();
    name.push(".vbm-partial");
    dest.with_file_name(name)
}

pub(crate) async fn open_file(
    backup: &BackupReader,
    file: &ManifestFile,
) -> Result<Arc<FileReader>> {
    // Opening reads and checks the index (a few MiB for large disks): off the async threads.
    let backup = backup.clone();
    let file = file.clone();
    let reader = tokio::task::spawn_blocking(move || backup.open(&file))
        .await
        .map_err(|e| Error::join(&e))??;
    Ok(Arc::new(reader))
}

/// The error for a restored file whose SHA-256 differs from the manifest: the first chunk that
/// fails its full check (named, as verify would), or the digest mismatch itself.
pub(crate) async fn mismatch(
    repo: &Repository,
    backup: &BackupReader,
    file: &ManifestFile,
    reader: &Arc<FileReader>,
    actual: String,
) -> Error {
    let (repo, reader) = (repo.clone(), reader.clone());
    let damaged = tokio::task::spawn_blocking(move || {
        reader
            .segments()
            .into_iter()
            .filter(|s| !s.digest.is_zero())
            .find_map(|s| {
                let len = usize::try_from(s.len).unwrap_or(0);
                repo.read_chunk(&s.digest, len).err()
            })
    })
    .await
    .ok()
    .flatten();
    match damaged {
        Some(e) => Error::Repo(e),
        None => Error::DigestMismatch {
            backup: backup.id().clone(),
            file: file.path.clone(),
            expected: file.sha256.to_hex(),
            actual,
        },
    }
}

/// One piece of a file in order: data at an offset, or a run of zeros.
pub(crate) enum Piece {
    Data(u64, Vec<u8>),
    Zeros(u64),
}

/// The file's content in order, chunks decoded (and verified) on `workers` blocking threads.
pub(crate) fn pieces(
    repo: &Repository,
    reader: &Arc<FileReader>,
    workers: usize,
) -> impl Stream<Item = Result<Piece>> + Send + 'static {
    let repo = repo.clone();
    let segments = reader.segments();
    let blob = reader.index().is_none().then(|| reader.clone());
    stream::iter(segments)
        .map(move |segment| {
            let repo = repo.clone();
            let blob = blob.clone();
            async move {
                if let Some(reader) = blob {
                    // A blob is one segment: read it whole.
                    let len = usize::try_from(segment.len).unwrap_or(0);
                    return tokio::task::spawn_blocking(move || {
                        let mut buf = vec![0u8; len];
                        let n = reader.read_at(0, &mut buf)?;
                        buf.truncate(n);
                        Ok(Piece::Data(0, buf))
                    })
                    .await
                    .map_err(|e| Error::join(&e))?;
                }
                if segment.digest.is_zero() {
                    return Ok(Piece::Zeros(segment.len));
                }
                let len = usize::try_from(segment.len).unwrap_or(0);
                let data =
                    // The file's SHA-256 is compared with the manifest at the end, so each chunk's
                    // own digest need not be recomputed here (header, CRC and length still are).
                    tokio::task::spawn_blocking(move || repo.read_chunk_unhashed(&segment.digest, len))
                        .await
                        .map_err(|e| Error::join(&e))??;
                Ok(Piece::Data(segment.offset, data))
            }
        })
        .buffered(workers.max(1))
}

/// Writes a file's pieces into `out` (holes for zeros), hashing everything in order on a
/// blocking thread; returns the SHA-256 (hex) after syncing the file.
#[allow(clippy::too_many_arguments)]
async fn write_sparse(
    repo: &Repository,
    reader: Arc<FileReader>,
    out: std::fs::File,
    size: u64,
    workers: usize,
    meter: &Meter,
    progress: &dyn ProgressSink,
    cancel: &CancellationToken,
) -> Result<String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Piece>(workers.max(1) * 2);
    let writer = tokio::task::spawn_blocking(move || -> Result<String> {
        use std::os::unix::fs::FileExt;
        let mut hasher = Sha256Hasher::new();
        while let Some(piece) = rx.blocking_recv() {
            match piece {
                Piece::Data(offset, data) => {
                    out.write_all_at(&data, offset)
                        .map_err(|e| Error::io("writing restored data", e))?;
                    hasher.update(&data);
                }
                Piece::Zeros(len) => hasher.update_zeros(len),
            }
        }
        // Trailing zero chunks are holes: give the file its full size.
        out.set_len(size)
            .map_err(|e| Error::io("sizing the restored file", e))?;
        out.sync_all()
            .map_err(|e| Error::io("syncing the restored file", e))?;
        Ok(hasher.finish().to_hex())
    });
    let mut stream = Box::pin(pieces(repo, &reader, workers));
    let fed: Result<()> = async {
        while let Some(piece) = stream.next().await {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            let piece = piece?;
            let len = match &piece {
                Piece::Data(_, d) => d.len() as u64,
                Piece::Zeros(n) => *n,
            };
            if tx.send(piece).await.is_err() {
                break; // the writer failed: its error is reported below
            }
            meter.add(len, progress);
        }
        Ok(())
    }
    .await;
    drop(tx);
    let written = writer.await.map_err(|e| Error::join(&e))?;
    fed?;
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confined_paths_stay_below_the_target() {
        let t = Path::new("/restore");
        assert_eq!(
            confined(t, "web01/web01.vmx").unwrap(),
            Path::new("/restore/web01/web01.vmx")
        );
        for bad in ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\b", "./a"] {
            assert!(confined(t, bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn partial_files_sit_next_to_their_destination() {
        assert_eq!(
            partial_name(Path::new("/r/web01-flat.vmdk")),
            Path::new("/r/web01-flat.vmdk.vbm-partial")
        );
    }
}
