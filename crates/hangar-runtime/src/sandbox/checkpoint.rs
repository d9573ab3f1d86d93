//! `checkpoint`, `restore`, `fork`, `diff`, `reset` and `rebuild`: the writable
//! layer's verbs.
//!
//! A checkpoint of a running machine is taken with its cgroup frozen, so no process
//! writes half a file into it. An overlay's upper directory cannot be swapped under
//! the processes using it, so restore and reset rebuild the sandbox's runtime (init,
//! cgroups, the overlay in its mount namespace) around the new layer.

use hangar_core::MachineId;
use hangar_core::driver::{CheckpointDiff, SandboxSpec};

use super::{SandboxDriver, SandboxError};

impl SandboxDriver {
    pub async fn checkpoint_layer(
        &self,
        id: &MachineId,
        checkpoint: &str,
    ) -> Result<(), SandboxError> {
        let guard = self.machine_lock(id);
        let _held = guard.lock().await;
        if !self.storage.has_layer(id) {
            return Err(SandboxError::NotFound(id.clone()));
        }
        let shared = self.shared.clone();
        let storage = self.storage.clone();
        let (id, checkpoint) = (id.clone(), checkpoint.to_string());
        // Flushing, freezing and the snapshot's commit block: keep them off the
        // runtime's threads.
        tokio::task::spawn_blocking(move || {
            // Much dirty data goes to disk before the freeze, so the freeze is short.
            storage.sync(&id);
            let live = !shared.cgroups.tasks(&id).is_empty();
            let freeze = live && !shared.cgroups.is_frozen(&id);
            if freeze {
                shared.cgroups.freeze(&id, true)?;
            }
            let taken = storage.checkpoint(&id, &checkpoint);
            if freeze && let Err(e) = shared.cgroups.freeze(&id, false) {
                tracing::error!(machine = %id, error = %e, "thawing after a checkpoint failed");
            }
            taken
        })
        .await
        .map_err(|e| SandboxError::Protocol(format!("checkpoint task: {e}")))?
    }

    pub async fn delete_checkpoint_layer(
        &self,
        id: &MachineId,
        checkpoint: &str,
    ) -> Result<(), SandboxError> {
        self.storage.remove_checkpoint(id, checkpoint)
    }

    /// Rebuilds the sandbox around a writable snapshot of `checkpoint`.
    pub async fn restore_layer(
        &self,
        spec: &SandboxSpec,
        checkpoint: &str,
    ) -> Result<(), SandboxError> {
        let id = &spec.machine_id;
        let guard = self.machine_lock(id);
        let _held = guard.lock().await;
        if !self.storage.has_checkpoint(id, checkpoint) {
            return Err(SandboxError::InvalidSpec(format!(
                "machine {id} has no checkpoint {checkpoint}"
            )));
        }
        self.stop_watch(id);
        self.teardown(id).await?;
        self.storage.restore(id, checkpoint)?;
        self.create_locked(spec).await
    }

    /// Builds `spec`'s sandbox on a writable snapshot of `source`'s checkpoint.
    pub async fn fork_layer(
        &self,
        source: &MachineId,
        checkpoint: &str,
        spec: &SandboxSpec,
    ) -> Result<(), SandboxError> {
        let id = &spec.machine_id;
        let guard = self.machine_lock(id);
        let _held = guard.lock().await;
        self.storage.fork(source, checkpoint, id)?;
        self.create_locked(spec).await
    }

    pub async fn diff_layer(
        &self,
        id: &MachineId,
        from: &str,
        to: Option<&str>,
    ) -> Result<CheckpointDiff, SandboxError> {
        let storage = self.storage.clone();
        let (id, from, to) = (id.clone(), from.to_string(), to.map(str::to_string));
        tokio::task::spawn_blocking(move || storage.diff(&id, &from, to.as_deref()))
            .await
            .map_err(|e| SandboxError::Protocol(format!("diff task: {e}")))?
    }

    /// Rebuilds the sandbox from a new spec around its current writable layer.
    pub async fn rebuild_sandbox(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let id = &spec.machine_id;
        let guard = self.machine_lock(id);
        let _held = guard.lock().await;
        self.stop_watch(id);
        self.teardown(id).await?;
        self.create_locked(spec).await
    }

    /// Rebuilds the sandbox with an empty writable layer.
    pub async fn reset_layer(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        let id = &spec.machine_id;
        let guard = self.machine_lock(id);
        let _held = guard.lock().await;
        self.stop_watch(id);
        self.teardown(id).await?;
        self.storage.remove_layer(id)?;
        self.create_locked(spec).await
    }
}
