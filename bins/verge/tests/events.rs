//! Object events through a real `verge cloud`: event triggers are validated at the API
//! (each bad field named), listed and described by the CLI; the dead-letter API answers
//! every role as documented (a viewer lists, never redrives or drops), refuses ids and
//! buckets that are not ones before touching the store, and the dispatcher's metrics
//! are exported. (Events themselves come from S3 writes; the end-to-end test with real
//! uploads lives with the S3 API.)

use std::path::Path;

use anyhow::{Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use verge_testkit::{Cloud, success, verge_cli};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

async fn call(
    cloud: &Cloud,
    method: Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Result<(StatusCode, Value)> {
    let mut r = cloud
        .client()?
        .request(method, format!("{}{path}", cloud.url))
        .bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    Ok((
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    ))
}

async fn token(cloud: &Cloud, role: &str) -> Result<String> {
    let v = cloud
        .api(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"role": role, "description": format!("events test {role}")})),
        )
        .await?;
    v["token"].as_str().map(str::to_owned).context("token")
}

fn trigger(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "verge.dev/v1", "kind": "Trigger", "metadata": {"name": name},
        "spec": spec})
}

#[tokio::test]
async fn event_triggers_and_the_dead_letter_api_answer_every_role_as_documented() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    let admin = cloud.admin_token.clone();
    let viewer = token(&cloud, "viewer").await?;
    let operator = token(&cloud, "operator").await?;

    // Event triggers: stored when valid, 422 naming the field when not.
    cloud
        .api(
            Method::POST,
            "/api/v1/triggers",
            Some(trigger(
                "thumbs",
                json!({"event": {"bucket": "uploads", "types": ["created"], "prefix": "in/",
                    "suffix": ".jpg"}, "function": "image-pipeline"}),
            )),
        )
        .await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/triggers",
            Some(trigger(
                "hook",
                json!({"event": {"bucket": "uploads", "types": ["created", "deleted"]},
                    "sink": {"url": "https://hooks.example.com/verge"}}),
            )),
        )
        .await?;
    for (spec, field) in [
        (
            json!({"event": {"bucket": "UP", "types": ["created"]}, "function": "f"}),
            "spec.event.bucket",
        ),
        (
            json!({"event": {"bucket": "uploads", "types": []}, "function": "f"}),
            "spec.event.types",
        ),
        (
            json!({"event": {"bucket": "uploads", "types": ["created"], "prefix": "p".repeat(1025)},
                "function": "f"}),
            "spec.event.prefix",
        ),
        (
            json!({"event": {"bucket": "uploads", "types": ["created"]},
                "sink": {"url": "file:///etc/passwd"}}),
            "spec.sink.url",
        ),
        (
            json!({"schedule": "* * * * *", "sink": {"url": "https://hooks.example.com/x"}}),
            "spec.sink",
        ),
        (
            json!({"schedule": "* * * * *", "event": {"bucket": "uploads", "types": ["created"]},
                "function": "f"}),
            "spec.event",
        ),
    ] {
        let (s, v) = call(
            &cloud,
            Method::POST,
            "/api/v1/triggers",
            &admin,
            Some(trigger("bad", spec.clone())),
        )
        .await?;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{spec}: {v}");
        assert_eq!(v["field"], field, "{spec}: {v}");
    }
    // The cron controller leaves event triggers alone (no status of its own).
    let t = cloud
        .api(Method::GET, "/api/v1/triggers/thumbs", None)
        .await?;
    assert!(t["status"].get("nextFireMs").is_none(), "{t}");

    // CLI: listed and described.
    let bin = Path::new(BIN);
    let out = success(&verge_cli(bin, &cloud, &["get", "triggers"])?);
    assert!(out.contains("event:uploads"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("hook") && l.contains("sink")),
        "{out}"
    );
    let out = success(&verge_cli(bin, &cloud, &["describe", "trigger", "thumbs"])?);
    assert!(out.contains("bucket uploads (created)"), "{out}");

    // Dead letters: every role lists; only operators and admins redrive or drop.
    let (s, v) = call(&cloud, Method::GET, "/api/v1/deadletters", &viewer, None).await?;
    assert_eq!((s, v["items"].clone()), (StatusCode::OK, json!([])));
    let (s, _) = call(
        &cloud,
        Method::GET,
        "/api/v1/deadletters?bucket=uploads",
        &viewer,
        None,
    )
    .await?;
    assert_eq!(s, StatusCode::OK);
    let id = "000000000000002a.thumbs";
    for method in [Method::POST, Method::DELETE] {
        let path = if method == Method::POST {
            format!("/api/v1/deadletters/{id}/redrive")
        } else {
            format!("/api/v1/deadletters/{id}")
        };
        let (s, _) = call(&cloud, method.clone(), &path, &viewer, None).await?;
        assert_eq!(s, StatusCode::FORBIDDEN, "{method} {path}");
        let (s, v) = call(&cloud, method.clone(), &path, &operator, None).await?;
        assert_eq!(s, StatusCode::NOT_FOUND, "{method} {path}: {v}");
    }
    // Not a bucket, not a dead-letter id (path tricks included): refused, nothing read.
    for bucket in ["UP", "a", "x%2F..%2F", "a.b"] {
        let (s, v) = call(
            &cloud,
            Method::GET,
            &format!("/api/v1/deadletters?bucket={bucket}"),
            &viewer,
            None,
        )
        .await?;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{bucket}: {v}");
        assert_eq!(v["field"], "bucket");
    }
    for id in [
        "..%2F..%2Fregistry%2Ftriggers%2Fthumbs",
        "checkpoint",
        "%2e%2e",
        "000000000000002a.UP",
    ] {
        let (s, v) = call(
            &cloud,
            Method::DELETE,
            &format!("/api/v1/deadletters/{id}"),
            &admin,
            None,
        )
        .await?;
        assert_eq!(s, StatusCode::NOT_FOUND, "{id}: {v}");
    }
    // The CLI lists; redriving an unknown id is an error naming it.
    let out = success(&verge_cli(
        bin,
        &cloud,
        &["events", "dead-letter", "--bucket", "uploads"],
    )?);
    assert!(out.starts_with("ID"), "{out}");
    let out = verge_cli(bin, &cloud, &["events", "dead-letter", "redrive", id])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(id), "{out:?}");
    let out = success(&verge_cli(
        bin,
        &cloud,
        &["events", "dead-letter", "redrive", "--all"],
    )?);
    assert!(out.contains("no dead letters"), "{out}");

    // The dispatcher runs and exports its metrics (and wrote its checkpoint).
    let metrics = cloud.metrics().await?;
    for name in [
        "verge_events_dispatched_total",
        "verge_events_delivered_total",
        "verge_events_failed_total",
        "verge_events_dead_lettered_total",
        "verge_events_dispatcher_lag_revisions",
    ] {
        assert!(metrics.contains(name), "{name} missing");
    }
    Ok(())
}

/// `aws ARGS` against the cloud's S3 API with `key` (id, secret): the AWS CLI of the
/// test tools' virtualenv (`scripts/pyenv`; its absence is an error, never a skip).
fn aws(cloud: &Cloud, key: &(String, String), args: &[&str]) -> Result<std::process::Output> {
    let bin = verge_testkit::s3::aws_bin()?;
    Ok(std::process::Command::new(bin)
        .args(["--endpoint-url", &cloud.s3_url, "--ca-bundle"])
        .arg(cloud.data_dir().join("ca.crt"))
        .args(args)
        .env("AWS_ACCESS_KEY_ID", &key.0)
        .env("AWS_SECRET_ACCESS_KEY", &key.1)
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env_remove("AWS_PROFILE")
        .output()?)
}

async fn event_tasks(cloud: &Cloud) -> Result<Vec<Value>> {
    let v = cloud.api(Method::GET, "/api/v1/tasks", None).await?;
    Ok(v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["metadata"]["labels"]["verge.dev/event"].is_string())
        .collect())
}

#[tokio::test]
async fn an_upload_runs_its_trigger_once_and_reaches_a_signed_webhook_even_across_a_restart()
-> Result<()> {
    let mut cloud = Cloud::start(
        Path::new(BIN),
        &["--outbound-allow-networks", "127.0.0.1/32"],
    )
    .await?;
    let (hook_url, got) = verge_testkit::webhook_receiver().await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/functions",
            Some(json!({"apiVersion": "verge.dev/v1", "kind": "Function", "metadata": {"name": "echo"},
                "spec": {"runtime": "builtin", "handler": "echo", "placement": {"cloud": true}}})),
        )
        .await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/triggers",
            Some(trigger(
                "on-upload",
                json!({"event": {"bucket": "uploads", "types": ["created"], "prefix": "in/"},
                    "function": "echo"}),
            )),
        )
        .await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/triggers",
            Some(trigger(
                "hook",
                json!({"event": {"bucket": "uploads", "types": ["created", "deleted"]},
                    "sink": {"url": hook_url}}),
            )),
        )
        .await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/buckets",
            Some(json!({"apiVersion": "verge.dev/v1", "kind": "Bucket", "metadata": {"name": "uploads"},
                "spec": {}})),
        )
        .await?;
    let k = cloud
        .api(Method::POST, "/api/v1/s3keys", Some(json!({})))
        .await?;
    let key = (
        k["accessKeyId"]
            .as_str()
            .context("accessKeyId")?
            .to_string(),
        k["secretAccessKey"]
            .as_str()
            .context("secretAccessKey")?
            .to_string(),
    );
    let file = cloud
        .data_dir()
        .parent()
        .unwrap_or(cloud.data_dir())
        .join("photo.jpg");
    std::fs::write(&file, b"not really a jpeg")?;
    let out = aws(
        &cloud,
        &key,
        &[
            "s3",
            "cp",
            &file.to_string_lossy(),
            "s3://uploads/in/photo.jpg",
        ],
    )?;
    assert!(
        out.status.success(),
        "aws s3 cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The function ran once, with the CloudEvent as its input (echo returns it).
    let tasks = verge_testkit::eventually(
        std::time::Duration::from_secs(60),
        "the trigger's task succeeds",
        async || {
            let t = event_tasks(&cloud).await.ok()?;
            (t.len() == 1 && t[0]["status"]["phase"] == "Succeeded").then_some(t)
        },
    )
    .await?;
    let ce = &tasks[0]["status"]["result"];
    assert_eq!(ce["type"], "dev.verge.object.created", "{ce}");
    assert_eq!(ce["source"], "/buckets/uploads");
    assert_eq!(ce["subject"], "in/photo.jpg");
    assert_eq!(ce["data"]["size"], 17);
    // The ETag S3 computes for a single PUT: the MD5 of the bytes, quoted.
    let md5 = <md5::Md5 as md5::Digest>::digest(b"not really a jpeg");
    assert_eq!(ce["data"]["eTag"], format!("\"{}\"", hex::encode(md5)));
    let id = ce["id"].as_str().context("id")?.to_string();
    assert_eq!(
        tasks[0]["spec"]["idempotencyKey"],
        format!("{id}/on-upload")
    );

    // The webhook got it, signed with the callback key.
    let key_hex = std::fs::read_to_string(cloud.data_dir().join("callback.key"))?;
    let signing_key = hex::decode(key_hex.trim())?;
    verge_testkit::eventually(
        std::time::Duration::from_secs(60),
        "the webhook gets the event",
        async || (!got.lock().unwrap().is_empty()).then_some(()),
    )
    .await?;
    {
        let (head, body) = got.lock().unwrap()[0].clone();
        assert!(
            head.contains("content-type: application/cloudevents+json"),
            "{head}"
        );
        let sig = verge_cloud::functions::callbacks::sign(&signing_key, &body);
        assert!(
            head.contains(&format!("x-verge-signature: {sig}")),
            "{head}"
        );
        let v: Value = serde_json::from_slice(&body)?;
        assert_eq!(v["id"], id.as_str());
    }

    // Deleted: the webhook hears it; the function's trigger (created only) does not.
    let out = aws(&cloud, &key, &["s3", "rm", "s3://uploads/in/photo.jpg"]).context("aws")?;
    assert!(
        out.status.success(),
        "aws s3 rm: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verge_testkit::eventually(
        std::time::Duration::from_secs(60),
        "the webhook gets the delete",
        async || {
            let g = got.lock().unwrap();
            g.iter()
                .any(|(_, b)| {
                    serde_json::from_slice::<Value>(b)
                        .is_ok_and(|v| v["type"] == "dev.verge.object.deleted")
                })
                .then_some(())
        },
    )
    .await?;

    // Killed and restarted: nothing runs twice, and new uploads still go.
    cloud.kill9()?;
    cloud.restart().await?;
    let out = aws(
        &cloud,
        &key,
        &[
            "s3",
            "cp",
            &file.to_string_lossy(),
            "s3://uploads/in/second.jpg",
        ],
    )
    .context("aws")?;
    assert!(
        out.status.success(),
        "aws s3 cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    verge_testkit::eventually(
        std::time::Duration::from_secs(60),
        "the second upload runs",
        async || {
            let t = event_tasks(&cloud).await.ok()?;
            (t.len() == 2 && t.iter().all(|t| t["status"]["phase"] == "Succeeded")).then_some(())
        },
    )
    .await?;
    let metrics = cloud.metrics().await?;
    assert!(metrics.contains("verge_events_dispatched_total"), "metrics");
    Ok(())
}

#[tokio::test]
async fn a_failing_trigger_function_is_dead_lettered_then_redriven_after_the_fix() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    // `sleep` fails on any input without `ms`: every CloudEvent.
    let function = |handler: &str| {
        json!({"apiVersion": "verge.dev/v1", "kind": "Function", "metadata": {"name": "flaky"},
            "spec": {"runtime": "builtin", "handler": handler, "placement": {"cloud": true}}})
    };
    cloud
        .api(Method::POST, "/api/v1/functions", Some(function("sleep")))
        .await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/triggers",
            Some(trigger(
                "process",
                json!({"event": {"bucket": "uploads", "types": ["created"]}, "function": "flaky"}),
            )),
        )
        .await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/buckets",
            Some(json!({"apiVersion": "verge.dev/v1", "kind": "Bucket",
                "metadata": {"name": "uploads"}, "spec": {}})),
        )
        .await?;
    let k = cloud
        .api(Method::POST, "/api/v1/s3keys", Some(json!({})))
        .await?;
    let key = (
        k["accessKeyId"]
            .as_str()
            .context("accessKeyId")?
            .to_string(),
        k["secretAccessKey"]
            .as_str()
            .context("secretAccessKey")?
            .to_string(),
    );
    let file = cloud
        .data_dir()
        .parent()
        .unwrap_or(cloud.data_dir())
        .join("input.txt");
    std::fs::write(&file, b"hello")?;
    let out = aws(
        &cloud,
        &key,
        &["s3", "cp", &file.to_string_lossy(), "s3://uploads/a.txt"],
    )?;
    assert!(
        out.status.success(),
        "aws s3 cp: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = Path::new(BIN);
    let dl = verge_testkit::eventually(
        std::time::Duration::from_secs(60),
        "the failed run is dead-lettered",
        async || {
            let v = cloud
                .api(Method::GET, "/api/v1/deadletters?bucket=uploads", None)
                .await
                .ok()?;
            let items = v["items"].as_array()?.clone();
            (items.len() == 1).then(|| items[0].clone())
        },
    )
    .await?;
    assert_eq!(dl["trigger"], "process");
    assert_eq!(dl["target"]["function"], "flaky");
    assert_eq!(dl["event"]["subject"], "a.txt");
    assert!(
        dl["reason"].as_str().unwrap_or("").contains("Failed"),
        "{dl}"
    );
    let out = success(&verge_cli(bin, &cloud, &["events", "dead-letter"])?);
    assert!(out.contains("process") && out.contains("a.txt"), "{out}");

    // The fix, then a redrive of every dead letter of the bucket: a new run succeeds.
    let mut f = cloud
        .api(Method::GET, "/api/v1/functions/flaky", None)
        .await?;
    f["spec"]["handler"] = json!("echo");
    cloud
        .api(Method::PUT, "/api/v1/functions/flaky", Some(f))
        .await?;
    verge_testkit::eventually(
        std::time::Duration::from_secs(30),
        "the fixed function is Ready again",
        async || {
            let f = cloud
                .api(Method::GET, "/api/v1/functions/flaky", None)
                .await
                .ok()?;
            (f["status"]["phase"] == "Ready" && f["status"]["observedGeneration"] == 2)
                .then_some(())
        },
    )
    .await?;
    let out = success(&verge_cli(
        bin,
        &cloud,
        &[
            "events",
            "dead-letter",
            "redrive",
            "--all",
            "--bucket",
            "uploads",
        ],
    )?);
    assert!(out.contains("redriven as task"), "{out}");
    let tasks = verge_testkit::eventually(
        std::time::Duration::from_secs(60),
        "the redriven run succeeds",
        async || {
            let t = event_tasks(&cloud).await.ok()?;
            t.iter()
                .any(|t| t["status"]["phase"] == "Succeeded")
                .then_some(t)
        },
    )
    .await?;
    assert_eq!(tasks.len(), 2, "the failed run and the redriven one");
    let redriven = tasks
        .iter()
        .find(|t| t["status"]["phase"] == "Succeeded")
        .context("redriven")?;
    let id = dl["event"]["id"].as_str().context("id")?;
    assert_eq!(
        redriven["spec"]["idempotencyKey"],
        format!("{id}-redrive-1/process")
    );
    assert_eq!(redriven["status"]["result"]["id"], id);
    let v = cloud.api(Method::GET, "/api/v1/deadletters", None).await?;
    assert_eq!(v["items"], json!([]));
    Ok(())
}
