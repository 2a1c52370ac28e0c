//! `verge bench invoke`: what a function invocation costs.
//!
//! 1. In process (no cluster): a [`Runtime`] on a temporary work dir with a trivial
//!    Python (`def main(e): return e`) and Node (`exports.main = (e) => e`) echo:
//!    - warm latency of `--requests` sequential invokes (after 200 to warm up), and
//!      throughput with `--concurrency` callers. The handler does nothing, so the
//!      latency of the whole invoke is an upper bound of the runtime's overhead (the
//!      handler's own time is not subtracted);
//!    - cold start: `deploy` of a new version to the first answer, and one invoke after
//!      the pool scaled to zero (`min_warm: 0`, `idle: 300ms`);
//!    - the fork-per-request baseline ([`verge_runtime::bench::fork_per_request`]: an
//!      interpreter per invocation) with the same handler and interpreter.
//! 2. Over HTTPS (unless `--skip-https`): a `verge cloud` the benchmark starts on a
//!    temporary data dir, the same Python echo as a cloud-placed Function
//!    (`placement.cloud: true`) called through `POST /api/v1/functions/{name}/invoke`
//!    — the path a user takes: TLS, token check, JSON, the cloud's runtime — timed by
//!    the client: `--https-requests` sequential calls (p50/p99) and the same number
//!    from `--concurrency` callers (throughput), beside the in-process figure.
//! 3. With `--node NAME`, against the cloud of the CLI config: the edge-placed echo
//!    `bench-echo` run on that node through `POST /api/v1/functions/bench-echo/invoke`
//!    (cloud → MQTT → node → result), timed by the client; then tasks created with
//!    `POST /api/v1/tasks`, timed by the server's own timestamps.
//!
//! The report is text, then one line of JSON (the summary).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use reqwest::Method;
use serde_json::{Value, json};
use verge_runtime::{FunctionDef, Input, Kind, Output, Registry, Runtime, RuntimeConfig, Source};

use verge_client::{Client, flatten};

const PY_CODE: &str = "def main(e):\n    return e\n";
const JS_CODE: &str = "exports.main = (e) => e\n";
const WARMUP: u64 = 200;
const DISPATCH_WARMUP: u32 = 20;
const ECHO: &str = "bench-echo";
const ECHO_CLOUD: &str = "bench-echo-cloud";

#[derive(Debug, Clone, clap::Args)]
pub struct InvokeBenchArgs {
    /// Workers per function (max_instances and min_warm).
    #[arg(long, default_value_t = 2)]
    pub workers: u32,
    /// Invocations timed, sequentially and then concurrently.
    #[arg(long, default_value_t = 5000)]
    pub requests: u64,
    /// Concurrent callers in the throughput phase.
    #[arg(long, default_value_t = 8)]
    pub concurrency: u64,
    /// Cold starts (deploy of a new version → first answer) timed per language.
    #[arg(long, default_value_t = 10)]
    pub cold_runs: u32,
    /// Invokes timed after the pool scaled to zero, per language.
    #[arg(long, default_value_t = 5)]
    pub zero_runs: u32,
    /// Fork-per-request baseline runs.
    #[arg(long, default_value_t = 50)]
    pub fork_runs: u32,
    /// Also time cloud → edge dispatch on this node (cluster of the CLI config).
    #[arg(long)]
    pub node: Option<String>,
    /// Timed invokes through the cloud API on `--node`.
    #[arg(long, default_value_t = 200)]
    pub dispatch_runs: u32,
    /// Tasks created with `POST /api/v1/tasks` on `--node`, timed by the server.
    #[arg(long, default_value_t = 50)]
    pub task_runs: u32,
    /// Skip the Node.js function.
    #[arg(long)]
    pub skip_node_js: bool,
    /// Invocations timed over HTTPS (cloud-placed echo), sequentially and then
    /// concurrently.
    #[arg(long, default_value_t = 2000)]
    pub https_requests: u64,
    /// Skip the HTTPS invoke phase (it starts a `verge cloud`).
    #[arg(long)]
    pub skip_https: bool,
}

/// Percentiles of a set of durations (nearest rank), in milliseconds.
struct Summary {
    n: usize,
    sorted: Vec<Duration>,
}

impl Summary {
    fn new(mut v: Vec<Duration>) -> Summary {
        v.sort_unstable();
        Summary {
            n: v.len(),
            sorted: v,
        }
    }

    fn q(&self, q: f64) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.n as f64).ceil() as usize).clamp(1, self.n);
        self.sorted[rank - 1].as_secs_f64() * 1000.0
    }

    fn mean(&self) -> f64 {
        if self.sorted.is_empty() {
            return f64::NAN;
        }
        self.sorted.iter().map(Duration::as_secs_f64).sum::<f64>() * 1000.0 / self.n as f64
    }

    fn line(&self) -> String {
        format!(
            "p50 {} ms, p90 {} ms, p99 {} ms, max {} ms (n={})",
            f3(self.q(0.5)),
            f3(self.q(0.9)),
            f3(self.q(0.99)),
            f3(self.q(1.0)),
            self.n
        )
    }

    fn json(&self) -> Value {
        json!({
            "n": self.n,
            "p50_ms": r3(self.q(0.5)),
            "p90_ms": r3(self.q(0.9)),
            "p99_ms": r3(self.q(0.99)),
            "max_ms": r3(self.q(1.0)),
            "mean_ms": r3(self.mean()),
        })
    }
}

fn f3(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.3}")
    }
}

fn r3(x: f64) -> Value {
    if x.is_finite() {
        json!((x * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "NOT met" }
}

/// The first `name` on PATH, as found (not resolved).
fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// A version-manager shim: a script (`#!`) rather than an executable, or under `shims/`.
fn is_shim(p: &Path) -> bool {
    let script = std::fs::read(p).is_ok_and(|b| b.starts_with(b"#!"));
    script || p.components().any(|c| c.as_os_str() == "shims")
}

async fn version_of(program: &Path, args: &[&str]) -> String {
    match tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
    {
        Ok(o) if o.status.success() => {
            let s = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if s.is_empty() {
                String::from_utf8_lossy(&o.stderr).trim().to_string()
            } else {
                s
            }
        }
        Ok(o) => format!("? ({})", o.status),
        Err(e) => format!("? ({e})"),
    }
}

fn lang_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Python3 => "python",
        Kind::Nodejs => "node",
        Kind::Builtin => "builtin",
    }
}

fn echo_def(name: &str, kind: Kind, version: String) -> FunctionDef {
    let code = if kind == Kind::Python3 {
        PY_CODE
    } else {
        JS_CODE
    };
    let mut def = FunctionDef::new(name, kind, "handler.main", Source::Inline(code.into()));
    def.version = version;
    def
}

async fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<Duration> {
    let start = Instant::now();
    while !ok() {
        if start.elapsed() > limit {
            bail!("{what}: not after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(start.elapsed())
}

fn check_echo(out: &Output, want: &Value) -> Result<()> {
    match out {
        Output::Json(v) if v == want => Ok(()),
        other => bail!("the echo answered {other:?}, expected {want}"),
    }
}

/// One language's in-process figures.
struct LangResult {
    kind: Kind,
    warm: Summary,
    /// The runtime's own `Invocation::duration` (request sent to the worker → response).
    worker: Summary,
    concurrent: Summary,
    throughput: f64,
    cold_deploy: Summary,
    /// The `deploy` part of `cold_deploy` (worker started and handler imported).
    deploy_only: Summary,
    cold_zero: Summary,
    to_zero: Summary,
}

impl LangResult {
    fn json(&self) -> Value {
        json!({
            "warm": self.warm.json(),
            "worker_roundtrip": self.worker.json(),
            "concurrent": self.concurrent.json(),
            "throughput_per_s": self.throughput.round(),
            "cold_deploy_to_answer": self.cold_deploy.json(),
            "cold_deploy_only": self.deploy_only.json(),
            "cold_after_scale_to_zero": self.cold_zero.json(),
        })
    }
}

async fn bench_language(rt: &Runtime, kind: Kind, args: &InvokeBenchArgs) -> Result<LangResult> {
    let lang = lang_name(kind);
    let name = format!("echo-{lang}");
    let workers = args.workers.max(1);
    let mut def = echo_def(&name, kind, "warm".into());
    def.max_instances = workers;
    def.min_warm = workers;
    def.queue_capacity = (args.concurrency as usize * 2).max(100);
    rt.deploy(def)
        .await
        .map_err(|e| anyhow!("deploying the {lang} echo: {e}"))?;
    wait_for(
        &format!("{workers} warm {lang} workers"),
        Duration::from_secs(30),
        || {
            rt.stats()
                .iter()
                .any(|s| s.name == name && s.warm >= workers as usize && s.starting == 0)
        },
    )
    .await?;

    // Warm, sequential.
    for i in 0..WARMUP {
        let input = json!({ "i": i });
        let inv = rt.invoke(&name, Input::Json(input.clone())).await?;
        check_echo(&inv.output, &input)?;
    }
    let mut lat = Vec::with_capacity(args.requests as usize);
    let mut worker = Vec::with_capacity(args.requests as usize);
    let mut cold = 0;
    for i in 0..args.requests {
        let input = json!({ "i": i });
        let t = Instant::now();
        let inv = rt.invoke(&name, Input::Json(input.clone())).await?;
        lat.push(t.elapsed());
        worker.push(inv.duration);
        cold += u64::from(inv.cold);
        check_echo(&inv.output, &input)?;
    }
    if cold > 0 {
        outln!("  note: {cold} of the warm invokes were cold starts");
    }
    let warm = Summary::new(lat);
    let worker = Summary::new(worker);
    outln!("  warm sync invoke (sequential):    {}", warm.line());
    outln!(
        "    of which runtime → worker → runtime (Invocation::duration): p50 {} ms, p99 {} ms",
        f3(worker.q(0.5)),
        f3(worker.q(0.99))
    );

    // Throughput.
    let next = Arc::new(AtomicU64::new(0));
    let total = args.requests;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (rt, next, name) = (rt.clone(), next.clone(), name.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let input = json!({ "i": i });
                let t = Instant::now();
                let inv = rt.invoke(&name, Input::Json(input.clone())).await?;
                lat.push(t.elapsed());
                check_echo(&inv.output, &input)?;
            }
        }));
    }
    let mut all = Vec::with_capacity(total as usize);
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = start.elapsed();
    let throughput = total as f64 / elapsed.as_secs_f64();
    let concurrent = Summary::new(all);
    outln!(
        "  throughput: {total} invokes in {:.2} s = {:.0} invocations/s ({} callers, {workers} workers); latency {}",
        elapsed.as_secs_f64(),
        throughput,
        args.concurrency.max(1),
        concurrent.line()
    );
    rt.remove(&name).await;

    // Cold start: deploy of a new version → first answer, one worker.
    let cold_name = format!("cold-{lang}");
    let mut cold_lat = Vec::new();
    let mut deploy_lat = Vec::new();
    for run in 0..args.cold_runs {
        let mut def = echo_def(&cold_name, kind, format!("v{run}-{}", std::process::id()));
        def.min_warm = 1;
        def.max_instances = 1;
        let input = json!({ "run": run });
        let t = Instant::now();
        rt.deploy(def)
            .await
            .map_err(|e| anyhow!("deploying {cold_name}: {e}"))?;
        let deployed = t.elapsed();
        let inv = rt.invoke(&cold_name, Input::Json(input.clone())).await?;
        cold_lat.push(t.elapsed());
        deploy_lat.push(deployed);
        check_echo(&inv.output, &input)?;
        // Let the previous version's worker exit before the next run.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    rt.remove(&cold_name).await;
    let cold_deploy = Summary::new(cold_lat);
    let deploy_only = Summary::new(deploy_lat);
    outln!(
        "  cold start, deploy of a new version → first answer: p50 {} ms, max {} ms (n={}; deploy itself p50 {} ms)",
        f3(cold_deploy.q(0.5)),
        f3(cold_deploy.q(1.0)),
        cold_deploy.n,
        f3(deploy_only.q(0.5))
    );

    // Cold start after scale to zero.
    let zero_name = format!("zero-{lang}");
    let mut def = echo_def(&zero_name, kind, "zero".into());
    def.min_warm = 0;
    def.max_instances = 1;
    def.idle = Duration::from_millis(300);
    rt.deploy(def)
        .await
        .map_err(|e| anyhow!("deploying {zero_name}: {e}"))?;
    let mut zero_lat = Vec::new();
    let mut to_zero = Vec::new();
    for run in 0..args.zero_runs {
        let waited = wait_for(
            &format!("{zero_name} scaled to zero"),
            Duration::from_secs(30),
            || {
                rt.stats()
                    .iter()
                    .any(|s| s.name == zero_name && s.warm == 0 && s.starting == 0)
            },
        )
        .await?;
        to_zero.push(waited);
        let input = json!({ "zero": run });
        let t = Instant::now();
        let inv = rt.invoke(&zero_name, Input::Json(input.clone())).await?;
        zero_lat.push(t.elapsed());
        check_echo(&inv.output, &input)?;
        if !inv.cold {
            bail!("{zero_name}: the invoke after scale to zero was not a cold start");
        }
    }
    rt.remove(&zero_name).await;
    let cold_zero = Summary::new(zero_lat);
    let to_zero = Summary::new(to_zero);
    outln!(
        "  cold start after scale to zero (idle 300ms, min_warm 0): p50 {} ms, max {} ms (n={}, every one cold)",
        f3(cold_zero.q(0.5)),
        f3(cold_zero.q(1.0)),
        cold_zero.n
    );
    Ok(LangResult {
        kind,
        warm,
        worker,
        concurrent,
        throughput,
        cold_deploy,
        deploy_only,
        cold_zero,
        to_zero,
    })
}

struct ForkResult {
    runs: Summary,
    shim: Option<(PathBuf, Summary)>,
}

async fn bench_fork(
    python: &Path,
    shim: Option<&Path>,
    dir: &Path,
    runs: u32,
) -> Result<ForkResult> {
    let code = dir.join("fork");
    std::fs::create_dir_all(&code).with_context(|| code.display().to_string())?;
    std::fs::write(code.join("handler.py"), PY_CODE).context("writing handler.py")?;
    let input = json!({ "i": 1 });
    let fork = async |p: &Path| {
        verge_runtime::bench::fork_per_request(p, &code, "handler.main", &input).await
    };
    for _ in 0..3 {
        fork(python).await?;
    }
    let mut v = Vec::new();
    for _ in 0..runs {
        v.push(fork(python).await?);
    }
    let runs_s = Summary::new(v);
    let shim = match shim {
        Some(s) => {
            let n = runs.clamp(1, 10);
            fork(s).await?;
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(fork(s).await?);
            }
            Some((s.to_path_buf(), Summary::new(v)))
        }
        None => None,
    };
    Ok(ForkResult { runs: runs_s, shim })
}

pub async fn run(args: &InvokeBenchArgs, client: Option<Client>) -> Result<()> {
    anyhow::ensure!(args.requests > 0, "--requests must be positive");
    let python = tokio::task::spawn_blocking(verge_runtime::bench::resolve_python)
        .await?
        .map_err(|e| anyhow!("{e}"))?;
    let py_version = version_of(&python, &["-c", "import sys;print(sys.version.split()[0])"]).await;
    let path_python = on_path(&["python3"]);
    let shim = path_python
        .as_deref()
        .filter(|p| *p != python && is_shim(p))
        .map(Path::to_path_buf);
    let node_bin = on_path(&["node", "nodejs"]);
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());

    outln!("verge bench invoke");
    outln!(
        "machine: {cpus} CPUs; workers {}, requests {}, concurrency {}",
        args.workers,
        args.requests,
        args.concurrency
    );
    let path_note = match &path_python {
        Some(p) if *p == python => "also `python3` on PATH".to_string(),
        Some(p) if is_shim(p) => format!(
            "`python3` on PATH is {}, a version-manager shim, not used",
            p.display()
        ),
        Some(p) => format!("`python3` on PATH is {}", p.display()),
        None => "no `python3` on PATH".to_string(),
    };
    outln!(
        "python: {} (Python {py_version}; {path_note})",
        python.display()
    );
    let run_node = !args.skip_node_js && node_bin.is_some();
    let node_version = match &node_bin {
        Some(n) if run_node => Some(version_of(n, &["--version"]).await),
        _ => None,
    };
    match (&node_bin, args.skip_node_js) {
        (_, true) => outln!("node: skipped (--skip-node-js)"),
        (None, false) => outln!("node: not installed (no `node` or `nodejs` on PATH): skipped"),
        (Some(n), false) => outln!(
            "node: {} ({})",
            n.display(),
            node_version.as_deref().unwrap_or("?")
        ),
    }

    let dir = tempfile::tempdir().context("temp dir")?;
    let mut cfg = RuntimeConfig::new(dir.path().join("work"), Arc::new(Registry::new()));
    cfg.python = Some(python.clone());
    cfg.node = node_bin.clone();
    let rt = Runtime::new(cfg);

    let mut langs = Vec::new();
    let mut kinds = vec![Kind::Python3];
    if run_node {
        kinds.push(Kind::Nodejs);
    }
    for kind in kinds {
        outln!();
        outln!(
            "[{}] trivial echo, in process (the handler does nothing: its latency is an upper bound of the runtime's overhead)",
            lang_name(kind)
        );
        let r = bench_language(&rt, kind, args).await;
        match r {
            Ok(r) => langs.push(r),
            Err(e) => {
                rt.shutdown().await;
                return Err(e.context(format!("{} in process", lang_name(kind))));
            }
        }
    }
    rt.shutdown().await;

    outln!();
    outln!(
        "[fork-per-request baseline] {} -B -c DRIVER per invocation, same handler",
        python.display()
    );
    let fork = bench_fork(&python, shim.as_deref(), dir.path(), args.fork_runs.max(1)).await?;
    let py = langs
        .iter()
        .find(|l| l.kind == Kind::Python3)
        .ok_or_else(|| anyhow!("no python figures"))?;
    let ratio = fork.runs.q(0.5) / py.warm.q(0.5);
    outln!("  per invocation: {}", fork.runs.line());
    outln!(
        "  ratio fork p50 / warm python p50: {ratio:.0}x ({} ms vs {} ms)",
        f3(fork.runs.q(0.5)),
        f3(py.warm.q(0.5))
    );
    if let Some((s, sum)) = &fork.shim {
        outln!(
            "  through the shim {} instead: p50 {} ms (n={}) — why the runtime resolves past shims",
            s.display(),
            f3(sum.q(0.5)),
            sum.n
        );
    }

    let https = if args.skip_https {
        None
    } else {
        outln!();
        outln!(
            "[HTTPS invoke] POST /api/v1/functions/{ECHO_CLOUD}/invoke, python3 echo placed in the cloud, on a verge cloud started by the benchmark"
        );
        let r = bench_https(args).await.context("the HTTPS invoke phase")?;
        outln!("  sequential: {}", r.sequential.line());
        outln!(
            "  concurrency {}: {:.0} invokes/s (in process: {:.0}/s); {}",
            args.concurrency,
            r.throughput,
            py.throughput,
            r.concurrent.line()
        );
        outln!(
            "  beside in process: p50 {} ms vs {} ms, p99 {} ms vs {} ms",
            f3(r.sequential.q(0.5)),
            f3(py.warm.q(0.5)),
            f3(r.sequential.q(0.99)),
            f3(py.warm.q(0.99))
        );
        Some(r)
    };

    let dispatch = match (&args.node, client) {
        (Some(node), Some(client)) => {
            outln!();
            outln!("[dispatch cloud → edge → result] node {node}");
            Some(bench_dispatch(&client, node, args).await?)
        }
        _ => None,
    };

    // Targets.
    outln!();
    outln!("targets:");
    let mut targets = serde_json::Map::new();
    for l in &langs {
        let lang = lang_name(l.kind);
        let (p50, p99) = (l.warm.q(0.5), l.warm.q(0.99));
        outln!(
            "  {lang} warm overhead (upper bound) p50 {} ms ≤ 1 ms: {}; p99 {} ms ≤ 5 ms: {}",
            f3(p50),
            verdict(p50 <= 1.0),
            f3(p99),
            verdict(p99 <= 5.0)
        );
        targets.insert(format!("{lang}_warm_p50_le_1ms"), json!(p50 <= 1.0));
        targets.insert(format!("{lang}_warm_p99_le_5ms"), json!(p99 <= 5.0));
    }
    outln!(
        "  python throughput {:.0}/s ≥ 3000/s: {}",
        py.throughput,
        verdict(py.throughput >= 3000.0)
    );
    targets.insert(
        "python_throughput_ge_3000".into(),
        json!(py.throughput >= 3000.0),
    );
    let cold_p50 = py.cold_deploy.q(0.5);
    let zero_p50 = py.cold_zero.q(0.5);
    outln!(
        "  python cold start p50 {} ms (deploy → answer), {} ms (after scale to zero) ≤ 100 ms: {}, {}",
        f3(cold_p50),
        f3(zero_p50),
        verdict(cold_p50 <= 100.0),
        verdict(zero_p50 <= 100.0)
    );
    targets.insert(
        "python_cold_deploy_p50_le_100ms".into(),
        json!(cold_p50 <= 100.0),
    );
    targets.insert(
        "python_cold_zero_p50_le_100ms".into(),
        json!(zero_p50 <= 100.0),
    );
    match &dispatch {
        Some(d) => {
            let p50 = d.invoke.q(0.5);
            outln!(
                "  dispatch p50 {} ms ≤ 10 ms: {}",
                f3(p50),
                verdict(p50 <= 10.0)
            );
            targets.insert("dispatch_p50_le_10ms".into(), json!(p50 <= 10.0));
        }
        None => outln!("  dispatch p50 ≤ 10 ms: not measured (pass --node NAME)"),
    }

    let mut runtimes = serde_json::Map::new();
    for l in &langs {
        let mut v = l.json();
        v["time_to_zero"] = l.to_zero.json();
        runtimes.insert(lang_name(l.kind).into(), v);
    }
    let summary = json!({
        "bench": "invoke",
        "cpus": cpus,
        "workers": args.workers,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "python": python.display().to_string(),
        "python_version": py_version,
        "node": if run_node { node_bin.as_ref().map(|n| n.display().to_string()) } else { None },
        "node_version": node_version,
        "runtimes": runtimes,
        "fork_per_request": {
            "runs": fork.runs.json(),
            "ratio_p50_vs_warm_python": (ratio * 10.0).round() / 10.0,
            "shim": fork.shim.as_ref().map(|(p, s)| json!({"path": p.display().to_string(), "runs": s.json()})),
        },
        "https_invoke": https.as_ref().map(|h| json!({
            "function": ECHO_CLOUD,
            "sequential": h.sequential.json(),
            "concurrent": h.concurrent.json(),
            "concurrency": args.concurrency,
            "throughput_per_s": h.throughput.round(),
        })),
        "dispatch": dispatch.as_ref().map(DispatchResult::json),
        "targets": targets,
    });
    outln!();
    outln!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// The cloud-placed echo over HTTPS.
struct HttpsResult {
    sequential: Summary,
    concurrent: Summary,
    throughput: f64,
}

/// One `POST /api/v1/functions/{name}/invoke`; checks the echo.
async fn invoke_https(client: &Client, name: &str, input: &Value) -> Result<()> {
    let resp = client
        .request(Method::POST, &format!("/api/v1/functions/{name}/invoke"))
        .json(input)
        .timeout(Duration::from_secs(70))
        .send()
        .await
        .map_err(|e| anyhow!("invoking {name}: {}", flatten(&e)))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!(
            "invoke {name}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let v: Value = serde_json::from_slice(&body).context("the invoke answer")?;
    if &v != input {
        bail!("invoke {name}: answered {v}, expected {input}");
    }
    Ok(())
}

/// Waits until Function `name` is Ready at its generation.
async fn wait_function_ready(client: &Client, name: &str) -> Result<()> {
    use verge_api::Kind as ApiKind;
    let start = Instant::now();
    loop {
        let o = client.get(ApiKind::Function, name).await?;
        let phase = o.status["phase"].as_str().unwrap_or("");
        if phase == "Ready" && o.status["observedGeneration"] == json!(o.metadata.generation) {
            return Ok(());
        }
        if phase == "Failed" {
            bail!("{name}: Failed: {}", o.status["message"]);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{name}: not Ready after 60s: {}", o.status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bench_https(args: &InvokeBenchArgs) -> Result<HttpsResult> {
    let n = args.https_requests.max(1);
    let server = crate::api::start_server(args.concurrency).await?;
    let client = Client::new(&server.config)?;
    let body = json!({
        "apiVersion": "verge.dev/v1", "kind": "Function",
        "metadata": {"name": ECHO_CLOUD},
        "spec": {"runtime": "python3", "handler": "handler.main", "code": PY_CODE,
            "placement": {"cloud": true}}
    });
    let _: Value = client
        .send_json(Method::POST, "/api/v1/functions", Some(&body))
        .await
        .with_context(|| format!("creating {ECHO_CLOUD}"))?;
    wait_function_ready(&client, ECHO_CLOUD).await?;
    for i in 0..WARMUP {
        invoke_https(&client, ECHO_CLOUD, &json!({ "warmup": i })).await?;
    }
    let mut v = Vec::with_capacity(n as usize);
    for i in 0..n {
        let input = json!({ "i": i });
        let t = Instant::now();
        invoke_https(&client, ECHO_CLOUD, &input).await?;
        v.push(t.elapsed());
    }
    let sequential = Summary::new(v);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..args.concurrency.max(1) {
        let (client, next) = (client.clone(), next.clone());
        callers.push(tokio::spawn(async move {
            let mut v = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(v);
                }
                let input = json!({ "c": i });
                let t = Instant::now();
                invoke_https(&client, ECHO_CLOUD, &input).await?;
                v.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::with_capacity(n as usize);
    for c in callers {
        all.extend(c.await??);
    }
    let elapsed = start.elapsed();
    drop(server);
    Ok(HttpsResult {
        sequential,
        concurrent: Summary::new(all),
        throughput: n as f64 / elapsed.as_secs_f64(),
    })
}

struct DispatchResult {
    node: String,
    invoke: Summary,
    task_total: Summary,
    task_dispatch: Summary,
    task_node: Summary,
    task_client: Summary,
}

impl DispatchResult {
    fn json(&self) -> Value {
        json!({
            "node": self.node,
            "invoke_roundtrip": self.invoke.json(),
            "task_finished_minus_created": self.task_total.json(),
            "task_dispatched_minus_created": self.task_dispatch.json(),
            "task_finished_minus_dispatched": self.task_node.json(),
            "task_client_create_to_seen_succeeded": self.task_client.json(),
        })
    }
}

/// One invoke through the cloud on `node`; checks the echo and where it ran.
async fn invoke_on(client: &Client, node: &str, input: &Value) -> Result<()> {
    let resp = client
        .request(Method::POST, &format!("/api/v1/functions/{ECHO}/invoke"))
        .query(&[("node", node)])
        .json(input)
        .timeout(Duration::from_secs(70))
        .send()
        .await
        .map_err(|e| anyhow!("invoking {ECHO}: {}", flatten(&e)))?;
    let status = resp.status();
    let ran_on = resp
        .headers()
        .get("x-verge-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!(
            "invoke {ECHO} on {node}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        );
    }
    let v: Value = serde_json::from_slice(&body).context("the invoke answer")?;
    if &v != input {
        bail!("invoke {ECHO}: answered {v}, expected {input}");
    }
    if ran_on != node {
        bail!("invoke {ECHO}: ran on {ran_on:?}, expected {node:?}");
    }
    Ok(())
}

async fn bench_dispatch(
    client: &Client,
    node: &str,
    args: &InvokeBenchArgs,
) -> Result<DispatchResult> {
    use verge_api::Kind as ApiKind;
    if client.get_opt(ApiKind::Node, node).await?.is_none() {
        bail!("node {node:?} not found (GET /api/v1/nodes/{node})");
    }
    match client.get_opt(ApiKind::Function, ECHO).await? {
        Some(_) => outln!("  function {ECHO}: exists, reused"),
        None => {
            let body = json!({
                "apiVersion": "verge.dev/v1", "kind": "Function",
                "metadata": {"name": ECHO},
                "spec": {"runtime": "python3", "handler": "handler.main", "code": PY_CODE}
            });
            let _: Value = client
                .send_json(Method::POST, "/api/v1/functions", Some(&body))
                .await
                .context("creating bench-echo")?;
            outln!("  function {ECHO}: created (python3 echo, edge-placed)");
        }
    }
    let start = Instant::now();
    loop {
        let o = client.get(ApiKind::Function, ECHO).await?;
        let phase = o.status["phase"].as_str().unwrap_or("");
        if phase == "Ready" && o.status["observedGeneration"] == json!(o.metadata.generation) {
            break;
        }
        if phase == "Failed" {
            bail!("{ECHO}: Failed: {}", o.status["message"]);
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("{ECHO}: not Ready after 60s: {}", o.status);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Warm-up; the first one may wait for the node to receive the function.
    let start = Instant::now();
    loop {
        match invoke_on(client, node, &json!({"warmup": 0})).await {
            Ok(()) => break,
            Err(e) if start.elapsed() < Duration::from_secs(60) => {
                tracing::debug!("first invoke: {e:#}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.context("the first invoke, after 60s of retries")),
        }
    }
    outln!(
        "  first successful invoke after {} ms",
        start.elapsed().as_millis()
    );
    for i in 1..DISPATCH_WARMUP {
        invoke_on(client, node, &json!({ "warmup": i })).await?;
    }

    let mut v = Vec::new();
    for i in 0..args.dispatch_runs {
        let input = json!({ "i": i });
        let t = Instant::now();
        invoke_on(client, node, &input).await?;
        v.push(t.elapsed());
    }
    let invoke = Summary::new(v);
    outln!(
        "  POST /api/v1/functions/{ECHO}/invoke?node={node} round trip (client): {}",
        invoke.line()
    );

    // Tasks, one at a time, timed by the server.
    let (mut total, mut disp, mut on_node, mut client_side) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let ms = |a: i64, b: i64| Duration::from_millis(a.saturating_sub(b).max(0) as u64);
    for i in 0..args.task_runs {
        let body = json!({"function": ECHO, "input": {"task": i}, "target": {"node": node}});
        let t = Instant::now();
        let created: Value = client
            .send_json(Method::POST, "/api/v1/tasks", Some(&body))
            .await
            .context("creating a task")?;
        let id = created["taskId"]
            .as_str()
            .ok_or_else(|| anyhow!("no taskId in {created}"))?
            .to_string();
        let status = loop {
            let o: Value = client
                .send_json(Method::GET, &format!("/api/v1/tasks/{id}"), None)
                .await?;
            let s = o["status"].clone();
            match s["phase"].as_str().unwrap_or("") {
                "Succeeded" => break s,
                "Failed" | "TimedOut" | "Cancelled" => bail!("task {id}: {s}"),
                _ => {}
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("task {id}: not finished after 60s: {s}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        client_side.push(t.elapsed());
        let at = |k: &str| status[k].as_i64();
        let (Some(c), Some(f)) = (at("createdAtMs"), at("finishedAtMs")) else {
            bail!("task {id}: no createdAtMs/finishedAtMs in {status}");
        };
        total.push(ms(f, c));
        if let Some(d) = at("dispatchedAtMs") {
            disp.push(ms(d, c));
            on_node.push(ms(f, d));
        }
    }
    let (task_total, task_dispatch, task_node, task_client) = (
        Summary::new(total),
        Summary::new(disp),
        Summary::new(on_node),
        Summary::new(client_side),
    );
    outln!("  tasks (POST /api/v1/tasks, one at a time; server timestamps have 1 ms resolution):");
    outln!("    finishedAtMs − createdAtMs:    {}", task_total.line());
    outln!(
        "    dispatchedAtMs − createdAtMs:  {}",
        task_dispatch.line()
    );
    outln!("    finishedAtMs − dispatchedAtMs: {}", task_node.line());
    outln!(
        "    client: create → seen Succeeded (polling every 2 ms): {}",
        task_client.line()
    );
    Ok(DispatchResult {
        node: node.to_string(),
        invoke,
        task_total,
        task_dispatch,
        task_node,
        task_client,
    })
}
