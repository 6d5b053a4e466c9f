//! Storage backends: the narrow, synchronous interface the repository stores objects through.
//!
//! The trait is shaped so that object stores (S3, Azure Blob) implement it without rename or
//! append: every write is "put a whole object atomically", existence and age come from metadata
//! without reading data, and listings are complete or fail. Callers that need parallelism use
//! threads; every method may block.
//!
//! Implementations: [`LocalBackend`] (any directory: local disk, NFS), optionally over a
//! [`CrashFs`] that simulates power loss for tests.

mod crash;
mod fs;
mod local;

use std::fmt::{self, Debug};

use jiff::Timestamp;

use crate::error::{Error, Result};

pub use crash::{CrashFs, CrashKind, CrashPlan, CrashTrigger};
pub use fs::{Fs, FsDirEntry, FsMeta, FsSpace, StdFs};
pub use local::LocalBackend;

/// A validated object path relative to the repository root: `/`-separated components of
/// `[A-Za-z0-9._@+-]`, none empty, `.` or `..`. Storage paths are built only from internal ids,
/// never from user-visible names (FAULT-MATRIX I3).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectPath(String);

impl ObjectPath {
    /// Validates `path`.
    ///
    /// # Errors
    /// [`Error::InvalidName`] when a component is empty, `.`/`..`, or has other characters.
    pub fn new(path: impl Into<String>) -> Result<ObjectPath> {
        let path = path.into();
        let bad = |reason| Error::InvalidName {
            what: "object path",
            value: path.chars().take(200).collect(),
            reason,
        };
        if path.is_empty() || path.len() > 1024 {
            return Err(bad("empty or longer than 1024 bytes"));
        }
        for c in path.split('/') {
            if c.is_empty() || c == "." || c == ".." {
                return Err(bad("empty, '.' or '..' component"));
            }
            if !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'+' | b'-'))
            {
                return Err(bad("characters outside [A-Za-z0-9._@+-]"));
            }
        }
        Ok(ObjectPath(path))
    }

    /// The path as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `self/child` (child may contain `/`).
    ///
    /// # Errors
    /// When the result is not a valid path.
    pub fn join(&self, child: &str) -> Result<ObjectPath> {
        ObjectPath::new(format!("{}/{child}", self.0))
    }

    /// The last component.
    #[must_use]
    pub fn file_name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or(&self.0)
    }

    /// Everything before the last component, if any.
    #[must_use]
    pub fn parent(&self) -> Option<ObjectPath> {
        self.0
            .rsplit_once('/')
            .map(|(parent, _)| ObjectPath(parent.to_owned()))
    }

    /// A path built from validated ids and constants (checked in debug builds only).
    pub(crate) fn trusted(s: String) -> ObjectPath {
        debug_assert!(
            ObjectPath::new(s.clone()).is_ok(),
            "invalid storage path {s:?}"
        );
        ObjectPath(s)
    }

    /// `self` with `suffix` appended to the last component (suffixes are internal constants).
    pub(crate) fn with_suffix(&self, suffix: &str) -> ObjectPath {
        ObjectPath(format!("{}{suffix}", self.0))
    }
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Debug for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectPath({:?})", self.0)
    }
}

/// Metadata of a stored object, obtained without reading its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes.
    pub size: u64,
    /// Last modification (set by [`Backend::touch`] or by the write).
    pub modified: Timestamp,
}

/// How [`Backend::put`] treats an existing object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutMode {
    /// Replace it atomically (readers see the old or the new object, never a mix).
    Overwrite,
    /// Fail with [`Error::AlreadyExists`] if it exists (create-exclusive: locks, manifests).
    CreateNew,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListEntry {
    /// An object, with its metadata.
    Object {
        /// Full path.
        path: ObjectPath,
        /// Size and modification time.
        meta: ObjectMeta,
    },
    /// A common prefix ("directory"), only in non-recursive listings.
    Prefix(ObjectPath),
}

/// The outcome of [`Backend::delete_if_older`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConditionalDelete {
    /// The object was older than the cutoff and is gone; `size` bytes were freed.
    Deleted {
        /// Size of the deleted object.
        size: u64,
    },
    /// The object was touched at or after the cutoff (possibly during the call) and was kept.
    Kept {
        /// Its modification time as last seen.
        modified: Timestamp,
    },
    /// The object did not exist.
    Missing,
}

/// Where the repository's objects live. All methods block; all are safe to call from many
/// threads at once.
///
/// # Contract
/// - `put` stores a whole object atomically and durably: when it returns `Ok`, a crash or power
///   loss leaves either the complete new object or (on error) the previous state — never a
///   partial object. There is no append and no rename in this interface.
/// - `get`, `get_range` and `stat` never return partial data of an object being replaced.
/// - `list` reports **every** object under the prefix or returns an error. A partial listing
///   must never be returned as success (GC deletes what a listing does not show as referenced).
/// - `delete` is idempotent (deleting a missing object is `Ok`) and durable when it returns.
/// - `touch` and `delete_if_older` are linearizable with respect to each other: either the touch
///   happens first and the delete keeps the object, or the delete wins and the touch reports
///   [`Error::NotFound`]. This is what lets GC run while backups reference old chunks.
/// - Permanent errors (damage, permissions) are distinguished from temporary ones via
///   [`Error::is_retryable`]; retry decorators ask, they never match strings.
pub trait Backend: Send + Sync + Debug {
    /// Human-readable location for messages ("/srv/vbm-repo").
    fn location(&self) -> String;

    /// The whole object.
    ///
    /// # Errors
    /// [`Error::NotFound`] if it does not exist, I/O errors otherwise.
    fn get(&self, path: &ObjectPath) -> Result<Vec<u8>>;

    /// `len` bytes from `offset` (fewer at the end of the object).
    ///
    /// # Errors
    /// As [`Backend::get`].
    fn get_range(&self, path: &ObjectPath, offset: u64, len: u64) -> Result<Vec<u8>>;

    /// Stores `data` as the whole object, atomically and durably.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] for [`PutMode::CreateNew`] on an existing object,
    /// [`Error::NoSpace`], [`Error::ReadOnly`], I/O errors.
    fn put(&self, path: &ObjectPath, data: &[u8], mode: PutMode) -> Result<()>;

    /// Size and modification time, or `None` if the object does not exist. Does not read data.
    ///
    /// # Errors
    /// I/O errors other than "not found".
    fn stat(&self, path: &ObjectPath) -> Result<Option<ObjectMeta>>;

    /// Sets the object's modification time to `at` (object stores may use their own clock, at
    /// least as late as the call).
    ///
    /// # Errors
    /// [`Error::NotFound`] if the object does not exist (or a concurrent
    /// [`Backend::delete_if_older`] won).
    fn touch(&self, path: &ObjectPath, at: Timestamp) -> Result<()>;

    /// Calls `visit` for every object under `prefix` (recursive), or for the direct children
    /// (objects and [`ListEntry::Prefix`]es) when `recursive` is false. A missing prefix lists
    /// nothing. Complete or error, never silently partial.
    ///
    /// # Errors
    /// I/O errors, or the first error returned by `visit` (which stops the listing).
    fn list(
        &self,
        prefix: &ObjectPath,
        recursive: bool,
        visit: &mut dyn FnMut(ListEntry) -> Result<()>,
    ) -> Result<()>;

    /// Deletes the object; `Ok` if it did not exist.
    ///
    /// # Errors
    /// [`Error::ReadOnly`] (immutable object or read-only store), I/O errors.
    fn delete(&self, path: &ObjectPath) -> Result<()>;

    /// Deletes the object only if its modification time is before `cutoff`, atomically with
    /// respect to [`Backend::touch`]. Durability of the deletion is not required (resurrected
    /// garbage is harmless).
    ///
    /// # Errors
    /// [`Error::ReadOnly`] (immutable object or read-only store), I/O errors.
    fn delete_if_older(&self, path: &ObjectPath, cutoff: Timestamp) -> Result<ConditionalDelete>;

    /// Deletes every object under `prefix` (and, on file systems, the emptied directories).
    /// Idempotent; not atomic.
    ///
    /// # Errors
    /// As [`Backend::delete`] and [`Backend::list`].
    fn delete_prefix(&self, prefix: &ObjectPath) -> Result<()>;

    /// Prepares the storage for a new repository (creates the root directory).
    ///
    /// # Errors
    /// I/O errors.
    fn create_root(&self) -> Result<()>;
}

/// Lists every object under `prefix` into a vector (for small prefixes such as one backup).
///
/// # Errors
/// As [`Backend::list`].
pub fn list_objects(
    backend: &dyn Backend,
    prefix: &ObjectPath,
) -> Result<Vec<(ObjectPath, ObjectMeta)>> {
    let mut out = Vec::new();
    backend.list(prefix, true, &mut |e| {
        if let ListEntry::Object { path, meta } = e {
            out.push((path, meta));
        }
        Ok(())
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_paths_are_strict() {
        assert!(ObjectPath::new("chunks/ab/cd/abcd").is_ok());
        assert!(ObjectPath::new("locks/backup@vm-1@2026-01-01T000000Z.lock").is_ok());
        for bad in [
            "", "/abs", "a//b", "a/../b", "..", ".", "a/./b", "a\\b", "a b", "é", "a\0b", "a/",
        ] {
            assert!(ObjectPath::new(bad).is_err(), "{bad:?}");
        }
        let p = ObjectPath::new("a/b/c").unwrap();
        assert_eq!(p.file_name(), "c");
        assert_eq!(p.parent().unwrap().as_str(), "a/b");
        assert!(ObjectPath::new("a").unwrap().parent().is_none());
    }
}
