//! Health, metrics, request observation, and the catch-all 404.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hangar_core::state::MachineState;
use hangar_types::ErrorCode;

use crate::AppState;
use crate::error::{ApiError, ApiResult};

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn metrics(State(s): State<AppState>) -> ApiResult<Response> {
    let counts = s.service.machine_counts().await?;
    for state in MachineState::ALL {
        let n = counts.get(&state).copied().unwrap_or(0);
        metrics::gauge!("hangar_machines", "state" => state.as_str()).set(n as f64);
    }
    let body = s.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    Ok(([(CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        "no such endpoint; the API lives under /v1 (see GET /v1/openapi.json)",
    )
}

/// Records latency per route and logs each request.
pub async fn observe_request(req: Request, next: Next) -> Response {
    let began = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let response = next.run(req).await;
    let elapsed = began.elapsed();
    let status = response.status().as_u16();
    metrics::histogram!("hangar_api_request_seconds", "method" => method.to_string(), "route" => route.clone(), "status" => status.to_string())
        .record(elapsed.as_secs_f64());
    tracing::info!(%method, %route, status, micros = elapsed.as_micros() as u64, "request");
    response
}
