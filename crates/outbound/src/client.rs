//! The guarded HTTP client: [`Client`] under a [`Policy`], its [`Response`] (a body
//! streamed under the cap and the deadline), and the resolver that refuses non-public
//! addresses. Requests only; it must not decide what a caller does with an answer
//! (statuses are checked by [`Client::fetch`] alone).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::HeaderMap;
use reqwest::{Method, redirect};
use tokio::time::Instant;

use crate::guard::{Guard, Refusal, parse_url};
use crate::net::{HostPattern, IpNet};
use crate::{Error, Result};

/// Where the system's trusted CAs are (Debian `ca-certificates`), for https destinations.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The `User-Agent` destinations see unless the policy names another.
pub const USER_AGENT: &str = "verge/0.1";

/// What a [`Client`] may reach, and how much it reads.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Hosts allowed as destinations: exact host names (`img.example.com`,
    /// `203.0.113.7`, `[2001:db8::1]`) or `*.example.com` patterns, which match any
    /// subdomain of `example.com` but not `example.com` itself. Matching is
    /// case-insensitive and ignores a trailing dot. Empty: any host. The address check
    /// applies either way: a listed host is still refused on a non-public address.
    pub allow_hosts: Vec<String>,
    /// Non-public addresses explicitly allowed, as IPs or CIDRs (`127.0.0.1`,
    /// `10.0.0.0/8`, `fd00::/8`). By default none: loopback, private (10/8, 172.16/12,
    /// 192.168/16), link-local (169.254/16, including the 169.254.169.254 metadata
    /// address), shared/CGNAT 100.64/10, 0.0.0.0/8, multicast, broadcast, documentation
    /// and other reserved ranges, IPv6 loopback, unspecified, unique-local fc00::/7,
    /// link-local fe80::/10, multicast, and IPv6 forms embedding any blocked IPv4
    /// address (IPv4-mapped `::ffff:0:0/96`, IPv4-compatible, NAT64, 6to4) are all
    /// refused. See [`crate::non_public_range`].
    pub allow_networks: Vec<String>,
    /// Largest answer body read, in bytes: [`Response::chunk`] and [`Client::fetch`]
    /// fail past it; [`Client::post`] keeps this much of the answer and drops the rest.
    /// Default 32 MiB.
    pub max_bytes: u64,
    /// Whether redirects are followed (each hop checked). When not, a 3xx is the answer.
    /// Default true.
    pub follow_redirects: bool,
    /// Most redirects followed. Default 5; 0 refuses any redirect.
    pub max_redirects: usize,
    /// Deadline for the whole request: connecting, redirects, headers and body.
    /// Default 10 s.
    pub timeout: Duration,
    /// Deadline for each TCP (and TLS) connection. Default 3 s.
    pub connect_timeout: Duration,
    /// A read that waits longer than this fails (for long downloads whose whole deadline
    /// is generous). Default: none.
    pub read_timeout: Option<Duration>,
    /// The `User-Agent` header sent. Default [`USER_AGENT`].
    pub user_agent: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            allow_hosts: Vec::new(),
            allow_networks: Vec::new(),
            max_bytes: 32 * 1024 * 1024,
            follow_redirects: true,
            max_redirects: 5,
            timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(3),
            read_timeout: None,
            user_agent: USER_AGENT.to_owned(),
        }
    }
}

/// One [`Policy::allow_networks`] entry checked on its own (a command-line flag's value
/// parser): the entry, or why it is not an IP or CIDR.
pub fn allow_network_entry(entry: &str) -> Result<String, String> {
    entry_message(compile(&[entry.to_owned()], &[]), entry)
}

/// One [`Policy::allow_hosts`] entry checked on its own (a command-line flag's value
/// parser): the entry, or why it is not a host name or `*.domain` pattern.
pub fn allow_host_entry(entry: &str) -> Result<String, String> {
    entry_message(compile(&[], &[entry.to_owned()]), entry)
}

fn entry_message<T>(checked: Result<T>, entry: &str) -> Result<String, String> {
    match checked {
        Ok(_) => Ok(entry.trim().to_owned()),
        Err(Error::Config { message, .. }) => Err(message),
        Err(other) => Err(other.to_string()),
    }
}

fn compile(
    allow_networks: &[String],
    allow_hosts: &[String],
) -> Result<(Vec<IpNet>, Vec<HostPattern>)> {
    let networks = allow_networks
        .iter()
        .map(|s| s.parse::<IpNet>())
        .collect::<Result<Vec<_>>>()?;
    let hosts = allow_hosts
        .iter()
        .map(|s| HostPattern::parse(s))
        .collect::<Result<Vec<_>>>()?;
    Ok((networks, hosts))
}

/// A whole body fetched by [`Client::fetch`].
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The URL the body came from, after redirects.
    pub url: String,
    /// The `Content-Type`, if a valid one was sent.
    pub content_type: Option<String>,
    /// The body, at most [`Policy::max_bytes`] long.
    pub bytes: Bytes,
}

/// The answer to [`Client::post`].
#[derive(Clone, Debug)]
pub struct Answer {
    /// The URL that answered (after redirects, when they are followed).
    pub url: String,
    pub status: u16,
    /// The start of the body: at most [`Policy::max_bytes`], the rest unread.
    pub body: Bytes,
}

/// An answer whose body is still to be read: [`Response::chunk`] enforces
/// [`Policy::max_bytes`] and the request's deadline.
pub struct Response {
    url: String,
    inner: reqwest::Response,
    deadline: Instant,
    timeout: Duration,
    read_timeout: Option<Duration>,
    max: u64,
    received: u64,
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("url", &self.url)
            .field("status", &self.inner.status())
            .finish_non_exhaustive()
    }
}

impl Response {
    /// The URL that answered, after redirects.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn status(&self) -> u16 {
        self.inner.status().as_u16()
    }

    pub fn headers(&self) -> &HeaderMap {
        self.inner.headers()
    }

    /// The announced body length, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.inner.content_length()
    }

    /// The address of the peer that answered (checked against the policy).
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.inner.remote_addr()
    }

    /// The next piece of the body; `None` at its end. Fails with [`Error::TooLarge`]
    /// once more than [`Policy::max_bytes`] arrived, [`Error::Timeout`] at the request's
    /// deadline (or a stalled read), [`Error::Unreachable`] when the body breaks off.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        let next = match tokio::time::timeout_at(self.deadline, self.inner.chunk()).await {
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    url: self.url.clone(),
                    after: self.timeout,
                });
            }
            Ok(Err(e)) if e.is_timeout() => {
                return Err(Error::Timeout {
                    url: self.url.clone(),
                    after: self.read_timeout.unwrap_or(self.timeout),
                });
            }
            Ok(Err(e)) => {
                return Err(Error::Unreachable {
                    url: self.url.clone(),
                    message: format!("reading the body: {}", chain(&e)),
                });
            }
            Ok(Ok(next)) => next,
        };
        if let Some(chunk) = &next {
            self.received = self.received.saturating_add(chunk.len() as u64);
            if self.received > self.max {
                return Err(Error::TooLarge {
                    url: self.url.clone(),
                    max: self.max,
                });
            }
        }
        Ok(next)
    }

    /// The whole body (fails like [`Response::chunk`]; an announced length over the cap
    /// fails before reading).
    pub async fn bytes(mut self) -> Result<Bytes> {
        let announced = self.content_length();
        if announced.is_some_and(|n| n > self.max) {
            return Err(Error::TooLarge {
                url: self.url,
                max: self.max,
            });
        }
        // Preallocate what was announced, within reason; grow as it comes otherwise.
        let capacity = announced.unwrap_or(0).min(self.max).min(1 << 20);
        let mut body = BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0));
        while let Some(chunk) = self.chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }
}

/// Makes requests on a user's behalf under a [`Policy`]: only `http`/`https` URLs
/// without credentials, to hosts on the allow-list (when there is one), connecting only
/// to public addresses unless a network is explicitly allowed. The address check is done
/// where the connection is made:
///
/// - host names go through a resolver that refuses the whole name when any of its
///   addresses is not allowed, so the addresses checked are the ones connected to (no
///   DNS-rebinding window between check and connect);
/// - IP-literal hosts (which never reach a resolver) are checked before the request and
///   on every redirect hop, by a redirect policy that also enforces the host allow-list
///   and [`Policy::max_redirects`];
/// - the peer address of the connection that answered is checked once more (an unknown
///   peer is refused).
///
/// No proxy from the environment, no `Referer`. The body is capped at
/// [`Policy::max_bytes`] and the whole request at [`Policy::timeout`]. Cheap to clone
/// (one connection pool).
#[derive(Clone)]
pub struct Client {
    policy: Arc<Policy>,
    guard: Arc<Guard>,
    client: reqwest::Client,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `policy`. Fails with [`Error::Config`] on an `allow_networks` entry
    /// that is not an IP or CIDR, an `allow_hosts` entry that is not a host name or
    /// `*.domain` pattern, or a zero timeout.
    pub fn new(policy: Policy) -> Result<Self> {
        let (networks, hosts) = compile(&policy.allow_networks, &policy.allow_hosts)?;
        if policy.timeout.is_zero() {
            return Err(Error::config("timeout", "must be more than zero"));
        }
        if policy.connect_timeout.is_zero() {
            return Err(Error::config("connect_timeout", "must be more than zero"));
        }
        if policy.read_timeout.is_some_and(|t| t.is_zero()) {
            return Err(Error::config("read_timeout", "must be more than zero"));
        }
        let guard = Arc::new(Guard {
            networks: networks.into(),
            hosts: hosts.into(),
            max_redirects: policy.max_redirects,
        });

        let redirects = if policy.follow_redirects {
            let redirect_guard = guard.clone();
            redirect::Policy::custom(move |attempt| {
                match redirect_guard.check_redirect(attempt.url(), attempt.previous().len()) {
                    Ok(()) => attempt.follow(),
                    Err(refusal) => attempt.error(refusal),
                }
            })
        } else {
            redirect::Policy::none()
        };
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config()?)
            .dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            .redirect(redirects)
            .no_proxy()
            .referer(false)
            .user_agent(policy.user_agent.clone())
            .connect_timeout(policy.connect_timeout);
        if let Some(t) = policy.read_timeout {
            builder = builder.read_timeout(t);
        }
        let client = builder
            .build()
            .map_err(|e| Error::config("http client", chain(&e)))?;
        Ok(Client {
            policy: Arc::new(policy),
            guard,
            client,
        })
    }

    /// The policy this client enforces.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// GET `url` with `headers` (a `Range`, say), following allowed redirects; the
    /// answer whatever its status, its body to be read with [`Response::chunk`].
    ///
    /// Errors: [`Error::InvalidUrl`]; [`Error::Forbidden`] when the host or an address
    /// (directly, after a redirect, or the peer's) is not allowed; [`Error::Timeout`];
    /// [`Error::Unreachable`] otherwise (DNS, connection, TLS, too many redirects).
    pub async fn get(&self, url: &str, headers: HeaderMap) -> Result<Response> {
        self.send(Method::GET, url, headers, None).await
    }

    /// GET `url`'s whole body. Like [`Client::get`], and [`Error::Status`] for an answer
    /// that is not 2xx, [`Error::TooLarge`] past [`Policy::max_bytes`].
    pub async fn fetch(&self, url: &str) -> Result<Fetched> {
        let resp = self.get(url, HeaderMap::new()).await?;
        let status = resp.status();
        if !(200..300).contains(&status) {
            return Err(Error::Status {
                url: resp.url,
                status,
            });
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let url = resp.url.clone();
        let bytes = resp.bytes().await?;
        Ok(Fetched {
            url,
            content_type,
            bytes,
        })
    }

    /// POST `body` to `url` with `headers`. The answer's status whatever it is, and at
    /// most [`Policy::max_bytes`] of its body (the rest is not read; a body that breaks
    /// off or outlasts the deadline is cut where it stopped). Errors as [`Client::get`].
    pub async fn post(&self, url: &str, headers: HeaderMap, body: Vec<u8>) -> Result<Answer> {
        let mut resp = self.send(Method::POST, url, headers, Some(body)).await?;
        let status = resp.status();
        let max = usize::try_from(resp.max).unwrap_or(usize::MAX);
        let mut kept = BytesMut::new();
        // Here the cap keeps the start of the answer instead of failing: stop at it.
        resp.max = u64::MAX;
        while kept.len() < max {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = max - kept.len();
                    kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) | Err(_) => break,
            }
        }
        Ok(Answer {
            url: resp.url,
            status,
            body: kept.freeze(),
        })
    }

    async fn send(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Option<Vec<u8>>,
    ) -> Result<Response> {
        let parsed = parse_url(url)?;
        let shown = parsed.as_str().to_owned();
        self.guard
            .check_url(&parsed)
            .map_err(|refusal| refusal.into_error(&shown))?;
        let timeout = self.policy.timeout;
        let deadline = Instant::now() + timeout;
        let mut request = self.client.request(method, parsed).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let inner = match tokio::time::timeout_at(deadline, request.send()).await {
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    url: shown,
                    after: timeout,
                });
            }
            Ok(Err(e)) => return Err(self.http_error(&shown, &e)),
            Ok(Ok(resp)) => resp,
        };
        let answered = inner.url().to_string();
        let peer = inner
            .remote_addr()
            .ok_or_else(|| "the peer's address is unknown".to_owned())
            .and_then(|peer| self.guard.check_ip(peer.ip()));
        if let Err(reason) = peer {
            return Err(Refusal::Forbidden(reason).into_error(&answered));
        }
        Ok(Response {
            url: answered,
            inner,
            deadline,
            timeout,
            read_timeout: self.policy.read_timeout,
            max: self.policy.max_bytes,
            received: 0,
        })
    }

    /// Maps a reqwest error back to ours: a refusal by the resolver or the redirect
    /// policy is somewhere in its source chain.
    fn http_error(&self, url: &str, e: &reqwest::Error) -> Error {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
        while let Some(err) = source {
            if let Some(refusal) = err.downcast_ref::<Refusal>() {
                return refusal.clone().into_error(url);
            }
            source = err.source();
        }
        if e.is_timeout() {
            // The total deadline is enforced around the whole request; a timeout from
            // reqwest itself is a connect (or stalled read) timeout.
            let after = match self.policy.read_timeout {
                Some(read) if !e.is_connect() => read,
                _ => self.policy.connect_timeout,
            };
            return Error::Timeout {
                url: url.to_owned(),
                after,
            };
        }
        Error::Unreachable {
            url: url.to_owned(),
            message: chain(e),
        }
    }
}

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

/// rustls with the `ring` provider and the system's trusted roots (none if the bundle is
/// missing: https destinations then fail to verify).
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
    .map_err(|e| Error::config("tls", e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_bad_config() {
        let err = Client::new(Policy {
            allow_networks: vec!["127.0.0.1".into(), "10.0.0.0/33".into()],
            ..Policy::default()
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
            let err = Client::new(Policy {
                allow_hosts: vec![bad.into()],
                ..Policy::default()
            })
            .unwrap_err();
            assert!(
                matches!(&err, Error::Config { field, .. } if field == "allow_hosts"),
                "{bad}: {err:?}"
            );
            assert!(allow_host_entry(bad).is_err(), "{bad}");
        }
        for (field, policy) in [
            (
                "timeout",
                Policy {
                    timeout: Duration::ZERO,
                    ..Policy::default()
                },
            ),
            (
                "connect_timeout",
                Policy {
                    connect_timeout: Duration::ZERO,
                    ..Policy::default()
                },
            ),
            (
                "read_timeout",
                Policy {
                    read_timeout: Some(Duration::ZERO),
                    ..Policy::default()
                },
            ),
        ] {
            let err = Client::new(policy).unwrap_err();
            assert!(
                matches!(&err, Error::Config { field: f, .. } if f == field),
                "{err:?}"
            );
        }
        assert_eq!(
            allow_network_entry(" 127.0.0.1/32").unwrap(),
            "127.0.0.1/32"
        );
        assert_eq!(allow_network_entry("fd00::/8").unwrap(), "fd00::/8");
        assert_eq!(
            allow_network_entry("localhost").unwrap_err(),
            "\"localhost\": not an IP address or CIDR (like 10.0.0.0/8)"
        );
        assert!(
            allow_network_entry("10.1.0.0/8")
                .unwrap_err()
                .contains("10.0.0.0/8")
        );
        assert_eq!(
            allow_host_entry("*.hooks.example.com").unwrap(),
            "*.hooks.example.com"
        );
    }
}
