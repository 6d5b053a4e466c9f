//! [`LocalBackend`]: objects as files under a directory (local disk or NFS).
//!
//! - `put`: write `<name>.tmp-<pid>-<seq>-<random>` → fdatasync → rename (or hard-link for
//!   create-new) → fsync the directory. Missing parent directories are created on demand and each
//!   new directory is made durable in its parent.
//! - `delete_if_older`: rename the object to `<name>.trash`, re-read its modification time, then
//!   unlink it — or link it back if it was touched meanwhile. Any access (`get`, `stat`, `touch`)
//!   that finds an object missing but its `.trash` present links it back first, so a concurrent
//!   touch either lands before the re-check (object kept) or finds nothing (delete won). A GC
//!   killed between rename and unlink leaves a `.trash` file that the next access or GC restores.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use jiff::Timestamp;
use rand::RngCore;

use super::{Backend, ConditionalDelete, Fs, ListEntry, ObjectMeta, ObjectPath, PutMode, StdFs};
use crate::error::{Error, Result};
use crate::format::{TMP_MARKER, TRASH_SUFFIX};

/// A backend storing each object as a file below a root directory.
#[derive(Debug)]
pub struct LocalBackend {
    fs: Arc<dyn Fs>,
    seq: AtomicU64,
    pid: u32,
}

impl LocalBackend {
    /// A backend over the real file system at `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> LocalBackend {
        LocalBackend::with_fs(Arc::new(StdFs::new(root)))
    }

    /// A backend over any [`Fs`] (e.g. a [`super::CrashFs`] in tests).
    #[must_use]
    pub fn with_fs(fs: Arc<dyn Fs>) -> LocalBackend {
        LocalBackend {
            fs,
            seq: AtomicU64::new(0),
            pid: std::process::id(),
        }
    }

    fn err(&self, op: &'static str, path: &Path, e: io::Error) -> Error {
        let shown = path.display().to_string();

        if e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull {
            let detail = match self.fs.space() {
                // ENOSPC with a handful of inodes left (the failed write released its own):
                // the inode table is the limit, not the bytes.
                Some(s) if s.free_inodes <= 16 => format!(
                    "no free inodes left on {} ({} inodes, {} bytes free)",
                    self.fs.describe(),
                    s.free_inodes,
                    s.free_bytes
                ),
                Some(s) => format!(
                    "{} bytes and {} inodes free on {}",
                    s.free_bytes,
                    s.free_inodes,
                    self.fs.describe()
                ),
                None => format!("on {}", self.fs.describe()),
            };
            return Error::NoSpace {
                path: shown,
                detail,
            };
        }
        Error::io(op, shown, e)
    }

    fn tmp_path(&self, path: &Path) -> PathBuf {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let rand = rand::rng().next_u32();
        let mut name = path.as_os_str().to_owned();
        name.push(format!("{TMP_MARKER}{}-{seq}-{rand:08x}", self.pid));
        PathBuf::from(name)
    }

    /// Creates `dir` and missing ancestors, making each new entry durable in its parent.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        if dir.as_os_str().is_empty() {
            return Ok(());
        }
        let parent = dir.parent().unwrap_or(Path::new(""));
        match self.fs.create_dir(dir) {
            Ok(()) => self.fs.sync_dir(parent),
            // Another thread may have created it without having synced the parent yet.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.fs.sync_dir(parent),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure_dir(parent)?;
                match self.fs.create_dir(dir) {
                    Ok(()) => self.fs.sync_dir(parent),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => self.fs.sync_dir(parent),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// If `path` is missing but `path.trash` exists (a GC is deleting it, or died doing so),
    /// links it back. Returns whether something was restored.
    fn rescue(&self, path: &Path) -> bool {
        let trash = with_suffix(path, TRASH_SUFFIX);
        match self.fs.hard_link(&trash, path) {
            Ok(()) => {
                let _ = self.fs.remove_file(&trash);
                tracing::info!(path = %path.display(), "restored an object from GC trash");
                true
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let _ = self.fs.remove_file(&trash);
                true
            }
            Err(_) => false,
        }
    }

    /// Runs `op`; on `NotFound` tries [`Self::rescue`] and runs it once more.
    fn with_rescue<T>(&self, path: &Path, op: impl Fn() -> io::Result<T>) -> io::Result<T> {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.rescue(path) => op(),
            other => other,
        }
    }

    fn meta(m: &super::FsMeta) -> ObjectMeta {
        ObjectMeta {
            size: m.len,
            modified: to_timestamp(m.mtime),
        }
    }

    fn walk(
        &self,
        dir: &Path,
        recursive: bool,
        visit: &mut dyn FnMut(ListEntry) -> Result<()>,
    ) -> Result<()> {
        let entries = match self.fs.read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err("list", dir, e)),
        };
        for entry in entries {
            let rel = dir.join(&entry.name);
            // A listing is complete or an error: a name we cannot represent is not skipped.
            let Some(path) = rel.to_str().and_then(|s| ObjectPath::new(s).ok()) else {
                return Err(Error::InvalidArgument(format!(
                    "unexpected file name {:?} in the repository at {}: move it out",
                    rel.display().to_string(),
                    self.fs.describe()
                )));
            };
            if entry.is_dir {
                if recursive {
                    self.walk(&rel, true, visit)?;
                } else {
                    visit(ListEntry::Prefix(path))?;
                }
                continue;
            }
            match self.fs.metadata(&rel) {
                Ok(m) => visit(ListEntry::Object {
                    path,
                    meta: Self::meta(&m),
                })?,
                // Deleted between readdir and stat: it is not there any more.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(self.err("stat", &rel, e)),
            }
        }
        Ok(())
    }

    fn remove_tree(&self, dir: &Path) -> Result<()> {
        let entries = match self.fs.read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err("list", dir, e)),
        };
        for entry in entries {
            let rel = dir.join(&entry.name);
            if entry.is_dir {
                self.remove_tree(&rel)?;
            } else {
                match self.fs.remove_file(&rel) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(self.err("delete", &rel, e)),
                }
            }
        }
        match self.fs.remove_dir(dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("remove directory", dir, e)),
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

/// Converts a file time to a timestamp (times before the epoch clamp to it).
pub(crate) fn to_timestamp(t: SystemTime) -> Timestamp {
    Timestamp::try_from(t).unwrap_or(Timestamp::UNIX_EPOCH)
}

impl Backend for LocalBackend {
    fn location(&self) -> String {
        self.fs.describe()
    }

    fn get(&self, path: &ObjectPath) -> Result<Vec<u8>> {
        let p = Path::new(path.as_str());
        self.with_rescue(p, || self.fs.read(p))
            .map_err(|e| self.err("read", p, e))
    }

    fn get_range(&self, path: &ObjectPath, offset: u64, len: u64) -> Result<Vec<u8>> {
        let p = Path::new(path.as_str());
        self.with_rescue(p, || self.fs.read_range(p, offset, len))
            .map_err(|e| self.err("read", p, e))
    }

    fn put(&self, path: &ObjectPath, data: &[u8], mode: PutMode) -> Result<()> {
        let p = Path::new(path.as_str());
        let parent = parent_of(p);
        let tmp = self.tmp_path(p);
        let write = || self.fs.write_new(&tmp, data, true);
        let written = match write() {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.ensure_dir(parent).and_then(|()| write())
            }
            other => other,
        };
        let result = written.and_then(|()| match mode {
            PutMode::Overwrite => self.fs.rename(&tmp, p),
            PutMode::CreateNew => {
                let linked = self.fs.hard_link(&tmp, p);
                let _ = self.fs.remove_file(&tmp);
                linked
            }
        });
        if let Err(e) = result {
            // Leave no temp file behind (it may not exist if the create failed).
            let _ = self.fs.remove_file(&tmp);
            return Err(self.err("write", p, e));
        }
        self.fs
            .sync_dir(parent)
            .map_err(|e| self.err("sync directory", parent, e))
    }

    fn stat(&self, path: &ObjectPath) -> Result<Option<ObjectMeta>> {
        let p = Path::new(path.as_str());
        match self.with_rescue(p, || self.fs.metadata(p)) {
            Ok(m) if m.is_dir => Ok(None),
            Ok(m) => Ok(Some(Self::meta(&m))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("stat", p, e)),
        }
    }

    fn touch(&self, path: &ObjectPath, at: Timestamp) -> Result<()> {
        let p = Path::new(path.as_str());
        let t = SystemTime::from(at);
        self.with_rescue(p, || self.fs.set_mtime(p, t))
            .map_err(|e| self.err("touch", p, e))
    }

    fn list(
        &self,
        prefix: &ObjectPath,
        recursive: bool,
        visit: &mut dyn FnMut(ListEntry) -> Result<()>,
    ) -> Result<()> {
        self.walk(Path::new(prefix.as_str()), recursive, visit)
    }

    fn delete(&self, path: &ObjectPath) -> Result<()> {
        let p = Path::new(path.as_str());
        match self.fs.remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.err("delete", p, e)),
        }
        let parent = parent_of(p);
        self.fs
            .sync_dir(parent)
            .map_err(|e| self.err("sync directory", parent, e))
    }

    fn delete_if_older(&self, path: &ObjectPath, cutoff: Timestamp) -> Result<ConditionalDelete> {
        let p = Path::new(path.as_str());
        let trash = with_suffix(p, TRASH_SUFFIX);
        let before = match self.fs.metadata(p) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ConditionalDelete::Missing),
            Err(e) => return Err(self.err("stat", p, e)),
        };
        if to_timestamp(before.mtime) >= cutoff {
            return Ok(ConditionalDelete::Kept {
                modified: to_timestamp(before.mtime),
            });
        }
        match self.fs.rename(p, &trash) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ConditionalDelete::Missing),
            Err(e) => return Err(self.err("delete", p, e)),
        }
        // Re-check after the rename: a touch that landed before it is visible now; one after it
        // finds the name gone and links the trash back (see `rescue`).
        let after = match self.fs.metadata(&trash) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(ConditionalDelete::Kept {
                    modified: to_timestamp(before.mtime),
                });
            }
            Err(e) => return Err(self.err("stat", &trash, e)),
        };
        if to_timestamp(after.mtime) >= cutoff {
            self.rescue(p);
            return Ok(ConditionalDelete::Kept {
                modified: to_timestamp(after.mtime),
            });
        }
        match self.fs.remove_file(&trash) {
            Ok(()) => Ok(ConditionalDelete::Deleted { size: after.len }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ConditionalDelete::Kept {
                modified: to_timestamp(after.mtime),
            }),
            Err(e) => {
                // Could not unlink the trash name: put the object back rather than hide it.
                self.rescue(p);
                Err(self.err("delete", p, e))
            }
        }
    }

    fn delete_prefix(&self, prefix: &ObjectPath) -> Result<()> {
        let p = Path::new(prefix.as_str());
        self.remove_tree(p)?;
        let parent = parent_of(p);
        match self.fs.sync_dir(parent) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err("sync directory", parent, e)),
        }
    }

    fn create_root(&self) -> Result<()> {
        match self.fs.metadata(Path::new("")) {
            Ok(m) if m.is_dir => Ok(()),
            Ok(_) => Err(Error::InvalidArgument(format!(
                "{} is not a directory",
                self.fs.describe()
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self
                .fs
                .create_root()
                .map_err(|e| self.err("create directory", Path::new(""), e)),
            Err(e) => Err(self.err("stat", Path::new(""), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> ObjectPath {
        ObjectPath::new(s).unwrap()
    }

    #[test]
    fn put_get_stat_list_delete() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        b.put(&path("a/b/c"), b"hello", PutMode::Overwrite).unwrap();
        assert_eq!(b.get(&path("a/b/c")).unwrap(), b"hello");
        assert_eq!(b.get_range(&path("a/b/c"), 1, 3).unwrap(), b"ell");
        assert_eq!(b.stat(&path("a/b/c")).unwrap().unwrap().size, 5);
        assert!(b.stat(&path("a/b/x")).unwrap().is_none());
        assert!(matches!(
            b.put(&path("a/b/c"), b"x", PutMode::CreateNew),
            Err(Error::AlreadyExists { .. })
        ));
        b.put(&path("a/b/c"), b"world", PutMode::Overwrite).unwrap();
        assert_eq!(b.get(&path("a/b/c")).unwrap(), b"world");
        let mut seen = Vec::new();
        b.list(&path("a"), true, &mut |e| {
            seen.push(e);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen.len(), 1);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("a/b")).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left");
        b.delete(&path("a/b/c")).unwrap();
        b.delete(&path("a/b/c")).unwrap();
        assert!(matches!(b.get(&path("a/b/c")), Err(Error::NotFound { .. })));
    }

    #[test]
    fn delete_if_older_respects_touch_and_trash_is_rescued() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBackend::new(dir.path());
        let p = path("c/x");
        b.put(&p, b"data", PutMode::Overwrite).unwrap();
        let t0: Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
        let cutoff: Timestamp = "2021-01-01T00:00:00Z".parse().unwrap();
        b.touch(&p, cutoff).unwrap();
        assert!(matches!(
            b.delete_if_older(&p, cutoff).unwrap(),
            ConditionalDelete::Kept { .. }
        ));
        b.touch(&p, t0).unwrap();
        // A GC that died after renaming to trash: the next access restores the object.
        std::fs::rename(dir.path().join("c/x"), dir.path().join("c/x.trash")).unwrap();
        assert_eq!(b.get(&p).unwrap(), b"data");
        assert!(!dir.path().join("c/x.trash").exists());
        assert_eq!(
            b.delete_if_older(&p, cutoff).unwrap(),
            ConditionalDelete::Deleted { size: 4 }
        );
        assert_eq!(
            b.delete_if_older(&p, cutoff).unwrap(),
            ConditionalDelete::Missing
        );
        assert!(matches!(b.touch(&p, cutoff), Err(Error::NotFound { .. })));
    }
}
