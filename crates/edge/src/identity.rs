//! The node's identity: joining a cluster (kubeadm-style CA pinning + CSR) and loading
//! the resulting key, certificate and CA from the data dir.
//!
//! # Joining
//!
//! 1. Fetch `GET {cloud}/api/v1/cluster/ca` over TLS **without** verifying the server
//!    (`CaFetchVerifier`). This is safe: nothing secret is sent on that connection
//!    (no token, no key: a bare GET), and the answer is not trusted as such — it is
//!    checked against the `sha256:` hash the operator gave out of band. A
//!    man-in-the-middle can at most serve a CA that fails the hash check (refused) or
//!    the real, public CA (harmless).
//! 2. Hash the DER of the first certificate in that PEM and compare it, in constant
//!    time, with `--ca-hash`; a mismatch refuses the join before anything is written
//!    or sent.
//! 3. From then on, talk to the cloud only with a client that trusts exactly that CA
//!    (normal WebPKI verification, server name from the URL).
//! 4. Generate an ECDSA P-256 key and a CSR whose subject CN is the node name, and
//!    `POST {cloud}/api/v1/join` with the bootstrap token. Only the CSR leaves the
//!    node; the private key never does.
//! 5. Write `node.key` (0600), `node.crt`, `ca.crt` and, last, `identity.json` (0600)
//!    into the data dir (0700). `identity.json` is the marker of a joined node: a data
//!    dir holding one refuses another join.
//!
//! # Files in the data dir
//!
//! | file            | mode | content                                                   |
//! |-----------------|------|-----------------------------------------------------------|
//! | `node.key`      | 0600 | PKCS#8 PEM private key (ECDSA P-256)                      |
//! | `node.crt`      | 0644 | PEM client certificate, CN = node name                    |
//! | `ca.crt`        | 0644 | PEM cluster CA                                            |
//! | `identity.json` | 0600 | `{name, cloud, mqttUrl, certificateExpiresAt, joinedAt}`  |

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result, chain, json_err};
use crate::fsutil;

/// File names inside the data dir.
pub mod files {
    pub const KEY: &str = "node.key";
    pub const CERT: &str = "node.crt";
    pub const CA: &str = "ca.crt";
    pub const IDENTITY: &str = "identity.json";
    /// The pair before the last rotation, kept until the next one: what
    /// [`super::Identity::load`] falls back to if a crash left a new key with an old
    /// certificate.
    pub const PREV_KEY: &str = "node.key.prev";
    pub const PREV_CERT: &str = "node.crt.prev";
}

/// Largest CA PEM accepted from the cloud.
const MAX_CA_BYTES: usize = 64 * 1024;
/// Largest join answer accepted from the cloud.
const MAX_JOIN_ANSWER_BYTES: usize = 256 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What `verge-edge join` was given.
#[derive(Clone)]
pub struct JoinOptions {
    /// `https://host:port` of the cloud API.
    pub cloud: String,
    /// Bootstrap token `id.secret`.
    pub token: String,
    /// `sha256:<64 hex>` of the cluster CA certificate's DER.
    pub ca_hash: String,
    /// Node name; default: the hostname, sanitized ([`sanitize_hostname`]).
    pub name: Option<String>,
    /// Labels the node asks for (the token's labels win on conflict, server-side).
    pub labels: BTreeMap<String, String>,
    pub data_dir: PathBuf,
}

impl fmt::Debug for JoinOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinOptions")
            .field("cloud", &self.cloud)
            .field("token", &"<redacted>")
            .field("ca_hash", &self.ca_hash)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// A joined node's identity, as stored in its data dir.
#[derive(Clone)]
pub struct Identity {
    pub name: String,
    /// The cloud API URL it joined (`https://host:port`).
    pub cloud: String,
    /// Where the uplink connects, when the cloud told (`mqtts://host:port`).
    pub mqtt_url: Option<String>,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// RFC 3339, as the cloud reported it.
    pub cert_expires_at: String,
    /// RFC 3339.
    pub joined_at: String,
    /// RFC 3339: when the certificate was last renewed (None: never).
    pub renewed_at: Option<String>,
    pub data_dir: PathBuf,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("cloud", &self.cloud)
            .field("mqtt_url", &self.mqtt_url)
            .field("cert_expires_at", &self.cert_expires_at)
            .field("joined_at", &self.joined_at)
            .field("data_dir", &self.data_dir)
            .field("key_pem", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// `identity.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IdentityFile {
    name: String,
    cloud: String,
    #[serde(default)]
    mqtt_url: Option<String>,
    certificate_expires_at: String,
    joined_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renewed_at: Option<String>,
}

/// The cloud's `201` answer to `POST /api/v1/join`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JoinAnswer {
    name: String,
    certificate: String,
    ca_certificate: String,
    certificate_expires_at: String,
    #[serde(default)]
    mqtt_url: Option<String>,
}

/// The cloud's error body `{reason, field, message}`.
#[derive(Debug, Deserialize)]
struct ApiErrorAnswer {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    field: Option<String>,
    #[serde(default)]
    message: String,
}

impl Identity {
    /// Loads the identity written by [`join`]; a missing file is named in the error
    /// (`…/node.crt: not found; run `verge-edge join` first`).
    pub fn load(data_dir: &Path) -> Result<Identity> {
        let id_path = data_dir.join(files::IDENTITY);
        let text = fsutil::read_required(&id_path)?;
        let file: IdentityFile =
            serde_json::from_str(&text).map_err(json_err(id_path.display().to_string()))?;
        let mut cert_pem = fsutil::read_required(&data_dir.join(files::CERT))?;
        let mut key_pem = fsutil::read_required(&data_dir.join(files::KEY))?;
        let ca_pem = fsutil::read_required(&data_dir.join(files::CA))?;
        if !key_matches_cert(&key_pem, &cert_pem) {
            // A rotation was interrupted between writing the key and the certificate:
            // the previous pair is still valid.
            let prev_key = std::fs::read_to_string(data_dir.join(files::PREV_KEY));
            let prev_cert = std::fs::read_to_string(data_dir.join(files::PREV_CERT));
            match (prev_key, prev_cert) {
                (Ok(k), Ok(c)) if key_matches_cert(&k, &c) => {
                    tracing::warn!(
                        "node.key does not match node.crt (interrupted rotation); using the previous pair"
                    );
                    key_pem = k;
                    cert_pem = c;
                }
                _ => {
                    return Err(Error::Tls(format!(
                        "{}: node.key does not match node.crt and no previous pair does; join again",
                        data_dir.display()
                    )));
                }
            }
        }
        Ok(Identity {
            name: file.name,
            cloud: file.cloud,
            mqtt_url: file.mqtt_url,
            cert_pem,
            key_pem,
            ca_pem,
            cert_expires_at: file.certificate_expires_at,
            joined_at: file.joined_at,
            renewed_at: file.renewed_at,
            data_dir: data_dir.to_path_buf(),
        })
    }

    /// When to renew: two thirds into the certificate's life as this node saw it
    /// (from its join or last renewal to its expiry), like kubelet's rotation. `None`
    /// if the times cannot be parsed.
    pub fn renew_at(&self) -> Option<OffsetDateTime> {
        let from = self.renewed_at.as_deref().unwrap_or(&self.joined_at);
        let from = OffsetDateTime::parse(from, &Rfc3339).ok()?;
        let until = self.cert_expires_at_time()?;
        Some(from + (until - from) * 2 / 3)
    }

    /// A fresh key and a CSR for this node's name: `(key PEM, CSR PEM)`.
    pub fn new_key_and_csr(&self) -> Result<(String, String)> {
        let (key, csr) = key_and_csr(&self.name)?;
        Ok((key.serialize_pem(), csr))
    }

    /// Installs a renewed certificate for `key_pem` (from [`Identity::new_key_and_csr`]):
    /// checks it is for this node and this key, keeps the current pair as
    /// `node.{key,crt}.prev`, then writes the new key, certificate and identity.json
    /// (each atomically). Returns the new identity.
    pub fn install_renewed(
        &self,
        key_pem: &str,
        cert_pem: &str,
        not_after_ms: i64,
    ) -> Result<Identity> {
        if !key_matches_cert(key_pem, cert_pem) {
            return Err(Error::Tls(
                "the renewed certificate is not for the key this node asked with".into(),
            ));
        }
        if cert_common_name(cert_pem).as_deref() != Some(self.name.as_str()) {
            return Err(Error::Tls(format!(
                "the renewed certificate is not for node {:?}",
                self.name
            )));
        }
        let expires =
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(not_after_ms) * 1_000_000)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .ok_or_else(|| {
                    Error::Invalid(format!("renewed certificate expiry {not_after_ms}"))
                })?;
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .map_err(|e| Error::Invalid(format!("formatting the time: {e}")))?;
        write_pair(
            &self.data_dir,
            (files::PREV_KEY, &self.key_pem),
            (files::PREV_CERT, &self.cert_pem),
        )?;
        let next = Identity {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
            cert_expires_at: expires,
            renewed_at: Some(now),
            ..self.clone()
        };
        write_identity(&next)?;
        Ok(next)
    }

    /// The certificate's expiry, parsed; `None` if the cloud sent something unparsable.
    pub fn cert_expires_at_time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.cert_expires_at, &Rfc3339).ok()
    }

    /// A rustls client config (ring provider) that trusts exactly the cluster CA and
    /// presents the node certificate and key as client auth: what the MQTT uplink
    /// (mutual TLS) uses.
    pub fn tls_client_config(&self) -> Result<rustls::ClientConfig> {
        let roots = root_store(&self.ca_pem)?;
        let chain = certs_from_pem(&self.cert_pem, "node.crt")?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Tls(format!("node.key: {e}")))?;
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| Error::Tls(format!("node certificate and key: {e}")))
    }
}

/// A fresh ECDSA key and a CSR (PEM) whose subject is just `CN=name`.
fn key_and_csr(name: &str) -> Result<(rcgen::KeyPair, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let csr = params.serialize_request(&key)?.pem()?;
    Ok((key, csr))
}

/// Whether the private key (PEM) is the one the certificate (PEM) was issued for.
fn key_matches_cert(key_pem: &str, cert_pem: &str) -> bool {
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Some(der) = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()
        .and_then(|c| c.ok())
    else {
        return false;
    };
    match x509_parser::parse_x509_certificate(der.as_ref()) {
        Ok((_, cert)) => cert.tbs_certificate.subject_pki.raw == key.public_key_der().as_slice(),
        Err(_) => false,
    }
}

fn cert_common_name(cert_pem: &str) -> Option<String> {
    let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .next()?
        .ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(cn)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs_from_pem(pem: &str, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{what}: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!("{what}: no certificate in PEM")));
    }
    Ok(certs)
}

/// A root store holding the first certificate of `ca_pem` (exactly the pinned CA).
fn root_store(ca_pem: &str) -> Result<rustls::RootCertStore> {
    let ca = certs_from_pem(ca_pem, "ca.crt")?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Tls("ca.crt: no certificate in PEM".into()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| Error::Tls(format!("ca.crt: {e}")))?;
    Ok(roots)
}

/// Parses `sha256:<64 hex>` (hex in either case) into the 32-byte digest.
pub fn parse_ca_hash(s: &str) -> Result<[u8; 32]> {
    let bad = || {
        Error::Invalid(format!(
            "--ca-hash {s:?}: expected sha256:<64 hex digits> (as printed by `verge token create --bootstrap`)"
        ))
    };
    let hex_part = s.trim().strip_prefix("sha256:").ok_or_else(bad)?;
    let bytes = hex::decode(hex_part).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

/// `sha256:<hex>` of a DER certificate.
pub fn ca_hash_of_der(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// `sha256:<hex>` of the first certificate in a PEM string.
pub fn ca_hash_of_pem(pem: &str) -> Result<String> {
    let first = first_cert_der(pem)?;
    Ok(ca_hash_of_der(&first))
}

fn first_cert_der(pem: &str) -> Result<CertificateDer<'static>> {
    certs_from_pem(pem, "cluster CA")?
        .into_iter()
        .next()
        .ok_or_else(|| Error::Tls("cluster CA: no certificate in PEM".into()))
}

/// Checks that the first certificate of `ca_pem` hashes to `expected` (compared in
/// constant time); a mismatch is [`Error::CaHashMismatch`].
pub fn verify_ca_hash(ca_pem: &str, expected: &str) -> Result<()> {
    let want = parse_ca_hash(expected)?;
    let der = first_cert_der(ca_pem)?;
    let got: [u8; 32] = Sha256::digest(&der).into();
    if bool::from(got.ct_eq(&want)) {
        Ok(())
    } else {
        Err(Error::CaHashMismatch {
            expected: format!("sha256:{}", hex::encode(want)),
            got: format!("sha256:{}", hex::encode(got)),
        })
    }
}

/// A node name from a hostname: lowercased, every character outside `[a-z0-9-]`
/// replaced by `-`, cut to 63 characters, leading and trailing `-` removed. Fails if
/// nothing usable is left (pass `--name` then).
pub fn sanitize_hostname(hostname: &str) -> Result<String> {
    let mapped: String = hostname
        .trim()
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(verge_api::limits::MAX_NAME_LEN)
        .collect();
    let name = mapped.trim_matches('-').to_owned();
    if verge_api::is_dns1123_label(&name) {
        Ok(name)
    } else {
        Err(Error::Invalid(format!(
            "cannot derive a node name from the hostname {hostname:?}; pass --name"
        )))
    }
}

fn default_name() -> Result<String> {
    let host = nix::unistd::gethostname()
        .map_err(|e| Error::Invalid(format!("cannot read the hostname ({e}); pass --name")))?;
    sanitize_hostname(&host.to_string_lossy())
}

/// Checks and normalizes the cloud URL: `https://host[:port]`, without a trailing `/`.
fn normalize_cloud(cloud: &str) -> Result<String> {
    let trimmed = cloud.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(trimmed)
        .map_err(|e| Error::Invalid(format!("--cloud {cloud:?}: {e}")))?;
    if url.scheme() != "https" {
        return Err(Error::Invalid(format!(
            "--cloud {cloud:?}: must be an https:// URL"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(Error::Invalid(format!("--cloud {cloud:?}: no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(Error::Invalid(format!(
            "--cloud {cloud:?}: must not have a query or fragment"
        )));
    }
    Ok(trimmed.to_owned())
}

/// Joins the cluster: see the module docs for the flow. On success the data dir holds
/// the node's identity; on any failure nothing has been written.
pub async fn join(opts: JoinOptions) -> Result<Identity> {
    let cloud = normalize_cloud(&opts.cloud)?;
    parse_ca_hash(&opts.ca_hash)?;
    if opts.token.trim().is_empty() {
        return Err(Error::Invalid("--token must not be empty".into()));
    }
    let name = match &opts.name {
        Some(n) if verge_api::is_dns1123_label(n) => n.clone(),
        Some(n) => {
            return Err(Error::Invalid(format!(
                "--name {n:?}: must be a DNS-1123 label (lowercase letters, digits and '-', at most 63 characters)"
            )));
        }
        None => default_name()?,
    };
    for (k, v) in &opts.labels {
        if !verge_api::is_label_key(k) || !verge_api::is_label_value(v) {
            return Err(Error::Invalid(format!("--label {k}={v}: invalid label")));
        }
    }
    let id_path = opts.data_dir.join(files::IDENTITY);
    if id_path.exists() {
        return Err(Error::AlreadyJoined {
            dir: opts.data_dir.clone(),
        });
    }

    // (a) + (b): the CA, fetched unverified, checked by hash.
    let ca_url = format!("{cloud}/api/v1/cluster/ca");
    let ca_bytes = {
        let client = http_client(unverified_tls_config()?, &ca_url)?;
        let resp = client
            .get(&ca_url)
            .send()
            .await
            .map_err(|e| http_err(&ca_url, &e))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(Error::Http {
                url: ca_url,
                message: format!("unexpected answer HTTP {status}"),
            });
        }
        read_limited(resp, MAX_CA_BYTES, &ca_url).await?
    };
    let ca_pem = String::from_utf8(ca_bytes).map_err(|_| Error::Http {
        url: ca_url.clone(),
        message: "the CA is not UTF-8 PEM".into(),
    })?;
    verify_ca_hash(&ca_pem, &opts.ca_hash)?;

    // (c): from here on, trust exactly that CA.
    let join_url = format!("{cloud}/api/v1/join");
    let client = http_client(pinned_tls_config(&ca_pem)?, &join_url)?;

    // (d): key and CSR.
    let (key, csr) = key_and_csr(&name)?;

    // (e): join.
    let body = serde_json::json!({
        "token": opts.token,
        "name": name,
        "csr": csr,
        "labels": opts.labels,
    });
    let resp = client
        .post(&join_url)
        .json(&body)
        .send()
        .await
        .map_err(|e| http_err(&join_url, &e))?;
    let status = resp.status();
    let answer = read_limited(resp, MAX_JOIN_ANSWER_BYTES, &join_url).await?;
    if status.as_u16() != 201 {
        let canonical = status.canonical_reason().unwrap_or("").to_owned();
        // One shape for every HTTP error the CLIs print: `401 Unauthorized: ...`.
        let answer = match serde_json::from_slice::<ApiErrorAnswer>(&answer) {
            Ok(e) if !e.message.is_empty() => verge_api::error_line(
                status.as_u16(),
                e.reason.as_deref().unwrap_or(&canonical),
                e.field.as_deref(),
                &e.message,
            ),
            _ => {
                let text = String::from_utf8_lossy(&answer);
                let text: String = text.trim().chars().take(512).collect();
                verge_api::error_line(status.as_u16(), &canonical, None, &text)
            }
        };
        return Err(Error::JoinRefused {
            status: status.as_u16(),
            answer,
        });
    }
    let answer: JoinAnswer =
        serde_json::from_slice(&answer).map_err(json_err(format!("{join_url}: join answer")))?;
    if answer.name != name {
        return Err(Error::Http {
            url: join_url,
            message: format!(
                "the cloud signed a certificate for {:?}, not {name:?}",
                answer.name
            ),
        });
    }
    certs_from_pem(&answer.certificate, "the node certificate from the cloud")?;
    // The CA in the answer came over the pinned connection; still, it must be the one
    // we pinned.
    verify_ca_hash(&answer.ca_certificate, &opts.ca_hash)?;

    // (f): write, identity.json last.
    let joined_at = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .map_err(|e| Error::Invalid(format!("formatting the join time: {e}")))?;
    let identity = Identity {
        name,
        cloud: cloud.clone(),
        mqtt_url: answer.mqtt_url,
        cert_pem: answer.certificate,
        key_pem: key.serialize_pem(),
        ca_pem: answer.ca_certificate,
        cert_expires_at: answer.certificate_expires_at,
        joined_at,
        renewed_at: None,
        data_dir: opts.data_dir.clone(),
    };
    write_identity(&identity)?;
    Ok(identity)
}

/// Writes a key (0600) then its certificate, each atomically: `(file name, PEM)`.
fn write_pair(dir: &Path, key: (&str, &str), cert: (&str, &str)) -> Result<()> {
    fsutil::write_atomic(&dir.join(key.0), key.1.as_bytes(), fsutil::PRIVATE_MODE)?;
    fsutil::write_atomic(&dir.join(cert.0), cert.1.as_bytes(), fsutil::PUBLIC_MODE)
}

fn write_identity(id: &Identity) -> Result<()> {
    let dir = &id.data_dir;
    fsutil::ensure_private_dir(dir)?;
    write_pair(dir, (files::KEY, &id.key_pem), (files::CERT, &id.cert_pem))?;
    fsutil::write_atomic(
        &dir.join(files::CA),
        id.ca_pem.as_bytes(),
        fsutil::PUBLIC_MODE,
    )?;
    let file = IdentityFile {
        name: id.name.clone(),
        cloud: id.cloud.clone(),
        mqtt_url: id.mqtt_url.clone(),
        certificate_expires_at: id.cert_expires_at.clone(),
        joined_at: id.joined_at.clone(),
        renewed_at: id.renewed_at.clone(),
    };
    let mut json = serde_json::to_vec_pretty(&file).map_err(json_err("identity.json"))?;
    json.push(b'\n');
    fsutil::write_atomic(&dir.join(files::IDENTITY), &json, fsutil::PRIVATE_MODE)
}

fn http_err(url: &str, e: &reqwest::Error) -> Error {
    Error::Http {
        url: url.to_owned(),
        message: chain(e),
    }
}

fn http_client(tls: rustls::ClientConfig, url: &str) -> Result<reqwest::Client> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| http_err(url, &e))
}

/// Reads a response body, refusing more than `limit` bytes.
async fn read_limited(mut resp: reqwest::Response, limit: usize, url: &str) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| http_err(url, &e))? {
        if out.len() + chunk.len() > limit {
            return Err(Error::Http {
                url: url.to_owned(),
                message: format!("answer larger than {limit} bytes"),
            });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

fn pinned_tls_config(ca_pem: &str) -> Result<rustls::ClientConfig> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(root_store(ca_pem)?)
        .with_no_client_auth())
}

fn unverified_tls_config() -> Result<rustls::ClientConfig> {
    let provider = provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(CaFetchVerifier { provider }))
            .with_no_client_auth(),
    )
}

/// Accepts any server certificate, for the one bootstrap request that fetches the
/// public cluster CA.
///
/// Why this is safe: that connection carries no secret (a bare `GET`, no token, no
/// key), and its answer is not believed but verified against the out-of-band
/// `sha256:` pin before anything else happens. The handshake signatures are still
/// checked, so the peer at least holds the key of the certificate it presents.
#[derive(Debug)]
struct CaFetchVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CaFetchVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed() -> (String, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["ca.test".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), cert.der().to_vec())
    }

    #[test]
    fn hostname_sanitizing() {
        assert_eq!(sanitize_hostname("Edge-01").unwrap(), "edge-01");
        assert_eq!(sanitize_hostname("My_Host.local").unwrap(), "my-host-local");
        assert_eq!(sanitize_hostname("  raspberrypi\n").unwrap(), "raspberrypi");
        assert_eq!(sanitize_hostname("-weird-").unwrap(), "weird");
        assert_eq!(sanitize_hostname("köln").unwrap(), "k-ln");
        let long = "a".repeat(70);
        assert_eq!(sanitize_hostname(&long).unwrap(), "a".repeat(63));
        // Cut at 63, then a trailing '-' is trimmed so the result is still a label.
        let cut = format!("{}.b", "a".repeat(62));
        assert_eq!(sanitize_hostname(&cut).unwrap(), "a".repeat(62));
        for bad in ["", "...", "___", "ü"] {
            let e = sanitize_hostname(bad).unwrap_err().to_string();
            assert!(e.contains("pass --name"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn ca_hash_parsing() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            parse_ca_hash(&format!("sha256:{hex64}")).unwrap(),
            [0xab; 32]
        );
        assert_eq!(
            parse_ca_hash(&format!("sha256:{}", hex64.to_uppercase())).unwrap(),
            [0xab; 32]
        );
        for bad in [
            hex64.clone(),
            format!("sha1:{hex64}"),
            format!("sha256:{}", &hex64[..62]),
            format!("sha256:{hex64}00"),
            "sha256:zz".to_owned(),
        ] {
            let e = parse_ca_hash(&bad).unwrap_err().to_string();
            assert!(e.contains("expected sha256:<64 hex digits>"), "{e}");
        }
    }

    #[test]
    fn ca_hash_compare() {
        let (pem, der) = self_signed();
        let right = ca_hash_of_der(&der);
        assert_eq!(ca_hash_of_pem(&pem).unwrap(), right);
        verify_ca_hash(&pem, &right).unwrap();
        verify_ca_hash(&pem, &right.to_uppercase().replace("SHA256:", "sha256:")).unwrap();

        let (other_pem, _) = self_signed();
        match verify_ca_hash(&other_pem, &right) {
            Err(Error::CaHashMismatch { expected, got }) => {
                assert_eq!(expected, right);
                assert_eq!(got, ca_hash_of_pem(&other_pem).unwrap());
                let msg = Error::CaHashMismatch { expected, got }.to_string();
                assert!(msg.contains("does not match --ca-hash"), "{msg}");
                assert!(msg.ends_with("refusing to join"), "{msg}");
            }
            other => panic!("expected a mismatch, got {other:?}"),
        }
        // Only the first certificate counts.
        let both = format!("{pem}{other_pem}");
        verify_ca_hash(&both, &right).unwrap();
        assert!(verify_ca_hash("not pem", &right).is_err());
    }

    #[test]
    fn cloud_url_rules() {
        assert_eq!(
            normalize_cloud("https://10.0.0.1:8443/").unwrap(),
            "https://10.0.0.1:8443"
        );
        assert!(normalize_cloud("http://x:1").is_err());
        assert!(normalize_cloud("x:1").is_err());
        assert!(normalize_cloud("https://x:1/?a=b").is_err());
    }

    #[test]
    fn load_names_the_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("identity.json: not found; run `verge-edge join` first"),
            "{e}"
        );
        std::fs::write(
            dir.path().join(files::IDENTITY),
            r#"{"name":"n","cloud":"https://c:1","certificateExpiresAt":"2030-01-01T00:00:00Z","joinedAt":"2025-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        let e = Identity::load(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("node.crt: not found; run `verge-edge join` first"),
            "{e}"
        );
    }

    #[test]
    fn tls_client_config_from_loaded_identity() {
        // A CA, a node cert signed by it, written as join would.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let node_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "edge-1");
        let node = p.signed_by(&node_key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let id = Identity {
            name: "edge-1".into(),
            cloud: "https://127.0.0.1:1".into(),
            mqtt_url: None,
            cert_pem: node.pem(),
            key_pem: node_key.serialize_pem(),
            ca_pem: ca.pem(),
            cert_expires_at: "2030-01-01T00:00:00Z".into(),
            joined_at: "2025-01-01T00:00:00Z".into(),
            renewed_at: None,
            data_dir: dir.path().join("d"),
        };
        write_identity(&id).unwrap();
        let loaded = Identity::load(&id.data_dir).unwrap();
        assert_eq!(loaded.name, "edge-1");
        assert_eq!(loaded.key_pem, id.key_pem);
        assert!(loaded.cert_expires_at_time().is_some());
        let cfg = loaded.tls_client_config().unwrap();
        assert!(cfg.client_auth_cert_resolver.has_certs());
        assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));

        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| {
            std::fs::metadata(id.data_dir.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode(files::KEY), 0o600);
        assert_eq!(mode(files::IDENTITY), 0o600);
        assert_eq!(
            std::fs::metadata(&id.data_dir)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    /// A CA and an identity for `name` signed by it, written to a temp dir.
    fn signed_identity(
        name: &str,
    ) -> (
        tempfile::TempDir,
        rcgen::Certificate,
        rcgen::KeyPair,
        Identity,
    ) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let node_key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let node = p.signed_by(&node_key, &ca, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let id = Identity {
            name: name.into(),
            cloud: "https://127.0.0.1:1".into(),
            mqtt_url: None,
            cert_pem: node.pem(),
            key_pem: node_key.serialize_pem(),
            ca_pem: ca.pem(),
            cert_expires_at: "2030-01-01T00:00:00Z".into(),
            joined_at: "2024-01-01T00:00:00Z".into(),
            renewed_at: None,
            data_dir: dir.path().join("d"),
        };
        write_identity(&id).unwrap();
        (dir, ca, ca_key, id)
    }

    fn sign_csr(csr: &str, ca: &rcgen::Certificate, ca_key: &rcgen::KeyPair) -> String {
        rcgen::CertificateSigningRequestParams::from_pem(csr)
            .unwrap()
            .signed_by(ca, ca_key)
            .unwrap()
            .pem()
    }

    #[test]
    fn renewal_is_due_two_thirds_in() {
        let (_d, _, _, mut id) = signed_identity("edge-1");
        id.joined_at = "2030-01-01T00:00:00Z".into();
        id.cert_expires_at = "2030-01-31T00:00:00Z".into();
        assert_eq!(
            id.renew_at().unwrap().format(&Rfc3339).unwrap(),
            "2030-01-21T00:00:00Z"
        );
        id.renewed_at = Some("2030-01-21T00:00:00Z".into());
        id.cert_expires_at = "2030-02-20T00:00:00Z".into();
        assert_eq!(
            id.renew_at().unwrap().format(&Rfc3339).unwrap(),
            "2030-02-10T00:00:00Z"
        );
        id.cert_expires_at = "garbage".into();
        assert!(id.renew_at().is_none());
    }

    #[test]
    fn renewed_certificate_is_checked_installed_and_survives_an_interrupted_write() {
        let (_d, ca, ca_key, id) = signed_identity("edge-1");
        let (key, csr) = id.new_key_and_csr().unwrap();
        let cert = sign_csr(&csr, &ca, &ca_key);

        // Not for the key we asked with: refused, nothing written.
        let (other_key, _) = id.new_key_and_csr().unwrap();
        let e = id
            .install_renewed(&other_key, &cert, 1_900_000_000_000)
            .unwrap_err();
        assert!(e.to_string().contains("not for the key"), "{e}");
        // For another node's name: refused.
        let mut other = id.clone();
        other.name = "edge-2".into();
        let (k2, csr2) = other.new_key_and_csr().unwrap();
        let e = id
            .install_renewed(&k2, &sign_csr(&csr2, &ca, &ca_key), 1_900_000_000_000)
            .unwrap_err();
        assert!(e.to_string().contains("edge-1"), "{e}");
        assert_eq!(Identity::load(&id.data_dir).unwrap().cert_pem, id.cert_pem);

        let next = id.install_renewed(&key, &cert, 1_900_000_000_000).unwrap();
        let loaded = Identity::load(&id.data_dir).unwrap();
        assert_eq!(loaded.cert_pem, cert);
        assert_eq!(loaded.key_pem, key);
        assert!(loaded.renewed_at.is_some());
        assert_eq!(loaded.cert_expires_at, next.cert_expires_at);
        assert!(loaded.tls_client_config().is_ok());

        // A crash between the key and the certificate write: the new key with the
        // old certificate. Load falls back to the previous (still valid) pair.
        let (newer_key, _) = loaded.new_key_and_csr().unwrap();
        fsutil::write_atomic(
            &id.data_dir.join(files::KEY),
            newer_key.as_bytes(),
            fsutil::PRIVATE_MODE,
        )
        .unwrap();
        fsutil::write_atomic(
            &id.data_dir.join(files::PREV_KEY),
            key.as_bytes(),
            fsutil::PRIVATE_MODE,
        )
        .unwrap();
        fsutil::write_atomic(
            &id.data_dir.join(files::PREV_CERT),
            cert.as_bytes(),
            fsutil::PUBLIC_MODE,
        )
        .unwrap();
        let recovered = Identity::load(&id.data_dir).unwrap();
        assert_eq!(recovered.key_pem, key);
        assert_eq!(recovered.cert_pem, cert);
        // No matching pair at all: a clear error.
        std::fs::remove_file(id.data_dir.join(files::PREV_KEY)).unwrap();
        let e = Identity::load(&id.data_dir).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }
}
