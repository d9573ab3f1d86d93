//! The plain HTTP listener's side of a connection, HTTP/1.1 spoken directly for the
//! requests nearly every client sends: a head, and a body of known length up to the
//! replay limit. Each request is read whole, relayed, and its response written
//! head and first bytes together; a response body is then passed on as the machine
//! sends it. While a response streams, the client's socket is watched so a client that
//! leaves ends the stream (and its machine connection) at once.
//!
//! A connection whose next request is anything else (an upgrade, a chunked or larger
//! body, the HTTP/2 preface) is handed to hyper from there on, with the bytes already
//! read put back in front. Waiting between requests, and while a stream is quiet, a
//! connection holds no buffer.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Body as HttpBody;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::Proxy;
use crate::forward::{Body, ClientBody, MAX_REPLAY_BODY, is_upgrade};

/// The most a request head may take.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Data frames up to this size are copied next to their chunk framing (one write).
const COPY_BELOW: usize = 16 * 1024;

/// A request read off the connection.
#[allow(clippy::large_enum_variant)] // matched once per request; a box would cost one
enum Next {
    Request {
        parts: http::request::Parts,
        body: Bytes,
        keep_alive: bool,
    },
    /// This request is hyper's to serve, and every one after it.
    Hyper,
    /// The client closed the connection between requests.
    Closed,
    /// The request cannot be read: answer this and close.
    Refuse(StatusCode, &'static str),
}

/// Serves one plain HTTP connection until either side closes it.
pub(crate) async fn connection(proxy: Arc<Proxy>, mut stream: TcpStream, peer: SocketAddr) {
    let mut buf = BytesMut::new();
    loop {
        let next = match next_request(&mut stream, &mut buf).await {
            Ok(next) => next,
            Err(_) => return,
        };
        let (parts, body, keep_alive) = match next {
            Next::Request {
                parts,
                body,
                keep_alive,
            } => (parts, body, keep_alive),
            Next::Closed => return,
            Next::Hyper => {
                let io = Rewind {
                    read: buf.freeze(),
                    io: stream,
                };
                // Boxed, like the relay below: a connection's task stays as small as
                // what a waiting stream needs.
                Box::pin(proxy.connection(TokioIo::new(io), peer, false)).await;
                return;
            }
            Next::Refuse(status, why) => {
                let answer = format!(
                    "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}\n",
                    status.as_str(),
                    status.canonical_reason().unwrap_or(""),
                    why.len() + 1
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                return;
            }
        };
        let head_method = parts.method == Method::HEAD;
        let version = parts.version;
        let response =
            Box::pin(proxy.handle(parts, ClientBody::Collected(body), None, peer, false)).await;
        match respond(
            &mut stream,
            &mut buf,
            response,
            head_method,
            version,
            keep_alive,
        )
        .await
        {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

/// Reads the next request head and its body.
async fn next_request(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<Next> {
    let (parts, head_len, keep_alive) = loop {
        if buf.starts_with(H2_PREFACE) {
            return Ok(Next::Hyper);
        }
        if !buf.is_empty() && !H2_PREFACE.starts_with(&buf[..]) {
            match parse_head(buf) {
                Ok(Some(parsed)) => break parsed,
                Ok(None) => {}
                Err((status, why)) => return Ok(Next::Refuse(status, why)),
            }
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Next::Refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request head is over 64 KiB",
            ));
        }
        if buf.is_empty() {
            // Between requests: wait without holding a buffer.
            stream.readable().await?;
        }
        buf.reserve(4096);
        // Read through the stream (not `try_read`): a short read marks the socket
        // drained, so the next wait costs no system call.
        match tokio::io::AsyncReadExt::read_buf(stream, buf).await? {
            0 if buf.is_empty() => return Ok(Next::Closed),
            0 => {
                return Ok(Next::Refuse(
                    StatusCode::BAD_REQUEST,
                    "the connection closed in the middle of a request head",
                ));
            }
            _ => {}
        }
    };

    let headers = &parts.headers;
    let length = match headers.get(header::CONTENT_LENGTH) {
        None => 0,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            Some(n) => n,
            None => {
                return Ok(Next::Refuse(
                    StatusCode::BAD_REQUEST,
                    "content-length is not a number",
                ));
            }
        },
    };
    if is_upgrade(headers)
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers.get_all(header::CONTENT_LENGTH).iter().count() > 1
        || length > MAX_REPLAY_BODY
    {
        return Ok(Next::Hyper);
    }
    let length = length as usize;
    buf.advance(head_len);
    let continues = headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if continues && length > buf.len() {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
    }
    while buf.len() < length {
        buf.reserve((length - buf.len()).min(64 * 1024));
        if tokio::io::AsyncReadExt::read_buf(stream, buf).await? == 0 {
            return Ok(Next::Closed);
        }
    }
    let body = buf.split_to(length).freeze();
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
    Ok(Next::Request {
        parts,
        body,
        keep_alive,
    })
}

/// A request head, its length, and whether the connection stays open after it.
type Parsed = (http::request::Parts, usize, bool);

/// A complete head at the start of `buf` (left there: the caller takes it once it
/// knows the request stays here), its length, and whether the client keeps the
/// connection open after it.
fn parse_head(buf: &[u8]) -> Result<Option<Parsed>, (StatusCode, &'static str)> {
    let bad = |why| (StatusCode::BAD_REQUEST, why);
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut slots);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err((
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request has more than 128 headers",
            ));
        }
        Err(_) => return Err(bad("the request is not HTTP/1.1")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| bad("the request method is not valid"))?;
    let uri: Uri = parsed
        .path
        .unwrap_or_default()
        .parse()
        .map_err(|_| bad("the request target is not a valid URI"))?;
    let version = crate::h1::version(parsed.version);
    let headers =
        crate::h1::header_map(parsed.headers).map_err(|_| bad("a header is not valid"))?;
    let keep_alive = crate::h1::keeps_alive(version, &headers);
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some((parts, len, keep_alive)))
}

/// Writes `response`; `Ok(true)` when the connection can take the next request.
async fn respond(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    response: http::Response<Body>,
    head_method: bool,
    version: Version,
    mut keep_alive: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let bodiless = head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if bodiless {
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        Framing::Length(n)
    } else if version == Version::HTTP_11 {
        Framing::Chunked
    } else {
        // An HTTP/1.0 client learns where the body ends when the connection closes.
        keep_alive = false;
        Framing::Close
    };

    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in &parts.headers {
        if !bodiless && (name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING) {
            continue;
        }
        dated |= name == header::DATE;
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    if !dated {
        head.extend_from_slice(b"date: ");
        head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => {
            head.extend_from_slice(b"content-length: ");
            head.extend_from_slice(n.to_string().as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Close => {}
    }
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        head.extend_from_slice(b"connection: keep-alive\r\n");
    }
    head.extend_from_slice(b"\r\n");

    if bodiless {
        drop(body);
        stream.write_all(&head).await?;
        return Ok(keep_alive);
    }

    // A small answer is usually all there already: it goes out with the head.
    match poll_now(&mut body) {
        None => stream.write_all(&head).await?,
        Some(None) => {
            if framing == Framing::Chunked {
                head.extend_from_slice(b"0\r\n\r\n");
            }
            stream.write_all(&head).await?;
            return Ok(keep_alive);
        }
        Some(Some(Err(_))) => return Ok(false),
        Some(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) if data.len() < COPY_BELOW => {
                frame_into(&mut head, framing, &data);
                stream.write_all(&head).await?;
            }
            Ok(data) => {
                stream.write_all(&head).await?;
                write_data(stream, framing, data).await?;
            }
            Err(_) => stream.write_all(&head).await?,
        },
    }

    let mut watching = buf.is_empty();
    loop {
        let frame = tokio::select! {
            biased;
            frame = body.frame() => frame,
            ready = stream.readable(), if watching => {
                ready?;
                buf.reserve(1024);
                match stream.try_read_buf(buf) {
                    // The client left: so does the stream.
                    Ok(0) => return Ok(false),
                    // A pipelined request: kept for after this answer.
                    Ok(_) => watching = false,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if buf.is_empty() {
                            *buf = BytesMut::new();
                        }
                    }
                    Err(e) => return Err(e),
                }
                continue;
            }
        };
        match frame {
            None => {
                if framing == Framing::Chunked {
                    stream.write_all(b"0\r\n\r\n").await?;
                }
                return Ok(keep_alive);
            }
            // The machine failed mid-body: the client can only tell by the close.
            Some(Err(_)) => return Ok(false),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    write_data(stream, framing, data).await?;
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients).
    Close,
}

/// Appends `data` to `out` as the body's framing wants it.
fn frame_into(out: &mut Vec<u8>, framing: Framing, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(data);
    }
}

/// The body's next frame if it is ready without waiting.
fn poll_now(
    body: &mut Body,
) -> Option<Option<Result<hyper::body::Frame<Bytes>, crate::forward::BoxError>>> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::new(body).poll_frame(&mut cx) {
        Poll::Ready(frame) => Some(frame),
        Poll::Pending => None,
    }
}

async fn write_data(stream: &mut TcpStream, framing: Framing, data: Bytes) -> io::Result<()> {
    if framing != Framing::Chunked {
        return stream.write_all(&data).await;
    }
    if data.len() < COPY_BELOW {
        let mut out = Vec::with_capacity(data.len() + 12);
        frame_into(&mut out, framing, &data);
        return stream.write_all(&out).await;
    }
    let size = Bytes::from(format!("{:x}\r\n", data.len()));
    let mut out = size.chain(data).chain(&b"\r\n"[..]);
    stream.write_all_buf(&mut out).await
}

/// A connection with bytes already read from it put back in front.
struct Rewind {
    read: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.read.is_empty() {
            let n = self.read.len().min(out.remaining());
            out.put_slice(&self.read[..n]);
            self.read.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, out)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
