//! Restarts: kill -9 mid-schedule and with a run left running; nothing is lost (1.1, INV-7, F10,
//! T1 with faketime).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::common::{call, create_job, create_vcenter, eventually};
use vbm_testkit::Server;

fn db(server: &Server) -> rusqlite::Connection {
    rusqlite::Connection::open(server.data_dir.join("vbm.db")).unwrap()
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

// covers F10, INV-7, S-D8 (integrity after crashes)
#[tokio::test]
async fn kill9_loses_no_job_schedule_or_history() {
    let mut server = Server::start().await.unwrap();
    let vc = create_vcenter(&server, "lab", "http://127.0.0.1:9/sdk", "pw").await;
    let job = create_job(
        &server,
        json!({"name": "nightly", "sources": [{"vcenter_id": vc, "name_patterns": ["*"]}],
               "schedule": {"cron": "30 2 * * *", "timezone": "Europe/Berlin"},
               "retries": 1, "retry_delay_secs": 3600, "retention": {"keep_last": 7}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let next_run = job["next_run"].clone();
    assert!(next_run.is_string(), "{job}");
    // A manual run; it fails (no engine / no reachable vCenter) with a precise reason.
    let (status, _, run) = call(&server, "POST", &format!("/api/v1/jobs/{id}/run"), None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let done = eventually(Duration::from_secs(30), "the run to end", || async {
        let (_, _, r) = call(&server, "GET", &format!("/api/v1/runs/{run_id}"), None).await;
        (r["status"] != "queued" && r["status"] != "running").then_some(r)
    })
    .await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(done["reason"].as_str().unwrap().len() > 10, "{done}");
    // Its retry is queued an hour out; remove it so that this test controls the history.
    let retry = eventually(Duration::from_secs(10), "the retry", || async {
        runs_of(&server, &id)
            .await
            .into_iter()
            .find(|r| r["trigger"] == "retry")
    })
    .await;
    assert_eq!(retry["attempt"], 2);
    assert_eq!(retry["status"], "queued");
    server.kill9().await.unwrap();
    // Pretend the crash hit mid-run: the first run was running with one VM in flight.
    {
        let c = db(&server);
        c.execute("DELETE FROM runs WHERE trigger = 'retry'", [])
            .unwrap();
        c.execute(
            "UPDATE runs SET status = 'running', finished_at = NULL, reason = NULL WHERE id = ?1",
            [&run_id],
        )
        .unwrap();
        c.execute(
            "INSERT INTO run_vms (run_id, vcenter_id, instance_uuid, vm_name, status) VALUES (?1, ?2, '00000000-0000-4000-8000-000000000001', 'web-01', 'running')",
            [&run_id, &vc],
        )
        .unwrap();
    }
    server.restart().await.unwrap();
    // The schedule's next run time is exactly what it was.
    let (_, _, after) = call(&server, "GET", &format!("/api/v1/jobs/{id}"), None).await;
    assert_eq!(after["next_run"], next_run);
    assert_eq!(after["schedule"], job["schedule"]);
    assert_eq!(after["retention"], job["retention"]);
    let (_, _, vcenter) = call(&server, "GET", &format!("/api/v1/vcenters/{vc}"), None).await;
    assert_eq!(vcenter["password_set"], true);
    // The interrupted run is marked, its VM too, and a retry is queued per policy.
    let (_, _, r) = call(&server, "GET", &format!("/api/v1/runs/{run_id}"), None).await;
    assert_eq!(r["status"], "interrupted", "{r}");
    assert!(r["reason"].as_str().unwrap().contains("server stopped"));
    assert_eq!(r["vms"][0]["status"], "interrupted");
    let retry = eventually(
        Duration::from_secs(10),
        "the retry after restart",
        || async {
            runs_of(&server, &id)
                .await
                .into_iter()
                .find(|r| r["trigger"] == "retry")
        },
    )
    .await;
    assert_eq!(retry["retry_of"], run_id.as_str());
    // The sweep runs in the background (vCenter may be down): its first attempt gets logged.
    let text = eventually(Duration::from_secs(10), "the sweep attempt", || async {
        let (_, _, logs) = call(&server, "GET", &format!("/api/v1/runs/{run_id}/logs"), None).await;
        let text = logs.to_string();
        text.contains("snapshots of VM web-01").then_some(text)
    })
    .await;
    assert!(text.contains("interrupted"), "{text}");
    // A crash loop (F10): five more kills; nothing stays running, no duplicate retries.
    let before = runs_of(&server, &id).await.len();
    for _ in 0..5 {
        server.kill9().await.unwrap();
        server.restart().await.unwrap();
    }
    let runs = runs_of(&server, &id).await;
    assert_eq!(runs.len(), before, "the history grew during the crash loop");
    assert!(runs.iter().all(|r| r["status"] != "running"));
    let (_, _, after) = call(&server, "GET", &format!("/api/v1/jobs/{id}"), None).await;
    assert_eq!(after["next_run"], next_run);
    server.kill9().await.unwrap();
    let ok: String = db(&server)
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

// covers T1: the clock jumps 3 days forward across a restart: one catch-up run, not three.
#[tokio::test]
async fn clock_jump_forward_gives_one_catch_up_run() {
    if std::process::Command::new("faketime")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("faketime is missing: run scripts/deps.sh");
    }
    let mut server = Server::start().await.unwrap();
    let vc = create_vcenter(&server, "lab", "http://127.0.0.1:9/sdk", "pw").await;
    let job = create_job(
        &server,
        json!({"name": "hourly", "sources": [{"vcenter_id": vc, "name_patterns": ["*"]}],
               "schedule": {"cron": "0 * * * *", "timezone": "UTC"}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    server
        .restart_with_faketime(Some("+3d".into()))
        .await
        .unwrap();
    let runs = eventually(Duration::from_secs(30), "a catch-up run", || async {
        let runs = runs_of(&server, &id).await;
        runs.iter()
            .any(|r| r["trigger"] == "catch_up")
            .then_some(runs)
    })
    .await;
    // Give the scheduler time for a second (wrong) firing, polling the stored next run.
    let (_, _, after) = call(&server, "GET", &format!("/api/v1/jobs/{id}"), None).await;
    let next: jiff::Timestamp = after["next_run"].as_str().unwrap().parse().unwrap();
    assert!(
        next > jiff::Timestamp::now(),
        "next run {next} is not after the real now"
    );
    let runs_again = runs_of(&server, &id).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(
        runs_again
            .iter()
            .filter(|r| r["trigger"] == "catch_up" || r["trigger"] == "schedule")
            .count(),
        1
    );
}
