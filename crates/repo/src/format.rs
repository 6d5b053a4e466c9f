//! Every magic number, fixed header size, file name and key-derivation label of the on-disk
//! format, in one place. `docs/file-formats.md` describes each byte.
//!
//! **Never change a value in this file**: repositories written years ago must stay readable. A new
//! format gets a new constant and a new version number.

/// First 8 bytes of SHA-256("vbm chunk v1"). Starts every chunk file and every blob. Never change.
pub const CHUNK_MAGIC: [u8; 8] = [0x7d, 0x28, 0xe2, 0xd6, 0x50, 0xbc, 0x6d, 0x53];
/// The string [`CHUNK_MAGIC`] derives from.
pub const CHUNK_MAGIC_SOURCE: &str = "vbm chunk v1";

/// First 8 bytes of SHA-256("vbm fixed index v1"). Starts every `.fidx` file. Never change.
pub const FIDX_MAGIC: [u8; 8] = [0x61, 0xbd, 0x04, 0xa4, 0x22, 0x2b, 0xb4, 0x81];
/// The string [`FIDX_MAGIC`] derives from.
pub const FIDX_MAGIC_SOURCE: &str = "vbm fixed index v1";

/// Chunk header: magic (8) · flags (1) · reserved (3) · CRC32 of the payload (4, LE) ·
/// plain length (8, LE) · payload length (8, LE).
pub const CHUNK_HEADER_LEN: usize = 32;
const _: () = assert!(CHUNK_HEADER_LEN == 8 + 1 + 3 + 4 + 8 + 8);

/// Chunk flag: the payload is zstd-compressed.
pub const CHUNK_FLAG_ZSTD: u8 = 0b01;
/// Chunk flag: the payload is AES-256-GCM sealed (`nonce ‖ ciphertext ‖ tag`).
pub const CHUNK_FLAG_AES_GCM: u8 = 0b10;
/// All flags this version understands; any other bit set makes a chunk undecodable.
pub const CHUNK_FLAGS_KNOWN: u8 = CHUNK_FLAG_ZSTD | CHUNK_FLAG_AES_GCM;

/// AES-GCM nonce length (96 bits, random per chunk).
pub const GCM_NONCE_LEN: usize = 12;
/// AES-GCM tag length.
pub const GCM_TAG_LEN: usize = 16;

/// Fixed index header: magic (8) · version (4) · flags (4) · logical size (8) · chunk size (8) ·
/// chunk count (8) · SHA-256 of the digest list (32) · reserved zeros (56).
pub const FIDX_HEADER_LEN: usize = 128;
const _: () = assert!(FIDX_HEADER_LEN == 8 + 4 + 4 + 8 + 8 + 8 + 32 + 56);
/// Version field of the fixed index header.
pub const FIDX_VERSION: u32 = 1;

/// `repo.json` format version written by this build.
pub const REPO_FORMAT_VERSION: u32 = 1;
/// `format` field of `repo.json`.
pub const REPO_FORMAT_NAME: &str = "vbm-repository";
/// `manifest.json` format version written by this build.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;
/// Lock file format version.
pub const LOCK_FORMAT_VERSION: u32 = 1;
/// `verify.json` format version.
pub const VERIFY_STATE_FORMAT_VERSION: u32 = 1;

/// Default chunk size: 4 MiB, aligned to disk offsets.
pub const DEFAULT_CHUNK_SIZE: u32 = 4 * 1024 * 1024;
/// Smallest chunk size accepted at `init` (tests use 64 KiB).
pub const MIN_CHUNK_SIZE: u32 = 4 * 1024;
/// Largest chunk size accepted at `init`.
pub const MAX_CHUNK_SIZE: u32 = 64 * 1024 * 1024;
/// Default zstd level.
pub const DEFAULT_COMPRESSION_LEVEL: i32 = 3;
/// Default GC grace period: chunks touched less than this long before the cutoff are kept.
pub const DEFAULT_GC_GRACE_SECS: u64 = 3600;
/// Default age after which a lock whose heartbeat stopped is stale.
pub const DEFAULT_LOCK_STALE_SECS: u64 = 600;

/// The repository configuration file at the root.
pub const REPO_CONFIG_FILE: &str = "repo.json";
/// Top-level directory of chunk files.
pub const CHUNKS_DIR: &str = "chunks";
/// Top-level directory of backups.
pub const BACKUPS_DIR: &str = "backups";
/// Top-level directory of lock files.
pub const LOCKS_DIR: &str = "locks";
/// The commit point of a backup, written last.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The last verification result of a backup.
pub const VERIFY_STATE_FILE: &str = "verify.json";
/// Suffix of fixed index files.
pub const FIDX_SUFFIX: &str = ".fidx";
/// Suffix of blob files.
pub const BLOB_SUFFIX: &str = ".blob";
/// Marker inside temporary file names: `<final name>.tmp-<pid>-<seq>-<random>`.
pub const TMP_MARKER: &str = ".tmp-";
/// Suffix of a chunk that GC is deleting (renamed, re-checked, then unlinked).
pub const TRASH_SUFFIX: &str = ".trash";
/// Suffix of a quarantined chunk that failed verification.
pub const BAD_SUFFIX: &str = ".bad";
/// Suffix of lock files.
pub const LOCK_SUFFIX: &str = ".lock";

/// HMAC label deriving the chunk-id key from the repository key.
pub const KDF_LABEL_CHUNK_ID: &[u8] = b"vbm chunk-id v1";
/// HMAC label deriving the AES-256-GCM key from the repository key.
pub const KDF_LABEL_CHUNK_ENC: &[u8] = b"vbm chunk-enc v1";
/// HMAC label of the key fingerprint recorded in `repo.json`.
pub const KDF_LABEL_FINGERPRINT: &[u8] = b"vbm key-fingerprint v1";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Sha256;

    #[test]
    fn magics_derive_from_their_strings() {
        assert_eq!(
            Sha256::of(CHUNK_MAGIC_SOURCE.as_bytes()).as_bytes()[..8],
            CHUNK_MAGIC
        );
        assert_eq!(
            Sha256::of(FIDX_MAGIC_SOURCE.as_bytes()).as_bytes()[..8],
            FIDX_MAGIC
        );
    }
}
