//! I11 / INV-9: a canary vCenter password never appears in responses, logs or the database file.

use reqwest::StatusCode;
use serde_json::json;

use super::common::{call, create_vcenter};
use vbm_testkit::Server;

fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| *w == needle)
        .count()
}

// covers I11, I14
#[tokio::test]
async fn passwords_are_write_only_and_encrypted() {
    let mut server = Server::start().await.unwrap();
    let canary = "CANARY-VC-7f3a9c";
    let id = create_vcenter(&server, "lab", "http://127.0.0.1:9/sdk", canary).await;
    let mut transcript = String::new();
    for path in ["/api/v1/vcenters", &format!("/api/v1/vcenters/{id}")] {
        let (status, _, body) = call(&server, "GET", path, None).await;
        assert_eq!(status, StatusCode::OK);
        transcript.push_str(&body.to_string());
    }
    let (_, _, one) = call(&server, "GET", &format!("/api/v1/vcenters/{id}"), None).await;
    assert_eq!(one["password_set"], true);
    assert!(one.get("password").is_none());
    // Update without a password keeps it; with "" clears it.
    let (status, _, body) = call(
        &server,
        "PUT",
        &format!("/api/v1/vcenters/{id}"),
        Some(json!({"name": "lab", "url": "http://127.0.0.1:9/sdk", "username": "u", "allow_http": true})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["password_set"], true);
    transcript.push_str(&body.to_string());
    // A failing connection test must not echo it either.
    let (_, _, body) = call(
        &server,
        "POST",
        &format!("/api/v1/vcenters/{id}/test"),
        None,
    )
    .await;
    transcript.push_str(&body.to_string());
    assert_eq!(count(transcript.as_bytes(), canary.as_bytes()), 0);
    // SSRF guard (I14).
    for (url, lab) in [
        ("http://10.0.0.1/sdk", false),
        ("file:///etc/passwd", true),
        ("https://169.254.169.254/latest", false),
        ("http://169.254.169.254/", true),
    ] {
        let (status, ctype, body) = call(
            &server,
            "POST",
            "/api/v1/vcenters",
            Some(json!({"name": "x", "url": url, "username": "u", "allow_http": lab})),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(ctype, "application/problem+json");
        assert_eq!(body["errors"][0]["field"], "url", "{body}");
    }
    // Stop and look at every file the server wrote.
    server
        .terminate(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    for entry in std::fs::read_dir(&server.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                count(&bytes, canary.as_bytes()),
                0,
                "canary in {}",
                path.display()
            );
        }
    }
    assert_eq!(
        count(server.log().as_bytes(), canary.as_bytes()),
        0,
        "canary in the log"
    );
    // The master key is beside the database, private, and not in it.
    let key = std::fs::read_to_string(server.data_dir.join("master.key")).unwrap();
    let db = std::fs::read(server.data_dir.join("vbm.db")).unwrap();
    assert_eq!(count(&db, key.trim().as_bytes()), 0);
    // And the API key is stored only as a hash.
    assert_eq!(count(&db, server.api_key.as_bytes()), 0);
}
