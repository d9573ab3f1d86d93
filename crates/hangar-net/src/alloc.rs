//! Address plans: the installation's names and ranges, and the arithmetic that turns
//! an org slot and a host number (allocated in the store) into IP addresses.
//!
//! Layout, for an IPv4 range `R/16` and a ULA prefix `P::/48`:
//! - the bridge gateway is `R.0.1` and `P::1`, in slot 0, which no org gets;
//! - org slot `s` owns `R.s.0/24` and `P:s::/64`;
//! - host `h` of slot `s` is `R.s.h` and `P:s::h`.
//!
//! Machines see the whole range as on-link (the bridge), so machines of one org talk
//! directly; the bridge firewall decides which pairs may.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use sha2::{Digest, Sha256};

/// Prefix length of the IPv6 prefix of an installation.
pub const ULA_PREFIX_LEN: u8 = 48;

/// A hash naming one installation (one data dir): bridge and table names derive
/// from it, so two daemons on one host never share them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installation([u8; 32]);

impl Installation {
    pub fn from_data_dir(dir: &std::path::Path) -> Self {
        let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        Installation(Sha256::digest(canonical.as_os_str().as_encoded_bytes()).into())
    }

    fn hex(&self, n: usize) -> String {
        hex::encode(&self.0[..n.div_ceil(2)])[..n].to_string()
    }

    /// `hg` and 10 hex digits: 12 bytes, within IFNAMSIZ.
    pub fn bridge_name(&self) -> String {
        format!("hg{}", self.hex(10))
    }

    /// The nftables table names (one `inet`, one `bridge`).
    pub fn table_name(&self) -> String {
        format!("hangar_{}", self.hex(10))
    }

    /// The prefix of every veth of this installation, so the firewall can match
    /// them all with one wildcard.
    pub fn veth_prefix(&self) -> String {
        format!("h{}", self.hex(4))
    }

    /// The host end of a machine's veth: [`Self::veth_prefix`] and 9 hex digits of a
    /// hash of the installation and the machine id (14 bytes).
    pub fn veth_name(&self, machine_id: &str) -> String {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(machine_id.as_bytes());
        format!("{}{}", self.veth_prefix(), &hex::encode(h.finalize())[..9])
    }

    /// Candidate IPv4 ranges in preference order: /16s inside 10.0.0.0/8, starting
    /// at one derived from the hash (so two installations rarely start on the
    /// same one, and the caller skips ranges the host already uses).
    pub fn ipv4_candidates(&self) -> impl Iterator<Item = Ipv4Net> {
        let start = self.0[0];
        (0..=255u8).map(move |i| {
            let second = start.wrapping_add(i);
            Ipv4Net::new(Ipv4Addr::new(10, second, 0, 0), 16).expect("valid prefix")
        })
    }
}

/// A fresh random ULA /48 (RFC 4193: `fd` and 40 random bits).
pub fn random_ula() -> Ipv6Net {
    let mut bytes = [0u8; 16];
    bytes[0] = 0xfd;
    rand::Rng::fill(&mut rand::thread_rng(), &mut bytes[1..6]);
    Ipv6Net::new(Ipv6Addr::from(bytes), ULA_PREFIX_LEN).expect("valid prefix")
}

/// The address plan of one installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub v4: Ipv4Net,
    pub v6: Ipv6Net,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("the IPv4 range {0} must be a /8 to /22 so each org gets a /24 of its own")]
    V4Size(Ipv4Net),
    #[error("the IPv6 prefix {0} must be a /48")]
    V6Size(Ipv6Net),
}

impl Plan {
    pub fn new(v4: Ipv4Net, v6: Ipv6Net) -> Result<Self, PlanError> {
        if !(8..=22).contains(&v4.prefix_len()) {
            return Err(PlanError::V4Size(v4));
        }
        if v6.prefix_len() != ULA_PREFIX_LEN {
            return Err(PlanError::V6Size(v6));
        }
        Ok(Plan {
            v4: v4.trunc(),
            v6: v6.trunc(),
        })
    }

    /// Org slots available (slot 0 is the gateway's), capped so slot numbers fit the
    /// 16 bits of the IPv6 subnet id.
    pub fn max_slot(&self) -> u32 {
        let slots = 1u64 << (24 - self.v4.prefix_len());
        (slots - 1).min(u64::from(u16::MAX)) as u32
    }

    /// Hosts per org: .1 to .254 of the org's /24.
    pub fn max_host(&self) -> u32 {
        254
    }

    pub fn gateway4(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.v4.network()) + 1)
    }

    pub fn gateway6(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.v6.network()) + 1)
    }

    pub fn org_subnet4(&self, slot: u32) -> Option<Ipv4Net> {
        if slot == 0 || slot > self.max_slot() {
            return None;
        }
        let base = u32::from(self.v4.network()) + (slot << 8);
        Ipv4Net::new(Ipv4Addr::from(base), 24).ok()
    }

    pub fn org_subnet6(&self, slot: u32) -> Option<Ipv6Net> {
        if slot == 0 || slot > self.max_slot() {
            return None;
        }
        let base = u128::from(self.v6.network()) | (u128::from(slot) << 64);
        Ipv6Net::new(Ipv6Addr::from(base), 64).ok()
    }

    pub fn addresses(&self, slot: u32, host: u32) -> Option<(Ipv4Addr, Ipv6Addr)> {
        if host == 0 || host > self.max_host() {
            return None;
        }
        let v4 = self.org_subnet4(slot)?;
        let v6 = self.org_subnet6(slot)?;
        Some((
            Ipv4Addr::from(u32::from(v4.network()) + host),
            Ipv6Addr::from(u128::from(v6.network()) + u128::from(host)),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(second: u8, len: u8, ula: [u8; 6]) -> Plan {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ula);
        b[0] = 0xfd;
        Plan::new(
            Ipv4Net::new(Ipv4Addr::new(10, second, 0, 0), len).unwrap(),
            Ipv6Net::new(Ipv6Addr::from(b), 48).unwrap(),
        )
        .unwrap()
    }

    proptest! {
        #[test]
        fn addresses_stay_in_their_org_subnet_and_never_hit_the_gateway(
            second in any::<u8>(), len in 16u8..=22, ula in any::<[u8; 6]>(),
            slot in 0u32..70_000, host in 0u32..300,
        ) {
            let p = plan(second, len, ula);
            match p.addresses(slot, host) {
                None => prop_assert!(slot == 0 || slot > p.max_slot() || host == 0 || host > p.max_host()),
                Some((v4, v6)) => {
                    prop_assert!(p.org_subnet4(slot).unwrap().contains(&v4));
                    prop_assert!(p.org_subnet6(slot).unwrap().contains(&v6));
                    prop_assert!(p.v4.contains(&v4) && p.v6.contains(&v6));
                    prop_assert_ne!(v4, p.gateway4());
                    prop_assert_ne!(v6, p.gateway6());
                    // Not the network or broadcast address of the org's /24.
                    prop_assert!(v4.octets()[3] != 0 && v4.octets()[3] != 255);
                }
            }
        }

        #[test]
        fn distinct_slots_and_hosts_give_distinct_addresses(
            ula in any::<[u8; 6]>(), a in (1u32..=255, 1u32..=254), b in (1u32..=255, 1u32..=254),
        ) {
            let p = plan(7, 16, ula);
            let (x4, x6) = p.addresses(a.0, a.1).unwrap();
            let (y4, y6) = p.addresses(b.0, b.1).unwrap();
            prop_assert_eq!(a == b, x4 == y4);
            prop_assert_eq!(a == b, x6 == y6);
            // Org subnets never overlap.
            if a.0 != b.0 {
                prop_assert!(!p.org_subnet4(a.0).unwrap().contains(&y4));
                prop_assert!(!p.org_subnet6(a.0).unwrap().contains(&y6));
            }
        }

        #[test]
        fn names_fit_ifnamsiz(dir in "/[a-z0-9/]{1,80}", id in "[0-9a-f]{14}") {
            let inst = Installation::from_data_dir(std::path::Path::new(&dir));
            prop_assert!(inst.bridge_name().len() <= 15);
            prop_assert!(inst.veth_name(&id).len() <= 15);
            prop_assert_ne!(inst.veth_name(&id), inst.bridge_name());
        }
    }

    #[test]
    fn random_ula_is_a_ula_48() {
        let p = random_ula();
        assert_eq!(p.prefix_len(), 48);
        assert_eq!(p.network().octets()[0], 0xfd);
    }

    #[test]
    fn too_small_ranges_are_refused() {
        let v6 = random_ula();
        let v4: Ipv4Net = "10.1.0.0/24".parse().unwrap();
        assert_eq!(Plan::new(v4, v6), Err(PlanError::V4Size(v4)));
    }

    #[test]
    fn different_data_dirs_get_different_names() {
        let a = Installation::from_data_dir(std::path::Path::new("/nonexistent/a"));
        let b = Installation::from_data_dir(std::path::Path::new("/nonexistent/b"));
        assert_ne!(a.bridge_name(), b.bridge_name());
        assert_ne!(a.table_name(), b.table_name());
    }
}
