//! Identifiers: newtypes so that a job id is never passed where a run id is expected.
//!
//! Ids are random (UUID v4 layout), never derived from the clock, so a wall clock that jumps
//! backwards cannot produce a duplicate (FAULT-MATRIX T2).

use std::fmt;

use rand::RngCore;
use serde::{Deserialize, Serialize};

/// Why a text is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be a UUID like 123e4567-e89b-42d3-a456-426614174000, got {got:?}")]
pub struct IdError {
    what: &'static str,
    got: String,
}

/// Whether `text` has the 8-4-4-4-12 hexadecimal UUID layout.
#[must_use]
pub fn is_uuid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

fn random_uuid() -> String {
    let mut bytes = [0_u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(try_from = "String", into = "String")]
        #[schema(value_type = String, example = "123e4567-e89b-42d3-a456-426614174000")]
        pub struct $name(String);

        impl $name {
            /// A new random id.
            #[must_use]
            pub fn generate() -> Self {
                Self(random_uuid())
            }

            /// Parses an id (case-insensitive, stored lowercase).
            ///
            /// # Errors
            /// When `text` is not a UUID.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                if is_uuid(text) {
                    Ok(Self(text.to_ascii_lowercase()))
                } else {
                    Err(IdError { what: $what, got: text.chars().take(64).collect() })
                }
            }

            /// The id as text.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                Self::parse(&text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

uuid_id!(
    /// A saved vCenter connection.
    VcenterId,
    "a vCenter id"
);
uuid_id!(
    /// A backup job.
    JobId,
    "a job id"
);
uuid_id!(
    /// One run of a job (or a restore / verify operation).
    RunId,
    "a run id"
);
uuid_id!(
    /// An API key (not the secret itself).
    ApiKeyId,
    "an API key id"
);
uuid_id!(
    /// A VM's `config.instanceUuid`: stable across renames, unlike its name.
    InstanceUuid,
    "a VM instance UUID"
);

/// A restore point in the repository (its id is the repository's, e.g. `vm-key/timestamp`).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(value_type = String)]
pub struct BackupId(String);

impl BackupId {
    /// Parses a backup id: 1–200 characters of `[A-Za-z0-9._:-]` and `/` separators, no `..`.
    ///
    /// # Errors
    /// When the text holds anything else (it never reaches a file path unchecked).
    pub fn parse(text: &str) -> Result<Self, IdError> {
        let ok = !text.is_empty()
            && text.len() <= 200
            && !text
                .split('/')
                .any(|part| part.is_empty() || part == "." || part == "..")
            && text.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-' | b'/')
            });
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(IdError {
                what: "a backup id",
                got: text.chars().take(64).collect(),
            })
        }
    }

    /// The id as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BackupId {
    type Error = IdError;
    fn try_from(text: String) -> Result<Self, IdError> {
        Self::parse(&text)
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_uuids_and_unique() {
        let a = RunId::generate();
        let b = RunId::generate();
        assert!(is_uuid(a.as_str()));
        assert_ne!(a, b);
    }

    #[test]
    fn bad_uuid_is_a_precise_error() {
        let err = JobId::parse("1; DROP TABLE jobs").unwrap_err().to_string();
        assert!(err.contains("a job id must be a UUID"), "{err}");
        assert!(JobId::parse("123E4567-E89B-42D3-A456-426614174000").is_ok());
    }

    #[test]
    fn backup_ids_refuse_traversal() {
        assert!(BackupId::parse("vm-1/2026-01-01T00:00:00Z").is_ok());
        for bad in ["../etc", "a/../b", "/abs", "a//b", "x y", "", "a\0b"] {
            assert!(BackupId::parse(bad).is_err(), "{bad:?}");
        }
    }
}
