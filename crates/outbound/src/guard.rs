//! The guard's checks on URLs and addresses (pure: no I/O). [`crate::client`] runs them
//! where connections are made — the resolver, the redirect policy, the request itself
//! and the connected peer — and finds a [`Refusal`] again in reqwest's error chain.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use reqwest::Url;

use crate::net::{HostPattern, IpNet, address_allowed, host_ip, non_public_range};
use crate::{Error, Result};

/// Longest URL accepted, in bytes (the initial URL and every redirect target).
pub const MAX_URL_LEN: usize = 8 * 1024;

/// Longest URL quoted in a refusal; longer ones are shortened.
const SHOWN_URL_LEN: usize = 200;

/// The compiled policy checks, shared by the client, its resolver and its redirect policy.
pub(crate) struct Guard {
    pub(crate) networks: Arc<[IpNet]>,
    pub(crate) hosts: Arc<[HostPattern]>,
    pub(crate) max_redirects: usize,
}

impl Guard {
    /// `Err(reason)` when connecting to `ip` is not allowed.
    pub(crate) fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if address_allowed(ip, &self.networks) {
            return Ok(());
        }
        let range = non_public_range(ip).unwrap_or("not public");
        Err(format!("address {ip} is {range}; not allowed"))
    }

    /// The host allow-list and, for an IP-literal host, the address.
    pub(crate) fn check_url(&self, url: &Url) -> Result<(), Refusal> {
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
    pub(crate) fn check_redirect(&self, next: &Url, requests: usize) -> Result<(), Refusal> {
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

/// Why the guard stopped a request inside reqwest (resolver, redirect policy); found
/// again in reqwest's error source chain.
#[derive(Clone, Debug)]
pub(crate) enum Refusal {
    /// Not allowed, with the reason (for the log and the operator).
    Forbidden(String),
    /// More than this many redirects.
    TooManyRedirects(usize),
}

impl Refusal {
    /// The crate error for this refusal of a request to `url`.
    pub(crate) fn into_error(self, url: &str) -> Error {
        match self {
            Refusal::Forbidden(reason) => Error::Forbidden {
                url: url.to_owned(),
                reason,
            },
            too_many @ Refusal::TooManyRedirects(_) => Error::Unreachable {
                url: url.to_owned(),
                message: too_many.to_string(),
            },
        }
    }
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

/// Parses and checks a URL's form: http(s), no credentials, a host, bounded length; the
/// fragment is dropped. Other IPv4 spellings (`2130706433`, `0x7f.1`) come out as dotted
/// quads, which the address check then sees.
pub fn parse_url(url: &str) -> Result<Url> {
    let too_long = || Error::InvalidUrl(format!("longer than {MAX_URL_LEN} bytes"));
    if url.len() > MAX_URL_LEN {
        return Err(too_long());
    }
    let mut parsed = Url::parse(url).map_err(|e| Error::InvalidUrl(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::InvalidUrl(format!(
            "scheme {}: only http and https are allowed",
            parsed.scheme()
        )));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(Error::InvalidUrl(
            "URLs with credentials (user:password@) are not allowed".into(),
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::InvalidUrl("no host".into()));
    }
    if parsed.as_str().len() > MAX_URL_LEN {
        return Err(too_long());
    }
    parsed.set_fragment(None);
    Ok(parsed)
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

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn url_forms() {
        assert!(parse_url("http://example.com/a.png").is_ok());
        assert!(parse_url("https://example.com:8443/a.png?x=1").is_ok());
        assert_eq!(
            parse_url("http://example.com/a#frag").unwrap().as_str(),
            "http://example.com/a"
        );
        for bad in [
            "file:///etc/passwd",
            "ftp://example.com/a.png",
            "gopher://example.com/",
            "data:image/png;base64,AAAA",
            "http://user:pw@example.com/",
            "http://user@example.com/",
            "not a url",
            "/relative",
            "",
        ] {
            assert!(matches!(parse_url(bad), Err(Error::InvalidUrl(_))), "{bad}");
        }
        let long = format!("http://example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(matches!(parse_url(&long), Err(Error::InvalidUrl(_))));
        // Other IPv4 spellings become dotted quads, which the guard then checks.
        for spelled in [
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
        ] {
            assert_eq!(
                parse_url(spelled).unwrap().host_str(),
                Some("127.0.0.1"),
                "{spelled}"
            );
        }
    }

    #[test]
    fn urls_checked_before_connecting() {
        let guard = Guard {
            networks: nets(&["127.0.0.2"]).into(),
            hosts: Vec::new().into(),
            max_redirects: 5,
        };
        let check = |s: &str| guard.check_url(&parse_url(s).unwrap());
        assert!(check("http://127.0.0.2:8080/").is_ok());
        assert!(check("http://example.com/").is_ok());
        for (url, reason) in [
            (
                "http://127.0.0.1:9/",
                "address 127.0.0.1 is loopback; not allowed",
            ),
            (
                "http://2130706433/",
                "address 127.0.0.1 is loopback; not allowed",
            ),
            (
                "http://169.254.169.254/latest/meta-data/",
                "address 169.254.169.254 is link-local; not allowed",
            ),
            (
                "http://10.1.2.3/",
                "address 10.1.2.3 is private; not allowed",
            ),
            ("http://[::1]/", "address ::1 is loopback; not allowed"),
            (
                "http://[::ffff:127.0.0.1]/",
                "address ::ffff:127.0.0.1 is loopback; not allowed",
            ),
        ] {
            match check(url) {
                Err(Refusal::Forbidden(why)) => assert_eq!(why, reason, "{url}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        let listed = Guard {
            networks: Vec::new().into(),
            hosts: vec![HostPattern::parse("*.example.com").unwrap()].into(),
            max_redirects: 5,
        };
        assert!(
            listed
                .check_url(&parse_url("https://hooks.example.com/x").unwrap())
                .is_ok()
        );
        assert!(matches!(
            listed.check_url(&parse_url("https://example.org/x").unwrap()),
            Err(Refusal::Forbidden(why)) if why == "host example.org is not on the allow-list"
        ));
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
        // Long targets are shortened in the reason.
        let long = url(&format!("http://10.0.0.1/{}", "a".repeat(300)));
        match guard.check_redirect(&long, 1) {
            Err(Refusal::Forbidden(reason)) => {
                assert!(reason.contains("a…") && reason.len() < 300, "{reason}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusals_become_errors() {
        let e = Refusal::Forbidden("address 10.0.0.1 is private; not allowed".into())
            .into_error("http://10.0.0.1/");
        assert!(matches!(&e, Error::Forbidden { url, .. } if url == "http://10.0.0.1/"));
        let e = Refusal::TooManyRedirects(3).into_error("http://example.com/");
        assert_eq!(
            e.to_string(),
            "http://example.com/: too many redirects (more than 3)"
        );
    }
}
