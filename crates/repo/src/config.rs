//! `repo.json`: what a reader must know before touching anything else (format version, chunk
//! size, compression level, whether and how chunks are encrypted) plus GC and lock timings.

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::{
    DEFAULT_GC_GRACE_SECS, DEFAULT_LOCK_STALE_SECS, REPO_FORMAT_NAME, REPO_FORMAT_VERSION,
};

/// Encryption parameters recorded in `repo.json`. The key itself is never stored here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfig {
    /// Always `"aes-256-gcm"` in this version.
    pub algorithm: String,
    /// How chunk ids are computed: always `"hmac-sha256"` when encrypted.
    pub chunk_id: String,
    /// HMAC of a constant and the repository id under the key: identifies the right key.
    pub key_fingerprint: String,
}

/// The content of `repo.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always `"vbm-repository"`.
    pub format: String,
    /// Format version ([`REPO_FORMAT_VERSION`]).
    pub version: u32,
    /// Random id (32 hex digits), also the default key file name.
    pub id: String,
    /// When the repository was created.
    pub created: Timestamp,
    /// Size of every chunk but the last of a file, in bytes.
    pub chunk_size: u32,
    /// zstd level for new chunks (0 stores raw).
    pub compression_level: i32,
    /// `"sha256"` or `"hmac-sha256"`.
    pub chunk_digest: String,
    /// Present when chunks and blobs are encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionConfig>,
    /// GC keeps unreferenced chunks touched within this many seconds before its cutoff.
    #[serde(default = "default_grace")]
    pub gc_grace_secs: u64,
    /// A lock whose heartbeat is older than this is stale.
    #[serde(default = "default_stale")]
    pub lock_stale_secs: u64,
}

fn default_grace() -> u64 {
    DEFAULT_GC_GRACE_SECS
}

fn default_stale() -> u64 {
    DEFAULT_LOCK_STALE_SECS
}

impl RepoConfig {
    /// Parses `repo.json`, checking the format name and version first so that a newer
    /// repository gives a clear "unsupported version" rather than a field error.
    ///
    /// # Errors
    /// [`Error::UnsupportedFormat`], [`Error::ConfigInvalid`].
    pub fn parse(bytes: &[u8]) -> Result<RepoConfig> {
        let invalid = |reason: String| Error::ConfigInvalid {
            path: crate::format::REPO_CONFIG_FILE.to_owned(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if value.get("format").and_then(|v| v.as_str()) != Some(REPO_FORMAT_NAME) {
            return Err(invalid(format!(
                "not a vbm repository (format != {REPO_FORMAT_NAME:?})"
            )));
        }
        let version = value
            .get("version")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| invalid("missing version".into()))?;
        if version != u64::from(REPO_FORMAT_VERSION) {
            return Err(Error::UnsupportedFormat {
                what: "repository",
                found: u32::try_from(version).unwrap_or(u32::MAX),
                supported: REPO_FORMAT_VERSION.to_string(),
            });
        }
        let config: RepoConfig =
            serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        if !(crate::format::MIN_CHUNK_SIZE..=crate::format::MAX_CHUNK_SIZE)
            .contains(&config.chunk_size)
        {
            return Err(invalid(format!(
                "chunk size {} out of range",
                config.chunk_size
            )));
        }
        match (&config.encryption, config.chunk_digest.as_str()) {
            (None, "sha256") => {}
            (Some(e), "hmac-sha256") if e.algorithm == "aes-256-gcm" => {}
            _ => return Err(invalid("unknown encryption or chunk digest".into())),
        }
        Ok(config)
    }

    /// Pretty JSON with a trailing newline.
    ///
    /// # Errors
    /// Serialisation errors (not expected).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut v =
            serde_json::to_vec_pretty(self).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        v.push(b'\n');
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RepoConfig {
        RepoConfig {
            format: REPO_FORMAT_NAME.into(),
            version: REPO_FORMAT_VERSION,
            id: "0123456789abcdef0123456789abcdef".into(),
            created: "2026-11-27T03:31:14Z".parse().unwrap(),
            chunk_size: 4 << 20,
            compression_level: 3,
            chunk_digest: "sha256".into(),
            encryption: None,
            gc_grace_secs: 3600,
            lock_stale_secs: 600,
        }
    }

    #[test]
    fn round_trip_and_version_check() {
        let c = sample();
        let bytes = c.to_bytes().unwrap();
        assert_eq!(RepoConfig::parse(&bytes).unwrap(), c);
        let newer = String::from_utf8(bytes)
            .unwrap()
            .replace("\"version\": 1", "\"version\": 2");
        let err = RepoConfig::parse(newer.as_bytes()).unwrap_err();
        assert!(
            err.to_string()
                .contains("unsupported repository format version 2"),
            "{err}"
        );
        assert!(RepoConfig::parse(b"{}").is_err());
        assert!(RepoConfig::parse(b"garbage").is_err());
    }
}
