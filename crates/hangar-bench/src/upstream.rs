//! `hangar-bench upstream PORT`: the HTTP/1.1 server the proxy benchmark runs inside
//! its machine. `GET /` answers [`BODY`] and keeps the connection open for the next
//! request; `GET /close` answers the same and closes, as busybox `httpd` does;
//! `GET /sse` answers one server-sent event and then holds the stream open until the
//! client leaves. Each connection costs one task and a 1 KiB buffer, so ten thousand
//! idle streams fit in a small machine.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const BODY: &str = "hello from a machine behind the hangar proxy\n";
pub const SSE_EVENT: &str = "data: hello\n\n";

pub fn main(port: &str) -> Result<()> {
    crate::raise_open_files_limit();
    let port: u16 = port.parse().context("upstream PORT")?;
    tokio::runtime::Runtime::new()?.block_on(async move {
        let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(a) => a,
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = serve(stream).await;
            });
        }
    })
}

async fn serve(mut stream: TcpStream) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        buf.drain(..end);
        // Bodies are not expected; skip one announced by Content-Length.
        let mut body = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        while body > 0 {
            if buf.is_empty() {
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let take = body.min(buf.len());
            buf.drain(..take);
            body -= take;
        }
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        match path {
            "/sse" => {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
                     Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{SSE_EVENT}\r\n",
                    SSE_EVENT.len()
                );
                stream.write_all(answer.as_bytes()).await?;
                // Never another event: wait for the client to go.
                while stream.read(&mut chunk).await? > 0 {}
                return Ok(());
            }
            "/close" => {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{BODY}",
                    BODY.len()
                );
                stream.write_all(answer.as_bytes()).await?;
                return stream.shutdown().await;
            }
            _ => {
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{BODY}",
                    BODY.len()
                );
                stream.write_all(answer.as_bytes()).await?;
            }
        }
    }
}
