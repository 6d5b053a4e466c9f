//! Snapshots, CBT switch, power operations and failing tasks.

use std::sync::{Arc, Mutex};

use serde_json::json;
use vbm_vsphere::{FaultKind, PowerState, SnapshotSpec, WaitOptions};

use super::common::{AWKWARD, connect, testbed};

#[tokio::test]
async fn snapshot_create_list_and_remove() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();
    let progress = Arc::new(Mutex::new(Vec::new()));
    let seen = progress.clone();
    let wait = WaitOptions {
        timeout: None,
        progress: Some(Arc::new(move |p| seen.lock().unwrap().push(p))),
    };
    let spec = SnapshotSpec {
        name: "vbm-run-1".into(),
        description: "by vbm <test> & co".into(),
        memory: false,
        quiesce: true,
    };
    let snap = client
        .create_snapshot_with(&vm.moref, &spec, &wait)
        .await
        .unwrap();
    assert!(snap.is("VirtualMachineSnapshot"));
    assert_eq!(progress.lock().unwrap().last(), Some(&100));
    let second = client
        .create_snapshot(&vm.moref, "vbm-run-2", "", false, false)
        .await
        .unwrap();
    client
        .create_snapshot(&vm.moref, "user snapshot", "", false, false)
        .await
        .unwrap();
    assert_eq!(
        tb.control().snapshot_names(&vm.moref.value).await.unwrap(),
        ["vbm-run-1", "vbm-run-2", "user snapshot"]
    );

    let all = client.list_snapshots(&vm.moref).await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0].description, "by vbm <test> & co");
    assert_eq!(all[1].parent.as_ref(), Some(&snap));
    let ours = client
        .snapshots_with_prefix(&vm.moref, "vbm-")
        .await
        .unwrap();
    assert_eq!(
        ours.iter().map(|s| s.moref.clone()).collect::<Vec<_>>(),
        [snap.clone(), second.clone()]
    );
    assert_eq!(
        client.find_snapshot(&vm.moref, "vbm-run-2").await.unwrap(),
        Some(second.clone())
    );

    // The snapshot's disks, with the changeIds a backup keeps.
    let disks = client.snapshot_disks(&snap).await.unwrap();
    assert_eq!(disks.len(), 2);
    assert!(disks.iter().all(|d| d.change_id.is_some()), "{disks:?}");

    client.remove_snapshot(&second, false, true).await.unwrap();
    assert_eq!(
        tb.control().snapshot_names(&vm.moref.value).await.unwrap(),
        ["vbm-run-1", "user snapshot"]
    );
    client.remove_snapshot(&snap, true, true).await.unwrap();
    assert!(
        tb.control()
            .snapshot_names(&vm.moref.value)
            .await
            .unwrap()
            .is_empty()
    );
    let err = client
        .remove_snapshot(&snap, false, true)
        .await
        .unwrap_err();
    assert!(err.is_managed_object_not_found(), "{err:?}");
    assert!(
        !client
            .read_vm(&vm.moref)
            .await
            .unwrap()
            .consolidation_needed
    );
    client.logout().await.unwrap();
}

// covers N7: a failing snapshot task surfaces the server's message and creates nothing.
#[tokio::test]
async fn a_failing_snapshot_task_surfaces_the_server_message() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();
    tb.control()
        .add_fault(json!({"kind": "task_fail", "method": "CreateSnapshot_Task", "fault": "ApplicationQuiesceFault",
            "message": "quiescing the guest file systems failed: VMware Tools not running"}))
        .await
        .unwrap();
    let err = client
        .create_snapshot(&vm.moref, "vbm-run-9", "", false, true)
        .await
        .unwrap_err();
    assert_eq!(
        err.fault().map(|f| &f.kind),
        Some(&FaultKind::SnapshotFault),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("VMware Tools not running"),
        "{err}"
    );
    assert!(err.to_string().contains("CreateSnapshot_Task"), "{err}");
    assert!(
        tb.control()
            .snapshot_names(&vm.moref.value)
            .await
            .unwrap()
            .is_empty()
    );
    // The rule fired once; the next attempt succeeds.
    client
        .create_snapshot(&vm.moref, "vbm-run-9", "", false, true)
        .await
        .unwrap();
    client.logout().await.unwrap();
}

#[tokio::test]
async fn change_tracking_and_power_operations() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client.find_vm_by_name("a/b slash-vm").await.unwrap();
    assert!(!vm.cbt_enabled);
    assert!(vm.disks[0].change_id.is_none());
    client.set_change_tracking(&vm.moref, true).await.unwrap();
    let after = client.read_vm(&vm.moref).await.unwrap();
    assert!(after.cbt_enabled);
    let snap = client
        .create_snapshot(&vm.moref, "vbm-cbt", "", false, false)
        .await
        .unwrap();
    let disks = client.snapshot_disks(&snap).await.unwrap();
    assert!(
        disks[0].change_id.is_some(),
        "after enable + snapshot the backing has a changeId"
    );
    client.remove_snapshot(&snap, false, true).await.unwrap();
    assert!(
        tb.control()
            .info()
            .await
            .unwrap()
            .vm("a%2fb slash-vm")
            .unwrap()
            .cbt
    );

    assert_eq!(vm.power_state, PowerState::PoweredOff);
    client.power_on(&vm.moref, None).await.unwrap();
    assert_eq!(
        client.read_vm(&vm.moref).await.unwrap().power_state,
        PowerState::PoweredOn
    );
    let err = client.power_on(&vm.moref, None).await.unwrap_err();
    assert!(
        matches!(
            err.fault().map(|f| &f.kind),
            Some(FaultKind::InvalidPowerState { .. })
        ),
        "{err:?}"
    );
    let err = client.unregister_vm(&vm.moref).await.unwrap_err();
    assert!(
        err.fault().is_some(),
        "a powered-on VM cannot be unregistered: {err:?}"
    );
    client.power_off(&vm.moref).await.unwrap();
    assert_eq!(
        client.read_vm(&vm.moref).await.unwrap().power_state,
        PowerState::PoweredOff
    );
    assert!(client.pending_question(&vm.moref).await.unwrap().is_none());
    client.set_change_tracking(&vm.moref, false).await.unwrap();
    assert!(!client.read_vm(&vm.moref).await.unwrap().cbt_enabled);
    client.logout().await.unwrap();
}
