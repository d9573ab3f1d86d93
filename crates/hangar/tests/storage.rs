//! Black-box tests of what keeps a robot's work: the persistent root filesystem,
//! checkpoints, restore, fork, diff and suspend, on the real daemon with its
//! loop-mounted btrfs for writable layers.

mod common;

use std::time::Duration;

use common::{busybox, eventually, launch, setup, sh};
use hangar_client::Client;
use hangar_types::{CreateMachineRequest, ForkMachineRequest, MachineExecRequest, StopRequest};

const APP: &str = "robots";

async fn state(client: &Client, id: &str) -> String {
    client.get_machine(APP, id).await.unwrap().state
}

async fn stop(client: &Client, id: &str) {
    client
        .stop_machine(APP, id, &StopRequest::default())
        .await
        .unwrap();
    client.wait(APP, id, "stopped", 30).await.unwrap();
}

/// The files a robot built up before its checkpoint.
const BUILD: &str = "mkdir -p /srv/app && echo one > /srv/app/keep && chmod 640 /srv/app/keep \
    && ln -s keep /srv/app/link && echo bye > /srv/app/gone && rm /bin/yes";
/// Then it breaks things.
const BREAK: &str = "echo two >> /srv/app/keep && chmod 600 /srv/app/keep && rm /srv/app/gone /srv/app/link \
    && ln -s nowhere /srv/app/link2 && echo new > /srv/app/new \
    && dd if=/dev/zero of=/srv/app/big bs=1024 count=1024 2>/dev/null && rm /bin/cat";
/// Exactly the state of BUILD, and nothing of BREAK.
const CHECK: &str = "test \"$(cat /srv/app/keep)\" = one && test \"$(stat -c %a /srv/app/keep)\" = 640 \
    && test \"$(readlink /srv/app/link)\" = keep && test \"$(cat /srv/app/gone)\" = bye \
    && test ! -e /srv/app/new && test ! -e /srv/app/big && test ! -L /srv/app/link2 \
    && test ! -e /bin/yes && test -e /bin/cat && echo ok";

/// What a machine's root holds besides its files, whole after a restore: its own
/// `/proc` (a handful of processes, not the host's), `/dev`, `/sys`, and no trace of
/// the restore's own mounts.
const INTACT: &str = "test \"$(ls -d /proc/[0-9]* | wc -l)\" -lt 10 && echo x > /dev/null \
    && test -c /dev/urandom && grep -q ' /dev/pts ' /proc/mounts && grep -q ' /sys ' /proc/mounts \
    && test \"$(grep -c ' / ' /proc/mounts)\" = 1 && ! grep -q hangar-root /proc/mounts \
    && test ! -e /dev/.hangar-root && echo ok";

/// The machine's mount points and their types.
const MOUNTS: &str = "cut -d' ' -f2,3 /proc/mounts | sort";

/// Staged, swapped-out and spare layers beside the machines' own.
fn hidden_layers(layers: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(layers)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_rewinds_a_started_and_a_stopped_machine() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    sh(&client, APP, &id, BUILD).await;
    // Through the CLI, as a robot with a shell would.
    let out = daemon
        .cli()
        .args([
            "machine",
            "checkpoint",
            "create",
            "-a",
            APP,
            &id,
            "--name",
            "base",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base: hangar_types::Checkpoint = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (base.name.as_str(), base.machine_state.as_str()),
        ("base", "started")
    );

    sh(&client, APP, &id, BREAK).await;
    let diff = client
        .diff_checkpoint(APP, &id, "base", None)
        .await
        .unwrap();
    let paths =
        |v: &[hangar_types::DiffEntry]| v.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
    assert_eq!(
        paths(&diff.added),
        ["/srv/app/big", "/srv/app/link2", "/srv/app/new"],
        "{diff:?}"
    );
    assert_eq!(diff.added[0].size, 1024 * 1024);
    assert_eq!(paths(&diff.modified), ["/srv/app/keep"], "{diff:?}");
    assert_eq!(
        paths(&diff.deleted),
        ["/bin/cat", "/srv/app/gone", "/srv/app/link"],
        "{diff:?}"
    );

    // Started: restarted into the checkpoint, with the same mounts as before.
    let mounts = sh(&client, APP, &id, MOUNTS).await;
    let restored = client.restore_checkpoint(APP, &id, "base").await.unwrap();
    assert_eq!(restored.id, base.id);
    assert_eq!(state(&client, &id).await, "started");
    assert_eq!(sh(&client, APP, &id, CHECK).await, "ok\n");
    assert_eq!(sh(&client, APP, &id, INTACT).await, "ok\n");
    assert_eq!(sh(&client, APP, &id, MOUNTS).await, mounts);
    let layers = daemon.data_dir().join("machines/layers/machines");
    eventually(
        "the swapped-out layer to be deleted",
        Duration::from_secs(30),
        || {
            let layers = layers.clone();
            async move {
                !hidden_layers(&layers)
                    .iter()
                    .any(|n| n.starts_with(".staged-"))
            }
        },
    )
    .await;
    // Rewinding again to the same point uses the spare made meanwhile.
    let spare = format!(".spare-{id}.{}", base.id);
    eventually(
        "a spare of the restored checkpoint",
        Duration::from_secs(30),
        || {
            let (layers, spare) = (layers.clone(), spare.clone());
            async move { hidden_layers(&layers).contains(&spare) }
        },
    )
    .await;
    sh(&client, APP, &id, BREAK).await;
    client.restore_checkpoint(APP, &id, "base").await.unwrap();
    assert_eq!(sh(&client, APP, &id, CHECK).await, "ok\n");
    assert!(
        !hidden_layers(&layers).contains(&spare),
        "the spare was used"
    );
    let diff = client
        .diff_checkpoint(APP, &id, &base.id, None)
        .await
        .unwrap();
    assert_eq!(
        diff,
        Default::default(),
        "nothing changed since the restore"
    );

    // Stopped: a checkpoint of a stopped machine, restored while stopped.
    stop(&client, &id).await;
    let stopped = client
        .create_checkpoint(APP, &id, Some("stopped"))
        .await
        .unwrap();
    assert_eq!(stopped.machine_state, "stopped");
    client.start_machine(APP, &id).await.unwrap();
    sh(&client, APP, &id, BREAK).await;
    stop(&client, &id).await;
    client
        .restore_checkpoint(APP, &id, "stopped")
        .await
        .unwrap();
    assert_eq!(state(&client, &id).await, "stopped");
    client.start_machine(APP, &id).await.unwrap();
    assert_eq!(sh(&client, APP, &id, CHECK).await, "ok\n");
    assert_eq!(sh(&client, APP, &id, INTACT).await, "ok\n");

    // Two checkpoints compare with each other.
    let diff = client
        .diff_checkpoint(APP, &id, "base", Some("stopped"))
        .await
        .unwrap();
    assert_eq!(diff, Default::default());
    let names: Vec<String> = client
        .list_checkpoints(APP, &id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["base", "stopped"]);

    // Another machine's checkpoint is not this machine's to restore.
    let other = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    let err = client
        .restore_checkpoint(APP, &other, &base.id)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("checkpoint_not_found"), "{err}");
    assert!(err.to_string().contains("fork"), "{err}");
    let err = client
        .restore_checkpoint(APP, &id, "nope")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("checkpoint_not_found"));

    client.delete_checkpoint(APP, &id, "stopped").await.unwrap();
    let err = client
        .get_checkpoint(APP, &id, "stopped")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("checkpoint_not_found"));

    // Destroyed, the machines leave no layer, checkpoint or spare behind.
    for m in [&id, &other] {
        client.destroy_machine(APP, m, true).await.unwrap();
    }
    eventually("every layer to be deleted", Duration::from_secs(30), || {
        let layers = layers.clone();
        async move { std::fs::read_dir(&layers).is_ok_and(|mut d| d.next().is_none()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forks_diverge_independently() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let source = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    sh(&client, APP, &source, "echo shared > /root/base").await;
    let cp = client
        .create_checkpoint(APP, &source, Some("before-ideas"))
        .await
        .unwrap();
    sh(&client, APP, &source, "echo later > /root/source-only").await;

    let forked = client
        .fork_machine(
            APP,
            &source,
            &ForkMachineRequest {
                checkpoint: Some("before-ideas".into()),
                count: Some(3),
                name: Some("idea".into()),
            },
        )
        .await
        .unwrap();
    assert_eq!(forked.checkpoint, cp.id);
    let names: Vec<&str> = forked.machines.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["idea-1", "idea-2", "idea-3"]);
    for (i, m) in forked.machines.iter().enumerate() {
        assert_eq!(m.state, "started");
        assert_ne!(m.id, source);
        sh(&client, APP, &m.id, &format!("echo {i} > /root/mine")).await;
    }
    for (i, m) in forked.machines.iter().enumerate() {
        let seen = sh(&client, APP, &m.id, "cat /root/base /root/mine; ls /root").await;
        assert_eq!(seen, format!("shared\n{i}\nbase\nmine\n"));
    }
    assert_eq!(
        sh(&client, APP, &source, "ls /root").await,
        "base\nsource-only\n"
    );

    // Forks are snapshots of their own: the checkpoint can go, they keep their files.
    client
        .delete_checkpoint(APP, &source, &cp.id)
        .await
        .unwrap();
    let m = &forked.machines[0];
    stop(&client, &m.id).await;
    client.start_machine(APP, &m.id).await.unwrap();
    assert_eq!(sh(&client, APP, &m.id, "cat /root/base").await, "shared\n");

    // Without a checkpoint, the current state is checkpointed for the fork; a
    // stopped source gives forks that are created but not started.
    stop(&client, &source).await;
    let out = daemon
        .cli()
        .args(["machine", "fork", "-a", APP, &source, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fork: hangar_types::ForkMachineResponse = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(fork.machines.len(), 1);
    assert_eq!(fork.machines[0].state, "created");
    let listed = client.list_checkpoints(APP, &source).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, fork.checkpoint);
    client
        .start_machine(APP, &fork.machines[0].id)
        .await
        .unwrap();
    assert_eq!(
        sh(&client, APP, &fork.machines[0].id, "ls /root").await,
        "base\nsource-only\n"
    );

    let err = client
        .fork_machine(
            APP,
            &source,
            &ForkMachineRequest {
                count: Some(101),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("bad_request"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_root_filesystem_survives_losing_init_and_the_daemon() {
    let Some((mut daemon, client)) = setup(APP).await else {
        return;
    };
    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    sh(
        &client,
        APP,
        &id,
        "echo precious > /root/notes && mkdir -p /opt/tool",
    )
    .await;

    // A host reboot loses every process: the daemon and the machine's init.
    daemon.kill9();
    let pidfile = daemon
        .data_dir()
        .join("machines")
        .join(&id)
        .join("init.pid");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the machine's init, which this test's daemon started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    common::eventually("init to be gone", Duration::from_secs(10), || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.is_empty() || stat.contains(") Z ")
    })
    .await;

    daemon.spawn();
    let client = daemon.client();
    client.wait(APP, &id, "started", 30).await.unwrap();
    // Started again for real: the main process runs in the rebuilt sandbox.
    let ps = client.ps(APP, &id).await.unwrap();
    assert!(ps.iter().any(|p| p.command.contains("sleep")), "{ps:?}");
    let events = client.events(APP, &id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.kind == "start" && e.status == "started" && e.source == "hangar"),
        "{events:?}"
    );
    assert_eq!(
        sh(
            &client,
            APP,
            &id,
            "cat /root/notes; test -d /opt/tool && echo dir"
        )
        .await,
        "precious\ndir\n"
    );

    // An ephemeral root goes back to the image on every start.
    let mut eph = busybox(&["sleep", "100000"]);
    eph.extra.insert("rootfs".into(), "ephemeral".into());
    let e = launch(&client, APP, eph).await;
    sh(&client, APP, &e, "echo scratch > /root/tmp").await;
    client
        .create_checkpoint(APP, &e, Some("scratch"))
        .await
        .unwrap();
    stop(&client, &e).await;
    client.start_machine(APP, &e).await.unwrap();
    assert_eq!(sh(&client, APP, &e, "ls /root").await, "");
    // A restore of a started ephemeral machine restarts it into the checkpoint.
    client.restore_checkpoint(APP, &e, "scratch").await.unwrap();
    assert_eq!(sh(&client, APP, &e, "ls /root").await, "tmp\n");

    let mut bad = busybox(&["sleep", "100000"]);
    bad.extra.insert("rootfs".into(), "forever".into());
    let err = client
        .create_machine(
            APP,
            &CreateMachineRequest {
                config: bad,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_config"));
}

#[tokio::test(flavor = "multi_thread")]
async fn suspend_freezes_and_start_resumes() {
    let Some((_daemon, client)) = setup(APP).await else {
        return;
    };
    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    sh(&client, APP, &id, "echo kept > /root/mem").await;
    client.suspend_machine(APP, &id).await.unwrap();
    assert_eq!(state(&client, &id).await, "suspended");
    let err = client
        .exec(
            APP,
            &id,
            &MachineExecRequest {
                command: Some(vec!["true".into()]),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("invalid_state"), "{err}");
    // A suspended machine checkpoints as it is (already frozen).
    let cp = client.create_checkpoint(APP, &id, None).await.unwrap();
    assert_eq!(cp.machine_state, "suspended");
    assert_eq!(state(&client, &id).await, "suspended");

    let previous = client.start_machine(APP, &id).await.unwrap();
    assert_eq!(previous["previous_state"], "suspended");
    assert_eq!(state(&client, &id).await, "started");
    assert_eq!(sh(&client, APP, &id, "cat /root/mem").await, "kept\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn update_keeps_or_resets_the_writable_layer_as_asked() {
    let Some((_daemon, client)) = setup(APP).await else {
        return;
    };
    // A second image: busybox with one more layer.
    let builder = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    sh(&client, APP, &builder, "echo from-image > /etc/built").await;
    client
        .commit_machine(
            APP,
            &builder,
            &hangar_types::CommitMachineRequest {
                reference: "built:update".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    sh(&client, APP, &id, "echo mine > /root/work").await;
    let update = |image: &str, reset: Option<bool>| hangar_types::UpdateMachineRequest {
        config: hangar_types::MachineConfig {
            image: image.into(),
            ..busybox(&["sleep", "100000"])
        },
        rootfs_reset: reset,
        ..Default::default()
    };
    // A new image, keeping the machine's files on top of it.
    client
        .update_machine(APP, &id, &update("built:update", Some(false)))
        .await
        .unwrap();
    assert_eq!(
        sh(&client, APP, &id, "cat /root/work /etc/built").await,
        "mine\nfrom-image\n"
    );
    // The same image, reset on request.
    client
        .update_machine(APP, &id, &update("built:update", Some(true)))
        .await
        .unwrap();
    assert_eq!(
        sh(&client, APP, &id, "test ! -e /root/work && cat /etc/built").await,
        "from-image\n"
    );
    // A new image resets by default.
    sh(&client, APP, &id, "echo mine > /root/work").await;
    client
        .update_machine(APP, &id, &update("busybox:latest", None))
        .await
        .unwrap();
    assert_eq!(
        sh(
            &client,
            APP,
            &id,
            "test ! -e /root/work && test ! -e /etc/built && echo reset"
        )
        .await,
        "reset\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_on_full_storage_fails_cleanly_and_leaves_the_machine_alone() {
    if common::skip_unless_root() {
        return;
    }
    // The smallest layers file system, filled by the machine itself.
    let daemon = common::Daemon::start_with_env(&[("HANGAR_LAYERS_SIZE", "1G")]);
    daemon.import_busybox("busybox:latest");
    let client = daemon.client();
    client.create_app(APP, None).await.unwrap();
    let id = launch(&client, APP, busybox(&["sleep", "100000"])).await;
    sh(&client, APP, &id, "echo precious > /root/keep").await;
    let fill = MachineExecRequest {
        command: Some(
            [
                "sh",
                "-c",
                "dd if=/dev/zero of=/root/fill bs=1M count=2048 2>&1; sync; echo done",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ),
        timeout: Some(300),
        ..Default::default()
    };
    let out = client.exec(APP, &id, &fill).await.unwrap();
    assert!(
        out.stdout.contains("No space left on device"),
        "{}",
        out.stdout
    );

    // However often it is tried, a checkpoint either is whole or is not at all.
    let mut taken = Vec::new();
    for _ in 0..3 {
        match client.create_checkpoint(APP, &id, None).await {
            Ok(c) => taken.push(c.id),
            Err(hangar_client::ClientError::Api {
                status,
                code,
                message,
            }) => {
                assert_eq!((status, code.as_str()), (507, "storage_full"), "{message}");
                assert!(message.contains("--layers-size"), "{message}");
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    let listed: Vec<String> = client
        .list_checkpoints(APP, &id)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(listed, taken);
    // The machine runs on, not frozen, with its files.
    assert_eq!(state(&client, &id).await, "started");
    assert_eq!(sh(&client, APP, &id, "cat /root/keep").await, "precious\n");
    // Freeing space makes checkpoints work again.
    sh(&client, APP, &id, "rm /root/fill && sync").await;
    for c in &taken {
        client.delete_checkpoint(APP, &id, c).await.unwrap();
    }
    common::eventually(
        "a checkpoint to succeed again",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let id = id.clone();
            async move { client.create_checkpoint(APP, &id, None).await.is_ok() }
        },
    )
    .await;
}
