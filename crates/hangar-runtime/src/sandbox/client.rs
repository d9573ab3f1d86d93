//! Talking to a machine's init over its control socket: one connection per request,
//! plus a long-lived watch connection per machine that turns init's events into
//! [`DriverEvent`]s.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hangar_core::MachineId;
use hangar_core::driver::DriverEvent;
use hangar_init::proto::{self, Event, Request, Response, StatusReply};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::{SandboxDriver, SandboxError, Shared, lock};

/// How long init may take to answer a quick request.
pub(crate) const QUICK: Duration = Duration::from_secs(10);

async fn connect(id: &MachineId, socket: &Path) -> Result<UnixStream, SandboxError> {
    UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => SandboxError::NotFound(id.clone()),
            _ => SandboxError::Unreachable(id.clone(), e),
        })
}

/// Sends one request and reads its response, within `timeout` if given.
pub(crate) async fn call(
    id: &MachineId,
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
) -> Result<Response, SandboxError> {
    call_with_output(id, socket, req, timeout, &|_, _| {}).await
}

/// [`call`], handing each [`Response::Output`] line that comes before the answer
/// to `output` (`true` for stderr).
pub(crate) async fn call_with_output(
    id: &MachineId,
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
    output: &(dyn Fn(bool, &[u8]) + Send + Sync),
) -> Result<Response, SandboxError> {
    let exchange = async {
        let mut stream = connect(id, socket).await?;
        stream
            .write_all(&proto::encode_line(req))
            .await
            .map_err(|e| SandboxError::Unreachable(id.clone(), e))?;
        let mut reader = BufReader::new(stream);
        let resp = loop {
            let mut line = String::new();
            reader
                .read_line(&mut line)
                .await
                .map_err(|e| SandboxError::Unreachable(id.clone(), e))?;
            if line.is_empty() {
                return Err(SandboxError::Protocol("init closed the connection".into()));
            }
            match serde_json::from_str(&line)
                .map_err(|e| SandboxError::Protocol(format!("bad response: {e}")))?
            {
                Response::Output { stderr, data } => output(stderr, &data),
                resp => break resp,
            }
        };
        match resp {
            Response::Error { kind, message } => Err(SandboxError::Rejected {
                id: id.clone(),
                kind,
                message,
            }),
            ok => Ok(ok),
        }
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, exchange)
            .await
            .map_err(|_| SandboxError::Timeout(format!("waiting for init of machine {id}")))?,
        None => exchange.await,
    }
}

impl SandboxDriver {
    /// Makes sure a watch connection feeds this machine's exits into the event
    /// channel; returns init's status as of when the watch was (or had been) set up.
    pub(crate) async fn ensure_watch(&self, id: &MachineId) -> Result<(), SandboxError> {
        if lock(&self.watches)
            .get(id)
            .is_some_and(|t| !t.is_finished())
        {
            return Ok(());
        }
        let mut stream = connect(id, &self.socket(id)).await?;
        stream
            .write_all(&proto::encode_line(&Request::Watch))
            .await
            .map_err(|e| SandboxError::Unreachable(id.clone(), e))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        tokio::time::timeout(QUICK, reader.read_line(&mut line))
            .await
            .map_err(|_| SandboxError::Timeout(format!("watching machine {id}")))?
            .map_err(|e| SandboxError::Unreachable(id.clone(), e))?;
        let Ok(Response::Status(StatusReply { .. })) = serde_json::from_str(&line) else {
            return Err(SandboxError::Protocol(format!(
                "bad watch greeting: {line:?}"
            )));
        };
        lock(&self.shared.oom_baseline)
            .entry(id.clone())
            .or_insert_with(|| self.shared.cgroups.oom_kills(id));
        let task = tokio::spawn(watch(self.shared.clone(), id.clone(), reader));
        if let Some(old) = lock(&self.watches).insert(id.clone(), task) {
            old.abort();
        }
        Ok(())
    }

    pub(crate) fn stop_watch(&self, id: &MachineId) {
        if let Some(task) = lock(&self.watches).remove(id) {
            task.abort();
        }
    }
}

/// Forwards init's events until the connection ends (init gone).
async fn watch(shared: Arc<Shared>, id: MachineId, mut reader: BufReader<UnixStream>) {
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        match serde_json::from_str::<Event>(&line) {
            Ok(Event::Exited(exit)) => {
                let status = shared.exit_status(&id, exit);
                let _ = shared.events.send(DriverEvent::Exited {
                    machine_id: id.clone(),
                    status,
                });
            }
            Err(e) => tracing::warn!(machine = %id, error = %e, "unreadable event from init"),
        }
    }
}
