//! The crate's error: what the API layer maps to HTTP statuses in one place
//! ([`crate::api::error`]).

use crate::backend::BackendError;
use crate::vcenter::FieldError;

/// Errors of service operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The data layer.
    #[error(transparent)]
    Db(#[from] crate::db::Error),
    /// The engine / vCenter / repository.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// Invalid input, field by field.
    #[error("invalid input: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Validation(Vec<FieldError>),
    /// The request cannot be done in the current state.
    #[error("{0}")]
    Conflict(String),
    /// Secrets.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::Error),
}

/// Result of service operations.
pub type Result<T> = std::result::Result<T, Error>;
