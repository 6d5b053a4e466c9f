//! Restores into vCenter through the API: as a new VM, and in place over the original VM (with
//! explicit confirmation, into the vCenter the backup came from). The restored disks equal the
//! backed-up ones (INV-5).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::common::{
    SMALL_SPEC, add_testbed, call, create_job, enc, run_job, server_with_repo, wait_run,
};
use vbm_testkit::Testbed;

// covers INV-5 for vCenter restores
#[tokio::test]
async fn restore_as_a_new_vm_and_in_place() {
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_repo(dir.path(), "").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let info = tb.control().info().await.unwrap();
    let app = info.vm("app01").unwrap().clone();
    let key = app.disks[0].key;
    let job = create_job(
        &server,
        json!({"name": "app", "sources": [{"vcenter_id": vc, "vms": [app.instance_uuid]}]}),
    )
    .await;
    let run = run_job(&server, job["id"].as_str().unwrap()).await;
    let done = wait_run(&server, &run, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
    let backup = done["vms"][0]["backup_id"].as_str().unwrap().to_owned();
    let at_backup = tb.control().disk_sha256("app01", key).await.unwrap();

    // As a new VM.
    let (status, _, r) = call(
        &server,
        "POST",
        &format!("/api/v1/backups/{}/restore", enc(&backup)),
        Some(
            json!({"to": {"target": "new_vm", "vcenter_id": vc, "datastore": "datastore1",
                            "name": "app01-copy"}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    let r = wait_run(&server, r["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(r["status"], "success", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("app01-copy"), "{r}");
    let info = tb.control().info().await.unwrap();
    let copy = info.vm("app01-copy").unwrap();
    assert_eq!(
        tb.control()
            .disk_sha256("app01-copy", copy.disks[0].key)
            .await
            .unwrap(),
        at_backup
    );

    // In place, after the guest changed the disk: the backed-up contents come back.
    tb.control()
        .write("app01", key, 0, 256 * 1024, 9)
        .await
        .unwrap();
    assert_ne!(
        tb.control().disk_sha256("app01", key).await.unwrap(),
        at_backup
    );
    let (status, _, r) = call(
        &server,
        "POST",
        &format!("/api/v1/backups/{}/restore", enc(&backup)),
        Some(json!({"to": {"target": "in_place", "confirm": true}})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    let r = wait_run(&server, r["id"].as_str().unwrap(), Duration::from_secs(120)).await;
    assert_eq!(r["status"], "success", "{r}");
    let info = tb.control().info().await.unwrap();
    let again = info.vm("app01").unwrap();
    assert_eq!(
        tb.control()
            .disk_sha256("app01", again.disks[0].key)
            .await
            .unwrap(),
        at_backup
    );
}
