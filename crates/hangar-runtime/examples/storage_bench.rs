//! Latency of checkpoints, restore, fork and resume in the sandbox driver, as root:
//! `cargo run --release -p hangar-runtime --example storage_bench [RUNS]`.
//!
//! Writable layers are on a loop-mounted btrfs image in a temporary state
//! directory. A checkpoint is timed with 10 MB and with 1 GB of changes in the
//! machine's layer (the first one right after writing also flushes them), restore is
//! stopping a running machine, swapping its root to the checkpoint plus starting its
//! process again, a fork is a snapshot plus a new sandbox with its process started.
//! Restore and fork run back to back and 1 s apart (a robot works between two), which
//! leaves time for the spare layer that makes the next one a rename. Volumes: creating an
//! empty 1 GB one (mkfs), a snapshot of one mounted in a running machine holding
//! 300 MB (frozen for the clone), and a new volume from that snapshot. Prints median
//! and p99 over RUNS (default 30). The example is its own boot helper.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hangar_core::MachineId;
use hangar_core::driver::{
    Attachment, Driver, ExecSpec, ProcessSpec, Resources, SandboxSpec, VolumeMount, VolumeOrigin,
};
use hangar_runtime::sandbox::{self, SandboxConfig, SandboxDriver, StorageMode};

/// Time between runs of the "1 s apart" series.
const PAUSE: Duration = Duration::from_secs(1);

fn main() {
    sandbox::run_if_requested();
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(30);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(bench(runs));
}

fn busybox_layer(root: &Path) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("root")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "true", "dd", "sync"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name:<40} p50 {:>9.3} ms   p99 {:>9.3} ms   (n={})",
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        samples.len()
    );
}

fn sleeper() -> ProcessSpec {
    ProcessSpec {
        argv: vec!["sleep".into(), "1000000".into()],
        ..Default::default()
    }
}

async fn sh(d: &SandboxDriver, id: &MachineId, script: &str) {
    let out = d
        .exec(
            id,
            &ExecSpec {
                argv: vec!["sh".into(), "-c".into(), script.into()],
                timeout: Duration::from_secs(600),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
}

async fn bench(runs: usize) {
    let layer = tempfile::tempdir().unwrap();
    busybox_layer(layer.path());
    let state = tempfile::Builder::new()
        .prefix("hangar-storage-bench-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let driver = Arc::new(
        SandboxDriver::new(SandboxConfig {
            state_dir: state.path().to_path_buf(),
            boot_exe: std::env::current_exe().unwrap(),
            storage: StorageMode::Btrfs {
                image_size: Some(16 << 30),
            },
        })
        .unwrap(),
    );
    assert!(driver.has_checkpoints(), "btrfs is not usable here");
    let spec = |id: &MachineId| SandboxSpec {
        machine_id: id.clone(),
        layers: vec![layer.path().to_path_buf()],
        resources: Resources {
            memory_mb: 2048,
            ..Default::default()
        },
        mounts: vec![],
        network: None,
    };
    let d = &driver;
    let mut seq = 0;
    let mut next_cp = || {
        seq += 1;
        format!("cp{seq}")
    };

    let id = MachineId::generate();
    d.create(&spec(&id)).await.unwrap();
    d.start(&id, &sleeper()).await.unwrap();

    for (label, mb) in [("10 MB", 10), ("1 GB", 1024)] {
        sh(
            d,
            &id,
            &format!("dd if=/dev/urandom of=/root/data-{mb} bs=1M count={mb} 2>/dev/null"),
        )
        .await;
        let cp = next_cp();
        let t = Instant::now();
        d.checkpoint(&id, &cp).await.unwrap();
        let first = t.elapsed();
        println!(
            "{:<40} {:>9.3} ms (includes flushing the new data)",
            format!("checkpoint, {label} just written"),
            first.as_secs_f64() * 1e3
        );
        let mut samples = Vec::new();
        let mut taken = Vec::new();
        for _ in 0..runs {
            let cp = next_cp();
            let t = Instant::now();
            d.checkpoint(&id, &cp).await.unwrap();
            samples.push(t.elapsed());
            taken.push(cp);
        }
        // Deleted afterwards: btrfs drops a snapshot in the background, which would
        // otherwise compete with the next checkpoint.
        for cp in taken {
            d.delete_checkpoint(&id, &cp).await.unwrap();
        }
        report(&format!("checkpoint, {label} of changes"), samples);
    }

    let base = next_cp();
    d.checkpoint(&id, &base).await.unwrap();
    // Back to back, and with a pause between runs, as a robot works between two
    // rewinds: the pause lets the machine's spare layer be made.
    for (pause, label) in [(Duration::ZERO, "back to back"), (PAUSE, "1 s apart")] {
        let mut restores = Vec::new();
        let mut restarts = Vec::new();
        for _ in 0..runs {
            tokio::time::sleep(pause).await;
            let t = Instant::now();
            d.stop(&id, 9, Duration::from_secs(5)).await.unwrap();
            d.restore(&spec(&id), &base).await.unwrap();
            restores.push(t.elapsed());
            d.start(&id, &sleeper()).await.unwrap();
            restarts.push(t.elapsed());
        }
        report(&format!("restore (stop, swap), {label}"), restores);
        report(&format!("restore, restarted, {label}"), restarts);
    }

    for (pause, label) in [(Duration::ZERO, "back to back"), (PAUSE, "1 s apart")] {
        let mut forks = Vec::new();
        for _ in 0..runs {
            tokio::time::sleep(pause).await;
            let new = MachineId::generate();
            let t = Instant::now();
            d.fork(&id, &base, &spec(&new)).await.unwrap();
            d.start(&new, &sleeper()).await.unwrap();
            forks.push(t.elapsed());
            d.destroy(&new).await.unwrap();
        }
        report(&format!("fork of 1, started, {label}"), forks);
    }

    let ids: Vec<MachineId> = (0..100).map(|_| MachineId::generate()).collect();
    // Eight at a time, as the service forks.
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for new in ids.clone() {
        let (d, permits, source, base) =
            (driver.clone(), permits.clone(), id.clone(), base.clone());
        let spec = spec(&new);
        tasks.spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            d.fork(&source, &base, &spec).await.unwrap();
            d.start(&new, &sleeper()).await.unwrap();
        });
    }
    let made = tasks.join_all().await;
    let total = t.elapsed();
    println!(
        "{:<40} {:>9.3} ms total ({} machines)",
        "fork of 100, started",
        total.as_secs_f64() * 1e3,
        made.len()
    );
    for new in &ids {
        d.destroy(new).await.unwrap();
    }

    let mut resumes = Vec::new();
    for _ in 0..runs {
        d.suspend(&id).await.unwrap();
        let t = Instant::now();
        d.resume(&id).await.unwrap();
        resumes.push(t.elapsed());
    }
    report("resume from suspend", resumes);

    d.destroy(&id).await.unwrap();

    let mut creates = Vec::new();
    for i in 0..runs {
        let vol = format!("vol_bench{i}");
        let t = Instant::now();
        d.create_volume(&vol, 1 << 30, &VolumeOrigin::Empty, None)
            .await
            .unwrap();
        creates.push(t.elapsed());
        if i > 0 {
            d.delete_volume(&vol).await.unwrap();
        }
    }
    report("volume create, empty 1 GB (mkfs.ext4)", creates);
    let vol = "vol_bench0";
    let user = MachineId::generate();
    let mounted = SandboxSpec {
        mounts: vec![VolumeMount {
            volume: vol.into(),
            path: "/data".into(),
        }],
        ..spec(&user)
    };
    d.create(&mounted).await.unwrap();
    d.start(&user, &sleeper()).await.unwrap();
    sh(
        d,
        &user,
        "dd if=/dev/urandom of=/data/blob bs=1M count=300 2>/dev/null && sync",
    )
    .await;
    let attached = Attachment {
        machine_id: user.clone(),
        path: "/data".into(),
    };
    let mut snapshots = Vec::new();
    let mut taken = Vec::new();
    for i in 0..runs {
        let snap = format!("vs_bench{i}");
        let t = Instant::now();
        d.snapshot_volume(vol, &snap, Some(&attached))
            .await
            .unwrap();
        snapshots.push(t.elapsed());
        taken.push(snap);
    }
    report("volume snapshot, mounted, 300 MB", snapshots);
    let mut restores = Vec::new();
    for (i, snap) in taken.iter().enumerate() {
        let new = format!("vol_restored{i}");
        let t = Instant::now();
        d.create_volume(&new, 1 << 30, &VolumeOrigin::Snapshot(snap.clone()), None)
            .await
            .unwrap();
        restores.push(t.elapsed());
        d.delete_volume(&new).await.unwrap();
    }
    report("volume from a snapshot, 300 MB", restores);
    d.destroy(&user).await.unwrap();
    for snap in &taken {
        d.delete_volume_snapshot(snap).await.unwrap();
    }
    d.delete_volume(vol).await.unwrap();
    drop(driver);
    let _ = std::process::Command::new("umount")
        .arg(state.path().join("layers"))
        .status();
    let _ = std::process::Command::new("losetup")
        .arg("-d")
        .arg(
            std::process::Command::new("losetup")
                .arg("-j")
                .arg(state.path().join("layers.btrfs"))
                .output()
                .map(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .split(':')
                        .next()
                        .unwrap_or_default()
                        .to_string()
                })
                .unwrap_or_default(),
        )
        .status();
}
