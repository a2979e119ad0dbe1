//! Where an instance's packets may go: the decision for each new TCP
//! connection and UDP flow, by its destination.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use lampyr_api::AllowRule;

/// The instance network's fixed addresses (see `lampyr_sandbox::net`).
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
pub const DNS: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 3);

/// What an instance may reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// False for an instance not yet given a function (a pooled one):
    /// nothing gets out.
    pub open: bool,
    /// Destinations let through that are otherwise refused.
    pub allow: Vec<AllowRule>,
}

impl Policy {
    /// The policy of a function with `network = "egress"` and `allow`.
    pub fn egress(allow: &[AllowRule]) -> Policy {
        Policy {
            open: true,
            allow: allow.to_vec(),
        }
    }

    fn allows(&self, addr: Ipv4Addr, port: u16) -> bool {
        self.allow.iter().any(|r| r.matches(addr, port))
    }

    /// Where a connection to `dst` goes on the host, or why it may not.
    /// `host` are this host's own addresses; `dns` its resolvers.
    pub fn decide(
        &self,
        dst: SocketAddrV4,
        host: &[Ipv4Addr],
        dns: &[SocketAddr],
    ) -> Result<SocketAddr, Refusal> {
        if !self.open {
            return Err(Refusal::NotReady);
        }
        let (ip, port) = (*dst.ip(), dst.port());
        if ip == DNS {
            return match (port, dns.first()) {
                (53, Some(r)) => Ok(*r),
                (53, None) => Err(Refusal::NoResolver),
                _ => Err(Refusal::InstanceNetwork),
            };
        }
        if ip == GATEWAY {
            // host.lampyr.internal: the host's loopback, where allowed.
            return if self.allows(Ipv4Addr::LOCALHOST, port) {
                Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
            } else {
                Err(Refusal::HostLoopback)
            };
        }
        if in_net(ip, Ipv4Addr::new(10, 0, 2, 0), 24) {
            return Err(Refusal::InstanceNetwork);
        }
        if self.allows(ip, port) && !ip.is_loopback() {
            return Ok(SocketAddr::V4(dst));
        }
        if ip.is_loopback() {
            return Err(Refusal::Loopback);
        }
        if host.contains(&ip) {
            return Err(Refusal::ThisHost);
        }
        if ip.is_private() || in_net(ip, Ipv4Addr::new(100, 64, 0, 0), 10) {
            return Err(Refusal::Private);
        }
        if ip.is_link_local() {
            return Err(Refusal::LinkLocal);
        }
        if ip.is_unspecified()
            || ip.is_broadcast()
            || ip.is_multicast()
            || in_net(ip, Ipv4Addr::new(0, 0, 0, 0), 8)
            || in_net(ip, Ipv4Addr::new(240, 0, 0, 0), 4)
        {
            return Err(Refusal::Reserved);
        }
        Ok(SocketAddr::V4(dst))
    }
}

fn in_net(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX << (32 - u32::from(prefix));
    u32::from(ip) & mask == u32::from(net) & mask
}

/// Why a destination was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The instance has no function yet.
    NotReady,
    /// A private range (RFC 1918, or shared address space).
    Private,
    /// A link-local address (cloud metadata services live there).
    LinkLocal,
    /// One of this host's own addresses.
    ThisHost,
    /// A loopback address other than the instance's own.
    Loopback,
    /// `host.lampyr.internal`, the host's loopback, on a port not allowed.
    HostLoopback,
    /// The instance network itself (other than DNS).
    InstanceNetwork,
    /// Multicast, broadcast or reserved.
    Reserved,
    /// A DNS query, with no resolver configured.
    NoResolver,
    /// The instance has as many connections or flows open as it may.
    TooMany,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::NotReady => "the instance has no function yet",
            Refusal::Private => "a private address",
            Refusal::LinkLocal => "a link-local address",
            Refusal::ThisHost => "an address of the server's host",
            Refusal::Loopback => "a loopback address",
            Refusal::HostLoopback => "the host's loopback (host.lampyr.internal)",
            Refusal::InstanceNetwork => "the instance's own network",
            Refusal::Reserved => "a multicast, broadcast or reserved address",
            Refusal::NoResolver => "DNS, and the server has no resolver configured",
            Refusal::TooMany => "one connection too many for this instance",
        })
    }
}

impl Refusal {
    /// What to write in `allow` to let the destination through, when
    /// allowing it is possible.
    pub fn hint(&self, dst: SocketAddrV4) -> Option<String> {
        match self {
            Refusal::Private | Refusal::LinkLocal | Refusal::ThisHost => {
                Some(format!("allow = [\"{dst}\"]"))
            }
            Refusal::HostLoopback => Some(format!("allow = [\"127.0.0.1:{}\"]", dst.port())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> SocketAddrV4 {
        s.parse().unwrap()
    }

    #[test]
    fn the_default_reaches_the_internet_and_nothing_of_the_host() {
        let p = Policy::egress(&[]);
        let host = [Ipv4Addr::new(198, 51, 100, 1), Ipv4Addr::new(172, 17, 0, 5)];
        let dns: Vec<SocketAddr> = vec!["198.51.100.2:53".parse().unwrap()];
        let ok = |d: &str| p.decide(v4(d), &host, &dns);
        assert_eq!(
            ok("203.0.113.7:443"),
            Ok("203.0.113.7:443".parse().unwrap())
        );
        assert_eq!(ok("10.0.2.3:53"), Ok(dns[0]));
        assert_eq!(ok("10.0.2.3:80"), Err(Refusal::InstanceNetwork));
        assert_eq!(ok("10.0.2.2:8080"), Err(Refusal::HostLoopback));
        assert_eq!(ok("10.0.2.7:22"), Err(Refusal::InstanceNetwork));
        assert_eq!(ok("198.51.100.1:8080"), Err(Refusal::ThisHost));
        assert_eq!(ok("127.0.0.1:8080"), Err(Refusal::Loopback));
        assert_eq!(ok("10.1.2.3:5432"), Err(Refusal::Private));
        assert_eq!(ok("172.17.0.5:80"), Err(Refusal::ThisHost));
        assert_eq!(ok("192.168.1.1:80"), Err(Refusal::Private));
        assert_eq!(ok("100.64.0.1:80"), Err(Refusal::Private));
        assert_eq!(ok("169.254.169.254:80"), Err(Refusal::LinkLocal));
        assert_eq!(ok("224.0.0.1:5353"), Err(Refusal::Reserved));
        assert_eq!(ok("0.1.2.3:80"), Err(Refusal::Reserved));
        assert_eq!(ok("255.255.255.255:67"), Err(Refusal::Reserved));
        assert_eq!(
            Policy::default().decide(v4("203.0.113.7:443"), &host, &dns),
            Err(Refusal::NotReady)
        );
        assert_eq!(
            Policy::egress(&[]).decide(v4("10.0.2.3:53"), &host, &[]),
            Err(Refusal::NoResolver)
        );
    }

    #[test]
    fn allowed_destinations_get_through() {
        let rules: Vec<AllowRule> = ["10.0.0.5:5432", "127.0.0.1:6379", "198.51.100.0/24"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let p = Policy::egress(&rules);
        let host = [Ipv4Addr::new(198, 51, 100, 1)];
        let d = |s: &str| p.decide(v4(s), &host, &[]);
        assert_eq!(d("10.0.0.5:5432"), Ok("10.0.0.5:5432".parse().unwrap()));
        assert_eq!(d("10.0.0.5:5433"), Err(Refusal::Private));
        assert_eq!(d("10.0.2.2:6379"), Ok("127.0.0.1:6379".parse().unwrap()));
        assert_eq!(d("10.0.2.2:6380"), Err(Refusal::HostLoopback));
        // An allowed network may hold a host address: allowing it is asking for it.
        assert_eq!(d("198.51.100.1:80"), Ok("198.51.100.1:80".parse().unwrap()));
        // Loopback only through host.lampyr.internal.
        assert_eq!(d("127.0.0.1:6379"), Err(Refusal::Loopback));
        assert_eq!(
            Refusal::Private.hint(v4("10.0.0.5:5433")).unwrap(),
            "allow = [\"10.0.0.5:5433\"]"
        );
    }
}
