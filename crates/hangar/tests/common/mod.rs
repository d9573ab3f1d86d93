//! Starts the real `hangar serve` on port 0 in a temporary data dir, and builds a
//! busybox image from Debian's busybox-static to run in it.
//!
//! Everything a test creates is removed when its [`Daemon`] is dropped: machines are
//! destroyed through the API (they outlive the daemon by design), then the daemon is
//! stopped and its data dir deleted.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hangar_client::Client;
use hangar_types::{CreateMachineRequest, MachineConfig, MachineExecRequest, MachineInit};

pub const BIN: &str = env!("CARGO_BIN_EXE_hangar");

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub api: String,
    pub token: String,
    /// Extra environment for `hangar serve` (its flags' env twins).
    pub env: Vec<(String, String)>,
    /// The edge proxy's plain HTTP and HTTPS addresses.
    pub proxy: String,
    pub proxy_tls: String,
}

/// Skips (returning true) when the test cannot run here, saying why.
pub fn skip_unless_root() -> bool {
    if nix_is_root() {
        return false;
    }
    eprintln!("skipped: needs root for namespaces, cgroups and mounts");
    true
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with_env(&[])
    }

    /// Like [`Daemon::start`], with `hangar serve` given extra environment.
    pub fn start_with_env(env: &[(&str, &str)]) -> Daemon {
        // The tests' HTTP clients (reqwest, with rustls for HTTPS through the proxy)
        // take the process's crypto provider, as the daemon's own do.
        hangar_proxy::tls::install_crypto_provider();
        let dir = tempfile::Builder::new()
            .prefix("hangar-test-")
            .tempdir()
            .expect("temp dir");
        let mut daemon = Daemon {
            dir,
            child: None,
            api: String::new(),
            token: String::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            proxy: String::new(),
            proxy_tls: String::new(),
        };
        daemon.spawn();
        daemon
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts `hangar serve` on the data dir and waits for its address line.
    pub fn spawn(&mut self) {
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--api-listen",
                "127.0.0.1:0",
                "--proxy-listen",
                "127.0.0.1:0",
                "--proxy-tls-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(self.dir.path())
            .env("HANGAR_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting hangar serve");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut api, mut proxy, mut proxy_tls) = (None, None, None);
        while api.is_none() || proxy.is_none() || proxy_tls.is_none() {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("api listening on ") {
                        api = Some(addr.to_string());
                    } else if let Some(addr) = line.strip_prefix("proxy listening on ") {
                        proxy = Some(addr.to_string());
                    } else if let Some(addr) = line.strip_prefix("proxy tls listening on ") {
                        proxy_tls = Some(addr.to_string());
                    }
                }
                _ => {
                    let status = child.wait().expect("waiting for hangar serve");
                    panic!("hangar serve exited before listening: {status}");
                }
            }
        }
        let api = api.expect("api address");
        self.proxy = proxy.expect("proxy address");
        self.proxy_tls = proxy_tls.expect("proxy tls address");
        // Keep draining stdout so the daemon never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.token = std::fs::read_to_string(self.dir.path().join("root-token"))
            .expect("root token")
            .trim()
            .to_string();
        self.api = api;
        self.child = Some(child);
    }

    /// SIGKILL: the daemon gets no chance to tidy up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.api, &self.token)
    }

    /// The CLI, pointed at this daemon.
    pub fn cli(&self) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.env("HANGAR_API", &self.api)
            .env("HANGAR_TOKEN", &self.token);
        cmd
    }

    /// Imports a busybox image as `reference` with the CLI.
    pub fn import_busybox(&self, reference: &str) {
        let rootfs = busybox_rootfs();
        let out = self
            .cli()
            .args(["image", "import"])
            .arg(rootfs.path())
            .args(["--tag", reference])
            .output()
            .expect("running hangar image import");
        assert!(
            out.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn cleanup(&mut self) {
        if self.child.is_none() {
            return;
        }
        let client = self.client();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(apps) = client.list_apps().await {
                    for app in apps.apps {
                        let _ = client.delete_app(&app.name).await;
                    }
                }
            });
        });
        let _ = cleanup.join();
        if let Some(child) = self.child.take() {
            let pid = child.id() as i32;
            // SAFETY: plain kill(2) on our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let mut child = child;
            let _ = child.wait();
        }
        // The bridge and firewall tables outlive the daemon by design (machines keep
        // running); with every machine gone, remove them too.
        hangar_net::remove_installation(self.dir.path());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.cleanup();
        release_mounts(self.dir.path());
    }
}

/// Unmounts whatever is mounted under `dir` and detaches its loop devices.
pub fn release_mounts(dir: &Path) {
    hangar_runtime::teardown::release_mounts(dir);
}

/// A root filesystem with Debian's static busybox and its applets.
pub fn busybox_rootfs() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("hangar-busybox-")
        .tempdir()
        .expect("temp dir");
    let root = dir.path();
    for sub in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    let busybox = PathBuf::from("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox-static is not installed (scripts/install-deps installs it)"
    );
    std::fs::copy(&busybox, root.join("bin/busybox")).unwrap();
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    dir
}

/// Waits for a condition the API cannot wait on for us, polling with a deadline.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A config running `argv` in the busybox image `import_busybox` stores.
pub fn busybox(argv: &[&str]) -> MachineConfig {
    MachineConfig {
        image: "busybox:latest".into(),
        init: Some(MachineInit {
            exec: Some(argv.iter().map(|a| a.to_string()).collect()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A daemon with the busybox image and the app `app`, or `None` when the test cannot
/// run here (it says why).
pub async fn setup(app: &str) -> Option<(Daemon, Client)> {
    if skip_unless_root() {
        return None;
    }
    let daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    let client = daemon.client();
    client.create_app(app, None).await.unwrap();
    Some((daemon, client))
}

/// Creates (and so starts) a machine in `app`; returns its id.
pub async fn launch(client: &Client, app: &str, config: MachineConfig) -> String {
    let req = CreateMachineRequest {
        config,
        ..Default::default()
    };
    client.create_machine(app, &req).await.unwrap().id
}

/// Runs a shell script in the machine; panics unless it exits 0. Returns stdout.
pub async fn sh(client: &Client, app: &str, id: &str, script: &str) -> String {
    let argv = vec!["sh".to_string(), "-c".to_string(), script.to_string()];
    let req = MachineExecRequest {
        command: Some(argv),
        ..Default::default()
    };
    let out = client.exec(app, id, &req).await.unwrap();
    assert_eq!(
        out.exit_code, 0,
        "{script}: stdout {:?} stderr {:?}",
        out.stdout, out.stderr
    );
    out.stdout
}
