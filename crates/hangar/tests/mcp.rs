//! MCP against the real daemon with rmcp's client, over stdio (`hangar mcp`) and
//! streamable HTTP (`/mcp`): what a model would see when it drives machines.

mod common;

use common::{BIN, Daemon, busybox, launch, setup};
use rmcp::model::{CallToolRequestParams, CallToolResult, ReadResourceRequestParams};
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::{Value, json};

type Mcp = RunningService<RoleClient, ()>;

async fn stdio(daemon: &Daemon, app: &str) -> Mcp {
    stdio_with(daemon, app, "").await
}

/// `hangar mcp` with opt-in toolsets (`volumes`, `all`).
async fn stdio_with(daemon: &Daemon, app: &str, toolsets: &str) -> Mcp {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.arg("mcp")
        .env("HANGAR_API", &daemon.api)
        .env("HANGAR_TOKEN", &daemon.token)
        .env("HANGAR_APP", app)
        .env("HANGAR_MCP_TOOLSETS", toolsets);
    let transport = TokioChildProcess::new(cmd).expect("starting hangar mcp");
    ().serve(transport).await.expect("MCP handshake over stdio")
}

async fn http(daemon: &Daemon) -> Mcp {
    let config =
        StreamableHttpClientTransportConfig::with_uri(format!("http://{}/mcp", daemon.api))
            .auth_header(daemon.token.clone());
    let transport = StreamableHttpClientTransport::from_config(config);
    ().serve(transport).await.expect("MCP handshake over HTTP")
}

async fn call(mcp: &Mcp, tool: &str, args: Value) -> CallToolResult {
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    mcp.call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(args))
        .await
        .unwrap_or_else(|e| panic!("{tool}: {e}"))
}

fn ok(result: &CallToolResult) -> &Value {
    assert_ne!(result.is_error, Some(true), "{result:?}");
    result
        .structured_content
        .as_ref()
        .expect("structured content")
}

fn err(result: &CallToolResult) -> &Value {
    assert_eq!(result.is_error, Some(true), "{result:?}");
    result
        .structured_content
        .as_ref()
        .expect("structured error")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_drives_a_machine_over_stdio() {
    let app = format!("mcp-stdio-{}", std::process::id());
    let Some((daemon, client)) = setup(&app).await else {
        return;
    };
    let mcp = stdio(&daemon, &app).await;

    let tools = mcp.list_all_tools().await.unwrap();
    assert!((10..=14).contains(&tools.len()), "{} tools", tools.len());
    for tool in &tools {
        assert!(
            tool.output_schema.is_some(),
            "{} has no outputSchema",
            tool.name
        );
        let hints = tool.annotations.as_ref().expect("annotations");
        assert!(hints.read_only_hint.is_some() && hints.destructive_hint.is_some());
    }

    let run = call(
        &mcp,
        "machine_run",
        json!({"image": "busybox:latest", "name": "work", "command": ["sleep", "inf"]}),
    )
    .await;
    let machine = ok(&run);
    assert_eq!(machine["state"], "started");
    assert_eq!(machine["name"], "work");

    let write = call(
        &mcp,
        "file_write",
        json!({"machine": "work", "path": "/root/hello.txt", "content": "hi from a model\n"}),
    )
    .await;
    ok(&write);
    let exec = call(
        &mcp,
        "exec",
        json!({"machine": "work", "command": ["cat", "/root/hello.txt"]}),
    )
    .await;
    let out = ok(&exec);
    assert_eq!(out["exit_code"], 0);
    assert_eq!(out["stdout"], "hi from a model\n");

    // A failing command is data, not an error.
    let exec = call(
        &mcp,
        "exec",
        json!({"machine": "work", "command": ["sh", "-c", "echo oops >&2; exit 3"]}),
    )
    .await;
    let out = ok(&exec);
    assert_eq!(out["exit_code"], 3);
    assert_eq!(out["stderr"], "oops\n");
    assert_eq!(out["state"], "exited");

    // 10 MB of output comes back capped, head and tail kept, with a marker.
    let exec = call(&mcp, "exec", json!({"machine": "work", "command": ["sh", "-c", "yes 0123456789abcdef | head -c 10000000; echo END"]})).await;
    let out = ok(&exec);
    assert_eq!(out["stdout_truncated"], true);
    assert_eq!(out["stdout_bytes"], 10_000_004);
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.len() < 20_000, "{} bytes returned", stdout.len());
    assert!(stdout.starts_with("0123456789abcdef"));
    assert!(stdout.ends_with("END\n"));
    assert!(
        stdout.contains("bytes cut; read the rest with job_poll"),
        "{}",
        &stdout[..9000]
    );

    // A long command hands back a job at once; it can be polled and cancelled.
    let exec = call(&mcp, "exec", json!({"machine": "work", "command": ["sh", "-c", "echo started; sleep 300"], "background": true})).await;
    let job = ok(&exec).clone();
    assert_eq!(job["state"], "running");
    let poll = call(
        &mcp,
        "job_poll",
        json!({"machine": "work", "job": job["job"]}),
    )
    .await;
    assert_eq!(ok(&poll)["state"], "running");
    let cancel = call(
        &mcp,
        "job_control",
        json!({"machine": "work", "job": job["job"], "action": "cancel"}),
    )
    .await;
    assert_eq!(ok(&cancel)["state"], "cancelled");

    // An interactive program: it is handed input, answers, and ends at end of file.
    let exec = call(
        &mcp,
        "exec",
        json!({"machine": "work", "stdin_open": true,
        "command": ["sh", "-c", "read line; echo got:$line; exec cat"]}),
    )
    .await;
    let job = ok(&exec)["job"].clone();
    assert_eq!(
        ok(&exec)["state"],
        "running",
        "stdin_open returns the job at once"
    );
    let sent = call(
        &mcp,
        "job_control",
        json!({"machine": "work", "job": job,
        "action": "stdin", "stdin": "hello\n"}),
    )
    .await;
    assert_eq!(ok(&sent)["state"], "running");
    common::eventually(
        "the answer to the input",
        std::time::Duration::from_secs(20),
        || async {
            let poll = call(&mcp, "job_poll", json!({"machine": "work", "job": job})).await;
            ok(&poll)["stdout"] == "got:hello\n"
        },
    )
    .await;
    ok(&call(
        &mcp,
        "job_control",
        json!({"machine": "work", "job": job,
        "action": "stdin", "stdin": "bye\n", "eof": true}),
    )
    .await);
    let poll = call(
        &mcp,
        "job_poll",
        json!({"machine": "work", "job": job, "wait_secs": 20}),
    )
    .await;
    let out = ok(&poll);
    assert_eq!(
        (out["state"].clone(), out["exit_code"].clone()),
        (json!("exited"), json!(0))
    );
    assert_eq!(out["stdout"], "got:hello\nbye\n");
    let late = call(
        &mcp,
        "job_control",
        json!({"machine": "work", "job": job,
        "action": "stdin", "stdin": "late\n"}),
    )
    .await;
    assert_eq!(err(&late)["code"], "invalid_state");
    let no_text = call(
        &mcp,
        "job_control",
        json!({"machine": "work", "job": job,
        "action": "stdin"}),
    )
    .await;
    assert_eq!(err(&no_text)["code"], "bad_request");

    // A short background job runs to completion and keeps its output.
    let exec = call(&mcp, "exec", json!({"machine": "work", "command": ["sh", "-c", "echo done; exit 4"], "background": true})).await;
    let job = ok(&exec)["job"].clone();
    let poll = call(
        &mcp,
        "job_poll",
        json!({"machine": "work", "job": job, "wait_secs": 20}),
    )
    .await;
    let out = ok(&poll);
    assert_eq!(out["state"], "exited");
    assert_eq!(out["exit_code"], 4);
    assert_eq!(out["stdout"], "done\n");

    // Checkpoint, break something, restore.
    let cp = call(
        &mcp,
        "checkpoint",
        json!({"machine": "work", "action": "create", "checkpoint": "before"}),
    )
    .await;
    let cp = ok(&cp);
    if cp.get("checkpoint").is_some() {
        ok(&call(
            &mcp,
            "file_delete",
            json!({"machine": "work", "path": "/root/hello.txt"}),
        )
        .await);
        let gone = call(
            &mcp,
            "file_read",
            json!({"machine": "work", "path": "/root/hello.txt"}),
        )
        .await;
        assert_eq!(err(&gone)["code"], "file_not_found");
        ok(&call(
            &mcp,
            "checkpoint",
            json!({"machine": "work", "action": "restore", "checkpoint": "before"}),
        )
        .await);
        client
            .wait(&app, machine["id"].as_str().unwrap(), "started", 60)
            .await
            .unwrap();
        let back = call(
            &mcp,
            "file_read",
            json!({"machine": "work", "path": "/root/hello.txt"}),
        )
        .await;
        assert_eq!(ok(&back)["content"], "hi from a model\n");
    }

    // Binary files come back as a base64 resource with a MIME type.
    ok(&call(&mcp, "file_write", json!({"machine": "work", "path": "/root/x.png", "content": "iVBORw0KGgoAAP8=", "base64": true})).await);
    let png = call(
        &mcp,
        "file_read",
        json!({"machine": "work", "path": "/root/x.png"}),
    )
    .await;
    assert_eq!(ok(&png)["encoding"], "base64");
    let blob = serde_json::to_value(&png.content).unwrap();
    assert_eq!(blob[1]["resource"]["mimeType"], "image/png", "{blob}");

    // Resources: the guide and a machine's files.
    let guide = mcp
        .read_resource(ReadResourceRequestParams::new("hangar://guide"))
        .await
        .unwrap();
    assert!(
        serde_json::to_string(&guide)
            .unwrap()
            .contains("checkpoint")
    );
    let id = machine["id"].as_str().unwrap();
    let uri = format!("hangar://apps/{app}/machines/{id}/files/root/hello.txt");
    let file = mcp
        .read_resource(ReadResourceRequestParams::new(uri))
        .await
        .unwrap();
    assert!(
        serde_json::to_string(&file)
            .unwrap()
            .contains("hi from a model")
    );

    // Errors reach the model, and the server keeps serving.
    let unknown = mcp
        .call_tool(CallToolRequestParams::new("no_such_tool"))
        .await;
    assert!(unknown.is_err(), "unknown tool must be a protocol error");
    let wrong_type = mcp
        .call_tool(
            CallToolRequestParams::new("exec").with_arguments(
                json!({"machine": "work", "command": "ls"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        )
        .await;
    assert!(
        wrong_type.is_err(),
        "a string for an array is invalid params"
    );
    let missing = mcp
        .call_tool(
            CallToolRequestParams::new("exec")
                .with_arguments(json!({"machine": "work"}).as_object().unwrap().clone()),
        )
        .await;
    assert!(missing.is_err(), "a missing command is invalid params");
    let other_app = format!("{app}-other");
    client.create_app(&other_app, None).await.unwrap();
    let stranger = launch(&client, &other_app, busybox(&["sleep", "inf"])).await;
    let cross = call(
        &mcp,
        "exec",
        json!({"machine": stranger, "command": ["true"]}),
    )
    .await;
    let e = err(&cross);
    assert_eq!(e["code"], "machine_not_found");
    assert_eq!(e["retryable"], false);
    let big = "x".repeat(9 << 20);
    let too_big = call(
        &mcp,
        "file_write",
        json!({"machine": "work", "path": "/root/big", "content": big}),
    )
    .await;
    assert_eq!(err(&too_big)["code"], "payload_too_large");
    let destroy = call(
        &mcp,
        "machine_lifecycle",
        json!({"machine": "work", "action": "destroy", "force": true}),
    )
    .await;
    assert_eq!(err(&destroy)["code"], "confirmation_required");
    let still = call(
        &mcp,
        "exec",
        json!({"machine": "work", "command": ["true"]}),
    )
    .await;
    assert_eq!(ok(&still)["exit_code"], 0);

    let _ = mcp.cancel().await;
    client
        .destroy_machine(&other_app, &stranger, true)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn streamable_http_needs_the_token_and_acts_with_it() {
    let app = format!("mcp-http-{}", std::process::id());
    let Some((daemon, client)) = setup(&app).await else {
        return;
    };
    let base = format!("http://{}", daemon.api);
    let http_client = reqwest::Client::new();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});

    let no_token = http_client
        .post(format!("{base}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    let challenge = no_token.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        challenge.contains("/.well-known/oauth-protected-resource"),
        "{challenge}"
    );
    let meta: Value = http_client
        .get(format!("{base}/.well-known/oauth-protected-resource"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(meta["resource"].as_str().unwrap().ends_with("/mcp"));

    let wrong = http_client
        .post(format!("{base}/mcp"))
        .bearer_auth("not-the-token")
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let foreign = http_client
        .post(format!("{base}/mcp"))
        .bearer_auth(&daemon.token)
        .header("origin", "https://evil.example")
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);

    let mcp = http(&daemon).await;
    let id = launch(&client, &app, busybox(&["sleep", "inf"])).await;
    client.wait(&app, &id, "started", 60).await.unwrap();
    let exec = call(
        &mcp,
        "exec",
        json!({"app": app, "machine": id, "command": ["sh", "-c", "echo over http"]}),
    )
    .await;
    assert_eq!(ok(&exec)["stdout"], "over http\n");
    let list = call(&mcp, "machine_list", json!({"app": app})).await;
    assert_eq!(ok(&list)["machines"].as_array().unwrap().len(), 1);
    // With no app given and no default, the model is told what to pass.
    let no_app = call(&mcp, "machine_list", json!({})).await;
    assert_eq!(err(&no_app)["code"], "bad_request");

    // A job outlives the MCP session that started it.
    let started = call(
        &mcp,
        "exec",
        json!({"app": app, "machine": id, "command": ["sh", "-c", "echo survived; exit 5"], "background": true}),
    )
    .await;
    let job = ok(&started)["job"].clone();
    let _ = mcp.cancel().await;
    let mcp = http(&daemon).await;
    let poll = call(
        &mcp,
        "job_poll",
        json!({"app": app, "machine": id, "job": job, "wait_secs": 20}),
    )
    .await;
    let out = ok(&poll);
    assert_eq!(out["state"], "exited");
    assert_eq!(out["exit_code"], 5);
    assert_eq!(out["stdout"], "survived\n");
    let _ = mcp.cancel().await;
}

/// The Python SDK's venv that scripts/install-deps makes, if it is there.
fn python() -> Option<std::path::PathBuf> {
    let venv =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/mcp-venv/bin/python");
    if venv.exists() {
        return Some(venv);
    }
    eprintln!("skipped: no Python MCP SDK; run scripts/install-deps");
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn the_python_sdk_works_over_stdio_and_http() {
    let app = format!("mcp-py-{}", std::process::id());
    let Some(python) = python() else { return };
    let Some((daemon, client)) = setup(&app).await else {
        return;
    };
    let id = launch(&client, &app, busybox(&["sleep", "inf"])).await;
    client.wait(&app, &id, "started", 60).await.unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/mcp_client.py");
    for transport in ["stdio", "http"] {
        let out = tokio::process::Command::new(&python)
            .arg(&script)
            .args([transport, &app, &id])
            .env("HANGAR_API", &daemon.api)
            .env("HANGAR_TOKEN", &daemon.token)
            .env("HANGAR_BIN", BIN)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{transport}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The robot's walkthrough, through MCP tools only: run a machine, build its app with a
/// background job, expose it, reach it through the proxy, checkpoint, break, restore,
/// stop, and wake it with a request.
#[tokio::test(flavor = "multi_thread")]
async fn a_robot_builds_breaks_rewinds_and_wakes_an_app_through_mcp() {
    let app = format!("mcp-walk-{}", std::process::id());
    let Some((daemon, _client)) = setup(&app).await else {
        return;
    };
    let mcp = stdio(&daemon, &app).await;

    let run = call(
        &mcp,
        "machine_run",
        json!({
            "image": "busybox:latest",
            "name": "web",
            "command": ["sh", "-c", "mkdir -p /app/www && exec httpd -f -p 8080 -h /app/www"],
        }),
    )
    .await;
    assert_eq!(ok(&run)["state"], "started");

    let job = call(
        &mcp,
        "exec",
        json!({"machine": "web", "background": true,
               "command": ["sh", "-c", "mkdir -p /app/www && echo v1 > /app/www/index.html"]}),
    )
    .await;
    let job_id = ok(&job)["job"].as_str().expect("a job handle").to_string();
    let done = call(
        &mcp,
        "job_poll",
        json!({"machine": "web", "job": job_id, "wait_secs": 30}),
    )
    .await;
    assert_eq!(ok(&done)["exit_code"], 0, "{done:?}");

    let exposed = call(
        &mcp,
        "expose",
        json!({"machine": "web", "port": 8080, "autostart": true}),
    )
    .await;
    let url = format!("{}index.html", ok(&exposed)["url"].as_str().unwrap());
    let proxy: std::net::SocketAddr = daemon.proxy.parse().unwrap();
    let http = reqwest::Client::builder()
        .resolve(&format!("{app}.hangar.localhost"), proxy)
        .build()
        .unwrap();
    let fetch = |http: reqwest::Client, url: String| async move {
        match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
            Ok(r) => format!("status {}", r.status()),
            Err(e) => format!("error {e}"),
        }
    };
    let serves = |want: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        move || {
            let (http, url) = (http.clone(), url.clone());
            async move { fetch(http, url).await == want }
        }
    };
    common::eventually(
        "v1 through the proxy",
        std::time::Duration::from_secs(30),
        serves("v1\n"),
    )
    .await;

    ok(&call(
        &mcp,
        "checkpoint",
        json!({"machine": "web", "action": "create", "checkpoint": "good"}),
    )
    .await);
    ok(&call(
        &mcp,
        "file_write",
        json!({"machine": "web", "path": "/app/www/index.html", "content": "broken\n"}),
    )
    .await);
    assert_eq!(fetch(http.clone(), url.clone()).await, "broken\n");

    ok(&call(
        &mcp,
        "checkpoint",
        json!({"machine": "web", "action": "restore", "checkpoint": "good"}),
    )
    .await);
    common::eventually(
        "the restored app through the proxy",
        std::time::Duration::from_secs(30),
        serves("v1\n"),
    )
    .await;

    let stopped = call(
        &mcp,
        "machine_lifecycle",
        json!({"machine": "web", "action": "stop"}),
    )
    .await;
    assert_eq!(ok(&stopped)["state"], "stopped", "{stopped:?}");
    // One request, no retries: the proxy starts the machine and holds the request.
    assert_eq!(fetch(http.clone(), url.clone()).await, "v1\n");
    let woken = call(&mcp, "machine_list", json!({"machine": "web"})).await;
    assert_eq!(ok(&woken)["machines"][0]["state"], "started");
}

/// The volumes toolset: create, list, snapshot, fork and destroy, as a model would,
/// with a machine mounting the data in between.
#[tokio::test(flavor = "multi_thread")]
async fn a_model_keeps_data_on_volumes() {
    let app = format!("mcp-vol-{}", std::process::id());
    let Some((daemon, client)) = setup(&app).await else {
        return;
    };
    let plain = stdio(&daemon, &app).await;
    let names: Vec<String> = plain
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("volume_")), "{names:?}");
    let _ = plain.cancel().await;

    let mcp = stdio_with(&daemon, &app, "volumes").await;
    let tools = mcp.list_all_tools().await.unwrap();
    for name in [
        "volume_create",
        "volume_list",
        "volume_snapshot",
        "volume_fork",
        "volume_destroy",
    ] {
        let tool = tools
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{name}"));
        assert!(tool.output_schema.is_some(), "{name} has no outputSchema");
        assert!(tool.annotations.is_some(), "{name} has no annotations");
    }
    let destroy = tools.iter().find(|t| t.name == "volume_destroy").unwrap();
    assert_eq!(
        destroy.annotations.as_ref().unwrap().destructive_hint,
        Some(true)
    );

    let created = call(&mcp, "volume_create", json!({"name": "data", "size_gb": 1})).await;
    let vol = ok(&created).clone();
    assert_eq!(
        (vol["name"].clone(), vol["size_gb"].clone()),
        (json!("data"), json!(1))
    );
    let bad = call(&mcp, "volume_create", json!({"name": "Not Valid"})).await;
    assert_eq!(err(&bad)["code"], "bad_request");

    // A machine writes to it; a snapshot keeps that, a fork starts from it.
    let mut config = busybox(&["sleep", "inf"]);
    config.extra.insert(
        "mounts".into(),
        json!([{"volume": "data", "path": "/data"}]),
    );
    let id = launch(&client, &app, config).await;
    client.wait(&app, &id, "started", 60).await.unwrap();
    common::sh(&client, &app, &id, "echo v1 > /data/note").await;
    let listed = call(&mcp, "volume_list", json!({})).await;
    let volumes = ok(&listed)["volumes"].as_array().unwrap().clone();
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0]["attached_machine_id"], json!(id));

    let snap = call(
        &mcp,
        "volume_snapshot",
        json!({"volume": "data", "action": "create"}),
    )
    .await;
    let snapshot = ok(&snap)["snapshot"]["id"].as_str().unwrap().to_string();
    common::sh(&client, &app, &id, "echo v2 > /data/note").await;
    let snaps = call(
        &mcp,
        "volume_snapshot",
        json!({"volume": "data", "action": "list"}),
    )
    .await;
    assert_eq!(ok(&snaps)["snapshots"][0]["id"], json!(snapshot));

    let from_snap = call(
        &mcp,
        "volume_fork",
        json!({"name": "then", "snapshot": snapshot}),
    )
    .await;
    assert_eq!(ok(&from_snap)["name"], "then");
    let from_vol = call(
        &mcp,
        "volume_fork",
        json!({"name": "now", "volume": "data"}),
    )
    .await;
    assert_eq!(ok(&from_vol)["size_gb"], 1);
    let both = call(
        &mcp,
        "volume_fork",
        json!({"name": "x", "volume": "data", "snapshot": snapshot}),
    )
    .await;
    assert_eq!(err(&both)["code"], "bad_request");
    let mut config = busybox(&["sleep", "inf"]);
    config.extra.insert(
        "mounts".into(),
        json!([{"volume": "then", "path": "/then"}, {"volume": "now", "path": "/now"}]),
    );
    let reader = launch(&client, &app, config).await;
    client.wait(&app, &reader, "started", 60).await.unwrap();
    assert_eq!(
        common::sh(&client, &app, &reader, "cat /then/note /now/note").await,
        "v1\nv2\n"
    );

    // Destroying needs confirm, and is refused while a machine mounts the volume.
    let unconfirmed = call(&mcp, "volume_destroy", json!({"volume": "data"})).await;
    assert_eq!(err(&unconfirmed)["code"], "confirmation_required");
    let attached = call(
        &mcp,
        "volume_destroy",
        json!({"volume": "data", "confirm": true}),
    )
    .await;
    assert_eq!(err(&attached)["code"], "volume_attached");
    client.destroy_machine(&app, &reader, true).await.unwrap();
    let gone = call(
        &mcp,
        "volume_destroy",
        json!({"volume": "then", "confirm": true}),
    )
    .await;
    assert_eq!(ok(&gone)["state"], "destroyed");
    let missing = call(
        &mcp,
        "volume_snapshot",
        json!({"volume": "then", "action": "list"}),
    )
    .await;
    assert_eq!(err(&missing)["code"], "volume_not_found");
    let _ = mcp.cancel().await;
}
