//! Tool-call round trip of `exec true` over stdio and streamable HTTP.
//!
//! Needs a running daemon and a started machine:
//! `HANGAR_API=... HANGAR_TOKEN=... HANGAR_BIN=target/release/hangar \
//!  cargo run --release -p hangar-mcp --example mcp_bench -- APP MACHINE [RUNS]`

use std::time::{Duration, Instant};

use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};
use serde_json::json;

async fn measure(
    name: &str,
    mcp: RunningService<RoleClient, ()>,
    app: &str,
    machine: &str,
    runs: usize,
) {
    let args = json!({"app": app, "machine": machine, "command": ["true"]});
    let params =
        CallToolRequestParams::new("exec").with_arguments(args.as_object().unwrap().clone());
    for _ in 0..10 {
        mcp.call_tool(params.clone()).await.expect("warm-up call");
    }
    let mut times: Vec<Duration> = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let r = mcp.call_tool(params.clone()).await.expect("call");
        times.push(t.elapsed());
        assert_eq!(r.structured_content.unwrap()["exit_code"], 0);
    }
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{name:6} exec true: runs {runs}, p50 {:.2} ms, p99 {:.2} ms",
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3
    );
    let _ = mcp.cancel().await;
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (app, machine) = (&args[1], &args[2]);
    let runs = args.get(3).and_then(|r| r.parse().ok()).unwrap_or(500);
    let api = std::env::var("HANGAR_API").expect("HANGAR_API");
    let token = std::env::var("HANGAR_TOKEN").expect("HANGAR_TOKEN");
    let bin = std::env::var("HANGAR_BIN").unwrap_or_else(|_| "hangar".into());

    let mut cmd = tokio::process::Command::new(bin);
    cmd.arg("mcp");
    let stdio = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
    measure("stdio", stdio, app, machine, runs).await;

    let config = StreamableHttpClientTransportConfig::with_uri(format!("http://{api}/mcp"))
        .auth_header(token);
    let http = ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
    measure("http", http, app, machine, runs).await;
}
