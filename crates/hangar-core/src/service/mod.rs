//! The service layer: every operation of the platform, in one place.
//!
//! Callers (REST, MCP, the proxy) turn their input into a call here. An operation
//! takes the machine's lock, checks the lease, moves the state machine (persisting
//! the new state before doing the work it announces), calls the driver, and records
//! an event. The [`reconcile`] module is the other writer: it acts on what the driver
//! reports (exits) and, after a restart, on what it finds on the host.

mod apps;
mod checkpoints;
mod exec;
mod expose;
mod files;
pub mod health;
mod images;
mod jobs;
mod lease;
mod lifecycle;
mod logs;
mod machines;
mod network;
pub mod reconcile;
mod sessions;
mod volumes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use hangar_types::ErrorCode;
use tokio::sync::{OwnedMutexGuard, broadcast};

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::ids::{MachineId, random_hex};
use crate::image::ImageStore;
use crate::model::{EventRecord, MachineRecord};
use crate::network::{Network, NoNetwork};
use crate::state::MachineState;
use crate::store::{Store, StoreError};

pub use checkpoints::MAX_FORKS;
pub use exec::ExecRequest;
pub use files::{FileRead, MAX_FILE_SIZE, WriteFileRequest, parse_mode};
pub use jobs::{DEFAULT_JOB_TIMEOUT, JobRequest, MAX_JOB_STDIN, MAX_JOB_TIMEOUT};
pub use logs::LogFollow;
pub use volumes::MAX_VOLUME_GB;

/// Who is asking, as far as leases go.
#[derive(Clone, Default)]
pub struct Caller {
    /// The `fly-machine-lease-nonce` the caller presented, if any.
    pub lease_nonce: Option<String>,
}

/// A state change, broadcast to `wait` callers and watchers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub machine_id: MachineId,
    pub state: MachineState,
    pub instance_id: String,
}

/// Options the daemon sets once.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    /// The org new apps join when the request names none.
    pub default_org: String,
    /// Apps are served by the edge proxy at `<app>.<base_domain>`.
    pub base_domain: String,
    /// The proxy's public HTTP and HTTPS ports, when it listens.
    pub proxy_http_port: Option<u16>,
    pub proxy_https_port: Option<u16>,
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            default_org: "personal".to_string(),
            base_domain: "hangar.localhost".to_string(),
            proxy_http_port: None,
            proxy_https_port: None,
        }
    }
}

pub struct Service {
    store: Arc<dyn Store>,
    driver: Arc<dyn Driver>,
    images: Arc<dyn ImageStore>,
    options: ServiceOptions,
    network: Arc<dyn Network>,
    locks: Mutex<HashMap<MachineId, Arc<tokio::sync::Mutex<()>>>>,
    /// Held while deciding which machine a volume goes to and recording it, and
    /// while a volume is deleted, extended or copied.
    volume_lock: tokio::sync::Mutex<()>,
    changes: broadcast::Sender<StateChange>,
    jobs: jobs::JobTable,
    health: health::HealthTable,
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        driver: Arc<dyn Driver>,
        images: Arc<dyn ImageStore>,
        options: ServiceOptions,
    ) -> Arc<Self> {
        Self::with_network(store, driver, images, options, Arc::new(NoNetwork))
    }

    /// [`Service::new`] with machines on a private network.
    pub fn with_network(
        store: Arc<dyn Store>,
        driver: Arc<dyn Driver>,
        images: Arc<dyn ImageStore>,
        options: ServiceOptions,
        network: Arc<dyn Network>,
    ) -> Arc<Self> {
        let (changes, _) = broadcast::channel(1024);
        Arc::new(Service {
            store,
            driver,
            images,
            options,
            network,
            locks: Mutex::new(HashMap::new()),
            volume_lock: tokio::sync::Mutex::new(()),
            changes,
            jobs: jobs::JobTable::default(),
            health: health::HealthTable::default(),
        })
    }

    pub fn driver(&self) -> &Arc<dyn Driver> {
        &self.driver
    }

    pub fn images(&self) -> &Arc<dyn ImageStore> {
        &self.images
    }

    /// State changes of every machine, as they are persisted.
    pub fn subscribe(&self) -> broadcast::Receiver<StateChange> {
        self.changes.subscribe()
    }

    /// Serialises operations on one machine.
    async fn lock(&self, id: &MachineId) -> OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.locks.lock().expect("machine lock table poisoned");
            locks.entry(id.clone()).or_default().clone()
        };
        lock.lock_owned().await
    }

    /// The machine `id` of `app`, or `machine_not_found`. Destroyed machines are found
    /// only when `include_destroyed`.
    async fn machine(&self, app: &str, id: &str) -> Result<MachineRecord> {
        let not_found = || {
            Error::request(
                ErrorCode::MachineNotFound,
                format!(
                    "machine {id:?} was not found in app {app:?}; list machines with GET /v1/apps/{app}/machines"
                ),
            )
        };
        let id = MachineId::parse(id).ok_or_else(not_found)?;
        match self.store.get_machine(&id).await? {
            Some(m) if m.app == app => Ok(m),
            _ => Err(not_found()),
        }
    }

    /// Like [`Service::machine`] but refuses destroyed machines.
    async fn live_machine(&self, app: &str, id: &str) -> Result<MachineRecord> {
        let machine = self.machine(app, id).await?;
        if machine.state == MachineState::Destroyed {
            return Err(Error::request(
                ErrorCode::InvalidState,
                format!("machine {id} is destroyed; create a new machine instead"),
            ));
        }
        Ok(machine)
    }

    /// Moves a machine to `to`, persists it, and tells waiters.
    async fn set_state(&self, machine: &mut MachineRecord, to: MachineState) -> Result<()> {
        let was_started = machine.state == MachineState::Started;
        machine.state = machine.state.transition(to)?;
        machine.updated_at = Utc::now();
        self.store.update_machine(machine).await?;
        metrics::counter!("hangar_machine_transitions_total", "to" => to.as_str()).increment(1);
        let _ = self.changes.send(StateChange {
            machine_id: machine.id.clone(),
            state: to,
            instance_id: machine.instance_id.clone(),
        });
        if was_started != (to == MachineState::Started) {
            // `<app>.internal` lists started machines only.
            self.sync_network_logged().await;
        }
        Ok(())
    }

    async fn event(
        &self,
        machine: &MachineRecord,
        kind: &str,
        status: &str,
        source: &str,
        request: serde_json::Value,
    ) {
        let event = EventRecord {
            id: random_hex(8),
            machine_id: machine.id.clone(),
            kind: kind.to_string(),
            status: status.to_string(),
            source: source.to_string(),
            timestamp: Utc::now(),
            request,
        };
        if let Err(err) = self.store.insert_event(&event).await {
            tracing::warn!(machine = %machine.id, %err, "could not record event");
        }
    }
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        Error::Store(err.to_string())
    }
}

/// How long `wait` and the CLI wait by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
