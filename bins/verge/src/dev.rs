//! `verge dev`: the control plane with embedded defaults under `$VERGE_HOME` (or
//! `~/.verge/dev`), TLS and auth on as always, and `~/.verge/config` written so the
//! client commands work straight away.

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

pub async fn run(
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let home = dev_home()?;
    let addr_file = home.join(files::API_ADDR);
    let _ = std::fs::remove_file(&addr_file);
    let mut cfg = CloudConfig::new(&home, listen);
    cfg.mqtt_listen = Some(SocketAddr::new(listen.ip(), 8883));
    // Drive the server here (not spawned) and announce it once it is up.
    let server = verge_cloud::run(cfg, shutdown);
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => {
            r.map_err(|e| anyhow::anyhow!("{e}"))?;
            bail!("the control plane stopped during start-up");
        }
        r = announce(&home, &addr_file) => r?,
    }
    server.await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// Waits for the server's files, writes `~/.verge/config`, proves it works, prints the
/// next steps.
async fn announce(home: &std::path::Path, addr_file: &std::path::Path) -> Result<()> {
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
    let user_config = client::home_dir()?.join(".verge").join("config");
    admin
        .save(&user_config)
        .map_err(|e| anyhow::anyhow!("{e}"))
        .with_context(|| format!("writing {}", user_config.display()))?;
    // Prove the config works before telling the user it does.
    let c = Client::new(&admin)?;
    c.list(verge_api::Kind::App, None)
        .await
        .context("the control plane did not answer with the new config")?;

    println!("Verge dev control plane is running at {}", admin.server);
    println!("  data:    {}", home.display());
    println!(
        "  config:  {} (token and CA for the CLI)",
        user_config.display()
    );
    println!("  CA:      {}", home.join(files::CA_CERT).display());
    println!();
    println!("Next, in another terminal:");
    println!("  verge apply -f examples/app.yaml");
    println!("  verge get apps");
    println!("  verge get apps -o json");
    println!("  verge describe app web");
    println!("  verge token create --role viewer --ttl 1h");
    println!(
        "  curl --cacert {} -H \"Authorization: Bearer $(cat {})\" {}/api/v1/apps",
        home.join(files::CA_CERT).display(),
        home.join(files::ADMIN_TOKEN).display(),
        admin.server
    );
    println!();
    println!("Press Ctrl-C to stop.");
    Ok(())
}
