//! `hangar-bench proxy`: the edge proxy in front of a real machine. `hangar-bench
//! upstream` inside the machine (this binary, copied into the image) answers a small
//! body, keeping the connection open (`/`) or closing it after each answer (`/close`,
//! as busybox `httpd` does); the same server is loaded once through the proxy
//! (`Host: <app>.hangar.localhost`) and once directly on the machine's private IPv4
//! address, with the same in-process HTTP/1.1 load generator; with `--nginx`, also
//! through nginx in front of the same server, as a peer. `--sse-idle N` then
//! holds N server-sent event streams open through the proxy and reports the daemon's
//! memory per stream. Last, a stopped machine is woken by one request and timed to its
//! first response byte.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hangar_client::Client;
use hangar_types::{CreateMachineRequest, MachineConfig, MachineInit, StopRequest};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stats::Samples;

use crate::upstream::{BODY, SSE_EVENT};

const APP: &str = "pbench";

pub struct Options {
    pub requests: usize,
    pub conns: usize,
    pub wake_runs: usize,
    pub sse_idle: usize,
    /// Also load nginx in front of the same server, as a peer.
    pub nginx: bool,
}

pub fn parse(args: impl Iterator<Item = String>) -> Result<Options> {
    let mut options = Options {
        requests: 100_000,
        conns: 64,
        wake_runs: 30,
        sse_idle: 0,
        nginx: false,
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> { Ok(args.next().context("missing value")?.parse()?) };
        match arg.as_str() {
            "--requests" => options.requests = value()?,
            "--conns" => options.conns = value()?,
            "--wake-runs" => options.wake_runs = value()?,
            "--sse-idle" => options.sse_idle = value()?,
            "--nginx" => options.nginx = true,
            other => bail!(
                "unknown argument {other}; use --requests N, --conns N, --wake-runs N, --sse-idle N, --nginx"
            ),
        }
    }
    Ok(options)
}

fn web_request() -> CreateMachineRequest {
    let mut config = MachineConfig {
        image: "busybox:latest".into(),
        init: Some(MachineInit {
            exec: Some(vec![
                "/bin/hangar-bench".into(),
                "upstream".into(),
                "8080".into(),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    };
    config.extra.insert(
        "services".into(),
        serde_json::json!([{
            "protocol": "tcp",
            "internal_port": 8080,
            "autostart": true,
            "ports": [{"port": 80, "handlers": ["http"]}]
        }]),
    );
    CreateMachineRequest {
        config,
        ..Default::default()
    }
}

/// Outcome of one load run: per-request latency, wall time, connections opened.
struct Load {
    samples: Samples,
    wall: Duration,
    connects: u64,
}

impl Load {
    fn rps(&self) -> f64 {
        self.samples.len() as f64 / self.wall.as_secs_f64()
    }
}

pub async fn bench(
    client: &Client,
    proxy: &str,
    daemon_pid: u32,
    options: &Options,
) -> Result<Vec<String>> {
    client.create_app(APP, None).await?;
    let result = run(client, proxy, daemon_pid, options).await;
    let _ = client.delete_app(APP).await;
    result
}

async fn run(
    client: &Client,
    proxy: &str,
    daemon_pid: u32,
    options: &Options,
) -> Result<Vec<String>> {
    let proxy: SocketAddr = proxy.parse()?;
    let host = format!("{APP}.hangar.localhost");
    let m = client.create_machine(APP, &web_request()).await?;
    let result = async {
        client.wait(APP, &m.id, "started", 30).await?;
        wait_ok(proxy, &host)
            .await
            .context("the upstream server through the proxy")?;
        let m = client.get_machine(APP, &m.id).await?;
        let mut rows = Vec::new();

        let direct = match &m.private_ipv4 {
            Some(ip) => {
                let addr: SocketAddr = format!("{ip}:8080").parse()?;
                match wait_ok(addr, ip).await {
                    Ok(()) => Some((addr, ip.clone())),
                    Err(e) => {
                        eprintln!("direct connection to {addr} failed: {e:#}");
                        None
                    }
                }
            }
            None => None,
        };
        // The peer: nginx as a reverse proxy to the same server, keeping upstream
        // connections alive, when it is installed.
        let nginx = match &direct {
            Some((addr, _)) if options.nginx => Some(Nginx::start(*addr).await?),
            _ => None,
        };
        // Keep-alive at the asked-for connections and at one (no queueing, so the
        // proxy's own latency shows), then a server that closes after each answer.
        let cases = [
            ("keep-alive", "/", options.conns),
            ("keep-alive", "/", 1),
            ("close", "/close", options.conns),
        ];
        for (what, path, conns) in cases {
            let requests = if conns == 1 {
                options.requests / 4
            } else {
                options.requests
            };
            // Warm every path, then alternate so drift on the shared host hits all.
            let warm = (requests / 10).max(conns);
            if let Some((addr, h)) = &direct {
                load(*addr, h, path, conns, warm).await?;
            }
            load(proxy, &host, path, conns, warm).await?;
            if let Some(n) = &nginx {
                load(n.addr, &host, path, conns, warm).await?;
            }
            let mut through = Vec::new();
            let mut straight = Vec::new();
            let mut peer = Vec::new();
            for _ in 0..2 {
                if let Some((addr, h)) = &direct {
                    straight.push(load(*addr, h, path, conns, requests).await?);
                }
                through.push(load(proxy, &host, path, conns, requests).await?);
                if let Some(n) = &nginx {
                    peer.push(load(n.addr, &host, path, conns, requests).await?);
                }
            }
            for (i, p) in through.iter().enumerate() {
                let d = straight.get(i);
                rows.push(load_row(&format!("{what}, round {}", i + 1), conns, p, d));
                if let Some(n) = peer.get(i) {
                    rows.push(load_row(
                        &format!("nginx: {what}, round {}", i + 1),
                        conns,
                        n,
                        d,
                    ));
                }
            }
        }
        drop(nginx);

        let mut extra = Vec::new();
        if options.sse_idle > 0 {
            extra.push(sse_idle(proxy, &host, daemon_pid, options.sse_idle).await?);
        }
        let wake = wake(client, &m.id, proxy, &host, options.wake_runs).await?;
        rows.push(String::new());
        rows.push("| what | runs | p50 | p99 |".into());
        rows.push("|---|---|---|---|".into());
        rows.push(wake.row4());
        rows.extend(extra);
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    let _ = client.destroy_machine(APP, &m.id, true).await;
    result
}

/// nginx in front of the machine's server, as a peer: one process per core, upstream
/// keep-alive, no buffering, no access log.
struct Nginx {
    addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(upstream: SocketAddr) -> Result<Nginx> {
        let dir = tempfile::Builder::new()
            .prefix("hangar-bench-nginx-")
            .tempdir()?;
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nworker_processes auto;\nuser root;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream machine {{ server {upstream}; keepalive 256; }}\n\
               server {{\n    listen {addr};\n    location / {{\n      proxy_pass http://machine;\n\
                 proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n\
                 proxy_set_header Host $host;\n      proxy_set_header X-Forwarded-For $remote_addr;\n\
                 proxy_buffering off;\n    }}\n  }}\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), conf)?;
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting nginx (install nginx-light, or leave out --nginx)")?;
        let nginx = Nginx {
            addr,
            child,
            _dir: dir,
        };
        wait_ok(addr, "nginx").await.context("nginx answering")?;
        Ok(nginx)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: plain kill(2) on our own child; nginx's master stops its workers.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// A process' resident set size in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("VmRSS missing")
}

/// Opens `count` event streams through the proxy, waits until each has its first
/// event, and reports how much the daemon's resident memory grew per stream.
async fn sse_idle(proxy: SocketAddr, host: &str, pid: u32, count: usize) -> Result<String> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .split_whitespace()
        .nth(3)
        .unwrap_or("?")
        .to_string();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = rss_kib(pid)?;
    let request = format!("GET /sse HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n");
    let began = Instant::now();
    let mut streams = Vec::with_capacity(count);
    // A few hundred at a time, so the listen backlog never overflows.
    let mut opening = tokio::task::JoinSet::new();
    let mut next = 0;
    while streams.len() < count {
        while next < count && opening.len() < 256 {
            let request = request.clone();
            opening.spawn(async move {
                let mut stream = TcpStream::connect(proxy).await?;
                stream.write_all(request.as_bytes()).await?;
                let mut got = Vec::new();
                let mut chunk = [0u8; 512];
                while !String::from_utf8_lossy(&got).contains(SSE_EVENT) {
                    let n = stream.read(&mut chunk).await?;
                    anyhow::ensure!(n > 0, "stream ended: {}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&chunk[..n]);
                }
                Ok::<_, anyhow::Error>(stream)
            });
            next += 1;
        }
        let opened = opening.join_next().await.context("no stream task")???;
        streams.push(opened);
    }
    let opened_in = began.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid)?;
    let per = after.saturating_sub(before) as f64 / count as f64;
    drop(streams);
    Ok(format!(
        "| {count} idle SSE streams through the proxy (daemon open files limit {files}, opened in {:.1} s) | 1 | daemon RSS {before} KiB before, {after} KiB after: **{per:.1} KiB per stream** | |",
        opened_in.as_secs_f64()
    ))
}

fn load_row(round: &str, conns: usize, p: &Load, d: Option<&Load>) -> String {
    let us = |s: &Samples, q: f64| s.quantile(q).as_secs_f64() * 1e6;
    match d {
        Some(d) => format!(
            "| {round} | {conns} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0}/s | {:.0}/s | {:.0} % |",
            p.samples.len(),
            us(&d.samples, 0.5),
            us(&d.samples, 0.99),
            us(&p.samples, 0.5),
            us(&p.samples, 0.99),
            us(&p.samples, 0.5) - us(&d.samples, 0.5),
            us(&p.samples, 0.99) - us(&d.samples, 0.99),
            d.connects as f64,
            p.connects as f64,
            d.rps(),
            p.rps(),
            100.0 * p.rps() / d.rps()
        ),
        None => format!(
            "| {round} | {conns} | {} | | | {:.0} | {:.0} | | | - / {} | | {:.0}/s | |",
            p.samples.len(),
            us(&p.samples, 0.5),
            us(&p.samples, 0.99),
            p.connects,
            p.rps()
        ),
    }
}

pub fn load_header() -> [&'static str; 2] {
    [
        "| round | conns | requests | direct p50 µs | direct p99 µs | proxy p50 µs | proxy p99 µs | added p50 µs | added p99 µs | TCP connects direct / proxy | direct req/s | proxy req/s | proxy / direct |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
}

/// Polls one GET until it answers 200, for up to 30 s.
async fn wait_ok(addr: SocketAddr, host: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let err = match load(addr, host, "/", 1, 1).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > deadline {
            return Err(err);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `total` GETs over `conns` keep-alive connections, each connection sending its
/// next request when the previous answer is read. A server that closes the
/// connection after an answer (busybox httpd does) gets a new one, and that connect
/// counts in the request's latency, as it would for any client.
async fn load(
    addr: SocketAddr,
    host: &str,
    path: &'static str,
    conns: usize,
    total: usize,
) -> Result<Load> {
    let host: Arc<str> = host.into();
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let n = total / conns + usize::from(i < total % conns);
        let host = host.clone();
        tasks.push(tokio::spawn(
            async move { worker(addr, &host, path, n).await },
        ));
    }
    let mut nanos = Vec::with_capacity(total);
    let mut connects = 0;
    for t in tasks {
        let (n, c) = t.await??;
        nanos.extend(n);
        connects += c;
    }
    Ok(Load {
        samples: Samples::from_nanos("load", &nanos),
        wall: began.elapsed(),
        connects,
    })
}

async fn worker(addr: SocketAddr, host: &str, path: &str, n: usize) -> Result<(Vec<u64>, u64)> {
    let mut nanos = Vec::with_capacity(n);
    let mut connects = 0;
    let mut conn: Option<SendRequest<Empty<Bytes>>> = None;
    for _ in 0..n {
        let began = Instant::now();
        let mut attempts = 0;
        let resp = loop {
            let reusable = match conn.as_mut() {
                Some(s) => s.ready().await.is_ok(),
                None => false,
            };
            let mut sender = match conn.take() {
                Some(s) if reusable => s,
                _ => {
                    connects += 1;
                    connect(addr).await?
                }
            };
            let req = hyper::Request::get(path)
                .header(hyper::header::HOST, host)
                .body(Empty::new())?;
            match sender.send_request(req).await {
                Ok(resp) => {
                    conn = Some(sender);
                    break resp;
                }
                // The server closed the idle connection as we sent: once more on a new one.
                Err(e) if attempts == 0 && (e.is_canceled() || e.is_closed()) => attempts += 1,
                Err(e) => return Err(e.into()),
            }
        };
        anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(body.len() == BODY.len(), "short body: {body:?}");
        nanos.push(began.elapsed().as_nanos() as u64);
    }
    Ok((nanos, connects))
}

async fn connect(addr: SocketAddr) -> Result<SendRequest<Empty<Bytes>>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Stops the machine through the API, then times one request through the proxy
/// from connect until the first byte of the answer.
async fn wake(
    client: &Client,
    id: &str,
    proxy: SocketAddr,
    host: &str,
    runs: usize,
) -> Result<Samples> {
    let mut ttfb = Samples::new(
        "wake-on-request: stopped machine, one GET through the proxy, time to first byte",
    );
    let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    for _ in 0..runs {
        let stop = StopRequest {
            signal: Some("SIGKILL".into()),
            timeout: None,
        };
        client.stop_machine(APP, id, &stop).await?;
        client.wait(APP, id, "stopped", 30).await?;
        let began = Instant::now();
        let mut stream = TcpStream::connect(proxy).await?;
        stream.set_nodelay(true)?;
        stream.write_all(request.as_bytes()).await?;
        let mut first = [0u8; 1];
        stream.read_exact(&mut first).await?;
        ttfb.push(began.elapsed());
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await?;
        let answer = String::from_utf8_lossy(&rest);
        anyhow::ensure!(
            first[0] == b'H' && answer.starts_with("TTP/1.1 200") && answer.ends_with(BODY),
            "wake answer: {answer}"
        );
        let state = client.get_machine(APP, id).await?.state;
        anyhow::ensure!(state == "started", "machine is {state} after the wake");
    }
    Ok(ttfb)
}
