//! L6: a bounded load of authenticated read requests while a backup runs — no 5xx, every request
//! answered, and the backup still succeeds. Loopback only, 16 concurrent clients for 15 s.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use super::common::{
    SMALL_SPEC, add_testbed, create_job, run_job, server_with_repo, wait_downloading, wait_run,
};
use vbm_testkit::Testbed;

const CLIENTS: usize = 16;
const DURATION: Duration = Duration::from_secs(15);

// covers L6
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_load_during_a_backup_gets_no_server_error() {
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_repo(dir.path(), "").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let job = create_job(
        &server,
        json!({"name": "load", "sources": [{"vcenter_id": vc, "name_patterns": ["*"]}]}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    // Slow enough that the backup spans the whole load.
    tb.control()
        .add_fault(
            json!({"kind": "transfer_slow", "path_contains": "-flat.vmdk",
                          "bytes_per_sec": 120_000, "count": 0}),
        )
        .await
        .unwrap();
    let run = run_job(&server, &id).await;
    wait_downloading(&server, &run).await;

    let paths: Arc<Vec<String>> = Arc::new(vec![
        "/api/v1/jobs".into(),
        format!("/api/v1/jobs/{id}"),
        format!("/api/v1/runs/{run}"),
        format!("/api/v1/runs/{run}/logs"),
        "/api/v1/runs?limit=50".into(),
        "/api/v1/backups".into(),
        "/api/v1/vcenters".into(),
        "/api/v1/vms".into(),
        format!("/api/v1/jobs/{id}/retention"),
        "/metrics".into(),
        "/healthz".into(),
    ]);
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (http, url) = (server.client().clone(), server.url.clone());
        let (paths, ok, errors, stop) = (
            Arc::clone(&paths),
            Arc::clone(&ok),
            Arc::clone(&errors),
            Arc::clone(&stop),
        );
        clients.push(tokio::spawn(async move {
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let path = &paths[i % paths.len()];
                i += 1;
                match http.get(format!("{url}{path}")).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(resp) => errors
                        .lock()
                        .unwrap()
                        .push(format!("{path}: {}", resp.status())),
                    Err(e) => errors.lock().unwrap().push(format!("{path}: {e}")),
                }
            }
        }));
    }
    tokio::time::sleep(DURATION).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = started.elapsed();
    let errors = errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "{} failed requests: {errors:?}",
        errors.len()
    );
    let served = ok.load(Ordering::Relaxed);
    assert!(served > 200, "only {served} requests in {elapsed:?}");
    // The backup was running throughout and still succeeds.
    let (_, _, r) = super::common::call(&server, "GET", &format!("/api/v1/runs/{run}"), None).await;
    assert_eq!(r["status"], "running", "the backup outlasted the load: {r}");
    tb.control().clear_faults().await.unwrap();
    let done = wait_run(&server, &run, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
}
