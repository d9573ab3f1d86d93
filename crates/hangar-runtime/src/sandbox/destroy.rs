//! `destroy`: kill init (its PID namespace takes every process with it), drop the
//! cgroups, delete the machine's directory, its writable layer and checkpoints. The
//! overlay was only ever mounted in the machine's own mount namespace, which dies
//! with its last process.

use std::time::{Duration, Instant};

use hangar_core::MachineId;

use super::{SandboxDriver, SandboxError, lock};

const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

impl SandboxDriver {
    /// Removes the sandbox; absent sandboxes are fine.
    pub async fn destroy_sandbox(&self, id: &MachineId) -> Result<(), SandboxError> {
        let guard = self.machine_lock(id);
        let _held = guard.lock().await;
        self.stop_watch(id);
        self.teardown(id).await?;
        lock(&self.shared.oom_baseline).remove(id);
        lock(&self.spares).remove(id);
        self.storage.remove_all(id)
    }

    /// Kills, un-cgroups and deletes whatever exists of the sandbox's runtime (init,
    /// cgroups, socket, pidfile, log). The writable layer is not touched.
    pub(crate) async fn teardown(&self, id: &MachineId) -> Result<(), SandboxError> {
        let shared = self.shared.clone();
        let init = self.init_pid(id);
        let dir = self.machine_dir(id);
        // The kernel drops a veth with its namespace, but a namespace outlives its
        // processes while anything holds it: remove the host end explicitly.
        if let Ok(veth) = std::fs::read_to_string(dir.join(super::create::VETH_FILE)) {
            let removed = match hangar_net::link::connect() {
                Ok(handle) => hangar_net::link::delete_link(&handle, veth.trim()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = removed {
                tracing::warn!(machine = %id, error = %e, "removing the machine's veth");
            }
        }
        let id = id.clone();
        tokio::task::spawn_blocking(move || {
            let cg = &shared.cgroups;
            if cg.exists(&id) && cg.is_frozen(&id) {
                // v1 frozen tasks cannot die until thawed.
                let _ = cg.freeze(&id, false);
            }
            if let Some(pid) = init {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            let mut pause = Duration::from_micros(200);
            loop {
                let tasks = cg.tasks(&id);
                if tasks.is_empty() {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(SandboxError::Timeout(format!(
                        "waiting for machine {id}'s processes to exit ({} left)",
                        tasks.len()
                    )));
                }
                for t in tasks {
                    // SAFETY: as above; these pids are in the machine's cgroup.
                    unsafe { libc::kill(t, libc::SIGKILL) };
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            {
                let _parent = lock(&shared.cgroup_parent);
                cg.remove(&id, DRAIN_TIMEOUT)?;
                cg.remove_parent_if_empty();
            }
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(SandboxError::io(format!("removing {}", dir.display()))(e)),
            }
        })
        .await
        .map_err(|e| SandboxError::Protocol(format!("teardown task: {e}")))?
    }
}
