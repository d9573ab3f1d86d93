//! The image store boundary: turning an image reference into unpacked layers.
//!
//! The store is content addressed: a layer used by many images is on disk once. The
//! service layer asks it for an image by reference and gets back the layer directories
//! (lowest first) and the image's config, which become a machine's defaults.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::pin::Pin;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// The parts of an OCI image config hangar applies to machines.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` pairs.
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    /// `8080/tcp`, ...
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

/// Where an image came from, as `image_ref` reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageSource {
    pub registry: String,
    pub repository: String,
    pub tag: String,
    /// `sha256:...` of the manifest (or of the imported content).
    pub digest: String,
}

/// An image ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// The reference it was asked for by, normalised.
    pub reference: String,
    pub source: ImageSource,
    /// Unpacked layer directories, lowest first.
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
    /// Bytes on disk of all layers.
    pub size: u64,
    /// RFC 3339.
    pub created_at: String,
}

/// Progress of a pull, reported per layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullProgress {
    Resolved {
        reference: String,
        layers: usize,
        total_bytes: u64,
    },
    Layer {
        digest: String,
        done_bytes: u64,
        total_bytes: u64,
    },
    LayerDone {
        digest: String,
        cached: bool,
    },
    Done {
        digest: String,
    },
}

pub type ProgressFn = Box<dyn Fn(PullProgress) + Send + Sync>;

/// What a committed image is built on: the machine's image layers (lower directories,
/// lowest first, as [`Image::layers`] gives them), its config and where it came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitBase {
    pub layers: Vec<PathBuf>,
    pub config: ImageConfig,
    pub source: ImageSource,
}

/// One unpacked layer of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// `sha256:` of the uncompressed layer.
    pub diff_id: String,
    /// Unpacked bytes.
    pub size: u64,
    pub path: PathBuf,
}

/// What [`ImageStore::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneStats {
    pub bytes_freed: u64,
    pub layers_removed: u64,
}

/// How to log in to a registry. The password's `Debug` is redacted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
    /// Speak plain HTTP to it.
    pub insecure: bool,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("insecure", &self.insecure)
            .finish()
    }
}

/// What [`ImageStore::push`] uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushResult {
    /// The reference pushed to, normalised.
    pub reference: String,
    /// `sha256:...` of the manifest the registry now holds.
    pub digest: String,
    pub layers: usize,
    /// Layers the registry already had, not uploaded again.
    pub layers_present: usize,
    /// Compressed bytes uploaded.
    pub bytes_uploaded: u64,
}

/// Bytes of a tar stream being imported.
pub type TarStream = Pin<Box<dyn tokio::io::AsyncRead + Send>>;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("no image {reference:?}")]
    NotFound { reference: String },
    #[error("{0:?} is not a valid image reference")]
    InvalidReference(String),
    #[error("registry {registry} refused the credentials")]
    Unauthorized { registry: String },
    #[error("registry {registry} cannot be reached: {reason}")]
    Unreachable { registry: String, reason: String },
    #[error("digest mismatch for {digest}: got {actual}")]
    DigestMismatch { digest: String, actual: String },
    #[error("image {reference:?} has no linux/amd64 variant")]
    NoMatchingPlatform { reference: String },
    #[error("archive entry {entry:?} rejected: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    #[error("image {reference:?} is used by {users}")]
    InUse { reference: String, users: String },
    #[error("bad archive: {0}")]
    BadArchive(String),
    #[error("this image store cannot {0}")]
    Unsupported(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl ImageError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ImageError::Io {
            context: context.into(),
            source,
        }
    }
}

#[async_trait]
pub trait ImageStore: Send + Sync + 'static {
    /// The image known locally under `reference` (a tag or a digest), pulling it from
    /// its registry first when it is not present and pulling is possible.
    async fn resolve(
        &self,
        reference: &str,
        progress: Option<ProgressFn>,
    ) -> Result<Image, ImageError>;

    /// Imports a tar stream under `reference`: a root filesystem tar, a `docker save`
    /// archive or an OCI image layout archive, detected from its contents.
    async fn import(&self, reference: &str, tar: TarStream) -> Result<Image, ImageError>;

    /// Images known locally.
    async fn list(&self) -> Result<Vec<Image>, ImageError>;

    /// Forgets the reference; its layers stay until [`ImageStore::prune`].
    async fn remove(&self, reference: &str) -> Result<(), ImageError>;

    /// Removes layers that no image references and that are not in `keep`
    /// (layers machines or checkpoints still use).
    async fn prune(&self, keep: &[PathBuf]) -> Result<PruneStats, ImageError>;

    /// Pulls `reference` from its registry even when a local image has that name, so a
    /// moved tag is followed. Layers already in the store are not downloaded again.
    async fn pull(
        &self,
        reference: &str,
        progress: Option<ProgressFn>,
    ) -> Result<Image, ImageError> {
        self.resolve(reference, progress).await
    }

    /// The local image `reference` names, with its layers; never pulls.
    async fn inspect(&self, reference: &str) -> Result<(Image, Vec<LayerInfo>), ImageError> {
        let image = self
            .list()
            .await?
            .into_iter()
            .find(|i| i.reference == reference)
            .ok_or_else(|| ImageError::NotFound {
                reference: reference.to_string(),
            })?;
        let layers = image
            .layers
            .iter()
            .map(|p| LayerInfo {
                diff_id: String::new(),
                size: 0,
                path: p.clone(),
            })
            .collect();
        Ok((image, layers))
    }

    /// Uploads the local image `reference` to `destination` (a registry reference;
    /// `reference` itself when `None`), with credentials as for pulls.
    async fn push(
        &self,
        reference: &str,
        destination: Option<&str>,
    ) -> Result<PushResult, ImageError> {
        let _ = (reference, destination);
        Err(ImageError::Unsupported("push images".into()))
    }

    /// Records `reference` as a new image: `base`'s layers with `upper` (an overlay
    /// upper directory, read but never written) packed on top as one more
    /// content-addressed layer, and `base`'s config. `upper` must not change while
    /// this runs (give it a read-only snapshot).
    async fn commit_layer(
        &self,
        upper: &std::path::Path,
        base: &CommitBase,
        reference: &str,
    ) -> Result<Image, ImageError> {
        let _ = (upper, base, reference);
        Err(ImageError::Unsupported("commit machines to images".into()))
    }

    /// Stores credentials (and the plain-HTTP flag) for `registry` (`host[:port]`).
    async fn set_registry_credentials(
        &self,
        registry: &str,
        credentials: RegistryCredentials,
    ) -> Result<(), ImageError> {
        let _ = credentials;
        Err(ImageError::Other(format!(
            "this image store cannot keep credentials for {registry}"
        )))
    }
}
