//! hangar's images: OCI registry pulls, archive imports, the content-addressed layer
//! store and safe unpacking, behind [`hangar_core::image::ImageStore`].
//!
//! The daemon opens one [`LocalImageStore`] in its data directory
//! (`LocalImageStore::open(data_dir.join("images"), StoreOptions::default())`) and hands
//! it to the service layer as an `Arc<dyn ImageStore>`. Layers come back as directories
//! to stack as overlay lower directories, lowest first.
//!
//! Modules: [`reference`] parses names, [`unpack`] is the only code that writes layer
//! contents, [`blob`] checks digests and compression, [`archive`] imports tarballs,
//! [`registry`] pulls, [`pack`] and `push` send local images to a registry, [`store`]
//! owns the on-disk layout.

pub mod archive;
pub mod blob;
mod commit;
pub mod manifest;
pub mod pack;
mod push;
pub mod reference;
pub mod registry;
pub mod store;
pub mod unpack;

use std::path::PathBuf;

use async_trait::async_trait;
use hangar_core::image::{
    CommitBase, Image, ImageError, ImageStore, LayerInfo, ProgressFn, PruneStats, PushResult,
    RegistryCredentials, TarStream,
};

pub use archive::{ArchiveKind, LOCAL_REGISTRY};
pub use reference::Reference;
pub use registry::{RegistriesFile, RegistrySettings, Secret};
pub use store::{LocalImageStore, StoreOptions};
pub use unpack::{DevicePolicy, UnpackOptions};

#[async_trait]
impl ImageStore for LocalImageStore {
    async fn resolve(
        &self,
        reference: &str,
        progress: Option<ProgressFn>,
    ) -> Result<Image, ImageError> {
        let r = Reference::parse(reference)?;
        if let Some(rec) = self.find(&r)? {
            return self.image_from_record(&rec);
        }
        if !r.is_remote() {
            return Err(ImageError::NotFound {
                reference: r.to_string(),
            });
        }
        let lock = self.lock(&format!("image:{r}"));
        let _guard = lock.lock().await;
        // Another caller may have pulled it while we waited.
        if let Some(rec) = self.find(&r)? {
            return self.image_from_record(&rec);
        }
        self.pull_locked(&r, progress.map(std::sync::Arc::from))
            .await
    }

    async fn import(&self, reference: &str, tar: TarStream) -> Result<Image, ImageError> {
        self.import_stream(reference, tar).await
    }

    async fn list(&self) -> Result<Vec<Image>, ImageError> {
        let mut out = Vec::new();
        for rec in self.records()? {
            match self.image_from_record(&rec) {
                Ok(img) => out.push(img),
                Err(e) => {
                    tracing::warn!(reference = %rec.reference, error = %e, "skipping broken image")
                }
            }
        }
        Ok(out)
    }

    async fn remove(&self, reference: &str) -> Result<(), ImageError> {
        self.remove_record(reference)
    }

    async fn prune(&self, keep: &[PathBuf]) -> Result<PruneStats, ImageError> {
        let _gc = self.inner.gc.write().await;
        let store = self.clone();
        let keep = keep.to_vec();
        tokio::task::spawn_blocking(move || store.prune_blocking(&keep))
            .await
            .map_err(|e| ImageError::Other(format!("prune task failed: {e}")))?
    }

    async fn pull(
        &self,
        reference: &str,
        progress: Option<ProgressFn>,
    ) -> Result<Image, ImageError> {
        LocalImageStore::pull(self, reference, progress).await
    }

    async fn inspect(&self, reference: &str) -> Result<(Image, Vec<LayerInfo>), ImageError> {
        self.inspect_record(reference)
    }

    async fn push(
        &self,
        reference: &str,
        destination: Option<&str>,
    ) -> Result<PushResult, ImageError> {
        LocalImageStore::push(self, reference, destination).await
    }

    async fn commit_layer(
        &self,
        upper: &std::path::Path,
        base: &CommitBase,
        reference: &str,
    ) -> Result<Image, ImageError> {
        LocalImageStore::commit_layer(self, upper, base, reference).await
    }

    async fn set_registry_credentials(
        &self,
        registry: &str,
        credentials: RegistryCredentials,
    ) -> Result<(), ImageError> {
        let settings = RegistrySettings {
            username: Some(credentials.username).filter(|u| !u.is_empty()),
            password: Some(Secret(credentials.password)).filter(|p| !p.0.is_empty()),
            token: None,
            insecure: credentials.insecure,
        };
        let store = self.clone();
        let registry = registry.to_string();
        tokio::task::spawn_blocking(move || store.set_registry(&registry, settings))
            .await
            .map_err(|e| ImageError::Other(format!("saving credentials failed: {e}")))?
    }
}
