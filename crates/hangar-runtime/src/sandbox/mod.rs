//! The `sandbox` driver: each machine is a set of Linux namespaces, cgroups, a
//! seccomp filter and dropped capabilities around an overlay root, with
//! `hangar init` as PID 1.
//!
//! Layout on the host, per driver (`state_dir`):
//!
//! ```text
//! state_dir/init-<hash>          the static init executable, written once
//! state_dir/layers/              writable layers and checkpoints (see [`storage`]),
//!                                volumes (see [`volume`]): they outlive sandboxes,
//!                                which are runtime only
//! state_dir/<machine-id>/
//!     rootfs/                    overlay mount point, mounted only in the machine's
//!                                own mount namespace (empty on the host)
//!     init.sock                  init's control socket
//!     init.pid                   init's host pid and start time
//!     log                        JSON log lines
//!     spec.json boot.json        what the sandbox was created from
//! ```
//!
//! Cgroups live under one parent per state directory (`hangar-<hash>`), so drivers
//! with different state directories never see each other's machines.
//!
//! Verbs live one per file (`create.rs`, `start.rs`, ...), each adding methods to
//! [`SandboxDriver`]; `driver.rs` maps them onto [`hangar_core::driver::Driver`].
//! The daemon process never forks: sandboxes are built by re-executing `boot_exe`
//! (see [`boot`]).

pub mod boot;
mod caps;
mod cgroup;
mod checkpoint;
mod client;
mod connect;
mod create;
mod destroy;
mod diff;
mod driver;
mod exec;
mod files;
mod observe;
mod reroot;
mod resources;
mod rootfs;
mod seccomp;
mod start;
mod stop;
mod storage;
mod suspend;
mod volume;

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hangar_core::MachineId;
use hangar_core::driver::{DriverError, DriverEvent, ExitStatus};
use hangar_init::proto::{ErrorKind, ExitInfo};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use boot::{BOOT_SUBCOMMAND, run_if_requested};
pub use storage::StorageMode;

/// How the sandbox driver is set up.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where machines' writable layers, sockets and logs live. Must not be on a
    /// `noexec` mount (init is executed from here) nor on overlayfs.
    pub state_dir: PathBuf,
    /// The executable re-run as the boot helper with [`BOOT_SUBCOMMAND`]; its `main`
    /// must call [`run_if_requested`] first. Normally `/proc/self/exe`.
    pub boot_exe: PathBuf,
    /// Where machines' writable layers live.
    pub storage: StorageMode,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("no sandbox for machine {0}")]
    NotFound(MachineId),
    #[error("{message}")]
    Rejected {
        id: MachineId,
        kind: ErrorKind,
        message: String,
    },
    #[error("machine {0} is suspended; resume it first")]
    Frozen(MachineId),
    #[error("init of machine {0} is not reachable")]
    Unreachable(MachineId, #[source] io::Error),
    #[error("init protocol: {0}")]
    Protocol(String),
    #[error("timed out {0}")]
    Timeout(String),
    #[error("building the sandbox failed: {0}")]
    Boot(String),
    #[error("connecting the machine to its private network")]
    Network(#[from] hangar_net::NetError),
    #[error("invalid sandbox spec: {0}")]
    InvalidSpec(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl SandboxError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
        let context = context.into();
        move |source| SandboxError::Io { context, source }
    }
}

impl From<SandboxError> for DriverError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::NotFound(id) => DriverError::NotFound(id),
            SandboxError::Rejected { id, kind, message } => match kind {
                ErrorKind::InvalidCommand => DriverError::InvalidCommand(message),
                ErrorKind::NotRunning => DriverError::NotRunning(id),
                ErrorKind::AlreadyRunning => DriverError::AlreadyRunning(id),
                ErrorKind::Busy => DriverError::Busy(message),
                ErrorKind::BadRequest | ErrorKind::Internal => DriverError::Other(message),
            },
            SandboxError::InvalidSpec(m) => DriverError::InvalidCommand(m),
            SandboxError::Unsupported(m) => DriverError::Unsupported(m),
            SandboxError::Io { context, source } => DriverError::Io { context, source },
            other => DriverError::Other(error_chain(&other)),
        }
    }
}

/// The error and its sources, joined: `DriverError::Other` carries only a string.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// State shared with background watch tasks.
struct Shared {
    cgroups: cgroup::Cgroups,
    events: broadcast::Sender<DriverEvent>,
    /// Per machine: the cgroup's OOM-kill count when its main process started, to
    /// tell an OOM kill from any other SIGKILL.
    oom_baseline: Mutex<HashMap<MachineId, u64>>,
    /// Held while creating or removing the parent cgroup, so removing an empty
    /// parent never races with a machine being created in it.
    cgroup_parent: Mutex<()>,
}

impl Shared {
    fn exit_status(&self, id: &MachineId, exit: ExitInfo) -> ExitStatus {
        let oom_killed = exit.signal == Some(libc::SIGKILL) && {
            let base = lock(&self.oom_baseline).get(id).copied().unwrap_or(0);
            self.cgroups.oom_kills(id) > base
        };
        ExitStatus {
            code: exit.code,
            signal: exit.signal,
            oom_killed,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Linux sandbox driver. Cheap to share behind an `Arc`; dropping it stops its
/// background tasks but leaves every machine running.
pub struct SandboxDriver {
    config: SandboxConfig,
    init_path: PathBuf,
    storage: storage::Storage,
    volumes: volume::Volumes,
    shared: Arc<Shared>,
    watches: Mutex<HashMap<MachineId, JoinHandle<()>>>,
    /// Serialises create, destroy and observe of one machine.
    locks: Mutex<HashMap<MachineId, Arc<tokio::sync::Mutex<()>>>>,
    /// Each machine's network namespace, with the init pid it was opened through.
    netns: Mutex<HashMap<MachineId, (i32, Arc<std::os::fd::OwnedFd>)>>,
    /// The latest spare layer each machine asked for (a counter per machine), so a
    /// burst of checkpoints makes one spare, for the last.
    spares: Arc<Mutex<HashMap<MachineId, u64>>>,
}

/// The longest unix socket path the kernel accepts, minus its NUL.
const MAX_SOCKET_PATH: usize = 107;

impl SandboxDriver {
    /// Prepares `state_dir` (creating it, writing the init executable) and finds the
    /// host's cgroup layout. Machines already in `state_dir` are adopted lazily by
    /// `observe`.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        std::fs::create_dir_all(&config.state_dir).map_err(SandboxError::io(format!(
            "creating {}",
            config.state_dir.display()
        )))?;
        let state_dir = config
            .state_dir
            .canonicalize()
            .map_err(SandboxError::io("resolving the state directory"))?;
        let socket_len = state_dir.join("0".repeat(MachineId::LEN)).join("init.sock");
        if socket_len.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(SandboxError::InvalidSpec(format!(
                "state directory {} is too long for unix socket paths",
                state_dir.display()
            )));
        }
        let hash = hex::encode(Sha256::digest(state_dir.as_os_str().as_encoded_bytes()));
        let cgroups = cgroup::Cgroups::detect(format!("hangar-{}", &hash[..8]))?;
        let init_path = install_init(&state_dir)?;
        let storage = storage::Storage::open(&state_dir, &config.storage)?;
        let volumes = volume::Volumes::open(&state_dir.join("layers"))?;
        let (events, _) = broadcast::channel(1024);
        Ok(SandboxDriver {
            config: SandboxConfig {
                state_dir,
                ..config
            },
            init_path,
            storage,
            volumes,
            shared: Arc::new(Shared {
                cgroups,
                events,
                oom_baseline: Mutex::new(HashMap::new()),
                cgroup_parent: Mutex::new(()),
            }),
            watches: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            spares: Arc::default(),
            netns: Mutex::new(HashMap::new()),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.config.state_dir
    }

    /// Whether writable layers are btrfs subvolumes (so checkpoints work).
    pub fn has_checkpoints(&self) -> bool {
        self.storage.is_btrfs()
    }

    /// The machine's cgroup directories (whether or not they exist), for
    /// diagnostics and metrics.
    pub fn cgroup_dirs(&self, id: &MachineId) -> Vec<PathBuf> {
        self.shared.cgroups.machine_dirs(id)
    }

    /// Init's pid on the host, while it runs.
    pub fn init_host_pid(&self, id: &MachineId) -> Option<i32> {
        self.init_pid(id)
    }

    /// The capability mask (as `CapEff` in `/proc/PID/status`) of a machine's root.
    pub fn kept_capabilities() -> u64 {
        caps::kept_mask()
    }

    fn machine_dir(&self, id: &MachineId) -> PathBuf {
        self.config.state_dir.join(id.as_str())
    }

    fn socket(&self, id: &MachineId) -> PathBuf {
        self.machine_dir(id).join("init.sock")
    }

    fn pidfile(&self, id: &MachineId) -> PathBuf {
        self.machine_dir(id).join("init.pid")
    }

    fn machine_lock(&self, id: &MachineId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(id.clone()).or_default().clone()
    }

    /// Init's host pid, if the process recorded in the pidfile still runs.
    fn init_pid(&self, id: &MachineId) -> Option<i32> {
        let text = std::fs::read_to_string(self.pidfile(id)).ok()?;
        let mut parts = text.split_whitespace();
        let pid: i32 = parts.next()?.parse().ok()?;
        let start: u64 = parts.next()?.parse().ok()?;
        // A recycled pid has a different start time.
        (proc_start_time(pid) == Some(start) && !is_zombie(pid)).then_some(pid)
    }

    fn ensure_exists(&self, id: &MachineId) -> Result<(), SandboxError> {
        if self.socket(id).exists() {
            Ok(())
        } else {
            Err(SandboxError::NotFound(id.clone()))
        }
    }
}

impl Drop for SandboxDriver {
    fn drop(&mut self) {
        for (_, task) in lock(&self.watches).drain() {
            task.abort();
        }
    }
}

/// Writes the embedded init executable under a content-hashed name, once.
fn install_init(state_dir: &Path) -> Result<PathBuf, SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    let hash = hex::encode(Sha256::digest(crate::INIT_BINARY));
    let name = format!("init-{}", &hash[..16]);
    let path = state_dir.join(&name);
    if !path.exists() {
        let tmp = state_dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, crate::INIT_BINARY)
            .map_err(SandboxError::io(format!("writing {}", tmp.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(SandboxError::io("making init executable"))?;
        std::fs::rename(&tmp, &path).map_err(SandboxError::io("installing init"))?;
    }
    // Older inits are only needed while a sandbox boots from them.
    if let Ok(dir) = std::fs::read_dir(state_dir) {
        for entry in dir.flatten() {
            let n = entry.file_name();
            let n = n.to_string_lossy();
            if n.starts_with("init-") && n != name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(path)
}

/// Field 22 of `/proc/PID/stat`: when the process started, in clock ticks.
pub(crate) fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rfind(')')
                .and_then(|i| s[i + 1..].split_whitespace().next().map(|st| st == "Z"))
        })
        .unwrap_or(false)
}
