//! Backup jobs: what a job is ([`spec`]), which VMs it selects at run time ([`selection`]),
//! what its retention policy keeps ([`retention`]) and whether its VMs are backed up within
//! their recovery point objective ([`protection`]).

pub mod protection;
pub mod retention;
pub mod selection;
pub mod spec;

pub use retention::{Retention, RetentionPlan};
pub use selection::VmSelection;
pub use spec::{BackupMode, Job, JobSpec, ScheduleSpec};
