//! Shared helpers: a testbed, a client for it, a repository, and digests of restored files.

use std::path::Path;
use std::sync::{Arc, Mutex};

use vbm_engine::vbm_repo::{BackupId, InitOptions, Repository};
use vbm_engine::vbm_vsphere::{Client, ClientConfig, ConnectOptions, Thumbprint, Trust};
use vbm_engine::{ProgressEvent, ProgressSink};
use vbm_testkit::Testbed;

pub(crate) async fn client(tb: &Testbed) -> Client {
    let mut config = ClientConfig::default();
    config.retry.base_delay = std::time::Duration::from_millis(20);
    let options = ConnectOptions::new(tb.sdk_url.clone(), tb.user.clone(), tb.password.clone())
        .trust(Trust::Pinned(
            Thumbprint::parse(&tb.thumbprint_sha256).unwrap(),
        ))
        .config(config);
    Client::connect(options)
        .await
        .expect("connect to the testbed")
}

pub(crate) fn repo(dir: &Path) -> Repository {
    let options = InitOptions {
        chunk_size: 1 << 20,
        ..InitOptions::default()
    };
    Repository::init_local(&dir.join("repo"), &options).expect("init repository")
}

/// SHA-256 (hex) of a file of a backup, as a restore writes it.
pub(crate) fn restored_sha256(repo: &Repository, id: &BackupId, path: &str) -> String {
    let backup = repo.open_backup(id).unwrap();
    let reader = backup.open_file(path).unwrap();
    let mut sink = std::io::sink();
    reader.copy_to(&mut sink, 2, &mut |_| {}).unwrap().to_hex()
}

/// SHA-256 (hex) of a file on disk.
pub(crate) fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path).unwrap();
    std::io::copy(&mut file, &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}

/// The path (in the backup) of the disk with device key `key`.
pub(crate) fn disk_file(manifest: &vbm_engine::vbm_repo::Manifest, key: i32) -> &str {
    &manifest
        .disks
        .iter()
        .find(|d| d.device_key == key)
        .expect("disk in manifest")
        .file
}

/// Collects progress events.
#[derive(Default, Clone)]
pub(crate) struct Events(pub(crate) Arc<Mutex<Vec<ProgressEvent>>>);

impl ProgressSink for Events {
    fn event(&self, event: &ProgressEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}
