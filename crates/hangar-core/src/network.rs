//! The private-network boundary: what the service layer asks of whatever wires
//! machines to each other, to hangar's DNS and to the outside.
//!
//! Addresses are allocated in the store as an org *slot* and a host number within
//! it; a [`Network`] turns those into IP addresses, plumbing for the driver
//! ([`NetworkSpec`]) and, from a full [`NetView`], the firewall and DNS records.
//! The service layer knows nothing of bridges, nftables or DNS packets.

use std::net::{Ipv4Addr, Ipv6Addr};

use async_trait::async_trait;
use hangar_types::EgressPolicy;

use crate::ids::MachineId;

/// What a driver needs to give a machine its private interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkSpec {
    /// The host bridge the machine's veth joins.
    pub bridge: String,
    /// The host end of the veth (≤ 15 bytes); the machine's end is `eth0`.
    pub host_ifname: String,
    pub ipv4: Ipv4Addr,
    pub ipv4_prefix: u8,
    pub gateway4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub ipv6_prefix: u8,
    pub gateway6: Ipv6Addr,
    /// `/etc/resolv.conf` as the machine sees it.
    pub resolv_conf: String,
}

/// One machine with an address, as the network sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineNet {
    pub machine_id: MachineId,
    pub app: String,
    pub org: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// Only started machines answer for `<app>.internal`.
    pub started: bool,
}

/// Everything the firewall and DNS are built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetView {
    /// Every org that holds a slot: `(org, slot)`.
    pub orgs: Vec<(String, u32)>,
    pub machines: Vec<MachineNet>,
    /// Apps with a policy other than the default `allow`: `(app, org, policy)`.
    pub egress: Vec<(String, String, EgressPolicy)>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Host(String),
}

#[async_trait]
pub trait Network: Send + Sync + 'static {
    /// The addresses of host `host` in org slot `slot`, or `None` when the slot or
    /// host is beyond the installation's range.
    fn addresses(&self, slot: u32, host: u32) -> Option<(Ipv4Addr, Ipv6Addr)>;
    /// How many org slots and hosts per org the ranges hold (both counted from 1).
    fn capacity(&self) -> (u32, u32);
    /// Plumbing for a machine, or `None` when machines get loopback only.
    fn spec(&self, machine: &MachineNet) -> Option<NetworkSpec>;
    /// Brings firewall and DNS in line with `view` (idempotent).
    async fn sync(&self, view: NetView) -> Result<(), NetworkError>;
    /// Checks a policy before it is stored: `Err` says what is wrong with it.
    fn validate_egress(&self, policy: &EgressPolicy) -> Result<(), NetworkError>;
}

/// Loopback only: no addresses, nothing to sync. For hosts without networking and
/// for tests of the service layer.
pub struct NoNetwork;

#[async_trait]
impl Network for NoNetwork {
    fn addresses(&self, _slot: u32, _host: u32) -> Option<(Ipv4Addr, Ipv6Addr)> {
        None
    }
    fn capacity(&self) -> (u32, u32) {
        (0, 0)
    }
    fn spec(&self, _machine: &MachineNet) -> Option<NetworkSpec> {
        None
    }
    async fn sync(&self, _view: NetView) -> Result<(), NetworkError> {
        Ok(())
    }
    fn validate_egress(&self, _policy: &EgressPolicy) -> Result<(), NetworkError> {
        Ok(())
    }
}
