//! The Verge function runtime, shared by the cloud and the edge agent.
//!
//! Per function a pool of warm worker processes (`python3`, `node`) that import the
//! user's handler once and then serve invocations, plus `builtin` functions: Rust
//! closures registered by name in a [`Registry`].
//!
//! - **Protocol** ([`frame`]): the runtime binds a unix socket per worker in
//!   `work_dir/.verge/` (mode 0700) and passes its path in `VERGE_SOCK`; the worker
//!   connects, imports the handler and sends a ready (or load-error) frame. Requests
//!   and responses are length-prefixed frames on that socket, so the process's stdin
//!   (`/dev/null`), stdout and stderr are the user's: the handler's prints are captured
//!   inside the worker per invocation (capped at [`RuntimeConfig::max_log_bytes`], with
//!   a `[... N bytes dropped]` marker), and raw fd writes are drained by the runtime and
//!   logged (capped) through `tracing`.
//! - **Concurrency**: a python/node worker serves one invocation at a time;
//!   `max_instances` bounds the workers, `queue_capacity` the invocations waiting for
//!   one. A builtin runs up to `max_concurrency` invocations at once on tokio's blocking
//!   pool.
//! - **Limits**: the timeout kills the worker's process group (SIGKILL) and the worker
//!   is replaced on demand. Memory: python sets `RLIMIT_AS` in the worker (allocation
//!   past it raises `MemoryError`); node gets `--max-old-space-size` (a heap overflow
//!   kills the worker: [`Error::WorkerCrashed`]). cgroups are not used here: this is the
//!   rlimit fallback, per worker.
//! - **Environment**: cleared; the worker gets `PATH`, `HOME`, `LANG` from the parent,
//!   then the function's `env`.
//! - **Objects** ([`objects`]): the [`ObjectSink`] a host installs in an [`ObjectSlot`]
//!   for its builtins (the cloud's buckets; none on an edge node).
//! - Inline code is written to `work_dir/<name>/<version>/`; old versions' directories
//!   are left in place.

pub mod bench;
mod builtin;
mod error;
pub mod frame;
pub mod objects;
mod pool;
pub mod sandbox;
pub mod spec;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{OnceCell, Semaphore};

pub use builtin::{BuiltinError, Registry};
pub use error::{Error, Result};
pub use objects::{ObjectError, ObjectErrorKind, ObjectSink, ObjectSlot, StoredObject};
pub use sandbox::{SandboxConfig, SandboxMode, SandboxStatus};

use builtin::BuiltinFn;
use pool::{Dispatch, Launch, ProcPool};
use sandbox::Sandbox;

/// Default cap on the output captured per invocation.
pub const DEFAULT_MAX_LOG_BYTES: usize = 64 * 1024;

const PYTHON_WORKER: &str = include_str!("../workers/python_worker.py");
const NODE_WORKER: &str = include_str!("../workers/node_worker.js");

/// The language a function is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Python3,
    Nodejs,
    Builtin,
}

/// Where a function's code comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// The module's text, written to `work_dir/<name>/<version>/<module>.py|.js`.
    Inline(String),
    /// A directory holding the module (added to `sys.path` / `NODE_PATH`).
    Dir(PathBuf),
    /// No code (builtins).
    None,
}

#[derive(Clone, Debug)]
pub struct FunctionDef {
    pub name: String,
    /// Any string that changes when the code or the configuration changes.
    pub version: String,
    pub runtime: Kind,
    /// `module.function` (python: `module.py`; node: `module.js`, an exported function),
    /// or the builtin's registered name (`image.resize`).
    pub handler: String,
    pub source: Source,
    pub env: BTreeMap<String, String>,
    /// Per worker.
    pub memory_bytes: Option<u64>,
    /// Per invocation.
    pub timeout: Duration,
    /// In-flight invocations per builtin function; python/node workers serve one
    /// invocation at a time whatever this says.
    pub max_concurrency: u32,
    pub min_warm: u32,
    pub max_instances: u32,
    /// Idle workers above `min_warm` stop after this long.
    pub idle: Duration,
    /// Invocations waiting beyond busy workers; when full, [`Error::QueueFull`].
    pub queue_capacity: usize,
}

impl FunctionDef {
    /// A definition with defaults: version "1", 30 s timeout, concurrency 4, 1 warm
    /// worker, up to 2, idle 5 min, queue 100, no memory limit.
    pub fn new(name: &str, runtime: Kind, handler: &str, source: Source) -> Self {
        FunctionDef {
            name: name.to_string(),
            version: "1".to_string(),
            runtime,
            handler: handler.to_string(),
            source,
            env: BTreeMap::new(),
            memory_bytes: None,
            timeout: Duration::from_secs(30),
            max_concurrency: 4,
            min_warm: 1,
            max_instances: 2,
            idle: Duration::from_secs(300),
            queue_capacity: 100,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    Json(serde_json::Value),
    Bytes { content_type: String, data: Bytes },
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Json(serde_json::Value),
    Bytes { content_type: String, data: Bytes },
}

impl Output {
    /// The JSON form of an output: the value, or `{contentType, base64}` for bytes
    /// (how task results carry bytes).
    pub fn into_json(self) -> serde_json::Value {
        use base64::Engine;
        match self {
            Output::Json(v) => v,
            Output::Bytes { content_type, data } => serde_json::json!({
                "contentType": content_type,
                "base64": base64::engine::general_purpose::STANDARD.encode(&data),
            }),
        }
    }
}

#[derive(Debug)]
pub struct Invocation {
    pub output: Output,
    /// The handler's captured stdout+stderr, capped, with a `[... N bytes dropped]`
    /// marker when over the cap.
    pub logs: String,
    /// From sending the request to the worker to its response.
    pub duration: Duration,
    /// A worker had to be started for this invocation.
    pub cold: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    pub name: String,
    pub version: String,
    pub runtime: Kind,
    /// Started worker processes (idle or busy); 0 for builtins.
    pub warm: usize,
    /// Workers being started.
    pub starting: usize,
    /// Workers (builtins: invocations) busy now.
    pub busy: usize,
    pub queued: usize,
    pub invocations: u64,
    pub cold_starts: u64,
}

#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where inline code, worker scripts and sockets go (created with mode 0700).
    pub work_dir: PathBuf,
    pub builtins: Arc<Registry>,
    /// None: `/usr/bin/python3`, else `python3` on PATH resolved to the real executable.
    pub python: Option<PathBuf>,
    /// None: `node` or `nodejs` on PATH.
    pub node: Option<PathBuf>,
    pub max_log_bytes: usize,
    /// How python3/node workers are isolated (builtins run in-process: they are
    /// Verge's own code).
    pub sandbox: SandboxConfig,
}

impl RuntimeConfig {
    /// Defaults: the sandbox enforced, with its default limits.
    pub fn new(work_dir: PathBuf, builtins: Arc<Registry>) -> Self {
        RuntimeConfig {
            work_dir,
            builtins,
            python: None,
            node: None,
            max_log_bytes: DEFAULT_MAX_LOG_BYTES,
            sandbox: SandboxConfig::default(),
        }
    }
}

/// The function runtime; cheap to clone. Workers are killed on [`Runtime::shutdown`]
/// and when the last clone is dropped.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("work_dir", &self.inner.config.work_dir)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
enum Pool {
    Proc(Arc<ProcPool>),
    Builtin(Arc<BuiltinPool>),
}

impl Pool {
    fn def(&self) -> &FunctionDef {
        match self {
            Pool::Proc(p) => p.def(),
            Pool::Builtin(b) => &b.def,
        }
    }

    fn close(&self, kill: bool) {
        match self {
            Pool::Proc(p) => p.close(kill),
            Pool::Builtin(b) => {
                if kill {
                    b.sem.close();
                }
            }
        }
    }

    fn stats(&self) -> PoolStats {
        match self {
            Pool::Proc(p) => p.stats(),
            Pool::Builtin(b) => b.stats(),
        }
    }
}

struct Inner {
    config: RuntimeConfig,
    pools: Mutex<HashMap<String, Pool>>,
    python: OnceCell<std::result::Result<PathBuf, String>>,
    node: OnceCell<std::result::Result<PathBuf, String>>,
    scripts: OnceCell<std::result::Result<PathBuf, String>>,
    sandbox: OnceCell<std::result::Result<Arc<Sandbox>, String>>,
    seq: Arc<AtomicU64>,
    shut: AtomicBool,
}

impl Inner {
    fn pools(&self) -> MutexGuard<'_, HashMap<String, Pool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for (_, pool) in self.pools().drain() {
            pool.close(true);
        }
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Runtime {
        Runtime {
            inner: Arc::new(Inner {
                config,
                pools: Mutex::new(HashMap::new()),
                python: OnceCell::new(),
                node: OnceCell::new(),
                scripts: OnceCell::new(),
                sandbox: OnceCell::new(),
                seq: Arc::new(AtomicU64::new(1)),
                shut: AtomicBool::new(false),
            }),
        }
    }

    /// Installs or replaces the pool for `def.name`. The same version again is a no-op;
    /// a new version starts (and loads) its first worker before the old pool is closed:
    /// old workers finish what they are running, then exit. A load failure leaves the
    /// old version in place.
    pub async fn deploy(&self, def: FunctionDef) -> Result<()> {
        validate(&def)?;
        if self.inner.shut.load(Ordering::Acquire) {
            return Err(Error::Unavailable {
                message: "the function runtime is shut down".into(),
            });
        }
        if let Some(p) = self.inner.pools().get(&def.name)
            && p.def().version == def.version
            && p.def().runtime == def.runtime
        {
            return Ok(());
        }
        let pool = match def.runtime {
            Kind::Builtin => {
                let f = self
                    .inner
                    .config
                    .builtins
                    .get(&def.handler)
                    .ok_or_else(|| Error::Load {
                        message: format!(
                            "builtin {:?} is not registered (known: {})",
                            def.handler,
                            self.inner.config.builtins.names().join(", ")
                        ),
                    })?;
                Pool::Builtin(Arc::new(BuiltinPool::new(def.clone(), f)))
            }
            Kind::Python3 | Kind::Nodejs => {
                let launch = self.launch(&def, false).await?;
                Pool::Proc(
                    ProcPool::start(
                        def.clone(),
                        launch,
                        self.inner.config.max_log_bytes,
                        self.inner.seq.clone(),
                    )
                    .await?,
                )
            }
        };
        let old = self.inner.pools().insert(def.name.clone(), pool);
        if let Some(old) = old {
            old.close(false);
        }
        if self.inner.shut.load(Ordering::Acquire) {
            self.shutdown().await;
        }
        tracing::info!(function = %def.name, version = %def.version, runtime = ?def.runtime, "function deployed");
        Ok(())
    }

    /// Compiles a python3/node function's code inside the sandbox without running any
    /// of it (no module-level code, no handler lookup): the check for code that is
    /// deployed elsewhere. Builtins are checked by name.
    pub async fn check(&self, def: FunctionDef) -> Result<()> {
        validate(&def)?;
        if def.runtime == Kind::Builtin {
            return match self.inner.config.builtins.get(&def.handler) {
                Some(_) => Ok(()),
                None => Err(Error::Load {
                    message: format!("builtin {:?} is not registered", def.handler),
                }),
            };
        }
        let launch = self.launch(&def, true).await?;
        let mut def = def;
        def.min_warm = 1;
        let pool = ProcPool::start(
            def,
            launch,
            self.inner.config.max_log_bytes,
            self.inner.seq.clone(),
        )
        .await?;
        pool.close(true);
        Ok(())
    }

    /// Whether python3/node workers run sandboxed here, and if not, why. Sets the
    /// sandbox up on first use (a test worker is started once).
    pub async fn sandbox_status(&self) -> SandboxStatus {
        let cfg = &self.inner.config.sandbox;
        if cfg.mode == SandboxMode::Unsafe {
            return SandboxStatus {
                state: "disabled".into(),
                reason: Some(
                    "the operator started Verge with --unsafe-unsandboxed-functions".into(),
                ),
                uid: None,
            };
        }
        match self.sandbox().await {
            Ok(sb) => SandboxStatus {
                state: "enforced".into(),
                reason: None,
                uid: Some(sb.config().uid),
            },
            Err(reason) => SandboxStatus {
                state: "unavailable".into(),
                reason: Some(reason),
                uid: None,
            },
        }
    }

    async fn sandbox(&self) -> std::result::Result<Arc<Sandbox>, String> {
        let inner = &self.inner;
        inner
            .sandbox
            .get_or_init(|| async {
                let sys = self.scripts_dir().await.map_err(|e| e.to_string())?;
                let mut cfg = inner.config.sandbox.clone();
                // One cgroup parent per runtime: two runtimes (two processes, or the
                // cloud and the node of `verge dev`) never share groups.
                static RUNTIMES: AtomicU64 = AtomicU64::new(0);
                cfg.cgroup_parent = format!(
                    "{}-{}-{}",
                    cfg.cgroup_parent,
                    std::process::id(),
                    RUNTIMES.fetch_add(1, Ordering::Relaxed)
                );
                sandbox::cgroup::sweep(&cfg.cgroup_base, &inner.config.sandbox.cgroup_parent);
                let r = Sandbox::prepare(cfg, &sys).await.map(Arc::new);
                match &r {
                    Ok(_) => tracing::info!("function sandbox ready"),
                    Err(e) => tracing::warn!("function sandbox unavailable: {e}"),
                }
                r
            })
            .await
            .clone()
    }

    /// Removes the function and kills its workers; queued invocations fail with
    /// [`Error::NotFound`].
    pub async fn remove(&self, name: &str) {
        let pool = self.inner.pools().remove(name);
        if let Some(pool) = pool {
            pool.close(true);
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.inner.pools().contains_key(name)
    }

    pub async fn invoke(&self, name: &str, input: Input) -> Result<Invocation> {
        check_input(&input)?;
        let mut frame: Option<Vec<u8>> = None;
        for _ in 0..8 {
            let pool = self.inner.pools().get(name).cloned();
            let pool = pool.ok_or_else(|| Error::NotFound {
                name: name.to_string(),
            })?;
            match pool {
                Pool::Builtin(b) => return b.invoke(input).await,
                Pool::Proc(p) => {
                    let f = match frame.take() {
                        Some(f) => f,
                        None => encode_request(&input)?,
                    };
                    match p.dispatch(f)? {
                        Dispatch::Reply(rx) => {
                            return rx.await.unwrap_or_else(|_| {
                                Err(Error::WorkerCrashed {
                                    message: "the worker task ended without answering".into(),
                                    logs: String::new(),
                                })
                            });
                        }
                        Dispatch::Closed(f) => {
                            frame = Some(f);
                            tokio::task::yield_now().await;
                        }
                    }
                }
            }
        }
        Err(Error::NotFound {
            name: name.to_string(),
        })
    }

    /// One entry per deployed function, by name.
    pub fn stats(&self) -> Vec<PoolStats> {
        let mut v: Vec<PoolStats> = self.inner.pools().values().map(Pool::stats).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Process ids of a function's live workers (diagnostics and tests).
    pub fn worker_pids(&self, name: &str) -> Vec<u32> {
        match self.inner.pools().get(name) {
            Some(Pool::Proc(p)) => p.pids(),
            _ => Vec::new(),
        }
    }

    /// Removes every function and kills all workers; later deploys fail.
    pub async fn shutdown(&self) {
        self.inner.shut.store(true, Ordering::Release);
        let pools: Vec<Pool> = self.inner.pools().drain().map(|(_, p)| p).collect();
        for pool in pools {
            pool.close(true);
        }
    }

    async fn interpreter(&self, kind: Kind) -> Result<PathBuf> {
        let inner = &self.inner;
        let r = match kind {
            Kind::Python3 => {
                inner
                    .python
                    .get_or_init(|| async {
                        if let Some(p) = &inner.config.python {
                            return Ok(p.clone());
                        }
                        tokio::task::spawn_blocking(bench::resolve_python)
                            .await
                            .map_err(|e| e.to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                    })
                    .await
            }
            _ => {
                inner
                    .node
                    .get_or_init(|| async {
                        if let Some(p) = &inner.config.node {
                            return Ok(p.clone());
                        }
                        resolve_node().map_err(|e| e.to_string())
                    })
                    .await
            }
        };
        r.clone().map_err(|message| Error::Unavailable { message })
    }

    /// Creates work_dir and writes the worker scripts, once.
    async fn scripts_dir(&self) -> Result<PathBuf> {
        let dir = self.inner.config.work_dir.clone();
        let r = self
            .inner
            .scripts
            .get_or_init(|| async move {
                let sys = dir.join(".verge");
                make_dir(&sys).map_err(|e| e.to_string())?;
                write_if_changed(&sys.join("python_worker.py"), PYTHON_WORKER.as_bytes())
                    .map_err(|e| e.to_string())?;
                write_if_changed(&sys.join("node_worker.js"), NODE_WORKER.as_bytes())
                    .map_err(|e| e.to_string())?;
                Ok(sys)
            })
            .await;
        r.clone().map_err(|message| Error::Io {
            context: "preparing the runtime's work_dir".into(),
            source: std::io::Error::other(message),
        })
    }

    async fn launch(&self, def: &FunctionDef, check_only: bool) -> Result<Launch> {
        let sandbox = match self.inner.config.sandbox.mode {
            SandboxMode::Unsafe => None,
            SandboxMode::Enforce => {
                Some(self.sandbox().await.map_err(|reason| Error::Unavailable {
                    message: format!(
                        "function sandbox unavailable: {reason}; python3 and node functions do \
                         not run without it (an operator may start Verge with \
                         --unsafe-unsandboxed-functions to run them unsandboxed)"
                    ),
                })?)
            }
        };
        let program = self.interpreter(def.runtime).await?;
        let sys = self.scripts_dir().await?;
        let (module, _func) = def.handler.rsplit_once('.').ok_or_else(|| Error::Invalid {
            message: format!("handler {:?} must be module.function", def.handler),
        })?;
        let ext = if def.runtime == Kind::Python3 {
            "py"
        } else {
            "js"
        };
        let code_dir = match &def.source {
            Source::Inline(code) => {
                let dir = self
                    .inner
                    .config
                    .work_dir
                    .join(sanitize(&def.name))
                    .join(sanitize(&def.version));
                let file = dir.join(format!("{}.{ext}", module.replace('.', "/")));
                if let Some(parent) = file.parent() {
                    make_dir(parent)
                        .map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
                }
                write_if_changed(&file, code.as_bytes())
                    .map_err(|e| Error::io(format!("write {}", file.display()), e))?;
                dir
            }
            Source::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(Error::Load {
                        message: format!("{}: not a directory", dir.display()),
                    });
                }
                dir.clone()
            }
            Source::None => {
                return Err(Error::Invalid {
                    message: format!("{:?} functions need source code", def.runtime),
                });
            }
        };
        let script = sys.join(if def.runtime == Kind::Python3 {
            "python_worker.py"
        } else {
            "node_worker.js"
        });
        // Inside the sandbox the code is at /code; the worker must be able to read it
        // and its script.
        let code_seen: PathBuf = match &sandbox {
            Some(sb) => {
                for p in [&code_dir, &script] {
                    sb.hand_over(p)
                        .map_err(|e| Error::io(format!("preparing {}", p.display()), e))?;
                }
                PathBuf::from(sandbox::CODE_DIR)
            }
            None => code_dir.clone(),
        };
        let mut env: Vec<(OsString, OsString)> = Vec::new();
        let inherited: &[&str] = if sandbox.is_some() {
            &["LANG"]
        } else {
            &["PATH", "HOME", "LANG"]
        };
        for key in inherited {
            if let Some(v) = std::env::var_os(key) {
                env.push((key.into(), v));
            }
        }
        for (k, v) in &def.env {
            env.push((k.into(), v.into()));
        }
        env.push(("VERGE_DIR".into(), code_seen.clone().into()));
        env.push(("VERGE_HANDLER".into(), def.handler.clone().into()));
        env.push((
            "VERGE_MAX_LOG".into(),
            self.inner.config.max_log_bytes.to_string().into(),
        ));
        let mut flags: Vec<OsString> = Vec::new();
        match def.runtime {
            Kind::Python3 => {
                if let Some(m) = def.memory_bytes {
                    env.push(("VERGE_MEMORY".into(), m.to_string().into()));
                }
                flags.push("-B".into());
            }
            _ => {
                let heap = def
                    .memory_bytes
                    .or_else(|| sandbox.as_ref().map(|sb| sb.memory_of(None)));
                if let Some(m) = heap {
                    let mib = (m / (1024 * 1024)).max(8);
                    flags.push(format!("--max-old-space-size={mib}").into());
                }
                env.push(("NODE_PATH".into(), code_seen.into()));
            }
        }
        let script_args: Vec<OsString> = if check_only {
            vec!["--check".into()]
        } else {
            Vec::new()
        };
        Ok(Launch {
            program,
            flags,
            script,
            script_args,
            env,
            code_dir,
            sock_dir: sys,
            sandbox,
            memory_bytes: def.memory_bytes,
        })
    }
}

fn validate(def: &FunctionDef) -> Result<()> {
    let bad = |m: &str| {
        Err(Error::Invalid {
            message: format!("function {:?}: {m}", def.name),
        })
    };
    if def.name.is_empty() {
        return bad("empty name");
    }
    if def.version.is_empty() {
        return bad("empty version");
    }
    if def.handler.is_empty() {
        return bad("empty handler");
    }
    if def.timeout.is_zero() {
        return bad("timeout must be positive");
    }
    if def.runtime == Kind::Builtin {
        if def.max_concurrency == 0 {
            return bad("max_concurrency must be at least 1");
        }
    } else if def.max_instances == 0 {
        return bad("max_instances must be at least 1");
    }
    Ok(())
}

/// A path component for a name or version: anything outside `[A-Za-z0-9._-]` becomes
/// `_`, and a leading dot is replaced so it cannot be `.`/`..`/hidden.
fn sanitize(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with('.') {
        out.replace_range(0..1, "_");
    }
    out
}

fn make_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn write_if_changed(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

fn resolve_node() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["node", "nodejs"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(Error::Unavailable {
        message: "node is not installed (no `node` or `nodejs` on PATH); on Debian: apt-get install nodejs".into(),
    })
}

/// True for `application/json` and `*/*+json`, parameters ignored.
pub fn is_json_content_type(ct: &str) -> bool {
    let base = ct.split(';').next().unwrap_or("").trim();
    base.eq_ignore_ascii_case("application/json")
        || base
            .rsplit_once('+')
            .is_some_and(|(_, s)| s.eq_ignore_ascii_case("json"))
}

fn check_input(input: &Input) -> Result<()> {
    if let Input::Bytes { content_type, data } = input
        && is_json_content_type(content_type)
        && let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(data)
    {
        return Err(Error::BadInput {
            message: format!("content type {content_type} but the body is not valid JSON: {e}"),
        });
    }
    Ok(())
}

fn encode_request(input: &Input) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(&[0, 0, 0, 0]);
    match input {
        Input::Json(v) => {
            out.push(b'J');
            serde_json::to_writer(&mut out, v).map_err(|e| Error::BadInput {
                message: e.to_string(),
            })?;
        }
        Input::Bytes { content_type, data } if is_json_content_type(content_type) => {
            out.push(b'J');
            out.extend_from_slice(data);
        }
        Input::Bytes { content_type, data } => {
            let ct = content_type.as_bytes();
            let ctlen = u16::try_from(ct.len()).map_err(|_| Error::BadInput {
                message: "content type is too long".into(),
            })?;
            out.reserve(3 + ct.len() + data.len());
            out.push(b'B');
            out.extend_from_slice(&ctlen.to_be_bytes());
            out.extend_from_slice(ct);
            out.extend_from_slice(data);
        }
    }
    let len = out.len() - 4;
    if len > frame::MAX_FRAME {
        return Err(Error::BadInput {
            message: format!(
                "input of {len} bytes exceeds the {} byte limit",
                frame::MAX_FRAME
            ),
        });
    }
    out[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(out)
}

/// A builtin function: a semaphore of `max_concurrency` plus a bounded wait.
struct BuiltinPool {
    def: FunctionDef,
    f: Arc<BuiltinFn>,
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
    busy: AtomicUsize,
    invocations: AtomicU64,
}

struct Dec<'a>(&'a AtomicUsize);

impl Drop for Dec<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl BuiltinPool {
    fn new(def: FunctionDef, f: Arc<BuiltinFn>) -> Self {
        BuiltinPool {
            sem: Arc::new(Semaphore::new(def.max_concurrency.max(1) as usize)),
            def,
            f,
            waiting: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            invocations: AtomicU64::new(0),
        }
    }

    async fn invoke(&self, input: Input) -> Result<Invocation> {
        let not_found = || Error::NotFound {
            name: self.def.name.clone(),
        };
        let permit = match self.sem.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(not_found()),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.def.queue_capacity {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(Error::QueueFull {
                        name: self.def.name.clone(),
                        retry_after: pool::RETRY_AFTER,
                    });
                }
                let _w = Dec(&self.waiting);
                self.sem
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| not_found())?
            }
        };
        self.invocations.fetch_add(1, Ordering::Relaxed);
        self.busy.fetch_add(1, Ordering::Relaxed);
        let _b = Dec(&self.busy);
        let f = self.f.clone();
        let start = Instant::now();
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f(input)
        });
        match tokio::time::timeout(self.def.timeout, task).await {
            Ok(Ok(Ok(output))) => Ok(Invocation {
                output,
                logs: String::new(),
                duration: start.elapsed(),
                cold: false,
            }),
            Ok(Ok(Err(e))) => Err(Error::Handler {
                error_type: e.error_type,
                message: e.message,
                traceback: String::new(),
                logs: String::new(),
            }),
            Ok(Err(join)) => Err(Error::WorkerCrashed {
                message: format!("builtin {:?} panicked: {join}", self.def.handler),
                logs: String::new(),
            }),
            Err(_) => Err(Error::Timeout {
                after: self.def.timeout,
                logs: String::new(),
            }),
        }
    }

    fn stats(&self) -> PoolStats {
        PoolStats {
            name: self.def.name.clone(),
            version: self.def.version.clone(),
            runtime: Kind::Builtin,
            warm: 0,
            starting: 0,
            busy: self.busy.load(Ordering::Relaxed),
            queued: self.waiting.load(Ordering::Relaxed),
            invocations: self.invocations.load(Ordering::Relaxed),
            cold_starts: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type("application/json"));
        assert!(is_json_content_type("Application/JSON; charset=utf-8"));
        assert!(is_json_content_type("application/cloudevents+json"));
        assert!(!is_json_content_type("text/plain"));
        assert!(!is_json_content_type("application/octet-stream"));
    }

    #[test]
    fn sanitize_path_components() {
        assert_eq!(sanitize("../etc"), "_._etc");
        assert_eq!(sanitize("fn-1.2_x"), "fn-1.2_x");
        assert_eq!(sanitize("a/b c"), "a_b_c");
    }

    #[test]
    fn request_encoding() {
        let f = encode_request(&Input::Json(serde_json::json!({"a": 1}))).unwrap();
        assert_eq!(&f[..4], &8u32.to_be_bytes());
        assert_eq!(&f[4..], b"J{\"a\":1}");
        let f = encode_request(&Input::Bytes {
            content_type: "text/plain".into(),
            data: Bytes::from_static(b"hi"),
        })
        .unwrap();
        assert_eq!(&f[4..], b"B\x00\x0atext/plainhi");
        let err = check_input(&Input::Bytes {
            content_type: "application/json".into(),
            data: Bytes::from_static(b"{nope"),
        })
        .unwrap_err();
        assert!(matches!(err, Error::BadInput { .. }), "{err}");
    }
}
