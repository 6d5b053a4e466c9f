//! A repository with a few backups for the command tests (written through the library, the way
//! the engine writes them).

use std::path::Path;

use vbm_repo::{
    BackupId, BackupMode, BlobWriter, FileKind, FileName, InitOptions, Manifest, ManifestFile,
    Repository, Sha256, VmKey,
};

pub(crate) const CHUNK: u32 = 64 * 1024;

/// Pseudo-random bytes.
pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A repository in `dir` with `n` backups of VM `vm-1`, one day apart, ending yesterday.
pub(crate) fn repo_with_backups(dir: &Path, n: u64) -> (Repository, Vec<BackupId>) {
    let repo = Repository::init_local(
        dir,
        &InitOptions {
            chunk_size: CHUNK,
            ..InitOptions::default()
        },
    )
    .unwrap();
    let start = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(24 * (n as i64 + 1));
    let mut ids = Vec::new();
    for i in 0..n {
        let at = start + jiff::SignedDuration::from_hours(24 * i as i64);
        let w = repo.start_backup(&VmKey::new("vm-1").unwrap(), at).unwrap();
        let data = noise(3 * CHUNK as usize, i);
        let index = w
            .new_index(FileName::new("disk-2000").unwrap(), data.len() as u64)
            .unwrap();
        for (pos, c) in data.chunks(CHUNK as usize).enumerate() {
            index
                .set(pos as u64, w.insert_chunk(c).unwrap().digest)
                .unwrap();
        }
        let s = w.finish_index(index).unwrap();
        let b = w
            .write_blob(BlobWriter::with_data(
                FileName::new("vmx").unwrap(),
                b"vmx".to_vec(),
            ))
            .unwrap();
        let id = w.id().clone();
        w.commit(Manifest {
            format_version: 0,
            job_id: "job".into(),
            vm_name: "Test VM".into(),
            vm_key: VmKey::new("vm-1").unwrap(),
            vm_instance_uuid: None,
            vm_folder: None,
            started: at,
            finished: at,
            vcenter: "vc".into(),
            vcenter_uuid: None,
            snapshot: "vbm-1".into(),
            mode: BackupMode::Full,
            parent: None,
            files: vec![
                ManifestFile {
                    path: "vm/disk-flat.vmdk".into(),
                    size_bytes: data.len() as u64,
                    sha256: Sha256::of(&data),
                    kind: FileKind::Disk,
                    storage: s.storage(),
                },
                ManifestFile {
                    path: "vm/vm.vmx".into(),
                    size_bytes: b.size,
                    sha256: b.sha256,
                    kind: FileKind::Config,
                    storage: b.storage(),
                },
            ],
            disks: vec![],
            bytes_read: 0,
            bytes_written: 0,
            chunks_new: 0,
            chunks_reused: 0,
            warnings: vec![],
            vbm_version: "test".into(),
        })
        .unwrap();
        ids.push(id);
    }
    (repo, ids)
}

/// `--repo DIR` arguments.
pub(crate) fn repo_args(dir: &Path) -> crate::repo_args::RepoArgs {
    crate::repo_args::RepoArgs {
        repo: dir.to_owned(),
        key_file: None,
    }
}
