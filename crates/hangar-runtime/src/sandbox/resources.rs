//! `update_resources`: new cgroup limits for a live sandbox.

use hangar_core::MachineId;
use hangar_core::driver::Resources;

use super::{SandboxDriver, SandboxError};

impl SandboxDriver {
    pub fn update_limits(&self, id: &MachineId, r: Resources) -> Result<(), SandboxError> {
        self.ensure_exists(id)?;
        self.shared.cgroups.set_resources(id, &r)?;
        let path = self.machine_dir(id).join("spec.json");
        if let Ok(mut spec) = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .ok_or(())
        {
            spec["resources"] = serde_json::json!({
                "cpus": r.cpus,
                "memory_mb": r.memory_mb,
                "pids_max": r.pids_max,
            });
            std::fs::write(&path, spec.to_string())
                .map_err(SandboxError::io("writing spec.json"))?;
        }
        Ok(())
    }
}
