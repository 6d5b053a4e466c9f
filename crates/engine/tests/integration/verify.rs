//! Verify / test restore (specification 2.3): damage in the repository and a disk resized in
//! vCenter since the backup are both reported, precisely.

use vbm_engine::{BackupOptions, CancellationToken, NoProgress, VmSelector, backup, verify};
use vbm_testkit::Testbed;

use super::support::{client, repo};

#[tokio::test]
async fn verify_reports_a_damaged_chunk_and_a_disk_resized_in_vcenter() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    let web = backup(
        &vc,
        &repo,
        &BackupOptions::new(VmSelector::Name("web01".into())),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    let db = backup(
        &vc,
        &repo,
        &BackupOptions::new(VmSelector::Name("db01".into())),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();

    let clean = verify(&repo, None, false, Some(&vc), &NoProgress, &cancel)
        .await
        .unwrap();
    assert!(clean.ok, "{clean:?}");
    assert_eq!(clean.repository.backups_checked, 2);

    // A disk of db01 grows in vCenter: the backup no longer matches what vCenter reports.
    let info = tb.control().info().await.unwrap();
    let disk = &info.vm("db01").unwrap().disks[0];
    tb.control()
        .resize("db01", disk.key, disk.capacity_bytes + (1 << 20))
        .await
        .unwrap();
    let resized = verify(
        &repo,
        Some(vec![db.backup_id.clone()]),
        true,
        Some(&vc),
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert!(!resized.ok);
    assert!(resized.repository.ok, "the repository itself is fine");
    let finding = resized
        .vcenter
        .iter()
        .find(|f| f.failure)
        .expect("a size finding");
    assert!(
        finding.message.contains(&disk.capacity_bytes.to_string())
            && finding
                .message
                .contains(&(disk.capacity_bytes + (1 << 20)).to_string()),
        "{}",
        finding.message
    );

    // Flip one byte in a chunk that only web01's backup references (S-D5 via the engine).
    let web_disk = web.manifest.disks[0].clone();
    let backup_reader = repo.open_backup(&web.backup_id).unwrap();
    let reader = backup_reader.open_file(&web_disk.file).unwrap();
    let digest = reader
        .segments()
        .into_iter()
        .find(|s| !s.digest.is_zero())
        .unwrap()
        .digest
        .to_hex();
    let chunk = dir
        .path()
        .join("repo/chunks")
        .join(&digest[..2])
        .join(&digest[2..4])
        .join(&digest);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&chunk, bytes).unwrap();
    let damaged = verify(
        &repo,
        Some(vec![web.backup_id.clone()]),
        false,
        None,
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert!(!damaged.ok);
    let verdict = damaged
        .repository
        .backups
        .iter()
        .find(|b| b.id == web.backup_id)
        .unwrap();
    assert!(
        !verdict.ok && verdict.damaged_files.contains(&web_disk.file),
        "{verdict:?}"
    );
    assert!(
        damaged
            .repository
            .chunks
            .iter()
            .any(|c| c.digest.to_hex() == digest),
        "the chunk is named"
    );
}

// S-D5: a damaged chunk of the last backup makes the next incremental fail loudly (it would
// otherwise record a digest over damaged data); verify quarantines the chunk, and the backup after
// that reads the data again from vCenter instead of deduplicating against the damage.
#[tokio::test]
async fn damaged_parent_chunk_fails_the_incremental_until_verify_quarantines_it() {
    let tb = Testbed::start("default").await.unwrap();
    let vc = client(&tb).await;
    let dir = tempfile::tempdir().unwrap();
    let repo = repo(dir.path());
    let cancel = CancellationToken::new();
    let options = || BackupOptions {
        run_id: vbm_engine::RunId::new(),
        ..BackupOptions::new(VmSelector::Name("web01".into()))
    };
    let first = backup(&vc, &repo, &options(), &NoProgress, &cancel)
        .await
        .unwrap();
    let disk = first.manifest.disks[0].clone();
    let digest = {
        let b = repo.open_backup(&first.backup_id).unwrap();
        let r = b.open_file(&disk.file).unwrap();
        r.segments()
            .into_iter()
            .find(|s| !s.digest.is_zero())
            .unwrap()
            .digest
            .to_hex()
    };
    let chunk = dir
        .path()
        .join("repo/chunks")
        .join(&digest[..2])
        .join(&digest[2..4])
        .join(&digest);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&chunk, bytes).unwrap();

    let err = backup(&vc, &repo, &options(), &NoProgress, &cancel)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("damaged") && err.to_string().contains("vbm verify"),
        "{err}"
    );
    assert_eq!(
        repo.list_backups().unwrap().committed.len(),
        1,
        "nothing committed over damage"
    );

    let report = verify(&repo, None, false, None, &NoProgress, &cancel)
        .await
        .unwrap();
    assert!(
        !report.ok && report.repository.chunks.iter().any(|c| c.quarantined),
        "{report:?}"
    );
    let healed = backup(&vc, &repo, &options(), &NoProgress, &cancel)
        .await
        .unwrap();
    assert_eq!(
        super::support::restored_sha256(&repo, &healed.backup_id, &disk.file),
        tb.control()
            .disk_sha256("web01", disk.device_key)
            .await
            .unwrap()
    );
    let after = verify(
        &repo,
        Some(vec![healed.backup_id.clone()]),
        false,
        None,
        &NoProgress,
        &cancel,
    )
    .await
    .unwrap();
    assert!(after.ok, "{after:?}");
}
