//! hangar's DNS server on the bridge gateway: `.internal` names for machines, and
//! everything else forwarded to the host's resolvers.
//!
//! Who asks decides what they see: the source address names the asking machine, and
//! it is answered only with names of its own org. Machines of apps with a domain
//! allowlist get their forwarded answers for allowed names added to the app's egress
//! sets (with the answer's TTL) before the answer is sent, so the connection that
//! follows the lookup is let through.
//!
//! Names:
//! - `<app>.internal`: AAAA/A of the app's started machines;
//! - `<machine-id>.vm.<app>.internal`: AAAA/A of one machine;
//! - `_apps.internal` TXT: the app names of the asker's org.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, TXT};
use hickory_proto::rr::{RData, Record, RecordType};
use tokio::net::UdpSocket;

use crate::NetError;

const INTERNAL_TTL: u32 = 5;
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// Learned addresses stay at least this long, so a short TTL does not break a
/// connection set up right after the lookup.
const MIN_LEARNED: Duration = Duration::from_secs(60);

/// One machine the DNS knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub machine_id: String,
    pub app: String,
    pub org: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub started: bool,
}

/// The names the server answers for, replaced whole on every sync.
#[derive(Debug, Default)]
pub struct Directory {
    pub machines: Vec<Entry>,
    /// Apps whose answers feed their egress sets: app -> (allowed domains, set index).
    pub allow_domains: HashMap<String, (Vec<String>, usize)>,
}

/// What the server does with addresses it learned for an app.
pub trait Learner: Send + Sync + 'static {
    fn learned(&self, app_index: usize, addrs: Vec<(IpAddr, Duration)>);
}

pub struct DnsServer {
    pub directory: Arc<RwLock<Directory>>,
    pub upstreams: Vec<SocketAddr>,
    pub learner: Arc<dyn Learner>,
}

/// The host's resolvers, from `resolv.conf` text.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|a| a.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Is `name` (lower case, no trailing dot) `domain` or below it?
pub fn domain_matches(name: &str, domain: &str) -> bool {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    name == domain || name.ends_with(&format!(".{domain}"))
}

impl DnsServer {
    /// Serves on `sockets` until the task is aborted.
    pub async fn serve(self: Arc<Self>, socket: UdpSocket) {
        let socket = Arc::new(socket);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, peer) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "dns: receiving");
                    continue;
                }
            };
            let query = buf[..n].to_vec();
            let server = self.clone();
            let socket = socket.clone();
            tokio::spawn(async move {
                if let Some(reply) = server.answer(&query, peer.ip()).await {
                    let _ = socket.send_to(&reply, peer).await;
                }
            });
        }
    }

    /// The reply to `query` from `from`, or `None` to stay silent.
    pub async fn answer(&self, query: &[u8], from: IpAddr) -> Option<Vec<u8>> {
        let request = Message::from_vec(query).ok()?;
        let q = request.queries().first()?.clone();
        let name = q.name().to_lowercase().to_ascii();
        let name = name.trim_end_matches('.').to_string();
        let mut reply = Message::new();
        reply
            .set_id(request.id())
            .set_message_type(MessageType::Response)
            .set_op_code(request.op_code())
            .set_recursion_desired(request.recursion_desired())
            .set_recursion_available(true)
            .add_query(q.clone());

        let asker = self.asker(from);
        let Some((org, app)) = asker else {
            reply.set_response_code(ResponseCode::Refused);
            return reply.to_vec().ok();
        };
        if name == "internal" || name.ends_with(".internal") {
            reply.set_authoritative(true);
            match self.internal(&org, &name, q.query_type()) {
                Some(records) => {
                    for r in records {
                        reply.add_answer(Record::from_rdata(q.name().clone(), INTERNAL_TTL, r));
                    }
                }
                None => {
                    reply.set_response_code(ResponseCode::NXDomain);
                }
            }
            return reply.to_vec().ok();
        }
        let answer = self.forward(query).await;
        match answer {
            Some(bytes) => {
                self.learn(&app, &name, &bytes);
                Some(bytes)
            }
            None => {
                reply.set_response_code(ResponseCode::ServFail);
                reply.to_vec().ok()
            }
        }
    }

    fn asker(&self, from: IpAddr) -> Option<(String, String)> {
        let dir = self.directory.read().ok()?;
        dir.machines
            .iter()
            .find(|m| IpAddr::V4(m.ipv4) == from || IpAddr::V6(m.ipv6) == from)
            .map(|m| (m.org.clone(), m.app.clone()))
    }

    /// Records for an `.internal` name in `org`; `None` when the name does not exist.
    fn internal(&self, org: &str, name: &str, qtype: RecordType) -> Option<Vec<RData>> {
        let dir = self.directory.read().ok()?;
        let in_org = dir.machines.iter().filter(|m| m.org == org);
        if name == "_apps.internal" {
            let apps: BTreeSet<&str> = in_org.map(|m| m.app.as_str()).collect();
            return Some(if qtype == RecordType::TXT {
                vec![RData::TXT(TXT::new(vec![
                    apps.into_iter().collect::<Vec<_>>().join(","),
                ]))]
            } else {
                Vec::new()
            });
        }
        let stem = name.strip_suffix(".internal")?;
        let chosen: Vec<&Entry> = match stem.split_once(".vm.") {
            Some((id, app)) => in_org
                .filter(|m| m.app == app && m.machine_id == id)
                .collect(),
            None => {
                let all: Vec<&Entry> = in_org.filter(|m| m.app == stem).collect();
                if all.is_empty() {
                    return None;
                }
                all.into_iter().filter(|m| m.started).collect::<Vec<_>>()
            }
        };
        if chosen.is_empty() && stem.contains(".vm.") {
            return None;
        }
        let by_id: BTreeMap<&str, &Entry> =
            chosen.iter().map(|m| (m.machine_id.as_str(), *m)).collect();
        Some(
            by_id
                .values()
                .filter_map(|m| match qtype {
                    RecordType::A => Some(RData::A(A(m.ipv4))),
                    RecordType::AAAA => Some(RData::AAAA(AAAA(m.ipv6))),
                    _ => None,
                })
                .collect(),
        )
    }

    async fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        for upstream in &self.upstreams {
            let bind: SocketAddr = if upstream.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let Ok(sock) = UdpSocket::bind(bind).await else {
                continue;
            };
            if sock.send_to(query, upstream).await.is_err() {
                continue;
            }
            let mut buf = vec![0u8; 4096];
            if let Ok(Ok((n, from))) =
                tokio::time::timeout(FORWARD_TIMEOUT, sock.recv_from(&mut buf)).await
                && from == *upstream
            {
                buf.truncate(n);
                return Some(buf);
            }
        }
        None
    }

    fn learn(&self, app: &str, name: &str, answer: &[u8]) {
        let index = {
            let Ok(dir) = self.directory.read() else {
                return;
            };
            match dir.allow_domains.get(app) {
                Some((domains, index)) if domains.iter().any(|d| domain_matches(name, d)) => *index,
                _ => return,
            }
        };
        let Ok(msg) = Message::from_vec(answer) else {
            return;
        };
        let addrs: Vec<(IpAddr, Duration)> = msg
            .answers()
            .iter()
            .filter_map(|r| {
                let ttl = Duration::from_secs(r.ttl().into()).max(MIN_LEARNED);
                match r.data() {
                    RData::A(a) => Some((IpAddr::V4(a.0), ttl)),
                    RData::AAAA(a) => Some((IpAddr::V6(a.0), ttl)),
                    _ => None,
                }
            })
            .collect();
        if !addrs.is_empty() {
            self.learner.learned(index, addrs);
        }
    }
}

/// Binds the server's socket on `addr`.
pub async fn bind(addr: SocketAddr) -> Result<UdpSocket, NetError> {
    UdpSocket::bind(addr)
        .await
        .map_err(|e| NetError::Dns(format!("binding {addr}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    struct NoLearn;
    impl Learner for NoLearn {
        fn learned(&self, _: usize, _: Vec<(IpAddr, Duration)>) {}
    }

    fn entry(id: &str, app: &str, org: &str, n: u8, started: bool) -> Entry {
        Entry {
            machine_id: id.into(),
            app: app.into(),
            org: org.into(),
            ipv4: Ipv4Addr::new(10, 0, 1, n),
            ipv6: format!("fd00::{n}").parse().unwrap(),
            started,
        }
    }

    fn server() -> DnsServer {
        DnsServer {
            directory: Arc::new(RwLock::new(Directory {
                machines: vec![
                    entry("m1", "web", "acme", 1, true),
                    entry("m2", "web", "acme", 2, false),
                    entry("m3", "db", "acme", 3, true),
                    entry("m9", "spy", "other", 9, true),
                ],
                allow_domains: HashMap::new(),
            })),
            upstreams: Vec::new(),
            learner: Arc::new(NoLearn),
        }
    }

    async fn ask(s: &DnsServer, from: u8, name: &str, t: RecordType) -> Message {
        let mut m = Message::new();
        m.set_id(7)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let from = IpAddr::V4(Ipv4Addr::new(10, 0, 1, from));
        Message::from_vec(&s.answer(&m.to_vec().unwrap(), from).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn an_app_name_gives_its_started_machines() {
        let s = server();
        let r = ask(&s, 3, "web.internal.", RecordType::A).await;
        assert_eq!(r.id(), 7);
        let got: Vec<_> = r.answers().iter().map(|a| a.data().clone()).collect();
        assert_eq!(got, vec![RData::A(A(Ipv4Addr::new(10, 0, 1, 1)))]);
        let r = ask(&s, 3, "m2.vm.web.internal", RecordType::AAAA).await;
        assert_eq!(r.answers().len(), 1);
    }

    #[tokio::test]
    async fn another_orgs_names_do_not_exist_for_the_asker() {
        let s = server();
        let r = ask(&s, 9, "web.internal", RecordType::A).await;
        assert_eq!(r.response_code(), ResponseCode::NXDomain);
        let r = ask(&s, 9, "_apps.internal", RecordType::TXT).await;
        let txt = r.answers()[0].data().clone();
        assert_eq!(txt, RData::TXT(TXT::new(vec!["spy".into()])));
    }

    #[tokio::test]
    async fn strangers_are_refused() {
        let s = server();
        let r = ask(&s, 200, "web.internal", RecordType::A).await;
        assert_eq!(r.response_code(), ResponseCode::Refused);
    }

    type Learned = Vec<(usize, Vec<(IpAddr, Duration)>)>;
    struct Seen(std::sync::Mutex<Learned>);
    impl Learner for Seen {
        fn learned(&self, app: usize, addrs: Vec<(IpAddr, Duration)>) {
            self.0.lock().unwrap().push((app, addrs));
        }
    }

    /// An upstream on loopback answering every A query with 192.0.2.7.
    async fn fake_upstream() -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                let q = Message::from_vec(&buf[..n]).unwrap();
                let mut r = Message::new();
                r.set_id(q.id()).set_message_type(MessageType::Response);
                let query = q.queries()[0].clone();
                r.add_answer(Record::from_rdata(
                    query.name().clone(),
                    30,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, 7))),
                ));
                r.add_query(query);
                let _ = sock.send_to(&r.to_vec().unwrap(), peer).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn answers_for_allowed_domains_feed_the_apps_set_before_the_reply() {
        let mut s = server();
        s.upstreams = vec![fake_upstream().await];
        let learned = Arc::new(Seen(std::sync::Mutex::new(Vec::new())));
        s.learner = learned.clone();
        s.directory
            .write()
            .unwrap()
            .allow_domains
            .insert("web".into(), (vec!["example.com".into()], 4));

        let r = ask(&s, 1, "api.example.com", RecordType::A).await;
        assert_eq!(r.answers().len(), 1, "the upstream's answer is passed on");
        {
            let got = learned.0.lock().unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, 4);
            assert_eq!(got[0].1[0].0, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)));
            assert!(got[0].1[0].1 >= MIN_LEARNED);
        }
        // A name not on the list, or an app without a list, learns nothing.
        ask(&s, 1, "other.org", RecordType::A).await;
        ask(&s, 3, "api.example.com", RecordType::A).await;
        assert_eq!(learned.0.lock().unwrap().len(), 1);
    }

    #[test]
    fn resolv_conf_and_domains() {
        let ups =
            parse_resolv_conf("# x\nnameserver 10.1.2.3\nnameserver fe80::1%eth0\nsearch a\n");
        assert_eq!(ups.len(), 2);
        assert!(domain_matches("api.example.com", "example.com"));
        assert!(domain_matches("example.com", "Example.COM."));
        assert!(!domain_matches("badexample.com", "example.com"));
    }
}
