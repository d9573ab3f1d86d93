//! Relaying one request: choose the machine (steering headers, replays, MCP
//! sessions, load), wake it if needed, reach its port over a kept connection or one
//! the driver dials, and stream the request and response through untouched except
//! for hop-by-hop and forwarding headers (HTTP/1.1 to the machine, see `h1.rs`).
//! Upgrades (WebSocket) become a byte pipe once both sides agree.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::Proxy;
use crate::failure::ProxyError;
use crate::h1::{self, BodyFraming, Conn, Outgoing, RequestHead};
use crate::pool::Key;
use crate::route::{Candidate, InFlight, Target, parse_host};
use tokio::io::AsyncWriteExt;

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

pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
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

/// `Host` as the client sent it, `X-Forwarded-For/-Proto/-Host`, and the request id
/// (as `x-request-id` and Fly's `fly-request-id`).
fn forwarding_headers(
    h: &mut HeaderMap,
    host: &str,
    peer: SocketAddr,
    https: bool,
    request_id: &str,
) {
    if let Ok(v) = HeaderValue::from_str(host) {
        h.insert(header::HOST, v.clone());
        h.insert("x-forwarded-host", v);
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
    let id = HeaderValue::from_str(request_id).expect("hex");
    h.insert("x-request-id", id.clone());
    h.insert("fly-request-id", id);
}

/// The client's response: the machine's status and headers, the request id, `body`.
fn answer(head: h1::Head, body: Body, request_id: &str) -> Response<Body> {
    let mut out = Response::new(body);
    *out.status_mut() = head.status;
    *out.headers_mut() = head.headers;
    out.headers_mut().insert(
        "x-request-id",
        HeaderValue::from_str(request_id).expect("hex"),
    );
    out
}

/// The request body, either kept (so it can be replayed) or streamed once.
enum ReqBody {
    Kept(Bytes),
    Stream(Option<Incoming>),
}

/// A request body as a listener hands it over.
pub(crate) enum ClientBody {
    /// Read in full already.
    Collected(Bytes),
    /// Still arriving through hyper.
    Incoming(Incoming),
}

impl Proxy {
    /// A request hyper read (HTTPS, HTTP/2, and what the plain listener hands over).
    pub(crate) async fn handle_hyper(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        https: bool,
    ) -> Response<Body> {
        let upgrade = is_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
        let (parts, incoming) = req.into_parts();
        self.handle(parts, ClientBody::Incoming(incoming), upgrade, peer, https)
            .await
    }

    /// Relays a request, or answers why it could not be; `upgrade` is the client's
    /// side of a protocol switch it asked for.
    pub(crate) async fn handle(
        self: &Arc<Self>,
        parts: http::request::Parts,
        body: ClientBody,
        upgrade: Option<hyper::upgrade::OnUpgrade>,
        peer: SocketAddr,
        https: bool,
    ) -> Response<Body> {
        let request_id = crate::tls::request_id();
        let json = crate::failure::wants_json(&parts.headers);
        match self
            .relay(parts, body, upgrade, peer, https, &request_id)
            .await
        {
            Ok(resp) => resp,
            Err(err) => {
                tracing::info!(%request_id, code = err.code(), %err, "proxy request failed");
                err.response(json, &request_id)
            }
        }
    }

    async fn relay(
        self: &Arc<Self>,
        parts: http::request::Parts,
        client_body: ClientBody,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        peer: SocketAddr,
        https: bool,
        request_id: &str,
    ) -> Result<Response<Body>, ProxyError> {
        let host = header_str(&parts.headers, "host")
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let target = parse_host(&host, &self.options.base_domain)
            .ok_or_else(|| ProxyError::UnknownHost(host.clone()))?;
        let public_port = if https { 443 } else { 80 };
        let upgrade = client_upgrade.is_some();

        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let small = length
            .map(|n| n <= MAX_REPLAY_BODY)
            .unwrap_or(!parts.headers.contains_key(header::TRANSFER_ENCODING));
        let mut body = match client_body {
            // An upgrade request has no body; what follows it is the new protocol.
            _ if upgrade => ReqBody::Kept(Bytes::new()),
            ClientBody::Collected(bytes) => ReqBody::Kept(bytes),
            ClientBody::Incoming(incoming) if small => {
                let bytes = http_body_util::Limited::new(incoming, MAX_REPLAY_BODY as usize)
                    .collect()
                    .await
                    .map_err(|e| ProxyError::Upstream {
                        machine: "-".into(),
                        why: format!("reading the request body: {e}"),
                    })?
                    .to_bytes();
                ReqBody::Kept(bytes)
            }
            ClientBody::Incoming(incoming) => ReqBody::Stream(Some(incoming)),
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

        // The head every machine tried gets, encoded once.
        let framing = match (&body, length) {
            (ReqBody::Kept(b), None) if b.is_empty() => BodyFraming::None,
            (ReqBody::Kept(b), _) => BodyFraming::Length(b.len() as u64),
            (ReqBody::Stream(_), Some(n)) => BodyFraming::Length(n),
            (ReqBody::Stream(_), None) => BodyFraming::Chunked,
        };
        let mut headers = parts.headers;
        strip_hop_by_hop(&mut headers, upgrade);
        // The body's framing is the proxy's to say; a 100-continue was answered here.
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::EXPECT);
        forwarding_headers(&mut headers, &host, peer, https, request_id);
        let head = RequestHead::new(
            &parts.method,
            parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            &headers,
            framing,
        );
        let idempotent = matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
        );
        let mut replay_src: Option<String> = None;

        for hop in 0..=MAX_REPLAYS {
            let candidate = self.choose(&target, &steer, public_port).await?;
            let id = candidate.id().to_string();
            let outgoing = match &mut body {
                ReqBody::Kept(b) => Outgoing::Full(b.clone()),
                ReqBody::Stream(s) => match s.take() {
                    Some(s) => Outgoing::Stream(s),
                    None => {
                        return Err(ProxyError::Replay(
                            "the request body was streamed to the first machine (over 1 MB or chunked) and cannot be sent again".into(),
                        ));
                    }
                },
            };
            let extra: Vec<(&str, &str)> = replay_src
                .as_deref()
                .map(|src| ("fly-replay-src", src))
                .into_iter()
                .collect();

            self.begin(&candidate.app, &id);
            let guard = InFlight {
                proxy: self.clone(),
                id: id.clone(),
            };
            let (conn, mut resp) = self
                .exchange(&candidate, upgrade, idempotent, &head, &extra, outgoing)
                .await?;

            if let Some(value) = header_str(&resp.headers, "fly-replay")
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

            if let Some(s) = header_str(&resp.headers, "mcp-session-id") {
                self.remember_session(&target.app, &s, &id).await;
            }

            if resp.status == StatusCode::SWITCHING_PROTOCOLS
                && let Some(client_upgrade) = client_upgrade
            {
                tokio::spawn(async move {
                    let _guard = guard;
                    let (early, mut machine) = conn.into_upgraded();
                    let Ok(client) = client_upgrade.await else {
                        return;
                    };
                    let mut client = TokioIo::new(client);
                    if !early.is_empty() && client.write_all(&early).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut machine).await;
                });
                return Ok(answer(resp, full(Bytes::new()), request_id));
            }

            if resp.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(ProxyError::Upstream {
                    machine: id,
                    why: "it switched protocols without being asked to".into(),
                });
            }

            // The guard lives as long as the body stream: a long SSE stream counts
            // as load until it ends. The connection is reused once the body ended.
            let key = Key {
                machine: id,
                port: candidate.service().internal_port,
            };
            let body = h1::Response::new(conn, &resp, Some((self.pool.clone(), key)), Some(guard));
            strip_hop_by_hop(&mut resp.headers, false);
            let body = body.map_err(|e| Box::new(e) as BoxError).boxed();
            return Ok(answer(resp, body, request_id));
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
    /// for upgrades, which always get their own), else a new one.
    async fn upstream(&self, c: &Candidate, upgrade: bool) -> Result<Conn, ProxyError> {
        if !upgrade {
            let key = Key {
                machine: c.id().to_string(),
                port: c.service().internal_port,
            };
            if let Some(conn) = self.pool.take(&key) {
                return Ok(conn);
            }
        }
        Ok(Conn::new(self.connect_ready(c).await?))
    }

    /// Sends the request and waits for the response head. A kept connection that the
    /// machine closed as the request went out sends an idempotent request once more,
    /// on a new connection.
    async fn exchange(
        &self,
        c: &Candidate,
        upgrade: bool,
        idempotent: bool,
        head: &RequestHead,
        extra: &[(&str, &str)],
        body: Outgoing,
    ) -> Result<(Conn, h1::Head), ProxyError> {
        let id = c.id();
        let failed = |e: h1::Error| ProxyError::Upstream {
            machine: id.to_string(),
            why: e.to_string(),
        };
        let again = match &body {
            Outgoing::Full(b) if idempotent => Some(b.clone()),
            _ => None,
        };
        let mut conn = self.upstream(c, upgrade).await?;
        let sent = tokio::time::timeout(UPSTREAM_TIMEOUT, conn.send(head, extra, body)).await;
        let body = match sent {
            Err(_) => return Err(ProxyError::UpstreamTimeout(id.to_string())),
            Ok(Ok(resp)) => return Ok((conn, resp)),
            Ok(Err(h1::Error::ClosedEarly)) if conn.reused && again.is_some() => {
                again.expect("checked")
            }
            Ok(Err(e)) => return Err(failed(e)),
        };
        let mut conn = Conn::new(self.connect_ready(c).await?);
        match tokio::time::timeout(
            UPSTREAM_TIMEOUT,
            conn.send(head, extra, Outgoing::Full(body)),
        )
        .await
        {
            Err(_) => Err(ProxyError::UpstreamTimeout(id.to_string())),
            Ok(Err(e)) => Err(failed(e)),
            Ok(Ok(resp)) => Ok((conn, resp)),
        }
    }

    /// Dials the machine's port until it accepts, waiting on its state and retrying
    /// with a growing backoff until the start deadline.
    async fn connect_ready(&self, c: &Candidate) -> Result<tokio::net::TcpStream, ProxyError> {
        let id = hangar_core::MachineId::parse(c.id()).ok_or_else(|| ProxyError::StartFailed {
            machine: c.id().into(),
            why: "bad machine id".into(),
        })?;
        let port = c.service().internal_port;
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
