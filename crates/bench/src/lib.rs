//! The benchmarks behind `verge bench …` (figures in docs/BENCHMARKS.md): the clap
//! arguments of each ([`BenchCmd`], flattened into the `verge` CLI) and [`run`], which
//! runs one. Each benchmark measures real processes over real sockets: it starts
//! `verge cloud` children (through the running `verge` binary, `current_exe`) or
//! targets the server in the CLI config.
//!
//! | module     | `verge bench …`                                                    |
//! |------------|--------------------------------------------------------------------|
//! | [`api`]    | `api`: durable creates/s and watch delivery latency                |
//! | [`fleet`]  | `fleet`: N simulated edge nodes against one cloud                  |
//! | [`app`]    | `app`: apply → running and healthy for an App                       |
//! | [`invoke`] | `invoke`: warm/cold function invocation, fork baseline, dispatch   |
//! | [`image`]  | `image` (+ hidden workers): the image pipeline against vips and IM |
//! | [`s3`]     | `s3`: S3 PUT/GET/DELETE throughput, Verge against SeaweedFS        |
//! | [`sigv4`]  | (the SigV4 header signer of `s3`)                                  |
//!
//! Must not be linked into `verge-edge` nor into the control plane's library: only the
//! `verge` binary uses it. Errors are `anyhow` (a benchmark reports and exits; nothing
//! matches on them).

/// `println!` that treats a closed stdout (`verge bench … | head`) as the end of the
/// output instead of a panic (the same as the `verge` binary's).
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

pub mod api;
pub mod app;
pub mod fleet;
pub mod image;
pub mod invoke;
pub mod s3;
pub mod sigv4;

use anyhow::Result;
use verge_client::Client;
use verge_cloud::ClientConfig;

/// `verge bench …`.
#[derive(Debug, clap::Subcommand)]
pub enum BenchCmd {
    /// Durable creates/s and watch delivery latency.
    Api(api::ApiBenchArgs),
    /// N simulated edge nodes against one cloud: connect, memory, heartbeats, sync, restart.
    Fleet(fleet::FleetArgs),
    /// Time from `apply` to running and healthy for an App (a new version per run).
    App(app::AppBenchArgs),
    /// Function invocation: warm latency, throughput, cold start, fork baseline, edge dispatch.
    Invoke(invoke::InvokeBenchArgs),
    /// Image pipeline vs vipsthumbnail and ImageMagick: 12-MP JPEGs → 1200 px + watermark.
    Image(image::ImageBenchArgs),
    /// S3 PUT/GET/DELETE of 4 KiB and 1 MiB objects: SeaweedFS on loopback and --endpoint.
    S3(s3::S3BenchArgs),
    #[command(hide = true)]
    ImageWorker(image::ImageWorkerArgs),
    #[command(hide = true)]
    ImageMeasure(image::ImageMeasureArgs),
}

/// Runs one benchmark. `config` loads the CLI's client config (`--config`, `--server`,
/// `--token`); it is called only by the benchmarks that talk to an existing server:
/// `app` always, `api` when there is one (else it starts its own cloud), `invoke` with
/// `--node`.
pub async fn run(cmd: &BenchCmd, config: impl Fn() -> Result<ClientConfig>) -> Result<()> {
    match cmd {
        BenchCmd::App(args) => app::run(&Client::new(&config()?)?, args).await,
        BenchCmd::Api(args) => api::run(args.clone(), config().ok()).await,
        BenchCmd::Fleet(args) => fleet::run(args.clone()).await,
        BenchCmd::Invoke(args) => {
            let c = match args.node {
                Some(_) => Some(Client::new(&config()?)?),
                None => None,
            };
            invoke::run(args, c).await
        }
        BenchCmd::Image(args) => image::run(args),
        BenchCmd::S3(args) => s3::run(args).await,
        BenchCmd::ImageWorker(args) => image::worker(args),
        BenchCmd::ImageMeasure(args) => image::measure(args),
    }
}
