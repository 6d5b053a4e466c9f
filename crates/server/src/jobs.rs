//! Backup jobs: what a job is ([`spec`]), which VMs it selects at run time ([`selection`]) and
//! what its retention policy keeps ([`retention`]).

pub mod retention;
pub mod selection;
pub mod spec;

pub use retention::{Retention, RetentionPlan};
pub use selection::VmSelection;
pub use spec::{BackupMode, Job, JobSpec, ScheduleSpec};
