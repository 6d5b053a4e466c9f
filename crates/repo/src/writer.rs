//! [`BackupWriter`]: writes one backup — chunks from many threads, fixed indexes, blobs — and
//! commits it by writing `manifest.json` last.
//!
//! Invariants that make GC safe while this runs (see the crate documentation):
//! - the writer holds a backup lock from before its first chunk access until after the commit;
//!   GC never deletes chunks touched at or after the oldest active writer's start (minus grace);
//! - every chunk a committed index names was either stored by this writer or touched by it
//!   (dedup hits, [`BackupWriter::reference_chunk`], and a final check in
//!   [`BackupWriter::finish_index`] for digests copied from a parent index);
//! - the commit renews the lock first and refuses if the lease was ever lost.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use jiff::Timestamp;

use crate::backend::PutMode;
use crate::blob::BlobWriter;
use crate::chunk_store::ChunkRef;
use crate::digest::{ChunkDigest, Sha256};
use crate::error::{Error, Result};
use crate::fixed_index::{FixedIndexReader, FixedIndexWriter};
use crate::format::MANIFEST_FORMAT_VERSION;
use crate::id::{BackupId, FileName};
use crate::layout;
use crate::lock::LockGuard;
use crate::manifest::{FileStorage, Manifest};
use crate::repository::Repository;

/// What [`BackupWriter::finish_index`] stored.
#[derive(Debug, Clone)]
pub struct IndexSummary {
    /// Index name.
    pub name: FileName,
    /// SHA-256 of the `.fidx` file (goes into the manifest).
    pub sha256: Sha256,
    /// The index as written (for [`Repository::file_sha256`]).
    pub index: FixedIndexReader,
}

impl IndexSummary {
    /// The manifest storage entry for this index.
    #[must_use]
    pub fn storage(&self) -> FileStorage {
        FileStorage::Index {
            name: self.name.clone(),
            sha256: self.sha256,
        }
    }
}

/// What [`BackupWriter::write_blob`] stored.
#[derive(Debug, Clone)]
pub struct BlobSummary {
    /// Blob name.
    pub name: FileName,
    /// The blob's digest (goes into the manifest).
    pub digest: ChunkDigest,
    /// SHA-256 of the plain content (the manifest's `sha256` of the file).
    pub sha256: Sha256,
    /// Size of the plain content.
    pub size: u64,
}

impl BlobSummary {
    /// The manifest storage entry for this blob.
    #[must_use]
    pub fn storage(&self) -> FileStorage {
        FileStorage::Blob {
            name: self.name.clone(),
            digest: self.digest,
        }
    }
}

/// Counters of a writer so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Chunks newly stored.
    pub chunks_new: u64,
    /// Chunks that already existed (dedup hits and references).
    pub chunks_reused: u64,
    /// All-zero chunks (never stored).
    pub chunks_zero: u64,
    /// Bytes written to storage (chunks, indexes, blobs).
    pub bytes_written: u64,
    /// Plain bytes passed to `insert_chunk`.
    pub bytes_inserted: u64,
}

#[derive(Debug)]
enum Written {
    Index { sha256: Sha256, size: u64 },
    Blob { digest: ChunkDigest, size: u64 },
}

/// Writes one backup. `Send + Sync`: share it (`&` or `Arc`) between the threads that hash and
/// compress. Dropping it without [`BackupWriter::commit`] removes what it wrote; nothing of it
/// is ever visible as a backup.
#[derive(Debug)]
pub struct BackupWriter {
    repo: Repository,
    id: BackupId,
    started: Timestamp,
    lock: Option<LockGuard>,
    touched: Mutex<HashSet<ChunkDigest>>,
    written: Mutex<BTreeMap<String, Written>>,
    chunks_new: AtomicU64,
    chunks_reused: AtomicU64,
    chunks_zero: AtomicU64,
    bytes_written: AtomicU64,
    bytes_inserted: AtomicU64,
    committed: bool,
}

impl BackupWriter {
    pub(crate) fn new(
        repo: Repository,
        id: BackupId,
        started: Timestamp,
        lock: LockGuard,
    ) -> Result<BackupWriter> {
        tracing::debug!(backup = %id, "backup writer started");
        Ok(BackupWriter {
            repo,
            id,
            started,
            lock: Some(lock),
            touched: Mutex::new(HashSet::new()),
            written: Mutex::new(BTreeMap::new()),
            chunks_new: AtomicU64::new(0),
            chunks_reused: AtomicU64::new(0),
            chunks_zero: AtomicU64::new(0),
            bytes_written: AtomicU64::new(0),
            bytes_inserted: AtomicU64::new(0),
            committed: false,
        })
    }

    /// The backup's id.
    #[must_use]
    pub fn id(&self) -> &BackupId {
        &self.id
    }

    /// The repository's chunk size.
    #[must_use]
    pub fn chunk_size(&self) -> u32 {
        self.repo.chunk_size()
    }

    /// The repository.
    #[must_use]
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Counters so far.
    #[must_use]
    pub fn stats(&self) -> WriterStats {
        WriterStats {
            chunks_new: self.chunks_new.load(Ordering::Relaxed),
            chunks_reused: self.chunks_reused.load(Ordering::Relaxed),
            chunks_zero: self.chunks_zero.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            bytes_inserted: self.bytes_inserted.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> Result<&LockGuard> {
        self.lock
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("backup writer already finished".into()))
    }

    fn mark_touched(&self, digest: ChunkDigest) {
        self.touched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(digest);
    }

    /// Stores one chunk (at most the chunk size) unless it exists; callable from many threads
    /// at once. All-zero data is recognised without hashing and never stored. A chunk that was
    /// quarantined as bad is stored afresh.
    ///
    /// # Errors
    /// [`Error::NoSpace`], [`Error::ReadOnly`], [`Error::LeaseLost`], I/O errors.
    pub fn insert_chunk(&self, plain: &[u8]) -> Result<ChunkRef> {
        if plain.len() > self.repo.chunk_size() as usize {
            return Err(Error::InvalidArgument(format!(
                "chunk of {} bytes exceeds the chunk size {}",
                plain.len(),
                self.repo.chunk_size()
            )));
        }
        self.lock()?.renew_if_due()?;
        let now = self.repo.inner.clock.now();
        let r = self.repo.inner.store.insert(plain, now, self.started)?;
        self.bytes_inserted
            .fetch_add(plain.len() as u64, Ordering::Relaxed);
        if r.digest.is_zero() {
            self.chunks_zero.fetch_add(1, Ordering::Relaxed);
        } else {
            self.mark_touched(r.digest);
            if r.is_new {
                self.chunks_new.fetch_add(1, Ordering::Relaxed);
                self.bytes_written
                    .fetch_add(r.stored_bytes, Ordering::Relaxed);
            } else {
                self.chunks_reused.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(r)
    }

    /// Declares that this backup uses an existing chunk without re-reading its data (a block
    /// unchanged since the parent backup). Touches it so GC keeps it.
    ///
    /// # Errors
    /// [`Error::ChunkMissing`] when it does not exist: read the data from the source and use
    /// [`BackupWriter::insert_chunk`] instead.
    pub fn reference_chunk(&self, digest: &ChunkDigest) -> Result<()> {
        if digest.is_zero() {
            return Ok(());
        }
        if self
            .touched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(digest)
        {
            return Ok(());
        }
        self.lock()?.renew_if_due()?;
        let now = self.repo.inner.clock.now();
        self.repo.inner.store.reference(digest, now, self.started)?;
        self.mark_touched(*digest);
        self.chunks_reused.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// An empty index for a file of `logical_size` bytes.
    ///
    /// # Errors
    /// When the size is too large.
    pub fn new_index(&self, name: FileName, logical_size: u64) -> Result<FixedIndexWriter> {
        FixedIndexWriter::new(name, logical_size, self.repo.chunk_size())
    }

    /// An index pre-filled from a parent backup's index, referencing every chunk copied from it
    /// right away (so GC keeps them even if the parent is pruned meanwhile).
    ///
    /// # Errors
    /// [`Error::ChunkMissing`] naming the first missing chunk of the parent (the caller should
    /// fall back to a full read), or a chunk size mismatch.
    pub fn new_index_from_parent(
        &self,
        name: FileName,
        logical_size: u64,
        parent: &FixedIndexReader,
    ) -> Result<FixedIndexWriter> {
        if parent.chunk_size() != self.repo.chunk_size() {
            return Err(Error::InvalidArgument(format!(
                "parent index chunk size {} differs from the repository's {}",
                parent.chunk_size(),
                self.repo.chunk_size()
            )));
        }
        let w = FixedIndexWriter::from_parent(name, logical_size, parent)?;
        let unique: HashSet<ChunkDigest> = w.digests().into_iter().flatten().collect();
        for d in unique {
            self.reference_chunk(&d)?;
        }
        Ok(w)
    }

    /// Writes an index as `<name>.fidx`. Every digest in it must have been inserted or
    /// referenced by this writer; any other is referenced now (and must exist).
    ///
    /// # Errors
    /// An unset position, [`Error::ChunkMissing`], a duplicate name, I/O errors.
    pub fn finish_index(&self, index: FixedIndexWriter) -> Result<IndexSummary> {
        if index.chunk_size() != self.repo.chunk_size() {
            return Err(Error::InvalidArgument("index chunk size differs".into()));
        }
        let (bytes, reader) = index.encode()?;
        let mut unique: HashSet<ChunkDigest> = reader.digests().iter().copied().collect();
        unique.remove(&ChunkDigest::ZERO);
        for d in unique {
            self.reference_chunk(&d)?;
        }
        let name = index.name().clone();
        self.repo
            .inner
            .backend
            .put(&layout::index(&self.id, &name), &bytes, PutMode::CreateNew)?;
        let sha256 = Sha256::of(&bytes);
        self.bytes_written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                format!("{name}.fidx"),
                Written::Index {
                    sha256,
                    size: reader.logical_size(),
                },
            );
        Ok(IndexSummary {
            name,
            sha256,
            index: reader,
        })
    }

    /// Stores a small file as `<name>.blob`.
    ///
    /// # Errors
    /// A file larger than the maximum chunk size, a duplicate name, I/O errors.
    pub fn write_blob(&self, blob: BlobWriter) -> Result<BlobSummary> {
        let (stored, digest, sha256, size) = blob.encode(self.repo.inner.store.codec())?;
        let name = blob.name().clone();
        self.repo
            .inner
            .backend
            .put(&layout::blob(&self.id, &name), &stored, PutMode::CreateNew)?;
        self.bytes_written
            .fetch_add(stored.len() as u64, Ordering::Relaxed);
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(format!("{name}.blob"), Written::Blob { digest, size });
        Ok(BlobSummary {
            name,
            digest,
            sha256,
            size,
        })
    }

    /// Renews the backup lock now (the engine calls this during long pauses, e.g. waiting for
    /// vCenter, when no background heartbeat runs).
    ///
    /// # Errors
    /// [`Error::LeaseLost`], I/O errors.
    pub fn heartbeat(&self) -> Result<()> {
        self.lock()?.renew()
    }

    /// Commits the backup: checks the manifest against what was written, fills in the
    /// writer's fields (`format_version`, `vm_key`, `bytes_written`, `chunks_new`,
    /// `chunks_reused`), renews the lease, and writes `manifest.json` last. Everything it
    /// references is already durable.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an inconsistent manifest, [`Error::LeaseLost`], I/O
    /// errors. On error nothing is visible and the partial backup is removed.
    pub fn commit(mut self, mut manifest: Manifest) -> Result<Manifest> {
        manifest.format_version = MANIFEST_FORMAT_VERSION;
        manifest.vm_key = self.id.vm().clone();
        let stats = self.stats();
        manifest.bytes_written = stats.bytes_written;
        manifest.chunks_new = stats.chunks_new;
        manifest.chunks_reused = stats.chunks_reused;
        self.check_manifest(&manifest)?;
        let bytes = manifest.to_bytes()?;
        self.lock()?.renew()?;
        self.repo
            .inner
            .backend
            .put(&layout::manifest(&self.id), &bytes, PutMode::CreateNew)?;
        self.committed = true;
        if let Some(lock) = self.lock.take()
            && let Err(e) = lock.release()
        {
            tracing::warn!(backup = %self.id, error = %e, "committed, but could not release the lock");
        }
        tracing::info!(backup = %self.id, new = stats.chunks_new, reused = stats.chunks_reused, "backup committed");
        Ok(manifest)
    }

    fn check_manifest(&self, m: &Manifest) -> Result<()> {
        m.check().map_err(Error::InvalidArgument)?;
        let written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        for f in &m.files {
            let (key, ok) = match (&f.storage, written.get(&storage_key(&f.storage))) {
                (FileStorage::Index { sha256, .. }, Some(Written::Index { sha256: s, size })) => (
                    storage_key(&f.storage),
                    s == sha256 && *size == f.size_bytes,
                ),
                (FileStorage::Blob { digest, .. }, Some(Written::Blob { digest: d, size })) => (
                    storage_key(&f.storage),
                    d == digest && *size == f.size_bytes,
                ),
                _ => (storage_key(&f.storage), false),
            };
            if !ok {
                return Err(Error::InvalidArgument(format!(
                    "manifest file {:?}: {key} was not written by this backup with that digest and size",
                    f.path
                )));
            }
        }
        Ok(())
    }

    /// Abandons the backup, removing what it wrote.
    ///
    /// # Errors
    /// I/O errors while cleaning up (the backup is invisible regardless).
    pub fn abort(mut self) -> Result<()> {
        self.cleanup()
    }

    fn cleanup(&mut self) -> Result<()> {
        if self.committed {
            return Ok(());
        }
        self.committed = true;
        let result = self
            .repo
            .inner
            .backend
            .delete_prefix(&layout::backup_dir(&self.id));
        if let Some(lock) = self.lock.take() {
            lock.release()?;
        }
        result
    }
}

fn storage_key(s: &FileStorage) -> String {
    match s {
        FileStorage::Index { name, .. } => format!("{name}.fidx"),
        FileStorage::Blob { name, .. } => format!("{name}.blob"),
    }
}

impl Drop for BackupWriter {
    fn drop(&mut self) {
        if !self.committed
            && let Err(e) = self.cleanup()
        {
            tracing::warn!(backup = %self.id, error = %e, "could not remove an uncommitted backup; GC will");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn writer_and_readers_can_be_shared_between_threads() {
        send_sync::<BackupWriter>();
        send_sync::<Repository>();
        send_sync::<crate::FileReader>();
        send_sync::<crate::BackupReader>();
        send_sync::<FixedIndexWriter>();
    }
}
