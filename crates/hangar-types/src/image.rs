//! Images and registries: `/v1/images[...]` and `/v1/registries/{host}` bodies.
//!
//! [`ImageSummary`](crate::ImageSummary) (listings, import and pull answers) lives with
//! the machine shapes; everything else an image endpoint speaks is here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ImageSummary;

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PullImageRequest {
    /// `registry[:port]/repository[:tag][@sha256:...]`.
    pub reference: String,
}

/// `POST /v1/images/push`: upload a local image to a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushImageRequest {
    /// The local image, e.g. `busybox:latest` or `127.0.0.1:5000/team/app:v1`.
    pub reference: String,
    /// Where to push it, `registry[:port]/repository[:tag]`; the reference itself when
    /// absent (it must then name a registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
}

/// The answer to a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PushImageResponse {
    /// The reference pushed to, normalised.
    pub reference: String,
    /// `sha256:` of the manifest now in the registry; pull by `reference@digest`.
    pub digest: String,
    pub layers: usize,
    /// Layers the registry already had and were not sent again.
    pub layers_present: usize,
    /// Compressed bytes sent.
    pub bytes_uploaded: u64,
}

/// `GET /v1/images/{reference}`: everything hangar knows about a local image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ImageDetails {
    pub reference: String,
    /// Where it came from: registry (empty for imports), repository, tag, digest.
    pub source: ImageSource,
    /// Bytes on disk of all layers, unpacked.
    pub size: u64,
    /// Lowest first.
    pub layers: Vec<ImageLayer>,
    /// The defaults a machine made from it gets.
    pub config: ImageDefaults,
    pub created_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageSource {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    pub digest: String,
}

/// One unpacked layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageLayer {
    /// `sha256:` of the uncompressed layer (the OCI diff id).
    pub diff_id: String,
    /// Unpacked bytes.
    pub size: u64,
}

/// The parts of the image config applied to machines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/images/prune`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PruneImagesResponse {
    pub bytes_freed: u64,
    pub layers_removed: u64,
}

/// `POST /v1/registries/{host}/login`. The password is stored (mode 0600 in the data
/// dir) and never logged or echoed back.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegistryLoginRequest {
    #[serde(default)]
    pub username: String,
    #[serde(default)]
    pub password: String,
    /// Speak plain HTTP to this registry (loopback registries always are).
    #[serde(default)]
    pub insecure: bool,
}

impl std::fmt::Debug for RegistryLoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLoginRequest")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// The answer to a login: what was stored, without the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RegistryLoginResponse {
    pub registry: String,
    pub username: String,
    pub insecure: bool,
}

/// One server-sent event of `POST /v1/images/pull` with `Accept: text/event-stream`.
/// The stream ends with `done` (carrying the summary) or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PullEvent {
    /// The manifest is read: how many layers, how many compressed bytes.
    Resolved {
        reference: String,
        layers: usize,
        total_bytes: u64,
    },
    /// Bytes of one layer downloaded so far.
    Layer {
        digest: String,
        done_bytes: u64,
        total_bytes: u64,
    },
    /// A layer is unpacked (or was already in the store: `cached`).
    LayerDone {
        digest: String,
        cached: bool,
    },
    Done {
        image: ImageSummary,
    },
    /// The pull failed; `code` is the stable error code.
    Error {
        error: String,
        code: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_debug_hides_the_password() {
        let req = RegistryLoginRequest {
            username: "robot".into(),
            password: "hunter2".into(),
            insecure: false,
        };
        let shown = format!("{req:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("robot"),
            "{shown}"
        );
    }

    #[test]
    fn pull_events_are_tagged() {
        let ev = PullEvent::LayerDone {
            digest: "sha256:ab".into(),
            cached: true,
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["type"], "layer_done");
        assert_eq!(serde_json::from_value::<PullEvent>(v).unwrap(), ev);
    }
}
