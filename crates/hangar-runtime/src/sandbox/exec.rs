//! `exec` and `ps`: commands run by init beside the main process.

use std::time::Duration;

use hangar_core::MachineId;
use hangar_core::driver::{ExecOutput, ExecSpec, ExitStatus, OutputSink, ProcessInfo};
use hangar_init::proto::{ExecRequest, Request, Response};

use super::client::{QUICK, call, call_with_output};
use super::{SandboxDriver, SandboxError};

impl SandboxDriver {
    pub async fn exec_command(
        &self,
        id: &MachineId,
        e: &ExecSpec,
        sink: Option<&OutputSink>,
    ) -> Result<ExecOutput, SandboxError> {
        self.ensure_exists(id)?;
        if self.shared.cgroups.is_frozen(id) {
            return Err(SandboxError::Frozen(id.clone()));
        }
        let timeout_ms = e.timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        let req = Request::Exec(ExecRequest {
            id: e.id.clone(),
            argv: e.argv.clone(),
            env: e.env.clone(),
            cwd: e.cwd.clone(),
            user: e.user.clone(),
            stdin: e.stdin.clone(),
            keep_stdin: e.keep_stdin,
            timeout_ms,
            stream: sink.is_some(),
        });
        // Init enforces the timeout; ours only covers an init that stopped answering.
        let wait = (!e.timeout.is_zero()).then(|| e.timeout + QUICK + Duration::from_secs(20));
        let sink = sink.unwrap_or(&|_, _| {});
        match call_with_output(id, &self.socket(id), &req, wait, sink).await? {
            Response::Exec(reply) => Ok(ExecOutput {
                stdout: reply.stdout,
                stderr: reply.stderr,
                status: ExitStatus {
                    code: reply.exit.code,
                    signal: reply.exit.signal,
                    oom_killed: false,
                },
                timed_out: reply.timed_out,
            }),
            other => Err(SandboxError::Protocol(format!(
                "unexpected answer to exec: {other:?}"
            ))),
        }
    }

    pub async fn signal_command(
        &self,
        id: &MachineId,
        exec_id: &str,
        signal: i32,
    ) -> Result<(), SandboxError> {
        self.ensure_exists(id)?;
        let req = Request::Kill {
            id: exec_id.to_string(),
            signal,
        };
        match call(id, &self.socket(id), &req, Some(QUICK)).await? {
            Response::Ok => Ok(()),
            other => Err(SandboxError::Protocol(format!(
                "unexpected answer to kill: {other:?}"
            ))),
        }
    }

    pub async fn write_command_stdin(
        &self,
        id: &MachineId,
        exec_id: &str,
        data: &[u8],
        eof: bool,
    ) -> Result<(), SandboxError> {
        self.ensure_exists(id)?;
        if self.shared.cgroups.is_frozen(id) {
            return Err(SandboxError::Frozen(id.clone()));
        }
        let req = Request::ExecStdin {
            id: exec_id.to_string(),
            data: data.to_vec(),
            eof,
        };
        match call(id, &self.socket(id), &req, Some(QUICK)).await? {
            Response::Ok => Ok(()),
            other => Err(SandboxError::Protocol(format!(
                "unexpected answer to exec_stdin: {other:?}"
            ))),
        }
    }

    pub async fn list_processes(&self, id: &MachineId) -> Result<Vec<ProcessInfo>, SandboxError> {
        self.ensure_exists(id)?;
        if self.shared.cgroups.is_frozen(id) {
            return Err(SandboxError::Frozen(id.clone()));
        }
        match call(id, &self.socket(id), &Request::Ps, Some(QUICK)).await? {
            Response::Ps { processes } => Ok(processes
                .into_iter()
                .map(|p| ProcessInfo {
                    pid: i64::from(p.pid),
                    command: p.command,
                    cwd: p.cwd,
                    rss_bytes: p.rss_bytes,
                    utime_ticks: p.utime_ticks,
                    stime_ticks: p.stime_ticks,
                    listen_sockets: p.listen_sockets,
                })
                .collect()),
            other => Err(SandboxError::Protocol(format!(
                "unexpected answer to ps: {other:?}"
            ))),
        }
    }
}
