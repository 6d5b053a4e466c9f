//! Storage faults on real file systems (root only: tmpfs mounts, `chattr +i`, read-only bind
//! mounts). Skipped with a printed reason when not root; mounts are removed even on failure.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vbm_repo::gc::{GcOptions, gc};
use vbm_repo::prune::{PruneGuards, PruneOptions, RetentionPolicy, prune};
use vbm_repo::verify::VerifyMode;
use vbm_repo::{Cancel, Error, InitOptions, LocalBackend, OpenOptions, Repository};

use super::common::*;

fn init_at(path: &std::path::Path) -> Repository {
    Repository::init(
        Arc::new(LocalBackend::new(path)),
        &InitOptions {
            compression_level: 0,
            ..init_options(None)
        },
        OpenOptions::default(),
    )
    .unwrap()
}

fn no_temp_files(root: &std::path::Path) {
    let files = tree(root);
    assert!(
        !files.iter().any(|f| f.contains(".tmp-")),
        "temp files left: {files:?}"
    );
}

// covers S-D1: the repository's file system fills up during a backup. The write fails quickly
// with a clear ENOSPC error naming the object and the free space; no partial chunk is
// committed; older backups stay intact; after space is freed the next backup succeeds.
#[test]
fn disk_full_during_a_backup() {
    if !root_or_skip("disk_full_during_a_backup") {
        return;
    }
    let fs = match Tmpfs::mount("size=4m") {
        Ok(f) => f,
        Err(e) => return eprintln!("SKIP disk_full_during_a_backup: {e}"),
    };
    let repo = init_at(&fs.path);
    let (old, _) = backup(
        &repo,
        "vm-1",
        jiff::Timestamp::now(),
        &[disk("d", random_bytes(8 * CS as usize, 1))],
    )
    .unwrap();
    let started = std::time::Instant::now();
    let err = backup(
        &repo,
        "vm-2",
        jiff::Timestamp::now(),
        &[disk("d", random_bytes(100 * CS as usize, 2))],
    )
    .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("no space left on device"), "{msg}");
    assert!(
        msg.contains(fs.path.to_str().unwrap()),
        "names the location: {msg}"
    );
    assert!(
        msg.contains("bytes and") && msg.contains("inodes free"),
        "{msg}"
    );
    // Nothing of the failed backup is visible, every stored chunk is whole, no temp file.
    let l = repo.list_backups().unwrap();
    assert_eq!(l.committed, vec![old.clone()]);
    assert!(l.partial.is_empty());
    no_temp_files(&fs.path);
    assert_every_chunk_file_is_whole(&fs.path);
    assert_all_restorable(&repo);
    // Free the space the failed run used, then a backup that fits succeeds.
    gc(&repo, &GcOptions::default(), &mut |_| {}, &Cancel::new()).unwrap();
    backup(
        &repo,
        "vm-2",
        jiff::Timestamp::now(),
        &[disk("d", random_bytes(20 * CS as usize, 2))],
    )
    .unwrap();
    assert_all_restorable(&repo);
}

// covers S-D2: no inodes left. Same guarantees, with a message that says so.
#[test]
fn inodes_exhausted_during_a_backup() {
    if !root_or_skip("inodes_exhausted_during_a_backup") {
        return;
    }
    let fs = match Tmpfs::mount("size=64m,nr_inodes=64") {
        Ok(f) => f,
        Err(e) => return eprintln!("SKIP inodes_exhausted_during_a_backup: {e}"),
    };
    let repo = init_at(&fs.path);
    let (old, _) = backup(
        &repo,
        "vm-1",
        jiff::Timestamp::now(),
        &[disk("d", random_bytes(4 * CS as usize, 1))],
    )
    .unwrap();
    let err = backup(
        &repo,
        "vm-2",
        jiff::Timestamp::now(),
        &[disk("d", random_bytes(200 * 4096, 2))],
    )
    .and_then(|_| {
        backup(
            &repo,
            "vm-3",
            jiff::Timestamp::now(),
            &[disk("d", random_bytes(100 * CS as usize, 3))],
        )
    })
    .unwrap_err();
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert!(err.to_string().contains("no free inodes"), "{err}");
    assert!(repo.list_backups().unwrap().committed.contains(&old));
    no_temp_files(&fs.path);
    assert_all_restorable(&repo);
}

// covers S-D4: a full disk during prune and GC. Either they free space or fail cleanly; no
// referenced chunk is removed and no half-removed backup stays visible.
#[test]
fn disk_full_during_prune_and_gc() {
    if !root_or_skip("disk_full_during_prune_and_gc") {
        return;
    }
    let fs = match Tmpfs::mount("size=4m") {
        Ok(f) => f,
        Err(e) => return eprintln!("SKIP disk_full_during_prune_and_gc: {e}"),
    };
    let repo = init_at(&fs.path);
    let base = jiff::Timestamp::now() - secs(10 * 86_400);
    for i in 0..4i64 {
        backup(
            &repo,
            "vm-1",
            base + secs(i * 86_400),
            &[disk("d", random_bytes(6 * CS as usize, i as u64))],
        )
        .unwrap();
    }
    // Fill the file system to the last byte.
    let filler = fs.path.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![0xa5u8; 64 * 1024];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    for size in [4096, 512, 1] {
        while std::io::Write::write_all(&mut f, &block[..size]).is_ok() {}
    }
    drop(f);
    let options = PruneOptions {
        policy: RetentionPolicy {
            keep_last: Some(1),
            ..RetentionPolicy::default()
        },
        guards: PruneGuards {
            force: true,
            ..PruneGuards::default()
        },
        ..PruneOptions::default()
    };
    match prune(&repo, &options, &mut |_| {}, &Cancel::new()) {
        Ok(r) => assert_eq!(r.removed.len(), 3),
        Err(e) => assert!(matches!(e, Error::NoSpace { .. }), "{e}"),
    }
    match gc(&repo, &GcOptions::default(), &mut |_| {}, &Cancel::new()) {
        Ok(_) | Err(Error::NoSpace { .. }) => {}
        Err(e) => panic!("GC must free space or fail cleanly: {e}"),
    }
    assert!(!repo.list_backups().unwrap().committed.is_empty());
    assert_all_restorable(&repo);
    std::fs::remove_file(&filler).unwrap();
    prune(&repo, &options, &mut |_| {}, &Cancel::new()).unwrap();
    let r = gc(&repo, &GcOptions::default(), &mut |_| {}, &Cancel::new()).unwrap();
    assert!(r.bytes_freed > 0, "{r:#?}");
    assert_eq!(repo.list_backups().unwrap().committed.len(), 1);
    assert_all_restorable(&repo);
}

struct Immutable(std::path::PathBuf);

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(&self.0).status();
    }
}

// covers S-D9: an immutable chunk file. GC reports "cannot delete … (immutable)" and deletes
// the rest.
#[test]
fn gc_skips_immutable_files_and_continues() {
    if !root_or_skip("gc_skips_immutable_files_and_continues") {
        return;
    }
    let t = TestRepo::new();
    for i in 0..3 {
        let w = t.repo.start_backup(&vm("vm-1"), t0()).unwrap();
        w.insert_chunk(&random_bytes(1000, i)).unwrap();
        w.abort().unwrap();
    }
    let files = chunk_files(&t.root());
    assert_eq!(files.len(), 3);
    let ok = Command::new("chattr")
        .arg("+i")
        .arg(&files[0])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return eprintln!(
            "SKIP gc_skips_immutable_files_and_continues: chattr +i not supported here"
        );
    }
    let _guard = Immutable(files[0].clone());
    t.clock.advance(secs(3600));
    let r = gc(&t.repo, &GcOptions::default(), &mut |_| {}, &Cancel::new()).unwrap();
    assert_eq!(r.chunks_deleted, 2, "{r:#?}");
    assert_eq!(r.skipped.len(), 1);
    assert!(r.skipped[0].reason.contains("immutable"), "{:?}", r.skipped);
    assert!(
        r.skipped[0]
            .path
            .contains(files[0].file_name().unwrap().to_str().unwrap())
    );
    assert!(files[0].exists());
}

/// A read-only bind mount of a directory, removed on drop.
struct ReadOnlyView {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl ReadOnlyView {
    fn of(src: &std::path::Path) -> Result<ReadOnlyView, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("ro");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let run = |args: &[&str]| {
            Command::new("mount")
                .args(args)
                .output()
                .map_err(|e| e.to_string())
                .and_then(|o| {
                    if o.status.success() {
                        Ok(())
                    } else {
                        Err(String::from_utf8_lossy(&o.stderr).into_owned())
                    }
                })
        };
        run(&[
            "--bind",
            src.to_str().unwrap_or_default(),
            path.to_str().unwrap_or_default(),
        ])?;
        let view = ReadOnlyView { path, _dir: dir };
        run(&[
            "-o",
            "remount,bind,ro",
            view.path.to_str().unwrap_or_default(),
        ])?;
        Ok(view)
    }
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

// covers S-D9: a read-only repository. Backups fail early with a specific error; verify and
// restore still work.
#[test]
fn read_only_repository_refuses_backups_but_verifies_and_restores() {
    if !root_or_skip("read_only_repository_refuses_backups_but_verifies_and_restores") {
        return;
    }
    let t = TestRepo::new();
    let data = random_bytes(4 * CS as usize, 1);
    let (id, _) = backup(&t.repo, "vm-1", t0(), &[disk("d", data.clone())]).unwrap();
    let view = match ReadOnlyView::of(&t.root()) {
        Ok(v) => v,
        Err(e) => return eprintln!("SKIP read_only_repository: cannot bind-mount read-only: {e}"),
    };
    let repo = Repository::open_local(&view.path, None).unwrap();
    let err = match repo.start_backup(&vm("vm-1"), t0()) {
        Ok(_) => panic!("a backup must not start on a read-only repository"),
        Err(e) => e,
    };
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    let report = verify_all(&repo, VerifyMode::Full);
    assert!(report.ok, "{report:#?}");
    assert_eq!(restore(&repo, &id).unwrap()["d"], data);
    let err = gc(&repo, &GcOptions::default(), &mut |_| {}, &Cancel::new()).unwrap_err();
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
}
