//! Start, stop, restart, signal, suspend: moving a machine's process.

use std::time::{Duration, Instant};

use hangar_types::{ErrorCode, StopRequest};
use serde_json::json;

use super::{Caller, Service};
use crate::config;
use crate::error::{Error, Result};
use crate::model::MachineRecord;
use crate::state::MachineState;

/// What `stop` waits for before killing, when neither the request nor the config say.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(300);

impl Service {
    pub async fn start_machine(
        &self,
        app: &str,
        id: &str,
        caller: &Caller,
    ) -> Result<MachineState> {
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        let previous = machine.state;
        match machine.state {
            MachineState::Started => {}
            MachineState::Suspended => self.resume_locked(&mut machine).await?,
            _ => {
                machine.restart_count = 0;
                self.start_locked(&mut machine, "user").await?;
            }
        }
        Ok(previous)
    }

    /// Starts the machine's process. The caller holds the machine's lock.
    pub(super) async fn start_locked(
        &self,
        machine: &mut MachineRecord,
        source: &str,
    ) -> Result<()> {
        // A new machine's layer is fresh already; any other start of an ephemeral
        // machine begins from the image again.
        let reset =
            config::ephemeral_root(&machine.config) && machine.state != MachineState::Created;
        self.start_with(machine, source, reset).await
    }

    /// Starts the machine's process, first emptying its writable layer when `reset`
    /// (a restore or a fork has just put the files it must start with in place).
    pub(super) async fn start_with(
        &self,
        machine: &mut MachineRecord,
        source: &str,
        reset: bool,
    ) -> Result<()> {
        let began = Instant::now();
        self.set_state(machine, MachineState::Starting).await?;
        let reset = if reset {
            self.driver
                .reset(&self.sandbox_spec(machine).await?)
                .await
                .map_err(Error::from)
        } else {
            Ok(())
        };
        let started = match reset.and_then(|()| {
            config::process(
                machine.id.as_str(),
                &machine.app,
                &machine.config,
                &machine.image.config,
            )
        }) {
            Ok(process) => self
                .driver
                .start(&machine.id, &process)
                .await
                .map_err(Error::from),
            Err(err) => Err(err),
        };
        match started {
            Ok(()) => {
                self.set_state(machine, MachineState::Started).await?;
                metrics::histogram!("hangar_machine_start_seconds")
                    .record(began.elapsed().as_secs_f64());
                self.event(machine, "start", "started", source, serde_json::Value::Null)
                    .await;
                Ok(())
            }
            Err(err) => {
                tracing::warn!(machine = %machine.id, error = ?err, "start failed");
                self.set_state(machine, MachineState::Stopped).await?;
                self.event(
                    machine,
                    "start",
                    "failed",
                    source,
                    json!({"error": err.public_message()}),
                )
                .await;
                Err(err)
            }
        }
    }

    pub async fn stop_machine(
        &self,
        app: &str,
        id: &str,
        req: StopRequest,
        caller: &Caller,
    ) -> Result<()> {
        let signal = req
            .signal
            .as_deref()
            .map(config::parse_signal)
            .transpose()?;
        let timeout = req
            .timeout
            .as_ref()
            .map(config::parse_duration)
            .transpose()?;
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        self.stop_locked(&mut machine, signal, timeout).await
    }

    /// Stops the machine's process; a machine with nothing running is left as it is.
    pub(super) async fn stop_locked(
        &self,
        machine: &mut MachineRecord,
        signal: Option<i32>,
        timeout: Option<Duration>,
    ) -> Result<()> {
        if !matches!(
            machine.state,
            MachineState::Started
                | MachineState::Starting
                | MachineState::Suspended
                | MachineState::Failed
        ) {
            return Ok(());
        }
        let stop_config = machine.config.stop_config.clone().unwrap_or_default();
        let signal = match signal {
            Some(signal) => signal,
            None => stop_config
                .signal
                .as_deref()
                .map(config::parse_signal)
                .transpose()?
                .unwrap_or(15),
        };
        let timeout = match timeout {
            Some(timeout) => timeout,
            None => stop_config
                .timeout
                .as_ref()
                .map(config::parse_duration)
                .transpose()?
                .unwrap_or(DEFAULT_STOP_TIMEOUT),
        }
        .min(MAX_STOP_TIMEOUT);
        if machine.state == MachineState::Suspended {
            self.driver.resume(&machine.id).await?;
        }
        let began = Instant::now();
        self.set_state(machine, MachineState::Stopping).await?;
        match self.driver.stop(&machine.id, signal, timeout).await {
            Ok(_) => {
                self.set_state(machine, MachineState::Stopped).await?;
                metrics::histogram!("hangar_machine_stop_seconds")
                    .record(began.elapsed().as_secs_f64());
                self.event(
                    machine,
                    "stop",
                    "stopped",
                    "user",
                    json!({"signal": signal}),
                )
                .await;
                Ok(())
            }
            Err(err) => {
                self.set_state(machine, MachineState::Failed).await?;
                self.event(
                    machine,
                    "stop",
                    "failed",
                    "user",
                    json!({"error": err.to_string()}),
                )
                .await;
                Err(err.into())
            }
        }
    }

    pub async fn restart_machine(
        &self,
        app: &str,
        id: &str,
        timeout: Option<Duration>,
        signal: Option<i32>,
        caller: &Caller,
    ) -> Result<()> {
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        self.stop_locked(&mut machine, signal, timeout).await?;
        self.event(
            &machine,
            "restart",
            "restarting",
            "user",
            serde_json::Value::Null,
        )
        .await;
        machine.restart_count = 0;
        self.start_locked(&mut machine, "user").await
    }

    pub async fn signal_machine(
        &self,
        app: &str,
        id: &str,
        signal: &str,
        caller: &Caller,
    ) -> Result<()> {
        let signal = config::parse_signal(signal)?;
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        self.require_started(&machine, "signal")?;
        self.driver.signal(&machine.id, signal).await?;
        Ok(())
    }

    /// Freezes the machine's processes with their memory kept.
    pub async fn suspend_machine(&self, app: &str, id: &str, caller: &Caller) -> Result<()> {
        let machine = self.live_machine(app, id).await?;
        let _guard = self.lock(&machine.id).await;
        let mut machine = self.reload(&machine).await?;
        self.check_lease(&machine, caller)?;
        if machine.state == MachineState::Suspended {
            return Ok(());
        }
        self.require_started(&machine, "suspend")?;
        self.set_state(&mut machine, MachineState::Suspending)
            .await?;
        match self.driver.suspend(&machine.id).await {
            Ok(()) => {
                self.set_state(&mut machine, MachineState::Suspended)
                    .await?;
                self.event(
                    &machine,
                    "suspend",
                    "suspended",
                    "user",
                    serde_json::Value::Null,
                )
                .await;
                Ok(())
            }
            Err(err) => {
                self.set_state(&mut machine, MachineState::Started).await?;
                Err(err.into())
            }
        }
    }

    async fn resume_locked(&self, machine: &mut MachineRecord) -> Result<()> {
        self.driver.resume(&machine.id).await?;
        self.set_state(machine, MachineState::Started).await?;
        self.event(machine, "start", "resumed", "user", serde_json::Value::Null)
            .await;
        Ok(())
    }

    pub(super) fn require_started(&self, machine: &MachineRecord, what: &str) -> Result<()> {
        if machine.state == MachineState::Started {
            return Ok(());
        }
        let hint = match machine.state {
            MachineState::Suspended => "resume it with POST .../start first",
            MachineState::Starting | MachineState::Stopping | MachineState::Replacing => {
                "wait for it to settle (GET .../wait?state=started) and retry"
            }
            _ => "start it first (POST .../start)",
        };
        Err(Error::request(
            ErrorCode::InvalidState,
            format!(
                "cannot {what} machine {}: it is {}; {hint}",
                machine.id, machine.state
            ),
        ))
    }
}
