//! Images: pull, push, import, list, inspect, remove and prune through the image store, and
//! registry logins. A machine's layers are never collected while the machine exists:
//! removal refuses with `image_in_use` and prune keeps every layer a machine stacks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hangar_types::{
    ImageDefaults, ImageDetails, ImageLayer, ImageSummary, PruneImagesResponse, PushImageRequest,
    PushImageResponse, RegistryLoginRequest, RegistryLoginResponse,
};
use serde_json::json;

use super::Service;
use crate::error::{Error, Result};
use crate::image::{Image, ImageError, ProgressFn, PullProgress, RegistryCredentials, TarStream};
use crate::model::MachineRecord;

/// Machines named in an `image_in_use` error before it says "and N more".
const USERS_SHOWN: usize = 5;

/// What a pull made on behalf of a machine that does not exist yet; written as the
/// machine's `pull` events once it does.
#[derive(Debug, Default)]
pub(super) struct PullRecord {
    progress: Vec<PullProgress>,
}

impl Service {
    /// Imports a tar stream (root filesystem, `docker save` or OCI archive) as `reference`.
    pub async fn import_image(&self, reference: &str, tar: TarStream) -> Result<ImageSummary> {
        if reference.trim().is_empty() {
            return Err(Error::bad_request(
                "an import needs a reference to store the image under, e.g. ?reference=busybox:latest",
            ));
        }
        let image = self.images.import(reference, tar).await?;
        Ok(summary(&image))
    }

    pub async fn list_images(&self) -> Result<Vec<ImageSummary>> {
        Ok(self.images.list().await?.iter().map(summary).collect())
    }

    /// Pulls `reference` from the registry it names; layers already present are kept.
    pub async fn pull_image(
        &self,
        reference: &str,
        progress: Option<ProgressFn>,
    ) -> Result<ImageSummary> {
        if reference.trim().is_empty() {
            return Err(Error::bad_request(
                "a pull needs a reference naming a registry, e.g. {\"reference\": \"127.0.0.1:5000/busybox:latest\"}",
            ));
        }
        let started = std::time::Instant::now();
        let image = self.images.pull(reference.trim(), progress).await?;
        metrics::histogram!("hangar_image_pull_seconds").record(started.elapsed().as_secs_f64());
        Ok(summary(&image))
    }

    /// Uploads a local image to a registry (its own reference's, or `destination`),
    /// with the credentials stored for that registry.
    pub async fn push_image(&self, req: PushImageRequest) -> Result<PushImageResponse> {
        if req.reference.trim().is_empty() {
            return Err(Error::bad_request(
                "a push needs the local image to send, e.g. {\"reference\": \"busybox:latest\", \"destination\": \"127.0.0.1:5000/busybox:latest\"}",
            ));
        }
        let started = std::time::Instant::now();
        let pushed = self
            .images
            .push(req.reference.trim(), req.destination.as_deref())
            .await?;
        metrics::histogram!("hangar_image_push_seconds").record(started.elapsed().as_secs_f64());
        Ok(PushImageResponse {
            reference: pushed.reference,
            digest: pushed.digest,
            layers: pushed.layers,
            layers_present: pushed.layers_present,
            bytes_uploaded: pushed.bytes_uploaded,
        })
    }

    pub async fn inspect_image(&self, reference: &str) -> Result<ImageDetails> {
        let (image, layers) = self.images.inspect(reference).await?;
        Ok(ImageDetails {
            reference: image.reference,
            source: hangar_types::ImageSource {
                registry: image.source.registry,
                repository: image.source.repository,
                tag: image.source.tag,
                digest: image.source.digest,
            },
            size: image.size,
            layers: layers
                .into_iter()
                .map(|l| ImageLayer {
                    diff_id: l.diff_id,
                    size: l.size,
                })
                .collect(),
            config: ImageDefaults {
                entrypoint: image.config.entrypoint,
                cmd: image.config.cmd,
                env: image.config.env,
                working_dir: image.config.working_dir,
                user: image.config.user,
                exposed_ports: image.config.exposed_ports,
                labels: image.config.labels,
            },
            created_at: image.created_at,
        })
    }

    /// Forgets an image, unless a machine that is not destroyed was made from it. Its
    /// layers stay on disk until [`Service::prune_images`].
    pub async fn remove_image(&self, reference: &str) -> Result<()> {
        let (image, _) = self.images.inspect(reference).await?;
        let users: Vec<MachineRecord> = self
            .store
            .list_machines(None, false)
            .await?
            .into_iter()
            .filter(|m| made_from(m, &image))
            .collect();
        if !users.is_empty() {
            return Err(ImageError::InUse {
                reference: image.reference,
                users: describe_users(&users),
            }
            .into());
        }
        self.images.remove(&image.reference).await?;
        Ok(())
    }

    /// Removes layers no image and no machine (other than destroyed ones) uses.
    pub async fn prune_images(&self) -> Result<PruneImagesResponse> {
        let keep: Vec<_> = self
            .store
            .list_machines(None, false)
            .await?
            .into_iter()
            .flat_map(|m| m.image.layers)
            .collect();
        let stats = self.images.prune(&keep).await?;
        tracing::info!(
            bytes_freed = stats.bytes_freed,
            layers_removed = stats.layers_removed,
            "pruned the image store"
        );
        Ok(PruneImagesResponse {
            bytes_freed: stats.bytes_freed,
            layers_removed: stats.layers_removed,
        })
    }

    /// Stores credentials for `registry`. Neither the password nor a hint of it is
    /// logged or returned.
    pub async fn login_registry(
        &self,
        registry: &str,
        req: RegistryLoginRequest,
    ) -> Result<RegistryLoginResponse> {
        if !valid_registry(registry) {
            return Err(Error::bad_request(format!(
                "{registry:?} is not a registry host; give host[:port], e.g. registry.example:5000"
            )));
        }
        if req.username.is_empty() || req.password.is_empty() {
            return Err(Error::bad_request(
                "a login needs both username and password; send {\"username\": ..., \"password\": ...}",
            ));
        }
        let response = RegistryLoginResponse {
            registry: registry.to_string(),
            username: req.username.clone(),
            insecure: req.insecure,
        };
        self.images
            .set_registry_credentials(
                registry,
                RegistryCredentials {
                    username: req.username,
                    password: req.password,
                    insecure: req.insecure,
                },
            )
            .await?;
        tracing::info!(%registry, username = %response.username, "stored registry credentials");
        Ok(response)
    }

    /// Resolves a machine's image, pulling it when it is not present, and keeps the
    /// pull's progress for [`Service::record_pull`].
    pub(super) async fn resolve_for_machine(&self, reference: &str) -> Result<(Image, PullRecord)> {
        let progress = Arc::new(Mutex::new(Vec::new()));
        let sink = progress.clone();
        let image = self
            .images
            .resolve(
                reference,
                Some(Box::new(move |p| {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(p)
                })),
            )
            .await?;
        let progress = std::mem::take(&mut *progress.lock().unwrap_or_else(|e| e.into_inner()));
        Ok((image, PullRecord { progress }))
    }

    /// Writes a `pull` event per layer (`{"layer": digest, "bytes": n, "cached": b}`)
    /// and a summary, when creating `machine` pulled its image.
    pub(super) async fn record_pull(&self, machine: &MachineRecord, pull: PullRecord) {
        if pull.progress.is_empty() {
            return;
        }
        let mut bytes: HashMap<String, u64> = HashMap::new();
        let (mut layers, mut total, mut fetched) = (0usize, 0u64, 0u64);
        for p in pull.progress {
            match p {
                PullProgress::Layer {
                    digest, done_bytes, ..
                } => {
                    bytes.insert(digest, done_bytes);
                }
                PullProgress::LayerDone { digest, cached } => {
                    let n = bytes.get(&digest).copied().unwrap_or(0);
                    layers += 1;
                    fetched += n;
                    self.event(
                        machine,
                        "pull",
                        "layer",
                        "user",
                        json!({"layer": digest, "bytes": n, "cached": cached}),
                    )
                    .await;
                }
                PullProgress::Resolved { total_bytes, .. } => total = total_bytes,
                PullProgress::Done { digest } => {
                    self.event(
                        machine,
                        "pull",
                        "pulled",
                        "user",
                        json!({
                            "image": machine.config.image,
                            "digest": digest,
                            "layers": layers,
                            "bytes": fetched,
                            "total_bytes": total,
                        }),
                    )
                    .await;
                }
            }
        }
    }
}

pub(super) fn summary(image: &Image) -> ImageSummary {
    ImageSummary {
        reference: image.reference.clone(),
        digest: image.source.digest.clone(),
        size: image.size,
        layers: image.layers.len(),
        created_at: image.created_at.clone(),
    }
}

/// Whether `machine` was created from `image`: same source, or failing that (records
/// made before sources were kept) the same layers.
fn made_from(machine: &MachineRecord, image: &Image) -> bool {
    let r = &machine.image_ref;
    let s = &image.source;
    if !r.digest.is_empty() || !r.repository.is_empty() {
        r.registry == s.registry
            && r.repository == s.repository
            && r.tag == s.tag
            && r.digest == s.digest
    } else {
        machine.image.layers == image.layers
    }
}

fn describe_users(users: &[MachineRecord]) -> String {
    let mut names: Vec<String> = users
        .iter()
        .take(USERS_SHOWN)
        .map(|m| format!("machine {} ({}) in app {}", m.id, m.name, m.app))
        .collect();
    if users.len() > USERS_SHOWN {
        names.push(format!("{} more", users.len() - USERS_SHOWN));
    }
    names.join(", ")
}

/// `host[:port]`: what a registry is called in references and in `registries.json`.
fn valid_registry(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && !s.starts_with(['-', '.', ':'])
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_hosts() {
        for ok in [
            "127.0.0.1:5000",
            "registry.example",
            "[::1]:5000",
            "localhost",
        ] {
            assert!(valid_registry(ok), "{ok}");
        }
        for bad in ["", "a/b", "http://x", "-x", "x y", "a@b"] {
            assert!(!valid_registry(bad), "{bad}");
        }
    }
}
