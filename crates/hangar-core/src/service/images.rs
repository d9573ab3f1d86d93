//! Images: import and list, through the image store.

use hangar_types::ImageSummary;

use super::Service;
use crate::error::{Error, Result};
use crate::image::{Image, TarStream};

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
}

fn summary(image: &Image) -> ImageSummary {
    ImageSummary {
        reference: image.reference.clone(),
        digest: image.source.digest.clone(),
        size: image.size,
        layers: image.layers.len(),
        created_at: image.created_at.clone(),
    }
}
