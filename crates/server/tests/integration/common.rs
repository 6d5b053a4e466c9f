//! Helpers shared by the API tests.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use vbm_testkit::Server;

/// Sends a request and returns (status, content-type, body as JSON or string).
pub(crate) async fn call(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = server.client().request(method, server.at(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    assert!(
        !status.is_server_error()
            || status == StatusCode::SERVICE_UNAVAILABLE
            || status == StatusCode::INSUFFICIENT_STORAGE,
        "{path}: {status} {value}"
    );
    (status, ctype, value)
}

/// Creates a vCenter and returns its id.
pub(crate) async fn create_vcenter(
    server: &Server,
    name: &str,
    url: &str,
    password: &str,
) -> String {
    let (status, _, body) = call(
        server,
        "POST",
        "/api/v1/vcenters",
        Some(
            json!({"name": name, "url": url, "username": "administrator@vsphere.local",
                    "password": password, "trust": {"mode": "insecure"}, "allow_http": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Creates a job and returns its body.
pub(crate) async fn create_job(server: &Server, spec: Value) -> Value {
    let (status, _, body) = call(server, "POST", "/api/v1/jobs", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Polls `f` until it returns `Some`, failing after `timeout`.
pub(crate) async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A small inventory for backup tests: two thin VMs with CBT on (16 and 8 MiB, half allocated)
/// so that a full backup of both reads ~12 MiB.
pub(crate) const SMALL_SPEC: &str = r#"{
  "seed": 7, "cbt_block_size": 65536, "qcda_window": 16777216,
  "datacenters": [{
    "name": "DC0", "datastores": [{"name": "datastore1"}],
    "clusters": [{"name": "C0", "hosts": ["esx01", "esx02"]}],
    "vms": [
      {"name": "web01", "host": "esx01", "power": "on", "cbt": true,
       "disks": [{"capacity": 16777216, "thin": true, "fill": {"kind": "mixed", "allocated": 0.5}}]},
      {"name": "app01", "host": "esx02", "power": "off", "cbt": true,
       "disks": [{"capacity": 8388608, "thin": true, "fill": {"kind": "mixed", "allocated": 0.5}}]}
    ]
  }]
}"#;

/// A server with a fresh repository under `dir` (GC off: tests start it explicitly). The
/// repository is made beforehand, as `vbm repo init` would, with 1 MiB chunks: small disks then
/// span many chunks, and a throttled download reports progress every chunk.
pub(crate) async fn server_with_repo(dir: &std::path::Path, extra_toml: &str) -> Server {
    let options = vbm_engine::vbm_repo::InitOptions {
        chunk_size: 1 << 20,
        ..vbm_engine::vbm_repo::InitOptions::default()
    };
    vbm_engine::vbm_repo::Repository::init_local(&dir.join("repo"), &options).unwrap();
    Server::start_with(vbm_testkit::ServerOptions {
        repo: Some(dir.join("repo")),
        config_toml: Some(format!(
            "[engine]\nmax_request_bytes = 1048576\n[gc]\ncron = \"\"\n{extra_toml}"
        )),
        ..vbm_testkit::ServerOptions::default()
    })
    .await
    .unwrap()
}

/// Saves a testbed as a vCenter (thumbprint pinned) and returns its id.
pub(crate) async fn add_testbed(server: &Server, name: &str, tb: &vbm_testkit::Testbed) -> String {
    let (status, _, body) = call(
        server,
        "POST",
        "/api/v1/vcenters",
        Some(
            json!({"name": name, "url": tb.sdk_url, "username": tb.user, "password": tb.password,
                    "trust": {"mode": "thumbprint", "sha256": tb.thumbprint_sha256}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Starts a run of a job ("run now") and returns its id.
pub(crate) async fn run_job(server: &Server, job: &str) -> String {
    let (status, _, run) = call(server, "POST", &format!("/api/v1/jobs/{job}/run"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    run["id"].as_str().unwrap().to_owned()
}

/// Waits until a run is over and returns it with its per-VM results.
pub(crate) async fn wait_run(server: &Server, run: &str, timeout: Duration) -> Value {
    eventually(timeout, "the run to end", || async {
        let (_, _, r) = call(server, "GET", &format!("/api/v1/runs/{run}"), None).await;
        (r["status"] != "queued" && r["status"] != "running").then_some(r)
    })
    .await
}

/// The run's log as one string.
pub(crate) async fn run_log(server: &Server, run: &str) -> String {
    let (_, _, logs) = call(
        server,
        "GET",
        &format!("/api/v1/runs/{run}/logs?limit=500"),
        None,
    )
    .await;
    logs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| format!("{} {}\n", l["level"], l["message"]))
        .collect()
}

/// Every backup in the catalog, newest first.
pub(crate) async fn backups(server: &Server, query: &str) -> Vec<Value> {
    let (status, _, body) = call(
        server,
        "GET",
        &format!("/api/v1/backups?limit=500{query}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// Backup ids with a manifest on disk (`<repo>/backups/<vm>/<time>/manifest.json`).
pub(crate) fn manifests_on_disk(repo: &std::path::Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let Ok(vms) = std::fs::read_dir(repo.join("backups")) else {
        return out;
    };
    for vm in vms.flatten() {
        for b in std::fs::read_dir(vm.path()).unwrap().flatten() {
            if b.path().join("manifest.json").is_file() {
                out.insert(format!(
                    "{}/{}",
                    vm.file_name().to_string_lossy(),
                    b.file_name().to_string_lossy()
                ));
            }
        }
    }
    out
}

/// Lock files left in the repository (INV-8).
pub(crate) fn repo_locks(repo: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![repo.join("locks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

/// `vbm-*` snapshots the testbed has for a VM.
pub(crate) async fn vbm_snapshots(tb: &vbm_testkit::Testbed, vm: &str) -> Vec<String> {
    tb.control()
        .snapshot_names(vm)
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("vbm-"))
        .collect()
}

/// Waits until the run reports live progress of the download (the snapshot exists then).
pub(crate) async fn wait_downloading(server: &Server, run: &str) {
    eventually(Duration::from_secs(60), "download progress", || async {
        let (_, _, r) = call(server, "GET", &format!("/api/v1/runs/{run}"), None).await;
        r["progress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["phase"] == "downloading" && p["bytes_done"].as_u64() > Some(0))
            .then_some(())
    })
    .await;
}

/// Percent-encodes a backup id for a path segment.
pub(crate) fn enc(id: &str) -> String {
    id.replace('/', "%2F")
}
