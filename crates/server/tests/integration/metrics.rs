//! 5.2: `/metrics` passes `promtool check metrics` (Debian package `prometheus`).

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::StatusCode;

use vbm_testkit::Server;

#[tokio::test]
async fn metrics_pass_promtool() {
    let server = Server::start().await.unwrap();
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
    for name in [
        "repository_used_bytes",
        "repository_free_bytes",
        "vbm_running_jobs",
        "vbm_running_backups",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }
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
