//! Relaying one request: choose the machine (steering headers, replays, MCP
//! sessions, load), wake it if needed, dial its port through the driver, and stream
//! the request and response through untouched except for hop-by-hop and forwarding
//! headers. Upgrades (WebSocket) become a byte pipe once both sides agree.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::Proxy;
use crate::failure::ProxyError;
use crate::pool::{Key, Returning, Sender, keeps_alive};
use crate::route::{Candidate, InFlight, Target, parse_host};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type Body = BoxBody<Bytes, BoxError>;

/// Request bodies up to this size are kept so a `fly-replay` can send them again.
pub const MAX_REPLAY_BODY: u64 = 1024 * 1024;
const MAX_REPLAYS: usize = 3;
/// How long a machine has to send response headers.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Where steering says a request should go.
#[derive(Debug, Default, Clone)]
struct Steer {
    /// `fly-force-instance-id`: that machine or a 503.
    force: Option<String>,
    /// `fly-prefer-instance-id`, an MCP session, or `fly-replay: prefer_instance`.
    prefer: Option<String>,
    /// `fly-replay: elsewhere=true`: any machine but this one.
    avoid: Option<String>,
}

/// A `fly-replay` response header, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replay {
    pub instance: Option<String>,
    pub prefer_instance: Option<String>,
    pub elsewhere: bool,
    pub state: Option<String>,
}

/// `instance=ID;state=x`, `prefer_instance=ID`, `elsewhere=true` (`;` or `,`
/// separated). Unknown keys (region, app) are ignored: there is one region here.
pub fn parse_replay(value: &str) -> Replay {
    let mut r = Replay::default();
    for part in value.split([';', ',']) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"').to_string();
        match k.trim() {
            "instance" => r.instance = Some(v),
            "prefer_instance" => r.prefer_instance = Some(v),
            "elsewhere" => r.elsewhere = v == "true",
            "state" => r.state = Some(v),
            _ => {}
        }
    }
    r
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|t| t.trim().to_ascii_lowercase()))
        .filter(|t| !(keep_upgrade && t == "upgrade"))
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::UPGRADE);
    }
}

/// The request body, either kept (so it can be replayed) or streamed once.
enum ReqBody {
    Kept(Bytes),
    Stream(Option<Incoming>),
}

impl Proxy {
    pub(crate) async fn handle(
        self: &Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        https: bool,
    ) -> Response<Body> {
        let request_id = crate::tls::random_hex(16);
        let headers = req.headers().clone();
        match self.relay(req, peer, https, &request_id).await {
            Ok(resp) => resp,
            Err(err) => {
                tracing::info!(%request_id, code = err.code(), %err, "proxy request failed");
                err.response(&headers, &request_id)
            }
        }
    }

    async fn relay(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        https: bool,
        request_id: &str,
    ) -> Result<Response<Body>, ProxyError> {
        let host = header_str(req.headers(), "host")
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let target = parse_host(&host, &self.options.base_domain)
            .ok_or_else(|| ProxyError::UnknownHost(host.clone()))?;
        let public_port = if https { 443 } else { 80 };
        let upgrade = is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

        let (parts, incoming) = req.into_parts();
        let small = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
            .map(|n| n <= MAX_REPLAY_BODY)
            .unwrap_or(!parts.headers.contains_key(header::TRANSFER_ENCODING));
        let mut body = if small && !upgrade {
            let bytes = http_body_util::Limited::new(incoming, MAX_REPLAY_BODY as usize)
                .collect()
                .await
                .map_err(|e| ProxyError::Upstream {
                    machine: "-".into(),
                    why: format!("reading the request body: {e}"),
                })?
                .to_bytes();
            ReqBody::Kept(bytes)
        } else {
            ReqBody::Stream(Some(incoming))
        };

        let mut steer = Steer {
            force: target
                .machine
                .clone()
                .or_else(|| header_str(&parts.headers, "fly-force-instance-id")),
            prefer: header_str(&parts.headers, "fly-prefer-instance-id"),
            avoid: None,
        };
        let session = header_str(&parts.headers, "mcp-session-id");
        if let Some(session) = &session
            && steer.force.is_none()
            && let Some(id) = self.session_machine(&target.app, session).await
        {
            // A session lives in one machine's memory: follow it even if it sleeps.
            steer.force = Some(id);
        }
        let mut replay_src: Option<String> = None;

        for hop in 0..=MAX_REPLAYS {
            let candidate = self.choose(&target, &steer, public_port).await?;
            let id = candidate.id().to_string();
            let upstream = self.upstream(&candidate, upgrade).await?;

            let mut up = Request::builder()
                .method(parts.method.clone())
                .uri(parts.uri.path_and_query().map_or("/", |p| p.as_str()))
                .version(http::Version::HTTP_11)
                .body(match &mut body {
                    ReqBody::Kept(b) => full(b.clone()),
                    ReqBody::Stream(s) => match s.take() {
                        Some(s) => s.map_err(|e| Box::new(e) as BoxError).boxed(),
                        None => return Err(ProxyError::Replay("the request body was streamed to the first machine (over 1 MB or chunked) and cannot be sent again".into())),
                    },
                })
                .expect("request parts from a valid request");
            let h = up.headers_mut();
            *h = parts.headers.clone();
            strip_hop_by_hop(h, upgrade);
            if let Ok(v) = HeaderValue::from_str(&host) {
                h.insert(header::HOST, v);
            }
            let forwarded_for = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                Some(prev) => format!("{prev}, {}", peer.ip()),
                None => peer.ip().to_string(),
            };
            h.insert(
                "x-forwarded-for",
                HeaderValue::from_str(&forwarded_for).expect("ip is ascii"),
            );
            h.insert(
                "x-forwarded-proto",
                HeaderValue::from_static(if https { "https" } else { "http" }),
            );
            if let Ok(v) = HeaderValue::from_str(&host) {
                h.insert("x-forwarded-host", v);
            }
            h.insert(
                "x-request-id",
                HeaderValue::from_str(request_id).expect("hex"),
            );
            h.insert(
                "fly-request-id",
                HeaderValue::from_str(request_id).expect("hex"),
            );
            if let Some(src) = &replay_src
                && let Ok(v) = HeaderValue::from_str(src)
            {
                h.insert("fly-replay-src", v);
            }

            self.begin(&candidate.app, &id);
            let guard = InFlight {
                proxy: self.clone(),
                id: id.clone(),
            };
            let (mut resp, sender) = self.exchange(&candidate, upstream, up).await?;
            let reusable = !upgrade && keeps_alive(resp.version(), resp.headers());

            if let Some(value) = header_str(resp.headers(), "fly-replay")
                && hop < MAX_REPLAYS
            {
                let replay = parse_replay(&value);
                let mut src = format!("instance={id}");
                if let Some(state) = &replay.state {
                    src.push_str(&format!(";state={state}"));
                }
                replay_src = Some(src);
                steer = Steer::default();
                if let Some(i) = replay.instance {
                    steer.force = Some(i);
                } else if let Some(i) = replay.prefer_instance {
                    steer.prefer = Some(i);
                } else {
                    // `elsewhere=true`, or a replay we cannot place: another machine.
                    steer.avoid = Some(id.clone());
                }
                drop(guard);
                continue;
            }

            if let Some(s) = header_str(resp.headers(), "mcp-session-id") {
                self.remember_session(&target.app, &s, &id).await;
            }

            if resp.status() == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_upgrade) = client_upgrade
            {
                let upstream_upgrade = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    let _guard = guard;
                    if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(c),
                            &mut TokioIo::new(u),
                        )
                        .await;
                    }
                });
                let (mut rp, _) = resp.into_parts();
                rp.headers.insert(
                    "x-request-id",
                    HeaderValue::from_str(request_id).expect("hex"),
                );
                return Ok(Response::from_parts(rp, full(Bytes::new())));
            }

            let (mut rp, incoming) = resp.into_parts();
            strip_hop_by_hop(&mut rp.headers, false);
            rp.headers.insert(
                "x-request-id",
                HeaderValue::from_str(request_id).expect("hex"),
            );
            // The guard lives as long as the body stream: a long SSE stream counts
            // as load until it ends. The connection is reused once the body ended.
            let key = Key {
                machine: id,
                port: candidate.service.internal_port,
            };
            let home = reusable.then(|| (self.pool.clone(), key, sender));
            let body = Returning::new(incoming, home, Some(guard))
                .map_err(|e| Box::new(e) as BoxError)
                .boxed();
            return Ok(Response::from_parts(rp, body));
        }
        Err(ProxyError::Replay(format!(
            "more than {MAX_REPLAYS} replays in a row"
        )))
    }

    async fn choose(
        &self,
        target: &Target,
        steer: &Steer,
        public_port: u16,
    ) -> Result<Candidate, ProxyError> {
        let mut candidates = self.candidates(target, public_port).await?;
        if let Some(id) = &steer.force
            && !candidates.iter().any(|c| c.id() == id)
        {
            // The kept list may predate a machine created without starting.
            self.routes.forget_app(&target.app);
            candidates = self.candidates(target, public_port).await?;
        }
        if let Some(id) = &steer.force {
            let c = candidates
                .iter()
                .find(|c| c.id() == id)
                .ok_or_else(|| ProxyError::ForcedUnavailable(id.clone()))?;
            if c.started() {
                return Ok(c.clone());
            }
            if c.can_wake() {
                self.wake(c).await?;
                return Ok(c.clone());
            }
            return Err(ProxyError::ForcedUnavailable(id.clone()));
        }
        if let Some(id) = &steer.prefer
            && let Some(c) = candidates
                .iter()
                .find(|c| c.id() == id && c.started() && !c.failing())
        {
            return Ok(c.clone());
        }
        let pool: Vec<Candidate> = candidates
            .into_iter()
            .filter(|c| steer.avoid.as_deref() != Some(c.id()))
            .collect();
        if let Some(c) = self.pick(&pool)? {
            return Ok(c);
        }
        let Some(c) = pool.iter().find(|c| c.can_wake()) else {
            return Err(ProxyError::NoneStarted);
        };
        self.wake(c).await?;
        Ok(c.clone())
    }

    /// A connection to the candidate's port: an idle kept one when there is one (not
    /// for upgrades, which always get their own), else a new one. `true` with a kept
    /// connection.
    async fn upstream(&self, c: &Candidate, upgrade: bool) -> Result<(Sender, bool), ProxyError> {
        if !upgrade {
            let key = Key {
                machine: c.id().to_string(),
                port: c.service.internal_port,
            };
            // One still finishing an earlier exchange (a request body the machine
            // answered before reading) is left to finish and not waited for.
            while let Some(sender) = self.pool.take(&key) {
                if sender.is_ready() {
                    return Ok((sender, true));
                }
            }
        }
        Ok((self.dial(c, upgrade).await?, false))
    }

    /// A new HTTP/1.1 connection to the candidate's port, waiting for it to accept.
    async fn dial(&self, c: &Candidate, upgrade: bool) -> Result<Sender, ProxyError> {
        let stream = self.connect_ready(c).await?;
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ProxyError::Upstream {
                machine: c.id().to_string(),
                why: e.to_string(),
            })?;
        if upgrade {
            tokio::spawn(async move {
                let _ = conn.with_upgrades().await;
            });
        } else {
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        Ok(sender)
    }

    /// Sends `up` and waits for the response head. A kept connection that turns out
    /// closed before the request was written sends it once more on a new one.
    async fn exchange(
        &self,
        c: &Candidate,
        (mut sender, kept): (Sender, bool),
        up: Request<Body>,
    ) -> Result<(Response<Incoming>, Sender), ProxyError> {
        let id = c.id();
        let upstream_error = |e: hyper::Error| ProxyError::Upstream {
            machine: id.to_string(),
            why: e.to_string(),
        };
        let up = match tokio::time::timeout(UPSTREAM_TIMEOUT, sender.try_send_request(up)).await {
            Err(_) => return Err(ProxyError::UpstreamTimeout(id.to_string())),
            Ok(Ok(resp)) => return Ok((resp, sender)),
            Ok(Err(mut e)) => match e.take_message() {
                // Nothing was sent: the machine had closed it while it was idle.
                Some(up) if kept => up,
                _ => return Err(upstream_error(e.into_error())),
            },
        };
        let mut sender = self.dial(c, false).await?;
        match tokio::time::timeout(UPSTREAM_TIMEOUT, sender.send_request(up)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout(id.to_string())),
            Ok(Err(e)) => Err(upstream_error(e)),
            Ok(Ok(resp)) => Ok((resp, sender)),
        }
    }

    /// Dials the machine's port until it accepts, waiting on its state and retrying
    /// with a growing backoff until the start deadline.
    async fn connect_ready(&self, c: &Candidate) -> Result<tokio::net::TcpStream, ProxyError> {
        let id = hangar_core::MachineId::parse(c.id()).ok_or_else(|| ProxyError::StartFailed {
            machine: c.id().into(),
            why: "bad machine id".into(),
        })?;
        let port = c.service.internal_port;
        let deadline = Instant::now() + self.options.start_timeout;
        let mut changes = self.service.subscribe();
        let mut backoff = Duration::from_millis(2);
        loop {
            let why = match self.service.driver().connect(&id, port).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    return Ok(s);
                }
                Err(e) => e.to_string(),
            };
            let state = self
                .service
                .get_machine(&c.app, c.id())
                .await
                .map(|m| m.state)
                .unwrap_or_default();
            if matches!(state.as_str(), "stopped" | "failed" | "destroyed") {
                return Err(ProxyError::StartFailed {
                    machine: c.id().into(),
                    why: format!("it is {state}{}", self.last_logs(&id)),
                });
            }
            if Instant::now() >= deadline {
                return Err(ProxyError::NotListening {
                    machine: c.id().into(),
                    port,
                    why,
                    logs: self.last_logs(&id),
                });
            }
            // A state change (the machine started) retries at once; otherwise the
            // process may still be binding its port.
            tokio::select! {
                _ = changes.recv() => {}
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_millis(100));
        }
    }

    fn last_logs(&self, id: &hangar_core::MachineId) -> String {
        let path = self.service.driver().log_path(id);
        let Ok(text) = std::fs::read_to_string(path) else {
            return String::new();
        };
        let lines: Vec<String> = text
            .lines()
            .rev()
            .take(5)
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .collect();
        if lines.is_empty() {
            return String::new();
        }
        let lines: Vec<String> = lines.into_iter().rev().collect();
        format!("; last log lines: {}", lines.join(" | "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_headers_parse() {
        assert_eq!(
            parse_replay("instance=abc;state=xyz"),
            Replay {
                instance: Some("abc".into()),
                state: Some("xyz".into()),
                ..Default::default()
            }
        );
        assert!(parse_replay("elsewhere=true").elsewhere);
        assert_eq!(
            parse_replay("prefer_instance=m1")
                .prefer_instance
                .as_deref(),
            Some("m1")
        );
        assert_eq!(parse_replay("garbage"), Replay::default());
    }

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, false);
        assert!(
            h.get("x-secret").is_none() && h.get("te").is_none() && h.get("connection").is_none()
        );
        assert!(h.get("x-kept").is_some());
    }
}
