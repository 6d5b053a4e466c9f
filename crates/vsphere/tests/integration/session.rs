//! Login, logout, TLS trust modes and connection failures.

use std::time::{Duration, Instant};

use vbm_vsphere::{Client, ConnectOptions, Error, Thumbprint, Trust};

use super::common::{AWKWARD, connect, fast_config, options, stat, testbed};

#[tokio::test]
async fn login_with_good_credentials_and_logout_frees_the_session() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let content = client.service_content().unwrap();
    assert_eq!(content.about.api_type, "VirtualCenter");
    assert!(client.user_session().is_some());
    assert!(client.session_is_active().await.unwrap());
    assert_eq!(
        stat(&tb.control().stats().await.unwrap(), &["active_sessions"]),
        1
    );
    client.logout().await.unwrap();
    assert_eq!(
        stat(&tb.control().stats().await.unwrap(), &["active_sessions"]),
        0
    );
}

#[tokio::test]
async fn a_wrong_password_is_a_typed_invalid_login() {
    let tb = testbed(AWKWARD).await;
    let mut opts = options(&tb);
    opts.password = "definitely-wrong".into();
    let err = Client::connect(opts).await.unwrap_err();
    assert!(matches!(err, Error::InvalidLogin { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("user name or password was rejected"),
        "{text}"
    );
    assert!(text.contains(&tb.user), "{text}");
    assert_eq!(
        stat(&tb.control().stats().await.unwrap(), &["active_sessions"]),
        0
    );
}

// covers N10: pinning by SHA-256 and SHA-1; a mismatch names both thumbprints and sends nothing.
#[tokio::test]
async fn thumbprint_pinning_accepts_the_right_and_refuses_a_wrong_certificate() {
    let tb = testbed(AWKWARD).await;
    for right in [&tb.thumbprint_sha256, &tb.thumbprint_sha1] {
        let pin = Thumbprint::parse(right).unwrap();
        let client = Client::connect(options(&tb).trust(Trust::Pinned(pin)))
            .await
            .unwrap();
        client.logout().await.unwrap();
        // The lowercase, colon-less form works too.
        let plain = right.replace(':', "").to_lowercase();
        let client =
            Client::connect(options(&tb).trust(Trust::Pinned(Thumbprint::parse(&plain).unwrap())))
                .await
                .unwrap();
        client.logout().await.unwrap();
    }
    let calls_before = stat(&tb.control().stats().await.unwrap(), &["soap_calls_total"]);
    for (wrong, right) in [
        ("ab".repeat(32), &tb.thumbprint_sha256),
        ("cd".repeat(20), &tb.thumbprint_sha1),
    ] {
        let pin = Thumbprint::parse(&wrong).unwrap();
        let started = Instant::now();
        let err = Client::connect(options(&tb).trust(Trust::Pinned(pin.clone())))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::ThumbprintMismatch { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("certificate thumbprint mismatch (expected {pin}, got {right})")
        );
        assert!(!err.is_retryable());
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no retries after a mismatch"
        );
    }
    let calls_after = stat(&tb.control().stats().await.unwrap(), &["soap_calls_total"]);
    assert_eq!(
        calls_before, calls_after,
        "no request may be sent after a thumbprint mismatch"
    );
}

#[tokio::test]
async fn ca_bundle_insecure_and_system_roots() {
    let tb = testbed(AWKWARD).await;
    let client = Client::connect(options(&tb).trust(Trust::CaPem(tb.cert_pem.clone())))
        .await
        .unwrap();
    client.logout().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &tb.cert_pem).unwrap();
    let client = Client::connect(options(&tb).trust(Trust::CaFile(ca)))
        .await
        .unwrap();
    client.logout().await.unwrap();
    let client = Client::connect(options(&tb).trust(Trust::Insecure))
        .await
        .unwrap();
    client.logout().await.unwrap();
    // A self-signed testbed is not trusted by the system store (or the store is empty here).
    let err = Client::connect(options(&tb).trust(Trust::SystemRoots))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Tls { .. } | Error::TlsConfig(_)),
        "{err:?}"
    );
}

// covers N1: nothing listening fails fast with "connection refused", bounded retries.
#[tokio::test]
async fn a_refused_connection_fails_fast_and_says_so() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let opts = ConnectOptions::new(format!("https://127.0.0.1:{port}/sdk"), "u", "p")
        .trust(Trust::Insecure)
        .config(fast_config());
    let started = Instant::now();
    let err = Client::connect(opts).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!("cannot connect to vCenter 127.0.0.1:{port}: connection refused")
    );
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
}
