//! Black-box tests of the files API on the real daemon: reading, writing, listing,
//! making and removing files in started and stopped machines, and hostile machines
//! that plant symlinks and `..` to reach the host — which must never work.

mod common;

use std::path::Path;

use common::{busybox, launch, setup, sh};
use hangar_client::WriteFileOptions;
use hangar_types::{FileType, StopRequest};

const APP: &str = "robots";

fn opts(mode: u32, parents: bool) -> WriteFileOptions {
    WriteFileOptions {
        mode: Some(mode),
        parents,
        ..Default::default()
    }
}

fn code(err: hangar_client::ClientError) -> String {
    err.code().unwrap_or("none").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn files_round_trip_in_started_and_stopped_machines() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;

    // Every byte value, so nothing is mangled as text on the way.
    let binary: Vec<u8> = (0..=255u8).cycle().take(256 * 1024 + 7).collect();
    client
        .write_file(
            APP,
            &id,
            "/srv/a/blob.bin",
            binary.clone(),
            &opts(0o640, true),
        )
        .await
        .unwrap();
    let file = client.read_file(APP, &id, "/srv/a/blob.bin").await.unwrap();
    assert!(file.contents == binary, "binary content changed on the way");
    assert_eq!(file.mode, 0o640);
    assert_eq!(
        sh(&client, APP, &id, "stat -c '%a %u %g %s' /srv/a/blob.bin")
            .await
            .trim(),
        format!("640 0 0 {}", binary.len())
    );
    // Replacing keeps one file, with the new owner and mode.
    let owned = WriteFileOptions {
        mode: Some(0o4755),
        uid: Some(1000),
        gid: Some(100),
        parents: false,
    };
    client
        .write_file(APP, &id, "/srv/a/blob.bin", b"#!/bin/sh\n".to_vec(), &owned)
        .await
        .unwrap();
    assert_eq!(
        sh(
            &client,
            APP,
            &id,
            "stat -c '%a %u %g' /srv/a/blob.bin; ls -a /srv/a | wc -l"
        )
        .await,
        "4755 1000 100\n3\n"
    );

    client
        .make_dir(APP, &id, "/srv/a/d/e", Some(0o700), true)
        .await
        .unwrap();
    client
        .make_dir(APP, &id, "/srv/a/d/e", None, false)
        .await
        .unwrap();
    sh(&client, APP, &id, "ln -s blob.bin /srv/a/link").await;
    let entries = client.list_files(APP, &id, "/srv/a").await.unwrap();
    let names: Vec<(&str, FileType)> = entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(
        names,
        [
            ("blob.bin", FileType::File),
            ("d", FileType::Dir),
            ("link", FileType::Symlink)
        ]
    );
    assert_eq!(entries[0].path, "/srv/a/blob.bin");
    assert_eq!(entries[0].size, 10);
    assert_eq!(entries[2].target.as_deref(), Some("blob.bin"));
    let (status, listing) = client
        .raw(
            reqwest::Method::GET,
            &format!("/v1/apps/{APP}/machines/{id}/files?path=/srv/a/d"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    assert_eq!(listing[0]["name"], "e");
    assert_eq!(listing[0]["type"], "dir");
    assert_eq!(listing[0]["mode"], 0o700);

    // Mistakes get their own codes.
    let cases = [
        client.read_file(APP, &id, "/srv/nope").await.map(drop),
        client
            .read_file(APP, &id, "/srv/a/blob.bin/x")
            .await
            .map(drop),
        client
            .write_file(APP, &id, "/srv/a/d", vec![], &opts(0o644, false))
            .await,
        client
            .write_file(APP, &id, "/srv/b/c", vec![], &opts(0o644, false))
            .await,
        client.remove_file(APP, &id, "/srv/a/d", false).await,
        client.read_file(APP, &id, "srv/a").await.map(drop),
        client
            .read_file(APP, &id, "/proc/1/environ")
            .await
            .map(drop),
        client
            .write_file(APP, &id, "/dev/null", vec![], &opts(0o644, false))
            .await,
        client.remove_file(APP, &id, "/", true).await,
    ];
    let codes: Vec<String> = cases.into_iter().map(|r| code(r.unwrap_err())).collect();
    assert_eq!(
        codes,
        [
            "file_not_found",
            "not_a_directory",
            "is_a_directory",
            "file_not_found",
            "is_a_directory",
            "invalid_path",
            "invalid_path",
            "invalid_path",
            "invalid_path"
        ]
    );
    // A symlink is removed, never its target; a directory only when asked.
    client
        .remove_file(APP, &id, "/srv/a/link", false)
        .await
        .unwrap();
    client
        .remove_file(APP, &id, "/srv/a/d", true)
        .await
        .unwrap();
    assert_eq!(sh(&client, APP, &id, "ls /srv/a").await, "blob.bin\n");

    // A stopped machine's files are just as reachable, and really in its root.
    client
        .stop_machine(APP, &id, &StopRequest::default())
        .await
        .unwrap();
    client.wait(APP, &id, "stopped", 30).await.unwrap();
    client
        .write_file(
            APP,
            &id,
            "/root/notes/todo",
            b"written while stopped\n".to_vec(),
            &opts(0o600, true),
        )
        .await
        .unwrap();
    assert_eq!(
        client
            .read_file(APP, &id, "/root/notes/todo")
            .await
            .unwrap()
            .contents,
        b"written while stopped\n"
    );
    client
        .make_dir(APP, &id, "/root/empty", None, false)
        .await
        .unwrap();
    client
        .remove_file(APP, &id, "/srv/a/blob.bin", false)
        .await
        .unwrap();
    client.start_machine(APP, &id).await.unwrap();
    client.wait(APP, &id, "started", 30).await.unwrap();
    assert_eq!(
        sh(&client, APP, &id, "cat /root/notes/todo; stat -c %a /root/notes/todo; test -d /root/empty; test ! -e /srv/a/blob.bin && echo gone").await,
        "written while stopped\n600\ngone\n"
    );

    // The CLI, as a robot with a shell would use it.
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("in.bin");
    std::fs::write(&src, &binary).unwrap();
    let cli = |args: &[&str]| {
        let out = daemon
            .cli()
            .args(["machine", "files"])
            .args(args)
            .args(["-a", APP])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    cli(&[
        "put",
        &id,
        src.to_str().unwrap(),
        "/opt/x/in.bin",
        "--mode",
        "0755",
        "--parents",
    ]);
    assert!(cli(&["get", &id, "/opt/x/in.bin"]) == binary);
    let listing: serde_json::Value =
        serde_json::from_slice(&cli(&["--json", "ls", &id, "/opt/x"])).unwrap();
    assert_eq!(listing[0]["mode"], 0o755);
    cli(&["mkdir", &id, "/opt/y/z", "-p"]);
    cli(&["rm", &id, "/opt", "--recursive"]);
    assert_eq!(
        sh(&client, APP, &id, "test ! -e /opt && echo gone").await,
        "gone\n"
    );
}

/// A host directory with a secret the machine tries to reach.
struct Sentinel {
    dir: tempfile::TempDir,
}

impl Sentinel {
    fn new() -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("hangar-sentinel-")
            .tempdir()
            .unwrap();
        std::fs::write(dir.path().join("secret"), "host secret").unwrap();
        Sentinel { dir }
    }

    fn path(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// The secret is intact and nothing else appeared beside it.
    fn assert_untouched(&self) {
        assert_eq!(
            std::fs::read_to_string(self.dir.path().join("secret")).unwrap(),
            "host secret"
        );
        let names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn planted_symlinks_and_dot_dots_never_reach_the_host() {
    let Some((_daemon, client)) = setup(APP).await else {
        return;
    };
    let sentinel = Sentinel::new();
    let s = sentinel.path().to_string();
    // The machine swaps /tmp/swap between a real directory and a symlink to the
    // host's sentinel directory as fast as it can, for as long as it runs.
    let swapper = format!(
        "while :; do rm -rf /tmp/swap; mkdir /tmp/swap; echo inside > /tmp/swap/secret; \
         rm -rf /tmp/swap; ln -s {s} /tmp/swap; done"
    );
    let id = launch(&client, APP, busybox(&["sh", "-c", &swapper])).await;
    let unique = format!("hangar-escape-{}", std::process::id());
    sh(&client, APP,
        &id,
        &format!(
            "ln -s / /tmp/hostroot && ln -s ../../../../etc /tmp/up && ln -s /proc/self/root /tmp/self \
             && ln -s {s} /tmp/sent && ln -s {s}/secret /tmp/sentfile && echo machine-etc > /etc/marker"
        ),
    )
    .await;

    // Paths that name the host's sentinel resolve inside the machine, where it is absent.
    for path in [
        format!("{s}/secret"),
        format!("/tmp/hostroot{s}/secret"),
        "/tmp/sent/secret".to_string(),
        "/tmp/sentfile".to_string(),
        format!("/../../..{s}/secret"),
        format!("/tmp/self{s}/secret"),
        format!("/tmp/self/../../..{s}/secret"),
    ] {
        let err = client.read_file(APP, &id, &path).await.unwrap_err();
        assert!(
            ["file_not_found", "invalid_path"].contains(&err.code().unwrap_or("")),
            "{path}: {err}"
        );
    }
    // `..` and symlinks out of the root land on the machine's own files.
    for path in [
        "/tmp/up/marker",
        "/../../etc/marker",
        "/tmp/hostroot/etc/marker",
        "/tmp/hostroot/../../etc/marker",
    ] {
        let file = client.read_file(APP, &id, path).await.unwrap();
        assert_eq!(file.contents, b"machine-etc\n", "{path}");
    }
    match client.read_file(APP, &id, "/tmp/hostroot/etc/shadow").await {
        Ok(file) => assert_eq!(
            String::from_utf8_lossy(&file.contents),
            sh(&client, APP, &id, "cat /etc/shadow").await
        ),
        Err(err) => assert_eq!(err.code(), Some("file_not_found"), "{err}"),
    }
    // /proc through a symlink is refused, not followed to the daemon's own root.
    let err = client
        .write_file(
            APP,
            &id,
            &format!("/tmp/self/{unique}"),
            b"x".to_vec(),
            &opts(0o644, false),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_path"), "{err}");
    let err = client.list_files(APP, &id, "/tmp/self").await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_path"), "{err}");

    // Deletes through symlinks out of the root find nothing of the host to delete.
    let remove_codes = [
        client
            .remove_file(APP, &id, &format!("/tmp/hostroot{s}/secret"), false)
            .await,
        client
            .remove_file(APP, &id, &format!("/tmp/hostroot{s}"), true)
            .await,
        client
            .remove_file(APP, &id, &format!("/tmp/self{s}"), true)
            .await,
    ];
    for result in remove_codes {
        let err = result.unwrap_err();
        assert!(
            ["file_not_found", "invalid_path"].contains(&err.code().unwrap_or("")),
            "{err}"
        );
    }
    // Writes and deletes through the same symlinks change only the machine.
    client
        .write_file(
            APP,
            &id,
            &format!("/tmp/hostroot/{unique}"),
            b"in".to_vec(),
            &opts(0o644, false),
        )
        .await
        .unwrap();
    client
        .write_file(
            APP,
            &id,
            &format!("/tmp/sent/{unique}"),
            b"in".to_vec(),
            &opts(0o644, true),
        )
        .await
        .unwrap_err();
    // Like `mkdir -p`, parents are not made through a dangling symlink; made
    // inside the machine, the symlink's target is the machine's own directory.
    client
        .write_file(
            APP,
            &id,
            &format!("/tmp/hostroot{s}/{unique}"),
            b"in".to_vec(),
            &opts(0o644, true),
        )
        .await
        .unwrap();
    client
        .write_file(
            APP,
            &id,
            &format!("/tmp/sent/{unique}"),
            b"in".to_vec(),
            &opts(0o644, false),
        )
        .await
        .unwrap();
    client
        .write_file(
            APP,
            &id,
            "/tmp/sentfile",
            b"replaced".to_vec(),
            &opts(0o644, false),
        )
        .await
        .unwrap();
    assert_eq!(
        sh(
            &client,
            APP,
            &id,
            &format!("cat /{unique} {s}/{unique} /tmp/sentfile")
        )
        .await,
        "ininreplaced"
    );
    // The machine's copy of the sentinel path is a directory inside it; removing it
    // recursively removes the machine's files only.
    client
        .remove_file(APP, &id, &format!("/tmp/hostroot{s}"), true)
        .await
        .unwrap();

    // Racing the swapper: every answer is the machine's file or an error.
    for round in 0..200 {
        let name = format!("/tmp/swap/w{round}");
        let _ = client
            .write_file(APP, &id, &name, b"raced".to_vec(), &opts(0o644, false))
            .await;
        match client.read_file(APP, &id, "/tmp/swap/secret").await {
            // The machine may be half way through writing its own file.
            Ok(file) => assert!(b"inside\n".starts_with(&file.contents), "{file:?}"),
            Err(err) => assert!(
                ["file_not_found", "invalid_path", "not_a_directory"]
                    .contains(&err.code().unwrap_or("")),
                "{err}"
            ),
        }
        let _ = client
            .remove_file(APP, &id, "/tmp/swap/secret", false)
            .await;
        let _ = client.remove_file(APP, &id, "/tmp/swap", true).await;
        let _ = client.make_dir(APP, &id, "/tmp/swap/sub", None, true).await;
    }

    sentinel.assert_untouched();
    assert!(!Path::new(&format!("/{unique}")).exists());
    assert!(!Path::new(&format!("/tmp/{unique}")).exists());
}
