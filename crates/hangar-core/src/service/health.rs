//! Health checks: while a machine is started, each of its `config.checks` runs on its
//! interval (after its grace period) by dialing the machine's port through the
//! driver, inside the machine's own network. Results live in memory only: a daemon
//! restart starts every check again from `warning`.
//!
//! This module owns the check tasks and their latest results, and records an event
//! when a check changes status. It never changes a machine's state: the edge proxy
//! reads the results (through the machine's API view) to route around failures.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use hangar_types::CheckStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::config::{self, CheckConfig, CheckKind};
use crate::driver::Driver;
use crate::ids::{MachineId, random_hex};
use crate::model::{EventRecord, MachineRecord, rfc3339};
use crate::state::MachineState;
use crate::store::Store;

pub const PASSING: &str = "passing";
pub const WARNING: &str = "warning";
pub const CRITICAL: &str = "critical";

/// The checks running for each started machine.
#[derive(Default)]
pub(super) struct HealthTable {
    machines: Mutex<HashMap<MachineId, Checked>>,
}

struct Checked {
    instance_id: String,
    stop: CancellationToken,
    results: Arc<Mutex<BTreeMap<String, CheckStatus>>>,
}

impl HealthTable {
    fn stop(&self, id: &MachineId) {
        if let Some(old) = self.lock().remove(id) {
            old.stop.cancel();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<MachineId, Checked>> {
        self.machines.lock().expect("health table poisoned")
    }

    /// How many machines have checks running (for tests and metrics).
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Service {
    /// The latest result of each of the machine's checks; empty unless it is started
    /// and has checks.
    pub fn check_statuses(&self, id: &MachineId) -> Vec<CheckStatus> {
        match self.health.lock().get(id) {
            Some(c) => c
                .results
                .lock()
                .expect("check results poisoned")
                .values()
                .cloned()
                .collect(),
            None => Vec::new(),
        }
    }

    /// Whether one of the machine's checks is `critical` right now (what the edge
    /// proxy asks on every request, so it copies nothing).
    pub fn failing_checks(&self, id: &MachineId) -> bool {
        self.health.lock().get(id).is_some_and(|c| {
            c.results
                .lock()
                .expect("check results poisoned")
                .values()
                .any(|s| s.status == CRITICAL)
        })
    }

    /// How many machines have checks running right now.
    pub fn checked_machines(&self) -> usize {
        self.health.len()
    }

    /// Runs the checks of every started machine, following state changes, until
    /// `shutdown`.
    pub fn spawn_health_loop(
        self: &Arc<Self>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let service = Arc::clone(self);
        // Subscribe before the first sweep so no start in between is missed.
        let mut changes = self.subscribe();
        tokio::spawn(async move {
            service.resync_checks(&shutdown).await;
            loop {
                let change = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    change = changes.recv() => change,
                };
                match change {
                    Ok(change) if change.state == MachineState::Started => {
                        match service.store.get_machine(&change.machine_id).await {
                            Ok(Some(m)) if m.state == MachineState::Started => {
                                service.start_checks(&m, &shutdown)
                            }
                            Ok(_) => service.health.stop(&change.machine_id),
                            Err(err) => {
                                tracing::warn!(machine = %change.machine_id, %err, "could not read a machine to check it")
                            }
                        }
                    }
                    Ok(change) => service.health.stop(&change.machine_id),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "state changes were missed; re-reading checks");
                        service.resync_checks(&shutdown).await;
                    }
                    Err(RecvError::Closed) => break,
                }
            }
            let ids: Vec<MachineId> = service.health.lock().keys().cloned().collect();
            for id in ids {
                service.health.stop(&id);
            }
        })
    }

    /// Brings the running checks in line with the store: started machines are
    /// checked, every other machine is not.
    async fn resync_checks(&self, shutdown: &CancellationToken) {
        let machines = match self.store.list_machines(None, false).await {
            Ok(m) => m,
            Err(err) => {
                tracing::error!(%err, "could not list machines to check them");
                return;
            }
        };
        let started: std::collections::HashSet<&MachineId> = machines
            .iter()
            .filter(|m| m.state == MachineState::Started)
            .map(|m| &m.id)
            .collect();
        let gone: Vec<MachineId> = self
            .health
            .lock()
            .keys()
            .filter(|id| !started.contains(id))
            .cloned()
            .collect();
        for id in gone {
            self.health.stop(&id);
        }
        for m in machines.iter().filter(|m| m.state == MachineState::Started) {
            let current = self
                .health
                .lock()
                .get(&m.id)
                .is_some_and(|c| c.instance_id == m.instance_id);
            if !current {
                self.start_checks(m, shutdown);
            }
        }
    }

    /// (Re)starts the machine's checks from `warning`.
    fn start_checks(&self, machine: &MachineRecord, shutdown: &CancellationToken) {
        self.health.stop(&machine.id);
        let checks = match config::checks(&machine.config) {
            Ok(c) if !c.is_empty() => c,
            Ok(_) => return,
            Err(err) => {
                // Validated on create and update; an old record may predate that.
                tracing::warn!(machine = %machine.id, error = %err, "ignoring unreadable checks");
                return;
            }
        };
        let stop = shutdown.child_token();
        let now = rfc3339(Utc::now());
        let results: BTreeMap<String, CheckStatus> = checks
            .keys()
            .map(|name| {
                let status = CheckStatus {
                    name: name.clone(),
                    status: WARNING.into(),
                    output: "waiting for the first result".into(),
                    updated_at: now.clone(),
                };
                (name.clone(), status)
            })
            .collect();
        let results = Arc::new(Mutex::new(results));
        for (name, check) in checks {
            let run = CheckRun {
                driver: Arc::clone(&self.driver),
                store: Arc::clone(&self.store),
                machine: machine.id.clone(),
                name,
                check,
                results: Arc::clone(&results),
                stop: stop.clone(),
            };
            tokio::spawn(run.run());
        }
        self.health.lock().insert(
            machine.id.clone(),
            Checked {
                instance_id: machine.instance_id.clone(),
                stop,
                results,
            },
        );
    }
}

/// One check of one machine, until its machine stops.
struct CheckRun {
    driver: Arc<dyn Driver>,
    store: Arc<dyn Store>,
    machine: MachineId,
    name: String,
    check: CheckConfig,
    results: Arc<Mutex<BTreeMap<String, CheckStatus>>>,
    stop: CancellationToken,
}

impl CheckRun {
    async fn run(self) {
        if !self.pause(self.check.grace_period).await {
            return;
        }
        let mut last: Option<&'static str> = None;
        loop {
            let outcome = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = tokio::time::timeout(self.check.timeout, probe(self.driver.as_ref(), &self.machine, &self.check)) => {
                    r.unwrap_or_else(|_| Err(format!("no answer within {:?}", self.check.timeout)))
                }
            };
            let (status, output) = match outcome {
                Ok(o) => (PASSING, o),
                Err(e) => (CRITICAL, e),
            };
            self.results.lock().expect("check results poisoned").insert(
                self.name.clone(),
                CheckStatus {
                    name: self.name.clone(),
                    status: status.into(),
                    output: output.clone(),
                    updated_at: rfc3339(Utc::now()),
                },
            );
            if last != Some(status) {
                self.changed(status, &output).await;
                last = Some(status);
            }
            if !self.pause(self.check.interval).await {
                return;
            }
        }
    }

    /// Waits `d`; false when the machine stopped meanwhile.
    async fn pause(&self, d: std::time::Duration) -> bool {
        tokio::select! {
            _ = self.stop.cancelled() => false,
            _ = tokio::time::sleep(d) => true,
        }
    }

    async fn changed(&self, status: &'static str, output: &str) {
        tracing::info!(machine = %self.machine, check = %self.name, status, output, "health check changed");
        metrics::counter!("hangar_check_transitions_total", "status" => status).increment(1);
        let event = EventRecord {
            id: random_hex(8),
            machine_id: self.machine.clone(),
            kind: "check".into(),
            status: status.into(),
            source: "hangar".into(),
            timestamp: Utc::now(),
            request: serde_json::json!({"check": self.name, "output": output}),
        };
        if let Err(err) = self.store.insert_event(&event).await {
            tracing::warn!(machine = %self.machine, %err, "could not record a check event");
        }
    }
}

/// Runs a check once: `Ok(what was seen)` or `Err(why it failed)`.
async fn probe(driver: &dyn Driver, id: &MachineId, check: &CheckConfig) -> Result<String, String> {
    let mut stream = driver
        .connect(id, check.port)
        .await
        .map_err(|e| format!("connecting to port {}: {e}", check.port))?;
    if check.kind == CheckKind::Tcp {
        return Ok(format!("port {} accepts connections", check.port));
    }
    let mut request = format!(
        "{} {} HTTP/1.1\r\nUser-Agent: hangar-health-check\r\nAccept: */*\r\nConnection: close\r\n",
        check.method, check.path
    );
    if !check
        .headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("host"))
    {
        request.push_str(&format!("Host: localhost:{}\r\n", check.port));
    }
    for (k, v) in &check.headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending the request: {e}"))?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the response: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let code = status_code(&head).ok_or_else(|| {
        format!(
            "{} {} got no HTTP response on port {}",
            check.method, check.path, check.port
        )
    })?;
    if (200..400).contains(&code) {
        Ok(format!("{} {} answered {code}", check.method, check.path))
    } else {
        Err(format!(
            "{} {} answered {code}: expected 2xx or 3xx",
            check.method, check.path
        ))
    }
}

/// The status code of an HTTP/1.x status line.
fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_parse() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 302 Found\r\nLocation: /"), Some(302));
        assert_eq!(status_code(b"HTTP/1.1 404"), Some(404));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b""), None);
    }
}
