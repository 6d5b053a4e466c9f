//! INV-6: the periodic snapshot sweep removes a `vbm-*` snapshot a finished run left behind (a
//! removal vCenter refused, a crash while vCenter was down) and leaves alone one of a run the
//! server does not know (a command-line backup, another vbm server), which it reports.

use std::time::Duration;

use serde_json::json;

use super::common::{
    SMALL_SPEC, add_testbed, call, create_job, eventually, run_job, run_log, server_with_repo,
    vbm_snapshots, wait_run,
};
use vbm_testkit::Testbed;
use vbm_vsphere::{Client, ConnectOptions, Thumbprint, Trust};

async fn leave_snapshot(client: &Client, vm: &str, name: &str) {
    let vm = client.find_vm_by_name(vm).await.unwrap();
    client
        .create_snapshot(&vm.moref, name, "left behind by the test", false, false)
        .await
        .unwrap();
}

async fn leftover_gauge(server: &vbm_testkit::Server) -> Option<u64> {
    let text = server
        .client()
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("vbm_leftover_snapshots "))
        .and_then(|v| v.trim().parse().ok())
}

// covers INV-6
#[tokio::test]
async fn the_sweep_removes_leftovers_of_finished_runs_only() {
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_repo(dir.path(), "[snapshots]\nsweep_interval_secs = 1\n").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let job = create_job(
        &server,
        json!({"name": "sweep", "sources": [{"vcenter_id": vc, "name_patterns": ["web01"]}]}),
    )
    .await;
    let run = run_job(&server, job["id"].as_str().unwrap()).await;
    let done = wait_run(&server, &run, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
    assert!(vbm_snapshots(&tb, "web01").await.is_empty());

    let client = Client::connect(
        ConnectOptions::new(tb.sdk_url.clone(), tb.user.clone(), tb.password.clone()).trust(
            Trust::Pinned(Thumbprint::parse(&tb.thumbprint_sha256).unwrap()),
        ),
    )
    .await
    .unwrap();
    let ours = format!("vbm-{run}");
    let unknown = "vbm-0b6f3c1e-1111-4222-8333-944455556666".to_owned();
    leave_snapshot(&client, "web01", &ours).await;
    leave_snapshot(&client, "app01", &unknown).await;

    eventually(
        Duration::from_secs(60),
        "the sweep to remove the leftover",
        || async { vbm_snapshots(&tb, "web01").await.is_empty().then_some(()) },
    )
    .await;
    let log = run_log(&server, &run).await;
    assert!(
        log.contains(&format!("snapshot sweep: removed snapshot {ours}")),
        "{log}"
    );
    eventually(
        Duration::from_secs(60),
        "the gauge to count the unknown snapshot",
        || async { (leftover_gauge(&server).await == Some(1)).then_some(()) },
    )
    .await;
    assert_eq!(vbm_snapshots(&tb, "app01").await, vec![unknown.clone()]);
    let (_, _, vms) = call(&server, "GET", "/api/v1/vms", None).await;
    let app = vms["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "app01")
        .unwrap();
    assert_eq!(app["vbm_snapshots"][0]["name"], unknown, "{app}");
    let _ = client.logout().await;
}
