//! The state database: the only module that speaks SQL. Everything else sees domain types, so a
//! PostgreSQL implementation can replace it for multi-node deployments later.
//!
//! SQLite in WAL mode with `busy_timeout` and foreign keys on. One connection behind one mutex is
//! the single writer (FAULT-MATRIX L1: no "database is locked"); async code reaches it through
//! `spawn_blocking`. Migrations are embedded and append-only ([`migrations`]). At open the file
//! system is checked (S-D11: no SQLite on NFS/SMB) and `quick_check` runs (S-D8): a damaged
//! database puts the service in maintenance mode — reads are attempted, writes refused, and no
//! prune or GC runs. A daily `VACUUM INTO` copy is kept beside it (R4).

mod api_keys;
mod backups;
mod jobs;
pub mod migrations;
mod runs;
mod vcenters;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use api_keys::ApiKeyRecord;
pub use backups::{BackupFilter, BackupRecord};
pub use jobs::{DueSchedule, JobRow};
pub use runs::RunFilter;
pub use vcenters::{PasswordChange, VcenterRow};

/// Errors of the data layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The row does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// Kind of object.
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// A uniqueness or reference rule forbids it.
    #[error("{0}")]
    Conflict(String),
    /// The disk holding the database is full (S-D3).
    #[error("the database disk is full; free space and retry (nothing was changed)")]
    Full,
    /// The service is in maintenance mode (damaged database, S-D8).
    #[error("the service is in maintenance mode: {0}")]
    Maintenance(String),
    /// The database sits on a network file system (S-D11).
    #[error("{0}")]
    NetworkFileSystem(String),
    /// Stored data does not decode (a bug or manual editing).
    #[error("stored data is invalid: {0}")]
    Invalid(String),
    /// A stored secret does not decrypt.
    #[error(transparent)]
    Crypto(#[from] crate::crypto::Error),
    /// Any other SQLite error.
    #[error("database error: {0}")]
    Sqlite(rusqlite::Error),
    /// I/O around the database file.
    #[error("database file {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The blocking task died.
    #[error("database task failed: {0}")]
    Task(String),
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(ErrorCode::DiskFull) => Self::Full,
            _ => Self::Sqlite(e),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::Invalid(e.to_string())
    }
}

/// Result of this module.
pub type Result<T> = std::result::Result<T, Error>;

/// A page request: at most `limit` rows after the cursor `after` (an opaque row number).
#[derive(Debug, Clone, Copy)]
pub struct Page {
    /// Rows wanted.
    pub limit: u32,
    /// Continue after this row.
    pub after: Option<i64>,
}

/// A page of rows and the cursor of the next page.
#[derive(Debug, Clone)]
pub struct Paged<T> {
    /// Rows.
    pub items: Vec<T>,
    /// Cursor for the next page, if there is more.
    pub next: Option<i64>,
}

/// Magic numbers of network file systems where SQLite's WAL locking does not work.
const NETWORK_FS: [(i64, &str); 5] = [
    (0x6969, "NFS"),
    (0xFF53_4D42, "CIFS"),
    (0x517B, "SMB"),
    (0xFE53_4D42, "SMB2"),
    (0x0102_1997, "9P"),
];

/// Refuses a network file system by its `statfs` magic number (S-D11).
///
/// # Errors
/// [`Error::NetworkFileSystem`] naming the file system.
pub fn refuse_network_fs(f_type: i64, dir: &Path) -> Result<()> {
    if let Some((_, name)) = NETWORK_FS.iter().find(|(magic, _)| *magic == f_type) {
        return Err(Error::NetworkFileSystem(format!(
            "the data directory {} is on {name}: SQLite's WAL mode does not work on network file \
             systems; put the data directory on a local disk (the backup repository may stay on {name})",
            dir.display()
        )));
    }
    Ok(())
}

fn check_file_system(dir: &Path) -> Result<()> {
    let stat = rustix::fs::statfs(dir).map_err(|e| Error::Io {
        path: dir.display().to_string(),
        source: e.into(),
    })?;
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let f_type = i64::from(stat.f_type as i64);
    refuse_network_fs(f_type, dir)
}

/// The database handle; cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    maintenance: Option<String>,
}

impl Db {
    /// Opens (creating if needed) the database at `path`, checks it and runs migrations.
    ///
    /// A damaged database does not fail the open: the handle comes back in maintenance mode
    /// ([`Db::maintenance`]).
    ///
    /// # Errors
    /// A network file system, or a database that cannot be opened at all.
    pub fn open(path: &Path) -> Result<Self> {
        let dir = path.parent().unwrap_or(Path::new("."));
        check_file_system(dir)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(10))?;
        let maintenance = match integrity_problem(&conn) {
            Some(problem) => Some(format!(
                "the database {} failed its integrity check ({problem}); prune and GC are \
                 disabled and changes are refused. Stop vbm and restore the newest copy from \
                 {}/db-backups/ (see docs/operations.md)",
                path.display(),
                dir.display()
            )),
            None => {
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
                )?;
                migrations::run(&conn)?;
                None
            }
        };
        if let Some(m) = &maintenance {
            tracing::error!(reason = %m, "starting in maintenance mode");
        }
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: path.to_owned(),
            maintenance,
        })
    }

    /// Why the service is in maintenance mode, if it is.
    #[must_use]
    pub fn maintenance(&self) -> Option<&str> {
        self.maintenance.as_deref()
    }

    /// The database file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T, F>(&self, write: bool, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        if write && let Some(m) = &self.maintenance {
            return Err(Error::Maintenance(m.clone()));
        }
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| Error::Task("database mutex poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| Error::Task(e.to_string()))?
    }

    /// Runs a read-only closure on the connection.
    pub(crate) async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.run(false, f).await
    }

    /// Runs a writing closure (refused in maintenance mode).
    pub(crate) async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        self.run(true, f).await
    }

    /// `PRAGMA integrity_check` and `foreign_key_check` (INV-3); `None` when both are clean.
    ///
    /// # Errors
    /// When the checks cannot run.
    pub async fn integrity(&self) -> Result<Option<String>> {
        self.read(|c| {
            let problem = integrity_problem(c);
            if problem.is_some() {
                return Ok(problem);
            }
            let mut stmt = c.prepare("PRAGMA foreign_key_check")?;
            let mut rows = stmt.query([])?;
            if let Some(row) = rows.next()? {
                let table: String = row.get(0)?;
                return Ok(Some(format!("foreign key violation in {table}")));
            }
            Ok(None)
        })
        .await
    }

    /// Whether the database has room to write right now (S-D3): retention and GC delete
    /// nothing unless it has, so that no deletion ever rests on a write that failed. The probe
    /// commits 256 KiB (then shrinks it again): a disk with only a few free pages left, where
    /// the next real write may fail, fails the probe too.
    ///
    /// # Errors
    /// [`Error::Full`], [`Error::Maintenance`], SQLite errors.
    pub async fn probe_writable(&self) -> Result<()> {
        self.write(move |c| {
            let result = c.execute(
                "INSERT INTO settings (key, value) VALUES ('write_probe', hex(randomblob(131072)))
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [],
            );
            let _ = c.execute(
                "UPDATE settings SET value = '' WHERE key = 'write_probe'",
                [],
            );
            result?;
            Ok(())
        })
        .await
    }

    /// Writes a consistent copy of the database to `dest` with `VACUUM INTO` (never a file copy
    /// of the live database).
    ///
    /// # Errors
    /// SQLite errors (e.g. disk full).
    pub async fn backup_to(&self, dest: PathBuf) -> Result<()> {
        self.read(move |c| {
            let _ = std::fs::remove_file(&dest);
            c.execute("VACUUM INTO ?1", [dest.to_string_lossy().as_ref()])?;
            Ok(())
        })
        .await
    }
}

fn integrity_problem(conn: &Connection) -> Option<String> {
    let result: rusqlite::Result<String> =
        conn.query_row("PRAGMA quick_check", [], |row| row.get(0));
    match result {
        Ok(text) if text == "ok" => None,
        Ok(text) => Some(text),
        Err(e) => Some(e.to_string()),
    }
}

/// Reads an optional millisecond column as a timestamp.
pub(crate) fn ts(ms: Option<i64>) -> Option<jiff::Timestamp> {
    ms.map(crate::clock::from_millis)
}

/// Clamps a user-facing limit into SQL.
pub(crate) fn limit_plus_one(page: Page) -> i64 {
    i64::from(page.limit) + 1
}

/// Splits `limit + 1` fetched rows into a page and its next cursor.
pub(crate) fn paged<T>(mut rows: Vec<(i64, T)>, page: Page) -> Paged<T> {
    let more = rows.len() > page.limit as usize;
    rows.truncate(page.limit as usize);
    let next = if more {
        rows.last().map(|(seq, _)| *seq)
    } else {
        None
    };
    Paged {
        items: rows.into_iter().map(|(_, item)| item).collect(),
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // covers S-D11
    #[test]
    fn network_file_systems_are_refused() {
        let err = refuse_network_fs(0x6969, Path::new("/mnt/nfs"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("is on NFS"), "{err}");
        assert!(err.contains("WAL"), "{err}");
        assert!(refuse_network_fs(0xEF53, Path::new("/var/lib/vbm")).is_ok());
    }

    // covers S-D8
    #[tokio::test]
    async fn damaged_database_opens_in_maintenance_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vbm.db");
        {
            let db = Db::open(&path).unwrap();
            assert!(db.maintenance().is_none());
            assert!(db.integrity().await.unwrap().is_none());
        }
        // Flip bytes in the middle of the file (after the WAL checkpoint at close).
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        for b in &mut bytes[mid..mid + 512] {
            *b ^= 0xA5;
        }
        bytes[..16].copy_from_slice(b"not a database!!");
        std::fs::write(&path, bytes).unwrap();
        let db = Db::open(&path).unwrap();
        let reason = db.maintenance().unwrap().to_owned();
        assert!(reason.contains("failed its integrity check"), "{reason}");
        let err = db.write(|_| Ok(())).await.unwrap_err();
        assert!(matches!(err, Error::Maintenance(_)));
    }

    #[tokio::test]
    async fn vacuum_into_makes_a_usable_copy() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&dir.path().join("vbm.db")).unwrap();
        let copy = dir.path().join("copy.db");
        db.backup_to(copy.clone()).await.unwrap();
        let again = Db::open(&copy).unwrap();
        assert!(again.maintenance().is_none());
    }
}
