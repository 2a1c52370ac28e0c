//! The outbound guard end to end (SSRF): a real `verge cloud` delivering task callbacks
//! of a real function, and a real `verge-edge` downloading `artifact.url`s, aimed at
//! loopback (a recorder that counts every connection), RFC 1918, link-local
//! 169.254.169.254, IPv6 loopback, IPv4-mapped and decimal spellings, `localhost`, and
//! a redirect from an allowed first hop (127.0.0.2) to the recorder. Each is refused,
//! the recorder sees nothing, and the status reads the same for an open and a closed
//! port; allowed destinations still work and show their HTTP status.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use verge_testkit::{Cloud, Edge, app_instances, app_object, eventually, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

/// What the cloud's task status says about a callback that got no answer.
const NOT_DELIVERED: &str = "callback failed: destination not allowed or unreachable";

/// How a [`Listener`] answers.
#[derive(Clone)]
enum Reply {
    /// 200 with this body.
    Ok(Arc<Vec<u8>>),
    /// 302 to this URL.
    Redirect(String),
}

/// A TCP listener that counts every connection it accepts, then answers one HTTP
/// request on it.
struct Listener {
    addr: std::net::SocketAddr,
    hits: Arc<AtomicUsize>,
}

impl Listener {
    async fn start(ip: &str, reply: Reply) -> Result<Listener> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicUsize::new(0));
        let count = hits.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let (status, location, body) = match &reply {
                        Reply::Ok(body) => ("200 OK", String::new(), body.to_vec()),
                        Reply::Redirect(to) => ("302 Found", format!("Location: {to}\r\n"), vec![]),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\n{location}Content-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                    let _ = s.shutdown().await;
                });
            }
        });
        Ok(Listener { addr, hits })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A port on 127.0.0.1 nothing listens on (bound, then closed).
fn closed_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// Private destinations spelled every way that reaches them, with `open` the recorder's
/// port and `closed` a closed one: (what, URL).
fn private_destinations(open: u16, closed: u16) -> Vec<(&'static str, String)> {
    vec![
        (
            "loopback, open port",
            format!("http://127.0.0.1:{open}/hook"),
        ),
        (
            "loopback, closed port",
            format!("http://127.0.0.1:{closed}/hook"),
        ),
        ("RFC 1918", "http://10.255.255.1:9/hook".to_owned()),
        (
            "link-local metadata",
            "http://169.254.169.254/latest/meta-data/".to_owned(),
        ),
        ("IPv6 loopback", format!("http://[::1]:{open}/hook")),
        (
            "IPv4-mapped loopback",
            format!("http://[::ffff:127.0.0.1]:{open}/hook"),
        ),
        ("localhost", format!("http://localhost:{open}/hook")),
        ("decimal loopback", format!("http://2130706433:{open}/hook")),
    ]
}

async fn task(cloud: &Cloud, id: &str) -> Result<Value> {
    cloud
        .api(Method::GET, &format!("/api/v1/tasks/{id}"), None)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_to_private_destinations_are_refused() -> Result<()> {
    let recorder = Listener::start("127.0.0.1", Reply::Ok(Arc::new(b"ok".to_vec()))).await?;
    let closed = closed_port()?;
    // Allowed: 127.0.0.2 only. A redirector there points at the recorder.
    let redirector = Listener::start("127.0.0.2", Reply::Redirect(recorder.url("/hook"))).await?;
    let allowed = Listener::start("127.0.0.2", Reply::Ok(Arc::new(b"ok".to_vec()))).await?;
    let cloud = Cloud::start_logging(
        Path::new(BIN),
        &["--outbound-allow-networks", "127.0.0.2/32"],
        "warn,verge_cloud::functions::callbacks=debug",
    )
    .await?;
    let echo = json!({"apiVersion": "verge.dev/v1", "kind": "Function",
        "metadata": {"name": "echo"},
        "spec": {"runtime": "builtin", "handler": "echo", "placement": {"cloud": true}}});
    cloud.apply("functions", &echo).await?;

    let mut cases = private_destinations(recorder.port(), closed);
    cases.push(("redirect to loopback", redirector.url("/hook")));
    cases.push(("allowed", allowed.url("/hook")));
    let mut ids = Vec::new();
    for (what, url) in &cases {
        let t = json!({"function": "echo", "input": {"case": what}, "callbackUrl": url});
        let created = cloud.api(Method::POST, "/api/v1/tasks", Some(t)).await?;
        ids.push(created["taskId"].as_str().context("taskId")?.to_string());
    }

    // Every refused callback is retried to its dead letter: five attempts, none reaching
    // the recorder.
    let mut callbacks = Vec::new();
    for ((what, url), id) in cases.iter().zip(&ids) {
        let done = eventually(Duration::from_secs(90), what, async || {
            let t = task(&cloud, id).await.ok()?;
            let state = t["status"]["callback"]["state"].as_str()?;
            (state == "DeadLettered" || state == "Delivered").then_some(t)
        })
        .await?;
        assert_eq!(done["status"]["phase"], "Succeeded", "{what}");
        callbacks.push((*what, url.clone(), done["status"]["callback"].clone()));
    }
    for (what, url, cb) in &callbacks[..callbacks.len() - 2] {
        assert_eq!(cb["state"], "DeadLettered", "{what} {url}: {cb}");
        assert_eq!(cb["attempts"], 5, "{what}: {cb}");
        assert_eq!(cb["lastError"], NOT_DELIVERED, "{what} {url}: {cb}");
        assert!(cb.get("lastStatus").is_none(), "{what}: {cb}");
    }
    // An open and a closed port read exactly the same.
    assert_eq!(callbacks[0].2, callbacks[1].2);
    // The allowed first hop answered a redirect, which is not followed.
    let (_, _, redirected) = &callbacks[callbacks.len() - 2];
    assert_eq!(redirected["state"], "DeadLettered", "{redirected}");
    assert_eq!(redirected["lastStatus"], 302);
    assert_eq!(
        redirected["lastError"],
        "callback failed: answered HTTP 302"
    );
    assert_eq!(redirector.hits(), 5);
    // The allowed destination got its callback.
    let (_, _, delivered) = &callbacks[callbacks.len() - 1];
    assert_eq!(delivered["state"], "Delivered", "{delivered}");
    assert_eq!(delivered["lastStatus"], 200);
    assert_eq!(allowed.hits(), 1);
    assert_eq!(recorder.hits(), 0, "the recorder was reached");

    // Why is in the cloud's debug log: refused by the guard, before any connection.
    let log = cloud.log();
    for reason in [
        "address 10.255.255.1 is private; not allowed",
        "address 169.254.169.254 is link-local; not allowed",
        "address 127.0.0.1 is loopback; not allowed",
        "address ::1 is loopback; not allowed",
        "address ::ffff:127.0.0.1 is loopback; not allowed",
        "host localhost: address",
    ] {
        assert!(log.contains(reason), "{reason:?} not in the log:\n{log}");
    }
    // ... and nowhere in what the API shows of the callbacks.
    for id in &ids {
        let shown = task(&cloud, id).await?["status"]["callback"].to_string();
        for word in ["private", "loopback", "link-local", "refused", "timed out"] {
            assert!(!shown.contains(word), "{word:?} in {shown}");
        }
    }
    Ok(())
}

/// A tar.gz holding `app.sh` that exits at once.
fn artifact(dir: &Path) -> Result<Vec<u8>> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src)?;
    let sh = src.join("app.sh");
    std::fs::write(&sh, "#!/bin/sh\nexit 0\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755))?;
    let out = dir.join("app.tar.gz");
    let st = Command::new("tar")
        .arg("czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg("app.sh")
        .status()?;
    anyhow::ensure!(st.success(), "tar failed");
    Ok(std::fs::read(&out)?)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_urls_to_private_destinations_are_refused() -> Result<()> {
    let dirs = tempfile::tempdir()?;
    let tarball = artifact(dirs.path())?;
    let sha = sha256_hex(&tarball);
    let tarball = Arc::new(tarball);
    // The recorder serves the real artifact: only the guard stands in the way.
    let recorder = Listener::start("127.0.0.1", Reply::Ok(tarball.clone())).await?;
    let closed = closed_port()?;
    let redirector =
        Listener::start("127.0.0.2", Reply::Redirect(recorder.url("/app.tar.gz"))).await?;
    let allowed = Listener::start("127.0.0.2", Reply::Ok(tarball)).await?;

    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start(Path::new(BIN), &["--heartbeat-interval", "1s"]).await?;
    let token = cloud.bootstrap_token(1).await?;
    let node = format!("ob-{}", std::process::id());
    let _edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &node,
        &["site=ob"],
        &dirs.path().join(&node),
        &[
            "--heartbeat-interval",
            "1s",
            "--status-interval",
            "2s",
            "--outbound-allow-networks",
            "127.0.0.2/32",
        ],
    )?;
    cloud.wait_ready(&[&node]).await?;

    let mut cases = private_destinations(recorder.port(), closed);
    cases.push(("redirect to loopback", redirector.url("/app.tar.gz")));
    let app = |i: usize, url: &str| {
        let workload =
            json!({"native": {"artifact": {"sha256": sha, "url": url}, "command": "app.sh"}});
        app_object(
            &format!("ob-{i}"),
            "1.0.0",
            workload,
            json!({"placement": {"nodeSelector": {"site": "ob"}}, "restartPolicy": "Never"}),
        )
    };
    for (i, (_, url)) in cases.iter().enumerate() {
        cloud.apply("apps", &app(i, url)).await?;
    }
    cloud
        .apply("apps", &app(cases.len(), &allowed.url("/app.tar.gz")))
        .await?;

    let mut errors = Vec::new();
    for (i, (what, url)) in cases.iter().enumerate() {
        let name = format!("ob-{i}");
        let error = eventually(Duration::from_secs(60), what, async || {
            let a = cloud.app(&name).await.ok()?;
            let inst = app_instances(&a, &node).first().cloned().cloned()?;
            inst["lastError"].as_str().map(str::to_owned)
        })
        .await?;
        assert_eq!(
            error,
            format!("{url}: destination not allowed or unreachable"),
            "{what}"
        );
        errors.push(error);
    }
    // The allowed one is downloaded, unpacked and run to completion.
    let name = format!("ob-{}", cases.len());
    eventually(Duration::from_secs(60), "allowed artifact", async || {
        let a = cloud.app(&name).await.ok()?;
        let inst = app_instances(&a, &node).first().cloned().cloned()?;
        (inst["state"] == "Completed").then_some(())
    })
    .await?;
    assert!(allowed.hits() >= 1);
    // The redirector was asked (the hop is allowed), its target refused.
    assert!(redirector.hits() >= 1);
    assert_eq!(recorder.hits(), 0, "the recorder was reached");
    // Open and closed port: the same words after the URL.
    let tail = |e: &str| e.rsplit(": ").next().unwrap_or_default().to_owned();
    assert_eq!(tail(&errors[0]), tail(&errors[1]));
    Ok(())
}
