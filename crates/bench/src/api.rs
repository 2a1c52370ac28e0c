//! `verge bench api`: measures a running control plane from a separate process.
//!
//! 1. Durable small-object creates/s: `--concurrency` workers POST `--creates` Configs
//!    (placed on no node: only the store and the API are measured; a Task would have to
//!    name an existing Function and would start an execution).
//! 2. Watch delivery latency: `--watchers` streams (one HTTP/1.1 TLS connection each)
//!    watch `apps`; a writer creates `--watch-writes` Apps at `--watch-rate`/s, each
//!    stamped with its send time; every watcher records send→receive per event.
//!
//! By default it starts its own `verge cloud` child on a temporary data dir (so the
//! figures are reproducible); `--use-config` targets the server in the CLI config.
//! Any failed create, watch that did not open or event not delivered makes it exit
//! non-zero after the report (a benchmark of failures measures nothing).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use hdrhistogram::Histogram;
use reqwest::Method;
use verge_api::Kind;
use verge_cloud::ClientConfig;

use verge_client::Client;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiBenchArgs {
    /// Objects created in the write phase.
    #[arg(long, default_value_t = 20_000)]
    pub creates: u64,
    /// Concurrent writers in the write phase.
    #[arg(long, default_value_t = 64)]
    pub concurrency: u64,
    /// Open watch streams in the watch phase.
    #[arg(long, default_value_t = 1000)]
    pub watchers: u64,
    /// Writes observed by every watcher.
    #[arg(long, default_value_t = 200)]
    pub watch_writes: u64,
    /// Write rate during the watch phase (per second).
    #[arg(long, default_value_t = 20)]
    pub watch_rate: u64,
    /// Use the server from the CLI config instead of starting one.
    #[arg(long)]
    pub use_config: bool,
    /// Skip the watch phase.
    #[arg(long)]
    pub no_watch: bool,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A `verge cloud` started by a benchmark on a temporary data dir (killed on drop).
pub(crate) struct Child {
    pub(crate) child: tokio::process::Child,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) config: ClientConfig,
}

/// Starts `verge cloud` on loopback with connection caps for `watchers` streams.
pub(crate) async fn start_server(watchers: u64) -> Result<Child> {
    start_server_with(watchers, &[]).await
}

/// [`start_server`] with more `verge cloud` arguments.
pub(crate) async fn start_server_with(watchers: u64, extra: &[&str]) -> Result<Child> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let exe = std::env::current_exe().context("locating the verge binary")?;
    // Every watcher is one connection from 127.0.0.1 with the admin token: past the
    // default caps per address and per token.
    let per_ip = (watchers + 256).to_string();
    let per_token = (watchers + 16).to_string();
    let total = (watchers + 512).max(4096).to_string();
    let child = tokio::process::Command::new(exe)
        .args(["cloud", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--mqtt-listen", "127.0.0.1:0"])
        .args(["--max-connections-per-ip", &per_ip])
        .args(["--max-watches-per-token", &per_token])
        .args(["--max-connections", &total])
        .args(extra)
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .context("starting verge cloud")?;
    let cfg_path = dir.path().join(verge_cloud::files::ADMIN_CONFIG);
    for _ in 0..500 {
        if cfg_path.exists() {
            let cfg = ClientConfig::load(&cfg_path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let c = Client::new(&cfg)?;
            if c.list(Kind::App, None).await.is_ok() {
                return Ok(Child {
                    child,
                    dir,
                    config: cfg,
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("verge cloud did not become ready")
}

/// Resident set size of a process, from /proc.
pub(crate) fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub async fn run(args: ApiBenchArgs, config: Option<ClientConfig>) -> Result<()> {
    let (server, cfg) = if args.use_config {
        (None, config.context("--use-config needs a CLI config")?)
    } else {
        let s = start_server(args.watchers).await?;
        let cfg = s.config.clone();
        (Some(s), cfg)
    };
    let pid = server.as_ref().and_then(|s| s.child.id());
    outln!(
        "server: {} ({})",
        cfg.server,
        if server.is_some() {
            "started by the benchmark"
        } else {
            "from config"
        }
    );
    let run_id = format!("{:x}", now_ns() % 0xffff_ffff);

    // Phase 1: durable creates.
    let client = Client::new(&cfg)?;
    let next = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, hist, errors, run_id) = (
            client.clone(),
            next.clone(),
            hist.clone(),
            errors.clone(),
            run_id.clone(),
        );
        let total = args.creates;
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let body = serde_json::json!({
                    "apiVersion": "verge.dev/v1", "kind": "Config",
                    "metadata": {"name": format!("b{run_id}-{i}"), "labels": {"bench": "api"}},
                    "spec": {"data": {"i": i.to_string()},
                        "placement": {"nodeSelector": {"bench": "none"}}}
                });
                let t = Instant::now();
                let r: verge_client::Result<serde_json::Value> = client
                    .send_json(Method::POST, "/api/v1/configs", Some(&body))
                    .await;
                match r {
                    Ok(_) => {
                        let _ = local.record(t.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("create failed: {e:#}");
                        }
                    }
                }
            }
            if let Ok(mut h) = hist.lock() {
                let _ = h.add(&local);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let elapsed = start.elapsed();
    let h = hist
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let ok = h.len();
    outln!(
        "creates: {ok} ok, {} failed in {:.2}s = {:.0} writes/s (concurrency {}); latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        errors.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        ok as f64 / elapsed.as_secs_f64(),
        args.concurrency,
        ms(&h, 0.5),
        ms(&h, 0.99),
        h.max() as f64 / 1000.0
    );
    if let Some(kib) = rss_kib(pid) {
        outln!("server RSS after writes: {} MiB", kib / 1024);
    }
    let failed = errors.load(Ordering::Relaxed);
    if failed > 0 {
        bail!(
            "{failed} of {} creates failed (the first error is above)",
            args.creates
        );
    }
    if args.no_watch {
        return Ok(());
    }

    // Phase 2: watch delivery latency.
    // Configs (no controller writes their status: the watchers see only these writes),
    // from the revision after the write phase.
    let list = client.list(Kind::Config, Some("bench=none")).await?;
    let rv = list.metadata.resource_version.clone();
    let watch_client = Client::with_builder(
        &cfg,
        reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(0),
    )?;
    let received = Arc::new(AtomicU64::new(0));
    let opened = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(std::sync::Mutex::new(Histogram::<u64>::new(3)?));
    let expected = args.watch_writes;
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let (c, rv, received, opened, lat) = (
            watch_client.clone(),
            rv.clone(),
            received.clone(),
            opened.clone(),
            lat.clone(),
        );
        watchers.push(tokio::spawn(async move {
            let resp = match c.watch(Kind::Config, None, Some(&rv)).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("watch failed: {e}");
                    return;
                }
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let mut local = Histogram::<u64>::new(3).expect("histogram");
            let mut stream = resp.bytes_stream();
            let mut buf = Vec::new();
            let mut n = 0;
            let marker = b"\"bench.verge.dev/sent-ns\":\"";
            while n < expected {
                let Some(Ok(chunk)) = stream.next().await else {
                    break;
                };
                let now = now_ns();
                buf.extend_from_slice(&chunk);
                while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    if let Some(i) = line.windows(marker.len()).position(|w| w == marker) {
                        let rest = &line[i + marker.len()..];
                        let end = rest.iter().position(|b| *b == b'"').unwrap_or(0);
                        if let Some(sent) = std::str::from_utf8(&rest[..end])
                            .ok()
                            .and_then(|s| s.parse::<u64>().ok())
                        {
                            let _ = local.record(now.saturating_sub(sent) / 1000);
                        }
                    }
                    n += 1;
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(mut h) = lat.lock() {
                let _ = h.add(&local);
            }
        }));
    }
    let open_deadline = Instant::now() + Duration::from_secs(120);
    while opened.load(Ordering::Relaxed) < args.watchers && Instant::now() < open_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open = opened.load(Ordering::Relaxed);
    outln!("watchers open: {open}/{}", args.watchers);
    if let Some(kib) = rss_kib(pid) {
        outln!("server RSS with {open} watches: {} MiB", kib / 1024);
    }
    let interval = Duration::from_secs_f64(1.0 / args.watch_rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    for i in 0..args.watch_writes {
        tick.tick().await;
        let body = serde_json::json!({
            "apiVersion": "verge.dev/v1", "kind": "Config",
            "metadata": {"name": format!("w{run_id}-{i}"),
                "annotations": {"bench.verge.dev/sent-ns": now_ns().to_string()}},
            "spec": {"data": {"n": i.to_string()}, "placement": {"nodeSelector": {"bench": "none"}}}
        });
        let _: serde_json::Value = client
            .send_json(Method::POST, "/api/v1/configs", Some(&body))
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while received.load(Ordering::Relaxed) < open * expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for w in &watchers {
        w.abort();
    }
    for w in watchers {
        let _ = w.await;
    }
    let h = lat.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    outln!(
        "watch: {} of {} events delivered to {open} watchers ({} writes at {}/s); latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        received.load(Ordering::Relaxed),
        open * expected,
        args.watch_writes,
        args.watch_rate,
        ms(&h, 0.5),
        ms(&h, 0.9),
        ms(&h, 0.99),
        h.max() as f64 / 1000.0
    );
    if let Some(mut s) = server {
        let _ = s.child.kill().await;
    }
    let delivered = received.load(Ordering::Relaxed);
    if open < args.watchers || delivered < args.watchers * expected {
        bail!(
            "{open} of {} watches opened, {delivered} of {} events delivered",
            args.watchers,
            args.watchers * expected
        );
    }
    Ok(())
}
