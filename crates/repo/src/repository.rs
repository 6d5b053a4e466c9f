//! [`Repository`]: create or open a repository and reach everything in it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use rand::RngCore;

use crate::backend::{Backend, ListEntry, LocalBackend, PutMode};
use crate::chunk::ChunkCodec;
use crate::chunk_store::ChunkStore;
use crate::clock::{Clock, SystemClock};
use crate::config::{EncryptionConfig, RepoConfig};
use crate::digest::{ChunkDigest, Sha256, Sha256Hasher};
use crate::error::{Error, Result};
use crate::fixed_index::FixedIndexReader;
use crate::format::{
    DEFAULT_CHUNK_SIZE, DEFAULT_COMPRESSION_LEVEL, DEFAULT_GC_GRACE_SECS, DEFAULT_LOCK_STALE_SECS,
    MANIFEST_FILE, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE, REPO_FORMAT_NAME, REPO_FORMAT_VERSION,
};
use crate::id::{BackupId, VmKey};
use crate::key::RepoKey;
use crate::layout;
use crate::lock::{LockGuard, LockInfo, LockManager, LockOwner, LockSettings};
use crate::manifest::Manifest;
use crate::parallel::ordered_map;
use crate::reader::BackupReader;
use crate::writer::BackupWriter;

/// Options of [`Repository::init`].
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Chunk size in bytes: a power of two between 4 KiB and 64 MiB (default 4 MiB).
    pub chunk_size: u32,
    /// zstd level (default 3; 0 stores chunks uncompressed).
    pub compression_level: i32,
    /// Encrypt with this key (the caller stores the key file, outside the repository).
    pub key: Option<RepoKey>,
    /// GC grace period recorded in `repo.json`.
    pub gc_grace: Duration,
    /// Lock staleness recorded in `repo.json`.
    pub lock_stale: Duration,
    /// The repository id (default: a new random one). A caller that must store the key file
    /// under the id before the repository exists takes one from [`Repository::new_id`].
    pub id: Option<String>,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            chunk_size: DEFAULT_CHUNK_SIZE,
            compression_level: DEFAULT_COMPRESSION_LEVEL,
            key: None,
            gc_grace: Duration::from_secs(DEFAULT_GC_GRACE_SECS),
            lock_stale: Duration::from_secs(DEFAULT_LOCK_STALE_SECS),
            id: None,
        }
    }
}

/// Options of [`Repository::open`].
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// The key, required for an encrypted repository.
    pub key: Option<RepoKey>,
    /// The clock (tests pass a [`crate::ManualClock`]).
    pub clock: Arc<dyn Clock>,
    /// Renew locks from a background thread (off in deterministic tests, which renew
    /// explicitly).
    pub background_heartbeat: bool,
    /// Overrides the identity written into locks (tests simulate other hosts).
    pub owner: Option<LockOwner>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            key: None,
            clock: Arc::new(SystemClock),
            background_heartbeat: true,
            owner: None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) config: RepoConfig,
    pub(crate) store: ChunkStore,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) locks: LockManager,
}

/// An open repository. Cheap to clone (shared inside); safe to use from many threads.
#[derive(Debug, Clone)]
pub struct Repository {
    pub(crate) inner: Arc<Inner>,
}

/// Committed and partial backups found in the repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackupListing {
    /// Backups with a manifest, sorted by VM and time.
    pub committed: Vec<BackupId>,
    /// Backup directories without a manifest (being written, or left by a crash).
    pub partial: Vec<BackupId>,
    /// Entries under `backups/` that are not `<vm-key>/<timestamp>` directories (left by a
    /// person or another tool). GC refuses to run while there are any: they might hold
    /// references.
    pub unrecognized: Vec<String>,
}

impl Repository {
    /// Creates a repository in an empty storage location.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for bad options or a non-empty location, I/O errors.
    pub fn init(
        backend: Arc<dyn Backend>,
        options: &InitOptions,
        open: OpenOptions,
    ) -> Result<Repository> {
        let cs = options.chunk_size;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&cs) || !cs.is_power_of_two() {
            return Err(Error::InvalidArgument(format!(
                "chunk size {cs} must be a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}"
            )));
        }
        if !(0..=22).contains(&options.compression_level) {
            return Err(Error::InvalidArgument(format!(
                "compression level {} must be between 0 and 22",
                options.compression_level
            )));
        }
        backend.create_root()?;
        let existing = existing_entries(backend.as_ref())?;
        if !existing.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{} already holds a repository (found {})",
                backend.location(),
                existing.join(", ")
            )));
        }
        let id = match &options.id {
            Some(id) if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                id.to_ascii_lowercase()
            }
            Some(id) => {
                return Err(Error::InvalidArgument(format!(
                    "repository id {id:?} must be 32 hex digits"
                )));
            }
            None => Repository::new_id(),
        };
        let encryption = options.key.as_ref().map(|k| EncryptionConfig {
            algorithm: "aes-256-gcm".into(),
            chunk_id: "hmac-sha256".into(),
            key_fingerprint: k.fingerprint(&id),
        });
        let config = RepoConfig {
            format: REPO_FORMAT_NAME.into(),
            version: REPO_FORMAT_VERSION,
            id,
            created: open.clock.now(),
            chunk_size: cs,
            compression_level: options.compression_level,
            chunk_digest: if encryption.is_some() {
                "hmac-sha256".into()
            } else {
                "sha256".into()
            },
            encryption,
            gc_grace_secs: options.gc_grace.as_secs(),
            lock_stale_secs: options.lock_stale.as_secs().max(1),
        };
        backend.put(&layout::config(), &config.to_bytes()?, PutMode::CreateNew)?;
        let open = OpenOptions {
            key: options.key.clone(),
            ..open
        };
        Repository::open(backend, open)
    }

    /// A fresh random repository id (32 hex digits).
    #[must_use]
    pub fn new_id() -> String {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        hex::encode(id)
    }

    /// Creates a repository in directory `dir` (created if missing).
    ///
    /// # Errors
    /// As [`Repository::init`].
    pub fn init_local(dir: &Path, options: &InitOptions) -> Result<Repository> {
        Repository::init(
            Arc::new(LocalBackend::new(dir)),
            options,
            OpenOptions::default(),
        )
    }

    /// Reads `repo.json` without opening the repository (to find its id and key file).
    ///
    /// # Errors
    /// [`Error::ConfigInvalid`] when it is missing or damaged.
    pub fn read_config(backend: &dyn Backend) -> Result<RepoConfig> {
        match backend.get(&layout::config()) {
            Ok(bytes) => RepoConfig::parse(&bytes),
            Err(Error::NotFound { .. }) => Err(Error::ConfigInvalid {
                path: format!("{}/repo.json", backend.location()),
                reason: "not found: not a vbm repository (run `vbm repo init`)".into(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Opens a repository.
    ///
    /// # Errors
    /// [`Error::WrongKey`] / [`Error::InvalidArgument`] for a missing key of an encrypted
    /// repository, [`Error::UnsupportedFormat`], I/O errors.
    pub fn open(backend: Arc<dyn Backend>, options: OpenOptions) -> Result<Repository> {
        let config = Repository::read_config(backend.as_ref())?;
        let key = match (&config.encryption, options.key) {
            (Some(enc), Some(key)) => {
                let found = key.fingerprint(&config.id);
                if found != enc.key_fingerprint {
                    return Err(Error::WrongKey {
                        repo_id: config.id.clone(),
                        expected: enc.key_fingerprint.clone(),
                        found,
                    });
                }
                Some(key)
            }
            (Some(_), None) => {
                return Err(Error::InvalidArgument(format!(
                    "repository {} is encrypted: a key is required",
                    config.id
                )));
            }
            (None, Some(_)) => {
                tracing::warn!(repo = %config.id, "repository is not encrypted; ignoring the key");
                None
            }
            (None, None) => None,
        };
        let codec = ChunkCodec::new(config.compression_level, key.as_ref());
        let stale_after = Duration::from_secs(config.lock_stale_secs.max(1));
        let heartbeat_interval = options
            .background_heartbeat
            .then(|| (stale_after / 8).clamp(Duration::from_millis(100), Duration::from_secs(60)));
        let locks = LockManager::new(
            backend.clone(),
            options.clock.clone(),
            LockSettings {
                stale_after,
                heartbeat_interval,
                owner: options.owner.unwrap_or_else(LockOwner::current),
            },
        );
        Ok(Repository {
            inner: Arc::new(Inner {
                store: ChunkStore::new(backend.clone(), codec),
                backend,
                config,
                clock: options.clock,
                locks,
            }),
        })
    }

    /// Opens the repository in directory `dir`. For an encrypted repository the key is read
    /// from `key_file`, or else from the default location (see [`crate::default_key_path`]).
    ///
    /// # Errors
    /// [`Error::KeyMissing`] naming the expected key file, [`Error::WrongKey`], and as
    /// [`Repository::open`].
    pub fn open_local(dir: &Path, key_file: Option<&Path>) -> Result<Repository> {
        let backend: Arc<dyn Backend> = Arc::new(LocalBackend::new(dir));
        let key = Repository::load_key(backend.as_ref(), key_file)?;
        Repository::open(
            backend,
            OpenOptions {
                key,
                ..OpenOptions::default()
            },
        )
    }

    /// Loads the key an encrypted repository needs (`None` for an unencrypted one).
    ///
    /// # Errors
    /// [`Error::KeyMissing`], [`Error::KeyFile`].
    pub fn load_key(backend: &dyn Backend, key_file: Option<&Path>) -> Result<Option<RepoKey>> {
        let config = Repository::read_config(backend)?;
        if config.encryption.is_none() {
            return Ok(None);
        }
        let path: PathBuf = match key_file {
            Some(p) => p.to_owned(),
            None => crate::key::default_key_path(&config.id, |k| std::env::var_os(k)).ok_or_else(
                || Error::KeyMissing {
                    repo_id: config.id.clone(),
                    expected: PathBuf::from(format!("$VBM_KEY_DIR/{}.key", config.id)),
                },
            )?,
        };
        match RepoKey::load(&path) {
            Ok(k) => Ok(Some(k)),
            Err(Error::NotFound { .. }) => Err(Error::KeyMissing {
                repo_id: config.id,
                expected: path,
            }),
            Err(e) => Err(e),
        }
    }

    /// `repo.json`.
    #[must_use]
    pub fn config(&self) -> &RepoConfig {
        &self.inner.config
    }

    /// The repository id.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.inner.config.id
    }

    /// The chunk size set at `init`.
    #[must_use]
    pub fn chunk_size(&self) -> u32 {
        self.inner.config.chunk_size
    }

    /// Whether chunks and blobs are encrypted.
    #[must_use]
    pub fn is_encrypted(&self) -> bool {
        self.inner.config.encryption.is_some()
    }

    /// The storage backend.
    #[must_use]
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The chunk digest `plain` would be stored under.
    #[must_use]
    pub fn chunk_digest(&self, plain: &[u8]) -> ChunkDigest {
        self.inner.store.digest_of(plain)
    }

    /// Starts writing a backup of `vm`. Its id is `<vm>/<started_at>`, moved on by a second
    /// while that id is taken (the clock may repeat itself or go backwards).
    ///
    /// # Errors
    /// [`Error::ReadOnly`] / [`Error::NoSpace`] when the repository cannot be written (the lock
    /// is the first write), I/O errors.
    pub fn start_backup(&self, vm: &VmKey, started_at: Timestamp) -> Result<BackupWriter> {
        let mut id = BackupId::new(vm.clone(), started_at)?;
        for _ in 0..100_000 {
            let now = self.inner.clock.now();
            match self.inner.locks.backup(&id, now) {
                Ok(guard) => {
                    if self.dir_is_empty(&id)? {
                        return BackupWriter::new(self.clone(), id, now, guard);
                    }
                    guard.release()?;
                }
                Err(Error::LockConflict { .. }) => {}
                Err(e) => return Err(e),
            }
            id = id.next_second()?;
        }
        Err(Error::InvalidArgument(format!(
            "no free backup id for VM {vm}"
        )))
    }

    fn dir_is_empty(&self, id: &BackupId) -> Result<bool> {
        let mut empty = true;
        self.inner
            .backend
            .list(&layout::backup_dir(id), true, &mut |_| {
                empty = false;
                Ok(())
            })?;
        Ok(empty)
    }

    /// Lists committed and partial backups (two directory levels; manifests are stat'ed, not
    /// read).
    ///
    /// # Errors
    /// I/O errors (the listing is complete or an error).
    pub fn list_backups(&self) -> Result<BackupListing> {
        let backend = &self.inner.backend;
        let mut vms = Vec::new();
        let mut listing = BackupListing::default();
        backend.list(&layout::backups_dir(), false, &mut |e| {
            match e {
                ListEntry::Prefix(p) => vms.push(p.file_name().to_owned()),
                ListEntry::Object { path, .. } => listing.unrecognized.push(path.to_string()),
            }
            Ok(())
        })?;
        for vm in vms {
            let Ok(vm) = VmKey::new(vm.clone()) else {
                listing.unrecognized.push(format!("backups/{vm}"));
                continue;
            };
            let mut times = Vec::new();
            backend.list(&layout::vm_dir(&vm), false, &mut |e| {
                match e {
                    ListEntry::Prefix(p) => times.push(p.file_name().to_owned()),
                    ListEntry::Object { path, .. } => {
                        listing.unrecognized.push(path.to_string());
                    }
                }
                Ok(())
            })?;
            for t in times {
                let Ok(time) = BackupId::parse_time(&t) else {
                    listing.unrecognized.push(format!("backups/{vm}/{t}"));
                    continue;
                };
                let id = BackupId::new(vm.clone(), time)?;
                let mut has_manifest = false;
                backend.list(&layout::backup_dir(&id), false, &mut |e| {
                    if let ListEntry::Object { path, .. } = e
                        && path.file_name() == MANIFEST_FILE
                    {
                        has_manifest = true;
                    }
                    Ok(())
                })?;
                if has_manifest {
                    listing.committed.push(id);
                } else {
                    listing.partial.push(id);
                }
            }
        }
        listing.committed.sort();
        listing.partial.sort();
        listing.unrecognized.sort();
        Ok(listing)
    }

    /// Reads and parses a backup's manifest.
    ///
    /// # Errors
    /// [`Error::BackupNotFound`], [`Error::ManifestCorrupt`], [`Error::UnsupportedFormat`].
    pub fn read_manifest(&self, id: &BackupId) -> Result<Manifest> {
        let bytes = match self.inner.backend.get(&layout::manifest(id)) {
            Ok(b) => b,
            Err(Error::NotFound { .. }) => return Err(Error::BackupNotFound(id.to_string())),
            Err(e) => return Err(e),
        };
        Manifest::parse(id, &bytes)
    }

    /// Opens a committed backup for reading.
    ///
    /// # Errors
    /// As [`Repository::read_manifest`].
    pub fn open_backup(&self, id: &BackupId) -> Result<BackupReader> {
        let manifest = self.read_manifest(id)?;
        Ok(BackupReader::new(self.clone(), id.clone(), manifest))
    }

    /// Takes a read lock on a backup so that prune keeps it while a restore runs.
    ///
    /// # Errors
    /// I/O errors (e.g. [`Error::ReadOnly`] on a read-only repository: restore may proceed
    /// without the lock then).
    pub fn lock_backup_for_read(&self, id: &BackupId) -> Result<LockGuard> {
        self.inner.locks.read_lock(id)
    }

    /// Reads a chunk of `len` plain bytes, verified against its digest (zeros synthesised).
    ///
    /// # Errors
    /// [`Error::ChunkMissing`], [`Error::ChunkCorrupt`] naming the digest; I/O errors.
    pub fn read_chunk(&self, digest: &ChunkDigest, len: usize) -> Result<Vec<u8>> {
        self.inner.store.read(digest, len)
    }

    /// [`Repository::read_chunk`] without recomputing the content digest (header, CRC32,
    /// authentication and length are still checked): for readers that compare a digest over the
    /// whole file they read, like restore.
    ///
    /// # Errors
    /// As [`Repository::read_chunk`].
    pub fn read_chunk_unhashed(&self, digest: &ChunkDigest, len: usize) -> Result<Vec<u8>> {
        self.inner.store.read_unhashed(digest, len)
    }

    /// Whether a usable chunk file exists (without reading it).
    ///
    /// # Errors
    /// I/O errors.
    pub fn has_chunk(&self, digest: &ChunkDigest) -> Result<bool> {
        Ok(digest.is_zero() || self.inner.store.stat(digest)?.is_some())
    }

    /// SHA-256 of the file an index describes, decoding chunks on `threads` threads (for the
    /// manifest of an incremental backup, whose unchanged areas were never read from the source).
    ///
    /// # Errors
    /// Chunk errors naming the digest.
    pub fn file_sha256(&self, index: &FixedIndexReader, threads: usize) -> Result<Sha256> {
        let mut hasher = Sha256Hasher::new();
        let positions: Vec<u64> = (0..index.chunk_count()).collect();
        ordered_map(
            &positions,
            threads,
            |&pos| {
                let len = usize::try_from(index.chunk_len(pos)).unwrap_or(0);
                if index.is_zero(pos) {
                    Ok(None)
                } else {
                    self.read_chunk(&index.digest(pos), len).map(Some)
                }
            },
            |pos, data: Result<Option<Vec<u8>>>| {
                match data? {
                    Some(d) => hasher.update(&d),
                    None => hasher.update_zeros(index.chunk_len(positions[pos])),
                }
                Ok(())
            },
        )?;
        Ok(hasher.finish())
    }

    /// Every lock with its staleness.
    ///
    /// # Errors
    /// I/O errors.
    pub fn locks(&self) -> Result<Vec<LockInfo>> {
        self.inner.locks.list()
    }
}

/// Names of this format's top-level entries that already exist.
fn existing_entries(backend: &dyn Backend) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for top in [
        crate::format::REPO_CONFIG_FILE,
        crate::format::CHUNKS_DIR,
        crate::format::BACKUPS_DIR,
        crate::format::LOCKS_DIR,
    ] {
        let p = crate::backend::ObjectPath::trusted(top.into());
        let mut found = backend.stat(&p)?.is_some();
        if !found {
            backend.list(&p, false, &mut |_| {
                found = true;
                Ok(())
            })?;
        }
        if found {
            names.push(top.to_owned());
        }
    }
    Ok(names)
}
