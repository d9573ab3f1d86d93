//! `observe` and `list`: what is on the host, also for sandboxes a previous daemon
//! created (they are adopted here: their event stream is reconnected).

use hangar_core::MachineId;
use hangar_core::driver::Observed;
use hangar_init::proto::{Request, Response};

use super::client::{QUICK, call};
use super::{SandboxDriver, SandboxError};

impl SandboxDriver {
    pub async fn observe_machine(&self, id: &MachineId) -> Result<Observed, SandboxError> {
        let guard = self.machine_lock(id);
        let _held = guard.lock().await;
        if !self.machine_dir(id).exists() {
            return Ok(Observed::Absent);
        }
        if self.init_pid(id).is_none() {
            // Init is gone (killed, or the host rebooted): the sandbox cannot come
            // back, so its runtime remnants go. The writable layer stays for the next
            // create.
            self.stop_watch(id);
            self.teardown(id).await?;
            return Ok(Observed::Absent);
        }
        if self.shared.cgroups.is_frozen(id) {
            return Ok(Observed::Frozen);
        }
        self.ensure_watch(id).await?;
        match call(id, &self.socket(id), &Request::Status, Some(QUICK)).await? {
            Response::Status(s) => Ok(match s.pid {
                Some(pid) => Observed::Running { pid: pid as u32 },
                None => Observed::Idle {
                    last_exit: s.last_exit.map(|e| self.shared.exit_status(id, e)),
                },
            }),
            other => Err(SandboxError::Protocol(format!(
                "unexpected answer to status: {other:?}"
            ))),
        }
    }

    pub fn list_machines(&self) -> Result<Vec<MachineId>, SandboxError> {
        let dir = std::fs::read_dir(&self.config.state_dir)
            .map_err(SandboxError::io("listing the state directory"))?;
        let mut ids: Vec<MachineId> = dir
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| e.file_name().to_str().and_then(MachineId::parse))
            .collect();
        // A layer whose sandbox is gone still belongs to a machine (or is an orphan).
        ids.extend(self.storage.layer_ids());
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}
