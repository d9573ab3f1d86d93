//! `create`: the machine's directories, cgroups and namespaces, with init running
//! and no main process.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use hangar_core::driver::SandboxSpec;

use super::boot::{BOOT_SUBCOMMAND, BootConfig, BootMount};
use super::{SandboxDriver, SandboxError};

/// How long building a sandbox may take before it is abandoned.
const BOOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Overlay options are comma- and colon-separated: paths with those cannot be
/// layers.
fn check_layer(layer: &Path) -> Result<String, SandboxError> {
    let s = layer.to_str().ok_or_else(|| {
        SandboxError::InvalidSpec(format!("layer path {} is not UTF-8", layer.display()))
    })?;
    if !layer.is_absolute() || s.contains([',', ':', '\n']) {
        return Err(SandboxError::InvalidSpec(format!(
            "layer path {s} must be absolute and contain no ',' or ':'"
        )));
    }
    if !layer.is_dir() {
        return Err(SandboxError::InvalidSpec(format!(
            "layer {s} is not a directory"
        )));
    }
    Ok(s.to_string())
}

/// The overlay's lower directories for `spec`, topmost first (overlay's order; OCI
/// lists the lowest first).
pub(crate) fn lower_dirs(spec: &SandboxSpec) -> Result<Vec<String>, SandboxError> {
    spec.layers.iter().rev().map(|l| check_layer(l)).collect()
}

/// The empty lower directory of a machine whose image has no layers.
pub(crate) const EMPTY_LOWER: &str = "empty";

impl SandboxDriver {
    /// Builds the sandbox. Idempotent: an existing, live sandbox is left as is; the
    /// remnants of a dead one are cleared first. On failure nothing is left behind.
    pub async fn create_sandbox(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let guard = self.machine_lock(&spec.machine_id);
        let _held = guard.lock().await;
        self.create_locked(spec).await
    }

    /// [`Self::create_sandbox`] with the machine's lock held. The writable layer is
    /// reused when it exists and is never removed here.
    pub(crate) async fn create_locked(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let id = &spec.machine_id;
        if self.machine_dir(id).exists() {
            if self.init_pid(id).is_some() {
                return self.ensure_watch(id).await;
            }
            self.teardown(id).await?;
        }
        let lower = lower_dirs(spec)?;
        match self.build(spec, lower).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Err(cleanup) = self.teardown(id).await {
                    tracing::warn!(machine = %id, error = %cleanup, "cleaning up a failed create");
                }
                Err(e)
            }
        }
    }

    async fn build(&self, spec: &SandboxSpec, mut lower: Vec<String>) -> Result<(), SandboxError> {
        let id = &spec.machine_id;
        let dir = self.machine_dir(id);
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        builder
            .create(&dir)
            .map_err(SandboxError::io(format!("creating {}", dir.display())))?;
        builder.mode(0o755);
        builder
            .create(dir.join("rootfs"))
            .map_err(SandboxError::io("creating rootfs/"))?;
        self.storage.ensure_layer(id)?;
        if lower.is_empty() {
            // Overlay needs a lower layer; an image without layers gets an empty one.
            builder
                .create(dir.join(EMPTY_LOWER))
                .map_err(SandboxError::io("creating empty/"))?;
            lower.push(dir.join(EMPTY_LOWER).to_string_lossy().into_owned());
        }
        let record = serde_json::json!({
            "machine_id": id,
            "layers": spec.layers,
            "resources": {
                "cpus": spec.resources.cpus,
                "memory_mb": spec.resources.memory_mb,
                "pids_max": spec.resources.pids_max,
            },
            "mounts": spec.mounts.iter().map(|m| serde_json::json!({"volume": m.volume, "path": m.path})).collect::<Vec<_>>(),
        });
        std::fs::write(dir.join("spec.json"), record.to_string())
            .map_err(SandboxError::io("writing spec.json"))?;

        {
            let _parent = super::lock(&self.shared.cgroup_parent);
            self.shared.cgroups.create(id, &spec.resources)?;
        }

        // Held until the helper has mounted them; dropped after, they detach with the
        // machine's mount namespace.
        let devices = self.attach_volumes(id, &spec.mounts).await?;
        let boot = BootConfig {
            machine_id: id.to_string(),
            lower,
            upper: self.storage.upper(id),
            work: self.storage.work(id),
            rootfs: dir.join("rootfs"),
            init: self.init_path.clone(),
            socket: self.socket(id),
            log: dir.join("log"),
            pidfile: self.pidfile(id),
            cgroup_procs: self.shared.cgroups.procs_files(id),
            mounts: spec
                .mounts
                .iter()
                .zip(&devices)
                .map(|(m, d)| BootMount {
                    device: d.path.clone(),
                    path: m.path.clone(),
                })
                .collect(),
            resolv_conf: None,
        };
        let mut boot = boot;
        if let Some(net) = &spec.network {
            // Written before the veth exists, so teardown finds it whatever fails next.
            std::fs::write(dir.join(VETH_FILE), &net.host_ifname)
                .map_err(SandboxError::io("writing the veth name"))?;
            let resolv = dir.join("resolv.conf");
            std::fs::write(&resolv, &net.resolv_conf)
                .map_err(SandboxError::io("writing resolv.conf"))?;
            boot.resolv_conf = Some(resolv);
        }
        let boot_path = dir.join("boot.json");
        std::fs::write(
            &boot_path,
            serde_json::to_vec(&boot).map_err(|e| SandboxError::Boot(e.to_string()))?,
        )
        .map_err(SandboxError::io("writing boot.json"))?;

        let helper = tokio::process::Command::new(&self.config.boot_exe)
            .arg(BOOT_SUBCOMMAND)
            .arg(&boot_path)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(BOOT_TIMEOUT, helper).await;
        drop(devices);
        let out = out
            .map_err(|_| SandboxError::Timeout("building the sandbox".into()))?
            .map_err(SandboxError::io(format!(
                "running the boot helper {}",
                self.config.boot_exe.display()
            )))?;
        if !out.status.success() || !out.stdout.starts_with(b"ready ") {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(SandboxError::Boot(if stderr.trim().is_empty() {
                format!("the boot helper exited with {}", out.status)
            } else {
                stderr.trim().to_string()
            }));
        }
        if let Some(net) = &spec.network {
            let pid = self.init_pid(id).ok_or_else(|| {
                SandboxError::Boot("init exited before its network was set up".into())
            })?;
            let handle = hangar_net::link::connect()?;
            hangar_net::link::attach(&handle, net, pid).await?;
        }
        self.ensure_watch(id).await
    }
}

/// The file in a machine's directory naming the host end of its veth.
pub(crate) const VETH_FILE: &str = "veth";
