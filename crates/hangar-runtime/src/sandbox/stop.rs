//! `stop` and `signal`: init signals the main process, waits, then kills everything
//! in the machine; the sandbox (and init) stay.

use std::time::Duration;

use hangar_core::MachineId;
use hangar_core::driver::ExitStatus;
use hangar_init::proto::{Request, Response, StopRequest};

use super::client::{QUICK, call};
use super::{SandboxDriver, SandboxError};

impl SandboxDriver {
    pub async fn stop_process(
        &self,
        id: &MachineId,
        signal: i32,
        timeout: Duration,
    ) -> Result<Option<ExitStatus>, SandboxError> {
        self.ensure_exists(id)?;
        if self.shared.cgroups.is_frozen(id) {
            // Frozen processes cannot act on a signal: thaw, then stop as usual.
            self.set_frozen(id, false).await?;
        }
        let req = Request::Stop(StopRequest {
            signal,
            timeout_ms: timeout.as_millis().min(u128::from(u64::MAX)) as u64,
        });
        match call(id, &self.socket(id), &req, Some(timeout + QUICK)).await? {
            Response::Stopped { exit } => Ok(exit.map(|e| self.shared.exit_status(id, e))),
            other => Err(SandboxError::Protocol(format!(
                "unexpected answer to stop: {other:?}"
            ))),
        }
    }

    pub async fn signal_process(&self, id: &MachineId, signal: i32) -> Result<(), SandboxError> {
        self.ensure_exists(id)?;
        match call(
            id,
            &self.socket(id),
            &Request::Signal { signal },
            Some(QUICK),
        )
        .await?
        {
            Response::Ok => Ok(()),
            other => Err(SandboxError::Protocol(format!(
                "unexpected answer to signal: {other:?}"
            ))),
        }
    }
}
