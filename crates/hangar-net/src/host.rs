//! [`HostNetwork`]: the real [`Network`], owning the installation's bridge, its
//! nftables tables and its DNS server for the daemon's lifetime.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hangar_core::network::{MachineNet, NetView, Network, NetworkError, NetworkSpec};
use hangar_core::store::Store;
use hangar_types::{EgressMode, EgressPolicy};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::alloc::{Installation, Plan, random_ula};
use crate::dns::{self, Directory, DnsServer, Entry, Learner};
use crate::firewall::{self, AppRule, Rules};
use crate::{NetError, link};

/// How `hangar serve` configures the network.
#[derive(Debug, Clone)]
pub struct NetOptions {
    pub data_dir: PathBuf,
    /// The IPv4 range for machines; `None` picks a free /16 in 10.0.0.0/8 on first
    /// start and keeps it.
    pub ipv4_range: Option<Ipv4Net>,
    /// Where names outside `.internal` are resolved; `None` reads the host's
    /// `/etc/resolv.conf`.
    pub upstreams: Option<Vec<SocketAddr>>,
}

pub struct HostNetwork {
    inst: Installation,
    plan: Plan,
    bridge: String,
    table: String,
    directory: Arc<RwLock<Directory>>,
    learned: Arc<Learned>,
    /// The last ruleset loaded, without learned addresses: an unchanged ruleset is
    /// not loaded again, and one that differs only in machines is updated in place.
    applied: tokio::sync::Mutex<Option<Rules>>,
    /// Stable set and chain numbers for apps with a policy.
    app_index: Mutex<HashMap<String, usize>>,
    dns_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Addresses the DNS server allowed, per app index, until when.
struct Learned {
    table: String,
    entries: Mutex<HashMap<usize, HashMap<IpAddr, Instant>>>,
}

impl Learner for Learned {
    fn learned(&self, app: usize, addrs: Vec<(IpAddr, Duration)>) {
        {
            let now = Instant::now();
            let mut all = self.entries.lock().expect("learned poisoned");
            let set = all.entry(app).or_default();
            set.retain(|_, until| *until > now);
            for (a, ttl) in &addrs {
                set.insert(*a, now + *ttl);
            }
        }
        if let Err(e) = firewall::add_learned(&self.table, app, &addrs) {
            tracing::warn!(error = %e, "adding addresses learned from DNS to an egress set");
        }
    }
}

impl HostNetwork {
    /// Sets up (or adopts) the bridge, rebuilds nothing yet (the first [`Network::sync`]
    /// loads the firewall) and starts DNS on the gateway addresses.
    pub async fn start(opts: NetOptions, store: &dyn Store) -> Result<Arc<Self>, NetError> {
        which("nft")?;
        let inst = Installation::from_data_dir(&opts.data_dir);
        let cfg = |e: hangar_core::store::StoreError| NetError::Config(e.to_string());
        let ula: Ipv6Net = store
            .network_setting_or_insert("ipv6_prefix", &random_ula().to_string())
            .await
            .map_err(cfg)?
            .parse()
            .map_err(|e| NetError::Config(format!("stored IPv6 prefix: {e}")))?;
        let handle = link::connect()?;
        let v4 = match opts.ipv4_range {
            Some(r) => r,
            None => {
                let used = host_networks(&handle).await?;
                let free = inst
                    .ipv4_candidates()
                    .find(|c| {
                        !used
                            .iter()
                            .any(|u| u.contains(&c.network()) || c.contains(&u.network()))
                    })
                    .ok_or_else(|| {
                        NetError::Config(
                            "no free /16 left in 10.0.0.0/8; pass --private-ipv4-range".into(),
                        )
                    })?;
                store
                    .network_setting_or_insert("ipv4_range", &free.to_string())
                    .await
                    .map_err(cfg)?
                    .parse()
                    .map_err(|e| NetError::Config(format!("stored IPv4 range: {e}")))?
            }
        };
        let plan = Plan::new(v4, ula).map_err(|e| NetError::Config(e.to_string()))?;
        let bridge = inst.bridge_name();
        link::ensure_bridge(
            &handle,
            &bridge,
            plan.gateway4(),
            plan.v4.prefix_len(),
            plan.gateway6(),
            plan.v6.prefix_len(),
        )
        .await?;
        enable_forwarding();

        let table = inst.table_name();
        let directory = Arc::new(RwLock::new(Directory::default()));
        let learned = Arc::new(Learned {
            table: table.clone(),
            entries: Mutex::new(HashMap::new()),
        });
        let upstreams = match opts.upstreams {
            Some(u) => u,
            None => dns::parse_resolv_conf(
                &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
        };
        let server = Arc::new(DnsServer {
            directory: directory.clone(),
            upstreams,
            learner: learned.clone(),
        });
        let mut dns_tasks = Vec::new();
        for addr in [IpAddr::V4(plan.gateway4()), IpAddr::V6(plan.gateway6())] {
            let socket = dns::bind(SocketAddr::new(addr, 53)).await?;
            dns_tasks.push(tokio::spawn(server.clone().serve(socket)));
        }
        tracing::info!(%bridge, ipv4 = %plan.v4, ipv6 = %plan.v6, "private network ready");
        Ok(Arc::new(HostNetwork {
            inst,
            plan,
            bridge,
            table,
            directory,
            learned,
            applied: tokio::sync::Mutex::new(None),
            app_index: Mutex::new(HashMap::new()),
            dns_tasks,
        }))
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn plan(&self) -> Plan {
        self.plan
    }

    /// Removes the bridge and the tables: for an installation with no machines left.
    pub async fn remove(&self) -> Result<(), NetError> {
        firewall::remove(&self.table)?;
        link::delete_link(&link::connect()?, &self.bridge).await
    }

    fn index(&self, app: &str) -> usize {
        let mut map = self.app_index.lock().expect("app index poisoned");
        let next = map.len();
        *map.entry(app.to_string()).or_insert(next)
    }

    fn rules(&self, view: &NetView, with_learned: bool) -> Rules {
        let now = Instant::now();
        let learned = self.learned.entries.lock().expect("learned poisoned");
        let mut apps = Vec::new();
        for (app, _org, policy) in &view.egress {
            if policy.policy == EgressMode::Allow {
                continue;
            }
            let index = self.index(app);
            let mut nets = Vec::new();
            for item in &policy.allow {
                if let Some(net) = parse_net(item) {
                    nets.push(net);
                }
            }
            if policy.policy == EgressMode::Deny {
                nets.clear();
            }
            let learned = if with_learned {
                learned
                    .get(&index)
                    .map(|m| {
                        m.iter()
                            .filter(|(_, until)| **until > now)
                            .map(|(a, until)| (*a, *until - now))
                            .collect()
                    })
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            let machines = view
                .machines
                .iter()
                .filter(|m| &m.app == app)
                .flat_map(|m| [IpAddr::V4(m.ipv4), IpAddr::V6(m.ipv6)])
                .collect();
            apps.push(AppRule {
                index,
                machines,
                nets,
                learned,
            });
        }
        let mut orgs: Vec<_> = view
            .orgs
            .iter()
            .filter_map(|(_, slot)| {
                Some((self.plan.org_subnet4(*slot)?, self.plan.org_subnet6(*slot)?))
            })
            .collect();
        orgs.sort();
        Rules {
            table: self.table.clone(),
            bridge: self.bridge.clone(),
            port_prefix: self.inst.veth_prefix(),
            range4: self.plan.v4,
            range6: self.plan.v6,
            gateway4: self.plan.gateway4(),
            gateway6: self.plan.gateway6(),
            dns_port: 53,
            orgs,
            apps,
            ports: view
                .machines
                .iter()
                .map(|m| (self.inst.veth_name(m.machine_id.as_str()), m.ipv4, m.ipv6))
                .collect(),
        }
    }
}

impl Drop for HostNetwork {
    fn drop(&mut self) {
        for t in &self.dns_tasks {
            t.abort();
        }
    }
}

#[async_trait]
impl Network for HostNetwork {
    fn addresses(&self, slot: u32, host: u32) -> Option<(Ipv4Addr, Ipv6Addr)> {
        self.plan.addresses(slot, host)
    }

    fn capacity(&self) -> (u32, u32) {
        (self.plan.max_slot(), self.plan.max_host())
    }

    fn spec(&self, m: &MachineNet) -> Option<NetworkSpec> {
        Some(NetworkSpec {
            bridge: self.bridge.clone(),
            host_ifname: self.inst.veth_name(m.machine_id.as_str()),
            ipv4: m.ipv4,
            ipv4_prefix: self.plan.v4.prefix_len(),
            gateway4: self.plan.gateway4(),
            ipv6: m.ipv6,
            ipv6_prefix: self.plan.v6.prefix_len(),
            gateway6: self.plan.gateway6(),
            resolv_conf: format!(
                "# written by hangar: .internal names and the host's resolvers\nnameserver {}\nnameserver {}\n",
                self.plan.gateway4(),
                self.plan.gateway6()
            ),
        })
    }

    async fn sync(&self, view: NetView) -> Result<(), NetworkError> {
        {
            let mut dir = self.directory.write().expect("directory poisoned");
            dir.machines = view
                .machines
                .iter()
                .map(|m| Entry {
                    machine_id: m.machine_id.to_string(),
                    app: m.app.clone(),
                    org: m.org.clone(),
                    ipv4: m.ipv4,
                    ipv6: m.ipv6,
                    started: m.started,
                })
                .collect();
            dir.allow_domains = view
                .egress
                .iter()
                .filter(|(_, _, p)| p.policy == EgressMode::Allowlist)
                .map(|(app, _, p)| {
                    let domains = p
                        .allow
                        .iter()
                        .filter(|a| parse_net(a).is_none())
                        .cloned()
                        .collect();
                    (app.clone(), (domains, self.index(app)))
                })
                .collect();
        }
        let key = self.rules(&view, false);
        let mut applied = self.applied.lock().await;
        if applied.as_ref() == Some(&key) {
            return Ok(());
        }
        let run = |script: String| async move {
            tokio::task::spawn_blocking(move || firewall::nft(&script))
                .await
                .map_err(|e| NetworkError::Host(e.to_string()))?
                .map_err(|e| NetworkError::Host(e.to_string()))
        };
        if let Some(delta) = applied.as_ref().and_then(|old| old.delta(&key)) {
            match run(delta).await {
                Ok(()) => {
                    *applied = Some(key);
                    return Ok(());
                }
                // Someone changed the tables under us: rebuild them.
                Err(err) => {
                    tracing::warn!(error = %err, "updating the firewall in place; reloading it")
                }
            }
        }
        run(self.rules(&view, true).render()).await?;
        *applied = Some(key);
        Ok(())
    }

    fn validate_egress(&self, policy: &EgressPolicy) -> Result<(), NetworkError> {
        validate(policy)
    }
}

/// A CIDR or a single address.
fn parse_net(s: &str) -> Option<IpNet> {
    s.parse::<IpNet>()
        .ok()
        .or_else(|| s.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

fn valid_domain(s: &str) -> bool {
    let s = s.trim_end_matches('.');
    !s.is_empty()
        && s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// Checks an egress policy before it is stored.
pub fn validate(policy: &EgressPolicy) -> Result<(), NetworkError> {
    match policy.policy {
        EgressMode::Allow | EgressMode::Deny if !policy.allow.is_empty() => {
            Err(NetworkError::Invalid(
                "\"allow\" entries only make sense with \"policy\": \"allowlist\"; drop them or switch the policy".into(),
            ))
        }
        EgressMode::Allowlist => {
            for item in &policy.allow {
                if parse_net(item).is_none() && !valid_domain(item) {
                    return Err(NetworkError::Invalid(format!(
                        "{item:?} is neither a CIDR (1.2.3.0/24), an address, nor a domain name (example.com)"
                    )));
                }
            }
            if policy.allow.len() > 1024 {
                return Err(NetworkError::Invalid("an allowlist holds at most 1024 entries".into()));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn which(tool: &str) -> Result<(), NetError> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if found {
        Ok(())
    } else {
        Err(NetError::Config(format!(
            "{tool} is not installed (install the nftables package)"
        )))
    }
}

/// IPv4 networks already on the host's interfaces.
async fn host_networks(handle: &rtnetlink::Handle) -> Result<Vec<Ipv4Net>, NetError> {
    use futures::TryStreamExt;
    use rtnetlink::packet_route::address::AddressAttribute;
    let mut out = Vec::new();
    let mut addrs = handle.address().get().execute();
    while let Some(msg) = addrs
        .try_next()
        .await
        .map_err(|e| NetError::Netlink(format!("listing addresses: {e}")))?
    {
        for attr in &msg.attributes {
            if let AddressAttribute::Address(IpAddr::V4(a)) = attr
                && let Ok(net) = Ipv4Net::new(*a, msg.header.prefix_len)
            {
                out.push(net.trunc());
            }
        }
    }
    Ok(out)
}

/// Machines reach the outside through the host: IPv4 forwarding must be on.
/// IPv6 forwarding is left as the host has it (turning it on changes how the host
/// itself takes router advertisements); without it machines have IPv6 only among
/// themselves.
fn enable_forwarding() {
    let path = "/proc/sys/net/ipv4/ip_forward";
    if std::fs::read_to_string(path)
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        match std::fs::write(path, "1") {
            Ok(()) => tracing::info!("enabled IPv4 forwarding for machine egress"),
            Err(e) => {
                tracing::warn!(error = %e, "could not enable IPv4 forwarding: machines have no egress")
            }
        }
    }
    if std::fs::read_to_string("/proc/sys/net/ipv6/conf/all/forwarding")
        .map(|s| s.trim() == "0")
        .unwrap_or(false)
    {
        tracing::info!(
            "IPv6 forwarding is off on this host: machines reach the outside over IPv4 only"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(mode: EgressMode, allow: &[&str]) -> EgressPolicy {
        EgressPolicy {
            policy: mode,
            allow: allow.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn policies_are_checked() {
        assert!(
            validate(&p(
                EgressMode::Allowlist,
                &["1.2.3.0/24", "2001:db8::/32", "example.com", "9.9.9.9"]
            ))
            .is_ok()
        );
        assert!(validate(&p(EgressMode::Allowlist, &["not a name"])).is_err());
        assert!(validate(&p(EgressMode::Allowlist, &["-bad.com"])).is_err());
        assert!(validate(&p(EgressMode::Deny, &["1.2.3.0/24"])).is_err());
        assert!(validate(&p(EgressMode::Deny, &[])).is_ok());
    }
}
