//! The edge proxy against real machines: two busybox machines each answer HTTP with
//! their own id (busybox `httpd` and the CGI script in `proxy_server.sh`), reached
//! only through `<app>.hangar.localhost` on the proxy's listeners.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{busybox, launch, setup, sh};
use hangar_types::{MachineConfig, StopRequest};

const SERVER: &str = include_str!("proxy_server.sh");

fn web_config() -> MachineConfig {
    let mut config = busybox(&["sh", "-c", SERVER]);
    config.extra.insert(
        "services".into(),
        serde_json::json!([{
            "protocol": "tcp",
            "internal_port": 8080,
            "autostart": true,
            "ports": [
                {"port": 80, "handlers": ["http"]},
                {"port": 443, "handlers": ["tls", "http"]}
            ]
        }]),
    );
    config
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// A client that sends `<app>.hangar.localhost` (and the machines' names) to `addr`.
fn http_client(app: &str, ids: &[&str], addr: &str) -> reqwest::Client {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut b = reqwest::Client::builder().resolve(&format!("{app}.hangar.localhost"), addr);
    for id in ids {
        b = b.resolve(&format!("{id}.{app}.hangar.localhost"), addr);
    }
    b.build().unwrap()
}

async fn get(client: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn first_word(body: &str) -> String {
    body.split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The machines that answer ten unsteered requests.
async fn answering(client: &reqwest::Client, url: &str) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let (status, body) = get(client, url, &[]).await;
        assert_eq!(status, 200, "{body}");
        seen.insert(first_word(&body));
    }
    seen
}

/// Waits until the machine's httpd answers through the proxy.
async fn ready(client: &reqwest::Client, url: &str, id: &str) {
    common::eventually(
        "httpd answering through the proxy",
        Duration::from_secs(30),
        || async {
            matches!(client.get(url).header("fly-force-instance-id", id).send().await,
            Ok(r) if r.status().is_success())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_balances_steers_replays_pins_sessions_and_wakes() {
    let app = unique("proxyweb");
    let Some((mut daemon, client)) = setup(&app).await else {
        return;
    };
    let a = launch(&client, &app, web_config()).await;
    let b = launch(&client, &app, web_config()).await;
    let port = daemon.proxy.rsplit_once(':').unwrap().1.to_string();
    let http = http_client(&app, &[&a, &b], &daemon.proxy);
    let url = format!("http://{app}.hangar.localhost:{port}/cgi-bin/id");
    ready(&http, &url, &a).await;
    ready(&http, &url, &b).await;

    // Without steering, requests spread over both machines.
    assert_eq!(answering(&http, &url).await, [a.clone(), b.clone()].into());

    // fly-force-instance-id and the machine's own host name reach that machine only.
    let machine_url = format!("http://{a}.{app}.hangar.localhost:{port}/cgi-bin/id");
    for _ in 0..4 {
        let forced = get(&http, &url, &[("fly-force-instance-id", &b)]).await.1;
        assert_eq!(first_word(&forced), b);
        assert_eq!(first_word(&get(&http, &machine_url, &[]).await.1), a);
    }
    let (status, body) = get(&http, &url, &[("fly-force-instance-id", "0000nosuch")]).await;
    assert_eq!(status, 503, "{body}");

    // A machine answering fly-replay hands the request to the one it names, which
    // sees where it came from.
    let replay_url = format!("{url}?replay={b}");
    let (status, body) = get(&http, &replay_url, &[("fly-force-instance-id", &a)]).await;
    assert_eq!(status, 200);
    assert_eq!(body.trim(), format!("{b} instance={a};state=from-first"));

    // An MCP session sticks to the machine that created it.
    let (_, body) = get(&http, &format!("{url}?mcp"), &[]).await;
    let owner = first_word(&body);
    let session = format!("session-{owner}");
    for _ in 0..6 {
        let body = get(&http, &url, &[("mcp-session-id", &session)]).await.1;
        assert_eq!(first_word(&body), owner);
    }

    // ... and still does after the daemon restarts: the session is in the store.
    daemon.kill9();
    daemon.spawn();
    let client = daemon.client();
    let port = daemon.proxy.rsplit_once(':').unwrap().1.to_string();
    let http = http_client(&app, &[&a, &b], &daemon.proxy);
    let url = format!("http://{app}.hangar.localhost:{port}/cgi-bin/id");
    ready(&http, &url, &a).await;
    ready(&http, &url, &b).await;
    for _ in 0..8 {
        let body = get(&http, &url, &[("mcp-session-id", &session)]).await.1;
        assert_eq!(first_word(&body), owner, "after a restart");
    }

    // A request for a stopped machine starts it and is answered by it.
    client
        .stop_machine(&app, &b, &StopRequest::default())
        .await
        .unwrap();
    client.wait(&app, &b, "stopped", 30).await.unwrap();
    let (status, body) = get(&http, &url, &[("fly-force-instance-id", &b)]).await;
    assert_eq!((status, first_word(&body)), (200, b.clone()), "{body}");
    assert_eq!(client.get_machine(&app, &b).await.unwrap().state, "started");

    // Clear failures: an unknown app, as JSON for clients that ask for it.
    let resp = reqwest::Client::builder()
        .resolve("nosuchapp.hangar.localhost", daemon.proxy.parse().unwrap())
        .build()
        .unwrap()
        .get(format!("http://nosuchapp.hangar.localhost:{port}/"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let err: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(err["code"], "app_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn https_uses_certificates_from_the_local_ca() {
    let app = unique("proxytls");
    let Some((daemon, client)) = setup(&app).await else {
        return;
    };
    let a = launch(&client, &app, web_config()).await;
    let http = http_client(&app, &[&a], &daemon.proxy);
    let port = daemon.proxy.rsplit_once(':').unwrap().1;
    let plain = format!("http://{app}.hangar.localhost:{port}/cgi-bin/id");
    ready(&http, &plain, &a).await;

    // curl trusts only the daemon's CA and asks for HTTP/2 by ALPN.
    let ca_path = daemon.data_dir().join("proxy-ca/ca.pem");
    let tls_port = daemon.proxy_tls.rsplit_once(':').unwrap().1;
    let url = format!("https://{app}.hangar.localhost:{tls_port}/cgi-bin/id");
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--http2",
            "-w",
            "\nhttp/%{http_version}",
            "--cacert",
        ])
        .arg(&ca_path)
        .arg("--resolve")
        .arg(format!("{app}.hangar.localhost:{tls_port}:127.0.0.1"))
        .arg(&url)
        .output()
        .expect("running curl");
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(first_word(&stdout), a);
    assert!(stdout.trim_end().ends_with("http/2"), "{stdout}");

    // So does reqwest (rustls), for the app's host and the machine's own host, each
    // with its own certificate picked by SNI.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&ca_path).unwrap()).unwrap();
    let tls_addr: SocketAddr = daemon.proxy_tls.parse().unwrap();
    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .resolve(&format!("{app}.hangar.localhost"), tls_addr)
        .resolve(&format!("{a}.{app}.hangar.localhost"), tls_addr)
        .build()
        .unwrap();
    let machine_url = format!("https://{a}.{app}.hangar.localhost:{tls_port}/cgi-bin/id");
    for url in [&url, &machine_url] {
        let resp = https.get(url).send().await.unwrap();
        assert_eq!(resp.version(), reqwest::Version::HTTP_2, "{url}");
        assert_eq!(resp.status().as_u16(), 200, "{url}");
        assert_eq!(first_word(&resp.text().await.unwrap()), a, "{url}");
    }

    use std::os::unix::fs::PermissionsExt;
    let key = daemon.data_dir().join("proxy-ca/ca-key.pem");
    let mode = std::fs::metadata(key).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread")]
async fn expose_publishes_a_running_machine_without_restarting_it() {
    let app = unique("proxyexpose");
    let Some((daemon, client)) = setup(&app).await else {
        return;
    };
    let id = launch(&client, &app, busybox(&["sh", "-c", SERVER])).await;
    let before = client.get_machine(&app, &id).await.unwrap().instance_id;
    let port = daemon.proxy.rsplit_once(':').unwrap().1;
    let http = http_client(&app, &[&id], &daemon.proxy);
    let url = format!("http://{app}.hangar.localhost:{port}/cgi-bin/id");
    let (status, body) = get(&http, &url, &[("accept", "application/json")]).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no_service"), "{body}");

    let req = hangar_types::ExposeRequest {
        internal_port: 8080,
        autostart: Some(true),
        autostop: Some("stop".into()),
    };
    let urls = client.expose(&app, &id, &req).await.unwrap();
    assert_eq!(urls.url, format!("http://{app}.hangar.localhost:{port}/"));
    assert!(urls.machine_url.starts_with(&format!("http://{id}.{app}.")));
    assert!(urls.https_url.is_some());
    ready(&http, &url, &id).await;
    assert_eq!(first_word(&get(&http, &url, &[]).await.1), id);
    let after = client.get_machine(&app, &id).await.unwrap();
    assert_eq!(
        after.instance_id, before,
        "expose must not restart the machine"
    );
    assert_eq!(after.state, "started");
}

/// Reads from `stream` into `buf` until `needle` shows up, failing after `within`.
async fn read_until(
    stream: &mut tokio::net::TcpStream,
    buf: &mut Vec<u8>,
    needle: &str,
    within: Duration,
) {
    use tokio::io::AsyncReadExt;
    let deadline = tokio::time::Instant::now() + within;
    while !String::from_utf8_lossy(buf).contains(needle) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no {needle:?} within {within:?}; got {:?}",
                    String::from_utf8_lossy(buf)
                )
            })
            .unwrap();
        assert!(
            n > 0,
            "stream ended before {needle:?}; got {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn event_streams_arrive_as_sent_and_websockets_become_a_pipe() {
    use tokio::io::AsyncWriteExt;
    let app = unique("proxystream");
    let Some((daemon, client)) = setup(&app).await else {
        return;
    };
    let web = launch(&client, &app, web_config()).await;
    let port = daemon.proxy.rsplit_once(':').unwrap().1.to_string();
    let http = http_client(&app, &[&web], &daemon.proxy);
    let url = format!("http://{app}.hangar.localhost:{port}/cgi-bin/id");
    ready(&http, &url, &web).await;

    // The first event reaches the client while the machine still holds the stream
    // open: the machine sends the second only after the test has seen the first.
    let mut sse = tokio::net::TcpStream::connect(&daemon.proxy).await.unwrap();
    let request = format!(
        "GET /cgi-bin/events HTTP/1.1\r\nHost: {app}.hangar.localhost\r\n\
         Accept: text/event-stream\r\n\r\n"
    );
    sse.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut sse, &mut got, "data: first", Duration::from_secs(30)).await;
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(!head.contains("data: second"), "{head}");
    sh(&client, &app, &web, "touch /tmp/go").await;
    read_until(&mut sse, &mut got, "data: second", Duration::from_secs(30)).await;

    // A WebSocket handshake answered with 101 turns the connection into a byte pipe
    // both ways (the machine echoes what it gets).
    let ws_app = unique("proxyws");
    client.create_app(&ws_app, None).await.unwrap();
    let mut ws_config = busybox(&["sh", "-c", WS_SERVER]);
    ws_config.extra.insert(
        "services".into(),
        serde_json::json!([{
            "protocol": "tcp",
            "internal_port": 8080,
            "autostart": true,
            "ports": [{"port": 80, "handlers": ["http"]}]
        }]),
    );
    launch(&client, &ws_app, ws_config).await;
    let handshake = format!(
        "GET /echo HTTP/1.1\r\nHost: {ws_app}.hangar.localhost\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    // The proxy itself waits for the machine's listener to accept.
    let mut ws = tokio::net::TcpStream::connect(&daemon.proxy).await.unwrap();
    ws.write_all(handshake.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut ws, &mut got, "\r\n\r\n", Duration::from_secs(30)).await;
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    for msg in ["hello through the proxy\n", "and back again\n"] {
        let mut echoed = Vec::new();
        ws.write_all(msg.as_bytes()).await.unwrap();
        read_until(&mut ws, &mut echoed, msg, Duration::from_secs(30)).await;
        assert_eq!(String::from_utf8_lossy(&echoed), msg);
    }
}

/// Accepts a WebSocket handshake with 101, then echoes bytes back unchanged.
const WS_SERVER: &str = r#"cat > /ws <<'EOF'
#!/bin/sh
cr=$(printf '\r')
while read -r line; do
  line=${line%"$cr"}
  [ -z "$line" ] && break
done
printf 'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n'
exec cat
EOF
chmod +x /ws && exec nc -ll -p 8080 -e /ws"#;

/// The status of the machine's one check, once it has one.
async fn check_status(client: &hangar_client::Client, app: &str, id: &str) -> Option<String> {
    let m = client.get_machine(app, id).await.ok()?;
    m.checks.first().map(|c| c.status.clone())
}

async fn wait_check(client: &hangar_client::Client, app: &str, id: &str, status: &str) {
    common::eventually(
        &format!("machine {id}'s check to be {status}"),
        Duration::from_secs(30),
        || async { check_status(client, app, id).await.as_deref() == Some(status) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_health_checks_take_machines_out_of_rotation() {
    let app = unique("proxychecks");
    let Some((daemon, client)) = setup(&app).await else {
        return;
    };
    // httpd serves /up from a file the test deletes to fail the check.
    let script = format!("mkdir -p /www && echo ok > /www/up\n{SERVER}");
    let mut config = web_config();
    config.init = busybox(&["sh", "-c", &script]).init;
    config.extra.insert(
        "checks".into(),
        serde_json::json!({"alive": {
            "type": "http", "port": 8080, "path": "/up",
            "interval": "200ms", "timeout": "1s", "grace_period": "100ms"
        }}),
    );

    // A check that cannot work is refused before anything is created.
    let mut bad = config.clone();
    bad.extra.insert(
        "checks".into(),
        serde_json::json!({"alive": {"type": "grpc", "port": 8080}}),
    );
    let req = hangar_types::CreateMachineRequest {
        config: bad,
        ..Default::default()
    };
    let err = client.create_machine(&app, &req).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_config"), "{err}");
    assert!(
        err.to_string().contains("config.checks.alive.type"),
        "{err}"
    );
    assert!(client.list_machines(&app).await.unwrap().is_empty());

    let a = launch(&client, &app, config.clone()).await;
    let b = launch(&client, &app, config).await;
    let port = daemon.proxy.rsplit_once(':').unwrap().1.to_string();
    let http = http_client(&app, &[&a, &b], &daemon.proxy);
    let url = format!("http://{app}.hangar.localhost:{port}/cgi-bin/id");
    wait_check(&client, &app, &a, "passing").await;
    wait_check(&client, &app, &b, "passing").await;

    // b fails its check: every request goes to a, but b can still be forced.
    sh(&client, &app, &b, "rm /www/up").await;
    wait_check(&client, &app, &b, "critical").await;
    let failing = client.get_machine(&app, &b).await.unwrap();
    assert!(
        failing.checks[0].output.contains("404"),
        "{:?}",
        failing.checks
    );
    assert_eq!(answering(&http, &url).await, [a.clone()].into());
    let (status, body) = get(&http, &url, &[("fly-force-instance-id", &b)]).await;
    assert_eq!((status, first_word(&body)), (200, b.clone()), "{body}");

    // With both failing, the proxy says so.
    sh(&client, &app, &a, "rm /www/up").await;
    wait_check(&client, &app, &a, "critical").await;
    let (status, body) = get(&http, &url, &[("accept", "application/json")]).await;
    assert_eq!(status, 503, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["code"], "all_machines_failing_checks", "{body}");

    // Recovered machines come back into rotation.
    for id in [&a, &b] {
        sh(&client, &app, id, "echo ok > /www/up").await;
        wait_check(&client, &app, id, "passing").await;
    }
    assert_eq!(answering(&http, &url).await, [a.clone(), b.clone()].into());

    // Each transition is an event.
    let events = client.get_machine(&app, &b).await.unwrap().events;
    let checks: Vec<&str> = events
        .iter()
        .filter(|e| e.kind == "check")
        .map(|e| e.status.as_str())
        .collect();
    for status in ["passing", "critical"] {
        assert!(checks.contains(&status), "{checks:?}");
    }

    // A stopped machine is not checked.
    client
        .stop_machine(&app, &b, &StopRequest::default())
        .await
        .unwrap();
    client.wait(&app, &b, "stopped", 30).await.unwrap();
    assert!(
        client
            .get_machine(&app, &b)
            .await
            .unwrap()
            .checks
            .is_empty()
    );
}

/// Everything the proxy answers on a connection until it closes it.
async fn exchange_raw(proxy: &str, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection after the last answer")
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_pipelines_speaks_http10_and_hands_the_rest_over() {
    let app = unique("proxyh1");
    let Some((daemon, client)) = setup(&app).await else {
        return;
    };
    let a = launch(&client, &app, web_config()).await;
    let port = daemon.proxy.rsplit_once(':').unwrap().1.to_string();
    let http = http_client(&app, &[&a], &daemon.proxy);
    ready(
        &http,
        &format!("http://{app}.hangar.localhost:{port}/cgi-bin/id"),
        &a,
    )
    .await;
    let host = format!("{app}.hangar.localhost");

    // Three requests in one write are answered in order on the one connection; the
    // HEAD answer has no body, and the last request's `Connection: close` is kept.
    let answer = exchange_raw(
        &daemon.proxy,
        &format!(
            "GET /cgi-bin/id HTTP/1.1\r\nHost: {host}\r\n\r\n\
             HEAD /cgi-bin/id HTTP/1.1\r\nHost: {host}\r\n\r\n\
             GET /cgi-bin/id HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 200 OK\r\n").count(), 3, "{answer}");
    assert_eq!(answer.matches(a.as_str()).count(), 2, "{answer}");
    assert!(answer.ends_with("0\r\n\r\n"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("x-request-id: "));

    // An HTTP/1.0 client gets the body up to the close, not chunks.
    let answer = exchange_raw(
        &daemon.proxy,
        &format!("GET /cgi-bin/id HTTP/1.0\r\nHost: {host}\r\n\r\n"),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("transfer-encoding"),
        "{answer}"
    );
    assert!(answer.contains(&format!("\r\n\r\n{a} ")), "{answer}");

    // HTTP/2 with prior knowledge on the plain listener is handed to hyper.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve(&host, daemon.proxy.parse().unwrap())
        .build()
        .unwrap();
    let resp = h2
        .get(format!("http://{host}:{port}/cgi-bin/id"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(first_word(&resp.text().await.unwrap()), a);

    // What is not HTTP gets a 400 and a closed connection.
    let answer = exchange_raw(&daemon.proxy, "NOT HTTP AT ALL\r\n\r\n").await;
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
}
