//! Injected faults: session expiry, 5xx/4xx on SOAP, stalls and slow answers.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use vbm_vsphere::{Client, DatastoreFile, Error, FaultKind};

use super::common::{AWKWARD, connect, options, stat, testbed};

// covers N8: the session expires mid-sequence; one transparent re-login resumes it, the session
// count never exceeds one, and logout leaves none.
#[tokio::test]
async fn session_expiry_mid_sequence_is_recovered_by_one_relogin() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();
    let snap = client
        .create_snapshot(&vm.moref, "vbm-n8", "", false, false)
        .await
        .unwrap();

    let expired = tb
        .control()
        .add_fault(json!({"kind": "session_expire"}))
        .await
        .unwrap();
    assert_eq!(expired["expired_sessions"], 1);
    assert!(!client.session_is_active().await.unwrap());
    // A read, a paged listing through a view, a task, and a /folder download all carry on.
    let disks = client.snapshot_disks(&snap).await.unwrap();
    assert_eq!(client.login_count(), 2);
    tb.control()
        .add_fault(json!({"kind": "session_expire"}))
        .await
        .unwrap();
    assert_eq!(client.list_vms().await.unwrap().len(), 6);
    tb.control()
        .add_fault(json!({"kind": "session_expire"}))
        .await
        .unwrap();
    client.remove_snapshot(&snap, false, true).await.unwrap();
    tb.control()
        .add_fault(json!({"kind": "session_expire"}))
        .await
        .unwrap();
    let file = DatastoreFile::new(
        vm.datacenter_path.clone().unwrap(),
        disks[0].datastore_path().unwrap(),
    );
    let mut stream = client.get(&file).unwrap();
    while let Some(chunk) = stream.next().await {
        chunk.unwrap();
    }
    assert_eq!(client.login_count(), 5);
    let stats = tb.control().stats().await.unwrap();
    assert!(stat(&stats, &["active_sessions"]) <= 1, "{stats}");
    assert!(
        tb.control()
            .snapshot_names(&vm.moref.value)
            .await
            .unwrap()
            .is_empty()
    );

    // Concurrent callers after an expiry share one re-login.
    tb.control()
        .add_fault(json!({"kind": "session_expire"}))
        .await
        .unwrap();
    let calls = (0..4).map(|_| {
        let c = client.clone();
        let vm = vm.moref.clone();
        async move { c.list_snapshots(&vm).await }
    });
    for result in futures_util::future::join_all(calls).await {
        result.unwrap();
    }
    assert_eq!(client.login_count(), 6);
    assert_eq!(
        stat(&tb.control().stats().await.unwrap(), &["active_sessions"]),
        1
    );

    // ... and so do concurrent downloads (401 on /folder).
    tb.control()
        .add_fault(json!({"kind": "session_expire"}))
        .await
        .unwrap();
    let downloads = (0..3).map(|i| {
        let c = client.clone();
        let file = file.clone();
        async move {
            let mut stream = c.get_range(&file, i * 100, 100).unwrap();
            let mut n = 0;
            while let Some(chunk) = stream.next().await {
                n += chunk.unwrap().len();
            }
            n
        }
    });
    assert_eq!(
        futures_util::future::join_all(downloads).await,
        [100, 100, 100]
    );
    assert_eq!(client.login_count(), 7);
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

// covers N6: 503 (with Retry-After) is retried with backoff; a fault and a 4xx are not.
#[tokio::test]
async fn soap_503_is_retried_and_faults_and_4xx_are_not() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();

    tb.control()
        .add_fault(json!({"kind": "soap_fault", "method": "RetrievePropertiesEx", "status": 503, "fault": "", "retry_after": 1, "count": 2}))
        .await
        .unwrap();
    let started = Instant::now();
    client.list_snapshots(&vm.moref).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured"
    );
    assert_eq!(tb.control().faults().await.unwrap()[0]["fired"], 2);
    tb.control().clear_faults().await.unwrap();

    tb.control()
        .add_fault(json!({"kind": "soap_fault", "method": "RetrievePropertiesEx", "status": 503, "fault": "", "retry_after": 0, "count": 0}))
        .await
        .unwrap();
    let err = client.list_snapshots(&vm.moref).await.unwrap_err();
    assert!(matches!(err, Error::Http { status: 503, .. }), "{err:?}");
    assert_eq!(
        tb.control().faults().await.unwrap()[0]["fired"],
        3,
        "bounded: max_attempts"
    );
    tb.control().clear_faults().await.unwrap();

    tb.control()
        .add_fault(json!({"kind": "soap_fault", "method": "RetrievePropertiesEx", "fault": "InvalidArgument", "message": "bad property path", "count": 0}))
        .await
        .unwrap();
    let err = client.list_snapshots(&vm.moref).await.unwrap_err();
    assert!(
        matches!(
            err.fault().map(|f| &f.kind),
            Some(FaultKind::InvalidArgument { .. })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("InvalidArgument"), "{err}");
    assert_eq!(
        tb.control().faults().await.unwrap()[0]["fired"],
        1,
        "a fault is not retried"
    );
    tb.control().clear_faults().await.unwrap();

    tb.control()
        .add_fault(json!({"kind": "soap_fault", "method": "RetrievePropertiesEx", "status": 403, "fault": "NoPermission", "message": "denied", "count": 0}))
        .await
        .unwrap();
    let err = client.list_snapshots(&vm.moref).await.unwrap_err();
    assert!(!err.is_retryable(), "{err:?}");
    assert!(
        err.to_string().contains("denied") || err.to_string().contains("NoPermission"),
        "{err}"
    );
    assert_eq!(
        tb.control().faults().await.unwrap()[0]["fired"],
        1,
        "4xx is not retried"
    );
    client.logout().await.unwrap();
}

// covers N4: a stalled download times out (short idle timeout), is resumed, then fails in bound.
#[tokio::test]
async fn a_stalled_transfer_times_out() {
    let tb = testbed(AWKWARD).await;
    let mut opts = options(&tb);
    opts.config.transfer_idle_timeout = Duration::from_millis(400);
    opts.config.transfer_resume_attempts = 1;
    let client = Client::connect(opts).await.unwrap();
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();
    let info = tb.control().info().await.unwrap();
    let flat = info.vm(&vm.name).unwrap().disks[0]
        .file
        .replace(".vmdk", "-flat.vmdk");
    let file = DatastoreFile::new(vm.datacenter_path.clone().unwrap(), flat.parse().unwrap());

    // One stall: the resume gets the rest.
    tb.control()
        .add_fault(json!({"kind": "transfer_stall", "path_contains": "-flat.vmdk", "after_bytes": 65536, "seconds": 30, "count": 1}))
        .await
        .unwrap();
    let started = Instant::now();
    let mut stream = client.get_range(&file, 0, 1 << 20).unwrap();
    let mut n = 0;
    while let Some(chunk) = stream.next().await {
        n += chunk.unwrap().len();
    }
    assert_eq!(n, 1 << 20);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    tb.control().clear_faults().await.unwrap();

    // Stalls every time: fails with a timeout, well before the server's 30 s stall ends.
    tb.control()
        .add_fault(json!({"kind": "transfer_stall", "path_contains": "-flat.vmdk", "after_bytes": 65536, "seconds": 30, "count": 0}))
        .await
        .unwrap();
    let started = Instant::now();
    let mut stream = client.get_range(&file, 0, 1 << 20).unwrap();
    let mut last = None;
    while let Some(chunk) = stream.next().await {
        if let Err(err) = chunk {
            last = Some(err);
            break;
        }
    }
    let err = last.expect("a stalled download must fail");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    client.logout().await.unwrap();
}

// covers N4 for SOAP: a call that does not answer within soap_timeout fails with a timeout.
#[tokio::test]
async fn a_slow_soap_answer_times_out() {
    let tb = testbed(AWKWARD).await;
    let mut opts = options(&tb);
    opts.config.soap_timeout = Duration::from_millis(300);
    opts.config.retry.max_attempts = 2;
    let client = Client::connect(opts).await.unwrap();
    let vm = client.find_vm_by_name("dc2-vm").await.unwrap();
    tb.control()
        .add_fault(json!({"kind": "slow_soap", "method": "RetrievePropertiesEx", "delay_ms": 10000, "count": 0}))
        .await
        .unwrap();
    let started = Instant::now();
    let err = client.list_snapshots(&vm.moref).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    tb.control().clear_faults().await.unwrap();
    client.logout().await.unwrap();
}

// covers N12: a failing ContinueRetrievePropertiesEx makes the listing an error, never partial.
#[tokio::test]
async fn a_failing_continuation_fails_the_inventory_listing() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    assert_eq!(
        client.list_vms().await.unwrap().len(),
        6,
        "page_size 3: several pages"
    );
    tb.control()
        .add_fault(json!({"kind": "soap_fault", "method": "ContinueRetrievePropertiesEx", "fault": "SystemError", "message": "paging broke", "count": 1}))
        .await
        .unwrap();
    let err = client.list_vms().await.unwrap_err();
    assert!(matches!(err, Error::IncompleteListing { .. }), "{err:?}");
    assert!(err.to_string().contains("paging broke"), "{err}");
    // The next listing is complete again.
    assert_eq!(client.list_vms().await.unwrap().len(), 6);
    client.logout().await.unwrap();
}
