//! The crate's error type. Every variant carries what a caller needs to act or to explain the
//! failure, and [`Error::is_retryable`] says whether trying again can help.

use std::time::Duration;

use crate::fault::{Fault, FaultKind};
use crate::types::MoRef;

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to vCenter/ESXi.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No TCP/TLS connection could be made (refused, unreachable, DNS, connect timeout).
    #[error("cannot connect to vCenter {host}: {reason}")]
    Connect {
        /// Host (and port) we tried.
        host: String,
        /// Why, in words: "connection refused", "connection timed out", …
        reason: String,
    },
    /// The server's certificate does not have the pinned thumbprint. Nothing was sent.
    #[error("certificate thumbprint mismatch (expected {expected}, got {got})")]
    ThumbprintMismatch {
        /// The pinned thumbprint.
        expected: String,
        /// The presented certificate's thumbprint in the same algorithm.
        got: String,
    },
    /// The server's certificate is not trusted (unknown issuer, wrong name, expired…).
    #[error("TLS certificate of {host} not trusted: {reason}")]
    Tls {
        /// The host.
        host: String,
        /// The verifier's reason.
        reason: String,
    },
    /// The TLS configuration itself is invalid (unreadable CA file, bad thumbprint string).
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// Login refused: wrong user name or password.
    #[error(
        "vCenter authentication failed: the user name or password was rejected (user {user:?}): {message}"
    )]
    InvalidLogin {
        /// The user name that was rejected.
        user: String,
        /// The server's message.
        message: String,
    },
    /// A vSphere fault, from a SOAP call or a failed task.
    #[error("{method} failed: {fault}")]
    Fault {
        /// The SOAP method (or task) that failed.
        method: String,
        /// The typed fault.
        fault: Box<Fault>,
    },
    /// An HTTP status without a usable SOAP fault, or a datastore transfer refused by status.
    #[error("HTTP {status} from {context}: {message}")]
    Http {
        /// Method or URL the status came from.
        context: String,
        /// The HTTP status.
        status: u16,
        /// The server's message (faultstring, or the start of the body).
        message: String,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// A request or a read did not finish in time.
    #[error("{context} timed out after {after:?}")]
    Timeout {
        /// What timed out.
        context: String,
        /// The timeout that fired.
        after: Duration,
    },
    /// The connection broke during a request or response.
    #[error("network error during {context}: {message}")]
    Network {
        /// What we were doing.
        context: String,
        /// The underlying error, in words.
        message: String,
    },
    /// The response was not the XML we expected (malformed, truncated, wrong shape).
    #[error("unexpected response from vCenter: {0}")]
    Xml(String),
    /// A download ended early and resuming did not complete it.
    #[error("truncated download (got {got} of {expected} bytes) of {file}")]
    Truncated {
        /// The file (URL path).
        file: String,
        /// Bytes received.
        got: u64,
        /// Bytes expected.
        expected: u64,
    },
    /// A ranged read was answered with the wrong range or status.
    #[error("bad ranged response for {file}: {message}")]
    BadRange {
        /// The file (URL path).
        file: String,
        /// What was wrong.
        message: String,
    },
    /// A task is still running (or vanished) at the deadline: its outcome is unknown, the
    /// operation may still complete in vCenter. Re-check the entity before acting again.
    #[error("outcome of task {task} unknown: {reason}")]
    TaskOutcomeUnknown {
        /// The task.
        task: MoRef,
        /// Why we stopped waiting.
        reason: String,
    },
    /// A paged property listing failed part-way: the result would be partial, so there is none.
    #[error("inventory listing incomplete after {pages} page(s): {source}")]
    IncompleteListing {
        /// Pages read before the failure.
        pages: usize,
        /// The failure.
        #[source]
        source: Box<Error>,
    },
    /// Nothing matched a lookup.
    #[error("{0} not found")]
    NotFound(String),
    /// A name matched several objects.
    #[error("{what} is ambiguous: {} candidates: {}", candidates.len(), candidates.join(", "))]
    Ambiguous {
        /// What was looked up.
        what: String,
        /// Descriptions of each match (name, moref, folder).
        candidates: Vec<String>,
    },
    /// The caller passed something unusable.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The object cannot be handled this way (e.g. an object-backed datastore has no flat files).
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A VMDK descriptor could not be parsed.
    #[error("invalid VMDK descriptor: {0}")]
    Descriptor(String),
    /// Local I/O (reading a CA bundle).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying the same thing again can help: connection failures, timeouts, broken
    /// connections, truncated transfers and 5xx other than 501. Faults, 4xx, bad responses and
    /// certificate problems are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect { .. }
            | Self::Timeout { .. }
            | Self::Network { .. }
            | Self::Truncated { .. } => true,
            Self::Http { status, .. } => *status >= 500 && *status != 501,
            Self::IncompleteListing { source, .. } => source.is_retryable(),
            _ => false,
        }
    }

    /// The vSphere fault, if this is one.
    pub fn fault(&self) -> Option<&Fault> {
        match self {
            Self::Fault { fault, .. } => Some(fault),
            Self::IncompleteListing { source, .. } => source.fault(),
            _ => None,
        }
    }

    /// Whether this is the session-gone fault that a re-login fixes.
    pub fn is_not_authenticated(&self) -> bool {
        self.fault()
            .is_some_and(|f| f.kind == FaultKind::NotAuthenticated)
    }

    /// Whether the fault says the object does not exist (stale moref).
    pub fn is_managed_object_not_found(&self) -> bool {
        self.fault()
            .is_some_and(|f| matches!(f.kind, FaultKind::ManagedObjectNotFound { .. }))
    }

    /// Whether the server said a file fault (e.g. QueryChangedDiskAreas with a reset changeId).
    pub fn is_file_fault(&self) -> bool {
        self.fault().is_some_and(Fault::is_file_fault)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_happened() {
        let e = Error::ThumbprintMismatch {
            expected: "AA:BB".into(),
            got: "CC:DD".into(),
        };
        assert_eq!(
            e.to_string(),
            "certificate thumbprint mismatch (expected AA:BB, got CC:DD)"
        );
        let e = Error::Connect {
            host: "vc:443".into(),
            reason: "connection refused".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to vCenter vc:443: connection refused"
        );
        let e = Error::Truncated {
            file: "/folder/x".into(),
            got: 5,
            expected: 9,
        };
        assert!(
            e.to_string()
                .starts_with("truncated download (got 5 of 9 bytes)")
        );
        let e = Error::InvalidLogin {
            user: "u".into(),
            message: "Login failure".into(),
        };
        assert!(e.to_string().contains("user name or password was rejected"));
        let e = Error::Ambiguous {
            what: "VM \"a\"".into(),
            candidates: vec!["x".into(), "y".into()],
        };
        assert_eq!(e.to_string(), "VM \"a\" is ambiguous: 2 candidates: x, y");
    }

    #[test]
    fn retryability() {
        let http = |status| Error::Http {
            context: "x".into(),
            status,
            message: String::new(),
            retry_after: None,
        };
        assert!(http(503).is_retryable());
        assert!(http(500).is_retryable());
        assert!(!http(501).is_retryable());
        assert!(!http(404).is_retryable());
        let fault = Error::Fault {
            method: "M".into(),
            fault: Box::new(Fault::new("NotAuthenticated", "")),
        };
        assert!(!fault.is_retryable());
        assert!(fault.is_not_authenticated());
        let inc = Error::IncompleteListing {
            pages: 1,
            source: Box::new(fault),
        };
        assert!(inc.is_not_authenticated());
        assert!(
            !Error::ThumbprintMismatch {
                expected: String::new(),
                got: String::new()
            }
            .is_retryable()
        );
    }
}
