//! QueryChangedDiskAreas after simulated guest writes.

use vbm_vsphere::{ChangeId, DiskExtent};

use super::common::{AWKWARD, connect, testbed};

/// The testbed's CBT block size in the awkward spec.
const BLOCK: u64 = 64 << 10;

fn blocks(start: u64, length: u64) -> DiskExtent {
    let first = start / BLOCK * BLOCK;
    let end = (start + length).div_ceil(BLOCK) * BLOCK;
    DiskExtent {
        start: first,
        length: end - first,
    }
}

#[tokio::test]
async fn changed_areas_after_writes_equal_the_written_blocks_across_windows() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();
    let disk = vm.disks[0].clone();
    assert_eq!(
        disk.capacity_bytes,
        24 << 20,
        "spans six 4 MiB QueryChangedDiskAreas windows"
    );

    // Baseline: snapshot, keep its changeId, remove it.
    let base = client
        .create_snapshot(&vm.moref, "vbm-base", "", false, false)
        .await
        .unwrap();
    let base_disks = client.snapshot_disks(&base).await.unwrap();
    let base_id = base_disks
        .iter()
        .find(|d| d.key == disk.key)
        .unwrap()
        .change_id
        .clone()
        .unwrap();
    client.remove_snapshot(&base, false, true).await.unwrap();

    // Guest writes: inside one block, across a block edge, across a window edge, at the end.
    let writes = [
        (4096, 100),
        (BLOCK - 10, 20),
        ((4 << 20) - 4096, 8192),
        ((24 << 20) - 512, 512),
        (10 << 20, 3 * BLOCK),
    ];
    for (i, (offset, length)) in writes.iter().enumerate() {
        tb.control()
            .write(&vm.moref.value, disk.key, *offset, *length, i as u64 + 1)
            .await
            .unwrap();
    }
    let snap = client
        .create_snapshot(&vm.moref, "vbm-incr", "", false, false)
        .await
        .unwrap();
    let got = client
        .query_changed_disk_areas(&vm.moref, &snap, disk.key, &base_id, disk.capacity_bytes)
        .await
        .unwrap();
    let mut expected: Vec<DiskExtent> = Vec::new();
    let mut all: Vec<DiskExtent> = writes.iter().map(|(o, l)| blocks(*o, *l)).collect();
    all.sort();
    for e in all {
        match expected.last_mut() {
            Some(last) if e.start <= last.end() => {
                last.length = last.length.max(e.end() - last.start)
            }
            _ => expected.push(e),
        }
    }
    assert_eq!(got, expected);

    // "*" reports allocated areas: a superset of what was written.
    let all_areas = client
        .query_changed_disk_areas(
            &vm.moref,
            &snap,
            disk.key,
            &ChangeId::all(),
            disk.capacity_bytes,
        )
        .await
        .unwrap();
    for e in &expected {
        assert!(
            all_areas
                .iter()
                .any(|a| a.start <= e.start && a.end() >= e.end()),
            "{e:?} not in {all_areas:?}"
        );
    }
    // Nothing changed since the incremental snapshot's own changeId.
    let incr_id = client.snapshot_disks(&snap).await.unwrap()[0]
        .change_id
        .clone()
        .unwrap();
    client.remove_snapshot(&snap, false, true).await.unwrap();
    let snap2 = client
        .create_snapshot(&vm.moref, "vbm-incr-2", "", false, false)
        .await
        .unwrap();
    let none = client
        .query_changed_disk_areas(&vm.moref, &snap2, disk.key, &incr_id, disk.capacity_bytes)
        .await
        .unwrap();
    assert!(none.is_empty(), "{none:?}");
    // Six windows for each of the three full-disk queries, plus one for the empty query.
    let stats = tb.control().stats().await.unwrap();
    assert!(
        stats["soap_calls"]["QueryChangedDiskAreas"]
            .as_i64()
            .unwrap_or(0)
            >= 18,
        "{stats}"
    );
    client.logout().await.unwrap();
}

#[tokio::test]
async fn an_unknown_or_reset_change_id_is_a_typed_file_fault() {
    let tb = testbed(AWKWARD).await;
    let client = connect(&tb).await;
    let vm = client
        .find_vm_by_name("web 01 #1 & co + more")
        .await
        .unwrap();
    let disk = &vm.disks[0];
    let snap = client
        .create_snapshot(&vm.moref, "vbm-x", "", false, false)
        .await
        .unwrap();
    let err = client
        .query_changed_disk_areas(
            &vm.moref,
            &snap,
            disk.key,
            &ChangeId::new("52 00 11 22/7"),
            disk.capacity_bytes,
        )
        .await
        .unwrap_err();
    assert!(err.is_file_fault(), "{err:?}");
    assert!(!err.is_retryable());

    let id = client.snapshot_disks(&snap).await.unwrap()[0]
        .change_id
        .clone()
        .unwrap();
    client.remove_snapshot(&snap, false, true).await.unwrap();
    tb.control().cbt_reset(&vm.moref.value).await.unwrap();
    let snap = client
        .create_snapshot(&vm.moref, "vbm-y", "", false, false)
        .await
        .unwrap();
    let err = client
        .query_changed_disk_areas(&vm.moref, &snap, disk.key, &id, disk.capacity_bytes)
        .await
        .unwrap_err();
    assert!(
        err.is_file_fault(),
        "a changeId from before a CBT reset is refused: {err:?}"
    );
    let new_id = client.snapshot_disks(&snap).await.unwrap()[0]
        .change_id
        .clone()
        .unwrap();
    assert_ne!(new_id.epoch(), id.epoch(), "a reset starts a new epoch");
    client.logout().await.unwrap();
}
