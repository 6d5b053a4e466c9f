//! Test helpers: a mini "engine" that writes backups the way vbm-engine does (chunks in
//! parallel, a fixed index per disk, blobs for small files, manifest last), deterministic data
//! (FAULT-MATRIX H7), and invariant checks (H6 INV-1, INV-5).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use vbm_repo::backend::{CrashFs, LocalBackend};
use vbm_repo::verify::{VerifyMode, VerifyOptions, VerifyReport, verify};
use vbm_repo::{
    BackupId, BackupMode, BackupWriter, BlobWriter, Cancel, FileKind, FileName, InitOptions,
    Manifest, ManifestDisk, ManifestFile, ManualClock, OpenOptions, RepoKey, Repository, Sha256,
    VmKey,
};

/// Chunk size used by tests: small so that a few hundred KiB make many chunks.
pub(crate) const CS: u32 = 64 * 1024;

pub(crate) fn t0() -> Timestamp {
    "2026-11-27T03:31:14Z".parse().unwrap()
}

pub(crate) fn vm(s: &str) -> VmKey {
    VmKey::new(s).unwrap()
}

pub(crate) fn secs(n: i64) -> SignedDuration {
    SignedDuration::from_secs(n)
}

/// xorshift64*: deterministic, incompressible bytes.
pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Compressible text-like bytes.
pub(crate) fn text_bytes(len: usize, seed: u64) -> Vec<u8> {
    let words = [
        "vbm ", "backup ", "chunk ", "disk ", "vsphere ", "zstd ", "\n",
    ];
    let r = random_bytes(len, seed);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(words[r[i % r.len()] as usize % words.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A disk-like image: random, text, zero and repeated regions, `len` bytes.
pub(crate) fn disk_image(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let cs = CS as usize;
    let mut i = 0u64;
    while out.len() < len {
        let part = match (seed + i) % 4 {
            0 => random_bytes(cs, seed * 1000 + i),
            1 => text_bytes(cs, seed * 1000 + i),
            2 => vec![0; cs],
            _ => random_bytes(cs, 7), // shared by every image: dedups
        };
        out.extend_from_slice(&part);
        i += 1;
    }
    out.truncate(len);
    out
}

/// A repository in a temp dir with a manual clock.
pub(crate) struct TestRepo {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) repo: Repository,
    pub(crate) clock: ManualClock,
}

pub(crate) fn open_options(clock: &ManualClock, key: Option<RepoKey>) -> OpenOptions {
    OpenOptions {
        key,
        clock: Arc::new(clock.clone()),
        background_heartbeat: false,
        owner: None,
    }
}

pub(crate) fn init_options(key: Option<RepoKey>) -> InitOptions {
    InitOptions {
        chunk_size: CS,
        key,
        gc_grace: Duration::from_secs(0),
        ..InitOptions::default()
    }
}

impl TestRepo {
    pub(crate) fn new() -> TestRepo {
        TestRepo::with_key(None)
    }

    pub(crate) fn with_key(key: Option<RepoKey>) -> TestRepo {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(t0());
        let repo = Repository::init(
            Arc::new(LocalBackend::new(dir.path().join("repo"))),
            &init_options(key),
            open_options(&clock, None),
        )
        .unwrap();
        TestRepo { dir, repo, clock }
    }

    pub(crate) fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("repo")
    }

    /// Opens the same repository again (a "restart").
    pub(crate) fn reopen(&self, key: Option<RepoKey>) -> Repository {
        Repository::open(
            Arc::new(LocalBackend::new(self.root())),
            open_options(&self.clock, key),
        )
        .unwrap()
    }
}

/// A repository on a [`CrashFs`].
pub(crate) fn crash_repo(clock: &ManualClock) -> (Arc<CrashFs>, Repository) {
    let fs = CrashFs::with_clock(Arc::new(clock.clone()));
    let repo = Repository::init(
        Arc::new(LocalBackend::with_fs(fs.clone())),
        &init_options(None),
        open_options(clock, None),
    )
    .unwrap();
    fs.sync_all();
    (fs, repo)
}

pub(crate) fn reopen_crash(fs: &Arc<CrashFs>, clock: &ManualClock) -> Repository {
    Repository::open(
        Arc::new(LocalBackend::with_fs(fs.clone())),
        open_options(clock, None),
    )
    .unwrap()
}

/// One file to back up.
#[derive(Clone)]
pub(crate) struct SourceFile {
    pub(crate) path: String,
    pub(crate) data: Vec<u8>,
    pub(crate) kind: FileKind,
}

pub(crate) fn disk(path: &str, data: Vec<u8>) -> SourceFile {
    SourceFile {
        path: path.into(),
        data,
        kind: FileKind::Disk,
    }
}

pub(crate) fn config(path: &str, data: Vec<u8>) -> SourceFile {
    SourceFile {
        path: path.into(),
        data,
        kind: FileKind::Config,
    }
}

fn storage_name(i: usize, f: &SourceFile) -> FileName {
    match f.kind {
        FileKind::Disk => FileName::new(format!("disk-{}", 2000 + i)).unwrap(),
        _ => FileName::new(format!("file-{i}")).unwrap(),
    }
}

thread_local! {
    static SINGLE_THREADED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`write_files`] inserting chunks on one thread, so that the sequence of file
/// operations is deterministic (crash-point enumeration).
pub(crate) fn single_threaded<T>(f: impl FnOnce() -> T) -> T {
    SINGLE_THREADED.with(|c| c.set(true));
    let r = f();
    SINGLE_THREADED.with(|c| c.set(false));
    r
}

/// Writes the content of `files` through `w` (disks chunked on 2 threads) and returns the
/// manifest to commit.
pub(crate) fn write_files(
    w: &BackupWriter,
    files: &[SourceFile],
    parent: Option<(&BackupId, &Manifest)>,
) -> vbm_repo::Result<Manifest> {
    let repo = w.repository().clone();
    let mut mfiles = Vec::new();
    let mut disks = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let name = storage_name(i, f);
        if f.kind != FileKind::Disk {
            let s = w.write_blob(BlobWriter::with_data(name, f.data.clone()))?;
            mfiles.push(ManifestFile {
                path: f.path.clone(),
                size_bytes: s.size,
                sha256: s.sha256,
                kind: f.kind,
                storage: s.storage(),
            });
            continue;
        }
        let size = f.data.len() as u64;
        // An incremental reuses the parent's index and only inserts changed chunks.
        let parent_index = parent.and_then(|(pid, pm)| {
            let pf = pm.file_by_path(&f.path)?;
            let vbm_repo::FileStorage::Index { name, sha256 } = &pf.storage else {
                return None;
            };
            repo.open_backup(pid).ok()?.open_index(name, sha256).ok()
        });
        let index = match &parent_index {
            Some(p) => w.new_index_from_parent(name, size, p)?,
            None => w.new_index(name, size)?,
        };
        let positions: Vec<u64> = (0..index.chunk_count()).collect();
        let cs = u64::from(w.chunk_size());
        let threads = if SINGLE_THREADED.with(std::cell::Cell::get) {
            1
        } else {
            2
        };
        let result: vbm_repo::Result<()> = std::thread::scope(|s| {
            let handles: Vec<_> = positions
                .chunks(positions.len().div_ceil(threads).max(1))
                .map(|part| {
                    let index = &index;
                    let data = &f.data;
                    let parent_index = &parent_index;
                    let repo = &repo;
                    s.spawn(move || -> vbm_repo::Result<()> {
                        for &pos in part {
                            let start = (pos * cs) as usize;
                            let end = ((pos + 1) * cs).min(size) as usize;
                            let chunk = &data[start..end];
                            if let Some(p) = parent_index
                                && pos < p.chunk_count()
                                && p.chunk_len(pos) == (end - start) as u64
                                && repo.chunk_digest(chunk) == p.digest(pos)
                            {
                                continue; // unchanged: already set from the parent
                            }
                            let r = w.insert_chunk(chunk)?;
                            index.set(pos, r.digest)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join().unwrap()?;
            }
            Ok(())
        });
        result?;
        let summary = w.finish_index(index)?;
        mfiles.push(ManifestFile {
            path: f.path.clone(),
            size_bytes: size,
            sha256: Sha256::of(&f.data),
            kind: FileKind::Disk,
            storage: summary.storage(),
        });
        disks.push(ManifestDisk {
            device_key: 2000 + i as i32,
            label: format!("Hard disk {}", i + 1),
            capacity_bytes: size,
            change_id: Some(format!("52 {i}")),
            datastore: Some("ds1".into()),
            file: f.path.clone(),
            index: summary.name.clone(),
        });
    }
    Ok(Manifest {
        format_version: 0,
        job_id: "job-test".into(),
        vm_name: "Test VM".into(),
        vm_key: w.id().vm().clone(),
        vm_instance_uuid: Some("5003-test".into()),
        vm_folder: None,
        started: w.id().time(),
        finished: w.id().time(),
        vcenter: "vcsa.test".into(),
        vcenter_uuid: None,
        snapshot: "vbm-test".into(),
        mode: if parent.is_some() {
            BackupMode::Incremental
        } else {
            BackupMode::Full
        },
        parent: parent.map(|(p, _)| p.clone()),
        files: mfiles,
        disks,
        bytes_read: files.iter().map(|f| f.data.len() as u64).sum(),
        bytes_written: 0,
        chunks_new: 0,
        chunks_reused: 0,
        warnings: vec![],
        vbm_version: "test".into(),
    })
}

/// A whole backup: start, write, commit.
pub(crate) fn backup(
    repo: &Repository,
    vm_key: &str,
    at: Timestamp,
    files: &[SourceFile],
) -> vbm_repo::Result<(BackupId, Manifest)> {
    let w = repo.start_backup(&vm(vm_key), at)?;
    let id = w.id().clone();
    let m = write_files(&w, files, None)?;
    let m = w.commit(m)?;
    Ok((id, m))
}

/// An incremental backup on top of `parent`.
pub(crate) fn incremental(
    repo: &Repository,
    parent: &BackupId,
    at: Timestamp,
    files: &[SourceFile],
) -> vbm_repo::Result<(BackupId, Manifest)> {
    let pm = repo.read_manifest(parent)?;
    let w = repo.start_backup(parent.vm(), at)?;
    let id = w.id().clone();
    let m = write_files(&w, files, Some((parent, &pm)))?;
    let m = w.commit(m)?;
    Ok((id, m))
}

/// Restores every file of a backup into memory (path → bytes), checking each file's SHA-256.
pub(crate) fn restore(
    repo: &Repository,
    id: &BackupId,
) -> vbm_repo::Result<BTreeMap<String, Vec<u8>>> {
    let r = repo.open_backup(id)?;
    let mut out = BTreeMap::new();
    for f in &r.manifest().files {
        let reader = r.open(f)?;
        let mut buf = Vec::new();
        let sha = reader.copy_to(&mut buf, 2, &mut |_| {})?;
        assert_eq!(sha, f.sha256, "{id} {}", f.path);
        out.insert(f.path.clone(), buf);
    }
    Ok(out)
}

pub(crate) fn verify_all(repo: &Repository, mode: VerifyMode) -> VerifyReport {
    verify(
        repo,
        &VerifyOptions {
            mode,
            record_state: false,
            quarantine: false,
            ..VerifyOptions::default()
        },
        &mut |_| {},
        &Cancel::new(),
    )
    .unwrap()
}

/// INV-1 + INV-5: every committed backup verifies fully and restores to `expected` bytes.
pub(crate) fn assert_all_restorable(repo: &Repository) {
    let report = verify_all(repo, VerifyMode::Full);
    assert!(report.ok, "verify failed: {report:#?}");
}

/// Every file name under `dir`, recursively (relative).
pub(crate) fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Paths of chunk files (relative to the repository root).
pub(crate) fn chunk_files(root: &Path) -> Vec<std::path::PathBuf> {
    tree(&root.join("chunks"))
        .into_iter()
        .filter(|p| p.len() == 70 && !p.contains('.'))
        .map(|p| root.join("chunks").join(p))
        .collect()
}

/// Every chunk file in the store decodes to the data its name promises: a chunk file is
/// complete or absent, never half written.
pub(crate) fn assert_every_chunk_file_is_whole(root: &std::path::Path) {
    let codec = vbm_repo::chunk::ChunkCodec::new(3, None);
    for p in chunk_files(root) {
        let name = p.file_name().unwrap().to_str().unwrap();
        let d: vbm_repo::ChunkDigest = name.parse().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        codec
            .decode(&d, bytes, None)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
}

/// Whether the current user can mount file systems (root tests).
pub(crate) fn root_or_skip(test: &str) -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIP {test}: needs root (mount, chattr); CI runs as root");
        return false;
    }
    true
}

/// A tmpfs mounted for the duration of a test; unmounted on drop, even after a failure.
pub(crate) struct Tmpfs {
    pub(crate) path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs with `options` (e.g. `size=8m`), or explains why not.
    pub(crate) fn mount(options: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}
