//! Upstream connections kept between requests. Each request in flight has an HTTP/1.1
//! connection to its machine's port to itself; when the response has been read to its
//! end the connection comes back here, and the next request to the same machine port
//! takes it instead of dialling into the machine's network again.
//!
//! A connection is not kept when it failed, when the machine answered
//! `connection: close` (or spoke HTTP/1.0 without keep-alive, or ended the body by
//! closing), when it was upgraded, or when the client went away before the response
//! ended. Idle connections are bounded per port, dropped after [`IDLE_TIMEOUT`] or
//! once the machine closes them, and dropped at once when their machine leaves
//! `started` (see `routes.rs`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::h1::Conn;

/// Idle connections kept per machine port; more are closed as they come back.
pub(crate) const MAX_IDLE_PER_PORT: usize = 256;
/// An idle connection older than this is closed rather than reused.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A machine's internal port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub machine: String,
    pub port: u16,
}

#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<Key, Vec<(Conn, Instant)>>>,
}

impl Pool {
    /// The most recently returned connection to `key` that is still open, if any.
    pub fn take(&self, key: &Key) -> Option<Conn> {
        let mut idle = self.idle.lock().expect("connection pool poisoned");
        let list = idle.get_mut(key)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && conn.is_idle_open() {
                return Some(conn);
            }
        }
        None
    }

    /// Keeps `conn` for the next request to `key`, unless the pool for it is full.
    pub fn put(&self, key: Key, conn: Conn) {
        let mut idle = self.idle.lock().expect("connection pool poisoned");
        let list = idle.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_PORT {
            list.push((conn, Instant::now()));
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
            list.retain(|(c, since)| since.elapsed() < IDLE_TIMEOUT && c.is_idle_open());
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_connection_the_machine_closed_is_not_handed_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pool = Pool::default();
        let key = Key {
            machine: "m1".into(),
            port: 8080,
        };
        let open = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (_held, _) = listener.accept().await.unwrap();
        pool.put(key.clone(), Conn::new(open));
        assert!(
            pool.take(&key).is_some(),
            "an open idle connection is reused"
        );

        let closing = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (server_side, _) = listener.accept().await.unwrap();
        drop(server_side);
        // Wait until the close has reached this side before asking the pool.
        let mut probe = [0u8; 1];
        assert_eq!(closing.peek(&mut probe).await.unwrap(), 0);
        pool.put(key.clone(), Conn::new(closing));
        assert!(pool.take(&key).is_none(), "a closed connection is dropped");

        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        pool.put(key.clone(), Conn::new(idle));
        pool.forget("m1");
        assert_eq!(pool.idle(&key), 0);
        let mut rest = Vec::new();
        assert_eq!(
            server_side.read_to_end(&mut rest).await.unwrap(),
            0,
            "forget closes it"
        );
    }
}
