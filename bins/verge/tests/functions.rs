//! Functions end to end: a real cloud and a real `verge-edge`, real `python3` and
//! `node` workers. `verge fn init` + `verge fn deploy` (Python and Node), sync invoke
//! on the edge node and in the cloud (bytes in and out), async tasks with signed
//! callbacks (delivered, retried to a dead letter, timing out), idempotency keys,
//! results over 256 KiB uploaded to the artifact store, fan-out, cancel, a task for a
//! node that does not exist (Pending, then TimedOut), and a cron trigger that keeps
//! firing on the node while the cloud is down, its runs arriving exactly once.
//! Bad input: unknown function (404), a body over the cap (413), non-JSON input (400),
//! a syntax error and a missing handler at deploy (the interpreter's message), a
//! handler that raises (500 with the traceback), loops (504, worker replaced),
//! allocates past its limit (MemoryError), prints 50 MB (capped), an invalid cron
//! schedule or timezone (422 naming the field).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Output;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use verge_testkit::{Cloud, Edge, eventually, success, verge_cli, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn verge(cloud: &Cloud, args: &[&str]) -> Result<Output> {
    verge_cli(Path::new(BIN), cloud, args)
}

fn function(name: &str, runtime: &str, code: &str, extra: Value) -> Value {
    let mut spec = json!({"runtime": runtime, "handler": "handler.main", "code": code});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    json!({"apiVersion": "verge.dev/v1", "kind": "Function", "metadata": {"name": name}, "spec": spec})
}

/// A raw API call: (status, JSON body or `null`, headers).
async fn call(
    cloud: &Cloud,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, Value, reqwest::header::HeaderMap, Vec<u8>)> {
    let resp = cloud
        .client()?
        .request(method, format!("{}{path}", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .header("content-type", content_type)
        .timeout(Duration::from_secs(120))
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await?.to_vec();
    let v = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Ok((status, v, headers, bytes))
}

async fn invoke(
    cloud: &Cloud,
    name: &str,
    node: Option<&str>,
    input: Value,
) -> Result<(u16, Value)> {
    let path = match node {
        Some(n) => format!("/api/v1/functions/{name}/invoke?node={n}"),
        None => format!("/api/v1/functions/{name}/invoke"),
    };
    let (s, v, _, _) = call(
        cloud,
        Method::POST,
        &path,
        "application/json",
        serde_json::to_vec(&input)?,
    )
    .await?;
    Ok((s, v))
}

async fn task(cloud: &Cloud, id: &str) -> Result<Value> {
    cloud
        .api(Method::GET, &format!("/api/v1/tasks/{id}"), None)
        .await
}

async fn wait_phase(cloud: &Cloud, id: &str, phase: &str, secs: u64) -> Result<Value> {
    eventually(
        Duration::from_secs(secs),
        &format!("task {id} {phase}"),
        async || {
            let t = task(cloud, id).await.ok()?;
            (t["status"]["phase"] == phase).then_some(t)
        },
    )
    .await
}

/// HMAC-SHA256 (RFC 2104), to check callback signatures independently of the server.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> String {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.iter().map(|b| b ^ 0x36).collect::<Vec<u8>>());
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.iter().map(|b| b ^ 0x5c).collect::<Vec<u8>>());
    outer.update(inner.finalize());
    hex(&outer.finalize())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A callback receiver: answers each POST with `status` (or never, for 0), recording
/// (headers, body).
/// One request received: (lowercase headers, body).
type Received = (HashMap<String, String>, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(status: u16) -> Result<(Receiver, String)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let r = Receiver::default();
        let rec = r.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    let (head_end, len) = loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (p + 4, len);
                        }
                    };
                    while buf.len() < head_end + len {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let headers = head
                        .lines()
                        .skip(1)
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_string()))
                        .collect();
                    if let Ok(mut g) = rec.got.lock() {
                        g.push((headers, buf[head_end..head_end + len].to_vec()));
                    }
                    if status == 0 {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                    let resp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
        Ok((r, url))
    }

    fn count(&self) -> usize {
        self.got.lock().map(|g| g.len()).unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn functions_invoke_tasks_callbacks_triggers_offline() -> Result<()> {
    let ci = std::env::var("CI").as_deref() == Ok("true");
    for (bin, pkg) in [("python3", "python3"), ("node", "nodejs")] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {bin}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            anyhow::ensure!(!ci, "{bin} missing: install Debian {pkg}");
            eprintln!("skipping: {bin} missing (Debian {pkg})");
            return Ok(());
        }
    }
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    // The callback receivers listen on 127.0.0.1: allowed explicitly (public
    // addresses only by default).
    let mut cloud = Cloud::start(
        Path::new(BIN),
        &[
            "--heartbeat-interval",
            "1s",
            "--heartbeat-misses",
            "5",
            "--outbound-allow-networks",
            "127.0.0.1/32",
        ],
    )
    .await?;
    let token = cloud.bootstrap_token_with(1, &["region=eu"]).await?;
    let node = format!("fn-a-{}", std::process::id());
    let dirs = tempfile::tempdir()?;
    let d = dirs.path().join(&node);
    let _edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &node,
        &["region=eu"],
        &d,
        &["--heartbeat-interval", "1s", "--status-interval", "5s"],
    )?;
    cloud.wait_ready(&[&node]).await?;

    // --- verge fn init + deploy, Python and Node; invoked on the node.
    let work = dirs.path().join("fns");
    std::fs::create_dir_all(&work)?;
    let w = work.to_str().unwrap();
    success(&verge(
        &cloud,
        &["fn", "init", "greet", "--runtime", "python3", "--dir", w],
    )?);
    success(&verge(
        &cloud,
        &["fn", "init", "greetjs", "--runtime", "nodejs", "--dir", w],
    )?);
    let deployed = success(&verge(&cloud, &["fn", "deploy", &format!("{w}/greet")])?);
    assert!(deployed.contains("Ready"), "{deployed}");
    success(&verge(&cloud, &["fn", "deploy", &format!("{w}/greetjs")])?);
    for f in ["greet", "greetjs"] {
        let v = eventually(Duration::from_secs(30), "invoke on the node", async || {
            let (s, v) = invoke(&cloud, f, Some(&node), json!({"name": "edge"}))
                .await
                .ok()?;
            if s != 200 {
                eprintln!("{f}: {s} {v}");
            }
            (s == 200).then_some(v)
        })
        .await?;
        assert_eq!(v, json!({"greeting": "hello, edge"}), "{f}");
    }
    let out = success(&verge(
        &cloud,
        &[
            "invoke",
            "greet",
            "--node",
            &node,
            "--data",
            r#"{"name":"cli"}"#,
        ],
    )?);
    assert!(out.contains("hello, cli"), "{out}");

    // Deploy-time errors carry the interpreter's message.
    let bad = work.join("broken");
    std::fs::create_dir_all(&bad)?;
    std::fs::write(
        bad.join("function.yaml"),
        "apiVersion: verge.dev/v1\nkind: Function\nmetadata: {name: broken}\nspec: {runtime: python3, handler: handler.main}\n",
    )?;
    std::fs::write(bad.join("handler.py"), "def main(event)\n    return 1\n")?;
    let out = verge(&cloud, &["fn", "deploy", bad.to_str().unwrap()])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SyntaxError"), "{err}");
    std::fs::write(bad.join("handler.py"), "def handle(event):\n    return 1\n")?;
    let out = verge(&cloud, &["fn", "deploy", bad.to_str().unwrap()])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("main"), "names the missing handler: {err}");

    // --- Bad input on invoke.
    let (s, v) = invoke(&cloud, "nope", None, json!({})).await?;
    assert_eq!(s, 404, "{v}");
    let big = vec![b'1'; 2 * 1024 * 1024];
    let (s, _, _, _) = call(
        &cloud,
        Method::POST,
        "/api/v1/functions/greet/invoke",
        "application/json",
        big,
    )
    .await?;
    assert_eq!(s, 413);
    let (s, v, _, _) = call(
        &cloud,
        Method::POST,
        &format!("/api/v1/functions/greet/invoke?node={node}"),
        "application/json",
        b"{not json".to_vec(),
    )
    .await?;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["field"], "body", "{v}");

    // Handler failures, on the node: raises, loops (timeout, then the worker is
    // replaced), allocates past its memory limit, prints 50 MB.
    let code = r#"import time
def main(event):
    what = (event or {}).get("do")
    if what == "raise":
        raise ValueError("bad input value")
    if what == "loop":
        while True:
            pass
    if what == "hog":
        blob = bytearray(500 * 1024 * 1024)
        return len(blob)
    if what == "spam":
        chunk = "x" * 1023
        for _ in range(50 * 1024):
            print(chunk)
        return "spammed"
    return "ok"
"#;
    cloud
        .apply(
            "functions",
            &function(
                "edgy",
                "python3",
                code,
                json!({"resources": {"timeoutSeconds": 2, "memory": "64Mi"}}),
            ),
        )
        .await?;
    eventually(Duration::from_secs(30), "edgy on the node", async || {
        let (s, v) = invoke(&cloud, "edgy", Some(&node), json!({})).await.ok()?;
        (s == 200 && v == json!("ok")).then_some(())
    })
    .await?;
    let (s, v) = invoke(&cloud, "edgy", Some(&node), json!({"do": "raise"})).await?;
    assert_eq!(s, 500, "{v}");
    let msg = v["message"].as_str().unwrap_or("");
    assert!(msg.contains("ValueError: bad input value"), "{v}");
    assert!(msg.contains("line 5"), "traceback with the line: {v}");
    let (s, v) = invoke(&cloud, "edgy", Some(&node), json!({"do": "loop"})).await?;
    assert_eq!(s, 504, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("Timeout"),
        "{v}"
    );
    let (s, v) = invoke(&cloud, "edgy", Some(&node), json!({})).await?;
    assert_eq!((s, v), (200, json!("ok")), "a new worker after the timeout");
    let (s, v) = invoke(&cloud, "edgy", Some(&node), json!({"do": "hog"})).await?;
    assert_eq!(s, 500, "{v}");
    assert!(
        v["message"].as_str().unwrap_or("").contains("MemoryError"),
        "{v}"
    );
    let (s, v) = invoke(&cloud, "edgy", Some(&node), json!({"do": "spam"})).await?;
    assert_eq!((s, v), (200, json!("spammed")));
    let logs = eventually(Duration::from_secs(20), "function logs", async || {
        let out = verge(&cloud, &["logs", "fn/edgy", "--tail", "5000"]).ok()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("dropped").then_some(text)
    })
    .await?;
    assert!(logs.lines().count() < 1000, "captured output is capped");

    // --- A cloud-placed function: bytes in and out, in the cloud's runtime.
    let rev = "def main(event):\n    return bytes(reversed(event))\n";
    cloud
        .apply(
            "functions",
            &function("rev", "python3", rev, json!({"placement": {"cloud": true}})),
        )
        .await?;
    let (s, _, headers, body) = eventually(Duration::from_secs(30), "rev invocable", async || {
        let r = call(
            &cloud,
            Method::POST,
            "/api/v1/functions/rev/invoke",
            "application/octet-stream",
            b"abc\x00\xff".to_vec(),
        )
        .await
        .ok()?;
        (r.0 == 200).then_some(r)
    })
    .await?;
    assert_eq!(s, 200);
    assert_eq!(body, b"\xff\x00cba");
    assert_eq!(headers["x-verge-node"], "cloud");

    // --- Async tasks with a signed callback; idempotency keys.
    let key = hex::decode(std::fs::read_to_string(cloud.data_dir().join("callback.key"))?.trim())?;
    let (ok_rx, ok_url) = Receiver::start(200).await?;
    let t = json!({"function": "greet", "input": {"name": "task"}, "target": {"node": node},
        "callbackUrl": ok_url, "idempotencyKey": "order-42"});
    let (s, created, headers, _) = call(
        &cloud,
        Method::POST,
        "/api/v1/tasks",
        "application/json",
        serde_json::to_vec(&t)?,
    )
    .await?;
    assert_eq!(s, 202, "{created}");
    assert!(headers.contains_key("location"));
    let id = created["taskId"].as_str().context("taskId")?.to_string();
    let (_, again, _, _) = call(
        &cloud,
        Method::POST,
        "/api/v1/tasks",
        "application/json",
        serde_json::to_vec(&t)?,
    )
    .await?;
    assert_eq!(
        (again["taskId"].as_str(), again["created"].as_bool()),
        (Some(id.as_str()), Some(false))
    );
    let done = wait_phase(&cloud, &id, "Succeeded", 30).await?;
    assert_eq!(done["status"]["result"], json!({"greeting": "hello, task"}));
    assert_eq!(done["status"]["node"], json!(node));
    eventually(Duration::from_secs(20), "callback delivered", async || {
        let t = task(&cloud, &id).await.ok()?;
        (t["status"]["callback"]["state"] == "Delivered").then_some(())
    })
    .await?;
    {
        let got = ok_rx.got.lock().unwrap();
        assert_eq!(got.len(), 1);
        let (h, body) = &got[0];
        assert_eq!(
            h["x-verge-signature"],
            format!("sha256={}", hmac_sha256(&key, body))
        );
        assert_eq!(h["x-verge-task"], id);
        let b: Value = serde_json::from_slice(body)?;
        assert_eq!(b["phase"], "Succeeded");
        assert_eq!(b["result"]["greeting"], "hello, task");
    }
    let listed = success(&verge(&cloud, &["task", "list"])?);
    assert!(listed.contains(&id), "{listed}");
    let shown = success(&verge(&cloud, &["task", "get", &id])?);
    assert!(
        shown.contains("Succeeded") && shown.contains("hello, task"),
        "{shown}"
    );

    // A callback answering 500 is retried, then dead-lettered; one that never answers
    // times out per attempt (and says only that it got no answer).
    let (err_rx, err_url) = Receiver::start(500).await?;
    let (hang_rx, hang_url) = Receiver::start(0).await?;
    let mut ids = Vec::new();
    for url in [&err_url, &hang_url] {
        let t =
            json!({"function": "greet", "input": {}, "target": {"node": node}, "callbackUrl": url});
        let r = cloud.api(Method::POST, "/api/v1/tasks", Some(t)).await?;
        ids.push(r["taskId"].as_str().context("taskId")?.to_string());
    }
    let dead = eventually(
        Duration::from_secs(60),
        "callback dead-lettered",
        async || {
            let t = task(&cloud, &ids[0]).await.ok()?;
            (t["status"]["callback"]["state"] == "DeadLettered").then_some(t)
        },
    )
    .await?;
    assert_eq!(dead["status"]["callback"]["attempts"], 5);
    assert_eq!(dead["status"]["callback"]["lastStatus"], 500);
    assert_eq!(err_rx.count(), 5);
    let hung = eventually(
        Duration::from_secs(30),
        "callback attempt timed out",
        async || {
            let t = task(&cloud, &ids[1]).await.ok()?;
            (t["status"]["callback"]["lastError"].as_str()?
                == "callback failed: destination not allowed or unreachable")
                .then_some(t)
        },
    )
    .await?;
    assert_eq!(hung["status"]["phase"], "Succeeded");
    assert!(hang_rx.count() >= 1);

    // A result over 256 KiB is stored in the artifact store and referenced by URL.
    let large = "def main(event):\n    return 'y' * (300 * 1024)\n";
    cloud
        .apply("functions", &function("large", "python3", large, json!({})))
        .await?;
    let big_id = eventually(Duration::from_secs(30), "large ran", async || {
        let t = json!({"function": "large", "target": {"node": node}, "timeoutSeconds": 5, "maxAttempts": 1});
        let r = cloud.api(Method::POST, "/api/v1/tasks", Some(t)).await.ok()?;
        let id = r["taskId"].as_str()?.to_string();
        let t = wait_phase(&cloud, &id, "Succeeded", 10).await.ok()?;
        Some((id, t))
    })
    .await?;
    let url = big_id.1["status"]["resultUrl"]
        .as_str()
        .context("resultUrl")?
        .to_string();
    assert!(big_id.1["status"]["result"].is_null());
    let (s, _, _, bytes) = call(&cloud, Method::GET, &url, "application/json", Vec::new()).await?;
    assert_eq!(s, 200);
    assert_eq!(bytes.len(), 300 * 1024 + 2, "the JSON string");

    // Fan-out: one child per matching node, the parent's phase from theirs.
    let r = cloud.api(Method::POST, "/api/v1/tasks", Some(json!({"function": "greet", "input": {"name": "all"}, "target": {"fanout": {"region": "eu"}}}))).await?;
    let parent = r["taskId"].as_str().context("taskId")?.to_string();
    let p = wait_phase(&cloud, &parent, "Succeeded", 30).await?;
    assert_eq!(p["status"]["children"].as_array().map(Vec::len), Some(1));
    assert_eq!(p["status"]["children"][0]["node"], json!(node));

    // A node that does not exist: Pending with the reason, then TimedOut. Cancel.
    let r = cloud
        .api(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"function": "greet", "target": {"node": "ghost"}, "timeoutSeconds": 2})),
        )
        .await?;
    let ghost = r["taskId"].as_str().context("taskId")?.to_string();
    let t = task(&cloud, &ghost).await?;
    assert_eq!(t["status"]["phase"], "Pending");
    assert_eq!(t["status"]["reason"], "NodeNotFound", "{t}");
    let t = wait_phase(&cloud, &ghost, "TimedOut", 20).await?;
    assert!(
        t["status"]["error"]
            .as_str()
            .unwrap_or("")
            .contains("does not exist"),
        "{t}"
    );
    let r = cloud
        .api(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"function": "greet", "target": {"node": "ghost"}})),
        )
        .await?;
    let cancel = r["taskId"].as_str().context("taskId")?.to_string();
    let out = success(&verge(&cloud, &["task", "cancel", &cancel])?);
    assert!(out.contains("Cancelled"), "{out}");
    let (s, _, _, _) = call(
        &cloud,
        Method::DELETE,
        &format!("/api/v1/tasks/{cancel}"),
        "application/json",
        Vec::new(),
    )
    .await?;
    assert_eq!(s, 409, "already finished");
    let (s, v, _, _) = call(
        &cloud,
        Method::POST,
        "/api/v1/tasks",
        "application/json",
        serde_json::to_vec(&json!({"function": "nope"}))?,
    )
    .await?;
    assert_eq!(
        (s, v["field"].as_str()),
        (404, Some("spec.function")),
        "{v}"
    );

    // Invalid triggers: 422 naming the field.
    let trig = |schedule: &str, tz: Option<&str>| {
        let mut spec = json!({"schedule": schedule, "function": "greet"});
        if let Some(tz) = tz {
            spec["timezone"] = json!(tz);
        }
        json!({"apiVersion": "verge.dev/v1", "kind": "Trigger", "metadata": {"name": "bad"}, "spec": spec})
    };
    for (t, field) in [
        (trig("61 * * * *", None), "spec.schedule"),
        (trig("* * * * *", Some("Mars/Olympus")), "spec.timezone"),
    ] {
        let (s, v, _, _) = call(
            &cloud,
            Method::POST,
            "/api/v1/triggers",
            "application/json",
            serde_json::to_vec(&t)?,
        )
        .await?;
        assert_eq!((s, v["field"].as_str()), (422, Some(field)), "{v}");
    }

    // --- A cron trigger fired by the node keeps firing with the cloud down; every run
    // arrives once.
    let every_second = json!({"apiVersion": "verge.dev/v1", "kind": "Trigger", "metadata": {"name": "tick"},
        "spec": {"schedule": "* * * * * *", "function": "greet", "input": {"name": "cron"}, "target": {"node": node}}});
    cloud.apply("triggers", &every_second).await?;
    let triggered = async |cloud: &Cloud| -> Result<BTreeSet<String>> {
        let l = cloud
            .api(
                Method::GET,
                "/api/v1/tasks?labelSelector=verge.dev/trigger%3Dtick",
                None,
            )
            .await?;
        Ok(l["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["metadata"]["name"].as_str().map(str::to_string))
            .collect())
    };
    eventually(Duration::from_secs(30), "the trigger fired", async || {
        (triggered(&cloud).await.ok()?.len() >= 2).then_some(())
    })
    .await?;
    cloud.kill9()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    cloud.restart().await?;
    let before = triggered(&cloud).await?.len();
    let after = eventually(
        Duration::from_secs(60),
        "runs from the offline time",
        async || {
            let s = triggered(&cloud).await.ok()?;
            (s.len() >= before + 6).then_some(s)
        },
    )
    .await?;
    // Stop the trigger, then judge each collected run once it has finished: a run's Task
    // is recorded when its result arrives and finished by a second write, so the newest
    // one can still read `Dispatched` for a moment after it was listed.
    cloud
        .api(Method::DELETE, "/api/v1/triggers/tick", None)
        .await?;
    for id in &after {
        let t = eventually(
            Duration::from_secs(60),
            &format!("trigger run {id} finished"),
            async || {
                let t = task(&cloud, id).await.ok()?;
                let phase = t["status"]["phase"].as_str().unwrap_or("");
                ["Succeeded", "Failed", "TimedOut", "Cancelled"]
                    .contains(&phase)
                    .then_some(t)
            },
        )
        .await?;
        assert_eq!(t["status"]["phase"], "Succeeded", "{t}");
        assert_eq!(t["status"]["result"]["greeting"], "hello, cron");
    }
    // Exactly once: one result per run in the node's results, none repeated.
    let results = cloud
        .api(Method::GET, &format!("/api/v1/nodes/{node}/results"), None)
        .await?;
    let mut runs: HashMap<String, usize> = HashMap::new();
    for r in results["items"].as_array().into_iter().flatten() {
        if let Some(id) = r["id"].as_str().filter(|id| id.starts_with("tr-")) {
            *runs.entry(id.to_string()).or_default() += 1;
        }
    }
    assert!(runs.len() >= after.len(), "{runs:?}");
    assert!(runs.values().all(|&n| n == 1), "{runs:?}");
    Ok(())
}
