//! Which addresses are public, and the operator's exceptions (pure: no I/O).
//!
//! [`non_public_range`] names the range a non-public address is in (loopback, private,
//! link-local, CGNAT, documentation, multicast, IPv6 forms embedding any of those ...);
//! [`address_allowed`] lets an address through when it is public or in one of the
//! operator's [`IpNet`]s. [`HostPattern`] is one entry of a host allow-list. Nothing
//! here resolves or connects: [`crate::guard`] applies these checks where connections
//! are made.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use reqwest::Url;

use crate::{Error, Result};

/// Whether a connection to `ip` is allowed: it is in one of `allow_networks`, or it is a
/// public address (see [`non_public_range`]). IPv4-mapped IPv6 addresses
/// (`::ffff:a.b.c.d`) are judged as the IPv4 address they map.
pub fn address_allowed(ip: IpAddr, allow_networks: &[IpNet]) -> bool {
    let canonical = canonical(ip);
    allow_networks
        .iter()
        .any(|net| net.contains(ip) || net.contains(canonical))
        || non_public_range(ip).is_none()
}

/// The non-public range `ip` is in, as a short description (`"loopback"`, `"private"`,
/// `"link-local"` ...), or `None` for a public address. IPv6 addresses embedding an IPv4
/// address (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) are in
/// the range of the embedded address.
pub fn non_public_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_range(v4),
        IpAddr::V6(v6) => v6_range(v6),
    }
}

fn v4_range(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "unspecified (0.0.0.0/8)",
        (10, _, _) => "private",
        (100, 64..=127, _) => "shared (CGNAT 100.64.0.0/10)",
        (127, _, _) => "loopback",
        (169, 254, _) => "link-local",
        (172, 16..=31, _) => "private",
        (192, 0, 0) => "reserved (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (192, 88, 99) => "reserved (6to4 relay)",
        (192, 168, _) => "private",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        _ if ip.is_broadcast() => "broadcast",
        (240..=255, _, _) => "reserved (240.0.0.0/4)",
        _ => return None,
    })
}

fn v6_range(ip: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(ip) {
        return v4_range(v4);
    }
    let s = ip.segments();
    Some(match s[0] {
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_loopback() => "loopback",
        // The rest of ::/96 (IPv4-compatible, deprecated) was handled above; the rest of
        // ::/8 is reserved.
        0 => "reserved (::/8)",
        0x0100 if s[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        0x2001 if s[1] == 0x0db8 => "documentation",
        0x3fff if s[1] < 0x1000 => "documentation",
        x if x & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        x if x & 0xffc0 == 0xfe80 => "link-local",
        x if x & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        x if x & 0xff00 == 0xff00 => "multicast",
        _ => return None,
    })
}

/// The IPv4 address an IPv6 address stands for or routes to, if any.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped ::ffff:a.b.c.d.
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low()),
        // IPv4-compatible ::a.b.c.d (not :: and ::1 themselves).
        [0, 0, 0, 0, 0, 0, _, _] if !ip.is_unspecified() && !ip.is_loopback() => Some(low()),
        // NAT64 64:ff9b::a.b.c.d.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low()),
        // 6to4 2002:aabb:ccdd::/48.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        _ => None,
    }
}

/// IPv4-mapped IPv6 as IPv4; anything else unchanged.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An IP network: an address and a prefix length (`10.0.0.0/8`, `fc00::/7`); a bare
/// address is a /32 (IPv4) or /128 (IPv6) network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// The network `addr/prefix`. Fails when the prefix is longer than the address or
    /// `addr` has bits set past the prefix (`10.1.0.0/8`).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, String> {
        let bits = match addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if prefix > bits {
            return Err(format!("prefix /{prefix} is longer than {bits} bits"));
        }
        let net = IpNet { addr, prefix };
        let network = net.network();
        if network != addr {
            return Err(format!(
                "{addr} has bits set past the /{prefix} prefix (the network is {network}/{prefix})"
            ));
        }
        Ok(net)
    }

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is in this network (same address family only).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }

    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = Error;

    /// Parses `ADDR` or `ADDR/PREFIX` (an IPv6 address may be in brackets). Fails with
    /// [`Error::Config`] (field `allow_networks`) naming the entry.
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: String| config("allow_networks", format!("{s:?}: {why}"));
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s.trim(), None),
        };
        let addr = addr
            .strip_prefix('[')
            .and_then(|a| a.strip_suffix(']'))
            .unwrap_or(addr);
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| bad("not an IP address or CIDR (like 10.0.0.0/8)".into()))?;
        let prefix = match prefix {
            None => match addr {
                IpAddr::V4(_) => 32,
                IpAddr::V6(_) => 128,
            },
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .map_err(|_| bad(format!("prefix /{p} is not a number of bits")))?,
            Some(p) => return Err(bad(format!("prefix /{p} is not a number of bits"))),
        };
        IpNet::new(addr, prefix).map_err(bad)
    }
}

/// An `allow_hosts` entry.
#[derive(Clone, Debug)]
pub(crate) enum HostPattern {
    /// Exactly this host (normalized as the URL parser does).
    Exact(String),
    /// Any host ending in this (`.example.com`), not the bare domain.
    Subdomains(String),
}

impl HostPattern {
    pub(crate) fn parse(entry: &str) -> Result<Self> {
        let bad = |why: &str| config("allow_hosts", format!("{entry:?}: {why}"));
        let raw = entry.trim();
        let (wildcard, host) = match raw.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, raw),
        };
        if host.is_empty()
            || host
                .chars()
                .any(|c| matches!(c, '*' | '/' | '@' | '?' | '#' | '\\') || c.is_whitespace())
        {
            return Err(bad("not a host name or *.domain pattern"));
        }
        // Normalize like URL hosts are (case, IDNA, IPv4 forms), so patterns compare
        // against `Url::host_str`.
        let url = Url::parse(&format!("http://{host}/"))
            .map_err(|_| bad("not a host name or *.domain pattern"))?;
        let normalized = url
            .host_str()
            .filter(|_| url.port().is_none())
            .ok_or_else(|| bad("not a host name or *.domain pattern (no ports)"))?;
        let normalized = normalized.trim_end_matches('.').to_owned();
        if wildcard {
            if host_ip(&normalized).is_some() {
                return Err(bad("*. patterns need a domain name"));
            }
            Ok(HostPattern::Subdomains(format!(".{normalized}")))
        } else {
            Ok(HostPattern::Exact(normalized))
        }
    }

    pub(crate) fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// The IP of a URL host (`Url::host_str` form: IPv6 in brackets), if it is an IP literal.
pub(crate) fn host_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

fn config(field: &str, message: impl Into<String>) -> Error {
    Error::config(field, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn blocked_by_default() {
        for (addr, range) in [
            ("0.0.0.0", "unspecified (0.0.0.0/8)"),
            ("0.1.2.3", "unspecified (0.0.0.0/8)"),
            ("10.1.2.3", "private"),
            ("100.64.0.1", "shared (CGNAT 100.64.0.0/10)"),
            ("100.127.255.255", "shared (CGNAT 100.64.0.0/10)"),
            ("127.0.0.1", "loopback"),
            ("127.255.0.2", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "reserved (192.0.0.0/24)"),
            ("192.0.2.1", "documentation"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("240.0.0.1", "reserved (240.0.0.0/4)"),
            ("255.255.255.255", "broadcast"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fc00::1", "unique local (fc00::/7)"),
            ("fd12:3456::1", "unique local (fc00::/7)"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local (deprecated)"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("100::1", "discard-only (100::/64)"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:10.0.0.1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:0.0.0.0", "unspecified (0.0.0.0/8)"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:c0a8:0101::1", "private"),
        ] {
            assert_eq!(non_public_range(ip(addr)), Some(range), "{addr}");
            assert!(!address_allowed(ip(addr), &[]), "{addr}");
        }
    }

    #[test]
    fn public_addresses_allowed() {
        for addr in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "192.169.0.0",
            "169.253.255.255",
            "11.0.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:82b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:0808:0808::1",
        ] {
            assert_eq!(non_public_range(ip(addr)), None, "{addr}");
            assert!(address_allowed(ip(addr), &[]), "{addr}");
        }
    }

    #[test]
    fn allow_networks_override() {
        let allow = nets(&["127.0.0.1", "10.0.0.0/8", "fd00::/8"]);
        assert!(address_allowed(ip("127.0.0.1"), &allow));
        assert!(!address_allowed(ip("127.0.0.2"), &allow));
        assert!(address_allowed(ip("10.255.0.1"), &allow));
        assert!(!address_allowed(ip("192.168.0.1"), &allow));
        assert!(address_allowed(ip("fd00::5"), &allow));
        assert!(!address_allowed(ip("fc00::5"), &allow));
        assert!(!address_allowed(ip("::1"), &allow));
        // IPv4-mapped forms are judged as the IPv4 address.
        assert!(address_allowed(ip("::ffff:127.0.0.1"), &allow));
        assert!(!address_allowed(ip("::ffff:127.0.0.2"), &allow));
        // The whole of an address family.
        assert!(address_allowed(ip("192.168.7.7"), &nets(&["0.0.0.0/0"])));
        assert!(!address_allowed(ip("::1"), &nets(&["0.0.0.0/0"])));
        assert!(address_allowed(ip("::1"), &nets(&["::/0"])));
    }

    #[test]
    fn cidr_parsing() {
        let net: IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!((net.addr(), net.prefix()), (ip("10.0.0.0"), 8));
        assert_eq!(net.to_string(), "10.0.0.0/8");
        assert_eq!("127.0.0.1".parse::<IpNet>().unwrap().prefix(), 32);
        assert_eq!("::1".parse::<IpNet>().unwrap().prefix(), 128);
        assert_eq!("[::1]".parse::<IpNet>().unwrap().addr(), ip("::1"));
        assert_eq!(" fc00::/7 ".parse::<IpNet>().unwrap().prefix(), 7);
        assert_eq!("0.0.0.0/0".parse::<IpNet>().unwrap().prefix(), 0);
        let net: IpNet = "172.16.0.0/12".parse().unwrap();
        assert!(net.contains(ip("172.31.1.1")));
        assert!(!net.contains(ip("172.32.0.0")));
        assert!(!net.contains(ip("::ffff:172.16.0.1")));

        for bad in [
            "",
            "localhost",
            "10.0.0",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/-1",
            "10.0.0.0/+8",
            "10.0.0.0/8/8",
            "10.0.0.0/x",
            "10.1.0.0/8",
            "fe80::1/10",
            "256.0.0.1",
            "10.0.0.0/0008",
        ] {
            let err = bad.parse::<IpNet>().unwrap_err();
            match &err {
                Error::Config { field, message } => {
                    assert_eq!(field, "allow_networks");
                    assert!(message.contains(&format!("{bad:?}")), "{message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let err = "10.1.0.0/8".parse::<IpNet>().unwrap_err().to_string();
        assert!(err.contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn host_patterns() {
        let exact = HostPattern::parse("IMG.Example.com.").unwrap();
        assert!(exact.matches("img.example.com"));
        assert!(!exact.matches("a.img.example.com"));
        let sub = HostPattern::parse("*.example.com").unwrap();
        assert!(sub.matches("img.example.com"));
        assert!(sub.matches("a.b.example.com"));
        assert!(!sub.matches("example.com"));
        assert!(!sub.matches("badexample.com"));
        assert!(!sub.matches("example.com.evil.net"));
        let v4 = HostPattern::parse("203.0.113.7").unwrap();
        assert!(v4.matches("203.0.113.7"));
        let v6 = HostPattern::parse("[2001:DB8::1]").unwrap();
        assert!(v6.matches("[2001:db8::1]"));
        assert!(HostPattern::parse("*.10.0.0.1").is_err());
    }
}
