//! `hangar machine commit`: a machine's root filesystem (or one of its checkpoints)
//! becomes a local image that new machines start from, and that a registry and
//! another daemon receive with the machine's additions and deletions intact.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::path::Path;
use std::process::Command;

use common::{Daemon, busybox, launch, setup, sh, skip_unless_root};
use hangar_client::ClientError;
use hangar_types::{
    CommitMachineRequest, CommitMachineResponse, MachineConfig, MachineInit, StopRequest,
};
use registry::{Registry, missing_tools};

const APP: &str = "builders";
/// What a robot's build leaves behind: a new file and a deleted one.
const BUILD: &str = "mkdir -p /opt/tool && echo v1 > /opt/tool/VERSION && rm /bin/vi";

fn sleeper(image: &str) -> MachineConfig {
    MachineConfig {
        image: image.into(),
        init: Some(MachineInit {
            exec: Some(vec!["sleep".into(), "100000".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `hangar machine commit ... --json`, which must succeed.
fn cli_commit(daemon: &Daemon, args: &[&str]) -> CommitMachineResponse {
    let out = daemon
        .cli()
        .args(["machine", "commit", "--app", APP])
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Snapshots taken for commits that are still on disk.
fn leftover_snapshots(daemon: &Daemon) -> Vec<String> {
    let out = Command::new("find")
        .arg(daemon.data_dir())
        .args(["-maxdepth", "6", "-path", "*/checkpoints/*/commit*"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn commit_req(reference: &str, checkpoint: Option<&str>) -> CommitMachineRequest {
    CommitMachineRequest {
        reference: reference.into(),
        checkpoint: checkpoint.map(Into::into),
        ..Default::default()
    }
}

fn api_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Api { code, message, .. }) => (code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_committed_machine_is_an_image_new_machines_start_from() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    client.wait(APP, &id, "started", 30).await.unwrap();
    sh(&client, APP, &id, BUILD).await;

    let committed = cli_commit(&daemon, &[&id, "--tag", "built:v1"]);
    assert_eq!(committed.image.reference, "built:v1");
    assert_eq!(
        committed.image.layers, 2,
        "busybox's layer and the machine's"
    );
    assert!(committed.image.digest.starts_with("sha256:"));
    assert_eq!((committed.checkpoint, committed.pushed), (None, None));
    // The snapshot taken for the commit is not left behind as a checkpoint.
    assert!(client.list_checkpoints(APP, &id).await.unwrap().is_empty());
    assert_eq!(leftover_snapshots(&daemon), Vec::<String>::new());
    // The machine keeps running, untouched.
    assert_eq!(sh(&client, APP, &id, "cat /opt/tool/VERSION").await, "v1\n");

    let child = launch(&client, APP, sleeper("built:v1")).await;
    client.wait(APP, &child, "started", 30).await.unwrap();
    assert_eq!(
        sh(
            &client,
            APP,
            &child,
            "cat /opt/tool/VERSION && test ! -e /bin/vi && readlink /bin/sh"
        )
        .await,
        "v1\nbusybox\n"
    );

    // A commit of a machine made from a commit stacks one more layer; a directory
    // replaced wholesale (an opaque directory in overlay terms) hides the old one.
    sh(
        &client,
        APP,
        &child,
        "echo old > /opt/tool/old && test -e /opt/tool/old",
    )
    .await;
    let grandchild_image = client
        .commit_machine(APP, &child, &commit_req("built:v2", None))
        .await
        .unwrap();
    assert_eq!(grandchild_image.image.layers, 3);
    let next = launch(&client, APP, sleeper("built:v2")).await;
    client.wait(APP, &next, "started", 30).await.unwrap();
    sh(
        &client,
        APP,
        &next,
        "rm -rf /opt/tool && mkdir /opt/tool && echo v3 > /opt/tool/VERSION",
    )
    .await;
    client
        .commit_machine(APP, &next, &commit_req("built:v3", None))
        .await
        .unwrap();
    let last = launch(&client, APP, sleeper("built:v3")).await;
    client.wait(APP, &last, "started", 30).await.unwrap();
    assert_eq!(
        sh(&client, APP, &last, "ls /opt/tool && cat /opt/tool/VERSION").await,
        "VERSION\nv3\n"
    );

    let listed = client.list_images().await.unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.reference == committed.image.reference),
        "{listed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_from_a_checkpoint_has_the_checkpoints_files_not_the_later_ones() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    client.wait(APP, &id, "started", 30).await.unwrap();
    sh(&client, APP, &id, BUILD).await;
    let cp = client
        .create_checkpoint(APP, &id, Some("built"))
        .await
        .unwrap();
    sh(
        &client,
        APP,
        &id,
        "echo v2 > /opt/tool/VERSION && touch /opt/tool/later && rm /bin/yes",
    )
    .await;
    // Stopped machines commit too.
    client
        .stop_machine(APP, &id, &StopRequest::default())
        .await
        .unwrap();
    client.wait(APP, &id, "stopped", 30).await.unwrap();

    let from_cp = cli_commit(
        &daemon,
        &[&id, "--tag", "built:cp", "--checkpoint", "built"],
    );
    assert_eq!(from_cp.checkpoint.as_deref(), Some(cp.id.as_str()));
    let now = client
        .commit_machine(APP, &id, &commit_req("built:now", None))
        .await
        .unwrap();
    assert_ne!(from_cp.image.digest, now.image.digest);

    let a = launch(&client, APP, sleeper("built:cp")).await;
    let b = launch(&client, APP, sleeper("built:now")).await;
    client.wait(APP, &a, "started", 30).await.unwrap();
    client.wait(APP, &b, "started", 30).await.unwrap();
    assert_eq!(
        sh(&client, APP,
            &a,
            "cat /opt/tool/VERSION && test ! -e /opt/tool/later && test ! -e /bin/vi && test -e /bin/yes && echo ok"
        )
        .await,
        "v1\nok\n"
    );
    assert_eq!(
        sh(&client, APP,
            &b,
            "cat /opt/tool/VERSION && test -e /opt/tool/later && test ! -e /bin/vi && test ! -e /bin/yes && echo ok"
        )
        .await,
        "v2\nok\n"
    );
    // The checkpoint is still there, and still only the one.
    let checkpoints = client.list_checkpoints(APP, &id).await.unwrap();
    assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_commits_say_what_is_wrong() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    client.wait(APP, &id, "started", 30).await.unwrap();

    let (code, _) = api_code(
        client
            .commit_machine(APP, "d000000000000000", &commit_req("built:v1", None))
            .await,
    );
    assert_eq!(code, "machine_not_found");
    for bad in ["Bad Ref!", "", "built@sha256:0000"] {
        let (code, message) = api_code(
            client
                .commit_machine(APP, &id, &commit_req(bad, None))
                .await,
        );
        assert_eq!(code, "bad_request", "{bad:?}: {message}");
    }
    let (code, message) = api_code(
        client
            .commit_machine(APP, &id, &commit_req("built:v1", Some("nope")))
            .await,
    );
    assert_eq!(code, "checkpoint_not_found", "{message}");
    // Nothing was recorded, and no snapshot was left behind.
    let images = client.list_images().await.unwrap();
    assert!(
        images.iter().all(|i| !i.reference.contains("built")),
        "{images:?}"
    );
    assert!(client.list_checkpoints(APP, &id).await.unwrap().is_empty());
    assert_eq!(leftover_snapshots(&daemon), Vec::<String>::new());
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `skopeo copy` then `umoci unpack`: the root filesystem the reference tools make of
/// an image in a registry.
fn unpack_with_reference_tools(work: &Path, reference: &str) -> std::path::PathBuf {
    let layout = work.join("layout");
    run(Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:t", layout.display())));
    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:t", layout.display()))
        .arg(&bundle));
    bundle.join("rootfs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_pushed_to_a_registry_runs_on_another_daemon() {
    if skip_unless_root() {
        return;
    }
    if let Some(reason) = missing_tools() {
        eprintln!("{reason}");
        return;
    }
    let reg = Registry::start(None);
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    client.wait(APP, &id, "started", 30).await.unwrap();
    sh(&client, APP, &id, BUILD).await;
    let dest = format!("{}/robots/built:v1", reg.addr);

    let committed = cli_commit(&daemon, &[&id, "--tag", "built:v1", "--push", &dest]);
    let pushed = committed.pushed.expect("a push result");
    assert_eq!(pushed.reference, dest);
    assert_eq!((pushed.layers, pushed.layers_present), (2, 0));
    // `--push` without a destination pushes to the tag, which names the registry;
    // the same content sends nothing new.
    let own = format!("{}/robots/built:own", reg.addr);
    let again = cli_commit(&daemon, &[&id, "--tag", &own, "--push"]);
    let again = again.pushed.expect("a push result");
    assert_eq!(
        (again.reference.as_str(), again.layers_present),
        (own.as_str(), 2)
    );

    // The reference tools see the machine's file and not the file it deleted.
    let work = tempfile::tempdir().unwrap();
    let rootfs = unpack_with_reference_tools(work.path(), &dest);
    assert_eq!(
        std::fs::read(rootfs.join("opt/tool/VERSION")).unwrap(),
        b"v1\n"
    );
    assert!(!rootfs.join("bin/vi").exists() && !rootfs.join("bin/.wh.vi").exists());
    assert!(rootfs.join("bin/busybox").is_file());

    // A second daemon pulls it and runs it.
    let other = Daemon::start();
    let client2 = other.client();
    let pulled = client2.pull_image(&dest).await.unwrap();
    assert_eq!(pulled.digest, pushed.digest);
    client2.create_app(APP, None).await.unwrap();
    let m = launch(&client2, APP, sleeper(&dest)).await;
    client2.wait(APP, &m, "started", 30).await.unwrap();
    assert_eq!(
        sh(
            &client2,
            APP,
            &m,
            "cat /opt/tool/VERSION && test ! -e /bin/vi && echo ok"
        )
        .await,
        "v1\nok\n"
    );
    client2.destroy_machine(APP, &m, true).await.unwrap();
    drop(reg);
}
