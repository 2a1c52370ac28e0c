//! The deploy-time code attack of issue 13, against a real `verge cloud` and a real
//! `verge-edge`: an operator applies Functions whose module-level code hunts for the
//! cluster's secrets. Edge-placed code never runs in the cloud (a loopback listener
//! hears nothing from it); cloud-placed code runs sandboxed and finds no key, token or
//! database, as an unprivileged uid; on the node the same holds, and the node reports
//! its `FunctionSandbox` condition.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use reqwest::Method;
use serde_json::{Value, json};
use verge_testkit::{Cloud, Edge, eventually, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn function(name: &str, code: &str, placement: Value) -> Value {
    json!({"apiVersion": "verge.dev/v1", "kind": "Function", "metadata": {"name": name},
           "spec": {"runtime": "python3", "handler": "handler.main", "code": code,
                    "placement": placement}})
}

/// Module-level code that reports to `port` that it ran, then tries to steal the
/// cluster's secrets by the paths that worked before the sandbox.
fn thief(port: u16, data_dir: &Path, tag: &str) -> String {
    let data = data_dir.display();
    format!(
        r#"
import os, shutil, socket, subprocess
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).sendall(b"{tag}\n")
except OSError:
    pass
FOUND = []
for p in ["../../../ca.key", "../../../admin.token", "../../../callback.key", "../../../store.db",
          "{data}/ca.key", "{data}/admin.token", "{data}/callback.key", "{data}/store.db"]:
    try:
        shutil.copy(p, "/tmp/x")
        FOUND.append(p)
    except OSError:
        pass
ID = subprocess.run(["id"], capture_output=True, text=True).stdout.strip()

def main(event):
    return {{"found": FOUND, "id": ID, "uid": os.getuid()}}
"#
    )
}

/// Lines received on a loopback listener, from anyone.
fn listen() -> Result<(u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let h = heard.clone();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line);
            h.lock().unwrap().push(line.trim().to_string());
        }
    });
    Ok((port, heard))
}

async fn function_status(cloud: &Cloud, name: &str) -> Option<Value> {
    let f = cloud
        .api(Method::GET, &format!("/api/v1/functions/{name}"), None)
        .await
        .ok()?;
    (f["status"]["phase"] == "Ready" || f["status"]["phase"] == "Failed")
        .then(|| f["status"].clone())
}

#[tokio::test]
async fn function_code_cannot_reach_the_clusters_secrets() -> Result<()> {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let mut cloud = Cloud::start(Path::new(BIN), &["--heartbeat-interval", "1s"]).await?;
    let info = cloud.api(Method::GET, "/api/v1/cluster/info", None).await?;
    if info["functionSandbox"]["state"] != "enforced" {
        assert!(
            !ci,
            "CI=true but the cloud's sandbox is not enforced: {info}"
        );
        eprintln!("skipping: the function sandbox is not available here: {info}");
        return Ok(());
    }
    let (port, heard) = listen()?;
    let data = cloud.data_dir().to_path_buf();

    // Edge-placed: compiled in the cloud, never run there.
    cloud
        .apply(
            "functions",
            &function("edgethief", &thief(port, &data, "edge-code-ran"), json!({})),
        )
        .await?;
    let st = eventually(Duration::from_secs(60), "edgethief checked", async || {
        function_status(&cloud, "edgethief").await
    })
    .await?;
    assert_eq!(st["phase"], "Ready", "{st}");
    assert!(
        st["message"]
            .as_str()
            .unwrap_or("")
            .contains("none of it run"),
        "{st}"
    );

    // Cloud-placed: runs, sandboxed, and finds nothing.
    cloud
        .apply(
            "functions",
            &function(
                "cloudthief",
                &thief(port, &data, "cloud-code-ran"),
                json!({"cloud": true}),
            ),
        )
        .await?;
    let st = eventually(Duration::from_secs(60), "cloudthief loaded", async || {
        function_status(&cloud, "cloudthief").await
    })
    .await?;
    assert_eq!(st["phase"], "Ready", "{st}");
    let v = cloud
        .api(
            Method::POST,
            "/api/v1/functions/cloudthief/invoke",
            Some(json!({})),
        )
        .await?;
    assert_eq!(v["found"], json!([]), "no secret reached: {v}");
    assert_ne!(v["uid"], json!(0), "{v}");
    assert!(
        v["id"].as_str().is_some_and(|s| !s.starts_with("uid=0")),
        "{v}"
    );

    // The cloud-placed module did run (the listener is reachable), the edge-placed one
    // never did.
    eventually(Duration::from_secs(10), "cloud code heard", async || {
        heard
            .lock()
            .unwrap()
            .iter()
            .any(|l| l == "cloud-code-ran")
            .then_some(())
    })
    .await?;
    assert!(
        !heard.lock().unwrap().iter().any(|l| l == "edge-code-ran"),
        "the cloud executed edge-placed code: {:?}",
        heard.lock().unwrap()
    );

    // The node: same code runs there, sandboxed; the node reports the sandbox.
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let token = cloud.bootstrap_token(1).await?;
    let node = format!("sbx-{}", std::process::id());
    let dirs = tempfile::tempdir()?;
    let d = dirs.path().join(&node);
    let _edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &node,
        &[],
        &d,
        &["--heartbeat-interval", "1s", "--status-interval", "2s"],
    )?;
    cloud.wait_ready(&[&node]).await?;
    let cond = eventually(
        Duration::from_secs(60),
        "FunctionSandbox condition",
        async || {
            let n = cloud
                .api(Method::GET, &format!("/api/v1/nodes/{node}"), None)
                .await
                .ok()?;
            n["status"]["conditions"]
                .as_array()?
                .iter()
                .find(|c| c["type"] == "FunctionSandbox")
                .cloned()
        },
    )
    .await?;
    assert_eq!(cond["status"], "True", "{cond}");
    assert_eq!(cond["reason"], "Enforced", "{cond}");
    let node_data = d.clone();
    cloud
        .apply(
            "functions",
            &function(
                "nodethief",
                &thief(port, &node_data, "node-code-ran"),
                json!({}),
            ),
        )
        .await?;
    let v = eventually(Duration::from_secs(60), "invoke on the node", async || {
        let v = cloud
            .api(
                Method::POST,
                &format!("/api/v1/functions/nodethief/invoke?node={node}"),
                Some(json!({})),
            )
            .await
            .ok()?;
        v.get("found").is_some().then_some(v)
    })
    .await?;
    assert_eq!(v["found"], json!([]), "{v}");
    assert_ne!(v["uid"], json!(0), "{v}");
    cloud.stop()?;
    Ok(())
}
