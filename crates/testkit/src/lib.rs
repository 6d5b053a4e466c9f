//! # vbm-testkit — real parts for integration tests
//!
//! Builds and starts the vCenter testbed (`testbed/vcsim`, govmomi's simulator extended) on a free
//! loopback port for one test, hands the test its URLs, credentials, certificate thumbprints and a
//! control client, and always stops it. Test-only: never a dependency of product code.
