//! Upstream connections kept between requests. Each request in flight has an HTTP/1.1
//! client connection to its machine's port to itself; when the response has been read
//! to its end the connection goes back here, and the next request to the same machine
//! port takes it instead of dialling into the machine's network again.
//!
//! A connection is not kept when it failed, when the machine answered
//! `connection: close` (or spoke HTTP/1.0), when it was upgraded, or when the client
//! went away before the response ended. Idle connections are bounded per port,
//! dropped after [`IDLE_TIMEOUT`], and dropped at once when their machine leaves
//! `started` (see `routes.rs`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;

use crate::forward::Body;
use crate::route::InFlight;

/// Idle connections kept per machine port; more are closed as they come back.
pub(crate) const MAX_IDLE_PER_PORT: usize = 256;
/// An idle connection older than this is closed rather than reused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) type Sender = SendRequest<Body>;

/// A machine's internal port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub machine: String,
    pub port: u16,
}

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<Key, Vec<(Sender, Instant)>>>,
}

impl Pool {
    /// The most recently returned open connection to `key`, if any.
    pub fn take(&self, key: &Key) -> Option<Sender> {
        let mut idle = self.idle.lock().expect("connection pool poisoned");
        let list = idle.get_mut(key)?;
        while let Some((sender, since)) = list.pop() {
            if !sender.is_closed() && since.elapsed() < IDLE_TIMEOUT {
                return Some(sender);
            }
        }
        None
    }

    /// Keeps `sender` for the next request to `key`, unless the pool for it is full.
    pub fn put(&self, key: Key, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("connection pool poisoned");
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_PORT {
            list.push((sender, Instant::now()));
        }
    }

    /// Closes every idle connection to `machine`.
    pub fn forget(&self, machine: &str) {
        self.idle
            .lock()
            .expect("connection pool poisoned")
            .retain(|k, _| k.machine != machine);
    }

    /// Closes idle connections past [`IDLE_TIMEOUT`] and ones their machine closed.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().expect("connection pool poisoned");
        for list in idle.values_mut() {
            list.retain(|(s, since)| !s.is_closed() && since.elapsed() < IDLE_TIMEOUT);
        }
        idle.retain(|_, list| !list.is_empty());
    }

    #[cfg(test)]
    pub fn idle(&self, key: &Key) -> usize {
        self.idle
            .lock()
            .expect("connection pool poisoned")
            .get(key)
            .map_or(0, Vec::len)
    }
}

/// Whether a response leaves its connection open for another request.
pub(crate) fn keeps_alive(version: http::Version, headers: &HeaderMap) -> bool {
    let tokens = || {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
    };
    match version {
        http::Version::HTTP_11 => !tokens().any(|t| t.eq_ignore_ascii_case("close")),
        http::Version::HTTP_10 => tokens().any(|t| t.eq_ignore_ascii_case("keep-alive")),
        _ => false,
    }
}

/// A response body streamed from a machine. Once it has been read to its end, its
/// connection goes back to the pool; dropped earlier, the connection is closed. It
/// also holds the request's share of the machine's load until it ends.
pub(crate) struct Returning {
    inner: Incoming,
    home: Option<(Arc<Pool>, Key, Sender)>,
    _load: Option<InFlight>,
}

impl Returning {
    /// `home` is where the connection goes back to, `None` when it must not.
    pub fn new(
        inner: Incoming,
        home: Option<(Arc<Pool>, Key, Sender)>,
        load: Option<InFlight>,
    ) -> Self {
        let mut body = Returning {
            inner,
            home,
            _load: load,
        };
        if body.inner.is_end_stream() {
            body.check_in();
        }
        body
    }

    fn check_in(&mut self) {
        if let Some((pool, key, sender)) = self.home.take() {
            pool.put(key, sender);
        }
    }
}

impl HttpBody for Returning {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.check_in(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.check_in(),
            Poll::Ready(Some(Err(_))) => this.home = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::BodyExt;
    use hyper_util::rt::TokioIo;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A keep-alive HTTP server on loopback that counts the connections it accepts.
    async fn server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"hi")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    async fn dial(addr: std::net::SocketAddr) -> Sender {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        sender
    }

    fn get() -> http::Request<Body> {
        http::Request::get("/")
            .header("host", "x")
            .body(crate::forward::full(Bytes::new()))
            .unwrap()
    }

    #[tokio::test]
    async fn a_connection_read_to_its_end_serves_the_next_request() {
        let (addr, accepted) = server().await;
        let pool = Arc::new(Pool::default());
        let key = Key {
            machine: "m1".into(),
            port: 8080,
        };
        for _ in 0..5 {
            let mut sender = match pool.take(&key) {
                Some(mut s) => {
                    s.ready().await.unwrap();
                    s
                }
                None => dial(addr).await,
            };
            let resp = sender.send_request(get()).await.unwrap();
            assert!(keeps_alive(resp.version(), resp.headers()));
            let body = Returning::new(
                resp.into_body(),
                Some((pool.clone(), key.clone(), sender)),
                None,
            );
            assert_eq!(body.collect().await.unwrap().to_bytes(), "hi");
            assert_eq!(pool.idle(&key), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);

        // A body dropped before its end takes its connection with it.
        let mut sender = pool.take(&key).unwrap();
        sender.ready().await.unwrap();
        let resp = sender.send_request(get()).await.unwrap();
        let (_, incoming) = resp.into_parts();
        drop(Returning::new(
            incoming,
            Some((pool.clone(), key.clone(), sender)),
            None,
        ));
        assert_eq!(pool.idle(&key), 0);

        pool.forget("m1");
        assert_eq!(pool.idle(&key), 0);
    }

    #[test]
    fn connection_close_and_http10_are_not_kept() {
        let mut h = HeaderMap::new();
        assert!(keeps_alive(http::Version::HTTP_11, &h));
        assert!(!keeps_alive(http::Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(keeps_alive(http::Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("foo, Close"));
        assert!(!keeps_alive(http::Version::HTTP_11, &h));
    }
}
