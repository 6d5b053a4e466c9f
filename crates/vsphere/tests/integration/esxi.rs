//! The client against a standalone ESXi host (`specs/esx.json`: the testbed's ESX mode): about,
//! inventory below `ha-datacenter`, snapshots, CBT, `/folder` transfers with
//! `dcPath=ha-datacenter`, and re-login after the session expired.

use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use vbm_vsphere::{ByteStream, ChangeId, Client, DatastoreFile, DiskExtent, Error, PowerState, Vm};

use super::common::{connect, stat, testbed};

const ESX: &str = "esx";
const DC: &str = "ha-datacenter";
const HOST: &str = "esx01.lab.local";
/// The CBT block size of the spec (the default).
const BLOCK: u64 = 64 << 10;

async fn collect(mut stream: ByteStream) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

/// The flat extent of a VM's disk, found through its descriptor.
async fn flat_of(client: &Client, vm: &Vm, disk: usize) -> DatastoreFile {
    let descriptor_file = vm
        .datastore_file(vm.disks[disk].datastore_path().unwrap())
        .unwrap();
    assert_eq!(descriptor_file.datacenter_path.as_deref(), Some(DC));
    let descriptor = client.read_descriptor(&descriptor_file).await.unwrap();
    assert_eq!(descriptor.capacity_bytes(), vm.disks[disk].capacity_bytes);
    descriptor_file.sibling(descriptor.flat_extent_file().unwrap())
}

#[tokio::test]
async fn esxi_about_and_inventory_below_ha_datacenter() {
    let tb = testbed(ESX).await;
    assert_eq!(tb.api_type, "HostAgent");
    assert_eq!(tb.instance_uuid, "");
    let client = connect(&tb).await;
    let about = client.service_content().unwrap().about;
    assert_eq!(about.api_type, "HostAgent");
    assert_eq!(about.instance_uuid, "", "ESXi has no instance UUID");
    assert!(about.name.contains("ESXi"), "{about:?}");
    assert!(client.is_esxi());
    assert!(client.session_is_active().await.unwrap());

    let inventory = client.inventory().await.unwrap();
    assert_eq!(
        inventory.datacenters.len(),
        1,
        "{:?}",
        inventory.datacenters
    );
    let dc = &inventory.datacenters[0];
    assert_eq!((dc.name.as_str(), dc.path.as_str()), (DC, DC));
    assert_eq!(dc.moref.value, DC);
    assert_eq!(inventory.hosts.len(), 1, "{:?}", inventory.hosts);
    assert_eq!(inventory.hosts[0].name, HOST);
    assert_eq!(inventory.hosts[0].datacenter.as_ref(), Some(&dc.moref));
    assert_eq!(inventory.compute_resources.len(), 1);
    assert!(!inventory.compute_resources[0].is_cluster);
    assert!(inventory.compute_resources[0].resource_pool.is_some());
    let mut stores: Vec<&str> = inventory
        .datastores
        .iter()
        .map(|d| d.name.as_str())
        .collect();
    stores.sort_unstable();
    assert_eq!(stores, ["datastore1", "datastore2"]);
    assert!(
        inventory
            .datastores
            .iter()
            .all(|d| d.datacenter.as_ref() == Some(&dc.moref) && d.kind == "VMFS")
    );

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
        assert_eq!(vm.datacenter_path.as_deref(), Some(DC));
        assert_eq!(vm.folder_path, "");
        assert_eq!(vm.inventory_path, format!("/{DC}/vm/{}", vm.name));
        assert_eq!(vm.host_name.as_deref(), Some(HOST));
        assert_eq!(vm.cbt_enabled, expected.cbt, "{}", vm.name);
        assert_eq!(
            vm.power_state == PowerState::PoweredOn,
            expected.power == "on"
        );
        assert_eq!(vm.disks.len(), expected.disks.len(), "{}", vm.name);
        for (d, e) in vm.disks.iter().zip(&expected.disks) {
            assert_eq!(d.key, e.key);
            assert_eq!(d.file_name, e.file);
            assert_eq!(d.capacity_bytes, e.capacity_bytes);
            assert_eq!(d.thin, e.thin);
            assert_eq!(d.datastore_name, e.datastore);
            assert_eq!(d.change_id.is_some(), expected.cbt, "{}", vm.name);
        }
    }
    let web = client.find_vm_by_name("esx-web01").await.unwrap();
    assert_eq!(web.disks.len(), 2);
    assert_eq!(web.disks[1].datastore_name, "datastore2");
    let by_uuid = client
        .find_vm_by_instance_uuid(web.instance_uuid.as_deref().unwrap())
        .await
        .unwrap();
    assert_eq!(by_uuid.moref, web.moref);
    let dc_of = client.datacenter_of(&web.moref).await.unwrap();
    assert_eq!(dc_of.path, DC);
    client.logout().await.unwrap();
}

#[tokio::test]
async fn esxi_snapshot_create_and_remove() {
    let tb = testbed(ESX).await;
    let client = connect(&tb).await;
    let vm = client.find_vm_by_name("esx-db01").await.unwrap();
    assert_eq!(vm.power_state, PowerState::PoweredOff);
    let snap = client
        .create_snapshot(&vm.moref, "vbm-esx", "a backup snapshot", false, false)
        .await
        .unwrap();
    assert_eq!(
        client.find_snapshot(&vm.moref, "vbm-esx").await.unwrap(),
        Some(snap.clone())
    );
    let disks = client.snapshot_disks(&snap).await.unwrap();
    assert_eq!(disks.len(), 1);
    let change_id = disks[0].change_id.clone().expect("CBT is on");
    assert_eq!(change_id.sequence(), Some(1));
    assert_eq!(
        tb.control().snapshot_names("esx-db01").await.unwrap(),
        ["vbm-esx"]
    );
    client.remove_snapshot(&snap, false, true).await.unwrap();
    assert!(client.list_snapshots(&vm.moref).await.unwrap().is_empty());
    assert!(
        tb.control()
            .snapshot_names("esx-db01")
            .await
            .unwrap()
            .is_empty()
    );
    client.logout().await.unwrap();
}

#[tokio::test]
async fn esxi_cbt_enabled_then_changed_areas_are_exactly_the_write() {
    let tb = testbed(ESX).await;
    let client = connect(&tb).await;
    let vm = client.find_vm_by_name("esx-tools01").await.unwrap();
    assert!(!vm.cbt_enabled);
    let disk = vm.disks[0].clone();
    assert!(disk.change_id.is_none());

    client.set_change_tracking(&vm.moref, true).await.unwrap();
    let vm = client.read_vm(&vm.moref).await.unwrap();
    assert!(vm.cbt_enabled);
    // The usual activation: a snapshot create + remove; its changeId is the baseline.
    let base = client
        .create_snapshot(&vm.moref, "vbm-base", "", false, false)
        .await
        .unwrap();
    let base_id = client.snapshot_disks(&base).await.unwrap()[0]
        .change_id
        .clone()
        .expect("a changeId once CBT is on");
    client.remove_snapshot(&base, false, true).await.unwrap();

    let (offset, length) = (3 * BLOCK + 1000, 2 * BLOCK);
    tb.control()
        .write("esx-tools01", disk.key, offset, length, 42)
        .await
        .unwrap();
    let snap = client
        .create_snapshot(&vm.moref, "vbm-incr", "", false, false)
        .await
        .unwrap();
    let areas = client
        .query_changed_disk_areas(&vm.moref, &snap, disk.key, &base_id, disk.capacity_bytes)
        .await
        .unwrap();
    let first = offset / BLOCK * BLOCK;
    let end = (offset + length).div_ceil(BLOCK) * BLOCK;
    assert_eq!(
        areas,
        [DiskExtent {
            start: first,
            length: end - first
        }]
    );
    // "*" lists the allocated areas, which cover the write.
    let all = client
        .query_changed_disk_areas(
            &vm.moref,
            &snap,
            disk.key,
            &ChangeId::all(),
            disk.capacity_bytes,
        )
        .await
        .unwrap();
    assert!(
        all.iter().any(|a| a.start <= first && a.end() >= end),
        "{all:?}"
    );
    client.remove_snapshot(&snap, false, true).await.unwrap();
    client.logout().await.unwrap();
}

#[tokio::test]
async fn esxi_range_get_and_put_with_ha_datacenter() {
    let tb = testbed(ESX).await;
    let client = connect(&tb).await;
    let vm = client.find_vm_by_name("esx-web01").await.unwrap();
    let info = tb.control().info().await.unwrap();
    // The second disk lives on datastore2, the .vmx on datastore1.
    let local = std::fs::read(&info.vm("esx-web01").unwrap().disks[1].flat_path).unwrap();
    let flat = flat_of(&client, &vm, 1).await;
    assert!(
        flat.url(&url::Url::parse("https://esx.example/").unwrap())
            .ends_with("?dcPath=ha-datacenter&dsName=datastore2"),
        "{flat:?}"
    );
    for (offset, length) in [(0u64, 1u64), (12345, 3 << 20), (local.len() as u64 - 9, 9)] {
        let part = collect(client.get_range(&flat, offset, length).unwrap())
            .await
            .unwrap();
        assert_eq!(part, &local[offset as usize..(offset + length) as usize]);
    }
    let err = collect(
        client
            .get_range(&flat, local.len() as u64 - 10, 20)
            .unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::BadRange { .. }), "{err:?}");

    // PUT a file next to the VM's files, read it back in ranges, delete it.
    let data: Vec<u8> = (0..(1u32 << 20) + 333).map(|i| (i % 251) as u8).collect();
    let file = flat.sibling("uploaded by vbm.bin");
    let body = futures_util::stream::iter(
        data.chunks(100_000)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    tb.control().reset_stats().await.unwrap();
    client.put(&file, data.len() as u64, body).await.unwrap();
    assert_eq!(client.file_size(&file).await.unwrap(), data.len() as u64);
    let whole = collect(client.get(&file).unwrap()).await.unwrap();
    assert_eq!(Sha256::digest(&whole), Sha256::digest(&data));
    let tail = collect(client.get_range(&file, 1 << 20, 333).unwrap())
        .await
        .unwrap();
    assert_eq!(tail, &data[1 << 20..]);
    let stats = tb.control().stats().await.unwrap();
    assert_eq!(
        stat(&stats, &["folder_put_bytes", "total"]),
        data.len() as i64
    );
    client.delete(&file).await.unwrap();
    let err = collect(client.get(&file).unwrap()).await.unwrap_err();
    assert!(vbm_vsphere::datastore::is_not_found(&err), "{err:?}");
    client.logout().await.unwrap();
}

#[tokio::test]
async fn esxi_session_expiry_is_recovered_by_relogin() {
    let tb = testbed(ESX).await;
    let client = connect(&tb).await;
    let vm = client.find_vm_by_name("esx-web01").await.unwrap();
    assert_eq!(client.login_count(), 1);

    let expired = tb
        .control()
        .add_fault(json!({"kind": "session_expire"}))
        .await
        .unwrap();
    assert_eq!(expired["expired_sessions"], 1);
    assert!(!client.session_is_active().await.unwrap());
    // A SOAP call logs in again by itself.
    assert_eq!(client.list_vms().await.unwrap().len(), 3);
    assert_eq!(client.login_count(), 2);

    // So does a /folder download (401 after the expiry).
    tb.control()
        .add_fault(json!({"kind": "session_expire"}))
        .await
        .unwrap();
    let flat = flat_of(&client, &vm, 0).await;
    let part = collect(client.get_range(&flat, 4096, 8192).unwrap())
        .await
        .unwrap();
    assert_eq!(part.len(), 8192);
    assert_eq!(client.login_count(), 3);

    // keep_alive notices an expired session and logs in again.
    tb.control()
        .add_fault(json!({"kind": "session_expire"}))
        .await
        .unwrap();
    client.keep_alive().await.unwrap();
    assert_eq!(client.login_count(), 4);
    assert!(client.session_is_active().await.unwrap());
    let stats = tb.control().stats().await.unwrap();
    assert_eq!(stat(&stats, &["active_sessions"]), 1, "{stats}");
    client.logout().await.unwrap();
}
