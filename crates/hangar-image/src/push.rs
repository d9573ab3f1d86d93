//! Pushes a local image to an OCI distribution registry.
//!
//! Layers are stored unpacked and their original blobs are usually gone, so each layer
//! is packed again ([`crate::pack`]) into `tmp/`, deterministically, and the image
//! config is written afresh with `rootfs.diff_ids` of what is uploaded and the run
//! defaults hangar keeps. Blobs the registry already has are not sent. Credentials and
//! plain-HTTP rules are those of pulls; transient failures are retried the same way.
//!
//! Reads the store; writes only its own files under `tmp/`, removed when done.

use std::collections::BTreeMap;
use std::path::PathBuf;

use futures::{StreamExt, TryStreamExt};
use hangar_core::image::{ImageError, PushResult};
use oci_client::errors::OciDistributionError;
use serde_json::{Value, json};

use crate::blob::sha256_digest;
use crate::manifest::OCI_MANIFEST;
use crate::pack::{PackedLayer, pack_layer};
use crate::reference::Reference;
use crate::registry::Puller;
use crate::store::{ImageRecord, LocalImageStore};

const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Bytes read from a blob file per upload chunk.
const UPLOAD_CHUNK: usize = 1 << 20;

impl LocalImageStore {
    /// Uploads the local image `reference` to `destination` (`reference` itself when
    /// `None`), which must name a registry and a tag.
    pub async fn push(
        &self,
        reference: &str,
        destination: Option<&str>,
    ) -> Result<PushResult, ImageError> {
        let source = Reference::parse(reference)?;
        let record = self.find(&source)?.ok_or_else(|| ImageError::NotFound {
            reference: source.to_string(),
        })?;
        let dest = match destination.map(str::trim).filter(|d| !d.is_empty()) {
            Some(d) => Reference::parse(d)?,
            None => source.clone(),
        };
        if !dest.is_remote() || dest.digest.is_some() {
            return Err(ImageError::InvalidReference(dest.to_string()));
        }
        // Layers being packed must not be pruned from under us.
        let _gc = self.inner.gc.read().await;
        let (client, auth) = self.client_for(&dest.registry)?;
        client.store_auth_if_needed(&dest.registry, &auth).await;
        let pusher = Puller {
            store: self,
            client,
            auth,
            r: &dest,
        };

        let concurrency = self.inner.options.pull_concurrency.max(1);
        let uploaded: Vec<(PackedLayer, bool)> = futures::stream::iter(record.layers.clone())
            .map(|diff_id| {
                let pusher = &pusher;
                async move { pusher.push_layer(&diff_id).await }
            })
            .buffered(concurrency)
            .try_collect()
            .await?;

        let config = config_json(&record, &uploaded);
        let config_digest = sha256_digest(&config);
        if !pusher.has_blob(&config_digest).await? {
            pusher
                .retry("config upload", || async {
                    pusher
                        .client
                        .push_blob(
                            &pusher.oci_ref(&config_digest),
                            config.clone(),
                            &config_digest,
                        )
                        .await
                        .map_err(|e| pusher.error(e))
                })
                .await?;
        }
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": OCI_CONFIG,
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": uploaded.iter().map(|(l, _)| json!({
                "mediaType": OCI_LAYER_GZIP,
                "digest": l.digest,
                "size": l.size,
            })).collect::<Vec<_>>(),
        }))
        .map_err(|e| ImageError::Other(format!("encode manifest: {e}")))?;
        let manifest_digest = sha256_digest(&manifest);
        let tag_ref = oci_client::Reference::with_tag(
            dest.registry.clone(),
            dest.repository.clone(),
            dest.tag.clone(),
        );
        pusher
            .retry("manifest upload", || async {
                pusher
                    .client
                    .push_manifest_raw(
                        &tag_ref,
                        manifest.clone(),
                        http::HeaderValue::from_static(OCI_MANIFEST),
                    )
                    .await
                    .map_err(|e| pusher.error(e))
            })
            .await?;
        tracing::info!(
            source = %source,
            destination = %dest,
            digest = %manifest_digest,
            "pushed image"
        );
        Ok(PushResult {
            reference: dest.to_string(),
            digest: manifest_digest,
            layers: uploaded.len(),
            layers_present: uploaded.iter().filter(|(_, present)| *present).count(),
            bytes_uploaded: uploaded
                .iter()
                .filter(|(_, present)| !*present)
                .map(|(l, _)| l.size)
                .sum(),
        })
    }
}

impl Puller<'_> {
    /// Packs one stored layer and uploads it unless the registry has it; returns the
    /// packed layer and whether it was already there.
    async fn push_layer(&self, diff_id: &str) -> Result<(PackedLayer, bool), ImageError> {
        let store = self.store;
        let rootfs = store.layer_dir(diff_id)?.join("rootfs");
        let blob = store.tmp_path("push");
        let result = async {
            let (rootfs2, blob2) = (rootfs.clone(), blob.clone());
            let packed = tokio::task::spawn_blocking(move || pack_layer(&rootfs2, &blob2))
                .await
                .map_err(|e| ImageError::Other(format!("pack task failed: {e}")))??;
            if self.has_blob(&packed.digest).await? {
                return Ok((packed, true));
            }
            self.retry("layer upload", || self.upload(&blob, &packed))
                .await?;
            Ok((packed, false))
        }
        .await;
        let _ = tokio::fs::remove_file(&blob).await;
        result
    }

    async fn has_blob(&self, digest: &str) -> Result<bool, ImageError> {
        self.retry("blob check", || async {
            self.client
                .blob_exists(&self.oci_ref(digest), digest)
                .await
                .map_err(|e| self.error(e))
        })
        .await
    }

    /// Streams the blob file to the registry.
    async fn upload(&self, blob: &PathBuf, packed: &PackedLayer) -> Result<(), ImageError> {
        let file = tokio::fs::File::open(blob)
            .await
            .map_err(|e| ImageError::io("open layer blob", e))?;
        let chunks = futures::stream::try_unfold(file, |mut file| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = vec![0u8; UPLOAD_CHUNK];
            let n = file
                .read(&mut buf)
                .await
                .map_err(OciDistributionError::IoError)?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((bytes::Bytes::from(buf), file)))
        });
        self.client
            .push_blob_stream(
                &self.oci_ref(&packed.digest),
                chunks,
                &packed.digest,
                Some(packed.size),
            )
            .await
            .map_err(|e| self.error(e))?;
        Ok(())
    }
}

/// The image config for the pushed layers: hangar's run defaults, linux/amd64, and
/// the diff ids of exactly the tars uploaded. Serialised with sorted keys, so the
/// same image always gives the same config digest.
fn config_json(record: &ImageRecord, layers: &[(PackedLayer, bool)]) -> Vec<u8> {
    let c = &record.config;
    let mut run = serde_json::Map::new();
    let mut put = |key: &str, value: Value| {
        run.insert(key.to_string(), value);
    };
    if !c.entrypoint.is_empty() {
        put("Entrypoint", json!(c.entrypoint));
    }
    if !c.cmd.is_empty() {
        put("Cmd", json!(c.cmd));
    }
    if !c.env.is_empty() {
        put("Env", json!(c.env));
    }
    if !c.working_dir.is_empty() {
        put("WorkingDir", json!(c.working_dir));
    }
    if !c.user.is_empty() {
        put("User", json!(c.user));
    }
    if !c.exposed_ports.is_empty() {
        let ports: BTreeMap<&str, Value> = c
            .exposed_ports
            .iter()
            .map(|p| (p.as_str(), json!({})))
            .collect();
        put("ExposedPorts", json!(ports));
    }
    if !c.labels.is_empty() {
        put("Labels", json!(c.labels));
    }
    let config = json!({
        "created": record.created_at,
        "architecture": "amd64",
        "os": "linux",
        "config": run,
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|(l, _)| l.diff_id.clone()).collect::<Vec<_>>(),
        },
    });
    serde_json::to_vec(&config).expect("a JSON value always serialises")
}
