//! The Docker engine against a real `dockerd` and a real `docker-registry`, both private
//! (temp dirs, a unix socket, a loopback port). The image is busybox from the host,
//! imported and pushed to the registry: nothing comes from the internet. Needs root
//! and Debian's docker.io, docker-registry and busybox-static (scripts/test installs
//! them).

use std::collections::BTreeMap;
use std::time::Duration;

use verge_api::specs::DockerWorkload;
use verge_edge::Error;
use verge_edge::engine::docker::{ContainerHandle, DockerEngine};
use verge_edge::engine::{Enforcement, Engine, Exit, InstanceKey, InstanceSpec, Limits, Payload};
use verge_testkit::{Dockerd, Registry, busybox_image_tar};

const NODE: &str = "edge-test";

fn spec(image: &str, app: &str, replica: u32, args: &[&str], limits: Limits) -> InstanceSpec {
    InstanceSpec {
        key: InstanceKey {
            app: app.into(),
            replica,
        },
        node: NODE.into(),
        version: "1.0.0".into(),
        payload: Payload::Docker(DockerWorkload {
            image: image.into(),
            command: vec![],
            args: args.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::from([("GREETING".to_string(), "hello".to_string())]),
            secret_env: BTreeMap::new(),
            ports: vec![],
            volumes: vec![],
            registry_auth: None,
        }),
        limits,
        registry_auth: None,
    }
}

fn argv(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

async fn wait(engine: &DockerEngine, h: &ContainerHandle) -> Exit {
    tokio::time::timeout(Duration::from_secs(60), engine.wait(h))
        .await
        .expect("the container exits within 60s")
}

/// Ids of all containers, running or not.
async fn all_containers(dockerd: &Dockerd) -> Vec<String> {
    let out = dockerd
        .docker(&["ps", "-aq", "--no-trunc"])
        .await
        .expect("docker ps");
    out.lines().map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_engine_against_a_real_daemon() {
    let dockerd = Dockerd::start().await.expect("start dockerd");
    let registry = Registry::start().await.expect("start docker-registry");
    let tmp = tempfile::tempdir().unwrap();

    // The image: busybox, imported, pushed to the registry, then removed locally.
    let tar = busybox_image_tar(tmp.path()).expect("busybox tarball");
    dockerd.build_image("verge-test/bb:1", &tar).await.unwrap();
    let image = format!("{}/bb:1", registry.addr());
    dockerd
        .docker(&["tag", "verge-test/bb:1", &image])
        .await
        .unwrap();
    dockerd.push(&image).await.unwrap();
    dockerd
        .docker(&["rmi", &image, "verge-test/bb:1"])
        .await
        .unwrap();
    assert_eq!(dockerd.docker(&["images", "-q"]).await.unwrap(), "");

    // Nothing listens there.
    let err = DockerEngine::connect(Some(&tmp.path().join("nope.sock")))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Docker(m) if m.contains("nope.sock")),
        "{err}"
    );

    let engine = DockerEngine::connect(Some(dockerd.socket()))
        .await
        .expect("connect")
        .with_network("host");

    // prepare pulls the image; again, it is already there.
    let limits = Limits {
        cpu_millis: Some(500),
        memory_bytes: Some(64 << 20),
    };
    let web = spec(&image, "web", 0, &["sleep", "300"], limits);
    engine.prepare(&web).await.expect("prepare pulls the image");
    dockerd
        .docker(&["image", "inspect", &image])
        .await
        .expect("the image was pulled");
    engine.prepare(&web).await.expect("prepare again");

    // start: named, labelled, limited, Docker's restart policy off.
    let (h, enforcement) = engine.start(&web).await.expect("start");
    assert!(
        h.name.starts_with("verge-edge-test-web-0-"),
        "name {}",
        h.name
    );
    match &enforcement {
        Enforcement::Cgroup(paths) => {
            assert!(!paths.is_empty());
            assert!(paths.iter().all(|p| p.contains(&h.id)), "{paths:?}");
        }
        other => panic!("enforcement {other:?}"),
    }
    let host_config = dockerd
        .docker(&[
            "inspect",
            "-f",
            "{{.HostConfig.Memory}} {{.HostConfig.NanoCpus}} {{.HostConfig.RestartPolicy.Name}} \
             {{.HostConfig.NetworkMode}} {{index .Config.Labels \"io.verge.app\"}} \
             {{index .Config.Labels \"io.verge.replica\"}} {{index .Config.Labels \"io.verge.node\"}}",
            &h.id,
        ])
        .await
        .unwrap();
    assert_eq!(host_config, "67108864 500000000 no host web 0 edge-test");

    // The limits as the kernel sees them, from inside the container.
    let cgroup = dockerd
        .docker(&[
            "exec",
            &h.id,
            "sh",
            "-c",
            "if [ -f /sys/fs/cgroup/memory.max ]; then cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max; \
             else cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us \
             /sys/fs/cgroup/cpu/cpu.cfs_period_us; fi",
        ])
        .await
        .unwrap();
    let cgroup: Vec<&str> = cgroup.lines().collect();
    assert!(
        cgroup == ["67108864", "50000", "100000"] || cgroup == ["67108864", "50000 100000"],
        "{cgroup:?}"
    );

    // exec: exit codes, a command that does not exist, a timeout.
    let t = Duration::from_secs(20);
    let check = "test \"$GREETING\" = hello && \
                 if [ -f /sys/fs/cgroup/memory.max ]; then test \"$(cat /sys/fs/cgroup/memory.max)\" = 67108864; \
                 else test \"$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)\" = 67108864; fi";
    assert_eq!(
        engine
            .exec(&h, &argv(&["sh", "-c", check]), t)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        engine
            .exec(&h, &argv(&["sh", "-c", "exit 3"]), t)
            .await
            .unwrap(),
        3
    );
    assert_eq!(engine.exec(&h, &argv(&["false"]), t).await.unwrap(), 1);
    match engine.exec(&h, &argv(&["/bin/nope"]), t).await {
        Ok(code) => assert_ne!(code, 0),
        Err(e) => assert!(e.to_string().contains("nope"), "{e}"),
    }
    let err = engine
        .exec(&h, &argv(&["sleep", "10"]), Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("timed out"), "{err}");

    // usage
    let usage = engine
        .usage(&h)
        .await
        .expect("usage of a running container");
    assert!(
        usage.memory_bytes > 0 && usage.memory_bytes < 64 << 20,
        "{usage:?}"
    );

    // An instance that exits on its own: code, message, logs (stdout and stderr).
    let job = spec(
        &image,
        "job",
        0,
        &[
            "sh",
            "-c",
            "echo oops >&2; sleep 0.3; for i in 1 2 3 4 5; do echo line$i; done; exit 3",
        ],
        Limits::default(),
    );
    let (jh, enforcement) = engine.start(&job).await.unwrap();
    assert_eq!(enforcement, Enforcement::None);
    let exit = wait(&engine, &jh).await;
    assert_eq!(exit.code, Some(3), "{exit:?}");
    assert!(!exit.oom_killed);
    assert_eq!(exit.message, "exit code 3");
    assert_eq!(engine.logs(&jh, 2).await.unwrap(), ["line4", "line5"]);
    let all = engine.logs(&jh, 100).await.unwrap();
    assert!(all.contains(&"oops".to_string()), "{all:?}");
    assert_eq!(all.len(), 6, "{all:?}");
    engine.stop(&jh, Duration::from_secs(1)).await.unwrap();

    // adopt from a fresh engine (an agent restart): exactly that instance.
    let fresh = DockerEngine::connect(Some(dockerd.socket())).await.unwrap();
    let adopted = fresh.adopt(NODE).await.unwrap();
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(
        adopted[0].key,
        InstanceKey {
            app: "web".into(),
            replica: 0
        }
    );
    assert_eq!(adopted[0].version, "1.0.0");
    assert_eq!(adopted[0].handle, h);
    assert!(fresh.adopt("another-node").await.unwrap().is_empty());

    // Leftovers: an exited container of the same instance, and a second running one
    // (newer). adopt keeps the newest running one and removes the others.
    dockerd
        .docker(&[
            "run",
            "--network",
            "host",
            "--label",
            "io.verge.node=edge-test",
            "--label",
            "io.verge.app=web",
            "--label",
            "io.verge.replica=0",
            "--label",
            "io.verge.version=0.9.0",
            &image,
            "true",
        ])
        .await
        .unwrap();
    let (dup, _) = engine.start(&web).await.unwrap();
    assert_eq!(all_containers(&dockerd).await.len(), 3);
    let adopted = fresh.adopt(NODE).await.unwrap();
    assert_eq!(adopted.len(), 1, "{adopted:?}");
    assert_eq!(adopted[0].handle, dup);
    assert_eq!(all_containers(&dockerd).await, [dup.id.as_str()]);
    let exit = wait(&engine, &h).await;
    assert!(!exit.success(), "{exit:?}");

    // stop removes it; stopping what is gone is fine; waiting on it says so.
    engine.stop(&dup, Duration::from_secs(1)).await.unwrap();
    assert!(all_containers(&dockerd).await.is_empty());
    engine.stop(&dup, Duration::from_secs(1)).await.unwrap();
    assert_eq!(wait(&engine, &dup).await.message, "container removed");

    // Bad inputs.
    let missing = format!("{}/does-not-exist:1", registry.addr());
    let err = engine
        .prepare(&spec(&missing, "x", 0, &[], Limits::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ImageNotFound { image, .. } if *image == missing),
        "{err}"
    );
    assert!(err.to_string().contains(&missing), "{err}");
    eprintln!("prepare: {err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("127.0.0.1:{port}/bb:1");
    let err = engine
        .prepare(&spec(&unreachable, "x", 0, &[], Limits::default()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::RegistryUnreachable { image, .. } if *image == unreachable),
        "{err}"
    );
    assert!(err.to_string().contains(&unreachable), "{err}");
    eprintln!("prepare: {err}");

    // A command that does not exist: start fails, naming it, and leaves nothing behind.
    let nope = spec(&image, "nope", 0, &["/bin/nope"], Limits::default());
    match engine.start(&nope).await {
        Err(e) => {
            eprintln!("start: {e}");
            assert!(matches!(e, Error::Docker(_)), "{e}");
            assert!(e.to_string().contains("/bin/nope"), "{e}");
        }
        Ok((h, _)) => {
            let exit = wait(&engine, &h).await;
            assert!(!exit.success());
            assert!(exit.message.contains("/bin/nope"), "{exit:?}");
            engine.stop(&h, Duration::ZERO).await.unwrap();
        }
    }
    assert!(all_containers(&dockerd).await.is_empty());

    // Over its memory limit: OOM-killed, and said so.
    let hog = spec(
        &image,
        "hog",
        0,
        &["dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"],
        Limits {
            cpu_millis: None,
            memory_bytes: Some(8 << 20),
        },
    );
    let (hh, _) = engine.start(&hog).await.unwrap();
    let exit = wait(&engine, &hh).await;
    assert!(exit.oom_killed, "{exit:?}");
    assert_eq!(exit.code, Some(137));
    assert_eq!(exit.message, "exit code 137, OOM-killed (memory limit 8Mi)");
    engine.stop(&hh, Duration::ZERO).await.unwrap();
    assert!(all_containers(&dockerd).await.is_empty());
}
