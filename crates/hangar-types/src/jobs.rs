//! Background jobs: commands that run inside a machine past any one request, whose
//! output and exit status are kept for the caller to fetch later.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/apps/{app}/machines/{id}/jobs`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateJobRequest {
    /// argv of the command.
    pub command: Vec<String>,
    /// Seconds before the command is killed (default 3600, at most 86400).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Bytes given to the command's standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Keep standard input open (after `stdin`, if given) so more can be sent with
    /// `POST .../jobs/{job}/stdin`; without it the command reads end of file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stdin_open: bool,
}

/// `POST /v1/apps/{app}/machines/{id}/jobs/{job}/signal`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalJobRequest {
    /// A name (`SIGTERM`, `TERM`) or a number (`15`).
    #[schema(value_type = String, example = "SIGTERM")]
    pub signal: serde_json::Value,
}

impl SignalJobRequest {
    /// The signal as text for parsing: numbers become their decimal form.
    pub fn signal_text(&self) -> String {
        match &self.signal {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        }
    }
}

/// A background job and, from `GET .../jobs/{job}?cursor=N`, its output from byte N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: String,
    pub machine_id: String,
    pub command: Vec<String>,
    /// `running`, `exited`, `timed_out`, `cancelled` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
    /// Why a `failed` job could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<String>,
    /// Output from `cursor` on (UTF-8, invalid bytes replaced).
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Absolute byte offset into stdout where the returned `stdout` starts.
    #[serde(default)]
    pub cursor: u64,
    /// Pass as `cursor` next time to get only newer stdout.
    #[serde(default)]
    pub next_cursor: u64,
    /// The same for stderr (`stderr_cursor` in the query).
    #[serde(default)]
    pub stderr_cursor: u64,
    #[serde(default)]
    pub next_stderr_cursor: u64,
    /// Total bytes the job has written to stdout and stderr.
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
    /// The job takes input at `POST .../jobs/{job}/stdin`: it was started with
    /// `stdin_open` and neither ended nor had its stdin closed.
    #[serde(default)]
    pub stdin_open: bool,
}

impl Job {
    pub fn is_running(&self) -> bool {
        self.state == "running"
    }
}
