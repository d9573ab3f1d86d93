//! Images through the real daemon: pulls from a real registry (Debian's
//! `docker-registry`, plain and with htpasswd) by the CLI, the API and machine
//! creation; the errors a user sees; removal and prune next to machines.

mod common;
#[path = "common/registry.rs"]
mod registry;

use std::io::Write;
use std::process::Stdio;

use common::{Daemon, skip_unless_root};
use futures::StreamExt;
use hangar_client::ClientError;
use hangar_types::{
    CreateMachineRequest, ImageSummary, MachineConfig, MachineExecRequest, MachineInit, PullEvent,
};
use registry::{Registry, build_layout, missing_tools, push};

/// Skips unless root (machines) and the registry tools are here, saying why.
fn skip() -> bool {
    if skip_unless_root() {
        return true;
    }
    if let Some(reason) = missing_tools() {
        eprintln!("{reason}");
        return true;
    }
    false
}

fn machine_from(image: &str) -> CreateMachineRequest {
    CreateMachineRequest {
        config: MachineConfig {
            image: image.into(),
            init: Some(MachineInit {
                exec: Some(vec!["sleep".into(), "100000".into()]),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn sh(script: &str) -> MachineExecRequest {
    MachineExecRequest {
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ..Default::default()
    }
}

fn api_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> (String, String) {
    match result {
        Err(ClientError::Api { code, message, .. }) => (code, message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

/// A registry holding `test/busybox:v1` and `:v2` (v2 deletes files of v1).
fn registry_with_busybox(work: &std::path::Path, creds: Option<(&str, &str)>) -> Registry {
    let reg = Registry::start(creds);
    let layout = build_layout(work);
    let joined = creds.map(|(u, p)| format!("{u}:{p}"));
    for tag in ["v1", "v2"] {
        push(
            &layout,
            tag,
            &format!("{}/test/busybox:{tag}", reg.addr),
            joined.as_deref(),
        );
    }
    reg
}

#[tokio::test(flavor = "multi_thread")]
async fn pulls_by_cli_and_api_then_inspects_lists_and_removes() {
    if skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry_with_busybox(work.path(), None);
    let daemon = Daemon::start();
    let client = daemon.client();
    let v1 = format!("{}/test/busybox:v1", reg.addr);
    let v2 = format!("{}/test/busybox:v2", reg.addr);

    let out = daemon
        .cli()
        .args(["image", "pull", &v1, "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pulled: ImageSummary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pulled.reference, v1);
    assert_eq!(pulled.layers, 1);
    assert!(pulled.digest.starts_with("sha256:"));

    // v2 shares v1's layer: the stream says so, and only the new layer is fetched.
    let mut events = Box::pin(client.pull_image_events(&v2).await.unwrap());
    let mut seen = Vec::new();
    while let Some(ev) = events.next().await {
        seen.push(ev.unwrap());
    }
    assert!(
        matches!(&seen[0], PullEvent::Resolved { layers: 2, .. }),
        "{seen:?}"
    );
    let done: Vec<bool> = seen
        .iter()
        .filter_map(|e| match e {
            PullEvent::LayerDone { cached, .. } => Some(*cached),
            _ => None,
        })
        .collect();
    assert_eq!(done.iter().filter(|c| **c).count(), 1, "{seen:?}");
    assert_eq!(done.iter().filter(|c| !**c).count(), 1, "{seen:?}");
    let summary = match seen.last() {
        Some(PullEvent::Done { image }) => image.clone(),
        other => panic!("the stream should end with done, got {other:?}"),
    };
    assert_eq!(summary.layers, 2);

    // Pulling again without streaming is a no-op that answers the same image.
    let again = client.pull_image(&v2).await.unwrap();
    assert_eq!(again.digest, summary.digest);

    let details = client.inspect_image(&v2).await.unwrap();
    assert_eq!(details.source.registry, reg.addr);
    assert_eq!(details.source.repository, "test/busybox");
    assert_eq!(details.source.tag, "v2");
    assert_eq!(details.source.digest, summary.digest);
    assert_eq!(details.layers.len(), 2);
    assert!(
        details
            .layers
            .iter()
            .all(|l| l.diff_id.starts_with("sha256:"))
    );
    assert_eq!(
        details.size,
        details.layers.iter().map(|l| l.size).sum::<u64>()
    );
    assert_eq!(details.config.cmd, vec!["/bin/sh"]);
    assert!(details.config.env.contains(&"GREETING=hello".to_string()));

    let out = daemon.cli().args(["image", "list"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(listing.contains(&v1) && listing.contains(&v2), "{listing}");

    let out = daemon.cli().args(["image", "rm", &v1]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, message) = api_code(client.inspect_image(&v1).await);
    assert_eq!(code, "image_not_found");
    assert!(message.contains(&v1), "{message}");
    // v1's only layer is v2's lower layer: prune must keep it.
    let pruned = client.prune_images().await.unwrap();
    assert_eq!(pruned.layers_removed, 0);
    assert_eq!(client.inspect_image(&v2).await.unwrap().layers.len(), 2);

    let (status, doc) = client
        .raw(reqwest::Method::GET, "/v1/openapi.json", None)
        .await
        .unwrap();
    assert!(status.is_success());
    for path in [
        "/v1/images/pull",
        "/v1/images/{reference}",
        "/v1/images/prune",
        "/v1/registries/{host}/login",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn creating_a_machine_pulls_its_image_and_whiteouts_hide_files() {
    if skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let reg = registry_with_busybox(work.path(), None);
    let daemon = Daemon::start();
    let client = daemon.client();
    let v1 = format!("{}/test/busybox:v1", reg.addr);
    let v2 = format!("{}/test/busybox:v2", reg.addr);
    client.create_app("pulls", None).await.unwrap();

    // Never pulled before: creation pulls it and records the pull as events.
    let m = client
        .create_machine("pulls", &machine_from(&v2))
        .await
        .unwrap();
    assert_eq!(m.image_ref.registry, reg.addr);
    assert_eq!(m.image_ref.repository, "test/busybox");
    assert_eq!(m.image_ref.tag, "v2");
    let events = client.events("pulls", &m.id).await.unwrap();
    let layer_events: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "pull" && e.status == "layer")
        .collect();
    assert_eq!(layer_events.len(), 2, "{events:?}");
    let pulled_bytes: u64 = layer_events
        .iter()
        .map(|e| e.request["bytes"].as_u64().unwrap())
        .sum();
    assert!(pulled_bytes > 0, "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e.kind == "pull" && e.status == "pulled"),
        "{events:?}"
    );

    let out = client
        .exec(
            "pulls",
            &m.id,
            &sh("cat /etc/motd /var/cache/app/new; echo $GREETING"),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");
    assert_eq!(out.stdout, "welcome\nnew\nhello\n");
    // Deleted by the upper layer: absent inside the machine.
    let out = client
        .exec(
            "pulls",
            &m.id,
            &sh("for f in /etc/removeme /doomed /var/cache/app/old; do test -e $f && echo $f; done; true"),
        )
        .await
        .unwrap();
    assert_eq!(
        out.stdout, "",
        "files deleted by the upper layer are visible"
    );

    // A second machine from the cached image pulls nothing.
    let m2 = client
        .create_machine("pulls", &machine_from(&v2))
        .await
        .unwrap();
    let events = client.events("pulls", &m2.id).await.unwrap();
    assert!(!events.iter().any(|e| e.kind == "pull"), "{events:?}");
    client.destroy_machine("pulls", &m2.id, true).await.unwrap();

    // In use: removal is refused, naming the machine.
    let (code, message) = api_code(client.remove_image(&v2).await);
    assert_eq!(code, "image_in_use");
    assert!(message.contains(m.id.as_str()), "{message}");
    let out = daemon.cli().args(["image", "rm", &v2]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("image_in_use"));

    // Prune keeps what the machine stacks even once no image names those layers.
    client.pull_image(&v1).await.unwrap();
    let mut record = client
        .raw(
            reqwest::Method::DELETE,
            &format!("/v1/images/{}", hangar_client::encode_segment(&v1)),
            None,
        )
        .await
        .unwrap();
    assert!(record.0.is_success(), "{:?}", record.1);
    record = client
        .raw(reqwest::Method::POST, "/v1/images/prune", None)
        .await
        .unwrap();
    assert_eq!(record.1["layers_removed"], 0, "{:?}", record.1);
    let out = client
        .exec("pulls", &m.id, &sh("cat /etc/motd"))
        .await
        .unwrap();
    assert_eq!(out.stdout, "welcome\n");

    // Once the machine is gone the image can go, and prune frees its layers.
    client.destroy_machine("pulls", &m.id, true).await.unwrap();
    client.remove_image(&v2).await.unwrap();
    let out = daemon
        .cli()
        .args(["image", "prune", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pruned: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pruned["layers_removed"], 2, "{pruned}");
    assert!(
        pruned["bytes_freed"].as_u64().unwrap() > 1_000_000,
        "{pruned}"
    );

    // `machine run` of an image not yet here pulls it first, then runs it.
    let out = daemon
        .cli()
        .args([
            "machine", "run", "-a", "pulls", &v1, "--", "sleep", "100000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is started"));
    assert_eq!(client.inspect_image(&v1).await.unwrap().reference, v1);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_errors_have_stable_codes() {
    if skip() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let mut reg = registry_with_busybox(work.path(), Some(("robot", "s3cret-pass")));
    let daemon = Daemon::start();
    let client = daemon.client();
    let v1 = format!("{}/test/busybox:v1", reg.addr);

    // No credentials, then wrong ones: registry_unauthorized (403), saying to log in.
    let (status, body) = client
        .raw(
            reqwest::Method::POST,
            "/v1/images/pull",
            Some(serde_json::json!({"reference": v1})),
        )
        .await
        .unwrap();
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["code"], "registry_unauthorized");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("hangar registry login"),
        "{body}"
    );
    let login = |password: &str| {
        let mut child = daemon
            .cli()
            .args([
                "registry",
                "login",
                &reg.addr,
                "--username",
                "robot",
                "--password-stdin",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            !shown.contains(password),
            "the password was echoed: {shown}"
        );
    };
    login("wrong-pass");
    let (code, _) = api_code(client.pull_image(&v1).await);
    assert_eq!(code, "registry_unauthorized");

    // Right credentials: the pull works, and the secret is not echoed by the API.
    login("s3cret-pass");
    let (status, body) = client
        .raw(
            reqwest::Method::POST,
            &format!("/v1/registries/{}/login", reg.addr),
            Some(serde_json::json!({"username": "robot", "password": "s3cret-pass"})),
        )
        .await
        .unwrap();
    assert!(status.is_success(), "{body}");
    assert!(!body.to_string().contains("s3cret-pass"), "{body}");
    assert_eq!(client.pull_image(&v1).await.unwrap().layers, 1);

    // An unknown tag: image_not_found naming it.
    let missing = format!("{}/test/busybox:nope", reg.addr);
    let (code, message) = api_code(client.pull_image(&missing).await);
    assert_eq!(code, "image_not_found");
    assert!(message.contains(&missing), "{message}");
    // Creating a machine from it fails the same way and leaves nothing behind.
    client.create_app("errs", None).await.unwrap();
    let (code, _) = api_code(client.create_machine("errs", &machine_from(&missing)).await);
    assert_eq!(code, "image_not_found");
    assert!(client.list_machines("errs").await.unwrap().is_empty());

    // The registry goes away: registry_unreachable (502) after retries, from the CLI too.
    reg.stop();
    let v2 = format!("{}/test/busybox:v2", reg.addr);
    let (status, body) = client
        .raw(
            reqwest::Method::POST,
            "/v1/images/pull",
            Some(serde_json::json!({"reference": v2})),
        )
        .await
        .unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "registry_unreachable");
    let out = daemon.cli().args(["image", "pull", &v2]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("registry_unreachable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Credentials are kept in the data dir, readable by the owner only.
    let creds = daemon.data_dir().join("images/registries.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
