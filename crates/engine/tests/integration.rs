//! Engine integration tests against the vCenter testbed and a real repository in a temp dir.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod integration {
    pub(crate) mod backup;
    pub(crate) mod esxi;
    pub(crate) mod faults;
    pub(crate) mod restore;
    pub(crate) mod support;
    pub(crate) mod verify;
}
