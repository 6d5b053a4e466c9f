//! Integration tests of vbm-vsphere against the testbed (govmomi's vcsim, extended) over HTTPS.
//! Every test starts its own testbed on free loopback ports; none binds a fixed port or sleeps a
//! fixed time. Fault-matrix rows are cited as `// covers Nx`.

// Helpers outside #[test] functions may fail a test loudly too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod integration {
    mod cbt;
    mod common;
    mod esxi;
    mod faults;
    mod inventory;
    mod session;
    mod snapshots;
    mod transfer;
}
