//! The `vbm` binary end to end: the CLI contract of backup and restore against the vCenter
//! testbed, and what happens when the process is killed, stopped or interrupted mid-backup.

// Test code: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod integration {
    pub(crate) mod cli;
    pub(crate) mod process_faults;
    pub(crate) mod support;
}
