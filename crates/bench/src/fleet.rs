//! `verge bench fleet --nodes N`: N simulated edge agents in this process against a
//! `verge cloud` child, over the real protocol: every node joins through
//! `POST /api/v1/join` with its own key and CSR (so every certificate comes from the
//! cluster CA), then connects over mutual-TLS MQTT, says `hello`, heartbeats, applies
//! desired state and acks — as `verge-edge` does, minus the disk.
//!
//! Reports: joins/s, time to connect all, cloud RSS per connected node, heartbeat
//! ingest rate, time until a Config change is applied by every node (p50/p99/max),
//! recovery after a kill -9 and restart of the cloud (reconnect storm), and nodes
//! wrongly marked NotReady. Connections are spread over several loopback destination
//! addresses (127.0.0.1..N) so more than the ~28k ephemeral ports fit.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use verge_api::Kind;
use verge_cloud::ClientConfig;
use verge_proto::{
    Ack, Channel, Heartbeat, Hello, InstanceState, InstanceStatus, Message, NodeStatus,
};

use verge_client::Client;

#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// Simulated nodes.
    #[arg(long, default_value_t = 1000)]
    pub nodes: usize,
    /// Heartbeat period of every node (the cloud is told the same).
    #[arg(long, default_value = "15s")]
    pub heartbeat_interval: String,
    /// Concurrent joins.
    #[arg(long, default_value_t = 32)]
    pub join_concurrency: usize,
    /// Connections started per second.
    #[arg(long, default_value_t = 1000)]
    pub connect_rate: u64,
    /// Loopback destination addresses to spread connections over.
    #[arg(long, default_value_t = 8)]
    pub loopback_addrs: u8,
    /// How long to measure heartbeat ingest.
    #[arg(long, default_value = "30s")]
    pub observe: String,
    /// Skip the cloud restart phase.
    #[arg(long)]
    pub skip_restart: bool,
    /// Also time a gray release (an App v1 to every node, then v2 in steps
    /// 10% → 50% → 100%); the simulated nodes report the version they are told to run
    /// as Running and healthy, as real agents do.
    #[arg(long)]
    pub gray_release: bool,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Verifies the server chain against the CA but checks the name `127.0.0.1`
/// whatever loopback address we dialled (the gateway's certificate names 127.0.0.1).
#[derive(Debug)]
struct LoopbackName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for LoopbackName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let name =
            ServerName::try_from("127.0.0.1").map_err(|_| rustls::Error::General("name".into()))?;
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Default)]
struct Stats {
    connected: AtomicUsize,
    connacks: AtomicU64,
    refused: AtomicU64,
    /// Unix ms when the probe Config was applied in the cloud (0 = not yet).
    probe_at_ms: AtomicI64,
    probe_stamp: Mutex<String>,
    probe_latency_ms: Mutex<Vec<u64>>,
}

struct NodeCreds {
    name: String,
    tls: Arc<rustls::ClientConfig>,
}

struct CloudChild {
    child: tokio::process::Child,
    dir: std::path::PathBuf,
    args: Vec<String>,
}

impl CloudChild {
    async fn start(dir: &std::path::Path, args: Vec<String>) -> Result<(Self, ClientConfig, u16)> {
        let exe = std::env::current_exe()?;
        let _ = std::fs::remove_file(dir.join(verge_cloud::files::MQTT_ADDR));
        let child = tokio::process::Command::new(exe)
            .arg("cloud")
            .arg("--data-dir")
            .arg(dir)
            .args(&args)
            .env("RUST_LOG", "error")
            .kill_on_drop(true)
            .spawn()
            .context("starting verge cloud")?;
        let mut c = CloudChild {
            child,
            dir: dir.to_path_buf(),
            args,
        };
        let (cfg, port) = c.wait_ready().await?;
        Ok((c, cfg, port))
    }

    async fn wait_ready(&mut self) -> Result<(ClientConfig, u16)> {
        for _ in 0..3000 {
            let mqtt = std::fs::read_to_string(self.dir.join(verge_cloud::files::MQTT_ADDR)).ok();
            let cfg = ClientConfig::load(&self.dir.join(verge_cloud::files::ADMIN_CONFIG)).ok();
            if let (Some(m), Some(cfg)) = (mqtt, cfg)
                && let Ok(c) = Client::new(&cfg)
                && c.list(Kind::Config, None).await.is_ok()
            {
                let port = m
                    .trim()
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .context("mqtt port")?;
                return Ok((cfg, port));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("verge cloud did not become ready")
    }

    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    async fn kill9(&mut self) {
        let _ = self.child.kill().await;
    }

    async fn restart(&mut self) -> Result<()> {
        self.kill9().await;
        let (c, _, _) = Self::start(&self.dir.clone(), self.args.clone()).await?;
        *self = c;
        Ok(())
    }
}

pub async fn run(args: FleetArgs) -> Result<()> {
    let hb = verge_client::parse_duration(&args.heartbeat_interval)?;
    let observe = verge_client::parse_duration(&args.observe)?;
    let dir = tempfile::tempdir()?;
    // Fixed ports so the restart phase comes back on the same addresses.
    let api_port = free_port()?;
    let mqtt_port = free_port()?;
    let mut cloud_args = vec![
        "--listen".to_string(),
        format!("127.0.0.1:{api_port}"),
        "--mqtt-listen".to_string(),
        format!("0.0.0.0:{mqtt_port}"),
        "--join-rate".to_string(),
        "1000000".to_string(),
        "--join-rate-global".to_string(),
        "1000000".to_string(),
        "--heartbeat-interval".to_string(),
        args.heartbeat_interval.clone(),
    ];
    // Every simulated node dials from 127.0.0.1, far past the default per-address cap;
    // the API needs few connections, which leaves the gateway the open-file budget.
    let mqtt_cap = (args.nodes + 1000).to_string();
    cloud_args.extend(
        [
            "--mqtt-max-connections",
            &mqtt_cap,
            "--mqtt-max-connections-per-ip",
            &mqtt_cap,
            "--max-connections",
            "256",
        ]
        .map(String::from),
    );
    let (mut cloud, cfg, port) = CloudChild::start(dir.path(), cloud_args).await?;
    let base_rss = crate::api::rss_kib(Some(cloud.pid())).unwrap_or(0);
    println!(
        "cloud: {} (pid {}), mqtt port {port}, baseline RSS {} MiB",
        cfg.server,
        cloud.pid(),
        base_rss / 1024
    );
    let client = Client::new(&cfg)?;
    let ca_pem = cfg.certificate_authority_data.clone().context("no CA")?;

    // 1. Join every node through the real endpoint.
    let tok: serde_json::Value = client
        .send_json(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(&serde_json::json!({"role": "bootstrap", "ttlSeconds": 86400, "labels": {"fleet": "bench"}})),
        )
        .await?;
    let token = tok["token"].as_str().context("token")?.to_string();
    let t = Instant::now();
    let creds = join_all(
        &client,
        &cfg,
        &ca_pem,
        &token,
        args.nodes,
        args.join_concurrency,
    )
    .await?;
    let join_secs = t.elapsed().as_secs_f64();
    println!(
        "joined {} nodes in {:.1}s ({:.0} joins/s)",
        creds.len(),
        join_secs,
        creds.len() as f64 / join_secs
    );

    // 2. Connect all.
    let stats = Arc::new(Stats::default());
    let t = Instant::now();
    let mut agents = Vec::with_capacity(creds.len());
    let pace = Duration::from_secs_f64(1.0 / args.connect_rate.max(1) as f64);
    let mut tick = tokio::time::interval(pace);
    for (i, c) in creds.into_iter().enumerate() {
        tick.tick().await;
        let ip = std::net::Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % args.loopback_addrs.max(1) as usize) as u8,
        );
        agents.push(tokio::spawn(agent(
            c,
            SocketAddr::from((ip, port)),
            hb,
            stats.clone(),
        )));
    }
    while stats.connected.load(Ordering::Relaxed) < agents.len() {
        if t.elapsed() > Duration::from_secs(600) {
            bail!(
                "only {} of {} connected after 600s",
                stats.connected.load(Ordering::Relaxed),
                agents.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = t.elapsed().as_secs_f64();
    println!("connected {} nodes in {:.1}s", agents.len(), connect_secs);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss = crate::api::rss_kib(Some(cloud.pid())).unwrap_or(0);
    let per_node = (rss.saturating_sub(base_rss)) as f64 * 1024.0 / agents.len() as f64;
    println!(
        "cloud RSS {} MiB with {} nodes: {:.1} KB per node",
        rss / 1024,
        agents.len(),
        per_node / 1000.0
    );

    // 3. Heartbeat ingest, and what the idle fleet costs the cloud: nothing changes
    // but heartbeats, so every controller should be asleep.
    let h0 = metric(&client, "verge_mqtt_messages_total{channel=\"heartbeat\"}").await?;
    let cpu0 = cpu_seconds(cloud.pid());
    tokio::time::sleep(observe).await;
    let cpu1 = cpu_seconds(cloud.pid());
    let h1 = metric(&client, "verge_mqtt_messages_total{channel=\"heartbeat\"}").await?;
    println!(
        "heartbeats ingested: {:.0}/s over {:?} (expected ~{:.0}/s)",
        (h1 - h0) / observe.as_secs_f64(),
        observe,
        agents.len() as f64 / hb.as_secs_f64()
    );
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let used = b - a;
        println!(
            "cloud CPU with {} idle nodes: {:.1}% of one core over {:?} ({:.0} µs per heartbeat)",
            agents.len(),
            100.0 * used / observe.as_secs_f64(),
            observe,
            1e6 * used / (h1 - h0).max(1.0)
        );
    }

    // 4. A Config change reaching every node.
    let stamp = format!("s{}", now_ms());
    *stats
        .probe_stamp
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))? = stamp.clone();
    stats
        .probe_latency_ms
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clear();
    let probe = serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "Config",
        "metadata": {"name": "fleet-probe"}, "spec": {"data": {"stamp": stamp}}});
    stats.probe_at_ms.store(now_ms(), Ordering::Relaxed);
    let _: serde_json::Value = client
        .send_json(reqwest::Method::POST, "/api/v1/configs", Some(&probe))
        .await?;
    let t = Instant::now();
    while stats.probe_latency_ms.lock().map(|v| v.len()).unwrap_or(0) < agents.len()
        && t.elapsed() < Duration::from_secs(120)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut lat = stats
        .probe_latency_ms
        .lock()
        .map(|v| v.clone())
        .unwrap_or_default();
    lat.sort_unstable();
    let q = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "config change applied+acked by {}/{} nodes: p50 {} ms, p99 {} ms, max {} ms",
        lat.len(),
        agents.len(),
        q(0.5),
        q(0.99),
        lat.last().copied().unwrap_or(0)
    );

    let mut failures: Vec<String> = Vec::new();
    if lat.len() < agents.len() {
        failures.push(format!(
            "the config change reached {} of {} nodes",
            lat.len(),
            agents.len()
        ));
    }

    // 5. Gray release of an App across the fleet.
    if args.gray_release {
        gray_release(&client, agents.len()).await?;
    }

    // 6. Cloud restart: reconnect storm.
    if !args.skip_restart {
        let before = stats.connacks.load(Ordering::Relaxed);
        let t = Instant::now();
        cloud.restart().await?;
        let restarted = t.elapsed().as_secs_f64();
        let client = Client::new(&cfg)?;
        let target = before + agents.len() as u64;
        let mut not_ready: HashSet<String> = HashSet::new();
        let mut last_poll = Instant::now() - Duration::from_secs(10);
        while stats.connacks.load(Ordering::Relaxed) < target
            && t.elapsed() < Duration::from_secs(300)
        {
            if last_poll.elapsed() > Duration::from_secs(2) {
                last_poll = Instant::now();
                collect_not_ready(&client, &mut not_ready).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let recovered = t.elapsed().as_secs_f64();
        println!(
            "cloud kill -9 + restart: up again in {restarted:.1}s; {} of {} nodes reconnected after {recovered:.1}s",
            stats.connacks.load(Ordering::Relaxed) - before,
            agents.len()
        );
        // Keep watching for a grace period: nobody should turn NotReady.
        let watch_until = Instant::now() + hb * 4;
        while Instant::now() < watch_until {
            collect_not_ready(&client, &mut not_ready).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        println!("nodes wrongly marked NotReady: {}", not_ready.len());
        let reconnected = stats.connacks.load(Ordering::Relaxed) - before;
        if reconnected < agents.len() as u64 {
            failures.push(format!(
                "{reconnected} of {} nodes reconnected after the restart",
                agents.len()
            ));
        }
        if !not_ready.is_empty() {
            failures.push(format!("{} nodes wrongly marked NotReady", not_ready.len()));
        }
    }
    for a in &agents {
        a.abort();
    }
    cloud.kill9().await;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(())
}

/// Applies `fleet-app` v1, waits until every node runs it, then v2 in steps, and
/// prints how long each took.
async fn gray_release(client: &Client, nodes: usize) -> Result<()> {
    let app = |version: &str| {
        serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "App",
            "metadata": {"name": "fleet-app"},
            "spec": {"version": version,
                "workload": {"docker": {"image": "registry.local/fleet-app:1"}},
                "rollout": {"steps": [{"percent": 10}, {"percent": 50}],
                    "maxUnavailable": 1000, "progressDeadlineSeconds": 600}}})
    };
    let wait = async |version: &str| -> Result<Vec<(String, f64)>> {
        let t = Instant::now();
        let mut steps: Vec<(String, f64)> = Vec::new();
        loop {
            let o = client.get(Kind::App, "fleet-app").await?;
            let s = &o.status;
            // The version being rolled out (`version` is the one served, the old one
            // until the rollout completes).
            if s["targetVersion"] == version {
                let step = s["step"].as_str().unwrap_or("-").to_string();
                if steps.last().map(|x| &x.0) != Some(&step) {
                    steps.push((step, t.elapsed().as_secs_f64()));
                }
                if s["phase"] == "Complete" && s["readyReplicas"].as_u64() == Some(nodes as u64) {
                    steps.push(("complete".into(), t.elapsed().as_secs_f64()));
                    return Ok(steps);
                }
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!(
                    "gray release of {version} not complete after 600s: {}",
                    s["rollout"]["message"]
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let _: serde_json::Value = client
        .send_json(reqwest::Method::POST, "/api/v1/apps", Some(&app("1.0.0")))
        .await?;
    let v1 = wait("1.0.0").await?;
    println!(
        "app v1 to {nodes} nodes: running and healthy everywhere after {:.1}s",
        v1.last().map_or(0.0, |x| x.1)
    );
    let _: serde_json::Value = client
        .send_json(
            reqwest::Method::PUT,
            "/api/v1/apps/fleet-app",
            Some(&app("2.0.0")),
        )
        .await?;
    let v2 = wait("2.0.0").await?;
    let line: Vec<String> = v2.iter().map(|(s, t)| format!("{s} at {t:.1}s")).collect();
    println!(
        "gray release v1 → v2 (10% → 50% → 100%) on {nodes} nodes: {}",
        line.join(", ")
    );
    Ok(())
}

/// What a simulated node reports for the apps it was told to run: each Running and
/// healthy at its version.
fn app_status(apps: &std::collections::BTreeMap<String, String>) -> Message {
    Message::NodeStatus(Box::new(NodeStatus {
        arch: "x86_64".into(),
        os: "bench".into(),
        kernel: "bench".into(),
        cpus: 4,
        memory_bytes: 1 << 30,
        disk_bytes: 1 << 34,
        disk_free_bytes: 1 << 33,
        memory_free_bytes: 1 << 29,
        agent_version: "bench".into(),
        labels: Default::default(),
        capacity: Default::default(),
        conditions: Vec::new(),
        queue: Default::default(),
        applied_revision: 0,
        sent_at_ms: now_ms(),
        apps: apps
            .iter()
            .map(|(app, version)| InstanceStatus {
                healthy: Some(true),
                started_at_ms: Some(now_ms()),
                ..InstanceStatus::new(app.clone(), 0, version.clone(), InstanceState::Running)
            })
            .collect(),
    }))
}

async fn collect_not_ready(client: &Client, seen: &mut HashSet<String>) {
    if let Ok(list) = client.list(Kind::Node, None).await {
        for n in list.items {
            if n.status.get("phase").and_then(|p| p.as_str()) == Some("NotReady") {
                seen.insert(n.metadata.name);
            }
        }
    }
}

async fn metric(client: &Client, name: &str) -> Result<f64> {
    let text = client
        .request(reqwest::Method::GET, "/metrics")
        .send()
        .await?
        .text()
        .await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

/// CPU time (user + system, all threads) process `pid` has used, in seconds; Linux
/// only. `/proc/PID/stat` counts in clock ticks, 100 per second on Linux.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn join_all(
    client: &Client,
    cfg: &ClientConfig,
    ca_pem: &str,
    token: &str,
    n: usize,
    concurrency: usize,
) -> Result<Vec<NodeCreds>> {
    let roots = {
        let mut r = rustls::RootCertStore::empty();
        let mut rd = ca_pem.as_bytes();
        for c in rustls_pemfile::certs(&mut rd) {
            r.add(c?)?;
        }
        Arc::new(r)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()?;
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(LoopbackName { inner: verifier });
    let _ = cfg;
    let results = futures::stream::iter(0..n)
        .map(|i| {
            let client = client.clone();
            let token = token.to_string();
            let verifier = verifier.clone();
            let provider = provider.clone();
            async move {
                let name = format!("sim-{i:06}");
                let key = rcgen::KeyPair::generate()?;
                let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
                params.distinguished_name.push(rcgen::DnType::CommonName, name.clone());
                let csr = params.serialize_request(&key)?.pem()?;
                let body = serde_json::json!({"token": token, "name": name, "csr": csr, "labels": {"fleet": "bench"}});
                let r = client
                    .request(reqwest::Method::POST, "/api/v1/join")
                    .json(&body)
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("join {name}: {}", r.text().await.unwrap_or_default());
                }
                let v: serde_json::Value = r.json().await?;
                let cert_pem = v["certificate"].as_str().context("certificate")?;
                let mut rd = cert_pem.as_bytes();
                let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut rd).collect::<std::result::Result<_, _>>()?;
                let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_client_auth_cert(certs, key_der)?;
                Ok::<_, anyhow::Error>(NodeCreds { name, tls: Arc::new(tls) })
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// One simulated node: the protocol part of `verge-edge`, state in memory.
async fn agent(creds: NodeCreds, addr: SocketAddr, hb: Duration, stats: Arc<Stats>) {
    let mut applied: i64 = 0;
    let mut apps: std::collections::BTreeMap<String, String> = Default::default();
    let mut attempt: u32 = 0;
    let mut seq: u64 = 0;
    loop {
        let mut opts = MqttOptions::new(creds.name.clone(), addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(60));
        opts.set_max_packet_size(4 * 1024 * 1024, 1024 * 1024);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            creds.tls.clone(),
        )));
        let (client, mut events) = AsyncClient::new(opts, 16);
        let topic = |c: Channel| verge_proto::node_topic(&creds.name, c);
        let mut connected = false;
        // Heartbeats spread over the period.
        let offset = Duration::from_millis(rand::random::<u64>() % hb.as_millis().max(1) as u64);
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, hb);
        loop {
            tokio::select! {
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(a))) => {
                        if a.code != ConnectReturnCode::Success {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        connected = true;
                        attempt = 0;
                        stats.connected.fetch_add(1, Ordering::Relaxed);
                        stats.connacks.fetch_add(1, Ordering::Relaxed);
                        let _ = client.try_subscribe(topic(Channel::Desired), QoS::AtLeastOnce);
                        let hello = Message::Hello(Hello {
                            node: creds.name.clone(),
                            agent_version: "bench".into(),
                            boot_id: "bench".into(),
                            last_applied_revision: applied,
                            sent_at_ms: now_ms(),
                        });
                        let _ = client.try_publish(topic(Channel::Hello), QoS::AtLeastOnce, false, verge_proto::encode(&hello));
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok((_, Message::Desired(d))) = verge_proto::decode_any(&p.topic, &p.payload) else { continue };
                        if !d.applies_to(applied) {
                            let hello = Message::Hello(Hello {
                                node: creds.name.clone(), agent_version: "bench".into(), boot_id: "bench".into(),
                                last_applied_revision: applied, sent_at_ms: now_ms(),
                            });
                            let _ = client.try_publish(topic(Channel::Hello), QoS::AtLeastOnce, false, verge_proto::encode(&hello));
                            continue;
                        }
                        applied = d.to_revision;
                        let probe = stats.probe_stamp.lock().map(|s| s.clone()).unwrap_or_default();
                        if !probe.is_empty() && d.upserts.iter().any(|o| o.spec.pointer("/data/stamp").and_then(|v| v.as_str()) == Some(probe.as_str())) {
                            let lat = (now_ms() - stats.probe_at_ms.load(Ordering::Relaxed)).max(0) as u64;
                            if let Ok(mut v) = stats.probe_latency_ms.lock() {
                                v.push(lat);
                            }
                        }
                        let ack = Message::Ack(Ack { revision: applied });
                        let _ = client.try_publish(topic(Channel::Ack), QoS::AtLeastOnce, false, verge_proto::encode(&ack));
                        // Apps: run what we are told (instantly) and report it.
                        let before = apps.clone();
                        if d.snapshot {
                            apps.clear();
                        }
                        for r in &d.deletes {
                            if r.kind == "App" {
                                apps.remove(&r.name);
                            }
                        }
                        for o in d.upserts.iter().filter(|o| o.kind == "App") {
                            if let Some(v) = o.spec["version"].as_str() {
                                apps.insert(o.metadata.name.clone(), v.to_string());
                            }
                        }
                        if apps != before {
                            let _ = client.try_publish(topic(Channel::Status), QoS::AtLeastOnce, false, verge_proto::encode(&app_status(&apps)));
                        }
                    }
                    Ok(_) => {}
                    Err(_) => break,
                },
                _ = beat.tick(), if connected => {
                    seq += 1;
                    let m = Message::Heartbeat(Heartbeat { seq, sent_at_ms: now_ms(), ready: true });
                    let _ = client.try_publish(topic(Channel::Heartbeat), QoS::AtMostOnce, false, verge_proto::encode(&m));
                }
            }
        }
        if connected {
            stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
        let wait =
            verge_edge::agent::backoff(attempt, Duration::from_secs(1), Duration::from_secs(60));
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_of_a_live_process_is_read_and_grows() {
        let a = super::cpu_seconds(std::process::id()).expect("own /proc stat");
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let b = super::cpu_seconds(std::process::id()).expect("own /proc stat");
        assert!(b >= a && x > 0, "{a} then {b}");
        assert!(super::cpu_seconds(u32::MAX).is_none());
    }
}
