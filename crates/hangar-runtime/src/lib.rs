//! Runtime drivers: what turns a machine's spec into processes on this host.
//!
//! - [`fake`]: an in-memory driver for tests of the service layer.
//!
//! Drivers implement [`hangar_core::driver::Driver`] and know nothing of apps, leases
//! or HTTP.

pub mod fake;

pub use fake::FakeDriver;

/// The static `hangar-init` executable, run as PID 1 in every sandbox.
pub static INIT_BINARY: &[u8] = include_bytes!(env!("HANGAR_INIT_PATH"));
