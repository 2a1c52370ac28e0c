//! `verge dev`: the control plane with embedded defaults under `$VERGE_HOME` (or
//! `~/.verge/dev`), TLS and auth on as always, `~/.verge/config` written so the
//! client commands work straight away, and a local edge node in the same process.
//! Drives the control plane and the node to completion exactly once each: the first
//! shutdown signal drains both and returns `Ok` (the second one exits at once, in
//! `main.rs`). The banner is printed last, once both are up. Must not print logs of
//! its own: those go through `tracing` (quiet by default, see `main.rs`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use verge_cloud::{ClientConfig, CloudConfig, files};

use crate::client::{self, Client};

pub fn dev_home() -> Result<PathBuf> {
    match std::env::var_os("VERGE_HOME") {
        Some(h) => Ok(PathBuf::from(h)),
        None => Ok(client::home_dir()?.join(".verge").join("dev")),
    }
}

/// `verge dev --outbound-allow-*`: passed to its control plane (callbacks) and its edge
/// node (`artifact.url` downloads).
pub struct OutboundAllow {
    pub networks: Vec<String>,
    pub hosts: Vec<String>,
}

pub async fn run(
    listen: SocketAddr,
    mqtt_listen: Option<SocketAddr>,
    s3_listen: Option<SocketAddr>,
    images: &crate::images::ImageServiceArgs,
    outbound: &OutboundAllow,
    sandbox: &crate::SandboxArgs,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let home = dev_home()?;
    let addr_file = home.join(files::API_ADDR);
    let _ = std::fs::remove_file(&addr_file);
    let mut cfg = CloudConfig::new(&home, listen);
    cfg.outbound_allow_networks = outbound.networks.clone();
    cfg.outbound_allow_hosts = outbound.hosts.clone();
    let edge_outbound = verge_edge::artifact::outbound_client(&outbound.networks, &outbound.hosts)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let image_env = crate::images::wire(&mut cfg, &home, images, true)?;
    sandbox.apply(&mut cfg.function_sandbox)?;
    let mut edge_sandbox = verge_runtime::SandboxConfig::default();
    sandbox.apply(&mut edge_sandbox)?;
    cfg.mqtt_listen = Some(mqtt_listen.unwrap_or_else(|| SocketAddr::new(listen.ip(), 8883)));
    cfg.s3_listen = Some(s3_listen.unwrap_or_else(|| SocketAddr::new(listen.ip(), 7444)));
    // One shutdown signal for the control plane and the local edge node.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    // Driven here (not spawned), each to completion exactly once: `DevRun` remembers
    // which have finished, so the loop never polls a completed future again.
    let server = verge_cloud::run(cfg, stopped(stop_rx.clone()));
    tokio::pin!(server);
    tokio::pin!(signal);
    let mut run = DevRun::default();
    let admin = {
        let start = start_up(&home, &addr_file);
        tokio::pin!(start);
        loop {
            tokio::select! {
                r = &mut server => {
                    r.map_err(|e| anyhow::anyhow!("{e}"))?;
                    if run.signalled {
                        return Ok(());
                    }
                    bail!("the control plane stopped during start-up");
                }
                _ = &mut signal, if !run.signalled => run.signalled = true,
                r = &mut start, if !run.signalled => break r?,
            }
        }
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let edge = dev_edge(
        &home,
        &admin,
        image_env,
        edge_outbound,
        edge_sandbox,
        ready_tx,
        stopped(stop_rx.clone()),
    );
    tokio::pin!(edge);
    tokio::pin!(ready_rx);
    loop {
        tokio::select! {
            r = &mut server, if !run.server_done => {
                run.server_done = true;
                r.map_err(|e| anyhow::anyhow!("{e}"))?;
                if !run.signalled {
                    bail!("the control plane stopped");
                }
            }
            r = &mut edge, if !run.edge_done => {
                run.edge_done = true;
                if let Err(e) = r {
                    eprintln!("warning: the local edge node stopped: {e:#}");
                }
            }
            edge_line = &mut ready_rx, if !run.banner_shown => {
                run.banner_shown = true;
                let line = edge_line.unwrap_or_else(|_| "not running (see the warning above)".into());
                banner(&home, &admin, &line);
            }
            _ = &mut signal, if !run.signalled => run.signalled = true,
        }
        if run.drained() {
            return Ok(());
        }
    }
}

/// Which of `verge dev`'s futures have completed (a completed future is never polled
/// again).
#[derive(Default)]
struct DevRun {
    signalled: bool,
    server_done: bool,
    edge_done: bool,
    banner_shown: bool,
}

impl DevRun {
    /// Stopped on purpose and both halves have finished.
    fn drained(&self) -> bool {
        self.signalled && self.server_done && self.edge_done
    }
}

/// Waits for the control plane, writes `~/.verge/config`, deploys the example function
/// and the image functions.
async fn start_up(home: &std::path::Path, addr_file: &std::path::Path) -> Result<ClientConfig> {
    let admin = announce(home, addr_file).await?;
    if let Err(e) = example_function(&admin).await {
        eprintln!("warning: could not deploy the example function: {e:#}");
    }
    if let Err(e) = crate::images::install(&Client::new(&admin)?, None).await {
        eprintln!("warning: could not create the image functions: {e:#}");
    }
    Ok(admin)
}

/// The dev edge node: joined once (a one-use bootstrap token, the real join flow),
/// then run in-process by `verge_edge::node::run_node`, like `verge-edge run`, with
/// the image pack.
async fn dev_edge(
    home: &std::path::Path,
    admin: &ClientConfig,
    images: std::sync::Arc<verge_images::functions::ImageEnv>,
    outbound: verge_outbound::Client,
    sandbox: verge_runtime::SandboxConfig,
    ready: tokio::sync::oneshot::Sender<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let dir = home.join("edge");
    if !dir.join("identity.json").exists() {
        let c = Client::new(admin)?;
        let body = serde_json::json!({"role": "bootstrap", "uses": 1, "ttlSeconds": 600,
            "labels": {(verge_api::names::LABEL_DEV): "true"},
            "description": "verge dev local edge node"});
        let tok: serde_json::Value = c
            .send_json(reqwest::Method::POST, "/api/v1/tokens", Some(&body))
            .await?;
        let ca = admin
            .certificate_authority_data
            .as_deref()
            .context("the dev config has no CA")?;
        verge_edge::join(verge_edge::JoinOptions {
            cloud: admin.server.clone(),
            token: tok["token"].as_str().unwrap_or_default().to_string(),
            ca_hash: verge_cloud::ca_hash_from_pem(ca).map_err(|e| anyhow::anyhow!("{e}"))?,
            name: Some(DEV_NODE.into()),
            labels: [(verge_api::names::LABEL_DEV.to_string(), "true".to_string())].into(),
            data_dir: dir.clone(),
        })
        .await
        .context("joining the local edge node (remove ~/.verge/dev to start over)")?;
    }
    // Same environment variables as `verge-edge run`.
    let mut opts = verge_edge::node::NodeOptions::new(&dir, outbound);
    opts.docker_socket = std::env::var_os("VERGE_EDGE_DOCKER_SOCKET").map(PathBuf::from);
    opts.docker_network = std::env::var("VERGE_EDGE_DOCKER_NETWORK").ok();
    opts.sandbox = sandbox;
    // The image pack, sharing the control plane's image environment but not its
    // buckets: an edge node has none (functions writing objects run in the cloud).
    let images = std::sync::Arc::new(verge_images::functions::ImageEnv {
        objects: std::sync::Arc::new(verge_runtime::ObjectSlot::new()),
        ..(*images).clone()
    });
    opts.builtins = Some(Box::new(move |registry, _node| {
        verge_images::functions::register(registry, images);
        Ok(())
    }));
    verge_edge::node::run_node(
        opts,
        |up| {
            // Up: the banner goes out now, last.
            let _ = ready.send(format!(
                "local edge node {} (data {}; `verge-edge get configs --data-dir {}` reads it)",
                up.name,
                up.data_dir.display(),
                up.data_dir.display()
            ));
        },
        shutdown,
    )
    .await?;
    Ok(())
}

/// The example function `verge dev` deploys (once; yours to change or delete).
pub const EXAMPLE_FUNCTION: &str = "hello";

const EXAMPLE_CODE: &str = "def main(event):\n    name = (event or {}).get(\"name\", \"world\")\n    print(f\"greeting {name}\")\n    return {\"greeting\": f\"hello, {name}\"}\n";

async fn example_function(admin: &ClientConfig) -> Result<()> {
    let c = Client::new(admin)?;
    let path = format!("/api/v1/functions/{EXAMPLE_FUNCTION}");
    if c.send_json::<serde_json::Value>(reqwest::Method::GET, &path, None)
        .await
        .is_ok()
    {
        return Ok(());
    }
    let body = serde_json::json!({
        "apiVersion": verge_api::API_VERSION,
        "kind": "Function",
        "metadata": {"name": EXAMPLE_FUNCTION, "labels": {(verge_api::names::LABEL_EXAMPLE): "true"}},
        "spec": {"runtime": "python3", "handler": "handler.main", "code": EXAMPLE_CODE},
    });
    c.send_json::<serde_json::Value>(reqwest::Method::POST, "/api/v1/functions", Some(&body))
        .await?;
    Ok(())
}

/// Name of the edge node `verge dev` runs.
pub const DEV_NODE: &str = "dev-edge";

/// Waits for the server's files, writes `~/.verge/config` and proves it works.
async fn announce(home: &std::path::Path, addr_file: &std::path::Path) -> Result<ClientConfig> {
    let mut ready = false;
    for _ in 0..1500 {
        if addr_file.exists() && home.join(files::ADMIN_CONFIG).exists() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if !ready {
        bail!("the control plane did not start within 30s");
    }
    let admin =
        ClientConfig::load(&home.join(files::ADMIN_CONFIG)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let user_config = user_config()?;
    admin
        .save(&user_config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", user_config.display()))?;
    // Prove the config works before telling the user it does.
    let c = Client::new(&admin)?;
    c.list(verge_api::Kind::App, None)
        .await
        .context("the control plane did not answer with the new config")?;
    Ok(admin)
}

fn user_config() -> Result<PathBuf> {
    Ok(client::home_dir()?.join(".verge").join("config"))
}

/// What `verge dev` prints once the control plane and its edge node are up: where
/// things are and what to try. Printed last, so it is what the terminal shows.
fn banner(home: &std::path::Path, admin: &ClientConfig, edge_line: &str) {
    let user_config = user_config()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "~/.verge/config".into());
    outln!();
    outln!("Verge dev control plane is running at {}", admin.server);
    outln!("  data:    {}", home.display());
    outln!("  config:  {user_config} (token and CA for the CLI)");
    outln!("  CA:      {}", home.join(files::CA_CERT).display());
    outln!("  edge:    {edge_line}");
    outln!(
        "  images:  `verge image list`; signed /img URLs: `verge image url` (keys in {})",
        home.join(crate::images::KEYS_FILE).display()
    );
    if let Ok(s3) = std::fs::read_to_string(home.join(files::S3_ADDR)) {
        outln!(
            "  s3:      {} (path-style, region us-east-1; a key: `verge s3 key create`)",
            s3.trim()
        );
    }
    outln!("  logs:    warnings only; RUST_LOG=info (or debug) for more");
    outln!();
    outln!("Next, in another terminal:");
    outln!(
        "  verge invoke {EXAMPLE_FUNCTION} --data '{{\"name\": \"dev\"}}'   (the example function, on the local edge node)"
    );
    outln!("  verge apply -f examples/app.yaml");
    outln!("  verge get apps");
    outln!("  verge get apps -o json");
    outln!("  verge describe app web");
    outln!("  verge token create --role viewer --ttl 1h");
    outln!("  verge get nodes");
    outln!(
        "  curl --cacert {} -H \"Authorization: Bearer $(cat {})\" {}/api/v1/apps",
        home.join(files::CA_CERT).display(),
        home.join(files::ADMIN_TOKEN).display(),
        admin.server
    );
    outln!();
    outln!("Press Ctrl-C to stop.");
}
