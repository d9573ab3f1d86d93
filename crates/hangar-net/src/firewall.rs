//! The installation's nftables tables: one `inet` table (machines off the host,
//! egress policy, masquerade) and one `bridge` table (orgs apart on the bridge).
//!
//! The ruleset is rendered in full from a [`Rules`] and loaded with one `nft -f`
//! transaction that deletes and recreates both tables, so applying is atomic and
//! idempotent and a restarted daemon rebuilds exactly what it had. Machines live in
//! named sets (per app with a policy, and per bridge port), so a machine coming or
//! going is one `nft -f` batch of `add element`/`delete element` ([`Rules::delta`])
//! instead of a rebuild. Addresses the DNS server learns for allowed domain names go
//! into timeout sets with `add element`.

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

/// The set of an app's machine addresses whose egress goes through its policy.
fn machines_set(app: usize, addr: &IpAddr) -> String {
    match addr {
        IpAddr::V4(_) => format!("app{app}_m4"),
        IpAddr::V6(_) => format!("app{app}_m6"),
    }
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
            let (m4, m6): (Vec<_>, Vec<_>) = app.machines.iter().partition(|a| a.is_ipv4());
            let strings = |v: Vec<&IpAddr>| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
            set_decl(&mut s, &format!("app{i}_m4"), "ipv4_addr", "", &strings(m4));
            set_decl(&mut s, &format!("app{i}_m6"), "ipv6_addr", "", &strings(m6));
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
            let _ = writeln!(s, "    ip saddr @app{i}_m4 jump app{i}");
            let _ = writeln!(s, "    ip6 saddr @app{i}_m6 jump app{i}");
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
        let (src4, src6): (Vec<String>, Vec<String>) = self.ports.iter().map(port_elements).unzip();
        let _ = writeln!(s, "table bridge {t} {{");
        set_decl(&mut s, "src4", "ifname . ipv4_addr", "", &src4);
        set_decl(&mut s, "src6", "ifname . ipv6_addr", "", &src6);
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

impl Rules {
    /// What stays put while machines come and go: everything but the machines' own
    /// elements (and learned addresses, which have their own path).
    fn skeleton(&self) -> Rules {
        let mut r = self.clone();
        r.ports.clear();
        for app in &mut r.apps {
            app.machines.clear();
            app.learned.clear();
        }
        r
    }

    /// The `nft -f` batch that turns the loaded `self` into `next` by adding and
    /// deleting set elements; `None` when more than machines changed (orgs, policies),
    /// which needs [`Rules::render`]. An empty batch means nothing to do.
    pub fn delta(&self, next: &Rules) -> Option<String> {
        use std::collections::BTreeSet;
        if self.skeleton() != next.skeleton() {
            return None;
        }
        let t = &self.table;
        let mut s = String::new();
        let ports = |r: &Rules| r.ports.iter().map(port_elements).collect::<BTreeSet<_>>();
        let (old, new) = (ports(self), ports(next));
        for ((e4, e6), verb) in old
            .difference(&new)
            .map(|e| (e, "delete"))
            .chain(new.difference(&old).map(|e| (e, "add")))
        {
            let _ = writeln!(s, "{verb} element bridge {t} src4 {{ {e4} }}");
            let _ = writeln!(s, "{verb} element bridge {t} src6 {{ {e6} }}");
        }
        for (was, now) in self.apps.iter().zip(&next.apps) {
            let (old, new): (BTreeSet<_>, BTreeSet<_>) =
                (was.machines.iter().collect(), now.machines.iter().collect());
            for (addr, verb) in old
                .difference(&new)
                .map(|a| (a, "delete"))
                .chain(new.difference(&old).map(|a| (a, "add")))
            {
                let set = machines_set(now.index, addr);
                let _ = writeln!(s, "{verb} element inet {t} {set} {{ {addr} }}");
            }
        }
        Some(s)
    }
}

/// A bridge port's elements in the `src4` and `src6` sets.
fn port_elements(
    (port, v4, v6): &(String, std::net::Ipv4Addr, std::net::Ipv6Addr),
) -> (String, String) {
    (format!("\"{port}\" . {v4}"), format!("\"{port}\" . {v6}"))
}

fn set_decl(s: &mut String, name: &str, ty: &str, flags: &str, elements: &[String]) {
    let _ = write!(s, "  set {name} {{\n    type {ty};");
    if !flags.is_empty() {
        let _ = write!(s, " flags {flags};");
    }
    let _ = writeln!(s);
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
        assert!(s.contains("ip saddr @app0_m4 jump app0"));
        assert!(s.contains("ip6 saddr @app0_m6 jump app0"));
        assert!(s.contains("elements = { 10.9.1.1 }"));
        assert!(s.contains("elements = { 192.0.2.0/24 }"));
        assert!(s.contains("198.51.100.7 timeout 60s"));
    }

    fn with_second_machine() -> Rules {
        let mut r = rules();
        r.apps[0].machines.push("10.9.1.2".parse().unwrap());
        r.apps[0].machines.push("fd00:1:2:1::2".parse().unwrap());
        r.ports.push((
            "habcd456".into(),
            "10.9.1.2".parse().unwrap(),
            "fd00:1:2:1::2".parse().unwrap(),
        ));
        r
    }

    #[test]
    fn machines_coming_and_going_are_set_elements() {
        let (one, two) = (rules(), with_second_machine());
        let add = one.delta(&two).unwrap();
        assert!(
            add.contains("add element inet hangar_test app0_m4 { 10.9.1.2 }"),
            "{add}"
        );
        assert!(add.contains("add element inet hangar_test app0_m6 { fd00:1:2:1::2 }"));
        assert!(add.contains("add element bridge hangar_test src4 { \"habcd456\" . 10.9.1.2 }"));
        assert!(!add.contains("delete"), "{add}");
        let remove = two.delta(&one).unwrap();
        assert!(
            remove.contains(
                "delete element bridge hangar_test src6 { \"habcd456\" . fd00:1:2:1::2 }"
            )
        );
        assert!(!remove.contains("add"), "{remove}");
        assert_eq!(one.delta(&one).unwrap(), "");
        // Learned addresses have their own path and change nothing here.
        let mut learned = one.clone();
        learned.apps[0].learned.clear();
        assert_eq!(one.delta(&learned).unwrap(), "");
    }

    #[test]
    fn policy_and_org_changes_need_a_rebuild() {
        let mut policy = rules();
        policy.apps[0].nets.clear();
        assert_eq!(rules().delta(&policy), None);
        let mut org = rules();
        org.orgs.push((
            "10.9.2.0/24".parse().unwrap(),
            "fd00:1:2:2::/64".parse().unwrap(),
        ));
        assert_eq!(rules().delta(&org), None);
    }

    /// A delta loads into the real kernel tables it was computed against.
    #[test]
    fn deltas_apply_to_loaded_tables() {
        if Command::new("nft")
            .args(["list", "tables"])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            eprintln!("skipped: nft cannot change tables here (needs root)");
            return;
        }
        let table = format!("hangar_fwtest{}", std::process::id());
        let (mut one, mut two) = (rules(), with_second_machine());
        one.table = table.clone();
        two.table = table.clone();
        nft(&one.render()).unwrap();
        let listed = |set: &str, family: &str| {
            let out = Command::new("nft")
                .args(["list", "set", family, &table, set])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let result = std::panic::catch_unwind(|| {
            nft(&one.delta(&two).unwrap()).unwrap();
            assert!(listed("app0_m4", "inet").contains("10.9.1.2"));
            assert!(listed("src6", "bridge").contains("habcd456"));
            nft(&two.delta(&one).unwrap()).unwrap();
            assert!(!listed("app0_m4", "inet").contains("10.9.1.2"));
            assert!(!listed("src4", "bridge").contains("habcd456"));
            assert!(listed("src4", "bridge").contains("habcd123"));
        });
        remove(&table).unwrap();
        result.unwrap();
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
