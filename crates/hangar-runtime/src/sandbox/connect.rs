//! `connect`: a TCP connection into a machine's own network namespace.
//!
//! A socket belongs to the network namespace of the thread that created it, so one
//! thread of its own (the socket maker) enters a machine's namespace (`setns`),
//! creates a non-blocking socket and hands it back; the daemon's other threads never
//! change namespace. Requests that queue up while it works are served before it goes
//! back to the daemon's own namespace, so a burst of dials to one machine enters it
//! once; it never stays in a machine's namespace while idle, which would keep that
//! namespace (and its interfaces) alive after the machine is gone. The connect itself
//! then runs on tokio. The namespace file of each machine is opened once and kept,
//! keyed by init's pid so a restarted sandbox is never reached through a stale
//! namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};

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
        let fd = socket_in(netns)
            .await
            .map_err(|e| DriverError::io("creating a socket in the machine's network", e))?;
        let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
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

/// A socket to make in a namespace, and where the answer goes.
type Job = (
    Arc<OwnedFd>,
    tokio::sync::oneshot::Sender<std::io::Result<OwnedFd>>,
);

/// A new non-blocking TCP socket in the namespace `netns`, from the socket maker.
async fn socket_in(netns: Arc<OwnedFd>) -> std::io::Result<OwnedFd> {
    static MAKER: OnceLock<Option<Sender<Job>>> = OnceLock::new();
    let gone = || std::io::Error::other("the thread that enters machines' networks is gone");
    let maker = MAKER.get_or_init(spawn_maker).as_ref().ok_or_else(gone)?;
    let (reply, answer) = tokio::sync::oneshot::channel();
    maker.send((netns, reply)).map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// Starts the socket maker; `None` if the daemon's own namespace cannot be opened
/// (it must be able to return there) or the thread cannot start.
fn spawn_maker() -> Option<Sender<Job>> {
    let home = OwnedFd::from(std::fs::File::open("/proc/thread-self/ns/net").ok()?);
    let (jobs, queue) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("hangar-netns".into())
        .spawn(move || {
            while let Ok(first) = queue.recv() {
                let mut inside: Option<Arc<OwnedFd>> = None;
                let mut job = Some(first);
                while let Some((netns, reply)) = job {
                    let result = match &inside {
                        Some(ns) if Arc::ptr_eq(ns, &netns) => make_socket(),
                        _ => enter(&netns).and_then(|()| {
                            inside = Some(netns.clone());
                            make_socket()
                        }),
                    };
                    let _ = reply.send(result);
                    job = queue.try_recv().ok();
                }
                if inside.is_some() && enter(&home).is_err() {
                    // Stuck in a machine's namespace: make no more sockets.
                    return;
                }
            }
        })
        .ok()?;
    Some(jobs)
}

fn enter(netns: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: plain syscall on a valid fd; only the socket maker changes namespace.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn make_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd it returns is owned by nothing else.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
