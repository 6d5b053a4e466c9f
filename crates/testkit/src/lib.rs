//! # vbm-testkit — real parts for integration tests
//!
//! Builds and starts the vCenter testbed (`testbed/vcsim`, govmomi's simulator extended) on a free
//! loopback port for one test, hands the test its URLs, credentials, certificate thumbprints and a
//! control client, and always stops it: the child is killed when the [`Testbed`] is dropped, and
//! the testbed also exits by itself when its stdin closes, so a test process killed with SIGKILL
//! leaves no simulator behind. Test-only: never a dependency of product code.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let tb = vbm_testkit::Testbed::start("default").await?;
//! let info = tb.control().info().await?;
//! assert!(!info.vms.is_empty());
//! # Ok(()) }
//! ```

mod control;
mod server;
mod testbed;

pub use control::{Control, DiskInfo, Info, SnapshotInfo, VmInfo, VmSnapshots};
pub use server::{Server, ServerOptions, vbm_binary};
pub use testbed::{Testbed, TestbedOptions, repo_root};
