//! The service layer's error: every failure an operation can report, each mapped to a
//! stable [`ErrorCode`] and a sentence a robot can act on.

use hangar_types::ErrorCode;

use crate::driver::DriverError;
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
            Error::Driver(_) => ErrorCode::Internal,
            Error::Image(err) => match err {
                ImageError::NotFound { .. } => ErrorCode::ImageNotFound,
                ImageError::InvalidReference(_)
                | ImageError::UnsafeEntry { .. }
                | ImageError::BadArchive(_) => ErrorCode::BadRequest,
                ImageError::InUse { .. } => ErrorCode::InvalidState,
                ImageError::Unauthorized { .. } => ErrorCode::Unauthorized,
                ImageError::NoMatchingPlatform { .. } => ErrorCode::InvalidConfig,
                ImageError::Unreachable { .. } => ErrorCode::Unavailable,
                ImageError::DigestMismatch { .. }
                | ImageError::Io { .. }
                | ImageError::Other(_) => ErrorCode::Internal,
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
            Error::Image(ImageError::NotFound { reference }) => format!(
                "image {reference:?} was not found; import it (hangar image import) or check the name and tag"
            ),
            Error::Image(err) if self.code() != ErrorCode::Internal => err.to_string(),
            _ => "internal error; the cause was logged on the server, try again or report it"
                .to_string(),
        }
    }
}
