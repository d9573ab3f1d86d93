//! Comparing two overlay upper directories: what a machine added, modified and
//! deleted between two states of its writable layer.
//!
//! An upper holds only the machine's changes over the image: whiteouts (character
//! devices 0/0) mark deleted paths and an opaque directory (`trusted.overlay.opaque`)
//! hides everything the image had below it. Only the two uppers and the image's
//! layers are read; nothing is written.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use hangar_core::driver::{CheckpointDiff, DiffEntry};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Whiteout,
    Dir {
        opaque: bool,
    },
    /// Anything else, with what tells two versions apart.
    Other {
        size: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        mtime: (i64, i64),
    },
}

fn is_whiteout(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() && m.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: a NUL-terminated path, a NUL-terminated name and a buffer of its size.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

fn entry(path: &Path, m: &std::fs::Metadata) -> Entry {
    if is_whiteout(m) {
        Entry::Whiteout
    } else if m.is_dir() {
        Entry::Dir {
            opaque: is_opaque(path),
        }
    } else {
        Entry::Other {
            size: m.size(),
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// Every entry below `root`, by path relative to it.
fn walk(root: &Path) -> io::Result<BTreeMap<PathBuf, Entry>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for child in std::fs::read_dir(root.join(&rel))? {
            let child = child?;
            let rel_child = rel.join(child.file_name());
            let path = child.path();
            let m = std::fs::symlink_metadata(&path)?;
            let e = entry(&path, &m);
            if matches!(e, Entry::Dir { .. }) {
                stack.push(rel_child.clone());
            }
            out.insert(rel_child, e);
        }
    }
    Ok(out)
}

fn size_of(e: &Entry) -> u64 {
    match e {
        Entry::Other { size, .. } => *size,
        _ => 0,
    }
}

fn item(rel: &Path, size: u64) -> DiffEntry {
    DiffEntry {
        path: format!("/{}", rel.display()),
        size,
    }
}

/// Compares upper `a` (before) with upper `b` (after).
pub fn diff_uppers(a: &Path, b: &Path) -> io::Result<CheckpointDiff> {
    let before = walk(a)?;
    let after = walk(b)?;
    let mut diff = CheckpointDiff::default();
    // Paths only the image has, hidden in `b` by a directory made opaque since.
    for (rel, new) in &after {
        match (before.get(rel), new) {
            (Some(Entry::Whiteout), Entry::Whiteout) => {}
            (None, Entry::Whiteout) => diff.deleted.push(item(rel, 0)),
            (Some(old), Entry::Whiteout) => diff.deleted.push(item(rel, size_of(old))),
            (None | Some(Entry::Whiteout), new) => {
                // Copied up unchanged directories are not news; new ones are.
                let copied_up_dir = matches!(new, Entry::Dir { .. }) && !before.contains_key(rel);
                if !copied_up_dir {
                    diff.added.push(item(rel, size_of(new)));
                } else if !has_children(rel, &after) {
                    diff.added.push(item(rel, 0));
                }
            }
            (Some(Entry::Dir { .. }), Entry::Dir { .. }) => {}
            (Some(old), new) if old != new => diff.modified.push(item(rel, size_of(new))),
            _ => {}
        }
    }
    for (rel, old) in &before {
        // Overlay drops a path from the upper without a whiteout only when the image
        // never had it: the machine deleted something it had made.
        if !after.contains_key(rel) && !matches!(old, Entry::Whiteout) {
            diff.deleted.push(item(rel, size_of(old)));
        }
    }
    // A file first written in `b` may also exist in the image: without the image's
    // layers at hand it is reported as added, which is what the machine did.
    diff.added.sort_by(|x, y| x.path.cmp(&y.path));
    diff.modified.sort_by(|x, y| x.path.cmp(&y.path));
    diff.deleted.sort_by(|x, y| x.path.cmp(&y.path));
    Ok(diff)
}

/// Overlay copies a directory up only to change something inside it: a new, empty
/// directory in the upper is one the machine made.
fn has_children(rel: &Path, after: &BTreeMap<PathBuf, Entry>) -> bool {
    after
        .range(rel.to_path_buf()..)
        .skip(1)
        .take_while(|(p, _)| p.starts_with(rel))
        .next()
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[DiffEntry]) -> Vec<&str> {
        v.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn added_modified_and_deleted() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("etc")).unwrap();
        std::fs::write(a.path().join("etc/keep"), "same").unwrap();
        std::fs::write(a.path().join("gone"), "x").unwrap();
        std::fs::write(a.path().join("edit"), "one").unwrap();
        // b is a and then some changes, as a snapshot would be.
        let cp = std::process::Command::new("cp")
            .args(["-a", "--"])
            .arg(a.path().join("."))
            .arg(b.path())
            .status()
            .unwrap();
        assert!(cp.success());
        std::fs::remove_file(b.path().join("gone")).unwrap();
        std::fs::write(b.path().join("edit"), "three").unwrap();
        std::fs::write(b.path().join("new"), "hello").unwrap();
        std::fs::create_dir(b.path().join("newdir")).unwrap();
        let d = diff_uppers(a.path(), b.path()).unwrap();
        assert_eq!(names(&d.added), ["/new", "/newdir"]);
        assert_eq!(d.added[0].size, 5);
        assert!(names(&d.modified).contains(&"/edit"), "{d:?}");
        assert!(!names(&d.modified).contains(&"/etc/keep"), "{d:?}");
        assert_eq!(names(&d.deleted), ["/gone"]);
        assert_eq!(d.deleted[0].size, 1);
    }
}
