//! Docker apps end to end: a real cloud, three real `verge-edge` nodes with different
//! labels, all driving one private `dockerd`; images pulled from a private
//! `docker-registry` (busybox from the host, imported and pushed: nothing comes from
//! the internet). v1 on every node with its limits in the container's `HostConfig` and
//! cgroup; gray release v1 → v2 (a new image) in steps 33% → 100% observed in order; v3
//! with a failing health check (an exec probe inside the container, first run 5 s after
//! the start) rolled back automatically in its first step, never past the canary (the
//! gate waits for a passed probe), with `verge rollout status` exiting non-zero; agent
//! kill -9 and restart adopts the running container (same id, never duplicated); with
//! the cloud stopped a killed container is restarted by its agent and the restart is
//! reported once the cloud is back. Bad input: an image the registry does not have, a registry nothing
//! listens on. Needs root and Debian's docker.io, docker-registry and busybox-static.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use verge_testkit::{
    Cloud, Dockerd, Edge, Registry, app_instances, app_object, busybox_image_tar, eventually,
    success, verge_cli, workspace_bin,
};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn verge(cloud: &Cloud, args: &[&str]) -> Result<Output> {
    verge_cli(std::path::Path::new(BIN), cloud, args)
}

/// The container's command: a sleeper that exits on SIGTERM. (A bare `sleep` as PID 1
/// ignores SIGTERM, so every stop would wait out the agent's 10 s grace.)
const SLEEPER: &str =
    "echo \"started on $(hostname)\"; echo to-stderr >&2; trap 'exit 0' TERM; sleep 100000 & wait";

/// An App running `image` (a sleeper) with `extra` merged into its spec.
fn app(name: &str, version: &str, image: &str, extra: Value) -> Value {
    let workload = json!({"docker": {"image": image, "command": ["/bin/sh", "-c", SLEEPER]}});
    app_object(name, version, workload, extra)
}

/// Full ids of the running containers of `app` on `node`.
async fn containers(dockerd: &Dockerd, node: &str, app: &str) -> Result<Vec<String>> {
    let out = dockerd
        .docker(&[
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            &format!("label=io.verge.node={node}"),
            "--filter",
            &format!("label=io.verge.app={app}"),
        ])
        .await?;
    Ok(out.lines().map(str::to_string).collect())
}

/// `docker inspect -f FORMAT ID`.
async fn inspect(dockerd: &Dockerd, id: &str, format: &str) -> Result<String> {
    dockerd.docker(&["inspect", "-f", format, id]).await
}

/// Removes every container labelled for the test's nodes (containers outlive a killed
/// agent on purpose). Dropped before the `Dockerd` (declared after it) and after the
/// edges (declared before them), so no agent starts them again.
struct Cleanup {
    docker_host: String,
    config: tempfile::TempDir,
    nodes: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for node in &self.nodes {
            let ids = Command::new("docker")
                .args([
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=io.verge.node={node}"),
                ])
                .env("DOCKER_HOST", &self.docker_host)
                .env("DOCKER_CONFIG", self.config.path())
                .stdin(Stdio::null())
                .output();
            let Ok(ids) = ids else { continue };
            let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .env("DOCKER_HOST", &self.docker_host)
                .env("DOCKER_CONFIG", self.config.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `Dockerd::start` / `Registry::start`, or `None` (skip) when a component is not
/// installed outside CI.
fn skip_if_missing<T>(r: Result<T>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e)
            if std::env::var("CI").as_deref() != Ok("true")
                && e.to_string().contains(" not found: install ") =>
        {
            eprintln!("skipping: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_apps_gray_release_rollback_limits_adopt_offline() -> Result<()> {
    let t0 = Instant::now();
    let Some(dockerd) = skip_if_missing(Dockerd::start().await)? else {
        return Ok(());
    };
    let Some(registry) = skip_if_missing(Registry::start().await)? else {
        return Ok(());
    };
    let dirs = tempfile::tempdir()?;
    let tag = std::process::id();
    let names: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|n| format!("dkr-{n}-{tag}"))
        .collect();
    let _cleanup = Cleanup {
        docker_host: dockerd.host(),
        config: tempfile::tempdir()?,
        nodes: names.clone(),
    };

    // Images: bb:1 and bb:2 (another image: its own ENV), pushed, then removed locally
    // so that the agents must pull them.
    let Some(tar) = skip_if_missing(busybox_image_tar(dirs.path()))? else {
        return Ok(());
    };
    let tar = tar.to_str().unwrap();
    let reg = registry.addr();
    let bb1 = format!("{reg}/bb:1");
    let bb2 = format!("{reg}/bb:2");
    dockerd.build_image(&bb1, Path::new(tar)).await?;
    dockerd
        .docker(&["import", "--change", "ENV IMAGE_VERSION=2", tar, &bb2])
        .await?;
    for image in [&bb1, &bb2] {
        dockerd.push(image).await?;
    }
    dockerd.docker(&["rmi", &bb1, &bb2]).await?;
    assert_eq!(dockerd.docker(&["images", "-q"]).await?, "");
    eprintln!("dockerd, registry and images ready in {:?}", t0.elapsed());

    // The cloud and three edges on the one dockerd (containers labelled per node).
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let mut cloud = Cloud::start(
        Path::new(BIN),
        &["--heartbeat-interval", "1s", "--heartbeat-misses", "5"],
    )
    .await?;
    let socket = dockerd.socket().to_str().unwrap().to_string();
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
            &[
                "--heartbeat-interval",
                "1s",
                "--status-interval",
                "5s",
                // Back soon after the cloud restarts (the default waits up to 60 s).
                "--reconnect-max",
                "2s",
                "--docker-socket",
                &socket,
                "--docker-network",
                "host",
            ],
        )?);
    }
    cloud.wait_ready(&names).await?;

    let healthy =
        json!({"exec": {"command": ["/bin/true"]}, "intervalSeconds": 1, "failureThreshold": 1});
    let rollout = json!({"steps": [{"percent": 33, "pause": "2s"}], "autoRollback": true,
        "maxUnavailable": 1, "progressDeadlineSeconds": 90});
    let extra = json!({"resources": {"cpu": "500m", "memory": "64Mi"}, "health": healthy,
        "rollout": rollout, "placement": {"nodeSelector": {"tier": "edge"}}});

    // Gate failures that leave the rest testable: reported at the end, after the rest ran.
    let mut bugs: Vec<String> = Vec::new();

    // 1. v1 everywhere: pulled from the registry, one container per node, limited.
    let t = Instant::now();
    cloud
        .apply("apps", &app("web", "1.0.0", &bb1, extra.clone()))
        .await?;
    success(&verge(
        &cloud,
        &["rollout", "status", "app/web", "--timeout", "120s"],
    )?);
    let web = eventually(Duration::from_secs(30), "v1 Running on all", async || {
        let a = cloud.app("web").await.ok()?;
        names
            .iter()
            .all(|n| {
                let i = app_instances(&a, n);
                i.len() == 1 && i[0]["version"] == "1.0.0" && i[0]["state"] == "Running"
            })
            .then_some(a)
    })
    .await?;
    for n in &names {
        let inst = app_instances(&web, n);
        assert!(
            inst[0]["limits"]
                .as_str()
                .unwrap_or("")
                .starts_with("cgroup"),
            "{n}: {web}"
        );
        let ids = containers(&dockerd, n, "web").await?;
        assert_eq!(ids.len(), 1, "{n}: one web container: {ids:?}");
        let id = &ids[0];
        assert_eq!(
            inspect(
                &dockerd,
                id,
                "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.RestartPolicy.Name}} \
                 {{.HostConfig.NetworkMode}} {{.Config.Image}} {{index .Config.Labels \"io.verge.version\"}}"
            )
            .await?,
            format!("67108864 500000000 no host {bb1} 1.0.0"),
            "{n}"
        );
        // The limit as the kernel sees it, from inside the container.
        let mem = dockerd
            .docker(&[
                "exec",
                id,
                "sh",
                "-c",
                "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null \
                 || cat /sys/fs/cgroup/memory.max",
            ])
            .await?;
        assert_eq!(mem, "67108864", "{n}");
    }
    let table = success(&verge(&cloud, &["get", "apps"])?);
    assert!(table.contains("3/3"), "{table}");
    // The containers' output (stdout and stderr), shipped by their nodes.
    eventually(
        Duration::from_secs(30),
        "container output in verge logs",
        async || {
            let out = verge(&cloud, &["logs", "app/web"]).ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            names
                .iter()
                .all(|n| {
                    text.contains(&format!("[{n} web-0] started on"))
                        && text.contains(&format!("[{n} web-0] to-stderr"))
                })
                .then_some(())
        },
    )
    .await?;
    eprintln!("v1 on 3 nodes in {:?}", t.elapsed());

    // 2. v2 (another image): gray release, 33% (1 node) then 100%, observed in order.
    let t = Instant::now();
    cloud
        .apply("apps", &app("web", "2.0.0", &bb2, extra.clone()))
        .await?;
    let seen = cloud
        .follow_rollout("web", "2.0.0", 3, Duration::from_secs(120))
        .await?;
    seen.assert_in_order(1, 3, &["1/2 (33%)", "2/2 (100%)"]);
    success(&verge(
        &cloud,
        &["rollout", "status", "app/web", "--timeout", "60s"],
    )?);
    for n in &names {
        let ids = eventually(Duration::from_secs(30), "one v2 container", async || {
            let ids = containers(&dockerd, n, "web").await.ok()?;
            (ids.len() == 1).then_some(ids)
        })
        .await?;
        assert_eq!(
            inspect(
                &dockerd,
                &ids[0],
                "{{.Config.Image}} {{index .Config.Labels \"io.verge.version\"}}"
            )
            .await?,
            format!("{bb2} 2.0.0"),
            "{n}"
        );
        let env = dockerd
            .docker(&["exec", &ids[0], "sh", "-c", "echo $IMAGE_VERSION"])
            .await?;
        assert_eq!(env, "2", "{n}: the v2 image runs");
    }
    eprintln!("v2 gray release in {:?}: {:?}", t.elapsed(), seen.steps);

    // 3. v3 fails its health check: rolled back automatically; rollout status fails.
    // Its first probe runs 5 s after the start, so for 5 s the canary's health is
    // Unknown: the step-1 gate must wait for it ("Running and healthy"), and v3 must
    // never get past the canary. Watched while `verge rollout status` runs.
    let t = Instant::now();
    let mut v3 = app("web", "3.0.0", &bb2, extra.clone());
    v3["spec"]["health"] = json!({"exec": {"command": ["/bin/false"]}, "intervalSeconds": 1,
        "failureThreshold": 2, "initialDelaySeconds": 5});
    cloud.apply("apps", &v3).await?;
    let admin = cloud.admin_config();
    let rollout_status = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(["rollout", "status", "app/web", "--timeout", "120s"])
            .env("VERGE_CONFIG", admin)
            .env("RUST_LOG", "off")
            .output()
    });
    let mut timeline: Vec<String> = Vec::new();
    let mut last = String::new();
    let mut assigned_v3: BTreeSet<String> = BTreeSet::new();
    let mut ran_v3: BTreeSet<String> = BTreeSet::new();
    let mut v3_healthy = false;
    let mut rolled_back_at: Option<String> = None;
    while !rollout_status.is_finished() {
        if let Ok(a) = cloud.app("web").await {
            let st = &a["status"];
            if let Some(nodes) = st["rollout"]["nodes"].as_object() {
                for (n, v) in nodes {
                    if v == "3.0.0" {
                        assigned_v3.insert(n.clone());
                    }
                }
            }
            let insts = st["instances"].as_array().cloned().unwrap_or_default();
            v3_healthy |= insts
                .iter()
                .any(|i| i["version"] == "3.0.0" && i["health"] == "Healthy");
            if st["phase"] == "RolledBack" && rolled_back_at.is_none() {
                rolled_back_at = st["step"].as_str().map(str::to_string);
            }
            let line = format!(
                "{} {} {} {}",
                st["phase"], st["step"], st["rollout"]["nodes"], st["rollout"]["message"]
            );
            if line != last {
                timeline.push(format!("{:>6.1?} {line}", t.elapsed()));
                last = line;
            }
        }
        let on_v3 = dockerd
            .docker(&[
                "ps",
                "-a",
                "--filter",
                "label=io.verge.version=3.0.0",
                "--format",
                "{{.Label \"io.verge.node\"}}",
            ])
            .await
            .unwrap_or_default();
        ran_v3.extend(on_v3.lines().map(str::to_string));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = rollout_status.await??;
    if rolled_back_at.is_none() {
        let a = cloud.app("web").await?;
        if a["status"]["phase"] == "RolledBack" {
            rolled_back_at = a["status"]["step"].as_str().map(str::to_string);
        }
    }
    assert!(
        !v3_healthy,
        "/bin/false never reports Healthy: {timeline:#?}"
    );
    // With the canary's health still Unknown the gate may even let v3 through every
    // step: a failing version "rolled out" everywhere. Recorded, and undone with
    // `verge rollout rollback` so that the rest still runs.
    let completed_v3 = out.status.success();
    if completed_v3 {
        bugs.push(format!(
            "v3 (health check /bin/false) was declared rolled out: `verge rollout status` \
             exited 0 with {:?}; the gates passed while the canaries' health was Unknown; \
             timeline:\n{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            timeline.join("\n")
        ));
        // After a completed rollout, rollback goes to the version before it.
        let said = success(&verge(&cloud, &["rollout", "rollback", "app/web"])?);
        assert!(said.contains("rolling back to 2.0.0"), "{said}");
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("rolled back"), "{err}");
        // Checked at the end, so that the rest still runs (see `bugs`).
        if assigned_v3.len() != 1
            || ran_v3.len() > 1
            || rolled_back_at.as_deref() != Some("1/2 (33%)")
        {
            bugs.push(format!(
                "v3 went past its canary before the canary's first health probe: nodes \
                 assigned 3.0.0 {assigned_v3:?}, nodes that ran a 3.0.0 container {ran_v3:?}, \
                 rolled back at step {rolled_back_at:?} (want exactly one node and \
                 \"1/2 (33%)\"); the step-1 gate passed while the canary's health was \
                 Unknown; timeline:\n{}",
                timeline.join("\n")
            ));
        }
    }
    let mut seen = Value::Null;
    let back = eventually(
        Duration::from_secs(60),
        "all back on v2 and running",
        async || {
            let a = cloud.app("web").await.ok()?;
            let all = names.iter().all(|n| {
                let i = app_instances(&a, n);
                i.len() == 1 && i[0]["version"] == "2.0.0" && i[0]["state"] == "Running"
            });
            let phase = if completed_v3 {
                "Complete"
            } else {
                "RolledBack"
            };
            seen = a["status"].clone();
            (a["status"]["phase"] == phase && all).then_some(a)
        },
    )
    .await;
    let web = back.map_err(|e| {
        anyhow::anyhow!(
            "{e}; completed_v3={completed_v3}; last status: {seen:#}\ntimeline:\n{}",
            timeline.join("\n")
        )
    })?;
    if !completed_v3 {
        let msg = web["status"]["rollout"]["message"].as_str().unwrap_or("");
        assert!(msg.contains("health check failed"), "{web}");
    }
    for n in &names {
        let ids = eventually(Duration::from_secs(30), "one v2 container", async || {
            let ids = containers(&dockerd, n, "web").await.ok()?;
            (ids.len() == 1).then_some(ids)
        })
        .await?;
        assert_eq!(
            inspect(
                &dockerd,
                &ids[0],
                "{{.State.Running}} {{index .Config.Labels \"io.verge.version\"}}"
            )
            .await?,
            "true 2.0.0",
            "{n}"
        );
    }
    eprintln!("v3 rolled back in {:?}", t.elapsed());

    // 4. Agent kill -9 and restart: the container is adopted, never duplicated.
    let node_a = &names[0];
    let before = containers(&dockerd, node_a, "web").await?;
    assert_eq!(before.len(), 1);
    edges[0].kill9()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        containers(&dockerd, node_a, "web").await?,
        before,
        "the container outlives its agent"
    );
    edges[0].restart()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        containers(&dockerd, node_a, "web").await?,
        before,
        "adopted: same container, no duplicate"
    );
    let all = dockerd
        .docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.verge.node={node_a}"),
        ])
        .await?;
    assert_eq!(all.lines().count(), 1, "nothing else on the node: {all}");
    eventually(
        Duration::from_secs(30),
        "web reported Running after the restart",
        async || {
            let a = cloud.app("web").await.ok()?;
            let i = app_instances(&a, node_a);
            (i.len() == 1 && i[0]["state"] == "Running" && i[0]["version"] == "2.0.0").then_some(())
        },
    )
    .await?;
    assert_eq!(containers(&dockerd, node_a, "web").await?, before);

    // 5. Cloud stopped: a killed container is restarted by its agent, once.
    let t = Instant::now();
    cloud.kill9()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = before[0].clone();
    dockerd.docker(&["kill", &old]).await?;
    let restarted = eventually(Duration::from_secs(30), "restarted offline", async || {
        let ids = containers(&dockerd, node_a, "web").await.ok()?;
        (ids.len() == 1 && ids[0] != old).then(|| ids[0].clone())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        containers(&dockerd, node_a, "web").await?,
        std::slice::from_ref(&restarted)
    );
    eprintln!("restarted offline in {:?}", t.elapsed());
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
    assert_eq!(containers(&dockerd, node_a, "web").await?, [restarted]);

    // 6. Bad input: no such image in the registry; a registry nothing listens on.
    let t = Instant::now();
    let gz = json!({"placement": {"nodeSelector": {"site": "gz"}}});
    let missing = format!("{reg}/does-not-exist:1");
    cloud
        .apply("apps", &app("ghost", "1.0.0", &missing, gz.clone()))
        .await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let nowhere = format!("127.0.0.1:{port}/bb:1");
    cloud
        .apply("apps", &app("offline", "1.0.0", &nowhere, gz.clone()))
        .await?;
    let node_c = &names[2];
    for (name, image, needle) in [
        ("ghost", &missing, "not found"),
        ("offline", &nowhere, "unreachable"),
    ] {
        let i = eventually(Duration::from_secs(60), name, async || {
            let a = cloud.app(name).await.ok()?;
            let i = app_instances(&a, node_c).first().cloned().cloned()?;
            (i["state"] == "Failed" && i["lastError"].as_str()?.contains(needle)).then_some(i)
        })
        .await?;
        let last = i["lastError"].as_str().unwrap();
        assert!(last.contains(image.as_str()), "{name}: {last}");
        assert!(
            containers(&dockerd, node_c, name).await?.is_empty(),
            "{name}: no container"
        );
    }
    eprintln!("bad inputs reported in {:?}", t.elapsed());
    eprintln!("total {:?}", t0.elapsed());
    assert!(bugs.is_empty(), "{}", bugs.join("\n\n"));
    Ok(())
}

/// Removes a Docker network (after the containers on it: declare it before the
/// [`Cleanup`], after the [`Dockerd`]).
struct NetworkCleanup {
    docker_host: String,
    config: tempfile::TempDir,
    name: String,
}

impl Drop for NetworkCleanup {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.name])
            .env("DOCKER_HOST", &self.docker_host)
            .env("DOCKER_CONFIG", self.config.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Health probes reach the container, not the node (decision 019): on a node whose
/// containers run on a bridge network, with a process of the node holding the probe
/// port on every node address, a container that does not serve it is never healthy
/// (its probe fails at the container's address; the node's process is never asked),
/// and the README's `web` App — busybox httpd on that port, no `ports:` — is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_probes_reach_the_container_not_the_node() -> Result<()> {
    let Some(dockerd) = skip_if_missing(Dockerd::start().await)? else {
        return Ok(());
    };
    let Some(registry) = skip_if_missing(Registry::start().await)? else {
        return Ok(());
    };
    let dirs = tempfile::tempdir()?;
    let tag = std::process::id();
    let node = format!("dkr-probe-{tag}");
    let network = format!("verge-probe-{tag}");
    dockerd.docker(&["network", "create", &network]).await?;
    let _network = NetworkCleanup {
        docker_host: dockerd.host(),
        config: tempfile::tempdir()?,
        name: network.clone(),
    };
    let _cleanup = Cleanup {
        docker_host: dockerd.host(),
        config: tempfile::tempdir()?,
        nodes: vec![node.clone()],
    };
    let Some(tar) = skip_if_missing(busybox_image_tar(dirs.path()))? else {
        return Ok(());
    };
    let image = format!("{}/hello-web:1", registry.addr());
    dockerd.build_image(&image, &tar).await?;
    dockerd.push(&image).await?;

    // A process of the node answering HTTP 200 on the probe port, on every address.
    let holder = tokio::net::TcpListener::bind("0.0.0.0:0").await?;
    let port = holder.local_addr()?.port();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let asked = asked.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = holder.accept().await {
                asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                    )
                    .await;
            }
        });
    }

    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start(Path::new(BIN), &["--heartbeat-interval", "1s"]).await?;
    let token = cloud.bootstrap_token(1).await?;
    let socket = dockerd.socket().to_str().unwrap().to_string();
    let _edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &node,
        &[],
        &dirs.path().join(&node),
        &[
            "--heartbeat-interval",
            "1s",
            "--status-interval",
            "2s",
            "--docker-socket",
            &socket,
            "--docker-network",
            &network,
        ],
    )?;
    cloud.wait_ready(&[&node]).await?;

    let probe = json!({"http": {"port": port, "path": "/"}, "intervalSeconds": 1,
        "timeoutSeconds": 2, "failureThreshold": 2});
    // 1. A container that serves nothing: its probes fail at its own address.
    let silent =
        json!({"docker": {"image": image, "command": ["/bin/busybox", "sh", "-c", SLEEPER]}});
    cloud
        .apply(
            "apps",
            &app_object("silent", "1.0.0", silent, json!({"health": probe})),
        )
        .await?;
    let failed = eventually(
        Duration::from_secs(90),
        "silent: health check failed",
        async || {
            let a = cloud.app("silent").await.ok()?;
            let i = app_instances(&a, &node).first().cloned().cloned()?;
            assert_ne!(i["health"], "Healthy", "a container serving nothing: {a}");
            let e = i["lastError"].as_str()?;
            e.contains("health check failed").then(|| e.to_string())
        },
    )
    .await?;
    eprintln!("silent: {failed}");
    // The address probed is on the node's container network, not the node's loopback.
    let probed: std::net::Ipv4Addr = failed
        .split("http://")
        .nth(1)
        .and_then(|r| r.split(&format!(":{port}/")).next())
        .and_then(|ip| ip.parse().ok())
        .with_context(|| format!("an IPv4 address:{port} in {failed}"))?;
    let subnet = dockerd
        .docker(&[
            "network",
            "inspect",
            "-f",
            "{{(index .IPAM.Config 0).Subnet}}",
            &network,
        ])
        .await?;
    let (base, bits) = subnet
        .trim()
        .split_once('/')
        .with_context(|| format!("subnet of {network}: {subnet}"))?;
    let (base, bits): (std::net::Ipv4Addr, u32) = (base.parse()?, bits.parse()?);
    let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
    assert_eq!(
        u32::from(probed) & mask,
        u32::from(base) & mask,
        "probed {probed}, which is not on {network} ({subnet}): {failed}"
    );

    // 2. The README's web App, its port not published: healthy at its own address.
    let web = json!({"docker": {"image": image, "command": ["/bin/busybox", "sh", "-c",
        format!("mkdir -p /www && echo hello > /www/index.html && exec busybox httpd -f -p {port} -h /www")]}});
    cloud
        .apply(
            "apps",
            &app_object(
                "web",
                "1.0.0",
                web,
                json!({"resources": {"cpu": "500m", "memory": "64Mi"}, "health": probe,
                    "rollout": {"steps": [{"percent": 50, "pause": "10s"}], "autoRollback": true}}),
            ),
        )
        .await?;
    success(&verge(
        &cloud,
        &["rollout", "status", "app/web", "--timeout", "90s"],
    )?);
    let a = cloud.app("web").await?;
    let i = app_instances(&a, &node);
    assert_eq!(
        (i.len(), &i[0]["state"], &i[0]["health"]),
        (1, &json!("Running"), &json!("Healthy")),
        "{a}"
    );
    assert!(
        a["spec"]["workload"]["docker"]["ports"].is_null(),
        "no ports published"
    );
    // The silent one never became healthy; the node's process was never asked.
    let s = cloud.app("silent").await?;
    assert!(
        app_instances(&s, &node)
            .iter()
            .all(|i| i["health"] != "Healthy"),
        "{s}"
    );
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a probe reached the node's own process"
    );
    Ok(())
}
