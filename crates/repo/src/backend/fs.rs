//! The file-system operations [`super::LocalBackend`] is built from, as a trait so that a
//! simulated file system ([`super::CrashFs`]) can stand in for the real one in power-loss tests.
//! Paths are relative to the backend's root; the empty path is the root itself.

use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Metadata of a file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsMeta {
    /// Length in bytes (0 for directories).
    pub len: u64,
    /// Modification time.
    pub mtime: SystemTime,
    /// Whether this is a directory.
    pub is_dir: bool,
}

/// A directory entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsDirEntry {
    /// The entry's name (non-UTF-8 bytes replaced: such a name cannot be ours).
    pub name: String,
    /// Whether it is a directory.
    pub is_dir: bool,
}

/// Free space of the file system, for precise "disk full" messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    /// Bytes available to unprivileged users.
    pub free_bytes: u64,
    /// Inodes available to unprivileged users.
    pub free_inodes: u64,
}

/// The primitive operations of a POSIX-like file system, with explicit durability points.
pub trait Fs: Send + Sync + Debug {
    /// Where the root is, for messages.
    fn describe(&self) -> String;
    /// Reads a whole file.
    ///
    /// # Errors
    /// I/O errors (`NotFound` when missing).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads up to `len` bytes at `offset`.
    ///
    /// # Errors
    /// I/O errors.
    fn read_range(&self, path: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>>;
    /// Metadata (follows no symlinks; `NotFound` when missing).
    ///
    /// # Errors
    /// I/O errors.
    fn metadata(&self, path: &Path) -> io::Result<FsMeta>;
    /// Creates a new file (failing if it exists), writes `data`, and if `sync` flushes its data
    /// to stable storage before returning.
    ///
    /// # Errors
    /// I/O errors.
    fn write_new(&self, path: &Path, data: &[u8], sync: bool) -> io::Result<()>;
    /// Renames a file, replacing the target.
    ///
    /// # Errors
    /// I/O errors.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Creates a hard link; `AlreadyExists` if `to` exists.
    ///
    /// # Errors
    /// I/O errors.
    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes a file.
    ///
    /// # Errors
    /// I/O errors.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory level.
    ///
    /// # Errors
    /// I/O errors (`AlreadyExists`, `NotFound` for a missing parent).
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    ///
    /// # Errors
    /// I/O errors.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// Makes the directory's entries durable (fsync on the directory).
    ///
    /// # Errors
    /// I/O errors.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Lists a directory.
    ///
    /// # Errors
    /// I/O errors.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<FsDirEntry>>;
    /// Sets the modification time.
    ///
    /// # Errors
    /// I/O errors.
    fn set_mtime(&self, path: &Path, mtime: SystemTime) -> io::Result<()>;
    /// Free space, if the file system can tell.
    fn space(&self) -> Option<FsSpace>;
    /// Creates the root directory (and its ancestors) if missing.
    ///
    /// # Errors
    /// I/O errors.
    fn create_root(&self) -> io::Result<()>;
}

/// The real file system under a root directory.
#[derive(Debug, Clone)]
pub struct StdFs {
    root: PathBuf,
}

impl StdFs {
    /// A file system rooted at `root`.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> StdFs {
        StdFs { root: root.into() }
    }

    fn full(&self, path: &Path) -> PathBuf {
        if path.as_os_str().is_empty() {
            self.root.clone()
        } else {
            self.root.join(path)
        }
    }
}

impl Fs for StdFs {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(self.full(path))
    }

    fn read_range(&self, path: &Path, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let mut f = File::open(self.full(path))?;
        f.seek(SeekFrom::Start(offset))?;
        let mut out = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(1 << 26));
        f.take(len).read_to_end(&mut out)?;
        Ok(out)
    }

    fn metadata(&self, path: &Path) -> io::Result<FsMeta> {
        let m = fs::symlink_metadata(self.full(path))?;
        Ok(FsMeta {
            len: m.len(),
            mtime: m.modified()?,
            is_dir: m.is_dir(),
        })
    }

    fn write_new(&self, path: &Path, data: &[u8], sync: bool) -> io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.full(path))?;
        f.write_all(data)?;
        if sync {
            // fdatasync: the data and the size needed to read it back; the name is made durable
            // by the caller's directory sync after the rename.
            f.sync_data()?;
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(self.full(from), self.full(to))
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::hard_link(self.full(from), self.full(to))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(self.full(path))
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(self.full(path))
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        fs::remove_dir(self.full(path))
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(self.full(path))?.sync_all()
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<FsDirEntry>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(self.full(path))? {
            let entry = entry?;
            // Lossy: a non-UTF-8 name then fails path validation and the listing errors out
            // instead of silently leaving it out.
            out.push(FsDirEntry {
                name: entry.file_name().to_string_lossy().into_owned(),
                is_dir: entry.file_type()?.is_dir(),
            });
        }
        Ok(out)
    }

    fn set_mtime(&self, path: &Path, mtime: SystemTime) -> io::Result<()> {
        // Opening for write would fail on immutable files and update ctime needlessly; a
        // read-only handle may set times on Linux when we own the file (utimensat on the fd).
        let f = File::options().read(true).open(self.full(path))?;
        f.set_modified(mtime)
    }

    fn space(&self) -> Option<FsSpace> {
        let s = rustix::fs::statvfs(&self.root).ok()?;
        Some(FsSpace {
            free_bytes: s.f_bavail.saturating_mul(s.f_frsize),
            free_inodes: s.f_favail,
        })
    }

    fn create_root(&self) -> io::Result<()> {
        fs::create_dir_all(&self.root)
    }
}
