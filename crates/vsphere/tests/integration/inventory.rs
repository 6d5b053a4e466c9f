//! Inventory of the awkward spec, compared with what the testbed says it built.

use std::collections::BTreeSet;

use vbm_vsphere::{DatastoreFile, DatastorePath, DiskMode, Error, PowerState, decode_name};

use super::common::{AWKWARD, connect, testbed};

#[tokio::test]
async fn awkward_inventory_matches_the_testbed() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    // page_size 3 with six VMs: the listing spans several ContinueRetrievePropertiesEx pages.
    let inventory = client.inventory().await.unwrap();
    let info = tb.control().info().await.unwrap();
    assert_eq!(inventory.vms.len(), info.vms.len());
    for expected in &info.vms {
        let vm = inventory
            .vms
            .iter()
            .find(|v| v.name == expected.name)
            .unwrap_or_else(|| panic!("{} missing", expected.name));
        assert_eq!(vm.moref.value, expected.moref);
        assert_eq!(
            vm.instance_uuid.as_deref(),
            Some(expected.instance_uuid.as_str())
        );
        assert_eq!(vm.folder_path, expected.folder, "{}", vm.name);
        assert_eq!(
            vm.power_state == PowerState::PoweredOn,
            expected.power == "on",
            "{}",
            vm.name
        );
        assert_eq!(vm.cbt_enabled, expected.cbt, "{}", vm.name);
        assert_eq!(vm.snapshot_names(), expected.snapshots, "{}", vm.name);
        assert_eq!(
            vm.vmx_path.as_ref().map(ToString::to_string).as_deref(),
            Some(expected.vmx_path.as_str())
        );
        assert_eq!(vm.disks.len(), expected.disks.len(), "{}", vm.name);
        for (d, e) in vm.disks.iter().zip(&expected.disks) {
            assert_eq!(d.key, e.key);
            assert_eq!(d.file_name, e.file);
            assert_eq!(d.capacity_bytes, e.capacity_bytes);
            assert_eq!(d.thin, e.thin);
            assert_eq!(d.disk_mode.as_str(), e.mode);
            assert_eq!(d.datastore_name, e.datastore);
            assert!(!d.label.is_empty());
        }
    }

    let web = inventory
        .vms
        .iter()
        .find(|v| v.name == "web 01 #1 & co + more")
        .unwrap();
    // A datacenter inside folders: dcPath is folder path + name.
    assert_eq!(
        web.datacenter_path.as_deref(),
        Some("Europe/West & Co/DC West")
    );
    assert_eq!(web.folder_path, "Prod/Web Tier/Front");
    assert_eq!(
        web.inventory_path,
        "/Europe/West & Co/DC West/vm/Prod/Web Tier/Front/web 01 #1 & co + more"
    );
    assert_eq!(web.host_name.as_deref(), Some("esx-a.example.org"));
    // Two disks on two datastores.
    let stores: BTreeSet<&str> = web
        .disks
        .iter()
        .map(|d| d.datastore_name.as_str())
        .collect();
    assert_eq!(stores, BTreeSet::from(["ds 2", "ds1"]));
    let web_datastores: BTreeSet<&str> = web.datastore_names.iter().map(String::as_str).collect();
    assert!(web_datastores.is_superset(&stores), "{web_datastores:?}");
    assert!(
        web.disks.iter().all(|d| d.change_id.is_some()),
        "CBT is on: backings carry changeIds"
    );

    let load = inventory
        .vms
        .iter()
        .find(|v| v.name == "50%25 load")
        .unwrap();
    assert_eq!(load.display_name, "50% load");
    assert!(load.disks[1].disk_mode.is_independent());
    assert_eq!(load.disks[2].disk_mode, DiskMode::IndependentNonpersistent);
    let slash = inventory
        .vms
        .iter()
        .find(|v| v.name == "a%2fb slash-vm")
        .unwrap();
    assert_eq!(slash.display_name, "a/b slash-vm");
    let unicode = inventory
        .vms
        .iter()
        .find(|v| v.name == "Ünïcødé-vm")
        .unwrap();
    assert_eq!(
        unicode.snapshot_names(),
        ["before-upgrade", "after upgrade #2"]
    );
    let flat = unicode.flat_snapshots();
    assert_eq!(
        flat[1].parent.as_ref(),
        Some(&flat[0].moref),
        "snapshot tree keeps parents"
    );
    assert!(flat[0].create_time.is_some());

    // Infrastructure around the VMs.
    let dc_paths: BTreeSet<&str> = inventory
        .datacenters
        .iter()
        .map(|d| d.path.as_str())
        .collect();
    assert_eq!(
        dc_paths,
        BTreeSet::from(["DC-2", "Europe/West & Co/DC West"])
    );
    let west = inventory
        .datacenters
        .iter()
        .find(|d| d.name == "DC West")
        .unwrap();
    assert!(west.vm_folder.is_some());
    let west_stores: Vec<_> = inventory
        .datastores
        .iter()
        .filter(|d| d.datacenter.as_ref() == Some(&west.moref))
        .collect();
    assert_eq!(west_stores.len(), 2);
    for ds in &west_stores {
        assert!(
            ds.capacity_bytes > 0 && ds.free_bytes <= ds.capacity_bytes,
            "{ds:?}"
        );
        assert!(!ds.kind.is_empty());
        assert!(!ds.url.is_empty());
        assert!(ds.browser.is_some());
    }
    assert_eq!(client.datastores(&west.moref).await.unwrap().len(), 2);
    let folders: BTreeSet<&str> = inventory
        .vm_folders
        .iter()
        .filter(|f| f.datacenter.as_ref() == Some(&west.moref))
        .map(|f| f.path.as_str())
        .collect();
    for f in [
        "",
        "Prod",
        "Prod/Web Tier",
        "Prod/Web Tier/Front",
        "Test & Dev",
        "Empty Folder",
    ] {
        assert!(folders.contains(f), "{f:?} missing from {folders:?}");
    }
    let cluster = inventory
        .compute_resources
        .iter()
        .find(|c| c.name == "Cluster #1")
        .unwrap();
    assert!(cluster.is_cluster);
    assert_eq!(cluster.hosts.len(), 2);
    assert!(cluster.resource_pool.is_some());
    assert!(
        inventory
            .compute_resources
            .iter()
            .any(|c| !c.is_cluster && c.datacenter.as_ref() == Some(&west.moref))
    );
    assert!(
        inventory
            .hosts
            .iter()
            .any(|h| h.name == "esx-standalone.example.org")
    );
    assert!(!inventory.resource_pools.is_empty());
    client.logout().await.unwrap();
}

#[tokio::test]
async fn lookups_by_uuid_and_name_and_the_datacenter_of_things() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let info = tb.control().info().await.unwrap();
    let expected = info.vm("web 01 #1 & co + more").unwrap();

    let vm = client
        .find_vm_by_instance_uuid(&expected.instance_uuid.to_uppercase())
        .await
        .unwrap();
    assert_eq!(vm.moref.value, expected.moref);
    assert!(!vm.files.is_empty(), "a full read includes layoutEx files");
    assert!(!vm.consolidation_needed);
    let by_name = client.find_vm_by_name("a/b slash-vm").await.unwrap();
    assert_eq!(by_name.name, "a%2fb slash-vm");
    let by_raw = client.find_vm_by_name("a%2fb slash-vm").await.unwrap();
    assert_eq!(by_raw.moref, by_name.moref);
    assert!(matches!(
        client.find_vm_by_name("nope").await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        client
            .find_vm_by_instance_uuid("00000000-0000-0000-0000-000000000000")
            .await,
        Err(Error::NotFound(_))
    ));

    let dc = client.datacenter_of(&vm.moref).await.unwrap();
    assert_eq!(dc.path, "Europe/West & Co/DC West");
    assert_eq!(dc.name, "DC West");
    let ds = vm.disks[1].datastore.clone().unwrap();
    assert_eq!(client.datacenter_of(&ds).await.unwrap().moref, dc.moref);
    let stale = vbm_vsphere::MoRef::new("VirtualMachine", "vm-does-not-exist");
    let err = client.read_vm(&stale).await.unwrap_err();
    assert!(
        err.is_managed_object_not_found() || matches!(err, Error::NotFound(_)),
        "{err:?}"
    );
    client.logout().await.unwrap();
}

// Two VMs with one name cannot come from a spec (the testbed keeps names unique), so the test
// makes the second one the way a restore does: copy the .vmx and register it elsewhere.
#[tokio::test]
async fn ambiguous_names_list_every_candidate_and_register_unregister_work() {
    let spec = r#"{"datacenters": [{"name": "DC", "datastores": [{"name": "ds"}], "hosts": ["h1"],
        "vm_folders": ["A", "B"], "vms": [{"name": "twin", "folder": "A", "disks": []}]}]}"#;
    let tb = testbed(spec).await;
    let client = connect(&tb).await;
    let original = client.find_vm_by_name("twin").await.unwrap();
    let vmx = original.vmx_path.clone().unwrap();
    let dc_path = original.datacenter_path.clone().unwrap();
    let bytes = client
        .get_bytes(&DatastoreFile::new(dc_path.clone(), vmx.clone()), 1 << 20)
        .await
        .unwrap();
    let copy = DatastorePath::new(vmx.datastore.clone(), "twin copy/twin.vmx");
    client
        .make_directory(&copy.parent(), original.datacenter.as_ref(), true)
        .await
        .unwrap();
    let len = bytes.len() as u64;
    let body = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(bytes))]);
    client
        .put(&DatastoreFile::new(dc_path, copy.clone()), len, body)
        .await
        .unwrap();

    let inventory = client.infrastructure().await.unwrap();
    let folder_b = inventory.vm_folders.iter().find(|f| f.path == "B").unwrap();
    let pool = inventory.compute_resources[0]
        .resource_pool
        .clone()
        .unwrap();
    let registered = client
        .register_vm(&folder_b.moref, &copy, Some("twin"), &pool, None)
        .await
        .unwrap();
    assert!(registered.is("VirtualMachine"));

    let err = client.find_vm_by_name("twin").await.unwrap_err();
    match &err {
        Error::Ambiguous { candidates, .. } => {
            assert_eq!(candidates.len(), 2);
            assert!(
                candidates.iter().any(|c| c.contains("/DC/vm/A/twin")),
                "{candidates:?}"
            );
            assert!(
                candidates.iter().any(|c| c.contains("/DC/vm/B/twin")),
                "{candidates:?}"
            );
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    client.unregister_vm(&registered).await.unwrap();
    assert_eq!(
        client.find_vm_by_name("twin").await.unwrap().moref,
        original.moref
    );
    assert_eq!(decode_name("twin"), "twin");
    client.logout().await.unwrap();
}
