//! Secrets end to end (decision 017), against a real `verge cloud` (its output captured
//! at `RUST_LOG=debug`) and a real `verge-edge`:
//! - a viewer token never reads a value — GET, LIST, WATCH (while an admin watches the
//!   same change and gets the value), `verge get -o yaml|json`, `verge describe` — but
//!   sees the keys; operators and admins read values; a redacted copy written back is
//!   refused and changes nothing; bad Secrets are refused naming the field, without
//!   echoing a value;
//! - the store holds ciphertext only: every file of the data dir is searched for the
//!   plaintext, before and after a kill -9 and restart (the key in `secret.key`, 0600);
//! - a python Function on the node reads its `secretEnv`, and a new value after the
//!   Secret changes; a native App's process gets its `secretEnv`; a missing Secret or
//!   key fails the Function's status and the App's condition and instance, naming
//!   them, and nothing starts with an empty value; the node holds only the Secrets and
//!   keys placed there (an unreferenced key's value is nowhere in its data dir);
//! - a Docker App pulls a private image from a registry that wants a login only with
//!   its `registryAuth` Secret: missing → named in its status, wrong → refused, right →
//!   running (real `dockerd` and `docker-registry` with htpasswd; skipped outside CI
//!   when they are not installed);
//! - no value ever appears in the cloud's log output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use verge_testkit::{
    Cloud, Dockerd, Edge, Registry, app_condition, app_instances, app_object, busybox_image_tar,
    eventually, success, verge_cli, workspace_bin,
};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn verge(cloud: &Cloud, args: &[&str]) -> Result<Output> {
    verge_cli(Path::new(BIN), cloud, args)
}

/// A value no other text in the test contains, so finding it anywhere is a leak.
fn unique(label: &str) -> String {
    format!("{label}-{}-{:x}", std::process::id(), rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

fn secret(name: &str, data: Value) -> Value {
    json!({"apiVersion": "verge.dev/v1", "kind": "Secret", "metadata": {"name": name},
        "spec": {"data": data}})
}

/// A raw API call with `token`: (status, JSON body).
async fn call(
    cloud: &Cloud,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<(StatusCode, Value)> {
    let mut r = cloud
        .client()?
        .request(method, format!("{}{path}", cloud.url))
        .bearer_auth(token)
        .timeout(Duration::from_secs(60));
    if let Some(b) = body {
        r = r.json(b);
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
            Some(json!({"role": role, "description": format!("secrets test {role}")})),
        )
        .await?;
    v["token"].as_str().map(str::to_owned).context("token")
}

/// Opens a watch of Secrets from `rv` with `token`; the lines it yields until the
/// first `MODIFIED` event (or 30 s).
async fn watch_until_modified(cloud: &Cloud, token: &str, rv: &str) -> Result<String> {
    let resp = cloud
        .client()?
        .get(format!(
            "{}/api/v1/secrets?watch=1&resourceVersion={rv}&timeoutSeconds=30",
            cloud.url
        ))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "watch: {}", resp.status());
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !text.contains("\"MODIFIED\"") {
        let chunk = tokio::time::timeout_at(deadline, stream.next())
            .await
            .context("no MODIFIED event in 30 s")?;
        let Some(chunk) = chunk else { break };
        text.push_str(&String::from_utf8_lossy(&chunk?));
    }
    Ok(text)
}

/// Every regular file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(meta) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file()
                && let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                out.push(p);
            }
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_never_read_values_the_store_holds_ciphertext_and_logs_stay_clean() -> Result<()> {
    let mut cloud = Cloud::start_logging(Path::new(BIN), &[], "debug").await?;
    let viewer = token(&cloud, "viewer").await?;
    let operator = token(&cloud, "operator").await?;
    let admin = cloud.admin_token.clone();
    let password = unique("pw");
    let username = unique("user");
    let rotated = unique("rotated");
    let literal = unique("literal");
    let all_values = [&password, &username, &rotated, &literal];

    // Created with `verge apply -f` (YAML), as an admin.
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("db.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: verge.dev/v1\nkind: Secret\nmetadata:\n  name: db\nspec:\n  data:\n    \
             password: {password}\n    username: {username}\n"
        ),
    )?;
    let out = success(&verge(
        &cloud,
        &["apply", "-f", manifest.to_str().unwrap()],
    )?);
    assert!(out.contains("secret/db created"), "{out}");
    let out = success(&verge(
        &cloud,
        &["apply", "-f", manifest.to_str().unwrap()],
    )?);
    assert!(
        out.contains("secret/db unchanged"),
        "re-applying writes nothing: {out}"
    );

    // Viewer: keys, never values — GET, LIST, CLI table, YAML, JSON, describe.
    let (s, got) = call(&cloud, &viewer, Method::GET, "/api/v1/secrets/db", None).await?;
    assert_eq!(s, StatusCode::OK, "{got}");
    assert_eq!(got["spec"]["data"], json!({"password": "", "username": ""}));
    assert_eq!(got["metadata"]["annotations"]["verge.dev/redacted"], "true");
    let (s, list) = call(&cloud, &viewer, Method::GET, "/api/v1/secrets", None).await?;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["items"][0]["spec"]["data"]["password"], "");
    let viewer_cli = |args: &[&str]| -> Result<String> {
        let mut all = vec!["--token", viewer.as_str()];
        all.extend_from_slice(args);
        Ok(success(&verge(&cloud, &all)?))
    };
    let table = viewer_cli(&["get", "secrets"])?;
    assert!(
        table.contains("KEYS") && table.contains("password,username"),
        "{table}"
    );
    for out in [
        viewer_cli(&["get", "secret", "db", "-o", "yaml"])?,
        viewer_cli(&["get", "secrets", "-o", "json"])?,
        viewer_cli(&["describe", "secret", "db"])?,
    ] {
        assert!(out.contains("password"), "{out}");
        for v in all_values {
            assert!(!out.contains(v.as_str()), "a viewer saw a value: {out}");
        }
    }
    assert!(viewer_cli(&["describe", "secret", "db"])?.contains("<hidden>"));
    let (s, _) = call(
        &cloud,
        &viewer,
        Method::PUT,
        "/api/v1/secrets/db",
        Some(&secret("db", json!({"password": "x"}))),
    )
    .await?;
    assert_eq!(s, StatusCode::FORBIDDEN);

    // Operator and admin read values (API and CLI); describe shows sizes only.
    for t in [&operator, &admin] {
        let (s, got) = call(&cloud, t, Method::GET, "/api/v1/secrets/db", None).await?;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(got["spec"]["data"]["password"], password.as_str());
        assert!(got["metadata"]["annotations"]["verge.dev/redacted"].is_null());
    }
    let yaml = success(&verge(&cloud, &["get", "secret", "db", "-o", "yaml"])?);
    assert!(
        yaml.contains(&password) && yaml.contains(&username),
        "{yaml}"
    );
    let described = success(&verge(&cloud, &["describe", "secret", "db"])?);
    assert!(
        !described.contains(&password) && described.contains("bytes>"),
        "{described}"
    );

    // The viewer's redacted copy written back by an operator: refused, nothing lost.
    let (s, err) = call(
        &cloud,
        &operator,
        Method::PUT,
        "/api/v1/secrets/db",
        Some(&got),
    )
    .await?;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["field"], "metadata.annotations.verge.dev/redacted");
    let (_, still) = call(&cloud, &admin, Method::GET, "/api/v1/secrets/db", None).await?;
    assert_eq!(still["spec"]["data"]["password"], password.as_str());

    // Watches: a viewer's and an admin's stream of the same change, each its own form.
    let rv = still["metadata"]["resourceVersion"]
        .as_str()
        .context("resourceVersion")?
        .to_string();
    let viewer_watch = watch_until_modified(&cloud, &viewer, &rv);
    let admin_watch = watch_until_modified(&cloud, &admin, &rv);
    let change = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        cloud
            .apply(
                "secrets",
                &secret("db", json!({"password": rotated, "username": username})),
            )
            .await
    };
    let (viewer_lines, admin_lines, changed) = tokio::join!(viewer_watch, admin_watch, change);
    changed?;
    let (viewer_lines, admin_lines) = (viewer_lines?, admin_lines?);
    assert!(viewer_lines.contains("\"MODIFIED\"") && viewer_lines.contains("\"password\":\"\""));
    for v in all_values {
        assert!(
            !viewer_lines.contains(v.as_str()),
            "viewer watch leaked: {viewer_lines}"
        );
    }
    assert!(admin_lines.contains(&rotated), "admin watch: {admin_lines}");
    // A viewer's watch from the start (initial ADDED events) too.
    let resp = cloud
        .client()?
        .get(format!(
            "{}/api/v1/secrets?watch=1&timeoutSeconds=1",
            cloud.url
        ))
        .bearer_auth(&viewer)
        .send()
        .await?
        .text()
        .await?;
    assert!(
        resp.contains("\"ADDED\"") && resp.contains("password"),
        "{resp}"
    );
    for v in all_values {
        assert!(
            !resp.contains(v.as_str()),
            "viewer initial watch leaked: {resp}"
        );
    }

    // `verge create secret --from-literal` / `--from-file`.
    let file = dir.path().join("token.txt");
    std::fs::write(&file, "file-value-not-secret")?;
    let out = success(&verge(
        &cloud,
        &[
            "create",
            "secret",
            "api",
            "--from-literal",
            &format!("token={literal}"),
            "--from-file",
            &format!("cert={}", file.display()),
        ],
    )?);
    assert!(out.contains("secret/api created"), "{out}");
    let (_, api) = call(&cloud, &viewer, Method::GET, "/api/v1/secrets/api", None).await?;
    assert_eq!(api["spec"]["data"], json!({"cert": "", "token": ""}));
    let again = verge(
        &cloud,
        &["create", "secret", "api", "--from-literal", "a=b"],
    )?;
    assert!(!again.status.success(), "creating it twice fails");

    // Bad Secrets: refused naming the field, the value never echoed.
    let cases = [
        (json!({"bad key": password}), "spec.data.bad key"),
        (json!({"k": format!("{password}\u{0}")}), "spec.data.k"),
        (
            json!({"k": format!("{password}{}", "x".repeat(70 * 1024))}),
            "spec.data",
        ),
        (
            Value::Object(
                (0..65)
                    .map(|i| (format!("k{i}"), json!(password)))
                    .collect(),
            ),
            "spec.data",
        ),
    ];
    for (data, field) in cases {
        let (s, err) = call(
            &cloud,
            &operator,
            Method::POST,
            "/api/v1/secrets",
            Some(&secret("bad", data)),
        )
        .await?;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["field"], field, "{err}");
        assert!(!err.to_string().contains(&password), "{err}");
    }
    let (s, _) = call(&cloud, &admin, Method::GET, "/api/v1/secrets/bad", None).await?;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // At rest: ciphertext only, in every file of the data dir; the key file is private.
    let check_at_rest = |cloud: &Cloud| -> Result<()> {
        for v in all_values {
            let found = files_containing(cloud.data_dir(), v);
            anyhow::ensure!(found.is_empty(), "plaintext {v} found in {found:?}");
        }
        let sealed = files_containing(cloud.data_dir(), "\"password\":\"v1:");
        anyhow::ensure!(
            sealed
                .iter()
                .any(|p| p.to_string_lossy().contains("store.db")),
            "no sealed value in the store: {sealed:?}"
        );
        Ok(())
    };
    check_at_rest(&cloud)?;
    let key = cloud.data_dir().join("secret.key");
    assert_eq!(mode(&key), 0o600);
    assert_eq!(std::fs::read_to_string(&key)?.trim().len(), 64);

    // kill -9 and restart: the same key opens the same values; still ciphertext on disk.
    cloud.kill9()?;
    cloud.restart().await?;
    let (_, after) = call(&cloud, &admin, Method::GET, "/api/v1/secrets/db", None).await?;
    assert_eq!(after["spec"]["data"]["password"], rotated.as_str());
    let (_, api) = call(&cloud, &operator, Method::GET, "/api/v1/secrets/api", None).await?;
    assert_eq!(api["spec"]["data"]["token"], literal.as_str());
    check_at_rest(&cloud)?;

    // Nothing of it in the log (debug level, the whole run).
    let log = cloud.log();
    assert!(
        log.contains("DEBUG") || log.contains("INFO"),
        "log captured: {log}"
    );
    for v in all_values {
        assert!(!log.contains(v.as_str()), "the cloud logged a secret value");
    }
    Ok(())
}

/// A tar.gz holding `app.sh` (the given script body).
fn artifact(dir: &Path, name: &str, script: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(&src)?;
    let sh = src.join("app.sh");
    std::fs::write(&sh, format!("#!/bin/sh\n{script}\n"))?;
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

/// Kills the native app process the test started, should the agent not have.
struct KillPid(PathBuf);

impl Drop for KillPid {
    fn drop(&mut self) {
        if let Ok(p) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill")
                .args(["-9", p.trim()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

/// `GET path` on the node's local API (its unix socket): the JSON body.
async fn local_get(data_dir: &Path, path: &str) -> Result<Value> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::UnixStream::connect(data_dir.join("edge.sock")).await?;
    sock.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut raw = Vec::new();
    sock.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw)?;
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(serde_json::from_str(body)?)
}

async fn invoke_on(cloud: &Cloud, name: &str, node: &str) -> Result<(StatusCode, Value)> {
    call(
        cloud,
        &cloud.admin_token,
        Method::POST,
        &format!("/api/v1/functions/{name}/invoke?node={node}"),
        Some(&json!({})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_env_reaches_functions_and_native_apps_on_a_node_and_missing_ones_say_so()
-> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start_logging(
        Path::new(BIN),
        &["--heartbeat-interval", "1s", "--heartbeat-misses", "5"],
        "debug",
    )
    .await?;
    let node = format!("sec-{}", std::process::id());
    let dirs = tempfile::tempdir()?;
    let edge_dir = dirs.path().join(&node);
    let token = cloud.bootstrap_token_with(1, &["tier=edge"]).await?;
    let _edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &node,
        &["tier=edge"],
        &edge_dir,
        &["--heartbeat-interval", "1s", "--status-interval", "2s"],
    )?;
    cloud.wait_ready(&[&node]).await?;
    let first = unique("first");
    let second = unique("second");
    let unplaced = unique("never-sent");
    let other_secret = unique("other");
    let all_values = [&first, &second, &unplaced, &other_secret];

    // A function reading its secretEnv, applied before the Secret exists: Failed,
    // naming the Secret; on the node it does not run (no empty value).
    let function = json!({"apiVersion": "verge.dev/v1", "kind": "Function",
        "metadata": {"name": "showenv"},
        "spec": {"runtime": "python3", "handler": "handler.main",
            "code": "import os\ndef main(event):\n    return {\"x\": os.environ.get(\"DB_PASSWORD\"), \"plain\": os.environ.get(\"PLAIN\")}\n",
            "env": {"PLAIN": "visible"},
            "secretEnv": {"DB_PASSWORD": {"name": "db", "key": "password"}},
            "placement": {"nodeSelector": {"tier": "edge"}}}});
    cloud.apply("functions", &function).await?;
    let failed = eventually(Duration::from_secs(30), "Function Failed", async || {
        let f = cloud
            .api(Method::GET, "/api/v1/functions/showenv", None)
            .await
            .ok()?;
        (f["status"]["phase"] == "Failed").then_some(f)
    })
    .await?;
    let msg = failed["status"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("spec.secretEnv.DB_PASSWORD") && msg.contains("Secret \"db\" not found"),
        "{failed}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (s, v) = invoke_on(&cloud, "showenv", &node).await?;
    assert_ne!(s, StatusCode::OK, "ran without its secret: {v}");

    // The Secret arrives: Ready, and the function on the node reads the value.
    cloud
        .apply(
            "secrets",
            &secret("db", json!({"password": first, "unused": unplaced})),
        )
        .await?;
    cloud
        .apply("secrets", &secret("other", json!({"k": other_secret})))
        .await?;
    eventually(Duration::from_secs(30), "Function Ready", async || {
        let f = cloud
            .api(Method::GET, "/api/v1/functions/showenv", None)
            .await
            .ok()?;
        (f["status"]["phase"] == "Ready").then_some(())
    })
    .await?;
    let v = eventually(
        Duration::from_secs(60),
        "invoke sees the secret",
        async || {
            let (s, v) = invoke_on(&cloud, "showenv", &node).await.ok()?;
            (s == StatusCode::OK && v["x"] == first.as_str()).then_some(v)
        },
    )
    .await?;
    assert_eq!(v["plain"], "visible");

    // A new value reaches the node and the function runs with it.
    cloud
        .apply(
            "secrets",
            &secret("db", json!({"password": second, "unused": unplaced})),
        )
        .await?;
    eventually(
        Duration::from_secs(60),
        "invoke sees the new value",
        async || {
            let (s, v) = invoke_on(&cloud, "showenv", &node).await.ok()?;
            (s == StatusCode::OK && v["x"] == second.as_str()).then_some(())
        },
    )
    .await?;

    // A native app gets its secretEnv in its process environment.
    let out_file = dirs.path().join("native.out");
    let pid_file = dirs.path().join("native.pid");
    let _kill = KillPid(pid_file.clone());
    let art = artifact(
        dirs.path(),
        "envdump",
        "echo $$ > \"$PID_FILE\"\nprintf %s \"$DB_PASSWORD\" > \"$OUT_FILE.tmp\"\nmv \"$OUT_FILE.tmp\" \"$OUT_FILE\"\nexec sleep 100000",
    )?;
    let push = success(&verge(
        &cloud,
        &["artifact", "push", art.to_str().unwrap()],
    )?);
    let sha = push
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .context("sha256 in the push output")?
        .to_string();
    let native = |name: &str, secret_env: Value, out: &Path| {
        app_object(
            name,
            "1.0.0",
            json!({"native": {"artifact": {"sha256": sha}, "command": "app.sh",
                "env": {"OUT_FILE": out.to_str().unwrap(), "PID_FILE": pid_file.to_str().unwrap()},
                "secretEnv": secret_env}}),
            json!({"placement": {"nodeSelector": {"tier": "edge"}}}),
        )
    };
    cloud
        .apply(
            "apps",
            &native(
                "envdump",
                json!({"DB_PASSWORD": {"name": "db", "key": "password"}}),
                &out_file,
            ),
        )
        .await?;
    let got = eventually(
        Duration::from_secs(60),
        "the native app's output",
        async || std::fs::read_to_string(&out_file).ok(),
    )
    .await?;
    assert_eq!(got, second);
    let app = cloud.app("envdump").await?;
    let cond = app_condition(&app, "SecretsResolved").context("SecretsResolved")?;
    assert_eq!(cond["status"], "True", "{app}");

    // A native app whose Secret key is missing: condition and instance say so; its
    // process never starts.
    let missing_out = dirs.path().join("missing.out");
    cloud
        .apply(
            "apps",
            &native(
                "nokey",
                json!({"DB_PASSWORD": {"name": "db", "key": "nope"}}),
                &missing_out,
            ),
        )
        .await?;
    let app = eventually(Duration::from_secs(60), "nokey reported", async || {
        let a = cloud.app("nokey").await.ok()?;
        let inst = app_instances(&a, &node);
        (!inst.is_empty() && inst[0]["state"] == "Failed").then_some(a)
    })
    .await?;
    let cond = app_condition(&app, "SecretsResolved").context("SecretsResolved")?;
    assert_eq!(cond["status"], "False", "{app}");
    assert_eq!(cond["reason"], "MissingSecret");
    let msg = cond["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("spec.workload.native.secretEnv.DB_PASSWORD")
            && msg.contains("Secret \"db\" has no key \"nope\""),
        "{msg}"
    );
    let inst = &app_instances(&app, &node)[0];
    assert!(
        inst["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("has no key \"nope\"")),
        "{inst}"
    );
    assert!(!missing_out.exists(), "started without its secret");

    // The node holds only what is placed there: `db` with the referenced key, not the
    // unreferenced key nor the unreferenced Secret; its local API shows no values.
    let local = eventually(Duration::from_secs(30), "secrets on the node", async || {
        local_get(&edge_dir, "/v1/objects/secrets").await.ok()
    })
    .await?;
    let names: Vec<&str> = local
        .as_array()
        .context("array")?
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["db"], "{local}");
    assert_eq!(local[0]["spec"]["data"], json!({"password": ""}), "{local}");
    for v in [&unplaced, &other_secret] {
        let found = files_containing(&edge_dir, v);
        assert!(found.is_empty(), "{v} reached the node: {found:?}");
    }
    assert_eq!(mode(&edge_dir), 0o700);
    assert_eq!(mode(&edge_dir.join("store.redb")), 0o600);

    // Cleanup: the app's process is stopped by its node.
    cloud
        .api(Method::DELETE, "/api/v1/apps/envdump", None)
        .await?;
    let pid = std::fs::read_to_string(&pid_file)?.trim().to_string();
    eventually(Duration::from_secs(60), "envdump stopped", async || {
        let alive = Command::new("kill")
            .args(["-0", &pid])
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?
            .success();
        (!alive).then_some(())
    })
    .await?;

    let log = cloud.log();
    for v in all_values {
        assert!(!log.contains(v.as_str()), "the cloud logged a secret value");
    }
    Ok(())
}

/// `Dockerd::start` / `Registry::start*`, or `None` (skip) when a component is not
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

/// Removes the containers of the test's node (they outlive a killed agent on purpose).
struct RemoveContainers {
    dockerd: Dockerd,
    node: String,
}

impl Drop for RemoveContainers {
    fn drop(&mut self) {
        let host = self.dockerd.host();
        let ids = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=io.verge.node={}", self.node))
            .env("DOCKER_HOST", &host)
            .output();
        if let Ok(ids) = ids {
            let ids: Vec<String> = String::from_utf8_lossy(&ids.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&ids)
                    .env("DOCKER_HOST", &host)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_registry_login_comes_from_a_secret() -> Result<()> {
    let Some(dockerd) = skip_if_missing(Dockerd::start().await)? else {
        return Ok(());
    };
    let password = unique("regpw");
    let wrong = unique("wrongpw");
    let Some(registry) = skip_if_missing(Registry::start_with_login("deploy", &password).await)?
    else {
        return Ok(());
    };
    let dirs = tempfile::tempdir()?;
    let Some(tar) = skip_if_missing(busybox_image_tar(dirs.path()))? else {
        return Ok(());
    };
    // A private image: pushed with the login, then gone from the daemon and its
    // credentials, so only the App's registryAuth can pull it.
    let image = format!("{}/private:1", registry.addr());
    dockerd.build_image(&image, &tar).await?;
    assert!(
        dockerd.push(&image).await.is_err(),
        "the registry wants a login"
    );
    dockerd
        .docker(&["login", &registry.addr(), "-u", "deploy", "-p", &password])
        .await?;
    dockerd.push(&image).await?;
    dockerd.docker(&["logout", &registry.addr()]).await?;
    dockerd.docker(&["rmi", &image]).await?;

    let cloud = Cloud::start_logging(
        Path::new(BIN),
        &["--heartbeat-interval", "1s", "--heartbeat-misses", "5"],
        "debug",
    )
    .await?;
    let node = format!("secdkr-{}", std::process::id());
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let token = cloud.bootstrap_token_with(1, &["tier=edge"]).await?;
    let socket = dockerd
        .socket()
        .to_str()
        .context("socket path")?
        .to_string();
    let guard = RemoveContainers {
        dockerd,
        node: node.clone(),
    };
    let _edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &node,
        &["tier=edge"],
        &dirs.path().join(&node),
        &[
            "--heartbeat-interval",
            "1s",
            "--status-interval",
            "2s",
            "--docker-socket",
            &socket,
            "--docker-network",
            "host",
        ],
    )?;
    cloud.wait_ready(&[&node]).await?;

    // No Secret yet: the condition and the instance name it; nothing is pulled.
    let app = app_object(
        "private",
        "1.0.0",
        json!({"docker": {"image": image, "registryAuth": {"name": "regcreds"},
            "command": ["/bin/sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]}}),
        json!({"placement": {"nodeSelector": {"tier": "edge"}}}),
    );
    cloud.apply("apps", &app).await?;
    let a = eventually(Duration::from_secs(60), "private reported", async || {
        let a = cloud.app("private").await.ok()?;
        (!app_instances(&a, &node).is_empty()).then_some(a)
    })
    .await?;
    let cond = app_condition(&a, "SecretsResolved").context("SecretsResolved")?;
    assert_eq!(cond["status"], "False", "{a}");
    let err = app_instances(&a, &node)[0]["lastError"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("registryAuth: Secret \"regcreds\" not found on this node"),
        "{err}"
    );

    // A wrong password: the pull is refused; the instance does not run.
    cloud
        .apply(
            "secrets",
            &secret("regcreds", json!({"username": "deploy", "password": wrong})),
        )
        .await?;
    let a = eventually(
        Duration::from_secs(60),
        "a refused pull reported",
        async || {
            let a = cloud.app("private").await.ok()?;
            let i = app_instances(&a, &node).first().cloned().cloned()?;
            let e = i["lastError"].as_str()?;
            (i["state"] != "Running" && !e.contains("not found on this node")).then_some(a)
        },
    )
    .await?;
    let text = a.to_string();
    assert!(!text.contains(&wrong), "{text}");

    // The right one: pulled and running.
    cloud
        .apply(
            "secrets",
            &secret(
                "regcreds",
                json!({"username": "deploy", "password": password}),
            ),
        )
        .await?;
    eventually(Duration::from_secs(90), "private Running", async || {
        let a = cloud.app("private").await.ok()?;
        let i = app_instances(&a, &node).first().cloned().cloned()?;
        (i["state"] == "Running").then_some(())
    })
    .await?;
    let a = cloud.app("private").await?;
    assert_eq!(
        app_condition(&a, "SecretsResolved").unwrap()["status"],
        "True"
    );
    let images = guard.dockerd.docker(&["images", "-q", &image]).await?;
    assert!(!images.is_empty(), "the image was pulled");

    cloud
        .api(Method::DELETE, "/api/v1/apps/private", None)
        .await?;
    let log = cloud.log();
    for v in [&password, &wrong] {
        assert!(
            !log.contains(v.as_str()),
            "the cloud logged a registry password"
        );
    }
    Ok(())
}
