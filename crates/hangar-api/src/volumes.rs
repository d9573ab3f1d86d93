//! Volume routes, in the Fly Machines API v1 shapes.

use axum::Json;
use axum::extract::{Path, State};
use hangar_types::*;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Body;

#[utoipa::path(get, path = "/v1/apps/{app}/volumes", tag = "Volumes",
    responses((status = 200, body = [Volume]), (status = 404, body = ErrorResponse)))]
pub async fn list(
    State(s): State<AppState>,
    Path(app): Path<String>,
) -> ApiResult<Json<Vec<Volume>>> {
    Ok(Json(s.service.list_volumes(&app).await?))
}

/// An empty ext4 volume of `size_gb`, a restore of `snapshot_id`, or a fork of
/// `source_volume_id`.
#[utoipa::path(post, path = "/v1/apps/{app}/volumes", tag = "Volumes",
    request_body = CreateVolumeRequest,
    responses((status = 200, body = Volume), (status = 400, body = ErrorResponse),
        (status = 404, body = ErrorResponse), (status = 501, body = ErrorResponse)))]
pub async fn create(
    State(s): State<AppState>,
    Path(app): Path<String>,
    Body(req): Body<CreateVolumeRequest>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(s.service.create_volume(&app, req).await?))
}

#[utoipa::path(get, path = "/v1/apps/{app}/volumes/{id}", tag = "Volumes",
    responses((status = 200, body = Volume), (status = 404, body = ErrorResponse)))]
pub async fn get(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(s.service.get_volume(&app, &id).await?))
}

#[utoipa::path(post, path = "/v1/apps/{app}/volumes/{id}", tag = "Volumes",
    request_body = UpdateVolumeRequest,
    responses((status = 200, body = Volume), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn update(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<UpdateVolumeRequest>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(s.service.update_volume(&app, &id, req).await?))
}

/// Refused with 409 `volume_attached` while a machine mounts the volume.
#[utoipa::path(delete, path = "/v1/apps/{app}/volumes/{id}", tag = "Volumes",
    responses((status = 200, body = Volume), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn delete(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Volume>> {
    Ok(Json(s.service.delete_volume(&app, &id).await?))
}

/// Grows the volume; a mounted one grows while its machine runs where the host allows
/// it, else `needs_restart` is true and it grows when the sandbox is next built.
#[utoipa::path(put, path = "/v1/apps/{app}/volumes/{id}/extend", tag = "Volumes",
    request_body = ExtendVolumeRequest,
    responses((status = 200, body = ExtendVolumeResponse), (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
pub async fn extend(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Body(req): Body<ExtendVolumeRequest>,
) -> ApiResult<Json<ExtendVolumeResponse>> {
    Ok(Json(s.service.extend_volume(&app, &id, req).await?))
}

#[utoipa::path(get, path = "/v1/apps/{app}/volumes/{id}/snapshots", tag = "Volumes",
    responses((status = 200, body = [VolumeSnapshot]), (status = 404, body = ErrorResponse)))]
pub async fn list_snapshots(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<Vec<VolumeSnapshot>>> {
    Ok(Json(s.service.list_volume_snapshots(&app, &id).await?))
}

/// A consistent copy of the volume now; a mounted file system is frozen for the
/// instant it takes.
#[utoipa::path(post, path = "/v1/apps/{app}/volumes/{id}/snapshots", tag = "Volumes",
    responses((status = 200, body = VolumeSnapshot), (status = 404, body = ErrorResponse)))]
pub async fn create_snapshot(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
) -> ApiResult<Json<VolumeSnapshot>> {
    Ok(Json(s.service.create_volume_snapshot(&app, &id).await?))
}
