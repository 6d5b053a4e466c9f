//! What the engine does when vCenter, the VM or the network misbehaves (FAULT-MATRIX rows in
//! comments), and the VM shapes of the awkward inventory.

use std::time::Duration;

use serde_json::json;
use vbm_engine::vbm_repo::BackupMode;
use vbm_engine::{
    BackupOptions, CancellationToken, Error, NoProgress, Phase, RemovePolicy, RunId, VmSelector,
    backup,
};
use vbm_testkit::Testbed;

use super::support::{Events, client, repo, restored_sha256};

fn options(vm: &str) -> BackupOptions {
    let mut o = BackupOptions::new(VmSelector::Name(vm.into()));
    o.remove_policy = RemovePolicy {
        attempts: 3,
        delay: Duration::from_millis(50),
    };
    o
}

async fn vbm_snapshots(tb: &Testbed, vm: &str) -> Vec<String> {
    tb.control()
        .snapshot_names(vm)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("vbm-"))
        .collect()
}

async fn assert_restores_source(
    tb: &Testbed,
    repo: &vbm_engine::vbm_repo::Repository,
    report: &vbm_engine::BackupReport,
    vm: &str,
) {
    for disk in &report.manifest.disks {
        assert_eq!(
            restored_sha256(repo, &report.backup_id, &disk.file),
            tb.control().disk_sha256(vm, disk.device_key).await.unwrap(),
            "{} of {vm} in {} ({:?}, warnings {:?})",
            disk.file,
            report.backup_id,
            report.mode,
            report.warnings
        );
    }
}

#[tokio::test]
async fn awkward_vms_two_datastores_odd_sizes_and_independent_disks() {
    let tb = Testbed::start("awkward").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();

    // Two disks on two datastores (one name with a space), a capacity not a multiple of 4 MiB.
    let name = "web 01 #1 & co + more";
    let report = backup(&vc, &repo, &options(name), &NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(report.manifest.disks.len(), 2);
    assert!(
        report
            .manifest
            .disks
            .iter()
            .any(|d| d.capacity_bytes % (4 << 20) != 0)
    );
    let datastores: Vec<_> = report
        .manifest
        .disks
        .iter()
        .filter_map(|d| d.datastore.clone())
        .collect();
    assert!(
        datastores.contains(&"ds1".to_owned()) && datastores.contains(&"ds 2".to_owned()),
        "{datastores:?}"
    );
    assert_restores_source(&tb, &repo, &report, name).await;

    // Independent disks are skipped with a warning; the rest is backed up.
    let report = backup(&vc, &repo, &options("50%25 load"), &NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(report.manifest.disks.len(), 1, "only the persistent disk");
    assert_eq!(
        report
            .warnings
            .iter()
            .filter(|w| w.contains("independent disk"))
            .count(),
        2,
        "{:?}",
        report.warnings
    );
    assert_restores_source(&tb, &repo, &report, "50%25 load").await;

    // A mostly-zero thin disk costs (almost) nothing to read or store.
    let report = backup(&vc, &repo, &options("a%2fb slash-vm"), &NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(
        report.manifest.chunks_new, 0,
        "an all-zero disk stores no chunk"
    );
    assert_restores_source(&tb, &repo, &report, "a%2fb slash-vm").await;
}

// ADR 30: a VM with snapshots vbm did not make is refused, clearly, before any snapshot or data.
#[tokio::test]
async fn vm_with_user_snapshots_is_refused_with_the_reason() {
    let tb = Testbed::start("awkward").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let err = backup(
        &vc,
        &repo,
        &options("Ünïcødé-vm"),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let Error::Refused(message) = &err else {
        panic!("expected a refusal, got {err:?}")
    };
    assert!(
        message.contains("before-upgrade") && message.contains("not created by vbm"),
        "{message}"
    );
    assert!(vbm_snapshots(&tb, "Ünïcødé-vm").await.is_empty());
    assert!(repo.list_backups().unwrap().committed.is_empty());
}

/// vSAN and vVols have no flat extents to read: a VM with a disk there is refused, naming the
/// disk and the datastore, before any snapshot is made.
#[tokio::test]
async fn a_disk_on_an_object_backed_datastore_is_refused_before_the_snapshot() {
    let spec = json!({
        "seed": 3,
        "datacenters": [{
            "name": "DC0",
            "datastores": [{"name": "ds1"}, {"name": "vsanDatastore", "type": "vsan"}],
            "hosts": ["esx01"],
            "vms": [{"name": "on-vsan", "cbt": true, "disks": [
                {"capacity": 4194304, "datastore": "ds1"},
                {"capacity": 4194304, "datastore": "vsanDatastore"}
            ]}]
        }]
    });
    let tb = Testbed::start(&spec.to_string()).await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let err = backup(
        &vc,
        &repo,
        &options("on-vsan"),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let Error::Refused(message) = &err else {
        panic!("expected a refusal, got {err:?}")
    };
    assert!(
        message.contains("Hard disk 2") && message.contains("vsan datastore vsanDatastore"),
        "{message}"
    );
    let stats = tb.control().stats().await.unwrap();
    assert_eq!(
        stats["soap_calls"]["CreateSnapshot_Task"],
        serde_json::Value::Null,
        "{stats}"
    );
    assert!(repo.list_backups().unwrap().committed.is_empty());
}

// N11: a CBT reset and a resized disk each fall back to a full read of that disk, with a warning.
#[tokio::test]
async fn cbt_reset_and_disk_resize_fall_back_to_full_reads() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    let vm = tb
        .control()
        .info()
        .await
        .unwrap()
        .vm("web01")
        .unwrap()
        .clone();
    let key = vm.disks[0].key;
    backup(&vc, &repo, &options("web01"), &NoProgress, &cancel)
        .await
        .unwrap();

    tb.control().cbt_reset("web01").await.unwrap();
    tb.control()
        .write("web01", key, 1 << 20, 8192, 1)
        .await
        .unwrap();
    let after_reset = backup(
        &vc,
        &repo,
        &BackupOptions {
            run_id: RunId::new(),
            ..options("web01")
        },
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(after_reset.mode, BackupMode::Full);
    assert!(
        after_reset
            .warnings
            .iter()
            .any(|w| w.contains("CBT was reset")),
        "{:?}",
        after_reset.warnings
    );
    assert_restores_source(&tb, &repo, &after_reset, "web01").await;

    // The next one is incremental again from the new baseline.
    tb.control()
        .write("web01", key, 2 << 20, 8192, 2)
        .await
        .unwrap();
    let next = backup(
        &vc,
        &repo,
        &BackupOptions {
            run_id: RunId::new(),
            ..options("web01")
        },
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(next.mode, BackupMode::Incremental);
    assert_restores_source(&tb, &repo, &next, "web01").await;

    tb.control()
        .resize("web01", key, vm.disks[0].capacity_bytes + (3 << 20))
        .await
        .unwrap();
    let resized = backup(
        &vc,
        &repo,
        &BackupOptions {
            run_id: RunId::new(),
            ..options("web01")
        },
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(resized.mode, BackupMode::Full);
    assert!(
        resized.warnings.iter().any(|w| w.contains("resized")),
        "{:?}",
        resized.warnings
    );
    assert_eq!(
        resized.manifest.disks[0].capacity_bytes,
        vm.disks[0].capacity_bytes + (3 << 20)
    );
    assert_restores_source(&tb, &repo, &resized, "web01").await;
}

// N2: a transfer cut mid-body resumes from where it stopped; the backup is exact.
#[tokio::test]
async fn truncated_transfers_are_resumed() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    tb.control().add_fault(json!({"kind": "transfer_truncate", "path_contains": "-flat.vmdk", "after_bytes": 300000, "count": 3})).await.unwrap();
    let report = backup(
        &vc,
        &repo,
        &options("db01"),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    let faults = tb.control().faults().await.unwrap();
    assert_eq!(faults[0]["fired"], 3, "{faults}");
    assert_restores_source(&tb, &repo, &report, "db01").await;
}

// N7: a failing CreateSnapshot task fails the backup with the server's message; nothing is read.
#[tokio::test]
async fn failing_snapshot_creation_fails_before_any_download() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    tb.control().add_fault(json!({"kind": "task_fail", "method": "CreateSnapshot_Task", "message": "An error occurred while quiescing the virtual machine"})).await.unwrap();
    tb.control().reset_stats().await.unwrap();
    let err = backup(
        &vc,
        &repo,
        &options("web01"),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("quiescing"), "{err}");
    let stats = tb.control().stats().await.unwrap();
    assert_eq!(
        stats["folder_get_bytes"]["total"], 0,
        "no data read: {stats}"
    );
    assert!(vbm_snapshots(&tb, "web01").await.is_empty());
    assert!(repo.list_backups().unwrap().committed.is_empty());
}

// N7: a failing snapshot removal is retried; if it keeps failing, the complete backup succeeds
// with a warning and the next run removes the orphan.
#[tokio::test]
async fn failing_snapshot_removal_is_retried_then_reported_and_swept_next_time() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    tb.control()
        .add_fault(json!({"kind": "task_fail", "method": "RemoveSnapshot_Task", "count": 1}))
        .await
        .unwrap();
    let first = backup(&vc, &repo, &options("web01"), &NoProgress, &cancel)
        .await
        .unwrap();
    assert!(
        first
            .warnings
            .iter()
            .all(|w| !w.contains("could not be removed")),
        "one failure is retried: {:?}",
        first.warnings
    );
    assert!(vbm_snapshots(&tb, "web01").await.is_empty());

    tb.control().add_fault(json!({"kind": "task_fail", "method": "RemoveSnapshot_Task", "count": 0, "message": "disk consolidation failed"})).await.unwrap();
    let second = backup(
        &vc,
        &repo,
        &BackupOptions {
            run_id: RunId::new(),
            ..options("web01")
        },
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.contains("could not be removed") && w.contains("consolidation failed")),
        "{:?}",
        second.warnings
    );
    assert_eq!(
        vbm_snapshots(&tb, "web01").await.len(),
        1,
        "the orphan is left for the next run"
    );

    tb.control().clear_faults().await.unwrap();
    let third = backup(
        &vc,
        &repo,
        &BackupOptions {
            run_id: RunId::new(),
            ..options("web01")
        },
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert!(
        third
            .warnings
            .iter()
            .any(|w| w.contains("left by an interrupted vbm run")),
        "{:?}",
        third.warnings
    );
    assert!(vbm_snapshots(&tb, "web01").await.is_empty());
    assert_eq!(repo.list_backups().unwrap().committed.len(), 3);
}

// Cancel mid-download: no snapshot, no visible (or partial) backup. N5: on a slow link the
// backup reports progress with a rate and an ETA.
#[tokio::test]
async fn cancel_mid_download_leaves_nothing_and_slow_links_report_progress() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    tb.control().add_fault(json!({"kind": "transfer_slow", "path_contains": "-flat.vmdk", "bytes_per_sec": 2_000_000, "count": 0})).await.unwrap();
    let events = Events::default();
    let cancel = CancellationToken::new();
    let watcher = {
        let (events, cancel) = (events.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let downloading = events.0.lock().unwrap().iter().any(|e| {
                    e.phase == Phase::Downloading
                        && e.bytes_done > 0
                        && e.rate_bytes_per_sec > 0
                        && e.eta_seconds.is_some()
                });
                if downloading {
                    cancel.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let result = backup(&vc, &repo, &options("db01"), &events, &cancel).await;
    watcher.await.unwrap();
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert!(
        vbm_snapshots(&tb, "db01").await.is_empty(),
        "the snapshot is removed on cancel"
    );
    let listing = repo.list_backups().unwrap();
    assert!(
        listing.committed.is_empty() && listing.partial.is_empty(),
        "{listing:?}"
    );
}
