//! hangar's core: ids, the machine lifecycle, the service layer, and the traits at
//! every boundary (store, runtime driver, image store).
//!
//! Every operation of the platform lives in [`service`]. REST handlers, MCP tools and
//! the proxy's wake-up path parse input and call it; they never touch a store, a driver
//! or an image store directly. Backends implement the traits here and know nothing of
//! HTTP.

pub mod driver;
pub mod error;
pub mod ids;
pub mod image;
pub mod state;

pub use error::{Error, Result};
pub use ids::MachineId;
pub mod config;
pub mod model;
pub mod network;
pub mod service;
pub mod store;

pub use service::Service;

/// The one region a single hangar host reports.
pub const REGION: &str = "local";
