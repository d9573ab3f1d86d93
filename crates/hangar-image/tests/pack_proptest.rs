//! Property: packing a layer directory (for a push) and unpacking the blob gives the
//! same tree back — names, types, modes, contents, link targets, hard links — and
//! packing the same directory twice gives the same digests.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use hangar_image::pack::pack_layer;
use hangar_image::unpack::UnpackOptions;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Kind {
    Dir(u32),
    File(u32, Vec<u8>),
    Symlink(String),
    /// A hard link to the n-th regular file created so far, if any.
    Hardlink(usize),
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec!["a", "b", "c", "bin", "etc", "x y", "ü"]).prop_map(String::from),
        "[a-z]{1,120}",
    ]
}

fn kind() -> impl Strategy<Value = Kind> {
    let mode = prop::sample::select(vec![0o755u32, 0o700, 0o644, 0o600, 0o4755, 0o1777, 0o444]);
    prop_oneof![
        2 => mode.clone().prop_map(Kind::Dir),
        3 => (mode, prop::collection::vec(any::<u8>(), 0..3000)).prop_map(|(m, d)| Kind::File(m, d)),
        1 => "[a-z./]{1,150}".prop_map(Kind::Symlink),
        1 => (0usize..8).prop_map(Kind::Hardlink),
    ]
}

/// Creates the entries under `root`, each in a directory created earlier (picked by
/// `depth`); an entry whose name is taken is left out.
fn build(root: &Path, entries: &[(usize, String, Kind)]) {
    let mut dirs = vec![(root.to_path_buf(), None)];
    let mut files = Vec::new();
    for (depth, name, kind) in entries {
        let path = dirs[depth % dirs.len()].0.join(name);
        if std::fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match kind {
            Kind::Dir(mode) => {
                std::fs::create_dir(&path).unwrap();
                dirs.push((path, Some(*mode)));
            }
            Kind::File(mode, data) => {
                std::fs::write(&path, data).unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(*mode)).unwrap();
                files.push(path);
            }
            Kind::Symlink(target) => std::os::unix::fs::symlink(target, &path).unwrap(),
            Kind::Hardlink(n) => {
                if let Some(first) = files.get(*n) {
                    std::fs::hard_link(first, &path).unwrap();
                }
            }
        }
    }
    // Directory modes last, so a read-only directory could still be filled.
    for (dir, mode) in dirs.iter().rev() {
        if let Some(mode) = mode {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
    }
}

/// Relative path -> (type and mode, content or target, which hard-link group).
fn listing(root: &Path) -> BTreeMap<String, (u32, Vec<u8>, Option<String>)> {
    let mut out = BTreeMap::new();
    let mut first_path: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort();
    for p in all {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().display().to_string();
        let content = if m.is_file() {
            std::fs::read(&p).unwrap()
        } else if m.file_type().is_symlink() {
            std::fs::read_link(&p)
                .unwrap()
                .into_os_string()
                .into_encoded_bytes()
        } else {
            Vec::new()
        };
        let group = (m.is_file() && m.nlink() > 1)
            .then(|| first_path.entry(m.ino()).or_insert(rel.clone()).clone());
        out.insert(rel, (m.mode(), content, group));
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pack_then_unpack_round_trips(
        entries in prop::collection::vec((0usize..6, name(), kind()), 0..24)
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        std::fs::create_dir(&src).unwrap();
        build(&src, &entries);

        let a = pack_layer(&src, &tmp.path().join("a.tgz")).unwrap();
        let b = pack_layer(&src, &tmp.path().join("b.tgz")).unwrap();
        prop_assert_eq!(&a, &b);

        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        let blob = std::fs::File::open(tmp.path().join("a.tgz")).unwrap();
        let unpacked = hangar_image::blob::unpack_blob(
            blob,
            Some(&a.digest),
            Some(&a.diff_id),
            &out,
            &UnpackOptions::default(),
        );
        prop_assert!(unpacked.is_ok(), "{:?}", unpacked.err());
        prop_assert_eq!(listing(&src), listing(&out));
    }
}
