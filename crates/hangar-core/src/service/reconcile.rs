//! Making what runs match what the store says should run.
//!
//! Two jobs: acting on exits the driver reports (restart policies, auto-destroy), and,
//! when the daemon starts, walking every machine to adopt what still runs, finish or
//! undo what a crash interrupted, rebuild sandboxes a reboot lost, and remove
//! sandboxes no machine owns.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::driver::{DriverEvent, ExitStatus, Observed};
use crate::error::Result;
use crate::ids::MachineId;
use crate::model::MachineRecord;
use crate::state::MachineState;

/// `on-failure` retries when `max_retries` is not set.
const DEFAULT_MAX_RETRIES: i64 = 10;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Service {
    /// Brings every machine in line with what is on the host. Run once at start-up,
    /// before the API serves.
    pub async fn recover(self: &Arc<Self>) -> Result<()> {
        let machines = self.store.list_machines(None, false).await?;
        let owned: HashSet<MachineId> = machines.iter().map(|m| m.id.clone()).collect();
        for id in self.driver.list().await? {
            if !owned.contains(&id) {
                tracing::info!(machine = %id, "removing a sandbox no machine owns");
                if let Err(err) = self.driver.destroy(&id).await {
                    tracing::warn!(machine = %id, error = ?err, "could not remove orphaned sandbox");
                }
            }
        }
        for machine in machines {
            let id = machine.id.clone();
            let _guard = self.lock(&id).await;
            let mut machine = self.reload(&machine).await?;
            if let Err(err) = self.recover_one(&mut machine).await {
                tracing::error!(machine = %id, error = ?err, "recovery failed");
                // Never leave a machine half-way: a transient state nobody will finish
                // becomes `failed`, which start, update and destroy all accept.
                if let Ok(mut current) = self.reload(&machine).await
                    && current.state.is_transient()
                {
                    let _ = self.set_state(&mut current, MachineState::Failed).await;
                }
            }
        }
        Ok(())
    }

    async fn recover_one(self: &Arc<Self>, machine: &mut MachineRecord) -> Result<()> {
        use MachineState::*;
        if machine.state == Destroying {
            return self.destroy_locked(machine, "hangar").await;
        }
        let observed = self.driver.observe(&machine.id).await?;
        tracing::debug!(machine = %machine.id, state = %machine.state, ?observed, "recovering");
        match (machine.state, observed) {
            (_, Observed::Absent) => {
                // Lost with a reboot, or a crash before the sandbox was built.
                self.driver
                    .create(&self.sandbox_spec(machine).await?)
                    .await?;
                match machine.state {
                    Started | Starting => {
                        // Its process went with the sandbox: record that, then start
                        // it again (on the same writable layer).
                        self.set_state(machine, Stopped).await?;
                        self.start_locked(machine, "hangar").await?
                    }
                    Stopping | Replacing | Suspending | Suspended => {
                        self.set_state(machine, Stopped).await?
                    }
                    Created | Stopped | Failed | Destroying | Destroyed => {}
                }
            }
            (Started, Observed::Running { .. }) | (Suspended, Observed::Frozen) => {}
            (Starting, Observed::Running { .. }) => self.set_state(machine, Started).await?,
            (Suspending, Observed::Frozen) => self.set_state(machine, Suspended).await?,
            (Suspending | Suspended, Observed::Running { .. }) => {
                self.set_state(machine, Started).await?
            }
            (Started | Starting, Observed::Frozen) => {
                self.driver.resume(&machine.id).await?;
                if machine.state == Starting {
                    self.set_state(machine, Started).await?;
                }
            }
            (Started, Observed::Idle { last_exit }) => {
                // It exited while nobody was watching.
                self.exited_locked(machine, last_exit.unwrap_or_default())
                    .await?;
            }
            (Starting, Observed::Idle { .. }) => {
                // The start never reached init: try it again from a settled state.
                self.set_state(machine, Stopped).await?;
                self.start_locked(machine, "hangar").await?
            }
            (
                Stopping | Replacing | Created | Stopped | Failed,
                Observed::Running { .. } | Observed::Frozen,
            ) => {
                // A process runs that should not: finish the stop.
                if machine.state != Stopping {
                    self.set_state(machine, Failed).await?;
                }
                if matches!(self.driver.observe(&machine.id).await?, Observed::Frozen) {
                    self.driver.resume(&machine.id).await?;
                }
                self.driver.stop(&machine.id, 9, Duration::ZERO).await?;
                self.set_state(machine, Stopped).await?;
            }
            (Stopping | Replacing | Suspending | Suspended, Observed::Idle { .. }) => {
                self.set_state(machine, Stopped).await?
            }
            (Created | Stopped | Failed, Observed::Idle { .. }) => {}
            (Destroying | Destroyed, _) => {}
        }
        Ok(())
    }

    /// Acts on driver events until `shutdown`.
    pub fn spawn_event_loop(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let service = Arc::clone(self);
        let mut events = self.driver.subscribe();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = events.recv() => event,
                };
                match event {
                    Ok(DriverEvent::Exited { machine_id, status }) => {
                        let service = Arc::clone(&service);
                        tokio::spawn(async move {
                            if let Err(err) = service.handle_exit(&machine_id, status).await {
                                tracing::error!(machine = %machine_id, error = ?err, "handling an exit failed");
                            }
                        });
                    }
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "driver events were missed; reconciling");
                        if let Err(err) = service.recover().await {
                            tracing::error!(error = ?err, "reconciling after missed events failed");
                        }
                    }
                    Err(RecvError::Closed) => return,
                }
            }
        })
    }

    async fn handle_exit(self: &Arc<Self>, id: &MachineId, status: ExitStatus) -> Result<()> {
        let _guard = self.lock(id).await;
        let Some(mut machine) = self.store.get_machine(id).await? else {
            return Ok(());
        };
        // A stop-and-start under one lock (restart, update) delivers the old process's
        // exit after the new one runs: that exit must not stop the new process.
        if machine.state == MachineState::Started
            && matches!(self.driver.observe(id).await, Ok(Observed::Running { .. }))
        {
            self.event(
                &machine,
                "exit",
                "stopped",
                "user",
                exit_request(&status, true),
            )
            .await;
            return Ok(());
        }
        self.exited_locked(&mut machine, status).await
    }

    /// Records an exit, then applies the restart policy and `auto_destroy`.
    async fn exited_locked(
        self: &Arc<Self>,
        machine: &mut MachineRecord,
        status: ExitStatus,
    ) -> Result<()> {
        let requested = machine.state != MachineState::Started;
        self.event(
            machine,
            "exit",
            "stopped",
            if requested { "user" } else { "hangar" },
            exit_request(&status, requested),
        )
        .await;
        if requested {
            return Ok(());
        }
        self.set_state(machine, MachineState::Stopped).await?;
        if status.oom_killed {
            tracing::warn!(machine = %machine.id, "process was killed for running out of memory");
        }
        let restart = machine.config.restart.clone().unwrap_or_default();
        let should_restart = match restart.policy.as_deref().unwrap_or("no") {
            "always" => true,
            "on-failure" => {
                !status.success()
                    && i64::from(machine.restart_count)
                        < restart.max_retries.unwrap_or(DEFAULT_MAX_RETRIES)
            }
            _ => false,
        };
        if should_restart {
            machine.restart_count += 1;
            let backoff =
                Duration::from_millis(100 * 2u64.saturating_pow(machine.restart_count.min(16) - 1))
                    .min(MAX_BACKOFF);
            self.store.update_machine(machine).await?;
            let service = Arc::clone(self);
            let id = machine.id.clone();
            let expected = (
                machine.instance_id.clone(),
                machine.restart_count,
                machine.updated_at,
            );
            tokio::spawn(async move {
                tokio::time::sleep(backoff).await;
                let _guard = service.lock(&id).await;
                let Ok(Some(mut machine)) = service.store.get_machine(&id).await else {
                    return;
                };
                // Someone acted on the machine meanwhile: their word wins.
                if machine.state != MachineState::Stopped
                    || (
                        machine.instance_id.clone(),
                        machine.restart_count,
                        machine.updated_at,
                    ) != expected
                {
                    return;
                }
                if let Err(err) = service.start_locked(&mut machine, "hangar").await {
                    tracing::warn!(machine = %id, error = ?err, "restart by policy failed");
                }
            });
        } else if machine.config.auto_destroy {
            self.destroy_locked(machine, "hangar").await?;
        }
        Ok(())
    }
}

fn exit_request(status: &ExitStatus, requested: bool) -> serde_json::Value {
    json!({"exit_event": {
        "exit_code": status.code,
        "signal": status.signal,
        "oom_killed": status.oom_killed,
        "requested_stop": requested,
    }})
}
