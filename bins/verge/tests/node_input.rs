//! What a compromised node (a valid node certificate, speaking the real protocol) can
//! no longer do to a real `verge cloud`: complete a fan-out parent or another node's
//! task (the forged result is refused, the parent is completed only from its children,
//! and the callback carries only the real outcome); answer an attempt it was never
//! sent; make the cloud store a large result for a task that does not exist; create
//! Task records through trigger runs of triggers that are not its own; join under a
//! reserved name; flood the cloud's memory with log lines or write into other apps'
//! log views. Large result files are collected once no task refers to them (checked
//! across a restart).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use verge_proto::{LogBatch, LogLine, LogStream, Message, TaskResult};
use verge_testkit::{Cloud, FakeNode, app_instances, eventually, node_status};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A Function running the builtin `echo` on nodes labelled `selector`.
fn echo_function(name: &str, selector: Value) -> Value {
    json!({"apiVersion": "verge.dev/v1", "kind": "Function", "metadata": {"name": name},
        "spec": {"runtime": "builtin", "handler": "echo", "placement": {"nodeSelector": selector}}})
}

fn result(id: &str, output: Value, attempt: Option<u32>) -> TaskResult {
    let now = now_ms();
    TaskResult {
        id: id.to_string(),
        ok: true,
        output: Some(output),
        started_at_ms: now,
        finished_at_ms: now,
        attempt,
        ..Default::default()
    }
}

async fn task(cloud: &Cloud, id: &str) -> Result<Value> {
    cloud
        .api(Method::GET, &format!("/api/v1/tasks/{id}"), None)
        .await
}

async fn refused(cloud: &Cloud, reason: &str) -> Result<f64> {
    cloud
        .metric(&format!(
            "verge_node_results_refused_total{{reason=\"{reason}\"}}"
        ))
        .await
}

/// Waits until the refusal counter for `reason` moved by `n` from `before` (the cloud
/// handled the messages).
async fn refused_since(cloud: &Cloud, reason: &str, before: f64, n: f64) -> Result<()> {
    eventually(
        Duration::from_secs(20),
        &format!("{reason} refusals counted"),
        async || (refused(cloud, reason).await.ok()? >= before + n).then_some(()),
    )
    .await
}

/// The next task `node` is sent with this id (re-sent attempts of earlier tasks that
/// are still on their way are skipped).
async fn task_for(node: &mut FakeNode, id: &str) -> Result<verge_proto::Task> {
    loop {
        let t = node.next_task(Duration::from_secs(30)).await?;
        if t.id == id {
            return Ok(t);
        }
    }
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A loopback HTTP listener recording the body of every POST it gets (answers 200).
#[derive(Clone, Default)]
struct CallbackReceiver {
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl CallbackReceiver {
    async fn start() -> Result<(Self, String)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let r = Self::default();
        let rec = r.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let rec = rec.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..p]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() < p + 4 + len {
                            continue;
                        }
                        let body =
                            serde_json::from_slice(&buf[p + 4..p + 4 + len]).unwrap_or(Value::Null);
                        if let Ok(mut b) = rec.bodies.lock() {
                            b.push(body);
                        }
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                });
            }
        });
        Ok((r, url))
    }

    fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_finishes_only_what_it_was_sent() -> Result<()> {
    // The callback receiver listens on loopback: allowed explicitly (callbacks reach
    // public addresses only by default).
    let mut cloud = Cloud::start(
        Path::new(BIN),
        &[
            "--heartbeat-interval",
            "1s",
            "--outbound-allow-networks",
            "127.0.0.1/32",
        ],
    )
    .await?;
    let token = cloud.bootstrap_token_with(10, &["region=eu"]).await?;

    // Reserved names: refused at join (422 naming the field) and as Node objects.
    for name in ["cloud", "verge-cloud"] {
        let (_, csr) = verge_testkit::csr(name)?;
        let r = cloud
            .client()?
            .post(format!("{}/api/v1/join", cloud.url))
            .json(&json!({"token": token, "name": name, "csr": csr}))
            .send()
            .await?;
        assert_eq!(r.status(), 422, "joining as {name}");
        let body: Value = r.json().await?;
        assert_eq!(body["field"], "name", "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains("reserved"),
            "{body}"
        );
        let r = cloud
            .client()?
            .post(format!("{}/api/v1/nodes", cloud.url))
            .bearer_auth(&cloud.admin_token)
            .json(
                &json!({"apiVersion": "verge.dev/v1", "kind": "Node", "metadata": {"name": name}}),
            )
            .send()
            .await?;
        assert_eq!(r.status(), 422, "creating Node {name}");
        let body: Value = r.json().await?;
        assert_eq!(body["field"], "metadata.name", "{body}");
    }

    let mut a = FakeNode::join(&cloud, &token, "node-a", &["region=eu"]).await?;
    let mut b = FakeNode::join(&cloud, &token, "node-b", &["region=eu"]).await?;
    cloud.wait_ready(&["node-a", "node-b"]).await?;
    cloud
        .apply("functions", &echo_function("work", json!({"region": "eu"})))
        .await?;
    // Fired by every node of the region; `only-b` by node-b alone.
    for (name, target) in [("tick", Value::Null), ("only-b", json!({"node": "node-b"}))] {
        let mut spec = json!({"schedule": "0 0 1 1 *", "function": "work"});
        if !target.is_null() {
            spec["target"] = target;
        }
        cloud
            .apply(
                "triggers",
                &json!({"apiVersion": "verge.dev/v1", "kind": "Trigger",
                    "metadata": {"name": name}, "spec": spec}),
            )
            .await?;
    }
    eventually(
        Duration::from_secs(30),
        "function and triggers synced",
        async || {
            (a.holds("Function/work")
                && a.holds("Trigger/tick")
                && b.holds("Trigger/only-b")
                && !a.holds("Trigger/only-b"))
            .then_some(())
        },
    )
    .await?;
    let (hooks, hook_url) = CallbackReceiver::start().await?;

    // --- A fan-out over both nodes, with a signed callback.
    let r = cloud
        .api(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"function": "work", "input": {"n": 1}, "target": {"fanout": {"region": "eu"}},
                "callbackUrl": hook_url, "timeoutSeconds": 600})),
        )
        .await?;
    let parent = r["taskId"].as_str().context("taskId")?.to_string();
    let ta = a.next_task(Duration::from_secs(30)).await?;
    let tb = b.next_task(Duration::from_secs(30)).await?;
    assert_eq!(ta.attempt, Some(1), "the dispatch names its attempt");
    assert!(ta.id.starts_with(&parent) && tb.id.starts_with(&parent));

    // node-a forges the parent's result (with and without an attempt) and node-b's
    // child's result: all refused, nothing changes.
    let before_parent = refused(&cloud, "fan-out-parent").await?;
    let before_other = refused(&cloud, "other-node").await?;
    a.result(result(&parent, json!({"forged": true}), None))
        .await?;
    a.result(result(&parent, json!({"forged": true}), Some(1)))
        .await?;
    a.result(result(&tb.id, json!({"forged": true}), Some(1)))
        .await?;
    refused_since(&cloud, "fan-out-parent", before_parent, 2.0).await?;
    refused_since(&cloud, "other-node", before_other, 1.0).await?;
    let p = task(&cloud, &parent).await?;
    assert_eq!(p["status"]["phase"], "Running", "{p}");
    let child_b = task(&cloud, &tb.id).await?;
    assert_eq!(child_b["status"]["phase"], "Dispatched", "{child_b}");
    assert!(hooks.bodies().is_empty(), "no callback for a forged result");

    // The real answers complete the children, and the parent from them; the callback
    // carries the children's outcome, nothing node-a made up.
    a.result(result(&ta.id, json!({"from": "a"}), ta.attempt))
        .await?;
    b.result(result(&tb.id, json!({"from": "b"}), tb.attempt))
        .await?;
    let p = eventually(Duration::from_secs(30), "parent Succeeded", async || {
        let p = task(&cloud, &parent).await.ok()?;
        (p["status"]["phase"] == "Succeeded").then_some(p)
    })
    .await?;
    assert!(!p.to_string().contains("forged"), "{p}");
    let bodies = eventually(Duration::from_secs(30), "callbacks", async || {
        let got = hooks.bodies();
        (!got.is_empty()).then_some(got)
    })
    .await?;
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["taskId"], json!(parent));
    assert_eq!(bodies[0]["phase"], "Succeeded");
    assert!(!bodies[0].to_string().contains("forged"), "{}", bodies[0]);
    assert_eq!(task(&cloud, &tb.id).await?["status"]["result"]["from"], "b");

    // --- A task sent to node-b: node-a's answer is refused, node-b's taken.
    let r = cloud
        .api(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"function": "work", "target": {"node": "node-b"}, "timeoutSeconds": 600})),
        )
        .await?;
    let for_b = r["taskId"].as_str().context("taskId")?.to_string();
    let t = task_for(&mut b, &for_b).await?;
    let before = refused(&cloud, "other-node").await?;
    a.result(result(&for_b, json!({"forged": true}), Some(1)))
        .await?;
    refused_since(&cloud, "other-node", before, 1.0).await?;
    assert_eq!(task(&cloud, &for_b).await?["status"]["phase"], "Dispatched");
    b.result(result(&for_b, json!({"ok": 1}), t.attempt))
        .await?;
    eventually(
        Duration::from_secs(20),
        "node-b's answer taken",
        async || {
            let t = task(&cloud, &for_b).await.ok()?;
            (t["status"]["phase"] == "Succeeded" && t["status"]["result"]["ok"] == 1).then_some(())
        },
    )
    .await?;

    // --- Re-sent attempts: node-a may answer attempts it was sent, not later ones.
    let r = cloud
        .api(
            Method::POST,
            "/api/v1/tasks",
            // Re-sent every 3 s, for up to 10 attempts.
            Some(json!({"function": "work", "target": {"node": "node-a"}, "timeoutSeconds": 3, "maxAttempts": 10})),
        )
        .await?;
    let resent = r["taskId"].as_str().context("taskId")?.to_string();
    let first = task_for(&mut a, &resent).await?;
    let second = task_for(&mut a, &resent).await?;
    assert_eq!((first.attempt, second.attempt), (Some(1), Some(2)));
    let before = refused(&cloud, "unknown-attempt").await?;
    a.result(result(&resent, json!({"attempt": 50}), Some(50)))
        .await?;
    refused_since(&cloud, "unknown-attempt", before, 1.0).await?;
    a.result(result(&resent, json!({"attempt": 1}), Some(1)))
        .await?;
    eventually(
        Duration::from_secs(20),
        "an earlier attempt's answer",
        async || {
            let t = task(&cloud, &resent).await.ok()?;
            (t["status"]["phase"] == "Succeeded" && t["status"]["result"]["attempt"] == 1)
                .then_some(())
        },
    )
    .await?;
    // A late answer to a finished task is refused too.
    let before = refused(&cloud, "finished").await?;
    a.result(result(&resent, json!({"attempt": 2}), Some(2)))
        .await?;
    refused_since(&cloud, "finished", before, 1.0).await?;

    // --- A 1 MiB result for a task that does not exist: refused before anything is
    // stored — no result file, no record.
    let artifacts = cloud.data_dir().join("artifacts");
    let files_before = files_under(&artifacts);
    let before = refused(&cloud, "unknown-task").await?;
    let big = "z".repeat(verge_proto::topics::MAX_RESULT_PAYLOAD - 4096);
    a.result(result("t-00000000deadbeef", json!(big), None))
        .await?;
    refused_since(&cloud, "unknown-task", before, 1.0).await?;
    assert_eq!(files_under(&artifacts), files_before, "nothing written");
    let records = cloud
        .api(Method::GET, "/api/v1/nodes/node-a/results", None)
        .await?;
    assert!(
        !records.to_string().contains("t-00000000deadbeef"),
        "{records}"
    );

    // --- Trigger runs: only for triggers node-a fires, naming their function, with a
    // trigger run's id. Refused ones create no Task.
    let before = refused(&cloud, "trigger-not-placed").await?;
    let forged_runs = [
        ("tr-00000000000000a1", "only-b", "work"),
        ("tr-00000000000000a2", "ghost", "work"),
        ("tr-00000000000000a3", "tick", "other"),
        ("t-00000000000000a4", "tick", "work"),
    ];
    for (id, trigger, function) in forged_runs {
        a.result(TaskResult {
            trigger: Some(trigger.into()),
            function: Some(function.into()),
            ..result(id, json!({"forged": true}), None)
        })
        .await?;
    }
    refused_since(
        &cloud,
        "trigger-not-placed",
        before,
        forged_runs.len() as f64,
    )
    .await?;
    for (id, _, _) in forged_runs {
        let r = cloud
            .client()?
            .get(format!("{}/api/v1/tasks/{id}", cloud.url))
            .bearer_auth(&cloud.admin_token)
            .send()
            .await?;
        assert_eq!(r.status(), 404, "{id} was created");
    }
    a.result(TaskResult {
        trigger: Some("tick".into()),
        function: Some("work".into()),
        ..result("tr-00000000000000b1", json!({"ran": "tick"}), None)
    })
    .await?;
    let run = eventually(
        Duration::from_secs(20),
        "the real run recorded",
        async || {
            let t = task(&cloud, "tr-00000000000000b1").await.ok()?;
            (t["status"]["phase"] == "Succeeded").then_some(t)
        },
    )
    .await?;
    assert_eq!(run["status"]["node"], "node-a");
    assert_eq!(run["status"]["trigger"], "tick");

    // --- A large legitimate result is kept as a file while its task refers to it;
    // files no task refers to are removed at start-up.
    let r = cloud
        .api(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"function": "work", "target": {"node": "node-a"}, "timeoutSeconds": 600})),
        )
        .await?;
    let large = r["taskId"].as_str().context("taskId")?.to_string();
    let t = task_for(&mut a, &large).await?;
    a.result(result(&large, json!("L".repeat(300 * 1024)), t.attempt))
        .await?;
    let done = eventually(Duration::from_secs(20), "large result stored", async || {
        let t = task(&cloud, &large).await.ok()?;
        (t["status"]["phase"] == "Succeeded").then_some(t)
    })
    .await?;
    let url = done["status"]["resultUrl"]
        .as_str()
        .context("resultUrl")?
        .to_string();
    let sha = url.rsplit('/').next().context("digest")?.to_string();
    let kept = artifacts.join("results").join(&sha[..2]).join(&sha);
    assert!(kept.is_file(), "{}", kept.display());
    let orphan_sha = "ab".repeat(32);
    let orphan = artifacts.join("results").join("ab").join(&orphan_sha);
    std::fs::create_dir_all(orphan.parent().context("dir")?)?;
    std::fs::write(&orphan, b"left behind")?;
    drop((a, b));
    cloud.restart().await?;
    eventually(Duration::from_secs(30), "orphan collected", async || {
        (!orphan.exists()).then_some(())
    })
    .await?;
    assert!(kept.is_file(), "a referenced result stays");
    let r = cloud
        .client()?
        .get(format!("{}{url}", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await?.len(), 300 * 1024 + 2);
    Ok(())
}

/// `VmHWM` (peak resident set) of a process, in bytes.
fn peak_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM")?;
    Ok(kb * 1024)
}

fn app(name: &str, selector: Value) -> Value {
    json!({"apiVersion": "verge.dev/v1", "kind": "App", "metadata": {"name": name},
        "spec": {"version": "1.0.0", "workload": {"docker": {"image": "busybox:latest"}},
            "placement": {"nodeSelector": selector}}})
}

fn batch(source: &str, lines: usize, len: usize, fill: char) -> Message {
    Message::LogBatch(LogBatch {
        source: source.to_string(),
        lines: (0..lines)
            .map(|_| LogLine {
                ts_ms: now_ms(),
                stream: LogStream::Stdout,
                line: fill.to_string().repeat(len),
            })
            .collect(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_flood_stays_within_the_budget_and_its_own_sources() -> Result<()> {
    const BUDGET: usize = 1024 * 1024;
    let budget = BUDGET.to_string();
    // Generous misses: the flood's node queues its heartbeats behind its own flood.
    let cloud = Cloud::start(
        Path::new(BIN),
        &[
            "--heartbeat-interval",
            "1s",
            "--heartbeat-misses",
            "30",
            "--node-log-bytes",
            &budget,
        ],
    )
    .await?;
    let pid = cloud.pid().context("cloud pid")?;
    let token = cloud.bootstrap_token_with(1, &["role=flood"]).await?;
    let flood = FakeNode::join(&cloud, &token, "flood", &["role=flood"]).await?;
    let token = cloud.bootstrap_token_with(1, &["role=quiet"]).await?;
    let quiet = FakeNode::join(&cloud, &token, "quiet", &["role=quiet"]).await?;
    cloud.wait_ready(&["flood", "quiet"]).await?;
    cloud
        .apply("apps", &app("noisy", json!({"role": "flood"})))
        .await?;
    cloud
        .apply("apps", &app("victim", json!({"role": "quiet"})))
        .await?;
    cloud
        .apply(
            "functions",
            &echo_function("chatty", json!({"role": "flood"})),
        )
        .await?;
    eventually(Duration::from_secs(60), "apps placed", async || {
        (flood.holds("App/noisy")
            && flood.holds("Function/chatty")
            && quiet.holds("App/victim")
            && !flood.holds("App/victim"))
        .then_some(())
    })
    .await?;

    // Status reports as fast as the node can send them, each different: the Node's
    // status is written about once a second, the last report included; instances
    // of apps not placed on the node stay out of those apps' status.
    let updates = "verge_store_operation_duration_seconds_count{op=\"update\"}";
    let before = cloud.metric(updates).await?;
    let instance = |app: &str| {
        let mut i =
            verge_proto::InstanceStatus::new(app, 0, "1.0.0", verge_proto::InstanceState::Running);
        i.healthy = Some(true);
        i
    };
    for n in 0..100u64 {
        let mut report = node_status(vec![instance("noisy"), instance("victim")]);
        report.memory_free_bytes = 1000 + n;
        flood
            .publish(&Message::NodeStatus(Box::new(report)))
            .await?;
    }
    eventually(
        Duration::from_secs(30),
        "the last report written",
        async || {
            let n = cloud
                .api(Method::GET, "/api/v1/nodes/flood", None)
                .await
                .ok()?;
            (n["status"]["allocatable"]["memoryFreeBytes"] == 1099).then_some(())
        },
    )
    .await?;
    let writes = cloud.metric(updates).await? - before;
    assert!(
        writes < 40.0,
        "{writes} store updates for 100 status reports"
    );
    eventually(Duration::from_secs(30), "noisy's instance", async || {
        let a = cloud.app("noisy").await.ok()?;
        (!app_instances(&a, "flood").is_empty()).then_some(())
    })
    .await?;
    let victim = cloud.app("victim").await?;
    assert!(app_instances(&victim, "flood").is_empty(), "{victim}");
    assert!(cloud.metric("verge_node_instances_dropped_total").await? >= 100.0);

    // The victim's own lines.
    quiet.publish(&batch("app/victim/0", 3, 10, 'v')).await?;
    eventually(Duration::from_secs(20), "victim's lines", async || {
        let v = cloud
            .api(Method::GET, "/api/v1/apps/victim/logs", None)
            .await
            .ok()?;
        (v["items"].as_array()?.len() == 3).then_some(())
    })
    .await?;
    let peak_before = peak_rss(pid)?;

    // The flood: ~57 MiB of 16 KiB lines, a third from sources placed on the node
    // (kept within its budget), the rest from sources that are not (dropped).
    let sources = [
        "app/noisy/0",
        "fn/chatty/invocations",
        "app/victim/0",
        "app/noisy/7",
        "app/ghost/0",
        "agent/x",
    ];
    let placed = 2;
    let per_batch = 3;
    let rounds = 200;
    let dropped_before = cloud
        .metric("verge_node_log_lines_dropped_total{reason=\"not-placed\"}")
        .await?;
    for _ in 0..rounds {
        for s in sources {
            flood
                .publish(&batch(s, per_batch, 16 * 1024 - 64, 'f'))
                .await?;
        }
    }
    let expect_dropped = (rounds * (sources.len() - placed) * per_batch) as f64;
    let handled = eventually(Duration::from_secs(120), "the flood handled", async || {
        let n = cloud
            .metric("verge_node_log_lines_dropped_total{reason=\"not-placed\"}")
            .await
            .ok()?;
        (n >= dropped_before + expect_dropped).then_some(())
    })
    .await;
    if handled.is_err() {
        // What the cloud made of it, for the failure message.
        let text = cloud
            .client()?
            .get(format!("{}/metrics", cloud.url))
            .bearer_auth(&cloud.admin_token)
            .send()
            .await?
            .text()
            .await?;
        eprintln!(
            "{}",
            text.lines()
                .filter(|l| l.contains("node_") || l.contains("mqtt"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    handled?;
    let peak_after = peak_rss(pid)?;
    let sent = rounds * sources.len() * per_batch * 16 * 1024;
    assert!(
        peak_after.saturating_sub(peak_before) < 32 * 1024 * 1024,
        "peak RSS grew by {} MiB for {} MiB of log lines (before {} MiB, after {} MiB)",
        peak_after.saturating_sub(peak_before) >> 20,
        sent >> 20,
        peak_before >> 20,
        peak_after >> 20
    );
    let held = cloud.metric("verge_node_log_bytes").await?;
    // The flood's budget plus the victim's three short lines.
    assert!(held > 0.0 && held <= BUDGET as f64 + 1024.0, "{held}");

    // The victim's view has only its own node's lines.
    let v = cloud
        .api(Method::GET, "/api/v1/apps/victim/logs?tail=5000", None)
        .await?;
    let items = v["items"].as_array().context("items")?;
    assert_eq!(items.len(), 3, "{}", items.len());
    assert!(items.iter().all(|i| i["node"] == "quiet"));
    // The flood's own sources hold at most its budget, newest kept.
    let mut bytes: HashMap<String, usize> = HashMap::new();
    for path in [
        "/api/v1/apps/noisy/logs?tail=5000",
        "/api/v1/functions/chatty/logs?tail=5000",
    ] {
        let v = cloud.api(Method::GET, path, None).await?;
        for i in v["items"].as_array().context("items")? {
            *bytes
                .entry(i["source"].as_str().unwrap_or("").to_string())
                .or_default() += i["line"].as_str().map_or(0, str::len);
        }
    }
    let total: usize = bytes.values().sum();
    assert!(total > 0 && total <= BUDGET, "{bytes:?}");
    assert!(
        !bytes.contains_key("app/noisy/7"),
        "a replica not placed there: {bytes:?}"
    );
    assert!(
        cloud
            .metric("verge_node_log_lines_dropped_total{reason=\"evicted\"}")
            .await?
            > 0.0
    );
    Ok(())
}
