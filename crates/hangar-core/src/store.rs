//! The store boundary: where the service layer keeps apps, machines and events.
//!
//! The store records what *should* be (desired state, config) and what the platform
//! last saw; it does no lifecycle logic of its own.

use async_trait::async_trait;

use crate::ids::MachineId;
use crate::model::{
    AppRecord, CheckpointRecord, EventRecord, MachineRecord, VolumeRecord, VolumeSnapshotRecord,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("database: {0}")]
    Backend(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

#[async_trait]
pub trait Store: Send + Sync + 'static {
    async fn insert_app(&self, app: &AppRecord) -> StoreResult<()>;
    async fn get_app(&self, name: &str) -> StoreResult<Option<AppRecord>>;
    async fn list_apps(&self, org_slug: Option<&str>) -> StoreResult<Vec<AppRecord>>;
    async fn delete_app(&self, name: &str) -> StoreResult<()>;

    /// Fails with [`StoreError::Conflict`] when the id, or the name within the app, is taken
    /// by a machine that is not destroyed.
    async fn insert_machine(&self, machine: &MachineRecord) -> StoreResult<()>;
    /// Replaces the whole record.
    async fn update_machine(&self, machine: &MachineRecord) -> StoreResult<()>;
    async fn get_machine(&self, id: &MachineId) -> StoreResult<Option<MachineRecord>>;
    /// Machines of one app, or of every app, destroyed ones only when asked.
    async fn list_machines(
        &self,
        app: Option<&str>,
        include_destroyed: bool,
    ) -> StoreResult<Vec<MachineRecord>>;
    /// Forgets a machine and its events entirely.
    async fn delete_machine(&self, id: &MachineId) -> StoreResult<()>;

    async fn insert_event(&self, event: &EventRecord) -> StoreResult<()>;
    /// The newest `limit` events, newest first.
    async fn list_events(&self, id: &MachineId, limit: u32) -> StoreResult<Vec<EventRecord>>;

    /// Fails with [`StoreError::Conflict`] when the machine has a checkpoint of that
    /// name already.
    async fn insert_checkpoint(&self, checkpoint: &CheckpointRecord) -> StoreResult<()>;
    async fn get_checkpoint(&self, id: &str) -> StoreResult<Option<CheckpointRecord>>;
    /// A machine's checkpoints, oldest first.
    async fn list_checkpoints(&self, machine: &MachineId) -> StoreResult<Vec<CheckpointRecord>>;
    async fn delete_checkpoint(&self, id: &str) -> StoreResult<()>;

    async fn insert_volume(&self, volume: &VolumeRecord) -> StoreResult<()>;
    /// Replaces the whole record.
    async fn update_volume(&self, volume: &VolumeRecord) -> StoreResult<()>;
    async fn get_volume(&self, id: &str) -> StoreResult<Option<VolumeRecord>>;
    /// An app's volumes, oldest first.
    async fn list_volumes(&self, app: &str) -> StoreResult<Vec<VolumeRecord>>;
    /// Forgets a volume and the records of its snapshots.
    async fn delete_volume(&self, id: &str) -> StoreResult<()>;

    async fn insert_volume_snapshot(&self, snapshot: &VolumeSnapshotRecord) -> StoreResult<()>;
    async fn get_volume_snapshot(&self, id: &str) -> StoreResult<Option<VolumeSnapshotRecord>>;
    /// A volume's snapshots, oldest first.
    async fn list_volume_snapshots(&self, volume: &str) -> StoreResult<Vec<VolumeSnapshotRecord>>;
    /// The installation-wide network setting `key`, storing `value` first when it has
    /// none: the first writer wins and every later caller gets the same answer.
    async fn network_setting_or_insert(&self, key: &str, value: &str) -> StoreResult<String>;
    /// The machine's address, allocating one when it has none: its org gets the
    /// lowest free slot in `1..=max_slot` if it has none yet, the machine the lowest
    /// free host in `1..=max_host`. `Ok(None)` when the range is full.
    async fn allocate_address(
        &self,
        machine: &MachineId,
        app: &str,
        org: &str,
        max_slot: u32,
        max_host: u32,
    ) -> StoreResult<Option<AddressRecord>>;
    async fn get_address(&self, machine: &MachineId) -> StoreResult<Option<AddressRecord>>;
    async fn list_addresses(&self) -> StoreResult<Vec<AddressRecord>>;
    /// Frees the machine's address (absent is fine).
    async fn release_address(&self, machine: &MachineId) -> StoreResult<()>;

    /// An app's egress policy as JSON, if one was set.
    async fn get_egress(&self, app: &str) -> StoreResult<Option<String>>;
    async fn set_egress(&self, app: &str, policy: &str) -> StoreResult<()>;
    async fn list_egress(&self) -> StoreResult<Vec<(String, String)>>;

    /// The machine that holds MCP session `session` of `app`, if one was recorded.
    async fn get_mcp_session(&self, app: &str, session: &str) -> StoreResult<Option<MachineId>>;
    /// Records (or moves) MCP session `session` of `app` to `machine`.
    async fn set_mcp_session(
        &self,
        app: &str,
        session: &str,
        machine: &MachineId,
    ) -> StoreResult<()>;
    /// Forgets every MCP session the machine held (none is fine).
    async fn delete_mcp_sessions(&self, machine: &MachineId) -> StoreResult<()>;
}

/// A machine's place in the private network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRecord {
    pub machine_id: MachineId,
    pub app: String,
    pub org: String,
    pub slot: u32,
    pub host: u32,
}
