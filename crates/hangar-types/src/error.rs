//! The error body every endpoint returns, and the stable codes robots match on.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `{"error": "<sentence saying what to do>", "code": "<stable_snake_case>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    /// A sentence naming what was wrong and what to do instead.
    pub error: String,
    /// A stable, snake_case code; see [`ErrorCode`].
    pub code: String,
}

/// Stable error codes. Their string forms are part of the API contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request body or a parameter is malformed (400).
    BadRequest,
    /// No or an invalid bearer token (401).
    Unauthorized,
    /// The token does not allow this (403).
    Forbidden,
    /// Generic not found (404).
    NotFound,
    AppNotFound,
    AppExists,
    AppNotEmpty,
    MachineNotFound,
    MachineExists,
    /// No such checkpoint of this machine (404).
    CheckpointNotFound,
    /// No such volume in this app (404).
    VolumeNotFound,
    /// No such snapshot of the app's volumes (404).
    VolumeSnapshotNotFound,
    /// The volume is mounted by another machine (409).
    VolumeAttached,
    /// No such file or directory inside the machine (404).
    FileNotFound,
    /// No such background job of this machine (404).
    JobNotFound,
    /// A path component, or the path itself, is not a directory (400).
    NotADirectory,
    /// The path is a directory where a file was expected, or is not empty (409).
    IsADirectory,
    /// The path is relative, holds NUL, or reaches where the files API does not go (400).
    InvalidPath,
    /// No such image locally or in its registry (404).
    ImageNotFound,
    /// An image is still used by a machine (409).
    ImageInUse,
    /// The registry refused our credentials (403: 401 is for hangar's own token).
    RegistryUnauthorized,
    /// The registry could not be reached or answered with a server error (502).
    RegistryUnreachable,
    /// Content from the registry did not match its digest (502).
    DigestMismatch,
    /// The image has no linux/amd64 variant (422).
    NoMatchingPlatform,
    /// The machine config is not acceptable (422).
    InvalidConfig,
    /// The machine is in a state that does not allow the operation (409).
    InvalidState,
    /// The machine's lease is held by someone else (409).
    LeaseHeld,
    /// The lease nonce given does not match the current lease (412).
    LeaseMismatch,
    LeaseNotFound,
    /// `current_version` does not match the machine's `instance_id` (412).
    VersionMismatch,
    /// The request body is larger than allowed (413).
    PayloadTooLarge,
    /// A `wait` or an exec ran out of time (408).
    Timeout,
    /// The host's storage for machines (layers, checkpoints, volumes) is full (507).
    StorageFull,
    /// Our own fault (500).
    Internal,
    /// A backend (runtime, image store) is not available (503).
    Unavailable,
    /// This host cannot do it (e.g. checkpoints without btrfs) (501).
    Unsupported,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AppNotFound => "app_not_found",
            ErrorCode::AppExists => "app_exists",
            ErrorCode::AppNotEmpty => "app_not_empty",
            ErrorCode::MachineNotFound => "machine_not_found",
            ErrorCode::MachineExists => "machine_exists",
            ErrorCode::CheckpointNotFound => "checkpoint_not_found",
            ErrorCode::VolumeNotFound => "volume_not_found",
            ErrorCode::VolumeSnapshotNotFound => "volume_snapshot_not_found",
            ErrorCode::VolumeAttached => "volume_attached",
            ErrorCode::FileNotFound => "file_not_found",
            ErrorCode::JobNotFound => "job_not_found",
            ErrorCode::NotADirectory => "not_a_directory",
            ErrorCode::IsADirectory => "is_a_directory",
            ErrorCode::InvalidPath => "invalid_path",
            ErrorCode::ImageNotFound => "image_not_found",
            ErrorCode::ImageInUse => "image_in_use",
            ErrorCode::RegistryUnauthorized => "registry_unauthorized",
            ErrorCode::RegistryUnreachable => "registry_unreachable",
            ErrorCode::DigestMismatch => "digest_mismatch",
            ErrorCode::NoMatchingPlatform => "no_matching_platform",
            ErrorCode::InvalidConfig => "invalid_config",
            ErrorCode::InvalidState => "invalid_state",
            ErrorCode::LeaseHeld => "lease_held",
            ErrorCode::LeaseMismatch => "lease_mismatch",
            ErrorCode::LeaseNotFound => "lease_not_found",
            ErrorCode::VersionMismatch => "version_mismatch",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::Timeout => "timeout",
            ErrorCode::StorageFull => "storage_full",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Unsupported => "unsupported",
        }
    }

    /// The HTTP status this code is served with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::NotADirectory | ErrorCode::InvalidPath => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden | ErrorCode::RegistryUnauthorized => 403,
            ErrorCode::NotFound
            | ErrorCode::AppNotFound
            | ErrorCode::MachineNotFound
            | ErrorCode::ImageNotFound
            | ErrorCode::LeaseNotFound
            | ErrorCode::CheckpointNotFound
            | ErrorCode::VolumeNotFound
            | ErrorCode::VolumeSnapshotNotFound
            | ErrorCode::FileNotFound
            | ErrorCode::JobNotFound => 404,
            ErrorCode::Timeout => 408,
            ErrorCode::AppExists
            | ErrorCode::AppNotEmpty
            | ErrorCode::MachineExists
            | ErrorCode::InvalidState
            | ErrorCode::ImageInUse
            | ErrorCode::LeaseHeld
            | ErrorCode::VolumeAttached
            | ErrorCode::IsADirectory => 409,
            ErrorCode::LeaseMismatch | ErrorCode::VersionMismatch => 412,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::InvalidConfig | ErrorCode::NoMatchingPlatform => 422,
            ErrorCode::Internal => 500,
            ErrorCode::Unsupported => 501,
            ErrorCode::RegistryUnreachable | ErrorCode::DigestMismatch => 502,
            ErrorCode::Unavailable => 503,
            ErrorCode::StorageFull => 507,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_strings_match_serde() {
        for code in [
            ErrorCode::ImageNotFound,
            ErrorCode::ImageInUse,
            ErrorCode::RegistryUnauthorized,
            ErrorCode::RegistryUnreachable,
            ErrorCode::DigestMismatch,
            ErrorCode::NoMatchingPlatform,
            ErrorCode::InvalidConfig,
            ErrorCode::LeaseMismatch,
            ErrorCode::PayloadTooLarge,
            ErrorCode::CheckpointNotFound,
            ErrorCode::Unsupported,
            ErrorCode::FileNotFound,
            ErrorCode::NotADirectory,
            ErrorCode::IsADirectory,
            ErrorCode::InvalidPath,
            ErrorCode::VolumeNotFound,
            ErrorCode::VolumeSnapshotNotFound,
            ErrorCode::VolumeAttached,
            ErrorCode::StorageFull,
            ErrorCode::JobNotFound,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
