//! A real OCI registry for black-box tests: Debian's `docker-registry` on a free
//! loopback port (plain, or with htpasswd basic auth), and images pushed into it by
//! `skopeo` from OCI layouts built with `umoci`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "busybox"];

/// Why the registry tests cannot run here, if they cannot.
pub fn missing_tools() -> Option<String> {
    TOOLS
        .iter()
        .find(|b| which(b).is_none())
        .map(|b| format!("skipped: {b} is not installed (scripts/install-deps installs it)"))
}

pub fn which(bin: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// A `docker-registry` on a free loopback port, killed on drop.
pub struct Registry {
    child: Option<Child>,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start(credentials: Option<(&str, &str)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("hangar-registry-")
            .tempdir()
            .unwrap();
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
            child: Some(child),
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
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
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

    /// The registry's storage directory (`docker/registry/v2/...`), for tests that
    /// tamper with what it serves.
    pub fn storage(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    /// Kills the registry now; its address then refuses connections.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
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

/// An OCI layout under `work` with tag `v1` (a busybox root) and `v2` (v1 plus a
/// layer that deletes `/etc/removeme` and `/doomed`, replaces a file in
/// `/var/cache/app` and adds `/etc/motd`). Returns the layout directory.
pub fn build_layout(work: &Path) -> PathBuf {
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
    for d in [
        "bin",
        "etc",
        "tmp",
        "root",
        "proc",
        "sys",
        "dev",
        "var/cache/app",
        "doomed/sub",
    ] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::copy(which("busybox").unwrap(), rootfs.join("bin/busybox")).unwrap();
    let list = Command::new("busybox").arg("--list").output().unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(rootfs.join("etc/group"), "root:x:0:\n").unwrap();
    std::fs::write(rootfs.join("etc/removeme"), "bye\n").unwrap();
    std::fs::write(rootfs.join("var/cache/app/old"), "old\n").unwrap();
    std::fs::write(rootfs.join("doomed/sub/file"), "x\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .arg(&bundle));
    run(Command::new("umoci")
        .args(["config", "--image"])
        .arg(format!("{}:v1", layout.display()))
        .args(["--config.cmd", "/bin/sh", "--config.env", "GREETING=hello"]));

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

/// `skopeo copy` of `layout:tag` to `docker://dest`.
pub fn push(layout: &Path, tag: &str, dest: &str, creds: Option<&str>) {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--insecure-policy", "--dest-tls-verify=false"]);
    if let Some(c) = creds {
        cmd.args(["--dest-creds", c]);
    }
    cmd.arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"));
    run(&mut cmd);
}
