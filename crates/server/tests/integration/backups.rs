//! Real backups through the API against the testbed: live progress over SSE, per-VM results,
//! the catalog with manifests, an incremental that reads only changes, verify (ok, and a flipped
//! byte in a chunk), a restore to a directory equal to the source disk, repository stats, and
//! the catalog rebuilt from the repository after the database is lost (R4).

use std::time::Duration;

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Digest;

use super::common::{
    SMALL_SPEC, add_testbed, backups, call, create_job, enc, manifests_on_disk, run_job,
    server_with_repo, wait_run,
};
use vbm_testkit::{Server, Testbed};

/// Reads the run's SSE stream until its final status; returns (event name, data) pairs.
async fn sse_events(server: &Server, run: &str) -> Vec<(String, Value)> {
    let resp = server
        .client()
        .get(server.at(&format!("/api/v1/runs/{run}/events")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut stream = resp.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
        buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut name = String::new();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim());
                }
            }
            if !name.is_empty() {
                events.push((name, serde_json::from_str(&data).unwrap_or(Value::Null)));
            }
        }
    }
    events
}

fn sha256_file(path: &std::path::Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// The largest chunk file of the repository (a data chunk, not a tiny blob).
fn largest_chunk(repo: &std::path::Path) -> std::path::PathBuf {
    let mut best: Option<(u64, std::path::PathBuf)> = None;
    let mut stack = vec![repo.join("chunks")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.to_string_lossy().ends_with(".bad") {
                let len = e.metadata().unwrap().len();
                if best.as_ref().is_none_or(|(l, _)| len > *l) {
                    best = Some((len, p));
                }
            }
        }
    }
    best.unwrap().1
}

fn catalog_view(items: &[Value]) -> Vec<Value> {
    let mut v: Vec<Value> = items
        .iter()
        .map(|b| {
            json!({"id": b["id"], "job_id": b["job_id"], "vm_name": b["vm_name"],
                   "instance_uuid": b["instance_uuid"], "mode": b["mode"], "vcenter": b["vcenter"],
                   "logical_bytes": b["logical_bytes"], "bytes_read": b["bytes_read"],
                   "bytes_written": b["bytes_written"], "started": b["started"],
                   "verify_ok": b["verify_ok"], "verified_at": b["verified_at"],
                   "files": b["manifest"]["files"]})
        })
        .collect();
    v.sort_by_key(|b| b["id"].as_str().unwrap().to_owned());
    v
}

// covers S-D5 (flipped byte → verify names the backup), INV-5 (restore = source), R4, I11
#[tokio::test]
async fn backup_progress_incremental_verify_restore_and_rebuild() {
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo");
    let mut server = server_with_repo(dir.path(), "").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let info = tb.control().info().await.unwrap();
    let web = info.vm("web01").unwrap().clone();
    let job = create_job(
        &server,
        json!({"name": "web", "sources": [{"vcenter_id": vc, "vms": [web.instance_uuid]}],
               "retention": {"keep_last": 10}}),
    )
    .await;
    let job_id = job["id"].as_str().unwrap().to_owned();

    // First run: full. Watch it over SSE from the start.
    let run1 = run_job(&server, &job_id).await;
    let events = sse_events(&server, &run1).await;
    let done = wait_run(&server, &run1, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
    let vm1 = &done["vms"][0];
    assert_eq!(vm1["status"], "success", "{done}");
    assert_eq!(vm1["mode"], "full");
    let full_read = vm1["bytes_read"].as_u64().unwrap();
    assert!(full_read > 1 << 20, "{vm1}");
    assert!(vm1["bytes_written"].as_u64().unwrap() > 0, "{vm1}");
    let b1 = vm1["backup_id"].as_str().unwrap().to_owned();
    let phases: Vec<&str> = events
        .iter()
        .filter(|(name, _)| name == "progress")
        .map(|(_, e)| e["progress"]["phase"].as_str().unwrap())
        .collect();
    for phase in ["connecting", "snapshot", "downloading", "done"] {
        assert!(phases.contains(&phase), "no {phase} event in {phases:?}");
    }
    assert!(
        events.iter().any(|(n, e)| n == "progress"
            && e["progress"]["phase"] == "downloading"
            && e["progress"]["bytes_done"].as_u64() > Some(0)
            && e["progress"]["bytes_total"].as_u64() > Some(0)),
        "no byte counts in the progress events"
    );
    assert!(events.iter().any(|(n, _)| n == "log"));
    let last = events.last().unwrap();
    assert_eq!(last.0, "status");
    assert_eq!(last.1["status"], "success");
    let (_, _, logs) = call(&server, "GET", &format!("/api/v1/runs/{run1}/logs"), None).await;
    assert!(
        logs.to_string().contains("creating snapshot vbm-"),
        "engine messages are in the run log: {logs}"
    );

    // The catalog, with the manifest.
    let list = backups(&server, &format!("&job_id={job_id}")).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], b1.as_str());
    assert_eq!(list[0]["vcenter"], "lab");
    assert_eq!(list[0]["instance_uuid"], web.instance_uuid.to_lowercase());
    let files = list[0]["manifest"]["files"].as_array().unwrap();
    assert!(
        files
            .iter()
            .any(|f| f["path"].as_str().unwrap().ends_with("-flat.vmdk"))
    );
    assert!(
        files
            .iter()
            .all(|f| f["sha256"].as_str().unwrap().len() == 64)
    );

    // A guest write, then an incremental that reads only the change.
    let disk = &web.disks[0];
    tb.control()
        .write("web01", disk.key, 3 * 1024 * 1024 + 512, 100 * 1024, 5)
        .await
        .unwrap();
    let run2 = run_job(&server, &job_id).await;
    let done = wait_run(&server, &run2, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
    let vm2 = &done["vms"][0];
    assert_eq!(vm2["mode"], "incremental", "{done}");
    let inc_read = vm2["bytes_read"].as_u64().unwrap();
    assert!(
        (100 * 1024..512 * 1024).contains(&inc_read),
        "the incremental read {inc_read} bytes for a 100 KiB write (full: {full_read})"
    );
    let b2 = vm2["backup_id"].as_str().unwrap().to_owned();
    let (status, _, one) = call(
        &server,
        "GET",
        &format!("/api/v1/backups/{}", enc(&b2)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["manifest"]["parent"], b1.as_str());

    // Verify: ok.
    let (status, _, vrun) = call(
        &server,
        "POST",
        &format!("/api/v1/backups/{}/verify", enc(&b2)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{vrun}");
    let vdone = wait_run(
        &server,
        vrun["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(vdone["status"], "success", "{vdone}");
    let (_, _, one) = call(
        &server,
        "GET",
        &format!("/api/v1/backups/{}", enc(&b2)),
        None,
    )
    .await;
    assert_eq!(one["verify_ok"], true, "{one}");
    assert!(one["verified_at"].is_string());

    // Restore to a directory: the flat file equals the source disk (INV-5).
    let target = dir.path().join("restored");
    let (status, _, rrun) = call(
        &server,
        "POST",
        &format!("/api/v1/backups/{}/restore", enc(&b2)),
        Some(json!({"to": {"target": "directory", "path": target}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{rrun}");
    let rdone = wait_run(
        &server,
        rrun["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(rdone["status"], "success", "{rdone}");
    let flat = files
        .iter()
        .find(|f| f["path"].as_str().unwrap().ends_with("-flat.vmdk"))
        .unwrap()["path"]
        .as_str()
        .unwrap()
        .to_owned();
    let source = tb.control().disk_sha256("web01", disk.key).await.unwrap();
    assert_eq!(sha256_file(&target.join(&flat)), source);
    // An in-place restore is refused without confirmation.
    let (status, _, body) = call(
        &server,
        "POST",
        &format!("/api/v1/backups/{}/restore", enc(&b2)),
        Some(json!({"to": {"target": "in_place"}})),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body.to_string().contains("to.confirm"), "{body}");

    // Repository stats.
    let (status, _, stats) = call(&server, "GET", "/api/v1/repository/stats", None).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    assert_eq!(stats["backups"], 2, "{stats}");
    assert!(stats["used_bytes"].as_u64() > Some(0), "{stats}");
    assert!(stats["free_bytes"].as_u64() > Some(0), "{stats}");
    assert!(stats["total_bytes"].as_u64() >= stats["free_bytes"].as_u64());

    // S-D5: flip one byte in a chunk; verifying the first backup fails and names it.
    let chunk = largest_chunk(&repo);
    let mut bytes = std::fs::read(&chunk).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&chunk, bytes).unwrap();
    let (_, _, vrun) = call(
        &server,
        "POST",
        &format!("/api/v1/backups/{}/verify", enc(&b1)),
        None,
    )
    .await;
    let vdone = wait_run(
        &server,
        vrun["id"].as_str().unwrap(),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(vdone["status"], "failed", "{vdone}");
    let reason = vdone["reason"].as_str().unwrap();
    assert!(
        reason.contains(&b1),
        "the reason names the backup: {reason}"
    );
    let (_, _, one) = call(
        &server,
        "GET",
        &format!("/api/v1/backups/{}", enc(&b1)),
        None,
    )
    .await;
    assert_eq!(one["verify_ok"], false, "{one}");
    assert!(!one["verify_problems"].as_array().unwrap().is_empty());
    let (_, _, stats) = call(&server, "GET", "/api/v1/repository/stats", None).await;
    assert_eq!(stats["bad_chunks"], 1, "the chunk is quarantined: {stats}");

    // R4: lose the database, keep the repository: the rebuilt catalog is the same.
    let before = catalog_view(&backups(&server, "").await);
    server.kill9().await.unwrap();
    for f in ["vbm.db", "vbm.db-wal", "vbm.db-shm"] {
        let _ = std::fs::remove_file(server.data_dir.join(f));
    }
    server.renew_api_key().await.unwrap();
    server.restart().await.unwrap();
    let after = catalog_view(&backups(&server, "").await);
    assert_eq!(after, before);
    let (status, _, sync) = call(&server, "POST", "/api/v1/repository/rebuild-catalog", None).await;
    assert_eq!(status, StatusCode::OK, "{sync}");
    assert_eq!(sync, json!({"added": 0, "removed": 0}));
    let ids: std::collections::BTreeSet<String> = after
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, manifests_on_disk(&repo));
    assert!(!server.log().contains(&tb.password) || tb.password.len() < 4);
}
