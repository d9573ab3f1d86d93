//! `hangar image push` through the real daemon into a real registry (Debian's
//! `docker-registry`), checked with the reference tools: what `skopeo copy` and
//! `umoci unpack` make of the pushed image must be the image hangar had, and a second
//! daemon must pull it back and run a machine from it.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Daemon, busybox_rootfs, skip_unless_root};
use hangar_client::ClientError;
use hangar_types::{
    CreateMachineRequest, MachineConfig, MachineExecRequest, MachineInit, PushImageResponse,
    RegistryLoginRequest,
};
use registry::{Registry, build_layout, missing_tools, push};

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

fn api_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Api { code, message, .. }) => (code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One entry of a root filesystem as a user sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink(PathBuf),
}

/// Every entry under `root` (not `root` itself), by relative path.
fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            let node = if meta.is_dir() {
                stack.push(p.clone());
                Node::Dir { mode }
            } else if meta.file_type().is_symlink() {
                Node::Symlink(std::fs::read_link(&p).unwrap())
            } else {
                Node::File {
                    mode,
                    content: std::fs::read(&p).unwrap(),
                }
            };
            out.insert(p.strip_prefix(root).unwrap().to_path_buf(), node);
        }
    }
    out
}

fn assert_same_tree(ours: &BTreeMap<PathBuf, Node>, theirs: &BTreeMap<PathBuf, Node>) {
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "expected only: {only_ours:?}; unpacked only: {only_theirs:?}"
    );
    for (path, node) in ours {
        assert_eq!(Some(node), theirs.get(path), "{} differs", path.display());
    }
}

/// `skopeo copy docker://reference oci:...` then `umoci unpack`: the root filesystem
/// the reference tools make of an image in a registry.
fn unpack_with_reference_tools(
    work: &Path,
    reference: &str,
    name: &str,
    creds: Option<&str>,
) -> BTreeMap<PathBuf, Node> {
    let layout = work.join(format!("{name}-layout"));
    let mut copy = Command::new("skopeo");
    copy.args(["copy", "--insecure-policy", "--src-tls-verify=false"]);
    if let Some(c) = creds {
        copy.args(["--src-creds", c]);
    }
    run(copy
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:t", layout.display())));
    let bundle = work.join(format!("{name}-bundle"));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    tree(&bundle.join("rootfs"))
}

fn sleeper(image: &str) -> CreateMachineRequest {
    CreateMachineRequest {
        config: MachineConfig {
            image: image.into(),
            init: Some(MachineInit {
                exec: Some(vec!["sleep".into(), "100000".into()]),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pushed_images_unpack_like_the_original_and_run_elsewhere() {
    if skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    let dest = format!("{}/hangar/busybox:v1", reg.addr);

    // The CLI pushes an imported image to a registry it names with --to.
    let out = daemon
        .cli()
        .args(["image", "push", "busybox:latest", "--to", &dest, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed: PushImageResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pushed.reference, dest);
    assert!(pushed.digest.starts_with("sha256:"), "{pushed:?}");
    assert_eq!((pushed.layers, pushed.layers_present), (1, 0));

    // skopeo + umoci find the same files, modes, contents and links as were imported.
    let original = busybox_rootfs();
    let theirs = unpack_with_reference_tools(work.path(), &dest, "busybox", None);
    assert_same_tree(&tree(original.path()), &theirs);

    // Pushing again uploads nothing and names the same manifest.
    let again = daemon
        .client()
        .push_image("busybox:latest", Some(&dest))
        .await
        .unwrap();
    assert_eq!(again.digest, pushed.digest);
    assert_eq!((again.layers_present, again.bytes_uploaded), (1, 0));

    // Another daemon pulls it and runs a machine from it.
    let other = Daemon::start();
    let client = other.client();
    let pulled = client.pull_image(&dest).await.unwrap();
    assert_eq!(pulled.digest, pushed.digest);
    client.create_app("pushed", None).await.unwrap();
    let m = client
        .create_machine("pushed", &sleeper(&dest))
        .await
        .unwrap();
    let out = client
        .exec(
            "pushed",
            &m.id,
            &MachineExecRequest {
                command: Some(vec![
                    "sh".into(),
                    "-c".into(),
                    "head -n1 /etc/passwd; readlink /bin/sh".into(),
                ]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout, "root:x:0:0:root:/root:/bin/sh\nbusybox\n");
    client.destroy_machine("pushed", &m.id, true).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn pushing_a_layered_image_keeps_its_deletions() {
    if skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let source = Registry::start(None);
    let dest = Registry::start(Some(("robot", "s3cret-pass")));
    let layout = build_layout(work.path());
    let v2 = format!("{}/test/busybox:v2", source.addr);
    push(&layout, "v2", &v2, None);

    let daemon = Daemon::start();
    let client = daemon.client();
    client.pull_image(&v2).await.unwrap();
    let target = format!("{}/copies/busybox:v2", dest.addr);

    // Not logged in: registry_unauthorized, saying how to log in.
    let (code, message) = api_code(client.push_image(&v2, Some(&target)).await);
    assert_eq!(code, "registry_unauthorized");
    assert!(message.contains("hangar registry login"), "{message}");
    client
        .registry_login(
            &dest.addr,
            &RegistryLoginRequest {
                username: "robot".into(),
                password: "s3cret-pass".into(),
                insecure: false,
            },
        )
        .await
        .unwrap();
    let pushed = client.push_image(&v2, Some(&target)).await.unwrap();
    assert_eq!(pushed.layers, 2);

    // The merged view of the pushed copy is that of the original, deletions included.
    let original = unpack_with_reference_tools(work.path(), &v2, "original", None);
    let copy = unpack_with_reference_tools(work.path(), &target, "copy", Some("robot:s3cret-pass"));
    assert_same_tree(&original, &copy);
    for gone in ["etc/removeme", "doomed", "var/cache/app/old"] {
        assert!(!copy.contains_key(Path::new(gone)), "{gone} came back");
    }
    assert!(copy.contains_key(Path::new("var/cache/app/new")));

    // Errors a user can act on.
    let (code, message) = api_code(client.push_image("nothing:here", Some(&target)).await);
    assert_eq!(code, "image_not_found");
    assert!(message.contains("nothing:here"), "{message}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, _) = api_code(
        client
            .push_image(&v2, Some(&format!("127.0.0.1:{port}/a/b:c")))
            .await,
    );
    assert_eq!(code, "registry_unreachable");
    let (code, _) = api_code(client.push_image(&v2, Some("no-registry/b:c")).await);
    assert_eq!(code, "bad_request");
    // Pushes leave nothing in the store's work area.
    assert_eq!(
        std::fs::read_dir(daemon.data_dir().join("images/tmp"))
            .unwrap()
            .count(),
        0
    );
}
