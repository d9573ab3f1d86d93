//! Why the proxy could not relay a request, and the response that says so: JSON
//! `{"error", "code"}` when the client accepts JSON, a plain sentence otherwise.

use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode, header};

use crate::forward::{Body, full};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "no app is served at host {0:?}: use <app>.<base domain> or <machine>.<app>.<base domain>"
    )]
    UnknownHost(String),
    #[error("app {0:?} was not found; create it and a machine with a service first")]
    UnknownApp(String),
    #[error("{} exposes no service on port {port}: add one to config.services or call POST /v1/apps/{app}/machines/{{id}}/expose", machine.as_deref().map_or_else(|| format!("no machine of app {app:?}"), |m| format!("machine {m} of app {app:?}")))]
    NoService {
        app: String,
        machine: Option<String>,
        port: u16,
    },
    #[error(
        "machine {0} cannot serve right now (it is not started and fly-force-instance-id allows no other)"
    )]
    ForcedUnavailable(String),
    #[error(
        "no machine can take this request: every started machine is at its concurrency hard limit; retry later"
    )]
    AtHardLimit,
    #[error(
        "no machine of this app is started and none may be started for a request (autostart is off)"
    )]
    NoneStarted,
    #[error(
        "every started machine of this app is failing a health check ({}): see their \"checks\" in GET /v1/apps/{{app}}/machines, or reach one anyway with fly-force-instance-id", .0.join(", ")
    )]
    AllFailing(Vec<String>),
    #[error("machine {machine} failed to start: {why}")]
    StartFailed { machine: String, why: String },
    #[error("machine {machine} did not accept connections on port {port} in time: {why}{logs}")]
    NotListening {
        machine: String,
        port: u16,
        why: String,
        logs: String,
    },
    #[error("machine {machine} failed while answering: {why}")]
    Upstream { machine: String, why: String },
    #[error("machine {0} did not answer in time")]
    UpstreamTimeout(String),
    #[error("fly-replay could not be followed: {0}")]
    Replay(String),
}

/// Whether a client's `Accept` asks for JSON.
pub(crate) fn wants_json(request_headers: &HeaderMap) -> bool {
    request_headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("json"))
}

impl ProxyError {
    fn status(&self) -> StatusCode {
        use ProxyError::*;
        match self {
            UnknownHost(_) | UnknownApp(_) => StatusCode::NOT_FOUND,
            NoService { .. } | ForcedUnavailable(_) | AtHardLimit | NoneStarted | AllFailing(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            StartFailed { .. } | NotListening { .. } | Upstream { .. } | Replay(_) => {
                StatusCode::BAD_GATEWAY
            }
            UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    pub fn code(&self) -> &'static str {
        use ProxyError::*;
        match self {
            UnknownHost(_) => "unknown_host",
            UnknownApp(_) => "app_not_found",
            NoService { .. } => "no_service",
            ForcedUnavailable(_) => "instance_unavailable",
            AtHardLimit => "at_hard_limit",
            NoneStarted => "no_machine_started",
            AllFailing(_) => "all_machines_failing_checks",
            StartFailed { .. } => "machine_start_failed",
            NotListening { .. } => "machine_not_listening",
            Upstream { .. } => "upstream_error",
            UpstreamTimeout(_) => "upstream_timeout",
            Replay(_) => "replay_failed",
        }
    }

    /// The answer to the client; `json` when it accepts JSON (see [`wants_json`]).
    pub(crate) fn response(&self, json: bool, request_id: &str) -> Response<Body> {
        let (ty, body) = if json {
            (
                "application/json",
                serde_json::json!({"error": self.to_string(), "code": self.code()}).to_string(),
            )
        } else {
            ("text/plain; charset=utf-8", format!("{self}\n"))
        };
        Response::builder()
            .status(self.status())
            .header(header::CONTENT_TYPE, ty)
            .header("x-request-id", request_id)
            .header("x-hangar-error", self.code())
            .body(full(Bytes::from(body)))
            .expect("static response parts are valid")
    }
}
