//! Image and registry routes.

use std::time::Duration;

use axum::Json;
use axum::body::Body as RawBody;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{StreamExt, TryStreamExt};
use hangar_core::image::PullProgress;
use hangar_types::{
    ErrorCode, ErrorResponse, ImageDetails, ImageSummary, PruneImagesResponse, PullEvent,
    PullImageRequest, PushImageRequest, PushImageResponse, RegistryLoginRequest,
    RegistryLoginResponse,
};
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::{Body, Query};

#[utoipa::path(get, path = "/v1/images", tag = "Images", responses((status = 200, body = [ImageSummary])))]
pub async fn list(State(s): State<AppState>) -> ApiResult<Json<Vec<ImageSummary>>> {
    Ok(Json(s.service.list_images().await?))
}

#[derive(Deserialize)]
pub struct ImportQuery {
    #[serde(default)]
    reference: String,
}

/// The body is the archive itself: a root filesystem tar, a `docker save` archive or
/// an OCI image layout archive.
#[utoipa::path(post, path = "/v1/images/import", tag = "Images",
    params(("reference" = String, Query, description = "name:tag to store the image under")),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 200, body = ImageSummary)))]
pub async fn import(
    State(s): State<AppState>,
    Query(q): Query<ImportQuery>,
    body: RawBody,
) -> ApiResult<Json<ImageSummary>> {
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::StreamReader::new(stream);
    Ok(Json(
        s.service
            .import_image(&q.reference, Box::pin(reader))
            .await?,
    ))
}

/// Pulls an image from the registry its reference names (loopback registries are
/// spoken to over HTTP; others over HTTPS unless logged in with `insecure`). Layers
/// already in the store are not fetched again. With `Accept: text/event-stream` the
/// answer is a stream of [`PullEvent`]s ending in `done` or `error`; the pull goes on
/// to completion if the client leaves.
#[utoipa::path(post, path = "/v1/images/pull", tag = "Images", request_body = PullImageRequest,
    responses((status = 200, body = ImageSummary, description = "JSON, or text/event-stream of PullEvent"),
        (status = 403, body = ErrorResponse, description = "registry_unauthorized"),
        (status = 404, body = ErrorResponse, description = "image_not_found"),
        (status = 422, body = ErrorResponse, description = "no_matching_platform"),
        (status = 502, body = ErrorResponse, description = "registry_unreachable or digest_mismatch")))]
pub async fn pull(
    State(s): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<PullImageRequest>,
) -> ApiResult<Response> {
    let wants_stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"));
    if !wants_stream {
        return Ok(Json(s.service.pull_image(&req.reference, None).await?).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<PullEvent>();
    let progress_tx = tx.clone();
    let service = s.service.clone();
    tokio::spawn(async move {
        let progress = Box::new(move |p: PullProgress| {
            if let Some(ev) = pull_event(p) {
                let _ = progress_tx.send(ev);
            }
        });
        let last = match service.pull_image(&req.reference, Some(progress)).await {
            Ok(image) => PullEvent::Done { image },
            Err(err) => {
                let code = err.code();
                if code == ErrorCode::Internal {
                    tracing::error!(error = ?err, "pull failed");
                }
                PullEvent::Error {
                    error: err.public_message(),
                    code: code.as_str().to_string(),
                }
            }
        };
        let _ = tx.send(last);
    });
    let events = tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
        .map(|ev| Event::default().json_data(ev));
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Uploads a local image to a registry: to the one its reference names, or to
/// `destination`. Layers are packed again from the store; blobs the registry already
/// has are not sent. Credentials are those stored with a registry login.
#[utoipa::path(post, path = "/v1/images/push", tag = "Images", request_body = PushImageRequest,
    responses((status = 200, body = PushImageResponse),
        (status = 400, body = ErrorResponse, description = "bad_request: the destination names no registry"),
        (status = 403, body = ErrorResponse, description = "registry_unauthorized"),
        (status = 404, body = ErrorResponse, description = "image_not_found: no such local image"),
        (status = 502, body = ErrorResponse, description = "registry_unreachable")))]
pub async fn push(
    State(s): State<AppState>,
    Body(req): Body<PushImageRequest>,
) -> ApiResult<Json<PushImageResponse>> {
    Ok(Json(s.service.push_image(req).await?))
}

/// The wire form of a progress report; `None` for the store's own `Done`, which the
/// stream reports as `done` with the summary once the image is recorded.
fn pull_event(p: PullProgress) -> Option<PullEvent> {
    Some(match p {
        PullProgress::Resolved {
            reference,
            layers,
            total_bytes,
        } => PullEvent::Resolved {
            reference,
            layers,
            total_bytes,
        },
        PullProgress::Layer {
            digest,
            done_bytes,
            total_bytes,
        } => PullEvent::Layer {
            digest,
            done_bytes,
            total_bytes,
        },
        PullProgress::LayerDone { digest, cached } => PullEvent::LayerDone { digest, cached },
        PullProgress::Done { .. } => return None,
    })
}

/// `reference` is URL-encoded: `127.0.0.1%3A5000%2Fteam%2Fapp%3Av1`.
#[utoipa::path(get, path = "/v1/images/{reference}", tag = "Images",
    params(("reference" = String, Path, description = "the image reference, URL-encoded")),
    responses((status = 200, body = ImageDetails), (status = 404, body = ErrorResponse)))]
pub async fn inspect(
    State(s): State<AppState>,
    Path(reference): Path<String>,
) -> ApiResult<Json<ImageDetails>> {
    Ok(Json(s.service.inspect_image(&reference).await?))
}

/// Forgets the image; its layers stay until a prune. Refused with `image_in_use` (409)
/// while a machine that is not destroyed was created from it.
#[utoipa::path(delete, path = "/v1/images/{reference}", tag = "Images",
    params(("reference" = String, Path, description = "the image reference, URL-encoded")),
    responses((status = 200), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse, description = "image_in_use")))]
pub async fn remove(
    State(s): State<AppState>,
    Path(reference): Path<String>,
) -> ApiResult<StatusCode> {
    s.service.remove_image(&reference).await?;
    Ok(StatusCode::OK)
}

/// Removes layers that no image and no machine uses.
#[utoipa::path(post, path = "/v1/images/prune", tag = "Images",
    responses((status = 200, body = PruneImagesResponse)))]
pub async fn prune(State(s): State<AppState>) -> ApiResult<Json<PruneImagesResponse>> {
    Ok(Json(s.service.prune_images().await?))
}

/// Stores credentials for a registry (`host[:port]`), used by every later pull from it.
/// The password is kept in the data dir (mode 0600) and never logged or returned.
#[utoipa::path(post, path = "/v1/registries/{host}/login", tag = "Images",
    params(("host" = String, Path, description = "registry host[:port]")),
    request_body = RegistryLoginRequest,
    responses((status = 200, body = RegistryLoginResponse), (status = 400, body = ErrorResponse)))]
pub async fn login(
    State(s): State<AppState>,
    Path(host): Path<String>,
    Body(req): Body<RegistryLoginRequest>,
) -> ApiResult<Json<RegistryLoginResponse>> {
    Ok(Json(s.service.login_registry(&host, req).await?))
}
