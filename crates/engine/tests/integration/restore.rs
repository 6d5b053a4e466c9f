//! Restores: to a directory (byte-identical, sparse, verified), to vCenter as a new VM, and in
//! place over the original VM.

use std::os::unix::fs::MetadataExt;

use vbm_engine::vbm_repo::FileKind;
use vbm_engine::{
    BackupOptions, CancellationToken, DirOptions, InPlaceOptions, NoProgress, VcenterTarget,
    VmSelector, backup, restore_in_place, restore_to_dir, restore_to_vcenter,
};
use vbm_testkit::Testbed;

use super::support::{client, repo, sha256_file};

#[tokio::test]
async fn restore_to_a_directory_writes_verified_sparse_files_identical_to_the_source() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    let report = backup(
        &vc,
        &repo,
        &BackupOptions::new(VmSelector::Name("db01".into())),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    let target = dir.path().join("restored");
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
    // sha256sum of every restored file equals the manifest (R1: restore test against recorded digests).
    for file in &report.manifest.files {
        let path = target.join(&file.path);
        assert_eq!(sha256_file(&path), file.sha256.to_hex(), "{}", file.path);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), file.size_bytes);
    }
    // Byte-identical to the source disks, and the all-zero disk takes no space.
    let info = tb.control().info().await.unwrap();
    let vm = info.vm("db01").unwrap();
    for d in &vm.disks {
        let disk = report
            .manifest
            .disks
            .iter()
            .find(|m| m.device_key == d.key)
            .unwrap();
        let path = target.join(&disk.file);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(&d.flat_path).unwrap(),
            "{} differs from the source",
            disk.file
        );
        if d.capacity_bytes == 16 << 20 {
            assert!(
                std::fs::metadata(&path).unwrap().blocks() * 512 < 1 << 20,
                "the zero disk is restored sparse"
            );
        }
    }
    // A second restore into the same place refuses to overwrite.
    let again = restore_to_dir(
        &repo,
        &report.backup_id,
        &target,
        &DirOptions::default(),
        &NoProgress,
        &cancel,
    )
    .await;
    assert!(
        matches!(again, Err(vbm_engine::Error::InvalidInput(_))),
        "{again:?}"
    );
    assert!(
        !walk(&target).iter().any(|p| p.ends_with(".vbm-partial")),
        "no partial files stay behind"
    );
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p))
        } else {
            out.push(p.display().to_string())
        }
    }
    out
}

#[tokio::test]
async fn restore_as_a_new_vm_uploads_files_and_registers_it() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    let report = backup(
        &vc,
        &repo,
        &BackupOptions::new(VmSelector::Name("db01".into())),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    let target = VcenterTarget {
        name: "db01 restored".into(),
        datastore: "datastore1".into(),
        folder: Some("Prod".into()),
        resource_pool: None,
        host: None,
        power_on: true,
    };
    let restored = restore_to_vcenter(
        &vc,
        &repo,
        &report.backup_id,
        &target,
        2,
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert!(restored.vm.is_some());

    let info = tb.control().info().await.unwrap();
    let new_vm = info.vm("db01 restored").unwrap();
    assert_eq!(new_vm.folder, "Prod");
    assert_eq!(new_vm.power, "on");
    assert_eq!(
        new_vm.disks.len(),
        2,
        "both disks are attached: {:?}",
        new_vm.disks
    );
    let original = info.vm("db01").unwrap();
    for (new, old) in new_vm.disks.iter().zip(&original.disks) {
        assert_eq!(new.capacity_bytes, old.capacity_bytes);
        assert_eq!(
            tb.control()
                .disk_sha256("db01 restored", new.key)
                .await
                .unwrap(),
            tb.control().disk_sha256("db01", old.key).await.unwrap()
        );
        assert!(
            new.file
                .starts_with("[datastore1] db01 restored/db01 restored"),
            "{}",
            new.file
        );
    }
    let vmx = std::fs::read_to_string(
        tb.data_dir
            .join("datastore1/db01 restored/db01 restored.vmx"),
    )
    .unwrap();
    assert!(vmx.contains("displayName = \"db01 restored\""), "{vmx}");
    assert!(vmx.contains("uuid.action = \"create\""));

    // The same name again is refused before anything is uploaded.
    let again = restore_to_vcenter(
        &vc,
        &repo,
        &report.backup_id,
        &target,
        2,
        &NoProgress,
        &cancel,
    )
    .await;
    assert!(
        matches!(again, Err(vbm_engine::Error::InvalidInput(_))),
        "{again:?}"
    );
}

#[tokio::test]
async fn restore_in_place_needs_confirmation_and_brings_the_disks_back() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    let info = tb.control().info().await.unwrap();
    let vm = info.vm("web01").unwrap();
    let key = vm.disks[0].key;
    let report = backup(
        &vc,
        &repo,
        &BackupOptions::new(VmSelector::Name("web01".into())),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    let at_backup = tb.control().disk_sha256("web01", key).await.unwrap();
    tb.control()
        .write("web01", key, 0, 1 << 20, 5)
        .await
        .unwrap();
    assert_ne!(
        tb.control().disk_sha256("web01", key).await.unwrap(),
        at_backup
    );

    let refused = restore_in_place(
        &vc,
        &repo,
        &report.backup_id,
        InPlaceOptions::default(),
        2,
        &NoProgress,
        &cancel,
    )
    .await;
    assert!(
        matches!(refused, Err(vbm_engine::Error::InvalidInput(_))),
        "{refused:?}"
    );

    let options = InPlaceOptions {
        confirm: true,
        power_on: None,
    };
    restore_in_place(
        &vc,
        &repo,
        &report.backup_id,
        options,
        2,
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    let after = tb.control().info().await.unwrap();
    let vm_after = after.vm("web01").unwrap();
    assert_eq!(vm_after.power, "on", "the VM is powered on again as it was");
    assert_eq!(vm_after.disks.len(), 1);
    assert_eq!(
        tb.control()
            .disk_sha256("web01", vm_after.disks[0].key)
            .await
            .unwrap(),
        at_backup
    );
    assert!(
        report
            .manifest
            .files
            .iter()
            .any(|f| f.kind == FileKind::Config)
    );
}

// S-D5: a restore that meets a damaged chunk fails loudly, naming the chunk, and leaves no file
// under its final name; a swapped (intact but wrong) chunk is caught by the file digest.
#[tokio::test]
async fn restore_of_damaged_data_fails_naming_the_chunk_and_leaves_no_file() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    let report = backup(
        &vc,
        &repo,
        &BackupOptions::new(VmSelector::Name("web01".into())),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    let disk = report.manifest.disks[0].clone();
    let segments = repo
        .open_backup(&report.backup_id)
        .unwrap()
        .open_file(&disk.file)
        .unwrap()
        .segments();
    let data: Vec<_> = segments
        .iter()
        .filter(|s| !s.digest.is_zero())
        .map(|s| s.digest.to_hex())
        .collect();
    let path = |d: &str| {
        dir.path()
            .join("repo/chunks")
            .join(&d[..2])
            .join(&d[2..4])
            .join(d)
    };

    let mut bytes = std::fs::read(path(&data[0])).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(path(&data[0]), bytes).unwrap();
    let target = dir.path().join("out");
    let err = restore_to_dir(
        &repo,
        &report.backup_id,
        &target,
        &DirOptions::default(),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains(&data[0]), "{err}");
    assert!(!target.join(&disk.file).exists());

    // Put another intact chunk file in its place: only the whole-file digest can tell.
    std::fs::copy(path(&data[1]), path(&data[0])).unwrap();
    let target = dir.path().join("out2");
    let err = restore_to_dir(
        &repo,
        &report.backup_id,
        &target,
        &DirOptions::default(),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains(&data[0]),
        "the full check names the swapped chunk: {err}"
    );
    assert!(!target.join(&disk.file).exists());
}
