//! Volumes: persistent disks in the Fly Machines API v1 shapes, mounted into one
//! machine at a time through `config.mounts`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A volume as the API returns it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Volume {
    pub id: String,
    pub name: String,
    /// `created`.
    pub state: String,
    pub size_gb: u64,
    pub region: String,
    pub zone: String,
    pub encrypted: bool,
    /// `ext4`.
    pub fstype: String,
    /// The machine whose `config.mounts` names this volume, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_machine_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_alloc_id: Option<String>,
    pub snapshot_retention: i64,
    /// RFC 3339.
    pub created_at: String,
    /// File system block size and counts; zero while no machine has it mounted.
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
}

/// `POST /v1/apps/{app}/volumes`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateVolumeRequest {
    #[serde(default)]
    pub name: String,
    /// Size in GB (GiB), 1 or more; a fork or a restore defaults to its source's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_gb: Option<u64>,
    /// Start as this snapshot of one of the app's volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<String>,
    /// Start as a copy of this volume of the app (a fork).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_volume_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Only `ext4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fstype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_retention: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_unique_zone: Option<bool>,
}

/// `POST /v1/apps/{app}/volumes/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpdateVolumeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_retention: Option<i64>,
}

/// `PUT /v1/apps/{app}/volumes/{id}/extend`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExtendVolumeRequest {
    pub size_gb: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExtendVolumeResponse {
    pub volume: Volume,
    /// False when the volume grew at once (mounted or not). True when its machine
    /// has it mounted and the host cannot grow a mounted file system: it grows when
    /// the machine's sandbox is next built (an update of its image or mounts, or a
    /// new machine).
    pub needs_restart: bool,
}

/// A point-in-time copy of a volume.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VolumeSnapshot {
    pub id: String,
    /// The volume's size in bytes when it was taken.
    pub size: u64,
    /// `created`.
    pub status: String,
    pub digest: String,
    /// RFC 3339.
    pub created_at: String,
}

/// One entry of `config.mounts`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineMount {
    /// The volume's id (a name is accepted and replaced by the id).
    pub volume: String,
    /// Where it appears inside the machine, an absolute path.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}
