//! A backup process killed (F6), interrupted (F8), stopped past its lease (F7), or out of disk
//! space (S-D1): never a visible half backup, never a snapshot left for good.

use std::time::Duration;

use serde_json::json;
use vbm_repo::InitOptions;

use super::support::{Env, signal, stdout_json};

/// Makes every disk download crawl so that a backup is reliably mid-download.
async fn slow_downloads(env: &Env, bytes_per_sec: u64) {
    env.tb.control().add_fault(json!({"kind": "transfer_slow", "path_contains": "-flat.vmdk", "bytes_per_sec": bytes_per_sec, "count": 0})).await.unwrap();
}

// covers F6: kill -9 with a vCenter snapshot open; the next run removes it.
#[tokio::test]
async fn killed_backup_leaves_no_backup_and_the_next_run_sweeps_its_snapshot() {
    let env = Env::new("default").await;
    slow_downloads(&env, 1_000_000).await;
    let mut child = env.spawn(&env.backup_args("db01"));
    env.wait_for_download(100_000).await;
    signal(&child, "KILL");
    let _ = child.wait();
    assert_eq!(
        env.vbm_snapshots("db01").await.len(),
        1,
        "the killed run's snapshot is still there"
    );
    assert!(
        env.repository()
            .list_backups()
            .unwrap()
            .committed
            .is_empty(),
        "no half backup is visible"
    );

    env.tb.control().clear_faults().await.unwrap();
    let next = stdout_json(&env.run(&env.backup_args("db01")));
    let warnings: Vec<String> = serde_json::from_value(next["warnings"].clone()).unwrap();
    assert!(
        warnings.iter().any(|w| w.contains("interrupted vbm run")),
        "{warnings:?}"
    );
    assert!(
        env.vbm_snapshots("db01").await.is_empty(),
        "INV-6: no vbm snapshot left"
    );
    assert_eq!(env.repository().list_backups().unwrap().committed.len(), 1);
}

// covers F8: SIGTERM mid-backup cancels cleanly: snapshot removed, nothing committed.
#[tokio::test]
async fn sigterm_cancels_the_backup_and_removes_the_snapshot() {
    let env = Env::new("default").await;
    slow_downloads(&env, 1_000_000).await;
    let child = env.spawn(&env.backup_args("db01"));
    env.wait_for_download(100_000).await;
    signal(&child, "TERM");
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a cancelled backup is a failure for scripts"
    );
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cancelled"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(env.vbm_snapshots("db01").await.is_empty());
    let listing = env.repository().list_backups().unwrap();
    assert!(
        listing.committed.is_empty() && listing.partial.is_empty(),
        "{listing:?}"
    );
}

// covers F7: a backup stopped (SIGSTOP) past its lock's staleness while GC runs must either fail
// with "lease lost" or have every chunk it references — never a success with missing chunks.
#[tokio::test]
async fn stopped_backup_past_its_lease_never_commits_missing_chunks() {
    let options = InitOptions {
        chunk_size: 1 << 20,
        lock_stale: Duration::from_secs(2),
        gc_grace: Duration::from_secs(0),
        ..InitOptions::default()
    };
    let env = Env::with_repo("default", options).await;
    // A first backup so that the second one references existing chunks.
    stdout_json(&env.run(&env.backup_args("db01")));
    let info = env.tb.control().info().await.unwrap();
    env.tb
        .control()
        .write(
            "db01",
            info.vm("db01").unwrap().disks[0].key,
            0,
            2 << 20,
            11,
        )
        .await
        .unwrap();
    slow_downloads(&env, 2_000_000).await;
    let before = env.folder_bytes().await;
    let child = env.spawn(&env.backup_args("db01"));
    env.wait_for_download(before + 200_000).await;
    signal(&child, "STOP");
    tokio::time::sleep(Duration::from_secs(4)).await;
    // Collect garbage while the writer sleeps: its lock is stale by now, so GC neither waits for
    // it nor protects what it wrote.
    let repo = env.repository();
    let gc = vbm_repo::gc::gc(
        &repo,
        &vbm_repo::gc::GcOptions::default(),
        &mut |_| {},
        &vbm_repo::Cancel::new(),
    )
    .unwrap();
    assert!(
        !gc.stale_locks_cleared.is_empty(),
        "GC saw the stopped writer's lock as stale: {gc:?}"
    );
    env.tb.control().clear_faults().await.unwrap();
    signal(&child, "CONT");
    let output = child.wait_with_output().unwrap();
    eprintln!(
        "F7 outcome: {} / {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    if output.status.success() {
        // It kept its chunks: everything it committed must verify in full (INV-1, INV-5).
        let report = vbm_repo::verify::verify(
            &repo,
            &vbm_repo::verify::VerifyOptions::default(),
            &mut |_| {},
            &vbm_repo::Cancel::new(),
        )
        .unwrap();
        assert!(
            report.ok,
            "a backup that outlived its lease committed damage: {report:?}"
        );
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("lease") || stderr.contains("lock"),
            "{stderr}"
        );
        assert_eq!(repo.list_backups().unwrap().committed.len(), 1);
    }
    assert!(env.vbm_snapshots("db01").await.is_empty());
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

// covers S-D1: the repository's disk fills up mid-backup: a clear "no space" failure, the
// snapshot is removed, older backups stay intact, and after space is freed the next run works.
#[tokio::test]
async fn repository_disk_full_fails_cleanly_and_recovers() {
    if !is_root() {
        eprintln!("skipped: needs root to mount a small tmpfs");
        return;
    }
    let tb = vbm_testkit::Testbed::start("default").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mount = dir.path().join("small");
    std::fs::create_dir(&mount).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mount.clone());
    let repo_dir = mount.join("repo");
    vbm_repo::Repository::init_local(
        &repo_dir,
        &InitOptions {
            chunk_size: 1 << 20,
            ..InitOptions::default()
        },
    )
    .unwrap();
    let env = Env {
        tb,
        dir,
        repo: repo_dir.clone(),
    };

    // web01 (thin, half allocated, compressible) fits; app01 (16 MiB random) does not.
    stdout_json(&env.run(&env.backup_args("web01")));
    let output = env.run(&env.backup_args("app01"));
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.to_lowercase().contains("no space"), "{stderr}");
    assert!(
        env.vbm_snapshots("app01").await.is_empty(),
        "the snapshot is removed"
    );
    let repo = env.repository();
    assert_eq!(
        repo.list_backups().unwrap().committed.len(),
        1,
        "only the older backup"
    );
    let report = vbm_repo::verify::verify(
        &repo,
        &vbm_repo::verify::VerifyOptions::default(),
        &mut |_| {},
        &vbm_repo::Cancel::new(),
    )
    .unwrap();
    assert!(report.ok, "the older backup is intact: {report:?}");

    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mount)
        .status()
        .unwrap();
    assert!(grown.success());
    stdout_json(&env.run(&env.backup_args("app01")));
    assert_eq!(env.repository().list_backups().unwrap().committed.len(), 2);
}
