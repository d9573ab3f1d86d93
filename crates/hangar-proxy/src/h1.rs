//! HTTP/1.1 to a machine's port, spoken on the connection directly by the task that
//! relays the request: the request head is written in one go, the response head is
//! parsed in place, and the response body is read from the socket only when the
//! client side asks for more. There is no connection task and no channel between the
//! two sides, and a stream that is waiting (an idle server-sent event stream) holds no
//! buffer: one is taken when the socket turns readable and given back once its bytes
//! are passed on.
//!
//! Framing follows RFC 9112: no body for `HEAD`, 1xx, 204 and 304; chunked when the
//! last transfer coding is `chunked`; `Content-Length`; otherwise until the machine
//! closes (and then the connection is not kept). Trailers are read and dropped.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::pool::{Key, Pool};
use crate::route::InFlight;

/// The most a response head may take.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers a response may carry.
const MAX_HEADERS: usize = 128;
/// What one read asks for.
const READ_CHUNK: usize = 16 * 1024;
/// A chunk-size line (with extensions) or trailer line longer than this is refused.
const MAX_LINE: usize = 8 * 1024;
/// Request bodies up to this size go out in the same write as the head.
const COALESCE: usize = 16 * 1024;

/// A connection to a machine's port.
pub(crate) struct Conn {
    io: TcpStream,
    /// Bytes read and not yet used: the start of a response, or a body's next part.
    buf: BytesMut,
    /// It served a request before: the machine may have closed it while it was idle.
    pub reused: bool,
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The machine closed (or reset) the connection before sending a byte of the
    /// response: on a reused connection, the request may not have been seen at all.
    #[error("the machine closed the connection before answering")]
    ClosedEarly,
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("the machine's response is not HTTP/1.1: {0}")]
    Malformed(String),
    #[error("reading the request body: {0}")]
    RequestBody(String),
}

/// How a message's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// Until the machine closes the connection.
    UntilClose,
    Done,
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk's data, with this many bytes left.
    Data(u64),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// A request body to send.
pub(crate) enum Outgoing {
    /// Known in full (kept so a replay can send it again).
    Full(Bytes),
    /// Read from the client as it is sent, framed as the head says.
    Stream(Incoming),
}

/// How a request's body is framed on the way to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// No body, and no framing header.
    None,
    Length(u64),
    Chunked,
}

/// The head of a request, encoded once and sent to each machine tried.
pub(crate) struct RequestHead {
    bytes: Vec<u8>,
    framing: BodyFraming,
    /// Sent to a machine as `HEAD`: its response has no body whatever it says.
    pub head_method: bool,
}

impl RequestHead {
    /// `headers` must be free of hop-by-hop and framing headers already.
    pub fn new(method: &Method, target: &str, headers: &HeaderMap, framing: BodyFraming) -> Self {
        let mut bytes = Vec::with_capacity(128 + headers.len() * 48);
        bytes.extend_from_slice(method.as_str().as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(target.as_bytes());
        bytes.extend_from_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            bytes.extend_from_slice(name.as_str().as_bytes());
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value.as_bytes());
            bytes.extend_from_slice(b"\r\n");
        }
        match framing {
            BodyFraming::None => {}
            BodyFraming::Length(n) => {
                bytes.extend_from_slice(b"content-length: ");
                bytes.extend_from_slice(n.to_string().as_bytes());
                bytes.extend_from_slice(b"\r\n");
            }
            BodyFraming::Chunked => bytes.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        RequestHead {
            bytes,
            framing,
            head_method: method == Method::HEAD,
        }
    }

    /// The head with `extra` header lines (they vary between the machines tried),
    /// ended.
    fn finish(&self, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + 64);
        out.extend_from_slice(&self.bytes);
        for (name, value) in extra {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A response head, and how its body is framed.
pub(crate) struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    framing: Framing,
    /// The connection can carry another request once the body has been read.
    pub keep_alive: bool,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Conn {
            io,
            buf: BytesMut::new(),
            reused: false,
        }
    }

    /// Sends a request and reads the response head; 1xx answers other than 101 are
    /// skipped. A request body streamed from the client is sent before the response
    /// is read, and if the machine answers (and closes) before taking all of it, its
    /// answer still comes back.
    pub async fn send(
        &mut self,
        head: &RequestHead,
        extra: &[(&str, &str)],
        body: Outgoing,
    ) -> Result<Head, Error> {
        let mut out = head.finish(extra);
        let sent = match body {
            Outgoing::Full(b) if b.len() <= COALESCE => {
                out.extend_from_slice(&b);
                self.io.write_all(&out).await
            }
            Outgoing::Full(b) => match self.io.write_all(&out).await {
                Ok(()) => self.io.write_all(&b).await,
                Err(e) => Err(e),
            },
            Outgoing::Stream(incoming) => match self.io.write_all(&out).await {
                Ok(()) => {
                    let chunked = head.framing == BodyFraming::Chunked;
                    self.stream_body(incoming, chunked).await?
                }
                Err(e) => Err(e),
            },
        };
        match (sent, self.read_head(head.head_method).await) {
            (_, Ok(h)) => Ok(h),
            (Err(e), Err(Error::ClosedEarly)) if !self.reused => Err(Error::Io(e)),
            (_, Err(e)) => Err(e),
        }
    }

    /// Copies the client's body frames to the machine; the outer error is the
    /// client's, the inner one the machine's.
    async fn stream_body(
        &mut self,
        mut incoming: Incoming,
        chunked: bool,
    ) -> Result<io::Result<()>, Error> {
        use http_body_util::BodyExt;
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| Error::RequestBody(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let written = if chunked {
                let mut framed = Vec::with_capacity(data.len() + 16);
                framed.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                framed.extend_from_slice(&data);
                framed.extend_from_slice(b"\r\n");
                self.io.write_all(&framed).await
            } else {
                self.io.write_all(&data).await
            };
            if let Err(e) = written {
                return Ok(Err(e));
            }
        }
        if chunked {
            return Ok(self.io.write_all(b"0\r\n\r\n").await);
        }
        Ok(Ok(()))
    }

    async fn read_head(&mut self, head_method: bool) -> Result<Head, Error> {
        let mut got_any = false;
        loop {
            if !self.buf.is_empty() {
                got_any = true;
                if let Some(head) = self.parse_head(head_method)? {
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        continue;
                    }
                    return Ok(head);
                }
                if self.buf.len() >= MAX_HEAD {
                    return Err(Error::Malformed(format!(
                        "its head is over {} KiB",
                        MAX_HEAD / 1024
                    )));
                }
            }
            self.buf.reserve(4096);
            let n = match tokio::io::AsyncReadExt::read_buf(&mut self.io, &mut self.buf).await {
                Ok(n) => n,
                Err(e) if !got_any && is_reset(&e) => return Err(Error::ClosedEarly),
                Err(e) => return Err(e.into()),
            };
            if n == 0 {
                return Err(if got_any {
                    Error::Malformed("it closed in the middle of its head".into())
                } else {
                    Error::ClosedEarly
                });
            }
        }
    }

    /// A complete head at the start of the buffer, taken out of it.
    fn parse_head(&mut self, head_method: bool) -> Result<Option<Head>, Error> {
        let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut slots);
        let len = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::Malformed(e.to_string())),
        };
        let status = parsed
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or_else(|| Error::Malformed("its status code is not valid".into()))?;
        let version = version(parsed.version);
        let headers = header_map(parsed.headers)
            .map_err(|name| Error::Malformed(format!("header {name:?} is not valid")))?;
        self.buf.advance(len);
        let framing = body_framing(status, head_method, &headers)?;
        // A HEAD answer has no body whatever it says; a server that would have ended
        // the body of a GET by closing may still send one, or close: not kept.
        let delimited =
            !head_method || body_framing(status, false, &headers)? != Framing::UntilClose;
        let keep_alive = framing != Framing::UntilClose
            && delimited
            && status != StatusCode::SWITCHING_PROTOCOLS
            && keeps_alive(version, &headers);
        Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
        }))
    }

    /// The connection after a 101: the bytes already read past the head, and the
    /// socket.
    pub fn into_upgraded(self) -> (Bytes, TcpStream) {
        (self.buf.freeze(), self.io)
    }

    /// Whether an idle connection is still open with nothing unread: the machine has
    /// not closed it, and sent nothing while it was idle (which only a close, an
    /// error or a server that misframed its last answer could be). Asks the socket
    /// itself, not what the reactor last saw, so bytes that just arrived count.
    pub fn is_idle_open(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut one = 0u8;
        // SAFETY: a one-byte peek into a valid buffer on a socket this owns.
        let n = unsafe {
            libc::recv(
                self.io.as_raw_fd(),
                (&raw mut one).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Reads more of the response into the buffer once the socket is readable;
    /// `Ok(0)` when the machine has closed it.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        ready!(self.io.poll_read_ready(cx))?;
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_CHUNK);
        }
        // A read through the stream (not `try_read`) lets tokio mark a socket it
        // drained as not ready, sparing the next wait a system call.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }

    /// Up to `max` buffered bytes, handed out without copying. An emptied buffer
    /// lets go of its memory so a waiting stream holds none.
    fn take(&mut self, max: usize) -> Bytes {
        let n = self.buf.len().min(max);
        let data = self.buf.split_to(n).freeze();
        if self.buf.is_empty() {
            self.buf = BytesMut::new();
        }
        data
    }

    /// One CRLF-ended line at the start of the buffer, without its CRLF, taken out.
    fn line(&mut self) -> Result<Option<BytesMut>, Error> {
        match self.buf.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                let line = self.buf.split_to(i);
                self.buf.advance(2);
                Ok(Some(line))
            }
            None if self.buf.len() > MAX_LINE => Err(Error::Malformed(
                "a chunked body has a line over 8 KiB".into(),
            )),
            None => Ok(None),
        }
    }
}

/// The HTTP version httparse read (`0` for HTTP/1.0, `1` for HTTP/1.1).
pub(crate) fn version(minor: Option<u8>) -> Version {
    match minor {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    }
}

/// The headers httparse read, as a map; the name of the first one that is not a valid
/// header.
pub(crate) fn header_map(parsed: &[httparse::Header<'_>]) -> Result<HeaderMap, String> {
    let mut headers = HeaderMap::with_capacity(parsed.len());
    for h in parsed {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| h.name.to_string())?;
        let value = HeaderValue::from_bytes(h.value).map_err(|_| h.name.to_string())?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

fn body_framing(
    status: StatusCode,
    head_method: bool,
    headers: &HeaderMap,
) -> Result<Framing, Error> {
    if head_method
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Done);
    }
    if let Some(last) = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .rfind(|t| !t.is_empty())
    {
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for part in value.to_str().unwrap_or("x").split(',') {
            let n: u64 = part
                .trim()
                .parse()
                .map_err(|_| Error::Malformed(format!("content-length {value:?}")))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed(
                    "two different content-length values".into(),
                ));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Done,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Whether a response leaves its connection open for another request.
pub(crate) fn keeps_alive(version: Version, headers: &HeaderMap) -> bool {
    let tokens = || {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
    };
    match version {
        Version::HTTP_11 => !tokens().any(|t| t.eq_ignore_ascii_case("close")),
        Version::HTTP_10 => tokens().any(|t| t.eq_ignore_ascii_case("keep-alive")),
        _ => false,
    }
}

/// A response body read from a machine as the client takes it. Read to its end, a
/// keep-alive connection goes back to the pool; dropped before, it is closed. It also
/// holds the request's share of the machine's load until it ends.
pub(crate) struct Response {
    conn: Option<Conn>,
    framing: Framing,
    home: Option<(Arc<Pool>, Key)>,
    _load: Option<InFlight>,
}

impl Response {
    /// `home` is the pool to return the connection to when the head allows it.
    pub fn new(
        conn: Conn,
        head: &Head,
        home: Option<(Arc<Pool>, Key)>,
        load: Option<InFlight>,
    ) -> Self {
        let mut body = Response {
            conn: Some(conn),
            framing: head.framing,
            home: if head.keep_alive { home } else { None },
            _load: load,
        };
        if body.framing == Framing::Done {
            body.finish();
        }
        body
    }

    /// The body has ended: the connection goes home if it may, else it closes.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        let conn = self.conn.take();
        if let (Some((pool, key)), Some(mut conn)) = (self.home.take(), conn)
            && conn.buf.is_empty()
        {
            conn.reused = true;
            pool.put(key, conn);
        }
    }

    /// The body cannot go on: the connection closes and the client's stream ends with
    /// `err`.
    fn fail(&mut self, err: Error) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        self.home = None;
        self.conn = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(err)))
    }
}

impl HttpBody for Response {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.framing {
                Framing::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let data = conn.take(usize::try_from(left).unwrap_or(usize::MAX));
                    let left = left - data.len() as u64;
                    this.framing = Framing::Length(left);
                    if left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::UntilClose if !conn.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(conn.take(usize::MAX)))));
                }
                Framing::Chunked(state) => match chunk(conn, state) {
                    Err(e) => return this.fail(e),
                    Ok((next, data)) => {
                        this.framing = next;
                        if let Some(data) = data {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                        if next != Framing::Chunked(state) {
                            continue;
                        }
                    }
                },
                _ => {}
            }
            // The buffer holds nothing more to pass on: read from the machine.
            let conn = this.conn.as_mut().expect("checked above");
            match ready!(conn.poll_fill(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.home = None;
                    this.conn = None;
                    this.framing = Framing::Done;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this.fail(Error::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the machine closed the connection before the body ended",
                    )));
                }
                Ok(_) => {}
                Err(e) => return this.fail(Error::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Decodes what the buffer holds of a chunked body from `state`: the next state, and
/// data to pass on if any. The state is unchanged when more bytes are needed.
fn chunk(conn: &mut Conn, state: Chunk) -> Result<(Framing, Option<Bytes>), Error> {
    let same = Framing::Chunked(state);
    match state {
        Chunk::Size => {
            let Some(line) = conn.line()? else {
                return Ok((same, None));
            };
            let size = line[..].split(|b| *b == b';').next().unwrap_or_default();
            let size = std::str::from_utf8(size)
                .ok()
                .map(str::trim)
                .and_then(|s| u64::from_str_radix(s, 16).ok())
                .ok_or_else(|| Error::Malformed("a chunk size is not hexadecimal".into()))?;
            Ok((
                Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                }),
                None,
            ))
        }
        Chunk::Data(left) => {
            if conn.buf.is_empty() {
                return Ok((same, None));
            }
            let data = conn.take(usize::try_from(left).unwrap_or(usize::MAX));
            let left = left - data.len() as u64;
            let next = if left == 0 {
                Chunk::DataEnd
            } else {
                Chunk::Data(left)
            };
            Ok((Framing::Chunked(next), Some(data)))
        }
        Chunk::DataEnd => {
            if conn.buf.len() < 2 {
                return Ok((same, None));
            }
            if &conn.buf[..2] != b"\r\n" {
                return Err(Error::Malformed("a chunk does not end with CRLF".into()));
            }
            conn.buf.advance(2);
            Ok((Framing::Chunked(Chunk::Size), None))
        }
        Chunk::Trailers => {
            while let Some(line) = conn.line()? {
                if line.is_empty() {
                    return Ok((Framing::Done, None));
                }
            }
            Ok((same, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    /// A machine stand-in that reads one request head, writes its answer in the given
    /// pieces and closes its side.
    async fn machine(pieces: Vec<&'static [u8]>) -> Conn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                if s.read(&mut b).await.unwrap() == 0 {
                    return;
                }
                head.push(b[0]);
            }
            for p in pieces {
                s.write_all(p).await.unwrap();
                s.flush().await.unwrap();
                tokio::task::yield_now().await;
            }
            // Done sending: the client sees the end of the stream after the answer.
            let _ = s.shutdown().await;
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest).await;
        });
        Conn::new(TcpStream::connect(addr).await.unwrap())
    }

    fn get() -> RequestHead {
        RequestHead::new(&Method::GET, "/", &HeaderMap::new(), BodyFraming::None)
    }

    async fn exchange(pieces: Vec<&'static [u8]>) -> (Head, Result<Bytes, Error>, Arc<Pool>) {
        let mut conn = machine(pieces).await;
        let head = conn
            .send(&get(), &[("host", "x")], Outgoing::Full(Bytes::new()))
            .await
            .unwrap();
        let pool = Arc::new(Pool::default());
        let key = Key {
            machine: "m".into(),
            port: 1,
        };
        let body = Response::new(conn, &head, Some((pool.clone(), key)), None);
        let bytes = body.collect().await.map(|c| c.to_bytes());
        (head, bytes, pool)
    }

    fn key() -> Key {
        Key {
            machine: "m".into(),
            port: 1,
        }
    }

    #[tokio::test]
    async fn bodies_end_where_their_framing_says() {
        let (head, body, pool) = exchange(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel",
            b"lo",
        ])
        .await;
        assert_eq!(head.status, 200);
        assert_eq!(body.unwrap(), "hello");
        assert_eq!(pool.idle(&key()), 1, "a keep-alive connection goes home");

        let (_, body, pool) = exchange(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhel",
            b"lo\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n",
        ])
        .await;
        assert_eq!(body.unwrap(), "hello world");
        assert_eq!(pool.idle(&key()), 1);

        let (_, body, pool) = exchange(vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        assert_eq!(body.unwrap(), "");
        assert_eq!(pool.idle(&key()), 1);

        let (head, _, pool) = exchange(vec![
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        ])
        .await;
        assert!(!head.keep_alive);
        assert_eq!(pool.idle(&key()), 0, "connection: close is not kept");
    }

    #[tokio::test]
    async fn broken_responses_are_errors_not_bodies() {
        let (_, body, pool) = exchange(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ])
        .await;
        assert!(body.is_err());
        assert_eq!(pool.idle(&key()), 0);

        let mut conn = machine(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        ])
        .await;
        let err = conn
            .send(&get(), &[], Outgoing::Full(Bytes::new()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::Malformed(_)), "{err}");

        let mut conn = machine(vec![]).await;
        let err = conn
            .send(&get(), &[], Outgoing::Full(Bytes::new()))
            .await
            .err()
            .unwrap();
        assert!(matches!(err, Error::ClosedEarly), "{err}");
    }

    #[tokio::test]
    async fn a_response_until_close_is_read_to_the_end_and_not_kept() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await.unwrap();
            s.write_all(b"HTTP/1.0 200 OK\r\n\r\nall of it")
                .await
                .unwrap();
        });
        let mut conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let head = conn
            .send(&get(), &[], Outgoing::Full(Bytes::new()))
            .await
            .unwrap();
        let pool = Arc::new(Pool::default());
        let body = Response::new(conn, &head, Some((pool.clone(), key())), None);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "all of it");
        assert_eq!(pool.idle(&key()), 0);
    }

    #[tokio::test]
    async fn a_head_answer_is_kept_only_from_a_server_that_frames_its_bodies() {
        let head = RequestHead::new(&Method::HEAD, "/", &HeaderMap::new(), BodyFraming::None);
        for (answer, kept) in [
            (
                &b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"[..],
                false,
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                true,
            ),
        ] {
            let mut conn = machine(vec![answer]).await;
            let resp = conn
                .send(&head, &[], Outgoing::Full(Bytes::new()))
                .await
                .unwrap();
            assert_eq!(resp.keep_alive, kept, "{}", String::from_utf8_lossy(answer));
        }
    }

    #[test]
    fn request_heads_carry_framing_and_extra_headers() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("web"));
        let head = RequestHead::new(&Method::POST, "/a?b=1", &h, BodyFraming::Length(3));
        assert_eq!(
            head.finish(&[("fly-replay-src", "instance=m1")]),
            b"POST /a?b=1 HTTP/1.1\r\nhost: web\r\ncontent-length: 3\r\nfly-replay-src: instance=m1\r\n\r\n"
        );
        let head = RequestHead::new(&Method::PUT, "/", &HeaderMap::new(), BodyFraming::Chunked);
        assert!(
            String::from_utf8(head.finish(&[]))
                .unwrap()
                .contains("transfer-encoding: chunked")
        );
    }

    #[test]
    fn connection_close_and_http10_are_not_kept() {
        let mut h = HeaderMap::new();
        assert!(keeps_alive(Version::HTTP_11, &h));
        assert!(!keeps_alive(Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        assert!(keeps_alive(Version::HTTP_10, &h));
        h.insert(header::CONNECTION, HeaderValue::from_static("foo, Close"));
        assert!(!keeps_alive(Version::HTTP_11, &h));
    }
}
