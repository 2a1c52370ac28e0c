//! Test helpers: start a real `verge cloud` process on a temp data dir and a free
//! loopback port, talk to it over real HTTPS trusting its CA, kill it with SIGKILL,
//! restart it on the same data dir. Dev-dependency only.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A running (or killed) `verge cloud` child process.
pub struct Cloud {
    bin: PathBuf,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    extra_args: Vec<String>,
    child: Option<Child>,
    /// `https://127.0.0.1:PORT`
    pub url: String,
    pub admin_token: String,
    pub ca_pem: String,
    /// Port to reuse across restarts (0 = pick).
    port: u16,
    mqtt_port: u16,
    /// `mqtts://127.0.0.1:PORT` of the MQTT gateway.
    pub mqtt_url: String,
}

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Cloud {
    /// Starts `bin cloud` on a fresh temp dir.
    pub async fn start(bin: &Path, extra_args: &[&str]) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path().join("data");
        let mut c = Cloud {
            bin: bin.to_path_buf(),
            dir,
            _tmp: Some(tmp),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
            url: String::new(),
            admin_token: String::new(),
            ca_pem: String::new(),
            port: 0,
            mqtt_port: 0,
            mqtt_url: String::new(),
        };
        c.spawn().await?;
        Ok(c)
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    async fn spawn(&mut self) -> Result<()> {
        install_provider();
        let addr_file = self.dir.join("api.addr");
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = Command::new(&self.bin);
        cmd.arg("cloud")
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port));
        // With an external broker there is no gateway listener.
        if !self.extra_args.iter().any(|a| a == "--mqtt-url") {
            cmd.arg("--mqtt-listen")
                .arg(format!("127.0.0.1:{}", self.mqtt_port));
        }
        let child = cmd
            .args(&self.extra_args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("spawning verge cloud")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(ch) = self.child.as_mut()
                && let Some(status) = ch.try_wait()?
            {
                bail!("verge cloud exited during start-up: {status}");
            }
            if let Ok(url) = std::fs::read_to_string(&addr_file) {
                self.url = url.trim().to_string();
                break;
            }
            if Instant::now() > deadline {
                bail!("verge cloud did not write api.addr in 30s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.port = self
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("port in api.addr")?;
        self.admin_token = std::fs::read_to_string(self.dir.join("admin.token"))?
            .trim()
            .to_string();
        self.ca_pem = std::fs::read_to_string(self.dir.join("ca.crt"))?;
        // Ready when the API answers.
        let c = self.client()?;
        loop {
            if let Ok(r) = c.get(format!("{}/readyz", self.url)).send().await
                && r.status().is_success()
            {
                // Written before the API serves, so present once it answers.
                if let Ok(m) = std::fs::read_to_string(self.dir.join("mqtt.addr")) {
                    self.mqtt_url = m.trim().to_string();
                    self.mqtt_port = self
                        .mqtt_url
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("verge cloud not ready in 30s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An HTTPS client trusting only this cluster's CA.
    pub fn client(&self) -> Result<reqwest::Client> {
        let mut roots = rustls::RootCertStore::empty();
        let mut rd = self.ca_pem.as_bytes();
        for c in rustls_pemfile::certs(&mut rd) {
            roots.add(c?)?;
        }
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(cfg)
            .timeout(Duration::from_secs(30))
            .build()?)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill9(&mut self) -> Result<()> {
        sigkill(&mut self.child)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let mut ch = self.child.take().context("not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(ch.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(ch.wait()?)
    }

    /// Starts again on the same data dir and port.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn().await
    }

    /// An admin API call that must succeed; the JSON answer (`null` if none).
    pub async fn api(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut r = self
            .client()?
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        anyhow::ensure!(status.is_success(), "{path}: {status} {v}");
        Ok(v)
    }

    /// A bootstrap token (`id.secret`) good for `uses` joins.
    pub async fn bootstrap_token(&self, uses: u32) -> Result<String> {
        let tok = self
            .api(
                reqwest::Method::POST,
                "/api/v1/tokens",
                Some(serde_json::json!({"role": "bootstrap", "uses": uses})),
            )
            .await?;
        tok["token"]
            .as_str()
            .map(str::to_owned)
            .context("token in the answer")
    }

    /// A Node's `status.phase` (None while it cannot be read).
    pub async fn node_phase(&self, node: &str) -> Option<String> {
        let v = self
            .api(reqwest::Method::GET, &format!("/api/v1/nodes/{node}"), None)
            .await
            .ok()?;
        v["status"]["phase"].as_str().map(str::to_string)
    }

    /// A CLI config file for this cloud (the one the server wrote).
    pub fn admin_config(&self) -> PathBuf {
        self.dir.join("admin.config")
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        if let Some(mut ch) = self.child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

/// SIGKILL a child (no chance to flush anything) and reap it.
fn sigkill(child: &mut Option<Child>) -> Result<()> {
    if let Some(mut ch) = child.take() {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(ch.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        ch.wait()?;
    }
    Ok(())
}

/// Path to a binary built by cargo next to the test executable.
pub fn cargo_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join(name)
}

/// A fresh key pair and a PEM CSR whose subject CN is `cn`: `(key_pem, csr_pem)`.
pub fn csr(cn: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// Path to a workspace binary of another package, built once per test process so it
/// is never stale (`cargo test -p verge` alone does not rebuild `verge-edge`). Under
/// `scripts/test` (`cargo test --workspace`, which builds every binary with the
/// workspace's features) `VERGE_TEST_BINS_BUILT=1` skips that build: rebuilding with
/// one package's feature set would relink the binary for nothing (~1 min each).
/// Serialized so parallel tests build once.
pub fn workspace_bin(package: &str, bin: &str) -> Result<PathBuf> {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let path = cargo_bin(bin);
    let prebuilt = std::env::var_os("VERGE_TEST_BINS_BUILT").is_some() && path.exists();
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !prebuilt && !built.iter().any(|b| b == bin) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-q", "--locked", "-p", package, "--bin", bin])
            .status()
            .context("running cargo build")?;
        if !status.success() || !path.exists() {
            bail!("could not build {bin} (cargo build -p {package})");
        }
        built.push(bin.to_string());
    }
    Ok(path)
}

/// A running `verge-edge run` child.
pub struct Edge {
    bin: PathBuf,
    pub data_dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl Edge {
    /// `verge-edge join` into `data_dir`; returns the command's output.
    pub fn join(
        bin: &Path,
        cloud: &Cloud,
        token: &str,
        name: &str,
        labels: &[&str],
        data_dir: &Path,
    ) -> Result<std::process::Output> {
        let hash = ca_hash(&cloud.ca_pem)?;
        let mut cmd = Command::new(bin);
        cmd.args([
            "join",
            "--cloud",
            &cloud.url,
            "--token",
            token,
            "--ca-hash",
            &hash,
            "--name",
            name,
            "--data-dir",
        ])
        .arg(data_dir)
        .env("RUST_LOG", "warn");
        for l in labels {
            cmd.args(["--label", l]);
        }
        Ok(cmd.output()?)
    }

    pub fn start(bin: &Path, data_dir: &Path, args: &[&str]) -> Result<Self> {
        let mut e = Edge {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
        };
        e.spawn()?;
        Ok(e)
    }

    fn spawn(&mut self) -> Result<()> {
        let child = Command::new(&self.bin)
            .arg("run")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .context("spawning verge-edge run")?;
        self.child = Some(child);
        Ok(())
    }

    pub fn kill9(&mut self) -> Result<()> {
        sigkill(&mut self.child)
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// `verge-edge result --id ID --output JSON`: hands a task result to the running
    /// node. `Err` (with its stderr) if the node did not take it.
    pub fn result(&self, id: &str, output: &serde_json::Value) -> Result<()> {
        let out = Command::new(&self.bin)
            .args([
                "result",
                "--id",
                id,
                "--output",
                &output.to_string(),
                "--data-dir",
            ])
            .arg(&self.data_dir)
            .env("RUST_LOG", "off")
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "verge-edge result: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// `verge-edge get ARGS -o json --data-dir DIR` as JSON (None while it fails, e.g.
    /// before the local API is up).
    pub fn get(&self, what: &[&str]) -> Option<serde_json::Value> {
        let out = Command::new(&self.bin)
            .arg("get")
            .args(what)
            .args(["-o", "json", "--data-dir"])
            .arg(&self.data_dir)
            .env("RUST_LOG", "off")
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        if let Some(mut ch) = self.child.take() {
            let _ = ch.kill();
            let _ = ch.wait();
        }
    }
}

/// A `Config` named `name` holding `{origin: value}`, placed on nodes labelled
/// `site=SITE`.
pub fn site_config(name: &str, site: &str, value: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "Config", "metadata": {"name": name},
        "spec": {"data": {"origin": value}, "placement": {"nodeSelector": {"site": site}}}})
}

/// `sha256:<hex>` of the first certificate in a PEM.
pub fn ca_hash(pem: &str) -> Result<String> {
    use sha2::Digest;
    let mut rd = pem.as_bytes();
    let der = rustls_pemfile::certs(&mut rd)
        .next()
        .context("no certificate in PEM")??;
    Ok(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(der.as_ref()))
    ))
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T>(
    timeout: Duration,
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
