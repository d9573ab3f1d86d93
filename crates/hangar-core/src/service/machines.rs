//! Machines: create, get, list, update, destroy, wait, events, metadata.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use hangar_types::{
    CreateMachineRequest, ErrorCode, ImageRef, Machine, MachineEvent, UpdateMachineRequest,
};
use rand::seq::SliceRandom;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::{Caller, Service};
use crate::config;
use crate::driver::SandboxSpec;
use crate::error::{Error, Result};
use crate::ids::{MachineId, instance_id};
use crate::image::Image;
use crate::model::{MachineImage, MachineRecord};
use crate::state::MachineState;
use crate::store::StoreError;

/// Events shown inline in a machine's JSON.
const INLINE_EVENTS: u32 = 10;
/// The longest a single `wait` call may block.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

impl Service {
    pub async fn create_machine(
        &self,
        app: &str,
        mut req: CreateMachineRequest,
    ) -> Result<Machine> {
        self.app_record(app).await?;
        config::validate(&req.config)?;
        let name = match req.name.filter(|n| !n.is_empty()) {
            Some(name) => {
                super::apps::validate_name("name", &name)?;
                name
            }
            None => friendly_name(),
        };
        let (image, pull) = self.resolve_for_machine(&req.config.image).await?;
        let id = MachineId::generate();
        // Refuse a config whose command cannot be worked out before creating anything.
        config::process(id.as_str(), app, &req.config, &image.config)?;
        // Held until the record naming the volumes is stored: no other machine can
        // take them in between.
        let attach_guard = self.volume_lock.lock().await;
        self.resolve_mounts(app, &mut req.config, None).await?;

        let now = Utc::now();
        let mut machine = MachineRecord {
            id: id.clone(),
            app: app.to_string(),
            name,
            state: MachineState::Created,
            instance_id: instance_id(),
            private_ip: String::new(),
            config: req.config,
            image_ref: image_ref(&image),
            created_at: now,
            updated_at: now,
            restart_count: 0,
            lease: None,
            image: MachineImage {
                layers: image.layers.clone(),
                config: image.config.clone(),
            },
        };
        self.insert_new_machine(&machine).await?;
        drop(attach_guard);
        let _guard = self.lock(&id).await;
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
        self.record_pull(&machine, pull).await;
        self.event(
            &machine,
            "launch",
            "created",
            "user",
            json!({"config": machine.config}),
        )
        .await;

        let started = std::time::Instant::now();
        if let Err(err) = self.driver.create(&spec).await {
            // Nothing is left half-created: the sandbox and the record go together.
            tracing::error!(machine = %id, error = ?err, "creating the sandbox failed");
            if let Err(cleanup) = self.driver.destroy(&id).await {
                tracing::error!(machine = %id, error = ?cleanup, "removing a half-created sandbox failed");
            }
            self.release_address(&id).await;
            self.store.delete_machine(&id).await?;
            return Err(err.into());
        }
        if spec.network.is_some() {
            self.sync_network_logged().await;
        }
        metrics::histogram!("hangar_machine_create_seconds")
            .record(started.elapsed().as_secs_f64());

        if let Some(ttl) = req.lease_ttl {
            let lease = self.new_lease(&machine, ttl, None);
            machine.lease = Some(lease);
            self.store.update_machine(&machine).await?;
        }
        if !req.skip_launch {
            self.start_locked(&mut machine, "user").await?;
        }
        self.view(&machine).await
    }

    pub async fn get_machine(&self, app: &str, id: &str) -> Result<Machine> {
        let machine = self.machine(app, id).await?;
        self.view(&machine).await
    }

    pub async fn list_machines(&self, app: &str, include_deleted: bool) -> Result<Vec<Machine>> {
        self.app_record(app).await?;
        let mut out = Vec::new();
        for machine in self.store.list_machines(Some(app), include_deleted).await? {
            out.push(self.view(&machine).await?);
        }
        Ok(out)
    }

    /// Replaces the machine's config. A new image means a new root filesystem unless
    /// `rootfs_reset` is false (the machine's files stay on top of the new image);
    /// `rootfs_reset: true` empties the writable layer even for the same image. New
    /// `config.mounts` rebuild the sandbox around the same layer. The machine is
    /// started afterwards unless `skip_launch`.
    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        req: UpdateMachineRequest,
        caller: &Caller,
    ) -> Result<Machine> {
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        if let Some(version) = &req.current_version
            && *version != machine.instance_id
        {
            return Err(Error::request(
                ErrorCode::VersionMismatch,
                format!(
                    "current_version {version:?} is not the machine's instance_id {:?}; fetch the machine again and retry",
                    machine.instance_id
                ),
            ));
        }
        config::validate(&req.config)?;
        let image = self.images.resolve(&req.config.image, None).await?;
        config::process(machine.id.as_str(), app, &req.config, &image.config)?;
        if let Some(name) = req.name.filter(|n| !n.is_empty() && *n != machine.name) {
            super::apps::validate_name("name", &name)?;
            machine.name = name;
        }

        let mut new_config = req.config;
        {
            // Checked now so a taken volume refuses the update before the machine stops.
            let _attach = self.volume_lock.lock().await;
            self.resolve_mounts(app, &mut new_config, Some(&machine.id))
                .await?;
        }

        if matches!(
            machine.state,
            MachineState::Started | MachineState::Starting | MachineState::Suspended
        ) {
            self.stop_locked(&mut machine, None, None).await?;
        }
        let image_changed = machine.image.layers != image.layers;
        let mounts_changed =
            config::volume_mounts(&machine.config) != config::volume_mounts(&new_config);
        // A new image means a new root unless the caller keeps the machine's files; the
        // writable layer's checkpoints stay either way, they are the machine's history.
        let reset = req.rootfs_reset.unwrap_or(image_changed);
        machine.config = new_config;
        machine.image_ref = image_ref(&image);
        machine.image = MachineImage {
            layers: image.layers.clone(),
            config: image.config.clone(),
        };
        machine.instance_id = instance_id();
        {
            // Checked again and recorded in one step: the new mounts are the
            // machine's from the moment this state is persisted.
            let _attach = self.volume_lock.lock().await;
            self.resolve_mounts(app, &mut machine.config, Some(&machine.id))
                .await?;
            self.set_state(&mut machine, MachineState::Replacing)
                .await?;
        }
        let rebuilt = async {
            if reset {
                self.driver
                    .reset(&self.sandbox_spec(&machine).await?)
                    .await?;
            } else if image_changed || mounts_changed {
                self.driver
                    .rebuild(&self.sandbox_spec(&machine).await?)
                    .await?;
            } else {
                self.driver
                    .update_resources(&machine.id, config::resources(&machine.config))
                    .await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        if let Err(err) = rebuilt {
            self.set_state(&mut machine, MachineState::Failed).await?;
            self.event(
                &machine,
                "update",
                "failed",
                "user",
                json!({"error": err.public_message()}),
            )
            .await;
            return Err(err);
        }
        self.event(
            &machine,
            "update",
            "replaced",
            "user",
            json!({"config": machine.config}),
        )
        .await;
        if req.skip_launch {
            self.set_state(&mut machine, MachineState::Stopped).await?;
        } else {
            self.start_locked(&mut machine, "user").await?;
        }
        self.view(&machine).await
    }

    /// Destroys a machine. A started machine needs `force`.
    pub async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
        caller: &Caller,
    ) -> Result<()> {
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        let running = matches!(
            machine.state,
            MachineState::Started
                | MachineState::Starting
                | MachineState::Suspended
                | MachineState::Suspending
        );
        if running && !force {
            return Err(Error::request(
                ErrorCode::InvalidState,
                format!(
                    "machine {} is {}; stop it first (POST .../stop) or destroy with force=true",
                    machine.id, machine.state
                ),
            ));
        }
        self.destroy_locked(&mut machine, "user").await
    }

    pub(super) async fn destroy_locked(
        &self,
        machine: &mut MachineRecord,
        source: &str,
    ) -> Result<()> {
        if machine.state != MachineState::Destroying {
            self.set_state(machine, MachineState::Destroying).await?;
        }
        self.jobs.forget(&machine.id);
        if let Err(err) = self.driver.destroy(&machine.id).await {
            self.event(
                machine,
                "destroy",
                "failed",
                source,
                json!({"error": err.to_string()}),
            )
            .await;
            self.set_state(machine, MachineState::Failed).await?;
            return Err(err.into());
        }
        machine.lease = None;
        self.forget_checkpoints(machine).await;
        self.release_address(&machine.id).await;
        self.forget_mcp_sessions(&machine.id).await;
        self.set_state(machine, MachineState::Destroyed).await?;
        self.sync_network_logged().await;
        self.event(
            machine,
            "destroy",
            "destroyed",
            source,
            serde_json::Value::Null,
        )
        .await;
        Ok(())
    }

    /// Waits until the machine is in `state` (and, if given, runs `instance_id`).
    pub async fn wait(
        &self,
        app: &str,
        id: &str,
        state: &str,
        timeout: Duration,
        instance: Option<&str>,
    ) -> Result<Machine> {
        let target: MachineState = match state {
            "started" | "stopped" | "destroyed" | "suspended" => {
                state.parse().map_err(Error::bad_request)?
            }
            other => {
                return Err(Error::bad_request(format!(
                    "state {other:?} cannot be waited for: use started, stopped, suspended or destroyed"
                )));
            }
        };
        let timeout = timeout.min(MAX_WAIT);
        let mut changes = self.subscribe();
        let machine = self.machine(app, id).await?;
        let matches = |state: MachineState, inst: &str| {
            state == target && instance.is_none_or(|want| want == inst)
        };
        if matches(machine.state, &machine.instance_id) {
            return self.view(&machine).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = machine.state;
        loop {
            if last == MachineState::Destroyed && target != MachineState::Destroyed {
                return Err(Error::request(
                    ErrorCode::InvalidState,
                    format!("machine {id} was destroyed and will never be {target}"),
                ));
            }
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) => {
                    return Err(Error::request(
                        ErrorCode::Timeout,
                        format!(
                            "machine {id} is {last}, not {target}, after {}s; wait again or check its events and logs",
                            timeout.as_secs()
                        ),
                    ));
                }
                Ok(Ok(change)) if change.machine_id == machine.id => {
                    last = change.state;
                    if matches(change.state, &change.instance_id) {
                        let machine = self.machine(app, id).await?;
                        return self.view(&machine).await;
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(RecvError::Lagged(_))) => {
                    // Missed some changes: read the truth from the store.
                    let machine = self.machine(app, id).await?;
                    last = machine.state;
                    if matches(machine.state, &machine.instance_id) {
                        return self.view(&machine).await;
                    }
                }
                Ok(Err(RecvError::Closed)) => {
                    return Err(Error::Internal("state channel closed".into()));
                }
            }
        }
    }

    /// How many machines are in each state, for metrics.
    pub async fn machine_counts(&self) -> Result<BTreeMap<MachineState, u64>> {
        let mut counts = BTreeMap::new();
        for machine in self.store.list_machines(None, false).await? {
            *counts.entry(machine.state).or_insert(0) += 1;
        }
        Ok(counts)
    }

    pub async fn list_events(&self, app: &str, id: &str) -> Result<Vec<MachineEvent>> {
        let machine = self.machine(app, id).await?;
        let events = self.store.list_events(&machine.id, 200).await?;
        Ok(events.iter().map(|e| e.to_api()).collect())
    }

    pub async fn get_metadata(&self, app: &str, id: &str) -> Result<BTreeMap<String, String>> {
        Ok(self.live_machine(app, id).await?.config.metadata)
    }

    pub async fn set_metadata(
        &self,
        app: &str,
        id: &str,
        key: &str,
        value: Option<String>,
        caller: &Caller,
    ) -> Result<()> {
        if key.is_empty() || key.len() > 256 {
            return Err(Error::bad_request("metadata keys are 1 to 256 characters"));
        }
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        match value {
            Some(value) => {
                machine.config.metadata.insert(key.to_string(), value);
            }
            None => {
                machine.config.metadata.remove(key);
            }
        }
        machine.updated_at = Utc::now();
        self.store.update_machine(&machine).await?;
        Ok(())
    }

    /// Records a new machine; a name taken in its app is `machine_exists`.
    pub(super) async fn insert_new_machine(&self, machine: &MachineRecord) -> Result<()> {
        match self.store.insert_machine(machine).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict) => Err(Error::request(
                ErrorCode::MachineExists,
                format!(
                    "a machine named {:?} already exists in app {:?}; pick another name",
                    machine.name, machine.app
                ),
            )),
            Err(err) => Err(err.into()),
        }
    }

    /// Reads the record again once its lock is held.
    pub(super) async fn reload(&self, machine: &MachineRecord) -> Result<MachineRecord> {
        self.store.get_machine(&machine.id).await?.ok_or_else(|| {
            Error::Internal(format!("machine {} vanished from the store", machine.id))
        })
    }

    pub(super) async fn view(&self, machine: &MachineRecord) -> Result<Machine> {
        let events = self.store.list_events(&machine.id, INLINE_EVENTS).await?;
        let mut api = machine.to_api(events.iter().map(|e| e.to_api()).collect());
        if machine.state != MachineState::Destroyed {
            api.private_ipv4 = self
                .addresses_of(&machine.id)
                .await?
                .map(|(v4, _)| v4.to_string());
        }
        if machine.state == MachineState::Started {
            api.checks = self.check_statuses(&machine.id);
        }
        Ok(api)
    }
}

/// The spec without a network; [`Service::sandbox_spec`] adds it.
pub(super) fn bare_spec(machine: &MachineRecord) -> SandboxSpec {
    SandboxSpec {
        machine_id: machine.id.clone(),
        layers: machine.image.layers.clone(),
        resources: config::resources(&machine.config),
        mounts: config::volume_mounts(&machine.config),
        network: None,
    }
}

fn image_ref(image: &Image) -> ImageRef {
    ImageRef {
        registry: image.source.registry.clone(),
        repository: image.source.repository.clone(),
        tag: image.source.tag.clone(),
        digest: image.source.digest.clone(),
        labels: image.config.labels.clone(),
    }
}

/// A name people can tell apart, like `quiet-river-4821`.
pub(super) fn friendly_name() -> String {
    const ADJECTIVES: [&str; 16] = [
        "quiet", "bold", "brisk", "calm", "eager", "fancy", "gentle", "keen", "lively", "misty",
        "noble", "proud", "rapid", "silent", "sunny", "wild",
    ];
    const NOUNS: [&str; 16] = [
        "river", "forest", "meadow", "harbor", "canyon", "summit", "glade", "delta", "island",
        "prairie", "ridge", "valley", "breeze", "comet", "ember", "frost",
    ];
    let mut rng = rand::thread_rng();
    format!(
        "{}-{}-{:04}",
        ADJECTIVES.choose(&mut rng).expect("non-empty"),
        NOUNS.choose(&mut rng).expect("non-empty"),
        rand::Rng::gen_range(&mut rng, 0..10_000)
    )
}
