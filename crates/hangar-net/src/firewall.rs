//! The installation's nftables tables: one `inet` table (machines off the host,
//! egress policy, masquerade) and one `bridge` table (orgs apart on the bridge).
//!
//! The ruleset is rendered in full from a [`Rules`] and loaded with one `nft -f`
//! transaction that deletes and recreates both tables, so applying is atomic and
//! idempotent and a restarted daemon rebuilds exactly what it had. Addresses the DNS
//! server learns for allowed domain names go into timeout sets with `add element`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::NetError;

/// One app whose machines may not reach everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRule {
    /// Index used in set and chain names (app names may not be valid identifiers).
    pub index: usize,
    pub machines: Vec<IpAddr>,
    /// Static networks allowed; empty with no domains means `deny`.
    pub nets: Vec<IpNet>,
    /// Addresses learned from DNS answers, with the time left.
    pub learned: Vec<(IpAddr, Duration)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    pub table: String,
    pub bridge: String,
    /// Every machine veth of the installation starts with this.
    pub port_prefix: String,
    pub range4: Ipv4Net,
    pub range6: Ipv6Net,
    pub gateway4: std::net::Ipv4Addr,
    pub gateway6: std::net::Ipv6Addr,
    /// The DNS port on the gateway addresses (53 unless configured otherwise).
    pub dns_port: u16,
    /// Each org's subnets.
    pub orgs: Vec<(Ipv4Net, Ipv6Net)>,
    pub apps: Vec<AppRule>,
    /// Each machine's host-side veth and its addresses: frames from a port carry
    /// only that machine's source addresses.
    pub ports: Vec<(String, std::net::Ipv4Addr, std::net::Ipv6Addr)>,
}

pub fn set4(app: usize) -> String {
    format!("app{app}_dyn4")
}

pub fn set6(app: usize) -> String {
    format!("app{app}_dyn6")
}

impl Rules {
    /// The complete `nft -f` script.
    pub fn render(&self) -> String {
        let t = &self.table;
        let br = &self.bridge;
        let pp = &self.port_prefix;
        let mut s = String::new();
        // Declaring before deleting makes the delete succeed on a first start.
        let _ = writeln!(s, "table inet {t} {{}}\ndelete table inet {t}");
        let _ = writeln!(s, "table bridge {t} {{}}\ndelete table bridge {t}");

        let _ = writeln!(s, "table inet {t} {{");
        for app in &self.apps {
            let i = app.index;
            let (mut n4, mut n6) = (Vec::new(), Vec::new());
            for net in &app.nets {
                match net {
                    IpNet::V4(n) => n4.push(n.to_string()),
                    IpNet::V6(n) => n6.push(n.to_string()),
                }
            }
            set_decl(
                &mut s,
                &format!("app{i}_net4"),
                "ipv4_addr",
                "interval",
                &n4,
            );
            set_decl(
                &mut s,
                &format!("app{i}_net6"),
                "ipv6_addr",
                "interval",
                &n6,
            );
            let (mut l4, mut l6) = (Vec::new(), Vec::new());
            for (addr, left) in &app.learned {
                let e = format!("{addr} timeout {}s", left.as_secs().max(1));
                match addr {
                    IpAddr::V4(_) => l4.push(e),
                    IpAddr::V6(_) => l6.push(e),
                }
            }
            set_decl(&mut s, &set4(i), "ipv4_addr", "timeout", &l4);
            set_decl(&mut s, &set6(i), "ipv6_addr", "timeout", &l6);
        }

        // The host: only DNS on the gateway, plus what IPv6 needs to find the gateway.
        let _ = writeln!(
            s,
            "  chain input {{\n    type filter hook input priority filter - 10; policy accept;\n    iifname != \"{br}\" accept\n    ct state established,related accept\n    ip daddr {g4} meta l4proto {{ udp, tcp }} th dport {p} accept\n    ip6 daddr {g6} meta l4proto {{ udp, tcp }} th dport {p} accept\n    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit }} accept\n    drop\n  }}",
            g4 = self.gateway4,
            g6 = self.gateway6,
            p = self.dns_port,
        );

        let _ = writeln!(
            s,
            "  chain forward {{\n    type filter hook forward priority filter - 10; policy accept;\n    iifname \"{br}\" oifname \"{br}\" jump intra\n    oifname \"{br}\" ct state established,related accept\n    oifname \"{br}\" drop\n    iifname \"{br}\" jump egress\n  }}"
        );

        // Between two machines: seen here when routed through the gateway, and for
        // bridged frames too where br_netfilter is loaded. Only within an org.
        let _ = writeln!(
            s,
            "  chain intra {{\n    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept"
        );
        for (v4, v6) in &self.orgs {
            let _ = writeln!(s, "    ip saddr {v4} ip daddr {v4} accept");
            let _ = writeln!(s, "    ip6 saddr {v6} ip6 daddr {v6} accept");
        }
        let _ = writeln!(s, "    drop\n  }}");
        let _ = writeln!(s, "  chain egress {{");
        for app in &self.apps {
            let i = app.index;
            let (m4, m6): (Vec<_>, Vec<_>) = app.machines.iter().partition(|a| a.is_ipv4());
            if !m4.is_empty() {
                let _ = writeln!(s, "    ip saddr {{ {} }} jump app{i}", join(&m4));
            }
            if !m6.is_empty() {
                let _ = writeln!(s, "    ip6 saddr {{ {} }} jump app{i}", join(&m6));
            }
        }
        let _ = writeln!(s, "    accept\n  }}");
        for app in &self.apps {
            let i = app.index;
            let _ = writeln!(
                s,
                "  chain app{i} {{\n    ip daddr @app{i}_net4 accept\n    ip6 daddr @app{i}_net6 accept\n    ip daddr @{d4} accept\n    ip6 daddr @{d6} accept\n    drop\n  }}",
                d4 = set4(i),
                d6 = set6(i),
            );
        }

        let _ = writeln!(
            s,
            "  chain postrouting {{\n    type nat hook postrouting priority srcnat + 10; policy accept;\n    ip saddr {r4} oifname != \"{br}\" masquerade\n    ip6 saddr {r6} oifname != \"{br}\" masquerade\n  }}\n}}",
            r4 = self.range4,
            r6 = self.range6,
        );

        // On the bridge itself: no spoofed sources, and frames between two machines
        // pass only within an org.
        let src4: Vec<String> = self
            .ports
            .iter()
            .map(|(p, a, _)| format!("\"{p}\" . {a}"))
            .collect();
        let src6: Vec<String> = self
            .ports
            .iter()
            .map(|(p, _, a)| format!("\"{p}\" . {a}"))
            .collect();
        let _ = writeln!(s, "table bridge {t} {{");
        set_decl(&mut s, "src4", "ifname . ipv4_addr", "constant", &src4);
        set_decl(&mut s, "src6", "ifname . ipv6_addr", "constant", &src6);
        let _ = writeln!(
            s,
            "  chain prerouting {{\n    type filter hook prerouting priority filter - 10; policy accept;\n    iifname != \"{pp}*\" accept\n    ether type ip iifname . ip saddr != @src4 drop\n    ether type ip6 ip6 saddr != {{ ::, fe80::/10 }} iifname . ip6 saddr != @src6 drop\n  }}"
        );
        let _ = writeln!(
            s,
            "  chain forward {{\n    type filter hook forward priority filter - 10; policy accept;\n    iifname != \"{pp}*\" accept\n    ether type arp accept\n    icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }} accept"
        );
        for (v4, v6) in &self.orgs {
            let _ = writeln!(s, "    ip saddr {v4} ip daddr {v4} accept");
            let _ = writeln!(s, "    ip6 saddr {v6} ip6 daddr {v6} accept");
        }
        let _ = writeln!(s, "    drop\n  }}\n}}");
        s
    }
}

fn join(addrs: &[&IpAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn set_decl(s: &mut String, name: &str, ty: &str, flags: &str, elements: &[String]) {
    let _ = write!(s, "  set {name} {{\n    type {ty}; flags {flags};\n");
    if !elements.is_empty() {
        let _ = writeln!(s, "    elements = {{ {} }}", elements.join(", "));
    }
    let _ = writeln!(s, "  }}");
}

/// Runs `nft -f -` with `script`.
pub fn nft(script: &str) -> Result<(), NetError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NetError::Nft(format!("running nft: {e}")))?;
    child
        .stdin
        .take()
        .ok_or_else(|| NetError::Nft("nft has no stdin".into()))?
        .write_all(script.as_bytes())
        .map_err(|e| NetError::Nft(format!("writing to nft: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| NetError::Nft(format!("waiting for nft: {e}")))?;
    if !out.status.success() {
        return Err(NetError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Adds addresses learned from DNS to an app's timeout sets.
pub fn add_learned(table: &str, app: usize, addrs: &[(IpAddr, Duration)]) -> Result<(), NetError> {
    let mut s = String::new();
    for (addr, ttl) in addrs {
        let set = if addr.is_ipv4() { set4(app) } else { set6(app) };
        let _ = writeln!(
            s,
            "add element inet {table} {set} {{ {addr} timeout {}s }}",
            ttl.as_secs().max(1)
        );
    }
    if s.is_empty() {
        return Ok(());
    }
    nft(&s)
}

/// Removes both tables; absent is fine.
pub fn remove(table: &str) -> Result<(), NetError> {
    nft(&format!(
        "table inet {table} {{}}\ndelete table inet {table}\ntable bridge {table} {{}}\ndelete table bridge {table}\n"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules {
            table: "hangar_test".into(),
            bridge: "hgtest".into(),
            port_prefix: "habcd".into(),
            range4: "10.9.0.0/16".parse().unwrap(),
            range6: "fd00:1:2::/48".parse().unwrap(),
            gateway4: "10.9.0.1".parse().unwrap(),
            gateway6: "fd00:1:2::1".parse().unwrap(),
            dns_port: 53,
            orgs: vec![(
                "10.9.1.0/24".parse().unwrap(),
                "fd00:1:2:1::/64".parse().unwrap(),
            )],
            apps: vec![AppRule {
                index: 0,
                machines: vec![
                    "10.9.1.1".parse().unwrap(),
                    "fd00:1:2:1::1".parse().unwrap(),
                ],
                nets: vec!["192.0.2.0/24".parse().unwrap()],
                learned: vec![("198.51.100.7".parse().unwrap(), Duration::from_secs(60))],
            }],
            ports: vec![(
                "habcd123".into(),
                "10.9.1.1".parse().unwrap(),
                "fd00:1:2:1::1".parse().unwrap(),
            )],
        }
    }

    #[test]
    fn render_keeps_orgs_apart_and_sends_policy_apps_to_their_chain() {
        let s = rules().render();
        assert!(s.contains("ip saddr 10.9.1.0/24 ip daddr 10.9.1.0/24 accept"));
        assert!(s.contains("ip saddr { 10.9.1.1 } jump app0"));
        assert!(s.contains("ip6 saddr { fd00:1:2:1::1 } jump app0"));
        assert!(s.contains("elements = { 192.0.2.0/24 }"));
        assert!(s.contains("198.51.100.7 timeout 60s"));
    }

    /// The rendered script is accepted by the real nft in check mode (`-c`), which
    /// loads nothing.
    #[test]
    fn nft_accepts_the_rendered_script() {
        if Command::new("nft").arg("--version").output().is_err() {
            eprintln!("skipped: nft is not installed");
            return;
        }
        let out = Command::new("nft")
            .args(["-c", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(rules().render().as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
