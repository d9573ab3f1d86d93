//! Pulls from a real registry (Debian's `docker-registry`), with images pushed by
//! `skopeo` from OCI layouts built with `umoci`, compared against what `skopeo` and
//! `umoci unpack` make of the same image.
//!
//! Skipped, with a printed reason, only when one of those binaries is missing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_core::image::{ImageError, ImageStore, PullProgress};
use hangar_image::{LocalImageStore, RegistrySettings, Secret, StoreOptions};

const BINARIES: &[&str] = &["docker-registry", "skopeo", "umoci", "busybox"];

fn missing_tools() -> Option<String> {
    for b in BINARIES {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(b).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("skipping: {b} is not installed"));
        }
    }
    None
}

macro_rules! require_tools {
    () => {
        if let Some(reason) = missing_tools() {
            eprintln!("{reason}");
            return;
        }
    };
}

/// A `docker-registry` on a free loopback port, killed on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start(credentials: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = credentials {
            let hash = bcrypt::hash(pass, 4).unwrap();
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: hangar-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        reg.wait_ready();
        reg
    }

    /// Waits until `/v2/` answers with any HTTP status.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("docker-registry exited with {status}");
            }
            if let Ok(mut s) = std::net::TcpStream::connect(&self.addr) {
                let _ = write!(s, "GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
                let mut buf = [0u8; 12];
                if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/") {
                    return;
                }
            }
            // Polling a port that has no event to wait on.
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("docker-registry did not answer on {}", self.addr);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// Builds an OCI layout at `layout` with tag `v1` (busybox) and `v2` (v1 plus a second
/// layer that deletes a file and a directory, replaces a directory's contents, and
/// adds a file).
fn build_layout(work: &Path) -> PathBuf {
    let layout = work.join("layout");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:v1", layout.display())));
    let bundle = work.join("bundle1");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "tmp", "var/cache/app", "doomed/sub"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(which("busybox"), rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/removeme"), "bye\n").unwrap();
    std::fs::write(rootfs.join("var/cache/app/old"), "old\n").unwrap();
    std::fs::write(rootfs.join("doomed/sub/file"), "x\n").unwrap();
    std::fs::hard_link(rootfs.join("etc/passwd"), rootfs.join("etc/passwd-")).unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle));
    run(Command::new("umoci")
        .args(["config", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .args([
            "--config.cmd",
            "/bin/sh",
            "--config.env",
            "GREETING=hello",
            "--config.workingdir",
            "/tmp",
        ]));

    let bundle2 = work.join("bundle2");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle2));
    let rootfs = bundle2.join("rootfs");
    std::fs::remove_file(rootfs.join("etc/removeme")).unwrap();
    std::fs::remove_dir_all(rootfs.join("doomed")).unwrap();
    std::fs::remove_file(rootfs.join("var/cache/app/old")).unwrap();
    std::fs::write(rootfs.join("var/cache/app/new"), "new\n").unwrap();
    std::fs::write(rootfs.join("etc/motd"), "welcome\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:v2", layout.display()))
        .arg(&bundle2));
    layout
}

fn which(bin: &str) -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .unwrap()
}

fn push(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    run(&mut cmd);
}

/// One file as seen in a merged root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, content: Vec<u8> },
    Symlink(PathBuf),
}

/// Applies overlay layers in order, honouring whiteouts and opaque directories.
fn merge_layers(layers: &[PathBuf]) -> BTreeMap<PathBuf, Node> {
    let mut merged: BTreeMap<PathBuf, Node> = BTreeMap::new();
    for layer in layers {
        let mut entries = Vec::new();
        walk(layer, layer, &mut entries);
        for (rel, path) in entries {
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            if ft.is_char_device() && meta.rdev() == 0 {
                merged.retain(|p, _| !p.starts_with(&rel));
                continue;
            }
            if ft.is_dir() && opaque(&path) {
                merged.retain(|p, _| !(p.starts_with(&rel) && *p != rel));
            }
            if !ft.is_dir() {
                merged.retain(|p, _| !p.starts_with(&rel) || *p == rel);
            }
            merged.insert(rel, node(&path));
        }
    }
    merged
}

fn tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut entries = Vec::new();
    walk(root, root, &mut entries);
    entries
        .into_iter()
        .map(|(rel, p)| (rel, node(&p)))
        .collect()
}

fn node(path: &Path) -> Node {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        Node::Dir { mode }
    } else if meta.file_type().is_symlink() {
        Node::Symlink(std::fs::read_link(path).unwrap())
    } else {
        Node::File {
            mode,
            content: std::fs::read(path).unwrap(),
        }
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) {
    let mut children: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    children.sort();
    for p in children {
        out.push((p.strip_prefix(root).unwrap().to_path_buf(), p.clone()));
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            walk(root, &p, out);
        }
    }
}

fn opaque(dir: &Path) -> bool {
    let p = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    let n = c"trusted.overlay.opaque";
    let mut buf = [0u8; 4];
    // SAFETY: valid NUL-terminated strings and a live buffer of the given length.
    let rc = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    rc == 1 && buf[0] == b'y'
}

fn store(dir: &Path) -> LocalImageStore {
    LocalImageStore::open(
        dir.to_path_buf(),
        StoreOptions {
            attempts: 2,
            retry_delay: Duration::from_millis(10),
            ..Default::default()
        },
    )
    .unwrap()
}

#[tokio::test]
async fn pulls_match_skopeo_and_umoci() {
    require_tools!();
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let layout = build_layout(work.path());
    let name = format!("{}/test/busybox", reg.addr);
    push(&layout, "v1", &format!("{name}:v1"), None);
    push(&layout, "v2", &format!("{name}:v2"), None);

    let st = store(&work.path().join("store"));
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let started = Instant::now();
    let image = st
        .resolve(
            &format!("{name}:v2"),
            Some(Box::new(move |p| ev.lock().unwrap().push(p))),
        )
        .await
        .unwrap();
    let hangar_time = started.elapsed();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.source.registry, reg.addr);
    assert_eq!(image.source.repository, "test/busybox");
    assert_eq!(image.source.tag, "v2");
    assert!(image.source.digest.starts_with("sha256:"));
    assert_eq!(image.config.cmd, vec!["/bin/sh"]);
    assert!(image.config.env.contains(&"GREETING=hello".to_string()));
    assert_eq!(image.config.working_dir, "/tmp");
    {
        let events = events.lock().unwrap();
        assert!(matches!(
            events.first(),
            Some(PullProgress::Resolved { layers: 2, .. })
        ));
        assert!(
            matches!(events.last(), Some(PullProgress::Done { digest }) if *digest == image.source.digest)
        );
        let done = events
            .iter()
            .filter(|e| matches!(e, PullProgress::LayerDone { cached: false, .. }))
            .count();
        assert_eq!(done, 2);
    }

    // What the reference tools make of the same image.
    let started = Instant::now();
    let copy = work.path().join("copy");
    run(Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--src-tls-verify=false"])
        .arg(format!("docker://{name}:v2"))
        .arg(format!("oci:{}:v2", copy.display())));
    let bundle = work.path().join("reference");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:v2", copy.display()))
        .arg(&bundle));
    let reference_time = started.elapsed();
    eprintln!(
        "pull+unpack of a 2-layer busybox image from loopback: hangar {:?}, skopeo copy + umoci unpack {:?}",
        hangar_time, reference_time
    );

    // The deletions really are overlay whiteouts in the upper layer.
    let whiteout = std::fs::symlink_metadata(image.layers[1].join("etc/removeme")).unwrap();
    assert!(whiteout.file_type().is_char_device() && whiteout.rdev() == 0);

    let ours = merge_layers(&image.layers);
    let theirs = tree(&bundle.join("rootfs"));
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "ours only: {only_ours:?}; theirs only: {only_theirs:?}"
    );
    for (path, node) in &ours {
        assert_eq!(Some(node), theirs.get(path), "{} differs", path.display());
    }
    assert!(!ours.contains_key(Path::new("etc/removeme")));
    assert!(!ours.contains_key(Path::new("doomed/sub/file")));
    assert!(ours.contains_key(Path::new("etc/motd")));

    // v1 shares its layer with v2: it is on disk once and the pull reuses it.
    let v1 = st.resolve(&format!("{name}:v1"), None).await.unwrap();
    assert_eq!(v1.layers[0], image.layers[0]);
    assert_eq!(
        std::fs::read_dir(work.path().join("store/layers"))
            .unwrap()
            .count(),
        2
    );

    // Resolving again is local, by tag and by digest.
    let again = st.resolve(&format!("{name}:v2"), None).await.unwrap();
    assert_eq!(again, image);
    let by_digest = st
        .resolve(&format!("{name}@{}", image.source.digest), None)
        .await
        .unwrap();
    assert_eq!(by_digest.layers, image.layers);

    // Remove and prune: v2's upper layer goes once nothing needs it.
    assert_eq!(st.list().await.unwrap().len(), 2);
    st.remove(&format!("{name}:v2")).await.unwrap();
    assert_eq!(
        st.prune(&[image.layers[1].clone()])
            .await
            .unwrap()
            .bytes_freed,
        0
    );
    let freed = st.prune(&[]).await.unwrap().bytes_freed;
    assert!(freed > 0);
    assert!(!image.layers[1].exists());
    assert!(v1.layers[0].exists());
    assert!(matches!(
        st.remove(&format!("{name}:v2")).await,
        Err(ImageError::NotFound { .. })
    ));
}

#[tokio::test]
async fn concurrent_pulls_unpack_each_layer_once() {
    require_tools!();
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let layout = build_layout(work.path());
    let name = format!("{}/test/busybox", reg.addr);
    push(&layout, "v2", &format!("{name}:v2"), None);
    push(&layout, "v2", &format!("{name}:copy"), None);
    let st = store(&work.path().join("store"));
    let cached = Arc::new(Mutex::new(0));
    let pulls = ["v2", "copy", "v2", "copy"].map(|tag| {
        let st = st.clone();
        let reference = format!("{name}:{tag}");
        let cached = cached.clone();
        tokio::spawn(async move {
            st.resolve(
                &reference,
                Some(Box::new(move |p| {
                    if matches!(p, PullProgress::LayerDone { cached: true, .. }) {
                        *cached.lock().unwrap() += 1;
                    }
                })),
            )
            .await
        })
    });
    let mut layers = Vec::new();
    for p in pulls {
        layers.push(p.await.unwrap().unwrap().layers);
    }
    assert!(layers.iter().all(|l| *l == layers[0]));
    assert_eq!(
        std::fs::read_dir(work.path().join("store/layers"))
            .unwrap()
            .count(),
        2
    );
    assert_eq!(
        std::fs::read_dir(work.path().join("store/tmp"))
            .unwrap()
            .count(),
        0
    );
}

#[tokio::test]
async fn registry_errors_say_what_went_wrong() {
    require_tools!();
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(None);
    let st = store(&work.path().join("store"));
    let missing = format!("{}/test/nothing:v1", reg.addr);
    match st.resolve(&missing, None).await {
        Err(ImageError::NotFound { reference }) => assert_eq!(reference, missing),
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A bare name that is not local is never looked up anywhere.
    assert!(matches!(
        st.resolve("busybox", None).await,
        Err(ImageError::NotFound { reference }) if reference == "busybox:latest"
    ));
    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match st.resolve(&format!("127.0.0.1:{port}/a/b:c"), None).await {
        Err(ImageError::Unreachable { registry, .. }) => {
            assert_eq!(registry, format!("127.0.0.1:{port}"))
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
}

#[tokio::test]
async fn basic_auth_registry() {
    require_tools!();
    let work = tempfile::tempdir().unwrap();
    let reg = Registry::start(Some(("robot", "s3cret-pass")));
    let layout = build_layout(work.path());
    let reference = format!("{}/private/busybox:v1", reg.addr);
    push(&layout, "v1", &reference, Some("robot:s3cret-pass"));

    let st = store(&work.path().join("store"));
    match st.resolve(&reference, None).await {
        Err(ImageError::Unauthorized { registry }) => assert_eq!(registry, reg.addr),
        other => panic!("anonymous pull: expected Unauthorized, got {other:?}"),
    }
    st.set_registry(
        &reg.addr,
        RegistrySettings {
            username: Some("robot".into()),
            password: Some(Secret("wrong".into())),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        st.resolve(&reference, None).await,
        Err(ImageError::Unauthorized { .. })
    ));
    st.set_registry(
        &reg.addr,
        RegistrySettings {
            username: Some("robot".into()),
            password: Some(Secret("s3cret-pass".into())),
            ..Default::default()
        },
    )
    .unwrap();
    let mode = std::fs::metadata(work.path().join("store/registries.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let image = st.resolve(&reference, None).await.unwrap();
    assert_eq!(image.layers.len(), 1);
    assert!(image.layers[0].join("bin/busybox").is_file());
}

#[tokio::test]
async fn imports_oci_and_docker_archives_and_directories() {
    require_tools!();
    let work = tempfile::tempdir().unwrap();
    let layout = build_layout(work.path());
    let st = store(&work.path().join("store"));

    // An OCI layout, tarred.
    let oci_tar = tar_dir(&layout);
    let image = st
        .import("imported:v2", Box::pin(std::io::Cursor::new(oci_tar)))
        .await
        .unwrap();
    assert_eq!(image.reference, "imported:v2");
    assert_eq!(image.source.registry, "local");
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.config.cmd, vec!["/bin/sh"]);

    // A docker-save archive of the same image, from skopeo.
    let docker_tar = work.path().join("docker.tar");
    run(Command::new("skopeo")
        .args(["copy", "--insecure-policy"])
        .arg(format!("oci:{}:v2", layout.display()))
        .arg(format!("docker-archive:{}:saved:v2", docker_tar.display())));
    let bytes = std::fs::read(&docker_tar).unwrap();
    let saved = st
        .import("saved", Box::pin(std::io::Cursor::new(bytes)))
        .await
        .unwrap();
    assert_eq!(saved.reference, "saved:latest");
    assert_eq!(saved.layers, image.layers, "same layers, stored once");

    // A root filesystem directory, and the same tree as a gzip-compressed tar.
    let rootfs = work.path().join("bundle1/rootfs");
    let from_dir = st.import_dir("fromdir", &rootfs).await.unwrap();
    assert_eq!(from_dir.layers.len(), 1);
    assert_eq!(tree(&from_dir.layers[0]), tree(&rootfs));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar_dir(&rootfs)).unwrap();
    let gz_image = st
        .import(
            "fromgz:1",
            Box::pin(std::io::Cursor::new(gz.finish().unwrap())),
        )
        .await
        .unwrap();
    assert_eq!(tree(&gz_image.layers[0]), tree(&rootfs));
    assert_eq!(st.list().await.unwrap().len(), 4);
    assert_eq!(
        std::fs::read_dir(work.path().join("store/tmp"))
            .unwrap()
            .count(),
        0
    );
}

fn tar_dir(dir: &Path) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", dir).unwrap();
    b.into_inner().unwrap()
}

#[tokio::test]
async fn base_image_script_builds_a_pullable_busybox() {
    require_tools!();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-base-images.sh");
    let reg = Registry::start(None);
    run(Command::new("sh")
        .arg(&script)
        .arg(&reg.addr)
        .arg("busybox"));
    let work = tempfile::tempdir().unwrap();
    let st = store(&work.path().join("store"));
    let image = st
        .resolve(&format!("{}/hangar/busybox:latest", reg.addr), None)
        .await
        .unwrap();
    let merged = merge_layers(&image.layers);
    assert!(matches!(
        merged.get(Path::new("bin/busybox")),
        Some(Node::File { .. })
    ));
    assert_eq!(
        merged.get(Path::new("bin/sh")),
        Some(&Node::Symlink("../bin/busybox".into()))
    );
    assert_eq!(image.config.cmd, vec!["/bin/sh"]);
}

/// `skopeo copy` of `docker://reference` into a fresh OCI layout, then `umoci unpack`:
/// the merged root filesystem as the reference tools see it.
fn reference_unpack(work: &Path, reference: &str, name: &str) -> BTreeMap<PathBuf, Node> {
    let copy = work.join(format!("{name}-layout"));
    run(Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:t", copy.display())));
    let bundle = work.join(format!("{name}-bundle"));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", copy.display()))
        .arg(&bundle));
    tree(&bundle.join("rootfs"))
}

fn assert_same_tree(ours: &BTreeMap<PathBuf, Node>, theirs: &BTreeMap<PathBuf, Node>) {
    let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
    assert!(
        only_ours.is_empty() && only_theirs.is_empty(),
        "ours only: {only_ours:?}; theirs only: {only_theirs:?}"
    );
    for (path, node) in ours {
        assert_eq!(Some(node), theirs.get(path), "{} differs", path.display());
    }
}

#[tokio::test]
async fn pushes_come_out_as_skopeo_and_umoci_see_the_original() {
    require_tools!();
    let work = tempfile::tempdir().unwrap();
    let source = Registry::start(None);
    let dest = Registry::start(Some(("robot", "s3cret-pass")));
    let layout = build_layout(work.path());
    let name = format!("{}/test/busybox", source.addr);
    push(&layout, "v2", &format!("{name}:v2"), None);

    let st = store(&work.path().join("store"));
    let image = st.resolve(&format!("{name}:v2"), None).await.unwrap();
    let pushed = format!("{}/copies/busybox:pushed", dest.addr);

    // Not logged in, then logged in.
    match st.push(&format!("{name}:v2"), Some(&pushed)).await {
        Err(ImageError::Unauthorized { registry }) => assert_eq!(registry, dest.addr),
        other => panic!("anonymous push: expected Unauthorized, got {other:?}"),
    }
    st.set_registry(
        &dest.addr,
        RegistrySettings {
            username: Some("robot".into()),
            password: Some(Secret("s3cret-pass".into())),
            ..Default::default()
        },
    )
    .unwrap();
    let result = st.push(&format!("{name}:v2"), Some(&pushed)).await.unwrap();
    assert_eq!(result.reference, pushed);
    assert_eq!(result.layers, 2);
    assert_eq!(result.layers_present, 0);
    assert!(result.bytes_uploaded > 0);

    // skopeo + umoci see exactly the image hangar had, whiteouts applied.
    let theirs = {
        let copy = work.path().join("pushed-layout");
        run(Command::new("skopeo")
            .args([
                "copy",
                "--insecure-policy",
                "--src-tls-verify=false",
                "--src-creds",
                "robot:s3cret-pass",
            ])
            .arg(format!("docker://{pushed}"))
            .arg(format!("oci:{}:t", copy.display())));
        let bundle = work.path().join("pushed-bundle");
        run(Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:t", copy.display()))
            .arg(&bundle));
        tree(&bundle.join("rootfs"))
    };
    let ours = merge_layers(&image.layers);
    assert_same_tree(&ours, &theirs);
    assert_same_tree(
        &ours,
        &reference_unpack(work.path(), &format!("{name}:v2"), "orig"),
    );
    assert!(!theirs.contains_key(Path::new("etc/removeme")));

    // Pushing again sends nothing new and names the same manifest.
    let again = st.push(&format!("{name}:v2"), Some(&pushed)).await.unwrap();
    assert_eq!(again.digest, result.digest);
    assert_eq!(again.layers_present, 2);
    assert_eq!(again.bytes_uploaded, 0);

    // A second store pulls it back with the same defaults and the same files.
    let st2 = store(&work.path().join("store2"));
    st2.set_registry(
        &dest.addr,
        RegistrySettings {
            username: Some("robot".into()),
            password: Some(Secret("s3cret-pass".into())),
            ..Default::default()
        },
    )
    .unwrap();
    let back = st2.resolve(&pushed, None).await.unwrap();
    assert_eq!(back.source.digest, result.digest);
    assert_eq!(back.config, image.config);
    assert_same_tree(&merge_layers(&back.layers), &ours);

    // Errors: no such local image, a destination without a registry, nobody listening.
    assert!(matches!(
        st.push(&format!("{name}:nope"), Some(&pushed)).await,
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        st.push(&format!("{name}:v2"), Some("just/a-name:v1")).await,
        Err(ImageError::InvalidReference(_))
    ));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    match st
        .push(
            &format!("{name}:v2"),
            Some(&format!("127.0.0.1:{port}/a/b:c")),
        )
        .await
    {
        Err(ImageError::Unreachable { registry, .. }) => {
            assert_eq!(registry, format!("127.0.0.1:{port}"))
        }
        other => panic!("expected Unreachable, got {other:?}"),
    }
    // The push left nothing behind in the store's work area.
    assert_eq!(
        std::fs::read_dir(work.path().join("store/tmp"))
            .unwrap()
            .count(),
        0
    );
}
