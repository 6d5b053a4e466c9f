//! One module per top-level command. Every `run` returns the process exit code it wants, or an
//! error that `output::finish` reports and turns into exit code 1.

pub(crate) mod apikey;
pub(crate) mod backup;
pub(crate) mod backups;
pub(crate) mod gc;
pub(crate) mod prune;
pub(crate) mod repo;
pub(crate) mod restore;
pub(crate) mod serve;
pub(crate) mod verify;
pub(crate) mod version;
pub(crate) mod vms;
