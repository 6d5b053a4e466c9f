//! Crashes and stops in the middle of real backups: kill -9 with a vCenter snapshot open (F6),
//! SIGTERM (F8), and a kill between the manifest and the database commit (F2). After each, the
//! invariants: no run stays running (INV-7), no `vbm-*` snapshot is left (INV-6), no lock or
//! partial backup is left once GC ran (INV-8), the catalog equals the manifests (INV-4).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::common::{
    SMALL_SPEC, add_testbed, backups, call, create_job, eventually, manifests_on_disk, repo_locks,
    run_job, run_log, server_with_repo, vbm_snapshots, wait_downloading, wait_run,
};
use vbm_testkit::{Server, Testbed};

/// Throttles every disk download of the testbed so that a backup is mid-download for seconds.
async fn slow_downloads(tb: &Testbed) {
    tb.control()
        .add_fault(
            json!({"kind": "transfer_slow", "path_contains": "-flat.vmdk",
                          "bytes_per_sec": 200_000, "count": 0}),
        )
        .await
        .unwrap();
}

async fn web_job(server: &Server, tb: &Testbed, vc: &str, extra: Value) -> String {
    let info = tb.control().info().await.unwrap();
    let web = info.vm("web01").unwrap();
    let mut spec =
        json!({"name": "web", "sources": [{"vcenter_id": vc, "vms": [web.instance_uuid]}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    let job = create_job(server, spec).await;
    job["id"].as_str().unwrap().to_owned()
}

async fn runs_of(server: &Server, job: &str) -> Vec<Value> {
    let (_, _, body) = call(
        server,
        "GET",
        &format!("/api/v1/runs?job_id={job}&limit=500"),
        None,
    )
    .await;
    body["items"].as_array().unwrap().clone()
}

/// Runs GC through the API and returns the finished run.
async fn gc(server: &Server) -> Value {
    let (status, _, run) = call(server, "POST", "/api/v1/repository/gc", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let done = wait_run(server, run["id"].as_str().unwrap(), Duration::from_secs(60)).await;
    assert_eq!(done["status"], "success", "{done}");
    done
}

// covers F6, INV-6, INV-7, INV-8, F1 (no visible partial backup, the rerun succeeds)
#[tokio::test]
async fn kill9_mid_backup_sweeps_the_snapshot_and_the_retry_succeeds() {
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut server = server_with_repo(dir.path(), "grace_secs = 0\n").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let job = web_job(
        &server,
        &tb,
        &vc,
        json!({"retries": 1, "retry_delay_secs": 0}),
    )
    .await;
    slow_downloads(&tb).await;
    let run = run_job(&server, &job).await;
    wait_downloading(&server, &run).await;
    assert_eq!(
        vbm_snapshots(&tb, "web01").await,
        [format!("vbm-{run}")],
        "the run's snapshot is open"
    );
    server.kill9().await.unwrap();
    tb.control().clear_faults().await.unwrap();
    server.restart().await.unwrap();

    let (_, _, r) = call(&server, "GET", &format!("/api/v1/runs/{run}"), None).await;
    assert_eq!(r["status"], "interrupted", "{r}");
    assert_eq!(r["vms"][0]["status"], "interrupted", "{r}");
    assert!(
        r["vms"][0]["error"]
            .as_str()
            .unwrap()
            .contains("server stopped"),
        "{r}"
    );
    // The retry runs and succeeds; the snapshot of the killed run is gone.
    let retry = eventually(Duration::from_secs(60), "a successful retry", || async {
        runs_of(&server, &job)
            .await
            .into_iter()
            .find(|r| r["trigger"] == "retry" && r["status"] == "success")
    })
    .await;
    assert_eq!(retry["retry_of"], run.as_str());
    eventually(Duration::from_secs(30), "the sweep", || async {
        vbm_snapshots(&tb, "web01").await.is_empty().then_some(())
    })
    .await;
    let log = run_log(&server, &run).await;
    assert!(log.contains("snapshot"), "{log}");
    // Exactly one restore point (the retry's); the killed one never became visible.
    let list = backups(&server, "").await;
    assert_eq!(list.len(), 1, "{list:?}");
    let (_, _, r2) = call(
        &server,
        "GET",
        &format!("/api/v1/runs/{}", retry["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(r2["vms"][0]["backup_id"], list[0]["id"]);
    // GC clears the dead writer's lock (INV-8); its manifest-less directory is removed once
    // older than the repository's leftover age, and is never a restore point meanwhile.
    let (_, _, stats) = call(&server, "GET", "/api/v1/repository/stats", None).await;
    assert_eq!(stats["partial_backups"], 1, "{stats}");
    let done = gc(&server).await;
    assert!(
        done["reason"]
            .as_str()
            .unwrap()
            .contains("stale locks cleared"),
        "{done}"
    );
    assert!(repo_locks(&repo).is_empty(), "{:?}", repo_locks(&repo));
    assert_eq!(
        manifests_on_disk(&repo),
        [list[0]["id"].as_str().unwrap().to_owned()].into()
    );
}

// covers F8, INV-6, INV-7, INV-8
#[tokio::test]
async fn sigterm_mid_backup_cancels_and_removes_the_snapshot() {
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut server = server_with_repo(dir.path(), "").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let job = web_job(
        &server,
        &tb,
        &vc,
        json!({"retries": 2, "retry_delay_secs": 0}),
    )
    .await;
    slow_downloads(&tb).await;
    let run = run_job(&server, &job).await;
    wait_downloading(&server, &run).await;
    assert_eq!(vbm_snapshots(&tb, "web01").await.len(), 1);
    let status = server.terminate(Duration::from_secs(60)).await.unwrap();
    assert!(status.success(), "{status}");
    // Graceful: the snapshot is already gone and nothing is locked before any restart.
    assert!(vbm_snapshots(&tb, "web01").await.is_empty());
    assert!(repo_locks(&repo).is_empty(), "{:?}", repo_locks(&repo));
    assert!(manifests_on_disk(&repo).is_empty());
    tb.control().clear_faults().await.unwrap();
    server.restart().await.unwrap();
    let (_, _, r) = call(&server, "GET", &format!("/api/v1/runs/{run}"), None).await;
    assert_eq!(r["status"], "cancelled", "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("shutting down"),
        "{r}"
    );
    assert_eq!(r["vms"][0]["status"], "cancelled", "{r}");
    // A cancelled run is not retried, and nothing is running.
    let runs = runs_of(&server, &job).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert!(backups(&server, "").await.is_empty());
}

// covers F2, INV-4: a crash after the manifest and before the database commit
#[tokio::test]
async fn kill_between_manifest_and_db_commit_keeps_catalog_equal_to_manifests() {
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut server = server_with_repo(dir.path(), "").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let job = web_job(
        &server,
        &tb,
        &vc,
        json!({"retries": 1, "retry_delay_secs": 0}),
    )
    .await;
    server.set_env(
        "VBM_FAILPOINTS",
        Some("manifest.after_write_before_db_commit=abort"),
    );
    server.restart().await.unwrap();
    let run = run_job(&server, &job).await;
    server.wait_exit(Duration::from_secs(120)).await.unwrap();
    assert_eq!(
        manifests_on_disk(&repo).len(),
        1,
        "the manifest was written"
    );
    server.set_env("VBM_FAILPOINTS", None);
    server.restart().await.unwrap();

    let list = backups(&server, "").await;
    let ids: std::collections::BTreeSet<String> = list
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, manifests_on_disk(&repo), "catalog = manifests");
    assert_eq!(list[0]["job_id"], job.as_str());
    // The run was interrupted, but its VM's backup is credited to it and not redone.
    let (_, _, r) = call(&server, "GET", &format!("/api/v1/runs/{run}"), None).await;
    assert_eq!(r["status"], "interrupted", "{r}");
    assert_eq!(r["vms"][0]["status"], "success", "{r}");
    assert_eq!(r["vms"][0]["backup_id"], list[0]["id"], "{r}");
    assert_eq!(list[0]["run_id"], run.as_str());
    assert_eq!(
        runs_of(&server, &job).await.len(),
        1,
        "no retry of a done VM"
    );
    // And the reverse (a row without a manifest) is repaired by a rebuild.
    let id = list[0]["id"].as_str().unwrap();
    std::fs::remove_dir_all(repo.join("backups").join(id)).unwrap();
    let (status, _, sync) = call(&server, "POST", "/api/v1/repository/rebuild-catalog", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sync, json!({"added": 0, "removed": 1}));
    assert!(backups(&server, "").await.is_empty());
}
