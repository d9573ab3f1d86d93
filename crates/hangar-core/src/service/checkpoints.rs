//! Checkpoints, restore, fork and diff of a machine's root filesystem.
//!
//! The driver keeps the snapshots (under the checkpoint's id); the store keeps the
//! records the API lists. A checkpoint belongs to one machine: restoring it is only
//! for that machine, forking is how another machine starts from it.

use chrono::Utc;
use futures::StreamExt;
use hangar_types::{
    Checkpoint, CheckpointDiff, CommitMachineRequest, CommitMachineResponse,
    CreateCheckpointRequest, ErrorCode, ForkMachineRequest, ForkMachineResponse, PushImageRequest,
};
use serde_json::json;

use super::{Caller, Service};
use crate::error::{Error, Result};
use crate::ids::{MachineId, instance_id, random_hex};
use crate::image::{CommitBase, ImageSource};
use crate::model::{CheckpointRecord, MachineRecord};
use crate::state::MachineState;
use crate::store::StoreError;

/// The most machines one fork call makes.
pub const MAX_FORKS: u32 = 100;
/// Forks built at once: sandboxes are cheap, but each boots a helper process.
const FORK_CONCURRENCY: usize = 8;

impl Service {
    pub async fn create_checkpoint(
        &self,
        app: &str,
        id: &str,
        req: CreateCheckpointRequest,
        caller: &Caller,
    ) -> Result<Checkpoint> {
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        let record = self.checkpoint_locked(&machine, req.name).await?;
        Ok(record.to_api())
    }

    /// Takes a checkpoint; the caller holds the machine's lock.
    async fn checkpoint_locked(
        &self,
        machine: &MachineRecord,
        name: Option<String>,
    ) -> Result<CheckpointRecord> {
        check_settled(machine, "checkpoint")?;
        let checkpoint_id = format!("cp{}", random_hex(8));
        let name = match name.filter(|n| !n.is_empty()) {
            Some(name) => {
                super::apps::validate_name("name", &name)?;
                name
            }
            None => checkpoint_id.clone(),
        };
        if self
            .store
            .list_checkpoints(&machine.id)
            .await?
            .iter()
            .any(|c| c.name == name)
        {
            return Err(Error::request(
                ErrorCode::InvalidState,
                format!(
                    "machine {} already has a checkpoint named {name:?}; pick another name or delete it first",
                    machine.id
                ),
            ));
        }
        let began = std::time::Instant::now();
        self.driver.checkpoint(&machine.id, &checkpoint_id).await?;
        metrics::histogram!("hangar_checkpoint_seconds").record(began.elapsed().as_secs_f64());
        let record = CheckpointRecord {
            id: checkpoint_id,
            machine_id: machine.id.clone(),
            name,
            machine_state: machine.state,
            created_at: Utc::now(),
        };
        if let Err(err) = self.store.insert_checkpoint(&record).await {
            let _ = self.driver.delete_checkpoint(&machine.id, &record.id).await;
            return Err(match err {
                StoreError::Conflict => Error::request(
                    ErrorCode::InvalidState,
                    format!(
                        "machine {} already has a checkpoint named {:?}; pick another name",
                        machine.id, record.name
                    ),
                ),
                other => other.into(),
            });
        }
        self.event(
            machine,
            "checkpoint",
            "created",
            "user",
            json!({"checkpoint": record.id, "name": record.name}),
        )
        .await;
        Ok(record)
    }

    pub async fn list_checkpoints(&self, app: &str, id: &str) -> Result<Vec<Checkpoint>> {
        let machine = self.live_machine(app, id).await?;
        let records = self.store.list_checkpoints(&machine.id).await?;
        Ok(records.iter().map(CheckpointRecord::to_api).collect())
    }

    pub async fn get_checkpoint(
        &self,
        app: &str,
        id: &str,
        checkpoint: &str,
    ) -> Result<Checkpoint> {
        let machine = self.live_machine(app, id).await?;
        Ok(self.checkpoint_of(&machine, checkpoint).await?.to_api())
    }

    /// Deletes a checkpoint. Machines forked from it keep their files: every fork
    /// is a snapshot of its own, independent of the checkpoint it came from.
    pub async fn delete_checkpoint(
        &self,
        app: &str,
        id: &str,
        checkpoint: &str,
        caller: &Caller,
    ) -> Result<()> {
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        let record = self.checkpoint_of(&machine, checkpoint).await?;
        self.driver
            .delete_checkpoint(&machine.id, &record.id)
            .await?;
        self.store.delete_checkpoint(&record.id).await?;
        self.event(
            &machine,
            "checkpoint",
            "deleted",
            "user",
            json!({"checkpoint": record.id}),
        )
        .await;
        Ok(())
    }

    /// Puts the machine's root filesystem back exactly as it was at `checkpoint`. A
    /// started machine is stopped, rebuilt on the checkpoint and started again.
    pub async fn restore_checkpoint(
        &self,
        app: &str,
        id: &str,
        checkpoint: &str,
        caller: &Caller,
    ) -> Result<Checkpoint> {
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        let record = self.checkpoint_of(&machine, checkpoint).await?;
        let was_running = matches!(
            machine.state,
            MachineState::Started | MachineState::Starting | MachineState::Suspended
        );
        self.stop_locked(&mut machine, None, None).await?;
        self.set_state(&mut machine, MachineState::Replacing)
            .await?;
        let began = std::time::Instant::now();
        if let Err(err) = self
            .driver
            .restore(&self.sandbox_spec(&machine).await?, &record.id)
            .await
        {
            self.set_state(&mut machine, MachineState::Failed).await?;
            self.event(
                &machine,
                "restore",
                "failed",
                "user",
                json!({"checkpoint": record.id}),
            )
            .await;
            return Err(err.into());
        }
        metrics::histogram!("hangar_restore_seconds").record(began.elapsed().as_secs_f64());
        self.set_state(&mut machine, MachineState::Stopped).await?;
        self.event(
            &machine,
            "restore",
            "restored",
            "user",
            json!({"checkpoint": record.id}),
        )
        .await;
        if was_running {
            machine.restart_count = 0;
            // Into the restored files, even for an ephemeral root.
            self.start_with(&mut machine, "user", false).await?;
        }
        Ok(record.to_api())
    }

    /// New machines whose root filesystems start as `checkpoint` (or as the current
    /// state, checkpointed for the purpose), each independent from then on.
    pub async fn fork_machine(
        &self,
        app: &str,
        id: &str,
        req: ForkMachineRequest,
        caller: &Caller,
    ) -> Result<ForkMachineResponse> {
        let count = req.count.unwrap_or(1);
        if !(1..=MAX_FORKS).contains(&count) {
            return Err(Error::bad_request(format!(
                "count is {count}: fork 1 to {MAX_FORKS} machines at a time"
            )));
        }
        if let Some(name) = req.name.as_deref().filter(|n| !n.is_empty()) {
            super::apps::validate_name("name", name)?;
        }
        let source = self.live_machine(app, id).await?;
        let (source, record) = {
            let _guard = self.lock(&source.id).await;
            let source = self.reload(&source).await?;
            self.check_lease(&source, caller)?;
            let record = match &req.checkpoint {
                Some(checkpoint) => self.checkpoint_of(&source, checkpoint).await?,
                None => self.checkpoint_locked(&source, None).await?,
            };
            (source, record)
        };
        let start = matches!(
            source.state,
            MachineState::Started | MachineState::Starting | MachineState::Suspended
        );
        let names: Vec<Option<String>> = (1..=count)
            .map(|i| match req.name.as_deref().filter(|n| !n.is_empty()) {
                Some(name) if count == 1 => Some(name.to_string()),
                Some(name) => Some(format!("{name}-{i}")),
                None => None,
            })
            .collect();
        let results: Vec<Result<MachineRecord>> = futures::stream::iter(names)
            .map(|name| self.fork_one(&source, &record, name, start))
            .buffer_unordered(FORK_CONCURRENCY)
            .collect()
            .await;
        let mut machines = Vec::with_capacity(results.len());
        let mut failure = None;
        for result in results {
            match result {
                Ok(machine) => machines.push(machine),
                Err(err) => failure = Some(err),
            }
        }
        if let Some(err) = failure {
            // All or nothing: the forks that were made go again.
            for machine in &mut machines {
                let _guard = self.lock(&machine.id).await;
                if let Err(cleanup) = self.destroy_locked(machine, "hangar").await {
                    tracing::error!(machine = %machine.id, error = ?cleanup, "removing a fork failed");
                }
            }
            return Err(err);
        }
        machines.sort_by(|a, b| a.name.cmp(&b.name));
        let mut views = Vec::with_capacity(machines.len());
        for machine in &machines {
            views.push(self.view(machine).await?);
        }
        Ok(ForkMachineResponse {
            checkpoint: record.id,
            machines: views,
        })
    }

    async fn fork_one(
        &self,
        source: &MachineRecord,
        checkpoint: &CheckpointRecord,
        name: Option<String>,
        start: bool,
    ) -> Result<MachineRecord> {
        let id = MachineId::generate();
        let now = Utc::now();
        let mut machine = MachineRecord {
            id: id.clone(),
            app: source.app.clone(),
            name: name.unwrap_or_else(super::machines::friendly_name),
            state: MachineState::Created,
            instance_id: instance_id(),
            private_ip: String::new(),
            config: super::volumes::without_mounts(source.config.clone()),
            image_ref: source.image_ref.clone(),
            created_at: now,
            updated_at: now,
            restart_count: 0,
            lease: None,
            image: source.image.clone(),
        };
        self.insert_new_machine(&machine).await?;
        let _guard = self.lock(&id).await;
        self.event(
            &machine,
            "launch",
            "created",
            "user",
            json!({"forked_from": source.id, "checkpoint": checkpoint.id}),
        )
        .await;
        let spec = match self.sandbox_spec(&machine).await {
            Ok(spec) => spec,
            Err(err) => {
                self.release_address(&id).await;
                self.store.delete_machine(&id).await?;
                return Err(err);
            }
        };
        if let Some(net) = &spec.network {
            machine.private_ip = net.ipv6.to_string();
            self.store.update_machine(&machine).await?;
        }
        if let Err(err) = self.driver.fork(&source.id, &checkpoint.id, &spec).await {
            tracing::error!(machine = %id, error = ?err, "forking the sandbox failed");
            if let Err(cleanup) = self.driver.destroy(&id).await {
                tracing::error!(machine = %id, error = ?cleanup, "removing a half-made fork failed");
            }
            self.release_address(&id).await;
            self.store.delete_machine(&id).await?;
            return Err(err.into());
        }
        if spec.network.is_some() {
            self.sync_network_logged().await;
        }
        if start {
            // The fork's files are the checkpoint's: an ephemeral root is not reset.
            self.start_with(&mut machine, "user", false).await?;
        }
        Ok(machine)
    }

    /// Records the machine's root filesystem (or one of its checkpoints) as a new local
    /// image: its image's layers with the machine's changes as one more layer on top,
    /// and its image's config. The current state is snapshotted for the purpose (a
    /// running machine is frozen for that instant) and the snapshot dropped afterwards.
    pub async fn commit_machine(
        &self,
        app: &str,
        id: &str,
        req: CommitMachineRequest,
        caller: &Caller,
    ) -> Result<CommitMachineResponse> {
        let reference = req.reference.trim().to_string();
        if reference.is_empty() {
            return Err(Error::bad_request(
                "a commit needs a reference to store the image under, e.g. {\"reference\": \"built:v1\"}",
            ));
        }
        let machine = self.live_machine(app, id).await?;
        let guard = self.lock(&machine.id).await;
        let machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        let base = CommitBase {
            layers: machine.image.layers.clone(),
            config: machine.image.config.clone(),
            source: ImageSource {
                registry: machine.image_ref.registry.clone(),
                repository: machine.image_ref.repository.clone(),
                tag: machine.image_ref.tag.clone(),
                digest: machine.image_ref.digest.clone(),
            },
        };
        let started = std::time::Instant::now();
        let (image, checkpoint) = match req.checkpoint.as_deref().filter(|c| !c.is_empty()) {
            Some(checkpoint) => {
                // The lock stays held so the checkpoint cannot be deleted under the commit.
                let record = self.checkpoint_of(&machine, checkpoint).await?;
                let upper = self
                    .driver
                    .checkpoint_upper(&machine.id, &record.id)
                    .await?;
                let image = self.images.commit_layer(&upper, &base, &reference).await;
                drop(guard);
                (image, Some(record.id))
            }
            None => {
                check_settled(&machine, "commit")?;
                let snapshot = format!("commit{}", random_hex(8));
                self.driver.checkpoint(&machine.id, &snapshot).await?;
                // Nobody else knows this snapshot: the machine is free again.
                drop(guard);
                let image = match self.driver.checkpoint_upper(&machine.id, &snapshot).await {
                    Ok(upper) => self.images.commit_layer(&upper, &base, &reference).await,
                    Err(err) => {
                        let _ = self.driver.delete_checkpoint(&machine.id, &snapshot).await;
                        return Err(err.into());
                    }
                };
                if let Err(err) = self.driver.delete_checkpoint(&machine.id, &snapshot).await {
                    tracing::warn!(machine = %machine.id, error = ?err, "dropping a commit's snapshot failed");
                }
                (image, None)
            }
        };
        let image = image?;
        metrics::histogram!("hangar_commit_seconds").record(started.elapsed().as_secs_f64());
        self.event(
            &machine,
            "commit",
            "created",
            "user",
            json!({"image": image.reference, "checkpoint": checkpoint}),
        )
        .await;
        let summary = super::images::summary(&image);
        let pushed = if req.push || req.destination.is_some() {
            Some(
                self.push_image(PushImageRequest {
                    reference: image.reference.clone(),
                    destination: req.destination.filter(|d| !d.trim().is_empty()),
                })
                .await?,
            )
        } else {
            None
        };
        Ok(CommitMachineResponse {
            image: summary,
            checkpoint,
            pushed,
        })
    }

    pub async fn diff_checkpoint(
        &self,
        app: &str,
        id: &str,
        from: &str,
        to: Option<&str>,
    ) -> Result<CheckpointDiff> {
        let machine = self.live_machine(app, id).await?;
        let from = self.checkpoint_of(&machine, from).await?;
        let to = match to.filter(|t| !t.is_empty() && *t != "current") {
            Some(to) => Some(self.checkpoint_of(&machine, to).await?),
            None => None,
        };
        Ok(self
            .driver
            .diff(&machine.id, &from.id, to.as_ref().map(|c| c.id.as_str()))
            .await?)
    }

    /// The machine's checkpoint with this id or name, or `checkpoint_not_found`.
    async fn checkpoint_of(
        &self,
        machine: &MachineRecord,
        checkpoint: &str,
    ) -> Result<CheckpointRecord> {
        if let Some(record) = self.store.get_checkpoint(checkpoint).await? {
            if record.machine_id == machine.id {
                return Ok(record);
            }
            return Err(Error::request(
                ErrorCode::CheckpointNotFound,
                format!(
                    "checkpoint {checkpoint} belongs to machine {}, not {}; a machine restores only its own checkpoints, \
                     fork it instead (POST /v1/apps/{}/machines/{}/fork {{\"checkpoint\": \"{checkpoint}\"}})",
                    record.machine_id, machine.id, machine.app, record.machine_id
                ),
            ));
        }
        self.store
            .list_checkpoints(&machine.id)
            .await?
            .into_iter()
            .find(|c| c.name == checkpoint)
            .ok_or_else(|| {
                Error::request(
                    ErrorCode::CheckpointNotFound,
                    format!(
                        "machine {} has no checkpoint {checkpoint:?}; list them with GET /v1/apps/{}/machines/{}/checkpoints",
                        machine.id, machine.app, machine.id
                    ),
                )
            })
    }

    /// Forgets the records of a destroyed machine's checkpoints (the driver removed
    /// the snapshots with the sandbox).
    pub(super) async fn forget_checkpoints(&self, machine: &MachineRecord) {
        match self.store.list_checkpoints(&machine.id).await {
            Ok(records) => {
                for record in records {
                    if let Err(err) = self.store.delete_checkpoint(&record.id).await {
                        tracing::warn!(machine = %machine.id, %err, "could not forget a checkpoint");
                    }
                }
            }
            Err(err) => tracing::warn!(machine = %machine.id, %err, "could not list checkpoints"),
        }
    }
}

/// Refuses a machine in the middle of a transition.
fn check_settled(machine: &MachineRecord, verb: &str) -> Result<()> {
    if matches!(
        machine.state,
        MachineState::Starting
            | MachineState::Stopping
            | MachineState::Suspending
            | MachineState::Replacing
            | MachineState::Destroying
    ) {
        return Err(Error::request(
            ErrorCode::InvalidState,
            format!(
                "machine {} is {}; wait for it to settle (GET .../wait) and {verb} again",
                machine.id, machine.state
            ),
        ));
    }
    Ok(())
}
