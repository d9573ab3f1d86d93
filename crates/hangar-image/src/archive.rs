//! Imports of image archives: a plain root filesystem tar (one layer), a `docker save`
//! archive (`manifest.json` and layer tars) or an OCI image layout archive
//! (`oci-layout` and `index.json`), told apart by their contents. Archives may be
//! gzip or zstd compressed as a whole.
//!
//! The incoming stream is spooled to a file under the store's `tmp/` first: `docker
//! save` writes its manifest last, and layers are read from the spool by offset.
//! Only the layers themselves are unpacked (through [`crate::unpack`]); the outer
//! archive is only indexed, never extracted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use hangar_core::image::{Image, ImageConfig, ImageError, ImageSource, TarStream};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::blob::{Compression, decompress, sha256_digest};
use crate::manifest::{AnyManifest, ConfigFile, Descriptor, select_platform};
use crate::reference::Reference;
use crate::store::{ImageRecord, LocalImageStore, now};
use crate::unpack::clean_path;

/// Registry recorded for images that came from an archive rather than a registry.
pub const LOCAL_REGISTRY: &str = "local";

/// Image documents (manifests, configs) larger than this are refused.
const MAX_DOCUMENT: u64 = 4 << 20;

/// The kind of archive an import turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    RootFs,
    DockerSave,
    OciLayout,
}

impl LocalImageStore {
    /// Imports a tar stream under `reference` (see [`ArchiveKind`]).
    pub async fn import_stream(
        &self,
        reference: &str,
        mut tar: TarStream,
    ) -> Result<Image, ImageError> {
        let r = import_reference(reference)?;
        let _gc = self.inner.gc.read().await;
        let spool = self.tmp_path("import");
        let result = async {
            let mut file = tokio::fs::File::create(&spool)
                .await
                .map_err(|e| ImageError::io("create import spool", e))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = tar
                    .read(&mut buf)
                    .await
                    .map_err(|e| ImageError::io("read import stream", e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                file.write_all(&buf[..n])
                    .await
                    .map_err(|e| ImageError::io("write import spool", e))?;
            }
            file.flush()
                .await
                .map_err(|e| ImageError::io("write import spool", e))?;
            drop(file);
            let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
            let store = self.clone();
            let path = spool.clone();
            tokio::task::spawn_blocking(move || store.import_file(&r, &path, &digest))
                .await
                .map_err(|e| ImageError::Other(format!("import task failed: {e}")))?
        }
        .await;
        let _ = tokio::fs::remove_file(&spool).await;
        result
    }

    /// Imports a directory as a one-layer image, as if it had been tarred.
    pub async fn import_dir(&self, reference: &str, dir: &Path) -> Result<Image, ImageError> {
        let r = import_reference(reference)?;
        let _gc = self.inner.gc.read().await;
        let spool = self.tmp_path("import-dir");
        let store = self.clone();
        let src = dir.to_path_buf();
        let path = spool.clone();
        let result = tokio::task::spawn_blocking(move || {
            let file = File::create(&path).map_err(|e| ImageError::io("create import spool", e))?;
            let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
            builder.follow_symlinks(false);
            builder
                .append_dir_all(".", &src)
                .map_err(|e| ImageError::io(format!("archive {}", src.display()), e))?;
            builder
                .into_inner()
                .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
                .map_err(|e| ImageError::io("write import spool", e))?;
            let digest = file_digest(&path)?;
            store.import_file(&r, &path, &digest)
        })
        .await
        .map_err(|e| ImageError::Other(format!("import task failed: {e}")))?;
        let _ = tokio::fs::remove_file(&spool).await;
        result
    }

    /// Imports a spooled archive whose bytes hash to `digest`. Blocking.
    fn import_file(&self, r: &Reference, path: &Path, digest: &str) -> Result<Image, ImageError> {
        let mut head = [0u8; 8];
        let n = File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(|e| ImageError::io("read import spool", e))?;
        let plain = match Compression::detect(&head[..n])? {
            Compression::None => None,
            _ => {
                let plain = path.with_extension("tar");
                let f = File::open(path).map_err(|e| ImageError::io("read import spool", e))?;
                let mut reader = decompress(BufReader::new(f))?;
                let mut out =
                    File::create(&plain).map_err(|e| ImageError::io("decompress import", e))?;
                std::io::copy(&mut reader, &mut out)
                    .map_err(|e| ImageError::io("decompress import", e))?;
                Some(plain)
            }
        };
        let result = (|| {
            let tar_path = plain.as_deref().unwrap_or(path);
            let archive = ArchiveIndex::build(tar_path)?;
            match archive.kind() {
                ArchiveKind::RootFs => self.import_rootfs(r, tar_path, digest),
                ArchiveKind::DockerSave => self.import_docker(r, &archive, digest),
                ArchiveKind::OciLayout => self.import_oci(r, &archive),
            }
        })();
        if let Some(p) = plain {
            let _ = std::fs::remove_file(p);
        }
        result
    }

    fn import_rootfs(
        &self,
        r: &Reference,
        tar_path: &Path,
        digest: &str,
    ) -> Result<Image, ImageError> {
        let f = File::open(tar_path).map_err(|e| ImageError::io("read import spool", e))?;
        let unpacked = self.unpack_into_place(Box::new(f), None, None)?;
        self.write_image(&ImageRecord {
            reference: r.to_string(),
            source: local_source(r, digest),
            config_digest: String::new(),
            layers: vec![unpacked.diff_id],
            config: ImageConfig::default(),
            created_at: now(),
        })
    }

    fn import_docker(
        &self,
        r: &Reference,
        archive: &ArchiveIndex,
        digest: &str,
    ) -> Result<Image, ImageError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Entry {
            config: String,
            #[serde(default)]
            repo_tags: Option<Vec<String>>,
            layers: Vec<String>,
        }
        let entries: Vec<Entry> = serde_json::from_slice(&archive.read_document("manifest.json")?)
            .map_err(|e| ImageError::BadArchive(format!("manifest.json: {e}")))?;
        let wanted = r.to_string();
        let entry = match entries.iter().position(|e| {
            e.repo_tags
                .as_ref()
                .is_some_and(|tags| tags.contains(&wanted))
        }) {
            Some(i) => &entries[i],
            None => entries
                .first()
                .ok_or_else(|| ImageError::BadArchive("manifest.json lists no image".into()))?,
        };
        let config_bytes = archive.read_document(&entry.config)?;
        let config = ConfigFile::parse(&config_bytes)?;
        if !config.is_linux_amd64() {
            return Err(ImageError::NoMatchingPlatform { reference: wanted });
        }
        let diff_ids = config.diff_ids();
        if diff_ids.len() != entry.layers.len() {
            return Err(ImageError::BadArchive(format!(
                "image config lists {} layers, manifest.json {}",
                diff_ids.len(),
                entry.layers.len()
            )));
        }
        for (layer, diff_id) in entry.layers.iter().zip(diff_ids) {
            if !self.has_layer(diff_id) {
                let reader = archive.open(layer)?;
                self.unpack_into_place(reader, None, Some(diff_id))?;
            }
        }
        self.write_image(&ImageRecord {
            reference: wanted,
            source: local_source(r, digest),
            config_digest: sha256_digest(&config_bytes),
            layers: diff_ids.to_vec(),
            config: config.image_config(),
            created_at: now(),
        })
    }

    fn import_oci(&self, r: &Reference, archive: &ArchiveIndex) -> Result<Image, ImageError> {
        let wanted = r.to_string();
        let index = match AnyManifest::parse(&archive.read_document("index.json")?)? {
            AnyManifest::Index(m) => m,
            AnyManifest::Image(_) => {
                return Err(ImageError::BadArchive("index.json is not an index".into()));
            }
        };
        // Prefer the manifests tagged with the tag being imported, as `skopeo`/`umoci`
        // name them; otherwise any.
        let tagged: Vec<Descriptor> = index
            .iter()
            .filter(|d| {
                d.annotations
                    .get("org.opencontainers.image.ref.name")
                    .is_some_and(|n| *n == r.tag)
            })
            .cloned()
            .collect();
        let candidates = if tagged.is_empty() { index } else { tagged };
        let mut chosen =
            match candidates.as_slice() {
                [only] => only.clone(),
                many => select_platform(many).cloned().ok_or_else(|| {
                    ImageError::NoMatchingPlatform {
                        reference: wanted.clone(),
                    }
                })?,
            };
        // What the layout names identifies the image, even when it is an index.
        let manifest_digest = chosen.digest.clone();
        let manifest = loop {
            match AnyManifest::parse(&archive.read_blob(&chosen.digest)?)? {
                AnyManifest::Image(m) => break m,
                AnyManifest::Index(nested) => {
                    chosen = select_platform(&nested).cloned().ok_or_else(|| {
                        ImageError::NoMatchingPlatform {
                            reference: wanted.clone(),
                        }
                    })?;
                }
            }
        };
        let config_bytes = archive.read_blob(&manifest.config.digest)?;
        let config = ConfigFile::parse(&config_bytes)?;
        if !config.is_linux_amd64() {
            return Err(ImageError::NoMatchingPlatform { reference: wanted });
        }
        let diff_ids = config.diff_ids();
        if diff_ids.len() != manifest.layers.len() {
            return Err(ImageError::BadArchive(format!(
                "image config lists {} layers, manifest {}",
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        for (layer, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if !self.has_layer(diff_id) {
                let reader = archive.open(&blob_member(&layer.digest)?)?;
                self.unpack_into_place(reader, Some(&layer.digest), Some(diff_id))?;
            }
        }
        self.write_image(&ImageRecord {
            reference: wanted,
            source: local_source(r, &manifest_digest),
            config_digest: manifest.config.digest.clone(),
            layers: diff_ids.to_vec(),
            config: config.image_config(),
            created_at: now(),
        })
    }
}

pub(crate) fn import_reference(reference: &str) -> Result<Reference, ImageError> {
    let r = Reference::parse(reference)?;
    if r.digest.is_some() {
        // The digest of an import is computed from its content, never chosen.
        return Err(ImageError::InvalidReference(format!(
            "{reference} (import under a tag, not a digest)"
        )));
    }
    Ok(r)
}

pub(crate) fn local_source(r: &Reference, digest: &str) -> ImageSource {
    ImageSource {
        registry: LOCAL_REGISTRY.to_string(),
        repository: r.name(),
        tag: r.tag.clone(),
        digest: digest.to_string(),
    }
}

fn blob_member(digest: &str) -> Result<String, ImageError> {
    Ok(format!("blobs/sha256/{}", crate::blob::digest_hex(digest)?))
}

fn file_digest(path: &Path) -> Result<String, ImageError> {
    let mut f = File::open(path).map_err(|e| ImageError::io("read import spool", e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| ImageError::io("read import spool", e))?;
    Ok(format!("sha256:{}", hex::encode(hasher.finalize())))
}

#[derive(Debug, Clone)]
enum Member {
    File { offset: u64, size: u64 },
    Symlink(Vec<u8>),
    Hardlink(Vec<u8>),
    Other,
}

/// The entries of an outer archive, by cleaned path, with where their data lies.
struct ArchiveIndex {
    path: PathBuf,
    members: HashMap<String, Member>,
}

impl ArchiveIndex {
    fn build(path: &Path) -> Result<ArchiveIndex, ImageError> {
        let f = File::open(path).map_err(|e| ImageError::io("read import spool", e))?;
        let mut archive = tar::Archive::new(f);
        let bad = |e: std::io::Error| ImageError::BadArchive(format!("not a tar archive: {e}"));
        let mut members = HashMap::new();
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let Ok(comps) = clean_path(&entry.path_bytes()) else {
                continue;
            };
            let name = join(&comps);
            let link = || {
                entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .unwrap_or_default()
            };
            let member = match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Member::File {
                    offset: entry.raw_file_position(),
                    size: entry.size(),
                },
                tar::EntryType::Symlink => Member::Symlink(link()),
                tar::EntryType::Link => Member::Hardlink(link()),
                _ => Member::Other,
            };
            members.insert(name, member);
        }
        Ok(ArchiveIndex {
            path: path.to_path_buf(),
            members,
        })
    }

    fn kind(&self) -> ArchiveKind {
        let is_file = |n: &str| matches!(self.members.get(n), Some(Member::File { .. }));
        if is_file("oci-layout") && is_file("index.json") {
            ArchiveKind::OciLayout
        } else if is_file("manifest.json")
            && self
                .read_document("manifest.json")
                .is_ok_and(|b| serde_json::from_slice::<Vec<serde_json::Value>>(&b).is_ok())
        {
            ArchiveKind::DockerSave
        } else {
            ArchiveKind::RootFs
        }
    }

    /// Follows links inside the archive to the member holding the data.
    fn resolve(&self, name: &str) -> Result<(u64, u64), ImageError> {
        let mut current = name.to_string();
        for _ in 0..16 {
            match self.members.get(&current) {
                Some(Member::File { offset, size }) => return Ok((*offset, *size)),
                Some(Member::Hardlink(target)) => current = clean_member(target)?,
                Some(Member::Symlink(target)) => {
                    let parent = current.rsplit_once('/').map(|(p, _)| p).unwrap_or("");
                    let mut joined = if target.starts_with(b"/") || parent.is_empty() {
                        Vec::new()
                    } else {
                        format!("{parent}/").into_bytes()
                    };
                    joined.extend_from_slice(target);
                    current = clean_member(&joined)?;
                }
                _ => {
                    return Err(ImageError::BadArchive(format!(
                        "archive has no file {name:?}"
                    )));
                }
            }
        }
        Err(ImageError::BadArchive(format!(
            "too many links resolving {name:?}"
        )))
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, ImageError> {
        let name = clean_member(name.as_bytes())?;
        let (offset, size) = self.resolve(&name)?;
        let mut f = File::open(&self.path).map_err(|e| ImageError::io("read import spool", e))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| ImageError::io("read import spool", e))?;
        Ok(Box::new(BufReader::new(f.take(size))))
    }

    fn read_document(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        let mut buf = Vec::new();
        self.open(name)?
            .take(MAX_DOCUMENT)
            .read_to_end(&mut buf)
            .map_err(|e| ImageError::io(format!("read {name:?} from archive"), e))?;
        Ok(buf)
    }

    /// A blob of an OCI layout, checked against its digest.
    fn read_blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let bytes = self.read_document(&blob_member(digest)?)?;
        let actual = sha256_digest(&bytes);
        if actual != digest {
            return Err(ImageError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }
}

fn clean_member(raw: &[u8]) -> Result<String, ImageError> {
    clean_path(raw).map(|c| join(&c)).map_err(|r| {
        ImageError::BadArchive(format!(
            "archive member {:?} {r}",
            String::from_utf8_lossy(raw)
        ))
    })
}

fn join(comps: &[std::ffi::OsString]) -> String {
    comps
        .iter()
        .map(|c| c.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}
