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
