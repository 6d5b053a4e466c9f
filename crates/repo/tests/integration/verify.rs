//! Deliberately broken repositories, each reported precisely by verify (FAULT-MATRIX S-D5,
//! S-D6, H5 "damage").

use vbm_repo::verify::{ChunkProblemKind, VerifyMode, VerifyOptions, verify};
use vbm_repo::{BackupId, Cancel, Error, FileStorage};

use super::common::*;

/// Two backups sharing chunks, plus one of another VM with its own data.
fn setup() -> (TestRepo, BackupId, BackupId, BackupId, Vec<u8>) {
    let t = TestRepo::new();
    let data = random_bytes(6 * CS as usize, 1);
    let (a, _) = backup(
        &t.repo,
        "vm-1",
        t0(),
        &[
            disk("vm/d-flat.vmdk", data.clone()),
            config("vm/vm.vmx", b"vmx".to_vec()),
        ],
    )
    .unwrap();
    let (b, _) = backup(
        &t.repo,
        "vm-1",
        t0() + secs(60),
        &[disk("vm/d-flat.vmdk", data.clone())],
    )
    .unwrap();
    let (c, _) = backup(
        &t.repo,
        "vm-2",
        t0(),
        &[disk("other-flat.vmdk", random_bytes(3 * CS as usize, 2))],
    )
    .unwrap();
    (t, a, b, c, data)
}

fn chunk_path(t: &TestRepo, data: &[u8]) -> std::path::PathBuf {
    let d = t.repo.chunk_digest(data).to_hex();
    t.root()
        .join("chunks")
        .join(&d[..2])
        .join(&d[2..4])
        .join(&d)
}

fn damaged_ids(r: &vbm_repo::verify::VerifyReport) -> Vec<String> {
    r.damaged().map(|b| b.id.to_string()).collect()
}

// covers S-D5: a flipped byte in a chunk is reported with the backups and files that use it,
// quarantined, restore fails naming the digest, other backups are fine, and the next backup
// stores the chunk again so that everything verifies afterwards.
#[test]
fn flipped_byte_in_a_chunk() {
    let (t, a, b, c, data) = setup();
    let chunk = &data[2 * CS as usize..3 * CS as usize];
    let digest = t.repo.chunk_digest(chunk);
    let p = chunk_path(&t, chunk);
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[1000] ^= 0x01;
    std::fs::write(&p, bytes).unwrap();

    let report = verify(
        &t.repo,
        &VerifyOptions::default(),
        &mut |_| {},
        &Cancel::new(),
    )
    .unwrap();
    assert!(!report.ok);
    assert_eq!(damaged_ids(&report), vec![a.to_string(), b.to_string()]);
    assert_eq!(report.chunks.len(), 1);
    let cp = &report.chunks[0];
    assert_eq!(cp.digest, digest);
    assert_eq!(cp.kind, ChunkProblemKind::Corrupt);
    assert!(cp.detail.contains("CRC32"), "{}", cp.detail);
    assert!(cp.quarantined);
    assert_eq!(cp.referenced_by.len(), 2);
    assert!(cp.referenced_by.iter().all(|u| u.file == "vm/d-flat.vmdk"));
    let va = report.backups.iter().find(|v| v.id == a).unwrap();
    assert_eq!(va.damaged_files, vec!["vm/d-flat.vmdk"]);
    assert!(va.problems[0].problem.contains(&digest.to_hex()));
    assert!(!p.exists());
    assert!(
        p.with_file_name(format!("{}.bad", digest.to_hex()))
            .exists()
    );
    assert_eq!(
        vbm_repo::verify::read_state(&t.repo, &a).unwrap().state,
        "failed"
    );
    assert_eq!(
        vbm_repo::verify::read_state(&t.repo, &c).unwrap().state,
        "ok"
    );

    // Restore fails loudly, naming the chunk; other backups restore.
    let err = restore(&t.repo, &a).unwrap_err();
    assert!(err.to_string().contains(&digest.to_hex()), "{err}");
    restore(&t.repo, &c).unwrap();

    // The next backup re-uploads the chunk instead of deduplicating against the bad one.
    let (_, m) = backup(
        &t.repo,
        "vm-1",
        t0() + secs(120),
        &[disk("vm/d-flat.vmdk", data)],
    )
    .unwrap();
    assert_eq!(m.chunks_new, 1);
    assert_all_restorable(&t.repo);
}

// covers S-D5: truncated, zeroed, emptied and deleted chunks.
#[test]
fn truncated_zeroed_and_missing_chunks() {
    let (t, a, _b, _c, data) = setup();
    let cs = CS as usize;
    type Damage<'a> = &'a dyn Fn(&std::path::Path);
    let cases: [(usize, Damage<'_>, ChunkProblemKind); 4] = [
        (
            0,
            &|p| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() / 2]).unwrap();
            },
            ChunkProblemKind::Corrupt,
        ),
        (
            1,
            &|p| {
                let n = std::fs::metadata(p).unwrap().len() as usize;
                std::fs::write(p, vec![0u8; n]).unwrap();
            },
            ChunkProblemKind::Corrupt,
        ),
        (
            3,
            &|p| std::fs::write(p, b"").unwrap(),
            ChunkProblemKind::Missing,
        ),
        (
            4,
            &|p| std::fs::remove_file(p).unwrap(),
            ChunkProblemKind::Missing,
        ),
    ];
    for (pos, damage, _) in &cases {
        damage(&chunk_path(&t, &data[pos * cs..(pos + 1) * cs]));
    }
    for mode in [VerifyMode::Quick, VerifyMode::Full] {
        let report = verify(
            &t.repo,
            &VerifyOptions {
                mode,
                quarantine: false,
                backups: Some(vec![a.clone()]),
                ..VerifyOptions::default()
            },
            &mut |_| {},
            &Cancel::new(),
        )
        .unwrap();
        assert!(!report.ok);
        let expected = match mode {
            VerifyMode::Quick => 2, // existence only: the corrupt-but-present ones pass
            VerifyMode::Full => 4,
        };
        assert_eq!(report.chunks.len(), expected, "{mode:?}: {report:#?}");
        for (pos, _, kind) in &cases {
            let d = t.repo.chunk_digest(&data[pos * cs..(pos + 1) * cs]);
            if let Some(cp) = report.chunks.iter().find(|c| c.digest == d) {
                assert_eq!(cp.kind, *kind, "{mode:?} pos {pos}");
                // Verifying only `a` still names `b`, which uses the same chunks.
                assert_eq!(cp.referenced_by.len(), 2, "{cp:?}");
            }
        }
        assert_eq!(damaged_ids(&report).len(), 2, "{mode:?}");
        assert!(report.backups.iter().any(|v| !v.verified && !v.ok));
    }
}

#[test]
fn truncated_index_is_reported() {
    let (t, a, b, _c, _) = setup();
    let m = t.repo.read_manifest(&a).unwrap();
    let FileStorage::Index { name, .. } = &m.files[0].storage else {
        panic!()
    };
    let p = t
        .root()
        .join("backups")
        .join(a.to_string())
        .join(format!("{name}.fidx"));
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 7]).unwrap();
    let report = verify_all(&t.repo, VerifyMode::Quick);
    assert_eq!(damaged_ids(&report), vec![a.to_string()]);
    let v = report.damaged().next().unwrap();
    assert_eq!(v.damaged_files, vec!["vm/d-flat.vmdk"]);
    assert!(
        v.problems[0].problem.contains("disk-2000.fidx"),
        "{:?}",
        v.problems
    );
    assert!(
        v.problems[0].problem.contains("SHA-256"),
        "{:?}",
        v.problems
    );
    assert!(report.backups.iter().find(|x| x.id == b).unwrap().ok);
}

// covers S-D6: a corrupt manifest makes verify fail with a clear message.
#[test]
fn corrupt_manifest_is_reported() {
    let (t, a, _b, _c, _) = setup();
    let p = t
        .root()
        .join("backups")
        .join(a.to_string())
        .join("manifest.json");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&p, bytes).unwrap();
    let report = verify_all(&t.repo, VerifyMode::Full);
    assert_eq!(damaged_ids(&report), vec![a.to_string()]);
    let problem = &report.damaged().next().unwrap().problems[0].problem;
    assert!(
        problem.contains(&format!("manifest of backup {a} is corrupt")),
        "{problem}"
    );
    assert!(matches!(
        t.repo.read_manifest(&a),
        Err(Error::ManifestCorrupt { .. })
    ));
}

#[test]
fn damaged_blob_is_reported() {
    let (t, a, _b, _c, _) = setup();
    let p = t
        .root()
        .join("backups")
        .join(a.to_string())
        .join("file-1.blob");
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&p, bytes).unwrap();
    let report = verify_all(&t.repo, VerifyMode::Quick);
    let v = report.damaged().next().unwrap();
    assert_eq!(v.id, a);
    assert_eq!(v.damaged_files, vec!["vm/vm.vmx"]);
    assert!(
        v.problems[0].problem.contains("file-1.blob"),
        "{:?}",
        v.problems
    );
}

#[test]
fn swapped_chunk_files_are_detected_by_full_verify() {
    let (t, a, _b, _c, data) = setup();
    let cs = CS as usize;
    let p0 = chunk_path(&t, &data[..cs]);
    let p1 = chunk_path(&t, &data[cs..2 * cs]);
    std::fs::copy(&p1, &p0).unwrap();
    let report = verify(
        &t.repo,
        &VerifyOptions {
            backups: Some(vec![a]),
            quarantine: false,
            ..VerifyOptions::default()
        },
        &mut |_| {},
        &Cancel::new(),
    )
    .unwrap();
    assert_eq!(report.chunks.len(), 1);
    assert!(
        report.chunks[0].detail.contains("content digest"),
        "{:?}",
        report.chunks[0]
    );
}

#[test]
fn progress_is_reported_and_cancel_stops() {
    let (t, ..) = setup();
    let mut calls = 0u64;
    let mut last = 0;
    verify(
        &t.repo,
        &VerifyOptions::default(),
        &mut |p| {
            calls += 1;
            assert!(p.bytes_done >= last);
            last = p.bytes_done;
        },
        &Cancel::new(),
    )
    .unwrap();
    assert!(calls > 10 && last > 0);
    let cancel = Cancel::new();
    cancel.cancel();
    let err = verify(&t.repo, &VerifyOptions::default(), &mut |_| {}, &cancel).unwrap_err();
    assert!(matches!(err, Error::Cancelled));
}

#[test]
fn asking_for_a_backup_that_does_not_exist_is_an_error() {
    let (t, ..) = setup();
    let missing: BackupId = "vm-1/2020-01-01T000000Z".parse().unwrap();
    let err = verify(
        &t.repo,
        &VerifyOptions {
            backups: Some(vec![missing]),
            ..VerifyOptions::default()
        },
        &mut |_| {},
        &Cancel::new(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::BackupNotFound(_)), "{err}");
}
