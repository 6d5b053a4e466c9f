//! The options and results of [`super::verify`]: serialisable (the CLI and the API print them).

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::digest::ChunkDigest;
use crate::id::BackupId;
use crate::layout;
use crate::repository::Repository;

/// How deep to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyMode {
    /// Metadata and chunk existence.
    Quick,
    /// Every byte.
    Full,
}

/// Options of [`super::verify`].
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Quick or full.
    pub mode: VerifyMode,
    /// Only these backups (default: all).
    pub backups: Option<Vec<BackupId>>,
    /// Rename corrupt chunks to `.bad`.
    pub quarantine: bool,
    /// Write `verify.json` into each verified backup.
    pub record_state: bool,
    /// Threads decoding chunks in full mode.
    pub threads: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            mode: VerifyMode::Full,
            backups: None,
            quarantine: true,
            record_state: true,
            threads: std::thread::available_parallelism().map_or(2, usize::from),
        }
    }
}

/// What is wrong with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChunkProblemKind {
    /// No (usable) chunk file.
    Missing,
    /// The file does not decode to the data its digest names.
    Corrupt,
    /// The file could not be read (I/O error): not known to be corrupt.
    Unreadable,
}

/// Where a chunk is used.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ChunkUse {
    /// The backup.
    pub backup: BackupId,
    /// The file (manifest path).
    pub file: String,
}

/// A damaged chunk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkProblem {
    /// Its id.
    pub digest: ChunkDigest,
    /// What is wrong.
    pub kind: ChunkProblemKind,
    /// The check that failed.
    pub detail: String,
    /// Whether it was moved to `<digest>.bad`.
    pub quarantined: bool,
    /// Every backup and file that needs it.
    pub referenced_by: Vec<ChunkUse>,
}

/// One problem of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupProblem {
    /// The file concerned (manifest path), if the problem is with one file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// What is wrong.
    pub problem: String,
}

/// The verdict on one backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupVerdict {
    /// The backup.
    pub id: BackupId,
    /// No problem found.
    pub ok: bool,
    /// Whether it was verified itself, or is listed only because it references a damaged chunk.
    pub verified: bool,
    /// Files that would not restore correctly.
    pub damaged_files: Vec<String>,
    /// Every problem found.
    pub problems: Vec<BackupProblem>,
}

/// The result of [`super::verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Nothing damaged.
    pub ok: bool,
    /// Quick or full.
    pub mode: VerifyMode,
    /// Backups verified.
    pub backups_checked: u64,
    /// Distinct chunks checked.
    pub chunks_checked: u64,
    /// Plain bytes decoded (full mode).
    pub bytes_checked: u64,
    /// Every verified backup and every other backup affected by damage.
    pub backups: Vec<BackupVerdict>,
    /// Damaged chunks.
    pub chunks: Vec<ChunkProblem>,
}

impl VerifyReport {
    /// The damaged backups.
    pub fn damaged(&self) -> impl Iterator<Item = &BackupVerdict> {
        self.backups.iter().filter(|b| !b.ok)
    }
}

/// Progress of a verify run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyProgress {
    /// Backups finished.
    pub backups_done: u64,
    /// Backups to verify.
    pub backups_total: u64,
    /// The backup being verified.
    pub current: Option<BackupId>,
    /// Plain bytes decoded so far.
    pub bytes_done: u64,
}

/// The last verification of a backup (`verify.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyState {
    /// Format version.
    pub version: u32,
    /// `ok` or `failed`.
    pub state: String,
    /// Quick or full.
    pub mode: VerifyMode,
    /// When.
    pub verified_at: Timestamp,
    /// Number of problems found.
    pub problems: u64,
}

/// Reads a backup's `verify.json` (None if absent or unreadable).
#[must_use]
pub fn read_state(repo: &Repository, id: &BackupId) -> Option<VerifyState> {
    let bytes = repo.backend().get(&layout::verify_state(id)).ok()?;
    serde_json::from_slice(&bytes).ok()
}
