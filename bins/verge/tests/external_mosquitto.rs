//! External-broker mode end to end: a real Mosquitto (Debian `mosquitto`) configured by
//! `verge cloud print-mosquitto-config`, `verge cloud --mqtt-url`, real `verge-edge`
//! nodes joined with bootstrap tokens. A node goes Ready; a Config reaches exactly the
//! matching node; the broker's ACL keeps a node's certificate off other nodes' topics
//! (checked with the real `mosquitto_sub`); a result queued on the node arrives; after
//! `verge delete node` and a broker restart, the node's certificate is refused.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use verge_testkit::{Cloud, Edge, eventually, site_config, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn mosquitto_bin() -> Result<PathBuf> {
    for p in ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"] {
        if Path::new(p).exists() {
            return Ok(p.into());
        }
    }
    if let Ok(out) = Command::new("sh")
        .args(["-c", "command -v mosquitto"])
        .output()
        && out.status.success()
    {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().into());
    }
    bail!("mosquitto (Debian package `mosquitto`) is required; scripts/test installs it")
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Broker {
    child: Child,
    conf: PathBuf,
    port: u16,
}

impl Broker {
    fn start(conf: &Path, port: u16) -> Result<Self> {
        let child = Command::new(mosquitto_bin()?)
            .arg("-c")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("spawning mosquitto")?;
        let b = Broker {
            child,
            conf: conf.to_path_buf(),
            port,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("mosquitto did not listen on {port} within 10s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(b)
    }

    fn restart(&mut self) -> Result<()> {
        self.stop();
        let fresh = Broker::start(&self.conf, self.port)?;
        *self = fresh;
        Ok(())
    }

    /// Graceful (SIGTERM), as an operator restarts it: Mosquitto saves its
    /// persistence file, so the cloud's session and subscriptions survive.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn tls_args(dir: &Path) -> Vec<String> {
    [
        "--cafile", "ca.crt", "--cert", "node.crt", "--key", "node.key",
    ]
    .chunks(2)
    .flat_map(|kv| [kv[0].to_string(), dir.join(kv[1]).display().to_string()])
    .collect()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_work_through_an_external_mosquitto() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let port = free_port()?;
    let url = format!("mqtts://127.0.0.1:{port}");
    let cloud = Cloud::start(
        Path::new(BIN),
        &["--mqtt-url", &url, "--heartbeat-interval", "1s"],
    )
    .await?;
    assert_eq!(cloud.mqtt_url, url, "nodes are sent to the external broker");

    // The broker's files, from the cloud's CA.
    let out = Command::new(BIN)
        .args(["cloud", "print-mosquitto-config", "--data-dir"])
        .arg(cloud.data_dir())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--user", "root"])
        .output()?;
    assert!(out.status.success(), "{}", text(&out));
    let conf_text = String::from_utf8(out.stdout)?;
    assert!(
        conf_text.contains("require_certificate true"),
        "{conf_text}"
    );
    let conf = cloud.data_dir().join("mosquitto/mosquitto.conf");
    assert_eq!(std::fs::read_to_string(&conf)?, conf_text);
    let mut broker = Broker::start(&conf, port)?;

    let dirs = tempfile::tempdir()?;
    let (da, db) = (dirs.path().join("a"), dirs.path().join("b"));
    for (name, dir, label) in [("node-a", &da, "site=a"), ("node-b", &db, "site=b")] {
        let token = cloud.bootstrap_token_with(1, &[label]).await?;
        let out = Edge::join(&edge_bin, &cloud, &token, name, &[label], dir)?;
        assert!(out.status.success(), "{}", text(&out));
    }
    let args = ["--heartbeat-interval", "1s"];
    let a = Edge::start(&edge_bin, &da, &args)?;
    let mut b = Edge::start(&edge_bin, &db, &args)?;
    cloud.wait_ready(&["node-a", "node-b"]).await?;

    // node-b's certificate listens on node-a's topics (and a wildcard) while a Config
    // for site=a is delivered: the broker's ACL gives it nothing.
    let spies: Vec<Child> = ["verge/v1/node/node-a/desired", "verge/v1/node/+/desired"]
        .iter()
        .map(|topic| {
            Command::new("mosquitto_sub")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
                .args(["-i", &format!("spy-{}", topic.len()), "-W", "8", "-v"])
                .args(tls_args(&db))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("mosquitto_sub (Debian mosquitto-clients)")
        })
        .collect::<Result<_>>()?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cloud
        .api(
            reqwest::Method::POST,
            "/api/v1/configs",
            Some(site_config("cdn", "a", "https://o1.example")),
        )
        .await?;
    eventually(Duration::from_secs(20), "config on node-a", async || {
        let v = a.get(&["configs", "cdn"])?;
        (v["spec"]["data"]["origin"] == "https://o1.example").then_some(())
    })
    .await?;
    assert_eq!(
        b.get(&["configs"]),
        Some(json!([])),
        "node-b must not get it"
    );
    for spy in spies {
        let out = spy.wait_with_output()?;
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("verge/v1/node/node-a"),
            "node-b's certificate read node-a's messages: {}",
            text(&out)
        );
    }

    // Results travel through the broker too.
    a.result("ext-1", &json!({"ok": 1}))?;
    let items = eventually(Duration::from_secs(20), "result", async || {
        let v = cloud
            .api(reqwest::Method::GET, "/api/v1/nodes/node-a/results", None)
            .await
            .ok()?;
        let items = v["items"].as_array()?.clone();
        (!items.is_empty()).then_some(items)
    })
    .await?;
    assert_eq!(items[0]["id"], "ext-1");

    // Deleting node-b revokes its certificate in the CRL the broker reads at start.
    b.kill9()?;
    cloud
        .api(reqwest::Method::DELETE, "/api/v1/nodes/node-b", None)
        .await?;
    broker.restart()?;
    let out = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-i", "node-b"])
        .args(["-t", "verge/v1/node/node-b/ack", "-m", "{}", "-q", "1"])
        .args(tls_args(&db))
        .output()?;
    assert!(
        !out.status.success(),
        "a deleted node's certificate still connects: {}",
        text(&out)
    );
    // node-a is unaffected: it reconnects to the restarted broker and stays Ready.
    eventually(
        Duration::from_secs(30),
        "node-a back after broker restart",
        async || {
            let s = a.get(&["status"])?;
            (s["connected"] == true).then_some(())
        },
    )
    .await?;
    a.result("ext-2", &json!({"ok": 2}))?;
    eventually(
        Duration::from_secs(30),
        "result after broker restart",
        async || {
            let v = cloud
                .api(reqwest::Method::GET, "/api/v1/nodes/node-a/results", None)
                .await
                .ok()?;
            (v["items"].as_array()?.len() == 2).then_some(())
        },
    )
    .await?;
    assert_eq!(cloud.node_phase("node-a").await.as_deref(), Some("Ready"));
    Ok(())
}
