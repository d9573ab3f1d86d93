//! Pulls that must fail cleanly through the real daemon: an image with no linux/amd64
//! variant (`no_matching_platform`) and a blob the registry serves corrupted
//! (`digest_mismatch`). Each checks the code, the sentence a robot acts on, and that
//! nothing half-pulled is left: no image listed, no layer, an empty work area.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::path::Path;
use std::process::Command;

use common::{Daemon, skip_unless_root};
use hangar_client::Client;
use registry::{Registry, build_layout, missing_tools, push};
use serde_json::{Value, json};

fn skip() -> bool {
    if skip_unless_root() {
        return true;
    }
    if let Some(reason) = missing_tools() {
        eprintln!("{reason}");
        return true;
    }
    false
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `POST /v1/images/pull` of `reference`: the status and the error body.
async fn failed_pull(client: &Client, reference: &str) -> (u16, Value) {
    let (status, body) = client
        .raw(
            reqwest::Method::POST,
            "/v1/images/pull",
            Some(json!({ "reference": reference })),
        )
        .await
        .unwrap();
    (status.as_u16(), body)
}

/// Nothing of a failed pull is left in the daemon's image store.
async fn assert_nothing_pulled(daemon: &Daemon) {
    assert!(daemon.client().list_images().await.unwrap().is_empty());
    let store = daemon.data_dir().join("images");
    for sub in ["tmp", "layers"] {
        let left: Vec<_> = std::fs::read_dir(store.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(left.is_empty(), "left in {sub}/: {left:?}");
    }
}

/// Adds `bytes` to the layout's blobs; returns their digest.
fn write_blob(layout: &Path, bytes: &[u8]) -> String {
    let staged = layout.join("staged-blob");
    std::fs::write(&staged, bytes).unwrap();
    let sum = run(Command::new("sha256sum").arg(&staged));
    let hex = String::from_utf8(sum).unwrap()[..64].to_string();
    std::fs::rename(&staged, layout.join("blobs/sha256").join(&hex)).unwrap();
    format!("sha256:{hex}")
}

/// Turns the layout's `tag` into an OCI index whose only entry is its manifest,
/// declared linux/arm64 (the image's config says arm64 too).
fn wrap_in_arm64_index(layout: &Path, tag: &str) {
    let index_path = layout.join("index.json");
    let mut index: Value = serde_json::from_slice(&std::fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let manifest = json!({
        "mediaType": entry["mediaType"],
        "digest": entry["digest"],
        "size": entry["size"],
        "platform": {"architecture": "arm64", "os": "linux"},
    });
    let nested = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [manifest],
    }))
    .unwrap();
    let digest = write_blob(layout, &nested);
    entry["mediaType"] = json!("application/vnd.oci.image.index.v1+json");
    entry["digest"] = json!(digest);
    entry["size"] = json!(nested.len());
    std::fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_arm64_only_image_is_refused_with_no_matching_platform() {
    if skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let layout = build_layout(work.path());
    run(Command::new("umoci")
        .args(["config", "--architecture", "arm64", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .args(["--tag", "arm"]));
    // One image whose config alone says arm64, one behind an index listing only arm64.
    let plain = format!("{}/test/arm:plain", reg.addr);
    push(&layout, "arm", &plain, None);
    wrap_in_arm64_index(&layout, "arm");
    let indexed = format!("{}/test/arm:indexed", reg.addr);
    run(Command::new("skopeo")
        .args([
            "copy",
            "--all",
            "--insecure-policy",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:arm", layout.display()))
        .arg(format!("docker://{indexed}")));
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{indexed}")));
    let top: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(top["manifests"][0]["platform"]["architecture"], "arm64");

    let daemon = Daemon::start();
    let client = daemon.client();
    for reference in [&indexed, &plain] {
        let (status, body) = failed_pull(&client, reference).await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["code"], "no_matching_platform", "{body}");
        let sentence = body["error"].as_str().unwrap();
        assert!(
            sentence.contains(reference.as_str()) && sentence.contains("linux/amd64"),
            "{sentence}"
        );
        assert_nothing_pulled(&daemon).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_blob_is_discarded_with_digest_mismatch() {
    if skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let layout = build_layout(work.path());
    let reference = format!("{}/test/busybox:v1", reg.addr);
    push(&layout, "v1", &reference, None);

    // Flip bytes of the layer blob where the registry keeps it; it serves it as is.
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}")));
    let manifest: Value = serde_json::from_slice(&raw).unwrap();
    let digest = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let hex = digest.strip_prefix("sha256:").unwrap();
    let data = reg
        .storage()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let middle = bytes.len() / 2;
    for b in &mut bytes[middle..middle + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&data, &bytes).unwrap();

    let daemon = Daemon::start();
    let client = daemon.client();
    let (status, body) = failed_pull(&client, &reference).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "digest_mismatch", "{body}");
    let sentence = body["error"].as_str().unwrap();
    assert!(
        sentence.contains(&digest) && sentence.contains("discarded"),
        "{sentence}"
    );
    assert_nothing_pulled(&daemon).await;

    // The CLI says the same.
    let out = daemon
        .cli()
        .args(["image", "pull", &reference])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("digest_mismatch"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_pulled(&daemon).await;
}
