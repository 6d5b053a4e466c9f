//! Against the testbed (govmomi vcsim, extended): test connection, inventory, and one job over two
//! vCenters (5.3) whose run resolves VMs from both at run time and backs them all up.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::common::{SMALL_SPEC, backups, call, create_job, run_job, server_with_repo, wait_run};
use vbm_testkit::{Server, Testbed};

async fn add(server: &Server, name: &str, tb: &Testbed, thumbprint: &str) -> String {
    let (status, _, body) = call(
        server,
        "POST",
        "/api/v1/vcenters",
        Some(
            json!({"name": name, "url": tb.sdk_url, "username": tb.user, "password": tb.password,
                    "trust": {"mode": "thumbprint", "sha256": thumbprint}}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

// covers L4 (paginated inventory), 5.3 (two vCenters in one job)
#[tokio::test]
async fn two_vcenters_in_one_job() {
    // Other names in the second: vcsim derives instance UUIDs from names, and two real
    // vCenters give their VMs different ones.
    let other = SMALL_SPEC
        .replace("web01", "web02")
        .replace("app01", "app02");
    let (a, b) = tokio::join!(Testbed::start(SMALL_SPEC), Testbed::start(&other));
    let (a, b) = (a.unwrap(), b.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_repo(dir.path(), "").await;
    let va = add(&server, "vc-a", &a, &a.thumbprint_sha256).await;
    let vb = add(&server, "vc-b", &b, &b.thumbprint_sha256).await;
    // Test connection: pinned thumbprint, login works.
    let (status, _, info) = call(
        &server,
        "POST",
        &format!("/api/v1/vcenters/{va}/test"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["login_ok"], true, "{info}");
    // A wrong pin is refused with a reason (and the password is not in it).
    let wrong = "00".repeat(32);
    let (_, _, info) = call(
        &server,
        "POST",
        "/api/v1/vcenters/test",
        Some(
            json!({"name": "x", "url": a.sdk_url, "username": a.user, "password": a.password,
                    "trust": {"mode": "thumbprint", "sha256": wrong}}),
        ),
    )
    .await;
    assert_eq!(info["login_ok"], false, "{info}");
    assert!(!info.to_string().contains(&a.password) || a.password.len() < 4);
    // The unified inventory, paginated.
    let expected =
        a.control().info().await.unwrap().vms.len() + b.control().info().await.unwrap().vms.len();
    let (_, _, page1) = call(&server, "GET", "/api/v1/vms?limit=2", None).await;
    assert_eq!(
        page1["items"].as_array().unwrap().len(),
        2.min(expected),
        "{page1}"
    );
    let (_, _, all) = call(&server, "GET", "/api/v1/vms?limit=500", None).await;
    assert_eq!(all["items"].as_array().unwrap().len(), expected, "{all}");
    assert!(all["errors"].as_array().unwrap().is_empty());
    // One job over both vCenters: each run resolves the VMs at run time.
    let job = create_job(
        &server,
        json!({"name": "both", "sources": [{"vcenter_id": va, "name_patterns": ["*"]},
                                           {"vcenter_id": vb, "name_patterns": ["*"]}]}),
    )
    .await;
    let id = job["id"].as_str().unwrap();
    let (status, _, run) = call(&server, "POST", &format!("/api/v1/jobs/{id}/run"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let run_id = run["id"].as_str().unwrap().to_owned();
    let done = wait_run(&server, &run_id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "success", "{done}");
    let vms = done["vms"].as_array().unwrap();
    let vcenters: std::collections::HashSet<_> = vms
        .iter()
        .map(|v| v["vcenter_id"].as_str().unwrap())
        .collect();
    assert_eq!(vcenters.len(), 2, "{done}");
    assert_eq!(vms.len(), expected);
    assert!(
        vms.iter()
            .all(|v| v["status"] == "success" && v["backup_id"].is_string()),
        "{done}"
    );
    // Real restore points from both vCenters, in one catalog.
    let list = backups(&server, &format!("&job_id={id}")).await;
    assert_eq!(list.len(), expected);
    let labels: std::collections::BTreeSet<_> = list
        .iter()
        .map(|b| b["vcenter"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["vc-a", "vc-b"].into());
    assert_eq!(list.iter().filter(|b| b["vcenter"] == "vc-b").count(), 2);
    let (_, _, jobs) = call(&server, "GET", "/api/v1/jobs", None).await;
    assert_eq!(jobs["items"][0]["last_run"]["id"], run_id.as_str());
    assert_eq!(
        jobs["items"][0]["protection"]["vms"]
            .as_array()
            .unwrap()
            .len(),
        expected
    );
}

/// A VM with the same instance UUID in two vCenters (a replicated VM; the testbed derives
/// UUIDs from names) shares its repository key, but each copy keeps its own restore points:
/// retention counts the backups read through each vCenter on their own, and an incremental
/// never builds on the other vCenter's backup.
#[tokio::test]
async fn the_same_vm_in_two_vcenters_keeps_its_own_restore_points() {
    let (a, b) = tokio::join!(Testbed::start(SMALL_SPEC), Testbed::start(SMALL_SPEC));
    let (a, b) = (a.unwrap(), b.unwrap());
    let uuid = a
        .control()
        .info()
        .await
        .unwrap()
        .vm("web01")
        .unwrap()
        .instance_uuid
        .clone();
    assert_eq!(
        b.control()
            .info()
            .await
            .unwrap()
            .vm("web01")
            .unwrap()
            .instance_uuid,
        uuid
    );
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_repo(dir.path(), "").await;
    let va = add(&server, "vc-a", &a, &a.thumbprint_sha256).await;
    let vb = add(&server, "vc-b", &b, &b.thumbprint_sha256).await;
    let job = create_job(
        &server,
        json!({"name": "replicas", "retention": {"keep_last": 1},
               "sources": [{"vcenter_id": va, "vms": [uuid]}, {"vcenter_id": vb, "vms": [uuid]}]}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    for round in 0..2 {
        let run = run_job(&server, &id).await;
        let done = wait_run(&server, &run, Duration::from_secs(120)).await;
        assert_eq!(done["status"], "success", "round {round}: {done}");
        // Two VMs per run; the second round builds each on its own vCenter's backup.
        let vms = done["vms"].as_array().unwrap();
        assert_eq!(vms.len(), 2, "{done}");
        let expected = if round == 0 { "full" } else { "incremental" };
        for vm in vms {
            assert_eq!(vm["mode"], expected, "round {round}: {done}");
        }
    }
    let kept = backups(&server, &format!("&job_id={id}")).await;
    let vcenters: std::collections::BTreeSet<&str> = kept
        .iter()
        .map(|b| b["vcenter"].as_str().unwrap())
        .collect();
    assert_eq!(kept.len(), 2, "keep_last 1 per vCenter: {kept:#?}");
    assert_eq!(vcenters.len(), 2, "{kept:#?}");
    let (_, _, preview) = call(
        &server,
        "GET",
        &format!("/api/v1/jobs/{id}/retention"),
        None,
    )
    .await;
    assert!(preview.to_string().contains("on their own"), "{preview}");
}
