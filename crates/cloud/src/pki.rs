//! The cluster certificate authority: created at the first start of a data directory
//! (`ca.crt`, `ca.key` 0600), then used to issue the API server's certificate on every
//! start (so its SANs follow the listen address and `--tls-san`).
//!
//! The CA key never leaves the data directory. rcgen 0.13 signs with an issuer
//! `Certificate`; we rebuild it from the stored key and the fixed CA parameters, which
//! yields the same subject and key identifier as the stored `ca.crt`.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::secure_fs::{read_to_string, write_private, write_public};

const CA_COMMON_NAME: &str = "verge cluster CA";
const CA_ORG: &str = "verge";
/// Organization of node client certificates.
pub const NODE_ORG: &str = "verge:nodes";

/// The loaded CA: its PEM (what clients trust) and what is needed to sign.
pub struct ClusterCa {
    pub cert_pem: String,
    key: KeyPair,
    issuer: Certificate,
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, CA_ORG);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(3650);
    Ok(params)
}

impl ClusterCa {
    /// Loads `ca.crt`/`ca.key` from `dir`, creating them when both are missing.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        let crt = dir.join("ca.crt");
        let key = dir.join("ca.key");
        match (crt.exists(), key.exists()) {
            (true, true) => {
                let cert_pem = read_to_string(&crt)?;
                let key = KeyPair::from_pem(&read_to_string(&key)?)?;
                let issuer = ca_params()?.self_signed(&key)?;
                Ok(Self {
                    cert_pem,
                    key,
                    issuer,
                })
            }
            (false, false) => {
                let key_pair = KeyPair::generate()?;
                let cert = ca_params()?.self_signed(&key_pair)?;
                write_private(&key, key_pair.serialize_pem().as_bytes())?;
                write_public(&crt, cert.pem().as_bytes())?;
                tracing::info!(path = %crt.display(), "created cluster CA");
                Ok(Self {
                    cert_pem: cert.pem(),
                    key: key_pair,
                    issuer: cert,
                })
            }
            _ => Err(Error::Config(format!(
                "{} has only one of ca.crt and ca.key; restore the missing file or remove both to create a new CA (clients must then trust the new ca.crt)",
                dir.display()
            ))),
        }
    }

    /// `sha256:<hex>` of the CA certificate's DER, what edge nodes pin when joining.
    pub fn cert_hash(&self) -> Result<String> {
        ca_hash_from_pem(&self.cert_pem)
    }

    /// Issues a server certificate for the given DNS names and IPs (valid 1 year).
    pub fn issue_server_cert(&self, dns: &[String], ips: &[IpAddr]) -> Result<IssuedCert> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "verge-apiserver");
        dn.push(DnType::OrganizationName, CA_ORG);
        params.distinguished_name = dn;
        for d in dns {
            params.subject_alt_names.push(SanType::DnsName(
                d.clone()
                    .try_into()
                    .map_err(|_| Error::Config(format!("invalid DNS name for TLS SAN: {d}")))?,
            ));
        }
        for ip in ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_der: key.serialize_der(),
        })
    }
}

impl ClusterCa {
    /// A client certificate for `cn` (the cloud's identity towards an external broker,
    /// whose ACL keys on the CN), valid 1 year, as a rustls client config trusting
    /// only the cluster CA. The key lives in memory only.
    pub fn client_tls_config(&self, cn: &str) -> Result<Arc<rustls::ClientConfig>> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, CA_ORG);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(365);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer, &self.key)?;
        let chain = self.chain(&cert.pem())?;
        let roots = self.roots()?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
        Ok(Arc::new(cfg))
    }

    /// A CRL (PEM) listing these certificate serials (hex), numbered by the current
    /// time so a newer CRL always has a larger number. Its `nextUpdate` is ten years
    /// out: Mosquitto rejects every client once a loaded CRL is past it, and it only
    /// rereads the file at start.
    pub fn crl_pem(&self, serials: &[String]) -> Result<String> {
        let now = time::OffsetDateTime::now_utc();
        let revoked = serials
            .iter()
            .map(|s| {
                let bytes = hex::decode(s)
                    .map_err(|_| Error::Config(format!("revoked serial {s:?} is not hex")))?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&bytes),
                    revocation_time: now,
                    reason_code: Some(rcgen::RevocationReason::CessationOfOperation),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let number = (now.unix_timestamp_nanos() / 1_000_000) as u64;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(5),
            next_update: now + time::Duration::days(3650),
            crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer, &self.key)?.pem()?)
    }
}

impl ClusterCa {
    /// `cert_pem`'s certificates followed by the CA: what a TLS peer presents.
    fn chain(&self, cert_pem: &str) -> Result<Vec<CertificateDer<'static>>> {
        let mut chain = pem_certs(cert_pem)?;
        chain.extend(pem_certs(&self.cert_pem)?);
        Ok(chain)
    }

    /// A root store trusting only this CA.
    fn roots(&self) -> Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for c in pem_certs(&self.cert_pem)? {
            roots.add(c).map_err(|e| Error::Tls(e.to_string()))?;
        }
        Ok(roots)
    }
}

/// A node certificate issued from a CSR.
pub struct NodeCert {
    pub cert_pem: String,
    /// Hex serial number (what revocation records).
    pub serial: String,
    pub not_after: time::OffsetDateTime,
}

impl ClusterCa {
    /// Signs a node's CSR. Only the CSR's public key is used (its signature proves the
    /// node holds the key); the subject is set to the node name, and the certificate
    /// allows client authentication only.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node: &str,
        validity: time::Duration,
    ) -> Result<NodeCert> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        let requested_cn = csr
            .params
            .distinguished_name
            .get(&DnType::CommonName)
            .and_then(|v| match v {
                rcgen::DnValue::Utf8String(s) => Some(s.clone()),
                rcgen::DnValue::PrintableString(p) => Some(p.as_str().to_string()),
                _ => None,
            });
        if requested_cn.as_deref() != Some(node) {
            return Err(Error::Config(format!(
                "csr: subject CN {:?} does not match the node name {node:?}",
                requested_cn.unwrap_or_default()
            )));
        }
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node);
        dn.push(DnType::OrganizationName, NODE_ORG);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let serial: [u8; 16] = rand::random();
        // Positive, non-zero.
        let mut serial = serial.to_vec();
        serial[0] = (serial[0] & 0x7f) | 0x01;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + validity;
        csr.params = params;
        let cert = csr.signed_by(&self.issuer, &self.key)?;
        Ok(NodeCert {
            cert_pem: cert.pem(),
            serial: hex::encode(&serial),
            not_after: now + validity,
        })
    }
}

pub struct IssuedCert {
    pub cert_pem: String,
    pub key_der: Vec<u8>,
}

/// rustls config for the MQTT gateway: the server certificate, and client certificates
/// required and verified against the cluster CA.
pub fn mqtt_tls_config(ca: &ClusterCa, issued: &IssuedCert) -> Result<Arc<rustls::ServerConfig>> {
    let chain = ca.chain(&issued.cert_pem)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der.clone()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = ca.roots()?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| Error::Tls(e.to_string()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(Arc::new(cfg))
}

/// `sha256:<hex>` of the first certificate's DER in a PEM string.
pub fn ca_hash_from_pem(pem: &str) -> Result<String> {
    let der = pem_certs(pem)?;
    let first = der
        .first()
        .ok_or_else(|| Error::Tls("no certificate in the CA PEM".into()))?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(first.as_ref()))
    ))
}

/// Parses every certificate in a PEM string.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>> {
    let mut rd = pem.as_bytes();
    rustls_pemfile::certs(&mut rd)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("bad PEM certificate: {e}")))
}

/// rustls server config for the API: the issued certificate chained to the CA, ALPN h2
/// and http/1.1, ring as the one crypto provider. Client certificates are asked for
/// but optional (token clients send none); one that is sent must chain to the cluster
/// CA. Revocation is not checked here but per request, against the store (the set
/// changes while the server runs): see `http::artifacts::authenticate_token_or_node`.
pub fn server_tls_config(ca: &ClusterCa, issued: &IssuedCert) -> Result<Arc<rustls::ServerConfig>> {
    let chain = ca.chain(&issued.cert_pem)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(issued.key_der.clone()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(ca.roots()?),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| Error::Tls(e.to_string()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}
