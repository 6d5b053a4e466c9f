//! Secrets at rest and API key hashing.
//!
//! vCenter passwords are sealed with AES-256-GCM under a 32-byte master key that never enters the
//! database: it comes from `VBM_MASTER_KEY` (64 hex digits) or from `master.key` beside the
//! database, created with mode 0600 on first start (ADR 0022). Each ciphertext is bound to its row
//! by associated data, so a sealed password copied to another row does not decrypt.
//!
//! API keys are 256-bit random tokens; only their SHA-256 is stored (a slow password hash adds
//! nothing for a token with that much entropy — ADR 0022).

use std::fmt;
use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use rand::RngCore;
use sha2::{Digest, Sha256};

const NONCE_LEN: usize = 12;
/// Format tag of a sealed secret: never change; a new scheme gets a new tag.
const SEALED_V1: u8 = 1;
/// Prefix of every API key, so that leaked keys are recognisable by secret scanners.
pub const API_KEY_PREFIX: &str = "vbm_";

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `VBM_MASTER_KEY` is set but not 64 hex digits.
    #[error("VBM_MASTER_KEY must be 64 hexadecimal digits (32 bytes)")]
    BadMasterKeyEnv,
    /// The key file exists but is not 32 bytes / 64 hex digits.
    #[error("master key file {path} is damaged (expected 64 hexadecimal digits)")]
    BadKeyFile {
        /// The file.
        path: String,
    },
    /// Reading or creating the key file failed.
    #[error("master key file {path}: {source}")]
    KeyFileIo {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A sealed secret does not open with this master key (wrong key, or damaged data).
    #[error(
        "a stored secret cannot be decrypted (is VBM_MASTER_KEY / master.key the one it was sealed with?)"
    )]
    Open,
}

/// A secret string: never printed by `Debug`, never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: call only where it is used.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self)
    }
}

/// The master key.
#[derive(Clone)]
pub struct MasterKey(Key<Aes256Gcm>);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// Loads the key from `env_value` (the content of `VBM_MASTER_KEY`) when given, otherwise from
    /// `key_file`, creating that file (mode 0600) with a fresh random key when it does not exist.
    ///
    /// # Errors
    /// A malformed key, or an I/O error on the key file.
    pub fn load(env_value: Option<&str>, key_file: &Path) -> Result<Self, Error> {
        if let Some(text) = env_value {
            return Self::from_hex(text.trim()).ok_or(Error::BadMasterKeyEnv);
        }
        let path = key_file.display().to_string();
        match std::fs::read_to_string(key_file) {
            Ok(text) => Self::from_hex(text.trim()).ok_or(Error::BadKeyFile { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0_u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                write_new_key_file(key_file, &hex::encode(bytes))
                    .map_err(|source| Error::KeyFileIo { path, source })?;
                Ok(Self(Key::<Aes256Gcm>::from(bytes)))
            }
            Err(source) => Err(Error::KeyFileIo { path, source }),
        }
    }

    fn from_hex(text: &str) -> Option<Self> {
        let bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
        Some(Self(Key::<Aes256Gcm>::from(bytes)))
    }

    /// Seals `plain`, bound to `context` (e.g. the row id): `tag ‖ nonce ‖ ciphertext+tag`.
    #[must_use]
    pub fn seal(&self, plain: &str, context: &str) -> Vec<u8> {
        let cipher = Aes256Gcm::new(&self.0);
        let mut nonce_bytes = [0_u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce_bytes);
        let nonce = Nonce::from(nonce_bytes);
        let payload = Payload {
            msg: plain.as_bytes(),
            aad: context.as_bytes(),
        };
        // AES-GCM encryption only fails for messages beyond 64 GiB.
        let sealed = cipher.encrypt(&nonce, payload).unwrap_or_default();
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&sealed);
        out
    }

    /// Opens what [`MasterKey::seal`] produced for the same `context`.
    ///
    /// # Errors
    /// [`Error::Open`] for a wrong key, a different context or damaged data.
    pub fn open(&self, sealed: &[u8], context: &str) -> Result<Secret, Error> {
        let (tag, rest) = sealed.split_first().ok_or(Error::Open)?;
        if *tag != SEALED_V1 || rest.len() < NONCE_LEN {
            return Err(Error::Open);
        }
        let (nonce_bytes, body) = rest.split_at(NONCE_LEN);
        let nonce_bytes: [u8; NONCE_LEN] = nonce_bytes.try_into().map_err(|_| Error::Open)?;
        let cipher = Aes256Gcm::new(&self.0);
        let plain = cipher
            .decrypt(
                &Nonce::from(nonce_bytes),
                Payload {
                    msg: body,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| Error::Open)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| Error::Open)
    }
}

fn write_new_key_file(path: &Path, hex_key: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(hex_key.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

/// A new API key: the token to show once, and the hash to store.
#[must_use]
pub fn new_api_key() -> (Secret, [u8; 32]) {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("{API_KEY_PREFIX}{}", hex::encode(bytes));
    let hash = hash_api_key(&token);
    (Secret(token), hash)
}

/// The stored form of an API key.
#[must_use]
pub fn hash_api_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_bound_to_context() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::load(None, &dir.path().join("master.key")).unwrap();
        let sealed = key.seal("CANARY-VC-1", "row-1");
        assert!(!sealed.windows(6).any(|w| w == b"CANARY"));
        assert_eq!(key.open(&sealed, "row-1").unwrap().expose(), "CANARY-VC-1");
        assert!(key.open(&sealed, "row-2").is_err());
        let mut damaged = sealed.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        assert!(key.open(&damaged, "row-1").is_err());
    }

    #[test]
    fn key_file_is_private_and_stable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let a = MasterKey::load(None, &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = MasterKey::load(None, &path).unwrap();
        let sealed = a.seal("x", "c");
        assert_eq!(b.open(&sealed, "c").unwrap().expose(), "x");
    }

    #[test]
    fn env_key_must_be_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(matches!(
            MasterKey::load(Some("short"), &path),
            Err(Error::BadMasterKeyEnv)
        ));
        assert!(MasterKey::load(Some(&"ab".repeat(32)), &path).is_ok());
        assert!(!path.exists());
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = Secret::new("CANARY");
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }
}
