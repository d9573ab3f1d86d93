//! Volumes: create (empty, from a snapshot, or forked from another volume), list,
//! get, update, extend, snapshot, delete, and attaching them to machines through
//! `config.mounts`.
//!
//! The driver keeps the data; the store keeps the records. Which machine a volume is
//! attached to is not stored twice: it is the live machine whose `config.mounts`
//! names it. Deciding an attachment and recording it happen under one lock
//! ([`Service::volume_lock`]), so two machines never get the same volume.

use chrono::Utc;
use hangar_types::{
    CreateVolumeRequest, ErrorCode, ExtendVolumeRequest, ExtendVolumeResponse, MachineConfig,
    UpdateVolumeRequest, Volume, VolumeSnapshot,
};

use super::Service;
use crate::config;
use crate::driver::{Attachment, VolumeOrigin};
use crate::error::{Error, Result};
use crate::ids::{MachineId, random_hex};
use crate::model::{MachineRecord, VolumeRecord, VolumeSnapshotRecord, rfc3339};
use crate::state::MachineState;

/// The largest volume, in GB (GiB).
pub const MAX_VOLUME_GB: u64 = 16 * 1024;
const GIB: u64 = 1 << 30;
const DEFAULT_SNAPSHOT_RETENTION: i64 = 5;

/// Volume names follow Fly's rule: lowercase letters, digits and underscores.
fn validate_volume_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 30
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "volume name {name:?} is not valid: use 1 to 30 lowercase letters, digits and '_'"
        )))
    }
}

fn check_size(size_gb: u64) -> Result<()> {
    if (1..=MAX_VOLUME_GB).contains(&size_gb) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "size_gb is {size_gb}: use a whole number of GB from 1 to {MAX_VOLUME_GB}"
        )))
    }
}

fn check_retention(days: i64) -> Result<()> {
    if (1..=60).contains(&days) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "snapshot_retention is {days}: use 1 to 60 days"
        )))
    }
}

impl Service {
    pub async fn create_volume(&self, app: &str, req: CreateVolumeRequest) -> Result<Volume> {
        self.app_record(app).await?;
        validate_volume_name(&req.name)?;
        if let Some(fstype) = req.fstype.as_deref().filter(|f| !f.is_empty())
            && fstype != "ext4"
        {
            return Err(Error::bad_request(format!(
                "fstype {fstype:?} is not offered: volumes are ext4"
            )));
        }
        let retention = req.snapshot_retention.unwrap_or(DEFAULT_SNAPSHOT_RETENTION);
        check_retention(retention)?;
        let snapshot = req.snapshot_id.as_deref().filter(|s| !s.is_empty());
        let source = req.source_volume_id.as_deref().filter(|s| !s.is_empty());
        // The source must stay put (not be deleted, not change machines) while it is
        // cloned.
        let attach_guard = self.volume_lock.lock().await;
        let (origin, source_size, source_attached) = match (snapshot, source) {
            (Some(_), Some(_)) => {
                return Err(Error::bad_request(
                    "give snapshot_id (restore a snapshot) or source_volume_id (fork a volume), not both",
                ));
            }
            (Some(snapshot), None) => {
                let (record, volume) = self.snapshot_of_app(app, snapshot).await?;
                (
                    VolumeOrigin::Snapshot(record.id),
                    Some(volume.size_gb.max(record.size.div_ceil(GIB))),
                    None,
                )
            }
            (None, Some(source)) => {
                let volume = self.volume_record(app, source).await?;
                let attached = self
                    .attachment(app, &volume.id)
                    .await?
                    .map(|(machine, path)| Attachment {
                        machine_id: machine.id,
                        path,
                    });
                (
                    VolumeOrigin::Volume(volume.id),
                    Some(volume.size_gb),
                    attached,
                )
            }
            (None, None) => (VolumeOrigin::Empty, None, None),
        };
        let size_gb = match (req.size_gb, source_size) {
            (Some(size), Some(min)) if size < min => {
                return Err(Error::bad_request(format!(
                    "size_gb is {size} but the source holds {min} GB: a volume can only grow, use {min} or more"
                )));
            }
            (Some(size), _) => size,
            (None, Some(min)) => min,
            (None, None) => {
                return Err(Error::bad_request(
                    "size_gb is required for a new volume, e.g. {\"name\": \"data\", \"size_gb\": 1}",
                ));
            }
        };
        check_size(size_gb)?;
        let record = VolumeRecord {
            id: format!("vol_{}", random_hex(8)),
            app: app.to_string(),
            name: req.name,
            size_gb,
            snapshot_retention: retention,
            created_at: Utc::now(),
        };
        let began = std::time::Instant::now();
        self.driver
            .create_volume(&record.id, size_gb * GIB, &origin, source_attached.as_ref())
            .await?;
        metrics::histogram!("hangar_volume_create_seconds").record(began.elapsed().as_secs_f64());
        if let Err(err) = self.store.insert_volume(&record).await {
            if let Err(cleanup) = self.driver.delete_volume(&record.id).await {
                tracing::error!(volume = %record.id, error = ?cleanup, "removing an unrecorded volume failed");
            }
            return Err(err.into());
        }
        drop(attach_guard);
        self.volume_view(&record).await
    }

    pub async fn list_volumes(&self, app: &str) -> Result<Vec<Volume>> {
        self.app_record(app).await?;
        let mut out = Vec::new();
        for record in self.store.list_volumes(app).await? {
            out.push(self.volume_view(&record).await?);
        }
        Ok(out)
    }

    pub async fn get_volume(&self, app: &str, id: &str) -> Result<Volume> {
        let record = self.volume_record(app, id).await?;
        self.volume_view(&record).await
    }

    pub async fn update_volume(
        &self,
        app: &str,
        id: &str,
        req: UpdateVolumeRequest,
    ) -> Result<Volume> {
        let attach_guard = self.volume_lock.lock().await;
        let mut record = self.volume_record(app, id).await?;
        if let Some(days) = req.snapshot_retention {
            check_retention(days)?;
            record.snapshot_retention = days;
        }
        self.store.update_volume(&record).await?;
        drop(attach_guard);
        self.volume_view(&record).await
    }

    /// Deletes a volume and its snapshots. A volume a machine mounts is refused:
    /// destroy the machine, or update it without the mount, first.
    pub async fn delete_volume(&self, app: &str, id: &str) -> Result<Volume> {
        let _attach_guard = self.volume_lock.lock().await;
        let record = self.volume_record(app, id).await?;
        if let Some((machine, _)) = self.attachment(app, &record.id).await? {
            return Err(Error::request(
                ErrorCode::VolumeAttached,
                format!(
                    "volume {} is attached to machine {} ({}); destroy that machine or update it without the mount first",
                    record.id, machine.id, machine.name
                ),
            ));
        }
        self.remove_volume(&record).await?;
        let mut view = self.volume_view(&record).await?;
        view.state = "destroyed".into();
        Ok(view)
    }

    /// Removes a volume that nothing mounts: its data, its snapshots, its record.
    async fn remove_volume(&self, record: &VolumeRecord) -> Result<()> {
        for snapshot in self.store.list_volume_snapshots(&record.id).await? {
            self.driver.delete_volume_snapshot(&snapshot.id).await?;
        }
        self.driver.delete_volume(&record.id).await?;
        self.store.delete_volume(&record.id).await?;
        Ok(())
    }

    /// Removes every volume of an app whose machines are all destroyed.
    pub(super) async fn remove_app_volumes(&self, app: &str) -> Result<()> {
        let _attach_guard = self.volume_lock.lock().await;
        for record in self.store.list_volumes(app).await? {
            self.remove_volume(&record).await?;
        }
        Ok(())
    }

    /// Grows a volume; a mounted one grows while its machine runs where the host
    /// allows it, else (`needs_restart`) when its sandbox is next built.
    pub async fn extend_volume(
        &self,
        app: &str,
        id: &str,
        req: ExtendVolumeRequest,
    ) -> Result<ExtendVolumeResponse> {
        let attach_guard = self.volume_lock.lock().await;
        let mut record = self.volume_record(app, id).await?;
        if req.size_gb <= record.size_gb {
            return Err(Error::bad_request(format!(
                "size_gb is {} but volume {} already has {} GB: volumes only grow, ask for more",
                req.size_gb, record.id, record.size_gb
            )));
        }
        check_size(req.size_gb)?;
        let attached = self.live_attachment(app, &record.id).await?;
        let grown = self
            .driver
            .extend_volume(&record.id, req.size_gb * GIB, attached.as_ref())
            .await?;
        record.size_gb = req.size_gb;
        self.store.update_volume(&record).await?;
        drop(attach_guard);
        Ok(ExtendVolumeResponse {
            volume: self.volume_view(&record).await?,
            needs_restart: !grown,
        })
    }

    /// A consistent copy of the volume as it is now; a mounted volume's file system
    /// is frozen for the instant it takes.
    pub async fn create_volume_snapshot(&self, app: &str, id: &str) -> Result<VolumeSnapshot> {
        let _attach_guard = self.volume_lock.lock().await;
        let volume = self.volume_record(app, id).await?;
        let attached = self.live_attachment(app, &volume.id).await?;
        let snapshot_id = format!("vs_{}", random_hex(8));
        let began = std::time::Instant::now();
        let size = self
            .driver
            .snapshot_volume(&volume.id, &snapshot_id, attached.as_ref())
            .await?;
        metrics::histogram!("hangar_volume_snapshot_seconds").record(began.elapsed().as_secs_f64());
        let record = VolumeSnapshotRecord {
            id: snapshot_id,
            volume_id: volume.id,
            size,
            created_at: Utc::now(),
        };
        if let Err(err) = self.store.insert_volume_snapshot(&record).await {
            let _ = self.driver.delete_volume_snapshot(&record.id).await;
            return Err(err.into());
        }
        Ok(record.to_api())
    }

    pub async fn list_volume_snapshots(&self, app: &str, id: &str) -> Result<Vec<VolumeSnapshot>> {
        let volume = self.volume_record(app, id).await?;
        let records = self.store.list_volume_snapshots(&volume.id).await?;
        Ok(records.iter().map(VolumeSnapshotRecord::to_api).collect())
    }

    /// Checks `config.mounts` for a machine of `app` (`machine`, when it exists
    /// already) and names each volume by its id. The caller holds
    /// [`Service::volume_lock`] until the config is persisted.
    pub(super) async fn resolve_mounts(
        &self,
        app: &str,
        config: &mut MachineConfig,
        machine: Option<&MachineId>,
    ) -> Result<()> {
        let mut mounts = config::mounts(config)?;
        if mounts.is_empty() {
            return Ok(());
        }
        let volumes = self.store.list_volumes(app).await?;
        for (i, mount) in mounts.iter_mut().enumerate() {
            let by_id = volumes.iter().find(|v| v.id == mount.volume);
            let by_name: Vec<_> = volumes.iter().filter(|v| v.name == mount.volume).collect();
            let volume = match (by_id, by_name.as_slice()) {
                (Some(v), _) => v,
                (None, [v]) => *v,
                (None, []) => {
                    return Err(Error::request(
                        ErrorCode::VolumeNotFound,
                        format!(
                            "config.mounts[{i}].volume {:?} is not a volume of app {app:?}; create one with POST /v1/apps/{app}/volumes",
                            mount.volume
                        ),
                    ));
                }
                (None, _) => {
                    return Err(Error::invalid_config(format!(
                        "config.mounts[{i}].volume {:?} names {} volumes of app {app:?}; use the volume's id",
                        mount.volume,
                        by_name.len()
                    )));
                }
            };
            if let Some((other, _)) = self.attachment(app, &volume.id).await?
                && Some(&other.id) != machine
            {
                return Err(Error::request(
                    ErrorCode::VolumeAttached,
                    format!(
                        "volume {} is attached to machine {} ({}); a volume is mounted by one machine at a time: \
                         destroy that machine, create another volume, or fork this one (source_volume_id)",
                        volume.id, other.id, other.name
                    ),
                ));
            }
            mount.volume = volume.id.clone();
            mount.path = mount.path.trim_end_matches('/').to_string();
        }
        config.extra.insert(
            "mounts".into(),
            serde_json::to_value(&mounts).map_err(|e| Error::Internal(e.to_string()))?,
        );
        Ok(())
    }

    /// The app's volume with this id (or unique name), or `volume_not_found`.
    async fn volume_record(&self, app: &str, id: &str) -> Result<VolumeRecord> {
        let not_found = || {
            Error::request(
                ErrorCode::VolumeNotFound,
                format!(
                    "volume {id:?} was not found in app {app:?}; list volumes with GET /v1/apps/{app}/volumes"
                ),
            )
        };
        if let Some(record) = self.store.get_volume(id).await? {
            return if record.app == app {
                Ok(record)
            } else {
                Err(not_found())
            };
        }
        let mut named: Vec<_> = self
            .store
            .list_volumes(app)
            .await?
            .into_iter()
            .filter(|v| v.name == id)
            .collect();
        match named.len() {
            1 => Ok(named.remove(0)),
            0 => Err(not_found()),
            n => Err(Error::bad_request(format!(
                "{n} volumes of app {app:?} are named {id:?}; use the volume's id"
            ))),
        }
    }

    /// A snapshot of one of the app's volumes, with its volume.
    async fn snapshot_of_app(
        &self,
        app: &str,
        id: &str,
    ) -> Result<(VolumeSnapshotRecord, VolumeRecord)> {
        let not_found = || {
            Error::request(
                ErrorCode::VolumeSnapshotNotFound,
                format!(
                    "snapshot {id:?} is not a snapshot of a volume of app {app:?}; list them with GET /v1/apps/{app}/volumes/{{id}}/snapshots"
                ),
            )
        };
        let snapshot = self
            .store
            .get_volume_snapshot(id)
            .await?
            .ok_or_else(not_found)?;
        match self.store.get_volume(&snapshot.volume_id).await? {
            Some(volume) if volume.app == app => Ok((snapshot, volume)),
            _ => Err(not_found()),
        }
    }

    /// The live machine whose `config.mounts` names the volume, and where.
    async fn attachment(&self, app: &str, volume: &str) -> Result<Option<(MachineRecord, String)>> {
        for machine in self.store.list_machines(Some(app), false).await? {
            if let Some(mount) = config::volume_mounts(&machine.config)
                .into_iter()
                .find(|m| m.volume == volume)
            {
                return Ok(Some((machine, mount.path)));
            }
        }
        Ok(None)
    }

    /// Where the volume is mounted right now, if its machine's sandbox exists.
    async fn live_attachment(&self, app: &str, volume: &str) -> Result<Option<Attachment>> {
        Ok(self
            .attachment(app, volume)
            .await?
            .filter(|(machine, _)| {
                !matches!(
                    machine.state,
                    MachineState::Destroying | MachineState::Destroyed
                )
            })
            .map(|(machine, path)| Attachment {
                machine_id: machine.id,
                path,
            }))
    }

    async fn volume_view(&self, record: &VolumeRecord) -> Result<Volume> {
        let attached = self.attachment(&record.app, &record.id).await?;
        let usage = match &attached {
            Some((machine, path)) => {
                self.driver
                    .volume_usage(
                        &record.id,
                        &Attachment {
                            machine_id: machine.id.clone(),
                            path: path.clone(),
                        },
                    )
                    .await
            }
            None => None,
        }
        .unwrap_or_default();
        Ok(Volume {
            id: record.id.clone(),
            name: record.name.clone(),
            state: "created".into(),
            size_gb: record.size_gb,
            region: crate::REGION.to_string(),
            zone: crate::REGION.to_string(),
            encrypted: false,
            fstype: "ext4".into(),
            attached_machine_id: attached.as_ref().map(|(m, _)| m.id.to_string()),
            attached_alloc_id: attached.as_ref().map(|(m, _)| m.instance_id.clone()),
            snapshot_retention: record.snapshot_retention,
            created_at: rfc3339(record.created_at),
            block_size: usage.block_size,
            blocks: usage.blocks,
            blocks_free: usage.blocks_free,
            blocks_avail: usage.blocks_avail,
        })
    }
}

/// The config a fork starts with: the source's, without its volumes (a volume is
/// mounted by one machine at a time; fork the volume too and mount the copy).
pub(super) fn without_mounts(mut config: MachineConfig) -> MachineConfig {
    config.extra.remove("mounts");
    config
}
