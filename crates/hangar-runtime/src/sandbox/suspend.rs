//! `suspend` and `resume`: the cgroup freezer, memory kept.

use hangar_core::MachineId;

use super::{SandboxDriver, SandboxError};

impl SandboxDriver {
    pub async fn set_frozen(&self, id: &MachineId, frozen: bool) -> Result<(), SandboxError> {
        self.ensure_exists(id)?;
        let shared = self.shared.clone();
        let id = id.clone();
        tokio::task::spawn_blocking(move || shared.cgroups.freeze(&id, frozen))
            .await
            .map_err(|e| SandboxError::Protocol(format!("freezer task: {e}")))?
    }
}
