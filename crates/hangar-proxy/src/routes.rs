//! The machines of each app, kept between requests so routing a request does not read
//! the store. Every state change the service broadcasts drops the lists holding that
//! machine (a new machine drops them all) before the next request routes, and closes
//! the machine's idle upstream connections when it leaves `started`; changes that are
//! not state changes (a new `services` entry on a running machine, a machine created
//! without starting) show within [`FRESH_FOR`]. Empty lists and failed reads are not
//! kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hangar_core::MachineId;
use hangar_core::config::{self, ServiceConfig};
use hangar_core::service::StateChange;
use hangar_core::state::MachineState;
use tokio::sync::broadcast::{self, error::TryRecvError};

use crate::Proxy;
use crate::pool::Pool;

/// How long a list of machines is used without reading it again.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);
/// How often idle upstream connections are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// One machine as routing sees it, its services parsed once when its app's list is
/// read rather than on every request.
#[derive(Debug)]
pub(crate) struct Routed {
    pub id: String,
    pub machine_id: Option<MachineId>,
    pub state: String,
    pub services: Vec<ServiceConfig>,
}

/// An app's machines, in the order they were created.
pub(crate) type Machines = Arc<Vec<Arc<Routed>>>;

/// An app's machines and when they were read.
type Kept = (Machines, Instant);

pub(crate) struct Routes {
    apps: Mutex<HashMap<String, Kept>>,
    /// Bumped by every change applied, so a list read from the store while one
    /// arrived is not kept.
    generation: AtomicU64,
    changes: Mutex<broadcast::Receiver<StateChange>>,
}

impl Routes {
    pub fn new(changes: broadcast::Receiver<StateChange>) -> Self {
        Routes {
            apps: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            changes: Mutex::new(changes),
        }
    }

    /// Applies every state change broadcast so far.
    pub fn sync(&self, pool: &Pool) {
        let mut changes = self.changes.lock().expect("route changes poisoned");
        loop {
            match changes.try_recv() {
                Ok(change) => self.apply(&change, pool),
                Err(TryRecvError::Lagged(_)) => {
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    self.apps.lock().expect("route cache poisoned").clear();
                    pool.sweep();
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => return,
            }
        }
    }

    fn apply(&self, change: &StateChange, pool: &Pool) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        let id = change.machine_id.as_str();
        let mut apps = self.apps.lock().expect("route cache poisoned");
        let before = apps.len();
        apps.retain(|_, (machines, _)| machines.iter().all(|m| m.id != id));
        if apps.len() == before {
            // A machine no list holds yet: it may be new to any app.
            apps.clear();
        }
        drop(apps);
        if change.state != MachineState::Started {
            pool.forget(id);
        }
    }

    fn get(&self, app: &str) -> Option<Machines> {
        let apps = self.apps.lock().expect("route cache poisoned");
        let (machines, read) = apps.get(app)?;
        (read.elapsed() < FRESH_FOR).then(|| machines.clone())
    }

    pub fn forget_app(&self, app: &str) {
        self.apps.lock().expect("route cache poisoned").remove(app);
    }
}

impl Proxy {
    /// The app's machines (not destroyed), from the cache or else the service.
    pub(crate) async fn machines(&self, app: &str) -> hangar_core::Result<Machines> {
        self.routes.sync(&self.pool);
        if let Some(machines) = self.routes.get(app) {
            return Ok(machines);
        }
        let generation = self.routes.generation.load(Ordering::SeqCst);
        let machines: Vec<Arc<Routed>> = self
            .service
            .list_machines(app, false)
            .await?
            .into_iter()
            .map(|m| {
                Arc::new(Routed {
                    machine_id: MachineId::parse(&m.id),
                    // Checked when the machine was created or updated.
                    services: config::services(&m.config).unwrap_or_default(),
                    id: m.id,
                    state: m.state,
                })
            })
            .collect();
        let machines = Arc::new(machines);
        self.routes.sync(&self.pool);
        if !machines.is_empty() && self.routes.generation.load(Ordering::SeqCst) == generation {
            self.routes
                .apps
                .lock()
                .expect("route cache poisoned")
                .insert(app.to_string(), (machines.clone(), Instant::now()));
        }
        Ok(machines)
    }
}

/// Applies state changes as they come even while no request arrives, so idle
/// connections to a stopped machine close, and sweeps idle connections; ends with
/// the proxy.
pub(crate) fn spawn_watcher(proxy: &Arc<Proxy>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let mut changes = proxy.service.subscribe();
    let weak: Weak<Proxy> = Arc::downgrade(proxy);
    runtime.spawn(async move {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        loop {
            let closed = tokio::select! {
                got = changes.recv() => matches!(got, Err(broadcast::error::RecvError::Closed)),
                _ = sweep.tick() => false,
            };
            let Some(proxy) = weak.upgrade() else { return };
            proxy.routes.sync(&proxy.pool);
            proxy.pool.sweep();
            if closed {
                return;
            }
        }
    });
}
