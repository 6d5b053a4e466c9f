//! API tests over real HTTP against the real `vbm serve` binary (started by
//! `vbm_testkit::Server` on a free port with a temp data directory).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod integration {
    mod backups;
    mod bad_input;
    mod common;
    mod crash;
    mod db_full;
    mod load;
    mod metrics;
    mod protection;
    mod restart;
    mod restore;
    mod retention;
    mod routes;
    mod schemathesis;
    mod secrets;
    mod slow_clients;
    mod snapshot_sweep;
    mod vcenters;
}
