//! Artifacts on the node: download from the cloud's artifact store over mutual TLS, or
//! from the `artifact.url` an App or Function names through the outbound guard
//! (resumable, verified by SHA-256), and unpack tar / tar.gz archives safely.
//!
//! # Download ([`fetch`])
//!
//! Two ways in ([`Via`]): the cloud's store (no `url`, or a `url` on the cloud's own
//! origin) with the node's certificate, trusting only the cluster CA; any other URL is
//! the user's choice and goes through `verge_outbound` ([`outbound_client`]): public
//! addresses only unless the operator allowed a network (`verge-edge run
//! --outbound-allow-networks`), every redirect hop and the connected peer checked. A
//! guarded download that gets no answer fails with the same words whatever the reason
//! (refused, unreachable, timeout, TLS); the detail is logged at debug level.
//!
//! The content goes to `DEST.partial` first. When that file exists from an earlier,
//! interrupted attempt, the request asks for the rest only (`Range: bytes=N-`); a
//! server that answers 200 instead of 206 (it ignored the range) restarts the file from
//! zero. The SHA-256 of the whole file is computed as it is written (the kept prefix is
//! read back once), compared with the expected digest, and only then is the file
//! renamed to `DEST`. A mismatch removes it ([`Error::ArtifactDigest`]); a transfer
//! that breaks off keeps what arrived, for the next attempt.
//!
//! # Unpacking ([`unpack`])
//!
//! Tar and gzip-compressed tar of untrusted content, in three parts: a bounded tar
//! reader of its own (`tar_reader`: every header size is checked before anything is
//! allocated), the pure rules of what may be created (`tree`: never through a symlink,
//! no link resolving outside by any chain, hard links only to earlier files) and the
//! I/O that creates it (`unpack`: `O_NOFOLLOW | O_EXCL`, into `DIR.tmp`, renamed when
//! the whole archive passed). Decision 015.
//!
//! # Refusals ([`install`])
//!
//! An archive whose *content* is refused (not a tar, or unsafe) is
//! [`Error::ArtifactRefused`], and remembered by its SHA-256 in
//! `DOWNLOADS/refused/{sha256}`: the same digest is never downloaded again (also after
//! a restart), so a refused artifact costs one download. Callers treat the refusal as
//! final for that version; a different digest is a new attempt. Failing to *write*
//! (a full disk) is an ordinary error: the verified download is kept for the retry.
//! Installs of one digest run one at a time ([`digest_lock`]): two at once would share
//! `DEST.partial`, and one from a URL serving other bytes could corrupt the other's
//! download and get a good digest refused.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, RANGE};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::{Error, Result, chain, io_err};
use crate::identity::Identity;

mod refused;
mod tar_reader;
mod tree;
mod unpack;

pub use unpack::{
    MAX_ENTRIES, MAX_LONG_NAME_HEADER, MAX_META_BYTES, MAX_PATH_BYTES, MAX_PAX_HEADER,
    MAX_UNPACKED_BYTES, UnpackLimits, unpack, unpack_with_limits,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A download that receives nothing for this long is abandoned (and resumed later).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest error answer read from the cloud.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// Deadline over a whole guarded download (an interrupted one resumes next time).
const GUARDED_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// `{cloud}/api/v1/artifacts/{sha256}`.
pub fn artifact_url(cloud_base: &str, sha256: &str) -> String {
    format!(
        "{}/api/v1/artifacts/{}",
        cloud_base.trim_end_matches('/'),
        sha256.to_ascii_lowercase()
    )
}

/// An HTTPS client for the cloud API that trusts exactly the cluster CA and
/// authenticates with the node's certificate and key (mutual TLS), the way the MQTT
/// uplink does. No overall timeout (artifacts can be large); connects time out after
/// 10 s and a transfer that stalls for 60 s fails.
pub fn node_https_client(identity: &Identity) -> Result<reqwest::Client> {
    let tls = identity.tls_client_config()?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .build()
        .map_err(|e| Error::Http {
            url: identity.cloud.clone(),
            message: chain(&e),
        })
}

/// The outbound guard for `artifact.url` downloads: public addresses only, plus
/// `allow_networks` (IPs or CIDRs) and, when not empty, only the hosts on `allow_hosts`;
/// system roots for https; redirects followed (at most 5, each hop checked); connects
/// time out after 10 s, a stalled transfer after 60 s, a whole download after 30 min.
/// Fails naming a bad allow-list entry.
pub fn outbound_client(
    allow_networks: &[String],
    allow_hosts: &[String],
) -> Result<verge_outbound::Client> {
    verge_outbound::Client::new(verge_outbound::Policy {
        allow_networks: allow_networks.to_vec(),
        allow_hosts: allow_hosts.to_vec(),
        max_bytes: MAX_UNPACKED_BYTES,
        timeout: GUARDED_TIMEOUT,
        connect_timeout: CONNECT_TIMEOUT,
        read_timeout: Some(READ_TIMEOUT),
        ..verge_outbound::Policy::default()
    })
    .map_err(|e| Error::Invalid(format!("outbound requests: {e}")))
}

/// Whether `url` is on the cloud's own origin (`https`, same host and port as `cloud`):
/// the cloud's store, fetched with the node's certificate rather than through the guard.
pub fn on_cloud_origin(url: &str, cloud: &str) -> bool {
    match (reqwest::Url::parse(url), reqwest::Url::parse(cloud)) {
        (Ok(u), Ok(c)) => {
            u.scheme() == "https"
                && c.scheme() == "https"
                && u.username().is_empty()
                && u.password().is_none()
                && u.host_str().is_some()
                && u.host_str() == c.host_str()
                && u.port_or_known_default() == c.port_or_known_default()
        }
        _ => false,
    }
}

/// How a download reaches its server.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    /// The cloud's artifact store: the node's mutual-TLS client ([`node_https_client`]).
    Node(&'a reqwest::Client),
    /// A URL an App or Function named: the outbound guard ([`outbound_client`]).
    Guarded(&'a verge_outbound::Client),
}

impl<'a> From<&'a reqwest::Client> for Via<'a> {
    fn from(client: &'a reqwest::Client) -> Self {
        Via::Node(client)
    }
}

impl<'a> From<&'a verge_outbound::Client> for Via<'a> {
    fn from(client: &'a verge_outbound::Client) -> Self {
        Via::Guarded(client)
    }
}

impl Via<'_> {
    async fn get(self, url: &str, headers: HeaderMap) -> Result<Answer> {
        match self {
            Via::Node(client) => client
                .get(url)
                .headers(headers)
                .send()
                .await
                .map(Answer::Node)
                .map_err(|e| http_err(url, &e)),
            Via::Guarded(client) => client
                .get(url, headers)
                .await
                .map(Answer::Guarded)
                .map_err(|e| guarded_err(url, e)),
        }
    }
}

/// An answer from either way in.
enum Answer {
    Node(reqwest::Response),
    Guarded(verge_outbound::Response),
}

impl Answer {
    fn status(&self) -> reqwest::StatusCode {
        let code = match self {
            Answer::Node(r) => return r.status(),
            Answer::Guarded(r) => r.status(),
        };
        reqwest::StatusCode::from_u16(code).unwrap_or(reqwest::StatusCode::BAD_GATEWAY)
    }

    fn headers(&self) -> &HeaderMap {
        match self {
            Answer::Node(r) => r.headers(),
            Answer::Guarded(r) => r.headers(),
        }
    }

    fn content_length(&self) -> Option<u64> {
        match self {
            Answer::Node(r) => r.content_length(),
            Answer::Guarded(r) => r.content_length(),
        }
    }

    async fn chunk(&mut self, url: &str) -> Result<Option<Bytes>> {
        match self {
            Answer::Node(r) => r.chunk().await.map_err(|e| http_err(url, &e)),
            Answer::Guarded(r) => r.chunk().await.map_err(|e| guarded_err(url, e)),
        }
    }
}

/// A guard error as the node reports it: an oversized answer as such, anything without
/// an answer in the guard's redacted words (the detail at debug level only).
fn guarded_err(url: &str, e: verge_outbound::Error) -> Error {
    if let verge_outbound::Error::TooLarge { max, .. } = e {
        return Error::ArtifactTooLarge {
            url: url.to_owned(),
            max,
        };
    }
    tracing::debug!(%url, error = %e, "artifact download failed");
    Error::Http {
        url: url.to_owned(),
        message: e.redacted(),
    }
}

/// `DEST.partial`.
pub fn partial_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

fn http_err(url: &str, e: &reqwest::Error) -> Error {
    Error::Http {
        url: url.to_owned(),
        message: chain(e),
    }
}

/// SHA-256 digest as 64 hex digits (either case) → lowercase.
fn parse_digest(s: &str) -> Result<String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Error::Invalid(format!(
            "artifact digest {s:?}: expected 64 hex digits (SHA-256)"
        )))
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL); `bytes */TOTAL` → (None, TOTAL).
fn content_range(headers: &HeaderMap) -> Option<(Option<u64>, Option<u64>)> {
    let v = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let total = total.trim().parse::<u64>().ok();
    let start = match range.trim() {
        "*" => None,
        r => Some(r.split_once('-')?.0.trim().parse::<u64>().ok()?),
    };
    Some((start, total))
}

/// The server's `message` from an error answer, or the status' reason.
async fn refusal(url: &str, resp: Answer) -> Error {
    let status = resp.status();
    let mut body = Vec::new();
    let mut resp = resp;
    while let Ok(Some(chunk)) = resp.chunk(url).await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ERROR_BODY {
            break;
        }
    }
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| {
            let t = String::from_utf8_lossy(&body)
                .trim()
                .chars()
                .take(512)
                .collect::<String>();
            if t.is_empty() {
                status
                    .canonical_reason()
                    .unwrap_or("no reason given")
                    .to_owned()
            } else {
                t
            }
        });
    Error::Http {
        url: url.to_owned(),
        message: format!("HTTP {}: {message}", status.as_u16()),
    }
}

/// SHA-256 of the first `len` bytes of a file.
async fn hash_prefix(path: &Path, len: u64) -> Result<Sha256> {
    let mut hasher = Sha256::new();
    let f = tokio::fs::File::open(path).await.map_err(io_err(path))?;
    let mut f = f.take(len);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).await.map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher)
}

async fn file_len(path: &Path) -> Result<Option<u64>> {
    match tokio::fs::metadata(path).await {
        Ok(m) => Ok(Some(m.len())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

async fn remove_if_exists(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

async fn sync_dir(dir: &Path) {
    if let Ok(d) = tokio::fs::File::open(dir).await {
        let _ = d.sync_all().await;
    }
}

/// Where artifacts come from.
#[derive(Clone)]
pub struct Fetcher {
    /// The cloud's API base (`https://host:port`).
    pub cloud: String,
    /// Authenticates as the node (mutual TLS).
    pub client: reqwest::Client,
    /// Every other URL: the outbound guard ([`outbound_client`]).
    pub outbound: verge_outbound::Client,
}

impl Fetcher {
    /// The node's way to its cloud, and `outbound` for everything else.
    pub fn new(identity: &Identity, outbound: verge_outbound::Client) -> Result<Self> {
        Ok(Fetcher {
            cloud: identity.cloud.clone(),
            client: node_https_client(identity)?,
            outbound,
        })
    }
}

/// Marker written into an unpacked directory, holding the artifact's digest.
const READY_MARKER: &str = ".verge-ready";

/// Makes `dir` hold the unpacked `artifact` (native apps, function code): nothing to do
/// when its ready marker names the digest; else downloaded into `downloads` (from the
/// cloud's store with the node's certificate, or `artifact.url` through the outbound
/// guard — with the default policy when there is no `fetcher`), verified, unpacked
/// afresh, marked.
///
/// An archive refused for its content is [`Error::ArtifactRefused`], deleted and
/// remembered by digest: asked again, `install` answers the same refusal without
/// downloading (see the module docs). When writing fails, the verified download is
/// kept for the next attempt.
pub async fn install(
    fetcher: Option<&Fetcher>,
    artifact: &verge_api::specs::ArtifactRef,
    downloads: &Path,
    dir: &Path,
    max_bytes: u64,
) -> Result<()> {
    let marker = dir.join(READY_MARKER);
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim() == artifact.sha256) {
        return Ok(());
    }
    let sha256 = parse_digest(&artifact.sha256)?;
    if let Some(reason) = refused::recall(downloads, &sha256) {
        return Err(Error::ArtifactRefused {
            sha256,
            reason,
            remembered: true,
        });
    }
    let archive = downloads.join(&artifact.sha256);
    let lock = digest_lock(&archive);
    let _one_at_a_time = lock.lock().await;
    // Another install of the digest may have refused it meanwhile.
    if let Some(reason) = refused::recall(downloads, &sha256) {
        return Err(Error::ArtifactRefused {
            sha256,
            reason,
            remembered: true,
        });
    }
    let public_only;
    let (url, via) = match (&artifact.url, fetcher) {
        (Some(u), Some(f)) if on_cloud_origin(u, &f.cloud) => (u.clone(), Via::Node(&f.client)),
        (Some(u), Some(f)) => (u.clone(), Via::Guarded(&f.outbound)),
        (Some(u), None) => {
            public_only = outbound_client(&[], &[])?;
            (u.clone(), Via::Guarded(&public_only))
        }
        (None, Some(f)) => (
            artifact_url(&f.cloud, &artifact.sha256),
            Via::Node(&f.client),
        ),
        (None, None) => {
            return Err(Error::Invalid(format!(
                "no artifact URL and no cloud to fetch sha256:{} from",
                artifact.sha256
            )));
        }
    };
    fetch(via, &url, &artifact.sha256, &archive, max_bytes).await?;
    let (a, d) = (archive.clone(), dir.to_path_buf());
    let unpacked = tokio::task::spawn_blocking(move || {
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(io_err(&d))?;
        }
        unpack(&a, &d)
    })
    .await
    .map_err(|e| Error::Invalid(format!("unpack task: {e}")))?;
    if let Err(e) = unpacked {
        let Some(reason) = e.archive_refusal() else {
            // Failing to write: the verified download is kept for the next attempt.
            return Err(e);
        };
        let _ = std::fs::remove_file(&archive);
        refused::remember(downloads, &sha256, &reason);
        return Err(Error::ArtifactRefused {
            sha256,
            reason,
            remembered: false,
        });
    }
    write_marker(&marker, &artifact.sha256)?;
    let _ = std::fs::remove_file(&archive);
    Ok(())
}

/// The lock held while `archive` (a digest's download path) is fetched and unpacked.
fn digest_lock(archive: &Path) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Mutex, Weak};
    type Locks = Mutex<HashMap<PathBuf, Weak<tokio::sync::Mutex<()>>>>;
    static LOCKS: LazyLock<Locks> = LazyLock::new(Default::default);
    let mut all = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|_, l| l.strong_count() > 0);
    if let Some(l) = all.get(archive).and_then(Weak::upgrade) {
        return l;
    }
    let l = Arc::new(tokio::sync::Mutex::new(()));
    all.insert(archive.to_path_buf(), Arc::downgrade(&l));
    l
}

/// Writes the ready marker as a new file, never through a symlink: an archive cannot
/// bring one of that name, and the file is created with `O_EXCL | O_NOFOLLOW`. One
/// left by a concurrent install of the same directory is replaced (unlinked, never
/// followed).
fn write_marker(marker: &Path, sha256: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .mode(0o644)
            .open(marker)
    };
    let mut f = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(marker).map_err(io_err(marker))?;
            create()
        }
        other => other,
    }
    .map_err(io_err(marker))?;
    f.write_all(sha256.as_bytes()).map_err(io_err(marker))
}

/// Downloads `url` to `dest` (with the node's client or through the guard, see
/// [`Via`]), verified against `sha256` (64 hex digits), refusing more than
/// `max_bytes`. Resumes from `dest.partial` when an earlier attempt left one. When
/// `dest` already holds the right content, nothing is downloaded.
pub async fn fetch<'a>(
    via: impl Into<Via<'a>>,
    url: &str,
    sha256: &str,
    dest: &Path,
    max_bytes: u64,
) -> Result<PathBuf> {
    let via = via.into();
    let expected = parse_digest(sha256)?;
    if file_len(dest).await?.is_some() {
        let got = hex::encode(hash_prefix(dest, u64::MAX).await?.finalize());
        if got == expected {
            return Ok(dest.to_path_buf());
        }
        tracing::warn!(path = %dest.display(), %expected, %got, "stored artifact does not match its digest; downloading again");
        remove_if_exists(dest).await?;
    }
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io_err(parent))?;
    }
    let partial = partial_path(dest);
    let mut offset = file_len(&partial).await?.unwrap_or(0);
    if offset > max_bytes {
        offset = 0;
    }

    // At most two requests: a resume the server cannot serve falls back to a full one.
    // `None`: the partial file already holds everything.
    let resp = loop {
        let mut headers = HeaderMap::new();
        if offset > 0
            && let Ok(range) = HeaderValue::from_str(&format!("bytes={offset}-"))
        {
            headers.insert(RANGE, range);
        }
        let resp = via.get(url, headers).await?;
        match resp.status().as_u16() {
            206 if offset > 0 => {
                let (start, total) = content_range(resp.headers()).unwrap_or((None, None));
                if start != Some(offset) {
                    return Err(Error::Http {
                        url: url.to_owned(),
                        message: format!(
                            "asked for bytes from {offset}, the answer starts at {}",
                            start.map_or("an unknown offset".into(), |s| s.to_string())
                        ),
                    });
                }
                if total.is_some_and(|t| t > max_bytes) {
                    return Err(Error::ArtifactTooLarge {
                        url: url.to_owned(),
                        max: max_bytes,
                    });
                }
                break Some(resp);
            }
            200 => {
                if offset > 0 {
                    tracing::info!(%url, offset, "the server ignored the range; downloading from the start");
                    offset = 0;
                }
                if resp.content_length().is_some_and(|l| l > max_bytes) {
                    return Err(Error::ArtifactTooLarge {
                        url: url.to_owned(),
                        max: max_bytes,
                    });
                }
                break Some(resp);
            }
            416 if offset > 0 => {
                // Nothing left to send: the partial file may be complete already.
                if content_range(resp.headers()).and_then(|(_, t)| t) == Some(offset) {
                    break None;
                }
                offset = 0;
            }
            _ => return Err(refusal(url, resp).await),
        }
    };
    let mut hasher = if offset > 0 {
        hash_prefix(&partial, offset).await?
    } else {
        Sha256::new()
    };
    if let Some(mut resp) = resp {
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(offset == 0)
            .open(&partial)
            .await
            .map_err(io_err(&partial))?;
        if offset > 0 {
            // Drop anything past the verified prefix (there is none, normally).
            file.set_len(offset).await.map_err(io_err(&partial))?;
            file.seek(io::SeekFrom::Start(offset))
                .await
                .map_err(io_err(&partial))?;
        }
        let mut file = tokio::io::BufWriter::with_capacity(256 * 1024, file);
        let mut size = offset;
        loop {
            let chunk = match resp.chunk(url).await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    // Keep what arrived for the next attempt.
                    let _ = file.flush().await;
                    return Err(e);
                }
            };
            size += chunk.len() as u64;
            if size > max_bytes {
                drop(file);
                remove_if_exists(&partial).await?;
                return Err(Error::ArtifactTooLarge {
                    url: url.to_owned(),
                    max: max_bytes,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_err(&partial))?;
        }
        file.flush().await.map_err(io_err(&partial))?;
        file.into_inner()
            .sync_all()
            .await
            .map_err(io_err(&partial))?;
    } else {
        hasher = hash_prefix(&partial, offset).await?;
    }

    let got = hex::encode(hasher.finalize());
    if got != expected {
        remove_if_exists(&partial).await?;
        return Err(Error::ArtifactDigest {
            url: url.to_owned(),
            expected,
            got,
        });
    }
    tokio::fs::rename(&partial, dest)
        .await
        .map_err(io_err(dest))?;
    if let Some(parent) = dest.parent() {
        sync_dir(parent).await;
    }
    Ok(dest.to_path_buf())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod guarded_tests;
