//! End to end: `verge-edge join` / `run` / `get` against a real `verge cloud` over real
//! HTTPS and a real unix socket.
//!
//! The `verge` binary belongs to another package, so `CARGO_BIN_EXE_verge` is not set
//! here. [`verge_bin`] looks for it next to this test's target dir
//! (`verge_testkit::cargo_bin`) and, if it is missing, builds it once per test process
//! (`cargo build -p verge --bin verge`, with the same target dir and profile as this
//! test binary), guarded by a `OnceLock`. When the whole workspace is tested, cargo
//! has built it already and nothing is rebuilt.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use verge_testkit::Cloud;

const EDGE: &str = env!("CARGO_BIN_EXE_verge-edge");

fn verge_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = verge_testkit::cargo_bin("verge");
        if bin.exists() {
            return bin;
        }
        // <target>/<profile-dir>/verge, where this test is <target>/<profile-dir>/deps/join-…
        let profile_dir = bin.parent().expect("profile dir");
        let target_dir = profile_dir.parent().expect("target dir");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(other) => other,
        };
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "-p",
                "verge",
                "--bin",
                "verge",
                "--profile",
                profile,
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("running cargo build -p verge");
        assert!(status.success(), "cargo build -p verge failed");
        assert!(bin.exists(), "{} not built", bin.display());
        bin
    })
    .clone()
}

struct T {
    cloud: Cloud,
    http: reqwest::Client,
    tmp: tempfile::TempDir,
}

impl T {
    async fn start() -> Result<T> {
        let cloud = Cloud::start(&verge_bin(), &[]).await?;
        let http = cloud.client()?;
        Ok(T {
            cloud,
            http,
            tmp: tempfile::tempdir()?,
        })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    fn ca_hash(&self) -> String {
        verge_edge::identity::ca_hash_of_pem(&self.cloud.ca_pem).unwrap()
    }

    /// A bootstrap token: `(id, id.secret)`.
    async fn bootstrap(&self, extra: Value) -> Result<(String, String)> {
        let mut body = json!({"role": "bootstrap"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let r = self
            .http
            .post(format!("{}/api/v1/tokens", self.cloud.url))
            .bearer_auth(&self.cloud.admin_token)
            .json(&body)
            .send()
            .await?;
        if r.status().as_u16() != 201 {
            bail!("token create: {} {}", r.status(), r.text().await?);
        }
        let v: Value = r.json().await?;
        Ok((
            v["id"].as_str().context("id")?.into(),
            v["token"].as_str().context("token")?.into(),
        ))
    }

    async fn admin(&self, method: reqwest::Method, path: &str) -> Result<(u16, Value)> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.cloud.url))
            .bearer_auth(&self.cloud.admin_token)
            .send()
            .await?;
        let s = r.status().as_u16();
        Ok((s, r.json().await.unwrap_or(Value::Null)))
    }

    async fn uses_left(&self, token_id: &str) -> Result<Option<u64>> {
        let (_, v) = self.admin(reqwest::Method::GET, "/api/v1/tokens").await?;
        let items = v["items"].as_array().context("items")?;
        let t = items
            .iter()
            .find(|t| t["id"] == token_id)
            .context("token listed")?;
        Ok(t["usesLeft"].as_u64())
    }

    /// `verge-edge join` with the right CA hash.
    fn join(&self, token: &str, name: Option<&str>, dir: &Path, extra: &[&str]) -> Output {
        self.join_pinned(&self.ca_hash(), token, name, dir, extra)
    }

    fn join_pinned(
        &self,
        ca_hash: &str,
        token: &str,
        name: Option<&str>,
        dir: &Path,
        extra: &[&str],
    ) -> Output {
        let mut cmd = Command::new(EDGE);
        cmd.args(["join", "--cloud", &self.cloud.url, "--token", token])
            .args(["--ca-hash", ca_hash])
            .arg("--data-dir")
            .arg(dir)
            .args(extra);
        if let Some(n) = name {
            cmd.args(["--name", n]);
        }
        cmd.env_remove("VERGE_EDGE_TOKEN")
            .stdin(Stdio::null())
            .output()
            .expect("running verge-edge")
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A failed command: non-zero, exactly one line on stderr, starting `error: `.
fn assert_one_line_error(o: &Output, want: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "expected failure; stderr: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(err.contains(want), "want {want:?} in {err}");
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn join_writes_private_files_and_registers_the_node() -> Result<()> {
    let t = T::start().await?;
    let (_, token) = t
        .bootstrap(json!({"uses": 2, "labels": {"site": "lab-1", "zone": "z1"}}))
        .await?;
    let dir = t.dir("node-a");
    // A label the token does not grant is refused, and no use of the token is spent.
    let refused = t.join(&token, Some("edge-a"), &dir, &["--label", "tier=gold"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("tier=gold is not granted by the bootstrap token"),
        "{}",
        stderr(&refused)
    );
    let _ = std::fs::remove_dir_all(&dir);
    let out = t.join(&token, Some("edge-a"), &dir, &["--label", "zone=z1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        format!(
            "joined as edge-a; start it with: verge-edge run --data-dir {}",
            dir.display()
        )
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("node.key")), 0o600);
    assert_eq!(mode(&dir.join("identity.json")), 0o600);
    assert!(dir.join("node.crt").exists() && dir.join("ca.crt").exists());
    let idf: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("identity.json"))?)?;
    assert_eq!(idf["name"], "edge-a");
    assert_eq!(idf["cloud"], t.cloud.url.as_str());
    assert!(
        idf["certificateExpiresAt"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(idf["joinedAt"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(std::fs::read_to_string(dir.join("ca.crt"))?, t.cloud.ca_pem);

    // What was written loads, and builds the mutual-TLS config the uplink uses.
    let id = verge_edge::Identity::load(&dir)?;
    assert_eq!(id.name, "edge-a");
    assert!(id.key_pem.contains("PRIVATE KEY"));
    assert!(id.cert_expires_at_time().is_some());
    id.tls_client_config()?;

    // The cloud recorded the node with the token's labels.
    let (status, node) = t
        .admin(reqwest::Method::GET, "/api/v1/nodes/edge-a")
        .await?;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["metadata"]["labels"]["site"], "lab-1");
    assert_eq!(node["metadata"]["labels"]["zone"], "z1");
    assert!(node["metadata"]["annotations"]["verge.dev/cert-serial"].is_string());

    // Without --name, the node is named after the host.
    let dir_b = t.dir("node-b");
    let out = t.join(&token, None, &dir_b, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let host = nix::unistd::gethostname()?.to_string_lossy().into_owned();
    let want = verge_edge::identity::sanitize_hostname(&host)?;
    assert_eq!(verge_edge::Identity::load(&dir_b)?.name, want);
    let (status, _) = t
        .admin(reqwest::Method::GET, &format!("/api/v1/nodes/{want}"))
        .await?;
    assert_eq!(status, 200);
    Ok(())
}

#[tokio::test]
async fn wrong_ca_hash_is_refused_before_anything_is_sent_or_written() -> Result<()> {
    let t = T::start().await?;
    let (id, token) = t.bootstrap(json!({"uses": 1})).await?;
    let dir = t.dir("node");
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = t.join_pinned(&wrong, &token, Some("edge-x"), &dir, &[]);
    assert_one_line_error(
        &out,
        &format!(
            "the cloud's CA ({}) does not match --ca-hash ({wrong}); refusing to join",
            t.ca_hash()
        ),
    );
    assert!(!dir.exists(), "nothing written");
    assert_eq!(t.uses_left(&id).await?, Some(1), "the token was never sent");
    let (status, _) = t
        .admin(reqwest::Method::GET, "/api/v1/nodes/edge-x")
        .await?;
    assert_eq!(status, 404);

    // A malformed hash is a usage error.
    let out = t.join_pinned("abc", &token, Some("edge-x"), &dir, &[]);
    assert_one_line_error(&out, "expected sha256:<64 hex digits>");
    assert!(!dir.exists());
    Ok(())
}

#[tokio::test]
async fn bad_tokens_show_the_servers_message() -> Result<()> {
    let t = T::start().await?;
    let check = |out: &Output, dir: &Path, word: &str| {
        assert_one_line_error(
            out,
            "the cloud refused to join this node: 401 Unauthorized: ",
        );
        assert_one_line_error(out, word);
        assert!(!dir.exists(), "nothing written for {word}");
    };

    let dir = t.dir("unknown");
    let out = t.join(
        "abcdefgh.0123456789abcdef0123456789abcdef",
        Some("n1"),
        &dir,
        &[],
    );
    check(&out, &dir, "invalid token");

    let (id, revoked) = t.bootstrap(json!({})).await?;
    let (status, _) = t
        .admin(reqwest::Method::DELETE, &format!("/api/v1/tokens/{id}"))
        .await?;
    assert_eq!(status, 200);
    let dir = t.dir("revoked");
    check(
        &t.join(&revoked, Some("n2"), &dir, &[]),
        &dir,
        "token revoked",
    );

    let (_, once) = t.bootstrap(json!({"uses": 1})).await?;
    let out = t.join(&once, Some("n3"), &t.dir("first"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = t.dir("used-up");
    check(&t.join(&once, Some("n4"), &dir, &[]), &dir, "token used up");

    let (_, short) = t.bootstrap(json!({"ttlSeconds": 1})).await?;
    // Wait out the token's one-second lifetime (a precondition, not a timing check).
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let dir = t.dir("expired");
    check(
        &t.join(&short, Some("n5"), &dir, &[]),
        &dir,
        "token expired",
    );
    Ok(())
}

#[tokio::test]
async fn joining_twice_into_one_data_dir_is_refused() -> Result<()> {
    let t = T::start().await?;
    let (id, token) = t.bootstrap(json!({"uses": 5})).await?;
    let dir = t.dir("node");
    let out = t.join(&token, Some("edge-1"), &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = std::fs::read(dir.join("node.key"))?;
    let left = t.uses_left(&id).await?;

    let out = t.join(&token, Some("edge-2"), &dir, &[]);
    assert_one_line_error(
        &out,
        "already holds a joined node; use a new --data-dir or remove it",
    );
    assert_eq!(
        std::fs::read(dir.join("node.key"))?,
        before,
        "key untouched"
    );
    assert_eq!(t.uses_left(&id).await?, left, "no token use spent");
    let (status, _) = t
        .admin(reqwest::Method::GET, "/api/v1/nodes/edge-2")
        .await?;
    assert_eq!(status, 404);
    Ok(())
}

/// Polls the local API until it answers (the node is starting).
async fn wait_for_api(sock: &Path, child: &mut std::process::Child) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = child.try_wait()? {
            bail!("verge-edge run exited early: {st}");
        }
        if let Ok(v) = verge_edge::local_api::get(sock, "/v1/status").await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("the local API did not come up in 30s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn edge(args: &[&str], dir: &Path) -> Output {
    Command::new(EDGE)
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .expect("running verge-edge")
}

#[tokio::test]
async fn run_serves_the_local_api_and_get_configs_reads_it() -> Result<()> {
    let t = T::start().await?;
    let dir = t.dir("node");

    // Not joined yet: run says what to do.
    let out = edge(&["run"], &dir);
    assert_one_line_error(
        &out,
        "identity.json: not found; run `verge-edge join` first",
    );
    // Nothing running: get says so.
    let out = edge(&["get", "configs"], &dir);
    assert_one_line_error(&out, "is `verge-edge run` running with this --data-dir?");

    let (_, token) = t.bootstrap(json!({})).await?;
    let out = t.join(&token, Some("edge-run"), &dir, &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let mut child = Command::new(EDGE)
        .args(["run", "--heartbeat-interval", "1s", "--data-dir"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let sock = dir.join("edge.sock");
    let status = wait_for_api(&sock, &mut child).await;
    let result = async {
        let status = status?;
        assert_eq!(status["node"], "edge-run");
        // The uplink may already have applied the (empty) snapshot from the cloud.
        assert!(
            status["appliedRevision"].as_i64().is_some_and(|r| r >= 0),
            "{status}"
        );
        assert_eq!(mode(&sock), 0o600);

        let out = edge(&["get", "configs", "-o", "json"], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(serde_json::from_str::<Value>(&stdout(&out))?, json!([]));
        let out = edge(&["get", "configs"], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(stdout(&out), "NAME   DATA-KEYS   REVISION\n");
        let out = edge(&["get", "configs", "nope"], &dir);
        assert_one_line_error(&out, "404 NotFound: Config \"nope\" not found on this node");
        let out = edge(&["get", "status", "-o", "json"], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(
            serde_json::from_str::<Value>(&stdout(&out))?["node"],
            "edge-run"
        );
        let out = edge(&["get", "status"], &dir);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stdout(&out).starts_with("node:"), "{}", stdout(&out));

        // A second `run` on the same data dir is refused.
        let out = edge(&["run"], &dir);
        assert_one_line_error(
            &out,
            "is `verge-edge run` already running on this data dir?",
        );
        anyhow::Ok(())
    }
    .await;

    // SIGTERM: a clean exit that removes the socket.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let exit = child.wait()?;
    result?;
    assert!(exit.success(), "run exited with {exit}");
    assert!(!sock.exists(), "socket removed on shutdown");
    Ok(())
}
