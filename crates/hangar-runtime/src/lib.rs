//! Runtime drivers: what turns a machine's spec into processes on this host.
//!
//! - [`sandbox`]: Linux namespaces, cgroups, seccomp and an overlay root, with
//!   `hangar init` ([`INIT_BINARY`]) as PID 1.
//! - [`fake`]: an in-memory driver for tests of the service layer.
//! - [`teardown`]: removing what a daemon leaves mounted, for tests and benchmarks.
//!
//! Drivers implement [`hangar_core::driver::Driver`] and know nothing of apps, leases
//! or HTTP.

pub mod fake;
pub mod sandbox;
pub mod teardown;

pub use fake::FakeDriver;
pub use sandbox::{SandboxConfig, SandboxDriver, SandboxError};

/// The static `hangar-init` executable, run as PID 1 in every sandbox.
pub static INIT_BINARY: &[u8] = include_bytes!(env!("HANGAR_INIT_PATH"));
