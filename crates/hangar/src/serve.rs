//! `hangar serve`: opens the store, the image store and the runtime driver, adopts the
//! machines already on the host, and serves the API until SIGINT or SIGTERM.
//!
//! Machines are not children of the daemon: stopping or killing it leaves them running,
//! and the next `serve` adopts them.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use hangar_api::AppState;
use hangar_api::auth::Token;
use hangar_core::Service;
use hangar_core::service::ServiceOptions;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where hangar keeps its state, images and machines.
    #[arg(long, env = "HANGAR_DATA_DIR", default_value = "/var/lib/hangar")]
    pub data_dir: PathBuf,
    /// Address of the REST API (port 0 picks one).
    #[arg(long, env = "HANGAR_API", default_value = "127.0.0.1:4280")]
    pub api_listen: String,
    /// Address of the edge proxy's HTTP listener.
    #[arg(long, env = "HANGAR_PROXY_LISTEN")]
    pub proxy_listen: Option<String>,
    /// Address of the edge proxy's HTTPS listener.
    #[arg(long, env = "HANGAR_PROXY_TLS_LISTEN")]
    pub proxy_tls_listen: Option<String>,
    /// Apps are served at `<app>.<base-domain>`.
    #[arg(long, env = "HANGAR_BASE_DOMAIN", default_value = "hangar.localhost")]
    pub base_domain: String,
    /// PEM certificate chain for the HTTPS listener (default: certificates issued by
    /// a local CA kept in `DATA_DIR/proxy-ca/ca.pem`).
    #[arg(long, env = "HANGAR_PROXY_CERT", requires = "proxy_key")]
    pub proxy_cert: Option<PathBuf>,
    /// PEM private key matching `--proxy-cert`.
    #[arg(long, env = "HANGAR_PROXY_KEY", requires = "proxy_cert")]
    pub proxy_key: Option<PathBuf>,
    /// Seconds without requests after which a machine whose service has `autostop`
    /// is stopped or suspended.
    #[arg(long, env = "HANGAR_PROXY_IDLE_TIMEOUT", default_value_t = 300)]
    pub proxy_idle_timeout: u64,
    /// Where machines' writable layers live: `btrfs` (subvolumes, so checkpoints
    /// work; a loop-mounted image inside the data dir when it is not btrfs itself) or
    /// `plain` directories.
    #[arg(long, env = "HANGAR_LAYERS", default_value = "btrfs")]
    pub layers: String,
    /// Size of the btrfs image for layers, e.g. `64G` (default: 64 GiB or the free
    /// space, whichever is smaller). The image is sparse and made once.
    #[arg(long, env = "HANGAR_LAYERS_SIZE")]
    pub layers_size: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "HANGAR_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

pub async fn run(args: ServeArgs) -> Result<()> {
    init_tracing(&args.log_format);
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing data dir {}", args.data_dir.display()))?;
    let data_dir = args.data_dir.canonicalize()?;
    let token = root_token(&data_dir)?;

    let store = Arc::new(hangar_store::SqliteStore::open(&data_dir.join("hangar.db")).await?);
    let images = Arc::new(
        hangar_image::LocalImageStore::open(
            data_dir.join("images"),
            hangar_image::StoreOptions::default(),
        )
        .context("opening the image store")?,
    );
    let driver = Arc::new(
        hangar_runtime::sandbox::SandboxDriver::new(hangar_runtime::sandbox::SandboxConfig {
            state_dir: data_dir.join("machines"),
            boot_exe: std::env::current_exe().context("finding the hangar binary")?,
            storage: storage_mode(&args.layers, args.layers_size.as_deref())?,
        })
        .context("starting the sandbox driver")?,
    );
    // Bound before the service is built so it can tell callers the proxy's URLs.
    let proxy_http = match &args.proxy_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the proxy to {addr}"))?,
        ),
        None => None,
    };
    let proxy_https = match &args.proxy_tls_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the TLS proxy to {addr}"))?,
        ),
        None => None,
    };
    let options = ServiceOptions {
        base_domain: args.base_domain.clone(),
        proxy_http_port: proxy_http
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port()),
        proxy_https_port: proxy_https
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .map(|a| a.port()),
        ..ServiceOptions::default()
    };
    let service = Service::new(store, driver, images, options);
    service
        .recover()
        .await
        .context("adopting machines on this host")?;

    let shutdown = CancellationToken::new();
    let events = service.spawn_event_loop(shutdown.clone());
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let router = hangar_api::router(AppState {
        service: service.clone(),
        token: Token::new(token),
        metrics: Some(metrics),
    });

    let listener = tokio::net::TcpListener::bind(&args.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", args.api_listen))?;
    announce("api", listener.local_addr()?);
    if proxy_http.is_some() || proxy_https.is_some() {
        let proxy = hangar_proxy::Proxy::new(
            service.clone(),
            hangar_proxy::ProxyOptions {
                base_domain: args.base_domain.clone(),
                idle_timeout: std::time::Duration::from_secs(args.proxy_idle_timeout.max(1)),
                ..Default::default()
            },
        );
        if let Some(listener) = proxy_http {
            announce("proxy", listener.local_addr()?);
            tokio::spawn(proxy.clone().serve_http(listener, shutdown.clone()));
        }
        if let Some(listener) = proxy_https {
            let tls = match (&args.proxy_cert, &args.proxy_key) {
                (Some(cert), Some(key)) => hangar_proxy::tls::operator_config(cert, key)
                    .context("loading the proxy's certificate")?,
                _ => {
                    let (tls, ca) = hangar_proxy::tls::local_ca_config(
                        &data_dir.join("proxy-ca"),
                        &args.base_domain,
                    )
                    .context("opening the proxy's local CA")?;
                    tracing::info!(ca = %ca.display(), "HTTPS certificates come from the local CA");
                    tls
                }
            };
            announce("proxy tls", listener.local_addr()?);
            tokio::spawn(proxy.clone().serve_https(listener, tls, shutdown.clone()));
        }
        tokio::spawn(proxy.autostop_loop(shutdown.clone()));
    }
    tracing::info!(data_dir = %data_dir.display(), "hangar is serving");

    let stop = shutdown.clone();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            stop.cancel();
        })
        .await?;
    shutdown.cancel();
    let _ = events.await;
    tracing::info!("stopped serving; machines keep running");
    Ok(())
}

fn storage_mode(kind: &str, size: Option<&str>) -> Result<hangar_runtime::sandbox::StorageMode> {
    use hangar_runtime::sandbox::StorageMode;
    match kind {
        "plain" => Ok(StorageMode::Plain),
        "btrfs" => Ok(StorageMode::Btrfs {
            image_size: size.map(parse_size).transpose()?,
        }),
        other => anyhow::bail!("--layers {other:?} is not known: use btrfs or plain"),
    }
}

/// `1073741824`, `512M`, `64G`, `1T`.
fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (number, shift) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => anyhow::bail!("size {s:?} has an unknown unit: use K, M, G or T"),
            };
            (&s[..i], shift)
        }
        _ => (s, 0),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("size {s:?} is not a number of bytes (or 64G, 512M)"))?;
    n.checked_shl(shift)
        .filter(|v| v >> shift == n)
        .with_context(|| format!("size {s:?} is too large"))
}

/// Tests and scripts read the chosen address from this line.
fn announce(what: &str, addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{what} listening on {addr}");
    let _ = out.flush();
}

/// The root token, created with mode 0600 on first start.
fn root_token(data_dir: &Path) -> Result<String> {
    let path = data_dir.join("root-token");
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => {}
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    }
    let token: String = {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    Ok(token)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("HANGAR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
