//! Repository locks: small JSON files under `locks/`, created with create-exclusive puts.
//!
//! | lock                         | kind      | taken by                    |
//! |------------------------------|-----------|-----------------------------|
//! | `backup@<vm>@<time>.lock`    | shared    | each backup writer          |
//! | `read@<vm>@<time>@<t>.lock`  | shared    | a restore that must not lose its backup to prune |
//! | `gc.lock`                    | exclusive | garbage collection          |
//! | `prune.lock`                 | exclusive | prune                       |
//!
//! Each lock records its owner (host, pid, the process's start time, the boot id) and a
//! heartbeat timestamp. A lock is **stale** when its heartbeat is older than the repository's
//! `lock_stale_secs`, or when it belongs to this host and its process is gone (or the pid was
//! reused, or the host rebooted). Stale locks are ignored and may be deleted by anyone.
//!
//! A holder renews its heartbeat regularly. If it ever goes longer than half the stale time
//! without renewing (the process was paused, the machine slept, the storage hung), it considers
//! its **lease lost**: someone may have declared the lock stale and acted on that (GC collecting
//! chunks this writer referenced), so it must not commit (FAULT-MATRIX F7).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use rand::RngCore;
use serde::{Deserialize, Serialize};

mod guard;

pub use guard::LockGuard;

use crate::backend::{Backend, ListEntry, ObjectPath, PutMode};
use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::format::{LOCK_FORMAT_VERSION, LOCK_SUFFIX};
use crate::id::BackupId;
use crate::layout;

/// What a lock protects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockKind {
    /// A backup being written (shared).
    Backup,
    /// A backup being read by a restore (shared; prune keeps it).
    Read,
    /// Garbage collection (exclusive).
    Gc,
    /// Prune (exclusive).
    Prune,
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), to
    /// tell a reused pid apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process_start: Option<u64>,
    /// `/proc/sys/kernel/random/boot_id`: a lock from a previous boot is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
}

impl LockOwner {
    /// This process on this host.
    #[must_use]
    pub fn current() -> LockOwner {
        let pid = std::process::id();
        LockOwner {
            host: read_trimmed("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown".into()),
            pid,
            process_start: process_start(pid),
            boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        }
    }

    /// Whether the owner is known to be gone, judged from `me`'s host. `None` when it cannot
    /// be told (another host: only the heartbeat counts).
    fn gone(&self, me: &LockOwner) -> Option<String> {
        if self.host != me.host {
            return None;
        }
        if let (Some(a), Some(b)) = (&self.boot_id, &me.boot_id)
            && a != b
        {
            return Some(format!(
                "host {} rebooted since the lock was taken",
                self.host
            ));
        }
        if self.pid == me.pid && self.process_start == me.process_start {
            return None;
        }
        match process_start(self.pid) {
            None if std::path::Path::new("/proc/self/stat").exists() => {
                Some(format!("process {} on {} is gone", self.pid, self.host))
            }
            None => None,
            Some(start) if self.process_start.is_some_and(|s| s != start) => Some(format!(
                "process {} on {} was replaced (pid reused)",
                self.pid, self.host
            )),
            Some(_) => None,
        }
    }
}

impl fmt::Display for LockOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} on {}", self.pid, self.host)
    }
}

/// The content of a lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// [`LOCK_FORMAT_VERSION`].
    pub version: u32,
    /// What the lock protects.
    pub kind: LockKind,
    /// Random token identifying this acquisition (so a holder never deletes a successor's lock).
    pub token: String,
    /// The backup concerned (backup and read locks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupId>,
    /// The holder.
    pub owner: LockOwner,
    /// When the operation started (a backup's start time bounds what GC may delete).
    pub started: Timestamp,
    /// Last renewal.
    pub heartbeat: Timestamp,
}

impl LockRecord {
    /// Whether the lock is stale as seen by `me` at `now`; the reason if so.
    #[must_use]
    pub fn stale_reason(
        &self,
        now: Timestamp,
        stale_after: SignedDuration,
        me: &LockOwner,
    ) -> Option<String> {
        let age = now.duration_since(self.heartbeat);
        if age > stale_after {
            return Some(format!(
                "no heartbeat from {} for {}s (stale after {}s)",
                self.owner,
                age.as_secs(),
                stale_after.as_secs()
            ));
        }
        self.owner.gone(me)
    }
}

/// A lock found in `locks/`.
#[derive(Debug, Clone)]
pub struct LockInfo {
    /// The lock file.
    pub path: ObjectPath,
    /// Its content, or why it could not be read.
    pub record: std::result::Result<LockRecord, String>,
    /// Why it is stale, if it is.
    pub stale: Option<String>,
}

/// Lock timing settings.
#[derive(Debug, Clone)]
pub struct LockSettings {
    /// A lock whose heartbeat is older than this is stale.
    pub stale_after: Duration,
    /// How often holders renew in the background (`None`: only when the holder calls
    /// [`LockGuard::renew`], as deterministic tests do).
    pub heartbeat_interval: Option<Duration>,
    /// The identity written into locks.
    pub owner: LockOwner,
}

fn sd(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

/// Creates, lists and clears locks of one repository.
#[derive(Debug, Clone)]
pub(crate) struct LockManager {
    backend: Arc<dyn Backend>,
    clock: Arc<dyn Clock>,
    settings: LockSettings,
}

impl LockManager {
    pub(crate) fn new(
        backend: Arc<dyn Backend>,
        clock: Arc<dyn Clock>,
        settings: LockSettings,
    ) -> LockManager {
        LockManager {
            backend,
            clock,
            settings,
        }
    }

    fn stale_after(&self) -> SignedDuration {
        sd(self.settings.stale_after)
    }

    fn record(&self, kind: LockKind, backup: Option<BackupId>, started: Timestamp) -> LockRecord {
        let mut token = [0u8; 12];
        rand::rng().fill_bytes(&mut token);
        LockRecord {
            version: LOCK_FORMAT_VERSION,
            kind,
            token: hex::encode(token),
            backup,
            owner: self.settings.owner.clone(),
            started,
            heartbeat: self.clock.now(),
        }
    }

    fn read(&self, path: &ObjectPath) -> Result<Option<std::result::Result<LockRecord, String>>> {
        match self.backend.get(path) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice::<LockRecord>(&bytes).map_err(|e| e.to_string()),
            )),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates the lock at `path`; if a stale one is there, clears it and tries once more.
    fn create(&self, path: ObjectPath, record: LockRecord) -> Result<LockGuard> {
        let bytes =
            serde_json::to_vec(&record).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        for attempt in 0..2 {
            match self.backend.put(&path, &bytes, PutMode::CreateNew) {
                Ok(()) => return Ok(LockGuard::new(self.clone(), path, record)),
                Err(Error::AlreadyExists { .. }) if attempt == 0 => {
                    let info = self.inspect(&path)?;
                    match info {
                        None => {}
                        Some(info) if info.stale.is_some() => self.clear(&info)?,
                        Some(info) => {
                            return Err(Error::LockConflict {
                                lock: path.to_string(),
                                holder: describe(&info),
                            });
                        }
                    }
                }
                Err(Error::AlreadyExists { .. }) => {
                    return Err(Error::LockConflict {
                        lock: path.to_string(),
                        holder: "another process (it just took the lock)".into(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::LockConflict {
            lock: path.to_string(),
            holder: "another process".into(),
        })
    }

    fn inspect(&self, path: &ObjectPath) -> Result<Option<LockInfo>> {
        let now = self.clock.now();
        Ok(self.read(path)?.map(|record| {
            let stale = match &record {
                Ok(r) => r.stale_reason(now, self.stale_after(), &self.settings.owner),
                // Unparsable (e.g. empty after a crash): nobody can renew it.
                Err(e) => Some(format!("unreadable lock file: {e}")),
            };
            LockInfo {
                path: path.clone(),
                record,
                stale,
            }
        }))
    }

    /// Takes an exclusive lock (`gc`, `prune`).
    pub(crate) fn exclusive(&self, kind: LockKind) -> Result<LockGuard> {
        let name = match kind {
            LockKind::Gc => "gc",
            LockKind::Prune => "prune",
            LockKind::Backup | LockKind::Read => {
                return Err(Error::InvalidArgument(format!(
                    "{kind:?} is not an exclusive lock"
                )));
            }
        };
        let now = self.clock.now();
        self.create(layout::named_lock(name), self.record(kind, None, now))
    }

    /// Takes the lock of a backup being written.
    pub(crate) fn backup(&self, id: &BackupId, started: Timestamp) -> Result<LockGuard> {
        self.create(
            layout::backup_lock(id),
            self.record(LockKind::Backup, Some(id.clone()), started),
        )
    }

    /// Takes a read lock on a backup.
    pub(crate) fn read_lock(&self, id: &BackupId) -> Result<LockGuard> {
        let now = self.clock.now();
        let record = self.record(LockKind::Read, Some(id.clone()), now);
        let path = layout::read_lock(id, &record.token)?;
        self.create(path, record)
    }

    /// Every lock in `locks/`, with its staleness.
    pub(crate) fn list(&self) -> Result<Vec<LockInfo>> {
        let mut paths = Vec::new();
        self.backend.list(&layout::locks_dir(), true, &mut |e| {
            if let ListEntry::Object { path, .. } = e
                && path.as_str().ends_with(LOCK_SUFFIX)
            {
                paths.push(path);
            }
            Ok(())
        })?;
        let mut out = Vec::new();
        for p in paths {
            if let Some(info) = self.inspect(&p)? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Deletes a stale lock if it is still the same lock (same token) and still stale.
    pub(crate) fn clear(&self, info: &LockInfo) -> Result<()> {
        let Some(now) = self.inspect(&info.path)? else {
            return Ok(());
        };
        let same = match (&now.record, &info.record) {
            (Ok(a), Ok(b)) => a.token == b.token,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if same && now.stale.is_some() {
            tracing::warn!(lock = %info.path, reason = ?now.stale, "clearing a stale lock");
            self.backend.delete(&info.path)?;
        }
        Ok(())
    }
}

fn describe(info: &LockInfo) -> String {
    match &info.record {
        Ok(r) => format!(
            "{} since {} (heartbeat {})",
            r.owner, r.started, r.heartbeat
        ),
        Err(e) => format!("an unreadable lock ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::LocalBackend;
    use crate::clock::ManualClock;

    fn setup() -> (tempfile::TempDir, LockManager, ManualClock) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap());
        let m = LockManager::new(
            Arc::new(LocalBackend::new(dir.path())),
            Arc::new(clock.clone()),
            LockSettings {
                stale_after: Duration::from_secs(600),
                heartbeat_interval: None,
                owner: LockOwner::current(),
            },
        );
        (dir, m, clock)
    }

    #[test]
    fn exclusive_lock_conflicts_until_released_or_stale() {
        let (_dir, m, clock) = setup();
        let g = m.exclusive(LockKind::Gc).unwrap();
        let err = m.exclusive(LockKind::Gc).unwrap_err();
        assert!(matches!(err, Error::LockConflict { .. }), "{err}");
        g.release().unwrap();
        let g = m.exclusive(LockKind::Gc).unwrap();
        clock.advance(SignedDuration::from_secs(601));
        // Our own process is alive, but the heartbeat is too old: stale (a paused process).
        let g2 = m.exclusive(LockKind::Gc).unwrap();
        let err = g.renew().unwrap_err();
        assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
        drop(g);
        // Dropping the old guard must not delete the new holder's lock.
        assert!(matches!(
            m.exclusive(LockKind::Gc),
            Err(Error::LockConflict { .. })
        ));
        drop(g2);
        assert!(m.list().unwrap().is_empty());
    }

    #[test]
    fn lock_of_a_dead_process_is_stale() {
        let (_dir, m, _clock) = setup();
        let mut owner = LockOwner::current();
        // A pid that cannot exist (above pid_max).
        owner.pid = 4_194_305;
        let mut record = m.record(LockKind::Prune, None, m.clock.now());
        record.owner = owner;
        let path = layout::named_lock("prune");
        m.backend
            .put(
                &path,
                &serde_json::to_vec(&record).unwrap(),
                PutMode::CreateNew,
            )
            .unwrap();
        let infos = m.list().unwrap();
        assert!(
            infos[0].stale.as_deref().unwrap().contains("is gone"),
            "{infos:?}"
        );
        let g = m.exclusive(LockKind::Prune).unwrap();
        g.release().unwrap();
    }

    #[test]
    fn renew_detects_a_long_pause() {
        let (_dir, m, clock) = setup();
        let id: BackupId = "vm-1/2026-01-01T000000Z".parse().unwrap();
        let g = m.backup(&id, clock.now()).unwrap();
        clock.advance(SignedDuration::from_secs(200));
        g.renew().unwrap();
        clock.advance(SignedDuration::from_secs(301));
        let err = g.renew().unwrap_err();
        assert!(err.to_string().contains("lease lost"), "{err}");
    }
}
