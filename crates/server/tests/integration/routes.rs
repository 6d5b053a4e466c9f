//! I8: every route of the OpenAPI document except /healthz refuses requests without a valid key.

use reqwest::StatusCode;

use super::common::call;
use vbm_testkit::Server;

// covers I8
#[tokio::test]
async fn every_route_requires_a_key() {
    let server = Server::start().await.unwrap();
    let (status, _, doc) = call(&server, "GET", "/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let anon = reqwest::Client::new();
    let bad_keys = [
        String::new(),
        format!("{}0", server.api_key),
        server.api_key[..server.api_key.len() - 1].to_owned(),
        server.api_key.to_uppercase(),
        "vbm_".to_owned() + &"0".repeat(64),
    ];
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let concrete = path.replace("{id}", "123e4567-e89b-42d3-a456-426614174000");
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let url = server.at(&concrete);
            let status = anon.request(m.clone(), &url).send().await.unwrap().status();
            if path == "/healthz" {
                assert_eq!(status, StatusCode::OK);
                continue;
            }
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} without a key"
            );
            for key in &bad_keys {
                let status = anon
                    .request(m.clone(), &url)
                    .header("x-api-key", key.as_str())
                    .send()
                    .await
                    .unwrap()
                    .status();
                assert_eq!(
                    status,
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} with key {key:?}"
                );
            }
            // A key in the query string is never looked at.
            let status = anon
                .request(m, format!("{url}?api_key={}", server.api_key))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with a query key"
            );
            checked += 1;
        }
    }
    assert!(checked >= 28, "only {checked} routes in the document");
    // Unknown paths are 404 problem+json, not a leak of the router.
    let (status, ctype, _) = call(&server, "GET", "/api/v1/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(ctype, "application/problem+json");
}
