//! Helpers shared by the API tests.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use vbm_testkit::Server;

/// Sends a request and returns (status, content-type, body as JSON or string).
pub(crate) async fn call(
    server: &Server,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, String, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut req = server.client().request(method, server.at(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    assert!(
        !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
        "{path}: {status} {value}"
    );
    (status, ctype, value)
}

/// Creates a vCenter and returns its id.
pub(crate) async fn create_vcenter(
    server: &Server,
    name: &str,
    url: &str,
    password: &str,
) -> String {
    let (status, _, body) = call(
        server,
        "POST",
        "/api/v1/vcenters",
        Some(
            json!({"name": name, "url": url, "username": "administrator@vsphere.local",
                    "password": password, "trust": {"mode": "insecure"}, "allow_http": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Creates a job and returns its body.
pub(crate) async fn create_job(server: &Server, spec: Value) -> Value {
    let (status, _, body) = call(server, "POST", "/api/v1/jobs", Some(spec)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body
}

/// Polls `f` until it returns `Some`, failing after `timeout`.
pub(crate) async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
