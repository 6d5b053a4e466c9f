//! I1: a schema-driven pass (schemathesis, PyPI) over every operation of /api/v1/openapi.json
//! finds no 5xx. Bounded: a few examples per operation, one worker.
//!
//! Operations that make the server connect to a vCenter URL taken from the request
//! (`/vcenters/test`, `/vcenters/{id}/test`, `/vms`) are left out: fuzzed URLs must never turn
//! into outbound connections from a test machine. The server has a (empty) repository, so the
//! repository operations (stats, GC, catalog rebuild) and retention are fuzzed too; restore and
//! verify only ever see backup ids that do not exist. SSE streams (`/events`) are not
//! request/response and are tested elsewhere.

use std::process::Command;

use serde_json::json;

use super::common::{call, create_job, create_vcenter, server_with_repo};

// covers I1
#[tokio::test]
async fn schemathesis_finds_no_server_error() {
    let probe = Command::new("schemathesis").arg("--version").output();
    assert!(
        probe.is_ok(),
        "schemathesis is missing: run scripts/deps.sh (pip install schemathesis)"
    );
    let repo_dir = tempfile::tempdir().unwrap();
    let server = server_with_repo(repo_dir.path(), "").await;
    let vc = create_vcenter(&server, "lab", "http://127.0.0.1:9/sdk", "pw").await;
    create_job(
        &server,
        json!({"name": "nightly", "sources": [{"vcenter_id": vc, "name_patterns": ["*"]}]}),
    )
    .await;
    let (_, _, doc) = call(&server, "GET", "/api/v1/openapi.json", None).await;
    let dir = tempfile::tempdir().unwrap();
    let schema = dir.path().join("openapi.json");
    std::fs::write(&schema, doc.to_string()).unwrap();
    let url = server.url.clone();
    let key = server.api_key.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("schemathesis")
            .current_dir(schema.parent().unwrap())
            .arg("run")
            .arg(&schema)
            .args(["--url", &url])
            .args(["--header", &format!("X-API-Key: {key}")])
            .args(["--checks", "not_a_server_error"])
            .args([
                "--max-examples",
                "8",
                "--workers",
                "1",
                "--generation-deterministic",
            ])
            .args(["--phases", "examples,coverage,fuzzing"])
            .args(["--exclude-path-regex", "(/test$|^/api/v1/vms$|/events$)"])
            .args(["--request-timeout", "20"])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{stdout}\n{}\n--- server log ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
    assert!(!server.log().contains("handler panicked"));
}
