//! The runtime driver boundary: what the service layer asks of whatever runs machines.
//!
//! A driver owns a machine's *sandbox*: its root filesystem, cgroup, namespaces and the
//! `hangar init` process that lives in it. The sandbox outlives the machine's own
//! process: a stopped machine keeps its sandbox so that `start` only spawns a process.
//! Sandboxes also outlive the daemon; a restarted daemon finds them with
//! [`Driver::list`] and [`Driver::observe`].
//!
//! Drivers know nothing of apps, leases or HTTP; the service layer knows nothing of
//! namespaces or mounts.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::ids::MachineId;

pub use hangar_types::{CheckpointDiff, DiffEntry, FileEntry, FileType};

/// Everything needed to build a machine's sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    pub machine_id: MachineId,
    /// Read-only image layers, lowest first (the order OCI lists them).
    pub layers: Vec<PathBuf>,
    pub resources: Resources,
    /// Volumes mounted into the machine, from `config.mounts`.
    pub mounts: Vec<VolumeMount>,
    /// The machine's private interface; `None` means loopback only.
    pub network: Option<crate::network::NetworkSpec>,
}

/// A volume and where it appears inside the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// The volume's id.
    pub volume: String,
    /// An absolute path inside the machine, already validated.
    pub path: String,
}

/// What a new volume starts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeOrigin {
    /// An empty file system.
    Empty,
    /// A copy of this snapshot.
    Snapshot(String),
    /// A copy of this volume as it is now.
    Volume(String),
}

/// Where a volume is mounted right now, so the driver can reach its file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub machine_id: MachineId,
    pub path: String,
}

/// A volume's file system usage, as `statfs` reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VolumeUsage {
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_avail: u64,
}

/// The machine's share of the host, from `config.guest`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resources {
    pub cpus: u32,
    pub memory_mb: u64,
    /// Upper bound on tasks (processes and threads) in the machine.
    pub pids_max: u64,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            cpus: 1,
            memory_mb: 256,
            pids_max: 4096,
        }
    }
}

/// The machine's main process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub argv: Vec<String>,
    /// `KEY=value` pairs, already merged from the image and the machine config.
    pub env: Vec<String>,
    /// Working directory inside the machine; `/` when empty.
    pub cwd: String,
    /// `user`, `uid`, `user:group` or `uid:gid`; root when empty.
    pub user: String,
    /// Files written into the machine before the process starts.
    pub files: Vec<GuestFile>,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestFile {
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
}

impl std::fmt::Debug for GuestFile {
    // File contents may be secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestFile")
            .field("path", &self.path)
            .field("len", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// A command run beside the main process (`exec`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecSpec {
    /// Names the running command for [`Driver::signal_exec`]; anonymous when empty.
    pub id: String,
    pub argv: Vec<String>,
    /// Extra `KEY=value` pairs on top of the main process's environment.
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub stdin: Vec<u8>,
    /// Keep stdin open after `stdin` for [`Driver::write_exec_stdin`] (needs an `id`);
    /// otherwise the command reads end of file after `stdin`.
    pub keep_stdin: bool,
    /// The command is killed (SIGKILL, with its process group) after this long.
    pub timeout: Duration,
}

/// Receives a running command's output as it is written (`true` for stderr).
pub type OutputSink = dyn Fn(bool, &[u8]) + Send + Sync;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// How the command ended.
    pub status: ExitStatus,
    /// The command was killed because it ran past its timeout.
    pub timed_out: bool,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// Exit code if it exited, `128 + signal` if a signal ended it.
    pub code: i32,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    /// The kernel's OOM killer ended it.
    pub oom_killed: bool,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == 0 && self.signal.is_none()
    }
}

/// What a driver sees of a machine on the host right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Observed {
    /// No sandbox: never created, destroyed, or lost with a host reboot.
    Absent,
    /// The sandbox exists and no main process runs.
    Idle { last_exit: Option<ExitStatus> },
    /// The main process runs.
    Running { pid: u32 },
    /// The machine's processes are frozen (suspended).
    Frozen,
}

/// What a driver reports on its own, as it happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverEvent {
    /// The machine's main process ended (by itself, by a signal, or killed by a stop).
    Exited {
        machine_id: MachineId,
        status: ExitStatus,
    },
}

/// One process inside a machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    pub pid: i64,
    pub command: String,
    pub cwd: String,
    pub rss_bytes: u64,
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub listen_sockets: Vec<(String, String)>,
}

/// A regular file read from inside a machine.
#[derive(Clone, PartialEq)]
pub struct FileData {
    pub contents: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    pub mtime: i64,
}

impl std::fmt::Debug for FileData {
    // File contents may be secrets: never print them.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileData")
            .field("len", &self.contents.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish()
    }
}

/// How a file is written into a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteOptions {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Missing parent directories are created (mode 0755, owned by root).
    pub parents: bool,
}

/// Why a path inside a machine could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathErrorKind {
    NotFound,
    NotADirectory,
    IsADirectory,
    /// A directory that must be empty is not.
    NotEmpty,
    /// Not a regular file (device, FIFO, socket) where one is needed.
    NotRegular,
    /// Relative, NUL, a forbidden tree, a mount crossing or a symlink loop.
    Invalid,
    /// Larger than the files API moves in one request.
    TooLarge,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// A path inside the machine that cannot be used; `why` is shown to the caller.
    #[error("{path}: {why}")]
    Path {
        kind: PathErrorKind,
        path: String,
        why: String,
    },
    #[error("no sandbox for machine {0}")]
    NotFound(MachineId),
    #[error("machine {0} has no running process")]
    NotRunning(MachineId),
    #[error("machine {0} is already running a process")]
    AlreadyRunning(MachineId),
    /// Try again shortly (a command has not read the input it was sent yet).
    #[error("{0}")]
    Busy(String),
    #[error("command not runnable: {0}")]
    InvalidCommand(String),
    #[error("the host does not support this: {0}")]
    Unsupported(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl DriverError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DriverError::Io {
            context: context.into(),
            source,
        }
    }
}

/// What runs machines. Every method is idempotent where it makes sense: `create` of an
/// existing sandbox, `destroy` of an absent one and `stop` of an idle one succeed.
#[async_trait]
pub trait Driver: Send + Sync + 'static {
    /// A short name for logs and metrics (`sandbox`, `fake`).
    fn name(&self) -> &'static str;

    /// Builds the sandbox with no main process running.
    async fn create(&self, spec: &SandboxSpec) -> Result<(), DriverError>;

    /// Starts the main process; returns once it has been executed (or failed to be).
    async fn start(&self, id: &MachineId, process: &ProcessSpec) -> Result<(), DriverError>;

    /// Sends `signal` to the main process, waits up to `timeout` for it to end, then
    /// kills every process in the machine. Returns how the main process ended, or
    /// `None` when nothing was running.
    async fn stop(
        &self,
        id: &MachineId,
        signal: i32,
        timeout: Duration,
    ) -> Result<Option<ExitStatus>, DriverError>;

    /// Sends a signal to the main process.
    async fn signal(&self, id: &MachineId, signal: i32) -> Result<(), DriverError>;

    /// Runs a command in the machine beside the main process and collects its output.
    async fn exec(&self, id: &MachineId, exec: &ExecSpec) -> Result<ExecOutput, DriverError>;

    /// [`Driver::exec`], also handing output to `sink` while the command runs. The
    /// returned output is all of it, streamed or not. A driver that can tell calls
    /// `sink` once with empty stdout as soon as the command runs (and can be sent
    /// stdin); others never call it with nothing.
    async fn exec_streaming(
        &self,
        id: &MachineId,
        exec: &ExecSpec,
        sink: &OutputSink,
    ) -> Result<ExecOutput, DriverError> {
        let _ = sink;
        self.exec(id, exec).await
    }

    /// Sends `signal` to the process group of the running [`ExecSpec`] named
    /// `exec_id`. [`DriverError::NotRunning`] when no such command runs.
    async fn signal_exec(
        &self,
        id: &MachineId,
        exec_id: &str,
        signal: i32,
    ) -> Result<(), DriverError> {
        let _ = (id, exec_id, signal);
        Err(DriverError::Unsupported(format!(
            "the {} driver cannot signal a running command",
            self.name()
        )))
    }

    /// Writes `data` to the stdin of the running [`ExecSpec`] named `exec_id`, which
    /// was started with `keep_stdin`; `eof` closes its stdin once `data` is written.
    /// [`DriverError::NotRunning`] when no such command runs or its stdin is closed.
    async fn write_exec_stdin(
        &self,
        id: &MachineId,
        exec_id: &str,
        data: &[u8],
        eof: bool,
    ) -> Result<(), DriverError> {
        let _ = (id, exec_id, data, eof);
        Err(DriverError::Unsupported(format!(
            "the {} driver cannot send input to a running command",
            self.name()
        )))
    }

    /// Lists the processes in the machine.
    async fn ps(&self, id: &MachineId) -> Result<Vec<ProcessInfo>, DriverError>;

    /// Freezes every process in the machine, memory kept.
    async fn suspend(&self, id: &MachineId) -> Result<(), DriverError>;

    /// Thaws a suspended machine.
    async fn resume(&self, id: &MachineId) -> Result<(), DriverError>;

    /// Changes the cgroup limits of an existing sandbox.
    async fn update_resources(
        &self,
        id: &MachineId,
        resources: Resources,
    ) -> Result<(), DriverError>;

    /// Removes the sandbox and everything it holds (processes, mounts, cgroup, the
    /// writable layer).
    async fn destroy(&self, id: &MachineId) -> Result<(), DriverError>;

    /// What is on the host for this machine now.
    async fn observe(&self, id: &MachineId) -> Result<Observed, DriverError>;

    /// Every sandbox this driver has on the host, so a restarted daemon can adopt them
    /// and remove the ones no machine owns.
    async fn list(&self) -> Result<Vec<MachineId>, DriverError>;

    /// Events as they happen, for every machine of this driver.
    fn subscribe(&self) -> broadcast::Receiver<DriverEvent>;

    /// The machine's log file: JSON lines of [`hangar_types::LogLine`].
    fn log_path(&self, id: &MachineId) -> PathBuf;

    /// Takes an immutable snapshot, named `checkpoint`, of the machine's writable
    /// layer; running processes are frozen for the instant it takes.
    async fn checkpoint(&self, id: &MachineId, checkpoint: &str) -> Result<(), DriverError> {
        let _ = (id, checkpoint);
        Err(unsupported(self.name()))
    }

    /// Deletes a checkpoint; an absent one is fine.
    async fn delete_checkpoint(&self, id: &MachineId, checkpoint: &str) -> Result<(), DriverError> {
        let _ = (id, checkpoint);
        Err(unsupported(self.name()))
    }

    /// Rebuilds the sandbox (no main process running) with the writable layer exactly
    /// as it was at `checkpoint`.
    async fn restore(&self, spec: &SandboxSpec, checkpoint: &str) -> Result<(), DriverError> {
        let _ = (spec, checkpoint);
        Err(unsupported(self.name()))
    }

    /// Builds a new machine's sandbox whose writable layer starts as `source`'s
    /// `checkpoint`, independent from then on.
    async fn fork(
        &self,
        source: &MachineId,
        checkpoint: &str,
        spec: &SandboxSpec,
    ) -> Result<(), DriverError> {
        let _ = (source, checkpoint, spec);
        Err(unsupported(self.name()))
    }

    /// The upper directory of the machine's checkpoint `checkpoint` (read-only, with
    /// overlay whiteouts and opaque markers as on disk), for packing as an image layer.
    async fn checkpoint_upper(
        &self,
        id: &MachineId,
        checkpoint: &str,
    ) -> Result<PathBuf, DriverError> {
        let _ = (id, checkpoint);
        Err(unsupported(self.name()))
    }

    /// What changed in the machine's layer from `from` to `to` (a checkpoint, or the
    /// live layer when `None`).
    async fn diff(
        &self,
        id: &MachineId,
        from: &str,
        to: Option<&str>,
    ) -> Result<CheckpointDiff, DriverError> {
        let _ = (id, from, to);
        Err(unsupported(self.name()))
    }

    /// Reads a regular file inside the machine (started or stopped), at most
    /// `max_len` bytes. Every path is resolved inside the machine's root.
    async fn read_file(
        &self,
        id: &MachineId,
        path: &str,
        max_len: u64,
    ) -> Result<FileData, DriverError> {
        let _ = (id, path, max_len);
        Err(no_files(self.name()))
    }

    /// Lists a directory inside the machine.
    async fn list_files(&self, id: &MachineId, path: &str) -> Result<Vec<FileEntry>, DriverError> {
        let _ = (id, path);
        Err(no_files(self.name()))
    }

    /// Creates or atomically replaces a file inside the machine.
    async fn write_file(
        &self,
        id: &MachineId,
        path: &str,
        contents: Vec<u8>,
        options: WriteOptions,
    ) -> Result<(), DriverError> {
        let _ = (id, path, contents, options);
        Err(no_files(self.name()))
    }

    /// Creates a directory inside the machine; an existing directory is fine.
    async fn make_dir(
        &self,
        id: &MachineId,
        path: &str,
        mode: u32,
        parents: bool,
    ) -> Result<(), DriverError> {
        let _ = (id, path, mode, parents);
        Err(no_files(self.name()))
    }

    /// Removes a file, a symlink (not its target) or, with `recursive`, a directory.
    async fn remove_file(
        &self,
        id: &MachineId,
        path: &str,
        recursive: bool,
    ) -> Result<(), DriverError> {
        let _ = (id, path, recursive);
        Err(no_files(self.name()))
    }

    /// Opens a TCP connection to `port` on the machine's loopback, from inside the
    /// machine's network namespace: the edge proxy reaches services this way without
    /// any host-side network.
    async fn connect(
        &self,
        id: &MachineId,
        port: u16,
    ) -> Result<tokio::net::TcpStream, DriverError> {
        let _ = (id, port);
        Err(DriverError::Unsupported(format!(
            "the {} driver cannot connect to machines",
            self.name()
        )))
    }

    /// Rebuilds the sandbox with an empty writable layer (`config.rootfs: ephemeral`).
    async fn reset(&self, spec: &SandboxSpec) -> Result<(), DriverError> {
        self.destroy(&spec.machine_id).await?;
        self.create(spec).await
    }

    /// Rebuilds the sandbox (no main process running) from a new spec (other image
    /// layers, other volumes), keeping its writable layer.
    async fn rebuild(&self, spec: &SandboxSpec) -> Result<(), DriverError> {
        let _ = spec;
        Err(DriverError::Unsupported(format!(
            "the {} driver cannot rebuild a sandbox",
            self.name()
        )))
    }

    /// Creates a volume of `size` bytes. A volume forked from another that is mounted
    /// (`source_attached`) is copied with its file system frozen for the instant. On
    /// failure nothing of it is left.
    async fn create_volume(
        &self,
        id: &str,
        size: u64,
        origin: &VolumeOrigin,
        source_attached: Option<&Attachment>,
    ) -> Result<(), DriverError> {
        let _ = (id, size, origin, source_attached);
        Err(no_volumes(self.name()))
    }

    /// Grows a volume and its file system to `size` bytes, while mounted if it is.
    /// Returns false when a mounted file system can only grow the next time the
    /// volume is attached (the host withholds online resizing).
    async fn extend_volume(
        &self,
        id: &str,
        size: u64,
        attached: Option<&Attachment>,
    ) -> Result<bool, DriverError> {
        let _ = (id, size, attached);
        Err(no_volumes(self.name()))
    }

    /// Takes a consistent copy of the volume, named `snapshot`; a mounted volume's
    /// file system is frozen for the instant it takes. Returns its size in bytes.
    async fn snapshot_volume(
        &self,
        id: &str,
        snapshot: &str,
        attached: Option<&Attachment>,
    ) -> Result<u64, DriverError> {
        let _ = (id, snapshot, attached);
        Err(no_volumes(self.name()))
    }

    /// The volume's file system usage while it is mounted.
    async fn volume_usage(&self, id: &str, attached: &Attachment) -> Option<VolumeUsage> {
        let _ = (id, attached);
        None
    }

    /// Deletes a volume; an absent one is fine.
    async fn delete_volume(&self, id: &str) -> Result<(), DriverError> {
        let _ = id;
        Err(no_volumes(self.name()))
    }

    /// Deletes a volume snapshot; an absent one is fine.
    async fn delete_volume_snapshot(&self, snapshot: &str) -> Result<(), DriverError> {
        let _ = snapshot;
        Err(no_volumes(self.name()))
    }
}

fn no_volumes(driver: &str) -> DriverError {
    DriverError::Unsupported(format!("the {driver} driver has no volumes"))
}

fn no_files(driver: &str) -> DriverError {
    DriverError::Unsupported(format!("the {driver} driver has no files API"))
}

fn unsupported(driver: &str) -> DriverError {
    DriverError::Unsupported(format!("the {driver} driver has no checkpoints"))
}
