//! Taking away what a daemon leaves on the host by design when it exits: the btrfs
//! image of writable layers stays mounted (machines may still run, and a restarted
//! daemon adopts them). For tests and benchmarks, once their machines are gone.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Unmounts whatever is mounted under `dir`, deepest first (lazily when busy), and
/// detaches loop devices backed by files in it, so the directory can be removed.
pub fn release_mounts(dir: &Path) {
    let Ok(dir) = dir.canonicalize() else { return };
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(&dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for point in points {
        let status = Command::new("umount").arg(&point).status();
        if !status.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&point).status();
        }
    }
    let Ok(devices) = std::fs::read_dir("/sys/block") else {
        return;
    };
    for dev in devices.flatten() {
        let name = dev.file_name().to_string_lossy().into_owned();
        let backing =
            std::fs::read_to_string(dev.path().join("loop/backing_file")).unwrap_or_default();
        if name.starts_with("loop") && Path::new(backing.trim()).starts_with(&dir) {
            let _ = Command::new("losetup")
                .arg("-d")
                .arg(format!("/dev/{name}"))
                .status();
        }
    }
}
