//! Crash safety: a writer process killed with SIGKILL at random points (F1), power cut at every
//! sync of a short backup (F9), and GC killed or powered off at every file operation (F4).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vbm_repo::backend::{CrashKind, CrashPlan, CrashTrigger};
use vbm_repo::gc::{GcOptions, gc};
use vbm_repo::prune::remove_backup;
use vbm_repo::{BlobWriter, Cancel, FileName, LocalBackend, ManualClock, OpenOptions, Repository};

use super::common::*;

const CHILD_REPO: &str = "VBM_TEST_F1_CHILD_REPO";
const CHILD_SEED: &str = "VBM_TEST_F1_CHILD_SEED";

/// The data the F1 child writes for backup number `n` of a run seeded `seed`.
fn child_data(seed: u64, n: u64) -> Vec<u8> {
    let mut d = disk_image(8 * CS as usize, n % 5);
    let off = (n as usize % 8) * CS as usize;
    d[off..off + 8].copy_from_slice(&(seed ^ n).to_le_bytes());
    d
}

/// Not a test on its own: the body of the F1 child process (the test binary re-executed with
/// `CHILD_REPO` set). Writes backups forever, printing a line after every durable step, until
/// the parent kills it.
#[test]
fn f1_child_writer() {
    let (Some(dir), Some(seed)) = (std::env::var_os(CHILD_REPO), std::env::var_os(CHILD_SEED))
    else {
        return;
    };
    let seed: u64 = seed.to_str().unwrap().parse().unwrap();
    let repo = Repository::open(Arc::new(LocalBackend::new(dir)), OpenOptions::default()).unwrap();
    for n in 0.. {
        let data = child_data(seed, n);
        let w = repo
            .start_backup(&vm(&format!("vm-{}", n % 3)), jiff::Timestamp::now())
            .unwrap();
        println!("lock");
        let index = w
            .new_index(FileName::new("disk-2000").unwrap(), data.len() as u64)
            .unwrap();
        for (pos, chunk) in data.chunks(CS as usize).enumerate() {
            let r = w.insert_chunk(chunk).unwrap();
            index.set(pos as u64, r.digest).unwrap();
            println!("chunk");
        }
        let summary = w.finish_index(index).unwrap();
        println!("index");
        let blob = w
            .write_blob(BlobWriter::with_data(
                FileName::new("vmx").unwrap(),
                format!("n={n}").into_bytes(),
            ))
            .unwrap();
        println!("blob");
        let m = vbm_repo::Manifest {
            files: vec![
                vbm_repo::ManifestFile {
                    path: "vm/disk-flat.vmdk".into(),
                    size_bytes: data.len() as u64,
                    sha256: vbm_repo::Sha256::of(&data),
                    kind: vbm_repo::FileKind::Disk,
                    storage: summary.storage(),
                },
                vbm_repo::ManifestFile {
                    path: "vm/vm.vmx".into(),
                    size_bytes: blob.size,
                    sha256: blob.sha256,
                    kind: vbm_repo::FileKind::Config,
                    storage: blob.storage(),
                },
            ],
            disks: vec![],
            ..write_files(&w, &[], None).unwrap()
        };
        w.commit(m).unwrap();
        println!("commit");
    }
}

// covers F1: a writer killed with SIGKILL at 30 random (seeded, logged) points. Every backup
// with a manifest verifies fully, no half backup is visible, chunk files are whole, recovery
// removes temp files, partial backups and the dead writer's lock, and a rerun dedups.
#[test]
fn writer_killed_with_sigkill_at_random_points() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    // A real grace period: recovery must not collect the killed runs' complete chunks, so that
    // the rerun can reuse them.
    let opts = vbm_repo::InitOptions {
        gc_grace: Duration::from_secs(3600),
        ..init_options(None)
    };
    Repository::init_local(&root, &opts).unwrap();
    let base_seed: u64 = std::env::var("VBM_TEST_F1_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let exe = std::env::current_exe().unwrap();
    let mut killed_mid_backup = 0;
    for iteration in 0..30u64 {
        let seed = base_seed.wrapping_mul(31).wrapping_add(iteration);
        let steps = 1 + (random_bytes(8, seed)[0] as usize % 40);
        eprintln!(
            "F1 iteration {iteration}: seed {seed}, SIGKILL after {steps} steps (replay with VBM_TEST_F1_SEED={base_seed})"
        );
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "integration::crash::f1_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_REPO, &root)
            .env(CHILD_SEED, seed.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        let mut last = String::new();
        for line in out.lines() {
            let line = line.unwrap();
            if ["lock", "chunk", "index", "blob", "commit"].contains(&line.as_str()) {
                seen += 1;
                last = line;
                if seen == steps {
                    break;
                }
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        if last != "commit" {
            killed_mid_backup += 1;
        }

        let repo = Repository::open_local(&root, None).unwrap();
        assert_all_restorable(&repo);
        for id in repo.list_backups().unwrap().committed {
            assert_eq!(repo.read_manifest(&id).unwrap().files.len(), 2, "{id}");
        }
        assert_every_chunk_file_is_whole(&root);
        // Recovery: nothing can be writing now.
        let report = gc(
            &repo,
            &GcOptions {
                leftover_age: Some(Duration::ZERO),
                ..GcOptions::default()
            },
            &mut |_| {},
            &Cancel::new(),
        )
        .unwrap();
        assert!(report.skipped.is_empty());
        let files = tree(&root);
        assert!(
            !files.iter().any(|f| f.contains(".tmp-")),
            "temp files left: {files:?}"
        );
        assert!(
            !files.iter().any(|f| f.starts_with("locks/")),
            "locks left: {files:?}"
        );
        assert!(repo.list_backups().unwrap().partial.is_empty());
        assert_all_restorable(&repo);
    }
    assert!(
        killed_mid_backup >= 10,
        "the kills must land inside backups ({killed_mid_backup})"
    );
    // The rerun stores only what is missing.
    let repo = Repository::open_local(&root, None).unwrap();
    let data = child_data(base_seed, 1);
    let (_, m) = backup(
        &repo,
        "vm-rerun",
        jiff::Timestamp::now(),
        &[disk("d", data)],
    )
    .unwrap();
    assert!(
        m.chunks_new <= 1,
        "complete chunks from killed runs are reused: {m:?}"
    );
    assert_all_restorable(&repo);
}

/// Two backups (an incremental and another VM's full) after a durable first one.
fn f9_scenario(repo: &Repository, parent: &vbm_repo::BackupId) -> vbm_repo::Result<()> {
    let mut data = disk_image(6 * CS as usize, 1);
    data[CS as usize..CS as usize + 4].copy_from_slice(b"day2");
    incremental(
        repo,
        parent,
        t0() + secs(86_400),
        &[
            disk("vm/d-flat.vmdk", data),
            config("vm/vm.vmx", b"v2".to_vec()),
        ],
    )?;
    backup(
        repo,
        "vm-2",
        t0() + secs(86_400),
        &[disk("e", random_bytes(3 * CS as usize, 5))],
    )?;
    Ok(())
}

fn f9_setup() -> (
    ManualClock,
    Arc<vbm_repo::backend::CrashFs>,
    Repository,
    vbm_repo::BackupId,
) {
    let clock = ManualClock::new(t0());
    let (fs, repo) = crash_repo(&clock);
    let (a, _) = backup(
        &repo,
        "vm-1",
        t0(),
        &[
            disk("vm/d-flat.vmdk", disk_image(6 * CS as usize, 1)),
            config("vm/vm.vmx", b"v1".to_vec()),
        ],
    )
    .unwrap();
    fs.sync_all();
    (clock, fs, repo, a)
}

// covers F9: power cut at every sync boundary of a short backup (and every operation as a
// process kill): after "reboot" every committed backup verifies and restores, none references a
// 0-byte or short chunk, recovery cleans up, and the backup can be redone.
#[test]
fn power_cut_at_every_sync_of_a_backup() {
    single_threaded(power_cut_at_every_sync_of_a_backup_inner);
}

fn power_cut_at_every_sync_of_a_backup_inner() {
    let (_clock, fs, repo, a) = f9_setup();
    fs.arm(None);
    f9_scenario(&repo, &a).unwrap();
    let (ops, syncs) = fs.counts();
    eprintln!("F9: power cut at each of {syncs} syncs, process kill at each of {ops} operations");
    assert!(syncs >= 20, "{syncs} syncs");
    let mut outcomes = BTreeSet::new();
    let plans = (1..=syncs)
        .map(|k| CrashPlan {
            kind: CrashKind::PowerCut,
            at: CrashTrigger::Sync(k),
        })
        .chain((1..=ops).map(|k| CrashPlan {
            kind: CrashKind::ProcessKill,
            at: CrashTrigger::Op(k),
        }));
    for plan in plans {
        let (clock, fs, repo, a) = f9_setup();
        fs.arm(Some(plan));
        // Usually an error; Ok when the crash hit the lock release after the last commit (the
        // backup is committed; the stale lock is cleared by recovery).
        let _ = f9_scenario(&repo, &a);
        assert!(fs.crashed(), "{plan:?} never happened");
        drop(repo);
        fs.reboot();
        let repo = reopen_crash(&fs, &clock);
        let listing = repo.list_backups().unwrap();
        assert!(
            listing.committed.contains(&a),
            "{plan:?}: the durable backup vanished"
        );
        let report = verify_all(&repo, vbm_repo::verify::VerifyMode::Full);
        assert!(report.ok, "{plan:?}: {report:#?}");
        outcomes.insert(listing.committed.len());
        // Recovery, then the same backups again.
        clock.advance(secs(601));
        gc(
            &repo,
            &GcOptions {
                leftover_age: Some(Duration::ZERO),
                ..GcOptions::default()
            },
            &mut |_| {},
            &Cancel::new(),
        )
        .unwrap();
        assert!(repo.list_backups().unwrap().partial.is_empty(), "{plan:?}");
        assert!(
            !fs.files().iter().any(|(p, _)| p.contains(".tmp-")),
            "{plan:?}"
        );
        f9_scenario(&repo, &a).unwrap();
        assert_all_restorable(&repo);
    }
    // Crashes landed before, between and after the two commits.
    assert!(
        outcomes.contains(&1) && outcomes.contains(&2),
        "{outcomes:?}"
    );
}

// covers F4: GC killed (or powered off) at every file operation: no referenced chunk is lost,
// the GC lock is detected as stale, and a second GC deletes exactly the expected garbage.
#[test]
fn gc_killed_at_every_operation() {
    single_threaded(gc_killed_at_every_operation_inner);
}

fn gc_killed_at_every_operation_inner() {
    let setup = || {
        let clock = ManualClock::new(t0());
        let (fs, repo) = crash_repo(&clock);
        let mut data = random_bytes(6 * CS as usize, 1);
        let (a, _) = backup(&repo, "vm-1", t0(), &[disk("d", data.clone())]).unwrap();
        for pos in [0, 1, 3, 5] {
            data[pos * CS as usize..pos * CS as usize + 4].copy_from_slice(b"diff");
        }
        incremental(&repo, &a, t0() + secs(60), &[disk("d", data)]).unwrap();
        // A writer that died mid-backup: its partial directory and stale lock are GC's too.
        let w = repo.start_backup(&vm("vm-3"), t0()).unwrap();
        let m = write_files(&w, &[disk("f", random_bytes(2 * CS as usize, 3))], None).unwrap();
        drop(m);
        std::mem::forget(w);
        backup(
            &repo,
            "vm-2",
            t0(),
            &[disk("e", random_bytes(2 * CS as usize, 2))],
        )
        .unwrap();
        remove_backup(&repo, &a).unwrap();
        clock.advance(secs(7200));
        fs.sync_all();
        (clock, fs, repo)
    };
    let chunks = |fs: &vbm_repo::backend::CrashFs| -> Vec<String> {
        fs.files()
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.starts_with("chunks/") && p.len() == 7 + 6 + 64)
            .collect()
    };
    let (_clock, fs, repo) = setup();
    fs.arm(None);
    let golden = gc(&repo, &GcOptions::default(), &mut |_| {}, &Cancel::new()).unwrap();
    assert_eq!(golden.chunks_deleted, 6, "{golden:#?}");
    assert_eq!(golden.partial_backups_removed.len(), 1);
    assert_eq!(golden.stale_locks_cleared.len(), 1);
    let golden_chunks = chunks(&fs);
    let (ops, _) = fs.counts();
    eprintln!("F4: GC killed and powered off at each of {ops} operations");
    for k in 1..=ops {
        for kind in [CrashKind::ProcessKill, CrashKind::PowerCut] {
            let (clock, fs, repo) = setup();
            fs.arm(Some(CrashPlan {
                kind,
                at: CrashTrigger::Op(k),
            }));
            let _ = gc(&repo, &GcOptions::default(), &mut |_| {}, &Cancel::new());
            assert!(fs.crashed(), "op {k}");
            fs.reboot();
            clock.advance(secs(601));
            let repo = reopen_crash(&fs, &clock);
            assert_all_restorable(&repo);
            let second = gc(&repo, &GcOptions::default(), &mut |_| {}, &Cancel::new()).unwrap();
            assert_eq!(chunks(&fs), golden_chunks, "op {k} {kind:?}: {second:#?}");
            assert!(repo.locks().unwrap().is_empty());
            assert_all_restorable(&repo);
        }
    }
}
