//! Native apps end to end: a real cloud, three real `verge-edge` nodes with different
//! labels, artifacts pushed with `verge artifact push`, processes supervised in real
//! cgroups (v1 on this machine). Gray release v1 → v2 in steps 33% → 100% observed in
//! order; v3 with a failing health check rolled back automatically with `verge rollout
//! status` exiting non-zero; `dependsOn` ordering on a node; cgroup limits in the
//! cgroup files; a memory hog OOM-killed and restarted with backoff; agent kill -9
//! and restart re-adopts (exactly one process); apps keep running (and restarting) with
//! the cloud stopped. Bad input: unschedulable selector, artifact digest mismatch, not
//! an archive, command not found, missing dependency, dependency cycle, a version going
//! backwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use verge_testkit::{
    Cloud, Edge, app_condition, app_instances, app_object, eventually, success, verge_cli,
    workspace_bin,
};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn verge(cloud: &Cloud, args: &[&str]) -> Result<Output> {
    verge_cli(std::path::Path::new(BIN), cloud, args)
}

/// A tar.gz holding `app.sh` (the given script body).
fn artifact(dir: &Path, name: &str, script: &str) -> Result<PathBuf> {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src)?;
    let sh = src.join("app.sh");
    std::fs::write(&sh, format!("#!/bin/sh\n{script}\n"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755))?;
    let out = dir.join(format!("{name}.tar.gz"));
    let st = Command::new("tar")
        .arg("czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg("app.sh")
        .status()?;
    anyhow::ensure!(st.success(), "tar failed");
    Ok(out)
}

fn push(cloud: &Cloud, file: &Path) -> Result<String> {
    let out = success(&verge(
        cloud,
        &["artifact", "push", file.to_str().unwrap()],
    )?);
    let sha = out
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .context("no sha256 in the push output")?;
    Ok(sha.to_string())
}

fn app(name: &str, version: &str, sha: &str, extra: Value) -> Value {
    let workload = json!({"native": {"artifact": {"sha256": sha}, "command": "app.sh"}});
    app_object(name, version, workload, extra)
}

/// Cgroup v1 directory of an instance.
fn cg(controller: &str, node: &str, app: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/cgroup/{controller}/verge-{node}/{app}-0"))
}

fn procs(node: &str, app: &str) -> Vec<i32> {
    std::fs::read_to_string(cg("memory", node, app).join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills whatever the test nodes left in their cgroups (processes outlive a killed
/// agent on purpose).
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for node in &self.0 {
            for ctl in ["memory", "cpu", "cpuacct"] {
                let parent = PathBuf::from(format!("/sys/fs/cgroup/{ctl}/verge-{node}"));
                let Ok(rd) = std::fs::read_dir(&parent) else {
                    continue;
                };
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        if let Ok(p) = std::fs::read_to_string(e.path().join("cgroup.procs")) {
                            for pid in p.lines() {
                                let _ = Command::new("kill").args(["-9", pid.trim()]).status();
                            }
                        }
                        std::thread::sleep(Duration::from_millis(100));
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
                let _ = std::fs::remove_dir(&parent);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_apps_gray_release_rollback_deps_limits_oom_adopt_offline() -> Result<()> {
    if !Path::new("/sys/fs/cgroup/memory").is_dir() {
        anyhow::ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "cgroup v1 memory hierarchy missing"
        );
        eprintln!("skipping: this test reads cgroup v1 files");
        return Ok(());
    }
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let mut cloud = Cloud::start(
        Path::new(BIN),
        &["--heartbeat-interval", "1s", "--heartbeat-misses", "5"],
    )
    .await?;
    let tag = std::process::id();
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("nat-{n}-{tag}"))
        .collect();
    let _cleanup = Cleanup(names.clone());
    let dirs = tempfile::tempdir()?;
    let mut edges = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let d = dirs.path().join(n);
        let site = format!("site={}", ["sh", "bj", "gz"][i]);
        let token = cloud.bootstrap_token_with(1, &["tier=edge", &site]).await?;
        edges.push(Edge::join_and_start(
            &edge_bin,
            &cloud,
            &token,
            n,
            &["tier=edge", &site],
            &d,
            &["--heartbeat-interval", "1s", "--status-interval", "5s"],
        )?);
    }
    cloud.wait_ready(&names).await?;

    // Artifacts.
    let sleeper = artifact(
        dirs.path(),
        "sleeper",
        "echo \"started $VERGE_APP $VERGE_VERSION\"\nexec sleep 100000",
    )?;
    let sha = push(&cloud, &sleeper)?;
    let healthy =
        json!({"exec": {"command": ["/bin/true"]}, "intervalSeconds": 1, "failureThreshold": 1});
    let rollout = json!({"steps": [{"percent": 33, "pause": "2s"}], "autoRollback": true, "maxUnavailable": 1, "progressDeadlineSeconds": 60});

    // v1 everywhere, with limits.
    let extra = json!({"resources": {"cpu": "500m", "memory": "64Mi"}, "health": healthy, "rollout": rollout,
        "placement": {"nodeSelector": {"tier": "edge"}}});
    cloud
        .apply("apps", &app("web", "1.0.0", &sha, extra.clone()))
        .await?;
    success(&verge(
        &cloud,
        &["rollout", "status", "app/web", "--timeout", "90s"],
    )?);
    let web = cloud.app("web").await?;
    for n in &names {
        let inst = app_instances(&web, n);
        assert_eq!(inst.len(), 1, "{n}: {web}");
        assert_eq!(inst[0]["version"], "1.0.0");
        assert_eq!(inst[0]["state"], "Running");
        // Limits in the cgroup files.
        let mem = std::fs::read_to_string(cg("memory", n, "web").join("memory.limit_in_bytes"))?;
        assert_eq!(mem.trim(), "67108864");
        let quota = std::fs::read_to_string(cg("cpu", n, "web").join("cpu.cfs_quota_us"))?;
        assert_eq!(quota.trim(), "50000");
        assert_eq!(procs(n, "web").len(), 1, "{n}: one process in the cgroup");
    }
    let table = success(&verge(&cloud, &["get", "apps"])?);
    assert!(table.contains("READY") && table.contains("3/3"), "{table}");

    // v2: gray release, 33% (1 node) then 100%, observed in order.
    let mut v2 = app("web", "2.0.0", &sha, extra.clone());
    v2["spec"]["workload"]["native"]["env"] = json!({"GREETING": "v2"});
    cloud.apply("apps", &v2).await?;
    let seen = cloud
        .follow_rollout("web", "2.0.0", 3, Duration::from_secs(90))
        .await?;
    seen.assert_in_order(1, 3, &["1/2 (33%)", "2/2 (100%)"]);
    success(&verge(
        &cloud,
        &["rollout", "status", "app/web", "--timeout", "60s"],
    )?);
    // The instances' output, shipped by their nodes.
    let logs = eventually(
        Duration::from_secs(30),
        "v2 output in verge logs",
        async || {
            let out = verge(&cloud, &["logs", "app/web"]).ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            names
                .iter()
                .all(|n| text.contains(&format!("[{n} web-0] started web 2.0.0")))
                .then_some(text)
        },
    )
    .await?;
    let node_b = &names[1];
    let only_b = success(&verge(&cloud, &["logs", "app/web", "--node", node_b])?);
    assert!(
        only_b
            .lines()
            .all(|l| l.starts_with(&format!("[{node_b} "))),
        "{only_b}"
    );
    assert!(logs.contains("started web 1.0.0"), "{logs}");

    // v3 fails its health check: rolled back automatically; rollout status fails.
    let mut v3 = app("web", "3.0.0", &sha, extra.clone());
    v3["spec"]["health"] =
        json!({"exec": {"command": ["/bin/false"]}, "intervalSeconds": 1, "failureThreshold": 2});
    cloud.apply("apps", &v3).await?;
    let out = verge(
        &cloud,
        &["rollout", "status", "app/web", "--timeout", "90s"],
    )?;
    assert!(
        !out.status.success(),
        "rollout status must fail on rollback"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back"), "{err}");
    let web = eventually(
        Duration::from_secs(60),
        "all back on v2 and running",
        async || {
            let a = cloud.app("web").await.ok()?;
            let all = names.iter().all(|n| {
                let i = app_instances(&a, n);
                i.len() == 1 && i[0]["version"] == "2.0.0" && i[0]["state"] == "Running"
            });
            (a["status"]["phase"] == "RolledBack" && all).then_some(a)
        },
    )
    .await?;
    assert!(
        web["status"]["rollout"]["message"]
            .as_str()
            .unwrap()
            .contains("health"),
        "{web}"
    );
    // `get apps` shows what serves — v2, healthy on all three — and v3 apart, as the
    // target that was rolled back: no outage where there is none. (Waited for: on a
    // loaded machine a probe can time out and a replica be briefly unhealthy.)
    let web = eventually(
        Duration::from_secs(60),
        "status: v2 serving, 3 ready",
        async || {
            let a = cloud.app("web").await.ok()?;
            (a["status"]["readyReplicas"] == 3).then_some(a)
        },
    )
    .await?;
    assert_eq!(
        (
            &web["status"]["version"],
            &web["status"]["targetVersion"],
            &web["status"]["updatedReplicas"],
            &web["status"]["phase"]
        ),
        (
            &json!("2.0.0"),
            &json!("3.0.0"),
            &json!(0),
            &json!("RolledBack")
        ),
        "{web}"
    );
    let available = app_condition(&web, "Available").unwrap();
    assert_eq!(
        (&available["status"], &available["reason"]),
        (&json!("True"), &json!("RolledBack")),
        "{web}"
    );
    let last = std::cell::RefCell::new(String::new());
    let row = eventually(
        Duration::from_secs(60),
        "get apps: web 2.0.0 3.0.0 native 3/3 RolledBack",
        async || {
            let table = success(&verge(&cloud, &["get", "apps"]).ok()?);
            let line = table.lines().find(|l| l.starts_with("web "))?.to_string();
            last.replace(line.clone());
            let cells: Vec<&str> = line.split_whitespace().collect();
            (cells.get(..5) == Some(&["web", "2.0.0", "3.0.0", "native", "3/3"][..])
                && cells.contains(&"RolledBack"))
            .then_some(())
        },
    )
    .await;
    assert!(row.is_ok(), "{row:?}; last row: {}", last.borrow());

    // A version going backwards by mistake is refused; `rollout rollback` may.
    let r = cloud
        .client()?
        .put(format!("{}/api/v1/apps/web", cloud.url))
        .bearer_auth(cloud.admin_token.clone())
        .json(&app("web", "1.0.0", &sha, extra.clone()))
        .send()
        .await?;
    assert_eq!(r.status(), 422);
    let body: Value = r.json().await?;
    assert!(body.to_string().contains("spec.version"), "{body}");

    // dependsOn on one node: api waits for db ^1.2, then starts.
    let node_a = &names[0];
    let only_a = json!({"placement": {"nodeSelector": {"site": "sh"}}, "health": healthy,
        "dependsOn": [{"app": "db", "version": "^1.2"}]});
    cloud
        .apply("apps", &app("api", "1.0.0", &sha, only_a))
        .await?;
    let api = eventually(Duration::from_secs(30), "api waiting", async || {
        let a = cloud.app("api").await.ok()?;
        let i = app_instances(&a, node_a);
        (i.len() == 1 && i[0]["state"] == "WaitingForDependency").then_some(a)
    })
    .await?;
    let dep = app_condition(&api, "DependenciesResolved").unwrap();
    assert_eq!(dep["status"], "False");
    assert_eq!(dep["reason"], "MissingDependency");
    assert!(
        procs(node_a, "api").is_empty(),
        "api must not run before db"
    );
    cloud
        .apply(
            "apps",
            &app(
                "db",
                "1.4.0",
                &sha,
                json!({"placement": {"nodeSelector": {"site": "sh"}}, "health": healthy}),
            ),
        )
        .await?;
    eventually(
        Duration::from_secs(60),
        "api running after db",
        async || {
            let a = cloud.app("api").await.ok()?;
            let d = cloud.app("db").await.ok()?;
            let ai = app_instances(&a, node_a);
            let di = app_instances(&d, node_a);
            (ai.len() == 1
                && ai[0]["state"] == "Running"
                && di.len() == 1
                && di[0]["state"] == "Running"
                && ai[0]["startedAtMs"].as_i64()? >= di[0]["startedAtMs"].as_i64()?)
            .then_some(())
        },
    )
    .await?;

    // A memory hog under 16Mi: OOM-killed, restarted with backoff, reported.
    let hog = artifact(
        dirs.path(),
        "hog",
        "x=$(head -c 100000000 /dev/zero | tr '\\0' a)\nsleep 100000",
    )?;
    let hog_sha = push(&cloud, &hog)?;
    cloud
        .apply(
            "apps",
            &app(
                "hog",
                "1.0.0",
                &hog_sha,
                json!({"resources": {"memory": "16Mi"},
        "placement": {"nodeSelector": {"site": "bj"}}}),
            ),
        )
        .await?;
    let node_b = &names[1];
    let hog_status = eventually(
        Duration::from_secs(60),
        "hog OOM-killed twice",
        async || {
            let a = cloud.app("hog").await.ok()?;
            let i = app_instances(&a, node_b).first().cloned().cloned()?;
            (i["restarts"].as_u64()? >= 2 && i["lastError"].as_str()?.contains("OOM")).then_some(i)
        },
    )
    .await?;
    assert!(
        hog_status["limits"].as_str().unwrap().starts_with("cgroup"),
        "{hog_status}"
    );

    // Bad inputs, each a clear status.
    let bogus_sha = "0".repeat(64);
    cloud
        .apply(
            "apps",
            &app(
                "ghost",
                "1.0.0",
                &bogus_sha,
                json!({"placement": {"nodeSelector": {"site": "gz"}}}),
            ),
        )
        .await?;
    let plain = dirs.path().join("plain.txt");
    std::fs::write(&plain, "not an archive")?;
    let plain_sha = push(&cloud, &plain)?;
    cloud
        .apply(
            "apps",
            &app(
                "plain",
                "1.0.0",
                &plain_sha,
                json!({"placement": {"nodeSelector": {"site": "gz"}}}),
            ),
        )
        .await?;
    // A URL that serves other bytes than the digest names.
    let mut wrong = app(
        "wrong",
        "1.0.0",
        &sha,
        json!({"placement": {"nodeSelector": {"site": "gz"}}}),
    );
    wrong["spec"]["workload"]["native"]["artifact"]["url"] =
        json!(format!("{}/api/v1/artifacts/{plain_sha}", cloud.url));
    cloud.apply("apps", &wrong).await?;
    let mut nocmd = app(
        "nocmd",
        "1.0.0",
        &sha,
        json!({"placement": {"nodeSelector": {"site": "gz"}}}),
    );
    nocmd["spec"]["workload"]["native"]["command"] = json!("no-such-program");
    cloud.apply("apps", &nocmd).await?;
    cloud
        .apply(
            "apps",
            &app(
                "nowhere",
                "1.0.0",
                &sha,
                json!({"placement": {"nodeSelector": {"site": "mars"}}}),
            ),
        )
        .await?;
    cloud.apply("apps", &app(
            "cyc-a",
            "1.0.0",
            &sha,
            json!({"placement": {"nodeSelector": {"site": "gz"}}, "dependsOn": [{"app": "cyc-b"}]}),
        ),
    )
    .await?;
    cloud.apply("apps", &app(
            "cyc-b",
            "1.0.0",
            &sha,
            json!({"placement": {"nodeSelector": {"site": "gz"}}, "dependsOn": [{"app": "cyc-a"}]}),
        ),
    )
    .await?;
    let node_c = &names[2];
    for (name, needle) in [
        ("ghost", "404"),
        ("plain", "not a tar"),
        ("wrong", "not the expected sha256"),
        ("nocmd", "command not found: no-such-program"),
    ] {
        eventually(Duration::from_secs(60), name, async || {
            let a = cloud.app(name).await.ok()?;
            let i = app_instances(&a, node_c).first().cloned().cloned()?;
            (i["state"] == "Failed" && i["lastError"].as_str()?.contains(needle)).then_some(())
        })
        .await?;
    }
    let nowhere = eventually(Duration::from_secs(30), "unschedulable", async || {
        let a = cloud.app("nowhere").await.ok()?;
        app_condition(&a, "Unschedulable").cloned()
    })
    .await?;
    assert_eq!(nowhere["reason"], "NoMatchingNodes");
    assert!(
        nowhere["message"]
            .as_str()
            .unwrap()
            .contains("do not match nodeSelector")
    );
    let cyc = eventually(Duration::from_secs(30), "cycle", async || {
        let a = cloud.app("cyc-a").await.ok()?;
        app_condition(&a, "DependenciesResolved")
            .filter(|c| c["reason"] == "DependencyCycle")
            .cloned()
    })
    .await?;
    assert!(
        cyc["message"]
            .as_str()
            .unwrap()
            .contains("cyc-a -> cyc-b -> cyc-a"),
        "{cyc}"
    );

    // Agent kill -9 and restart: the process is re-adopted, never duplicated.
    let before = procs(node_a, "web");
    assert_eq!(before.len(), 1);
    edges[0].kill9()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(procs(node_a, "web"), before, "the app outlives its agent");
    edges[0].restart()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        procs(node_a, "web"),
        before,
        "re-adopted: same process, no duplicate"
    );
    eventually(
        Duration::from_secs(30),
        "web reported Running after the restart",
        async || {
            let a = cloud.app("web").await.ok()?;
            let i = app_instances(&a, node_a);
            (i.len() == 1 && i[0]["state"] == "Running").then_some(())
        },
    )
    .await?;

    // Cloud stopped: apps keep running, and a killed app is restarted by its agent.
    cloud.kill9()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = procs(node_a, "web")[0];
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let restarted = eventually(Duration::from_secs(30), "restarted offline", async || {
        let p = procs(node_a, "web");
        (p.len() == 1 && p[0] != pid).then(|| p[0])
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(procs(node_a, "web"), vec![restarted]);
    // Status catches up after the cloud is back.
    cloud.restart().await?;
    eventually(
        Duration::from_secs(60),
        "restart reported after reconnect",
        async || {
            let a = cloud.app("web").await.ok()?;
            let i = app_instances(&a, node_a);
            (i.len() == 1 && i[0]["restarts"].as_u64()? >= 1 && i[0]["state"] == "Running")
                .then_some(())
        },
    )
    .await?;
    Ok(())
}
