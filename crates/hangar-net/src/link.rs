//! Links, addresses and routes over rtnetlink: the installation's bridge, and each
//! machine's veth with its end inside the machine's network namespace.
//!
//! A netlink socket acts in the namespace it was opened in, so the machine's side is
//! configured through a socket opened by a short-lived thread that first joins the
//! machine's namespace; the daemon's own threads never leave the host's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};

use futures::TryStreamExt;
use hangar_core::network::NetworkSpec;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::sys::{Socket, TokioSocket, protocols::NETLINK_ROUTE};
use rtnetlink::{
    Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::NetError;

/// The machine's end of its veth.
pub const GUEST_IFNAME: &str = "eth0";

fn nl(what: &str) -> impl FnOnce(rtnetlink::Error) -> NetError + '_ {
    move |e| NetError::Netlink(format!("{what}: {e}"))
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -errno)
}

/// A netlink connection whose socket lives in the caller's (the host's) namespace.
pub fn connect() -> Result<Handle, NetError> {
    let (conn, handle, _) = rtnetlink::new_connection()
        .map_err(|e| NetError::Netlink(format!("opening a netlink socket: {e}")))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink connection inside the network namespace `ns`.
async fn connect_in(ns: &OwnedFd) -> Result<Handle, NetError> {
    let ns = ns.as_raw_fd();
    let fd = tokio::task::spawn_blocking(move || -> Result<i32, String> {
        // A fresh thread: once it has joined the machine's namespace it only opens one
        // socket and exits, so nothing else ever runs there.
        std::thread::spawn(move || {
            // SAFETY: setns on this thread only, with a namespace fd we hold open.
            if unsafe { libc::setns(ns, libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "joining the machine's network namespace: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| e.to_string())?;
            socket.bind_auto().map_err(|e| e.to_string())?;
            Ok(socket.into_raw_fd())
        })
        .join()
        .map_err(|_| "the namespace thread panicked".to_string())?
    })
    .await
    .map_err(|e| NetError::Netlink(e.to_string()))?
    .map_err(NetError::Netlink)?;
    // SAFETY: `fd` is the netlink socket the thread just opened and gave up.
    let socket = unsafe { TokioSocket::from_raw_fd(fd) };
    let (conn, handle, _) = rtnetlink::from_socket(socket);
    tokio::spawn(conn);
    Ok(handle)
}

/// The index of link `name`, or `None` when there is none.
pub async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(nl("looking up a link")(e)),
    }
}

async fn add_address(
    handle: &Handle,
    index: u32,
    addr: IpAddr,
    prefix: u8,
) -> Result<(), NetError> {
    let mut req = handle.address().add(index, addr, prefix).replace();
    if addr.is_ipv6() {
        // Duplicate address detection would hold the address back for a second;
        // the store already guarantees it is unique.
        req.message_mut()
            .attributes
            .push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    req.execute().await.map_err(nl("adding an address"))
}

/// Creates the bridge with its gateway addresses, or adopts the one that exists.
pub async fn ensure_bridge(
    handle: &Handle,
    name: &str,
    gw4: Ipv4Addr,
    prefix4: u8,
    gw6: Ipv6Addr,
    prefix6: u8,
) -> Result<u32, NetError> {
    let index = match index_of(handle, name).await? {
        Some(i) => i,
        None => {
            match handle
                .link()
                .add(LinkBridge::new(name).build())
                .execute()
                .await
            {
                Ok(()) => {}
                Err(e) if is_errno(&e, libc::EEXIST) => {}
                Err(e) => return Err(nl("creating the bridge")(e)),
            }
            index_of(handle, name)
                .await?
                .ok_or_else(|| NetError::Netlink(format!("bridge {name} vanished")))?
        }
    };
    add_address(handle, index, IpAddr::V4(gw4), prefix4).await?;
    add_address(handle, index, IpAddr::V6(gw6), prefix6).await?;
    handle
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl("bringing the bridge up"))?;
    Ok(index)
}

/// Deletes link `name`; absent is fine.
pub async fn delete_link(handle: &Handle, name: &str) -> Result<(), NetError> {
    let Some(index) = index_of(handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        Ok(()) => Ok(()),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(()),
        Err(e) => Err(nl("deleting a link")(e)),
    }
}

/// Gives the machine whose init is `pid` its veth, addresses and routes.
pub async fn attach(handle: &Handle, spec: &NetworkSpec, pid: i32) -> Result<(), NetError> {
    let ns: OwnedFd = std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .map_err(|e| NetError::Netlink(format!("opening the machine's network namespace: {e}")))?
        .into();
    let bridge = index_of(handle, &spec.bridge)
        .await?
        .ok_or_else(|| NetError::Netlink(format!("the bridge {} is gone", spec.bridge)))?;
    // A leftover host end from an earlier sandbox of this machine would block the name.
    delete_link(handle, &spec.host_ifname).await?;

    // One request creates the pair with the peer already inside the machine.
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(GUEST_IFNAME.to_string())
        .setns_by_fd(ns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(&spec.host_ifname, GUEST_IFNAME)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .controller(bridge)
        .up()
        .build();
    handle
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(nl("creating the machine's veth"))?;

    let inner = connect_in(&ns).await?;
    let eth0 = index_of(&inner, GUEST_IFNAME)
        .await?
        .ok_or_else(|| NetError::Netlink("eth0 did not arrive in the machine".into()))?;
    add_address(&inner, eth0, IpAddr::V4(spec.ipv4), spec.ipv4_prefix).await?;
    add_address(&inner, eth0, IpAddr::V6(spec.ipv6), spec.ipv6_prefix).await?;
    inner
        .link()
        .set(LinkUnspec::new_with_index(eth0).up().build())
        .execute()
        .await
        .map_err(nl("bringing eth0 up"))?;
    inner
        .route()
        .add(
            RouteMessageBuilder::<Ipv4Addr>::new()
                .gateway(spec.gateway4)
                .output_interface(eth0)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(nl("adding the IPv4 default route"))?;
    inner
        .route()
        .add(
            RouteMessageBuilder::<Ipv6Addr>::new()
                .gateway(spec.gateway6)
                .output_interface(eth0)
                .build(),
        )
        .replace()
        .execute()
        .await
        .map_err(nl("adding the IPv6 default route"))?;
    Ok(())
}
