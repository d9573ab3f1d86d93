//! Background job routes: start a command, read its output from a cursor, send it
//! input, signal or cancel it.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hangar_core::service::{JobRequest, MAX_JOB_STDIN};
use hangar_types::*;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{Body, Query, body_error};

/// Longest `wait` a poll may ask for, kept below common client timeouts.
const MAX_POLL_WAIT: u64 = 50;

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/jobs", tag = "Jobs",
    request_body = CreateJobRequest,
    responses((status = 201, body = Job), (status = 409, body = ErrorResponse)))]
pub async fn create(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<CreateJobRequest>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    let req = JobRequest::try_from(req)?;
    let job = s.service.create_job(&app, &id, req).await?;
    Ok((StatusCode::CREATED, Json(job)))
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/jobs", tag = "Jobs",
    responses((status = 200, body = [Job])))]
pub async fn list(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Job>>> {
    Ok(Json(s.service.list_jobs(&app, &id).await?))
}

#[derive(Deserialize)]
pub struct PollQuery {
    #[serde(default)]
    cursor: u64,
    #[serde(default)]
    stderr_cursor: u64,
    /// Seconds to wait for the job to end before answering.
    #[serde(default)]
    wait: Option<u64>,
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/jobs/{job}", tag = "Jobs",
    params(("cursor" = Option<u64>, Query, description = "stdout byte offset to read from"),
           ("stderr_cursor" = Option<u64>, Query, description = "stderr byte offset to read from"),
           ("wait" = Option<u64>, Query, description = "seconds to wait for the job to end, at most 50")),
    responses((status = 200, body = Job), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(s): State<AppState>,
    Path((app, id, job)): Path<(String, String, String)>,
    Query(q): Query<PollQuery>,
) -> ApiResult<Json<Job>> {
    let wait = q
        .wait
        .map(|secs| Duration::from_secs(secs.min(MAX_POLL_WAIT)));
    Ok(Json(
        s.service
            .get_job(&app, &id, &job, q.cursor, q.stderr_cursor, wait)
            .await?,
    ))
}

#[utoipa::path(delete, path = "/v1/apps/{app}/machines/{id}/jobs/{job}", tag = "Jobs",
    description = "Kills a running job's processes (SIGKILL to its process group) and marks it cancelled; forgets a finished job.",
    responses((status = 200, body = Job), (status = 404, body = ErrorResponse)))]
pub async fn cancel(
    State(s): State<AppState>,
    Path((app, id, job)): Path<(String, String, String)>,
) -> ApiResult<Json<Job>> {
    Ok(Json(s.service.cancel_job(&app, &id, &job).await?))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/jobs/{job}/signal", tag = "Jobs",
    description = "Sends a signal to a running job's process group; the job keeps its state until its process ends.",
    request_body = SignalJobRequest,
    responses((status = 200, body = Job), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn signal(
    State(s): State<AppState>,
    Path((app, id, job)): Path<(String, String, String)>,
    Body(req): Body<SignalJobRequest>,
) -> ApiResult<Json<Job>> {
    Ok(Json(
        s.service
            .signal_job(&app, &id, &job, &req.signal_text())
            .await?,
    ))
}

#[derive(Deserialize)]
pub struct StdinQuery {
    /// Close the job's stdin after the body.
    #[serde(default)]
    eof: bool,
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/jobs/{job}/stdin", tag = "Jobs",
    description = "Writes the raw body to the stdin of a running job started with `stdin_open: true`; `eof=true` closes its stdin afterwards (the body may be empty). Answers with the job, without output.",
    params(("eof" = Option<bool>, Query, description = "close stdin after the body")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Job), (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse), (status = 413, body = ErrorResponse)))]
pub async fn stdin(
    State(s): State<AppState>,
    Path((app, id, job)): Path<(String, String, String)>,
    Query(q): Query<StdinQuery>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Job>> {
    let data = body.map_err(|rejection| {
        body_error(rejection, || {
            format!(
                "a job takes at most {MAX_JOB_STDIN} bytes of stdin per request: send it in pieces"
            )
        })
    })?;
    Ok(Json(
        s.service
            .send_job_stdin(&app, &id, &job, &data, q.eof)
            .await?,
    ))
}
