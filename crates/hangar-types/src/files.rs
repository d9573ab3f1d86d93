//! Files API shapes: what a directory listing of a machine's root filesystem says.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// What kind of thing a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    File,
    Dir,
    Symlink,
    /// A device node, FIFO or socket: listed, never read or written.
    Other,
}

/// One entry of a directory inside a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FileEntry {
    pub name: String,
    /// Absolute path inside the machine.
    pub path: String,
    #[serde(rename = "type")]
    pub kind: FileType,
    pub size: u64,
    /// Permission bits, e.g. `0o644` (JSON carries the number).
    pub mode: u32,
    /// Last modification, seconds since the Unix epoch.
    pub mtime: i64,
    /// Where a symlink points, as written in the link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}
