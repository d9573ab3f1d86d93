//! The peer: crun on the same root filesystem, measured in the same run.
//!
//! crun refuses to run on hosts in cgroup hybrid mode while the v2 hierarchy holds a
//! controller; [`run_peer`] therefore runs in a private mount namespace in which the v2
//! hierarchy's controller list reads empty, and crun uses the v1 controllers (cgroupfs)
//! as hangar does.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, ensure};

use crate::stats::Samples;

pub struct Crun {
    bundle: tempfile::TempDir,
    root: tempfile::TempDir,
}

impl Crun {
    pub fn new(rootfs: &Path) -> Result<Crun> {
        let bundle = tempfile::Builder::new()
            .prefix("hangar-bench-crun-")
            .tempdir()?;
        let root = tempfile::Builder::new()
            .prefix("hangar-bench-crun-state-")
            .tempdir()?;
        let status = Command::new("cp")
            .arg("-a")
            .arg(rootfs)
            .arg(bundle.path().join("rootfs"))
            .status()?;
        ensure!(status.success(), "copying the rootfs for crun");
        let status = Command::new("crun")
            .arg("spec")
            .current_dir(bundle.path())
            .status()
            .context("crun is needed (apt-get install crun)")?;
        ensure!(status.success(), "crun spec failed");
        Ok(Crun { bundle, root })
    }

    fn set_args(&self, args: &[&str]) -> Result<()> {
        let path = self.bundle.path().join("config.json");
        let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        config["process"]["args"] = serde_json::json!(args);
        config["process"]["terminal"] = serde_json::json!(false);
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    fn crun(&self) -> Command {
        let mut cmd = Command::new("crun");
        cmd.arg("--root")
            .arg(self.root.path())
            .arg("--cgroup-manager=cgroupfs");
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd
    }

    /// `crun run` of `true`: namespaces created, process run, container removed.
    pub fn run_true(&self, runs: usize) -> Result<Samples> {
        self.set_args(&["true"])?;
        let mut samples = Samples::new("`crun run` true");
        for i in 0..runs {
            let id = format!("hangar-bench-run-{}-{i}", std::process::id());
            let began = Instant::now();
            let status = self
                .crun()
                .args(["run", "--bundle"])
                .arg(self.bundle.path())
                .arg(&id)
                .status()?;
            samples.push(began.elapsed());
            ensure!(status.success(), "crun run failed");
            let _ = self.crun().args(["delete", "-f", &id]).status();
        }
        Ok(samples)
    }

    /// `crun exec` of `true` into a running container.
    pub fn exec_true(&self, runs: usize) -> Result<Samples> {
        self.set_args(&["sleep", "1000000"])?;
        let id = format!("hangar-bench-exec-{}", std::process::id());
        let status = self
            .crun()
            .args(["run", "-d", "--bundle"])
            .arg(self.bundle.path())
            .arg(&id)
            .status()?;
        ensure!(status.success(), "crun run -d failed");
        let mut samples = Samples::new("`crun exec` true");
        let result = (|| {
            for _ in 0..runs {
                let began = Instant::now();
                let status = self.crun().args(["exec", &id, "true"]).status()?;
                samples.push(began.elapsed());
                ensure!(status.success(), "crun exec failed");
            }
            Ok(())
        })();
        let _ = self.crun().args(["delete", "-f", &id]).status();
        result.map(|()| samples)
    }
}

/// Re-executes this binary as `crun-peer` inside a private mount namespace and reads
/// back its samples.
pub fn run_peer(rootfs: &Path, runs: usize) -> Result<(Samples, Samples)> {
    let exe = std::env::current_exe()?;
    let empty = tempfile::NamedTempFile::new()?;
    let script = "mount --bind \"$1\" /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null; shift; exec \"$@\"";
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(empty.path())
        .arg(&exe)
        .arg("crun-peer")
        .arg(rootfs)
        .arg(runs.to_string())
        .stderr(Stdio::inherit())
        .output()
        .context("running the crun peer (util-linux unshare is needed)")?;
    ensure!(out.status.success(), "the crun peer failed");
    let (run, exec): (Vec<u64>, Vec<u64>) = serde_json::from_slice(&out.stdout)?;
    Ok((
        Samples::from_nanos("`crun run` true", &run),
        Samples::from_nanos("`crun exec` true", &exec),
    ))
}

/// The `crun-peer` entry: measures and prints `[run_nanos, exec_nanos]` as JSON.
pub fn peer_main(rootfs: &Path, runs: usize) -> Result<()> {
    let crun = Crun::new(rootfs)?;
    let run = crun.run_true(runs)?;
    let exec = crun.exec_true(runs)?;
    println!("{}", serde_json::to_string(&(run.nanos(), exec.nanos()))?);
    Ok(())
}
