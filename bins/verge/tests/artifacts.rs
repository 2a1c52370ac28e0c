//! The artifact store end to end, with real processes over real HTTPS: `verge artifact
//! push` / `list`; downloads with the admin token (whole, ranges, HEAD, 416), auth
//! (401 without, 403 for a viewer's upload, nodes may only download), a wrong
//! `?sha256` (422, nothing stored) and the size cap (413); a joined node downloads with
//! its client certificate (`verge_edge::artifact::{node_https_client, fetch}`),
//! resuming from a partial file, until `verge delete node` makes its certificate
//! refused; a certificate from another CA fails the handshake.

use std::path::Path;
use std::process::Command;

use anyhow::Result;
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, ETAG, RANGE, WWW_AUTHENTICATE,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use verge_edge::artifact::{artifact_url, fetch, node_https_client, partial_path};
use verge_testkit::{Cloud, Edge, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");
/// The cap the test cloud runs with.
const CAP: u64 = 1024 * 1024;

fn verge(cloud: &Cloud, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(BIN)
        .args(args)
        .env("VERGE_CONFIG", cloud.admin_config())
        .env("RUST_LOG", "off")
        .output()?)
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Deterministic, incompressible-looking content.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn error_body(resp: reqwest::Response) -> Value {
    resp.json().await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_download_ranges_auth_caps_and_node_certificates() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start(Path::new(BIN), &["--artifact-max-bytes", &CAP.to_string()]).await?;
    let http = cloud.client()?;
    let tmp = tempfile::tempdir()?;

    // --- push with the CLI ---
    let data = content(300_000, 7);
    let digest = sha256_hex(&data);
    let file = tmp.path().join("app.tar.gz");
    std::fs::write(&file, &data)?;
    let file_arg = file.to_str().unwrap();
    let out = ok(&verge(&cloud, &["artifact", "push", file_arg])?);
    assert!(out.contains(&format!("sha256: {digest}\n")), "{out}");
    assert!(out.contains("size: 300000\n"), "{out}");
    assert!(out.contains("# pushed"), "{out}");
    assert!(
        out.ends_with(&format!("artifact: {{sha256: {digest}}}\n")),
        "{out}"
    );
    // The output is YAML a native App can take the `artifact` from.
    let doc: Value = serde_norway::from_str(&out)?;
    assert_eq!(doc["artifact"]["sha256"], digest.as_str());
    // Again: idempotent.
    let out = ok(&verge(&cloud, &["artifact", "push", file_arg])?);
    assert!(out.contains("# already stored"), "{out}");
    let out = ok(&verge(&cloud, &["artifact", "list"])?);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq([digest.as_str(), "300000"])),
        "{out}"
    );
    let out = ok(&verge(&cloud, &["artifact", "list", "-o", "json"])?);
    let items: Value = serde_json::from_str(&out)?;
    assert_eq!(
        items,
        serde_json::json!([{"sha256": digest, "size": 300000}])
    );
    // Stored content-addressed, private.
    {
        use std::os::unix::fs::PermissionsExt;
        let stored = cloud
            .data_dir()
            .join("artifacts/sha256")
            .join(&digest[..2])
            .join(&digest);
        assert_eq!(std::fs::read(&stored)?, data);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&stored), 0o600);
        assert_eq!(mode(stored.parent().unwrap()), 0o700);
    }

    // --- download with the admin token ---
    let url = artifact_url(&cloud.url, &digest);
    let r = http
        .get(&url)
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_LENGTH], "300000");
    assert_eq!(r.headers()[ACCEPT_RANGES], "bytes");
    assert_eq!(r.headers()[ETAG], format!("\"{digest}\"").as_str());
    assert_eq!(r.bytes().await?.as_ref(), &data[..]);
    // Range N-M and N-.
    let r = http
        .get(&url)
        .bearer_auth(&cloud.admin_token)
        .header(RANGE, "bytes=1000-1999")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 1000-1999/300000");
    assert_eq!(r.headers()[CONTENT_LENGTH], "1000");
    assert_eq!(r.bytes().await?.as_ref(), &data[1000..2000]);
    let r = http
        .get(&url)
        .bearer_auth(&cloud.admin_token)
        .header(RANGE, "bytes=299990-")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes 299990-299999/300000");
    assert_eq!(r.bytes().await?.as_ref(), &data[299_990..]);
    let r = http
        .get(&url)
        .bearer_auth(&cloud.admin_token)
        .header(RANGE, "bytes=300000-")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()[CONTENT_RANGE], "bytes */300000");
    // HEAD: the size, no body.
    let r = http
        .head(&url)
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()[CONTENT_LENGTH], "300000");
    assert_eq!(r.headers()[ACCEPT_RANGES], "bytes");
    // Not found, bad digest.
    let missing = artifact_url(&cloud.url, &"0".repeat(64));
    let r = http
        .get(&missing)
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = http
        .get(format!("{}/api/v1/artifacts/not-hex", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let e = error_body(r).await;
    assert_eq!(e["field"], "sha256", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("path parameter sha256"),
        "{e}"
    );

    // --- auth ---
    let r = http.get(&url).send().await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key(WWW_AUTHENTICATE));
    let r = http.get(&url).bearer_auth("nope.nope").send().await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = http
        .get(format!("{}/api/v1/artifacts", cloud.url))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let viewer = cloud
        .api(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(serde_json::json!({"role": "viewer"})),
        )
        .await?["token"]
        .as_str()
        .unwrap()
        .to_string();
    let r = http.get(&url).bearer_auth(&viewer).send().await?;
    assert_eq!(r.status(), StatusCode::OK, "viewers may download");
    let r = http
        .post(format!("{}/api/v1/artifacts", cloud.url))
        .bearer_auth(&viewer)
        .body(b"x".to_vec())
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // --- a wrong ?sha256: 422, nothing stored ---
    let other = content(5000, 99);
    let r = http
        .post(format!("{}/api/v1/artifacts", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .query(&[("sha256", digest.as_str())])
        .body(other.clone())
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let e = error_body(r).await;
    assert_eq!(e["field"], "sha256", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains(&sha256_hex(&other)),
        "{e}"
    );
    let r = http
        .get(artifact_url(&cloud.url, &sha256_hex(&other)))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "nothing was stored");
    // Without ?sha256 it is stored (201), and the answer names it.
    let r = http
        .post(format!("{}/api/v1/artifacts", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .body(other.clone())
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await?;
    assert_eq!(v["sha256"], sha256_hex(&other).as_str());
    assert_eq!(v["size"], 5000);

    // --- over the cap: 413 naming the limit, with or without Content-Length ---
    let big = content(CAP as usize + 1, 3);
    let r = http
        .post(format!("{}/api/v1/artifacts", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .body(big.clone())
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let e = error_body(r).await;
    assert!(
        e["message"].as_str().unwrap().contains(&CAP.to_string()),
        "{e}"
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let r = http
        .post(format!("{}/api/v1/artifacts", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // No temp files left behind, nothing stored.
    let root = cloud.data_dir().join("artifacts/sha256");
    let leftovers: Vec<_> = std::fs::read_dir(&root)?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(
        !root
            .join(&sha256_hex(&big)[..2])
            .join(sha256_hex(&big))
            .exists()
    );

    // --- a node downloads with its client certificate ---
    let token = cloud.bootstrap_token(1).await?;
    let node_dir = tmp.path().join("node-a");
    let out = Edge::join(&edge_bin, &cloud, &token, "node-a", &[], &node_dir)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let identity = verge_edge::Identity::load(&node_dir)?;
    let node = node_https_client(&identity)?;
    // A node certificate reads only what is placed on its node: nothing yet.
    let r = node.get(&url).send().await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let e = error_body(r).await;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or("")
            .contains("not referenced by anything placed on node"),
        "{e}"
    );
    // A Function placed on every node ships its code in the artifact.
    cloud
        .apply(
            "functions",
            &json!({"apiVersion": "verge.dev/v1", "kind": "Function",
                    "metadata": {"name": "packaged"},
                    "spec": {"runtime": "python3", "handler": "handler.main",
                             "artifact": {"sha256": digest}}}),
        )
        .await?;
    // The other artifact is still not the node's to read.
    let r = node
        .get(artifact_url(&cloud.url, &sha256_hex(&other)))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let cache = tmp.path().join("cache");
    let dest = cache.join(&digest);
    let got = fetch(&node, &url, &digest, &dest, 16 << 20).await?;
    assert_eq!(std::fs::read(&got)?, data);
    // Resuming from a partial file: the first part is kept, the rest fetched.
    let dest2 = cache.join("resumed");
    std::fs::write(partial_path(&dest2), &data[..123_456])?;
    fetch(&node, &url, &digest, &dest2, 16 << 20).await?;
    assert_eq!(std::fs::read(&dest2)?, data);
    assert!(!partial_path(&dest2).exists());
    // A corrupt partial file shows the resume happened: the digest check catches it
    // and removes the file.
    let dest3 = cache.join("corrupt");
    std::fs::write(partial_path(&dest3), vec![0u8; 1000])?;
    let err = fetch(&node, &url, &digest, &dest3, 16 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, verge_edge::Error::ArtifactDigest { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&digest), "{err}");
    assert!(!partial_path(&dest3).exists() && !dest3.exists());
    // The node's own size bound.
    let err = fetch(&node, &url, &digest, &cache.join("small"), 1000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, verge_edge::Error::ArtifactTooLarge { .. }),
        "{err}"
    );
    // A node certificate is for downloads only.
    let r = node
        .get(format!("{}/api/v1/artifacts", cloud.url))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = node
        .get(format!("{}/api/v1/apps", cloud.url))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = node
        .post(format!("{}/api/v1/artifacts", cloud.url))
        .body(b"x".to_vec())
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // --- deleted node: its certificate is refused ---
    ok(&verge(&cloud, &["delete", "node", "node-a"])?);
    let err = fetch(&node, &url, &digest, &cache.join("after-delete"), 16 << 20)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("HTTP 401") && msg.contains("revoked"), "{msg}");
    // Also on a fresh connection.
    let fresh = node_https_client(&identity)?;
    let r = fresh.get(&url).send().await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Token clients are unaffected.
    let r = http
        .get(&url)
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);

    // --- a certificate from another CA: the handshake fails ---
    let stranger = foreign_client(&cloud.ca_pem)?;
    assert!(stranger.get(&url).send().await.is_err());

    // The OpenAPI document lists the routes.
    let doc: Value = http
        .get(format!("{}/openapi.json", cloud.url))
        .send()
        .await?
        .json()
        .await?;
    assert!(doc["paths"]["/api/v1/artifacts"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/artifacts/{sha256}"]["get"].is_object());
    Ok(())
}

/// A client trusting the cluster CA but presenting a node certificate from a CA of its
/// own.
fn foreign_client(ca_pem: &str) -> Result<reqwest::Client> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node-a");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "verge:nodes");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    let mut roots = rustls::RootCertStore::empty();
    let mut rd = ca_pem.as_bytes();
    for c in rustls_pemfile::certs(&mut rd) {
        roots.add(c?)?;
    }
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(
        rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
    );
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(vec![cert.der().clone()], key_der)?;
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .build()?)
}
