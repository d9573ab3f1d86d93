//! Apps, machines, events, leases, exec: the Fly Machines API v1 shapes.
//!
//! Fields hangar does not act on yet (services, checks, mounts, ...) are kept verbatim
//! in `extra` so that a config round-trips unchanged through create, get and update.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// Apps group machines; the org decides who may reach whom on the private network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct App {
    pub id: String,
    pub name: String,
    pub organization: Organization,
    pub status: String,
    /// Machines that are not destroyed.
    #[serde(default)]
    pub machine_count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    pub name: String,
    pub slug: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateAppRequest {
    pub app_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_slug: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListApp {
    pub id: String,
    pub name: String,
    pub machine_count: u64,
    #[serde(default)]
    pub network: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListAppsResponse {
    pub total_apps: u64,
    pub apps: Vec<ListApp>,
}

/// `config.guest`: the machine's share of the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineGuest {
    #[serde(default = "default_cpu_kind")]
    pub cpu_kind: String,
    pub cpus: i64,
    pub memory_mb: i64,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: BTreeMap<String, Value>,
}

fn default_cpu_kind() -> String {
    "shared".to_string()
}

impl Default for MachineGuest {
    fn default() -> Self {
        MachineGuest {
            cpu_kind: default_cpu_kind(),
            cpus: 1,
            memory_mb: 256,
            extra: BTreeMap::new(),
        }
    }
}

/// `config.init`: overrides of the image's entrypoint and command.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineInit {
    /// Replaces the image's `Entrypoint` and `Cmd` together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tty: bool,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: BTreeMap<String, Value>,
}

/// `config.restart`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineRestart {
    /// `no`, `always` or `on-failure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<i64>,
}

/// `config.files[]`: a file written into the machine before its process starts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineFile {
    pub guest_path: String,
    /// Base64 of the file's contents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Octal permission bits as a number (e.g. 420 for 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

/// `config.stop_config`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StopConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Value>,
}

/// `config`: everything that describes a machine.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineConfig {
    #[serde(default)]
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<MachineInit>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<MachineFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<MachineGuest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<MachineRestart>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub auto_destroy: bool,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_config: Option<StopConfig>,
    /// Fields hangar keeps but does not interpret yet (services, checks, mounts, ...).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: BTreeMap<String, Value>,
}

/// `image_ref`: where the machine's image came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageRef {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// One entry of a machine's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineEvent {
    pub id: String,
    /// `launch`, `start`, `stop`, `exit`, `restart`, `update`, `destroy`, ...
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    /// `user` (an API call) or `hangar` (the platform acting on its own).
    pub source: String,
    /// Unix milliseconds.
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub request: Value,
}

/// A machine as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Machine {
    pub id: String,
    pub name: String,
    pub state: String,
    pub region: String,
    pub instance_id: String,
    pub private_ip: String,
    /// hangar: the machine's private IPv4 address (`private_ip` is the IPv6 one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ipv4: Option<String>,
    pub config: MachineConfig,
    pub image_ref: ImageRef,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default)]
    pub events: Vec<MachineEvent>,
    /// The latest result of each of `config.checks`, while the machine is started.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// The latest result of one health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CheckStatus {
    pub name: String,
    /// `passing`, `warning` (not checked yet: waiting for the grace period or the
    /// first result) or `critical` (the last check failed).
    pub status: String,
    pub output: String,
    /// RFC 3339.
    pub updated_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateMachineRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub config: MachineConfig,
    /// Create the machine without starting it (state `created`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_launch: bool,
    /// Take a lease for this many seconds as part of the create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ttl: Option<u64>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UpdateMachineRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub config: MachineConfig,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_launch: bool,
    /// Fail with 412 unless the machine's `instance_id` is still this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// Whether the writable layer (the files the machine wrote over its image) starts
    /// empty. Default: reset when the image changes, kept otherwise. `false` keeps
    /// the machine's files on top of a new image; `true` resets them even when the
    /// image stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rootfs_reset: Option<bool>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StopRequest {
    /// Signal name, `SIGTERM` by default (or `config.stop_config.signal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Go duration (`"10s"`) or seconds; after it the machine's processes are killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub timeout: Option<Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SignalRequest {
    pub signal: String,
}

/// `POST .../exec`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineExecRequest {
    /// A command line split on whitespace (Fly's older form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// argv, preferred over `cmd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// Seconds before the command is killed (default 30, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Bytes given to the command's standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MachineExecResponse {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    /// Set when the command was ended by a signal (e.g. 9 after a timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_signal: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreateLeaseRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Seconds the lease lasts (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Lease {
    pub nonce: String,
    /// Unix seconds.
    pub expires_at: i64,
    pub owner: String,
    pub description: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ListenSocket {
    pub address: String,
    pub proto: String,
}

/// One process inside a machine (`GET .../ps`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProcessStat {
    pub pid: i64,
    pub command: String,
    pub directory: String,
    /// Resident memory, bytes.
    pub rss: u64,
    /// User CPU time, clock ticks.
    pub rtime: u64,
    /// System CPU time, clock ticks.
    pub stime: u64,
    pub cpu: i64,
    #[serde(default)]
    pub listen_sockets: Vec<ListenSocket>,
}

/// One line of a machine's log (`GET .../logs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LogLine {
    /// RFC 3339 with nanoseconds.
    pub timestamp: String,
    /// `stdout`, `stderr` or `init`.
    pub stream: String,
    pub message: String,
}

/// `POST /v1/images/import` response and image listings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageSummary {
    pub reference: String,
    pub digest: String,
    pub size: u64,
    pub layers: usize,
    pub created_at: String,
}

/// Machine states, exactly as Fly names them.
pub const MACHINE_STATES: &[&str] = &[
    "created",
    "starting",
    "started",
    "stopping",
    "stopped",
    "suspending",
    "suspended",
    "replacing",
    "destroying",
    "destroyed",
    "failed",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_config_fields_round_trip() {
        let body = serde_json::json!({
            "image": "busybox:latest",
            "guest": {"cpus": 2, "memory_mb": 512, "cpu_kind": "shared"},
            "services": [{"internal_port": 8080, "protocol": "tcp"}],
            "init": {"cmd": ["sleep", "inf"], "kernel_args": []}
        });
        let config: MachineConfig = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(config.guest.as_ref().unwrap().cpus, 2);
        assert!(config.extra.contains_key("services"));
        let back = serde_json::to_value(&config).unwrap();
        assert_eq!(back["services"], body["services"]);
        assert_eq!(back["init"]["kernel_args"], body["init"]["kernel_args"]);
    }
}

/// `POST /v1/apps/{app}/machines/{id}/expose`: publish a port of the machine through
/// the edge proxy, without restarting it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExposeRequest {
    /// The port the machine's server listens on (on its loopback or any address).
    pub internal_port: u16,
    /// Start the machine when a request arrives while it is stopped (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostart: Option<bool>,
    /// `off`, `stop` or `suspend` once idle (default `off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autostop: Option<String>,
}

/// Where the exposed service is reachable.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExposeResponse {
    /// The app's URL: requests are balanced across its machines serving this port.
    pub url: String,
    /// This machine only.
    pub machine_url: String,
    /// The app's HTTPS URL, when the daemon has a TLS listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https_url: Option<String>,
}
