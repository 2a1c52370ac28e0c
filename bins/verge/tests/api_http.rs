//! Integration: a real `verge cloud` process, real HTTPS with the generated CA, real
//! tokens. Every bad input from the foundation issue gets a precise answer, and the
//! server keeps serving afterwards.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use verge_testkit::Cloud;

const BIN: &str = env!("CARGO_BIN_EXE_verge");

/// A Config (no controller writes its status, so a watch sees only our writes).
/// Generic API semantics are tested on it too: Apps have a controller writing their
/// status at any time.
fn config(name: &str, value: &str) -> Value {
    json!({"apiVersion": "verge.dev/v1", "kind": "Config",
        "metadata": {"name": name, "labels": {"tier": "frontend"}},
        "spec": {"data": {"value": value}}})
}

fn app(name: &str, version: &str) -> Value {
    json!({
        "apiVersion": "verge.dev/v1", "kind": "App",
        "metadata": {"name": name, "labels": {"tier": "frontend"}},
        "spec": {"version": version, "workload": {"docker": {"image": "registry.local/web:1"}}}
    })
}

struct Api {
    cloud: Cloud,
    http: reqwest::Client,
}

impl Api {
    async fn start(args: &[&str]) -> Result<Self> {
        let cloud = Cloud::start(std::path::Path::new(BIN), args).await?;
        let http = cloud.client()?;
        Ok(Self { cloud, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.cloud.url, path)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let t = self.cloud.admin_token.clone();
        self.call(method, path, Some(&t), body).await
    }

    async fn raw(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .post(self.url(path))
            .bearer_auth(&self.cloud.admin_token)
            .body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    async fn token(&self, role: &str, ttl: Option<u64>) -> Result<(String, String)> {
        let mut body = json!({"role": role});
        if let Some(t) = ttl {
            body["ttlSeconds"] = t.into();
        }
        let (s, v) = self
            .admin(reqwest::Method::POST, "/api/v1/tokens", Some(body))
            .await?;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        Ok((
            v["id"].as_str().unwrap().to_string(),
            v["token"].as_str().unwrap().to_string(),
        ))
    }
}

fn assert_error(
    status: StatusCode,
    body: &Value,
    want: StatusCode,
    reason: &str,
    field: Option<&str>,
) {
    assert_eq!(status, want, "body: {body}");
    assert_eq!(body["reason"], reason, "body: {body}");
    if let Some(f) = field {
        assert_eq!(body["field"], f, "body: {body}");
    }
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "body: {body}"
    );
}

use reqwest::Method as M;

#[tokio::test]
async fn crud_cas_status_and_selectors() -> Result<()> {
    let api = Api::start(&[]).await?;
    let (s, created) = api
        .admin(M::POST, "/api/v1/configs", Some(config("web", "1.0.0")))
        .await?;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let rv1 = created["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(created["metadata"]["generation"], 1);
    assert!(created["metadata"]["uid"].as_str().is_some());
    assert!(created["metadata"]["creationTimestamp"].as_str().is_some());

    // Duplicate create: 409 AlreadyExists.
    let (s, b) = api
        .admin(M::POST, "/api/v1/configs", Some(config("web", "1.0.0")))
        .await?;
    assert_error(
        s,
        &b,
        StatusCode::CONFLICT,
        "AlreadyExists",
        Some("metadata.name"),
    );

    // Update with the right resourceVersion bumps generation.
    let mut v2 = config("web", "2.0.0");
    v2["metadata"]["resourceVersion"] = rv1.clone().into();
    let (s, updated) = api
        .admin(M::PUT, "/api/v1/configs/web", Some(v2.clone()))
        .await?;
    assert_eq!(s, StatusCode::OK, "{updated}");
    assert_eq!(updated["metadata"]["generation"], 2);
    assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
    let rv2 = updated["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(rv2.parse::<i64>()? > rv1.parse::<i64>()?);

    // Stale resourceVersion: 409.
    let (s, b) = api.admin(M::PUT, "/api/v1/configs/web", Some(v2)).await?;
    assert_error(
        s,
        &b,
        StatusCode::CONFLICT,
        "Conflict",
        Some("metadata.resourceVersion"),
    );

    // Same spec again: no write, same resourceVersion.
    let (s, same) = api
        .admin(M::PUT, "/api/v1/configs/web", Some(config("web", "2.0.0")))
        .await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(same["metadata"]["resourceVersion"], rv2.as_str());

    // Status subresource: status changes, generation does not.
    let (s, st) = api
        .admin(
            M::PUT,
            "/api/v1/configs/web/status",
            Some(json!({"metadata": {"name": "web"}, "status": {"phase": "Running"}})),
        )
        .await?;
    assert_eq!(s, StatusCode::OK, "{st}");
    assert_eq!(st["status"]["phase"], "Running");
    assert_eq!(st["metadata"]["generation"], 2);
    // Spec update keeps status.
    let (_, kept) = api
        .admin(M::PUT, "/api/v1/configs/web", Some(config("web", "2.1.0")))
        .await?;
    assert_eq!(kept["status"]["phase"], "Running");
    assert_eq!(kept["metadata"]["generation"], 3);
    let (s, b) = api
        .admin(
            M::PUT,
            "/api/v1/configs/web/status",
            Some(json!({"metadata": {"name": "web"}, "statuss": {}})),
        )
        .await?;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        Some("statuss"),
    );

    // Label selectors.
    let mut other = config("api", "1.0.0");
    other["metadata"]["labels"] = json!({"tier": "backend"});
    api.admin(M::POST, "/api/v1/configs", Some(other)).await?;
    let (_, l) = api
        .admin(M::GET, "/api/v1/configs?labelSelector=tier%3Dbackend", None)
        .await?;
    let names: Vec<&str> = l["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["api"]);
    let (_, l) = api
        .admin(
            M::GET,
            "/api/v1/configs?labelSelector=tier%20in%20(backend,frontend)",
            None,
        )
        .await?;
    assert_eq!(l["items"].as_array().unwrap().len(), 2);
    assert!(l["metadata"]["resourceVersion"].as_str().is_some());
    let (s, b) = api
        .admin(M::GET, "/api/v1/configs?labelSelector=tier%20in%20(", None)
        .await?;
    assert_error(
        s,
        &b,
        StatusCode::BAD_REQUEST,
        "BadRequest",
        Some("labelSelector"),
    );

    // Delete, then 404.
    let (s, _) = api.admin(M::DELETE, "/api/v1/configs/api", None).await?;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api.admin(M::GET, "/api/v1/configs/api", None).await?;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NotFound", None);
    let (s, b) = api.admin(M::DELETE, "/api/v1/configs/api", None).await?;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NotFound", None);
    Ok(())
}

#[tokio::test]
async fn bad_inputs_get_precise_errors_and_server_keeps_serving() -> Result<()> {
    let api = Api::start(&[]).await?;
    let j = Some("application/json");
    let y = Some("application/yaml");
    // Malformed JSON and YAML: 400.
    let (s, b) = api
        .raw("/api/v1/apps", j, b"{\"apiVersion\": ".to_vec())
        .await?;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadRequest", None);
    let (s, b) = api
        .raw("/api/v1/apps", y, b"kind: App\n  metadata: [\n".to_vec())
        .await?;
    assert_error(s, &b, StatusCode::BAD_REQUEST, "BadRequest", None);
    // Unknown kind: 422 naming `kind`.
    let mut bad = app("web", "1.0.0");
    bad["kind"] = "Ap".into();
    let (s, b) = api.admin(M::POST, "/api/v1/apps", Some(bad)).await?;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        Some("kind"),
    );
    // Misspelt field: 422 naming the full path.
    let mut bad = app("web", "1.0.0");
    bad["spec"]["workload"]["docker"] = json!({"imagee": "x"});
    let (s, b) = api.admin(M::POST, "/api/v1/apps", Some(bad)).await?;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        Some("spec.workload.docker.imagee"),
    );
    assert!(
        b["message"].as_str().unwrap().contains("unknown field"),
        "{b}"
    );
    // Invalid names.
    for name in ["Web".to_string(), "a".repeat(254)] {
        let (s, b) = api
            .admin(M::POST, "/api/v1/apps", Some(app(&name, "1.0.0")))
            .await?;
        assert_error(
            s,
            &b,
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            Some("metadata.name"),
        );
    }
    // Missing workload, two workloads.
    let mut bad = app("web", "1.0.0");
    bad["spec"].as_object_mut().unwrap().remove("workload");
    let (s, b) = api.admin(M::POST, "/api/v1/apps", Some(bad)).await?;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        Some("spec.workload"),
    );
    let mut bad = app("web", "1.0.0");
    bad["spec"]["workload"]["native"] =
        json!({"artifact": {"sha256": "a".repeat(64)}, "command": "./run"});
    let (s, b) = api.admin(M::POST, "/api/v1/apps", Some(bad)).await?;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        Some("spec.workload"),
    );
    // Non-semver version.
    let (s, b) = api
        .admin(M::POST, "/api/v1/apps", Some(app("web", "1.0")))
        .await?;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        Some("spec.version"),
    );
    // Kind in body does not match the URL.
    let (s, b) = api
        .admin(M::POST, "/api/v1/functions", Some(app("web", "1.0.0")))
        .await?;
    assert_error(
        s,
        &b,
        StatusCode::UNPROCESSABLE_ENTITY,
        "Invalid",
        Some("kind"),
    );
    // 10 MiB body: 413.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(10 * 1024 * 1024));
    let (s, b) = api.raw("/api/v1/apps", j, big.into_bytes()).await?;
    assert_error(
        s,
        &b,
        StatusCode::PAYLOAD_TOO_LARGE,
        "PayloadTooLarge",
        None,
    );
    // Wrong and missing content type: 415.
    let body = serde_json::to_vec(&app("web", "1.0.0"))?;
    let (s, b) = api
        .raw("/api/v1/apps", Some("text/plain"), body.clone())
        .await?;
    assert_error(
        s,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        None,
    );
    let (s, b) = api.raw("/api/v1/apps", None, body.clone()).await?;
    assert_error(
        s,
        &b,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "UnsupportedMediaType",
        None,
    );
    // Unknown resource type and route: 404.
    let (s, b) = api.admin(M::GET, "/api/v1/widgets", None).await?;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NotFound", None);
    let (s, b) = api.admin(M::GET, "/nope", None).await?;
    assert_error(s, &b, StatusCode::NOT_FOUND, "NotFound", None);
    // Unknown query parameter: 400 naming it.
    let (s, b) = api
        .admin(M::GET, "/api/v1/apps?labelselector=a", None)
        .await?;
    assert_error(
        s,
        &b,
        StatusCode::BAD_REQUEST,
        "BadRequest",
        Some("labelselector"),
    );
    // YAML works, and the server is still serving after all that.
    let yaml = "apiVersion: verge.dev/v1\nkind: App\nmetadata:\n  name: web\nspec:\n  version: 1.0.0\n  workload:\n    docker:\n      image: r/web:1\n";
    let (s, b) = api.raw("/api/v1/apps", y, yaml.as_bytes().to_vec()).await?;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    let (s, _) = api.admin(M::GET, "/api/v1/apps/web", None).await?;
    assert_eq!(s, StatusCode::OK);
    Ok(())
}

#[tokio::test]
async fn authn_and_roles() -> Result<()> {
    let api = Api::start(&[]).await?;
    // No token, garbage token, wrong secret: 401.
    let (s, b) = api.call(M::GET, "/api/v1/apps", None, None).await?;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "Unauthorized", None);
    let (s, b) = api
        .call(M::GET, "/api/v1/apps", Some("garbage"), None)
        .await?;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "Unauthorized", None);
    let id = api.cloud.admin_token.split('.').next().unwrap().to_string();
    let (s, b) = api
        .call(
            M::GET,
            "/api/v1/apps",
            Some(&format!("{id}.wrongsecret")),
            None,
        )
        .await?;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "Unauthorized", None);

    // Viewer: reads yes, writes 403.
    let (_, viewer) = api.token("viewer", None).await?;
    let (s, _) = api
        .call(M::GET, "/api/v1/apps", Some(&viewer), None)
        .await?;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .call(
            M::POST,
            "/api/v1/apps",
            Some(&viewer),
            Some(app("web", "1.0.0")),
        )
        .await?;
    assert_error(s, &b, StatusCode::FORBIDDEN, "Forbidden", None);
    let (s, b) = api
        .call(M::DELETE, "/api/v1/apps/web", Some(&viewer), None)
        .await?;
    assert_error(s, &b, StatusCode::FORBIDDEN, "Forbidden", None);

    // Operator: writes resources, not tokens.
    let (_, operator) = api.token("operator", None).await?;
    let (s, _) = api
        .call(
            M::POST,
            "/api/v1/apps",
            Some(&operator),
            Some(app("web", "1.0.0")),
        )
        .await?;
    assert_eq!(s, StatusCode::CREATED);
    let (s, b) = api
        .call(
            M::POST,
            "/api/v1/tokens",
            Some(&operator),
            Some(json!({"role": "admin"})),
        )
        .await?;
    assert_error(s, &b, StatusCode::FORBIDDEN, "Forbidden", None);
    let (s, b) = api
        .call(M::GET, "/api/v1/tokens", Some(&operator), None)
        .await?;
    assert_error(s, &b, StatusCode::FORBIDDEN, "Forbidden", None);

    // Revoked: 401 from then on, and listed as revoked.
    let (rid, revokee) = api.token("operator", None).await?;
    let (s, _) = api
        .admin(M::DELETE, &format!("/api/v1/tokens/{rid}"), None)
        .await?;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = api
        .call(M::GET, "/api/v1/apps", Some(&revokee), None)
        .await?;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "Unauthorized", None);
    assert!(b["message"].as_str().unwrap().contains("revoked"));
    let (_, list) = api.admin(M::GET, "/api/v1/tokens", None).await?;
    let listed = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == rid.as_str())
        .unwrap()
        .clone();
    assert!(listed["revokedAt"].as_str().is_some());
    assert!(
        listed.get("token").is_none() && listed.get("secretSha256").is_none(),
        "{listed}"
    );

    // Expired: a 1-second token stops working.
    let (_, short) = api.token("viewer", Some(1)).await?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, b) = api.call(M::GET, "/api/v1/apps", Some(&short), None).await?;
    assert_error(s, &b, StatusCode::UNAUTHORIZED, "Unauthorized", None);
    assert!(b["message"].as_str().unwrap().contains("expired"));

    // Secrets never stored in clear: the admin token's secret is not in the database.
    let secret = api.cloud.admin_token.split('.').nth(1).unwrap().to_string();
    let db = std::fs::read(api.cloud.data_dir().join("store.db"))?;
    let wal = std::fs::read(api.cloud.data_dir().join("store.db-wal")).unwrap_or_default();
    for bytes in [db, wal] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
    // Token files are 0600.
    use std::os::unix::fs::PermissionsExt;
    for f in ["admin.token", "admin.config", "ca.key"] {
        let mode = std::fs::metadata(api.cloud.data_dir().join(f))?
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    Ok(())
}

async fn read_events(resp: reqwest::Response, n: usize) -> Result<Vec<Value>> {
    let mut stream = resp.bytes_stream();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("stream ended after {} events", out.len()))??;
        buf.extend_from_slice(&chunk);
        while let Some(p) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=p).collect();
            out.push(serde_json::from_slice(&line)?);
        }
    }
    Ok(out)
}

#[tokio::test]
async fn watch_orders_resumes_and_reports_compaction() -> Result<()> {
    let api = Api::start(&["--history-revisions", "5", "--compact-interval", "1"]).await?;
    let (_, list) = api.admin(M::GET, "/api/v1/configs", None).await?;
    let start_rv = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let w = api
        .http
        .get(api.url(&format!(
            "/api/v1/configs?watch=1&resourceVersion={start_rv}"
        )))
        .bearer_auth(&api.cloud.admin_token)
        .send()
        .await?;
    assert_eq!(w.status(), StatusCode::OK);
    api.admin(M::POST, "/api/v1/configs", Some(config("a", "1.0.0")))
        .await?;
    api.admin(M::PUT, "/api/v1/configs/a", Some(config("a", "1.1.0")))
        .await?;
    api.admin(M::DELETE, "/api/v1/configs/a", None).await?;
    let evs = read_events(w, 3).await?;
    let types: Vec<&str> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["ADDED", "MODIFIED", "DELETED"]);
    let rvs: Vec<i64> = evs
        .iter()
        .map(|e| {
            e["object"]["metadata"]["resourceVersion"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");

    // Resume from the first event's revision: exactly the two after it.
    let w = api
        .http
        .get(api.url(&format!(
            "/api/v1/configs?watch=1&resourceVersion={}",
            rvs[0]
        )))
        .bearer_auth(&api.cloud.admin_token)
        .send()
        .await?;
    let evs = read_events(w, 2).await?;
    assert_eq!(evs[0]["type"], "MODIFIED");
    assert_eq!(evs[1]["type"], "DELETED");

    // SSE framing on request.
    let w = api
        .http
        .get(api.url(&format!(
            "/api/v1/configs?watch=1&resourceVersion={}",
            rvs[1]
        )))
        .header("accept", "text/event-stream")
        .bearer_auth(&api.cloud.admin_token)
        .send()
        .await?;
    assert_eq!(w.headers()["content-type"], "text/event-stream");
    let mut s = w.bytes_stream();
    let first = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await?
        .unwrap()?;
    let text = String::from_utf8_lossy(&first);
    assert!(
        text.starts_with(&format!("id: {}\ndata: {{", rvs[2])),
        "{text}"
    );

    // Write well past the history window; a watch from the start is then 410 Gone.
    for i in 0..20 {
        api.admin(
            M::POST,
            "/api/v1/configs",
            Some(config(&format!("filler{i}"), "x")),
        )
        .await?;
    }
    let mut gone = None;
    for _ in 0..100 {
        let r = api
            .http
            .get(api.url(&format!(
                "/api/v1/configs?watch=1&resourceVersion={start_rv}"
            )))
            .bearer_auth(&api.cloud.admin_token)
            .send()
            .await?;
        if r.status() == StatusCode::GONE {
            gone = Some(r.json::<Value>().await?);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let b = gone.expect("watch from a compacted revision never answered 410");
    assert_eq!(b["reason"], "Gone");
    assert_eq!(b["field"], "resourceVersion");
    Ok(())
}

#[tokio::test]
async fn metrics_openapi_health() -> Result<()> {
    let api = Api::start(&[]).await?;
    api.admin(M::POST, "/api/v1/apps", Some(app("web", "1.0.0")))
        .await?;
    let r = api.http.get(api.url("/healthz")).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    let r = api.http.get(api.url("/readyz")).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    // /metrics needs a token.
    let r = api.http.get(api.url("/metrics")).send().await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = api
        .http
        .get(api.url("/metrics"))
        .bearer_auth(&api.cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()[reqwest::header::CONTENT_TYPE],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text().await?;
    for needle in [
        "verge_http_requests_total{route=\"/api/v1/apps\",method=\"POST\",code=\"201\"} 1",
        "verge_http_request_duration_seconds_bucket",
        "verge_store_operation_duration_seconds_bucket{le=",
        "op=\"create\"",
        "verge_open_watches ",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    promtool_check(&text)?;
    // Prometheus asks for OpenMetrics first: it gets OpenMetrics, under its own type.
    let r = api
        .http
        .get(api.url("/metrics"))
        .bearer_auth(&api.cloud.admin_token)
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await?;
    assert!(
        r.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()?
            .starts_with("application/openmetrics-text; version=1.0.0")
    );
    let om = r.text().await?;
    assert!(om.ends_with("# EOF\n"), "{om}");
    let r = api.http.get(api.url("/openapi.json")).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await?;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    assert!(doc["paths"]["/api/v1/apps"]["post"].is_object());
    assert!(doc["paths"]["/api/v1/tasks/{name}/status"]["put"].is_object());
    assert!(doc["components"]["schemas"]["AppSpec"].is_object());
    Ok(())
}

/// `promtool check metrics` (Debian prometheus) on a scrape: exit 0 and no problem
/// reported.
fn promtool_check(text: &str) -> Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!(
                "promtool: {e}: install Debian's prometheus (`apt-get install prometheus`; \
                 scripts/deps does it when run as root)"
            )
        })?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {}\n{report}\non:\n{text}",
        out.status
    );
    Ok(())
}

/// `/img` requests are counted under their own route, whatever the answer.
#[tokio::test]
async fn img_requests_have_their_route_label() -> Result<()> {
    let api = Api::start(&[]).await?;
    let r = api
        .http
        .get(api.url("/img/badsignature/rs:fit:10:10/plain/https%3A%2F%2Fexample.com%2Fa.png@png"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = api
        .http
        .get(api.url("/metrics"))
        .bearer_auth(&api.cloud.admin_token)
        .send()
        .await?;
    let text = r.text().await?;
    assert!(
        text.contains(
            "verge_http_requests_total{route=\"/img/{*path}\",method=\"GET\",code=\"403\"} 1"
        ),
        "{text}"
    );
    assert!(
        !text.contains("route=\"unmatched\",method=\"GET\",code=\"403\""),
        "{text}"
    );
    promtool_check(&text)?;
    Ok(())
}

#[tokio::test]
async fn plain_http_refused_off_loopback() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(BIN)
        .args([
            "cloud",
            "--insecure-http",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure-http is refused"), "{err}");
    // On loopback it works, over plain HTTP.
    let mut cloud = Cloud::start(std::path::Path::new(BIN), &["--insecure-http"]).await?;
    assert!(cloud.url.starts_with("http://127.0.0.1:"), "{}", cloud.url);
    let r = cloud
        .client()?
        .get(format!("{}/api/v1/apps", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(cloud.stop()?.success());
    Ok(())
}
