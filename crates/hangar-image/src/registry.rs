//! Pulls from OCI distribution registries (through `oci-client`), and the registry
//! settings file `registries.json` holding credentials (mode 0600).
//!
//! A pull fetches the manifest (following an index to its linux/amd64 entry), the
//! config, then every layer not already in the store: each blob is downloaded to
//! `tmp/`, checked against its digest, and only then unpacked. Transient failures are
//! retried with backoff before the registry is reported unreachable. Credentials are
//! never logged: [`Secret`] has a redacting `Debug`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use hangar_core::image::{Image, ImageError, ImageSource, PullProgress};
use oci_client::Client;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::blob::sha256_digest;
use crate::manifest::{ACCEPTED_MANIFESTS, AnyManifest, ConfigFile, select_platform};
use crate::reference::Reference;
use crate::store::{ImageRecord, LocalImageStore, now, read_json};

/// A credential. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How to talk to one registry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistrySettings {
    /// With `password`: HTTP basic credentials (also used to obtain bearer tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A bearer token used as is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Speak plain HTTP to this registry.
    #[serde(default)]
    pub insecure: bool,
}

/// The contents of `registries.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegistriesFile {
    /// By `host[:port]`.
    #[serde(default)]
    pub registries: BTreeMap<String, RegistrySettings>,
}

const REGISTRIES_FILE: &str = "registries.json";

/// Pause between blob progress reports.
const PROGRESS_EVERY: u64 = 1 << 20;

impl LocalImageStore {
    /// Stores settings (credentials) for `registry` in `registries.json`, mode 0600.
    pub fn set_registry(
        &self,
        registry: &str,
        settings: RegistrySettings,
    ) -> Result<(), ImageError> {
        let mut file = self.registries()?;
        file.registries.insert(registry.to_string(), settings);
        let tmp = self.tmp_path("registries");
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| ImageError::Other(format!("encode registries: {e}")))?;
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| ImageError::io("write registries", e))?;
            f.write_all(&bytes)
                .map_err(|e| ImageError::io("write registries", e))?;
        }
        std::fs::rename(&tmp, self.dir().join(REGISTRIES_FILE))
            .map_err(|e| ImageError::io("write registries", e))
    }

    /// The registry settings file, empty when there is none.
    pub fn registries(&self) -> Result<RegistriesFile, ImageError> {
        let path = self.dir().join(REGISTRIES_FILE);
        match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(RegistriesFile::default());
            }
            Err(e) => return Err(ImageError::io("read registries", e)),
            Ok(m) if m.permissions().mode() & 0o077 != 0 => {
                tracing::warn!(path = %path.display(), "registry credentials are readable by others; chmod 600");
            }
            Ok(_) => {}
        }
        read_json(&path)
    }

    /// Pulls `reference` from its registry, replacing any local image of that name.
    pub async fn pull(
        &self,
        reference: &str,
        progress: Option<hangar_core::image::ProgressFn>,
    ) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?;
        if !r.is_remote() {
            return Err(ImageError::NotFound {
                reference: r.to_string(),
            });
        }
        let lock = self.lock(&format!("image:{r}"));
        let _guard = lock.lock().await;
        self.pull_locked(&r, progress.map(Arc::from)).await
    }

    /// A client for `registry` with the stored credentials; plain HTTP for registries
    /// marked insecure and for loopback.
    pub(crate) fn client_for(&self, registry: &str) -> Result<(Client, RegistryAuth), ImageError> {
        let settings = self
            .registries()?
            .registries
            .get(registry)
            .cloned()
            .unwrap_or_default();
        let insecure = settings.insecure
            || self
                .inner
                .options
                .insecure_registries
                .iter()
                .any(|r| r == registry)
            || is_loopback(registry);
        let auth = match (&settings.token, &settings.username, &settings.password) {
            (Some(t), _, _) => RegistryAuth::Bearer(t.0.clone()),
            (None, Some(u), Some(p)) => RegistryAuth::Basic(u.clone(), p.0.clone()),
            _ => RegistryAuth::Anonymous,
        };
        let client = Client::new(ClientConfig {
            protocol: if insecure {
                ClientProtocol::HttpsExcept(vec![registry.to_string()])
            } else {
                ClientProtocol::Https
            },
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        });
        Ok((client, auth))
    }

    pub(crate) async fn pull_locked(
        &self,
        r: &Reference,
        progress: Option<Arc<dyn Fn(PullProgress) + Send + Sync>>,
    ) -> Result<Image, ImageError> {
        let _gc = self.inner.gc.read().await;
        let report = |p: PullProgress| {
            if let Some(f) = &progress {
                f(p)
            }
        };
        let (client, auth) = self.client_for(&r.registry)?;
        let puller = Puller {
            store: self,
            client,
            auth,
            r,
        };

        // The manifest the reference names, then the image manifest it leads to.
        let top_ref = match &r.digest {
            Some(d) => puller.oci_ref(d),
            None => oci_client::Reference::with_tag(
                r.registry.clone(),
                r.repository.clone(),
                r.tag.clone(),
            ),
        };
        let top_bytes = puller.manifest(&top_ref, r.digest.as_deref()).await?;
        let top_digest = sha256_digest(&top_bytes);
        let manifest = match AnyManifest::parse(&top_bytes)? {
            AnyManifest::Image(m) => m,
            AnyManifest::Index(entries) => {
                let chosen =
                    select_platform(&entries).ok_or_else(|| ImageError::NoMatchingPlatform {
                        reference: r.to_string(),
                    })?;
                let bytes = puller
                    .manifest(&puller.oci_ref(&chosen.digest), Some(&chosen.digest))
                    .await?;
                match AnyManifest::parse(&bytes)? {
                    AnyManifest::Image(m) => m,
                    AnyManifest::Index(_) => {
                        return Err(ImageError::BadArchive("index nested in an index".into()));
                    }
                }
            }
        };
        let config_bytes = puller.small_blob(&manifest.config.digest).await?;
        let config = ConfigFile::parse(&config_bytes)?;
        if !config.is_linux_amd64() {
            return Err(ImageError::NoMatchingPlatform {
                reference: r.to_string(),
            });
        }
        let diff_ids = config.diff_ids().to_vec();
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadArchive(format!(
                "image config lists {} layers, manifest {}",
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        report(PullProgress::Resolved {
            reference: r.to_string(),
            layers: manifest.layers.len(),
            total_bytes: manifest.layers.iter().map(|l| l.size).sum(),
        });

        let jobs = manifest
            .layers
            .iter()
            .cloned()
            .zip(diff_ids.iter().cloned());
        futures::stream::iter(jobs)
            .map(|(layer, diff_id)| {
                let puller = &puller;
                let report = &report;
                async move {
                    let cached = puller
                        .layer(&layer.digest, layer.size, &diff_id, report)
                        .await?;
                    report(PullProgress::LayerDone {
                        digest: layer.digest.clone(),
                        cached,
                    });
                    Ok::<_, ImageError>(())
                }
            })
            .buffer_unordered(self.inner.options.pull_concurrency.max(1))
            .try_collect::<Vec<()>>()
            .await?;

        let image = self.write_image(&ImageRecord {
            reference: r.to_string(),
            source: ImageSource {
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                tag: r.tag.clone(),
                digest: top_digest.clone(),
            },
            config_digest: manifest.config.digest.clone(),
            layers: diff_ids,
            config: config.image_config(),
            created_at: now(),
        })?;
        report(PullProgress::Done { digest: top_digest });
        Ok(image)
    }
}

/// Registries on loopback are spoken to over plain HTTP, as Docker does.
fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// One conversation with a registry about one repository: retries and error mapping
/// shared by pulls and pushes.
pub(crate) struct Puller<'a> {
    pub(crate) store: &'a LocalImageStore,
    pub(crate) client: Client,
    pub(crate) auth: RegistryAuth,
    pub(crate) r: &'a Reference,
}

impl Puller<'_> {
    pub(crate) fn oci_ref(&self, digest: &str) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.r.registry.clone(),
            self.r.repository.clone(),
            digest.to_string(),
        )
    }

    fn descriptor(digest: &str, size: u64) -> OciDescriptor {
        OciDescriptor {
            digest: digest.to_string(),
            size: size as i64,
            ..Default::default()
        }
    }

    /// Runs `op` until it succeeds, fails for good, or has failed transiently too often.
    pub(crate) async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, ImageError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ImageError>>,
    {
        let options = &self.store.inner.options;
        let mut delay = options.retry_delay;
        let mut attempt = 1;
        loop {
            match op().await {
                Err(ImageError::Unreachable { registry, reason })
                    if attempt < options.attempts.max(1) =>
                {
                    tracing::info!(%registry, %reason, attempt, "{what} failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn manifest(
        &self,
        reference: &oci_client::Reference,
        digest: Option<&str>,
    ) -> Result<Vec<u8>, ImageError> {
        let bytes = self
            .retry("manifest fetch", || async {
                self.client
                    .pull_manifest_raw(reference, &self.auth, ACCEPTED_MANIFESTS)
                    .await
                    .map(|(b, _)| b.to_vec())
                    .map_err(|e| self.error(e))
            })
            .await?;
        if let Some(expected) = digest {
            let actual = sha256_digest(&bytes);
            if actual != expected {
                return Err(ImageError::DigestMismatch {
                    digest: expected.to_string(),
                    actual,
                });
            }
        }
        Ok(bytes)
    }

    async fn small_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let bytes = self
            .retry("config fetch", || async {
                let mut out = Vec::new();
                self.client
                    .pull_blob(
                        &self.oci_ref(digest),
                        &Self::descriptor(digest, 0),
                        &mut out,
                    )
                    .await
                    .map_err(|e| self.error(e))?;
                Ok(out)
            })
            .await?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Makes sure one layer is in the store; returns whether it already was.
    async fn layer(
        &self,
        digest: &str,
        size: u64,
        diff_id: &str,
        report: &(dyn Fn(PullProgress) + Sync),
    ) -> Result<bool, ImageError> {
        let store = self.store;
        if store.has_layer(diff_id) {
            return Ok(true);
        }
        let lock = store.lock(diff_id);
        let _guard = lock.lock().await;
        if store.has_layer(diff_id) {
            return Ok(true);
        }
        let blob = store.tmp_path("blob");
        let result = async {
            self.retry("layer download", || {
                self.download(digest, size, &blob, report)
            })
            .await?;
            let (blob_path, digest_owned, diff_owned) =
                (blob.clone(), digest.to_string(), diff_id.to_string());
            let store2 = store.clone();
            tokio::task::spawn_blocking(move || {
                let f =
                    std::fs::File::open(&blob_path).map_err(|e| ImageError::io("open blob", e))?;
                store2.unpack_into_place(Box::new(f), Some(&digest_owned), Some(&diff_owned))
            })
            .await
            .map_err(|e| ImageError::Other(format!("unpack task failed: {e}")))??;
            if store.inner.options.keep_blobs {
                tokio::fs::rename(&blob, store.blob_path(digest)?)
                    .await
                    .map_err(|e| ImageError::io("keep blob", e))?;
            }
            Ok(false)
        }
        .await;
        let _ = tokio::fs::remove_file(&blob).await;
        result
    }

    /// Downloads a blob to `path`, checking its digest on the way.
    async fn download(
        &self,
        digest: &str,
        size: u64,
        path: &std::path::Path,
        report: &(dyn Fn(PullProgress) + Sync),
    ) -> Result<(), ImageError> {
        let mut stream = self
            .client
            .pull_blob_stream(&self.oci_ref(digest), &Self::descriptor(digest, size))
            .await
            .map_err(|e| self.error(e))?;
        let total = stream.content_length.unwrap_or(size);
        let mut file = tokio::fs::File::create(path)
            .await
            .map_err(|e| ImageError::io("create blob file", e))?;
        let mut hasher = Sha256::new();
        let (mut done, mut reported) = (0u64, 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.stream_error(e, digest))?;
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| ImageError::io("write blob file", e))?;
            done += chunk.len() as u64;
            if done - reported >= PROGRESS_EVERY {
                reported = done;
                report(PullProgress::Layer {
                    digest: digest.to_string(),
                    done_bytes: done,
                    total_bytes: total,
                });
            }
        }
        file.flush()
            .await
            .map_err(|e| ImageError::io("write blob file", e))?;
        report(PullProgress::Layer {
            digest: digest.to_string(),
            done_bytes: done,
            total_bytes: total,
        });
        let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(())
    }

    fn stream_error(&self, e: std::io::Error, digest: &str) -> ImageError {
        if let Some(oci_client::errors::DigestError::VerificationError { actual, .. }) =
            e.get_ref().and_then(|inner| inner.downcast_ref())
        {
            return ImageError::DigestMismatch {
                digest: digest.to_string(),
                actual: actual.clone(),
            };
        }
        ImageError::Unreachable {
            registry: self.r.registry.clone(),
            reason: format!("download interrupted: {e}"),
        }
    }

    /// Maps a client error to what the caller can act on.
    pub(crate) fn error(&self, e: OciDistributionError) -> ImageError {
        let registry = self.r.registry.clone();
        let not_found = || ImageError::NotFound {
            reference: self.r.to_string(),
        };
        match e {
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
                if codes.iter().any(|c| {
                    matches!(
                        c,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::BlobUnknown
                            | OciErrorCode::NotFound
                    )
                }) {
                    not_found()
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
                {
                    ImageError::Unauthorized { registry }
                } else if codes
                    .iter()
                    .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
                {
                    ImageError::Unreachable {
                        registry,
                        reason: "too many requests".into(),
                    }
                } else {
                    ImageError::Other(format!(
                        "registry {registry} refused the request: {envelope}"
                    ))
                }
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => {
                ImageError::Unauthorized { registry }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                401 | 403 => ImageError::Unauthorized { registry },
                404 => not_found(),
                _ => ImageError::Unreachable {
                    registry,
                    reason: format!(
                        "HTTP {code}: {}",
                        message.chars().take(200).collect::<String>()
                    ),
                },
            },
            OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
            OciDistributionError::DigestError(
                oci_client::errors::DigestError::VerificationError { expected, actual },
            ) => ImageError::DigestMismatch {
                digest: expected,
                actual,
            },
            OciDistributionError::RequestError(e)
                if e.status()
                    .is_some_and(|s| s.as_u16() == 401 || s.as_u16() == 403) =>
            {
                ImageError::Unauthorized { registry }
            }
            OciDistributionError::RequestError(e) => {
                let mut reason = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    reason.push_str(": ");
                    reason.push_str(&s.to_string());
                    source = s.source();
                }
                ImageError::Unreachable { registry, reason }
            }
            OciDistributionError::IoError(e) => ImageError::Unreachable {
                registry,
                reason: e.to_string(),
            },
            other => ImageError::Other(format!("registry {registry}: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_detection() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com"));
        assert!(!is_loopback("10.0.0.1:5000"));
    }

    #[test]
    fn secrets_are_redacted() {
        let s = RegistrySettings {
            username: Some("robot".into()),
            password: Some(Secret("hunter2".into())),
            token: Some(Secret("tok".into())),
            insecure: false,
        };
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok\""),
            "{shown}"
        );
        assert!(shown.contains("robot"));
    }
}
