//! Latency of the sandbox driver's hot paths, as root:
//! `cargo run --release -p hangar-runtime --example sandbox_bench [RUNS]`.
//!
//! Prints create, start (idle sandbox to main process executed), exec `true`
//! round trip and stop, as median and p99 over RUNS (default 200), and the resident
//! memory of an idle init. The example is its own boot helper.

use std::path::Path;
use std::time::{Duration, Instant};

use hangar_core::MachineId;
use hangar_core::driver::{Driver, ExecSpec, ProcessSpec, Resources, SandboxSpec};
use hangar_runtime::sandbox::{self, SandboxConfig, SandboxDriver};

fn main() {
    sandbox::run_if_requested();
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench(runs));
}

fn busybox_layer(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "true"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<28} p50 {:>8.3} ms   p99 {:>8.3} ms   (n={})",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.len()
    );
}

fn vm_rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn bench(runs: usize) {
    let layer = tempfile::tempdir().unwrap();
    busybox_layer(layer.path());
    let state = tempfile::tempdir().unwrap();
    let driver = SandboxDriver::new(SandboxConfig {
        state_dir: state.path().to_path_buf(),
        boot_exe: std::env::current_exe().unwrap(),
        storage: hangar_runtime::sandbox::StorageMode::Plain,
    })
    .unwrap();
    let spec = |id: &MachineId| SandboxSpec {
        machine_id: id.clone(),
        layers: vec![layer.path().to_path_buf()],
        resources: Resources::default(),
        mounts: vec![],
        network: None,
    };

    let mut creates = Vec::new();
    let mut destroys = Vec::new();
    for _ in 0..runs.min(50) {
        let id = MachineId::generate();
        let t = Instant::now();
        driver.create(&spec(&id)).await.unwrap();
        creates.push(t.elapsed());
        let t = Instant::now();
        driver.destroy(&id).await.unwrap();
        destroys.push(t.elapsed());
    }

    let id = MachineId::generate();
    driver.create(&spec(&id)).await.unwrap();
    let init = driver.init_host_pid(&id).unwrap();
    let idle_rss = vm_rss_kib(init);
    // Everything the machine costs the host, kernel memory included.
    let cgroup_kib = driver
        .cgroup_dirs(&id)
        .iter()
        .flat_map(|d| [d.join("memory.current"), d.join("memory.usage_in_bytes")])
        .find_map(|f| std::fs::read_to_string(f).ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(0, |b| b / 1024);

    let process = ProcessSpec {
        argv: vec!["sleep".into(), "1000".into()],
        env: vec!["PATH=/bin".into()],
        ..ProcessSpec::default()
    };
    let mut starts = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        driver.start(&id, &process).await.unwrap();
        starts.push(t.elapsed());
        let t = Instant::now();
        driver
            .stop(&id, libc::SIGKILL, Duration::from_secs(5))
            .await
            .unwrap();
        stops.push(t.elapsed());
    }

    let exec = ExecSpec {
        argv: vec!["true".into()],
        timeout: Duration::from_secs(10),
        ..ExecSpec::default()
    };
    let mut execs = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let out = driver.exec(&id, &exec).await.unwrap();
        execs.push(t.elapsed());
        assert!(out.status.success());
    }
    let rss_after = vm_rss_kib(init);

    report("create (sandbox + init)", creates);
    report("destroy", destroys);
    report("start (exec'd main)", starts);
    report("stop (SIGKILL)", stops);
    report("exec `true` round trip", execs);
    println!(
        "idle init VmRSS              {idle_rss} KiB (after {runs} starts and execs: {rss_after} KiB)"
    );
    println!("idle machine memory cgroup   {cgroup_kib} KiB (init, page cache and kernel objects)");
    driver.destroy(&id).await.unwrap();
}
