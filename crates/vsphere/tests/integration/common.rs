//! Shared helpers: start a testbed, connect to it.

use std::time::Duration;

use vbm_testkit::{Testbed, TestbedOptions};
use vbm_vsphere::{Client, ClientConfig, ConnectOptions, RetryPolicy, Thumbprint, Trust};

/// The inventory with odd names, nested folders, a datacenter inside folders, multi-disk VMs on
/// two datastores, existing snapshots and independent disks.
pub(crate) const AWKWARD: &str = "awkward";

/// Short timeouts and fast retries so that fault tests finish quickly.
pub(crate) fn fast_config() -> ClientConfig {
    ClientConfig {
        soap_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(5),
        transfer_idle_timeout: Duration::from_secs(5),
        transfer_resume_attempts: 3,
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(2),
        },
        page_size: 3,
        task_poll_max: Duration::from_millis(200),
        task_timeout: Some(Duration::from_secs(60)),
    }
}

/// Connection options trusting the testbed by its SHA-256 thumbprint.
pub(crate) fn options(tb: &Testbed) -> ConnectOptions {
    let pin = Thumbprint::parse(&tb.thumbprint_sha256).expect("testbed thumbprint parses");
    ConnectOptions::new(tb.sdk_url.clone(), tb.user.clone(), tb.password.clone())
        .trust(Trust::Pinned(pin))
        .config(fast_config())
}

/// A running testbed whose datastores live in a temp dir this test owns: the testbed process is
/// killed first (field order), then the directory is removed, so runs leave nothing in /tmp.
pub(crate) struct Bed {
    tb: Testbed,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Bed {
    type Target = Testbed;
    fn deref(&self) -> &Testbed {
        &self.tb
    }
}

/// Starts a testbed with the given spec (a name under `testbed/specs/` or inline JSON).
pub(crate) async fn testbed(spec: &str) -> Bed {
    let dir = tempfile::tempdir().expect("temp dir for the datastores");
    let mut options = TestbedOptions::spec(spec);
    options.data_dir = Some(dir.path().to_owned());
    let tb = Testbed::start_with(options).await.expect("testbed starts");
    Bed { tb, _dir: dir }
}

/// Connects with the pinned thumbprint.
pub(crate) async fn connect(tb: &Testbed) -> Client {
    Client::connect(options(tb))
        .await
        .expect("connect to the testbed")
}

/// A value of the testbed's statistics, e.g. `stat(&s, &["active_sessions"])`.
pub(crate) fn stat(stats: &serde_json::Value, path: &[&str]) -> i64 {
    let mut v = stats;
    for p in path {
        v = &v[p];
    }
    v.as_i64().unwrap_or(0)
}
