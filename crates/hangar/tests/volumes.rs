//! Black-box tests of volumes on the real daemon: ext4 images on the layers file
//! system, mounted into one machine at a time through `config.mounts`.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{busybox, eventually, launch, setup, sh};
use hangar_client::Client;
use hangar_types::{CreateVolumeRequest, MachineConfig, MachineExecRequest, StopRequest, Volume};
use serde_json::json;

const APP: &str = "vols";

async fn volume(client: &Client, name: &str, size_gb: u64) -> Volume {
    client
        .create_volume(
            APP,
            &CreateVolumeRequest {
                name: name.into(),
                size_gb: Some(size_gb),
                ..Default::default()
            },
        )
        .await
        .unwrap()
}

fn with_mounts(mut config: MachineConfig, mounts: &[(&str, &str)]) -> MachineConfig {
    let mounts: Vec<_> = mounts
        .iter()
        .map(|(volume, path)| json!({"volume": volume, "path": path}))
        .collect();
    config.extra.insert("mounts".into(), json!(mounts));
    config
}

fn sleeper() -> MachineConfig {
    busybox(&["sleep", "100000"])
}

/// Whether a loop device on the host is backed by this volume's image.
fn volume_on_loop(data_dir: &Path, volume: &str) -> bool {
    let image = data_dir.join(format!("layers/volumes/{volume}.ext4"));
    let Ok(image) = std::fs::metadata(image) else {
        return false;
    };
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir("/sys/block")
        .unwrap()
        .flatten()
        .any(|dev| {
            std::fs::read_to_string(dev.path().join("loop/backing_file"))
                .ok()
                .and_then(|b| std::fs::metadata(b.trim()).ok())
                .is_some_and(|m| m.ino() == image.ino() && m.dev() == image.dev())
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_keeps_its_files_across_stop_start_and_machines() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    // Through the CLI, as a robot with a shell would.
    let out = daemon
        .cli()
        .args([
            "volume", "create", "-a", APP, "data", "--size", "1", "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let vol: Volume = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((vol.size_gb, vol.fstype.as_str()), (1, "ext4"));
    assert_eq!(vol.attached_machine_id, None);

    let id = launch(&client, APP, with_mounts(sleeper(), &[("data", "/data")])).await;
    let m = client.get_machine(APP, &id).await.unwrap();
    assert_eq!(
        m.config.extra["mounts"][0]["volume"], vol.id,
        "the name is replaced by the id"
    );
    sh(
        &client,
        APP,
        &id,
        "echo kept > /data/note && mkdir /data/dir",
    )
    .await;
    let seen = client.get_volume(APP, &vol.id).await.unwrap();
    assert_eq!(seen.attached_machine_id.as_deref(), Some(id.as_str()));
    assert!(
        seen.blocks > 0 && seen.block_size > 0,
        "usage while mounted: {seen:?}"
    );

    client
        .stop_machine(APP, &id, &StopRequest::default())
        .await
        .unwrap();
    client.wait(APP, &id, "stopped", 30).await.unwrap();
    client.start_machine(APP, &id).await.unwrap();
    client.wait(APP, &id, "started", 30).await.unwrap();
    assert_eq!(sh(&client, APP, &id, "cat /data/note").await, "kept\n");
    // The mount is the volume's own file system, not part of the root's layer.
    let fs = sh(&client, APP, &id, "grep ' /data ' /proc/mounts").await;
    assert!(fs.contains("ext4"), "{fs}");
    // A checkpoint rewinds the root filesystem, not the volume, which stays mounted.
    let cp = client.create_checkpoint(APP, &id, None).await.unwrap();
    sh(
        &client,
        APP,
        &id,
        "echo later > /data/later && echo later > /root/later",
    )
    .await;
    client.restore_checkpoint(APP, &id, &cp.id).await.unwrap();
    client.wait(APP, &id, "started", 30).await.unwrap();
    assert_eq!(
        sh(
            &client,
            APP,
            &id,
            "test ! -e /root/later && cat /data/later"
        )
        .await,
        "later\n"
    );

    // The files API reaches into the volume, started and stopped, and lists its
    // paths as the machine sees them.
    let file = client.read_file(APP, &id, "/data/later").await.unwrap();
    assert_eq!(file.contents, b"later\n");
    client
        .write_file(
            APP,
            &id,
            "/data/sub/api",
            b"from the api\n".to_vec(),
            &hangar_client::WriteFileOptions {
                parents: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        sh(&client, APP, &id, "cat /data/sub/api").await,
        "from the api\n"
    );
    client
        .stop_machine(APP, &id, &StopRequest::default())
        .await
        .unwrap();
    client.wait(APP, &id, "stopped", 30).await.unwrap();
    let entries = client.list_files(APP, &id, "/data/sub").await.unwrap();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["/data/sub/api"]);
    client
        .remove_file(APP, &id, "/data/sub/api", false)
        .await
        .unwrap();
    let err = client
        .read_file(APP, &id, "/data/sub/api")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("file_not_found"), "{err}");
    let err = client
        .remove_file(APP, &id, "/data", true)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("mount point"), "{err}");

    client.destroy_machine(APP, &id, true).await.unwrap();
    let dir = daemon.data_dir().to_path_buf();
    let vol_id = vol.id.clone();
    eventually(
        "the volume's loop device to detach",
        Duration::from_secs(10),
        || {
            let (dir, vol_id) = (dir.clone(), vol_id.clone());
            async move { !volume_on_loop(&dir, &vol_id) }
        },
    )
    .await;
    assert_eq!(
        client
            .get_volume(APP, &vol.id)
            .await
            .unwrap()
            .attached_machine_id,
        None
    );

    let again = launch(
        &client,
        APP,
        with_mounts(sleeper(), &[(&vol.id, "/srv/data/")]),
    )
    .await;
    assert_eq!(
        sh(
            &client,
            APP,
            &again,
            "cat /srv/data/note && test -d /srv/data/dir && echo ok"
        )
        .await,
        "kept\nok\n"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn writing_past_the_size_fails_with_enospc_and_harms_nothing_else() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let vol = volume(&client, "small", 1).await;
    // Mounted by name through the CLI.
    let out = daemon
        .cli()
        .args([
            "machine",
            "run",
            "-a",
            APP,
            "busybox:latest",
            "--volume",
            "small:/data",
            "--json",
            "--",
            "sleep",
            "100000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = serde_json::from_slice::<hangar_types::Machine>(&out.stdout)
        .unwrap()
        .id;
    let req = MachineExecRequest {
        command: Some(
            [
                "sh",
                "-c",
                "dd if=/dev/zero of=/data/fill bs=1M count=1200 2>&1; echo rc=$?",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ),
        timeout: Some(300),
        ..Default::default()
    };
    let out = client.exec(APP, &id, &req).await.unwrap();
    assert!(
        out.stdout.contains("No space left on device"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("rc=0"), "{}", out.stdout);
    let size: u64 = sh(&client, APP, &id, "stat -c %s /data/fill")
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(size <= 1 << 30, "the volume held {size} bytes");
    // The root filesystem and the machine carry on.
    assert_eq!(
        sh(
            &client,
            APP,
            &id,
            "echo fine > /root/after && cat /root/after"
        )
        .await,
        "fine\n"
    );
    assert_eq!(client.get_machine(APP, &id).await.unwrap().state, "started");
    // Growing it makes room again: at once where the host lets a mounted file
    // system grow, else once the volume is next mounted.
    let grown = client.extend_volume(APP, &vol.id, 2).await.unwrap();
    assert_eq!(grown.volume.size_gb, 2);
    let free_kib = |id: String| {
        let client = client.clone();
        async move {
            sh(
                &client,
                APP,
                &id,
                "df -k /data | tail -1 | awk '{print $4}'",
            )
            .await
            .trim()
            .parse::<u64>()
            .unwrap()
        }
    };
    if !grown.needs_restart {
        let avail = free_kib(id.clone()).await;
        assert!(avail > 512 * 1024, "{avail} KiB free after extending");
    }
    client.destroy_machine(APP, &id, true).await.unwrap();
    let next = launch(&client, APP, with_mounts(sleeper(), &[(&vol.id, "/data")])).await;
    let avail = free_kib(next).await;
    assert!(avail > 512 * 1024, "{avail} KiB free in the next machine");
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshots_restore_and_forks_start_from_the_old_content() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let vol = volume(&client, "work", 1).await;
    let id = launch(&client, APP, with_mounts(sleeper(), &[(&vol.id, "/data")])).await;
    sh(&client, APP, &id, "echo v1 > /data/state").await;
    // A snapshot of a mounted volume, through the CLI.
    let out = daemon
        .cli()
        .args(["volume", "snapshot", "-a", APP, &vol.id, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: hangar_types::VolumeSnapshot = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(snap.size, 1 << 30);
    sh(&client, APP, &id, "echo v2 > /data/state").await;
    let listed = client.list_volume_snapshots(APP, &vol.id).await.unwrap();
    assert_eq!(
        listed.iter().map(|s| &s.id).collect::<Vec<_>>(),
        vec![&snap.id]
    );

    let restored = client
        .create_volume(
            APP,
            &CreateVolumeRequest {
                name: "restored".into(),
                snapshot_id: Some(snap.id.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(restored.size_gb, 1);
    // A fork of the mounted volume sees what its machine wrote last.
    let out = daemon
        .cli()
        .args([
            "volume", "fork", "-a", APP, &vol.id, "--name", "forked", "--size", "2", "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forked: Volume = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(forked.size_gb, 2);

    let other = launch(
        &client,
        APP,
        with_mounts(sleeper(), &[(&restored.id, "/old"), (&forked.id, "/new")]),
    )
    .await;
    assert_eq!(
        sh(&client, APP, &other, "cat /old/state /new/state").await,
        "v1\nv2\n"
    );
    // Each is its own: writing one changes no other.
    sh(&client, APP, &other, "echo v3 > /old/state").await;
    assert_eq!(sh(&client, APP, &id, "cat /data/state").await, "v2\n");
    let kb: u64 = sh(
        &client,
        APP,
        &other,
        "df -k /new | tail -1 | awk '{print $2}'",
    )
    .await
    .trim()
    .parse()
    .unwrap();
    assert!(kb > 3 * 512 * 1024, "the fork was grown to 2 GB: {kb} KiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_volume_is_mounted_by_one_machine_at_a_time() {
    let Some((daemon, client)) = setup(APP).await else {
        return;
    };
    let vol = volume(&client, "solo", 1).await;
    let first = launch(&client, APP, with_mounts(sleeper(), &[(&vol.id, "/data")])).await;

    let (status, body) = client
        .raw(
            reqwest::Method::POST,
            &format!("/v1/apps/{APP}/machines"),
            Some(json!({"config": with_mounts(sleeper(), &[(&vol.id, "/data")])})),
        )
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "volume_attached");
    assert!(body["error"].as_str().unwrap().contains(&first), "{body}");
    assert_eq!(
        client.list_machines(APP).await.unwrap().len(),
        1,
        "nothing half-made"
    );

    let (status, body) = client
        .raw(
            reqwest::Method::DELETE,
            &format!("/v1/apps/{APP}/volumes/{}", vol.id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "volume_attached");

    client.destroy_machine(APP, &first, true).await.unwrap();
    let out = daemon
        .cli()
        .args(["volume", "destroy", "-a", APP, &vol.id])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !daemon
            .data_dir()
            .join(format!("layers/volumes/{}.ext4", vol.id))
            .exists()
    );
    let (status, body) = client
        .raw(
            reqwest::Method::GET,
            &format!("/v1/apps/{APP}/volumes/{}", vol.id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (status.as_u16(), body["code"].as_str()),
        (404, Some("volume_not_found"))
    );
}
