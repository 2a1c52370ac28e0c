//! Node deletion interrupted by a crash at each step finishes after the restart, and
//! the old certificate is refused (issue 15, decision 028), with a real cloud and a
//! real `verge-edge`:
//! - the cloud runs with `VERGE_TEST_CRASH_AT=node-delete:{revoked,kicked,forgotten}`,
//!   so its node-deletion controller aborts the process (no cleanup, like kill -9) right
//!   after that step; the test sees the API go away and the abort in the cloud's log;
//! - restarted on the same data directory without it, the cloud finishes the deletion
//!   (the Node disappears) and refuses the node's certificate: on the MQTT gateway (the
//!   restarted agent is told its certificate was revoked, counted as a `revoked`
//!   refusal) and on the HTTPS artifact endpoint (401 naming the revocation);
//! - a plain `verge delete node` answers once the node is gone, a repeated DELETE is a
//!   404, and the name can join again;
//! - finalizers on any object: DELETE marks it, it goes once an update removes the last
//!   one; `deletionTimestamp` and `verge.dev/` finalizers are the server's.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::StatusCode;
use verge_testkit::{Cloud, Edge, eventually, success, verge_cli, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

const REVOKED_LINE: &str = "its certificate was revoked";

fn revoked_lines(edge: &Edge) -> usize {
    edge.log()
        .lines()
        .filter(|l| l.contains(REVOKED_LINE))
        .count()
}

/// A GET of some artifact with the node's own client certificate: its status and body.
async fn artifact_get_as_node(cloud: &Cloud, node_dir: &Path) -> Result<(StatusCode, String)> {
    let identity = verge_edge::Identity::load(node_dir)?;
    // A fresh client: a new TLS handshake with the old certificate.
    let client = verge_edge::artifact::node_https_client(&identity)?;
    let url = format!("{}/api/v1/artifacts/{}", cloud.url, "0".repeat(64));
    let r = client.get(&url).send().await?;
    Ok((r.status(), r.text().await.unwrap_or_default()))
}

async fn node_exists(cloud: &Cloud, node: &str) -> Result<bool> {
    let r = cloud
        .client()?
        .get(format!("{}/api/v1/nodes/{node}", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    match r.status() {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        s => anyhow::bail!("GET node {node}: {s}"),
    }
}

async fn crash_at(point: &str) -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let crash = format!("node-delete:{point}");
    let mut cloud = Cloud::start_env(
        Path::new(BIN),
        &["--heartbeat-interval", "1s"],
        &[("VERGE_TEST_CRASH_AT", &crash)],
    )
    .await?;
    let node = format!("del-{point}");
    let dirs = tempfile::tempdir()?;
    let dir = dirs.path().join(&node);
    let token = cloud.bootstrap_token(1).await?;
    let out = Edge::join(&edge_bin, &cloud, &token, &node, &[], &dir)?;
    anyhow::ensure!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut edge = Edge::start_logging(
        &edge_bin,
        &dir,
        &["--heartbeat-interval", "1s", "--reconnect-max", "1s"],
        "info",
    )?;
    cloud.wait_ready(&[&node]).await?;
    let joined = cloud
        .api(reqwest::Method::GET, &format!("/api/v1/nodes/{node}"), None)
        .await?;
    assert_eq!(
        joined["metadata"]["finalizers"],
        serde_json::json!(["verge.dev/node-cleanup"]),
        "{joined}"
    );
    // The certificate works before: an unknown artifact is a 404, not a 401.
    let (status, body) = artifact_get_as_node(&cloud, &dir).await?;
    assert_ne!(status, StatusCode::UNAUTHORIZED, "{body}");

    // The delete: the cloud dies at the step (the answer may or may not arrive).
    let _ = cloud
        .client()?
        .delete(format!("{}/api/v1/nodes/{node}", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await;
    let probe = cloud.client()?;
    let ready = format!("{}/readyz", cloud.url);
    eventually(
        Duration::from_secs(30),
        "the cloud aborted at the crash point",
        async || probe.get(&ready).send().await.is_err().then_some(()),
    )
    .await?;
    let log = cloud.log();
    assert!(
        log.contains("aborting the process (crash test)") && log.contains(&node),
        "the abort is logged:\n{log}"
    );

    // Restarted on the same data dir, without the crash point.
    cloud.clear_env();
    cloud.restart().await?;
    eventually(
        Duration::from_secs(30),
        "the deletion finished after the restart",
        async || (!node_exists(&cloud, &node).await.ok()?).then_some(()),
    )
    .await?;

    // The old certificate is refused over HTTPS...
    let (status, body) = artifact_get_as_node(&cloud, &dir).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("revoked"), "{body}");
    // ...and by the MQTT gateway: the agent, started again with it, is told so.
    let before = revoked_lines(&edge);
    edge.restart()?;
    eventually(
        Duration::from_secs(30),
        "the restarted agent is refused as revoked",
        async || (revoked_lines(&edge) > before).then_some(()),
    )
    .await?;
    assert!(
        cloud
            .metric("verge_mqtt_refused_total{reason=\"revoked\"}")
            .await?
            >= 1.0,
        "the restarted cloud refused the revoked certificate"
    );
    edge.kill9()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_crashed_after_revoking_finishes_and_the_certificate_is_refused() -> Result<()> {
    crash_at("revoked").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_crashed_after_kicking_finishes_and_the_certificate_is_refused() -> Result<()> {
    crash_at("kicked").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deletion_crashed_after_forgetting_finishes_and_the_certificate_is_refused() -> Result<()>
{
    crash_at("forgotten").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verge_delete_node_answers_once_it_is_gone_and_the_name_can_join_again() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start(Path::new(BIN), &["--heartbeat-interval", "1s"]).await?;
    let node = "del-cli";
    let dirs = tempfile::tempdir()?;
    let dir = dirs.path().join(node);
    let token = cloud.bootstrap_token(2).await?;
    let mut edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        node,
        &[],
        &dir,
        &["--heartbeat-interval", "1s", "--reconnect-max", "1s"],
    )?;
    cloud.wait_ready(&[node]).await?;
    let out = success(&verge_cli(
        Path::new(BIN),
        &cloud,
        &["delete", "node", node],
    )?);
    assert_eq!(out.trim(), format!("node/{node} deleted"));
    // Gone when the command returns: not listed, its certificate refused.
    let listed = success(&verge_cli(Path::new(BIN), &cloud, &["get", "nodes"])?);
    assert!(!listed.contains(node), "{listed}");
    let (status, body) = artifact_get_as_node(&cloud, &dir).await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(body.contains("revoked"), "{body}");
    // A repeated delete: the node is gone.
    let r = cloud
        .client()?
        .delete(format!("{}/api/v1/nodes/{node}", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    edge.kill9()?;
    // The name joins again (a new node, a new certificate).
    let dir2 = dirs.path().join("again");
    let out = Edge::join(&edge_bin, &cloud, &token, node, &[], &dir2)?;
    anyhow::ensure!(
        out.status.success(),
        "join again: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = cloud
        .api(reqwest::Method::GET, &format!("/api/v1/nodes/{node}"), None)
        .await
        .context("the node joined again")?;
    assert!(again["metadata"]["deletionTimestamp"].is_null(), "{again}");
    Ok(())
}

#[tokio::test]
async fn finalizers_hold_any_object_until_an_update_removes_them() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    let http = cloud.client()?;
    let url = format!("{}/api/v1/configs", cloud.url);
    let config = |finalizers: serde_json::Value| {
        serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "Config",
            "metadata": {"name": "held", "finalizers": finalizers,
                "deletionTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"data": {"k": "v"}}})
    };
    // A bad name is refused, naming the entry.
    let r = http
        .post(&url)
        .bearer_auth(&cloud.admin_token)
        .json(&config(serde_json::json!(["ok", "Not OK!"])))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b: serde_json::Value = r.json().await?;
    assert_eq!(b["field"], "metadata.finalizers[1]", "{b}");
    // Created: the client's deletionTimestamp and verge.dev/ finalizer are ignored.
    let created = cloud
        .api(
            reqwest::Method::POST,
            "/api/v1/configs",
            Some(config(serde_json::json!([
                "example.com/hold",
                "verge.dev/node-cleanup"
            ]))),
        )
        .await?;
    assert_eq!(
        created["metadata"]["finalizers"],
        serde_json::json!(["example.com/hold"])
    );
    assert!(
        created["metadata"]["deletionTimestamp"].is_null(),
        "{created}"
    );
    // DELETE marks it (twice: the same mark); it is still there.
    let marked = cloud
        .api(reqwest::Method::DELETE, "/api/v1/configs/held", None)
        .await?;
    let when = marked["metadata"]["deletionTimestamp"].clone();
    assert!(when.is_string(), "{marked}");
    let again = cloud
        .api(reqwest::Method::DELETE, "/api/v1/configs/held", None)
        .await?;
    assert_eq!(again["metadata"]["deletionTimestamp"], when);
    let mut held = cloud
        .api(reqwest::Method::GET, "/api/v1/configs/held", None)
        .await?;
    assert_eq!(held["metadata"]["deletionTimestamp"], when);
    // No new finalizer on an object being deleted.
    held["metadata"]["finalizers"] = serde_json::json!(["example.com/hold", "example.com/more"]);
    let r = http
        .put(format!("{url}/held"))
        .bearer_auth(&cloud.admin_token)
        .json(&held)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let b: serde_json::Value = r.json().await?;
    assert_eq!(b["field"], "metadata.finalizers", "{b}");
    // Removing the last finalizer lets it go.
    held["metadata"]["finalizers"] = serde_json::json!([]);
    held["metadata"]
        .as_object_mut()
        .context("metadata")?
        .remove("resourceVersion");
    cloud
        .api(reqwest::Method::PUT, "/api/v1/configs/held", Some(held))
        .await?;
    let r = http
        .get(format!("{url}/held"))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    Ok(())
}
