//! Where each object lives (see DESIGN.md "Repository format"). Every storage path is built
//! here from validated ids; nothing else concatenates paths.
//!
//! ```text
//! repo.json
//! chunks/<aa>/<bb>/<64 hex>            aa, bb = first two bytes of the digest in hex
//! backups/<vm-key>/<timestamp>/manifest.json | verify.json | <name>.fidx | <name>.blob
//! locks/gc.lock | prune.lock | backup@<vm-key>@<timestamp>.lock | read@<vm-key>@<timestamp>@<token>.lock
//! ```

use crate::backend::ObjectPath;
use crate::digest::ChunkDigest;
use crate::error::Result;
use crate::format::{
    BACKUPS_DIR, BAD_SUFFIX, BLOB_SUFFIX, CHUNKS_DIR, FIDX_SUFFIX, LOCK_SUFFIX, LOCKS_DIR,
    MANIFEST_FILE, REPO_CONFIG_FILE, VERIFY_STATE_FILE,
};
use crate::id::{BackupId, FileName, VmKey};

fn path(s: String) -> ObjectPath {
    // Callers pass only validated ids and constants: valid by construction.
    ObjectPath::trusted(s)
}

/// `repo.json`.
pub(crate) fn config() -> ObjectPath {
    path(REPO_CONFIG_FILE.to_owned())
}

/// `chunks`.
pub(crate) fn chunks_dir() -> ObjectPath {
    path(CHUNKS_DIR.to_owned())
}

/// `chunks/<aa>/<bb>/<hex>`.
pub(crate) fn chunk(digest: &ChunkDigest) -> ObjectPath {
    let hex = digest.to_hex();
    path(format!("{CHUNKS_DIR}/{}/{}/{hex}", &hex[0..2], &hex[2..4]))
}

/// The quarantine name of a chunk that failed verification.
pub(crate) fn bad_chunk(digest: &ChunkDigest) -> ObjectPath {
    chunk(digest).with_suffix(BAD_SUFFIX)
}

/// Parses a chunk file name (64 hex digits, no suffix).
pub(crate) fn parse_chunk_name(name: &str) -> Option<ChunkDigest> {
    name.parse().ok()
}

/// `backups`.
pub(crate) fn backups_dir() -> ObjectPath {
    path(BACKUPS_DIR.to_owned())
}

/// `backups/<vm-key>`.
pub(crate) fn vm_dir(vm: &VmKey) -> ObjectPath {
    path(format!("{BACKUPS_DIR}/{vm}"))
}

/// `backups/<vm-key>/<timestamp>`.
pub(crate) fn backup_dir(id: &BackupId) -> ObjectPath {
    path(format!("{BACKUPS_DIR}/{id}"))
}

/// `backups/<id>/manifest.json`.
pub(crate) fn manifest(id: &BackupId) -> ObjectPath {
    path(format!("{BACKUPS_DIR}/{id}/{MANIFEST_FILE}"))
}

/// `backups/<id>/verify.json`.
pub(crate) fn verify_state(id: &BackupId) -> ObjectPath {
    path(format!("{BACKUPS_DIR}/{id}/{VERIFY_STATE_FILE}"))
}

/// `backups/<id>/<name>.fidx`.
pub(crate) fn index(id: &BackupId, name: &FileName) -> ObjectPath {
    path(format!("{BACKUPS_DIR}/{id}/{name}{FIDX_SUFFIX}"))
}

/// `backups/<id>/<name>.blob`.
pub(crate) fn blob(id: &BackupId, name: &FileName) -> ObjectPath {
    path(format!("{BACKUPS_DIR}/{id}/{name}{BLOB_SUFFIX}"))
}

/// `locks`.
pub(crate) fn locks_dir() -> ObjectPath {
    path(LOCKS_DIR.to_owned())
}

/// `locks/<name>.lock` for a fixed lock name (`gc`, `prune`).
pub(crate) fn named_lock(name: &str) -> ObjectPath {
    path(format!("{LOCKS_DIR}/{name}{LOCK_SUFFIX}"))
}

/// `locks/backup@<vm>@<timestamp>.lock`.
pub(crate) fn backup_lock(id: &BackupId) -> ObjectPath {
    path(format!(
        "{LOCKS_DIR}/backup@{}@{}{LOCK_SUFFIX}",
        id.vm(),
        id.time_str()
    ))
}

/// `locks/read@<vm>@<timestamp>@<token>.lock`.
pub(crate) fn read_lock(id: &BackupId, token: &str) -> Result<ObjectPath> {
    ObjectPath::new(format!(
        "{LOCKS_DIR}/read@{}@{}@{token}{LOCK_SUFFIX}",
        id.vm(),
        id.time_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_paths_fan_out_by_two_bytes() {
        let d = ChunkDigest::from_bytes([0xab; 32]);
        assert_eq!(
            chunk(&d).as_str(),
            format!("chunks/ab/ab/{}", "ab".repeat(32))
        );
        let id: BackupId = "vm-1/2026-11-27T033114Z".parse().unwrap();
        assert_eq!(
            backup_lock(&id).as_str(),
            "locks/backup@vm-1@2026-11-27T033114Z.lock"
        );
        assert_eq!(
            index(&id, &FileName::new("disk-2000").unwrap()).as_str(),
            "backups/vm-1/2026-11-27T033114Z/disk-2000.fidx"
        );
    }
}
