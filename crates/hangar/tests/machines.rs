//! Black-box tests: the real daemon, real sandboxes, driven through the CLI and the
//! typed client as a user would.

mod common;

use std::time::Duration;

use common::{Daemon, busybox, skip_unless_root};
use hangar_types::{
    CreateMachineRequest, MachineExecRequest, MachineGuest, MachineRestart, StopRequest,
};

fn exec_req(argv: &[&str]) -> MachineExecRequest {
    MachineExecRequest {
        command: Some(argv.iter().map(|s| s.to_string()).collect()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_runs_execs_stops_and_destroys_a_machine() {
    if skip_unless_root() {
        return;
    }
    let daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");

    let out = daemon
        .cli()
        .args([
            "machine",
            "run",
            "busybox:latest",
            "--json",
            "--name",
            "first",
            "--",
            "sh",
            "-c",
            "echo booted; exec sleep 100000",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let machine: hangar_types::Machine = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(machine.state, "started");

    // exec by name; the exit code is the command's.
    let out = daemon
        .cli()
        .args([
            "machine",
            "exec",
            "first",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");

    let out = daemon
        .cli()
        .args(["machine", "exec", &machine.id, "--", "hostname"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        machine.id,
        "hostname is the machine id"
    );

    // A table by default, JSON on request.
    let out = daemon.cli().args(["machine", "list"]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("first") && table.contains("started"),
        "{table}"
    );

    let out = daemon
        .cli()
        .args(["machine", "logs", "first"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("booted"));

    let out = daemon
        .cli()
        .args(["machine", "stop", "first"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = daemon
        .cli()
        .args(["machine", "exec", "first", "--", "true"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(
        err.contains("invalid_state") && err.contains("start"),
        "{err}"
    );

    let out = daemon
        .cli()
        .args(["machine", "destroy", "first"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = daemon
        .cli()
        .args(["machine", "exec", "nosuch", "--", "true"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("machine_not_found"));
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_survive_stop_and_start() {
    if skip_unless_root() {
        return;
    }
    let daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    let client = daemon.client();
    client.create_app("keep", None).await.unwrap();
    let m = client
        .create_machine(
            "keep",
            &CreateMachineRequest {
                config: busybox(&["sleep", "100000"]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let out = client
        .exec(
            "keep",
            &m.id,
            &exec_req(&["sh", "-c", "echo work > /root/progress"]),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{out:?}");

    client
        .stop_machine("keep", &m.id, &StopRequest::default())
        .await
        .unwrap();
    assert_eq!(
        client.get_machine("keep", &m.id).await.unwrap().state,
        "stopped"
    );
    client.start_machine("keep", &m.id).await.unwrap();
    let out = client
        .exec("keep", &m.id, &exec_req(&["cat", "/root/progress"]))
        .await
        .unwrap();
    assert_eq!(out.stdout, "work\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_takes_stdin_and_is_killed_on_timeout() {
    if skip_unless_root() {
        return;
    }
    let daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    let client = daemon.client();
    client.create_app("ex", None).await.unwrap();
    let m = client
        .create_machine(
            "ex",
            &CreateMachineRequest {
                config: busybox(&["sleep", "100000"]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let out = client
        .exec(
            "ex",
            &m.id,
            &MachineExecRequest {
                stdin: Some("a\nb\nc\n".into()),
                ..exec_req(&["wc", "-l"])
            },
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.trim(), "3");

    let out = client
        .exec(
            "ex",
            &m.id,
            &MachineExecRequest {
                timeout: Some(1),
                ..exec_req(&["sleep", "600"])
            },
        )
        .await
        .unwrap();
    assert_eq!(out.exit_signal, Some(9), "{out:?}");

    let err = client
        .exec("ex", &m.id, &exec_req(&["/no/such/binary"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("bad_request"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn exits_follow_the_restart_policy() {
    if skip_unless_root() {
        return;
    }
    let daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    let client = daemon.client();
    client.create_app("rp", None).await.unwrap();

    // Exits with 3 every time; on-failure with two retries: three runs, then stopped.
    let mut cfg = busybox(&["sh", "-c", "echo run; exit 3"]);
    cfg.restart = Some(MachineRestart {
        policy: Some("on-failure".into()),
        max_retries: Some(2),
    });
    let m = client
        .create_machine(
            "rp",
            &CreateMachineRequest {
                config: cfg,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    common::eventually("three exits", Duration::from_secs(30), || async {
        let events = client.events("rp", &m.id).await.unwrap();
        events.iter().filter(|e| e.kind == "exit").count() == 3
    })
    .await;
    client.wait("rp", &m.id, "stopped", 30).await.unwrap();
    let exit = client
        .events("rp", &m.id)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "exit")
        .unwrap();
    assert_eq!(exit.request["exit_event"]["exit_code"], 3);

    // auto_destroy: the machine is gone once its process ends.
    let mut cfg = busybox(&["true"]);
    cfg.auto_destroy = true;
    let m = client
        .create_machine(
            "rp",
            &CreateMachineRequest {
                config: cfg,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    client.wait("rp", &m.id, "destroyed", 30).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_limit_kills_with_an_oom_event() {
    if skip_unless_root() {
        return;
    }
    let daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    let client = daemon.client();
    client.create_app("oom", None).await.unwrap();
    // `tail` of an endless line keeps it all in memory.
    let mut cfg = busybox(&["sh", "-c", "tail /dev/zero"]);
    cfg.guest = Some(MachineGuest {
        cpus: 1,
        memory_mb: 32,
        ..Default::default()
    });
    let m = client
        .create_machine(
            "oom",
            &CreateMachineRequest {
                config: cfg,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    client.wait("oom", &m.id, "stopped", 60).await.unwrap();
    let exit = client
        .events("oom", &m.id)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.kind == "exit")
        .unwrap();
    assert_eq!(exit.request["exit_event"]["oom_killed"], true, "{exit:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_machine_sees_only_itself() {
    if skip_unless_root() {
        return;
    }
    let daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    let client = daemon.client();
    client.create_app("iso", None).await.unwrap();
    let m = client
        .create_machine(
            "iso",
            &CreateMachineRequest {
                config: busybox(&["sleep", "100000"]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let run = |argv: &'static [&'static str]| {
        let client = client.clone();
        let id = m.id.clone();
        async move { client.exec("iso", &id, &exec_req(argv)).await.unwrap() }
    };
    // Processes: init, the main process, and the exec'd ps.
    let ps = run(&["ps", "-o", "pid,comm"]).await;
    assert!(ps.stdout.lines().count() <= 5, "{}", ps.stdout);
    assert!(
        !ps.stdout.contains("hangar serve") && !ps.stdout.contains("cargo"),
        "{}",
        ps.stdout
    );
    // Networks: loopback and the private network's eth0, nothing of the host's.
    let ifaces = run(&["ls", "/sys/class/net"]).await;
    assert_eq!(
        ifaces.stdout.split_whitespace().collect::<Vec<_>>(),
        ["eth0", "lo"]
    );
    // No host mounts: host paths appear only as the root overlay's layer options and
    // as the source of hangar's read-only resolv.conf.
    let mounts = run(&["cat", "/proc/self/mountinfo"]).await;
    let data_dir = daemon.data_dir().to_str().unwrap();
    for line in mounts.stdout.lines().filter(|l| l.contains(data_dir)) {
        let point = line.split_whitespace().nth(4);
        if point == Some("/etc/resolv.conf") {
            assert!(
                line.contains(" ro,"),
                "resolv.conf is mounted writable: {line}"
            );
            continue;
        }
        assert_eq!(point, Some("/"), "a host path is mounted: {line}");
    }
    // Privileges: reduced capabilities, no new privileges, seccomp on.
    let status = run(&["cat", "/proc/self/status"]).await.stdout;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(field("NoNewPrivs:").ends_with('1'), "{status}");
    assert!(field("Seccomp:").ends_with('2'), "{status}");
    assert_ne!(
        field("CapBnd:").split_whitespace().last(),
        Some("000001ffffffffff")
    );
    let mount = run(&["mount", "-t", "tmpfs", "none", "/tmp"]).await;
    assert_ne!(mount.exit_code, 0, "mounting must be refused");
}

#[tokio::test(flavor = "multi_thread")]
async fn machines_survive_daemon_kill_and_are_adopted() {
    if skip_unless_root() {
        return;
    }
    let mut daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    let client = daemon.client();
    client.create_app("crash", None).await.unwrap();
    let running = client
        .create_machine(
            "crash",
            &CreateMachineRequest {
                config: busybox(&["sleep", "100000"]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let stopped = client
        .create_machine(
            "crash",
            &CreateMachineRequest {
                config: busybox(&["sleep", "100000"]),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    client
        .stop_machine("crash", &stopped.id, &StopRequest::default())
        .await
        .unwrap();
    // Field 22 of /proc/1/stat: when the machine's init started.
    let init_started = |stat: String| {
        stat.split_whitespace()
            .nth(21)
            .unwrap_or_default()
            .to_string()
    };
    let init_before = init_started(
        client
            .exec("crash", &running.id, &exec_req(&["cat", "/proc/1/stat"]))
            .await
            .unwrap()
            .stdout,
    );

    for round in 0..3 {
        daemon.kill9();
        daemon.spawn();
        let client = daemon.client();
        let m = client.get_machine("crash", &running.id).await.unwrap();
        assert_eq!(m.state, "started", "round {round}");
        let out = client
            .exec("crash", &running.id, &exec_req(&["cat", "/proc/1/stat"]))
            .await
            .unwrap();
        assert_eq!(
            init_started(out.stdout),
            init_before,
            "the same init, not a new one (round {round})"
        );
        assert_eq!(
            client
                .get_machine("crash", &stopped.id)
                .await
                .unwrap()
                .state,
            "stopped"
        );
    }
    // Exits after the restart are still seen.
    let client = daemon.client();
    client
        .stop_machine("crash", &running.id, &StopRequest::default())
        .await
        .unwrap();
    client.start_machine("crash", &stopped.id).await.unwrap();
    let out = client
        .exec("crash", &stopped.id, &exec_req(&["echo", "alive"]))
        .await
        .unwrap();
    assert_eq!(out.stdout, "alive\n");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_during_operations_leaves_a_consistent_host() {
    if skip_unless_root() {
        return;
    }
    let mut daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    daemon.client().create_app("chaos", None).await.unwrap();

    for round in 0..4u64 {
        // Fire creates, stops and starts, and kill the daemon while they are in flight.
        let client = daemon.client();
        let work = tokio::spawn(async move {
            for i in 0..6 {
                let created = client
                    .create_machine(
                        "chaos",
                        &CreateMachineRequest {
                            config: busybox(&["sleep", "100000"]),
                            ..Default::default()
                        },
                    )
                    .await;
                if let Ok(m) = created
                    && i % 2 == 0
                {
                    let _ = client
                        .stop_machine("chaos", &m.id, &StopRequest::default())
                        .await;
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(40 + 37 * round)).await;
        daemon.kill9();
        let _ = work.await;
        daemon.spawn();

        // Every machine the store knows is settled, and agrees with the host.
        let client = daemon.client();
        for m in client.list_machines("chaos").await.unwrap() {
            assert!(
                matches!(
                    m.state.as_str(),
                    "created" | "started" | "stopped" | "failed"
                ),
                "round {round}: {} is {}",
                m.id,
                m.state
            );
            let exec = client.exec("chaos", &m.id, &exec_req(&["true"])).await;
            match m.state.as_str() {
                "started" => assert_eq!(exec.unwrap().exit_code, 0, "round {round}"),
                _ => assert!(exec.is_err()),
            }
        }
    }
    // Every init on the host belongs to a machine the store knows (no leaks).
    let known: Vec<String> = daemon
        .client()
        .list_machines("chaos")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect();
    let sandbox_dirs = std::fs::read_dir(daemon.data_dir().join("machines"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.len() == 14)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    for dir in sandbox_dirs {
        assert!(
            known.contains(&dir),
            "sandbox {dir} is not owned by any machine"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn files_update_logs_and_metrics() {
    if skip_unless_root() {
        return;
    }
    let daemon = Daemon::start();
    daemon.import_busybox("busybox:latest");
    let client = daemon.client();
    client.create_app("cfg", None).await.unwrap();

    // config.files land in the machine before its process starts.
    let mut cfg = busybox(&[
        "sh",
        "-c",
        "cat /etc/app/greeting; mkfifo /tmp/feed; while true; do cat /tmp/feed; done",
    ]);
    cfg.files = vec![hangar_types::MachineFile {
        guest_path: "/etc/app/greeting".into(),
        raw_value: Some("aGVsbG8gZmlsZQo=".into()), // "hello file\n"
        mode: Some(0o600),
        ..Default::default()
    }];
    cfg.env.insert("COLOR".into(), "blue".into());
    let m = client
        .create_machine(
            "cfg",
            &CreateMachineRequest {
                config: cfg.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let out = client
        .exec(
            "cfg",
            &m.id,
            &exec_req(&["sh", "-c", "stat -c %a /etc/app/greeting; echo $COLOR"]),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, "600\nblue\n");

    // Following the log sees lines written after it started.
    use futures::StreamExt;
    // hangar's own notes (stream "init") are interleaved with the machine's output.
    let mut follow = Box::pin(
        client
            .follow_logs("cfg", &m.id, 10)
            .await
            .unwrap()
            .filter(|line| std::future::ready(line.as_ref().map_or(true, |l| l.stream != "init"))),
    );
    let first = follow.next().await.unwrap().unwrap();
    assert_eq!(
        (first.stream.as_str(), first.message.as_str()),
        ("stdout", "hello file")
    );
    let out = client
        .exec(
            "cfg",
            &m.id,
            &exec_req(&[
                "sh",
                "-c",
                "while [ ! -p /tmp/feed ]; do sleep 0.01; done; echo later > /tmp/feed",
            ]),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0);
    let next = follow.next().await.unwrap().unwrap();
    assert_eq!(
        (next.stream.as_str(), next.message.as_str()),
        ("stdout", "later")
    );

    // An update applies the new config and changes the instance id.
    cfg.env.insert("COLOR".into(), "green".into());
    let updated = client
        .update_machine(
            "cfg",
            &m.id,
            &hangar_types::UpdateMachineRequest {
                config: cfg,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_ne!(updated.instance_id, m.instance_id);
    assert_eq!(updated.state, "started");
    let out = client
        .exec("cfg", &m.id, &exec_req(&["sh", "-c", "echo $COLOR"]))
        .await
        .unwrap();
    assert_eq!(out.stdout, "green\n");

    // Metrics count machines by state.
    let (status, _) = client
        .raw(hangar_client::Method::GET, "/healthz", None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    let (status, body) = client
        .raw(hangar_client::Method::GET, "/metrics", None)
        .await
        .unwrap();
    assert_eq!(status.as_u16(), 200);
    let text = body.as_str().unwrap();
    assert!(
        text.contains("hangar_machines{state=\"started\"} 1"),
        "{text}"
    );
    assert!(text.contains("hangar_api_request_seconds"), "{text}");
    drop(follow);
}
