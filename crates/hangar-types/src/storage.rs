//! Checkpoints, restore, fork and diff: hangar's additions for keeping and rewinding
//! a machine's root filesystem.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{ImageSummary, Machine, PushImageResponse};

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

/// `POST /v1/apps/{app}/machines/{id}/commit`: the machine's root filesystem (or one
/// of its checkpoints) as a new local image, optionally pushed to a registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommitMachineRequest {
    /// The local image to record, e.g. `built:v1`.
    #[serde(default)]
    pub reference: String,
    /// The checkpoint (id or name) to commit; the current state when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// Push the new image afterwards (to `destination`, or to `reference` itself,
    /// which must then name a registry).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub push: bool,
    /// Where to push, `registry[:port]/repository[:tag]`; implies `push`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CommitMachineResponse {
    pub image: ImageSummary,
    /// The checkpoint committed, when one was named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// The push, when one was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pushed: Option<PushImageResponse>,
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
