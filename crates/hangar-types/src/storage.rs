//! Checkpoints, restore, fork and diff: hangar's additions for keeping and rewinding
//! a machine's root filesystem.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::Machine;

/// `POST /v1/apps/{app}/machines/{id}/checkpoints`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateCheckpointRequest {
    /// A name to find it by; the id is used when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An immutable snapshot of a machine's root filesystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    pub id: String,
    pub name: String,
    pub machine_id: String,
    /// RFC 3339.
    pub created_at: String,
    /// The machine's state when it was taken (`started`, `stopped`, ...).
    pub machine_state: String,
}

/// `POST /v1/apps/{app}/machines/{id}/fork`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForkMachineRequest {
    /// The checkpoint (id or name) to fork from; the current state when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// How many machines, 1 to 100 (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The new machine's name; with a count above 1, `NAME-1`, `NAME-2`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ForkMachineResponse {
    /// The checkpoint the machines were forked from.
    pub checkpoint: String,
    pub machines: Vec<Machine>,
}

/// One changed path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiffEntry {
    /// Absolute path inside the machine.
    pub path: String,
    /// Bytes (the new size; the old size for deleted paths; 0 for directories).
    pub size: u64,
}

/// `GET .../checkpoints/{a}/diff?to={b|current}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckpointDiff {
    pub added: Vec<DiffEntry>,
    pub modified: Vec<DiffEntry>,
    pub deleted: Vec<DiffEntry>,
}
