//! Running the `vbm` binary against a testbed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vbm_repo::{InitOptions, Repository};
use vbm_testkit::Testbed;

pub(crate) const VBM: &str = env!("CARGO_BIN_EXE_vbm");

/// A testbed plus a repository in a temp dir, and a way to run `vbm` against both.
pub(crate) struct Env {
    pub(crate) tb: Testbed,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) repo: PathBuf,
}

impl Env {
    pub(crate) async fn new(spec: &str) -> Self {
        Self::with_repo(
            spec,
            InitOptions {
                chunk_size: 1 << 20,
                ..InitOptions::default()
            },
        )
        .await
    }

    pub(crate) async fn with_repo(spec: &str, options: InitOptions) -> Self {
        let tb = Testbed::start(spec).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("repo");
        Repository::init_local(&repo, &options).unwrap();
        Self { tb, dir, repo }
    }

    pub(crate) fn repository(&self) -> Repository {
        Repository::open_local(&self.repo, None).unwrap()
    }

    /// `vbm <args…>` with the vCenter password in the environment.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(VBM);
        cmd.args(args)
            .env("VCENTER_PASSWORD", &self.tb.password)
            .env_remove("VBM_LOG")
            .stdin(Stdio::null());
        cmd
    }

    /// The vCenter flags for this testbed (pinned thumbprint).
    pub(crate) fn vcenter_args(&self) -> Vec<String> {
        vec![
            "--vcenter".into(),
            self.tb.sdk_url.clone(),
            "--user".into(),
            self.tb.user.clone(),
            "--thumbprint".into(),
            self.tb.thumbprint_sha256.clone(),
        ]
    }

    pub(crate) fn backup_args(&self, vm: &str) -> Vec<String> {
        let mut args = vec!["backup".to_owned()];
        args.extend(self.vcenter_args());
        args.extend([
            "--vm".into(),
            vm.into(),
            "--repo".into(),
            self.repo.display().to_string(),
            "--json".into(),
        ]);
        args
    }

    pub(crate) fn run(&self, args: &[String]) -> Output {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&args).output().unwrap()
    }

    pub(crate) fn spawn(&self, args: &[String]) -> Child {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    pub(crate) async fn vbm_snapshots(&self, vm: &str) -> Vec<String> {
        self.tb
            .control()
            .snapshot_names(vm)
            .await
            .unwrap()
            .into_iter()
            .filter(|n| n.starts_with("vbm-"))
            .collect()
    }

    pub(crate) async fn folder_bytes(&self) -> u64 {
        self.tb.control().stats().await.unwrap()["folder_get_bytes"]["total"]
            .as_u64()
            .unwrap_or(0)
    }

    /// Waits until the testbed has served at least `bytes` of disk data (the backup is mid-download).
    pub(crate) async fn wait_for_download(&self, bytes: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.folder_bytes().await < bytes {
            assert!(
                Instant::now() < deadline,
                "the backup never started downloading"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(crate) fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

pub(crate) fn stdout_json(output: &Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "vbm failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

pub(crate) fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(path).unwrap(), &mut hasher).unwrap();
    hex::encode(hasher.finalize())
}
