//! Checkpoint, restore, fork, diff and commit routes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use hangar_types::*;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{Body, LeaseNonce, Query};

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/checkpoints", tag = "Checkpoints",
    request_body = Option<CreateCheckpointRequest>,
    responses((status = 201, body = Checkpoint), (status = 409, body = ErrorResponse), (status = 501, body = ErrorResponse)))]
pub async fn create(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
    Body(req): Body<CreateCheckpointRequest>,
) -> ApiResult<(StatusCode, Json<Checkpoint>)> {
    let checkpoint = s.service.create_checkpoint(&app, &id, req, &caller).await?;
    Ok((StatusCode::CREATED, Json(checkpoint)))
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/checkpoints", tag = "Checkpoints",
    responses((status = 200, body = [Checkpoint])))]
pub async fn list(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<Checkpoint>>> {
    Ok(Json(s.service.list_checkpoints(&app, &id).await?))
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/checkpoints/{checkpoint}", tag = "Checkpoints",
    responses((status = 200, body = Checkpoint), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(s): State<AppState>,
    Path((app, id, checkpoint)): Path<(String, String, String)>,
) -> ApiResult<Json<Checkpoint>> {
    Ok(Json(
        s.service.get_checkpoint(&app, &id, &checkpoint).await?,
    ))
}

/// Machines forked from the checkpoint keep their files: each fork is independent.
#[utoipa::path(delete, path = "/v1/apps/{app}/machines/{id}/checkpoints/{checkpoint}", tag = "Checkpoints",
    responses((status = 200, description = "Deleted"), (status = 404, body = ErrorResponse)))]
pub async fn delete(
    State(s): State<AppState>,
    Path((app, id, checkpoint)): Path<(String, String, String)>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<Json<Value>> {
    s.service
        .delete_checkpoint(&app, &id, &checkpoint, &caller)
        .await?;
    Ok(Json(json!({"ok": true})))
}

/// A started machine is stopped, rebuilt on the checkpoint and started again.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/checkpoints/{checkpoint}/restore", tag = "Checkpoints",
    responses((status = 200, body = Checkpoint), (status = 404, body = ErrorResponse)))]
pub async fn restore(
    State(s): State<AppState>,
    Path((app, id, checkpoint)): Path<(String, String, String)>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<Json<Checkpoint>> {
    Ok(Json(
        s.service
            .restore_checkpoint(&app, &id, &checkpoint, &caller)
            .await?,
    ))
}

#[derive(Deserialize)]
pub struct DiffQuery {
    to: Option<String>,
}

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/checkpoints/{checkpoint}/diff", tag = "Checkpoints",
    params(("to" = Option<String>, Query, description = "another checkpoint, or `current` (the default)")),
    responses((status = 200, body = CheckpointDiff), (status = 404, body = ErrorResponse)))]
pub async fn diff(
    State(s): State<AppState>,
    Path((app, id, checkpoint)): Path<(String, String, String)>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Json<CheckpointDiff>> {
    Ok(Json(
        s.service
            .diff_checkpoint(&app, &id, &checkpoint, q.to.as_deref())
            .await?,
    ))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/fork", tag = "Checkpoints",
    request_body = Option<ForkMachineRequest>,
    responses((status = 200, body = ForkMachineResponse), (status = 404, body = ErrorResponse)))]
pub async fn fork(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
    Body(req): Body<ForkMachineRequest>,
) -> ApiResult<Json<ForkMachineResponse>> {
    Ok(Json(s.service.fork_machine(&app, &id, req, &caller).await?))
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/commit", tag = "Checkpoints",
    request_body = CommitMachineRequest,
    responses((status = 200, body = CommitMachineResponse), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 501, body = ErrorResponse)))]
pub async fn commit(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    LeaseNonce(caller): LeaseNonce,
    Body(req): Body<CommitMachineRequest>,
) -> ApiResult<Json<CommitMachineResponse>> {
    Ok(Json(
        s.service.commit_machine(&app, &id, req, &caller).await?,
    ))
}
