//! The engine's error type: what went wrong with one VM's backup, restore or verify, with the
//! source errors of the vSphere client and the repository kept intact for callers that match.

use vbm_repo::BackupId;

/// Result alias.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// vCenter refused or failed (connection, login, fault, transfer).
    #[error(transparent)]
    VSphere(#[from] vbm_vsphere::Error),
    /// The repository refused or failed (space, corruption, lock lost).
    #[error(transparent)]
    Repo(#[from] vbm_repo::Error),
    /// The VM is in a state vbm will not back up (user snapshots, orphaned deltas, unsupported
    /// disks): the message says why and what to do.
    #[error("{0}")]
    Refused(String),
    /// The requested VM, backup or target does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The caller asked for something invalid (bad name, missing confirmation, …).
    #[error("{0}")]
    InvalidInput(String),
    /// Restored data does not match the digest recorded at backup time.
    #[error(
        "{file} of backup {backup} does not match its manifest: expected sha256 {expected}, got {actual}"
    )]
    DigestMismatch {
        /// The backup.
        backup: BackupId,
        /// The file.
        file: String,
        /// The manifest's digest.
        expected: String,
        /// What the restored bytes hash to.
        actual: String,
    },
    /// A local file could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done (with the path).
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The operation was cancelled; everything it created was cleaned up.
    #[error("cancelled")]
    Cancelled,
    /// A worker task died (a bug); the operation was abandoned cleanly.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Whether running the same operation again later may succeed (network, vCenter busy,
    /// session trouble); `false` for refusals, corruption, bad input and cancellation.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::VSphere(e) => e.is_retryable(),
            Self::Repo(e) => e.is_retryable(),
            Self::Io { .. } | Self::Internal(_) => true,
            Self::Refused(_)
            | Self::NotFound(_)
            | Self::InvalidInput(_)
            | Self::DigestMismatch { .. }
            | Self::Cancelled => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn join(e: &tokio::task::JoinError) -> Self {
        if e.is_cancelled() {
            Self::Cancelled
        } else {
            Self::Internal(format!("worker task failed: {e}"))
        }
    }
}
