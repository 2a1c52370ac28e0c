//! The edge library's one error type. Every message names what failed (a path, the
//! cloud's URL, the server's own words) so the CLI can print it as a single line.

use std::path::{Path, PathBuf};

/// Everything that can go wrong in the edge library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file the node needs is missing: it has not joined (or its data dir is wrong).
    #[error("{}: not found; run `verge-edge join` first", path.display())]
    NotJoined { path: PathBuf },
    /// `join` into a data dir that already holds an identity.
    #[error(
        "{} already holds a joined node; use a new --data-dir or remove it",
        dir.display()
    )]
    AlreadyJoined { dir: PathBuf },
    /// The CA the cloud served does not hash to the pinned `--ca-hash`.
    #[error("the cloud's CA ({got}) does not match --ca-hash ({expected}); refusing to join")]
    CaHashMismatch { expected: String, got: String },
    /// The cloud answered the join with an error; `answer` is its status, reason and
    /// message on one line (`401 Unauthorized: ...`, [`verge_api::error_line`]).
    #[error("the cloud refused to join this node: {answer}")]
    JoinRefused { status: u16, answer: String },
    /// Bad input from the caller (a flag, a name, a URL).
    #[error("{0}")]
    Invalid(String),
    /// Talking to the cloud over HTTPS failed (connect, TLS, timeout, a bad answer).
    #[error("{url}: {message}")]
    Http { url: String, message: String },
    /// Building a TLS configuration or reading PEM material failed.
    #[error("tls: {0}")]
    Tls(String),
    /// Generating the key or the CSR failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// The local redb database failed (including I/O errors such as a full disk).
    #[error("local database: {0}")]
    Db(#[source] Box<redb::Error>),
    /// Another process holds the database (a second `verge-edge run` on one data dir).
    #[error(
        "{}: in use by another process (is `verge-edge run` already running on this data dir?)",
        path.display()
    )]
    InUse { path: PathBuf },
    /// The data dir could not be taken (its modes forced at start).
    #[error("data dir: {0}")]
    DataDir(#[from] verge_datadir::Error),
    /// A stored record could not be decoded.
    #[error("local database: corrupt record {what}: {message}")]
    Corrupt { what: String, message: String },
    /// JSON (de)serialization of something the node owns failed.
    #[error("{what}: {source}")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    /// A queue item larger than the whole queue bound: refused (and counted as dropped).
    #[error("queue: an item of {size} bytes exceeds the queue bound of {max} bytes; dropped")]
    QueueFull { size: u64, max: u64 },
    /// The local API answered with an error, or could not be reached.
    #[error("local API: {0}")]
    LocalApi(String),
    /// The registry has no such image (repository or tag): `message` is the daemon's.
    #[error("image {image} not found: {message}")]
    ImageNotFound { image: String, message: String },
    /// The image's registry could not be reached (refused, timed out, no such host).
    #[error("pulling {image}: registry unreachable: {message}")]
    RegistryUnreachable { image: String, message: String },
    /// The Docker engine could not be reached, or answered with an error (its words).
    #[error("docker: {0}")]
    Docker(String),
    /// A downloaded artifact does not hash to the digest it was fetched by; the
    /// download was removed.
    #[error(
        "{url}: the download hashes to sha256:{got}, not the expected sha256:{expected}; removed it"
    )]
    ArtifactDigest {
        url: String,
        expected: String,
        got: String,
    },
    /// An artifact larger than the node accepts.
    #[error("{url}: the artifact exceeds the limit of {max} bytes")]
    ArtifactTooLarge { url: String, max: u64 },
    /// `artifact::unpack` of a file that is neither a tar nor a gzip-compressed tar.
    #[error("{}: not a tar or tar.gz archive", path.display())]
    NotAnArchive { path: PathBuf },
    /// An archive `artifact::unpack` refuses (absolute or `..` paths, device files,
    /// links leaving it or written through, oversized headers, too large, too many
    /// entries) or cannot read; `message` names the entry.
    #[error("{}: {message}", path.display())]
    UnsafeArchive { path: PathBuf, message: String },
    /// `artifact::install` refused an artifact for its content (not an archive, or
    /// unsafe); final for that digest: it is remembered and not downloaded again.
    #[error(
        "artifact sha256:{sha256} refused{}: {reason}",
        if *remembered { " (remembered; not downloaded again)" } else { "" }
    )]
    ArtifactRefused {
        sha256: String,
        reason: String,
        /// Answered from the memory of an earlier refusal, without a download.
        remembered: bool,
    },
    /// A native app's `command` is not in its artifact nor on `PATH`.
    #[error("app {app}: command not found: {command}")]
    CommandNotFound { app: String, command: String },
    /// Starting or stopping a process failed (the OS's words).
    #[error("app {app}: {message}")]
    Process { app: String, message: String },
    /// A function pack could not register its builtins on the node (its own words).
    #[error("builtin functions: {0}")]
    Builtins(String),
    /// A part of the running node (the local API's or the uplink's task) failed.
    #[error("{0}")]
    Task(String),
}

impl Error {
    /// Whether this is a refusal of an artifact's content, which trying again cannot
    /// change ([`Error::ArtifactRefused`]): callers stop retrying that version.
    pub fn is_refused_artifact(&self) -> bool {
        matches!(self, Error::ArtifactRefused { .. })
    }

    /// Why an archive is refused, when this error is about its content (not an
    /// archive, or unsafe) rather than about the node (a full disk).
    pub(crate) fn archive_refusal(&self) -> Option<String> {
        match self {
            Error::NotAnArchive { .. } => Some("not a tar or tar.gz archive".into()),
            Error::UnsafeArchive { message, .. } => Some(message.clone()),
            _ => None,
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `map_err` helper: an I/O error about `path`.
pub(crate) fn io_err(path: impl AsRef<Path>) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.as_ref().to_path_buf();
    move |source| Error::Io { path, source }
}

/// `map_err` helper for opening a redb database at `path`: a held lock is
/// [`Error::InUse`].
pub(crate) fn db_open_err(path: impl AsRef<Path>) -> impl FnOnce(redb::DatabaseError) -> Error {
    let path = path.as_ref().to_path_buf();
    move |e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => Error::InUse { path },
        e => Error::from(e),
    }
}

/// `map_err` helper: a JSON error about `what`.
pub(crate) fn json_err(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> Error {
    let what = what.into();
    move |source| Error::Json { what, source }
}

/// An error and its sources, joined with `": "` on one line (reqwest and hyper keep the
/// useful part — "connection refused", "invalid peer certificate" — in the sources).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Db(Box::new(redb::Error::from(e)))
            }
        }
    )*};
}
impl From<redb::Error> for Error {
    fn from(e: redb::Error) -> Self {
        Error::Db(Box::new(e))
    }
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);
