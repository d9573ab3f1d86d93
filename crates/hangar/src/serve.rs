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
    /// Machines' private network: `on` (the default: a bridge, addresses, `.internal`
    /// DNS and egress policy; falls back to loopback only, with the reason logged,
    /// when the host lacks something) or `off` (loopback only).
    #[arg(long, env = "HANGAR_PRIVATE_NETWORK", default_value = "on")]
    pub private_network: String,
    /// IPv4 range for machines' private addresses, a /8 to /22 (each org gets a /24
    /// of it). Default: a /16 inside 10.0.0.0/8 derived from the data dir and not in
    /// use on the host, chosen on first start and kept.
    #[arg(long, env = "HANGAR_PRIVATE_IPV4_RANGE")]
    pub private_ipv4_range: Option<String>,
    /// Resolvers for names outside `.internal`, comma-separated `IP` or `IP:PORT`
    /// (default: the host's /etc/resolv.conf).
    #[arg(long, env = "HANGAR_DNS_UPSTREAM")]
    pub dns_upstream: Option<String>,
    /// The app MCP tools use when a call names none.
    #[arg(long, env = "HANGAR_APP")]
    pub mcp_app: Option<String>,
    /// Opt-in MCP toolsets: images, apps, volumes (comma-separated) or all.
    #[arg(long, env = "HANGAR_MCP_TOOLSETS", default_value = "")]
    pub mcp_toolsets: String,
    /// Log format: `text` or `json`.
    #[arg(long, env = "HANGAR_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Every connection the proxy holds (an SSE stream: client and machine side) is two
/// descriptors: the usual soft limit of 1,024 would stop it at a few hundred.
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit on a struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!(error = %std::io::Error::last_os_error(), "raising the open files limit");
            }
        }
    }
}

pub async fn run(args: ServeArgs) -> Result<()> {
    init_tracing(&args.log_format);
    raise_open_files_limit();
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
    let network = private_network(&args, &data_dir, store.as_ref()).await?;
    let service = Service::with_network(store, driver, images, options, network);
    // The firewall goes up before any machine is rebuilt (after a reboot the tables
    // are gone), and again after recovery for what it changed.
    if let Err(err) = service.sync_network().await {
        tracing::error!(error = %err, "loading the private network's firewall");
    }
    service
        .recover()
        .await
        .context("adopting machines on this host")?;
    // Rebuilds the firewall and DNS records of the machines just adopted.
    if let Err(err) = service.sync_network().await {
        tracing::error!(error = %err, "loading the private network's firewall");
    }

    let shutdown = CancellationToken::new();
    let events = service.spawn_event_loop(shutdown.clone());
    let health = service.spawn_health_loop(shutdown.clone());
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("installing the metrics recorder")?;
    let token = Token::new(token);
    let listener = tokio::net::TcpListener::bind(&args.api_listen)
        .await
        .with_context(|| format!("binding the API to {}", args.api_listen))?;
    let api_addr = listener.local_addr()?;
    // MCP over HTTP calls this same API with the caller's own token.
    let check = token.clone();
    let mcp = hangar_mcp::http::router(
        hangar_mcp::Config {
            api: api_addr.to_string(),
            default_app: args.mcp_app.clone(),
            toolsets: hangar_mcp::Toolset::parse_list(&args.mcp_toolsets)
                .map_err(anyhow::Error::msg)?,
        },
        std::sync::Arc::new(move |candidate: &str| check.matches(candidate)),
        shutdown.clone(),
    );
    let router = hangar_api::router(AppState {
        service: service.clone(),
        token,
        metrics: Some(metrics),
    })
    .merge(mcp);
    announce("api", api_addr);
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
    let _ = health.await;
    tracing::info!("stopped serving; machines keep running");
    Ok(())
}

/// The real network, or loopback only when it is off or the host cannot have it.
async fn private_network(
    args: &ServeArgs,
    data_dir: &Path,
    store: &dyn hangar_core::store::Store,
) -> Result<Arc<dyn hangar_core::network::Network>> {
    match args.private_network.as_str() {
        "off" => return Ok(Arc::new(hangar_core::network::NoNetwork)),
        "on" => {}
        other => anyhow::bail!("--private-network {other:?} is not known: use on or off"),
    }
    let ipv4_range = args
        .private_ipv4_range
        .as_deref()
        .map(|r| {
            r.parse::<ipnet::Ipv4Net>().with_context(|| {
                format!("--private-ipv4-range {r:?} is not a CIDR like 10.42.0.0/16")
            })
        })
        .transpose()?;
    let upstreams = args
        .dns_upstream
        .as_deref()
        .map(|list| {
            list.split(',')
                .map(|u| {
                    let u = u.trim();
                    u.parse::<SocketAddr>()
                        .or_else(|_| {
                            u.parse::<std::net::IpAddr>()
                                .map(|ip| SocketAddr::new(ip, 53))
                        })
                        .with_context(|| format!("--dns-upstream {u:?} is not an IP or IP:PORT"))
                })
                .collect::<Result<Vec<_>>>()
        })
        .transpose()?;
    let opts = hangar_net::NetOptions {
        data_dir: data_dir.to_path_buf(),
        ipv4_range,
        upstreams,
    };
    match hangar_net::HostNetwork::start(opts, store).await {
        Ok(net) => {
            tracing::info!(bridge = net.bridge(), "machines get a private network");
            Ok(net)
        }
        Err(err) => {
            tracing::warn!(error = %err, "machines get loopback only: the private network could not be set up");
            Ok(Arc::new(hangar_core::network::NoNetwork))
        }
    }
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
