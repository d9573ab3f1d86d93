//! Exec: running a command beside a started machine's main process.

use std::time::Duration;

use hangar_types::{MachineExecRequest, MachineExecResponse};

use super::Service;
use crate::config;
use crate::driver::ExecSpec;
use crate::error::{Error, Result};

pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_EXEC_TIMEOUT: Duration = Duration::from_secs(3600);

/// A parsed exec request.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecRequest {
    pub argv: Vec<String>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

impl TryFrom<MachineExecRequest> for ExecRequest {
    type Error = Error;

    fn try_from(req: MachineExecRequest) -> Result<Self> {
        let argv = match (req.command, req.cmd) {
            (Some(command), _) if !command.is_empty() => command,
            (_, Some(cmd)) => cmd.split_whitespace().map(str::to_string).collect(),
            _ => Vec::new(),
        };
        if argv.is_empty() || argv[0].is_empty() {
            return Err(Error::bad_request(
                "exec needs a command: pass \"command\": [\"ls\", \"-l\"] (or \"cmd\": \"ls -l\")",
            ));
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return Err(Error::bad_request(
                "exec command arguments cannot contain NUL bytes",
            ));
        }
        let timeout = match req.timeout {
            None | Some(0) => DEFAULT_EXEC_TIMEOUT,
            Some(secs) if Duration::from_secs(secs) <= MAX_EXEC_TIMEOUT => {
                Duration::from_secs(secs)
            }
            Some(secs) => {
                return Err(Error::bad_request(format!(
                    "exec timeout {secs}s is too long: use at most {}s, or run the command as the machine's process",
                    MAX_EXEC_TIMEOUT.as_secs()
                )));
            }
        };
        Ok(ExecRequest {
            argv,
            stdin: req.stdin.unwrap_or_default().into_bytes(),
            timeout,
        })
    }
}

impl Service {
    /// Runs a command in a started machine. A non-zero exit is a result, not an error.
    pub async fn exec(&self, app: &str, id: &str, req: ExecRequest) -> Result<MachineExecResponse> {
        let machine = self.live_machine(app, id).await?;
        self.require_started(&machine, "exec in")?;
        let spec = ExecSpec {
            id: String::new(),
            argv: req.argv,
            env: config::environment(
                machine.id.as_str(),
                app,
                &machine.config,
                &machine.image.config,
            ),
            cwd: machine.image.config.working_dir.clone(),
            user: machine.image.config.user.clone(),
            stdin: req.stdin,
            keep_stdin: false,
            timeout: req.timeout,
        };
        let started = std::time::Instant::now();
        let output = self.driver.exec(&machine.id, &spec).await?;
        metrics::histogram!("hangar_exec_seconds").record(started.elapsed().as_secs_f64());
        Ok(MachineExecResponse {
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            exit_code: output.status.code,
            exit_signal: output.status.signal,
        })
    }
}

impl Service {
    /// The processes running in a started machine.
    pub async fn ps(&self, app: &str, id: &str) -> Result<Vec<hangar_types::ProcessStat>> {
        let machine = self.live_machine(app, id).await?;
        self.require_started(&machine, "list processes of")?;
        let processes = self.driver.ps(&machine.id).await?;
        Ok(processes
            .into_iter()
            .map(|p| hangar_types::ProcessStat {
                pid: p.pid,
                command: p.command,
                directory: p.cwd,
                rss: p.rss_bytes,
                rtime: p.utime_ticks,
                stime: p.stime_ticks,
                cpu: 0,
                listen_sockets: p
                    .listen_sockets
                    .into_iter()
                    .map(|(proto, address)| hangar_types::ListenSocket { address, proto })
                    .collect(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmd_string_is_split() {
        let req = MachineExecRequest {
            cmd: Some("ls  -l /".into()),
            ..Default::default()
        };
        assert_eq!(ExecRequest::try_from(req).unwrap().argv, ["ls", "-l", "/"]);
    }

    #[test]
    fn empty_and_oversized_requests_are_refused() {
        assert!(ExecRequest::try_from(MachineExecRequest::default()).is_err());
        let req = MachineExecRequest {
            command: Some(vec!["true".into()]),
            timeout: Some(999_999),
            ..Default::default()
        };
        assert!(ExecRequest::try_from(req).is_err());
    }
}
