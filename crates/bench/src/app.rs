//! `verge bench app -f APP.yaml`: time from `apply` to every replica Running and
//! healthy, against the cloud in the CLI config (`verge dev` and its node, say). Each
//! run applies the App with a new patch version (`1.0.<run>`), so every run is a real
//! rollout of a new version through the controller, the node's desired state, the
//! engine and the health probe.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use verge_api::{Kind, Object};

use verge_client::Client;

#[derive(Debug, Clone, clap::Args)]
pub struct AppBenchArgs {
    /// The App manifest (YAML or JSON, one object).
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    /// Rollouts to time.
    #[arg(long, default_value_t = 10)]
    pub runs: u32,
    /// Give up on one run after this long.
    #[arg(long, default_value = "60s", value_parser = verge_client::parse_duration)]
    pub timeout: Duration,
}

pub async fn run(client: &Client, args: &AppBenchArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.file).with_context(|| args.file.clone())?;
    let mut base: Object = verge_api::parse_documents(&text, verge_api::Format::Yaml)
        .context("parsing the App")?
        .into_iter()
        .next()
        .with_context(|| format!("{}: no object", args.file))?;
    anyhow::ensure!(base.kind == "App", "{}: not an App", args.file);
    let name = base.metadata.name.clone();
    let mut times = Vec::new();
    for run in 0..args.runs {
        let version = format!("1.0.{}", run + 1_000 * (std::process::id() % 1000));
        base.spec["version"] = serde_json::json!(version);
        base.metadata
            .annotations
            .insert(verge_cloud::apps::ANNOTATION_ROLLBACK.into(), "true".into());
        let started = Instant::now();
        match client.get_opt(Kind::App, &name).await? {
            None => {
                client.create(&base).await?;
            }
            Some(cur) => {
                let mut next = base.clone();
                next.metadata.resource_version = cur.metadata.resource_version;
                client.update(&next).await?;
            }
        }
        loop {
            let o = client.get(Kind::App, &name).await?;
            let s = &o.status;
            let want = s["replicas"].as_u64().unwrap_or(0);
            let ready = s["readyReplicas"].as_u64().unwrap_or(0);
            if s["version"] == version.as_str()
                && s["phase"] == "Complete"
                && want > 0
                && ready >= want
            {
                break;
            }
            if s["phase"] == "RolledBack" || s["phase"] == "Failed" {
                bail!("run {run}: {} {}", s["phase"], s["rollout"]["message"]);
            }
            if started.elapsed() > args.timeout {
                bail!(
                    "run {run}: not running and healthy after {:?}: {}",
                    args.timeout,
                    s["rollout"]["message"]
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let t = started.elapsed();
        println!(
            "run {run}: {version} running and healthy in {} ms",
            t.as_millis()
        );
        times.push(t);
    }
    times.sort();
    let p = |q: f64| times[((times.len() - 1) as f64 * q).round() as usize].as_millis();
    println!(
        "apply → running+healthy over {} runs: p50 {} ms, p90 {} ms, max {} ms",
        times.len(),
        p(0.5),
        p(0.9),
        p(1.0)
    );
    Ok(())
}
