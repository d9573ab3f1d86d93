//! Request extractors that report bad input in hangar's error format.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use hangar_core::service::Caller;
use hangar_types::ErrorCode;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A request body that could not be read: `413 payload_too_large` saying `too_large`
/// when it is over the route's limit, else `400 bad_request`.
pub(crate) fn body_error(
    rejection: axum::extract::rejection::BytesRejection,
    too_large: impl FnOnce() -> String,
) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(ErrorCode::PayloadTooLarge, too_large())
    } else {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("the request body could not be read: {rejection}"),
        )
    }
}

/// A JSON body. The content type is not insisted on (robots and curl forget it); the
/// body must parse, and an empty body is read as `{}` only where `T` allows it.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            body_error(rejection, || {
                format!(
                    "the request body is larger than {} KiB; send less (large files belong in the image or a volume)",
                    crate::MAX_JSON_BODY / 1024
                )
            })
        })?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes).map(Body).map_err(|err| {
            ApiError::new(
                ErrorCode::BadRequest,
                format!("the request body is not valid JSON for this endpoint: {err}"),
            )
        })
    }
}

/// Query parameters, with bad ones reported as 400 in hangar's format.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded_from_str(query).map(Query)
    }
}

fn serde_urlencoded_from_str<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    axum::extract::Query::<T>::try_from_uri(
        &format!("/?{query}")
            .parse()
            .map_err(|_| ApiError::new(ErrorCode::BadRequest, "the query string is malformed"))?,
    )
    .map(|q| q.0)
    .map_err(|err| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!("bad query parameter: {}", err.body_text()),
        )
    })
}

/// The lease nonce a caller presents.
pub struct LeaseNonce(pub Caller);

impl<S: Send + Sync> FromRequestParts<S> for LeaseNonce {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let nonce = parts
            .headers
            .get("fly-machine-lease-nonce")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        Ok(LeaseNonce(Caller { lease_nonce: nonce }))
    }
}
