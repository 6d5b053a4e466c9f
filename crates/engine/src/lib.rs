//! # vbm-engine — the work of one VM
//!
//! Backup (full and CBT incremental), restore (to a directory, as a new VM, in place) and verify
//! (test restore) of a single virtual machine, with the snapshot lifecycle that guarantees every
//! snapshot vbm creates is removed, and typed progress events. It joins `vbm-vsphere` (where the
//! data comes from) and `vbm-repo` (where it goes).
//!
//! It must not know about HTTP servers, databases, schedules, users or notifications: the service
//! (`vbm-server`) and the CLI call the same library functions and receive progress through an
//! injected handle.

pub mod backup;
mod error;
pub mod plan;
pub mod progress;
pub mod restore;
pub mod snapshots;
pub mod verify;
pub mod vmx;

pub use backup::{
    BackupOptions, BackupReport, ModeRequest, Timings, VmSelector, backup, resolve_vm, vm_key,
};
pub use error::{Error, Result};
pub use progress::{Level, Meter, NoProgress, Phase, ProgressEvent, ProgressSink};
pub use restore::{
    DirOptions, InPlaceOptions, RestoreReport, RestoredFile, VcenterTarget, restore_in_place,
    restore_to_dir, restore_to_vcenter,
};
pub use snapshots::{
    RemovePolicy, RunId, SNAPSHOT_PREFIX, SweepReport, snapshot_name, sweep_all, sweep_snapshots,
};
pub use verify::{VcenterFinding, VerifyOutcome, verify, verify_with};

// Re-exported so that callers (service, CLI) name the same types the engine uses.
pub use tokio_util::sync::CancellationToken;
pub use vbm_repo;
pub use vbm_vsphere;
