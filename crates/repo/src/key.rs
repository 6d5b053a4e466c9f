//! The repository key: 32 random bytes kept in a key file **outside** the repository.
//!
//! From it two sub-keys are derived with HMAC-SHA256 and fixed labels (see `format.rs`): one for
//! chunk ids (so that ids reveal nothing about content), one for AES-256-GCM. `repo.json` records
//! only a fingerprint (an HMAC of a constant and the repository id), enough to refuse a wrong key
//! with a clear message and useless for decryption. See ADR 0003.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use rand::TryRngCore;

use crate::error::{Error, Result};
use crate::format::{KDF_LABEL_CHUNK_ENC, KDF_LABEL_CHUNK_ID, KDF_LABEL_FINGERPRINT};

/// Environment variable naming a directory of key files (`<repo-id>.key`).
pub const KEY_DIR_ENV: &str = "VBM_KEY_DIR";

/// The 32-byte repository key. `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct RepoKey([u8; 32]);

impl fmt::Debug for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RepoKey(<redacted>)")
    }
}

impl RepoKey {
    /// A fresh key from the operating system's random source.
    ///
    /// # Errors
    /// When the OS random source fails.
    pub fn generate() -> Result<RepoKey> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .map_err(|e| Error::InvalidArgument(format!("OS random source failed: {e}")))?;
        Ok(RepoKey(bytes))
    }

    /// Wraps raw key bytes (tests, or keys kept elsewhere).
    #[must_use]
    pub fn from_bytes(bytes: [u8; 32]) -> RepoKey {
        RepoKey(bytes)
    }

    /// Reads a key file: 64 hex digits (optionally followed by a newline), or exactly 32 raw
    /// bytes.
    ///
    /// # Errors
    /// [`Error::NotFound`] when the file does not exist, [`Error::KeyFile`] when it holds no key.
    pub fn load(path: &Path) -> Result<RepoKey> {
        let data = std::fs::read(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound {
                path: path.display().to_string(),
            },
            _ => Error::KeyFile {
                path: path.to_owned(),
                reason: e.to_string(),
            },
        })?;
        let text = std::str::from_utf8(&data).map(str::trim);
        if let Ok(text) = text
            && text.len() == 64
        {
            let mut bytes = [0u8; 32];
            if hex::decode_to_slice(text, &mut bytes).is_ok() {
                return Ok(RepoKey(bytes));
            }
        }
        if let Ok(bytes) = <[u8; 32]>::try_from(data.as_slice()) {
            return Ok(RepoKey(bytes));
        }
        Err(Error::KeyFile {
            path: path.to_owned(),
            reason: "expected 64 hex digits (or 32 raw bytes)".into(),
        })
    }

    /// Writes the key as 64 hex digits to a new file with mode 0600, creating parent directories
    /// (mode 0700). Refuses to overwrite an existing file.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the file exists, I/O errors otherwise.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let shown = path.display().to_string();
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| Error::io("create key directory", parent.display().to_string(), e))?;
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::io("create key file", shown.clone(), e))?;
        let text = format!("{}\n", hex::encode(self.0));
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io("write key file", shown.clone(), e))?;
        if let Some(parent) = path.parent()
            && let Ok(dir) = std::fs::File::open(parent)
        {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    fn derive(&self, label: &[u8], context: &[u8]) -> [u8; 32] {
        // HMAC-SHA256 as a PRF with distinct labels: the "expand" step of HKDF, enough for a key
        // that is already uniformly random.
        let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(label);
        mac.update(context);
        mac.finalize().into_bytes().into()
    }

    /// Key used to compute chunk ids (HMAC-SHA256 of the plain data).
    pub(crate) fn chunk_id_key(&self) -> [u8; 32] {
        self.derive(KDF_LABEL_CHUNK_ID, b"")
    }

    /// AES-256-GCM key for chunk payloads.
    pub(crate) fn chunk_enc_key(&self) -> [u8; 32] {
        self.derive(KDF_LABEL_CHUNK_ENC, b"")
    }

    /// The fingerprint recorded in `repo.json`: hex of HMAC(key, label ‖ repository id).
    #[must_use]
    pub fn fingerprint(&self, repo_id: &str) -> String {
        hex::encode(self.derive(KDF_LABEL_FINGERPRINT, repo_id.as_bytes()))
    }
}

#[allow(clippy::panic)] // invariant: HMAC accepts keys of any length, new_from_slice cannot fail
fn unreachable_hmac() -> Hmac<sha2::Sha256> {
    panic!("HMAC-SHA256 rejected a 32-byte key")
}

/// Where the key of repository `repo_id` is expected when no `--key-file` is given:
/// `$VBM_KEY_DIR/<id>.key`, else `$XDG_CONFIG_HOME/vbm/keys/<id>.key`, else
/// `$HOME/.config/vbm/keys/<id>.key`. `env` looks up environment variables (pass
/// `|k| std::env::var_os(k)`).
#[must_use]
pub fn default_key_path(
    repo_id: &str,
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> Option<PathBuf> {
    let file = format!("{repo_id}.key");
    let non_empty = |k: &str| env(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = non_empty(KEY_DIR_ENV) {
        return Some(dir.join(file));
    }
    if let Some(dir) = non_empty("XDG_CONFIG_HOME") {
        return Some(dir.join("vbm").join("keys").join(file));
    }
    non_empty("HOME").map(|home| home.join(".config").join("vbm").join("keys").join(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_round_trip_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/r.key");
        let key = RepoKey::generate().unwrap();
        key.write_new(&path).unwrap();
        assert_eq!(RepoKey::load(&path).unwrap(), key);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            key.write_new(&path),
            Err(Error::AlreadyExists { .. })
        ));
        std::fs::write(&path, "nonsense").unwrap();
        assert!(matches!(RepoKey::load(&path), Err(Error::KeyFile { .. })));
        std::fs::write(&path, [7u8; 32]).unwrap();
        assert_eq!(RepoKey::load(&path).unwrap(), RepoKey::from_bytes([7; 32]));
    }

    #[test]
    fn debug_is_redacted_and_subkeys_differ() {
        let key = RepoKey::from_bytes([1; 32]);
        assert_eq!(format!("{key:?}"), "RepoKey(<redacted>)");
        assert_ne!(key.chunk_id_key(), key.chunk_enc_key());
        assert_ne!(key.fingerprint("a"), key.fingerprint("b"));
    }

    #[test]
    fn default_key_path_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            default_key_path("r1", env(&[("VBM_KEY_DIR", "/k"), ("HOME", "/h")])),
            Some(PathBuf::from("/k/r1.key"))
        );
        assert_eq!(
            default_key_path("r1", env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/vbm/keys/r1.key"))
        );
        assert_eq!(
            default_key_path("r1", env(&[("HOME", "/h")])),
            Some(PathBuf::from("/h/.config/vbm/keys/r1.key"))
        );
        assert_eq!(default_key_path("r1", env(&[])), None);
    }
}
