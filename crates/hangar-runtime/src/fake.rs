//! An in-memory [`Driver`] for tests of the service layer: no root, no namespaces.
//!
//! It keeps a table of sandboxes and answers like a real machine would for a handful
//! of commands, so tests can drive every lifecycle path without a kernel:
//!
//! - `start` of `["true"]` or `["false"]` (or `["exit", "N"]`) ends the main process at
//!   once and emits [`DriverEvent::Exited`] with code 0, 1 or N; anything else keeps
//!   running until `stop`, `signal` of a terminating signal, or [`FakeDriver::exit`].
//! - `exec` knows `true`, `false`, `exit N`, `echo ARGS...` (prints them),
//!   `cat` (echoes stdin), `hostname` (the machine id) and `sleep N` (times out when N
//!   seconds exceed the timeout); any other command fails with
//!   [`DriverError::InvalidCommand`], like a binary missing from the image.
//! - Volumes and their snapshots are sizes in a table; `rebuild` swaps the spec.
//! - [`FakeDriver::fail_next`] makes the next call of one verb fail, to test error paths.
//!
//! It owns no files except log lines it appends to [`Driver::log_path`] when built
//! with [`FakeDriver::with_log_dir`].

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use hangar_core::MachineId;
use hangar_core::driver::{
    Attachment, Driver, DriverError, DriverEvent, ExecOutput, ExecSpec, ExitStatus, Observed,
    ProcessInfo, ProcessSpec, Resources, SandboxSpec, VolumeOrigin,
};
use tokio::sync::broadcast;

/// A driver verb, to inject failures with [`FakeDriver::fail_next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verb {
    Create,
    Start,
    Stop,
    Signal,
    Exec,
    Ps,
    Suspend,
    Resume,
    UpdateResources,
    Destroy,
    Observe,
    List,
    Volume,
}

#[derive(Debug, Clone)]
struct FakeSandbox {
    spec: SandboxSpec,
    main: Option<FakeProcess>,
    last_exit: Option<ExitStatus>,
    frozen: bool,
}

#[derive(Debug, Clone)]
struct FakeProcess {
    pid: u32,
    spec: ProcessSpec,
}

#[derive(Default)]
struct State {
    sandboxes: HashMap<MachineId, FakeSandbox>,
    failures: HashMap<Verb, String>,
    next_pid: u32,
    /// Volume id to size in bytes.
    volumes: HashMap<String, u64>,
    /// Snapshot id to size in bytes.
    volume_snapshots: HashMap<String, u64>,
    /// Where `connect(machine, port)` goes: loopback listeners registered by tests.
    listeners: HashMap<(MachineId, u16), std::net::SocketAddr>,
}

/// See the module documentation.
pub struct FakeDriver {
    state: Mutex<State>,
    events: broadcast::Sender<DriverEvent>,
    log_dir: PathBuf,
    write_logs: bool,
}

impl Default for FakeDriver {
    fn default() -> Self {
        Self::new()
    }
}

impl FakeDriver {
    /// A driver that writes no log files; [`Driver::log_path`] points at a path that
    /// does not exist.
    pub fn new() -> Self {
        let (events, _) = broadcast::channel(1024);
        FakeDriver {
            state: Mutex::new(State {
                next_pid: 100,
                ..State::default()
            }),
            events,
            log_dir: std::env::temp_dir().join("hangar-fake-driver-logs-unused"),
            write_logs: false,
        }
    }

    /// A driver that appends JSON log lines (`stdout` for what `echo` main processes
    /// print, `init` for exits) to `DIR/<machine-id>.log`.
    pub fn with_log_dir(dir: impl Into<PathBuf>) -> Self {
        FakeDriver {
            log_dir: dir.into(),
            write_logs: true,
            ..Self::new()
        }
    }

    /// Routes `connect(id, port)` to `addr` (a loopback listener the test runs) while
    /// the machine's main process runs.
    pub fn listen(&self, id: &MachineId, port: u16, addr: std::net::SocketAddr) {
        self.lock().listeners.insert((id.clone(), port), addr);
    }

    /// Makes the next call of `verb` fail with [`DriverError::Other`] carrying `message`.
    pub fn fail_next(&self, verb: Verb, message: impl Into<String>) {
        self.lock().failures.insert(verb, message.into());
    }

    /// Ends the machine's main process as if it exited by itself, emitting
    /// [`DriverEvent::Exited`]. Returns false when nothing was running.
    pub fn exit(&self, id: &MachineId, status: ExitStatus) -> bool {
        let mut state = self.lock();
        let Some(sandbox) = state.sandboxes.get_mut(id) else {
            return false;
        };
        if sandbox.main.take().is_none() {
            return false;
        }
        sandbox.last_exit = Some(status);
        drop(state);
        self.exited(id, status);
        true
    }

    /// The spec a sandbox was created with, if it exists.
    /// The size of a volume, if it exists.
    pub fn volume_size(&self, id: &str) -> Option<u64> {
        self.lock().volumes.get(id).copied()
    }

    pub fn sandbox_spec(&self, id: &MachineId) -> Option<SandboxSpec> {
        self.lock().sandboxes.get(id).map(|s| s.spec.clone())
    }

    /// The process spec of the running main process, if any.
    pub fn running_process(&self, id: &MachineId) -> Option<ProcessSpec> {
        self.lock()
            .sandboxes
            .get(id)
            .and_then(|s| s.main.as_ref().map(|p| p.spec.clone()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic in another test thread must not cascade: the table stays usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self, verb: Verb) -> Result<(), DriverError> {
        match self.lock().failures.remove(&verb) {
            Some(message) => Err(DriverError::Other(message)),
            None => Ok(()),
        }
    }

    fn exited(&self, id: &MachineId, status: ExitStatus) {
        self.log(
            id,
            "init",
            &format!(
                "main process exited: code {} signal {:?}",
                status.code, status.signal
            ),
        );
        // Nobody listening is fine.
        let _ = self.events.send(DriverEvent::Exited {
            machine_id: id.clone(),
            status,
        });
    }

    fn log(&self, id: &MachineId, stream: &str, message: &str) {
        if !self.write_logs {
            return;
        }
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "stream": stream,
            "message": message,
        });
        let _ = std::fs::create_dir_all(&self.log_dir);
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// How a command named in the module docs ends right away, if it does.
fn immediate_exit(argv: &[String]) -> Option<i32> {
    match argv.first().map(String::as_str) {
        Some("true") => Some(0),
        Some("false") => Some(1),
        Some("exit") => Some(argv.get(1).and_then(|c| c.parse().ok()).unwrap_or(0)),
        _ => None,
    }
}

fn exit_code(code: i32) -> ExitStatus {
    ExitStatus {
        code,
        signal: None,
        oom_killed: false,
    }
}

fn killed_by(signal: i32) -> ExitStatus {
    ExitStatus {
        code: 128 + signal,
        signal: Some(signal),
        oom_killed: false,
    }
}

#[async_trait]
impl Driver for FakeDriver {
    fn name(&self) -> &'static str {
        "fake"
    }

    async fn create(&self, spec: &SandboxSpec) -> Result<(), DriverError> {
        self.check(Verb::Create)?;
        self.lock()
            .sandboxes
            .entry(spec.machine_id.clone())
            .or_insert_with(|| FakeSandbox {
                spec: spec.clone(),
                main: None,
                last_exit: None,
                frozen: false,
            });
        Ok(())
    }

    async fn connect(
        &self,
        id: &MachineId,
        port: u16,
    ) -> Result<tokio::net::TcpStream, DriverError> {
        let addr = {
            let state = self.lock();
            let running = state
                .sandboxes
                .get(id)
                .is_some_and(|s| s.main.is_some() && !s.frozen);
            if !running {
                return Err(DriverError::NotRunning(id.clone()));
            }
            state.listeners.get(&(id.clone(), port)).copied()
        };
        let refused = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let addr =
            addr.ok_or_else(|| DriverError::io(format!("connecting to port {port}"), refused()))?;
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| DriverError::io(format!("connecting to port {port}"), e))
    }

    async fn start(&self, id: &MachineId, process: &ProcessSpec) -> Result<(), DriverError> {
        self.check(Verb::Start)?;
        if process.argv.is_empty() {
            return Err(DriverError::InvalidCommand("empty command".into()));
        }
        let mut state = self.lock();
        state.next_pid += 1;
        let pid = state.next_pid;
        let sandbox = state
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| DriverError::NotFound(id.clone()))?;
        if sandbox.main.is_some() {
            return Err(DriverError::AlreadyRunning(id.clone()));
        }
        if let Some(code) = immediate_exit(&process.argv) {
            sandbox.last_exit = Some(exit_code(code));
            drop(state);
            self.exited(id, exit_code(code));
            return Ok(());
        }
        sandbox.main = Some(FakeProcess {
            pid,
            spec: process.clone(),
        });
        drop(state);
        if process.argv[0] == "echo" {
            self.log(id, "stdout", &process.argv[1..].join(" "));
        }
        Ok(())
    }

    async fn stop(
        &self,
        id: &MachineId,
        signal: i32,
        _timeout: Duration,
    ) -> Result<Option<ExitStatus>, DriverError> {
        self.check(Verb::Stop)?;
        let mut state = self.lock();
        let sandbox = state
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| DriverError::NotFound(id.clone()))?;
        if sandbox.main.take().is_none() {
            return Ok(None);
        }
        let status = killed_by(signal);
        sandbox.last_exit = Some(status);
        sandbox.frozen = false;
        drop(state);
        self.exited(id, status);
        Ok(Some(status))
    }

    async fn signal(&self, id: &MachineId, signal: i32) -> Result<(), DriverError> {
        self.check(Verb::Signal)?;
        let running = {
            let state = self.lock();
            let sandbox = state
                .sandboxes
                .get(id)
                .ok_or_else(|| DriverError::NotFound(id.clone()))?;
            sandbox.main.is_some()
        };
        if !running {
            return Err(DriverError::NotRunning(id.clone()));
        }
        // Signals that end a process by default end the fake one too.
        if matches!(
            signal,
            libc::SIGTERM | libc::SIGKILL | libc::SIGINT | libc::SIGHUP | libc::SIGQUIT
        ) {
            self.exit(id, killed_by(signal));
        }
        Ok(())
    }

    async fn exec(&self, id: &MachineId, exec: &ExecSpec) -> Result<ExecOutput, DriverError> {
        self.check(Verb::Exec)?;
        {
            let state = self.lock();
            let sandbox = state
                .sandboxes
                .get(id)
                .ok_or_else(|| DriverError::NotFound(id.clone()))?;
            if sandbox.frozen {
                return Err(DriverError::Other(format!("machine {id} is suspended")));
            }
        }
        let argv = &exec.argv;
        let Some(cmd) = argv.first() else {
            return Err(DriverError::InvalidCommand("empty command".into()));
        };
        let mut out = ExecOutput::default();
        if let Some(code) = immediate_exit(argv) {
            out.status = exit_code(code);
            return Ok(out);
        }
        match cmd.as_str() {
            "echo" => out.stdout = format!("{}\n", argv[1..].join(" ")).into_bytes(),
            "cat" => out.stdout = exec.stdin.clone(),
            "hostname" => out.stdout = format!("{id}\n").into_bytes(),
            "sleep" => {
                let secs: f64 = argv.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.0);
                if !exec.timeout.is_zero() && secs > exec.timeout.as_secs_f64() {
                    out.timed_out = true;
                    out.status = killed_by(libc::SIGKILL);
                }
            }
            other => {
                return Err(DriverError::InvalidCommand(format!(
                    "executable file not found: {other}"
                )));
            }
        }
        Ok(out)
    }

    async fn signal_exec(
        &self,
        id: &MachineId,
        exec_id: &str,
        signal: i32,
    ) -> Result<(), DriverError> {
        let _ = (exec_id, signal);
        self.check(Verb::Signal)?;
        if !self.lock().sandboxes.contains_key(id) {
            return Err(DriverError::NotFound(id.clone()));
        }
        // Fake commands finish inside `exec`: none is ever still running.
        Err(DriverError::NotRunning(id.clone()))
    }

    async fn ps(&self, id: &MachineId) -> Result<Vec<ProcessInfo>, DriverError> {
        self.check(Verb::Ps)?;
        let state = self.lock();
        let sandbox = state
            .sandboxes
            .get(id)
            .ok_or_else(|| DriverError::NotFound(id.clone()))?;
        let mut out = vec![ProcessInfo {
            pid: 1,
            command: "/sbin/hangar-init".into(),
            cwd: "/".into(),
            rss_bytes: 1 << 20,
            utime_ticks: 0,
            stime_ticks: 0,
            listen_sockets: Vec::new(),
        }];
        if let Some(main) = &sandbox.main {
            out.push(ProcessInfo {
                pid: i64::from(main.pid),
                command: main.spec.argv.join(" "),
                cwd: if main.spec.cwd.is_empty() {
                    "/".into()
                } else {
                    main.spec.cwd.clone()
                },
                rss_bytes: 4 << 20,
                utime_ticks: 1,
                stime_ticks: 1,
                listen_sockets: Vec::new(),
            });
        }
        Ok(out)
    }

    async fn suspend(&self, id: &MachineId) -> Result<(), DriverError> {
        self.check(Verb::Suspend)?;
        let mut state = self.lock();
        let sandbox = state
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| DriverError::NotFound(id.clone()))?;
        sandbox.frozen = true;
        Ok(())
    }

    async fn resume(&self, id: &MachineId) -> Result<(), DriverError> {
        self.check(Verb::Resume)?;
        let mut state = self.lock();
        let sandbox = state
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| DriverError::NotFound(id.clone()))?;
        sandbox.frozen = false;
        Ok(())
    }

    async fn update_resources(
        &self,
        id: &MachineId,
        resources: Resources,
    ) -> Result<(), DriverError> {
        self.check(Verb::UpdateResources)?;
        let mut state = self.lock();
        let sandbox = state
            .sandboxes
            .get_mut(id)
            .ok_or_else(|| DriverError::NotFound(id.clone()))?;
        sandbox.spec.resources = resources;
        Ok(())
    }

    async fn destroy(&self, id: &MachineId) -> Result<(), DriverError> {
        self.check(Verb::Destroy)?;
        let removed = self.lock().sandboxes.remove(id);
        if let Some(FakeSandbox { main: Some(_), .. }) = removed {
            self.exited(id, killed_by(libc::SIGKILL));
        }
        Ok(())
    }

    async fn observe(&self, id: &MachineId) -> Result<Observed, DriverError> {
        self.check(Verb::Observe)?;
        let state = self.lock();
        Ok(match state.sandboxes.get(id) {
            None => Observed::Absent,
            Some(s) if s.frozen => Observed::Frozen,
            Some(FakeSandbox {
                main: Some(main), ..
            }) => Observed::Running { pid: main.pid },
            Some(s) => Observed::Idle {
                last_exit: s.last_exit,
            },
        })
    }

    async fn list(&self) -> Result<Vec<MachineId>, DriverError> {
        self.check(Verb::List)?;
        let mut ids: Vec<_> = self.lock().sandboxes.keys().cloned().collect();
        ids.sort();
        Ok(ids)
    }

    fn subscribe(&self) -> broadcast::Receiver<DriverEvent> {
        self.events.subscribe()
    }

    fn log_path(&self, id: &MachineId) -> PathBuf {
        self.log_dir.join(format!("{id}.log"))
    }

    async fn rebuild(&self, spec: &SandboxSpec) -> Result<(), DriverError> {
        self.check(Verb::Create)?;
        let mut state = self.lock();
        let sandbox = state
            .sandboxes
            .get_mut(&spec.machine_id)
            .ok_or_else(|| DriverError::NotFound(spec.machine_id.clone()))?;
        sandbox.spec = spec.clone();
        sandbox.main = None;
        sandbox.frozen = false;
        Ok(())
    }

    async fn create_volume(
        &self,
        id: &str,
        size: u64,
        origin: &VolumeOrigin,
        source_attached: Option<&Attachment>,
    ) -> Result<(), DriverError> {
        let _ = source_attached;
        self.check(Verb::Volume)?;
        let mut state = self.lock();
        let known = match origin {
            VolumeOrigin::Empty => true,
            VolumeOrigin::Snapshot(s) => state.volume_snapshots.contains_key(s),
            VolumeOrigin::Volume(v) => state.volumes.contains_key(v),
        };
        if !known {
            return Err(DriverError::Other(format!("no source for volume {id}")));
        }
        state.volumes.insert(id.to_string(), size);
        Ok(())
    }

    async fn extend_volume(
        &self,
        id: &str,
        size: u64,
        _attached: Option<&Attachment>,
    ) -> Result<bool, DriverError> {
        self.check(Verb::Volume)?;
        match self.lock().volumes.get_mut(id) {
            Some(old) => {
                *old = size;
                Ok(true)
            }
            None => Err(DriverError::Other(format!("no volume {id}"))),
        }
    }

    async fn snapshot_volume(
        &self,
        id: &str,
        snapshot: &str,
        _attached: Option<&Attachment>,
    ) -> Result<u64, DriverError> {
        self.check(Verb::Volume)?;
        let mut state = self.lock();
        let size = *state
            .volumes
            .get(id)
            .ok_or_else(|| DriverError::Other(format!("no volume {id}")))?;
        state.volume_snapshots.insert(snapshot.to_string(), size);
        Ok(size)
    }

    async fn delete_volume(&self, id: &str) -> Result<(), DriverError> {
        self.check(Verb::Volume)?;
        self.lock().volumes.remove(id);
        Ok(())
    }

    async fn delete_volume_snapshot(&self, snapshot: &str) -> Result<(), DriverError> {
        self.check(Verb::Volume)?;
        self.lock().volume_snapshots.remove(snapshot);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &MachineId) -> SandboxSpec {
        SandboxSpec {
            machine_id: id.clone(),
            layers: vec![],
            resources: Resources::default(),
            mounts: vec![],
            network: None,
        }
    }

    fn process(argv: &[&str]) -> ProcessSpec {
        ProcessSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            ..ProcessSpec::default()
        }
    }

    fn exec(argv: &[&str]) -> ExecSpec {
        ExecSpec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(5),
            ..ExecSpec::default()
        }
    }

    #[tokio::test]
    async fn lifecycle_emits_exit_events() {
        let d = FakeDriver::new();
        let id = MachineId::generate();
        let mut events = d.subscribe();
        assert_eq!(d.observe(&id).await.unwrap(), Observed::Absent);
        d.create(&spec(&id)).await.unwrap();
        d.create(&spec(&id)).await.unwrap();
        assert_eq!(
            d.observe(&id).await.unwrap(),
            Observed::Idle { last_exit: None }
        );
        d.start(&id, &process(&["sleep", "inf"])).await.unwrap();
        assert!(matches!(
            d.start(&id, &process(&["sleep", "inf"])).await,
            Err(DriverError::AlreadyRunning(_))
        ));
        assert!(matches!(
            d.observe(&id).await.unwrap(),
            Observed::Running { .. }
        ));
        let status = d
            .stop(&id, libc::SIGTERM, Duration::from_secs(1))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status.signal, Some(libc::SIGTERM));
        let DriverEvent::Exited { machine_id, .. } = events.recv().await.unwrap();
        assert_eq!(machine_id, id);
        assert_eq!(
            d.stop(&id, libc::SIGTERM, Duration::ZERO).await.unwrap(),
            None
        );

        d.start(&id, &process(&["false"])).await.unwrap();
        let DriverEvent::Exited { status, .. } = events.recv().await.unwrap();
        assert_eq!(status.code, 1);
        assert_eq!(d.list().await.unwrap(), vec![id.clone()]);
        d.destroy(&id).await.unwrap();
        d.destroy(&id).await.unwrap();
        assert_eq!(d.observe(&id).await.unwrap(), Observed::Absent);
    }

    #[tokio::test]
    async fn exec_answers_known_commands() {
        let d = FakeDriver::new();
        let id = MachineId::generate();
        d.create(&spec(&id)).await.unwrap();
        let out = d.exec(&id, &exec(&["echo", "a", "b"])).await.unwrap();
        assert_eq!(out.stdout, b"a b\n");
        assert!(out.status.success());
        assert_eq!(d.exec(&id, &exec(&["false"])).await.unwrap().status.code, 1);
        let mut cat = exec(&["cat"]);
        cat.stdin = b"in".to_vec();
        assert_eq!(d.exec(&id, &cat).await.unwrap().stdout, b"in");
        assert!(
            d.exec(&id, &exec(&["sleep", "60"]))
                .await
                .unwrap()
                .timed_out
        );
        assert!(matches!(
            d.exec(&id, &exec(&["nope"])).await,
            Err(DriverError::InvalidCommand(_))
        ));
        d.fail_next(Verb::Exec, "boom");
        assert!(d.exec(&id, &exec(&["true"])).await.is_err());
        assert!(d.exec(&id, &exec(&["true"])).await.is_ok());
    }

    #[tokio::test]
    async fn logs_are_written_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let d = FakeDriver::with_log_dir(dir.path());
        let id = MachineId::generate();
        d.create(&spec(&id)).await.unwrap();
        d.start(&id, &process(&["echo", "hello"])).await.unwrap();
        let log = std::fs::read_to_string(d.log_path(&id)).unwrap();
        assert!(log.contains("\"hello\""), "{log}");
    }
}
