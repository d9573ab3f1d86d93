//! Which machine a request goes to: the Host names an app or one machine, the app's
//! machines' `config.services` say which internal port serves the public port, and
//! steering headers, load and machine state pick among them.

use std::sync::Arc;
use std::time::Instant;

use hangar_core::config::{self, Autostop, ServiceConfig};
use hangar_core::service::Caller;

use crate::Proxy;
use crate::failure::ProxyError;
use crate::routes::Routed;

/// What a Host names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub app: String,
    pub machine: Option<String>,
}

/// `<app>.<base>` or `<machine>.<app>.<base>`, any port and case; `None` for hosts
/// outside the base domain.
pub fn parse_host(host: &str, base_domain: &str) -> Option<Target> {
    let host = host.trim().trim_end_matches('.');
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.to_ascii_lowercase();
    let base = base_domain.trim_matches('.').to_ascii_lowercase();
    let prefix = host.strip_suffix(&base)?.strip_suffix('.')?;
    let mut labels = prefix.rsplit('.');
    let app = labels.next().filter(|s| !s.is_empty())?.to_string();
    let machine = labels.next().map(str::to_string);
    if labels.next().is_some() {
        return None;
    }
    Some(Target { app, machine })
}

/// A machine that can serve the request, with the service whose port to dial.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub app: Arc<str>,
    pub machine: Arc<Routed>,
    service: usize,
    /// A health check of the started machine last failed.
    failing: bool,
}

impl Candidate {
    pub fn id(&self) -> &str {
        &self.machine.id
    }
    pub fn service(&self) -> &ServiceConfig {
        &self.machine.services[self.service]
    }
    pub fn started(&self) -> bool {
        self.machine.state == "started"
    }
    /// A started machine one of whose health checks last failed.
    pub fn failing(&self) -> bool {
        self.started() && self.failing
    }
    pub fn can_wake(&self) -> bool {
        matches!(
            self.machine.state.as_str(),
            "stopped" | "suspended" | "created"
        ) && self.service().autostart.unwrap_or(true)
    }
}

/// The service of `machine` that publishes `public_port`: one listing that port, or
/// else one with an `http`/`tls` handler (documented: any HTTP service answers on
/// both listeners when no service names the port).
fn service_for(machine: &Routed, public_port: u16) -> Option<usize> {
    let services = &machine.services;
    let wanted = if public_port == 443 { "tls" } else { "http" };
    services
        .iter()
        .position(|s| s.serves(public_port))
        .or_else(|| {
            services.iter().position(|s| {
                s.ports
                    .iter()
                    .any(|p| p.handlers.iter().any(|h| h == wanted || h == "http"))
            })
        })
}

impl Proxy {
    /// The app's machines that serve `public_port`, in the order they were created.
    pub(crate) async fn candidates(
        &self,
        target: &Target,
        public_port: u16,
    ) -> Result<Vec<Candidate>, ProxyError> {
        let machines = self
            .machines(&target.app)
            .await
            .map_err(|_| ProxyError::UnknownApp(target.app.clone()))?;
        let exist = !machines.is_empty();
        let app: Arc<str> = Arc::from(target.app.as_str());
        let found: Vec<Candidate> = machines
            .iter()
            .filter(|m| m.state != "destroyed" && m.state != "destroying")
            .filter(|m| target.machine.as_deref().is_none_or(|id| id == m.id))
            .filter_map(|m| {
                service_for(m, public_port).map(|service| Candidate {
                    app: app.clone(),
                    machine: m.clone(),
                    service,
                    // The cached list follows state changes, not check results:
                    // those are read live.
                    failing: m
                        .machine_id
                        .as_ref()
                        .is_some_and(|id| self.service.failing_checks(id)),
                })
            })
            .collect();
        if found.is_empty() {
            return Err(match &target.machine {
                Some(id) if exist => ProxyError::NoService {
                    app: target.app.clone(),
                    machine: Some(id.clone()),
                    port: public_port,
                },
                _ => ProxyError::NoService {
                    app: target.app.clone(),
                    machine: target.machine.clone(),
                    port: public_port,
                },
            });
        }
        Ok(found)
    }

    /// Picks a started machine with room and passing checks, least loaded first;
    /// `None` when every such machine is past its soft limit (or none is started).
    /// Machines failing a health check are out of rotation; when they are all there
    /// is, and none can be woken, that is the answer.
    pub(crate) fn pick(&self, candidates: &[Candidate]) -> Result<Option<Candidate>, ProxyError> {
        let load = self.load.lock().expect("load table poisoned");
        let mut best: Option<(usize, usize, &Candidate)> = None;
        let mut at_hard_limit = 0;
        let started: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.started() && !c.failing())
            .collect();
        let failing: Vec<&str> = candidates
            .iter()
            .filter(|c| c.failing())
            .map(Candidate::id)
            .collect();
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for (i, c) in started.iter().enumerate() {
            let n = load.get(c.id()).map_or(0, |l| l.in_flight);
            let limits = c.service().concurrency.as_ref();
            if limits
                .and_then(|l| l.hard_limit)
                .is_some_and(|h| n >= h as usize)
            {
                at_hard_limit += 1;
                continue;
            }
            let over_soft = limits
                .and_then(|l| l.soft_limit)
                .is_some_and(|s| n >= s as usize);
            // Rotate among equals so idle machines share the work.
            let rank = (i + started.len() - turn % started.len().max(1)) % started.len().max(1);
            let key = (usize::from(over_soft) * usize::MAX / 2 + n, rank);
            if best.is_none_or(|(bn, br, _)| key < (bn, br)) {
                best = Some((key.0, key.1, c));
            }
        }
        let over_soft = best.is_some_and(|(n, _, _)| n >= usize::MAX / 2);
        let wakeable = candidates.iter().any(Candidate::can_wake);
        match best {
            Some((_, _, c)) if !(over_soft && wakeable) => Ok(Some(c.clone())),
            Some(_) => Ok(None),
            None if at_hard_limit > 0 && !wakeable => Err(ProxyError::AtHardLimit),
            None if !failing.is_empty() && !wakeable => Err(ProxyError::AllFailing(
                failing.iter().map(|s| s.to_string()).collect(),
            )),
            None => Ok(None),
        }
    }

    /// Starts (or resumes) `candidate` through the service layer.
    pub(crate) async fn wake(&self, candidate: &Candidate) -> Result<(), ProxyError> {
        tracing::info!(machine = candidate.id(), "starting machine for a request");
        self.service
            .start_machine(&candidate.app, candidate.id(), &Caller::default())
            .await
            .map(|_| ())
            .map_err(|e| ProxyError::StartFailed {
                machine: candidate.id().to_string(),
                why: e.to_string(),
            })
    }

    pub(crate) fn begin(&self, app: &str, id: &str) {
        let mut load = self.load.lock().expect("load table poisoned");
        if !load.contains_key(id) {
            load.insert(id.to_string(), crate::Load::default());
        }
        let l = load.get_mut(id).expect("inserted above");
        if l.app != app {
            l.app = app.to_string();
        }
        l.in_flight += 1;
        l.last_active = Some(Instant::now());
    }

    pub(crate) fn end(&self, id: &str) {
        let mut load = self.load.lock().expect("load table poisoned");
        if let Some(l) = load.get_mut(id) {
            l.in_flight = l.in_flight.saturating_sub(1);
            l.last_active = Some(Instant::now());
        }
    }
}

/// Ends a request's share of a machine's load however the response body ends.
pub(crate) struct InFlight {
    pub proxy: std::sync::Arc<Proxy>,
    pub id: String,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.proxy.end(&self.id);
    }
}

/// Stops or suspends machines idle past the timeout, keeping each app's
/// `min_machines_running` started.
pub(crate) async fn autostop_idle(proxy: &Proxy) -> Result<(), ProxyError> {
    let idle: Vec<(String, String)> = {
        let load = proxy.load.lock().expect("load table poisoned");
        load.iter()
            .filter(|(_, l)| {
                l.in_flight == 0
                    && l.last_active
                        .is_some_and(|t| t.elapsed() >= proxy.options.idle_timeout)
            })
            .map(|(id, l)| (l.app.clone(), id.clone()))
            .collect()
    };
    for (app, id) in idle {
        let Ok(machine) = proxy.service.get_machine(&app, &id).await else {
            proxy.load.lock().expect("load table poisoned").remove(&id);
            continue;
        };
        if machine.state != "started" {
            continue;
        }
        let Some(service) = config::services(&machine.config)
            .ok()
            .and_then(|s| s.into_iter().find(|s| s.autostop() != Autostop::Off))
        else {
            continue;
        };
        let min = service.min_machines_running.unwrap_or(0) as usize;
        let running = proxy
            .service
            .list_machines(&app, false)
            .await
            .map(|ms| ms.iter().filter(|m| m.state == "started").count())
            .unwrap_or(0);
        if running <= min {
            continue;
        }
        tracing::info!(machine = %id, "stopping idle machine");
        let result = match service.autostop() {
            Autostop::Suspend => {
                proxy
                    .service
                    .suspend_machine(&app, &id, &Caller::default())
                    .await
            }
            _ => {
                proxy
                    .service
                    .stop_machine(&app, &id, Default::default(), &Caller::default())
                    .await
            }
        };
        if let Err(err) = result {
            tracing::warn!(machine = %id, %err, "could not stop idle machine");
        }
        proxy.load.lock().expect("load table poisoned").remove(&id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_name_apps_and_machines() {
        let b = "hangar.localhost";
        assert_eq!(
            parse_host("web.hangar.localhost:8080", b),
            Some(Target {
                app: "web".into(),
                machine: None
            })
        );
        assert_eq!(
            parse_host("ABC123.Web.hangar.localhost", b),
            Some(Target {
                app: "web".into(),
                machine: Some("abc123".into())
            })
        );
        assert_eq!(parse_host("hangar.localhost", b), None);
        assert_eq!(parse_host("evilhangar.localhost", b), None);
        assert_eq!(parse_host("a.b.web.hangar.localhost", b), None);
        assert_eq!(parse_host("web.example.com", b), None);
    }
}
