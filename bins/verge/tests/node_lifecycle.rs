//! Node lifecycle end to end, with a real cloud and real `verge-edge` processes
//! (decision 019):
//! - after a cloud restart, a node that is down and one that never connected are
//!   `Unknown` (in the API and in `verge get nodes`) until the usual misses from the
//!   cloud's start make them `NotReady` — never `Ready` — while a live node is `Ready`
//!   as soon as it is back; every write to the nodes is followed through a watch;
//! - a synchronous invoke naming a node that does not exist is a 404, one naming a node
//!   that is not Ready (or a function with no Ready node) a 503, both at once;
//! - a node deleted while its agent runs logs one line saying its certificate was
//!   revoked, stops reconnecting, keeps running offline and says why in its status.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};
use verge_testkit::{Cloud, Edge, eventually, success, verge_cli, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn verge(cloud: &Cloud, args: &[&str]) -> Result<std::process::Output> {
    verge_cli(Path::new(BIN), cloud, args)
}

/// `verge get nodes`: node → its STATUS cell.
fn node_statuses(cloud: &Cloud) -> Result<BTreeMap<String, String>> {
    let table = success(&verge(cloud, &["get", "nodes"])?);
    Ok(table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut cells = l.split_whitespace();
            Some((cells.next()?.to_string(), cells.next()?.to_string()))
        })
        .collect())
}

/// One write to a Node, as the watch saw it: (phase, status of the Ready condition).
type Seen = (String, String);

/// Follows every write to the nodes after `revision` (NDJSON watch) into `into`.
async fn follow_nodes(
    cloud: &Cloud,
    revision: &str,
    into: Arc<Mutex<BTreeMap<String, Vec<Seen>>>>,
) -> Result<tokio::task::JoinHandle<()>> {
    let resp = cloud
        .client()?
        .get(format!(
            "{}/api/v1/nodes?watch=1&resourceVersion={revision}&timeoutSeconds=300",
            cloud.url
        ))
        .bearer_auth(&cloud.admin_token)
        .timeout(Duration::from_secs(330))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "watch: {}", resp.status());
    Ok(tokio::spawn(async move {
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buf.extend_from_slice(&chunk);
            while let Some(end) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=end).collect();
                let Ok(ev) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let o = &ev["object"];
                let (Some(name), Some(phase)) = (
                    o["metadata"]["name"].as_str(),
                    o["status"]["phase"].as_str(),
                ) else {
                    continue;
                };
                let ready = o["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| c["status"].as_str())
                    .unwrap_or("-");
                if let Ok(mut m) = into.lock() {
                    m.entry(name.to_string())
                        .or_default()
                        .push((phase.to_string(), ready.to_string()));
                }
            }
        }
    }))
}

/// The phases in order, repeats folded, without the leading `Ready`s (what the cloud
/// wrote before it was killed, while the node was alive).
fn phases_after_restart(seen: &[Seen]) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for (phase, _) in seen {
        if out.last() != Some(&phase.as_str()) {
            out.push(phase);
        }
    }
    let skip = out.iter().take_while(|p| **p == "Ready").count();
    out.split_off(skip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cloud_restart_nodes_are_unknown_until_heard_from() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    // NotReady after 15 missed 1 s heartbeats: time to see Unknown first.
    let mut cloud = Cloud::start(
        Path::new(BIN),
        &["--heartbeat-interval", "1s", "--heartbeat-misses", "15"],
    )
    .await?;
    let tag = std::process::id();
    let [up, down, never] = ["up", "down", "never"].map(|n| format!("lc-{n}-{tag}"));
    let dirs = tempfile::tempdir()?;
    let args = ["--heartbeat-interval", "1s", "--reconnect-max", "1s"];
    let token = cloud.bootstrap_token(3).await?;
    let _up = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &up,
        &[],
        &dirs.path().join(&up),
        &args,
    )?;
    let mut down_edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &down,
        &[],
        &dirs.path().join(&down),
        &args,
    )?;
    // Joined, never run.
    let out = Edge::join(
        &edge_bin,
        &cloud,
        &token,
        &never,
        &[],
        &dirs.path().join(&never),
    )?;
    anyhow::ensure!(
        out.status.success(),
        "join {never}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cloud.wait_ready(&[&up, &down]).await?;

    // Every node write from here on is followed. Then the cloud dies, and `down` with
    // it: its record still says Ready.
    let list = cloud.api(Method::GET, "/api/v1/nodes", None).await?;
    let revision = list["metadata"]["resourceVersion"]
        .as_str()
        .context("list revision")?
        .to_string();
    cloud.kill9()?;
    down_edge.kill9()?;
    cloud.restart().await?;
    let seen: Arc<Mutex<BTreeMap<String, Vec<Seen>>>> = Arc::default();
    let watch = follow_nodes(&cloud, &revision, seen.clone()).await?;

    // `verge get nodes` says Unknown for the nodes not heard from since the restart.
    eventually(
        Duration::from_secs(10),
        "down and never Unknown in verge get nodes",
        async || {
            let st = node_statuses(&cloud).ok()?;
            (st.get(&down)? == "Unknown" && st.get(&never)? == "Unknown").then_some(())
        },
    )
    .await?;
    // The live node is Ready as soon as it is back (it retries within 1 s).
    eventually(Duration::from_secs(30), "up Ready again", async || {
        (cloud.node_phase(&up).await.as_deref() == Some("Ready")).then_some(())
    })
    .await?;
    let table = node_statuses(&cloud)?;
    assert_eq!(
        table.get(&up).map(String::as_str),
        Some("Ready"),
        "{table:?}"
    );
    // The others: NotReady once 15 intervals from the cloud's start passed.
    eventually(
        Duration::from_secs(60),
        "down and never NotReady",
        async || {
            let d = cloud.node_phase(&down).await?;
            let n = cloud.node_phase(&never).await?;
            (d == "NotReady" && n == "NotReady").then_some(())
        },
    )
    .await?;
    // Let the watch deliver the last writes, then read the whole history.
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch.abort();
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    let of = |n: &str| seen.get(n).cloned().unwrap_or_default();
    for n in [&down, &never] {
        let history = of(n);
        assert_eq!(
            phases_after_restart(&history),
            ["Unknown", "NotReady"],
            "{n}: never Ready after the restart, Unknown first: {history:?}"
        );
        assert!(
            history.contains(&("Unknown".to_string(), "Unknown".to_string())),
            "{n}: the Ready condition is Unknown too: {history:?}"
        );
    }
    assert!(
        of(&never).iter().all(|(p, _)| p != "Ready"),
        "the node that never connected was never Ready: {:?}",
        of(&never)
    );
    let history = of(&up);
    let after = phases_after_restart(&history);
    assert!(
        !after.contains(&"NotReady") && history.last().map(|s| s.0.as_str()) == Some("Ready"),
        "up: no false NotReady, Ready at the end: {history:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_invoke_for_a_missing_or_offline_node_answers_at_once() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start(
        Path::new(BIN),
        &["--heartbeat-interval", "1s", "--heartbeat-misses", "5"],
    )
    .await?;
    let tag = std::process::id();
    let (live, offline) = (format!("inv-live-{tag}"), format!("inv-off-{tag}"));
    let dirs = tempfile::tempdir()?;
    let token = cloud.bootstrap_token_with(1, &["site=live"]).await?;
    let _edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &live,
        &["site=live"],
        &dirs.path().join(&live),
        &["--heartbeat-interval", "1s"],
    )?;
    // Exists, never connected.
    let token = cloud.bootstrap_token_with(1, &["site=off"]).await?;
    let out = Edge::join(
        &edge_bin,
        &cloud,
        &token,
        &offline,
        &["site=off"],
        &dirs.path().join(&offline),
    )?;
    anyhow::ensure!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cloud.wait_ready(&[&live]).await?;
    let echo = |name: &str, placement: Value| {
        json!({"apiVersion": "verge.dev/v1", "kind": "Function", "metadata": {"name": name},
            "spec": {"runtime": "builtin", "handler": "echo", "placement": placement}})
    };
    cloud.apply("functions", &echo("echo", json!({}))).await?;
    cloud
        .apply(
            "functions",
            &echo("echo-off", json!({"nodeSelector": {"site": "off"}})),
        )
        .await?;
    let invoke = async |name: &str, node: Option<&str>| -> Result<(u16, Value, Option<String>)> {
        let path = match node {
            Some(n) => format!("/api/v1/functions/{name}/invoke?node={n}"),
            None => format!("/api/v1/functions/{name}/invoke"),
        };
        let r = cloud
            .client()?
            .post(format!("{}{path}", cloud.url))
            .bearer_auth(&cloud.admin_token)
            .json(&json!({"hi": 1}))
            // Generous: the point is the answer, not the time (the old answer came
            // after the 60 s default timeout).
            .timeout(Duration::from_secs(30))
            .send()
            .await?;
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok((status, r.json().await.unwrap_or(Value::Null), retry))
    };
    // The live node runs it (once the function reached it).
    let v = eventually(
        Duration::from_secs(30),
        "echo on the live node",
        async || {
            let (s, v, _) = invoke("echo", Some(&live)).await.ok()?;
            (s == 200).then_some(v)
        },
    )
    .await?;
    assert_eq!(v, json!({"hi": 1}));

    let started = Instant::now();
    let (s, v, _) = invoke("echo", Some("ghost")).await?;
    assert_eq!((s, v["field"].as_str()), (404, Some("node")), "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("node \"ghost\" does not exist"),
        "{v}"
    );
    let (s, v, retry) = invoke("echo", Some(&offline)).await?;
    assert_eq!(s, 503, "{v}");
    let m = v["message"].as_str().unwrap_or("");
    assert!(
        m.contains(&format!("node \"{offline}\" is not connected")) && m.contains("not queued"),
        "{v}"
    );
    assert!(retry.is_some(), "503 with Retry-After");
    // No node for the function's placement is Ready.
    let (s, v, _) = invoke("echo-off", None).await?;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("none is connected"),
        "{v}"
    );
    // The CLI says the server's words.
    let out = verge(
        &cloud,
        &["invoke", "echo", "--node", "ghost", "--data", "{}"],
    )?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ghost") && err.contains("does not exist"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "answered without waiting for a task to time out: {:?}",
        started.elapsed()
    );
    // Nothing was queued for them.
    let tasks = cloud.api(Method::GET, "/api/v1/tasks", None).await?;
    let for_them = tasks["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| {
            let n = t["spec"]["target"]["node"].as_str();
            n == Some("ghost") || n == Some(offline.as_str()) || t["spec"]["function"] == "echo-off"
        })
        .count();
    assert_eq!(for_them, 0, "{tasks}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_node_says_it_was_revoked_and_stops_reconnecting() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start(Path::new(BIN), &["--heartbeat-interval", "1s"]).await?;
    let node = format!("rv-{}", std::process::id());
    let dirs = tempfile::tempdir()?;
    let dir = dirs.path().join(&node);
    let token = cloud.bootstrap_token(1).await?;
    let out = Edge::join(&edge_bin, &cloud, &token, &node, &[], &dir)?;
    anyhow::ensure!(
        out.status.success(),
        "join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Retrying within 1 s: a node that kept trying would log it several times a second.
    let mut edge = Edge::start_logging(
        &edge_bin,
        &dir,
        &["--heartbeat-interval", "1s", "--reconnect-max", "1s"],
        "info",
    )?;
    cloud.wait_ready(&[&node]).await?;

    success(&verge(&cloud, &["delete", "node", &node])?);
    let revoked = |log: &str| {
        log.lines()
            .filter(|l| l.contains("its certificate was revoked"))
            .count()
    };
    eventually(
        Duration::from_secs(30),
        "the node says it was revoked",
        async || (revoked(&edge.log()) > 0).then_some(()),
    )
    .await?;
    // Five seconds of what would have been reconnect attempts.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let log = edge.log();
    assert_eq!(revoked(&log), 1, "said once:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains("its certificate was revoked"))
        .unwrap_or_default();
    assert!(
        line.contains("ERROR") && line.contains(&node) && line.contains("not reconnecting"),
        "{line}"
    );
    let after = log
        .split("its certificate was revoked")
        .nth(1)
        .unwrap_or_default();
    assert!(
        !after.contains("uplink down"),
        "no reconnect attempts after it:\n{log}"
    );
    // The gateway saw one refused attempt, not one a second.
    let refused = cloud
        .metric("verge_mqtt_refused_total{reason=\"revoked\"}")
        .await?;
    assert_eq!(refused, 1.0, "{}", cloud.metrics().await?);
    // The node stays up, offline, and its status says why.
    assert!(edge.running(), "the agent keeps running (offline)");
    let st = edge.get(&["status"]).context("verge-edge get status")?;
    assert_eq!(st["connected"], false, "{st}");
    assert!(
        st["uplinkStopped"]
            .as_str()
            .unwrap_or("")
            .contains("revoked"),
        "{st}"
    );
    Ok(())
}
