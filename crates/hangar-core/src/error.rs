//! The service layer's error: every failure an operation can report, each mapped to a
//! stable [`ErrorCode`] and a sentence a robot can act on.

use hangar_types::ErrorCode;

use crate::driver::{DriverError, PathErrorKind};
use crate::image::ImageError;
use crate::state::InvalidTransition;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A caller's mistake, with the code and the sentence to show them.
    #[error("{message}")]
    Request { code: ErrorCode, message: String },
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
    #[error("runtime")]
    Driver(#[from] DriverError),
    #[error("image store")]
    Image(#[from] ImageError),
    #[error("store: {0}")]
    Store(String),
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn request(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Request {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_config(message: impl Into<String>) -> Self {
        Error::request(ErrorCode::InvalidConfig, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::request(ErrorCode::BadRequest, message)
    }

    /// The stable code this error is reported with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Request { code, .. } => *code,
            Error::Transition(_) => ErrorCode::InvalidState,
            Error::Driver(DriverError::NotRunning(_)) => ErrorCode::InvalidState,
            Error::Driver(DriverError::InvalidCommand(_)) => ErrorCode::BadRequest,
            Error::Driver(DriverError::Unsupported(_)) => ErrorCode::Unsupported,
            Error::Driver(DriverError::Busy(_)) => ErrorCode::Unavailable,
            Error::Driver(DriverError::Path { kind, .. }) => match kind {
                PathErrorKind::NotFound => ErrorCode::FileNotFound,
                PathErrorKind::NotADirectory => ErrorCode::NotADirectory,
                PathErrorKind::IsADirectory | PathErrorKind::NotEmpty => ErrorCode::IsADirectory,
                PathErrorKind::NotRegular | PathErrorKind::Invalid => ErrorCode::InvalidPath,
                PathErrorKind::TooLarge => ErrorCode::PayloadTooLarge,
            },
            Error::Driver(err) if is_storage_full(err) => ErrorCode::StorageFull,
            Error::Driver(_) => ErrorCode::Internal,
            Error::Image(err) => match err {
                ImageError::NotFound { .. } => ErrorCode::ImageNotFound,
                ImageError::InvalidReference(_)
                | ImageError::UnsafeEntry { .. }
                | ImageError::BadArchive(_) => ErrorCode::BadRequest,
                ImageError::InUse { .. } => ErrorCode::ImageInUse,
                ImageError::Unauthorized { .. } => ErrorCode::RegistryUnauthorized,
                ImageError::NoMatchingPlatform { .. } => ErrorCode::NoMatchingPlatform,
                ImageError::Unreachable { .. } => ErrorCode::RegistryUnreachable,
                ImageError::DigestMismatch { .. } => ErrorCode::DigestMismatch,
                ImageError::Unsupported(_) => ErrorCode::Unsupported,
                ImageError::Io { .. } | ImageError::Other(_) => ErrorCode::Internal,
            },
            Error::Store(_) | Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The sentence shown to the caller. Internal faults get a generic sentence; their
    /// cause goes to the log, not to the client.
    pub fn public_message(&self) -> String {
        match self {
            Error::Request { message, .. } => message.clone(),
            Error::Transition(t) => format!(
                "{t}; wait for the machine to settle (GET .../wait) or change its state first"
            ),
            Error::Driver(DriverError::NotRunning(id)) => {
                format!("machine {id} is not running; start it first (POST .../start)")
            }
            Error::Driver(DriverError::InvalidCommand(why)) => {
                format!("the command cannot be run: {why}")
            }
            Error::Driver(DriverError::Unsupported(why)) => {
                format!("this host cannot do that: {why}")
            }
            Error::Driver(DriverError::Busy(why)) => format!("{why}; try again shortly"),
            Error::Driver(DriverError::Path { path, why, .. }) => {
                format!("{path:?} inside the machine {why}")
            }
            Error::Driver(err) if is_storage_full(err) => "the host's storage for machines is full, so nothing was changed; \
                 free space (delete checkpoints, volume snapshots or machines) or give hangar more (--layers-size) and retry"
                .to_string(),
            Error::Image(err) => match image_message(err) {
                Some(message) => message,
                None => INTERNAL.to_string(),
            },
            _ => INTERNAL.to_string(),
        }
    }
}

/// ENOSPC (or EDQUOT) from the layers file system.
fn is_storage_full(err: &DriverError) -> bool {
    matches!(err, DriverError::Io { source, .. }
        if matches!(source.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded))
}

const INTERNAL: &str = "internal error; the cause was logged on the server, try again or report it";

/// What an image failure means to the caller and what to do about it; `None` for our
/// own faults, whose cause is logged instead.
fn image_message(err: &ImageError) -> Option<String> {
    Some(match err {
        ImageError::NotFound { reference } => format!(
            "image {reference:?} was not found locally or in its registry; check the repository and tag, \
             name a registry to pull from (registry.example:5000/repo:tag) or import it (hangar image import)"
        ),
        ImageError::InvalidReference(reference) => format!(
            "{reference:?} is not a valid image reference; use [registry[:port]/]repository[:tag][@sha256:...] in lower case"
        ),
        ImageError::Unauthorized { registry } => format!(
            "registry {registry} refused the credentials (or asked for some); log in with `hangar registry login {registry}` \
             (POST /v1/registries/{registry}/login) and retry"
        ),
        ImageError::Unreachable { registry, reason } => format!(
            "registry {registry} cannot be reached ({reason}); check that it is running and the host and port are right, then retry"
        ),
        ImageError::DigestMismatch { digest, actual } => format!(
            "content for {digest} arrived as {actual} and was discarded; the registry or a proxy altered it, retry or repair the registry"
        ),
        ImageError::NoMatchingPlatform { reference } => format!(
            "image {reference:?} has no linux/amd64 variant; pick a tag built for linux/amd64"
        ),
        ImageError::InUse { reference, users } => {
            format!("image {reference:?} is used by {users}; destroy those machines first")
        }
        ImageError::UnsafeEntry { .. } | ImageError::BadArchive(_) => {
            format!("{err}; the image cannot be unpacked safely, rebuild it")
        }
        ImageError::Unsupported(what) => format!("this server's image store cannot {what}"),
        ImageError::Io { .. } | ImageError::Other(_) => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_errors_keep_their_code_and_sentence() {
        for (kind, code, status) in [
            (PathErrorKind::NotFound, ErrorCode::FileNotFound, 404),
            (PathErrorKind::NotADirectory, ErrorCode::NotADirectory, 400),
            (PathErrorKind::IsADirectory, ErrorCode::IsADirectory, 409),
            (PathErrorKind::NotEmpty, ErrorCode::IsADirectory, 409),
            (PathErrorKind::Invalid, ErrorCode::InvalidPath, 400),
            (PathErrorKind::NotRegular, ErrorCode::InvalidPath, 400),
            (PathErrorKind::TooLarge, ErrorCode::PayloadTooLarge, 413),
        ] {
            let err = Error::from(DriverError::Path {
                kind,
                path: "/etc/x".into(),
                why: "is odd".into(),
            });
            assert_eq!(err.code(), code);
            assert_eq!(code.http_status(), status);
            assert_eq!(err.public_message(), "\"/etc/x\" inside the machine is odd");
        }
    }
}
