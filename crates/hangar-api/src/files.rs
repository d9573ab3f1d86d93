//! Files routes: `/v1/apps/{app}/machines/{id}/files?path=/abs/path`.
//!
//! Bodies and answers are raw bytes, not JSON; a directory's listing is JSON.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use hangar_core::service::{FileRead, MAX_FILE_SIZE, WriteFileRequest, parse_mode};
use hangar_types::*;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{LeaseNonce, Query, body_error};

#[derive(Deserialize)]
pub struct FilesQuery {
    path: Option<String>,
    /// `GET`: list even if the path is a directory reached some other way.
    #[serde(default)]
    list: bool,
    /// Octal permission bits for `PUT` and mkdir.
    mode: Option<String>,
    uid: Option<u32>,
    gid: Option<u32>,
    #[serde(default)]
    parents: bool,
    #[serde(default)]
    recursive: bool,
    #[serde(default)]
    mkdir: bool,
}

impl FilesQuery {
    fn path(&self) -> ApiResult<&str> {
        self.path
            .as_deref()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidPath,
                    "name the path inside the machine: ?path=/absolute/path",
                )
            })
    }

    fn mode(&self, default: u32) -> ApiResult<u32> {
        match &self.mode {
            Some(mode) => Ok(parse_mode(mode)?),
            None => Ok(default),
        }
    }
}

/// Mode, size and mtime of a file read: `0644`, bytes, seconds since the epoch.
pub const MODE_HEADER: &str = "x-hangar-file-mode";
pub const SIZE_HEADER: &str = "x-hangar-file-size";
pub const MTIME_HEADER: &str = "x-hangar-file-mtime";

#[utoipa::path(get, path = "/v1/apps/{app}/machines/{id}/files", tag = "Files",
    params(("path" = String, Query, description = "absolute path inside the machine"),
           ("list" = Option<bool>, Query, description = "list the directory")),
    responses((status = 200, description = "A file's bytes (application/octet-stream, with x-hangar-file-mode/-size/-mtime headers) or a directory's entries", body = [FileEntry]),
              (status = 404, body = ErrorResponse), (status = 400, body = ErrorResponse)))]
pub async fn read(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<FilesQuery>,
) -> ApiResult<Response> {
    Ok(
        match s.service.read_file(&app, &id, q.path()?, q.list).await? {
            FileRead::Dir(entries) => Json(entries).into_response(),
            FileRead::File(data) => {
                let size = data.contents.len();
                let mut response = (
                    [(header::CONTENT_TYPE, "application/octet-stream")],
                    Bytes::from(data.contents),
                )
                    .into_response();
                let headers = response.headers_mut();
                for (name, value) in [
                    (MODE_HEADER, format!("{:04o}", data.mode)),
                    (SIZE_HEADER, size.to_string()),
                    (MTIME_HEADER, data.mtime.to_string()),
                ] {
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        headers.insert(name, value);
                    }
                }
                response
            }
        },
    )
}

/// Creates or atomically replaces a file; the body is its raw contents.
#[utoipa::path(put, path = "/v1/apps/{app}/machines/{id}/files", tag = "Files",
    params(("path" = String, Query, description = "absolute path inside the machine"),
           ("mode" = Option<String>, Query, description = "octal permission bits, default 0644"),
           ("uid" = Option<u32>, Query), ("gid" = Option<u32>, Query),
           ("parents" = Option<bool>, Query, description = "create missing parent directories")),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, description = "Written"), (status = 413, body = ErrorResponse)))]
pub async fn write(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<FilesQuery>,
    LeaseNonce(caller): LeaseNonce,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Json<Value>> {
    let contents = body.map_err(|rejection| {
        body_error(rejection, || {
            format!(
                "the file is larger than {} MiB, the most the files API writes; put it in the image or a volume",
                MAX_FILE_SIZE / (1024 * 1024)
            )
        })
    })?;
    let req = WriteFileRequest {
        path: q.path()?.to_string(),
        contents: contents.to_vec(),
        mode: q.mode(0o644)?,
        uid: q.uid.unwrap_or(0),
        gid: q.gid.unwrap_or(0),
        parents: q.parents,
    };
    s.service.write_file(&app, &id, req, &caller).await?;
    Ok(Json(json!({"ok": true})))
}

/// `POST .../files?mkdir=true&path=` makes a directory.
#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/files", tag = "Files",
    params(("path" = String, Query), ("mkdir" = bool, Query, description = "must be true"),
           ("mode" = Option<String>, Query, description = "octal, default 0755"),
           ("parents" = Option<bool>, Query)),
    responses((status = 200, description = "Made, or already a directory"), (status = 400, body = ErrorResponse)))]
pub async fn post(
    state: State<AppState>,
    path: Path<(String, String)>,
    Query(q): Query<FilesQuery>,
    caller: LeaseNonce,
) -> ApiResult<Json<Value>> {
    if !q.mkdir {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "POST on files makes a directory: add mkdir=true (or POST .../files/mkdir?path=)",
        ));
    }
    mkdir(state, path, Query(q), caller).await
}

#[utoipa::path(post, path = "/v1/apps/{app}/machines/{id}/files/mkdir", tag = "Files",
    params(("path" = String, Query), ("mode" = Option<String>, Query, description = "octal, default 0755"),
           ("parents" = Option<bool>, Query)),
    responses((status = 200, description = "Made, or already a directory"), (status = 400, body = ErrorResponse)))]
pub async fn mkdir(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<FilesQuery>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<Json<Value>> {
    s.service
        .make_dir(&app, &id, q.path()?, q.mode(0o755)?, q.parents, &caller)
        .await?;
    Ok(Json(json!({"ok": true})))
}

/// Removes a file, a symlink (never its target) or, with `recursive=true`, a directory.
#[utoipa::path(delete, path = "/v1/apps/{app}/machines/{id}/files", tag = "Files",
    params(("path" = String, Query), ("recursive" = Option<bool>, Query)),
    responses((status = 200, description = "Removed"), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn remove(
    State(s): State<AppState>,
    Path((app, id)): Path<(String, String)>,
    Query(q): Query<FilesQuery>,
    LeaseNonce(caller): LeaseNonce,
) -> ApiResult<Json<Value>> {
    s.service
        .remove_file(&app, &id, q.path()?, q.recursive, &caller)
        .await?;
    Ok(Json(json!({"ok": true})))
}
