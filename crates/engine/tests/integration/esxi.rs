//! Backups straight from a standalone ESXi host (the testbed's ESX mode, `specs/esx.json`):
//! full, incremental after a guest write, and restores of both to a directory.

use vbm_engine::vbm_repo::{BackupMode, FileKind, Manifest};
use vbm_engine::{
    BackupOptions, CancellationToken, DirOptions, NoProgress, RunId, VmSelector, backup,
    restore_to_dir,
};
use vbm_testkit::Testbed;

use super::support::{client, disk_file, repo, sha256_file};

/// The spec's CBT block size.
const BLOCK: u64 = 64 << 10;

/// Bytes read from disks: everything read minus the small files (VMX, NVRAM, descriptors).
fn disk_bytes_read(bytes_read: u64, manifest: &Manifest) -> u64 {
    let small: u64 = manifest
        .files
        .iter()
        .filter(|f| f.kind != FileKind::Disk)
        .map(|f| f.size_bytes)
        .sum();
    bytes_read - small
}

#[tokio::test]
async fn esxi_full_and_incremental_backups_restore_to_the_source_digests() {
    let tb = Testbed::start("esx").await.unwrap();
    assert_eq!(tb.api_type, "HostAgent");
    let esx = client(&tb).await;
    assert!(esx.is_esxi());
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    let info = tb.control().info().await.unwrap();
    let vm = info.vm("esx-web01").unwrap();
    let (thin, thick) = (&vm.disks[0], &vm.disks[1]);
    assert!(thin.thin && !thick.thin && thick.datastore == "datastore2");
    let mut options = BackupOptions::new(VmSelector::InstanceUuid(vm.instance_uuid.clone()));
    options.vcenter = "esx01.lab.local".into();

    // Full: the thin disk is read sparsely, the thick random one entirely.
    let full = backup(&esx, &repo, &options, &NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(full.mode, BackupMode::Full);
    assert_eq!(
        full.manifest.vcenter_uuid, None,
        "ESXi has no instance UUID"
    );
    let full_disk_bytes = disk_bytes_read(full.bytes_read, &full.manifest);
    assert!(
        full_disk_bytes >= thick.capacity_bytes
            && full_disk_bytes < thick.capacity_bytes + thin.capacity_bytes,
        "full read {full_disk_bytes} disk bytes"
    );
    let v1 = [
        tb.control().disk_sha256(&vm.name, thin.key).await.unwrap(),
        tb.control().disk_sha256(&vm.name, thick.key).await.unwrap(),
    ];
    assert!(
        tb.control()
            .snapshot_names(&vm.name)
            .await
            .unwrap()
            .is_empty(),
        "the backup snapshot is gone"
    );

    // A guest write of 100 KiB at an unaligned offset of the thin disk.
    let (offset, length) = (7 * (1 << 20) + 4096, 100 * 1024);
    tb.control()
        .write(&vm.name, thin.key, offset, length, 77)
        .await
        .unwrap();
    let v2_thin = tb.control().disk_sha256(&vm.name, thin.key).await.unwrap();
    assert_ne!(v2_thin, v1[0]);
    options.run_id = RunId::new();
    tb.control().reset_stats().await.unwrap();
    let incremental = backup(&esx, &repo, &options, &NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(incremental.mode, BackupMode::Incremental);
    assert_eq!(incremental.manifest.parent.as_ref(), Some(&full.backup_id));
    assert!(
        incremental.warnings.is_empty(),
        "{:?}",
        incremental.warnings
    );
    let blocks = (offset + length).div_ceil(BLOCK) - offset / BLOCK;
    let incr_disk_bytes = disk_bytes_read(incremental.bytes_read, &incremental.manifest);
    assert!(
        (length..=blocks * BLOCK).contains(&incr_disk_bytes),
        "incremental read {incr_disk_bytes} disk bytes for a {length}-byte write"
    );
    // The testbed agrees: only the thin disk's flat file was read, only the changed blocks.
    let stats = tb.control().stats().await.unwrap();
    let per_path = stats["folder_get_bytes"]["per_path"].as_object().unwrap();
    let flat_reads: Vec<(&String, u64)> = per_path
        .iter()
        .filter(|(p, _)| p.ends_with("-flat.vmdk"))
        .map(|(p, n)| (p, n.as_u64().unwrap()))
        .collect();
    assert_eq!(
        flat_reads,
        [(
            &"[datastore1] esx-web01/esx-web01-flat.vmdk".to_owned(),
            incr_disk_bytes
        )],
        "{stats}"
    );

    // Both restore points restore to the testbed's digests.
    for (name, report, thin_digest) in [
        ("full", &full, &v1[0]),
        ("incremental", &incremental, &v2_thin),
    ] {
        let target = dir.path().join(name);
        let restored = restore_to_dir(
            &repo,
            &report.backup_id,
            &target,
            &DirOptions::default(),
            &NoProgress,
            &cancel,
        )
        .await
        .unwrap();
        assert_eq!(restored.files.len(), report.manifest.files.len());
        for (key, digest) in [(thin.key, thin_digest), (thick.key, &v1[1])] {
            let path = target.join(disk_file(&report.manifest, key));
            assert_eq!(
                &sha256_file(&path),
                digest,
                "disk {key} of {}",
                report.backup_id
            );
        }
    }

    // The mostly-zero thin disk of another VM is read sparsely and restores exactly.
    let db = info.vm("esx-db01").unwrap();
    let db_disk = &db.disks[0];
    let report = backup(
        &esx,
        &repo,
        &BackupOptions::new(VmSelector::Name("esx-db01".into())),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    let db_read = disk_bytes_read(report.bytes_read, &report.manifest);
    assert!(
        db_read < db_disk.capacity_bytes / 8,
        "read {db_read} of {} bytes",
        db_disk.capacity_bytes
    );
    let target = dir.path().join("db");
    restore_to_dir(
        &repo,
        &report.backup_id,
        &target,
        &DirOptions::default(),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert_eq!(
        sha256_file(&target.join(disk_file(&report.manifest, db_disk.key))),
        tb.control()
            .disk_sha256("esx-db01", db_disk.key)
            .await
            .unwrap()
    );
    esx.logout().await.unwrap();
}

/// Standalone hosts have no instance UUID: two hosts holding a VM with the same instance UUID
/// (a copied VM) are told apart by name, and an incremental never builds on the other's backup.
#[tokio::test]
async fn an_incremental_never_builds_on_a_backup_from_another_esxi_host() {
    let (tb_a, tb_b) = (
        Testbed::start("esx").await.unwrap(),
        Testbed::start("esx").await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    let mut options = BackupOptions::new(VmSelector::Name("esx-db01".into()));
    options.vcenter = "esx-a.lab.local".into();
    let first = backup(&client(&tb_a).await, &repo, &options, &NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(first.manifest.vcenter_uuid, None);

    options.vcenter = "esx-b.lab.local".into();
    options.run_id = RunId::new();
    let second = backup(&client(&tb_b).await, &repo, &options, &NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(
        second.backup_id.vm(),
        first.backup_id.vm(),
        "same repository key"
    );
    assert_eq!(second.mode, BackupMode::Full);
    assert!(
        second.warnings.iter().any(|w| w.contains("another host")),
        "{:?}",
        second.warnings
    );

    // The same host again: incremental.
    options.run_id = RunId::new();
    let third = backup(&client(&tb_b).await, &repo, &options, &NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(third.mode, BackupMode::Incremental, "{:?}", third.warnings);
}
