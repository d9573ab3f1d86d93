//! Property tests for the two parsers of untrusted input in this crate: the layer
//! unpacker (random tar entry sequences) and image references.
//!
//! The unpacker property: whatever the entries (`..`, absolute paths, symlinks and hard
//! links pointing anywhere, whiteouts), unpacking either succeeds or stops with
//! `UnsafeEntry`, and nothing outside the layer directory is created or modified.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use hangar_core::image::ImageError;
use hangar_image::Reference;
use hangar_image::unpack::{UnpackOptions, unpack_layer};
use proptest::prelude::*;
use tar::{EntryType, Header};

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    Hardlink(String),
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    kind: Kind,
}

/// Components chosen so that collisions, traversal and whiteouts are frequent; the
/// sandbox's sibling directory is `outside`, reachable as `../outside`.
fn component() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "a",
        "b",
        "c",
        "..",
        ".",
        "",
        "outside",
        "sentinel",
        ".wh.a",
        ".wh.b",
        ".wh..wh..opq",
        ".wh..wh.plnk",
        ".wh.",
        ".wh...",
    ])
}

fn path() -> impl Strategy<Value = String> {
    (
        prop::bool::weighted(0.15),
        prop::collection::vec(component(), 1..5),
    )
        .prop_map(|(absolute, comps)| {
            let joined = comps.join("/");
            if absolute {
                format!("/{joined}")
            } else {
                joined
            }
        })
        .prop_filter("fits a ustar name", |p| !p.is_empty() && p.len() < 100)
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        2 => Just(Kind::Dir),
        3 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Kind::File),
        2 => path().prop_map(Kind::Symlink),
        1 => prop::sample::select(vec!["..", "../outside", "/", "/etc", "../outside/sentinel"])
            .prop_map(|t| Kind::Symlink(t.to_string())),
        2 => path().prop_map(Kind::Hardlink),
        1 => Just(Kind::Hardlink("../outside/sentinel".to_string())),
    ]
}

fn entries() -> impl Strategy<Value = Vec<Entry>> {
    prop::collection::vec(
        (path(), kind()).prop_map(|(name, kind)| Entry { name, kind }),
        1..12,
    )
}

/// A tar with raw header names, so `..` and absolute paths reach the unpacker as is.
fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let (kind, link, data): (EntryType, &str, &[u8]) = match &e.kind {
            Kind::Dir => (EntryType::Directory, "", b""),
            Kind::File(d) => (EntryType::Regular, "", d),
            Kind::Symlink(t) => (EntryType::Symlink, t, b""),
            Kind::Hardlink(t) => (EntryType::Link, t, b""),
        };
        let mut h = Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name[..e.name.len()].copy_from_slice(e.name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_mtime(1_600_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.extend(std::iter::repeat_n(0u8, (512 - data.len() % 512) % 512));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

/// Every name under `dir`, recursively, without following symlinks.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn unpacking_random_entries_stays_inside_the_layer(entries in entries()) {
        let tmp = tempfile::tempdir().unwrap();
        let layer = tmp.path().join("layer");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&layer).unwrap();
        std::fs::create_dir(&outside).unwrap();
        let sentinel = outside.join("sentinel");
        std::fs::write(&sentinel, b"untouched").unwrap();
        let before = std::fs::metadata(&sentinel).unwrap();

        let result = unpack_layer(&tar_of(&entries)[..], &layer, &UnpackOptions::default());
        match &result {
            Ok(_) | Err(ImageError::UnsafeEntry { .. }) => {}
            Err(other) => prop_assert!(false, "unexpected error {other}: {other:?}"),
        }

        // Nothing new next to the layer or in the sentinel directory, and the sentinel
        // file is neither rewritten nor hard-linked from inside the layer.
        prop_assert_eq!(listing(tmp.path()).into_iter().filter(|p| !p.starts_with("layer/")).collect::<Vec<_>>(),
            vec!["layer".to_string(), "outside".to_string(), "outside/sentinel".to_string()]);
        let after = std::fs::symlink_metadata(&sentinel).unwrap();
        prop_assert!(after.file_type().is_file());
        prop_assert_eq!(after.nlink(), 1);
        prop_assert_eq!(after.ino(), before.ino());
        prop_assert_eq!(after.mode(), before.mode());
        prop_assert_eq!(std::fs::read(&sentinel).unwrap(), b"untouched");
        // Whatever the layer holds is reachable from it without leaving it: no entry is
        // a hard link to something that lives elsewhere.
        for name in listing(&layer) {
            let m = std::fs::symlink_metadata(layer.join(&name)).unwrap();
            prop_assert!(m.ino() != before.ino(), "{name} is the sentinel");
        }
    }

    #[test]
    fn reference_parse_never_panics(input in "\\PC{0,80}") {
        let _ = Reference::parse(&input);
    }

    #[test]
    fn reference_parse_never_panics_on_reference_like_input(
        input in "[a-zA-Z0-9._:/@-]{0,40}(@sha256:[0-9a-f]{0,64})?"
    ) {
        if let Ok(r) = Reference::parse(&input) {
            // Whatever is accepted prints as a reference that parses back to itself.
            prop_assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        }
    }

    #[test]
    fn normalised_references_round_trip(
        registry in prop::option::of(prop::sample::select(vec![
            "localhost", "localhost:5000", "127.0.0.1:5000", "registry.example", "r-1.example:443",
        ])),
        repository in "[a-z0-9]{1,8}([_-][a-z0-9]{1,8}){0,2}(/[a-z0-9]{1,8}([._-][a-z0-9]{1,4})?){0,3}",
        tag in prop::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
        digest in prop::option::of("[0-9a-f]{64}"),
    ) {
        let mut input = match registry {
            Some(r) => format!("{r}/{repository}"),
            None => repository.clone(),
        };
        if let Some(t) = &tag {
            input.push(':');
            input.push_str(t);
        }
        if let Some(d) = &digest {
            input.push_str("@sha256:");
            input.push_str(d);
        }
        let r = Reference::parse(&input).unwrap();
        prop_assert_eq!(&r.registry, registry.unwrap_or(""));
        prop_assert_eq!(&r.repository, &repository);
        let expected_tag = match (&tag, &digest) {
            (Some(t), _) => t.clone(),
            (None, Some(_)) => String::new(),
            (None, None) => "latest".to_string(),
        };
        prop_assert_eq!(&r.tag, &expected_tag);
        prop_assert_eq!(r.digest.clone(), digest.as_ref().map(|d| format!("sha256:{d}")));
        let printed = r.to_string();
        if tag.is_some() || digest.is_some() {
            prop_assert_eq!(&printed, &input);
        } else {
            prop_assert_eq!(printed.clone(), format!("{input}:latest"));
        }
        prop_assert_eq!(Reference::parse(&printed).unwrap(), r);
    }
}
