//! `hangar-bench proxy`: the edge proxy in front of a real machine. A busybox `httpd`
//! inside the machine serves a small static file; the same server is loaded once
//! through the proxy (`Host: <app>.hangar.localhost`) and once directly on the
//! machine's private IPv4 address, with the same in-process HTTP/1.1 load generator.
//! Then a stopped machine is woken by one request and timed to its first response byte.

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

const APP: &str = "pbench";
const BODY: &str = "hello from a machine behind the hangar proxy\n";

pub struct Options {
    pub requests: usize,
    pub conns: usize,
    pub wake_runs: usize,
}

pub fn parse(args: impl Iterator<Item = String>) -> Result<Options> {
    let mut options = Options {
        requests: 100_000,
        conns: 64,
        wake_runs: 30,
    };
    let mut args = args;
    while let Some(arg) = args.next() {
        let mut value = || -> Result<usize> { Ok(args.next().context("missing value")?.parse()?) };
        match arg.as_str() {
            "--requests" => options.requests = value()?,
            "--conns" => options.conns = value()?,
            "--wake-runs" => options.wake_runs = value()?,
            other => bail!("unknown argument {other}; use --requests N, --conns N, --wake-runs N"),
        }
    }
    Ok(options)
}

fn web_request() -> CreateMachineRequest {
    let script = format!(
        "mkdir -p /www && printf '{}' > /www/index.html && exec httpd -f -p 8080 -h /www",
        BODY.replace('\n', "\\n")
    );
    let mut config = MachineConfig {
        image: "busybox:latest".into(),
        init: Some(MachineInit {
            exec: Some(vec!["sh".into(), "-c".into(), script]),
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

pub async fn bench(client: &Client, proxy: &str, options: &Options) -> Result<Vec<String>> {
    client.create_app(APP, None).await?;
    let result = run(client, proxy, options).await;
    let _ = client.delete_app(APP).await;
    result
}

async fn run(client: &Client, proxy: &str, options: &Options) -> Result<Vec<String>> {
    let proxy: SocketAddr = proxy.parse()?;
    let host = format!("{APP}.hangar.localhost");
    let m = client.create_machine(APP, &web_request()).await?;
    let result = async {
        client.wait(APP, &m.id, "started", 30).await?;
        wait_ok(proxy, &host)
            .await
            .context("httpd through the proxy")?;
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
        // Warm both paths, then alternate so drift on the shared host hits both.
        let warm = (options.requests / 10).max(options.conns);
        if let Some((addr, h)) = &direct {
            load(*addr, h, options.conns, warm).await?;
        }
        load(proxy, &host, options.conns, warm).await?;
        let mut through = Vec::new();
        let mut straight = Vec::new();
        for _ in 0..2 {
            if let Some((addr, h)) = &direct {
                straight.push(load(*addr, h, options.conns, options.requests).await?);
            }
            through.push(load(proxy, &host, options.conns, options.requests).await?);
        }
        for (i, p) in through.iter().enumerate() {
            let d = straight.get(i);
            rows.push(load_row(&format!("round {}", i + 1), options.conns, p, d));
        }

        let wake = wake(client, &m.id, proxy, &host, options.wake_runs).await?;
        rows.push(String::new());
        rows.push("| what | runs | p50 | p99 |".into());
        rows.push("|---|---|---|---|".into());
        rows.push(wake.row4());
        Ok::<_, anyhow::Error>(rows)
    }
    .await;
    let _ = client.destroy_machine(APP, &m.id, true).await;
    result
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
        let err = match load(addr, host, 1, 1).await {
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
async fn load(addr: SocketAddr, host: &str, conns: usize, total: usize) -> Result<Load> {
    let host: Arc<str> = host.into();
    let began = Instant::now();
    let mut tasks = Vec::with_capacity(conns);
    for i in 0..conns {
        let n = total / conns + usize::from(i < total % conns);
        let host = host.clone();
        tasks.push(tokio::spawn(async move { worker(addr, &host, n).await }));
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

async fn worker(addr: SocketAddr, host: &str, n: usize) -> Result<(Vec<u64>, u64)> {
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
            let req = hyper::Request::get("/index.html")
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
    let request = format!("GET /index.html HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
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
