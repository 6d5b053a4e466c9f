//! Full and incremental backups of testbed VMs, checked by restoring through the repository and
//! comparing with the testbed's own digests of the disks.

use vbm_engine::vbm_repo::{BackupMode, FileKind};
use vbm_engine::{BackupOptions, CancellationToken, ModeRequest, VmSelector, backup};
use vbm_testkit::Testbed;

use super::support::{Events, client, disk_file, repo, restored_sha256};

#[tokio::test]
async fn full_then_incremental_backups_restore_exactly_and_read_only_changes() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let info = tb.control().info().await.unwrap();
    let vm = info.vm("web01").unwrap();
    let disk = &vm.disks[0];
    let events = Events::default();
    let cancel = CancellationToken::new();
    let mut options = BackupOptions::new(VmSelector::InstanceUuid(vm.instance_uuid.clone()));
    options.vcenter = "testbed".into();

    // Full: only the allocated half of the thin disk is read.
    let full = backup(&vc, &repo, &options, &events, &cancel)
        .await
        .unwrap();
    assert_eq!(full.mode, BackupMode::Full);
    let source_v1 = tb.control().disk_sha256(&vm.name, disk.key).await.unwrap();
    let flat = disk_file(&full.manifest, disk.key).to_owned();
    assert_eq!(restored_sha256(&repo, &full.backup_id, &flat), source_v1);
    let recorded = full.manifest.files.iter().find(|f| f.path == flat).unwrap();
    assert_eq!(
        recorded.sha256.to_hex(),
        source_v1,
        "the manifest records the source's digest"
    );
    assert!(
        full.bytes_read < disk.capacity_bytes,
        "a thin disk is read sparsely ({} of {})",
        full.bytes_read,
        disk.capacity_bytes
    );
    for kind in [
        FileKind::Config,
        FileKind::Descriptor,
        FileKind::Nvram,
        FileKind::Disk,
    ] {
        assert!(
            full.manifest.files.iter().any(|f| f.kind == kind),
            "{kind:?} file missing"
        );
    }
    assert!(
        tb.control()
            .snapshot_names(&vm.name)
            .await
            .unwrap()
            .iter()
            .all(|n| !n.starts_with("vbm-"))
    );

    // A guest write of 100 KiB at an unaligned offset.
    tb.control()
        .write(&vm.name, disk.key, 5 * 1024 * 1024 + 4096, 100 * 1024, 99)
        .await
        .unwrap();
    let source_v2 = tb.control().disk_sha256(&vm.name, disk.key).await.unwrap();
    assert_ne!(source_v1, source_v2);
    options.run_id = vbm_engine::RunId::new();
    let incremental = backup(&vc, &repo, &options, &events, &cancel)
        .await
        .unwrap();
    assert_eq!(incremental.mode, BackupMode::Incremental);
    assert_eq!(incremental.manifest.parent.as_ref(), Some(&full.backup_id));
    let small_files: u64 = incremental
        .manifest
        .files
        .iter()
        .filter(|f| f.kind != FileKind::Disk)
        .map(|f| f.size_bytes)
        .sum();
    let disk_bytes = incremental.bytes_read - small_files;
    // CBT reports 64 KiB blocks: the write touches 2 or 3 of them.
    assert!(
        (100 * 1024..=3 * 65536).contains(&disk_bytes),
        "incremental read {disk_bytes} disk bytes for a 100 KiB write"
    );
    assert_eq!(
        restored_sha256(&repo, &incremental.backup_id, &flat),
        source_v2
    );
    assert_eq!(
        restored_sha256(&repo, &full.backup_id, &flat),
        source_v1,
        "the older restore point is untouched"
    );

    let events = events.0.lock().unwrap();
    let phases: Vec<_> = events.iter().map(|e| e.phase).collect();
    for phase in [
        vbm_engine::Phase::Connecting,
        vbm_engine::Phase::Snapshot,
        vbm_engine::Phase::Downloading,
        vbm_engine::Phase::Compressing,
        vbm_engine::Phase::Done,
    ] {
        assert!(phases.contains(&phase), "no {phase:?} event");
    }
}

#[tokio::test]
async fn incremental_request_on_a_vm_without_cbt_enables_it_and_starts_with_a_full() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let info = tb.control().info().await.unwrap();
    let vm = info.vm("db01").unwrap();
    assert!(!vm.cbt, "db01 starts without CBT");
    let options = BackupOptions {
        mode: ModeRequest::Incremental,
        ..BackupOptions::new(VmSelector::Name("db01".into()))
    };
    let cancel = CancellationToken::new();
    let first = backup(&vc, &repo, &options, &vbm_engine::NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(first.mode, BackupMode::Full);
    assert!(
        first
            .warnings
            .iter()
            .any(|w| w.contains("Changed Block Tracking was off")),
        "{:?}",
        first.warnings
    );
    assert!(
        tb.control().info().await.unwrap().vm("db01").unwrap().cbt,
        "CBT is now on"
    );
    for d in &vm.disks {
        let path = disk_file(&first.manifest, d.key);
        assert_eq!(
            restored_sha256(&repo, &first.backup_id, path),
            tb.control().disk_sha256("db01", d.key).await.unwrap()
        );
    }

    let second = backup(
        &vc,
        &repo,
        &BackupOptions {
            run_id: vbm_engine::RunId::new(),
            ..options
        },
        &vbm_engine::NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(second.mode, BackupMode::Incremental);
    let small_files: u64 = second
        .manifest
        .files
        .iter()
        .filter(|f| f.kind != FileKind::Disk)
        .map(|f| f.size_bytes)
        .sum();
    assert_eq!(
        second.bytes_read, small_files,
        "nothing changed: no disk data is read"
    );
    assert_eq!(second.manifest.chunks_new, 0, "and nothing new is stored");
}

/// Two vCenters that both hold a VM with the same instance UUID (a replicated or re-registered
/// VM) share its repository key; an incremental never builds on the other vCenter's backup.
#[tokio::test]
async fn an_incremental_never_builds_on_a_backup_from_another_vcenter() {
    let (tb_a, tb_b) = (
        Testbed::start("default").await.unwrap(),
        Testbed::start("default").await.unwrap(),
    );
    assert_ne!(tb_a.instance_uuid, tb_b.instance_uuid);
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let options = BackupOptions::new(VmSelector::Name("app01".into()));
    let cancel = CancellationToken::new();

    let vc_a = client(&tb_a).await;
    let first = backup(&vc_a, &repo, &options, &vbm_engine::NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(
        first.manifest.vcenter_uuid.as_deref(),
        Some(tb_a.instance_uuid.as_str())
    );

    let vc_b = client(&tb_b).await;
    let second = backup(
        &vc_b,
        &repo,
        &BackupOptions {
            run_id: vbm_engine::RunId::new(),
            ..options
        },
        &vbm_engine::NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(
        second.backup_id.vm(),
        first.backup_id.vm(),
        "same repository key"
    );
    assert_eq!(second.mode, BackupMode::Full);
    assert!(
        second
            .warnings
            .iter()
            .any(|w| w.contains("another vCenter")),
        "{:?}",
        second.warnings
    );
    for d in &tb_b
        .control()
        .info()
        .await
        .unwrap()
        .vm("app01")
        .unwrap()
        .disks
    {
        assert_eq!(
            restored_sha256(&repo, &second.backup_id, disk_file(&second.manifest, d.key)),
            tb_b.control().disk_sha256("app01", d.key).await.unwrap()
        );
    }
}
