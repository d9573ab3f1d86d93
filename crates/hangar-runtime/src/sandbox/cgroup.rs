//! The machine's control groups on cgroup v1, hybrid (v1 controllers beside a v2
//! mount) and pure v2 hosts.
//!
//! Every machine of one driver lives under one parent group named for its state
//! directory, so several daemons (or test runs) on a host never touch each other's
//! groups. This module only writes cgroup files; it starts and kills nothing.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hangar_core::MachineId;
use hangar_core::driver::Resources;

use super::SandboxError;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers a machine joins; missing ones are skipped (and their features
/// become unavailable).
const V1_CONTROLLERS: [&str; 5] = ["cpu", "cpuacct", "memory", "pids", "freezer"];
/// v2 controllers enabled for machines (freezing is built into v2).
const V2_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone)]
enum Layout {
    /// Controller name -> its hierarchy's mount point.
    V1(BTreeMap<String, PathBuf>),
    /// The unified hierarchy's mount point.
    V2(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Cgroups {
    layout: Layout,
    parent: String,
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    std::fs::write(path, value).map_err(io_err(format!("writing {value:?} to {}", path.display())))
}

fn read(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The value of `key` in a flat-keyed file such as `memory.events`.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl Cgroups {
    /// Finds the host's cgroup layout; `parent` names the group holding the machines.
    pub fn detect(parent: String) -> Result<Self, SandboxError> {
        let root = Path::new(CGROUP_ROOT);
        if root.join("cgroup.controllers").exists() {
            return Ok(Cgroups {
                layout: Layout::V2(root.to_path_buf()),
                parent,
            });
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(io_err("reading /proc/self/mountinfo"))?;
        let mut mounts = BTreeMap::new();
        for line in mountinfo.lines() {
            // "... mountpoint opts - fstype source superopts"
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mut right = right.split_whitespace();
            if right.next() != Some("cgroup") {
                continue;
            }
            let superopts = right.nth(1).unwrap_or("");
            let Some(mountpoint) = left.split_whitespace().nth(4) else {
                continue;
            };
            for opt in superopts.split(',') {
                if V1_CONTROLLERS.contains(&opt) {
                    mounts
                        .entry(opt.to_string())
                        .or_insert_with(|| PathBuf::from(mountpoint));
                }
            }
        }
        if mounts.is_empty() {
            return Err(SandboxError::Unsupported(
                "no cgroup v1 controllers or cgroup v2 hierarchy is mounted under /sys/fs/cgroup"
                    .into(),
            ));
        }
        Ok(Cgroups {
            layout: Layout::V1(mounts),
            parent,
        })
    }

    pub fn is_v2(&self) -> bool {
        matches!(self.layout, Layout::V2(_))
    }

    fn controller_dir(&self, controller: &str, id: &MachineId) -> Option<PathBuf> {
        match &self.layout {
            Layout::V1(m) => m
                .get(controller)
                .map(|p| p.join(&self.parent).join(id.as_str())),
            Layout::V2(root) => Some(root.join(&self.parent).join(id.as_str())),
        }
    }

    fn parent_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = match &self.layout {
            Layout::V1(m) => m.values().map(|p| p.join(&self.parent)).collect(),
            Layout::V2(root) => vec![root.join(&self.parent)],
        };
        dirs.dedup();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// The machine's group in every hierarchy (a combined `cpu,cpuacct` mount once).
    pub fn machine_dirs(&self, id: &MachineId) -> Vec<PathBuf> {
        self.parent_dirs()
            .into_iter()
            .map(|p| p.join(id.as_str()))
            .collect()
    }

    /// Creates the machine's groups with `resources` applied.
    pub fn create(&self, id: &MachineId, resources: &Resources) -> Result<(), SandboxError> {
        if let Layout::V2(root) = &self.layout {
            let available = read(&root.join("cgroup.controllers")).unwrap_or_default();
            let enable: Vec<String> = V2_CONTROLLERS
                .iter()
                .filter(|c| available.split_whitespace().any(|a| a == **c))
                .map(|c| format!("+{c}"))
                .collect();
            let enable = enable.join(" ");
            write(&root.join("cgroup.subtree_control"), &enable)?;
            let parent = root.join(&self.parent);
            mkdir(&parent)?;
            write(&parent.join("cgroup.subtree_control"), &enable)?;
        }
        for dir in self.parent_dirs() {
            mkdir(&dir)?;
        }
        for dir in self.machine_dirs(id) {
            mkdir(&dir)?;
        }
        self.set_resources(id, resources)
            .inspect_err(|_| drop(self.remove(id, Duration::ZERO)))
    }

    /// Files the boot helper writes its pid into to join the machine's groups.
    pub fn procs_files(&self, id: &MachineId) -> Vec<PathBuf> {
        self.machine_dirs(id)
            .into_iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    pub fn exists(&self, id: &MachineId) -> bool {
        self.machine_dirs(id).iter().any(|d| d.exists())
    }

    pub fn set_resources(&self, id: &MachineId, r: &Resources) -> Result<(), SandboxError> {
        let quota = u64::from(r.cpus.max(1)) * CPU_PERIOD_US;
        let memory = r.memory_mb.max(4) * 1024 * 1024;
        match &self.layout {
            Layout::V2(_) => {
                let dir = self.controller_dir("", id).unwrap_or_default();
                // A controller the host does not delegate has no files: its limit is
                // skipped rather than failing the machine.
                for (file, value) in [
                    ("cpu.max", format!("{quota} {CPU_PERIOD_US}")),
                    ("memory.max", memory.to_string()),
                    ("memory.swap.max", "0".to_string()),
                    ("pids.max", r.pids_max.to_string()),
                ] {
                    let path = dir.join(file);
                    if path.exists() {
                        write(&path, &value)?;
                    } else {
                        tracing::warn!(machine = %id, file, "cgroup limit not available on this host");
                    }
                }
            }
            Layout::V1(_) => {
                if let Some(dir) = self.controller_dir("cpu", id) {
                    write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota.to_string())?;
                }
                if let Some(dir) = self.controller_dir("memory", id) {
                    let memsw = dir.join("memory.memsw.limit_in_bytes");
                    // memsw must stay >= the limit: lower it last, raise it first.
                    if memsw.exists() {
                        let _ = write(&memsw, &memory.to_string());
                    }
                    write(&dir.join("memory.limit_in_bytes"), &memory.to_string())?;
                    if memsw.exists() {
                        write(&memsw, &memory.to_string())?;
                    }
                    let _ = write(&dir.join("memory.swappiness"), "0");
                }
                if let Some(dir) = self.controller_dir("pids", id) {
                    write(&dir.join("pids.max"), &r.pids_max.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer has killed in the machine.
    pub fn oom_kills(&self, id: &MachineId) -> u64 {
        let (file, _) = match &self.layout {
            Layout::V2(_) => ("memory.events", ()),
            Layout::V1(_) => ("memory.oom_control", ()),
        };
        self.controller_dir("memory", id)
            .and_then(|d| read(&d.join(file)))
            .and_then(|t| keyed(&t, "oom_kill"))
            .unwrap_or(0)
    }

    /// Host pids of every process in the machine.
    pub fn tasks(&self, id: &MachineId) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .procs_files(id)
            .iter()
            .filter_map(|f| read(f))
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.trim().parse().ok())
                    .collect::<Vec<i32>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn freezer_dir(&self, id: &MachineId) -> Result<PathBuf, SandboxError> {
        self.controller_dir("freezer", id).ok_or_else(|| {
            SandboxError::Unsupported("the freezer cgroup controller is not mounted".into())
        })
    }

    pub fn is_frozen(&self, id: &MachineId) -> bool {
        let Ok(dir) = self.freezer_dir(id) else {
            return false;
        };
        match &self.layout {
            Layout::V2(_) => read(&dir.join("cgroup.freeze")).is_some_and(|v| v.trim() == "1"),
            Layout::V1(_) => read(&dir.join("freezer.state")).is_some_and(|v| v.trim() != "THAWED"),
        }
    }

    /// Freezes (or thaws) every process and waits until the kernel says it is done.
    pub fn freeze(&self, id: &MachineId, frozen: bool) -> Result<(), SandboxError> {
        let dir = self.freezer_dir(id)?;
        let v2 = self.is_v2();
        let (file, value) = match (v2, frozen) {
            (true, true) => ("cgroup.freeze", "1"),
            (true, false) => ("cgroup.freeze", "0"),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        let done = || {
            if v2 {
                read(&dir.join("cgroup.events"))
                    .is_some_and(|t| keyed(&t, "frozen") == Some(u64::from(frozen)))
            } else {
                read(&dir.join("freezer.state")).is_some_and(|t| t.trim() == value)
            }
        };
        write(&dir.join(file), value)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pause = Duration::from_micros(200);
        loop {
            if done() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(SandboxError::Timeout(format!(
                    "{} the machine's processes",
                    if frozen { "freezing" } else { "thawing" }
                )));
            }
            // v1 FREEZING is retried by rewriting the state, as the kernel expects.
            if !v2 {
                let _ = write(&dir.join(file), value);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Removes the machine's groups, retrying for up to `patience` while exiting
    /// tasks drain. Absent groups are fine.
    pub fn remove(&self, id: &MachineId, patience: Duration) -> Result<(), SandboxError> {
        let deadline = Instant::now() + patience;
        let mut pause = Duration::from_micros(500);
        for dir in self.machine_dirs(id) {
            loop {
                match std::fs::remove_dir(&dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if Instant::now() < deadline => {
                        tracing::trace!(dir = %dir.display(), error = %e, "cgroup busy, retrying");
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(50));
                    }
                    Err(e) => return Err(io_err(format!("removing cgroup {}", dir.display()))(e)),
                }
            }
        }
        Ok(())
    }

    /// Removes the parent groups when no machine is left in them.
    pub fn remove_parent_if_empty(&self) {
        for dir in self.parent_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn mkdir(dir: &Path) -> Result<(), SandboxError> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(format!("creating cgroup {}", dir.display()))(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_parse() {
        let events = "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n";
        assert_eq!(keyed(events, "oom_kill"), Some(2));
        assert_eq!(keyed(events, "oom"), Some(1));
        assert_eq!(
            keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 5\n", "oom_kill"),
            Some(5)
        );
        assert_eq!(keyed(events, "missing"), None);
    }
}
