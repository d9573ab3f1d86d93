//! `connect`: a TCP connection into a machine's own network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, so a
//! short-lived thread enters the machine's namespace (`setns`), creates a non-blocking
//! socket and exits; the daemon's own threads never change namespace. The connect
//! itself then runs on tokio. The namespace file of each machine is opened once and
//! kept, keyed by init's pid so a restarted sandbox is never reached through a
//! stale namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use hangar_core::MachineId;
use hangar_core::driver::DriverError;

use super::{SandboxDriver, lock};

impl SandboxDriver {
    pub(super) async fn connect_machine(
        &self,
        id: &MachineId,
        port: u16,
    ) -> Result<tokio::net::TcpStream, DriverError> {
        let pid = self
            .init_pid(id)
            .ok_or_else(|| DriverError::NotFound(id.clone()))?;
        let netns = self.netns(id, pid)?;
        let fd = std::thread::Builder::new()
            .name("hangar-netns".into())
            .spawn(move || socket_in(&netns))
            .map_err(|e| DriverError::io("spawning a thread to enter the machine's network", e))?
            .join()
            .map_err(|_| DriverError::Other("the network namespace thread panicked".into()))?
            .map_err(|e| DriverError::io("creating a socket in the machine's network", e))?;
        // SAFETY: `fd` is a freshly created TCP socket that nothing else owns.
        let std_stream = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        let socket = tokio::net::TcpSocket::from_std_stream(std_stream);
        socket
            .connect(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            .await
            .map_err(|e| DriverError::io(format!("connecting to port {port} in machine {id}"), e))
    }

    fn netns(&self, id: &MachineId, pid: i32) -> Result<Arc<OwnedFd>, DriverError> {
        let mut cache = lock(&self.netns);
        if let Some((cached_pid, fd)) = cache.get(id)
            && *cached_pid == pid
        {
            return Ok(fd.clone());
        }
        let file = std::fs::File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| DriverError::io(format!("opening the network namespace of {id}"), e))?;
        let fd = Arc::new(OwnedFd::from(file));
        cache.insert(id.clone(), (pid, fd.clone()));
        Ok(fd)
    }

    pub(super) fn forget_netns(&self, id: &MachineId) {
        lock(&self.netns).remove(id);
    }
}

/// Runs on a thread of its own, which it leaves in the machine's namespace as it ends.
fn socket_in(netns: &OwnedFd) -> std::io::Result<i32> {
    // SAFETY: plain syscalls on a valid fd; only this thread changes namespace.
    unsafe {
        if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}
