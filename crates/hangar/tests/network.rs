//! The private network, black-box: machines of one org reach each other by address
//! and by `<app>.internal`; other orgs, the host and the daemon's API are out of
//! reach; egress policy decides what an app reaches "outside", which here is a
//! network namespace the test builds itself (no traffic leaves the host).

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{busybox, eventually, launch, setup, sh};
use hangar_client::Client;
use hangar_types::{EgressMode, EgressPolicy, MachineExecRequest};

/// Runs a script in the machine; returns its exit code and stdout.
async fn run(client: &Client, app: &str, id: &str, script: &str) -> (i32, String) {
    let req = MachineExecRequest {
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        timeout: Some(30),
        ..Default::default()
    };
    let out = client.exec(app, id, &req).await.unwrap();
    (out.exit_code, format!("{}{}", out.stdout, out.stderr))
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// A web server machine answering `hello from <app>` on port 8080.
fn web(app: &str) -> hangar_types::MachineConfig {
    let script = format!(
        "mkdir -p /www && echo hello from {app} > /www/index.html && exec httpd -f -p 8080 -h /www"
    );
    busybox(&["sh", "-c", &script])
}

async fn ipv4_of(client: &Client, app: &str, id: &str) -> Ipv4Addr {
    let m = client.get_machine(app, id).await.unwrap();
    m.private_ipv4
        .expect("a private IPv4 address")
        .parse()
        .unwrap()
}

/// A shell snippet fetching `/` from `host:port` over HTTP (busybox's nc: its wget
/// is not usable in the static build).
fn get(host: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {host} {port} | tail -n 1 | grep .")
}

/// The bridge gateway: `.0.1` of the installation's /16.
fn gateway_of(ip: Ipv4Addr) -> Ipv4Addr {
    let o = ip.octets();
    Ipv4Addr::new(o[0], o[1], 0, 1)
}

async fn wait_serving(client: &Client, app: &str, id: &str) {
    eventually("httpd to listen", Duration::from_secs(20), || async {
        run(client, app, id, &get("127.0.0.1", 8080)).await.0 == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_org_talks_other_orgs_and_the_host_stay_out() {
    let web_app = unique("web");
    let Some((daemon, client)) = setup(&web_app).await else {
        return;
    };
    let peer_app = unique("peer");
    client.create_app(&peer_app, None).await.unwrap();
    let other_app = unique("spy");
    client
        .create_app(&other_app, Some(&unique("org")))
        .await
        .unwrap();

    let server = launch(&client, &web_app, web(&web_app)).await;
    let peer = launch(&client, &peer_app, busybox(&["sleep", "inf"])).await;
    let spy = launch(&client, &other_app, busybox(&["sleep", "inf"])).await;
    wait_serving(&client, &web_app, &server).await;

    let m = client.get_machine(&web_app, &server).await.unwrap();
    let v6: std::net::Ipv6Addr = m.private_ip.parse().expect("private_ip is IPv6");
    assert!(v6.segments()[0] & 0xfe00 == 0xfc00, "{v6} is a ULA");
    let v4 = ipv4_of(&client, &web_app, &server).await;
    let gw = gateway_of(v4);

    // Same org: by IPv4, IPv6, and by name.
    let page = sh(&client, &peer_app, &peer, &get(&v4.to_string(), 8080)).await;
    assert_eq!(page.trim(), format!("hello from {web_app}"));
    let page = sh(&client, &peer_app, &peer, &get(&v6.to_string(), 8080)).await;
    assert_eq!(page.trim(), format!("hello from {web_app}"));
    sh(&client, &peer_app, &peer, &format!("ping -c 1 -W 5 {v4}")).await;
    let names = sh(
        &client,
        &peer_app,
        &peer,
        &format!("nslookup {web_app}.internal"),
    )
    .await;
    assert!(
        names.contains(&v4.to_string()) || names.contains(&v6.to_string()),
        "{names}"
    );
    let page = sh(
        &client,
        &peer_app,
        &peer,
        &get(&format!("{web_app}.internal"), 8080),
    )
    .await;
    assert_eq!(page.trim(), format!("hello from {web_app}"));
    let vm = sh(
        &client,
        &peer_app,
        &peer,
        &format!("nslookup {server}.vm.{web_app}.internal"),
    )
    .await;
    assert!(
        vm.contains(&v4.to_string()) || vm.contains(&v6.to_string()),
        "{vm}"
    );
    let apps = sh(
        &client,
        &peer_app,
        &peer,
        "nslookup -type=txt _apps.internal",
    )
    .await;
    assert!(
        apps.contains(&web_app) && apps.contains(&peer_app) && !apps.contains(&other_app),
        "{apps}"
    );

    // Another org: neither the address nor the name.
    let (code, out) = run(&client, &other_app, &spy, &get(&v4.to_string(), 8080)).await;
    assert_ne!(code, 0, "another org reached the server: {out}");
    let (code, out) = run(&client, &other_app, &spy, &get(&v6.to_string(), 8080)).await;
    assert_ne!(code, 0, "another org reached the server over IPv6: {out}");
    let (code, out) = run(
        &client,
        &other_app,
        &spy,
        &format!("nslookup {web_app}.internal"),
    )
    .await;
    assert!(
        code != 0 || !out.contains(&v4.to_string()),
        "another org resolved the name: {out}"
    );

    // The host: a listener on the gateway address, one on every address, and the API.
    let on_gateway = TcpListener::bind((gw, 0)).unwrap();
    let everywhere = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
    let api_port: u16 = daemon.api.rsplit(':').next().unwrap().parse().unwrap();
    for port in [
        on_gateway.local_addr().unwrap().port(),
        everywhere.local_addr().unwrap().port(),
        api_port,
    ] {
        let (code, out) = run(
            &client,
            &peer_app,
            &peer,
            &format!("nc -w 3 {gw} {port} </dev/null"),
        )
        .await;
        assert_ne!(code, 0, "a machine reached the host's port {port}: {out}");
    }
    // ...while the same probe does reach a machine of its org (the probe works).
    sh(
        &client,
        &peer_app,
        &peer,
        &format!("nc -w 3 {v4} 8080 </dev/null"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn addresses_survive_a_daemon_restart_and_destroy_leaves_no_veth() {
    let app = unique("keep");
    let Some((mut daemon, client)) = setup(&app).await else {
        return;
    };
    let peer_app = unique("keep-peer");
    client.create_app(&peer_app, None).await.unwrap();
    let server = launch(&client, &app, web(&app)).await;
    let peer = launch(&client, &peer_app, busybox(&["sleep", "inf"])).await;
    wait_serving(&client, &app, &server).await;
    let before = client.get_machine(&app, &server).await.unwrap();

    daemon.kill9();
    daemon.spawn();
    let client = daemon.client();
    let after = client.get_machine(&app, &server).await.unwrap();
    assert_eq!(
        (&before.private_ip, &before.private_ipv4),
        (&after.private_ip, &after.private_ipv4)
    );
    let page = sh(
        &client,
        &peer_app,
        &peer,
        &get(&format!("{app}.internal"), 8080),
    )
    .await;
    assert_eq!(page.trim(), format!("hello from {app}"));

    // Stop and start keep the address too.
    client
        .stop_machine(&app, &server, &Default::default())
        .await
        .unwrap();
    client.wait(&app, &server, "stopped", 30).await.unwrap();
    client.start_machine(&app, &server).await.unwrap();
    client.wait(&app, &server, "started", 30).await.unwrap();
    assert_eq!(
        client.get_machine(&app, &server).await.unwrap().private_ip,
        before.private_ip
    );

    let veth = hangar_net::alloc::Installation::from_data_dir(daemon.data_dir()).veth_name(&server);
    assert!(link_exists(&veth), "the machine has its veth {veth}");
    client.destroy_machine(&app, &server, true).await.unwrap();
    assert!(!link_exists(&veth), "destroy left the veth {veth} behind");
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// A stand-in for the outside world: a network namespace behind a veth, with a web
/// server, on an address from the benchmarking range 198.18.0.0/15.
struct Outside {
    ns: String,
    host_if: String,
    addr: Ipv4Addr,
    server: Option<Child>,
    _www: tempfile::TempDir,
}

impl Outside {
    fn start() -> Outside {
        let n: u8 = rand::random::<u8>() & 0x3f;
        let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
        let ns = format!("hgt-out-{tag}");
        let host_if = format!("hgto{tag}");
        let host_addr = Ipv4Addr::new(198, 18, n, 4 * (rand::random::<u8>() % 60) + 1);
        let addr = Ipv4Addr::from(u32::from(host_addr) + 1);
        let www = tempfile::tempdir().unwrap();
        std::fs::write(www.path().join("index.html"), "outside\n").unwrap();
        let ip = |args: &[&str]| {
            let ok = Command::new("ip").args(args).status().unwrap().success();
            assert!(ok, "ip {args:?}");
        };
        ip(&["netns", "add", &ns]);
        let mut outside = Outside {
            ns: ns.clone(),
            host_if: host_if.clone(),
            addr,
            server: None,
            _www: www,
        };
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/30"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        outside.server = Some(
            Command::new("ip")
                .args(["netns", "exec", &ns, "busybox", "httpd", "-f", "-p"])
                .arg(format!("{addr}:9000"))
                .arg("-h")
                .arg(outside._www.path())
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        );
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn egress_policy_applies_to_running_machines() {
    if common::skip_unless_root() {
        return;
    }
    let outside = Outside::start();
    let app = unique("egress");
    let Some((_daemon, client)) = setup(&app).await else {
        return;
    };
    let m = launch(&client, &app, busybox(&["sleep", "inf"])).await;
    let fetch = get(&outside.addr.to_string(), 9000);

    // Default: allow.
    assert_eq!(
        client.get_egress(&app).await.unwrap().policy,
        EgressMode::Allow
    );
    eventually("the outside to answer", Duration::from_secs(20), || async {
        run(&client, &app, &m, &fetch).await.0 == 0
    })
    .await;

    let set = |policy, allow: &[String]| EgressPolicy {
        policy,
        allow: allow.to_vec(),
    };
    client
        .set_egress(&app, &set(EgressMode::Deny, &[]))
        .await
        .unwrap();
    let (code, out) = run(&client, &app, &m, &fetch).await;
    assert_ne!(code, 0, "deny let a connection out: {out}");

    let cidr = format!("{}/30", Ipv4Addr::from(u32::from(outside.addr) & !3));
    client
        .set_egress(&app, &set(EgressMode::Allowlist, &[cidr]))
        .await
        .unwrap();
    assert_eq!(sh(&client, &app, &m, &fetch).await.trim(), "outside");

    client
        .set_egress(
            &app,
            &set(
                EgressMode::Allowlist,
                &["192.0.2.0/24".into(), "example.com".into()],
            ),
        )
        .await
        .unwrap();
    let (code, out) = run(&client, &app, &m, &fetch).await;
    assert_ne!(
        code, 0,
        "an allowlist without the address let it through: {out}"
    );

    // Bad input is refused and changes nothing.
    let err = client
        .set_egress(&app, &set(EgressMode::Allowlist, &["not a cidr".into()]))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not a cidr"), "{err}");
    assert_eq!(client.get_egress(&app).await.unwrap().allow.len(), 2);

    client
        .set_egress(&app, &set(EgressMode::Allow, &[]))
        .await
        .unwrap();
    assert_eq!(sh(&client, &app, &m, &fetch).await.trim(), "outside");
}
