//! The edge proxy: accepts HTTP and HTTPS, finds the machine a request is for from its
//! `Host`, wakes that machine through the service layer if it sleeps, and relays the
//! request over a connection the runtime driver opens inside the machine's network.
//!
//! It owns routing, balancing, steering headers and TLS termination; machine state
//! changes only ever go through [`hangar_core::Service`].

mod failure;
mod forward;
mod front;
mod h1;
mod pool;
mod route;
mod routes;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hangar_core::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use failure::ProxyError;
pub use route::{Target, parse_host};

/// What the daemon configures once.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// Apps are served at `<app>.<base_domain>`.
    pub base_domain: String,
    /// How long a request waits for a woken machine's port to accept.
    pub start_timeout: Duration,
    /// A machine whose service has `autostop` is stopped after this long without a
    /// request in flight.
    pub idle_timeout: Duration,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        ProxyOptions {
            base_domain: "hangar.localhost".into(),
            start_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Requests in flight and the last time each machine served one.
#[derive(Default)]
pub(crate) struct Load {
    pub app: String,
    pub in_flight: usize,
    pub last_active: Option<Instant>,
}

pub struct Proxy {
    pub(crate) service: Arc<Service>,
    pub(crate) options: ProxyOptions,
    pub(crate) load: Mutex<HashMap<String, Load>>,
    /// Next hop for requests without any steering, so equal loads rotate.
    pub(crate) turn: std::sync::atomic::AtomicUsize,
    /// `Mcp-Session-Id` → the machine that created the session, per app: a cache of
    /// what the store keeps. Entries of destroyed machines only lead to a 503.
    sessions: Mutex<HashMap<(String, String), String>>,
    /// Idle upstream connections, per machine port.
    pub(crate) pool: Arc<pool::Pool>,
    /// Each app's machines, kept between requests.
    pub(crate) routes: routes::Routes,
}

impl Proxy {
    pub fn new(service: Arc<Service>, options: ProxyOptions) -> Arc<Self> {
        let routes = routes::Routes::new(service.subscribe());
        let proxy = Arc::new(Proxy {
            service,
            options,
            load: Mutex::new(HashMap::new()),
            turn: Default::default(),
            sessions: Mutex::new(HashMap::new()),
            pool: Default::default(),
            routes,
        });
        routes::spawn_watcher(&proxy);
        proxy
    }

    /// The machine holding MCP session `session`, from the cache or else the store
    /// (which keeps sessions across daemon restarts).
    pub(crate) async fn session_machine(&self, app: &str, session: &str) -> Option<String> {
        let key = (app.to_string(), session.to_string());
        if let Some(id) = self
            .sessions
            .lock()
            .expect("session table poisoned")
            .get(&key)
        {
            return Some(id.clone());
        }
        match self.service.mcp_session_machine(app, session).await {
            Ok(Some(id)) => {
                let id = id.as_str().to_string();
                self.sessions
                    .lock()
                    .expect("session table poisoned")
                    .insert(key, id.clone());
                Some(id)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(%app, %err, "could not look up an MCP session");
                None
            }
        }
    }

    pub(crate) async fn remember_session(&self, app: &str, session: &str, machine: &str) {
        let key = (app.to_string(), session.to_string());
        {
            let sessions = self.sessions.lock().expect("session table poisoned");
            if sessions.get(&key).map(String::as_str) == Some(machine) {
                return;
            }
        }
        let Some(id) = hangar_core::MachineId::parse(machine) else {
            return;
        };
        // Persist first: the cache must never claim what a restart would forget.
        if let Err(err) = self.service.remember_mcp_session(app, session, &id).await {
            tracing::warn!(%app, machine, %err, "could not record an MCP session");
            return;
        }
        self.sessions
            .lock()
            .expect("session table poisoned")
            .insert(key, machine.to_string());
    }

    /// Serves plain HTTP on `listener` until `shutdown`; requests are routed to
    /// services that publish port 80.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        self.serve(listener, None, shutdown).await
    }

    /// Serves HTTPS (HTTP/2 or HTTP/1.1 by ALPN) on `listener`; requests are routed
    /// to services that publish port 443.
    pub async fn serve_https(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: CancellationToken,
    ) {
        self.serve(
            listener,
            Some(tokio_rustls::TlsAcceptor::from(tls)),
            shutdown,
        )
        .await
    }

    async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<tokio_rustls::TlsAcceptor>,
        shutdown: CancellationToken,
    ) {
        loop {
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(err) => {
                        // Out of file descriptors, most likely: give connections
                        // time to close instead of spinning on the same error.
                        tracing::warn!(%err, "proxy accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => front::connection(proxy, stream, peer).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(stream) => proxy.connection(TokioIo::new(stream), peer, true).await,
                        Err(err) => tracing::debug!(%peer, %err, "TLS handshake failed"),
                    },
                }
            });
        }
    }

    /// Serves a connection with hyper: HTTP/1.1 or HTTP/2, upgrades included.
    pub(crate) async fn connection<I>(self: Arc<Self>, io: I, peer: SocketAddr, https: bool)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let proxy = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, std::convert::Infallible>(proxy.handle_hyper(req, peer, https).await) }
        });
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        if let Err(err) = builder.serve_connection_with_upgrades(io, service).await {
            tracing::debug!(%peer, %err, "proxy connection ended");
        }
    }

    /// Stops idle machines whose service asks for it, until `shutdown`.
    pub async fn autostop_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let period = (self.options.idle_timeout / 4).max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            if let Err(err) = route::autostop_idle(&self).await {
                tracing::warn!(%err, "autostop sweep failed");
            }
        }
    }
}
