//! `hangar-bench`: measures hangar through its REST API and, in the same run, crun on
//! the same busybox root filesystem. Prints a Markdown table for BENCHMARKS.md.
//!
//! Run as root, from a release build: `cargo run --release -p hangar-bench -- [--idle N]`.
//! It starts its own `hangar serve` (the binary next to this one) in a temporary data
//! dir, and removes every machine and container it made.
//!
//! `hangar-bench proxy [--requests N] [--conns N] [--wake-runs N] [--sse-idle N]`
//! measures the edge proxy instead (see `proxy.rs`); `hangar-bench upstream PORT` is
//! the server it runs inside its machine (see `upstream.rs`).

mod crun;
mod proxy;
mod stats;
mod upstream;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hangar_client::Client;
use hangar_types::{
    CreateMachineRequest, MachineConfig, MachineExecRequest, MachineInit, StopRequest,
};
use stats::Samples;

struct Options {
    runs: usize,
    idle: usize,
}

fn parse_args() -> Result<Options> {
    let mut options = Options {
        runs: 200,
        idle: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> { Ok(args.next().context("missing value")?.parse()?) };
        match arg.as_str() {
            "--runs" => options.runs = value()?,
            "--idle" => options.idle = value()?,
            other => bail!("unknown argument {other}; use --runs N and --idle N"),
        }
    }
    Ok(options)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("crun-peer") {
        let rootfs = PathBuf::from(args.get(2).context("crun-peer ROOTFS RUNS")?);
        let runs = args.get(3).context("crun-peer ROOTFS RUNS")?.parse()?;
        return crun::peer_main(&rootfs, runs);
    }
    if args.get(1).map(String::as_str) == Some("upstream") {
        return upstream::main(args.get(2).context("upstream PORT")?);
    }
    if args.get(1).map(String::as_str) == Some("proxy") {
        let options = proxy::parse(args.into_iter().skip(2))?;
        return tokio::runtime::Runtime::new()?.block_on(proxy_bench(options));
    }
    tokio::runtime::Runtime::new()?.block_on(bench())
}

async fn proxy_bench(options: proxy::Options) -> Result<()> {
    let rootfs = busybox_rootfs()?;
    with_own_binary(rootfs.path())?;
    // The daemon inherits the limit; ten thousand streams need twice as many files.
    let limit = raise_open_files_limit();
    eprintln!("open files limit (bench and daemon): {limit}");
    let daemon = Daemon::start(true)?;
    let client = daemon.client();
    client.health().await?;
    import(&client, rootfs.path()).await?;
    let proxy = daemon
        .proxy
        .clone()
        .context("the daemon announced no proxy")?;
    let rows = proxy::bench(&client, &proxy, daemon.child.id(), &options).await?;
    for line in proxy::load_header() {
        println!("{line}");
    }
    for row in rows {
        println!("{row}");
    }
    Ok(())
}

async fn bench() -> Result<()> {
    let options = parse_args()?;
    let rootfs = busybox_rootfs()?;
    let daemon = Daemon::start(false)?;
    let client = daemon.client();
    client.health().await?;
    import(&client, rootfs.path()).await?;
    client.create_app("bench", None).await?;
    let mut rows = Vec::new();

    // Create from an imported image (sandbox built, not started).
    let mut create = Samples::new("create machine (skip_launch)");
    let mut created = Vec::new();
    for _ in 0..options.runs.min(100) {
        let began = Instant::now();
        let m = client.create_machine("bench", &request(true)).await?;
        create.push(began.elapsed());
        created.push(m.id);
    }
    for id in created {
        client.destroy_machine("bench", &id, true).await?;
    }

    let m = client.create_machine("bench", &request(false)).await?;
    let (start, exec) = start_and_exec(&client, &m.id, options.runs).await?;
    rows.push(create.row(None));

    let (crun_run, crun_exec) = crun::run_peer(rootfs.path(), options.runs)?;
    rows.push(start.row(Some(&crun_run)));
    rows.push(exec.row(Some(&crun_exec)));
    client.destroy_machine("bench", &m.id, true).await?;

    if options.idle > 0 {
        let idle = idle_machines(&client, options.idle, options.runs).await?;
        rows.extend(idle);
    }

    println!("| what | runs | hangar p50 | hangar p99 | peer | peer p50 | peer p99 |");
    println!("|---|---|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    client.delete_app("bench").await?;
    Ok(())
}

fn request(skip_launch: bool) -> CreateMachineRequest {
    CreateMachineRequest {
        config: MachineConfig {
            image: "busybox:latest".into(),
            init: Some(MachineInit {
                exec: Some(vec!["sleep".into(), "1000000".into()]),
                ..Default::default()
            }),
            ..Default::default()
        },
        skip_launch,
        ..Default::default()
    }
}

/// Start of a stopped machine until its process runs, and exec of `true`.
async fn start_and_exec(client: &Client, id: &str, runs: usize) -> Result<(Samples, Samples)> {
    let mut start = Samples::new("start stopped machine (API) vs `crun run true`");
    for _ in 0..runs {
        client
            .stop_machine(
                "bench",
                id,
                &StopRequest {
                    signal: Some("SIGKILL".into()),
                    timeout: None,
                },
            )
            .await?;
        let began = Instant::now();
        client.start_machine("bench", id).await?;
        start.push(began.elapsed());
    }
    let mut exec = Samples::new("exec `true` (API) vs `crun exec true`");
    let req = MachineExecRequest {
        command: Some(vec!["true".into()]),
        ..Default::default()
    };
    for _ in 0..runs {
        let began = Instant::now();
        let out = client.exec("bench", id, &req).await?;
        exec.push(began.elapsed());
        anyhow::ensure!(out.exit_code == 0, "exec failed: {out:?}");
    }
    Ok((start, exec))
}

/// Starts `count` idle machines, reports host memory per machine, and measures start
/// and exec again while they idle.
async fn idle_machines(client: &Client, count: usize, runs: usize) -> Result<Vec<String>> {
    let before = mem_available_kib()?;
    let mut ids = Vec::with_capacity(count);
    let mut create = Samples::new(&format!("create+start with {count} idle machines"));
    for _ in 0..count {
        let began = Instant::now();
        ids.push(client.create_machine("bench", &request(false)).await?.id);
        create.push(began.elapsed());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = mem_available_kib()?;
    let per_machine = (before.saturating_sub(after)) as f64 / count as f64;
    let charged = machine_memory(&ids)?;
    let probe = client.create_machine("bench", &request(false)).await?;
    let (start, exec) = start_and_exec(client, &probe.id, runs.min(100)).await?;
    let mut rows = vec![
        create.row(None),
        format!(
            "| host MemAvailable drop per idle machine ({count} started `sleep`) | 1 | {per_machine:.0} KiB | | | | |"
        ),
        format!(
            "| memory cgroup charge per idle machine (init + `sleep` + kernel objects) | {} | {:.0} KiB | | | | |",
            charged.machines, charged.cgroup_kib
        ),
        format!(
            "| init PSS per machine / guest processes' PSS per machine | {} | {:.0} KiB | | guest | {:.0} KiB | |",
            charged.machines, charged.init_pss_kib, charged.guest_pss_kib
        ),
        start
            .renamed(&format!("start with {count} idle machines"))
            .row(None),
        exec.renamed(&format!("exec `true` with {count} idle machines"))
            .row(None),
    ];
    ids.push(probe.id);
    let destroy_began = Instant::now();
    for id in &ids {
        client.destroy_machine("bench", id, true).await?;
    }
    rows.push(format!(
        "| destroy {} machines | 1 | {:.1} s total | | | | |",
        ids.len(),
        destroy_began.elapsed().as_secs_f64()
    ));
    Ok(rows)
}

struct Charged {
    machines: usize,
    cgroup_kib: f64,
    init_pss_kib: f64,
    guest_pss_kib: f64,
}

/// Memory the machines' cgroups are charged, and the proportional set size of their
/// processes, split into hangar's init and the guest's own.
fn machine_memory(ids: &[String]) -> Result<Charged> {
    let roots = ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"];
    let mut found = Charged {
        machines: 0,
        cgroup_kib: 0.0,
        init_pss_kib: 0.0,
        guest_pss_kib: 0.0,
    };
    for root in roots {
        let Ok(parents) = std::fs::read_dir(root) else {
            continue;
        };
        for parent in parents
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("hangar-"))
        {
            for id in ids {
                let dir = parent.path().join(id);
                let usage = std::fs::read_to_string(dir.join("memory.usage_in_bytes"))
                    .or_else(|_| std::fs::read_to_string(dir.join("memory.current")));
                let Ok(usage) = usage else { continue };
                found.machines += 1;
                found.cgroup_kib += usage.trim().parse::<f64>().unwrap_or(0.0) / 1024.0;
                for pid in std::fs::read_to_string(dir.join("cgroup.procs"))
                    .unwrap_or_default()
                    .lines()
                {
                    let pss = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
                        .unwrap_or_default()
                        .lines()
                        .find_map(|l| l.strip_prefix("Pss:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
                        .unwrap_or(0.0);
                    let comm =
                        std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                    if comm.starts_with("init") {
                        found.init_pss_kib += pss;
                    } else {
                        found.guest_pss_kib += pss;
                    }
                }
            }
        }
        if found.machines > 0 {
            break;
        }
    }
    anyhow::ensure!(found.machines > 0, "no machine cgroups found");
    let n = found.machines as f64;
    Ok(Charged {
        cgroup_kib: found.cgroup_kib / n,
        init_pss_kib: found.init_pss_kib / n,
        guest_pss_kib: found.guest_pss_kib / n,
        ..found
    })
}

fn mem_available_kib() -> Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("MemAvailable missing from /proc/meminfo")
}

async fn import(client: &Client, rootfs: &Path) -> Result<()> {
    let mut builder = tar::Builder::new(Vec::new());
    builder.follow_symlinks(false);
    builder.append_dir_all(".", rootfs)?;
    let archive = builder.into_inner()?;
    let stream = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(archive))]);
    client.import_image("busybox:latest", stream).await?;
    Ok(())
}

/// Copies this executable and the shared libraries it loads into `root`, so a machine
/// can run `hangar-bench upstream`.
fn with_own_binary(root: &Path) -> Result<()> {
    let exe = std::env::current_exe()?;
    std::fs::copy(&exe, root.join("bin/hangar-bench"))?;
    let ldd = Command::new("ldd")
        .arg(&exe)
        .output()
        .context("running ldd")?;
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` or the loader's
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`.
        let path = line
            .split("=>")
            .last()
            .and_then(|p| p.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(path) = path {
            let to = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().context("library path")?)?;
            std::fs::copy(path, &to).with_context(|| format!("copying {path}"))?;
        }
    }
    Ok(())
}

/// Raises this process' limit on open files to at least 65536 when allowed (root
/// may raise the hard limit), else the soft limit to the hard one; returns it.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let wanted = limit.rlim_max.max(65536);
        let raised = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
    }
    limit.rlim_cur
}

fn busybox_rootfs() -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("hangar-bench-rootfs-")
        .tempdir()?;
    let root = dir.path();
    for sub in ["bin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(sub))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("busybox-static is needed")?;
    let list = Command::new("/bin/busybox").arg("--list").output()?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    Ok(dir)
}

struct Daemon {
    dir: tempfile::TempDir,
    child: Child,
    api: String,
    proxy: Option<String>,
    token: String,
}

impl Daemon {
    /// Starts `hangar serve`; with `proxy`, also its HTTP edge proxy on a free port.
    fn start(proxy: bool) -> Result<Daemon> {
        let exe = std::env::current_exe()?;
        let bin: PathBuf = exe.with_file_name("hangar");
        let dir = tempfile::Builder::new().prefix("hangar-bench-").tempdir()?;
        let mut command = Command::new(&bin);
        command
            .args(["serve", "--api-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path());
        if proxy {
            command.args(["--proxy-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .env("HANGAR_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let (mut api, mut proxy_addr) = (None, None);
        while api.is_none() || (proxy && proxy_addr.is_none()) {
            let line = lines.next().context("hangar serve exited")??;
            if let Some(addr) = line.strip_prefix("api listening on ") {
                api = Some(addr.to_string());
            } else if let Some(addr) = line.strip_prefix("proxy listening on ") {
                proxy_addr = Some(addr.to_string());
            }
        }
        let api = api.context("no API address")?;
        std::thread::spawn(move || for _ in lines {});
        let token = std::fs::read_to_string(dir.path().join("root-token"))?
            .trim()
            .to_string();
        Ok(Daemon {
            dir,
            child,
            api,
            proxy: proxy_addr,
            token,
        })
    }

    fn client(&self) -> Client {
        Client::new(&self.api, &self.token)
    }
}

impl Drop for Daemon {
    /// Leaves the host as it was: the daemon stops on SIGTERM (machines were
    /// destroyed by each benchmark), then what outlives a daemon by design goes too:
    /// the machines' bridge and firewall tables, and its mounts and loop devices.
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        hangar_net::remove_installation(self.dir.path());
        hangar_runtime::teardown::release_mounts(self.dir.path());
    }
}
