//! Fetching source images by URL, through Verge's outbound guard (`verge-outbound`).
//!
//! A [`Fetcher`] is a [`verge_outbound::Client`] under the image service's
//! [`FetchPolicy`]: only `http`/`https` URLs without credentials, hosts on the allow-list
//! (when there is one), public addresses only unless a network is explicitly allowed
//! ([`FetchPolicy::allow_networks`]), checked by the resolver, on IP literals, on every
//! redirect hop and on the connected peer; the body capped at
//! [`FetchPolicy::max_bytes`]; the whole fetch under [`FetchPolicy::timeout`]. This file
//! only maps that guard's policy and errors onto the image service's; it must not grow
//! checks of its own (they belong in `verge-outbound`, for every caller).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::{Error, Result};

pub use verge_outbound::{IpNet, MAX_URL_LEN, address_allowed, non_public_range};

/// The `User-Agent` sources see.
pub const USER_AGENT: &str = "verge-images/0.1";

/// What a [`Fetcher`] may fetch, and how much of it.
#[derive(Clone, Debug)]
pub struct FetchPolicy {
    /// Hosts allowed as sources: exact host names (`img.example.com`, `203.0.113.7`,
    /// `[2001:db8::1]`) or `*.example.com` patterns (any subdomain, not the domain
    /// itself). Empty: any host (the address check still applies). See
    /// [`verge_outbound::Policy::allow_hosts`].
    pub allow_hosts: Vec<String>,
    /// Non-public addresses explicitly allowed, as IPs or CIDRs (`127.0.0.1`,
    /// `10.0.0.0/8`, `fd00::/8`); by default none. See
    /// [`verge_outbound::Policy::allow_networks`] and [`non_public_range`].
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
        let guard = verge_outbound::Policy::default();
        FetchPolicy {
            allow_hosts: Vec::new(),
            allow_networks: Vec::new(),
            max_bytes: guard.max_bytes,
            max_redirects: guard.max_redirects,
            timeout: guard.timeout,
            connect_timeout: guard.connect_timeout,
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
    client: verge_outbound::Client,
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
        let client = verge_outbound::Client::new(verge_outbound::Policy {
            allow_hosts: policy.allow_hosts.clone(),
            allow_networks: policy.allow_networks.clone(),
            max_bytes: policy.max_bytes,
            follow_redirects: true,
            max_redirects: policy.max_redirects,
            timeout: policy.timeout,
            connect_timeout: policy.connect_timeout,
            read_timeout: None,
            user_agent: USER_AGENT.to_owned(),
        })
        .map_err(source_error)?;
        Ok(Fetcher {
            policy: Arc::new(policy),
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
        let fetched = self.client.fetch(url).await.map_err(source_error)?;
        Ok(Fetched {
            url: fetched.url,
            content_type: fetched.content_type,
            bytes: fetched.bytes,
        })
    }
}

/// The image service's error for a guard error.
fn source_error(e: verge_outbound::Error) -> Error {
    use verge_outbound::Error as E;
    match e {
        E::InvalidUrl(message) => Error::invalid("source", message),
        E::Forbidden { url, reason } => Error::SourceForbidden { url, reason },
        E::TooLarge { url, max } => Error::SourceTooLarge { url, max },
        E::Timeout { url, after } => Error::SourceTimeout { url, after },
        E::Status { url, status } => Error::SourceStatus { url, status },
        E::Unreachable { url, message } => Error::SourceUnreachable { url, message },
        E::Config { field, message } => Error::Config { field, message },
        other => Error::SourceUnreachable {
            url: String::new(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_errors_map_onto_source_errors() {
        let err = Fetcher::new(FetchPolicy {
            allow_networks: vec!["10.0.0.0/33".into()],
            ..FetchPolicy::default()
        })
        .unwrap_err();
        assert!(
            matches!(&err, Error::Config { field, message } if field == "allow_networks" && message.contains("10.0.0.0/33")),
            "{err:?}"
        );
        let invalid = source_error(verge_outbound::Error::InvalidUrl("no host".into()));
        assert!(matches!(invalid, Error::Invalid { ref field, .. } if field == "source"));
        assert_eq!(invalid.http_status(), 400);
        let forbidden = source_error(verge_outbound::Error::Forbidden {
            url: "http://10.0.0.1/".into(),
            reason: "address 10.0.0.1 is private; not allowed".into(),
        });
        assert_eq!(forbidden.http_status(), 403);
        let status = source_error(verge_outbound::Error::Status {
            url: "http://example.com/".into(),
            status: 404,
        });
        assert_eq!(status.http_status(), 404);
    }

    #[test]
    fn defaults_are_the_guards() {
        let p = FetchPolicy::default();
        assert_eq!(
            (p.max_bytes, p.max_redirects, p.timeout, p.connect_timeout),
            (
                32 * 1024 * 1024,
                5,
                Duration::from_secs(10),
                Duration::from_secs(3)
            )
        );
        assert!(p.allow_networks.is_empty() && p.allow_hosts.is_empty());
    }
}
