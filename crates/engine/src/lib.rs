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

pub mod plan;
pub mod progress;
pub mod vmx;

pub use progress::{Level, Meter, NoProgress, Phase, ProgressEvent, ProgressSink};
