//! Validating a machine config and turning it, with its image, into what the driver runs.
//!
//! Every rejection names the field and what is allowed, because robots read them.

use std::collections::BTreeMap;

use hangar_types::{MachineConfig, MachineGuest, MachineMount};

use crate::driver::{GuestFile, ProcessSpec, Resources, VolumeMount};
use crate::error::{Error, Result};
use crate::image::ImageConfig;

pub const RESTART_POLICIES: [&str; 3] = ["no", "always", "on-failure"];
pub const MAX_CPUS: i64 = 64;
pub const MIN_MEMORY_MB: i64 = 16;
pub const MAX_MEMORY_MB: i64 = 1024 * 1024;
const MAX_FILES_BYTES: usize = 8 * 1024 * 1024;

/// Checks a config before anything is created for it.
pub fn validate(config: &MachineConfig) -> Result<()> {
    if config.image.trim().is_empty() {
        return Err(Error::invalid_config(
            "config.image is required: name an image such as \"busybox:latest\"",
        ));
    }
    if let Some(guest) = &config.guest {
        validate_guest(guest)?;
    }
    if let Some(restart) = &config.restart {
        if let Some(policy) = &restart.policy
            && !RESTART_POLICIES.contains(&policy.as_str())
        {
            return Err(Error::invalid_config(format!(
                "config.restart.policy {policy:?} is not known: use \"no\", \"always\" or \"on-failure\""
            )));
        }
        if restart.max_retries.is_some_and(|n| n < 0) {
            return Err(Error::invalid_config(
                "config.restart.max_retries must be 0 or more",
            ));
        }
    }
    for key in config.env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(Error::invalid_config(format!(
                "config.env key {key:?} is not a valid variable name: it must be non-empty without '=' or NUL"
            )));
        }
    }
    if let Some(init) = &config.init {
        for (field, argv) in [
            ("exec", &init.exec),
            ("entrypoint", &init.entrypoint),
            ("cmd", &init.cmd),
        ] {
            if argv.iter().flatten().any(|arg| arg.contains('\0')) {
                return Err(Error::invalid_config(format!(
                    "config.init.{field} contains a NUL byte"
                )));
            }
        }
    }
    guest_files(config)?;
    ephemeral_root_checked(config)?;
    mounts(config)?;
    services(config)?;
    checks(config)?;
    Ok(())
}

/// The most volumes one machine mounts.
pub const MAX_MOUNTS: usize = 16;
/// Where a volume may not go: the file systems hangar itself mounts there.
const RESERVED_MOUNT_PATHS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// `config.mounts`, checked: each names a volume once, at a distinct absolute path
/// that hangar does not mount itself.
pub fn mounts(config: &MachineConfig) -> Result<Vec<MachineMount>> {
    let mounts: Vec<MachineMount> = match config.extra.get("mounts") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(value) => serde_json::from_value(value.clone()).map_err(|e| {
            Error::invalid_config(format!(
                "config.mounts is not a list of {{\"volume\": \"vol_...\", \"path\": \"/data\"}}: {e}"
            ))
        })?,
    };
    if mounts.len() > MAX_MOUNTS {
        return Err(Error::invalid_config(format!(
            "config.mounts has {} entries: a machine mounts at most {MAX_MOUNTS} volumes",
            mounts.len()
        )));
    }
    for (i, m) in mounts.iter().enumerate() {
        if m.volume.trim().is_empty() {
            return Err(Error::invalid_config(format!(
                "config.mounts[{i}].volume is empty: name a volume id (POST /v1/apps/{{app}}/volumes makes one)"
            )));
        }
        check_mount_path(i, &m.path)?;
        if mounts[..i].iter().any(|o| o.volume == m.volume) {
            return Err(Error::invalid_config(format!(
                "config.mounts[{i}] mounts volume {:?} a second time: mount each volume once",
                m.volume
            )));
        }
        if mounts[..i]
            .iter()
            .any(|o| o.path.trim_end_matches('/') == m.path.trim_end_matches('/'))
        {
            return Err(Error::invalid_config(format!(
                "config.mounts[{i}].path {:?} is already used by another mount",
                m.path
            )));
        }
    }
    Ok(mounts)
}

fn check_mount_path(i: usize, path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid_config(format!(
            "config.mounts[{i}].path {path:?} {why}"
        )))
    };
    if !path.starts_with('/') || path.contains('\0') {
        return bad("must be an absolute path such as \"/data\"");
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return bad("is the root: mount the volume in a directory such as \"/data\"");
    }
    if trimmed
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return bad("must be a plain path without empty, '.' or '..' components");
    }
    if trimmed.len() > 1024 {
        return bad("is too long");
    }
    if RESERVED_MOUNT_PATHS
        .iter()
        .any(|r| trimmed == *r || trimmed.starts_with(&format!("{r}/")))
    {
        return bad("is under /proc, /sys or /dev, which hangar mounts itself");
    }
    Ok(())
}

/// The volumes the sandbox mounts, from an already validated config.
pub fn volume_mounts(config: &MachineConfig) -> Vec<VolumeMount> {
    mounts(config)
        .unwrap_or_default()
        .into_iter()
        .map(|m| VolumeMount {
            volume: m.volume,
            path: m.path.trim_end_matches('/').to_string(),
        })
        .collect()
}

/// `config.rootfs`: `persistent` (the default: the writable layer survives stop and
/// start) or `ephemeral` (reset to the image on every start, as on Fly).
fn ephemeral_root_checked(config: &MachineConfig) -> Result<bool> {
    match config.extra.get("rootfs") {
        None | Some(serde_json::Value::Null) => Ok(false),
        Some(serde_json::Value::String(s)) if s == "persistent" => Ok(false),
        Some(serde_json::Value::String(s)) if s == "ephemeral" => Ok(true),
        Some(other) => Err(Error::invalid_config(format!(
            "config.rootfs is {other}: use \"persistent\" (kept across starts, the default) or \"ephemeral\" (reset on every start)"
        ))),
    }
}

/// Whether the machine's root filesystem is reset to the image on every start.
pub fn ephemeral_root(config: &MachineConfig) -> bool {
    ephemeral_root_checked(config).unwrap_or(false)
}

fn validate_guest(guest: &MachineGuest) -> Result<()> {
    if !(1..=MAX_CPUS).contains(&guest.cpus) {
        return Err(Error::invalid_config(format!(
            "config.guest.cpus is {}: use a whole number from 1 to {MAX_CPUS}",
            guest.cpus
        )));
    }
    if !(MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&guest.memory_mb) {
        return Err(Error::invalid_config(format!(
            "config.guest.memory_mb is {}: use a number of MiB from {MIN_MEMORY_MB} to {MAX_MEMORY_MB}",
            guest.memory_mb
        )));
    }
    Ok(())
}

pub fn resources(config: &MachineConfig) -> Resources {
    let guest = config.guest.clone().unwrap_or_default();
    Resources {
        cpus: guest.cpus.clamp(1, MAX_CPUS) as u32,
        memory_mb: guest.memory_mb.clamp(MIN_MEMORY_MB, MAX_MEMORY_MB) as u64,
        pids_max: Resources::default().pids_max,
    }
}

/// Decodes `config.files`.
pub fn guest_files(config: &MachineConfig) -> Result<Vec<GuestFile>> {
    use base64::Engine;
    let mut total = 0;
    let mut files = Vec::with_capacity(config.files.len());
    for (i, file) in config.files.iter().enumerate() {
        if !file.guest_path.starts_with('/') || file.guest_path.contains('\0') {
            return Err(Error::invalid_config(format!(
                "config.files[{i}].guest_path {:?} must be an absolute path",
                file.guest_path
            )));
        }
        if file.secret_name.is_some() {
            return Err(Error::invalid_config(format!(
                "config.files[{i}].secret_name is not supported yet: pass the contents in raw_value"
            )));
        }
        let contents = match &file.raw_value {
            Some(raw) => base64::engine::general_purpose::STANDARD
                .decode(raw.trim())
                .map_err(|_| {
                    Error::invalid_config(format!(
                        "config.files[{i}].raw_value is not valid base64"
                    ))
                })?,
            None => Vec::new(),
        };
        total += contents.len();
        if total > MAX_FILES_BYTES {
            return Err(Error::invalid_config(format!(
                "config.files add up to more than {} MiB: put large files in the image or a volume",
                MAX_FILES_BYTES >> 20
            )));
        }
        let mode = file.mode.unwrap_or(0o644);
        if mode > 0o7777 {
            return Err(Error::invalid_config(format!(
                "config.files[{i}].mode {mode} is not a permission mode (0 to 4095, e.g. 420 for 0644)"
            )));
        }
        files.push(GuestFile {
            path: file.guest_path.clone(),
            contents,
            mode,
        });
    }
    Ok(files)
}

/// The main process: the config's `init` over the image's defaults, Docker's rules.
pub fn process(
    machine_id: &str,
    app: &str,
    config: &MachineConfig,
    image: &ImageConfig,
) -> Result<ProcessSpec> {
    let init = config.init.clone().unwrap_or_default();
    let argv = match (init.exec, init.entrypoint, init.cmd) {
        (Some(exec), _, _) if !exec.is_empty() => exec,
        (_, Some(entrypoint), cmd) => {
            // A new entrypoint drops the image's command, as in Docker.
            let mut argv = entrypoint;
            argv.extend(cmd.unwrap_or_default());
            argv
        }
        (_, None, Some(cmd)) if !cmd.is_empty() => {
            let mut argv = image.entrypoint.clone();
            argv.extend(cmd);
            argv
        }
        _ => {
            let mut argv = image.entrypoint.clone();
            argv.extend(image.cmd.iter().cloned());
            argv
        }
    };
    if argv.is_empty() {
        return Err(Error::invalid_config(
            "the image has no command to run: set config.init.cmd (e.g. [\"sleep\", \"inf\"])",
        ));
    }
    Ok(ProcessSpec {
        argv,
        env: environment(machine_id, app, config, image),
        cwd: image.working_dir.clone(),
        user: image.user.clone(),
        files: guest_files(config)?,
    })
}

/// The image's environment, then the platform's, then the config's, later ones winning.
pub fn environment(
    machine_id: &str,
    app: &str,
    config: &MachineConfig,
    image: &ImageConfig,
) -> Vec<String> {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert(
        "PATH".into(),
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    );
    for pair in &image.env {
        if let Some((key, value)) = pair.split_once('=') {
            env.insert(key.to_string(), value.to_string());
        }
    }
    for (key, value) in [
        ("HANGAR_MACHINE_ID", machine_id),
        ("HANGAR_APP_NAME", app),
        ("FLY_MACHINE_ID", machine_id),
        ("FLY_APP_NAME", app),
        ("FLY_REGION", crate::REGION),
    ] {
        env.insert(key.to_string(), value.to_string());
    }
    for (key, value) in &config.env {
        env.insert(key.clone(), value.clone());
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Parses a signal name (`SIGTERM`, `TERM`) or number.
pub fn parse_signal(name: &str) -> Result<i32> {
    const SIGNALS: [(&str, i32); 15] = [
        ("HUP", 1),
        ("INT", 2),
        ("QUIT", 3),
        ("ILL", 4),
        ("TRAP", 5),
        ("ABRT", 6),
        ("FPE", 8),
        ("KILL", 9),
        ("USR1", 10),
        ("SEGV", 11),
        ("USR2", 12),
        ("PIPE", 13),
        ("ALRM", 14),
        ("TERM", 15),
        ("WINCH", 28),
    ];
    let trimmed = name.trim();
    if let Ok(n) = trimmed.parse::<i32>()
        && (1..=64).contains(&n)
    {
        return Ok(n);
    }
    let bare = trimmed.strip_prefix("SIG").unwrap_or(trimmed);
    SIGNALS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(bare))
        .map(|(_, number)| *number)
        .ok_or_else(|| {
            Error::bad_request(format!(
                "signal {name:?} is not known: use a name such as SIGTERM, SIGINT, SIGKILL or SIGUSR1"
            ))
        })
}

/// Parses a Go-style duration (`"10s"`, `"1m30s"`, `"500ms"`) or a number of seconds.
pub fn parse_duration(value: &serde_json::Value) -> Result<std::time::Duration> {
    use std::time::Duration;
    let bad = || {
        Error::bad_request(format!(
            "timeout {value} is not a duration: use seconds (10) or a Go duration (\"10s\", \"1m\")"
        ))
    };
    match value {
        serde_json::Value::Number(n) => n
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0 && *s < 1e9)
            .map(Duration::from_secs_f64)
            .ok_or_else(bad),
        serde_json::Value::String(s) => parse_go_duration(s).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn parse_go_duration(s: &str) -> Option<std::time::Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && (0.0..1e9).contains(&secs))
            .then(|| std::time::Duration::from_secs_f64(secs));
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total < 1e9).then(|| std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hangar_types::{MachineInit, MachineRestart};
    use std::time::Duration;

    fn image() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/entry".into()],
            cmd: vec!["serve".into()],
            env: vec!["A=image".into(), "B=image".into()],
            ..Default::default()
        }
    }

    fn config() -> MachineConfig {
        MachineConfig {
            image: "busybox".into(),
            ..Default::default()
        }
    }

    #[test]
    fn argv_follows_docker_rules() {
        let mut c = config();
        let argv = |c: &MachineConfig| process("m", "a", c, &image()).unwrap().argv;
        assert_eq!(argv(&c), ["/entry", "serve"]);
        c.init = Some(MachineInit {
            cmd: Some(vec!["x".into()]),
            ..Default::default()
        });
        assert_eq!(argv(&c), ["/entry", "x"]);
        c.init = Some(MachineInit {
            entrypoint: Some(vec!["/sh".into()]),
            ..Default::default()
        });
        assert_eq!(argv(&c), ["/sh"]);
        c.init = Some(MachineInit {
            exec: Some(vec!["/bin/true".into()]),
            cmd: Some(vec!["x".into()]),
            ..Default::default()
        });
        assert_eq!(argv(&c), ["/bin/true"]);
    }

    #[test]
    fn no_command_is_a_config_error() {
        let err = process("m", "a", &config(), &ImageConfig::default()).unwrap_err();
        assert_eq!(err.code(), hangar_types::ErrorCode::InvalidConfig);
    }

    #[test]
    fn config_env_wins_over_image_env() {
        let mut c = config();
        c.env.insert("B".into(), "config".into());
        let env = environment("m", "a", &c, &image());
        assert!(env.contains(&"A=image".to_string()));
        assert!(env.contains(&"B=config".to_string()));
        assert!(env.contains(&"FLY_MACHINE_ID=m".to_string()));
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases: Vec<(MachineConfig, &str)> = vec![
            (MachineConfig::default(), "config.image"),
            (
                MachineConfig {
                    guest: Some(MachineGuest {
                        memory_mb: 0,
                        ..Default::default()
                    }),
                    ..config()
                },
                "memory_mb",
            ),
            (
                MachineConfig {
                    guest: Some(MachineGuest {
                        cpus: -1,
                        ..Default::default()
                    }),
                    ..config()
                },
                "cpus",
            ),
            (
                MachineConfig {
                    restart: Some(MachineRestart {
                        policy: Some("sometimes".into()),
                        max_retries: None,
                    }),
                    ..config()
                },
                "restart.policy",
            ),
        ];
        for (c, field) in cases {
            let err = validate(&c).unwrap_err();
            assert_eq!(err.code(), hangar_types::ErrorCode::InvalidConfig);
            assert!(
                err.public_message().contains(field),
                "{}",
                err.public_message()
            );
        }
    }

    #[test]
    fn signals_and_durations_parse() {
        assert_eq!(parse_signal("SIGTERM").unwrap(), 15);
        assert_eq!(parse_signal("kill").unwrap(), 9);
        assert_eq!(parse_signal("10").unwrap(), 10);
        assert!(parse_signal("SIGNOPE").is_err());
        assert_eq!(
            parse_duration(&serde_json::json!("1m30s")).unwrap(),
            Duration::from_secs(90)
        );
        assert_eq!(
            parse_duration(&serde_json::json!("500ms")).unwrap(),
            Duration::from_millis(500)
        );
        assert_eq!(
            parse_duration(&serde_json::json!(5)).unwrap(),
            Duration::from_secs(5)
        );
        assert!(parse_duration(&serde_json::json!("soon")).is_err());
        assert!(parse_duration(&serde_json::json!(-1)).is_err());
    }
}

/// One entry of `config.services` (Fly's shape), as the edge proxy routes it.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct ServiceConfig {
    #[serde(default = "default_protocol")]
    pub protocol: String,
    pub internal_port: u16,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// Start a stopped or suspended machine when a request arrives for it.
    #[serde(default)]
    pub autostart: Option<bool>,
    /// `off`, `stop` or `suspend` (Fly also accepts booleans: true is `stop`).
    #[serde(default)]
    pub autostop: Option<serde_json::Value>,
    #[serde(default)]
    pub min_machines_running: Option<u32>,
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct ServicePort {
    pub port: Option<u16>,
    #[serde(default)]
    pub handlers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Concurrency {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    pub soft_limit: Option<u32>,
    pub hard_limit: Option<u32>,
}

/// What the proxy does with an idle machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Autostop {
    Off,
    Stop,
    Suspend,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

impl ServiceConfig {
    pub fn autostop(&self) -> Autostop {
        match &self.autostop {
            Some(serde_json::Value::Bool(true)) => Autostop::Stop,
            Some(serde_json::Value::String(s)) if s == "stop" => Autostop::Stop,
            Some(serde_json::Value::String(s)) if s == "suspend" => Autostop::Suspend,
            _ => Autostop::Off,
        }
    }

    /// Whether the service takes plain HTTP on public port `port` (80 for the HTTP
    /// listener, 443 for TLS).
    pub fn serves(&self, port: u16) -> bool {
        self.ports.iter().any(|p| p.port == Some(port))
    }
}

/// Parses and checks `config.services`; absent is no services.
pub fn services(config: &MachineConfig) -> Result<Vec<ServiceConfig>> {
    let Some(value) = config.extra.get("services") else {
        return Ok(Vec::new());
    };
    if value.is_null() {
        return Ok(Vec::new());
    }
    let services: Vec<ServiceConfig> = serde_json::from_value(value.clone()).map_err(|e| {
        Error::invalid_config(format!(
            "config.services is not valid ({e}): use [{{\"protocol\": \"tcp\", \"internal_port\": 8080, \"ports\": [{{\"port\": 80, \"handlers\": [\"http\"]}}]}}]"
        ))
    })?;
    for (i, s) in services.iter().enumerate() {
        if s.protocol != "tcp" && s.protocol != "udp" {
            return Err(Error::invalid_config(format!(
                "config.services[{i}].protocol {:?} is not known: use \"tcp\"",
                s.protocol
            )));
        }
        if s.internal_port == 0 {
            return Err(Error::invalid_config(format!(
                "config.services[{i}].internal_port must be a port from 1 to 65535"
            )));
        }
        for (j, p) in s.ports.iter().enumerate() {
            for h in &p.handlers {
                if !["http", "tls", "proxy_proto", "pg_tls", "edge_http"].contains(&h.as_str()) {
                    return Err(Error::invalid_config(format!(
                        "config.services[{i}].ports[{j}].handlers has {h:?}: use \"http\" or \"tls\""
                    )));
                }
            }
        }
        match &s.autostop {
            None | Some(serde_json::Value::Null) | Some(serde_json::Value::Bool(_)) => {}
            Some(serde_json::Value::String(v))
                if ["off", "stop", "suspend"].contains(&v.as_str()) => {}
            Some(other) => {
                return Err(Error::invalid_config(format!(
                    "config.services[{i}].autostop is {other}: use \"off\", \"stop\" or \"suspend\""
                )));
            }
        }
        if let Some(c) = &s.concurrency {
            if let Some(kind) = &c.kind
                && kind != "connections"
                && kind != "requests"
            {
                return Err(Error::invalid_config(format!(
                    "config.services[{i}].concurrency.type {kind:?} is not known: use \"connections\" or \"requests\""
                )));
            }
            if let (Some(soft), Some(hard)) = (c.soft_limit, c.hard_limit)
                && soft > hard
            {
                return Err(Error::invalid_config(format!(
                    "config.services[{i}].concurrency.soft_limit ({soft}) is above hard_limit ({hard})"
                )));
            }
        }
    }
    Ok(services)
}

/// One entry of `config.checks` (Fly's `api.MachineCheck`), checked and with its
/// defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckConfig {
    pub kind: CheckKind,
    pub port: u16,
    pub interval: std::time::Duration,
    pub timeout: std::time::Duration,
    pub grace_period: std::time::Duration,
    /// For `http` checks: the request line's method and path, and extra headers.
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// The port accepts a connection.
    Tcp,
    /// The port answers a request with 2xx or 3xx.
    Http,
}

/// Fly's defaults and the bounds hangar keeps checks within.
pub const DEFAULT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);
pub const DEFAULT_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
pub const MIN_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
pub const MAX_CHECK_DURATION: std::time::Duration = std::time::Duration::from_secs(3600);
pub const MAX_CHECKS: usize = 16;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCheck {
    #[serde(rename = "type")]
    kind: Option<String>,
    port: Option<i64>,
    interval: Option<serde_json::Value>,
    timeout: Option<serde_json::Value>,
    grace_period: Option<serde_json::Value>,
    method: Option<String>,
    path: Option<String>,
    protocol: Option<String>,
    #[serde(default)]
    headers: Vec<RawHeader>,
    #[allow(dead_code)]
    tls_server_name: Option<String>,
    #[allow(dead_code)]
    tls_skip_verify: Option<bool>,
}

#[derive(serde::Deserialize)]
struct RawHeader {
    name: String,
    #[serde(default)]
    values: Vec<String>,
}

/// Parses and checks `config.checks` and every `config.services[].checks`; absent is
/// no checks. Keyed by check name: a service's checks have none in Fly's API and are
/// named `servicecheck-NN-<type>-<port>` in the order they appear.
pub fn checks(config: &MachineConfig) -> Result<BTreeMap<String, CheckConfig>> {
    let mut out = BTreeMap::new();
    if let Some(value) = config.extra.get("checks").filter(|v| !v.is_null()) {
        let raw: BTreeMap<String, RawCheck> =
            serde_json::from_value(value.clone()).map_err(|e| {
                Error::invalid_config(format!(
                    "config.checks is not valid ({e}): use {{\"alive\": {{\"type\": \"http\", \"port\": 8080, \"path\": \"/healthz\", \"interval\": \"10s\", \"timeout\": \"2s\"}}}}"
                ))
            })?;
        for (name, c) in raw {
            if name.is_empty() || name.len() > 64 || name.chars().any(|ch| ch.is_control()) {
                return Err(Error::invalid_config(format!(
                    "config.checks has a check named {name:?}: use a short name such as \"alive\""
                )));
            }
            let check = check(c, None, &format!("config.checks.{name}"))?;
            out.insert(name, check);
        }
    }
    let services = config.extra.get("services").and_then(|v| v.as_array());
    let mut n = 0;
    for (i, s) in services.into_iter().flatten().enumerate() {
        let Some(list) = s.get("checks").filter(|v| !v.is_null()) else {
            continue;
        };
        let raw: Vec<RawCheck> = serde_json::from_value(list.clone()).map_err(|e| {
            Error::invalid_config(format!(
                "config.services[{i}].checks is not valid ({e}): use [{{\"type\": \"http\", \"path\": \"/healthz\", \"interval\": \"10s\"}}]"
            ))
        })?;
        let internal_port = s
            .get("internal_port")
            .and_then(|p| p.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        for (j, c) in raw.into_iter().enumerate() {
            let check = check(
                c,
                internal_port,
                &format!("config.services[{i}].checks[{j}]"),
            )?;
            let kind = match check.kind {
                CheckKind::Tcp => "tcp",
                CheckKind::Http => "http",
            };
            out.insert(format!("servicecheck-{n:02}-{kind}-{}", check.port), check);
            n += 1;
        }
    }
    if out.len() > MAX_CHECKS {
        return Err(Error::invalid_config(format!(
            "config.checks and config.services[].checks hold {} checks: a machine has at most {MAX_CHECKS}",
            out.len()
        )));
    }
    Ok(out)
}

/// One check, its fields named from `field` in errors; `default_port` is a service's
/// internal port, which its checks connect to unless they name another.
fn check(c: RawCheck, default_port: Option<u16>, field: &str) -> Result<CheckConfig> {
    let bad = |why: String| Error::invalid_config(format!("{field}.{why}"));
    let kind = match c.kind.as_deref() {
        None | Some("tcp") => CheckKind::Tcp,
        Some("http") => CheckKind::Http,
        Some(other) => {
            return Err(bad(format!(
                "type {other:?} is not known: use \"tcp\" or \"http\""
            )));
        }
    };
    let port = match (c.port, default_port) {
        (Some(p), _) if (1..=65535).contains(&p) => p as u16,
        (Some(p), _) => return Err(bad(format!("port {p} is not a port: use 1 to 65535"))),
        (None, Some(p)) => p,
        (None, None) => {
            return Err(bad(
                    "port is required: name the port the check connects to, often the service's internal_port".into(),
                ));
        }
    };
    let duration = |field: &str, v: &Option<serde_json::Value>, default| -> Result<_> {
        let Some(v) = v else { return Ok(default) };
        let d = parse_duration(v).map_err(|_| {
            bad(format!(
                "{field} {v} is not a duration: use a Go duration such as \"10s\" or \"500ms\""
            ))
        })?;
        if d > MAX_CHECK_DURATION {
            return Err(bad(format!("{field} {v} is longer than an hour")));
        }
        Ok(d)
    };
    let interval = duration("interval", &c.interval, DEFAULT_CHECK_INTERVAL)?;
    if interval < MIN_CHECK_INTERVAL {
        return Err(bad(format!(
            "interval is {interval:?}: checks run at most every {MIN_CHECK_INTERVAL:?}"
        )));
    }
    let timeout = duration("timeout", &c.timeout, DEFAULT_CHECK_TIMEOUT)?;
    if timeout.is_zero() {
        return Err(bad("timeout must be more than zero, such as \"2s\"".into()));
    }
    let grace_period = duration("grace_period", &c.grace_period, Default::default())?;
    let method = c
        .method
        .unwrap_or_else(|| "GET".into())
        .to_ascii_uppercase();
    if !["GET", "HEAD"].contains(&method.as_str()) {
        return Err(bad(format!(
            "method {method:?} is not supported: use \"GET\" or \"HEAD\""
        )));
    }
    let path = c.path.unwrap_or_else(|| "/".into());
    if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad(format!(
            "path {path:?} must start with '/' and have no spaces or control characters"
        )));
    }
    match c.protocol.as_deref() {
        None | Some("http") => {}
        Some(other) => {
            return Err(bad(format!(
                "protocol {other:?} is not supported: checks speak plain \"http\" to the machine"
            )));
        }
    }
    let mut headers = Vec::new();
    for h in c.headers {
        let valid_name = !h.name.is_empty()
            && h.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        if !valid_name
            || h.values
                .iter()
                .any(|v| v.bytes().any(|b| b.is_ascii_control()))
        {
            return Err(bad(format!(
                "headers has {:?}: a header name is letters, digits and '-', and values have no control characters",
                h.name
            )));
        }
        for v in h.values {
            headers.push((h.name.clone(), v));
        }
    }
    Ok(CheckConfig {
        kind,
        port,
        interval,
        timeout,
        grace_period,
        method,
        path,
        headers,
    })
}

#[cfg(test)]
mod check_tests {
    use super::*;

    fn with_checks(checks: serde_json::Value) -> MachineConfig {
        let mut c = MachineConfig {
            image: "busybox".into(),
            ..Default::default()
        };
        c.extra.insert("checks".into(), checks);
        c
    }

    #[test]
    fn checks_get_fly_defaults() {
        let c = checks(&with_checks(serde_json::json!({
            "alive": {"type": "http", "port": 8080, "path": "/up", "interval": "1s",
                      "headers": [{"name": "X-Probe", "values": ["1"]}]},
            "port": {"port": 22}
        })))
        .unwrap();
        let alive = &c["alive"];
        assert_eq!(alive.kind, CheckKind::Http);
        assert_eq!(alive.interval, std::time::Duration::from_secs(1));
        assert_eq!(alive.timeout, DEFAULT_CHECK_TIMEOUT);
        assert_eq!(alive.method, "GET");
        assert_eq!(alive.headers, [("X-Probe".to_string(), "1".to_string())]);
        assert_eq!(c["port"].kind, CheckKind::Tcp);
        assert_eq!(c["port"].interval, DEFAULT_CHECK_INTERVAL);
    }

    #[test]
    fn service_checks_connect_to_their_service_port() {
        let mut c = with_checks(serde_json::json!({"alive": {"port": 22}}));
        c.extra.insert(
            "services".into(),
            serde_json::json!([
                {"internal_port": 8080, "checks": [{"type": "http", "path": "/up"}, {}]},
                {"internal_port": 9090, "checks": [{"port": 9091}]}
            ]),
        );
        let checks = checks(&c).unwrap();
        let names: Vec<&str> = checks.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "alive",
                "servicecheck-00-http-8080",
                "servicecheck-01-tcp-8080",
                "servicecheck-02-tcp-9091"
            ]
        );
        assert_eq!(checks["servicecheck-00-http-8080"].path, "/up");

        c.extra.insert(
            "services".into(),
            serde_json::json!([{"internal_port": 8080, "checks": [{"type": "udp"}]}]),
        );
        let err = validate(&c).unwrap_err();
        assert!(
            err.public_message()
                .contains("config.services[0].checks[0].type"),
            "{}",
            err.public_message()
        );
        let many: Vec<serde_json::Value> = (0..MAX_CHECKS).map(|_| serde_json::json!({})).collect();
        c.extra.insert(
            "services".into(),
            serde_json::json!([{"internal_port": 8080, "checks": many}]),
        );
        assert!(
            validate(&c)
                .unwrap_err()
                .public_message()
                .contains("at most 16")
        );
    }

    #[test]
    fn bad_checks_name_the_field() {
        for (checks_json, field) in [
            (serde_json::json!([1]), "config.checks"),
            (
                serde_json::json!({"a": {"port": 80, "type": "udp"}}),
                "a.type",
            ),
            (serde_json::json!({"a": {"type": "tcp"}}), "a.port"),
            (serde_json::json!({"a": {"port": 70000}}), "a.port"),
            (
                serde_json::json!({"a": {"port": 80, "interval": "soon"}}),
                "a.interval",
            ),
            (
                serde_json::json!({"a": {"port": 80, "interval": "1ms"}}),
                "a.interval",
            ),
            (
                serde_json::json!({"a": {"port": 80, "timeout": "0s"}}),
                "a.timeout",
            ),
            (
                serde_json::json!({"a": {"port": 80, "method": "POST"}}),
                "a.method",
            ),
            (
                serde_json::json!({"a": {"port": 80, "path": "up"}}),
                "a.path",
            ),
            (
                serde_json::json!({"a": {"port": 80, "protocol": "https"}}),
                "a.protocol",
            ),
            (
                serde_json::json!({"a": {"port": 80, "bogus": 1}}),
                "config.checks",
            ),
        ] {
            let err = validate(&with_checks(checks_json)).unwrap_err();
            assert_eq!(err.code(), hangar_types::ErrorCode::InvalidConfig);
            assert!(
                err.public_message().contains(field),
                "{field}: {}",
                err.public_message()
            );
        }
    }
}
