//! `start`: one request to init, which writes the files and executes the main
//! process; it answers once `execve` succeeded (or why it failed).

use hangar_core::MachineId;
use hangar_core::driver::ProcessSpec;
use hangar_init::proto::{FileSpec, Request, Response, StartRequest};

use super::client::{QUICK, call};
use super::{SandboxDriver, SandboxError, lock};

impl SandboxDriver {
    pub async fn start_process(&self, id: &MachineId, p: &ProcessSpec) -> Result<(), SandboxError> {
        self.ensure_exists(id)?;
        if self.shared.cgroups.is_frozen(id) {
            return Err(SandboxError::Frozen(id.clone()));
        }
        // A sandbox adopted after a daemon restart gets its event stream here.
        self.ensure_watch(id).await?;
        let baseline = self.shared.cgroups.oom_kills(id);
        lock(&self.shared.oom_baseline).insert(id.clone(), baseline);
        let req = Request::Start(StartRequest {
            argv: p.argv.clone(),
            env: p.env.clone(),
            cwd: p.cwd.clone(),
            user: p.user.clone(),
            files: p
                .files
                .iter()
                .map(|f| FileSpec {
                    path: f.path.clone(),
                    contents: f.contents.clone(),
                    mode: f.mode,
                })
                .collect(),
        });
        match call(id, &self.socket(id), &req, Some(QUICK)).await? {
            Response::Started { .. } => Ok(()),
            other => Err(SandboxError::Protocol(format!(
                "unexpected answer to start: {other:?}"
            ))),
        }
    }
}
