//! # vbm-vsphere — vbm's only door to vCenter and ESXi
//!
//! This crate speaks the vSphere Web Services SOAP API (`urn:vim25`) and the datastore HTTP file
//! endpoint (`/folder`) directly: sessions and TLS trust, typed faults, inventory through the
//! property collector, tasks, snapshots, Changed Block Tracking (`QueryChangedDiskAreas`),
//! VM registration and power operations, datastore transfers (ranged GET, streaming PUT) and VMDK
//! descriptors. It is layered like govmomi: SOAP transport → one typed function per method → the
//! data types vbm uses → object helpers → property retrieval.
//!
//! It must not know about backups, repositories, jobs or anything vbm does with the data: no
//! dependency on `vbm-repo`, `vbm-engine` or `vbm-server`.
//!
//! ```no_run
//! # async fn demo() -> vbm_vsphere::Result<()> {
//! use vbm_vsphere::{ChangeId, Client, ConnectOptions, Thumbprint, Trust};
//!
//! let pin = Thumbprint::parse("AA:BB:…")?; // as vCenter shows it, SHA-256 or SHA-1
//! let client = Client::connect(
//!     ConnectOptions::new("vc.example.org", "backup@vsphere.local", "secret").trust(Trust::Pinned(pin)),
//! )
//! .await?;
//! let vm = client.find_vm_by_instance_uuid("5001a2b3-…").await?;
//! let snap = client.create_snapshot(&vm.moref, "vbm-run-1", "", false, true).await?;
//! for disk in client.snapshot_disks(&snap).await? {
//!     let areas = client
//!         .query_changed_disk_areas(&vm.moref, &snap, disk.key, &ChangeId::all(), disk.capacity_bytes)
//!         .await?;
//!     let descriptor_file = vm.datastore_file(disk.datastore_path()?)?;
//!     let flat = descriptor_file.sibling(client.read_descriptor(&descriptor_file).await?.flat_extent_file()?);
//!     for area in areas {
//!         let _bytes = client.get_range(&flat, area.start, area.length)?; // a resumable stream
//!     }
//! }
//! client.remove_snapshot(&snap, false, true).await?;
//! client.logout().await?;
//! # Ok(()) }
//! ```
//!
//! ## Layers
//! - [`soap`]: envelope, the [`Transport`] seam (one round trip), fault decoding; `xml` (private)
//!   parses responses namespace-aware and writes requests in WSDL order.
//! - [`fault`] / [`error`]: typed faults and the crate's [`Error`] with [`Error::is_retryable`].
//! - [`client`] / [`session`]: connect, TLS trust ([`tls`]), Login/Logout, transparent re-login,
//!   timeouts and retries. One [`Client`] is `Clone + Send + Sync` and shared across tasks.
//! - `property_collector` (private): RetrievePropertiesEx with paging and container views.
//! - Object helpers: [`task`], [`inventory`], [`virtual_machine`], [`virtual_disk`], [`snapshot`],
//!   [`cbt`] (QueryChangedDiskAreas), [`datastore`] (`/folder` transfers, directories), [`vmdk`].

pub mod cbt;
pub mod client;
pub mod datastore;
pub mod error;
pub mod fault;
pub mod inventory;
mod property_collector;
pub mod session;
pub mod snapshot;
pub mod soap;
pub mod task;
pub mod tls;
pub mod types;
pub mod virtual_disk;
pub mod virtual_machine;
pub mod vmdk;
mod xml;

#[cfg(test)]
mod fake;

pub use cbt::DiskExtent;
pub use client::{Client, ClientConfig, ConnectOptions, RetryPolicy, Secret};
pub use datastore::{ByteStream, DatastoreFile, DirEntry};
pub use error::{Error, Result};
pub use fault::{Fault, FaultKind};
pub use inventory::{
    ComputeResource, Datacenter, Datastore, Host, Inventory, ResourcePool, VmFolder,
};
pub use session::{AboutInfo, ServiceContent, UserSession};
pub use snapshot::{Snapshot, SnapshotSpec, SnapshotTree};
pub use soap::{SoapRequest, SoapResponse, Transport};
pub use task::{TaskInfo, TaskState, WaitOptions};
pub use tls::{Thumbprint, ThumbprintAlgorithm, Trust};
pub use types::{ChangeId, DatastorePath, MoRef, decode_name, encode_name};
pub use virtual_disk::{BackingFile, DiskMode, VirtualDisk};
pub use virtual_machine::{PowerState, Vm, VmFile, VmQuestion, VmRef};
pub use vmdk::{Descriptor, Extent, NewDescriptor};

/// Compile-time checks: the client is shareable and its futures can be spawned.
#[cfg(test)]
mod send_sync {
    use super::*;

    fn is_send<T: Send>(_: &T) {}
    fn is_shared<T: Clone + Send + Sync + 'static>() {}

    #[allow(dead_code, clippy::let_underscore_future)]
    async fn futures_are_send(c: &Client, vm: &MoRef, file: &DatastoreFile) {
        is_shared::<Client>();
        fn is_error<T: std::error::Error + Send + Sync + 'static>() {}
        is_error::<Error>();
        is_send(&c.list_vms());
        is_send(&c.read_vm(vm));
        is_send(&c.create_snapshot(vm, "n", "d", false, false));
        is_send(&c.remove_snapshot(vm, false, true));
        is_send(&c.query_changed_disk_areas(vm, vm, 1, &ChangeId::all(), 1));
        is_send(&c.put(
            file,
            0,
            futures_util::stream::empty::<std::io::Result<bytes::Bytes>>(),
        ));
        is_send(&c.get_range(file, 0, 1));
        is_send(&c.logout());
    }

    #[test]
    fn client_types_are_thread_safe() {
        is_shared::<Client>();
    }
}
