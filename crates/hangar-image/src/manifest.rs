//! The JSON documents of an image: indexes, manifests and configs, in both their OCI
//! and Docker v2 spellings (the shapes are the same; only media types differ).
//!
//! Parsing only: fetching them is the registry's or the archive's business.

use std::collections::BTreeMap;

use hangar_core::image::{ImageConfig, ImageError};
use serde::Deserialize;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Media types accepted when asking a registry for a manifest.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

/// An index (OCI) or manifest list (Docker), or a single-image manifest.
#[derive(Debug, Clone)]
pub enum AnyManifest {
    Index(Vec<Descriptor>),
    Image(Manifest),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    #[serde(default)]
    schema_version: Option<u32>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

impl AnyManifest {
    /// Parses a manifest or index, by media type when it says and by shape otherwise.
    pub fn parse(bytes: &[u8]) -> Result<AnyManifest, ImageError> {
        let raw: Raw = serde_json::from_slice(bytes)
            .map_err(|e| ImageError::BadArchive(format!("manifest is not valid JSON: {e}")))?;
        if raw.schema_version == Some(1) {
            return Err(ImageError::BadArchive(
                "Docker schema 1 manifests are not supported".into(),
            ));
        }
        match (raw.media_type.as_deref(), raw.manifests, raw.config) {
            (Some(OCI_INDEX | DOCKER_LIST) | None, Some(m), None) => Ok(AnyManifest::Index(m)),
            (Some(OCI_MANIFEST | DOCKER_MANIFEST) | None, None, Some(config)) => {
                Ok(AnyManifest::Image(Manifest {
                    config,
                    layers: raw.layers.unwrap_or_default(),
                }))
            }
            (mt, _, _) => Err(ImageError::BadArchive(format!(
                "unsupported manifest (media type {})",
                mt.unwrap_or("none")
            ))),
        }
    }
}

/// The linux/amd64 entry of an index, if any. Entries without a platform count only
/// when they are the sole entry.
pub fn select_platform(entries: &[Descriptor]) -> Option<&Descriptor> {
    let usable: Vec<&Descriptor> = entries
        .iter()
        .filter(|d| {
            // Attestation manifests ride along in indexes; they are not images.
            d.annotations
                .get("vnd.docker.reference.type")
                .is_none_or(|t| t != "attestation-manifest")
        })
        .collect();
    usable
        .iter()
        .find(|d| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
        })
        .copied()
        .or_else(|| match usable.as_slice() {
            [only] if only.platform.is_none() => Some(*only),
            _ => None,
        })
}

/// An image config (`application/vnd.oci.image.config.v1+json` or Docker's).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConfigFile {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    #[serde(default)]
    pub rootfs: Option<RootFs>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RunConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

impl ConfigFile {
    pub fn parse(bytes: &[u8]) -> Result<ConfigFile, ImageError> {
        serde_json::from_slice(bytes)
            .map_err(|e| ImageError::BadArchive(format!("image config is not valid: {e}")))
    }

    pub fn diff_ids(&self) -> &[String] {
        self.rootfs
            .as_ref()
            .map(|r| r.diff_ids.as_slice())
            .unwrap_or(&[])
    }

    /// Whether this image runs here. An empty field means the producer did not say.
    pub fn is_linux_amd64(&self) -> bool {
        (self.os.is_empty() || self.os == "linux")
            && (self.architecture.is_empty() || self.architecture == "amd64")
    }

    /// The parts hangar applies to machines.
    pub fn image_config(&self) -> ImageConfig {
        let c = self.config.clone().unwrap_or_default();
        ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            exposed_ports: c.exposed_ports.unwrap_or_default().into_keys().collect(),
            labels: c.labels.unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_index_and_selects_amd64() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
          "manifests":[
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,
             "platform":{"os":"linux","architecture":"arm64"}},
            {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,
             "platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let AnyManifest::Index(m) = AnyManifest::parse(idx).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(select_platform(&m).unwrap().digest, "sha256:bb");
        assert!(select_platform(&m[..1]).is_none());
    }

    #[test]
    fn parses_config() {
        let cfg = br#"{"architecture":"amd64","os":"linux","config":{"Entrypoint":["/bin/sh"],
          "Env":["A=b"],"ExposedPorts":{"8080/tcp":{}},"WorkingDir":"/app"},
          "rootfs":{"type":"layers","diff_ids":["sha256:cc"]}}"#;
        let c = ConfigFile::parse(cfg).unwrap();
        assert!(c.is_linux_amd64());
        let ic = c.image_config();
        assert_eq!(ic.entrypoint, vec!["/bin/sh"]);
        assert_eq!(ic.exposed_ports, vec!["8080/tcp"]);
        assert_eq!(ic.working_dir, "/app");
        assert_eq!(c.diff_ids(), ["sha256:cc"]);
    }
}
