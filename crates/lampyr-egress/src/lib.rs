//! Outbound networking for instances (`network = "egress"`, the default):
//! lampyr itself is the other end of every instance's `eth0`.
//!
//! The sandbox gives each instance a network namespace with a TUN device
//! (`lampyr_sandbox::net`); the host keeps the device's descriptor and
//! hands it to [`Egress::attach`]. From then on every packet the instance
//! sends off its loopback reaches lampyr, which:
//!
//! * answers TCP with a userspace endpoint and, for each new connection,
//!   connects to the destination from the host first (`stack.rs`);
//! * relays UDP flows through sockets of its own (`udp.rs`), DNS included:
//!   queries to the instance's resolver (`10.0.2.3`) go to the host's
//!   resolvers;
//! * decides every destination by [`Policy`]: the internet yes; this host,
//!   its loopback, private and link-local ranges, and the instance network
//!   no, unless the function's `allow` names them. A refused connection is
//!   reset at once and said in the function's log.
//!
//! Nothing is configured on the host's own network: no route, bridge,
//! NAT rule or forwarding. An instance cannot reach other instances (each
//! has its own link and nothing listens for it), nor the host's abstract
//! Unix sockets (they belong to the host's network namespace). ICMP goes
//! no further than the gateway; IPv6 is not routed.
#![forbid(unsafe_code)]

mod policy;
mod stack;
mod udp;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

pub use policy::{Policy, Refusal, DNS, GATEWAY, GUEST};

/// Settings of the egress network.
#[derive(Debug, Clone)]
pub struct EgressConfig {
    /// The resolvers DNS queries go to, in order of preference.
    pub dns: Vec<SocketAddr>,
    /// Most TCP connections one instance may have open (or opening).
    pub max_tcp: usize,
    /// Most UDP flows one instance may have.
    pub max_udp_flows: usize,
    /// How long connecting to a destination may take.
    pub connect_timeout: Duration,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            dns: Vec::new(),
            max_tcp: 256,
            max_udp_flows: 64,
            connect_timeout: Duration::from_secs(30),
        }
    }
}

/// The nameservers of a `resolv.conf` (port 53).
pub fn resolv_conf_servers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| {
            rest.trim()
                .split('%')
                .next()?
                .parse::<std::net::IpAddr>()
                .ok()
        })
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The egress network of a server: what every instance's link shares.
#[derive(Debug)]
pub struct Egress {
    cfg: EgressConfig,
    /// This host's IPv4 addresses, read at most every two seconds.
    host: Mutex<(Option<Instant>, Arc<Vec<Ipv4Addr>>)>,
}

/// Told about every destination a link refuses.
pub type OnRefused = Box<dyn Fn(&Refused) + Send + Sync>;

/// A refused connection or flow, for the function's log.
#[derive(Debug, Clone)]
pub struct Refused {
    pub proto: &'static str,
    pub dst: SocketAddrV4,
    pub why: Refusal,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "network: refused a {} connection to {}: {}",
            self.proto, self.dst, self.why
        )?;
        if let Some(h) = self.why.hint(self.dst) {
            write!(f, " (to reach it, add {h} to lampyr.toml)")?;
        }
        Ok(())
    }
}

/// What one link and its task share.
pub(crate) struct LinkShared {
    policy: RwLock<Policy>,
    on_refused: OnRefused,
    /// Destinations reported lately, so a retry loop is reported once a minute.
    reported: Mutex<Vec<(SocketAddrV4, Instant)>>,
}

impl LinkShared {
    fn decide(&self, egress: &Egress, dst: SocketAddrV4) -> Result<SocketAddr, Refusal> {
        let host = egress.host_addrs();
        self.policy.read().decide(dst, &host, &egress.cfg.dns)
    }

    fn refused(&self, proto: &'static str, dst: SocketAddrV4, why: Refusal) {
        if why == Refusal::NotReady {
            return;
        }
        let now = Instant::now();
        {
            let mut seen = self.reported.lock();
            seen.retain(|(_, at)| now.duration_since(*at) < Duration::from_secs(60));
            if seen.iter().any(|(d, _)| *d == dst) || seen.len() >= 32 {
                return;
            }
            seen.push((dst, now));
        }
        (self.on_refused)(&Refused { proto, dst, why });
    }
}

/// One instance's link. Dropping it stops the link and closes the TUN
/// device, which removes the instance's `eth0`.
pub struct Link {
    shared: Arc<LinkShared>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Replaces the link's policy (a pooled instance gets its function's).
    pub fn set_policy(&self, policy: Policy) {
        *self.shared.policy.write() = policy;
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Egress {
    pub fn new(cfg: EgressConfig) -> Arc<Egress> {
        Arc::new(Egress {
            cfg,
            host: Mutex::new((None, Arc::new(Vec::new()))),
        })
    }

    pub fn config(&self) -> &EgressConfig {
        &self.cfg
    }

    /// Starts serving an instance's TUN device under `policy`. Must be
    /// called inside a tokio runtime.
    pub fn attach(
        self: &Arc<Self>,
        tun: lampyr_sandbox::net::Tun,
        policy: Policy,
        on_refused: OnRefused,
    ) -> Link {
        let tun = Arc::new(tun);
        let shared = Arc::new(LinkShared {
            policy: RwLock::new(policy),
            on_refused,
            reported: Mutex::new(Vec::new()),
        });
        let task = tokio::spawn(stack::run(self.clone(), shared.clone(), tun));
        Link { shared, task }
    }

    /// This host's IPv4 addresses, on every interface.
    fn host_addrs(&self) -> Arc<Vec<Ipv4Addr>> {
        let mut h = self.host.lock();
        if h.0.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            return h.1.clone();
        }
        let mut addrs: Vec<Ipv4Addr> = nix::ifaddrs::getifaddrs()
            .map(|it| {
                it.filter_map(|i| i.address)
                    .filter_map(|a| a.as_sockaddr_in().map(|s| s.ip()))
                    .collect()
            })
            .unwrap_or_default();
        addrs.sort();
        addrs.dedup();
        *h = (Some(Instant::now()), Arc::new(addrs));
        h.1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_is_read() {
        let text = "# a comment\nnameserver 198.51.100.2\nsearch example\nnameserver fe80::1%eth0\nnameserver bad\n";
        assert_eq!(
            resolv_conf_servers(text),
            vec![
                "198.51.100.2:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }

    #[test]
    fn refusals_say_how_to_allow() {
        let r = Refused {
            proto: "TCP",
            dst: "10.0.0.5:5432".parse().unwrap(),
            why: Refusal::Private,
        };
        assert_eq!(
            r.to_string(),
            "network: refused a TCP connection to 10.0.0.5:5432: a private address (to reach it, add allow = [\"10.0.0.5:5432\"] to lampyr.toml)"
        );
    }
}
