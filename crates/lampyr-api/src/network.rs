//! Destinations a function's outbound network may reach beyond the
//! default: the manifest's `allow = ["10.0.0.5:5432", "127.0.0.1:6379"]`.
//!
//! A rule is an IPv4 address or network (`10.0.0.5`, `10.0.0.0/8`), or
//! `localhost`, each with an optional port. It opens a destination that
//! `network = "egress"` otherwise refuses: private ranges, link-local
//! addresses, this host's own addresses, and its loopback (which a function
//! reaches as `host.lampyr.internal`, the gateway of its network).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One `allow` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AllowRule {
    pub addr: Ipv4Addr,
    /// Prefix length of the network (32 for one address).
    pub prefix: u8,
    /// Any port when `None`.
    pub port: Option<u16>,
}

impl AllowRule {
    /// Whether the rule lets a connection to `addr:port` through.
    pub fn matches(&self, addr: Ipv4Addr, port: u16) -> bool {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        (u32::from(addr) & mask) == (u32::from(self.addr) & mask)
            && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.prefix != 32 {
            write!(f, "/{}", self.prefix)?;
        }
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl FromStr for AllowRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("\"{s}\" {why}: write an IPv4 address or network with an optional port, e.g. \"10.0.0.5:5432\", \"10.1.0.0/16\" or \"127.0.0.1:6379\"")
        };
        if s.starts_with('[') || s.matches(':').count() > 1 {
            return Err(bad("is an IPv6 destination, which egress does not route"));
        }
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p
                    .parse()
                    .map_err(|_| bad("has a port that is not a number from 1 to 65535"))?;
                if port == 0 {
                    return Err(bad("has port 0"));
                }
                (h, Some(port))
            }
            None => (s, None),
        };
        let (addr, prefix) = match host.split_once('/') {
            Some((a, p)) => {
                let prefix: u8 = p
                    .parse()
                    .ok()
                    .filter(|p| *p <= 32)
                    .ok_or_else(|| bad("has a prefix length that is not 0 to 32"))?;
                (a, prefix)
            }
            None => (host, 32),
        };
        let addr: Ipv4Addr = if addr == "localhost" {
            Ipv4Addr::LOCALHOST
        } else {
            addr.parse()
                .map_err(|_| bad("is not an IPv4 address (host names are not accepted)"))?
        };
        let mask = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        if u32::from(addr) & !mask != 0 {
            return Err(bad("has bits set past its prefix length"));
        }
        Ok(AllowRule { addr, prefix, port })
    }
}

impl Serialize for AllowRule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AllowRule {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_print_and_match() {
        let r: AllowRule = "10.0.0.5:5432".parse().unwrap();
        assert!(r.matches(Ipv4Addr::new(10, 0, 0, 5), 5432));
        assert!(!r.matches(Ipv4Addr::new(10, 0, 0, 5), 5433));
        assert!(!r.matches(Ipv4Addr::new(10, 0, 0, 6), 5432));
        assert_eq!(r.to_string(), "10.0.0.5:5432");
        let n: AllowRule = "10.1.0.0/16".parse().unwrap();
        assert!(n.matches(Ipv4Addr::new(10, 1, 200, 3), 1));
        assert!(!n.matches(Ipv4Addr::new(10, 2, 0, 1), 1));
        assert_eq!(n.to_string(), "10.1.0.0/16");
        let l: AllowRule = "localhost:6379".parse().unwrap();
        assert_eq!(l.to_string(), "127.0.0.1:6379");
        let all: AllowRule = "0.0.0.0/0".parse().unwrap();
        assert!(all.matches(Ipv4Addr::new(192, 168, 1, 1), 80));
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        for (s, why) in [
            ("db.internal:5432", "not an IPv4 address"),
            ("10.0.0.5:99999", "port"),
            ("10.0.0.5:0", "port 0"),
            ("10.0.0.0/33", "prefix"),
            ("10.0.0.1/8", "bits set"),
            ("[::1]:80", "IPv6"),
            ("::1", "IPv6"),
        ] {
            let e = s.parse::<AllowRule>().unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
