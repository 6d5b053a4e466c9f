//! Garbage collection: what it deletes, what it must never delete, and GC racing backups and
//! prune (FAULT-MATRIX L3, F7, S-D6, S-D7).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vbm_repo::gc::{GcOptions, GcPhase, GcReport, gc};
use vbm_repo::prune::{PruneGuards, PruneOptions, RetentionPolicy, prune, remove_backup};
use vbm_repo::verify::VerifyMode;
use vbm_repo::{BackupId, Cancel, Clock, Error, LocalBackend, OpenOptions, Repository};

use super::common::*;

fn run_gc(repo: &Repository) -> vbm_repo::Result<GcReport> {
    gc(repo, &GcOptions::default(), &mut |_| {}, &Cancel::new())
}

#[test]
fn gc_deletes_only_chunks_no_backup_references() {
    let t = TestRepo::new();
    let mut data = random_bytes(8 * CS as usize, 1);
    let (a, _) = backup(&t.repo, "vm-1", t0(), &[disk("d", data.clone())]).unwrap();
    data[..10].copy_from_slice(b"0123456789"); // chunk 0 differs in b
    let (b, _) = incremental(&t.repo, &a, t0() + secs(60), &[disk("d", data.clone())]).unwrap();
    let (c, _) = backup(
        &t.repo,
        "vm-2",
        t0(),
        &[disk("e", random_bytes(2 * CS as usize, 2))],
    )
    .unwrap();
    assert_eq!(chunk_files(&t.root()).len(), 11);
    remove_backup(&t.repo, &a).unwrap();
    t.clock.advance(secs(3600));
    let r = run_gc(&t.repo).unwrap();
    assert_eq!(r.chunks_deleted, 1, "{r:#?}");
    assert!(r.bytes_freed >= u64::from(CS));
    assert_eq!(r.backups_marked, 2);
    assert_eq!(chunk_files(&t.root()).len(), 10);
    assert_eq!(restore(&t.repo, &b).unwrap()["d"], data);
    restore(&t.repo, &c).unwrap();
    assert_all_restorable(&t.repo);
    let again = run_gc(&t.repo).unwrap();
    assert_eq!(again.chunks_deleted, 0);
    assert!(t.repo.locks().unwrap().is_empty());
}

#[test]
fn grace_period_keeps_recent_garbage_and_dry_run_changes_nothing() {
    let t = TestRepo::new();
    {
        let w = t.repo.start_backup(&vm("vm-1"), t0()).unwrap();
        w.insert_chunk(&random_bytes(1000, 1)).unwrap();
        w.abort().unwrap();
    }
    let opts = |grace| GcOptions {
        dry_run: false,
        grace: Some(Duration::from_secs(grace)),
        leftover_age: None,
    };
    t.clock.advance(secs(1800));
    let r = gc(&t.repo, &opts(3600), &mut |_| {}, &Cancel::new()).unwrap();
    assert_eq!((r.chunks_deleted, r.chunks_kept_recent), (0, 1));
    t.clock.advance(secs(3600));
    let dry = gc(
        &t.repo,
        &GcOptions {
            dry_run: true,
            grace: Some(Duration::from_secs(3600)),
            leftover_age: None,
        },
        &mut |_| {},
        &Cancel::new(),
    )
    .unwrap();
    assert_eq!(dry.chunks_deleted, 1);
    assert_eq!(chunk_files(&t.root()).len(), 1, "dry run deleted nothing");
    let r = gc(&t.repo, &opts(3600), &mut |_| {}, &Cancel::new()).unwrap();
    assert_eq!(r.chunks_deleted, 1);
    assert!(chunk_files(&t.root()).is_empty());
}

/// The PBS race (advisory PSA-2025-00019-1), scripted: GC lists the backups, then an
/// incremental S1 on top of S0 finishes and S0 is pruned, then GC marks and sweeps. In odd
/// rounds S1 starts before GC (its lock bounds the cutoff); in even rounds after GC started.
// covers L3: S1 stays fully restorable, 100 of 100 rounds.
#[test]
fn scripted_pbs_race_gc_prune_and_incremental() {
    for round in 0..100u64 {
        let t = TestRepo::new();
        let base = random_bytes(4 * 4096, round);
        let repo4k = {
            // Small chunks keep a hundred rounds fast.
            let opts = vbm_repo::InitOptions {
                chunk_size: 4096,
                ..init_options(None)
            };
            Repository::init(
                Arc::new(LocalBackend::new(t.dir.path().join("r4k"))),
                &opts,
                open_options(&t.clock, None),
            )
            .unwrap()
        };
        let repo = &repo4k;
        let (s0, _) = backup(repo, "vm-1", t0(), &[disk("d", base.clone())]).unwrap();
        t.clock.advance(secs(3600));
        let mut changed = base.clone();
        changed[3 * 4096] ^= 1; // S1 changes the last chunk, reuses three
        let early =
            (round % 2 == 1).then(|| repo.start_backup(&vm("vm-1"), t.clock.now()).unwrap());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let gc_repo = repo.clone();
        let handle = std::thread::spawn(move || {
            gc(
                &gc_repo,
                &GcOptions::default(),
                &mut |p| {
                    if p.phase == GcPhase::Listed {
                        ready_tx.send(()).unwrap();
                        go_rx.recv().unwrap();
                    }
                },
                &Cancel::new(),
            )
        });
        ready_rx.recv().unwrap();
        t.clock.advance(secs(1));
        let s1 = match early {
            Some(w) => {
                let pm = repo.read_manifest(&s0).unwrap();
                let id = w.id().clone();
                let m = write_files(&w, &[disk("d", changed.clone())], Some((&s0, &pm))).unwrap();
                w.commit(m).unwrap();
                id
            }
            None => {
                incremental(repo, &s0, t.clock.now(), &[disk("d", changed.clone())])
                    .unwrap()
                    .0
            }
        };
        remove_backup(repo, &s0).unwrap();
        go_tx.send(()).unwrap();
        let report = handle.join().unwrap().unwrap();
        // S1 touched every chunk it took from S0's index (even the one it then replaced), so
        // this GC deletes nothing; the next one collects S0's own chunk.
        assert_eq!(report.chunks_deleted, 0, "round {round}: {report:#?}");
        assert_eq!(restore(repo, &s1).unwrap()["d"], changed, "round {round}");
        assert_all_restorable(repo);
        t.clock.advance(secs(3600));
        assert_eq!(run_gc(repo).unwrap().chunks_deleted, 1, "round {round}");
        assert_eq!(restore(repo, &s1).unwrap()["d"], changed, "round {round}");
    }
}

/// Backups, prune and GC in parallel on the real clock with no grace period at all. Writers
/// whose parent chunks were collected before they touched them fall back to a full backup, as
/// the engine does; no committed backup may ever miss a chunk.
// covers L3 (soak, bounded), INV-1, INV-5.
#[test]
fn writers_prune_and_gc_running_concurrently_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::init(
        Arc::new(LocalBackend::new(dir.path())),
        &init_options(None),
        OpenOptions::default(),
    )
    .unwrap();
    let expected: Mutex<HashMap<BackupId, Vec<u8>>> = Mutex::new(HashMap::new());
    let done = AtomicBool::new(false);
    let gc_runs = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        let writers: Vec<_> = (0..2u64)
            .map(|w| {
                let (repo, expected) = (&repo, &expected);
                s.spawn(move || {
                    let vmk = format!("vm-{w}");
                    let mut data = random_bytes(16 * CS as usize, w);
                    for day in 0..20u64 {
                        for k in 0..3u64 {
                            let pos = ((day * 7 + k * 5 + w) % 16) as usize * CS as usize;
                            data[pos..pos + 8].copy_from_slice(&(day * 100 + k).to_le_bytes());
                        }
                        let parent = repo
                            .list_backups()
                            .unwrap()
                            .committed
                            .into_iter()
                            .rfind(|id| id.vm().as_str() == vmk);
                        let now = jiff::Timestamp::now();
                        let files = [disk("d", data.clone())];
                        let result = match &parent {
                            Some(p) => incremental(repo, p, now, &files),
                            None => backup(repo, &vmk, now, &files),
                        };
                        let (id, _) = match result {
                            Ok(r) => r,
                            Err(e) => {
                                assert!(
                                    matches!(
                                        e,
                                        Error::ChunkMissing { .. }
                                            | Error::BackupNotFound(_)
                                            | Error::IndexCorrupt { .. }
                                    ),
                                    "unexpected error: {e}"
                                );
                                backup(repo, &vmk, now, &files).unwrap()
                            }
                        };
                        expected.lock().unwrap().insert(id, data.clone());
                    }
                })
            })
            .collect();
        s.spawn(|| {
            let policy = RetentionPolicy {
                keep_last: Some(2),
                ..RetentionPolicy::default()
            };
            let opts = PruneOptions {
                policy,
                guards: PruneGuards {
                    force: true,
                    ..PruneGuards::default()
                },
                ..PruneOptions::default()
            };
            while !done.load(Ordering::Relaxed) {
                match prune(&repo, &opts, &mut |_| {}, &Cancel::new()) {
                    Ok(_) | Err(Error::LockConflict { .. }) => {}
                    Err(e) => panic!("prune: {e}"),
                }
            }
        });
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                match run_gc(&repo) {
                    Ok(_) => {
                        gc_runs.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(Error::LockConflict { .. }) => {}
                    Err(e) => panic!("gc: {e}"),
                }
            }
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    assert!(
        gc_runs.load(Ordering::Relaxed) > 3,
        "GC must actually have raced the writers"
    );
    run_gc(&repo).unwrap();
    assert_all_restorable(&repo);
    let expected = expected.into_inner().unwrap();
    let committed = repo.list_backups().unwrap().committed;
    assert!(committed.len() >= 2);
    for id in committed {
        assert_eq!(restore(&repo, &id).unwrap()["d"], expected[&id], "{id}");
    }
}

// covers S-D6: GC fails closed when a manifest or an index cannot be read.
#[test]
fn gc_aborts_without_deleting_when_references_are_unreadable() {
    let t = TestRepo::new();
    let (a, _) = backup(
        &t.repo,
        "vm-1",
        t0(),
        &[disk("d", random_bytes(3 * CS as usize, 1))],
    )
    .unwrap();
    let (b, _) = backup(
        &t.repo,
        "vm-2",
        t0(),
        &[disk("d", random_bytes(3 * CS as usize, 2))],
    )
    .unwrap();
    {
        let w = t.repo.start_backup(&vm("vm-3"), t0()).unwrap();
        w.insert_chunk(&random_bytes(100, 9)).unwrap();
    } // garbage
    t.clock.advance(secs(3600));
    let before = chunk_files(&t.root()).len();
    let idx = t
        .root()
        .join("backups")
        .join(a.to_string())
        .join("disk-2000.fidx");
    let good = std::fs::read(&idx).unwrap();
    std::fs::write(&idx, &good[..good.len() - 1]).unwrap();
    let err = run_gc(&t.repo).unwrap_err();
    assert!(matches!(err, Error::GcAborted { .. }), "{err}");
    assert!(err.to_string().contains(&a.to_string()), "{err}");
    assert_eq!(chunk_files(&t.root()).len(), before, "nothing deleted");
    std::fs::write(&idx, &good).unwrap();

    let man = t
        .root()
        .join("backups")
        .join(b.to_string())
        .join("manifest.json");
    std::fs::write(&man, b"{not json").unwrap();
    let err = run_gc(&t.repo).unwrap_err();
    assert!(err.to_string().contains("nothing was deleted"), "{err}");
    assert_eq!(chunk_files(&t.root()).len(), before);
    assert!(
        t.repo.locks().unwrap().is_empty(),
        "the GC lock is released after an abort"
    );
}

// covers S-D7: stray temp files, 0-byte chunks and partial backups after a crash.
#[test]
fn temp_files_empty_chunks_and_partial_backups_are_cleaned() {
    let t = TestRepo::new();
    let (a, _) = backup(
        &t.repo,
        "vm-1",
        t0(),
        &[disk("d", random_bytes(2 * CS as usize, 1))],
    )
    .unwrap();
    let root = t.root();
    let old = std::time::SystemTime::from(t0() - secs(7200));
    let make_old = |p: &std::path::Path| {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(old)
            .unwrap();
    };
    // A temp file next to a chunk, one in a backup, a partial backup, a 0-byte chunk.
    let chunk = &chunk_files(&root)[0];
    let tmp1 = chunk.with_file_name("deadbeef.tmp-1-2-3");
    std::fs::write(&tmp1, b"partial").unwrap();
    let tmp2 = root
        .join("backups")
        .join(a.to_string())
        .join("manifest.json.tmp-9-9-9");
    std::fs::write(&tmp2, b"{").unwrap();
    let partial = root.join("backups/vm-9/2026-11-27T000000Z");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("disk-1.fidx"), b"x").unwrap();
    let lost = random_bytes(3000, 77);
    let d = t.repo.chunk_digest(&lost).to_hex();
    let empty = root.join("chunks").join(&d[..2]).join(&d[2..4]).join(&d);
    std::fs::create_dir_all(empty.parent().unwrap()).unwrap();
    std::fs::write(&empty, b"").unwrap();
    for p in [&tmp1, &tmp2, &partial.join("disk-1.fidx"), &empty] {
        make_old(p);
    }
    // A 0-byte chunk counts as missing and is overwritten by the next insert.
    assert!(!t.repo.has_chunk(&t.repo.chunk_digest(&lost)).unwrap());
    let w = t.repo.start_backup(&vm("vm-1"), t0() + secs(1)).unwrap();
    assert!(w.insert_chunk(&lost).unwrap().is_new);
    w.abort().unwrap();
    assert_eq!(
        t.repo
            .read_chunk(&t.repo.chunk_digest(&lost), lost.len())
            .unwrap(),
        lost
    );
    std::fs::write(&empty, b"").unwrap();
    make_old(&empty);

    assert_eq!(t.repo.list_backups().unwrap().partial.len(), 1);
    let r = run_gc(&t.repo).unwrap();
    assert_eq!(r.temp_files_removed, 2, "{r:#?}");
    assert_eq!(r.partial_backups_removed.len(), 1);
    assert_eq!(r.chunks_deleted, 1, "the 0-byte garbage chunk");
    assert!(!tmp1.exists() && !tmp2.exists() && !partial.exists() && !empty.exists());
    assert!(t.repo.list_backups().unwrap().partial.is_empty());
    assert_all_restorable(&t.repo);
}

// covers F7: a writer paused past the lock's stale time must not commit, whether or not GC
// collected its chunks meanwhile.
#[test]
fn a_paused_writer_loses_its_lease_and_never_commits() {
    let t = TestRepo::new();
    let data = random_bytes(4 * CS as usize, 1);
    // Paused long enough for GC to declare the lock stale and collect the chunks.
    let w = t.repo.start_backup(&vm("vm-1"), t0()).unwrap();
    let m = write_files(&w, &[disk("d", data.clone())], None).unwrap();
    t.clock.advance(secs(601));
    let r = run_gc(&t.repo).unwrap();
    assert_eq!(r.stale_locks_cleared.len(), 1, "{r:#?}");
    assert_eq!(
        r.chunks_deleted, 4,
        "the paused writer's chunks were garbage to GC"
    );
    let err = w.commit(m).unwrap_err();
    assert!(matches!(err, Error::LeaseLost { .. }), "{err}");
    assert!(t.repo.list_backups().unwrap().committed.is_empty());

    // Paused past half the stale time without GC: still refuses (someone may have acted).
    let w = t.repo.start_backup(&vm("vm-1"), t.clock.now()).unwrap();
    let m = write_files(&w, &[disk("d", data.clone())], None).unwrap();
    t.clock.advance(secs(301));
    let err = w.commit(m).unwrap_err();
    assert!(err.to_string().contains("lease lost"), "{err}");
    // A writer that renews in time commits.
    let w = t.repo.start_backup(&vm("vm-1"), t.clock.now()).unwrap();
    let m = write_files(&w, &[disk("d", data)], None).unwrap();
    t.clock.advance(secs(200));
    w.heartbeat().unwrap();
    t.clock.advance(secs(200));
    w.commit(m).unwrap();
    assert_all_restorable(&t.repo);
}

#[test]
fn only_one_gc_at_a_time() {
    let t = TestRepo::new();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let repo = t.repo.clone();
    let h = std::thread::spawn(move || {
        gc(
            &repo,
            &GcOptions::default(),
            &mut |p| {
                if p.phase == GcPhase::Marked {
                    ready_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                }
            },
            &Cancel::new(),
        )
    });
    ready_rx.recv().unwrap();
    let err = run_gc(&t.repo).unwrap_err();
    assert!(matches!(err, Error::LockConflict { .. }), "{err}");
    assert!(err.to_string().contains("gc.lock"), "{err}");
    go_tx.send(()).unwrap();
    h.join().unwrap().unwrap();
    run_gc(&t.repo).unwrap();
}

// covers F4: a GC killed between renaming a chunk to `.trash` and unlinking it loses nothing:
// the next access or GC restores it.
#[test]
fn trash_left_by_a_killed_gc_is_restored() {
    let t = TestRepo::new();
    let (a, _) = backup(
        &t.repo,
        "vm-1",
        t0(),
        &[disk("d", random_bytes(3 * CS as usize, 1))],
    )
    .unwrap();
    let files = chunk_files(&t.root());
    for f in &files[..2] {
        let mut trash = f.clone().into_os_string();
        trash.push(".trash");
        std::fs::rename(f, trash).unwrap();
    }
    // Quick verify stats the chunks: that alone restores them.
    assert!(verify_all(&t.repo, VerifyMode::Quick).ok);
    let mut trash = files[2].clone().into_os_string();
    trash.push(".trash");
    std::fs::rename(&files[2], trash).unwrap();
    let r = run_gc(&t.repo).unwrap();
    assert_eq!((r.trash_restored, r.chunks_deleted), (1, 0), "{r:#?}");
    assert_eq!(chunk_files(&t.root()).len(), 3);
    restore(&t.repo, &a).unwrap();
}

// covers S-D6: foreign entries under backups/ might hold references; GC refuses to guess.
#[test]
fn gc_refuses_to_run_next_to_unrecognized_backup_entries() {
    let t = TestRepo::new();
    backup(
        &t.repo,
        "vm-1",
        t0(),
        &[disk("d", random_bytes(2 * CS as usize, 1))],
    )
    .unwrap();
    let stray = t.root().join("backups/vm-1/copy-of-2026-11-27T033114Z");
    std::fs::create_dir_all(&stray).unwrap();
    let err = run_gc(&t.repo).unwrap_err();
    assert!(matches!(err, Error::GcAborted { .. }), "{err}");
    assert!(
        err.to_string().contains("copy-of-2026-11-27T033114Z"),
        "{err}"
    );
    std::fs::remove_dir(&stray).unwrap();
    run_gc(&t.repo).unwrap();
}

#[test]
fn a_foreign_file_name_makes_listings_fail_not_skip() {
    let t = TestRepo::new();
    backup(
        &t.repo,
        "vm-1",
        t0(),
        &[disk("d", random_bytes(CS as usize, 1))],
    )
    .unwrap();
    let odd = t.root().join("chunks/odd name");
    std::fs::write(&odd, b"?").unwrap();
    let err = run_gc(&t.repo).unwrap_err();
    assert!(err.to_string().contains("odd name"), "{err}");
    std::fs::remove_file(&odd).unwrap();
    run_gc(&t.repo).unwrap();
}
