//! `verge-edge`: join a cluster, run the edge node, read its local API. Argument
//! parsing and wiring only; the work is in the `verge_edge` library.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::{Parser, Subcommand, ValueEnum};
use verge_edge::JoinOptions;
use verge_edge::node::NodeOptions;

#[derive(Parser)]
#[command(name = "verge-edge", version, about = "The Verge edge node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join a cluster: pin its CA by hash, get a node certificate with a bootstrap token.
    Join(JoinArgs),
    /// Run the node: local store, queue, local API (and the uplink to the cloud).
    Run(RunArgs),
    /// Read from the running node's local API.
    Get {
        #[command(subcommand)]
        what: GetWhat,
    },
    /// Hand a task result to the running node; it reaches the cloud once, in order,
    /// through the store-and-forward queue (also if the cloud is down right now) —
    /// unless the queue's byte bound or TTL drops it first (counted in `get status`).
    Result(ResultArgs),
}

#[derive(clap::Args)]
struct ResultArgs {
    /// The task's id.
    #[arg(long)]
    id: String,
    /// The output, as JSON (success).
    #[arg(long, conflicts_with = "error")]
    output: Option<String>,
    /// What went wrong (failure).
    #[arg(long)]
    error: Option<String>,
    #[arg(long, env = "VERGE_EDGE_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
struct JoinArgs {
    /// The cloud API, `https://host:port`.
    #[arg(long, env = "VERGE_EDGE_CLOUD")]
    cloud: String,
    /// Bootstrap token `id.secret` (prefer the environment variable: argv is visible to
    /// other users).
    #[arg(long, env = "VERGE_EDGE_TOKEN", hide_env_values = true)]
    token: String,
    /// `sha256:<hex>` of the cluster CA, as printed by `verge token create --bootstrap`.
    #[arg(long)]
    ca_hash: String,
    /// Node name (DNS-1123 label); default: the hostname, sanitized.
    #[arg(long)]
    name: Option<String>,
    /// A label for the node, `key=value`; repeatable.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    #[arg(long, env = "VERGE_EDGE_DATA_DIR")]
    data_dir: PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    #[arg(long, env = "VERGE_EDGE_DATA_DIR")]
    data_dir: PathBuf,
    /// How often to send a heartbeat (`15s`, `1m`, `500ms`).
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    heartbeat_interval: Duration,
    /// How often to report node status (through the store-and-forward queue).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    status_interval: Duration,
    /// Longest wait between reconnect attempts (exponential backoff, full jitter).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    reconnect_max: Duration,
    /// The Docker engine's unix socket (default: `DOCKER_HOST`, else
    /// /var/run/docker.sock). Without a reachable engine, Docker apps fail with the
    /// reason; native apps run regardless.
    #[arg(long, env = "VERGE_EDGE_DOCKER_SOCKET")]
    docker_socket: Option<PathBuf>,
    /// Network mode for containers (`host`, `bridge`, a network name); default:
    /// Docker's.
    #[arg(long, env = "VERGE_EDGE_DOCKER_NETWORK")]
    docker_network: Option<String>,
    /// Non-public networks that requests made on a user's behalf (`artifact.url`
    /// downloads, image sources) may reach, as IPs or CIDRs (comma-separated or
    /// repeated). Default: none — public addresses only.
    #[arg(long, env = "VERGE_EDGE_OUTBOUND_ALLOW_NETWORKS", value_name = "CIDR",
          value_delimiter = ',', value_parser = verge_outbound::allow_network_entry)]
    outbound_allow_networks: Vec<String>,
    /// When given, the only hosts those requests may reach (exact names or
    /// `*.domain`, comma-separated or repeated); the address check applies to them too.
    #[arg(long, env = "VERGE_EDGE_OUTBOUND_ALLOW_HOSTS", value_name = "HOST",
          value_delimiter = ',', value_parser = verge_outbound::allow_host_entry)]
    outbound_allow_hosts: Vec<String>,
    /// Run python3/node function workers WITHOUT the sandbox: no uid switch, no
    /// namespaces, cgroup or seccomp filter, so function code can read and do all that
    /// the agent can (its key, the local store). Only where the sandbox cannot be set
    /// up (not root, no bubblewrap) and every function's code is trusted.
    #[arg(long)]
    unsafe_unsandboxed_functions: bool,
    /// The uid and gid sandboxed function workers run as (never 0, never the agent's).
    #[arg(long, default_value_t = verge_runtime::sandbox::DEFAULT_UID)]
    function_uid: u32,
}

#[derive(Subcommand)]
enum GetWhat {
    /// Configs the node holds (all, or one by name).
    Configs {
        name: Option<String>,
        #[arg(long, env = "VERGE_EDGE_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// The node's status: revision, connection, queue.
    Status {
        #[arg(long, env = "VERGE_EDGE_DATA_DIR")]
        data_dir: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

/// `15s`, `2m`, `1h`, `500ms`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 15s, 2m, 500ms"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than zero"));
    }
    Ok(d)
}

fn parse_labels(labels: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow!("--label {l:?}: expected key=value"))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// Logs go to stderr, coloured only on a terminal: a service manager's journal or a
/// log file gets plain text, never ANSI codes.
fn init_logging(default: &str) {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One crypto provider for the whole process: ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    init_logging(match cli.command {
        Command::Run(_) => "info",
        _ => "warn",
    });
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, skipping a cause the message already shows
/// (the library's messages embed their source).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out.replace('\n', " ")
}

async fn dispatch(cmd: Command) -> Result<()> {
    match cmd {
        Command::Join(a) => join(a).await,
        Command::Run(a) => run(a).await,
        Command::Result(a) => {
            let mut body = serde_json::json!({ "id": a.id, "ok": a.error.is_none() });
            if let Some(out) = &a.output {
                body["output"] = serde_json::from_str(out)
                    .map_err(|e| anyhow::anyhow!("--output: not JSON: {e}"))?;
            }
            if let Some(err) = a.error {
                body["error"] = err.into();
            }
            let v = verge_edge::local_api::post(
                &verge_edge::paths::socket(&a.data_dir),
                "/v1/results",
                &body,
            )
            .await?;
            println!("queued result seq {}", v["seq"]);
            Ok(())
        }
        Command::Get { what } => match what {
            GetWhat::Configs {
                name,
                data_dir,
                output,
            } => get_configs(&data_dir, name.as_deref(), output).await,
            GetWhat::Status { data_dir, output } => {
                let v =
                    verge_edge::local_api::get(&verge_edge::paths::socket(&data_dir), "/v1/status")
                        .await?;
                if output == Output::Json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    for key in ["node", "connected", "appliedRevision", "lastSync", "queue"] {
                        println!("{:<17}{}", format!("{key}:"), v[key]);
                    }
                    if let Some(why) = v["uplinkStopped"].as_str() {
                        println!("{:<17}{why}", "uplinkStopped:");
                    }
                }
                Ok(())
            }
        },
    }
}

async fn join(a: JoinArgs) -> Result<()> {
    let labels = parse_labels(&a.labels)?;
    let data_dir = a.data_dir.clone();
    let id = verge_edge::join(JoinOptions {
        cloud: a.cloud,
        token: a.token,
        ca_hash: a.ca_hash,
        name: a.name,
        labels,
        data_dir: a.data_dir,
    })
    .await?;
    println!(
        "joined as {}; start it with: verge-edge run --data-dir {}",
        id.name,
        data_dir.display()
    );
    Ok(())
}

async fn run(a: RunArgs) -> Result<()> {
    if a.function_uid == 0 {
        anyhow::bail!("--function-uid must not be 0");
    }
    // Requests made on a user's behalf go through the outbound guard.
    let outbound =
        verge_edge::artifact::outbound_client(&a.outbound_allow_networks, &a.outbound_allow_hosts)?;
    let mut opts = NodeOptions::new(&a.data_dir, outbound);
    opts.agent = verge_edge::agent::AgentConfig {
        heartbeat_interval: a.heartbeat_interval,
        status_interval: a.status_interval,
        backoff_cap: a.reconnect_max,
        ..Default::default()
    };
    opts.docker_socket = a.docker_socket;
    opts.docker_network = a.docker_network;
    opts.sandbox = verge_runtime::SandboxConfig {
        mode: if a.unsafe_unsandboxed_functions {
            verge_runtime::SandboxMode::Unsafe
        } else {
            verge_runtime::SandboxMode::Enforce
        },
        uid: a.function_uid,
        gid: a.function_uid,
        ..verge_runtime::SandboxConfig::default()
    };
    opts.builtins = function_pack();
    verge_edge::node::run_node(
        opts,
        |up| {
            tracing::info!(
                node = %up.name,
                applied_revision = up.applied_revision,
                socket = %up.socket.display(),
                "verge-edge running"
            )
        },
        wait_for_signal(),
    )
    .await?;
    Ok(())
}

/// Ctrl-C or SIGTERM (the handlers are installed once the node is up, as `run_node`
/// polls this only then). If they cannot be installed, the node stops at once with
/// the reason logged.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "installing the SIGTERM handler; stopping");
            return;
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            if let Err(e) = r {
                tracing::error!(error = %e, "waiting for Ctrl-C; stopping");
            }
        }
        _ = term.recv() => {}
    }
}

async fn get_configs(data_dir: &Path, name: Option<&str>, output: Output) -> Result<()> {
    let socket = verge_edge::paths::socket(data_dir);
    let path = match name {
        Some(n) => {
            if !n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                bail!("config name {n:?} is not a valid name");
            }
            format!("/v1/configs/{n}")
        }
        None => "/v1/configs".to_owned(),
    };
    let answer = verge_edge::local_api::get(&socket, &path).await?;
    if output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(());
    }
    let items = match answer {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    print!("{}", configs_table(&items));
    Ok(())
}

/// `NAME  DATA-KEYS  REVISION` rows, columns padded to the widest cell.
fn configs_table(items: &[serde_json::Value]) -> String {
    let mut rows = vec![[
        "NAME".to_owned(),
        "DATA-KEYS".to_owned(),
        "REVISION".to_owned(),
    ]];
    for o in items {
        let name = o["metadata"]["name"].as_str().unwrap_or("").to_owned();
        let keys = match o["spec"]["data"].as_object() {
            Some(m) if !m.is_empty() => m.keys().cloned().collect::<Vec<_>>().join(","),
            _ => "<none>".to_owned(),
        };
        let rev = o["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or("-")
            .to_owned();
        rows.push([name, keys, rev]);
    }
    let widths: Vec<usize> = (0..3)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line = format!(
            "{:<w0$}   {:<w1$}   {}",
            r[0],
            r[1],
            r[2],
            w0 = widths[0],
            w1 = widths[1]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A lean edge node (built without the `images` feature) has the runtime's own
/// builtins only.
#[cfg(not(feature = "images"))]
fn function_pack() -> Option<verge_edge::node::BuiltinsHook> {
    None
}

/// An edge node built with the `images` feature adds the image pack, whose
/// `{"artifact": ...}` sources are downloaded from the cloud with the node's
/// certificate and `{"url": ...}` sources fetched through the outbound guard under the
/// node's allow lists (public addresses only by default).
#[cfg(feature = "images")]
fn function_pack() -> Option<verge_edge::node::BuiltinsHook> {
    Some(Box::new(|registry, node| {
        let allowed = node.outbound.policy();
        let fetcher = verge_images::fetch::Fetcher::new(verge_images::fetch::FetchPolicy {
            allow_networks: allowed.allow_networks.clone(),
            allow_hosts: allowed.allow_hosts.clone(),
            ..verge_images::fetch::FetchPolicy::default()
        })
        .map_err(|e| verge_edge::Error::Builtins(e.to_string()))?;
        let mut env = verge_images::functions::ImageEnv::new(fetcher);
        env.artifacts = Some(std::sync::Arc::new(EdgeArtifacts {
            fetcher: verge_edge::artifact::Fetcher::new(node.identity, node.outbound.clone())?,
            dir: node.data_dir.join("image-sources"),
        }));
        verge_images::functions::register(registry, std::sync::Arc::new(env));
        Ok(())
    }))
}

/// Artifacts read from the cloud's store, verified against their digest.
#[cfg(feature = "images")]
struct EdgeArtifacts {
    fetcher: verge_edge::artifact::Fetcher,
    dir: PathBuf,
}

#[cfg(feature = "images")]
impl verge_images::functions::ArtifactSource for EdgeArtifacts {
    fn read<'a>(
        &'a self,
        sha256: &'a str,
        max_bytes: u64,
    ) -> futures::future::BoxFuture<'a, verge_images::Result<bytes::Bytes>> {
        Box::pin(async move {
            let url = verge_edge::artifact::artifact_url(&self.fetcher.cloud, sha256);
            let unreachable = |e: &dyn std::fmt::Display| verge_images::Error::SourceUnreachable {
                url: url.clone(),
                message: e.to_string(),
            };
            tokio::fs::create_dir_all(&self.dir)
                .await
                .map_err(|e| unreachable(&e))?;
            // A file per call (concurrent calls never share one), verified, read, removed.
            static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let dest = self.dir.join(format!("{sha256}.{n}"));
            let got =
                verge_edge::artifact::fetch(&self.fetcher.client, &url, sha256, &dest, max_bytes)
                    .await;
            let out = match got {
                Ok(path) => tokio::fs::read(&path).await.map_err(|e| unreachable(&e)),
                Err(e) => Err(unreachable(&e)),
            };
            let _ = tokio::fs::remove_file(&dest).await;
            out.map(bytes::Bytes::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn errors_print_on_one_line_without_repeats() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(io).context("store.redb: disk on fire");
        assert_eq!(one_line(&e), "store.redb: disk on fire");
        let e = anyhow!("inner\nsecond line").context("outer");
        assert_eq!(one_line(&e), "outer: inner second line");
    }

    #[test]
    fn labels() {
        let l = parse_labels(&["a=b".into(), "zone=x=y".into()]).unwrap();
        assert_eq!(l["a"], "b");
        assert_eq!(l["zone"], "x=y");
        assert!(parse_labels(&["nope".into()]).is_err());
    }

    #[test]
    fn table() {
        let items = vec![
            serde_json::json!({"metadata": {"name": "app-settings", "resourceVersion": "12"},
                               "spec": {"data": {"a": "1", "b": "2"}}}),
            serde_json::json!({"metadata": {"name": "x"}, "spec": {}}),
        ];
        assert_eq!(
            configs_table(&items),
            "NAME           DATA-KEYS   REVISION\n\
             app-settings   a,b         12\n\
             x              <none>      -\n"
        );
        assert_eq!(configs_table(&[]), "NAME   DATA-KEYS   REVISION\n");
    }
}
