//! 5.2: `/metrics` passes `promtool check metrics` (Debian package `prometheus`).

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::StatusCode;

use super::common::{SMALL_SPEC, add_testbed, create_job, run_job, server_with_repo, wait_run};
use vbm_testkit::Testbed;

#[tokio::test]
async fn metrics_pass_promtool() {
    // One real backup first, so that the labelled families (per job and VM) have samples.
    let tb = Testbed::start(SMALL_SPEC).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_repo(dir.path(), "").await;
    let vc = add_testbed(&server, "lab", &tb).await;
    let job = create_job(
        &server,
        serde_json::json!({"name": "metrics", "sources": [{"vcenter_id": vc, "name_patterns": ["web01"]}]}),
    )
    .await;
    let run = run_job(&server, job["id"].as_str().unwrap()).await;
    let done = wait_run(&server, &run, std::time::Duration::from_secs(120)).await;
    assert_eq!(done["status"], "success", "{done}");
    let resp = server
        .client()
        .get(server.at("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let body = resp.text().await.unwrap();
    // Labelled families appear with their first sample; these are always there.
    assert!(body.contains("backup_success_total{"), "{body}");
    for name in [
        "repository_used_bytes",
        "repository_free_bytes",
        "vbm_running_jobs",
        "vbm_running_backups",
        "vbm_leftover_snapshots",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
    // Every metric the Grafana dashboard and the alert rules use is declared.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    for file in ["grafana/vbm.json", "prometheus-alerts.yml"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let names: std::collections::BTreeSet<&str> = text
            .lines()
            .filter(|l| l.contains("expr"))
            .flat_map(|l| l.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|t| {
                ["backup_", "repository_", "vbm_"]
                    .iter()
                    .any(|p| t.starts_with(p))
            })
            .collect();
        assert!(!names.is_empty(), "no metric found in {file}");
        for name in names {
            assert!(
                body.contains(&format!("# TYPE {name} ")),
                "{file} uses {name}, which /metrics does not declare:\n{body}"
            );
        }
    }
    let rules = Command::new("promtool")
        .args(["check", "rules"])
        .arg(root.join("prometheus-alerts.yml"))
        .output()
        .expect("promtool");
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );
    // Prometheus' own authorization style works too.
    let bearer = reqwest::Client::new()
        .get(server.at("/metrics"))
        .bearer_auth(&server.api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: run scripts/deps.sh (Debian package prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
