//! The private network of hangar machines: one bridge per installation, a veth per
//! machine, addresses from the installation's ranges, the firewall that keeps orgs
//! apart and machines off the host, `.internal` DNS, and per-app egress policy.
//!
//! [`HostNetwork`] implements [`hangar_core::network::Network`] for the service
//! layer; [`link::attach`] is what the sandbox driver calls once a machine's network
//! namespace exists.

pub mod alloc;
pub mod dns;
pub mod firewall;
mod host;
pub mod link;

pub use host::{HostNetwork, NetOptions};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("nftables: {0}")]
    Nft(String),
    #[error("dns: {0}")]
    Dns(String),
    #[error("{0}")]
    Config(String),
}

/// Removes what an installation's network keeps on the host by design after its
/// daemon exits (machines may still run): its bridge and firewall tables. For tests
/// and benchmarks that bring a daemon up, destroy its machines and take it away.
pub fn remove_installation(data_dir: &std::path::Path) {
    let inst = alloc::Installation::from_data_dir(data_dir);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &inst.bridge_name()])
        .stderr(std::process::Stdio::null())
        .status();
    let _ = firewall::remove(&inst.table_name());
}
