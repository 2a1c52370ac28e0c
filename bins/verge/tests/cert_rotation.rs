//! Node certificate rotation end to end: with 30 s certificates, a real `verge-edge`
//! asks for a new one two thirds into its life, over its own MQTT session; the cloud
//! records the new serial (keeping the previous one for revocation); the node
//! reconnects with it, stays Ready, renews again from the renewed certificate, and
//! after a kill -9 restarts with the renewed files. The records of expired
//! certificates are pruned at renewal (`nodes::certs`): after the second renewal the
//! join certificate's record is gone, the renewed ones are kept.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;
use verge_testkit::{Cloud, Edge, eventually, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

async fn node(cloud: &Cloud) -> Option<Value> {
    cloud
        .api(reqwest::Method::GET, "/api/v1/nodes/node-r", None)
        .await
        .ok()
}

fn serial(n: &Value) -> String {
    n["metadata"]["annotations"]["verge.dev/cert-serial"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_renew_their_certificates_before_expiry() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start(
        Path::new(BIN),
        &["--heartbeat-interval", "1s", "--node-cert-validity", "30s"],
    )
    .await?;
    let token = cloud.bootstrap_token(1).await?;
    let dirs = tempfile::tempdir()?;
    let dir = dirs.path().join("r");
    let out = Edge::join(&edge_bin, &cloud, &token, "node-r", &[], &dir)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first_cert = std::fs::read_to_string(dir.join("node.crt"))?;
    let mut edge = Edge::start(&edge_bin, &dir, &["--heartbeat-interval", "1s"])?;
    let joined = eventually(Duration::from_secs(20), "Ready", async || {
        let n = node(&cloud).await?;
        (n["status"]["phase"] == "Ready").then_some(n)
    })
    .await?;
    let s0 = serial(&joined);

    // ~20 s after the join the node renews.
    let renewed = eventually(Duration::from_secs(60), "first renewal", async || {
        let n = node(&cloud).await?;
        (serial(&n) != s0).then_some(n)
    })
    .await?;
    let s1 = serial(&renewed);
    assert_eq!(
        renewed["metadata"]["annotations"]["verge.dev/previous-cert-serial"],
        s0.as_str(),
        "the previous serial is kept for revocation"
    );
    eventually(
        Duration::from_secs(20),
        "renewed files on disk",
        async || {
            let c = std::fs::read_to_string(dir.join("node.crt")).ok()?;
            let id: Value =
                serde_json::from_str(&std::fs::read_to_string(dir.join("identity.json")).ok()?)
                    .ok()?;
            (c != first_cert && id["renewedAt"].is_string()).then_some(())
        },
    )
    .await?;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.join("node.key"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the new key is private");

    // It reconnected with the new certificate and renews again from it.
    let again = eventually(Duration::from_secs(60), "second renewal", async || {
        let n = node(&cloud).await?;
        (serial(&n) != s1 && serial(&n) != s0).then_some(n)
    })
    .await?;
    assert_eq!(again["status"]["phase"], "Ready", "{again}");
    assert!(
        edge.get(&["status"])
            .is_some_and(|s| s["connected"] == true),
        "connected after renewals"
    );

    // A restart uses the renewed files.
    edge.restart()?;
    eventually(
        Duration::from_secs(30),
        "connected after restart",
        async || {
            let s = edge.get(&["status"])?;
            (s["connected"] == true).then_some(())
        },
    )
    .await?;

    // The join certificate expired 30 s after the join, before the second renewal
    // (which came at least 40 s after it): its record was pruned then; the current
    // certificate is still recorded (revocable until it expires).
    let current = serial(&node(&cloud).await.context("node")?);
    edge.kill9()?;
    let mut cloud = cloud;
    cloud.stop()?;
    let store = verge_store::SqliteStore::open(verge_store::SqliteOptions::new(
        cloud.data_dir().join("store.db"),
    ))
    .await?;
    let recorded: Vec<String> =
        verge_store::Store::list(&store, "/system/node-certs/node-r/", None)
            .await?
            .items
            .iter()
            .filter_map(|kv| kv.key.rsplit('/').next().map(str::to_owned))
            .collect();
    store.close().await;
    assert!(
        !recorded.contains(&s0),
        "{s0} (expired) still recorded: {recorded:?}"
    );
    assert!(
        recorded.contains(&current),
        "{current} not recorded: {recorded:?}"
    );
    assert!(recorded.len() <= 3, "{recorded:?}");
    Ok(())
}
