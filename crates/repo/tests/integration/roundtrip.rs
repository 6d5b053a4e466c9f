//! Round trips, dedup, encryption, ids, catalog, concurrent inserts.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use vbm_repo::verify::VerifyMode;
use vbm_repo::{
    BackupId, Catalog, ChunkDigest, Error, FileName, LocalBackend, OpenOptions, RepoKey, RepoStats,
    Repository,
};

use super::common::*;

#[test]
fn round_trip_of_every_kind_of_data() {
    let t = TestRepo::new();
    let files = vec![
        disk("vm/compressible-flat.vmdk", text_bytes(300_000, 1)),
        disk("vm/random-flat.vmdk", random_bytes(5 * CS as usize + 17, 2)),
        disk("vm/zeros-flat.vmdk", vec![0; 3 * CS as usize + 5]),
        disk("vm/mixed-flat.vmdk", disk_image(10 * CS as usize + 1, 3)),
        disk("vm/empty-flat.vmdk", Vec::new()),
        disk("vm/tiny-flat.vmdk", vec![42]),
        config("vm/vm.vmx", b"displayName = \"Test\"\n".to_vec()),
        config("vm/vm.nvram", Vec::new()),
    ];
    let (id, m) = backup(&t.repo, "vm-1", t0(), &files).unwrap();
    assert_eq!(id.to_string(), "vm-1/2026-11-27T033114Z");
    let restored = restore(&t.repo, &id).unwrap();
    for f in &files {
        assert_eq!(restored[&f.path], f.data, "{}", f.path);
    }
    assert!(m.chunks_new > 0 && m.bytes_written > 0);
    assert_all_restorable(&t.repo);

    // Random access across chunk boundaries, through read_at and Read + Seek.
    let r = t.repo.open_backup(&id).unwrap();
    let f = r.open_file("vm/mixed-flat.vmdk").unwrap();
    let data = &files[3].data;
    for (off, len) in [
        (0, 10),
        (CS as u64 - 3, 7),
        (2 * CS as u64 + 5, CS as usize * 2),
        (data.len() as u64 - 1, 10),
    ] {
        let mut buf = vec![0u8; len];
        let n = f.read_at(off, &mut buf).unwrap();
        let end = (off as usize + len).min(data.len());
        assert_eq!(&buf[..n], &data[off as usize..end]);
    }
    let mut c = f.cursor();
    c.seek(SeekFrom::Start(CS as u64 + 1)).unwrap();
    let mut buf = vec![0; 100];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf[..], &data[CS as usize + 1..CS as usize + 101]);
    // Zero knowledge for sparse restores.
    let z = r.open_file("vm/zeros-flat.vmdk").unwrap();
    assert!(z.segments().iter().all(|s| s.digest.is_zero()));
    assert!(z.index().unwrap().is_zero(0));
}

#[test]
fn zero_chunks_are_never_stored() {
    let t = TestRepo::new();
    backup(
        &t.repo,
        "vm-1",
        t0(),
        &[disk("d", vec![0; 8 * CS as usize])],
    )
    .unwrap();
    assert!(chunk_files(&t.root()).is_empty());
    assert_eq!(t.repo.chunk_digest(&[0; 100]), ChunkDigest::ZERO);
}

#[test]
fn dedup_across_two_vms_with_shared_content() {
    let t = TestRepo::new();
    let shared = random_bytes(8 * CS as usize, 99);
    let mut a = shared.clone();
    a.extend(random_bytes(2 * CS as usize, 1));
    let mut b = shared.clone();
    b.extend(random_bytes(2 * CS as usize, 2));
    let (_, ma) = backup(&t.repo, "vm-a", t0(), &[disk("a", a)]).unwrap();
    assert_eq!(ma.chunks_new, 10);
    let (idb, mb) = backup(&t.repo, "vm-b", t0(), &[disk("b", b)]).unwrap();
    assert_eq!(
        mb.chunks_new, 2,
        "only the non-shared chunks are stored again"
    );
    assert_eq!(mb.chunks_reused, 8);
    assert_eq!(chunk_files(&t.root()).len(), 12);
    let stats = RepoStats::compute(&t.repo).unwrap();
    assert_eq!((stats.vms, stats.backups, stats.chunks), (2, 2, 12));
    assert!(stats.dedup_ratio.unwrap() > 1.5);
    let cat = Catalog::load(&t.repo).unwrap();
    let s = cat.latest(idb.vm()).unwrap().summary();
    assert_eq!(s.logical_bytes, 10 * u64::from(CS));
    assert!(s.dedup_ratio.unwrap() > 4.0);
}

// covers L7: many writers inserting the same chunk at once.
#[test]
fn concurrent_inserts_of_the_same_chunk_make_one_valid_file() {
    let t = TestRepo::new();
    let data = random_bytes(CS as usize, 5);
    let writers: Vec<_> = (0..2)
        .map(|i| {
            t.repo
                .start_backup(&vm(&format!("clone-{i}")), t0())
                .unwrap()
        })
        .collect();
    std::thread::scope(|s| {
        for k in 0..8 {
            let w = &writers[k % 2];
            let data = &data;
            s.spawn(move || {
                for _ in 0..20 {
                    w.insert_chunk(data).unwrap();
                }
            });
        }
    });
    let files = tree(&t.root().join("chunks"));
    assert_eq!(files.len(), 1, "one file, no temp leftovers: {files:?}");
    let d = t.repo.chunk_digest(&data);
    assert_eq!(t.repo.read_chunk(&d, data.len()).unwrap(), data);
}

#[test]
fn incremental_backup_reuses_the_parent() {
    let t = TestRepo::new();
    let mut data = disk_image(12 * CS as usize, 11);
    let (p, _) = backup(&t.repo, "vm-1", t0(), &[disk("d", data.clone())]).unwrap();
    data[5 * CS as usize + 10] ^= 0xff; // one changed chunk
    data.extend(random_bytes(1000, 3)); // and growth
    let (i, m) = incremental(&t.repo, &p, t0() + secs(86_400), &[disk("d", data.clone())]).unwrap();
    assert_eq!(m.chunks_new, 2, "the changed chunk and the new tail");
    assert_eq!(m.parent.as_ref(), Some(&p));
    assert_eq!(restore(&t.repo, &i).unwrap()["d"], data);
    assert_all_restorable(&t.repo);
}

#[test]
fn encrypted_round_trip_wrong_key_and_missing_key() {
    let key = RepoKey::from_bytes([7; 32]);
    let t = TestRepo::with_key(Some(key.clone()));
    let data = text_bytes(4 * CS as usize, 1);
    let (id, _) = backup(
        &t.repo,
        "vm-1",
        t0(),
        &[
            disk("d", data.clone()),
            config("v.vmx", b"secret vmx".to_vec()),
        ],
    )
    .unwrap();
    // Ids are keyed: they do not reveal the plain SHA-256.
    let plain_sha = Sha256Hex::of(&data[..CS as usize]);
    assert!(!tree(&t.root()).iter().any(|p| p.contains(&plain_sha)));
    // Chunk files and blobs hold no plain text.
    for p in tree(&t.root()) {
        let bytes = std::fs::read(t.root().join(&p)).unwrap();
        assert!(!bytes.windows(10).any(|w| w == b"secret vmx"), "{p}");
    }
    let again = t.reopen(Some(key));
    assert_eq!(restore(&again, &id).unwrap()["d"], data);
    assert_all_restorable(&again);

    let err = Repository::open(
        Arc::new(LocalBackend::new(t.root())),
        open_options(&t.clock, Some(RepoKey::from_bytes([8; 32]))),
    )
    .unwrap_err();
    assert!(matches!(err, Error::WrongKey { .. }), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("wrong key for repository {}", t.repo.id())),
        "{err}"
    );

    let missing = t.dir.path().join("nowhere.key");
    let err = Repository::open_local(&t.root(), Some(&missing)).unwrap_err();
    assert!(matches!(err, Error::KeyMissing { .. }), "{err}");
    assert!(err.to_string().contains("nowhere.key"), "{err}");
    let err = Repository::open(
        Arc::new(LocalBackend::new(t.root())),
        OpenOptions::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("encrypted"), "{err}");
}

/// Hex SHA-256 of plain data, to look for it in file names.
struct Sha256Hex;
impl Sha256Hex {
    fn of(d: &[u8]) -> String {
        vbm_repo::Sha256::of(d).to_hex()
    }
}

// covers T2: the clock going backwards or repeating never reuses a backup id.
#[test]
fn backup_ids_stay_unique_when_the_clock_repeats() {
    let t = TestRepo::new();
    let (a, _) = backup(&t.repo, "vm-1", t0(), &[config("x", b"1".to_vec())]).unwrap();
    let (b, _) = backup(&t.repo, "vm-1", t0(), &[config("x", b"2".to_vec())]).unwrap();
    let w1 = t.repo.start_backup(&vm("vm-1"), t0()).unwrap();
    let w2 = t.repo.start_backup(&vm("vm-1"), t0()).unwrap();
    let ids = [a.clone(), b.clone(), w1.id().clone(), w2.id().clone()];
    let unique: std::collections::BTreeSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), 4, "{ids:?}");
    assert_eq!(b.to_string(), "vm-1/2026-11-27T033115Z");
}

#[test]
fn an_uncommitted_writer_leaves_no_visible_backup() {
    let t = TestRepo::new();
    {
        let w = t.repo.start_backup(&vm("vm-1"), t0()).unwrap();
        w.insert_chunk(&random_bytes(1000, 1)).unwrap();
        let idx = w.new_index(FileName::new("d").unwrap(), 1000).unwrap();
        idx.set(0, t.repo.chunk_digest(&random_bytes(1000, 1)))
            .unwrap();
        w.finish_index(idx).unwrap();
        assert_eq!(t.repo.list_backups().unwrap().partial.len(), 1);
        // dropped here without commit
    }
    let l = t.repo.list_backups().unwrap();
    assert!(l.committed.is_empty() && l.partial.is_empty(), "{l:?}");
    assert!(t.repo.locks().unwrap().is_empty());
    let files = tree(&t.root());
    assert!(
        !files
            .iter()
            .any(|f| f.starts_with("backups") || f.starts_with("locks")),
        "{files:?}"
    );
}

#[test]
fn commit_refuses_a_manifest_that_does_not_match_what_was_written() {
    let t = TestRepo::new();
    let w = t.repo.start_backup(&vm("vm-1"), t0()).unwrap();
    let mut m = write_files(&w, &[disk("d", random_bytes(1000, 1))], None).unwrap();
    m.files[0].size_bytes += 1;
    let err = w.commit(m).unwrap_err();
    assert!(err.to_string().contains("was not written"), "{err}");
    assert!(t.repo.list_backups().unwrap().committed.is_empty());
}

#[test]
fn reference_chunk_fails_for_a_missing_chunk() {
    let t = TestRepo::new();
    let w = t.repo.start_backup(&vm("vm-1"), t0()).unwrap();
    let err = w
        .reference_chunk(&ChunkDigest::from_bytes([3; 32]))
        .unwrap_err();
    assert!(matches!(err, Error::ChunkMissing { .. }), "{err}");
}

#[test]
fn catalog_is_rebuilt_from_the_repository_alone() {
    let t = TestRepo::new();
    for (i, vmk) in ["vm-a", "vm-b", "vm-a"].iter().enumerate() {
        backup(
            &t.repo,
            vmk,
            t0() + secs(3600 * i as i64),
            &[disk("d", disk_image(3 * CS as usize, i as u64))],
        )
        .unwrap();
    }
    let fresh = t.reopen(None);
    let cat = Catalog::load(&fresh).unwrap();
    assert_eq!(cat.vms.len(), 2);
    assert_eq!(cat.vms[&vm("vm-a")].len(), 2);
    let ids: Vec<BackupId> = cat.entries().map(|e| e.id.clone()).collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    let e = &cat.vms[&vm("vm-a")][0];
    assert_eq!(e.manifest.vm_key, vm("vm-a"));
    assert_eq!(e.summary().logical_bytes, 3 * u64::from(CS));
}

#[test]
fn init_refuses_an_existing_repository_and_a_newer_format() {
    let t = TestRepo::new();
    let err = Repository::init_local(&t.root(), &init_options(None)).unwrap_err();
    assert!(
        err.to_string().contains("already holds a repository"),
        "{err}"
    );
    let cfg = t.root().join("repo.json");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("\"version\": 1", "\"version\": 7");
    std::fs::write(&cfg, text).unwrap();
    let err = Repository::open_local(&t.root(), None).unwrap_err();
    assert!(
        err.to_string()
            .contains("unsupported repository format version 7"),
        "{err}"
    );
    let err = Repository::open_local(&t.dir.path().join("nothing"), None).unwrap_err();
    assert!(err.to_string().contains("not a vbm repository"), "{err}");
}

#[test]
fn quick_and_full_verify_pass_on_a_healthy_repository() {
    let t = TestRepo::new();
    backup(
        &t.repo,
        "vm-1",
        t0(),
        &[
            disk("d", disk_image(6 * CS as usize, 1)),
            config("c", b"x".to_vec()),
        ],
    )
    .unwrap();
    for mode in [VerifyMode::Quick, VerifyMode::Full] {
        let r = verify_all(&t.repo, mode);
        assert!(r.ok, "{r:#?}");
        assert_eq!(r.backups_checked, 1);
    }
}
