//! Image routes.

use axum::Json;
use axum::body::Body as RawBody;
use axum::extract::State;
use futures::TryStreamExt;
use hangar_types::ImageSummary;
use serde::Deserialize;

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::Query;

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
