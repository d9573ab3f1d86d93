//! `checkpoint`, `restore`, `fork`, `diff`, `reset` and `rebuild`: the writable
//! layer's verbs.
//!
//! A checkpoint of a running machine is taken with its cgroup frozen, so no process
//! writes half a file into it. An overlay's upper directory cannot be swapped under
//! the processes using it: restore of a stopped machine mounts a new overlay and
//! pivots its mount namespace onto it under the waiting init (see `reroot`); when
//! that cannot be done, and for reset, the sandbox's runtime (init, cgroups, the
//! overlay in its mount namespace) is rebuilt around the new layer.

use hangar_core::MachineId;
use hangar_core::driver::{CheckpointDiff, SandboxSpec};

use super::reroot::{self, Carry};
use super::{SandboxDriver, SandboxError};

/// How long a machine's storage must be left alone before its spare is made.
const SPARE_DELAY: std::time::Duration = std::time::Duration::from_millis(500);

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
        {
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
            .map_err(|e| SandboxError::Protocol(format!("checkpoint task: {e}")))??;
        }
        // The newest checkpoint is the likeliest to be restored or forked.
        self.spare_later(id, checkpoint);
        Ok(())
    }

    /// Makes a spare of the checkpoint (see `Storage::stage`) once the machine's
    /// storage has been left alone for [`SPARE_DELAY`]: the spare's own snapshot
    /// then competes with nothing the caller is waiting for.
    fn spare_later(&self, id: &MachineId, checkpoint: &str) {
        let wanted = {
            let mut spares = super::lock(&self.spares);
            let n = spares.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        let (spares, storage) = (self.spares.clone(), self.storage.clone());
        let (id, checkpoint) = (id.clone(), checkpoint.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(SPARE_DELAY).await;
            if super::lock(&spares).get(&id) != Some(&wanted) {
                return;
            }
            let _ = tokio::task::spawn_blocking(move || {
                if let Err(e) = storage.prepare_spare(&id, &checkpoint) {
                    tracing::debug!(machine = %id, error = %e, "making a spare layer");
                }
            })
            .await;
        });
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
        if let Some(init) = self.init_pid(id)
            && self.shared.cgroups.tasks(id) == [init]
        {
            match self.restore_in_place(spec, checkpoint, init).await {
                Ok(()) => return Ok(()),
                Err(e) => tracing::warn!(
                    machine = %id,
                    error = %super::error_chain(&e),
                    "restoring under the running init failed: rebuilding the sandbox"
                ),
            }
        }
        self.stop_watch(id);
        self.teardown(id).await?;
        self.storage.restore(id, checkpoint)?;
        self.create_locked(spec).await?;
        self.spare_later(id, checkpoint);
        Ok(())
    }

    /// Restores a stopped machine (only init left) by swapping the root of its mount
    /// namespace to an overlay on the restored layer, keeping init, its network and
    /// cgroups. On failure the machine is as it was.
    async fn restore_in_place(
        &self,
        spec: &SandboxSpec,
        checkpoint: &str,
        init: i32,
    ) -> Result<(), SandboxError> {
        let id = &spec.machine_id;
        let mut lower = super::create::lower_dirs(spec)?;
        if lower.is_empty() {
            let empty = self.machine_dir(id).join(super::create::EMPTY_LOWER);
            lower.push(empty.to_string_lossy().into_owned());
        }
        let mut carry = vec![Carry::dir("proc"), Carry::dir("dev"), Carry::dir("sys")];
        let mut paths: Vec<&str> = spec.mounts.iter().map(|m| m.path.as_str()).collect();
        paths.sort_unstable();
        for (i, path) in paths.iter().enumerate() {
            // A volume mounted inside another comes along with it.
            let nested = paths[..i].iter().any(|outer| {
                path.strip_prefix(outer.trim_end_matches('/'))
                    .is_some_and(|rest| rest.starts_with('/'))
            });
            if !nested {
                carry.push(Carry::dir(path));
            }
        }
        if spec.network.is_some() {
            carry.push(Carry::file("etc/resolv.conf"));
        }
        let ns = std::fs::File::open(format!("/proc/{init}/ns/mnt"))
            .map_err(SandboxError::io("opening the machine's mount namespace"))?;

        let storage = self.storage.clone();
        let (machine, cp) = (id.clone(), checkpoint.to_string());
        let (staged, old_root) = tokio::task::spawn_blocking(move || {
            let staged = storage.stage(&machine, &cp)?;
            let pivoted = reroot::detached_overlay(&lower, &staged.upper(), &staged.work())
                .map_err(SandboxError::Boot)
                .and_then(|root| {
                    // The overlay holds its directories, not their names: swapping
                    // the names now leaves the new mount on the new layer.
                    storage.swap(&machine, &staged)?;
                    reroot::pivot(ns.into(), root, carry).map_err(|e| {
                        if let Err(back) = storage.swap(&machine, &staged) {
                            tracing::error!(machine = %machine, error = %back, "swapping the old layer back");
                        }
                        SandboxError::Boot(e)
                    })
                });
            match pivoted {
                Ok(old_root) => Ok((staged, old_root)),
                Err(e) => {
                    if let Err(cleanup) = storage.discard(&staged) {
                        tracing::warn!(error = %cleanup, "removing a staged layer");
                    }
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| SandboxError::Protocol(format!("restore task: {e}")))??;

        // Closing the old root ends its overlay, which syncs the layers' file
        // system: that, and deleting the old layer, happen after the restore.
        let storage = self.storage.clone();
        tokio::task::spawn_blocking(move || {
            drop(old_root);
            if let Err(e) = storage.discard(&staged) {
                tracing::warn!(error = %e, "removing the swapped-out layer");
            }
        });
        // A robot that rewound once will likely rewind to the same point again.
        self.spare_later(id, checkpoint);
        Ok(())
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
        self.spare_later(source, checkpoint);
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
