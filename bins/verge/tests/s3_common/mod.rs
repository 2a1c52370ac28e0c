//! Shared helpers of the S3 API tests (`s3_api`, `s3_bad_input`, `s3_crash`): a real
//! `verge cloud` with its S3 listener and an access key for the real AWS CLI and boto3
//! ([`start`], [`key`]); the S3 error code out of the tools' output ([`cli_code`]);
//! requests signed here with `verge_bench::sigv4` for what the tools will not send
//! (a skewed clock, another service in the scope) through reqwest ([`Signer`]) or a raw
//! TLS socket that stops mid-body ([`send_partial`]).
//!
//! Must not stand in for the server or the tools: every request reaches the real
//! listener.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;
use verge_bench::sigv4;
use verge_testkit::{AwsCli, Cloud};

pub const BIN: &str = env!("CARGO_BIN_EXE_verge");

/// A new access key `(id, secret)` through `POST /api/v1/s3keys`.
pub async fn key(cloud: &Cloud, buckets: &[&str], read_only: bool) -> Result<(String, String)> {
    let v = cloud
        .api(
            reqwest::Method::POST,
            "/api/v1/s3keys",
            Some(json!({"buckets": buckets, "readOnly": read_only})),
        )
        .await?;
    Ok((
        v["accessKeyId"].as_str().context("accessKeyId")?.to_owned(),
        v["secretAccessKey"]
            .as_str()
            .context("secretAccessKey")?
            .to_owned(),
    ))
}

/// A cloud with its S3 listener, and the AWS CLI / boto3 with an all-buckets key,
/// trusting the cluster CA.
pub async fn start() -> Result<(Cloud, AwsCli)> {
    start_with(&[]).await
}

/// [`start`] with more `verge cloud` arguments.
pub async fn start_with(args: &[&str]) -> Result<(Cloud, AwsCli)> {
    let cloud = Cloud::start(Path::new(BIN), args).await?;
    anyhow::ensure!(
        cloud.s3_url.starts_with("https://"),
        "no S3 listener: {:?}",
        cloud.s3_url
    );
    let (id, secret) = key(&cloud, &[], false).await?;
    let aws = AwsCli::new(&cloud.s3_url, &id, &secret)?.with_ca_pem(&cloud.ca_pem)?;
    Ok((cloud, aws))
}

/// The S3 error code the AWS CLI reported (`An error occurred (Code) when ...`), or
/// the whole stderr when there is none; panics when the command succeeded.
pub fn cli_code(out: &std::process::Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "expected a refusal, the command succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    err.split_once("An error occurred (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(code, _)| code.to_owned())
        .unwrap_or(err)
}

/// `aws ARGS` must be refused with `code`.
pub async fn expect_cli_code(aws: &AwsCli, args: &[&str], code: &str) -> Result<()> {
    let out = aws.run(args).await?;
    let got = cli_code(&out);
    assert_eq!(
        got,
        code,
        "aws {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The keys listed in `bucket` (all pages), through the CLI.
pub async fn listed(aws: &AwsCli, bucket: &str) -> Result<Vec<String>> {
    let out = aws
        .ok(&[
            "s3api",
            "list-objects-v2",
            "--bucket",
            bucket,
            "--output",
            "json",
        ])
        .await?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v["Contents"]
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|o| o["Key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// The listener still serves: a put, a get and a delete round trip (one boto3 run).
pub async fn assert_serving(aws: &AwsCli, bucket: &str) -> Result<()> {
    let out = aws
        .boto3_ok(
            "import sys, boto3\n\
             s3 = boto3.client('s3')\n\
             s3.put_object(Bucket=sys.argv[1], Key='alive.txt', Body=b'still serving')\n\
             print(s3.get_object(Bucket=sys.argv[1], Key='alive.txt')['Body'].read().decode())\n\
             s3.delete_object(Bucket=sys.argv[1], Key='alive.txt')\n",
            &[bucket],
        )
        .await?;
    assert_eq!(out.trim(), "still serving");
    Ok(())
}

/// `"md5hex"` of bytes.
pub fn quoted_md5(data: &[u8]) -> String {
    use md5::Digest;
    format!("\"{}\"", hex::encode(md5::Md5::digest(data)))
}

/// The multipart ETag of `data` cut in parts of `part` bytes.
pub fn multipart_etag(data: &[u8], part: usize) -> String {
    use md5::Digest;
    let mut h = md5::Md5::new();
    let mut n = 0;
    for chunk in data.chunks(part) {
        h.update(md5::Md5::digest(chunk));
        n += 1;
    }
    format!("\"{}-{n}\"", hex::encode(h.finalize()))
}

/// Deterministic bytes that do not repeat (xorshift from `seed`).
pub fn bytes_of(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Signs requests for the S3 listener itself (SigV4 in the header, `UNSIGNED-PAYLOAD`),
/// with any region, service and clock.
#[derive(Clone)]
pub struct Signer {
    pub creds: sigv4::Credentials,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub base: String,
    /// Added to the clock the request is signed with.
    pub skew: Duration,
    pub skew_ahead: bool,
}

impl Signer {
    pub fn new(s3_url: &str, access_key: &str, secret_key: &str) -> Signer {
        Signer {
            creds: sigv4::Credentials {
                access_key: access_key.to_owned(),
                secret_key: secret_key.to_owned(),
                region: "us-east-1".to_owned(),
                service: "s3".to_owned(),
            },
            host: s3_url.trim_start_matches("https://").to_owned(),
            base: s3_url.to_owned(),
            skew: Duration::ZERO,
            skew_ahead: false,
        }
    }

    /// The signed headers (`host`, `x-amz-date`, `x-amz-content-sha256`,
    /// `authorization`) for `method path?query` with `extra` headers also signed.
    pub fn headers(
        &self,
        method: &str,
        path: &str,
        query: &[(&str, &str)],
        extra: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let now = time::OffsetDateTime::now_utc();
        let t = if self.skew_ahead {
            now + self.skew
        } else {
            now - self.skew
        };
        let date = sigv4::amz_date(t);
        let mut headers: Vec<(&str, &str)> = vec![
            ("host", &self.host),
            ("x-amz-date", &date),
            ("x-amz-content-sha256", sigv4::UNSIGNED_PAYLOAD),
        ];
        headers.extend_from_slice(extra);
        let auth = sigv4::authorization(
            &self.creds,
            &sigv4::Request {
                method,
                path,
                query,
                headers: &headers,
                payload_hash: sigv4::UNSIGNED_PAYLOAD,
            },
            &date,
        );
        let mut out: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| *k != "host")
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        out.push(("authorization".to_owned(), auth));
        out
    }

    /// Sends a signed request through `http`: (status, headers, body).
    pub async fn send(
        &self,
        http: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
        let headers = self.headers(method.as_str(), path, query, &[]);
        let qs: String = query
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    sigv4::uri_encode(k, false),
                    sigv4::uri_encode(v, false)
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        let mut url = format!("{}{}", self.base, sigv4::uri_encode(path, true));
        if !qs.is_empty() {
            url = format!("{url}?{qs}");
        }
        let mut req = http.request(method, url).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        Ok((status, headers, resp.bytes().await?.to_vec()))
    }
}

/// `<Code>X</Code>` of an S3 XML error.
pub fn xml_code(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    text.split_once("<Code>")
        .and_then(|(_, r)| r.split_once("</Code>"))
        .map(|(c, _)| c.to_owned())
        .unwrap_or_else(|| text.into_owned())
}

/// A PUT of `path` declaring `declared` bytes that sends only `sent` of them over a raw
/// TLS connection to the S3 listener, then closes it (a client that died mid-upload).
/// Blocking; run it on a blocking thread.
pub fn send_partial(
    signer: &Signer,
    ca_pem: &str,
    path: &str,
    declared: usize,
    sent: usize,
) -> Result<()> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let server = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), server)?;
    let sock = std::net::TcpStream::connect(&signer.host)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let len = declared.to_string();
    let headers = signer.headers("PUT", path, &[], &[("content-length", &len)]);
    let mut head = format!(
        "PUT {} HTTP/1.1\r\nhost: {}\r\n",
        sigv4::uri_encode(path, true),
        signer.host
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes())?;
    let body = bytes_of(7, sent);
    for chunk in body.chunks(64 << 10) {
        tls.write_all(chunk)?;
    }
    tls.flush()?;
    // Give the server time to read what was sent, then vanish without the rest.
    std::thread::sleep(Duration::from_millis(300));
    let mut buf = [0u8; 512];
    let early = tls.read(&mut buf).unwrap_or(0);
    anyhow::ensure!(
        early == 0 || !String::from_utf8_lossy(&buf[..early]).starts_with("HTTP/1.1 200"),
        "the server acknowledged an incomplete body: {}",
        String::from_utf8_lossy(&buf[..early])
    );
    tls.sock.shutdown(std::net::Shutdown::Both)?;
    Ok(())
}
