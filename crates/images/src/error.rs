//! The crate's single error type, with its HTTP mapping.

use std::time::Duration;

use verge_runtime::ObjectErrorKind;

/// Everything that can go wrong serving an image request or running an image function.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A part of an `/img/...` URL or a function input is malformed; `field` names it
    /// (`options.width`, `source`, `signature`, `input.url` ...).
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    /// The URL carries no signature (or `unsafe`/`_`) and unsigned URLs are not enabled.
    #[error("signature: unsigned URLs are not enabled on this server")]
    Unsigned,
    /// The signature does not match any configured key/salt pair.
    #[error("signature: does not match the URL")]
    BadSignature,
    /// The source address is not allowed (SSRF guard: private, loopback, link-local, or
    /// not on the allow-list), directly or after a redirect.
    #[error("source {url}: {reason}")]
    SourceForbidden { url: String, reason: String },
    /// The source sent (or announced) more bytes than allowed.
    #[error("source {url}: more than {max} bytes")]
    SourceTooLarge { url: String, max: u64 },
    /// The source did not finish sending in time.
    #[error("source {url}: not received within {after:?}")]
    SourceTimeout { url: String, after: Duration },
    /// The source answered with a non-success status.
    #[error("source {url}: answered HTTP {status}")]
    SourceStatus { url: String, status: u16 },
    /// The source could not be reached (DNS, connection, TLS, too many redirects ...).
    #[error("source {url}: {message}")]
    SourceUnreachable { url: String, message: String },
    /// The image could not be decoded, processed or encoded.
    #[error(transparent)]
    Image(#[from] verge_imaging::Error),
    /// Configuration of the image service is wrong (keys, salts, paths ...).
    #[error("config {field}: {message}")]
    Config { field: String, message: String },
    /// Reading or storing an object (an `s3://` source, `output.bucket`) failed; `field`
    /// names the input, `message` is the bucket layer's.
    #[error("{field}: {message}")]
    Object {
        field: String,
        kind: verge_runtime::ObjectErrorKind,
        message: String,
    },
    /// A local file (cache, watermark) could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }

    /// A short machine-readable reason, stable across releases.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Invalid { .. } => "InvalidRequest",
            Error::Unsigned | Error::BadSignature => "Forbidden",
            Error::SourceForbidden { .. } => "SourceForbidden",
            Error::SourceTooLarge { .. } => "SourceTooLarge",
            Error::SourceTimeout { .. } => "SourceTimeout",
            Error::SourceStatus { .. } => "SourceStatus",
            Error::SourceUnreachable { .. } => "SourceUnreachable",
            Error::Image(e) => image_reason(e),
            Error::Object { kind, .. } => match kind {
                ObjectErrorKind::NotFound => "NoSuchObject",
                ObjectErrorKind::Invalid => "InvalidRequest",
                ObjectErrorKind::TooLarge => "ObjectTooLarge",
                ObjectErrorKind::Unavailable => "ObjectStoreUnavailable",
            },
            Error::Config { .. } | Error::Io { .. } => "Internal",
        }
    }

    /// The HTTP status an `/img/...` request failing with this error answers.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Invalid { .. } => 400,
            Error::Unsigned | Error::BadSignature | Error::SourceForbidden { .. } => 403,
            Error::SourceTooLarge { .. } => 413,
            Error::SourceStatus { status: 404, .. } => 404,
            Error::SourceStatus { .. } | Error::SourceUnreachable { .. } => 502,
            Error::SourceTimeout { .. } => 504,
            Error::Image(e) => image_status(e),
            Error::Object { kind, .. } => match kind {
                ObjectErrorKind::NotFound => 404,
                ObjectErrorKind::Invalid => 400,
                ObjectErrorKind::TooLarge => 413,
                ObjectErrorKind::Unavailable => 502,
            },
            Error::Config { .. } | Error::Io { .. } => 500,
        }
    }
}

fn image_reason(e: &verge_imaging::Error) -> &'static str {
    use verge_imaging::Error as E;
    match e {
        E::TooLarge { .. }
        | E::OutputTooLarge { .. }
        | E::InputTooLarge { .. }
        | E::TooManyFrames { .. }
        | E::MetadataTooLarge { .. } => "ImageTooLarge",
        E::InvalidOption { .. } | E::AssetNotFound { .. } | E::Spec(_) => "InvalidRequest",
        E::Unsupported { .. } => "UnsupportedFormat",
        E::NoFrameAt { .. } => "NoFrameAt",
        E::MaxBytesUnreachable { .. } => "MaxBytesUnreachable",
        E::Encode { .. } | E::VideoTool { .. } | E::Io(_) => "Internal",
        _ => "InvalidImage",
    }
}

fn image_status(e: &verge_imaging::Error) -> u16 {
    match image_reason(e) {
        "ImageTooLarge" => 413,
        "InvalidRequest" => 400,
        "UnsupportedFormat" => 415,
        "Internal" => 500,
        _ => 422,
    }
}
