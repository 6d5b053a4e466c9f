//! # vbm-repo — the backup repository
//!
//! Where backups live for years: the chunk codec (zstd, optional AES-256-GCM), the
//! content-addressed chunk store, fixed indexes per disk, blobs for small files, `manifest.json`,
//! the catalog rebuilt from the repository alone, verify, retention and garbage collection,
//! locking, and the storage backends behind one trait. The on-disk format is described byte by
//! byte in `docs/file-formats.md`.
//!
//! It must not know about vSphere (no dependency on `vbm-vsphere`), about the service's database,
//! or about how data reaches it: callers hand it bytes and file metadata.
//!
//! ## Concepts
//! - **Chunk**: a fixed-size piece of a file (4 MiB by default, set at `init`), aligned to file
//!   offsets, stored once under its **digest** (SHA-256 of the plain data, or HMAC-SHA256 under
//!   a key derived from the repository key when encrypted). All-zero chunks have the constant id
//!   [`ChunkDigest::ZERO`] and are never stored. See [`chunk`] for the encoding.
//! - **Fixed index** (`.fidx`): the digest of every chunk of a file, in order. Every backup's
//!   index names every chunk (forever-incremental: each backup is logically full).
//! - **Blob** (`.blob`): a small file stored whole (VMX, descriptor, NVRAM).
//! - **Manifest** (`manifest.json`): the commit point. A backup exists exactly when its manifest
//!   exists; everything it references is durable before it is written.
//! - **Backup id**: `<vm-key>/<timestamp>`; the catalog ([`Catalog`]) is rebuilt from the
//!   directory tree alone.
//!
//! ## Writing
//! [`Repository::start_backup`] returns a [`BackupWriter`] (shared backup lock, heartbeat).
//! The engine calls [`BackupWriter::insert_chunk`] from many threads, fills a
//! [`FixedIndexWriter`] per disk, stores small files with [`BackupWriter::write_blob`], and
//! [`BackupWriter::commit`]s a [`Manifest`]. Dropping an uncommitted writer removes its files.
//!
//! ## Garbage collection
//! Mark and sweep, PBS-style, with time as the fence between GC and concurrent writers:
//! 1. Take the exclusive GC lock; record `start = now`; restore any `.trash` left by a GC that
//!    died mid-delete.
//! 2. Read the backup locks: stale ones are cleared (their writers will refuse to commit: lease
//!    lost); `cutoff = min(start, oldest active writer's start) − grace`.
//! 3. **Mark**: read every manifest and index; collect every referenced digest. If any manifest
//!    or index cannot be read, or `backups/` holds an entry that is not a backup directory,
//!    abort before deleting anything (fail closed, S-D6).
//! 4. **Sweep**: list every chunk (a complete listing or an error). A chunk is deleted only if
//!    it is unmarked *and* its modification time is before `cutoff`, re-checked atomically with
//!    writers' touches ([`Backend::delete_if_older`]: rename to `.trash`, re-stat, unlink).
//!    Writers touch every chunk they reuse (dedup hits, references, chunks copied from a parent
//!    index) after taking their lock, so a chunk a running backup references is never older
//!    than the cutoff. Immutable files are reported as skipped and the sweep continues (S-D9).
//! 5. Remove temp files and manifest-less backup directories whose writer is gone, once older
//!    than `max(grace, 1 h)` ([`gc::LEFTOVER_MIN_AGE`]) so that no write in progress is touched
//!    (S-D7).
//!
//! A GC killed at any point leaves either nothing or `.trash` files that the next access or GC
//! restores; marks are never reused across runs (F4).
//!
//! ## Locking
//! Locks are files under `locks/` (see [`lock`]) with owner identity and a heartbeat; a lock of a
//! dead process or with an expired heartbeat is stale and is cleared by whoever meets it.
//!
//! |            | backup            | GC                         | prune              | verify | restore |
//! |------------|-------------------|----------------------------|--------------------|--------|---------|
//! | **backup** | yes (shared)      | yes: cutoff ≤ writer start | yes                | yes    | yes     |
//! | **GC**     | yes               | no (exclusive `gc.lock`)   | yes (see below)    | yes    | yes     |
//! | **prune**  | yes               | yes                        | no (`prune.lock`)  | yes¹   | yes²    |
//! | **verify** | yes               | yes                        | yes¹               | yes    | yes     |
//! | **restore**| yes               | yes                        | yes²               | yes    | yes     |
//!
//! GC and prune may overlap: prune only removes manifests (first) and then index files; GC's
//! mark treats a backup whose manifest vanished during the mark as gone, and chunks only that
//! backup used stay until the next GC. ¹ Verify reports a backup pruned under it as gone, not
//! damaged. ² A restore holding a read lock ([`Repository::lock_backup_for_read`]) keeps its
//! backup from being pruned.

pub mod backend;
mod blob;
pub mod catalog;
pub mod chunk;
mod chunk_store;
mod clock;
mod config;
mod digest;
mod error;
mod fixed_index;
pub mod format;
pub mod gc;
mod id;
mod key;
mod layout;
pub mod lock;
mod manifest;
mod parallel;
pub mod prune;
mod reader;
mod repository;
pub mod verify;
mod writer;

pub use backend::{Backend, LocalBackend, ObjectPath};
pub use blob::{BlobReader, BlobWriter};
pub use catalog::{BackupSummary, Catalog, RepoStats};
pub use chunk_store::ChunkRef;
pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{EncryptionConfig, RepoConfig};
pub use digest::{ChunkDigest, Sha256, Sha256Hasher, is_all_zero};
pub use error::{Error, Result};
pub use fixed_index::{FixedIndexReader, FixedIndexWriter};
pub use id::{BackupId, FileName, VmKey};
pub use key::{KEY_DIR_ENV, RepoKey, default_key_path};
pub use lock::{LockGuard, LockInfo, LockOwner};
pub use manifest::{BackupMode, FileKind, FileStorage, Manifest, ManifestDisk, ManifestFile};
pub use reader::{BackupReader, FileCursor, FileReader, Segment};
pub use repository::{BackupListing, InitOptions, OpenOptions, Repository};
pub use writer::{BackupWriter, BlobSummary, IndexSummary, WriterStats};

/// A cancellation flag shared between a caller and a long operation (verify, GC, prune).
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// A flag not set.
    #[must_use]
    pub fn new() -> Cancel {
        Cancel::default()
    }

    /// Asks the operation to stop.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether cancellation was asked.
    #[must_use]
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `Err(Error::Cancelled)` if cancellation was asked.
    ///
    /// # Errors
    /// [`Error::Cancelled`].
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}
