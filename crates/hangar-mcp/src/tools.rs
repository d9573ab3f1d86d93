//! The tools: each parses its arguments, calls [`hangar_client::Client`] (the REST
//! API, which calls the service layer) and shapes the answer for a model. No tool
//! does platform work of its own.
//!
//! A tool returns structured content matching its output schema plus a short text;
//! a failure becomes a [`ToolError`] that the server renders as an `isError` result.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use hangar_client::{Client, ClientError, WriteFileOptions};
use hangar_types::*;
use rmcp::model::{ContentBlock, ResourceContents, Tool, ToolAnnotations};
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::output::{DEFAULT_OUTPUT_CAP, cap};

/// How long a foreground exec waits before handing back a job, below the ~60 s
/// timeouts of common MCP clients.
pub const FOREGROUND_WAIT: Duration = Duration::from_secs(30);
/// Largest file a tool writes; bigger content belongs in an image or a volume.
pub const MAX_TOOL_FILE: usize = 8 << 20;

/// Opt-in groups of tools beyond the default set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Toolset {
    Images,
    Apps,
    Volumes,
}

impl Toolset {
    /// `volumes,images,apps` (or `all`).
    pub fn parse_list(s: &str) -> Result<Vec<Toolset>, String> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "images" => out.push(Toolset::Images),
                "apps" => out.push(Toolset::Apps),
                "volumes" => out.push(Toolset::Volumes),
                "all" => out.extend([Toolset::Images, Toolset::Apps, Toolset::Volumes]),
                other => {
                    return Err(format!(
                        "toolset {other:?} is not known: use images, apps, volumes or all"
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// A tool failure as the model sees it.
#[derive(Debug, Clone, thiserror::Error, Serialize, JsonSchema)]
#[error("{error}")]
pub struct ToolError {
    /// What went wrong and what to do next.
    pub error: String,
    /// The stable code from the API (`machine_not_found`, `invalid_state`, ...).
    pub code: String,
    /// Trying the same call again later may succeed.
    pub retryable: bool,
}

impl ToolError {
    pub fn new(code: &str, error: impl Into<String>) -> Self {
        ToolError {
            error: error.into(),
            code: code.into(),
            retryable: false,
        }
    }
}

impl From<ClientError> for ToolError {
    fn from(err: ClientError) -> Self {
        match err {
            ClientError::Api {
                status,
                code,
                message,
            } => ToolError {
                retryable: status >= 500
                    || matches!(code.as_str(), "timeout" | "lease_held" | "unavailable"),
                error: message,
                code,
            },
            ClientError::Unreachable { .. } => ToolError {
                error: format!("{err}; retry once the daemon is back"),
                code: "unreachable".into(),
                retryable: true,
            },
            ClientError::Protocol(message) => ToolError {
                error: format!("the API answered something unexpected: {message}"),
                code: "protocol".into(),
                retryable: false,
            },
        }
    }
}

/// A successful tool answer.
pub struct ToolOutput {
    pub structured: Value,
    pub text: String,
    /// Extra content blocks (a binary file as a resource).
    pub extra: Vec<ContentBlock>,
}

fn out<T: Serialize>(value: &T, text: impl Into<String>) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput {
        structured: serde_json::to_value(value)
            .map_err(|e| ToolError::new("internal", format!("encoding the answer: {e}")))?,
        text: text.into(),
        extra: Vec::new(),
    })
}

/// What every tool call gets: the client acting with the caller's token, and where
/// defaults come from.
#[derive(Clone)]
pub struct Ctx {
    pub client: Client,
    pub default_app: Option<String>,
}

impl Ctx {
    fn app(&self, app: &Option<String>) -> Result<String, ToolError> {
        app.clone()
            .or_else(|| self.default_app.clone())
            .ok_or_else(|| {
                ToolError::new(
                    "bad_request",
                    "no app given: pass \"app\", or start the server with --app / HANGAR_APP",
                )
            })
    }

    /// A machine id from a name or an id within `app`.
    async fn machine(&self, app: &str, machine: &str) -> Result<String, ToolError> {
        let looks_like_id = machine.len() == 14 && machine.bytes().all(|b| b.is_ascii_hexdigit());
        if looks_like_id {
            return Ok(machine.to_string());
        }
        let machines = self.client.list_machines(app).await?;
        machines
            .into_iter()
            .find(|m| m.name == machine || m.id == machine)
            .map(|m| m.id)
            .ok_or_else(|| no_machine(app, machine))
    }

    async fn ensure_app(&self, app: &str) -> Result<(), ToolError> {
        match self.client.get_app(app).await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("app_not_found") => {
                match self.client.create_app(app, None).await {
                    Ok(_) => Ok(()),
                    Err(e) if e.code() == Some("app_exists") => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn no_machine(app: &str, machine: &str) -> ToolError {
    ToolError::new(
        "machine_not_found",
        format!(
            "no machine named {machine:?} in app {app:?}; call machine_list to see its machines or machine_run to create one"
        ),
    )
}

// Arguments.

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RunArgs {
    /// App the machine belongs to (default from the server's configuration); created if missing.
    pub app: Option<String>,
    /// Image reference, e.g. `debian:bookworm`.
    pub image: String,
    /// A name to address the machine by.
    pub name: Option<String>,
    /// The main process; the image's default when absent. Use `["sleep", "inf"]` for a machine you exec into.
    pub command: Option<Vec<String>>,
    /// Environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppArgs {
    pub app: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MachineListArgs {
    pub app: Option<String>,
    /// Only this machine (name or id): its current state.
    pub machine: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LifecycleAction {
    Start,
    Stop,
    Restart,
    Suspend,
    Destroy,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LifecycleArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    pub action: LifecycleAction,
    /// With `destroy`: destroy even a started machine. Needs `confirm: true`.
    #[serde(default)]
    pub force: bool,
    /// Must be true to destroy a machine.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExecArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    /// argv, e.g. `["sh", "-c", "make test"]`.
    pub command: Vec<String>,
    /// Text given to the command's standard input.
    pub stdin: Option<String>,
    /// Keep stdin open (after `stdin`) to send more with job_control action=stdin;
    /// the job is returned at once, as with background.
    #[serde(default)]
    pub stdin_open: bool,
    /// Seconds before the command is killed (default 3600).
    pub timeout_secs: Option<u64>,
    /// Return a job handle at once instead of waiting.
    #[serde(default)]
    pub background: bool,
    /// Bytes of each of stdout and stderr to return (head and tail kept); default 16384.
    pub max_output_bytes: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    /// The job id from exec.
    pub job: String,
    /// stdout byte offset to read from (the previous `next_cursor`).
    #[serde(default)]
    pub cursor: u64,
    /// stderr byte offset to read from (the previous `next_stderr_cursor`).
    #[serde(default)]
    pub stderr_cursor: u64,
    /// Seconds to wait for the job to end first, at most 30.
    pub wait_secs: Option<u64>,
    /// Bytes of each stream to return; default 16384.
    pub max_output_bytes: Option<usize>,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum JobAction {
    /// Send `stdin` text to the job (started with stdin_open); `eof: true` closes it.
    Stdin,
    /// Send `signal`; the job keeps running until it reacts.
    Signal,
    /// Kill the job's processes (or forget a finished job).
    Cancel,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobControlArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    /// The job id from exec.
    pub job: String,
    pub action: JobAction,
    /// With `stdin`: the text to send (add the newline a line-reading program waits for).
    pub stdin: Option<String>,
    /// With `stdin`: close the job's stdin after the text, so a program reading to
    /// the end (`cat`, `sort`) finishes.
    #[serde(default)]
    pub eof: bool,
    /// With `signal`: `SIGTERM`, `SIGINT`, `15`, ...
    pub signal: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PathArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    /// Absolute path inside the machine.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    /// Absolute path inside the machine.
    pub path: String,
    /// Remove a directory and everything in it.
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    /// Absolute path inside the machine.
    pub path: String,
    /// The file's contents: text, or base64 when `base64` is true.
    pub content: String,
    #[serde(default)]
    pub base64: bool,
    /// Permission bits as an octal string, e.g. `"755"` (default 644).
    pub mode: Option<String>,
    /// Create missing parent directories.
    #[serde(default = "yes")]
    pub parents: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointAction {
    Create,
    List,
    Restore,
    Diff,
    Delete,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    pub action: CheckpointAction,
    /// Checkpoint name or id (restore, diff, delete); a name for a new one (create).
    pub checkpoint: Option<String>,
    /// With `diff`: compare against this checkpoint instead of the current state.
    pub to: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForkArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    /// Checkpoint to fork from; the current state when absent.
    pub checkpoint: Option<String>,
    /// The new machine's name.
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExposeArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    /// The port the machine's server listens on.
    pub port: u16,
    /// Start the machine when a request arrives while it is stopped (default true).
    pub autostart: Option<bool>,
    /// `off`, `stop` or `suspend` once idle (default `off`).
    pub autostop: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    pub app: Option<String>,
    /// Machine name or id.
    pub machine: String,
    /// Lines from the end (default 100).
    pub lines: Option<usize>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageArgs {
    /// Image reference, e.g. `debian:bookworm`.
    pub reference: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AppNameArgs {
    pub app: String,
    /// Must be true to delete an app.
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeCreateArgs {
    pub app: Option<String>,
    /// 1 to 30 lowercase letters, digits and `_`; machines mount it by this name.
    pub name: String,
    /// Size in GB (default 1); volumes can grow later, never shrink.
    pub size_gb: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeArgs {
    pub app: Option<String>,
    /// Volume name or id.
    pub volume: String,
}

#[derive(Debug, Clone, Copy, Deserialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotAction {
    Create,
    List,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeSnapshotArgs {
    pub app: Option<String>,
    /// Volume name or id.
    pub volume: String,
    /// `create` a snapshot of the volume as it is now, or `list` its snapshots.
    pub action: SnapshotAction,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeForkArgs {
    pub app: Option<String>,
    /// The new volume's name.
    pub name: String,
    /// Copy this volume (name or id) as it is now.
    pub volume: Option<String>,
    /// Or start from this snapshot id (`vs_...`, from volume_snapshot).
    pub snapshot: Option<String>,
    /// Size in GB; the source's size when absent, never less.
    pub size_gb: Option<u64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VolumeDestroyArgs {
    pub app: Option<String>,
    /// Volume name or id.
    pub volume: String,
    /// Must be true: the volume's data and snapshots are deleted for good.
    #[serde(default)]
    pub confirm: bool,
}

// Outputs.

#[derive(Debug, Serialize, JsonSchema)]
pub struct ExposeOut {
    pub machine_id: String,
    /// The app's URL: requests are balanced across its machines serving this port.
    pub url: String,
    /// This machine only.
    pub machine_url: String,
    pub https_url: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MachineOut {
    pub id: String,
    pub name: String,
    pub app: String,
    pub state: String,
    pub image: String,
    pub private_ip: String,
    pub created_at: String,
}

impl MachineOut {
    fn new(app: &str, m: &Machine) -> Self {
        MachineOut {
            id: m.id.clone(),
            name: m.name.clone(),
            app: app.to_string(),
            state: m.state.clone(),
            image: m.config.image.clone(),
            private_ip: m.private_ip.clone(),
            created_at: m.created_at.clone(),
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct MachineListOut {
    pub app: String,
    pub machines: Vec<MachineOut>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LifecycleOut {
    pub id: String,
    pub action: String,
    /// The machine's state afterwards (`destroyed` once destroyed).
    pub state: String,
}

/// A command's result, or a job handle while it still runs.
#[derive(Debug, Serialize, JsonSchema, Default)]
pub struct ExecOut {
    /// `exited`, `timed_out`, `running` (then poll `job` with job_poll), `cancelled` or `failed`.
    pub state: String,
    /// The background job running or that ran the command.
    pub job: String,
    pub machine_id: String,
    pub exit_code: Option<i32>,
    pub exit_signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Total bytes the command wrote to each stream.
    pub stdout_bytes: u64,
    pub stderr_bytes: u64,
    /// Pass to job_poll as `cursor` / `stderr_cursor` for newer output.
    pub next_cursor: u64,
    pub next_stderr_cursor: u64,
    pub duration_ms: u64,
    pub error: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileOut {
    pub path: String,
    pub size: u64,
    /// Permission bits as octal, e.g. `"644"`.
    pub mode: String,
    /// `utf-8` (in `content`) or `base64` (in `content`, and as a resource block).
    pub encoding: String,
    pub mime_type: String,
    pub content: String,
    pub truncated: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileListOut {
    pub path: String,
    pub entries: Vec<FileEntryOut>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct FileEntryOut {
    pub name: String,
    pub path: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    pub size: u64,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct PathOut {
    pub path: String,
    pub ok: bool,
}

#[derive(Debug, Serialize, JsonSchema, Default)]
pub struct CheckpointOut {
    pub action: String,
    pub machine_id: String,
    /// The checkpoint acted on (create, restore, delete).
    pub checkpoint: Option<CheckpointItem>,
    /// With `list`.
    pub checkpoints: Vec<CheckpointItem>,
    /// With `diff`: paths added, modified and deleted.
    pub added: Vec<String>,
    pub modified: Vec<String>,
    pub deleted: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct CheckpointItem {
    pub id: String,
    pub name: String,
    pub created_at: String,
}

impl From<Checkpoint> for CheckpointItem {
    fn from(c: Checkpoint) -> Self {
        CheckpointItem {
            id: c.id,
            name: c.name,
            created_at: c.created_at,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ForkOut {
    pub checkpoint: String,
    pub machines: Vec<MachineOut>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LogsOut {
    pub machine_id: String,
    pub lines: Vec<LogLineOut>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct LogLineOut {
    pub timestamp: String,
    pub stream: String,
    pub message: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ImagesOut {
    pub images: Vec<ImageOut>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ImageOut {
    pub reference: String,
    pub digest: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AppsOut {
    pub apps: Vec<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct OkOut {
    pub ok: bool,
    pub name: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VolumeOut {
    pub id: String,
    pub name: String,
    /// `created`, or `destroyed` after volume_destroy.
    pub state: String,
    pub size_gb: u64,
    /// The machine that mounts it (through `config.mounts`), if any.
    pub attached_machine_id: Option<String>,
    pub created_at: String,
}

impl From<Volume> for VolumeOut {
    fn from(v: Volume) -> Self {
        VolumeOut {
            id: v.id,
            name: v.name,
            state: v.state,
            size_gb: v.size_gb,
            attached_machine_id: v.attached_machine_id,
            created_at: v.created_at,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VolumeListOut {
    pub app: String,
    pub volumes: Vec<VolumeOut>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SnapshotItem {
    /// Pass to volume_fork as `snapshot`.
    pub id: String,
    pub size: u64,
    pub created_at: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct VolumeSnapshotOut {
    pub action: String,
    pub volume_id: String,
    /// The snapshot taken (create).
    pub snapshot: Option<SnapshotItem>,
    /// The volume's snapshots (list).
    pub snapshots: Vec<SnapshotItem>,
}

impl From<VolumeSnapshot> for SnapshotItem {
    fn from(s: VolumeSnapshot) -> Self {
        SnapshotItem {
            id: s.id,
            size: s.size,
            created_at: s.created_at,
        }
    }
}

// The catalogue.

/// Read-only, destructive, idempotent.
type Hints = (bool, bool, bool);

const READ: Hints = (true, false, true);
const WRITE: Hints = (false, false, false);
const WRITE_IDEMPOTENT: Hints = (false, false, true);
const DESTRUCTIVE: Hints = (false, true, false);
const DESTRUCTIVE_IDEMPOTENT: Hints = (false, true, true);

fn tool<A: JsonSchema + 'static, O: JsonSchema + 'static>(
    name: &'static str,
    title: &str,
    description: &'static str,
    (read_only, destructive, idempotent): Hints,
) -> Tool {
    Tool::new(name, description, Arc::new(serde_json::Map::new()))
        .with_input_schema::<A>()
        .with_output_schema::<O>()
        .with_title(title)
        .with_annotations(
            ToolAnnotations::with_title(title)
                .read_only(read_only)
                .destructive(destructive)
                .idempotent(idempotent)
                .open_world(false),
        )
}

/// Every tool offered with these toolsets.
pub fn catalogue(toolsets: &[Toolset]) -> Vec<Tool> {
    let mut tools = vec![
        tool::<RunArgs, MachineOut>(
            "machine_run",
            "Run a machine",
            "Create a machine from an image and wait until it is started. Returns its id and name. Create once and reuse it: stop it when idle instead of destroying.",
            WRITE,
        ),
        tool::<MachineListArgs, MachineListOut>(
            "machine_list",
            "List machines",
            "The machines of an app with their state, image and address; with machine (name or id), only that one.",
            READ,
        ),
        tool::<LifecycleArgs, LifecycleOut>(
            "machine_lifecycle",
            "Start, stop, suspend or destroy",
            "Start, stop, restart, suspend or destroy a machine. Stopping keeps its files; destroy deletes everything and needs confirm: true.",
            DESTRUCTIVE,
        ),
        tool::<ExecArgs, ExecOut>(
            "exec",
            "Run a command",
            "Run a command in a started machine. Waits up to 30 s; if it still runs, returns state `running` and a job to poll with job_poll. background: true returns the job at once; stdin_open: true too, keeping stdin open for job_control action=stdin. A non-zero exit code is a result, not an error. Output is capped (head and tail kept).",
            WRITE,
        ),
        tool::<JobArgs, ExecOut>(
            "job_poll",
            "Poll a job",
            "A background job's state and its output from a cursor; wait_secs waits for it to end first.",
            READ,
        ),
        tool::<JobControlArgs, ExecOut>(
            "job_control",
            "Send input to, signal or cancel a job",
            "action=stdin sends text to a job started with stdin_open (eof: true closes its stdin); action=signal sends a signal (e.g. SIGTERM) and keeps the job to poll; action=cancel kills its processes (or forgets a finished job). Read what it printed with job_poll.",
            DESTRUCTIVE,
        ),
        tool::<PathArgs, FileOut>(
            "file_read",
            "Read a file",
            "Read a file inside a machine, started or stopped. Text comes back as text; binary as base64 with a MIME type.",
            READ,
        ),
        tool::<WriteArgs, PathOut>(
            "file_write",
            "Write a file",
            "Create or replace a file inside a machine (parents created by default). At most 8 MiB.",
            WRITE_IDEMPOTENT,
        ),
        tool::<PathArgs, FileListOut>(
            "file_list",
            "List a directory",
            "List a directory inside a machine.",
            READ,
        ),
        tool::<DeleteArgs, PathOut>(
            "file_delete",
            "Delete a file",
            "Delete a file, or with recursive: true a directory and its contents.",
            DESTRUCTIVE_IDEMPOTENT,
        ),
        tool::<CheckpointArgs, CheckpointOut>(
            "checkpoint",
            "Checkpoints",
            "Snapshot a machine's filesystem (create), list snapshots, restore one (the machine restarts into it), diff one against now or another, or delete one. Checkpoint before risky steps.",
            DESTRUCTIVE,
        ),
        tool::<ForkArgs, ForkOut>(
            "machine_fork",
            "Fork a machine",
            "A new machine starting from this one's files (now, or a checkpoint): try an alternative without losing the original.",
            WRITE,
        ),
        tool::<LogsArgs, LogsOut>(
            "machine_logs",
            "Machine logs",
            "The last lines of a machine's main-process output.",
            READ,
        ),
    ];
    tools.push(tool::<ExposeArgs, ExposeOut>(
        "expose",
        "Expose a port",
        "Publish a port of a machine as an HTTP URL through hangar's proxy, without restarting it. Requests wake the machine when it is stopped (autostart); autostop: stop lets it sleep when idle.",
        WRITE_IDEMPOTENT,
    ));
    for set in toolsets {
        match set {
            Toolset::Images => tools.extend([
                tool::<NoArgs, ImagesOut>(
                    "image_list",
                    "List images",
                    "Images available locally.",
                    READ,
                ),
                tool::<ImageArgs, ImageOut>(
                    "image_pull",
                    "Pull an image",
                    "Pull an image from its registry.",
                    WRITE_IDEMPOTENT,
                ),
                tool::<ImageArgs, OkOut>(
                    "image_remove",
                    "Remove an image",
                    "Forget a local image no machine uses.",
                    DESTRUCTIVE_IDEMPOTENT,
                ),
            ]),
            Toolset::Apps => tools.extend([
                tool::<NoArgs, AppsOut>(
                    "app_list",
                    "List apps",
                    "The apps this token can see.",
                    READ,
                ),
                tool::<AppNameArgs, OkOut>(
                    "app_create",
                    "Create an app",
                    "Create an app to hold machines.",
                    WRITE_IDEMPOTENT,
                ),
                tool::<AppNameArgs, OkOut>(
                    "app_delete",
                    "Delete an app",
                    "Delete an empty app; needs confirm: true.",
                    DESTRUCTIVE,
                ),
            ]),
            Toolset::Volumes => tools.extend([
                tool::<VolumeCreateArgs, VolumeOut>(
                    "volume_create",
                    "Create a volume",
                    "A new empty ext4 volume: a disk that outlives machines. Mount it with config.mounts when creating a machine (one machine at a time).",
                    WRITE,
                ),
                tool::<AppArgs, VolumeListOut>(
                    "volume_list",
                    "List volumes",
                    "The app's volumes, their size and the machine each is attached to.",
                    READ,
                ),
                tool::<VolumeSnapshotArgs, VolumeSnapshotOut>(
                    "volume_snapshot",
                    "Snapshot a volume",
                    "action=create takes a consistent snapshot of a volume as it is now (mounted or not); action=list lists its snapshots. Fork one with volume_fork.",
                    WRITE,
                ),
                tool::<VolumeForkArgs, VolumeOut>(
                    "volume_fork",
                    "Fork a volume",
                    "A new volume copied from another volume as it is now (volume) or from a snapshot (snapshot): try something on a copy of the data.",
                    WRITE,
                ),
                tool::<VolumeDestroyArgs, VolumeOut>(
                    "volume_destroy",
                    "Destroy a volume",
                    "Delete a volume and its snapshots for good; needs confirm: true. Refused while a machine mounts it.",
                    DESTRUCTIVE,
                ),
            ]),
        }
    }
    tools
}

/// Bad arguments: a protocol error (invalid params), as the spec asks.
#[derive(Debug)]
pub struct InvalidParams(pub String);

fn parse<A: DeserializeOwned>(args: Value) -> Result<A, InvalidParams> {
    serde_json::from_value(args).map_err(|e| InvalidParams(e.to_string()))
}

/// Something the server reports while a call runs.
pub trait Progress: Send + Sync {
    fn report(&self, progress: f64, message: String) -> futures::future::BoxFuture<'_, ()>;
}

/// Runs tool `name`; `None` when there is no such tool.
pub async fn call(
    ctx: &Ctx,
    toolsets: &[Toolset],
    name: &str,
    args: Value,
    progress: Option<&dyn Progress>,
) -> Option<Result<Result<ToolOutput, ToolError>, InvalidParams>> {
    macro_rules! run {
        ($f:expr) => {
            match parse(args) {
                Ok(a) => Ok($f(ctx, a).await),
                Err(e) => Err(e),
            }
        };
    }
    let has = |t| toolsets.contains(&t);
    Some(match name {
        "machine_run" => run!(machine_run),
        "machine_list" => run!(machine_list),
        "machine_lifecycle" => run!(machine_lifecycle),
        "exec" => match parse(args) {
            Ok(a) => Ok(exec(ctx, a, progress).await),
            Err(e) => Err(e),
        },
        "job_poll" => run!(job_poll),
        "job_control" => run!(job_control),
        "file_read" => run!(file_read),
        "file_write" => run!(file_write),
        "file_list" => run!(file_list),
        "file_delete" => run!(file_delete),
        "checkpoint" => run!(checkpoint),
        "machine_fork" => run!(machine_fork),
        "machine_logs" => run!(machine_logs),
        "expose" => run!(expose),
        "image_list" if has(Toolset::Images) => run!(image_list),
        "image_pull" if has(Toolset::Images) => run!(image_pull),
        "image_remove" if has(Toolset::Images) => run!(image_remove),
        "app_list" if has(Toolset::Apps) => run!(app_list),
        "app_create" if has(Toolset::Apps) => run!(app_create),
        "app_delete" if has(Toolset::Apps) => run!(app_delete),
        "volume_create" if has(Toolset::Volumes) => run!(volume_create),
        "volume_list" if has(Toolset::Volumes) => run!(volume_list),
        "volume_snapshot" if has(Toolset::Volumes) => run!(volume_snapshot),
        "volume_fork" if has(Toolset::Volumes) => run!(volume_fork),
        "volume_destroy" if has(Toolset::Volumes) => run!(volume_destroy),
        _ => return None,
    })
}

type R = Result<ToolOutput, ToolError>;

async fn machine_run(ctx: &Ctx, a: RunArgs) -> R {
    let app = ctx.app(&a.app)?;
    ctx.ensure_app(&app).await?;
    let req = CreateMachineRequest {
        name: a.name,
        config: MachineConfig {
            image: a.image,
            init: a.command.map(|c| MachineInit {
                exec: Some(c),
                ..Default::default()
            }),
            env: a.env,
            ..Default::default()
        },
        ..Default::default()
    };
    let machine = ctx.client.create_machine(&app, &req).await?;
    ctx.client.wait(&app, &machine.id, "started", 60).await?;
    let machine = ctx.client.get_machine(&app, &machine.id).await?;
    let o = MachineOut::new(&app, &machine);
    let text = format!("machine {} ({}) is {}", o.name, o.id, o.state);
    out(&o, text)
}

async fn machine_list(ctx: &Ctx, a: MachineListArgs) -> R {
    let app = ctx.app(&a.app)?;
    let machines: Vec<MachineOut> = ctx
        .client
        .list_machines(&app)
        .await?
        .iter()
        .filter(|m| {
            a.machine
                .as_deref()
                .is_none_or(|want| m.name == want || m.id == want)
        })
        .map(|m| MachineOut::new(&app, m))
        .collect();
    if let Some(want) = &a.machine {
        let Some(m) = machines.first() else {
            return Err(no_machine(&app, want));
        };
        let text = format!("machine {} ({}) is {}", m.name, m.id, m.state);
        return out(&MachineListOut { app, machines }, text);
    }
    let text = machines
        .iter()
        .map(|m| format!("{} {} {}", m.id, m.name, m.state))
        .collect::<Vec<_>>()
        .join("\n");
    let text = if text.is_empty() {
        format!("app {app} has no machines; create one with machine_run")
    } else {
        text
    };
    out(&MachineListOut { app, machines }, text)
}

async fn machine_lifecycle(ctx: &Ctx, a: LifecycleArgs) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    let c = &ctx.client;
    let (action, wait_for) = match a.action {
        LifecycleAction::Start => {
            c.start_machine(&app, &id).await?;
            ("start", Some("started"))
        }
        LifecycleAction::Stop => {
            c.stop_machine(&app, &id, &StopRequest::default()).await?;
            ("stop", Some("stopped"))
        }
        LifecycleAction::Restart => {
            c.restart_machine(&app, &id).await?;
            ("restart", Some("started"))
        }
        LifecycleAction::Suspend => {
            c.suspend_machine(&app, &id).await?;
            ("suspend", Some("suspended"))
        }
        LifecycleAction::Destroy => {
            if !a.confirm {
                return Err(ToolError::new(
                    "confirmation_required",
                    format!(
                        "destroying machine {id} deletes its files and checkpoints for good; call again with confirm: true (and force: true if it is started), or stop it instead"
                    ),
                ));
            }
            c.destroy_machine(&app, &id, a.force).await?;
            ("destroy", None)
        }
    };
    let state = match wait_for {
        Some(state) => {
            c.wait(&app, &id, state, 60).await?;
            state.to_string()
        }
        None => "destroyed".to_string(),
    };
    let text = format!("machine {id}: {action} done, now {state}");
    out(
        &LifecycleOut {
            id,
            action: action.into(),
            state,
        },
        text,
    )
}

fn exec_out(job: &Job, tail: Option<&Job>, limit: usize, started: Option<Instant>) -> ExecOut {
    let hint = format!(
        "read the rest with job_poll job={} cursor=N (stdout is {} bytes, stderr {} bytes)",
        job.id, job.stdout_bytes, job.stderr_bytes
    );
    let out_tail = tail
        .filter(|_| job.next_cursor < job.stdout_bytes)
        .map(|t| t.stdout.as_str());
    let err_tail = tail
        .filter(|_| job.next_stderr_cursor < job.stderr_bytes)
        .map(|t| t.stderr.as_str());
    let (stdout, stdout_truncated) = stream(
        &job.stdout,
        out_tail,
        job.cursor,
        job.stdout_bytes,
        limit,
        &hint,
    );
    let (stderr, stderr_truncated) = stream(
        &job.stderr,
        err_tail,
        job.stderr_cursor,
        job.stderr_bytes,
        limit,
        &hint,
    );
    let duration_ms = match (started, &job.finished_at) {
        (Some(t), _) => t.elapsed().as_millis() as u64,
        (None, Some(end)) => {
            let parse = |s: &str| chrono_ms(s);
            parse(end)
                .zip(parse(&job.created_at))
                .map(|(e, s)| e.saturating_sub(s))
                .unwrap_or(0)
        }
        (None, None) => 0,
    };
    ExecOut {
        state: job.state.clone(),
        job: job.id.clone(),
        machine_id: job.machine_id.clone(),
        exit_code: job.exit_code,
        exit_signal: job.exit_signal,
        stdout,
        stderr,
        stdout_truncated,
        stderr_truncated,
        stdout_bytes: job.stdout_bytes,
        stderr_bytes: job.stderr_bytes,
        next_cursor: job.next_cursor,
        next_stderr_cursor: job.next_stderr_cursor,
        duration_ms,
        error: job.error.clone(),
    }
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn chrono_ms(s: &str) -> Option<u64> {
    // `2026-01-01T00:00:00.123456+00:00`: only differences matter, within a day.
    let time = s.split('T').nth(1)?;
    let hms: Vec<&str> = time.get(..15.min(time.len()))?.split(':').collect();
    let h: f64 = hms.first()?.parse().ok()?;
    let m: f64 = hms.get(1)?.parse().ok()?;
    let sec: f64 = hms
        .get(2)?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some(((h * 3600.0 + m * 60.0 + sec) * 1000.0) as u64)
}

fn exec_text(o: &ExecOut) -> String {
    match o.state.as_str() {
        "running" => format!(
            "still running as job {}; poll it with job_poll (cursor {}) or cancel it with job_cancel",
            o.job, o.next_cursor
        ),
        "failed" => format!(
            "the command could not run: {}",
            o.error.as_deref().unwrap_or("unknown error")
        ),
        state => {
            let mut text = format!(
                "{state} with code {} in {} ms",
                o.exit_code.map_or("none".into(), |c| c.to_string()),
                o.duration_ms
            );
            if !o.stdout.is_empty() {
                text.push_str("\nstdout:\n");
                text.push_str(&o.stdout);
            }
            if !o.stderr.is_empty() {
                text.push_str("\nstderr:\n");
                text.push_str(&o.stderr);
            }
            text
        }
    }
}

/// One output stream for a model: `head` is the stream from `cursor`; `tail`, when
/// the head chunk did not reach the end, is the stream's last bytes.
fn stream(
    head: &str,
    tail: Option<&str>,
    cursor: u64,
    total: u64,
    limit: usize,
    hint: &str,
) -> (String, bool) {
    match tail {
        None => {
            let (s, cut) = cap(head, limit, hint);
            (s, cut > 0)
        }
        Some(tail) => {
            let head = &head[..floor(head, (limit / 2).min(head.len()))];
            let tail = &tail[ceil(tail, tail.len().saturating_sub(limit / 2))..];
            let cut = total.saturating_sub(cursor + (head.len() + tail.len()) as u64);
            (
                format!("{head}\n[... {cut} bytes cut; {hint} ...]\n{tail}"),
                true,
            )
        }
    }
}

/// The last bytes of each stream the first chunk did not reach.
async fn tails(
    ctx: &Ctx,
    app: &str,
    id: &str,
    job: &Job,
    limit: usize,
) -> Result<Option<Job>, ToolError> {
    if job.next_cursor >= job.stdout_bytes && job.next_stderr_cursor >= job.stderr_bytes {
        return Ok(None);
    }
    let half = (limit / 2) as u64;
    let t = ctx
        .client
        .get_job(
            app,
            id,
            &job.id,
            job.stdout_bytes.saturating_sub(half).max(job.next_cursor),
            job.stderr_bytes
                .saturating_sub(half)
                .max(job.next_stderr_cursor),
            None,
        )
        .await?;
    Ok(Some(t))
}

fn floor(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

async fn exec(ctx: &Ctx, a: ExecArgs, progress: Option<&dyn Progress>) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    let limit = a.max_output_bytes.unwrap_or(DEFAULT_OUTPUT_CAP).max(64);
    let started = Instant::now();
    let req = CreateJobRequest {
        command: a.command,
        timeout: a.timeout_secs,
        stdin: a.stdin,
        stdin_open: a.stdin_open,
    };
    let mut job = ctx.client.create_job(&app, &id, &req).await?;
    // A command waiting for input it has not been sent would only wait.
    if !a.background && !a.stdin_open {
        let deadline = started + FOREGROUND_WAIT;
        // Short waits when the client wants progress, so it hears from us.
        let step = if progress.is_some() {
            5
        } else {
            FOREGROUND_WAIT.as_secs()
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now()).as_secs();
            if left == 0 {
                break;
            }
            job = ctx
                .client
                .get_job(&app, &id, &job.id, 0, 0, Some(left.min(step)))
                .await?;
            if !job.is_running() {
                break;
            }
            if let Some(p) = progress {
                p.report(
                    started.elapsed().as_secs_f64(),
                    format!(
                        "job {} running for {} s",
                        job.id,
                        started.elapsed().as_secs()
                    ),
                )
                .await;
            }
        }
        let mut tail = None;
        if !job.is_running() {
            tail = tails(ctx, &app, &id, &job, limit).await?;
            // The answer is in hand: the finished job need not be kept.
            let (client, app, id, job_id) =
                (ctx.client.clone(), app.clone(), id.clone(), job.id.clone());
            tokio::spawn(async move {
                let _ = client.cancel_job(&app, &id, &job_id).await;
            });
        }
        let o = exec_out(&job, tail.as_ref(), limit, Some(started));
        let text = exec_text(&o);
        return out(&o, text);
    }
    let o = exec_out(&job, None, limit, Some(started));
    let text = exec_text(&o);
    out(&o, text)
}

async fn job_poll(ctx: &Ctx, a: JobArgs) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    let limit = a.max_output_bytes.unwrap_or(DEFAULT_OUTPUT_CAP).max(64);
    let wait = a.wait_secs.map(|w| w.min(FOREGROUND_WAIT.as_secs()));
    let job = ctx
        .client
        .get_job(&app, &id, &a.job, a.cursor, a.stderr_cursor, wait)
        .await?;
    let tail = tails(ctx, &app, &id, &job, limit).await?;
    let o = exec_out(&job, tail.as_ref(), limit, None);
    let text = exec_text(&o);
    out(&o, text)
}

async fn job_control(ctx: &Ctx, a: JobControlArgs) -> R {
    let app = ctx.app(&a.app)?;
    let misplaced = |what: &str, action: &str| {
        ToolError::new(
            "bad_request",
            format!("{what} goes with action={action}; pass the action it belongs to"),
        )
    };
    match a.action {
        JobAction::Stdin if a.signal.is_some() => return Err(misplaced("signal", "signal")),
        JobAction::Stdin if a.stdin.is_none() && !a.eof => {
            return Err(ToolError::new(
                "bad_request",
                "action=stdin needs \"stdin\" (the text to send) or \"eof\": true (close its stdin)",
            ));
        }
        JobAction::Signal if a.signal.is_none() => {
            return Err(ToolError::new(
                "bad_request",
                "action=signal needs \"signal\", e.g. \"SIGTERM\" or \"SIGINT\"",
            ));
        }
        JobAction::Signal | JobAction::Cancel if a.stdin.is_some() || a.eof => {
            return Err(misplaced("stdin and eof", "stdin"));
        }
        JobAction::Cancel if a.signal.is_some() => return Err(misplaced("signal", "signal")),
        _ => {}
    }
    let id = ctx.machine(&app, &a.machine).await?;
    let c = &ctx.client;
    let (job, text) = match a.action {
        JobAction::Stdin => {
            let data = a.stdin.unwrap_or_default();
            let job = c
                .send_job_stdin(&app, &id, &a.job, data.clone().into_bytes(), a.eof)
                .await?;
            let closed = if a.eof { " and closed its stdin" } else { "" };
            let text = format!(
                "sent {} bytes to job {}{closed}; read its output with job_poll from your last cursor",
                data.len(),
                job.id
            );
            (job, text)
        }
        JobAction::Signal => {
            let signal = a.signal.unwrap_or_default();
            let job = c.signal_job(&app, &id, &a.job, &signal).await?;
            let text = format!("sent {signal} to job {}; it is {}", job.id, job.state);
            (job, text)
        }
        JobAction::Cancel => {
            let job = c.cancel_job(&app, &id, &a.job).await?;
            let text = format!("job {} is {}", job.id, job.state);
            (job, text)
        }
    };
    let mut o = exec_out(&job, None, DEFAULT_OUTPUT_CAP, None);
    if a.action == JobAction::Stdin {
        // The answer carries no output; its cursors would skip what the caller has
        // not read yet.
        o.next_cursor = 0;
        o.next_stderr_cursor = 0;
    }
    out(&o, text)
}

/// A MIME type from a path's extension.
pub fn mime_for(path: &str) -> &'static str {
    let ext = path.rsplit('.').next().unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "gz" | "tgz" => "application/gzip",
        "zip" => "application/zip",
        "tar" => "application/x-tar",
        "json" => "application/json",
        "html" | "htm" => "text/html",
        "md" => "text/markdown",
        _ => "application/octet-stream",
    }
}

/// The URI of a file as a resource.
pub fn file_uri(app: &str, id: &str, path: &str) -> String {
    format!(
        "hangar://apps/{app}/machines/{id}/files/{}",
        path.trim_start_matches('/')
    )
}

async fn file_read(ctx: &Ctx, a: PathArgs) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    let file = ctx.client.read_file(&app, &id, &a.path).await?;
    let size = file.contents.len() as u64;
    let mode = format!("{:o}", file.mode);
    match String::from_utf8(file.contents) {
        Ok(text) if !text.contains('\0') => {
            let hint = "read it in pieces with exec (e.g. sed -n 1,200p)";
            let (content, cut) = cap(&text, 256 * 1024, hint);
            let o = FileOut {
                path: a.path,
                size,
                mode,
                encoding: "utf-8".into(),
                mime_type: "text/plain".into(),
                content: content.clone(),
                truncated: cut > 0,
            };
            out(&o, content)
        }
        Ok(text) => binary(&app, &id, a.path, text.into_bytes(), size, mode),
        Err(e) => binary(&app, &id, a.path, e.into_bytes(), size, mode),
    }
}

fn binary(app: &str, id: &str, path: String, bytes: Vec<u8>, size: u64, mode: String) -> R {
    let blob = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let mime = mime_for(&path);
    let uri = file_uri(app, id, &path);
    let o = FileOut {
        path: path.clone(),
        size,
        mode,
        encoding: "base64".into(),
        mime_type: mime.into(),
        content: blob.clone(),
        truncated: false,
    };
    let mut result = out(
        &o,
        format!("{path}: {size} bytes of {mime} (base64 in the resource block)"),
    )?;
    result.extra.push(ContentBlock::resource(
        ResourceContents::blob(blob, uri).with_mime_type(mime),
    ));
    Ok(result)
}

async fn file_write(ctx: &Ctx, a: WriteArgs) -> R {
    let app = ctx.app(&a.app)?;
    let contents = if a.base64 {
        base64::engine::general_purpose::STANDARD
            .decode(a.content.as_bytes())
            .map_err(|e| {
                ToolError::new(
                    "bad_request",
                    format!("content is not valid base64 ({e}); send text with base64: false"),
                )
            })?
    } else {
        a.content.into_bytes()
    };
    if contents.len() > MAX_TOOL_FILE {
        return Err(ToolError::new(
            "payload_too_large",
            format!(
                "the file is {} bytes; file_write takes at most {MAX_TOOL_FILE}: write it in parts with exec (cat >> file) or build it inside the machine",
                contents.len()
            ),
        ));
    }
    let mode = a
        .mode
        .as_deref()
        .map(|m| u32::from_str_radix(m, 8))
        .transpose()
        .map_err(|_| {
            ToolError::new(
                "bad_request",
                "mode must be octal digits such as \"644\" or \"755\"",
            )
        })?;
    let id = ctx.machine(&app, &a.machine).await?;
    let options = WriteFileOptions {
        mode,
        parents: a.parents,
        ..Default::default()
    };
    let len = contents.len();
    ctx.client
        .write_file(&app, &id, &a.path, contents, &options)
        .await?;
    let text = format!("wrote {len} bytes to {}", a.path);
    out(
        &PathOut {
            path: a.path,
            ok: true,
        },
        text,
    )
}

async fn file_list(ctx: &Ctx, a: PathArgs) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    let entries: Vec<FileEntryOut> = ctx
        .client
        .list_files(&app, &id, &a.path)
        .await?
        .into_iter()
        .map(|e| FileEntryOut {
            kind: serde_json::to_value(e.kind)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            name: e.name,
            path: e.path,
            size: e.size,
        })
        .collect();
    let text = entries
        .iter()
        .map(|e| format!("{} {} {}", e.kind, e.size, e.name))
        .collect::<Vec<_>>()
        .join("\n");
    out(
        &FileListOut {
            path: a.path,
            entries,
        },
        text,
    )
}

async fn file_delete(ctx: &Ctx, a: DeleteArgs) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    ctx.client
        .remove_file(&app, &id, &a.path, a.recursive)
        .await?;
    let text = format!("deleted {}", a.path);
    out(
        &PathOut {
            path: a.path,
            ok: true,
        },
        text,
    )
}

async fn checkpoint(ctx: &Ctx, a: CheckpointArgs) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    let c = &ctx.client;
    let need = |what: &str| {
        a.checkpoint.clone().ok_or_else(|| {
            ToolError::new(
                "bad_request",
                format!("{what} needs \"checkpoint\": a name or id from action list"),
            )
        })
    };
    let mut o = CheckpointOut {
        machine_id: id.clone(),
        ..Default::default()
    };
    let text = match a.action {
        CheckpointAction::Create => {
            let cp = c
                .create_checkpoint(&app, &id, a.checkpoint.as_deref())
                .await?;
            o.action = "create".into();
            let text = format!("checkpoint {} ({}) taken", cp.name, cp.id);
            o.checkpoint = Some(cp.into());
            text
        }
        CheckpointAction::List => {
            o.action = "list".into();
            o.checkpoints = c
                .list_checkpoints(&app, &id)
                .await?
                .into_iter()
                .map(Into::into)
                .collect();
            o.checkpoints
                .iter()
                .map(|c| format!("{} {} {}", c.id, c.name, c.created_at))
                .collect::<Vec<_>>()
                .join("\n")
        }
        CheckpointAction::Restore => {
            let name = need("restore")?;
            let cp = c.restore_checkpoint(&app, &id, &name).await?;
            o.action = "restore".into();
            let text = format!("machine {id} restored to checkpoint {}", cp.name);
            o.checkpoint = Some(cp.into());
            text
        }
        CheckpointAction::Diff => {
            let name = need("diff")?;
            let diff = c.diff_checkpoint(&app, &id, &name, a.to.as_deref()).await?;
            o.action = "diff".into();
            o.added = diff.added.into_iter().map(|d| d.path).collect();
            o.modified = diff.modified.into_iter().map(|d| d.path).collect();
            o.deleted = diff.deleted.into_iter().map(|d| d.path).collect();
            format!(
                "{} added, {} modified, {} deleted",
                o.added.len(),
                o.modified.len(),
                o.deleted.len()
            )
        }
        CheckpointAction::Delete => {
            let name = need("delete")?;
            c.delete_checkpoint(&app, &id, &name).await?;
            o.action = "delete".into();
            format!("checkpoint {name} deleted")
        }
    };
    out(&o, text)
}

async fn machine_fork(ctx: &Ctx, a: ForkArgs) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    let req = ForkMachineRequest {
        checkpoint: a.checkpoint,
        count: None,
        name: a.name,
    };
    let fork = ctx.client.fork_machine(&app, &id, &req).await?;
    let o = ForkOut {
        checkpoint: fork.checkpoint,
        machines: fork
            .machines
            .iter()
            .map(|m| MachineOut::new(&app, m))
            .collect(),
    };
    let text = o
        .machines
        .iter()
        .map(|m| {
            format!(
                "forked {} ({}) from checkpoint {}",
                m.name, m.id, o.checkpoint
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    out(&o, text)
}

async fn expose(ctx: &Ctx, a: ExposeArgs) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    let req = ExposeRequest {
        internal_port: a.port,
        autostart: a.autostart,
        autostop: a.autostop,
    };
    let r = ctx.client.expose(&app, &id, &req).await?;
    let text = format!("port {} of {id} is at {}", a.port, r.url);
    let o = ExposeOut {
        machine_id: id,
        url: r.url,
        machine_url: r.machine_url,
        https_url: r.https_url,
    };
    out(&o, text)
}

async fn machine_logs(ctx: &Ctx, a: LogsArgs) -> R {
    let app = ctx.app(&a.app)?;
    let id = ctx.machine(&app, &a.machine).await?;
    let lines: Vec<LogLineOut> = ctx
        .client
        .logs(&app, &id, a.lines.unwrap_or(100).min(10_000))
        .await?
        .into_iter()
        .map(|l| LogLineOut {
            timestamp: l.timestamp,
            stream: l.stream,
            message: l.message,
        })
        .collect();
    let text = lines
        .iter()
        .map(|l| l.message.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let (text, _) = cap(&text, DEFAULT_OUTPUT_CAP, "ask for fewer lines");
    out(
        &LogsOut {
            machine_id: id,
            lines,
        },
        text,
    )
}

async fn image_list(ctx: &Ctx, _: NoArgs) -> R {
    let images: Vec<ImageOut> = ctx
        .client
        .list_images()
        .await?
        .into_iter()
        .map(|i| {
            let v = serde_json::to_value(&i).unwrap_or_default();
            ImageOut {
                reference: v["reference"].as_str().unwrap_or_default().to_string(),
                digest: v["digest"].as_str().unwrap_or_default().to_string(),
            }
        })
        .collect();
    let text = images
        .iter()
        .map(|i| i.reference.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    out(&ImagesOut { images }, text)
}

async fn image_pull(ctx: &Ctx, a: ImageArgs) -> R {
    let i = ctx.client.pull_image(&a.reference).await?;
    let v = serde_json::to_value(&i).unwrap_or_default();
    let o = ImageOut {
        reference: v["reference"].as_str().unwrap_or(&a.reference).to_string(),
        digest: v["digest"].as_str().unwrap_or_default().to_string(),
    };
    let text = format!("pulled {} ({})", o.reference, o.digest);
    out(&o, text)
}

async fn image_remove(ctx: &Ctx, a: ImageArgs) -> R {
    ctx.client.remove_image(&a.reference).await?;
    let text = format!("removed {}", a.reference);
    out(
        &OkOut {
            ok: true,
            name: a.reference,
        },
        text,
    )
}

async fn app_list(ctx: &Ctx, _: NoArgs) -> R {
    let apps = ctx.client.list_apps().await?;
    let v = serde_json::to_value(&apps).unwrap_or_default();
    let names: Vec<String> = v["apps"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let text = names.join("\n");
    out(&AppsOut { apps: names }, text)
}

async fn app_create(ctx: &Ctx, a: AppNameArgs) -> R {
    ctx.ensure_app(&a.app).await?;
    let text = format!("app {} exists", a.app);
    out(
        &OkOut {
            ok: true,
            name: a.app,
        },
        text,
    )
}

async fn app_delete(ctx: &Ctx, a: AppNameArgs) -> R {
    if !a.confirm {
        return Err(ToolError::new(
            "confirmation_required",
            format!(
                "deleting app {} cannot be undone; call again with confirm: true",
                a.app
            ),
        ));
    }
    ctx.client.delete_app(&a.app).await?;
    let text = format!("app {} deleted", a.app);
    out(
        &OkOut {
            ok: true,
            name: a.app,
        },
        text,
    )
}

fn volume_text(v: &VolumeOut) -> String {
    let attached = v
        .attached_machine_id
        .as_deref()
        .map_or(String::new(), |m| format!(", attached to {m}"));
    format!(
        "volume {} ({}) {} GB, {}{attached}",
        v.name, v.id, v.size_gb, v.state
    )
}

async fn volume_create(ctx: &Ctx, a: VolumeCreateArgs) -> R {
    let app = ctx.app(&a.app)?;
    let req = CreateVolumeRequest {
        name: a.name,
        size_gb: Some(a.size_gb.unwrap_or(1)),
        ..Default::default()
    };
    let v = VolumeOut::from(ctx.client.create_volume(&app, &req).await?);
    let text = volume_text(&v);
    out(&v, text)
}

async fn volume_list(ctx: &Ctx, a: AppArgs) -> R {
    let app = ctx.app(&a.app)?;
    let volumes: Vec<VolumeOut> = ctx
        .client
        .list_volumes(&app)
        .await?
        .into_iter()
        .map(VolumeOut::from)
        .collect();
    let text = if volumes.is_empty() {
        format!("app {app} has no volumes; create one with volume_create")
    } else {
        volumes
            .iter()
            .map(volume_text)
            .collect::<Vec<_>>()
            .join("\n")
    };
    out(&VolumeListOut { app, volumes }, text)
}

async fn volume_snapshot(ctx: &Ctx, a: VolumeSnapshotArgs) -> R {
    let app = ctx.app(&a.app)?;
    let volume = ctx.client.get_volume(&app, &a.volume).await?;
    let mut o = VolumeSnapshotOut {
        action: String::new(),
        volume_id: volume.id.clone(),
        snapshot: None,
        snapshots: Vec::new(),
    };
    let text = match a.action {
        SnapshotAction::Create => {
            let s = SnapshotItem::from(ctx.client.create_volume_snapshot(&app, &volume.id).await?);
            o.action = "create".into();
            let text = format!(
                "snapshot {} of volume {} taken; fork it with volume_fork snapshot={}",
                s.id, volume.name, s.id
            );
            o.snapshot = Some(s);
            text
        }
        SnapshotAction::List => {
            o.action = "list".into();
            o.snapshots = ctx
                .client
                .list_volume_snapshots(&app, &volume.id)
                .await?
                .into_iter()
                .map(SnapshotItem::from)
                .collect();
            if o.snapshots.is_empty() {
                format!("volume {} has no snapshots", volume.name)
            } else {
                o.snapshots
                    .iter()
                    .map(|s| format!("{} {} bytes {}", s.id, s.size, s.created_at))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
    };
    out(&o, text)
}

async fn volume_fork(ctx: &Ctx, a: VolumeForkArgs) -> R {
    let app = ctx.app(&a.app)?;
    // The API takes a volume's name as well as its id.
    let (source_volume_id, snapshot_id) = match (a.volume, a.snapshot) {
        (Some(volume), None) => (Some(volume), None),
        (None, Some(snapshot)) => (None, Some(snapshot)),
        _ => {
            return Err(ToolError::new(
                "bad_request",
                "give one source: \"volume\" (copy a volume as it is now) or \"snapshot\" (a snapshot id from volume_snapshot)",
            ));
        }
    };
    let req = CreateVolumeRequest {
        name: a.name,
        size_gb: a.size_gb,
        snapshot_id,
        source_volume_id,
        ..Default::default()
    };
    let v = VolumeOut::from(ctx.client.create_volume(&app, &req).await?);
    let text = volume_text(&v);
    out(&v, text)
}

async fn volume_destroy(ctx: &Ctx, a: VolumeDestroyArgs) -> R {
    let app = ctx.app(&a.app)?;
    if !a.confirm {
        return Err(ToolError::new(
            "confirmation_required",
            format!(
                "destroying volume {} deletes its data and snapshots for good; call again with confirm: true, or fork it first to keep a copy",
                a.volume
            ),
        ));
    }
    let v = VolumeOut::from(ctx.client.delete_volume(&app, &a.volume).await?);
    let text = format!("volume {} ({}) destroyed", v.name, v.id);
    out(&v, text)
}

/// The error result's structured body, for callers that render it.
pub fn error_value(err: &ToolError) -> Value {
    json!({"error": err.error, "code": err.code, "retryable": err.retryable})
}
