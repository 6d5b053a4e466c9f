//! The crate's error type: one enum whose variants carry what a caller needs to act (the path,
//! the chunk digest, the backup id) and say whether retrying can help.

use std::io;
use std::path::PathBuf;

use crate::digest::ChunkDigest;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the repository.
///
/// Messages name the object concerned (path, digest, backup id) so that a log line alone tells an
/// operator what is damaged. [`Error::is_retryable`] says whether the same call may succeed later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error not covered by a more specific variant.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("read", "write", "rename", …).
        op: &'static str,
        /// The object or file concerned, relative to the repository root.
        path: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The object does not exist.
    #[error("{path} does not exist")]
    NotFound {
        /// The object concerned.
        path: String,
    },
    /// A create-new write found the object already there.
    #[error("{path} already exists")]
    AlreadyExists {
        /// The object concerned.
        path: String,
    },
    /// The storage is full (bytes or inodes). `detail` says which, with the free amounts.
    #[error("no space left on device while writing {path} ({detail})")]
    NoSpace {
        /// The object being written.
        path: String,
        /// "free: N bytes, M inodes" or "no free inodes", as far as the file system tells.
        detail: String,
    },
    /// The storage refuses writes: read-only mount (EROFS) or an immutable file (EPERM).
    #[error("cannot modify {path}: read-only file system or immutable file ({source})")]
    ReadOnly {
        /// The object concerned.
        path: String,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// Access denied by permissions.
    #[error("permission denied on {path}")]
    PermissionDenied {
        /// The object concerned.
        path: String,
    },
    /// A chunk referenced by an index or asked for does not exist in the store.
    #[error("chunk {digest} is missing")]
    ChunkMissing {
        /// The missing chunk.
        digest: ChunkDigest,
    },
    /// A chunk exists but does not decode to the data its digest names.
    #[error("chunk {digest} is corrupt: {reason}")]
    ChunkCorrupt {
        /// The damaged chunk.
        digest: ChunkDigest,
        /// What check failed (CRC, decryption, decompression, digest, length).
        reason: String,
    },
    /// A fixed index file is damaged or does not match what the manifest recorded.
    #[error("index {path} is corrupt: {reason}")]
    IndexCorrupt {
        /// The index file.
        path: String,
        /// What check failed.
        reason: String,
    },
    /// A blob is damaged or does not match what the manifest recorded.
    #[error("blob {path} is corrupt: {reason}")]
    BlobCorrupt {
        /// The blob file.
        path: String,
        /// What check failed.
        reason: String,
    },
    /// A manifest cannot be parsed or is inconsistent.
    #[error("manifest of backup {backup} is corrupt: {reason}")]
    ManifestCorrupt {
        /// The backup whose manifest is damaged.
        backup: String,
        /// What check failed.
        reason: String,
    },
    /// `repo.json` is missing or damaged.
    #[error("repository configuration {path} is invalid: {reason}")]
    ConfigInvalid {
        /// Where the configuration was looked for.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A file declares a format version this build does not know.
    #[error("unsupported {what} format version {found} (this vbm supports {supported})")]
    UnsupportedFormat {
        /// Which file kind ("repository", "manifest", "lock").
        what: &'static str,
        /// The version found.
        found: u32,
        /// The versions supported, for the message.
        supported: String,
    },
    /// The key given does not belong to this repository.
    #[error(
        "wrong key for repository {repo_id}: fingerprint {found} does not match the repository's {expected}"
    )]
    WrongKey {
        /// The repository.
        repo_id: String,
        /// Fingerprint recorded in `repo.json`.
        expected: String,
        /// Fingerprint of the key given.
        found: String,
    },
    /// The repository is encrypted and no key file was found.
    #[error(
        "repository {repo_id} is encrypted; its key file {expected} was not found (pass --key-file or set VBM_REPO_KEY_FILE)",
        expected = expected.display()
    )]
    KeyMissing {
        /// The repository.
        repo_id: String,
        /// Where the key was expected.
        expected: PathBuf,
    },
    /// A key file exists but cannot be used.
    #[error("key file {path}: {reason}", path = path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// An identifier (VM key, backup id, file name) is malformed or unsafe.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidName {
        /// Which kind of name.
        what: &'static str,
        /// The rejected value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// A caller passed an argument that cannot work (e.g. a chunk larger than the chunk size).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The backup does not exist (no manifest).
    #[error("backup {0} not found")]
    BackupNotFound(String),
    /// Another process holds a lock that conflicts.
    #[error("repository lock {lock} is held by {holder}")]
    LockConflict {
        /// The lock file.
        lock: String,
        /// Who holds it (host, pid, since when).
        holder: String,
    },
    /// A backup writer's lock was declared stale (the process was paused or cut off for too long).
    /// Its chunks may have been collected, so it must not commit.
    #[error("lease lost for backup {backup}: {reason}; the backup was not committed")]
    LeaseLost {
        /// The backup being written.
        backup: String,
        /// Why the lease is considered lost.
        reason: String,
    },
    /// Garbage collection stopped before deleting anything because the set of live chunks could
    /// not be computed with certainty.
    #[error("garbage collection aborted, nothing was deleted: {reason}")]
    GcAborted {
        /// Why.
        reason: String,
    },
    /// Prune refused to run its plan (e.g. it would remove too large a share of the backups).
    #[error("prune refused: {reason}")]
    PruneRefused {
        /// Why, and how to override.
        reason: String,
    },
    /// The operation was cancelled by its caller.
    #[error("operation cancelled")]
    Cancelled,
}

impl Error {
    /// Whether the same call may succeed if retried later without changing anything.
    ///
    /// Temporary conditions (interrupted or timed-out I/O, a lock held by another process, a full
    /// disk that may be freed) are retryable; damaged data, bad names, wrong keys and format
    /// errors are not.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::Interrupted
                    | io::ErrorKind::TimedOut
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
            ),
            Error::NoSpace { .. } | Error::LockConflict { .. } => true,
            _ => false,
        }
    }

    /// Whether this error means "the object is not there" (as opposed to damaged or unreadable).
    #[must_use]
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::NotFound { .. } | Error::ChunkMissing { .. } | Error::BackupNotFound(_)
        )
    }

    /// Classifies an I/O error on `path` into the most specific variant.
    pub(crate) fn io(op: &'static str, path: impl Into<String>, source: io::Error) -> Error {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::NotFound => Error::NotFound { path },
            io::ErrorKind::AlreadyExists => Error::AlreadyExists { path },
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => Error::NoSpace {
                path,
                detail: source.to_string(),
            },
            io::ErrorKind::ReadOnlyFilesystem => Error::ReadOnly { path, source },
            io::ErrorKind::PermissionDenied if source.raw_os_error() == Some(1) => {
                // EPERM (not EACCES): what an immutable file (chattr +i) answers.
                Error::ReadOnly { path, source }
            }
            io::ErrorKind::PermissionDenied => Error::PermissionDenied { path },
            _ => Error::Io { op, path, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_are_classified() {
        let e = Error::io("write", "x", io::Error::from(io::ErrorKind::StorageFull));
        assert!(matches!(e, Error::NoSpace { .. }));
        assert!(e.is_retryable());
        let e = Error::io("write", "x", io::Error::from_raw_os_error(30));
        assert!(matches!(e, Error::ReadOnly { .. }), "{e:?}");
        let e = Error::io("unlink", "x", io::Error::from_raw_os_error(1));
        assert!(matches!(e, Error::ReadOnly { .. }), "{e:?}");
        let e = Error::io("read", "x", io::Error::from(io::ErrorKind::NotFound));
        assert!(e.is_not_found());
        assert!(!e.is_retryable());
    }

    #[test]
    fn messages_name_the_object() {
        let d = ChunkDigest::from_bytes([0xab; 32]);
        let e = Error::ChunkCorrupt {
            digest: d,
            reason: "CRC mismatch".into(),
        };
        assert!(e.to_string().contains(&"ab".repeat(32)));
    }
}
