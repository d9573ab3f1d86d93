//! The content-addressed layer store and the image records pointing into it.
//!
//! Layout under the store directory:
//!
//! ```text
//! blobs/sha256/<hex>          compressed layer blobs, kept only with `keep_blobs`
//! layers/<diffid-hex>/rootfs  an unpacked layer, used read-only as an overlay lowerdir
//! layers/<diffid-hex>/layer.json
//! images/<sha256(reference)>.json   reference -> manifest digest, diff ids, config
//! registries.json             registry credentials and flags (mode 0600)
//! tmp/                        work in progress; emptied on open
//! ```
//!
//! A layer is unpacked under `tmp/` and renamed into `layers/` only once complete, so an
//! interrupted unpack never leaves something that looks like a layer. Work on one layer
//! is serialised by a per-digest lock, so concurrent pulls unpack it once. Pulls and
//! imports hold the collection lock shared; `prune` holds it exclusively, so a layer
//! renamed into place but not yet recorded in an image is never collected.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use hangar_core::image::{Image, ImageConfig, ImageError, ImageSource, LayerInfo, PruneStats};
use serde::{Deserialize, Serialize};

use crate::blob::{UnpackedBlob, digest_hex, sha256_digest, unpack_blob};
use crate::reference::Reference;
use crate::unpack::UnpackOptions;

/// How a [`LocalImageStore`] behaves.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Keep compressed layer blobs after unpacking (costs disk; not needed to run).
    pub keep_blobs: bool,
    pub unpack: UnpackOptions,
    /// Registries (`host[:port]`) spoken to over plain HTTP. Loopback registries
    /// always are.
    pub insecure_registries: Vec<String>,
    /// Layers downloaded and unpacked at once per pull.
    pub pull_concurrency: usize,
    /// Attempts per registry request before it is reported unreachable.
    pub attempts: u32,
    /// First retry delay; doubled on each further attempt.
    pub retry_delay: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            keep_blobs: false,
            unpack: UnpackOptions::default(),
            insecure_registries: Vec::new(),
            pull_concurrency: 3,
            attempts: 4,
            retry_delay: Duration::from_millis(250),
        }
    }
}

/// An image as recorded on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ImageRecord {
    pub reference: String,
    pub source: ImageSource,
    pub config_digest: String,
    /// Diff ids, lowest layer first.
    pub layers: Vec<String>,
    pub config: ImageConfig,
    pub created_at: String,
}

/// A layer as recorded on disk, next to its `rootfs/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LayerRecord {
    pub diff_id: String,
    /// Digest of the blob it came from, when there was one.
    #[serde(default)]
    pub blob_digest: Option<String>,
    pub size: u64,
    pub created_at: String,
}

/// Serialises work on one key (a layer digest, an image reference).
#[derive(Default)]
struct KeyLocks {
    map: std::sync::Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyLocks {
    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(lock) = map.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        map.insert(key.to_string(), Arc::downgrade(&lock));
        lock
    }
}

pub(crate) struct Inner {
    pub dir: PathBuf,
    pub options: StoreOptions,
    locks: KeyLocks,
    /// Shared by pulls and imports, exclusive for prune.
    pub gc: tokio::sync::RwLock<()>,
}

/// The image store on local disk. Cheap to clone; clones share locks.
#[derive(Clone)]
pub struct LocalImageStore {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for LocalImageStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalImageStore")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

impl LocalImageStore {
    /// Opens (creating if needed) a store in `dir` and discards work left in `tmp/` by
    /// an earlier process.
    pub fn open(dir: PathBuf, options: StoreOptions) -> Result<LocalImageStore, ImageError> {
        for sub in ["blobs/sha256", "layers", "images", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p)
                .map_err(|e| ImageError::io(format!("create {}", p.display()), e))?;
        }
        let tmp = dir.join("tmp");
        let leftovers =
            std::fs::read_dir(&tmp).map_err(|e| ImageError::io("read tmp directory", e))?;
        for entry in leftovers.flatten() {
            let p = entry.path();
            let res = if p.is_dir() && !p.is_symlink() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
            if let Err(e) = res {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove leftover work");
            }
        }
        Ok(LocalImageStore {
            inner: Arc::new(Inner {
                dir,
                options,
                locks: KeyLocks::default(),
                gc: tokio::sync::RwLock::new(()),
            }),
        })
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub(crate) fn lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner.locks.get(key)
    }

    pub(crate) fn layer_dir(&self, diff_id: &str) -> Result<PathBuf, ImageError> {
        Ok(self.inner.dir.join("layers").join(digest_hex(diff_id)?))
    }

    pub(crate) fn blob_path(&self, digest: &str) -> Result<PathBuf, ImageError> {
        Ok(self
            .inner
            .dir
            .join("blobs/sha256")
            .join(digest_hex(digest)?))
    }

    /// A fresh, unique path under `tmp/`.
    pub(crate) fn tmp_path(&self, what: &str) -> PathBuf {
        let n: u64 = rand::random();
        self.inner.dir.join("tmp").join(format!("{what}-{n:016x}"))
    }

    pub(crate) fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_dir(diff_id)
            .map(|d| d.join("layer.json").is_file())
            .unwrap_or(false)
    }

    fn image_path(&self, reference: &str) -> PathBuf {
        // Named by the hash of the reference: any reference makes a safe file name.
        let digest = sha256_digest(reference.as_bytes());
        self.inner
            .dir
            .join("images")
            .join(format!("{}.json", &digest["sha256:".len()..]))
    }

    /// Unpacks a blob into `tmp/`, checks its digests, and renames it into `layers/`.
    /// Blocking. When the layer appeared meanwhile the new copy is discarded.
    pub(crate) fn unpack_into_place(
        &self,
        reader: Box<dyn Read + Send + '_>,
        blob_digest: Option<&str>,
        diff_id: Option<&str>,
    ) -> Result<UnpackedBlob, ImageError> {
        let work = self.tmp_path("layer");
        let result = (|| {
            let rootfs = work.join("rootfs");
            std::fs::create_dir_all(&rootfs)
                .map_err(|e| ImageError::io("create layer work directory", e))?;
            let unpacked = unpack_blob(
                reader,
                blob_digest,
                diff_id,
                &rootfs,
                &self.inner.options.unpack,
            )?;
            let record = LayerRecord {
                diff_id: unpacked.diff_id.clone(),
                blob_digest: blob_digest.map(str::to_string),
                size: unpacked.stats.bytes,
                created_at: now(),
            };
            write_json(&work.join("layer.json"), &record)?;
            let dest = self.layer_dir(&unpacked.diff_id)?;
            match std::fs::rename(&work, &dest) {
                Ok(()) => {}
                // Someone else completed the same layer; theirs is as good as ours.
                Err(e) if dest.join("layer.json").is_file() => {
                    tracing::debug!(error = %e, layer = %unpacked.diff_id, "layer already present");
                    remove_tree(&work);
                }
                Err(e) => return Err(ImageError::io("move layer into place", e)),
            }
            Ok(unpacked)
        })();
        if result.is_err() {
            remove_tree(&work);
        }
        result
    }

    pub(crate) fn read_layer(&self, diff_id: &str) -> Result<LayerRecord, ImageError> {
        read_json(&self.layer_dir(diff_id)?.join("layer.json"))
    }

    /// Records `record` under its reference, replacing what was there.
    pub(crate) fn write_image(&self, record: &ImageRecord) -> Result<Image, ImageError> {
        let path = self.image_path(&record.reference);
        let tmp = self.tmp_path("image");
        write_json(&tmp, record)?;
        std::fs::rename(&tmp, &path).map_err(|e| ImageError::io("record image", e))?;
        self.image_from_record(record)
    }

    pub(crate) fn image_from_record(&self, record: &ImageRecord) -> Result<Image, ImageError> {
        let mut layers = Vec::with_capacity(record.layers.len());
        let mut size = 0;
        for diff_id in &record.layers {
            let layer = self.read_layer(diff_id).map_err(|_| {
                ImageError::Other(format!(
                    "image {:?} lost its layer {diff_id}; pull or import it again",
                    record.reference
                ))
            })?;
            size += layer.size;
            layers.push(self.layer_dir(diff_id)?.join("rootfs"));
        }
        Ok(Image {
            reference: record.reference.clone(),
            source: record.source.clone(),
            layers,
            config: record.config.clone(),
            size,
            created_at: record.created_at.clone(),
        })
    }

    pub(crate) fn records(&self) -> Result<Vec<ImageRecord>, ImageError> {
        let dir = self.inner.dir.join("images");
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| ImageError::io("list images", e))? {
            let entry = entry.map_err(|e| ImageError::io("list images", e))?;
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "json") {
                match read_json::<ImageRecord>(&p) {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "unreadable image record")
                    }
                }
            }
        }
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }

    /// The local record for a reference: by name, or for a digest reference any image
    /// of the same repository with that manifest digest.
    pub(crate) fn find(&self, r: &Reference) -> Result<Option<ImageRecord>, ImageError> {
        let path = self.image_path(&r.to_string());
        if path.is_file() {
            return read_json(&path).map(Some);
        }
        if let Some(digest) = &r.digest {
            let name = r.name();
            return Ok(self.records()?.into_iter().find(|rec| {
                rec.source.digest == *digest
                    && Reference::parse(&rec.reference).is_ok_and(|rr| rr.name() == name)
            }));
        }
        Ok(None)
    }

    /// Forgets a reference. Its layers stay until prune.
    pub(crate) fn remove_record(&self, reference: &str) -> Result<(), ImageError> {
        let r = Reference::parse(reference)?;
        let Some(rec) = self.find(&r)? else {
            return Err(ImageError::NotFound {
                reference: r.to_string(),
            });
        };
        std::fs::remove_file(self.image_path(&rec.reference))
            .map_err(|e| ImageError::io("remove image record", e))
    }

    /// Removes layers (and kept blobs) no image refers to and not in `keep`.
    pub(crate) fn prune_blocking(&self, keep: &[PathBuf]) -> Result<PruneStats, ImageError> {
        let mut used: HashSet<String> = HashSet::new();
        for rec in self.records()? {
            for l in rec.layers {
                if let Ok(h) = digest_hex(&l) {
                    used.insert(h.to_string());
                }
            }
        }
        let layers = self.inner.dir.join("layers");
        let mut freed = 0;
        let mut removed = 0;
        let mut used_blobs: HashSet<String> = HashSet::new();
        for entry in std::fs::read_dir(&layers).map_err(|e| ImageError::io("list layers", e))? {
            let entry = entry.map_err(|e| ImageError::io("list layers", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            let kept = keep
                .iter()
                .any(|k| k.starts_with(&dir) || *k == dir.join("rootfs"));
            let record: Option<LayerRecord> = read_json(&dir.join("layer.json")).ok();
            if used.contains(&name) || kept {
                if let Some(b) = record.and_then(|r| r.blob_digest) {
                    used_blobs.insert(b);
                }
                continue;
            }
            // Rename first so the layer disappears at once, never half-deleted.
            let doomed = self.tmp_path("prune");
            std::fs::rename(&dir, &doomed).map_err(|e| ImageError::io("remove layer", e))?;
            remove_tree(&doomed);
            freed += record.map(|r| r.size).unwrap_or(0);
            removed += 1;
        }
        let blobs = self.inner.dir.join("blobs/sha256");
        for entry in std::fs::read_dir(&blobs).map_err(|e| ImageError::io("list blobs", e))? {
            let entry = entry.map_err(|e| ImageError::io("list blobs", e))?;
            let digest = format!("sha256:{}", entry.file_name().to_string_lossy());
            if !used_blobs.contains(&digest) {
                freed += entry.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(PruneStats {
            bytes_freed: freed,
            layers_removed: removed,
        })
    }

    /// The local image `reference` names, with each layer's digest and size.
    pub(crate) fn inspect_record(
        &self,
        reference: &str,
    ) -> Result<(Image, Vec<LayerInfo>), ImageError> {
        let r = Reference::parse(reference)?;
        let rec = self.find(&r)?.ok_or_else(|| ImageError::NotFound {
            reference: r.to_string(),
        })?;
        let image = self.image_from_record(&rec)?;
        let mut layers = Vec::with_capacity(rec.layers.len());
        for (diff_id, path) in rec.layers.iter().zip(&image.layers) {
            layers.push(LayerInfo {
                diff_id: diff_id.clone(),
                size: self.read_layer(diff_id)?.size,
                path: path.clone(),
            });
        }
        Ok((image, layers))
    }
}

pub(crate) fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn remove_tree(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove work directory");
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), ImageError> {
    let bytes = serde_json::to_vec_pretty(value)
        .map_err(|e| ImageError::Other(format!("encode {}: {e}", path.display())))?;
    std::fs::write(path, bytes).map_err(|e| ImageError::io(format!("write {}", path.display()), e))
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ImageError> {
    let bytes =
        std::fs::read(path).map_err(|e| ImageError::io(format!("read {}", path.display()), e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| ImageError::Other(format!("{} is corrupt: {e}", path.display())))
}
