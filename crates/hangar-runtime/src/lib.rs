//! Runtime drivers: what turns a machine's spec into processes on this host.
//!
//! - [`fake`]: an in-memory driver for tests of the service layer.
//!
//! Drivers implement [`hangar_core::driver::Driver`] and know nothing of apps, leases
//! or HTTP.

pub mod fake;

pub use fake::FakeDriver;
