//! Fetching source images by URL, with an SSRF guard.
//!
//! A [`Fetcher`] only fetches `http`/`https` URLs without credentials, from hosts on the
//! policy's allow-list (when it has one), and only connects to public addresses unless a
//! network is explicitly allowed ([`FetchPolicy::allow_networks`]). The address check is
//! done where the connection is made:
//!
//! - host names go through a resolver that refuses the whole name when any of its
//!   addresses is not allowed, so the addresses checked are the ones connected to (no
//!   DNS-rebinding window between check and connect);
//! - IP-literal hosts (which never reach a resolver) are checked before the request and
//!   on every redirect hop, by a redirect policy that also enforces the host allow-list
//!   and [`FetchPolicy::max_redirects`];
//! - the peer address of the connection that answered is checked once more.
//!
//! The body is capped at [`FetchPolicy::max_bytes`] (announced or streamed) and the whole
//! fetch (connect, headers, body, redirects) at [`FetchPolicy::timeout`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect;

use crate::{Error, Result};

/// Longest source URL accepted, in bytes (initial URL and redirect targets).
pub const MAX_URL_LEN: usize = 8 * 1024;

/// The `User-Agent` sources see.
pub const USER_AGENT: &str = "verge-images/0.1";

/// Where the system's trusted CAs are (Debian `ca-certificates`), for https sources.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Longest URL quoted in an error message; longer ones are shortened.
const SHOWN_URL_LEN: usize = 200;

/// What a [`Fetcher`] may fetch, and how much of it.
#[derive(Clone, Debug)]
pub struct FetchPolicy {
    /// Hosts allowed as sources: exact host names (`img.example.com`, `203.0.113.7`,
    /// `[2001:db8::1]`) or `*.example.com` patterns, which match any subdomain of
    /// `example.com` but not `example.com` itself. Matching is case-insensitive and
    /// ignores a trailing dot. Empty: any host (the address check still applies).
    pub allow_hosts: Vec<String>,
    /// Non-public addresses explicitly allowed, as IPs or CIDRs (`127.0.0.1`,
    /// `10.0.0.0/8`, `fd00::/8`). By default none: loopback, private (10/8, 172.16/12,
    /// 192.168/16), link-local (169.254/16, including the 169.254.169.254 metadata
    /// address), shared/CGNAT 100.64/10, 0.0.0.0/8, multicast, broadcast, documentation
    /// and other reserved ranges, IPv6 loopback, unspecified, unique-local fc00::/7,
    /// link-local fe80::/10, multicast, and IPv6 forms embedding any blocked IPv4
    /// address (IPv4-mapped `::ffff:0:0/96`, IPv4-compatible, NAT64, 6to4) are all
    /// refused. See [`non_public_range`].
    pub allow_networks: Vec<String>,
    /// Largest body accepted, in bytes. Default 32 MiB.
    pub max_bytes: u64,
    /// Most redirects followed. Default 5; 0 refuses any redirect.
    pub max_redirects: usize,
    /// Deadline for the whole fetch: connecting, redirects, headers and body. Default 10 s.
    pub timeout: Duration,
    /// Deadline for each TCP (and TLS) connection. Default 3 s.
    pub connect_timeout: Duration,
}

impl Default for FetchPolicy {
    fn default() -> Self {
        FetchPolicy {
            allow_hosts: Vec::new(),
            allow_networks: Vec::new(),
            max_bytes: 32 * 1024 * 1024,
            max_redirects: 5,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
        }
    }
}

/// A fetched source.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The URL the body came from, after redirects.
    pub url: String,
    /// The source's `Content-Type`, if it sent a valid one.
    pub content_type: Option<String>,
    /// The body, at most [`FetchPolicy::max_bytes`] long.
    pub bytes: Bytes,
}

/// Fetches source images under a [`FetchPolicy`]. Cheap to clone (shares one connection
/// pool).
#[derive(Clone)]
pub struct Fetcher {
    policy: Arc<FetchPolicy>,
    guard: Arc<Guard>,
    client: reqwest::Client,
}

impl fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fetcher")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher for `policy`. Fails with [`Error::Config`] on an `allow_networks` entry
    /// that is not an IP or CIDR, an `allow_hosts` entry that is not a host name or
    /// `*.domain` pattern, or a zero timeout.
    pub fn new(policy: FetchPolicy) -> Result<Self> {
        let networks = policy
            .allow_networks
            .iter()
            .map(|s| s.parse::<IpNet>())
            .collect::<Result<Vec<_>>>()?;
        let hosts = policy
            .allow_hosts
            .iter()
            .map(|s| HostPattern::parse(s))
            .collect::<Result<Vec<_>>>()?;
        if policy.timeout.is_zero() {
            return Err(config("timeout", "must be more than zero"));
        }
        if policy.connect_timeout.is_zero() {
            return Err(config("connect_timeout", "must be more than zero"));
        }
        let guard = Arc::new(Guard {
            networks: networks.into(),
            hosts: hosts.into(),
            max_redirects: policy.max_redirects,
        });

        let redirect_guard = guard.clone();
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config()?)
            .dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            .redirect(redirect::Policy::custom(
                move |attempt| match redirect_guard
                    .check_redirect(attempt.url(), attempt.previous().len())
                {
                    Ok(()) => attempt.follow(),
                    Err(refusal) => attempt.error(refusal),
                },
            ))
            .no_proxy()
            .referer(false)
            .user_agent(USER_AGENT)
            .connect_timeout(policy.connect_timeout)
            .build()
            .map_err(|e| config("http client", chain(&e)))?;
        Ok(Fetcher {
            policy: Arc::new(policy),
            guard,
            client,
        })
    }

    /// The policy this fetcher enforces.
    pub fn policy(&self) -> &FetchPolicy {
        &self.policy
    }

    /// Fetches `url` (GET), following allowed redirects.
    ///
    /// Errors: [`Error::Invalid`] (field `source`) for a URL that is not `http(s)`, carries
    /// credentials, has no host or is too long; [`Error::SourceForbidden`] when the host
    /// or an address (directly or after a redirect) is not allowed;
    /// [`Error::SourceTooLarge`], [`Error::SourceTimeout`], [`Error::SourceStatus`] for a
    /// non-2xx answer; [`Error::SourceUnreachable`] otherwise (DNS, connection, TLS, too
    /// many redirects ...).
    pub async fn fetch(&self, url: &str) -> Result<Fetched> {
        let parsed = parse_source(url)?;
        let shown = parsed.as_str().to_owned();
        if let Err(refusal) = self.guard.check_url(&parsed) {
            return Err(refused(&shown, refusal));
        }
        let after = self.policy.timeout;
        match tokio::time::timeout(after, self.fetch_checked(parsed, &shown)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(Error::SourceTimeout { url: shown, after }),
        }
    }

    async fn fetch_checked(&self, url: Url, shown: &str) -> Result<Fetched> {
        let max = self.policy.max_bytes;
        let mut resp = self
            .client
            .get(url)
            .send()
            .await
            .map_err(|e| self.http_error(shown, &e))?;
        let final_url = resp.url().to_string();
        if let Some(peer) = resp.remote_addr()
            && let Err(reason) = self.guard.check_ip(peer.ip())
        {
            return Err(refused(&final_url, Refusal::Forbidden(reason)));
        }
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::SourceStatus {
                url: final_url,
                status: status.as_u16(),
            });
        }
        let too_large = || Error::SourceTooLarge {
            url: final_url.clone(),
            max,
        };
        let announced = resp.content_length();
        if announced.is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Preallocate what was announced, within reason; grow as it comes otherwise.
        let capacity = announced.unwrap_or(0).min(max).min(1 << 20);
        let mut body = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = resp.chunk().await.map_err(|e| Error::SourceUnreachable {
            url: final_url.clone(),
            message: format!("reading the body: {}", chain(&e)),
        })? {
            if (body.len() as u64).saturating_add(chunk.len() as u64) > max {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            url: final_url,
            content_type,
            bytes: body.freeze(),
        })
    }

    /// Maps a reqwest error back to ours: a refusal by the resolver or the redirect
    /// policy is somewhere in its source chain.
    fn http_error(&self, url: &str, e: &reqwest::Error) -> Error {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(refusal) = err.downcast_ref::<Refusal>() {
                return refused(url, refusal.clone());
            }
            source = err.source();
        }
        if e.is_timeout() {
            // The total deadline is enforced around the whole fetch; a timeout from
            // reqwest itself is a connect timeout.
            return Error::SourceTimeout {
                url: url.to_owned(),
                after: self.policy.connect_timeout,
            };
        }
        Error::SourceUnreachable {
            url: url.to_owned(),
            message: chain(e),
        }
    }
}

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
enum HostPattern {
    /// Exactly this host (normalized as the URL parser does).
    Exact(String),
    /// Any host ending in this (`.example.com`), not the bare domain.
    Subdomains(String),
}

impl HostPattern {
    fn parse(entry: &str) -> Result<Self> {
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

    fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Subdomains(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

/// The IP of a URL host (`Url::host_str` form: IPv6 in brackets), if it is an IP literal.
fn host_ip(host: &str) -> Option<IpAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    bare.parse().ok()
}

/// The compiled policy checks, shared by the fetcher, its resolver and its redirect policy.
struct Guard {
    networks: Arc<[IpNet]>,
    hosts: Arc<[HostPattern]>,
    max_redirects: usize,
}

impl Guard {
    /// `Err(reason)` when connecting to `ip` is not allowed.
    fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if address_allowed(ip, &self.networks) {
            return Ok(());
        }
        let range = non_public_range(ip).unwrap_or("not public");
        Err(format!("address {ip} is {range}; not allowed"))
    }

    /// The host allow-list and, for an IP-literal host, the address.
    fn check_url(&self, url: &Url) -> Result<(), Refusal> {
        let host = url.host_str().unwrap_or_default().trim_end_matches('.');
        if !self.hosts.is_empty() && !self.hosts.iter().any(|p| p.matches(host)) {
            return Err(Refusal::Forbidden(format!(
                "host {host} is not on the allow-list"
            )));
        }
        if let Some(ip) = host_ip(host) {
            self.check_ip(ip).map_err(Refusal::Forbidden)?;
        }
        Ok(())
    }

    /// A redirect to `next`, after `requests` requests in this chain (the first one was
    /// not a redirect, so this is redirect number `requests`).
    fn check_redirect(&self, next: &Url, requests: usize) -> Result<(), Refusal> {
        if requests > self.max_redirects {
            return Err(Refusal::TooManyRedirects(self.max_redirects));
        }
        let blocked = |why: &str| {
            Refusal::Forbidden(format!(
                "redirect to {} blocked: {why}",
                shorten(next.as_str())
            ))
        };
        if !matches!(next.scheme(), "http" | "https") {
            return Err(blocked(&format!("scheme {} is not allowed", next.scheme())));
        }
        if next.as_str().len() > MAX_URL_LEN {
            return Err(blocked(&format!("URL longer than {MAX_URL_LEN} bytes")));
        }
        if !next.username().is_empty() || next.password().is_some() {
            return Err(blocked("URLs with credentials are not allowed"));
        }
        if next.host_str().is_none_or(str::is_empty) {
            return Err(blocked("no host"));
        }
        self.check_url(next).map_err(|refusal| match refusal {
            Refusal::Forbidden(why) => blocked(&why),
            other => other,
        })
    }
}

/// Why the guard stopped a fetch inside reqwest (resolver, redirect policy); found again
/// in reqwest's error source chain by [`Fetcher::http_error`].
#[derive(Clone, Debug)]
enum Refusal {
    /// Not allowed, with the reason shown to the caller.
    Forbidden(String),
    /// More than this many redirects.
    TooManyRedirects(usize),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Forbidden(reason) => f.write_str(reason),
            Refusal::TooManyRedirects(max) => write!(f, "too many redirects (more than {max})"),
        }
    }
}

impl std::error::Error for Refusal {}

/// Resolves host names with the system resolver and refuses a name when any of its
/// addresses is not allowed, so a name that (also) points at a private address fails as
/// a whole, and the addresses connected to are the ones checked.
struct GuardedResolver {
    guard: Arc<Guard>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let guard = self.guard.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() {
                return Err(format!("host {host} has no addresses").into());
            }
            for addr in &addrs {
                if let Err(reason) = guard.check_ip(addr.ip()) {
                    return Err(
                        Box::new(Refusal::Forbidden(format!("host {host}: {reason}"))) as _,
                    );
                }
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Parses and checks a source URL's form: http(s), no credentials, a host, bounded length.
fn parse_source(url: &str) -> Result<Url> {
    if url.len() > MAX_URL_LEN {
        return Err(Error::invalid(
            "source",
            format!("URL longer than {MAX_URL_LEN} bytes"),
        ));
    }
    let mut parsed =
        Url::parse(url).map_err(|e| Error::invalid("source", format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::invalid(
            "source",
            format!(
                "scheme {}: only http and https sources are allowed",
                parsed.scheme()
            ),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::invalid(
            "source",
            "URLs with credentials (user:password@) are not allowed",
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::invalid("source", "URL has no host"));
    }
    if parsed.as_str().len() > MAX_URL_LEN {
        return Err(Error::invalid(
            "source",
            format!("URL longer than {MAX_URL_LEN} bytes"),
        ));
    }
    parsed.set_fragment(None);
    Ok(parsed)
}

/// rustls with the `ring` provider and the system's trusted roots (none if the bundle is
/// missing: https sources then fail to verify).
fn tls_config() -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read(SYSTEM_ROOTS) {
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            let _ = roots.add(cert);
        }
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| config("tls", e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}

fn config(field: &str, message: impl Into<String>) -> Error {
    Error::Config {
        field: field.to_owned(),
        message: message.into(),
    }
}

/// The crate error for a [`Refusal`] of a fetch of `url`.
fn refused(url: &str, refusal: Refusal) -> Error {
    match refusal {
        Refusal::Forbidden(reason) => Error::SourceForbidden {
            url: url.to_owned(),
            reason,
        },
        too_many @ Refusal::TooManyRedirects(_) => Error::SourceUnreachable {
            url: url.to_owned(),
            message: too_many.to_string(),
        },
    }
}

/// An error and its sources, `: `-separated (a source already quoted is not repeated).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// `s`, cut to [`SHOWN_URL_LEN`] characters with an ellipsis.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(SHOWN_URL_LEN) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
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
    fn new_rejects_bad_config() {
        let err = Fetcher::new(FetchPolicy {
            allow_networks: vec!["127.0.0.1".into(), "10.0.0.0/33".into()],
            ..FetchPolicy::default()
        })
        .unwrap_err();
        assert!(
            matches!(&err, Error::Config { field, message } if field == "allow_networks" && message.contains("10.0.0.0/33")),
            "{err:?}"
        );
        for bad in [
            "",
            "*",
            "*.",
            "a*.example.com",
            "example.com/x",
            "u@example.com",
            "example.com:8080",
        ] {
            let err = Fetcher::new(FetchPolicy {
                allow_hosts: vec![bad.into()],
                ..FetchPolicy::default()
            })
            .unwrap_err();
            assert!(
                matches!(&err, Error::Config { field, .. } if field == "allow_hosts"),
                "{bad}: {err:?}"
            );
        }
        let err = Fetcher::new(FetchPolicy {
            timeout: Duration::ZERO,
            ..FetchPolicy::default()
        })
        .unwrap_err();
        assert!(matches!(&err, Error::Config { field, .. } if field == "timeout"));
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

    #[test]
    fn source_urls() {
        assert!(parse_source("http://example.com/a.png").is_ok());
        assert!(parse_source("https://example.com:8443/a.png?x=1").is_ok());
        for bad in [
            "file:///etc/passwd",
            "ftp://example.com/a.png",
            "gopher://example.com/",
            "data:image/png;base64,AAAA",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "not a url",
            "/relative",
        ] {
            assert!(
                matches!(parse_source(bad), Err(Error::Invalid { ref field, .. }) if field == "source"),
                "{bad}"
            );
        }
        let long = format!("http://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(parse_source(&long), Err(Error::Invalid { .. })));
        // Other IPv4 spellings become dotted quads, which the guard then checks.
        assert_eq!(
            parse_source("http://2130706433/").unwrap().host_str(),
            Some("127.0.0.1")
        );
        assert_eq!(
            parse_source("http://0x7f.1/").unwrap().host_str(),
            Some("127.0.0.1")
        );
    }

    #[test]
    fn redirect_checks() {
        let guard = Guard {
            networks: nets(&["127.0.0.1"]).into(),
            hosts: Vec::new().into(),
            max_redirects: 2,
        };
        let url = |s: &str| Url::parse(s).unwrap();
        assert!(
            guard
                .check_redirect(&url("http://127.0.0.1:8080/"), 1)
                .is_ok()
        );
        assert!(
            guard
                .check_redirect(&url("http://127.0.0.1:8080/"), 2)
                .is_ok()
        );
        assert!(matches!(
            guard.check_redirect(&url("http://127.0.0.1:8080/"), 3),
            Err(Refusal::TooManyRedirects(2))
        ));
        match guard.check_redirect(&url("http://10.0.0.1/"), 1) {
            Err(Refusal::Forbidden(reason)) => assert_eq!(
                reason,
                "redirect to http://10.0.0.1/ blocked: address 10.0.0.1 is private; not allowed"
            ),
            other => panic!("{other:?}"),
        }
        for bad in [
            "file:///etc/passwd",
            "http://u:p@127.0.0.1/",
            "http://[::1]/",
        ] {
            assert!(
                matches!(
                    guard.check_redirect(&url(bad), 1),
                    Err(Refusal::Forbidden(_))
                ),
                "{bad}"
            );
        }
    }
}
