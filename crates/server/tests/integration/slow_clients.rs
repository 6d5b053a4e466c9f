//! I2: clients that send their headers or body too slowly are disconnected, and the server keeps
//! serving everyone else.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use vbm_testkit::Server;

async fn server() -> Server {
    Server::start_with(vbm_testkit::ServerOptions {
        config_toml: Some(
            "[gc]\ncron = \"\"\n[http]\nheader_timeout_secs = 1\nrequest_timeout_secs = 2\n".into(),
        ),
        ..vbm_testkit::ServerOptions::default()
    })
    .await
    .unwrap()
}

async fn connect(server: &Server) -> TcpStream {
    let addr = server.url.trim_start_matches("http://").to_owned();
    TcpStream::connect(addr).await.unwrap()
}

/// Writes `bytes` one line at a time every 250 ms until the server closes the connection, and
/// returns what it answered, or `None` when it was still open after `give_up`.
async fn trickle(stream: &mut TcpStream, lines: &[&str], give_up: Duration) -> Option<String> {
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut next = lines.iter().cycle();
    while started.elapsed() < give_up {
        let line = next.next().unwrap_or(&"");
        if stream.write_all(line.as_bytes()).await.is_err() {
            return Some(String::from_utf8_lossy(&answer).into_owned());
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(Duration::from_millis(250), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(String::from_utf8_lossy(&answer).into_owned()),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    None
}

// covers I2
#[tokio::test]
async fn slow_clients_are_disconnected() {
    let server = server().await;

    // Slowloris: a request line, then one header line every 250 ms, never the blank line.
    let mut loris = connect(&server).await;
    loris
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: vbm\r\n")
        .await
        .unwrap();
    let closed = trickle(&mut loris, &["X-Slow: 1\r\n"], Duration::from_secs(20)).await;
    assert!(
        closed.is_some(),
        "a client trickling headers for 20 s is still connected (header timeout is 1 s)"
    );

    // An idle connection that never sends a byte is closed too.
    let mut idle = connect(&server).await;
    let mut buf = [0u8; 16];
    let idle_read = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut buf)).await;
    assert!(
        matches!(idle_read, Ok(Ok(0) | Err(_))),
        "an idle connection was not closed: {idle_read:?}"
    );

    // A body that never ends: headers promise 1000 bytes, the client sends a few at a time.
    let mut slow_body = connect(&server).await;
    slow_body
        .write_all(
            format!(
                "POST /api/v1/jobs HTTP/1.1\r\nHost: vbm\r\nX-API-Key: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{",
                server.api_key
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let answer = trickle(&mut slow_body, &[" "], Duration::from_secs(30))
        .await
        .expect("a client trickling its body for 30 s is still connected (body timeout is 2 s)");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "a slow body got {answer:?}"
    );

    // Everyone else is still served.
    let resp = server
        .client()
        .get(server.at("/healthz"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
}
