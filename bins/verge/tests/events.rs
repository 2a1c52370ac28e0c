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
