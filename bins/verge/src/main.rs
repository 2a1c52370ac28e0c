//! `verge`: the control plane (`cloud`, `dev`) and the client commands. This file
//! only parses arguments and wires; the work lives in the library crates and in the
//! command modules.

/// `println!` that treats a closed stdout (`verge get apps | head`) as the end of
/// the output instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

/// `print!` counterpart of [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
        }
    }};
}

mod artifact;
mod builtins;
mod cloud_limits;
mod commands;
mod describe;
mod dev;
mod events;
mod functions;
mod images;
mod output;
mod report;
mod rollout;
mod s3;

/// The API client (its own crate: the benchmarks use it too).
use verge_client as client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use crate::output::OutputFormat;

#[derive(Parser)]
#[command(
    name = "verge",
    version,
    about = "Verge: edge computing and serverless platform"
)]
struct Cli {
    /// CLI config file (default: $VERGE_CONFIG, then ~/.verge/config).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// API server URL, overriding the config.
    #[arg(long, global = true)]
    server: Option<String>,
    /// Bearer token, overriding the config.
    #[arg(long, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum CloudAction {
    /// Write certificates, ACL and CRL for an external Mosquitto broker into
    /// DATA_DIR/mosquitto/ and print its mosquitto.conf (then run
    /// `mosquitto -c DATA_DIR/mosquitto/mosquitto.conf` and `verge cloud --mqtt-url`).
    PrintMosquittoConfig {
        /// The cloud's data directory (its cluster CA signs the broker certificate).
        #[arg(long)]
        data_dir: PathBuf,
        /// Where the broker listens.
        #[arg(long, default_value = "0.0.0.0:8883")]
        listen: SocketAddr,
        /// Extra DNS name or IP nodes use to reach the broker (repeatable).
        #[arg(long = "san")]
        sans: Vec<String>,
        /// Account Mosquitto switches to when started as root (must read broker.key).
        #[arg(long)]
        user: Option<String>,
    },
    /// Mint a new admin token offline (the cloud must be stopped): writes
    /// DATA_DIR/admin.token and DATA_DIR/admin.config (0600) and prints where.
    RecoverAdmin {
        /// The cloud's data directory.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

/// Where requests made on a user's behalf (task callbacks; `artifact.url` downloads on
/// the `verge dev` node) may go: through the outbound guard, public addresses only
/// unless allowed here. Image sources have their own `--img-allow-*` flags.
#[derive(clap::Args)]
struct OutboundArgs {
    /// Non-public networks that requests made on a user's behalf (task callbacks;
    /// `artifact.url`s on the `verge dev` node) may reach, as IPs or CIDRs
    /// (comma-separated or repeated), e.g. `10.0.0.0/8,127.0.0.1/32`. Default: none —
    /// public addresses only.
    #[arg(long, value_name = "CIDR", value_delimiter = ',',
          value_parser = verge_outbound::allow_network_entry)]
    outbound_allow_networks: Vec<String>,
    /// When given, the only hosts requests made on a user's behalf may reach (exact
    /// names or `*.domain`, comma-separated or repeated); the address check applies to
    /// them too.
    #[arg(long, value_name = "HOST", value_delimiter = ',',
          value_parser = verge_outbound::allow_host_entry)]
    outbound_allow_hosts: Vec<String>,
}

// Parsed once per process; boxing the `cloud` flags would only add noise.
#[allow(clippy::large_enum_variant)]
/// How python3/node function workers are isolated (decision 011).
#[derive(clap::Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Run python3/node function workers WITHOUT the sandbox: no uid switch, no
    /// namespaces, cgroup or seccomp filter, so function code can read and do all that
    /// this process can (keys, tokens, the store). Only where the sandbox cannot be set
    /// up (not root, no bubblewrap) and every function's code is trusted.
    #[arg(long)]
    pub unsafe_unsandboxed_functions: bool,
    /// The uid and gid sandboxed function workers run as (never 0, never this
    /// process's own).
    #[arg(long, default_value_t = verge_runtime::sandbox::DEFAULT_UID)]
    pub function_uid: u32,
}

impl SandboxArgs {
    pub fn apply(&self, cfg: &mut verge_runtime::SandboxConfig) -> Result<()> {
        if self.function_uid == 0 {
            anyhow::bail!("--function-uid must not be 0");
        }
        cfg.uid = self.function_uid;
        cfg.gid = self.function_uid;
        if self.unsafe_unsandboxed_functions {
            cfg.mode = verge_runtime::SandboxMode::Unsafe;
        }
        Ok(())
    }
}

// Parsed once per process: the size of the `cloud` variant's flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Cmd {
    /// Run the control plane.
    #[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
    Cloud {
        #[command(subcommand)]
        action: Option<CloudAction>,
        /// Data directory (store, CA, admin token).
        #[arg(long, required = true)]
        data_dir: Option<PathBuf>,
        /// API listen address.
        #[arg(long, default_value = "0.0.0.0:7443")]
        listen: SocketAddr,
        /// Serve plain HTTP instead of TLS (loopback addresses only).
        #[arg(long)]
        insecure_http: bool,
        /// Extra DNS name or IP for the server certificate (repeatable).
        #[arg(long = "tls-san")]
        tls_san: Vec<String>,
        /// Request body limit in bytes.
        #[arg(long, default_value_t = 1024 * 1024)]
        max_body_bytes: usize,
        /// Largest artifact accepted (POST /api/v1/artifacts), in bytes.
        #[arg(long, default_value_t = verge_cloud::artifacts::DEFAULT_MAX_BYTES)]
        artifact_max_bytes: u64,
        /// Revisions of history kept for watches.
        #[arg(long, default_value_t = 100_000)]
        history_revisions: i64,
        /// Seconds between history compactions.
        #[arg(long, default_value_t = 60)]
        compact_interval: u64,
        /// Edge join attempts per second from one source address (burst 4x), counted
        /// once the bootstrap token is verified.
        #[arg(long, default_value_t = 20.0)]
        join_rate: f64,
        /// MQTT (mutual TLS) listen address for edge nodes; "off" disables it.
        #[arg(long, default_value = "0.0.0.0:8883")]
        mqtt_listen: String,
        /// S3 API listen address (TLS, the cluster CA), e.g. 0.0.0.0:7444; "off" (the
        /// default) serves no S3 API.
        #[arg(long, default_value = "off")]
        s3_listen: String,
        /// Use an external Mosquitto broker (`mqtts://HOST:PORT`, configured with
        /// `verge cloud print-mosquitto-config`) instead of the embedded gateway.
        #[arg(long, conflicts_with = "mqtt_listen")]
        mqtt_url: Option<String>,
        /// Expected node heartbeat period, e.g. 15s.
        #[arg(long, default_value = "15s")]
        heartbeat_interval: String,
        /// Missed heartbeats before a node is NotReady.
        #[arg(long, default_value_t = 3)]
        heartbeat_misses: u32,
        /// Lifetime of node certificates; nodes renew theirs after two thirds of it.
        #[arg(long, default_value = "30d")]
        node_cert_validity: String,
        /// Memory for the log lines one node ships, in bytes (its oldest lines go
        /// first; at least 131072).
        #[arg(long, default_value_t = verge_cloud::nodes::logs::DEFAULT_PER_NODE_BYTES)]
        node_log_bytes: usize,
        /// Memory for the log lines all nodes ship, in bytes (the node holding the most
        /// gives way first).
        #[arg(long, default_value_t = verge_cloud::nodes::logs::DEFAULT_TOTAL_BYTES)]
        node_log_total_bytes: usize,
        #[command(flatten)]
        images: images::ImageServiceArgs,
        #[command(flatten)]
        outbound: OutboundArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
        #[command(flatten)]
        limits: cloud_limits::LimitArgs,
    },
    /// Run a local control plane with embedded defaults ($VERGE_HOME or ~/.verge/dev).
    Dev {
        /// API listen address (port 0: any free port; `~/.verge/config` gets the real one).
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: SocketAddr,
        /// MQTT (mutual TLS) listen address of the local edge node's uplink
        /// (default: the --listen address, port 8883).
        #[arg(long)]
        mqtt_listen: Option<SocketAddr>,
        /// S3 API listen address (default: the --listen address, port 7444).
        #[arg(long)]
        s3_listen: Option<SocketAddr>,
        #[command(flatten)]
        images: images::ImageServiceArgs,
        #[command(flatten)]
        outbound: OutboundArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// Create or update the objects in a file (`-` for stdin).
    Apply {
        #[arg(short = 'f', long = "filename")]
        file: String,
    },
    /// List objects of a kind, or show one.
    Get {
        kind: String,
        name: Option<String>,
        /// Label selector, e.g. tier=frontend,env!=dev.
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        /// Keep printing changes.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Create an object from the command line.
    Create {
        #[command(subcommand)]
        cmd: commands::CreateCmd,
    },
    /// Show one object as a readable summary: spec highlights, status, conditions,
    /// rollout steps, instances, recent failures.
    Describe {
        kind: String,
        name: String,
        /// `yaml` or `json`: the whole object instead of the summary.
        #[arg(short = 'o', long = "output", value_enum)]
        output: Option<OutputFormat>,
    },
    /// Delete an object.
    Delete { kind: String, name: String },
    /// An app's or a function's output, as its nodes shipped it (newest lines).
    Logs {
        /// `app/NAME` or `fn/NAME`.
        target: String,
        /// Only this node's instances.
        #[arg(long)]
        node: Option<String>,
        /// How many of the newest lines (1..=5000).
        #[arg(long, default_value_t = 200)]
        tail: usize,
        /// Keep printing new lines.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Functions: write a template, deploy a directory.
    Fn {
        #[command(subcommand)]
        cmd: functions::FnCmd,
    },
    /// Run a function now and print its output.
    Invoke {
        name: String,
        /// Input: JSON text, or @FILE.
        #[arg(long)]
        data: Option<String>,
        /// Run it on this edge node.
        #[arg(long)]
        node: Option<String>,
        /// Content type of the input (bytes for other types need a cloud-placed function).
        #[arg(long, default_value = "application/json")]
        content_type: String,
        /// Write the output here (for bytes such as images).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Async tasks: create, get, list, cancel.
    Task {
        #[command(subcommand)]
        cmd: functions::TaskCmd,
    },
    /// Follow and steer an App's gray release.
    Rollout {
        #[command(subcommand)]
        cmd: rollout::RolloutCmd,
    },
    /// Images: run an image function locally, sign `/img` URLs, install the image functions.
    Image {
        #[command(subcommand)]
        cmd: images::ImageCmd,
    },
    /// S3: access keys for the S3 API; objects (ls, cp, rm) over the API with its token.
    S3 {
        #[command(subcommand)]
        cmd: s3::S3Cmd,
    },
    /// The artifact store: push files native apps run from, list them.
    Artifact {
        #[command(subcommand)]
        cmd: artifact::ArtifactCmd,
    },
    /// Object events: dead letters (list, redrive, drop).
    Events {
        #[command(subcommand)]
        cmd: events::EventsCmd,
    },
    /// Manage API tokens (admin).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Print a shell completion script.
    Completion { shell: Shell },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        cmd: verge_bench::BenchCmd,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Create a token and print it (shown once).
    Create {
        /// admin, operator or viewer (not with --bootstrap).
        #[arg(
            long,
            required_unless_present = "bootstrap",
            conflicts_with = "bootstrap"
        )]
        role: Option<String>,
        /// A bootstrap token for joining edge nodes (default TTL 1h); prints the join command.
        #[arg(long)]
        bootstrap: bool,
        /// Bootstrap: how many nodes may join with it.
        #[arg(long, requires = "bootstrap")]
        uses: Option<u32>,
        /// Bootstrap: label given to joining nodes, k=v (repeatable).
        #[arg(long = "label", requires = "bootstrap")]
        labels: Vec<String>,
        /// Lifetime, e.g. 1h, 7d (default: no expiry).
        #[arg(long)]
        ttl: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id.
    Revoke { id: String },
}

/// First Ctrl-C or SIGTERM: graceful shutdown. Second Ctrl-C: exit at once.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
    eprintln!("shutting down (Ctrl-C again to force)");
    tokio::spawn(async {
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
}

fn client(cli: &Cli) -> Result<client::Client> {
    let cfg = client::load_config(
        cli.config.as_deref(),
        cli.server.as_deref(),
        cli.token.as_deref(),
    )?;
    Ok(client::Client::new(&cfg)?)
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.cmd {
        Cmd::Cloud {
            action:
                Some(CloudAction::PrintMosquittoConfig {
                    data_dir,
                    listen,
                    sans,
                    user,
                }),
            ..
        } => {
            let conf =
                verge_cloud::mosquitto::generate(&verge_cloud::mosquitto::MosquittoOptions {
                    data_dir: data_dir.clone(),
                    listen: *listen,
                    sans: sans.clone(),
                    run_as: user.clone(),
                })
                .map_err(|e| anyhow!("{e}"))?;
            out!("{conf}");
            Ok(())
        }
        Cmd::Cloud {
            action: Some(CloudAction::RecoverAdmin { data_dir }),
            ..
        } => {
            let r = verge_cloud::recover::recover_admin(data_dir)
                .await
                .map_err(|e| anyhow!("recover-admin: {e}"))?;
            outln!(
                "new admin token {} written to {}",
                r.token_id,
                r.token_path.display()
            );
            match &r.config_path {
                Some(p) => outln!("client config written to {}", p.display()),
                None => outln!(
                    "no api.addr in {}: admin.config is written when the cloud starts",
                    data_dir.display()
                ),
            }
            outln!("start the cloud again; the new token works at once");
            Ok(())
        }
        Cmd::Cloud {
            action: None,
            data_dir,
            listen,
            insecure_http,
            tls_san,
            max_body_bytes,
            artifact_max_bytes,
            history_revisions,
            compact_interval,
            join_rate,
            mqtt_listen,
            s3_listen,
            heartbeat_interval,
            heartbeat_misses,
            mqtt_url,
            node_cert_validity,
            node_log_bytes,
            node_log_total_bytes,
            images,
            outbound,
            sandbox,
            limits,
        } => {
            let data_dir = data_dir
                .as_ref()
                .ok_or_else(|| anyhow!("--data-dir is required"))?;
            if !(join_rate.is_finite() && *join_rate > 0.0) {
                anyhow::bail!("--join-rate must be a positive number");
            }
            let mut cfg = verge_cloud::CloudConfig::new(data_dir, *listen);
            images::wire(&mut cfg, data_dir, images, false)?;
            sandbox.apply(&mut cfg.function_sandbox)?;
            cfg.insecure_http = *insecure_http;
            cfg.tls_sans = tls_san.clone();
            cfg.max_body_bytes = *max_body_bytes;
            cfg.artifact_max_bytes = *artifact_max_bytes;
            cfg.history_revisions = (*history_revisions).max(1);
            cfg.compact_interval = std::time::Duration::from_secs((*compact_interval).max(1));
            cfg.join_rate_per_sec = *join_rate;
            limits.apply(&mut cfg)?;
            cfg.mqtt_listen = match mqtt_listen.as_str() {
                "off" => None,
                a => Some(
                    a.parse()
                        .map_err(|_| anyhow!("--mqtt-listen {a:?}: expected ADDR:PORT or off"))?,
                ),
            };
            cfg.s3_listen = match s3_listen.as_str() {
                "off" => None,
                a => Some(
                    a.parse()
                        .map_err(|_| anyhow!("--s3-listen {a:?}: expected ADDR:PORT or off"))?,
                ),
            };
            if let Some(url) = mqtt_url {
                verge_cloud::gateway::external::parse_mqtts_url(url).map_err(|e| anyhow!("{e}"))?;
                cfg.mqtt_url = Some(url.clone());
                cfg.mqtt_listen = None;
            }
            cfg.lifecycle.heartbeat_interval = commands::parse_duration(heartbeat_interval)?;
            if cfg.lifecycle.heartbeat_interval.is_zero() || *heartbeat_misses == 0 {
                anyhow::bail!("--heartbeat-interval and --heartbeat-misses must be positive");
            }
            cfg.lifecycle.misses = *heartbeat_misses;
            if *node_log_bytes < verge_cloud::nodes::logs::MIN_PER_NODE_BYTES {
                anyhow::bail!(
                    "--node-log-bytes must be at least {} (two log messages)",
                    verge_cloud::nodes::logs::MIN_PER_NODE_BYTES
                );
            }
            if node_log_total_bytes < node_log_bytes {
                anyhow::bail!("--node-log-total-bytes must be at least --node-log-bytes");
            }
            cfg.node_logs = verge_cloud::nodes::logs::LogBudget {
                per_node_bytes: *node_log_bytes,
                total_bytes: *node_log_total_bytes,
            };
            cfg.node_cert_validity = commands::parse_duration(node_cert_validity)?;
            if cfg.node_cert_validity < std::time::Duration::from_secs(30)
                || cfg.node_cert_validity > std::time::Duration::from_secs(5 * 365 * 86400)
            {
                anyhow::bail!("--node-cert-validity must be between 30s and 5y (1825d)");
            }
            cfg.outbound_allow_networks = outbound.outbound_allow_networks.clone();
            cfg.outbound_allow_hosts = outbound.outbound_allow_hosts.clone();
            verge_cloud::run(cfg, shutdown_signal())
                .await
                .map_err(|e| anyhow!("{e}"))
        }
        Cmd::Dev {
            listen,
            mqtt_listen,
            s3_listen,
            images,
            outbound,
            sandbox,
        } => {
            let allow = dev::OutboundAllow {
                networks: outbound.outbound_allow_networks.clone(),
                hosts: outbound.outbound_allow_hosts.clone(),
            };
            dev::run(
                *listen,
                *mqtt_listen,
                *s3_listen,
                images,
                &allow,
                sandbox,
                shutdown_signal(),
            )
            .await
        }
        Cmd::Image { cmd } => images::run(cmd, || client(&cli)).await,
        Cmd::S3 { cmd } => s3::run(cmd, || client(&cli)).await,
        Cmd::Apply { file } => commands::apply(&client(&cli)?, file).await,
        Cmd::Get {
            kind,
            name,
            selector,
            output,
            watch,
        } => {
            let kind = commands::parse_kind(kind)?;
            commands::get(
                &client(&cli)?,
                kind,
                name.as_deref(),
                selector.as_deref(),
                *output,
                *watch,
            )
            .await
        }
        Cmd::Create { cmd } => commands::create(&client(&cli)?, cmd).await,
        Cmd::Describe { kind, name, output } => {
            commands::describe(&client(&cli)?, commands::parse_kind(kind)?, name, *output).await
        }
        Cmd::Delete { kind, name } => {
            commands::delete(&client(&cli)?, commands::parse_kind(kind)?, name).await
        }
        Cmd::Artifact { cmd } => artifact::run(&client(&cli)?, cmd).await,
        Cmd::Events { cmd } => events::run(&client(&cli)?, cmd).await,
        Cmd::Rollout { cmd } => rollout::run(&client(&cli)?, cmd).await,
        Cmd::Logs {
            target,
            node,
            tail,
            follow,
        } => commands::logs(&client(&cli)?, target, node.as_deref(), *tail, *follow).await,
        Cmd::Fn { cmd } => match cmd {
            functions::FnCmd::Init { .. } => functions::run_fn(None, cmd).await,
            _ => functions::run_fn(Some(&client(&cli)?), cmd).await,
        },
        Cmd::Invoke {
            name,
            data,
            node,
            content_type,
            out,
        } => {
            functions::invoke(
                &client(&cli)?,
                name,
                data.as_deref(),
                node.as_deref(),
                content_type,
                out.as_deref(),
            )
            .await
        }
        Cmd::Task { cmd } => functions::run_task(&client(&cli)?, cmd).await,
        Cmd::Token { cmd } => {
            let c = client(&cli)?;
            match cmd {
                TokenCmd::Create {
                    role,
                    bootstrap,
                    uses,
                    labels,
                    ttl,
                    description,
                } => {
                    let role = if *bootstrap {
                        "bootstrap"
                    } else {
                        role.as_deref().unwrap_or("viewer")
                    };
                    let cfg = client::load_config(
                        cli.config.as_deref(),
                        cli.server.as_deref(),
                        cli.token.as_deref(),
                    )?;
                    commands::token_create(
                        &c,
                        &cfg,
                        commands::TokenArgs {
                            role,
                            ttl: ttl.as_deref(),
                            description: description.as_deref(),
                            uses: *uses,
                            labels,
                        },
                    )
                    .await
                }
                TokenCmd::List => commands::token_list(&c).await,
                TokenCmd::Revoke { id } => commands::token_revoke(&c, id).await,
            }
        }
        Cmd::Completion { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "verge", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Bench { cmd } => {
            verge_bench::run(cmd, || {
                Ok(client::load_config(
                    cli.config.as_deref(),
                    cli.server.as_deref(),
                    cli.token.as_deref(),
                )?)
            })
            .await
        }
    }
}

/// A control plane holds a connection per edge node: lift the soft open-files limit to
/// the hard one (root may raise the hard one too, up to fs.nr_open).
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let want = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(hard)
            .min(1 << 20);
        if setrlimit(Resource::RLIMIT_NOFILE, want.max(hard), want.max(hard)).is_err()
            && soft < hard
        {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// Logs go to stderr, coloured only on a terminal (never ANSI codes in a log file). The
/// control plane logs what it does (`info`); `verge dev` and the client commands only
/// warn, so the dev banner and command output are what a user sees. `RUST_LOG`
/// overrides both. The `s3s` crate logs every refused S3 request (a bad signature, a
/// missing key) as an error: those are the client's, answered with their S3 error, so
/// they stay out of the log unless `RUST_LOG` names `s3s` (Verge's own S3 layer logs
/// its internal failures itself).
fn init_logging(cmd: &Cmd) {
    use std::io::IsTerminal as _;
    let default = match cmd {
        Cmd::Cloud { action: None, .. } => "info,rustls=error",
        _ => "warn,rustls=error",
    };
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    if !std::env::var("RUST_LOG").is_ok_and(|v| v.contains("s3s"))
        && let Ok(d) = "s3s=off".parse()
    {
        filter = filter.add_directive(d);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.cmd);
    raise_fd_limit();
    // One crypto provider for the whole process.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprint!(
                "{}",
                report::render(&format!("cannot start the runtime: {e}"), None)
            );
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report::print(&e);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and subcommand, hidden ones included, answers `--help` with its
    /// usage (the real binary's tree is walked in `tests/cli_output.rs`).
    #[test]
    fn every_subcommand_answers_help() {
        fn walk(cmd: &clap::Command, path: &mut Vec<String>, seen: &mut usize) {
            let mut argv = path.clone();
            argv.push("--help".into());
            let err = match Cli::command().try_get_matches_from(&argv) {
                Ok(_) => panic!("{argv:?} parsed instead of printing help"),
                Err(e) => e,
            };
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::DisplayHelp,
                "{argv:?}: {err}"
            );
            let text = err.render().to_string();
            assert!(text.contains("Usage:"), "{argv:?}: {text}");
            *seen += 1;
            for sub in cmd.get_subcommands() {
                if sub.get_name() == "help" {
                    continue;
                }
                path.push(sub.get_name().to_string());
                walk(sub, path, seen);
                path.pop();
            }
        }
        let root = Cli::command();
        root.clone().debug_assert();
        let mut seen = 0;
        walk(&root, &mut vec!["verge".into()], &mut seen);
        // The image operations are subcommands too.
        assert!(seen > 60, "only {seen} commands");
    }
}
