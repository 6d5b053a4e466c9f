//! R3: a VM a job protects that has no successful backup within the job's RPO is reported —
//! in the job view and as the `vbm_backup_overdue` metric — even though no run failed: here the
//! VM silently dropped out of the job's selection (an edited name pattern).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use super::common::{
    SMALL_SPEC, add_testbed, call, create_job, run_job, server_with_repo, wait_run,
};
use vbm_testkit::Testbed;

// covers R3
#[tokio::test]
async fn a_vm_that_left_the_selection_becomes_overdue() {
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut server = server_with_repo(dir.path(), "").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let job = create_job(
        &server,
        json!({"name": "prot", "sources": [{"vcenter_id": vc, "name_patterns": ["web01", "app01"]}],
               "rpo_minutes": 60}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(job["protection"]["rpo_minutes"], 60, "{job}");
    let run = run_job(&server, &id).await;
    let done = wait_run(&server, &run, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
    let (_, _, view) = call(&server, "GET", &format!("/api/v1/jobs/{id}"), None).await;
    assert_eq!(view["protection"]["overdue"], 0, "{view}");
    assert_eq!(view["protection"]["vms"].as_array().unwrap().len(), 2);

    // An edit drops app01 from the selection (not an exclusion: nobody decided to stop
    // protecting it). Two hours later the job still succeeds, for web01 alone.
    let mut spec = json!({"name": "prot", "sources": [{"vcenter_id": vc, "name_patterns": ["web01"]}],
                          "rpo_minutes": 60});
    let (status, _, body) = call(
        &server,
        "PUT",
        &format!("/api/v1/jobs/{id}"),
        Some(spec.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    server
        .restart_with_faketime(Some("+2h".into()))
        .await
        .unwrap();
    let run = run_job(&server, &id).await;
    let done = wait_run(&server, &run, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert_eq!(done["vms"].as_array().unwrap().len(), 1);

    let (_, _, view) = call(&server, "GET", &format!("/api/v1/jobs/{id}"), None).await;
    let vms = view["protection"]["vms"].as_array().unwrap();
    let app = vms.iter().find(|v| v["vm_name"] == "app01").unwrap();
    let web = vms.iter().find(|v| v["vm_name"] == "web01").unwrap();
    assert_eq!(app["overdue"], true, "{view}");
    assert_eq!(web["overdue"], false, "{view}");
    assert_eq!(view["protection"]["overdue"], 1);
    let metrics = server
        .client()
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"vbm_backup_overdue{job="prot",vm="app01"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"vbm_backup_overdue{job="prot",vm="web01"} 0"#),
        "{metrics}"
    );

    // Excluding it on purpose ends its protection: no more alert.
    spec["sources"][0]["exclude"] = json!(["app01"]);
    let (status, _, body) = call(&server, "PUT", &format!("/api/v1/jobs/{id}"), Some(spec)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["protection"]["overdue"], 0, "{body}");
}
