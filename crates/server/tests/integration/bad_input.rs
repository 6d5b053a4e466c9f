//! I1, I2, I4: malformed and hostile input gets a precise 4xx, never a 5xx.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::common::{call, create_vcenter};
use vbm_testkit::Server;

async fn raw(server: &Server, method: &str, path: &str, body: Vec<u8>) -> (StatusCode, Value) {
    let resp = server
        .client()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            server.at(path),
        )
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(ctype, "application/problem+json", "{path}");
    let body: Value = resp.json().await.unwrap();
    (status, body)
}

fn schema_count(server: &Server) -> String {
    let conn = rusqlite::Connection::open_with_flags(
        server.data_dir.join("vbm.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(
        "SELECT group_concat(sql, ';') FROM sqlite_master",
        [],
        |r| r.get(0),
    )
    .unwrap()
}

// covers I1, I2, I4
#[tokio::test]
async fn hostile_input_gets_precise_4xx() {
    let server = Server::start().await.unwrap();
    let vc = create_vcenter(&server, "lab", "http://127.0.0.1:9/sdk", "pw").await;
    let schema_before = schema_count(&server);
    let good = json!({"name": "nightly", "sources": [{"vcenter_id": vc, "name_patterns": ["*"]}],
                      "schedule": {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}});
    // Truncated JSON.
    let text = good.to_string();
    let (status, body) = raw(
        &server,
        "POST",
        "/api/v1/jobs",
        text.as_bytes()[..text.len() / 2].to_vec(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Invalid UTF-8 and deep nesting.
    let (status, _) = raw(
        &server,
        "POST",
        "/api/v1/jobs",
        vec![b'{', 0xff, 0xfe, b'}'],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let deep = "[".repeat(10_000) + &"]".repeat(10_000);
    let (status, _) = raw(&server, "POST", "/api/v1/jobs", deep.into_bytes()).await;
    assert!(status.is_client_error());
    // Unknown field (mass assignment) and wrong types.
    let mut unknown = good.clone();
    unknown["role"] = json!("admin");
    let (status, _, body) = call(&server, "POST", "/api/v1/jobs", Some(unknown)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `role`"),
        "{body}"
    );
    let mut wrong = good.clone();
    wrong["retries"] = json!("three");
    let (status, _, _) = call(&server, "POST", "/api/v1/jobs", Some(wrong)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut huge = good.clone();
    huge["retries"] = json!(1e300);
    let (status, _, _) = call(&server, "POST", "/api/v1/jobs", Some(huge)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    // Bad cron, bad time zone, out-of-range numbers: each named.
    let mut bad = good.clone();
    bad["schedule"] = json!({"cron": "61 25 * * *", "timezone": "Mars/Olympus"});
    bad["concurrency"] = json!(0);
    bad["retention"] = json!({"keep_last": 0});
    let (status, _, body) = call(&server, "POST", "/api/v1/jobs", Some(bad)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<_> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    for f in ["schedule.cron", "concurrency", "retention.keep_last"] {
        assert!(fields.iter().any(|x| x == f), "{f} not in {body}");
    }
    // SQL-injection-looking strings are data (names refused by the name rule, filters inert).
    let mut sqli = good.clone();
    sqli["name"] = json!("x'); DROP TABLE jobs;--");
    let (status, _, _) = call(&server, "POST", "/api/v1/jobs", Some(sqli)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _, body) = call(
        &server,
        "GET",
        "/api/v1/backups?vm=%27%20OR%201%3D1--",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["items"], json!([]));
    // Bad UUIDs and unknown query parameters.
    let (status, _, body) = call(&server, "GET", "/api/v1/jobs/1%20OR%201=1", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["detail"].as_str().unwrap().contains("must be a UUID"),
        "{body}"
    );
    let (status, _, _) = call(&server, "GET", "/api/v1/jobs?limit=0", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&server, "GET", "/api/v1/runs?limit=100000", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&server, "GET", "/api/v1/runs?sort=name;DROP", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&server, "GET", "/api/v1/runs?cursor=abc", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = call(&server, "GET", "/api/v1/backups/..%2F..%2Fetc", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Unknown job / vCenter in a source.
    let mut ghost = good.clone();
    ghost["sources"][0]["vcenter_id"] = json!("123e4567-e89b-42d3-a456-426614174000");
    let (status, _, body) = call(&server, "POST", "/api/v1/jobs", Some(ghost)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "sources[0].vcenter_id");
    let (status, _, _) = call(
        &server,
        "GET",
        "/api/v1/jobs/123e4567-e89b-42d3-a456-426614174000",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Oversized body: 413 (I2).
    // (A client of its own: the server closes that connection without reading the body.)
    let big = vec![b' '; 2 * 1024 * 1024];
    let resp = reqwest::Client::new()
        .post(server.at("/api/v1/jobs"))
        .header("x-api-key", &server.api_key)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    // Wrong method.
    let (status, _, _) = call(&server, "PATCH", "/api/v1/jobs", None).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    // The good job still goes in, and the schema never changed (I4).
    let (status, _, _) = call(&server, "POST", "/api/v1/jobs", Some(good)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(schema_count(&server), schema_before);
}
