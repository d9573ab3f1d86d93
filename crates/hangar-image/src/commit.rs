//! Committing a machine's writable layer as a new image.
//!
//! The overlay upper directory is packed exactly as a push packs a layer (overlay
//! whiteouts and opaque directories become OCI ones), and the blob is unpacked back
//! through the same path as any pulled or imported layer, so the new layer lands in
//! `layers/<diffid>/rootfs` like every other and is checked the same way. The image
//! record is the base image's layers plus the new one, with the base's config.

use std::fs::File;
use std::path::Path;

use hangar_core::image::{CommitBase, Image, ImageError};
use sha2::{Digest, Sha256};

use crate::archive::{import_reference, local_source};
use crate::pack::pack_layer;
use crate::store::{ImageRecord, LayerRecord, LocalImageStore, now, read_json};

impl LocalImageStore {
    /// See [`hangar_core::image::ImageStore::commit_layer`].
    pub async fn commit_layer(
        &self,
        upper: &Path,
        base: &CommitBase,
        reference: &str,
    ) -> Result<Image, ImageError> {
        let r = import_reference(reference)?;
        // Layers the base still names must not be pruned under us.
        let _gc = self.inner.gc.read().await;
        let store = self.clone();
        let upper = upper.to_path_buf();
        let base = base.clone();
        tokio::task::spawn_blocking(move || store.commit_blocking(&r, &upper, &base))
            .await
            .map_err(|e| ImageError::Other(format!("commit task failed: {e}")))?
    }

    fn commit_blocking(
        &self,
        r: &crate::Reference,
        upper: &Path,
        base: &CommitBase,
    ) -> Result<Image, ImageError> {
        let mut layers = Vec::with_capacity(base.layers.len() + 1);
        for path in &base.layers {
            layers.push(self.diff_id_of(path)?);
        }
        let blob = self.tmp_path("commit");
        let result = (|| {
            let packed = pack_layer(upper, &blob)?;
            let f = File::open(&blob).map_err(|e| ImageError::io("read committed layer", e))?;
            self.unpack_into_place(Box::new(f), Some(&packed.digest), Some(&packed.diff_id))?;
            Ok::<_, ImageError>(packed)
        })();
        let _ = std::fs::remove_file(&blob);
        let packed = result?;
        layers.push(packed.diff_id);
        // The same layers and config give the same digest.
        let mut hasher = Sha256::new();
        for l in &layers {
            hasher.update(l.as_bytes());
            hasher.update(b"\n");
        }
        hasher.update(
            serde_json::to_vec(&base.config).map_err(|e| ImageError::Other(e.to_string()))?,
        );
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        self.write_image(&ImageRecord {
            reference: r.to_string(),
            source: local_source(r, &digest),
            config_digest: String::new(),
            layers,
            config: base.config.clone(),
            created_at: now(),
        })
    }

    /// The diff id of a layer directory of this store (`layers/<hex>/rootfs`).
    fn diff_id_of(&self, rootfs: &Path) -> Result<String, ImageError> {
        let lost = || {
            ImageError::Other(format!(
                "the machine's image layer {} is no longer in the image store; \
                 pull its image again",
                rootfs.display()
            ))
        };
        let dir = rootfs.parent().ok_or_else(lost)?;
        if dir.parent() != Some(self.inner.dir.join("layers").as_path()) {
            return Err(lost());
        }
        let record: LayerRecord = read_json(&dir.join("layer.json")).map_err(|_| lost())?;
        if self.layer_dir(&record.diff_id)? != dir {
            return Err(lost());
        }
        Ok(record.diff_id)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    use hangar_core::image::{ImageConfig, ImageStore};

    use super::*;
    use crate::StoreOptions;

    fn whiteout(path: &Path) -> bool {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path.
        unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, 0) == 0 }
    }

    #[tokio::test]
    async fn an_upper_dir_becomes_a_layer_on_top_of_the_base() {
        let tmp = tempfile::tempdir().unwrap();
        let store =
            LocalImageStore::open(tmp.path().join("store"), StoreOptions::default()).unwrap();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).unwrap();
        std::fs::write(rootfs.join("bin/vi"), b"vi").unwrap();
        let base_image = store.import_dir("base:1", &rootfs).await.unwrap();

        let upper = tmp.path().join("upper");
        std::fs::create_dir_all(upper.join("opt/tool")).unwrap();
        std::fs::create_dir_all(upper.join("bin")).unwrap();
        std::fs::write(upper.join("opt/tool/VERSION"), b"v1\n").unwrap();
        if !whiteout(&upper.join("bin/vi")) {
            eprintln!("skipping: whiteouts need CAP_MKNOD");
            return;
        }
        let base = CommitBase {
            layers: base_image.layers.clone(),
            config: ImageConfig {
                cmd: vec!["sh".into()],
                ..ImageConfig::default()
            },
            source: base_image.source.clone(),
        };
        let image = ImageStore::commit_layer(&store, &upper, &base, "built:v1")
            .await
            .unwrap();
        assert_eq!(image.layers.len(), 2);
        assert_eq!(image.layers[0], base_image.layers[0]);
        assert_eq!(image.config.cmd, vec!["sh".to_string()]);
        let top = &image.layers[1];
        assert_eq!(
            std::fs::read(top.join("opt/tool/VERSION")).unwrap(),
            b"v1\n"
        );
        // The whiteout is an overlay whiteout again in the stored layer.
        let meta = std::fs::symlink_metadata(top.join("bin/vi")).unwrap();
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(meta.file_type().is_char_device() && meta.rdev() == 0);
        // The upper dir is left alone.
        assert!(upper.join("opt/tool/VERSION").is_file());

        // Listed, and committing the same content again gives the same layer.
        let (found, _) = store.inspect("built:v1").await.unwrap();
        assert_eq!(found.layers, image.layers);
        let again = ImageStore::commit_layer(&store, &upper, &base, "built:v2")
            .await
            .unwrap();
        assert_eq!(again.layers, image.layers);
        assert_eq!(again.source.digest, image.source.digest);

        // Bad references and foreign layers are refused.
        let err = ImageStore::commit_layer(&store, &upper, &base, "Bad Ref!")
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::InvalidReference(_)), "{err:?}");
        let foreign = CommitBase {
            layers: vec![rootfs.clone()],
            ..base.clone()
        };
        assert!(
            ImageStore::commit_layer(&store, &upper, &foreign, "built:v3")
                .await
                .is_err()
        );
    }
}
