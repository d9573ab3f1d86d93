//! The sandbox driver for real: namespaces, cgroups, overlay, init, as root.
//!
//! This binary is also the boot helper the driver re-executes, hence its own `main`
//! (`harness = false`). Tests run concurrently, each with its own state directory
//! (so its own cgroup parent) and machine ids, and remove everything they create.
//! Pass a substring to run only matching tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_core::MachineId;
use hangar_core::driver::{
    Driver, DriverError, DriverEvent, ExecSpec, ExitStatus, GuestFile, Observed, ProcessSpec,
    Resources, SandboxSpec,
};
use hangar_runtime::sandbox::{self, SandboxConfig, SandboxDriver};
use tokio::sync::broadcast;

type TestFn = fn(Arc<Env>) -> Pin<Box<dyn Future<Output = ()> + Send>>;

macro_rules! tests {
    ($($name:ident),* $(,)?) => {
        [$((stringify!($name), (|env| Box::pin($name(env))) as TestFn)),*]
    };
}

fn main() {
    sandbox::run_if_requested();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipping sandbox tests: they need root");
        return;
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.contains("overlay") {
        println!("skipping sandbox tests: the kernel has no overlayfs");
        return;
    }
    if !Path::new("/bin/busybox").exists() {
        println!("skipping sandbox tests: /bin/busybox (busybox-static) is missing");
        return;
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let all = tests![
        lifecycle,
        exit_codes_and_signals_propagate,
        stop_kills_what_ignores_the_signal,
        memory_limit_oom_kills,
        readopts_after_a_restart,
        failed_create_leaves_nothing,
        suspend_and_resume,
        ps_lists_listeners,
        exec_as_another_user,
        update_resources_writes_limits,
    ];
    let env = Arc::new(Env::new());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let failures = rt.block_on(async {
        let mut handles = Vec::new();
        for (name, f) in all {
            if !filter.is_empty() && !filter.iter().any(|p| name.contains(p.as_str())) {
                continue;
            }
            handles.push((name, tokio::spawn(f(env.clone()))));
        }
        let mut failures = 0;
        for (name, h) in handles {
            match h.await {
                Ok(()) => println!("test {name} ... ok"),
                Err(e) => {
                    failures += 1;
                    println!("test {name} ... FAILED: {e}");
                }
            }
        }
        failures
    });
    println!(
        "sandbox tests: {failures} failed, finished in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    if failures > 0 {
        std::process::exit(1);
    }
}

/// A busybox root file system shared (read-only) by every test's machines.
struct Env {
    layer: tempfile::TempDir,
}

impl Env {
    fn new() -> Env {
        let layer = tempfile::tempdir().unwrap();
        let root = layer.path();
        for d in ["bin", "etc", "root", "tmp", "home/app", "var/www"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            if applet != "busybox" && !applet.is_empty() {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
        }
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\nwheel:x:10:app\napp:x:1000:\nnogroup:x:65534:\n",
        )
        .unwrap();
        Env { layer }
    }

    fn spec(&self, id: &MachineId) -> SandboxSpec {
        SandboxSpec {
            machine_id: id.clone(),
            layers: vec![self.layer.path().to_path_buf()],
            resources: Resources::default(),
            mounts: vec![],
            network: None,
        }
    }
}

/// A driver on a fresh state directory.
struct TestDriver {
    driver: SandboxDriver,
    state: tempfile::TempDir,
}

impl TestDriver {
    fn new() -> TestDriver {
        let state = tempfile::tempdir().unwrap();
        TestDriver {
            driver: new_driver(state.path()),
            state,
        }
    }
}

impl Drop for TestDriver {
    fn drop(&mut self) {
        scrub(&self.driver);
    }
}

/// Kills and removes whatever machines a failed test left in the driver's cgroups.
fn scrub(d: &SandboxDriver) {
    let probe = MachineId::parse("00000000000000").unwrap();
    for dir in d.cgroup_dirs(&probe) {
        let Some(parent) = dir.parent() else { continue };
        let Ok(entries) = std::fs::read_dir(parent) else {
            continue;
        };
        for machine in entries.flatten().filter(|e| e.path().is_dir()) {
            let path = machine.path();
            let _ = std::fs::write(path.join("freezer.state"), "THAWED");
            let _ = std::fs::write(path.join("cgroup.freeze"), "0");
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
                if procs.trim().is_empty() {
                    break;
                }
                for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = std::fs::remove_dir(&path);
        }
        let _ = std::fs::remove_dir(parent);
    }
}

fn new_driver(state: &Path) -> SandboxDriver {
    SandboxDriver::new(SandboxConfig {
        state_dir: state.to_path_buf(),
        boot_exe: std::env::current_exe().unwrap(),
        storage: hangar_runtime::sandbox::StorageMode::Plain,
    })
    .unwrap()
}

fn process(argv: &[&str]) -> ProcessSpec {
    ProcessSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec!["PATH=/bin".into(), "GREETING=hello".into()],
        ..ProcessSpec::default()
    }
}

fn exec_spec(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(20),
        ..ExecSpec::default()
    }
}

async fn run(d: &SandboxDriver, id: &MachineId, argv: &[&str]) -> String {
    let out = d.exec(id, &exec_spec(argv)).await.unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

async fn next_exit(rx: &mut broadcast::Receiver<DriverEvent>, id: &MachineId) -> ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(DriverEvent::Exited { machine_id, status })) if &machine_id == id => {
                return status;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event channel: {e}"),
            Err(_) => panic!("no exit event for {id}"),
        }
    }
}

/// Waits until `file` contains `needle`. The log has no event to wait on, so this
/// polls, bounded by a deadline.
async fn wait_for_log(file: &Path, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{needle:?} not in log:\n{text}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Asserts that nothing of the machine is left on the host.
fn assert_gone(d: &SandboxDriver, id: &MachineId, init_pid: Option<i32>) {
    for dir in d.cgroup_dirs(id) {
        assert!(!dir.exists(), "cgroup {} is left", dir.display());
    }
    let machine_dir = d.state_dir().join(id.as_str());
    assert!(!machine_dir.exists(), "{} is left", machine_dir.display());
    if let Some(pid) = init_pid {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "init {pid} still runs: {stat}"
        );
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let needle = machine_dir.to_string_lossy().into_owned();
    assert!(!mounts.contains(&needle), "a mount mentions {needle}");
}

async fn lifecycle(env: Arc<Env>) {
    let t = TestDriver::new();
    let d = &t.driver;
    let id = MachineId::generate();
    let mut events = d.subscribe();
    d.create(&env.spec(&id)).await.unwrap();
    d.create(&env.spec(&id)).await.unwrap();
    assert_eq!(d.list().await.unwrap(), vec![id.clone()]);
    assert_eq!(
        d.observe(&id).await.unwrap(),
        Observed::Idle { last_exit: None }
    );

    d.start(
        &id,
        &process(&["sh", "-c", "echo hi; echo $GREETING >&2; sleep 1000"]),
    )
    .await
    .unwrap();
    assert!(matches!(
        d.observe(&id).await.unwrap(),
        Observed::Running { .. }
    ));
    assert!(matches!(
        d.start(&id, &process(&["true"])).await,
        Err(DriverError::AlreadyRunning(_))
    ));
    wait_for_log(&d.log_path(&id), r#""stream":"stdout","message":"hi""#).await;
    wait_for_log(&d.log_path(&id), r#""stream":"stderr","message":"hello""#).await;

    assert_eq!(run(d, &id, &["id", "-u"]).await, "0\n");
    assert_eq!(run(d, &id, &["hostname"]).await.trim(), id.as_str());
    assert!(
        run(d, &id, &["cat", "/proc/1/cmdline"])
            .await
            .starts_with("hangar-init\0")
    );
    // exec inherits the main process's environment.
    assert_eq!(
        run(d, &id, &["sh", "-c", "echo $GREETING"]).await,
        "hello\n"
    );

    let status = run(d, &id, &["cat", "/proc/self/status"]).await;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{name} missing in {status}"))
    };
    assert_eq!(
        u64::from_str_radix(&field("CapEff:"), 16).unwrap(),
        SandboxDriver::kept_capabilities()
    );
    assert_eq!(
        u64::from_str_radix(&field("CapBnd:"), 16).unwrap(),
        SandboxDriver::kept_capabilities()
    );
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2");
    // The filter refuses new namespaces even to root.
    let unshare = d
        .exec(&id, &exec_spec(&["unshare", "-n", "true"]))
        .await
        .unwrap();
    assert!(!unshare.status.success());

    // Init's descriptors (control socket, host log file) are out of reach.
    for fd in 0..8 {
        let path = format!("/proc/1/fd/{fd}");
        let peek = d.exec(&id, &exec_spec(&["readlink", &path])).await.unwrap();
        assert!(
            !peek.status.success(),
            "{path} -> {:?}",
            String::from_utf8_lossy(&peek.stdout)
        );
        let script = format!("echo forged >> {path}");
        let write = d
            .exec(&id, &exec_spec(&["sh", "-c", &script]))
            .await
            .unwrap();
        assert!(!write.status.success(), "{path} is writable");
    }

    let mut cat = exec_spec(&["cat"]);
    cat.stdin = b"to stdin".to_vec();
    assert_eq!(d.exec(&id, &cat).await.unwrap().stdout, b"to stdin");

    let mut slow = exec_spec(&["sh", "-c", "sleep 1000; echo never"]);
    slow.timeout = Duration::from_millis(300);
    let started = Instant::now();
    let out = d.exec(&id, &slow).await.unwrap();
    assert!(out.timed_out);
    assert_eq!(out.status.signal, Some(libc::SIGKILL));
    assert!(started.elapsed() < Duration::from_secs(10));

    match d.exec(&id, &exec_spec(&["no-such-binary"])).await {
        Err(DriverError::InvalidCommand(m)) => assert!(m.contains("no-such-binary"), "{m}"),
        other => panic!("{other:?}"),
    }

    // Only the machine's own processes and mounts are visible.
    let pids: Vec<i64> = d.ps(&id).await.unwrap().iter().map(|p| p.pid).collect();
    assert!(pids.contains(&1), "{pids:?}");
    assert!(pids.len() < 10, "{pids:?}");
    let host_pid = std::process::id().to_string();
    let proc_list = run(d, &id, &["ls", "/proc"]).await;
    assert!(!proc_list.lines().any(|l| l == host_pid));
    let mounts = run(d, &id, &["cat", "/proc/self/mountinfo"]).await;
    assert!(!mounts.contains("/sys/fs/cgroup"), "{mounts}");
    // The only mount point is the machine's own tree: none is a host directory.
    let here = std::env::current_dir().unwrap();
    let cwd = format!(" {} ", here.display());
    assert!(!mounts.contains(&cwd), "{mounts}");
    let ifaces = run(d, &id, &["ls", "/sys/class/net"]).await;
    assert_eq!(ifaces.split_whitespace().collect::<Vec<_>>(), ["lo"]);
    assert!(run(d, &id, &["ls", "/dev"]).await.contains("urandom"));

    // The writable layer survives stop and start.
    run(d, &id, &["sh", "-c", "echo persisted > /root/kept"]).await;
    let stopped = d
        .stop(&id, libc::SIGTERM, Duration::from_secs(10))
        .await
        .unwrap()
        .expect("a process was running");
    assert_eq!(stopped.signal, Some(libc::SIGTERM));
    assert_eq!(stopped.code, 128 + libc::SIGTERM);
    assert_eq!(next_exit(&mut events, &id).await, stopped);
    assert_eq!(
        d.observe(&id).await.unwrap(),
        Observed::Idle {
            last_exit: Some(stopped)
        }
    );
    assert_eq!(
        d.stop(&id, libc::SIGTERM, Duration::from_secs(1))
            .await
            .unwrap(),
        None
    );
    let mut with_file = process(&["sleep", "1000"]);
    with_file.files = vec![GuestFile {
        path: "/etc/app/config".into(),
        contents: b"setting=1\n".to_vec(),
        mode: 0o600,
    }];
    d.start(&id, &with_file).await.unwrap();
    assert_eq!(run(d, &id, &["cat", "/root/kept"]).await, "persisted\n");
    assert_eq!(
        run(d, &id, &["stat", "-c", "%a", "/etc/app/config"]).await,
        "600\n"
    );

    let init_pid = d.init_host_pid(&id);
    assert!(init_pid.is_some());
    d.destroy(&id).await.unwrap();
    d.destroy(&id).await.unwrap();
    assert_gone(d, &id, init_pid);
    assert_eq!(d.observe(&id).await.unwrap(), Observed::Absent);
    assert!(d.list().await.unwrap().is_empty());
}

async fn exit_codes_and_signals_propagate(env: Arc<Env>) {
    let t = TestDriver::new();
    let d = &t.driver;
    let id = MachineId::generate();
    let mut events = d.subscribe();
    d.create(&env.spec(&id)).await.unwrap();

    d.start(&id, &process(&["sh", "-c", "echo bye; exit 7"]))
        .await
        .unwrap();
    let status = next_exit(&mut events, &id).await;
    assert_eq!(
        (status.code, status.signal, status.oom_killed),
        (7, None, false)
    );
    wait_for_log(&d.log_path(&id), r#""stream":"init""#).await;

    d.start(&id, &process(&["sleep", "1000"])).await.unwrap();
    d.signal(&id, libc::SIGUSR1).await.unwrap();
    let status = next_exit(&mut events, &id).await;
    assert_eq!(status.signal, Some(libc::SIGUSR1));
    assert_eq!(status.code, 128 + libc::SIGUSR1);
    assert!(matches!(
        d.signal(&id, libc::SIGTERM).await,
        Err(DriverError::NotRunning(_))
    ));

    match d.start(&id, &process(&["/no/such/program"])).await {
        Err(DriverError::InvalidCommand(m)) => assert!(m.contains("/no/such/program"), "{m}"),
        other => panic!("{other:?}"),
    }
    d.destroy(&id).await.unwrap();
    assert_gone(d, &id, None);
}

async fn stop_kills_what_ignores_the_signal(env: Arc<Env>) {
    let t = TestDriver::new();
    let d = &t.driver;
    let id = MachineId::generate();
    d.create(&env.spec(&id)).await.unwrap();
    d.start(
        &id,
        &process(&["sh", "-c", "trap '' TERM; sleep 1000 & sleep 1000; wait"]),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let status = d
        .stop(&id, libc::SIGTERM, Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal, Some(libc::SIGKILL));
    assert!(started.elapsed() < Duration::from_secs(5));
    // Nothing but init is left.
    let ps = d.ps(&id).await.unwrap();
    assert_eq!(ps.len(), 1, "{ps:?}");
    d.destroy(&id).await.unwrap();
}

async fn memory_limit_oom_kills(env: Arc<Env>) {
    let t = TestDriver::new();
    let d = &t.driver;
    let id = MachineId::generate();
    let mut events = d.subscribe();
    let mut spec = env.spec(&id);
    spec.resources.memory_mb = 32;
    d.create(&spec).await.unwrap();
    // tail keeps the whole (endless) last line in memory.
    d.start(&id, &process(&["tail", "/dev/zero"]))
        .await
        .unwrap();
    let status = next_exit(&mut events, &id).await;
    assert_eq!(status.signal, Some(libc::SIGKILL), "{status:?}");
    assert!(status.oom_killed, "{status:?}");
    d.destroy(&id).await.unwrap();
    assert_gone(d, &id, None);
}

async fn readopts_after_a_restart(env: Arc<Env>) {
    let mut t = TestDriver::new();
    let id = MachineId::generate();
    t.driver.create(&env.spec(&id)).await.unwrap();
    t.driver
        .start(&id, &process(&["sleep", "1000"]))
        .await
        .unwrap();
    let init_pid = t.driver.init_host_pid(&id);
    // A new driver on the same state, like a daemon that exited or was killed and
    // came back; the old one (and its watch connections) goes away.
    t.driver = new_driver(t.state.path());
    let d = &t.driver;
    let mut events = d.subscribe();
    assert_eq!(d.list().await.unwrap(), vec![id.clone()]);
    assert!(matches!(
        d.observe(&id).await.unwrap(),
        Observed::Running { .. }
    ));
    assert_eq!(d.init_host_pid(&id), init_pid);
    assert_eq!(run(d, &id, &["echo", "still here"]).await, "still here\n");
    d.signal(&id, libc::SIGTERM).await.unwrap();
    assert_eq!(
        next_exit(&mut events, &id).await.signal,
        Some(libc::SIGTERM)
    );
    d.destroy(&id).await.unwrap();
    assert_gone(d, &id, init_pid);
}

async fn failed_create_leaves_nothing(env: Arc<Env>) {
    let t = TestDriver::new();
    let id = MachineId::generate();
    let mut spec = env.spec(&id);
    spec.layers = vec![PathBuf::from("/no/such/layer")];
    assert!(t.driver.create(&spec).await.is_err());
    assert_gone(&t.driver, &id, None);

    // A boot that fails after cgroups and directories exist.
    let broken = SandboxDriver::new(SandboxConfig {
        state_dir: t.state.path().to_path_buf(),
        boot_exe: PathBuf::from("/no/such/helper"),
        storage: hangar_runtime::sandbox::StorageMode::Plain,
    })
    .unwrap();
    assert!(broken.create(&env.spec(&id)).await.is_err());
    assert_gone(&broken, &id, None);

    // A root file system without the command: start fails cleanly, the sandbox stays.
    let spec = SandboxSpec {
        layers: vec![env.layer.path().join("etc")],
        ..env.spec(&id)
    };
    t.driver.create(&spec).await.unwrap();
    let err = t
        .driver
        .start(&id, &process(&["sh", "-c", "true"]))
        .await
        .unwrap_err();
    assert!(matches!(err, DriverError::InvalidCommand(_)), "{err:?}");
    t.driver.destroy(&id).await.unwrap();
    assert_gone(&t.driver, &id, None);
}

async fn suspend_and_resume(env: Arc<Env>) {
    let t = TestDriver::new();
    let d = &t.driver;
    let id = MachineId::generate();
    d.create(&env.spec(&id)).await.unwrap();
    d.start(&id, &process(&["sleep", "1000"])).await.unwrap();
    d.suspend(&id).await.unwrap();
    assert_eq!(d.observe(&id).await.unwrap(), Observed::Frozen);
    assert!(d.exec(&id, &exec_spec(&["true"])).await.is_err());
    d.resume(&id).await.unwrap();
    assert!(matches!(
        d.observe(&id).await.unwrap(),
        Observed::Running { .. }
    ));
    // Destroying a frozen machine works too.
    d.suspend(&id).await.unwrap();
    d.destroy(&id).await.unwrap();
    assert_gone(d, &id, None);
}

async fn ps_lists_listeners(env: Arc<Env>) {
    let t = TestDriver::new();
    let d = &t.driver;
    let id = MachineId::generate();
    d.create(&env.spec(&id)).await.unwrap();
    d.start(
        &id,
        &process(&["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/var/www"]),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ps = d.ps(&id).await.unwrap();
        if let Some(httpd) = ps.iter().find(|p| p.command.starts_with("httpd"))
            && httpd.listen_sockets == [("tcp".to_string(), "127.0.0.1:8080".to_string())]
        {
            assert!(httpd.rss_bytes > 0);
            assert_eq!(httpd.cwd, "/var/www");
            break;
        }
        assert!(Instant::now() < deadline, "{ps:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    d.destroy(&id).await.unwrap();
}

async fn exec_as_another_user(env: Arc<Env>) {
    let t = TestDriver::new();
    let d = &t.driver;
    let id = MachineId::generate();
    d.create(&env.spec(&id)).await.unwrap();
    let mut as_app = exec_spec(&["sh", "-c", "id -u; id -G; echo $HOME; pwd"]);
    as_app.user = "app".into();
    as_app.cwd = "/tmp".into();
    let out = d.exec(&id, &as_app).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "1000\n1000 10\n/home/app\n/tmp\n"
    );
    let status = run(d, &id, &["sh", "-c", "echo"]).await;
    assert_eq!(status, "\n");
    let mut unknown = exec_spec(&["true"]);
    unknown.user = "nosuchuser".into();
    assert!(matches!(
        d.exec(&id, &unknown).await,
        Err(DriverError::InvalidCommand(_))
    ));
    d.destroy(&id).await.unwrap();
}

async fn update_resources_writes_limits(env: Arc<Env>) {
    let t = TestDriver::new();
    let d = &t.driver;
    let id = MachineId::generate();
    d.create(&env.spec(&id)).await.unwrap();
    d.update_resources(
        &id,
        Resources {
            cpus: 2,
            memory_mb: 100,
            pids_max: 77,
        },
    )
    .await
    .unwrap();
    let read_any = |names: &[&str]| -> String {
        d.cgroup_dirs(&id)
            .iter()
            .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
            .find_map(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    assert_eq!(read_any(&["pids.max"]).trim(), "77");
    assert_eq!(
        read_any(&["memory.max", "memory.limit_in_bytes"]).trim(),
        (100u64 << 20).to_string()
    );
    let cpu = read_any(&["cpu.max", "cpu.cfs_quota_us"]);
    assert!(cpu.starts_with("200000"), "{cpu}");
    assert_eq!(run(d, &id, &["sh", "-c", "echo ok"]).await, "ok\n");
    d.destroy(&id).await.unwrap();
}
