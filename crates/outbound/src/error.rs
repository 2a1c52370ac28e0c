//! The crate's one error type, and what of it a user may be shown ([`Error::redacted`]).

use std::time::Duration;

/// What the user who chose a URL is told when the request got no HTTP answer: the same
/// words for a refused address, a failed DNS lookup, a refused connection, a timeout and
/// a TLS failure, so that failures never map the network behind the guard.
pub const NOT_ALLOWED_OR_UNREACHABLE: &str = "destination not allowed or unreachable";

/// Everything that can go wrong with a guarded request. The `Display` form is the full
/// detail (for the operator's log); [`Error::redacted`] is what the user may see.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL itself is malformed: not `http(s)`, carries credentials, has no host, is
    /// too long. Says nothing about the network.
    #[error("url: {0}")]
    InvalidUrl(String),
    /// The destination is not allowed (a non-public address, a host off the allow-list,
    /// a redirect to either, an unknown peer), directly or after a redirect.
    #[error("{url}: {reason}")]
    Forbidden { url: String, reason: String },
    /// The answer sent (or announced) more bytes than allowed.
    #[error("{url}: more than {max} bytes")]
    TooLarge { url: String, max: u64 },
    /// No complete answer in time (the whole request's deadline, a connect timeout, or a
    /// stalled read).
    #[error("{url}: not finished within {after:?}")]
    Timeout { url: String, after: Duration },
    /// The destination answered with a status the caller does not accept (only
    /// [`crate::Client::fetch`] checks statuses).
    #[error("{url}: answered HTTP {status}")]
    Status { url: String, status: u16 },
    /// The destination could not be reached or broke off (DNS, connection, TLS, too many
    /// redirects, a broken body).
    #[error("{url}: {message}")]
    Unreachable { url: String, message: String },
    /// A [`crate::Policy`] that cannot be enforced: `field` names the policy field.
    #[error("config {field}: {message}")]
    Config { field: String, message: String },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// What may be shown to the user who chose the URL (in a task's or an app's status):
    /// the HTTP status of an answer, the bound an answer broke, what is wrong with the
    /// URL's form — and for everything that got no answer (refused, DNS, connection,
    /// TLS, timeout, redirects) only [`NOT_ALLOWED_OR_UNREACHABLE`]. The full detail is
    /// the `Display` form, for the operator's log.
    pub fn redacted(&self) -> String {
        match self {
            Error::InvalidUrl(message) => format!("url: {message}"),
            Error::Status { status, .. } => format!("answered HTTP {status}"),
            Error::TooLarge { max, .. } => format!("answer larger than {max} bytes"),
            Error::Config { .. } => "outbound requests are misconfigured".to_owned(),
            Error::Forbidden { .. } | Error::Timeout { .. } | Error::Unreachable { .. } => {
                NOT_ALLOWED_OR_UNREACHABLE.to_owned()
            }
        }
    }

    /// Whether the guard refused the destination (as opposed to it failing).
    pub fn is_forbidden(&self) -> bool {
        matches!(self, Error::Forbidden { .. })
    }

    pub(crate) fn config(field: &str, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_without_an_answer_read_the_same() {
        let url = || "http://10.0.0.1:22/".to_owned();
        let without_answer = [
            Error::Forbidden {
                url: url(),
                reason: "address 10.0.0.1 is private; not allowed".into(),
            },
            Error::Unreachable {
                url: url(),
                message: "connection refused".into(),
            },
            Error::Unreachable {
                url: url(),
                message: "invalid peer certificate: UnknownIssuer".into(),
            },
            Error::Timeout {
                url: url(),
                after: Duration::from_secs(5),
            },
        ];
        for e in &without_answer {
            assert_eq!(e.redacted(), NOT_ALLOWED_OR_UNREACHABLE, "{e}");
            assert!(!e.redacted().contains("10.0.0.1"));
        }
        assert!(without_answer[0].is_forbidden());
        assert!(!without_answer[1].is_forbidden());
        // The detail stays in the Display form, for the log.
        assert!(without_answer[0].to_string().contains("is private"));

        let status = Error::Status {
            url: url(),
            status: 503,
        };
        assert_eq!(status.redacted(), "answered HTTP 503");
        let large = Error::TooLarge {
            url: url(),
            max: 10,
        };
        assert_eq!(large.redacted(), "answer larger than 10 bytes");
        let invalid = Error::InvalidUrl("scheme ftp: only http and https are allowed".into());
        assert_eq!(
            invalid.redacted(),
            "url: scheme ftp: only http and https are allowed"
        );
    }
}
