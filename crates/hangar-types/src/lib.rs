//! Wire types of hangar's REST API.
//!
//! Field names, shapes and states follow the Fly Machines API v1 so that clients
//! written for Fly work unchanged; hangar's own additions sit beside them. This crate
//! owns serialization only: it holds no behaviour and must not depend on any other
//! hangar crate. The CLI, the client, the API and the MCP server all share it.

pub mod error;
pub mod files;
pub mod image;
pub mod jobs;
pub mod machine;
pub mod network;
pub mod storage;
pub mod volume;

pub use error::{ErrorCode, ErrorResponse};
pub use files::*;
pub use image::*;
pub use jobs::*;
pub use machine::*;
pub use network::*;
pub use storage::*;
pub use volume::*;
