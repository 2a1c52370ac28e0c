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
//! Tar and gzip-compressed tar, recognised by their magic bytes (never by name). Every
//! entry is checked before anything is written: no absolute paths, no `..`, no device
//! files or FIFOs, links that stay inside the archive, and bounds on the total size and
//! the number of entries. Everything is unpacked into `DIR.tmp`, which is renamed to
//! `DIR` only when complete, so a crash never leaves a half-unpacked `DIR`.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderValue, RANGE};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::error::{Error, Result, chain, io_err};
use crate::identity::Identity;

/// Default bound on what one archive may unpack to (sum of entry sizes).
pub const MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default bound on the number of entries of one archive.
pub const MAX_ENTRIES: u64 = 100_000;
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
/// guard — with the default policy when there is no `fetcher`), verified,
/// unpacked afresh, marked. A bad archive is not kept: the next attempt downloads again.
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
    let archive = downloads.join(&artifact.sha256);
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
        let _ = std::fs::remove_file(&archive);
        return Err(e);
    }
    std::fs::write(&marker, &artifact.sha256).map_err(io_err(&marker))?;
    let _ = std::fs::remove_file(&archive);
    Ok(())
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

/// Bounds for [`unpack_with_limits`].
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Sum of the entries' sizes.
    pub max_bytes: u64,
    pub max_entries: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: MAX_UNPACKED_BYTES,
            max_entries: MAX_ENTRIES,
        }
    }
}

/// What an archive file is, from its first bytes.
enum ArchiveKind {
    Tar,
    TarGz,
}

/// `ustar` at offset 257 (POSIX `ustar\0`, GNU `ustar `), or an all-zero first block
/// (an empty archive).
fn is_tar_header(block: &[u8]) -> bool {
    block.len() >= 512 && (&block[257..262] == b"ustar" || block[..512].iter().all(|b| *b == 0))
}

/// Reads up to `buf.len()` bytes (fewer only at the end of the input).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn detect(archive: &Path) -> Result<ArchiveKind> {
    let not_archive = || Error::NotAnArchive {
        path: archive.to_path_buf(),
    };
    let mut f = std::fs::File::open(archive).map_err(io_err(archive))?;
    let mut head = [0u8; 512];
    let n = read_full(&mut f, &mut head).map_err(io_err(archive))?;
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        // gzip: it must hold a tar.
        let f = std::fs::File::open(archive).map_err(io_err(archive))?;
        let mut gz = flate2::read::GzDecoder::new(f);
        let mut inner = [0u8; 512];
        let n = read_full(&mut gz, &mut inner).map_err(|_| not_archive())?;
        return if n == 512 && is_tar_header(&inner) {
            Ok(ArchiveKind::TarGz)
        } else {
            Err(not_archive())
        };
    }
    if n == 512 && is_tar_header(&head) {
        return Ok(ArchiveKind::Tar);
    }
    Err(not_archive())
}

/// `DIR.tmp`.
fn tmp_dir(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Unpacks a `.tar` or `.tar.gz` (by magic bytes) into `dir`, with the default limits
/// ([`MAX_UNPACKED_BYTES`], [`MAX_ENTRIES`]). Blocking: call it from
/// `spawn_blocking` in async code.
pub fn unpack(archive: &Path, dir: &Path) -> Result<()> {
    unpack_with_limits(archive, dir, UnpackLimits::default())
}

/// [`unpack`] with explicit bounds.
pub fn unpack_with_limits(archive: &Path, dir: &Path, limits: UnpackLimits) -> Result<()> {
    let kind = detect(archive)?;
    let tmp = tmp_dir(dir);
    // A crash may have left one behind.
    remove_tree(&tmp)?;
    std::fs::create_dir_all(&tmp).map_err(io_err(&tmp))?;
    let result = (|| {
        let f = std::fs::File::open(archive).map_err(io_err(archive))?;
        let reader: Box<dyn Read> = match kind {
            ArchiveKind::Tar => Box::new(io::BufReader::new(f)),
            ArchiveKind::TarGz => Box::new(flate2::read::GzDecoder::new(io::BufReader::new(f))),
        };
        unpack_entries(reader, archive, &tmp, limits)
    })();
    if let Err(e) = result {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    // Swap in: an existing DIR is moved aside first (a rename cannot replace a
    // non-empty directory), then removed.
    let old = {
        let mut s = dir.as_os_str().to_owned();
        s.push(".old");
        PathBuf::from(s)
    };
    if dir.exists() {
        remove_tree(&old)?;
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
    if let Some(parent) = dir.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    remove_tree(&old)?;
    Ok(())
}

fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io_err(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The relative path of an entry, or why it is refused.
fn safe_relative(path: &Path) -> std::result::Result<PathBuf, &'static str> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => return Err("a '..' component"),
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path"),
        }
    }
    Ok(out)
}

/// Whether a symlink at `entry` (relative to the root) pointing to `target` stays
/// inside the root.
fn symlink_stays_inside(entry: &Path, target: &Path) -> bool {
    let mut depth: i64 = entry.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

fn unpack_entries(
    reader: Box<dyn Read>,
    archive_path: &Path,
    into: &Path,
    limits: UnpackLimits,
) -> Result<()> {
    let refuse = |message: String| Error::UnsafeArchive {
        path: archive_path.to_path_buf(),
        message,
    };
    let read_err = |e: io::Error| Error::UnsafeArchive {
        path: archive_path.to_path_buf(),
        message: format!("reading the archive: {e}"),
    };
    let mut ar = tar::Archive::new(reader);
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(false);
    ar.set_unpack_xattrs(false);
    ar.set_mask(0o022);
    let mut total: u64 = 0;
    let mut count: u64 = 0;
    for entry in ar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        count += 1;
        if count > limits.max_entries {
            return Err(refuse(format!(
                "more than {} entries; refusing to unpack",
                limits.max_entries
            )));
        }
        let raw = entry.path().map_err(read_err)?.into_owned();
        let shown = raw.display().to_string();
        let rel = safe_relative(&raw)
            .map_err(|why| refuse(format!("entry {shown:?} has {why}; refusing to unpack")))?;
        let kind = entry.header().entry_type();
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse | T::Directory => {}
            T::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(read_err)?
                    .ok_or_else(|| refuse(format!("symlink {shown:?} has no target")))?
                    .into_owned();
                if !symlink_stays_inside(&rel, &target) {
                    return Err(refuse(format!(
                        "symlink {shown:?} points outside the archive ({}); refusing to unpack",
                        target.display()
                    )));
                }
            }
            T::Link => {
                let target = entry
                    .link_name()
                    .map_err(read_err)?
                    .ok_or_else(|| refuse(format!("hard link {shown:?} has no target")))?
                    .into_owned();
                safe_relative(&target).map_err(|why| {
                    refuse(format!(
                        "hard link {shown:?} targets {} with {why}; refusing to unpack",
                        target.display()
                    ))
                })?;
            }
            T::Char | T::Block => {
                return Err(refuse(format!(
                    "entry {shown:?} is a device file; refusing to unpack"
                )));
            }
            T::Fifo => {
                return Err(refuse(format!(
                    "entry {shown:?} is a FIFO; refusing to unpack"
                )));
            }
            other => {
                return Err(refuse(format!(
                    "entry {shown:?} has an unsupported type ({other:?}); refusing to unpack"
                )));
            }
        }
        total = total.saturating_add(entry.header().entry_size().map_err(read_err)?);
        if total > limits.max_bytes {
            return Err(refuse(format!(
                "unpacks to more than {} bytes; refusing to unpack",
                limits.max_bytes
            )));
        }
        if rel.as_os_str().is_empty() {
            continue;
        }
        if !entry
            .unpack_in(into)
            .map_err(|e| refuse(format!("entry {shown:?}: {e}")))?
        {
            return Err(refuse(format!(
                "entry {shown:?} would land outside the directory"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod guarded_tests;
