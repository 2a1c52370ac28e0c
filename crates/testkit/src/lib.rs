//! Test helpers: start a real `verge cloud` process on a temp data dir and a free
//! loopback port, talk to it over real HTTPS trusting its CA, kill it with SIGKILL,
//! restart it on the same data dir; join a [`FakeNode`] that speaks the real protocol
//! with a node certificate (what a compromised node can do); the real S3 tools and a
//! SeaweedFS server ([`s3`]). Dev-dependency only.

mod fake_node;
pub use fake_node::{FakeNode, node_status};
pub mod s3;
pub use s3::{AwsCli, SeaweedFs};

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
    s3_port: u16,
    /// `https://127.0.0.1:PORT` of the S3 API.
    pub s3_url: String,
    /// `RUST_LOG` of the process (`warn` unless started with [`Cloud::start_logging`]).
    log_filter: String,
    /// Where its stderr goes, when captured ([`Cloud::log`]).
    log_file: Option<PathBuf>,
    /// Extra environment of the process ([`Cloud::start_env`], [`Cloud::clear_env`]).
    env: Vec<(String, String)>,
}

fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Cloud {
    /// Starts `bin cloud` on a fresh temp dir.
    pub async fn start(bin: &Path, extra_args: &[&str]) -> Result<Self> {
        Self::start_with(bin, extra_args, "warn", false, &[]).await
    }

    /// Like [`Cloud::start`], with `RUST_LOG=filter` and its log captured to a file in
    /// the temp dir, for tests about what the cloud logs ([`Cloud::log`]).
    pub async fn start_logging(bin: &Path, extra_args: &[&str], filter: &str) -> Result<Self> {
        Self::start_with(bin, extra_args, filter, true, &[]).await
    }

    /// Like [`Cloud::start_logging`] (filter `warn`), with extra environment variables
    /// (e.g. a fault-injection point) until [`Cloud::clear_env`].
    pub async fn start_env(bin: &Path, extra_args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        Self::start_with(bin, extra_args, "warn", true, env).await
    }

    /// Later (re)starts get no extra environment.
    pub fn clear_env(&mut self) {
        self.env.clear();
    }

    async fn start_with(
        bin: &Path,
        extra_args: &[&str],
        filter: &str,
        capture: bool,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let tmp = tempfile::tempdir()?;
        let log_file = capture.then(|| tmp.path().join("cloud.log"));
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
            s3_port: 0,
            s3_url: String::new(),
            log_filter: filter.to_owned(),
            log_file,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        c.spawn().await?;
        Ok(c)
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
    }

    /// What the process logged so far (empty unless started with
    /// [`Cloud::start_logging`]).
    pub fn log(&self) -> String {
        self.log_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
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
        // The S3 API on its own port (kept across restarts, like the others).
        if !self.extra_args.iter().any(|a| a == "--s3-listen") {
            cmd.arg("--s3-listen")
                .arg(format!("127.0.0.1:{}", self.s3_port));
        }
        // With an external broker there is no gateway listener.
        if !self.extra_args.iter().any(|a| a == "--mqtt-url") {
            cmd.arg("--mqtt-listen")
                .arg(format!("127.0.0.1:{}", self.mqtt_port));
        }
        cmd.args(&self.extra_args)
            .env("RUST_LOG", &self.log_filter)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        if let Some(path) = &self.log_file {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            cmd.stderr(log.try_clone()?).stdout(log);
        }
        let child = cmd.spawn().context("spawning verge cloud")?;
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
                if let Ok(u) = std::fs::read_to_string(self.dir.join("s3.addr")) {
                    self.s3_url = u.trim().to_string();
                    self.s3_port = self
                        .s3_url
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.parse().ok())
                        .unwrap_or(0);
                }
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

    /// Waits (up to 30 s) until every one of `nodes` is Ready.
    pub async fn wait_ready(&self, nodes: &[impl AsRef<str>]) -> Result<()> {
        for n in nodes {
            let n = n.as_ref();
            eventually(
                Duration::from_secs(30),
                &format!("node {n} Ready"),
                async || (self.node_phase(n).await.as_deref() == Some("Ready")).then_some(()),
            )
            .await?;
        }
        Ok(())
    }

    /// A bootstrap token (`id.secret`) good for `uses` joins.
    pub async fn bootstrap_token(&self, uses: u32) -> Result<String> {
        self.bootstrap_token_with(uses, &[]).await
    }

    /// A bootstrap token granting `labels` (`k=v`) to the nodes that join with it (a
    /// node can only ask for labels its token grants).
    pub async fn bootstrap_token_with(&self, uses: u32, labels: &[&str]) -> Result<String> {
        let mut map = serde_json::Map::new();
        for l in labels {
            let (k, v) = l.split_once('=').context("label k=v")?;
            map.insert(k.to_string(), v.into());
        }
        let tok = self
            .api(
                reqwest::Method::POST,
                "/api/v1/tokens",
                Some(serde_json::json!({"role": "bootstrap", "uses": uses, "labels": map})),
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
    /// `RUST_LOG` of the process (`warn` unless started with [`Edge::start_logging`]).
    log_filter: String,
    /// Where its stderr goes, when captured ([`Edge::log`]).
    log_file: Option<PathBuf>,
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

    /// `verge-edge join` (which must succeed), then `verge-edge run` with `args`.
    pub fn join_and_start(
        bin: &Path,
        cloud: &Cloud,
        token: &str,
        name: &str,
        labels: &[&str],
        data_dir: &Path,
        args: &[&str],
    ) -> Result<Self> {
        let out = Self::join(bin, cloud, token, name, labels, data_dir)?;
        anyhow::ensure!(
            out.status.success(),
            "verge-edge join {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self::start(bin, data_dir, args)
    }

    pub fn start(bin: &Path, data_dir: &Path, args: &[&str]) -> Result<Self> {
        Self::start_with(bin, data_dir, args, "warn", None)
    }

    /// Like [`Edge::start`], with `RUST_LOG=filter` and its log (stdout and stderr)
    /// appended to `DATA_DIR.log` beside the data dir, for tests about what the node
    /// logs ([`Edge::log`]).
    pub fn start_logging(bin: &Path, data_dir: &Path, args: &[&str], filter: &str) -> Result<Self> {
        let mut log = data_dir.as_os_str().to_owned();
        log.push(".log");
        Self::start_with(bin, data_dir, args, filter, Some(PathBuf::from(log)))
    }

    fn start_with(
        bin: &Path,
        data_dir: &Path,
        args: &[&str],
        filter: &str,
        log_file: Option<PathBuf>,
    ) -> Result<Self> {
        let mut e = Edge {
            bin: bin.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            args: args.iter().map(|s| s.to_string()).collect(),
            child: None,
            log_filter: filter.to_owned(),
            log_file,
        };
        e.spawn()?;
        Ok(e)
    }

    /// What the process logged so far (empty unless started with
    /// [`Edge::start_logging`]).
    pub fn log(&self) -> String {
        self.log_file
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn spawn(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run")
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("RUST_LOG", &self.log_filter)
            .stdin(Stdio::null());
        if let Some(path) = &self.log_file {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            cmd.stderr(log.try_clone()?).stdout(log);
        }
        self.child = Some(cmd.spawn().context("spawning verge-edge run")?);
        Ok(())
    }

    /// Whether the process is still running (`false` once it exited or was killed).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    pub fn kill9(&mut self) -> Result<()> {
        sigkill(&mut self.child)
    }

    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// The running `verge-edge run` process' id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
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

// ---------------------------------------------------------------------------------------
// Docker: a private `dockerd` and a `docker-registry`, each on its own temp dir, and a
// busybox image built locally (nothing is pulled from the internet).

/// The Debian package that provides a missing component, as an error. Under `CI=true` a
/// missing component fails the run like anywhere else; the message says so.
fn missing(what: &str, package: &str) -> anyhow::Error {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    anyhow::anyhow!(
        "{what} not found: install Debian's {package} (`apt-get install {package}`; \
         scripts/test does it when run as root){}",
        if ci { " — required in CI" } else { "" }
    )
}

/// `name` on PATH or in one of `dirs`.
fn find_program(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(dirs.iter().map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// A free loopback TCP port (bound, then released).
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The last `n` lines of a log file, for error messages.
fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// SIGTERM, up to `grace` for a clean exit, then SIGKILL; reaped either way.
fn terminate(child: &mut Option<Child>, grace: Duration) {
    let Some(mut ch) = child.take() else { return };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(ch.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = ch.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = ch.kill();
    let _ = ch.wait();
}

/// A private Docker engine: `dockerd` with its own data root, exec root and unix socket
/// in a short temp dir under `/tmp` (unix socket paths are limited to 108 bytes), `vfs`
/// storage, no iptables rules and no bridge (containers use `--network host`) unless
/// [`Dockerd::start_bridged`] gives them one of their own. Stopped
/// (SIGTERM, then SIGKILL) on drop. Needs root and Debian's `docker.io`.
pub struct Dockerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    socket: PathBuf,
    /// A bridge made for this daemon by [`Dockerd::start_bridged`], deleted on drop.
    bridge: Option<String>,
}

impl Dockerd {
    /// Starts the daemon and waits until `/_ping` answers (60 s at most).
    pub async fn start() -> Result<Dockerd> {
        Self::start_with(&["--bridge=none"], None).await
    }

    /// Like [`Dockerd::start`], but containers get their own network namespace on a
    /// bridge, as with a stock dockerd's `docker0`: `bridge` is created here with
    /// `host_cidr` (`10.213.0.1/24`) as the host's address and the containers' gateway,
    /// replaced if a crashed run left it, and deleted on drop. No iptables rules (the
    /// host reaches containers on the bridge; containers reach nothing beyond it), and
    /// `docker0` is not touched. Needs iproute2's `ip`.
    pub async fn start_bridged(bridge: &str, host_cidr: &str) -> Result<Dockerd> {
        let ip = find_program("ip", &["/usr/sbin", "/sbin", "/usr/bin"])
            .ok_or_else(|| missing("ip", "iproute2"))?;
        let ip_cmd = |args: &[&str]| -> Result<()> {
            let out = Command::new(&ip)
                .args(args)
                .output()
                .context("running ip")?;
            anyhow::ensure!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            Ok(())
        };
        let _ = Command::new(&ip)
            .args(["link", "del", bridge])
            .stderr(Stdio::null())
            .status();
        ip_cmd(&["link", "add", bridge, "type", "bridge"])?;
        let made = async {
            ip_cmd(&["addr", "add", host_cidr, "dev", bridge])?;
            ip_cmd(&["link", "set", bridge, "up"])?;
            let flag = format!("--bridge={bridge}");
            Self::start_with(&[&flag], Some(bridge.to_string())).await
        }
        .await;
        if made.is_err() {
            let _ = ip_cmd(&["link", "del", bridge]);
        }
        made
    }

    async fn start_with(network: &[&str], bridge: Option<String>) -> Result<Dockerd> {
        let bin = find_program("dockerd", &["/usr/sbin", "/sbin", "/usr/bin"])
            .ok_or_else(|| missing("dockerd", "docker.io"))?;
        find_program("docker", &["/usr/bin", "/usr/local/bin"])
            .ok_or_else(|| missing("the docker CLI", "docker.io"))?;
        let dir = tempfile::Builder::new().prefix("vd").tempdir_in("/tmp")?;
        let d = dir.path();
        let socket = d.join("docker.sock");
        // Our own (empty) config: the host's /etc/docker/daemon.json may set `hosts`.
        std::fs::write(d.join("daemon.json"), "{}")?;
        let log_path = d.join("dockerd.log");
        let log = std::fs::File::create(&log_path)?;
        let child = Command::new(&bin)
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("root"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--storage-driver",
                "vfs",
                "--iptables=false",
                "--shutdown-timeout",
                "3",
            ])
            .args(network)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut dockerd = Dockerd {
            child: Some(child),
            dir,
            socket,
            bridge,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(ch) = dockerd.child.as_mut()
                && let Some(status) = ch.try_wait()?
            {
                dockerd.child = None;
                bail!(
                    "dockerd exited during start-up ({status}); its log ends:\n{}",
                    log_tail(&log_path, 20)
                );
            }
            if ping(&dockerd.socket).await {
                return Ok(dockerd);
            }
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not answer /_ping in 60s; its log ends:\n{}",
                    log_tail(&log_path, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The daemon's unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `unix://SOCKET`, for `DOCKER_HOST`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Runs the docker CLI against this daemon; its stdout (trimmed), or an error with
    /// its stderr.
    pub async fn docker(&self, args: &[&str]) -> Result<String> {
        let cli = find_program("docker", &["/usr/bin", "/usr/local/bin"])
            .ok_or_else(|| missing("the docker CLI", "docker.io"))?;
        let out = tokio::process::Command::new(cli)
            .args(args)
            .env("DOCKER_HOST", self.host())
            // Not the user's config (credential helpers, contexts).
            .env("DOCKER_CONFIG", self.dir.path().join("cli"))
            .stdin(Stdio::null())
            .output()
            .await
            .context("running docker")?;
        anyhow::ensure!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// `docker import TAR TAG`: an image from a root file system tarball.
    pub async fn build_image(&self, tag: &str, tar: &Path) -> Result<()> {
        let tar = tar.to_str().context("tarball path is not UTF-8")?;
        self.docker(&["import", tar, tag]).await.map(drop)
    }

    /// `docker push TAG` (a registry on 127.0.0.0/8 is insecure by default: plain HTTP).
    pub async fn push(&self, tag: &str) -> Result<()> {
        self.docker(&["push", tag]).await.map(drop)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // dockerd stops its containers (--shutdown-timeout) and its containerd.
        terminate(&mut self.child, Duration::from_secs(20));
        // It leaves mounts behind (exec/netns/default): unmounted so the temp dir goes.
        unmount_under(self.dir.path());
        if let Some(bridge) = self.bridge.take() {
            let _ = Command::new("ip")
                .args(["link", "del", &bridge])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Lazily unmounts everything mounted below `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = Command::new("umount")
            .args(["--lazy", p])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `GET /_ping` on a Docker socket answers 200.
async fn ping(socket: &Path) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf);
        Some(head.starts_with("HTTP/1.") && head.lines().next()?.contains(" 200 "))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

/// A `docker-registry` (Docker's distribution registry, v2 API) on a free loopback port
/// with its storage in a temp dir. Killed on drop. Needs Debian's `docker-registry`.
pub struct Registry {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    port: u16,
}

impl Registry {
    /// Starts the registry and waits until `/v2/` answers (20 s at most).
    pub async fn start() -> Result<Registry> {
        Self::start_with(None).await
    }

    /// A registry that requires this login (HTTP Basic against an htpasswd file; the
    /// bcrypt hash is made with perl's `crypt`, which Debian's libcrypt supports).
    pub async fn start_with_login(user: &str, password: &str) -> Result<Registry> {
        Self::start_with(Some((user, password))).await
    }

    async fn start_with(login: Option<(&str, &str)>) -> Result<Registry> {
        let bin = find_program("docker-registry", &["/usr/bin"])
            .ok_or_else(|| missing("docker-registry", "docker-registry"))?;
        let dir = tempfile::Builder::new().prefix("vreg").tempdir()?;
        let log_path = dir.path().join("registry.log");
        let mut auth = String::new();
        if let Some((user, password)) = login {
            let out = Command::new("perl")
                .args([
                    "-e",
                    "print crypt($ARGV[0], '$2b$05$' . $ARGV[1])",
                    password,
                    "vergeregistrytestsaltu",
                ])
                .output()
                .context("running perl for an htpasswd hash")?;
            let hash = String::from_utf8_lossy(&out.stdout).to_string();
            anyhow::ensure!(
                hash.starts_with("$2b$"),
                "no bcrypt from perl crypt: {hash}"
            );
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n"))?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: verge-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        // A port taken between our probe and the registry's bind: try another.
        let mut last_err = anyhow::anyhow!("docker-registry did not start");
        for _ in 0..3 {
            let port = free_port()?;
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    \
                     rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                    dir.path().join("data").display()
                ),
            )?;
            let log = std::fs::File::create(&log_path)?;
            let mut child = Some(
                Command::new(&bin)
                    .arg("serve")
                    .arg(&config)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("spawning {}", bin.display()))?,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(ch) = child.as_mut()
                    && let Some(status) = ch.try_wait()?
                {
                    last_err = anyhow::anyhow!(
                        "docker-registry exited during start-up ({status}); its log ends:\n{}",
                        log_tail(&log_path, 20)
                    );
                    break;
                }
                if registry_answers(port).await {
                    return Ok(Registry {
                        child,
                        _dir: dir,
                        port,
                    });
                }
                if Instant::now() > deadline {
                    terminate(&mut child, Duration::from_secs(1));
                    bail!(
                        "docker-registry did not answer on 127.0.0.1:{port} in 20s; its log ends:\n{}",
                        log_tail(&log_path, 20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Err(last_err)
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// `GET /v2/` on a loopback port answers 200, or 401 when it wants a login (the
/// registry's API check).
async fn registry_answers(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: registry\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let head = String::from_utf8_lossy(&buf);
        let status = head.lines().next()?;
        Some(status.contains(" 200 ") || status.contains(" 401 "))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Some(true))
    )
}

/// Builds `dir/busybox.tar`: a root file system holding the host's static busybox
/// (`/usr/bin/busybox`, Debian's busybox-static) as `/bin/busybox` with a symlink per
/// applet (`sh`, `sleep`, `cat`, `dd`, `httpd` ...), for `docker import`.
pub fn busybox_image_tar(dir: &Path) -> Result<PathBuf> {
    let busybox = ["/usr/bin/busybox", "/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| find_program("busybox", &[]))
        .ok_or_else(|| missing("busybox", "busybox-static"))?;
    anyhow::ensure!(
        !elf_is_dynamic(&busybox)?,
        "{} is dynamically linked: it cannot run alone in an image; install Debian's \
         busybox-static",
        busybox.display()
    );
    let root = dir.join("busybox-rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["dev", "proc", "sys", "etc", "root", "tmp", "var/tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(&busybox, bin.join("busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    let list = Command::new(&busybox)
        .arg("--list")
        .output()
        .with_context(|| format!("{} --list", busybox.display()))?;
    anyhow::ensure!(list.status.success(), "{} --list failed", busybox.display());
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    let tar = dir.join("busybox.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .context("running tar")?;
    anyhow::ensure!(status.success(), "tar of {} failed", root.display());
    Ok(tar)
}

/// A 64-bit little-endian ELF file with a `PT_INTERP` segment (a dynamic loader).
/// Anything else counts as static.
fn elf_is_dynamic(path: &Path) -> Result<bool> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Ok(false);
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into()?) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    const PT_INTERP: u32 = 3;
    Ok((0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        b.get(o..o + 4)
            .is_some_and(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == PT_INTERP)
    }))
}

#[cfg(test)]
mod docker_tests {
    use super::*;

    #[test]
    fn tells_static_from_dynamic_executables() {
        // A Rust test binary on glibc has a loader.
        let me = std::env::current_exe().unwrap();
        assert!(elf_is_dynamic(&me).unwrap());
        if Path::new("/usr/bin/busybox").is_file() {
            assert!(!elf_is_dynamic(Path::new("/usr/bin/busybox")).unwrap());
        }
        assert!(!elf_is_dynamic(Path::new("/etc/hostname")).unwrap_or(false));
    }
}

// ---------------------------------------------------------------------------------
// Apps end to end: the helpers the apps tests share.

/// `verge ARGS` against `cloud` with its admin config.
pub fn verge_cli(bin: &Path, cloud: &Cloud, args: &[&str]) -> Result<std::process::Output> {
    Ok(Command::new(bin)
        .args(args)
        .env("VERGE_CONFIG", cloud.admin_config())
        .env("RUST_LOG", "off")
        .output()?)
}

/// Stdout of a command that must have succeeded (else a panic with both streams).
pub fn success(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An App `name` at `version` running `workload`, with `extra` merged into its spec.
pub fn app_object(
    name: &str,
    version: &str,
    workload: serde_json::Value,
    extra: serde_json::Value,
) -> serde_json::Value {
    let mut spec = serde_json::json!({"version": version, "workload": workload});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            s.insert(k.clone(), v.clone());
        }
    }
    serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "App",
        "metadata": {"name": name}, "spec": spec})
}

/// The instances an App's status reports on `node`.
pub fn app_instances<'a>(app: &'a serde_json::Value, node: &str) -> Vec<&'a serde_json::Value> {
    app["status"]["instances"]
        .as_array()
        .map(|l| l.iter().filter(|i| i["node"] == node).collect())
        .unwrap_or_default()
}

/// A condition of an App's status by type.
pub fn app_condition<'a>(app: &'a serde_json::Value, kind: &str) -> Option<&'a serde_json::Value> {
    app["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// What [`Cloud::follow_rollout`] saw: nodes on the new version each time that number
/// changed, and the steps (`1/2 (33%)`) in the order they came.
#[derive(Debug, Default)]
pub struct RolloutSeen {
    pub counts: Vec<usize>,
    pub steps: Vec<String>,
}

impl RolloutSeen {
    /// The release went through `steps` in order, starting with `first` nodes on the
    /// new version, never narrowing, and ending on all `nodes`.
    pub fn assert_in_order(&self, first: usize, nodes: usize, steps: &[&str]) {
        let seen = &self.counts;
        assert_eq!(
            seen.first(),
            Some(&first),
            "the first step's canaries: {seen:?}"
        );
        assert_eq!(seen.last(), Some(&nodes), "{seen:?}");
        assert!(
            seen.windows(2).all(|w| w[0] <= w[1]),
            "never narrows: {seen:?}"
        );
        assert_eq!(self.steps, steps);
    }
}

impl Cloud {
    /// The `/metrics` text (Prometheus), read with the admin token.
    pub async fn metrics(&self) -> Result<String> {
        Ok(self
            .client()?
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await?
            .text()
            .await?)
    }

    /// The value of one sample (`name{labels}`, exactly as exposed), 0 when absent.
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let text = self.metrics().await?;
        let key = format!("{sample} ");
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// Creates the object, or replaces it when it exists (`plural`: `apps`, ...).
    pub async fn apply(&self, plural: &str, obj: &serde_json::Value) -> Result<()> {
        let name = obj["metadata"]["name"].as_str().context("metadata.name")?;
        let path = format!("/api/v1/{plural}/{name}");
        let cur = self
            .client()?
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token)
            .send()
            .await?;
        if cur.status() == reqwest::StatusCode::NOT_FOUND {
            self.api(
                reqwest::Method::POST,
                &format!("/api/v1/{plural}"),
                Some(obj.clone()),
            )
            .await?;
        } else {
            self.api(reqwest::Method::PUT, &path, Some(obj.clone()))
                .await?;
        }
        Ok(())
    }

    /// `n` tasks dispatched to `node` that it will not answer during a test: a
    /// Function `hold` (the builtin `sleep`, placed by `selector`) is deployed and
    /// checked with one short call on `node`, then each task sleeps (one at a time, the
    /// first for 15 minutes, its function's longest timeout; an attempt may take two
    /// hours) and waits in the node's queue. Their ids, in creation order, for
    /// results handed in with [`Edge::result`] (the cloud takes a node's result only
    /// for a task dispatched to it).
    pub async fn held_tasks(
        &self,
        node: &str,
        selector: serde_json::Value,
        n: usize,
    ) -> Result<Vec<String>> {
        self.apply(
            "functions",
            &serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "Function",
                "metadata": {"name": "hold"},
                "spec": {"runtime": "builtin", "handler": "sleep",
                    "resources": {"timeoutSeconds": 900},
                    "placement": {"nodeSelector": selector}}}),
        )
        .await?;
        let invoke = format!("/api/v1/functions/hold/invoke?node={node}&timeoutSeconds=10");
        let mut last = None;
        eventually(
            Duration::from_secs(60),
            "hold placed on the node",
            async || {
                let r = self
                    .api(
                        reqwest::Method::POST,
                        &invoke,
                        Some(serde_json::json!({"ms": 1})),
                    )
                    .await;
                r.map_err(|e| last = Some(e)).ok()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}; last answer: {last:?}"))?;
        let mut ids = Vec::new();
        for _ in 0..n {
            let r = self
                .api(
                    reqwest::Method::POST,
                    "/api/v1/tasks",
                    Some(
                        serde_json::json!({"function": "hold", "input": {"ms": 3_600_000},
                        "target": {"node": node}, "timeoutSeconds": 7200, "maxAttempts": 1}),
                    ),
                )
                .await?;
            ids.push(r["taskId"].as_str().context("taskId")?.to_string());
        }
        for id in &ids {
            eventually(Duration::from_secs(30), "task dispatched", async || {
                let t = self
                    .api(reqwest::Method::GET, &format!("/api/v1/tasks/{id}"), None)
                    .await
                    .ok()?;
                (t["status"]["phase"] == "Dispatched").then_some(())
            })
            .await?;
        }
        Ok(ids)
    }

    /// `GET /api/v1/apps/NAME`.
    pub async fn app(&self, name: &str) -> Result<serde_json::Value> {
        self.api(reqwest::Method::GET, &format!("/api/v1/apps/{name}"), None)
            .await
    }

    /// Polls App `name` until `version` is Complete on `nodes` nodes, recording the
    /// counts and steps on the way.
    pub async fn follow_rollout(
        &self,
        name: &str,
        version: &str,
        nodes: usize,
        timeout: Duration,
    ) -> Result<RolloutSeen> {
        let mut seen = RolloutSeen::default();
        eventually(
            timeout,
            &format!("{name} {version} on every node"),
            async || {
                let a = self.app(name).await.ok()?;
                let on = a["status"]["rollout"]["nodes"]
                    .as_object()?
                    .values()
                    .filter(|v| *v == version)
                    .count();
                if on > 0 && seen.counts.last() != Some(&on) {
                    seen.counts.push(on);
                }
                let step = a["status"]["step"].as_str()?.to_string();
                if a["status"]["targetVersion"] == version && seen.steps.last() != Some(&step) {
                    seen.steps.push(step);
                }
                (a["status"]["phase"] == "Complete"
                    && a["status"]["version"] == version
                    && on == nodes)
                    .then_some(())
            },
        )
        .await?;
        Ok(seen)
    }
}

/// What a [`webhook_receiver`] got: (lowercased head, body) of each request.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<u8>)>>>;

/// A webhook receiver in the test process (it outlives a killed cloud): a plain TCP
/// listener answering every HTTP request 204 and keeping (head, body) of each; its URL
/// is `http://127.0.0.1:PORT/hook`.
pub async fn webhook_receiver() -> Result<(String, Received)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let got: Received = Default::default();
    let seen = got.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                let (head, body_start) = loop {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break (String::from_utf8_lossy(&buf[..i]).to_lowercase(), i + 4);
                    }
                };
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < body_start + len {
                    let Ok(n) = sock.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                seen.lock()
                    .unwrap()
                    .push((head, buf[body_start..body_start + len].to_vec()));
                let _ = sock
                    .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
            });
        }
    });
    Ok((url, got))
}
