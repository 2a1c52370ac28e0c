//! Cloud ↔ edge end to end with real processes on loopback: `verge cloud` and
//! `verge-edge` nodes joined with bootstrap tokens, connected over mutual-TLS MQTT.
//! Join → Ready; kill -9 → NotReady after the configured misses → restart → Ready;
//! a Config reaches exactly the nodes its selector matches; with the cloud stopped an
//! edge restarted twice still serves its desired state; results (of tasks dispatched to
//! the node) queued while the cloud is down (across an edge restart) arrive once and in
//! order; a Config changed while a node was down reaches it after reconnect.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};
use verge_testkit::{Cloud, Edge, eventually, site_config, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn local_origin(edge: &Edge, name: &str) -> Option<String> {
    let v = edge.get(&["configs", name])?;
    v["spec"]["data"]["origin"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_ready_sync_offline_and_reconnect() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let mut cloud = Cloud::start(
        std::path::Path::new(BIN),
        &["--heartbeat-interval", "1s", "--heartbeat-misses", "3"],
    )
    .await?;
    let dirs = tempfile::tempdir()?;
    let (da, db) = (dirs.path().join("a"), dirs.path().join("b"));
    // Node labels come from the bootstrap token: one token per site.
    let token = cloud.bootstrap_token_with(1, &["site=a"]).await?;
    let out = Edge::join(&edge_bin, &cloud, &token, "node-a", &["site=a"], &da)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = cloud.bootstrap_token_with(1, &["site=b"]).await?;
    let out = Edge::join(&edge_bin, &cloud, &token, "node-b", &["site=b"], &db)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let args = ["--heartbeat-interval", "1s"];
    let mut a = Edge::start(&edge_bin, &da, &args)?;
    let _b = Edge::start(&edge_bin, &db, &args)?;
    cloud.wait_ready(&["node-a", "node-b"]).await?;
    // Status reports arrived too (through the store-and-forward queue).
    let node = eventually(Duration::from_secs(30), "nodeInfo", async || {
        let v = cloud
            .api(reqwest::Method::GET, "/api/v1/nodes/node-a", None)
            .await
            .ok()?;
        v["status"]["nodeInfo"]["arch"].is_string().then_some(v)
    })
    .await?;
    assert_eq!(node["status"]["nodeInfo"]["arch"], std::env::consts::ARCH);
    // verge get nodes shows them.
    let out = std::process::Command::new(BIN)
        .args(["get", "nodes"])
        .env("VERGE_CONFIG", cloud.admin_config())
        .output()?;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().next().unwrap_or("").split_whitespace().eq([
            "NAME",
            "STATUS",
            "ARCH",
            "OS",
            "VERSION",
            "AGE",
            "LAST-SEEN"
        ]),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("node-a") && l.contains("Ready")),
        "{table}"
    );

    // A Config for site=a reaches node-a only.
    cloud
        .api(
            reqwest::Method::POST,
            "/api/v1/configs",
            Some(site_config("cdn", "a", "https://o1.example")),
        )
        .await?;
    eventually(Duration::from_secs(20), "config on node-a", async || {
        (local_origin(&a, "cdn").as_deref() == Some("https://o1.example")).then_some(())
    })
    .await?;
    let b_configs = _b.get(&["configs"]).unwrap_or(Value::Null);
    assert_eq!(b_configs, json!([]), "node-b must not get site=a config");
    // The cloud shows the acked revision.
    eventually(Duration::from_secs(20), "sync status", async || {
        let v = cloud
            .api(reqwest::Method::GET, "/api/v1/nodes/node-a", None)
            .await
            .ok()?;
        (v["status"]["sync"]["ackedRevision"].as_i64()? > 0).then_some(())
    })
    .await?;

    // kill -9 the edge: NotReady after the misses; back: Ready.
    a.kill9()?;
    eventually(Duration::from_secs(30), "NotReady", async || {
        (cloud.node_phase("node-a").await.as_deref() == Some("NotReady")).then_some(())
    })
    .await?;
    a.restart()?;
    eventually(Duration::from_secs(30), "Ready again", async || {
        (cloud.node_phase("node-a").await.as_deref() == Some("Ready")).then_some(())
    })
    .await?;

    // The cloud takes a node's result only for a task it dispatched to that node:
    // tasks node-a holds (and will not answer itself during the test).
    let ids = cloud.held_tasks("node-a", json!({"site": "a"}), 21).await?;
    // The results of those tasks, as recorded, in the order they were received.
    let ours = |v: &Value| -> Vec<Value> {
        v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| {
                r["id"]
                    .as_str()
                    .is_some_and(|id| ids.iter().any(|i| i == id))
            })
            .cloned()
            .collect()
    };

    // One result while online, as a baseline.
    a.result(&ids[0], &json!({"n": 0}))?;
    eventually(Duration::from_secs(20), "online result", async || {
        let v = cloud
            .api(reqwest::Method::GET, "/api/v1/nodes/node-a/results", None)
            .await
            .ok()?;
        (ours(&v).len() == 1).then_some(())
    })
    .await?;

    // Offline: the cloud is gone; node-a restarted twice still serves its state, and
    // queues the results produced meanwhile (on disk, across its restarts).
    cloud.kill9()?;
    let mut produced = 1;
    for _ in 0..2 {
        a.restart()?;
        eventually(
            Duration::from_secs(20),
            "local API after restart",
            async || {
                (local_origin(&a, "cdn").as_deref() == Some("https://o1.example")).then_some(())
            },
        )
        .await?;
        for _ in 0..10 {
            a.result(&ids[produced], &json!({ "n": produced }))?;
            produced += 1;
        }
    }
    let queued = a.get(&["status"]).unwrap_or(Value::Null);
    assert!(
        queued["queue"]["pendingItems"].as_u64().unwrap_or(0) >= 20,
        "20 results wait in the queue while offline: {queued}"
    );

    // Changed while node-a is down: arrives after reconnect.
    a.kill9()?;
    cloud.restart().await?;
    let mut c = cloud
        .api(reqwest::Method::GET, "/api/v1/configs/cdn", None)
        .await?;
    c["spec"]["data"]["origin"] = "https://o2.example".into();
    c["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("resourceVersion");
    cloud
        .api(reqwest::Method::PUT, "/api/v1/configs/cdn", Some(c))
        .await?;
    a.restart()?;
    eventually(
        Duration::from_secs(60),
        "changed config after reconnect",
        async || (local_origin(&a, "cdn").as_deref() == Some("https://o2.example")).then_some(()),
    )
    .await?;

    // Every result arrived once, in the order it was produced.
    let items = eventually(Duration::from_secs(60), "queued results", async || {
        let v = cloud
            .api(reqwest::Method::GET, "/api/v1/nodes/node-a/results", None)
            .await
            .ok()?;
        let items = ours(&v);
        (items.len() >= produced).then_some(items)
    })
    .await?;
    let got: Vec<&str> = items.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(got, ids[..produced], "once each, in order");
    let arrival: Vec<i64> = items
        .iter()
        .map(|r| r["receivedRevision"].as_i64().unwrap())
        .collect();
    assert!(
        arrival.windows(2).all(|w| w[0] < w[1]),
        "arrival order is production order: {arrival:?}"
    );
    for (i, r) in items.iter().enumerate() {
        assert_eq!(r["output"]["n"], i, "{r}");
        assert_eq!(r["ok"], true);
        // ... and finished the task it answers.
        let t = cloud
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/tasks/{}", ids[i]),
                None,
            )
            .await?;
        assert_eq!(t["status"]["phase"], "Succeeded", "{t}");
        assert_eq!(t["status"]["result"]["n"], i, "{t}");
    }
    let drained = eventually(Duration::from_secs(30), "queue drained", async || {
        let v = a.get(&["status"])?;
        (v["queue"]["pendingItems"].as_u64()? == 0).then_some(v)
    })
    .await?;
    assert_eq!(drained["queue"]["droppedItems"], 0, "{drained}");
    Ok(())
}
