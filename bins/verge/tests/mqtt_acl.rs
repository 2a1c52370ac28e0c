//! Node isolation on the MQTT gateway, tested with the real Mosquitto clients
//! (`mosquitto_sub` / `mosquitto_pub` from Debian `mosquitto-clients`) holding a
//! joined node's certificate: other nodes' topics, wildcards and the wrong direction are
//! refused; malformed, wrong-version and oversized payloads are dropped and counted;
//! a heartbeat with a skewed clock is reported but liveness follows the cloud's clock;
//! a deleted node's certificate and a certificate from another CA are refused; a real
//! `verge-edge` node stays Ready throughout.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::Result;
use verge_testkit::{Cloud, Edge, eventually, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn mqtt_port(cloud: &Cloud) -> String {
    cloud
        .mqtt_url
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn tls_args(dir: &Path) -> Vec<String> {
    vec![
        "--cafile".into(),
        dir.join("ca.crt").display().to_string(),
        "--cert".into(),
        dir.join("node.crt").display().to_string(),
        "--key".into(),
        dir.join("node.key").display().to_string(),
    ]
}

fn sub(cloud: &Cloud, dir: &Path, topic: &str) -> Result<Output> {
    Ok(Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port(cloud),
            "-i",
            "probe",
            "-t",
            topic,
            "-C",
            "1",
            "-W",
            "3",
        ])
        .args(tls_args(dir))
        .output()?)
}

fn publish(cloud: &Cloud, dir: &Path, topic: &str, payload: &[u8]) -> Result<Output> {
    let file = dir.join("payload.bin");
    std::fs::write(&file, payload)?;
    Ok(Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &mqtt_port(cloud),
            "-i",
            "probe",
            "-q",
            "1",
            "-t",
            topic,
            "-f",
        ])
        .arg(&file)
        .args(tls_args(dir))
        .output()?)
}

async fn dropped(cloud: &Cloud, reason: &str) -> Result<f64> {
    cloud
        .metric(&format!("verge_mqtt_dropped_total{{reason=\"{reason}\"}}"))
        .await
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_only_touch_their_own_topics() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start(Path::new(BIN), &["--heartbeat-interval", "1s"]).await?;
    let dirs = tempfile::tempdir()?;
    let (da, db) = (dirs.path().join("a"), dirs.path().join("b"));
    for (name, dir, label) in [("node-a", &da, "site=a"), ("node-b", &db, "site=b")] {
        let token = cloud.bootstrap_token_with(1, &[label]).await?;
        let out = Edge::join(&edge_bin, &cloud, &token, name, &[label], dir)?;
        assert!(out.status.success(), "{}", text(&out));
    }
    // node-b is a real agent; it must stay unaffected by node-a's misbehaviour.
    let b = Edge::start(&edge_bin, &db, &["--heartbeat-interval", "1s"])?;
    eventually(Duration::from_secs(30), "node-b Ready", async || {
        (cloud.node_phase("node-b").await.as_deref() == Some("Ready")).then_some(())
    })
    .await?;

    // Subscriptions outside node-a's own cloud→edge topics are refused.
    for topic in [
        "verge/v1/node/node-b/desired",
        "verge/v1/node/+/desired",
        "verge/v1/node/node-a/#",
        "#",
        "verge/v1/node/node-a/status",
    ] {
        let out = sub(&cloud, &da, topic)?;
        let t = text(&out);
        assert!(t.contains("denied"), "subscribing {topic} as node-a: {t}");
        assert!(
            !t.contains("\"v\""),
            "node-a received a message on {topic}: {t}"
        );
    }
    // node-a's own desired topic is allowed: the subscription is granted and simply
    // times out (-W 3) without a message.
    let out = sub(&cloud, &da, "verge/v1/node/node-a/desired")?;
    assert!(!text(&out).contains("denied"), "{}", text(&out));

    // Publishing to another node's topic, or against the direction: dropped, counted.
    let before = dropped(&cloud, "acl-publish").await?;
    let status = br#"{"v":1,"type":"ack","body":{"revision":1}}"#;
    for topic in [
        "verge/v1/node/node-b/ack",
        "verge/v1/node/node-a/desired",
        "verge/v1/other",
    ] {
        let out = publish(&cloud, &da, topic, status)?;
        assert!(out.status.success(), "{}", text(&out));
    }
    eventually(Duration::from_secs(10), "acl drops counted", async || {
        (dropped(&cloud, "acl-publish").await.ok()? >= before + 3.0).then_some(())
    })
    .await?;

    // Malformed, wrong-version and oversized payloads on node-a's own topics: dropped
    // and counted by reason.
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "verge/v1/node/node-a/status",
            b"garbage".to_vec(),
            "malformed",
        ),
        (
            "verge/v1/node/node-a/ack",
            br#"{"v":2,"type":"ack","body":{"revision":1}}"#.to_vec(),
            "version",
        ),
        (
            "verge/v1/node/node-a/heartbeat",
            vec![b' '; 4096],
            "oversize",
        ),
    ];
    for (topic, payload, reason) in cases {
        let before = dropped(&cloud, reason).await?;
        let out = publish(&cloud, &da, topic, &payload)?;
        assert!(out.status.success(), "{}", text(&out));
        eventually(Duration::from_secs(10), reason, async || {
            (dropped(&cloud, reason).await.ok()? > before).then_some(())
        })
        .await?;
    }

    // node-b never noticed.
    assert_eq!(cloud.node_phase("node-b").await.as_deref(), Some("Ready"));
    assert!(b.get(&["status"]).is_some_and(|s| s["connected"] == true));

    // Clock skew: a heartbeat stamped an hour ahead makes node-a Ready and is
    // reported, but liveness follows the cloud's clock: with no further heartbeats it
    // goes NotReady after the misses, not an hour later.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let hb = format!(
        r#"{{"v":1,"type":"heartbeat","body":{{"seq":1,"sentAtMs":{},"ready":true}}}}"#,
        now_ms + 3_600_000
    );
    let out = publish(&cloud, &da, "verge/v1/node/node-a/heartbeat", hb.as_bytes())?;
    assert!(out.status.success(), "{}", text(&out));
    let skewed = eventually(
        Duration::from_secs(10),
        "skewed heartbeat seen",
        async || {
            let v = cloud
                .api(reqwest::Method::GET, "/api/v1/nodes/node-a", None)
                .await
                .ok()?;
            (v["status"]["clockSkewMs"].as_i64()? > 3_500_000).then_some(v)
        },
    )
    .await?;
    assert_eq!(skewed["status"]["phase"], "Ready", "{skewed}");
    assert!(
        skewed["status"]["clockSkewMs"].as_i64() <= Some(3_700_000),
        "clock skew reported: {skewed}"
    );
    eventually(
        Duration::from_secs(20),
        "NotReady by the cloud's clock",
        async || (cloud.node_phase("node-a").await.as_deref() == Some("NotReady")).then_some(()),
    )
    .await?;

    // A deleted node's certificate is refused from then on.
    cloud
        .api(reqwest::Method::DELETE, "/api/v1/nodes/node-a", None)
        .await?;
    let out = publish(&cloud, &da, "verge/v1/node/node-a/ack", status)?;
    assert!(
        !out.status.success(),
        "deleted node could still connect: {}",
        text(&out)
    );
    assert!(
        text(&out).to_lowercase().contains("not authorised"),
        "{}",
        text(&out)
    );

    // A certificate from another CA does not get through the TLS handshake.
    let other = dirs.path().join("other");
    std::fs::create_dir_all(&other)?;
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "node-b");
    let cert = params.self_signed(&key)?;
    std::fs::write(other.join("node.crt"), cert.pem())?;
    std::fs::write(other.join("node.key"), key.serialize_pem())?;
    std::fs::copy(da.join("ca.crt"), other.join("ca.crt"))?;
    let out = publish(&cloud, &other, "verge/v1/node/node-b/ack", status)?;
    assert!(
        !out.status.success(),
        "foreign certificate accepted: {}",
        text(&out)
    );
    assert_eq!(cloud.node_phase("node-b").await.as_deref(), Some("Ready"));
    Ok(())
}
