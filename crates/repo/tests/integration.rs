//! Integration tests of the repository: round trips, verify on damaged repositories, GC under
//! concurrency, retention, crash safety (SIGKILL, simulated power loss) and storage faults
//! (full disk, no inodes, immutable files — root only). Each fault test cites its
//! FAULT-MATRIX row.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stderr
)]

mod integration {
    mod backend_conformance;
    mod common;
    mod crash;
    mod gc;
    mod prune;
    mod roundtrip;
    mod storage_faults;
    mod verify;
}
