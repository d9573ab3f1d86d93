//! Records the service layer keeps in its store, and their API views.

use chrono::{DateTime, SecondsFormat, Utc};
use hangar_types::{
    Checkpoint, ImageRef, Lease, Machine, MachineConfig, MachineEvent, VolumeSnapshot,
};
use serde::{Deserialize, Serialize};

use crate::ids::MachineId;
use crate::state::MachineState;

#[derive(Debug, Clone, PartialEq)]
pub struct AppRecord {
    pub id: String,
    pub name: String,
    pub org_slug: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub nonce: String,
    pub owner: String,
    pub description: String,
    pub expires_at: DateTime<Utc>,
    pub version: String,
}

impl std::fmt::Debug for LeaseRecord {
    // The nonce is what proves holding the lease: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseRecord")
            .field("owner", &self.owner)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl LeaseRecord {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.expires_at > now
    }

    pub fn to_api(&self) -> Lease {
        Lease {
            nonce: self.nonce.clone(),
            expires_at: self.expires_at.timestamp(),
            owner: self.owner.clone(),
            description: self.description.clone(),
            version: self.version.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MachineRecord {
    pub id: MachineId,
    pub app: String,
    pub name: String,
    pub state: MachineState,
    pub instance_id: String,
    pub private_ip: String,
    pub config: MachineConfig,
    pub image_ref: ImageRef,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Restarts the restart policy has made since the machine was last started by a user.
    pub restart_count: u32,
    pub lease: Option<LeaseRecord>,
    /// What the machine was built from: kept so it can be rebuilt without the image.
    pub image: MachineImage,
}

/// The resolved image a machine runs: its layers and its config defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineImage {
    pub layers: Vec<std::path::PathBuf>,
    pub config: crate::image::ImageConfig,
}

impl MachineRecord {
    pub fn to_api(&self, events: Vec<MachineEvent>) -> Machine {
        Machine {
            id: self.id.to_string(),
            name: self.name.clone(),
            state: self.state.to_string(),
            region: crate::REGION.to_string(),
            instance_id: self.instance_id.clone(),
            private_ip: self.private_ip.clone(),
            private_ipv4: None,
            config: self.config.clone(),
            image_ref: self.image_ref.clone(),
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
            events,
            checks: Vec::new(),
            nonce: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub id: String,
    pub machine_id: MachineId,
    pub kind: String,
    pub status: String,
    pub source: String,
    pub timestamp: DateTime<Utc>,
    pub request: serde_json::Value,
}

impl EventRecord {
    pub fn to_api(&self) -> MachineEvent {
        MachineEvent {
            id: self.id.clone(),
            kind: self.kind.clone(),
            status: self.status.clone(),
            source: self.source.clone(),
            timestamp: self.timestamp.timestamp_millis(),
            request: self.request.clone(),
        }
    }
}

/// An immutable snapshot of a machine's writable layer, kept by the driver under
/// `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointRecord {
    pub id: String,
    pub machine_id: MachineId,
    pub name: String,
    /// The machine's state when it was taken.
    pub machine_state: MachineState,
    pub created_at: DateTime<Utc>,
}

impl CheckpointRecord {
    pub fn to_api(&self) -> Checkpoint {
        Checkpoint {
            id: self.id.clone(),
            name: self.name.clone(),
            machine_id: self.machine_id.to_string(),
            created_at: rfc3339(self.created_at),
            machine_state: self.machine_state.to_string(),
        }
    }
}

/// A volume; its data is kept by the driver under `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeRecord {
    pub id: String,
    pub app: String,
    pub name: String,
    pub size_gb: u64,
    /// Recorded for Fly clients; hangar takes snapshots only when asked.
    pub snapshot_retention: i64,
    pub created_at: DateTime<Utc>,
}

/// A point-in-time copy of a volume, kept by the driver under `id`.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumeSnapshotRecord {
    pub id: String,
    pub volume_id: String,
    /// Bytes.
    pub size: u64,
    pub created_at: DateTime<Utc>,
}

impl VolumeSnapshotRecord {
    pub fn to_api(&self) -> VolumeSnapshot {
        VolumeSnapshot {
            id: self.id.clone(),
            size: self.size,
            status: "created".into(),
            digest: String::new(),
            created_at: rfc3339(self.created_at),
        }
    }
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}
