//! Edge onboarding over real HTTPS: bootstrap tokens (expired, revoked, used up,
//! unknown, wrong kind), CSRs for another node's name, re-joins, body and rate caps.

use std::time::Duration;

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::{Value, json};
use verge_testkit::{Cloud, csr};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

struct T {
    cloud: Cloud,
    http: reqwest::Client,
}

impl T {
    async fn start(args: &[&str]) -> Result<Self> {
        let cloud = Cloud::start(std::path::Path::new(BIN), args).await?;
        let http = cloud.client()?;
        Ok(Self { cloud, http })
    }

    async fn bootstrap(&self, extra: Value) -> Result<(String, String)> {
        let mut body = json!({"role": "bootstrap"});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let r = self
            .http
            .post(format!("{}/api/v1/tokens", self.cloud.url))
            .bearer_auth(&self.cloud.admin_token)
            .json(&body)
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await?;
        Ok((
            v["id"].as_str().unwrap().into(),
            v["token"].as_str().unwrap().into(),
        ))
    }

    async fn join(&self, token: &str, name: &str, cn: &str) -> Result<(StatusCode, Value)> {
        let (_, csr_pem) = csr(cn)?;
        let r = self
            .http
            .post(format!("{}/api/v1/join", self.cloud.url))
            .json(
                &json!({"token": token, "name": name, "csr": csr_pem, "labels": {"arch": "arm64"}}),
            )
            .send()
            .await?;
        let s = r.status();
        Ok((s, r.json().await.unwrap_or(Value::Null)))
    }

    async fn admin_get(&self, path: &str) -> Result<(StatusCode, Value)> {
        let r = self
            .http
            .get(format!("{}{path}", self.cloud.url))
            .bearer_auth(&self.cloud.admin_token)
            .send()
            .await?;
        let s = r.status();
        Ok((s, r.json().await.unwrap_or(Value::Null)))
    }
}

fn assert_401(s: StatusCode, b: &Value, word: &str) {
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert!(
        b["message"].as_str().unwrap_or("").contains(word),
        "want {word:?} in {b}"
    );
}

#[tokio::test]
async fn join_signs_a_node_certificate_and_records_the_node() -> Result<()> {
    let t = T::start(&[]).await?;
    // The CA is public and matches the pinned hash.
    let pem = t
        .http
        .get(format!("{}/api/v1/cluster/ca", t.cloud.url))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(pem, t.cloud.ca_pem);

    // A node asks for labels; only those its token grants are accepted (they decide
    // what is placed on it).
    let (_, stingy) = t
        .bootstrap(json!({"uses": 5, "labels": {"site": "sh-01"}}))
        .await?;
    let (s, b) = t.join(&stingy, "edge-0", "edge-0").await?;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    assert_eq!(b["field"], "labels.arch", "{b}");
    assert!(
        b["message"]
            .as_str()
            .unwrap_or("")
            .contains("not granted by the bootstrap token"),
        "{b}"
    );
    let (s, _) = t.admin_get("/api/v1/nodes/edge-0").await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "a refused join records no node");
    let (_, token) = t
        .bootstrap(json!({"uses": 5, "labels": {"site": "sh-01", "arch": "arm64"}}))
        .await?;
    let (s, b) = t.join(&token, "edge-1", "edge-1").await?;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["name"], "edge-1");
    assert!(
        b["certificate"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert_eq!(b["caCertificate"].as_str().unwrap(), t.cloud.ca_pem);
    let (s, node) = t.admin_get("/api/v1/nodes/edge-1").await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(node["metadata"]["labels"]["site"], "sh-01");
    assert_eq!(node["metadata"]["labels"]["arch"], "arm64");
    assert!(
        node["metadata"]["annotations"]["verge.dev/cert-serial"]
            .as_str()
            .is_some()
    );

    // Joining again under the same name: 409 until the node is deleted.
    let (s, b) = t.join(&token, "edge-1", "edge-1").await?;
    assert_eq!(s, StatusCode::CONFLICT, "{b}");
    assert_eq!(b["field"], "name");
    let r = t
        .http
        .delete(format!("{}/api/v1/nodes/edge-1", t.cloud.url))
        .bearer_auth(&t.cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, b) = t.join(&token, "edge-1", "edge-1").await?;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    // The bootstrap token is no API credential.
    let (s, b) = t
        .http
        .get(format!("{}/api/v1/apps", t.cloud.url))
        .bearer_auth(&token)
        .send()
        .await
        .map(|r| (r.status(), r))?;
    let b: Value = b.json().await?;
    assert_401(s, &b, "bootstrap");
    Ok(())
}

#[tokio::test]
async fn bad_tokens_and_csrs_are_refused() -> Result<()> {
    let t = T::start(&[]).await?;
    // Unknown token, wrong secret, not a bootstrap token.
    let (s, b) = t.join("abcdefgh.nothing", "n1", "n1").await?;
    assert_401(s, &b, "invalid token");
    let (id, good) = t.bootstrap(json!({"labels": {"arch": "arm64"}})).await?;
    let (s, b) = t.join(&format!("{id}.wrong"), "n1", "n1").await?;
    assert_401(s, &b, "invalid token");
    let (s, b) = t.join(&t.cloud.admin_token, "n1", "n1").await?;
    assert_401(s, &b, "not a bootstrap token");

    // A CSR for another node's name.
    let (s, b) = t.join(&good, "n1", "someone-else").await?;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["field"], "csr");
    // Garbage CSR, bad name.
    let r = t
        .http
        .post(format!("{}/api/v1/join", t.cloud.url))
        .json(&json!({"token": good, "name": "n1", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (s, b) = t.join(&good, "N1", "N1").await?;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    assert_eq!(b["field"], "name");
    // Failed joins did not spend the token: it still works.
    let (s, b) = t.join(&good, "n1", "n1").await?;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    // Used up.
    let (_, once) = t
        .bootstrap(json!({"uses": 1, "labels": {"arch": "arm64"}}))
        .await?;
    let (s, _) = t.join(&once, "n2", "n2").await?;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = t.join(&once, "n3", "n3").await?;
    assert_401(s, &b, "used up");

    // Revoked.
    let (rid, revoked) = t.bootstrap(json!({"labels": {"arch": "arm64"}})).await?;
    let r = t
        .http
        .delete(format!("{}/api/v1/tokens/{rid}", t.cloud.url))
        .bearer_auth(&t.cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let (s, b) = t.join(&revoked, "n4", "n4").await?;
    assert_401(s, &b, "revoked");

    // Expired.
    let (_, short) = t.bootstrap(json!({"ttlSeconds": 1})).await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, b) = t.join(&short, "n5", "n5").await?;
    assert_401(s, &b, "expired");

    // Oversized body and unknown field.
    let r = t
        .http
        .post(format!("{}/api/v1/join", t.cloud.url))
        .json(&json!({"token": good, "name": "n6", "csr": "x".repeat(20_000)}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let r = t
        .http
        .post(format!("{}/api/v1/join", t.cloud.url))
        .json(&json!({"token": good, "name": "n6", "csr": "x", "admin": true}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    Ok(())
}

#[tokio::test]
async fn join_attempts_are_rate_limited() -> Result<()> {
    let t = T::start(&["--join-rate", "2"]).await?;
    let mut limited = None;
    for _ in 0..40 {
        let r = t
            .http
            .post(format!("{}/api/v1/join", t.cloud.url))
            .json(&json!({"token": "abcdefgh.x", "name": "n", "csr": "x"}))
            .send()
            .await?;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("40 rapid joins at 2/s (burst 8) were never limited");
    assert!(r.headers().get("retry-after").is_some());
    let b: Value = r.json().await?;
    assert_eq!(b["reason"], "TooManyRequests");
    // Other endpoints are unaffected.
    let (s, _) = t.admin_get("/api/v1/nodes").await?;
    assert_eq!(s, StatusCode::OK);
    Ok(())
}
