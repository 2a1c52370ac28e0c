//! Integration: `/openapi.json` of a real `verge cloud` process is what the server
//! really answers. Every documented operation is called (with a token, without one,
//! with a non-UTF-8 path segment) and each answer's status must be one the document
//! declares for that operation, with a documented content type; errors are the API's
//! JSON (`reason`, `message`). Then the typed query parameters, 415 and 422 answers the
//! first user of the document found missing.

use anyhow::{Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use verge_testkit::Cloud;

const BIN: &str = env!("CARGO_BIN_EXE_verge");

/// A Config the operations on `/api/v1/configs/{name}` find.
const SEEDED: &str = "seeded";

/// A value for path parameter `name` of `path` (`bad`: a non-UTF-8 byte instead).
fn param_value(path: &str, param: &str, bad: bool) -> String {
    if bad {
        return "%FF".into();
    }
    match param {
        "name" if path.starts_with("/api/v1/configs/") => SEEDED.into(),
        "name" => "absent".into(),
        "sha256" => "0".repeat(64),
        "id" => "abcdefgh".into(),
        "bucket" => "absent-bucket".into(),
        "key" => "dir/absent.txt".into(),
        "path" => "badsignature/rs:fit:10:10/plain/https%3A%2F%2Fexample.com%2Fa.png@png".into(),
        other => panic!("{path}: no example for parameter {other}"),
    }
}

fn concrete(path: &str, bad: bool) -> String {
    path.split('/')
        .map(
            |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(p) => param_value(path, p, bad),
                None => seg.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("/")
}

/// Checks an answer against the operation's documented responses.
fn check(what: &str, op: &Value, status: StatusCode, ctype: &str, body: &str) {
    let responses = &op["responses"];
    let documented = &responses[status.as_str()];
    assert!(
        documented.is_object(),
        "{what}: answered {status}, which is not documented (documented: {:?}); body {body}",
        responses.as_object().map(|m| m.keys().collect::<Vec<_>>())
    );
    if let Some(content) = documented["content"].as_object() {
        let media = ctype.split(';').next().unwrap_or("").trim();
        assert!(
            content.keys().any(|k| {
                k == media
                    || k.strip_suffix("/*")
                        .is_some_and(|p| media.starts_with(&format!("{p}/")))
            }),
            "{what}: {status} answered as {ctype:?}, documented {:?}",
            content.keys().collect::<Vec<_>>()
        );
    }
    if status.is_client_error() || status.is_server_error() {
        let v: Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: {status}: not JSON ({e}): {body}"));
        assert!(
            v["reason"].is_string() && v["message"].is_string(),
            "{what}: {status}: {body}"
        );
    }
}

async fn call(
    http: &reqwest::Client,
    url: &str,
    method: &Method,
    token: Option<&str>,
    body: Option<(&str, Vec<u8>)>,
) -> Result<(StatusCode, String, String)> {
    let mut req = http.request(method.clone(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some((ctype, b)) = body {
        req = req.header("content-type", ctype).body(b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let ctype = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    Ok((status, ctype, resp.text().await?))
}

#[tokio::test]
async fn every_documented_operation_answers_as_documented() -> Result<()> {
    let cloud = Cloud::start(std::path::Path::new(BIN), &[]).await?;
    let http = cloud.client()?;
    let token = cloud.admin_token.clone();
    let url = |p: &str| format!("{}{}", cloud.url, p);
    let doc: Value = http.get(url("/openapi.json")).send().await?.json().await?;
    let seed = json!({"apiVersion": "verge.dev/v1", "kind": "Config",
        "metadata": {"name": SEEDED}, "spec": {"data": {"k": "v"}}});
    let (s, _, b) = call(
        &http,
        &url("/api/v1/configs"),
        &Method::POST,
        Some(&token),
        Some(("application/json", serde_json::to_vec(&seed)?)),
    )
    .await?;
    assert_eq!(s, StatusCode::CREATED, "{b}");

    let mut calls = 0;
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (method, op) in item.as_object().context("path item")? {
            let method: Method = method.to_uppercase().parse()?;
            let secured = op["security"].as_array().is_some_and(|s| !s.is_empty());
            let body = || {
                op["requestBody"]
                    .is_object()
                    .then(|| ("application/json", b"{}".to_vec()))
            };
            // 1. As a client with a token would call it.
            let what = format!("{method} {path}");
            let (s, ct, b) = call(
                &http,
                &url(&concrete(path, false)),
                &method,
                Some(&token),
                body(),
            )
            .await?;
            check(&what, op, s, &ct, &b);
            // 2. Without credentials: 401 where the document asks for them.
            if secured {
                let (s, ct, b) =
                    call(&http, &url(&concrete(path, false)), &method, None, body()).await?;
                assert_eq!(s, StatusCode::UNAUTHORIZED, "{what} without a token: {b}");
                check(&format!("{what} without a token"), op, s, &ct, &b);
            }
            // 3. A path segment that is not UTF-8: the JSON error, documented.
            if path.contains('{') {
                let (s, ct, b) = call(
                    &http,
                    &url(&concrete(path, true)),
                    &method,
                    Some(&token),
                    body(),
                )
                .await?;
                check(&format!("{what} with %FF"), op, s, &ct, &b);
                if path.starts_with("/api/") {
                    assert_eq!(s, StatusCode::BAD_REQUEST, "{what} with %FF: {b}");
                }
            }
            calls += 1;
        }
    }
    assert!(calls >= 50, "only {calls} operations documented");

    // The parameters and answers the first user of the document found missing.
    let list = &doc["paths"]["/api/v1/configs"]["get"];
    for q in [
        "watch=maybe",
        "resourceVersion=abc&watch=true",
        "timeoutSeconds=-1&watch=true",
    ] {
        let (s, ct, b) = call(
            &http,
            &url(&format!("/api/v1/configs?{q}")),
            &Method::GET,
            Some(&token),
            None,
        )
        .await?;
        assert_eq!(s, StatusCode::BAD_REQUEST, "?{q}: {b}");
        check(&format!("GET /api/v1/configs?{q}"), list, s, &ct, &b);
    }
    let create = &doc["paths"]["/api/v1/configs"]["post"];
    let (s, ct, b) = call(
        &http,
        &url("/api/v1/configs"),
        &Method::POST,
        Some(&token),
        Some(("text/plain", b"hello".to_vec())),
    )
    .await?;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{b}");
    check("POST /api/v1/configs as text/plain", create, s, &ct, &b);
    let bad_name = json!({"apiVersion": "verge.dev/v1", "kind": "Config",
        "metadata": {"name": "Not_A_Label"}, "spec": {"data": {}}});
    let (s, ct, b) = call(
        &http,
        &url("/api/v1/configs"),
        &Method::POST,
        Some(&token),
        Some(("application/json", serde_json::to_vec(&bad_name)?)),
    )
    .await?;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    check("POST /api/v1/configs with a bad name", create, s, &ct, &b);
    // What is not served is not documented, and answers 405 as JSON.
    assert!(doc["paths"]["/api/v1/tasks/{name}"]["put"].is_null());
    let (s, _, b) = call(
        &http,
        &url("/api/v1/tasks/x"),
        &Method::PUT,
        Some(&token),
        Some(("application/json", b"{}".to_vec())),
    )
    .await?;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED, "{b}");
    assert!(
        serde_json::from_str::<Value>(&b)?["reason"].is_string(),
        "{b}"
    );
    // The server kept serving.
    let (s, _, _) = call(&http, &url("/healthz"), &Method::GET, None, None).await?;
    assert_eq!(s, StatusCode::OK);
    Ok(())
}
