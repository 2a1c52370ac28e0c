//! The native engine: programs from a verified artifact, supervised as plain processes.
//!
//! - **Payload**: the artifact (`sha256`, from the cloud's artifact store or a URL) is
//!   downloaded and verified by [`crate::artifact::fetch`], then unpacked into
//!   `apps/{app}/{version}/` (one directory per app and version; a `.verge-ready`
//!   marker says it is complete).
//! - **Process**: started through `/bin/sh` (present on every Linux the agent targets,
//!   busybox included), which first writes its own pid into the instance's cgroups
//!   and sets the rlimit fallback, then `exec`s the command: the process is limited
//!   from its first instruction, without unsafe code in the agent. It gets its own
//!   process group, so a signal to the agent's group (Ctrl-C) does not reach it; only
//!   the supervisor's `stop` ends it. stdout and stderr go to append-mode files under
//!   `apps/{app}/logs/`, rotated by size (copy-truncate), so the process keeps
//!   writing while the agent is away.
//! - **Limits**: cgroup v1 (`memory`, `cpu`, `cpuacct` hierarchies) or v2 under
//!   `verge-{node}/{app}-{replica}`; where cgroups cannot be written, `ulimit -v`
//!   (address space) stands in for memory and CPU is not limited, and the instance's
//!   status says so.
//! - **Agent restarts**: every instance has a pid file `apps/{app}/run/{replica}.json`
//!   with its pid and the kernel's start time for that pid. A new agent re-adopts a
//!   process whose pid still has that start time (so a reused pid is never mistaken
//!   for it) and cleans up the rest: never a duplicate, no restart needed.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Adopted, Enforcement, Engine, Exit, InstanceKey, InstanceSpec, Payload, Usage};
use crate::error::{Error, Result, io_err};

/// Rotate a log file past this size (one previous file is kept).
pub const LOG_ROTATE_BYTES: u64 = 10 * 1024 * 1024;
/// Largest artifact a node downloads.
pub const MAX_ARTIFACT_BYTES: u64 = 1024 * 1024 * 1024;
const CPU_PERIOD_US: u64 = 100_000;
const PATH_ENV: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Joins the cgroups named before `--`, applies the rlimit fallback, then execs.
const LAUNCH: &str = r#"while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift
if [ -n "$VERGE_ULIMIT_V" ]; then ulimit -v "$VERGE_ULIMIT_V" || exit 125; fi
unset VERGE_ULIMIT_V
exec "$@""#;

/// Where the cgroups of this agent's instances live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cgroups {
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        cpuacct: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
    /// Not writable here: the reason, reported with each instance.
    Unavailable(String),
}

impl Cgroups {
    /// Finds and prepares the agent's cgroup parents under `/sys/fs/cgroup`.
    pub fn detect(node: &str) -> Self {
        Self::detect_at(Path::new("/sys/fs/cgroup"), node)
    }

    pub fn detect_at(base: &Path, node: &str) -> Self {
        let parent = format!("verge-{node}");
        if base.join("cgroup.controllers").exists() {
            let root = base.join(&parent);
            let r = std::fs::write(base.join("cgroup.subtree_control"), "+memory +cpu")
                .and_then(|_| std::fs::create_dir_all(&root))
                .and_then(|_| std::fs::write(root.join("cgroup.subtree_control"), "+memory +cpu"));
            return match r {
                Ok(()) => Cgroups::V2 { root },
                Err(e) => Cgroups::Unavailable(format!("cgroup v2 at {}: {e}", base.display())),
            };
        }
        let memory = base.join("memory").join(&parent);
        let cpu = base.join("cpu").join(&parent);
        if !base.join("memory").is_dir() || !base.join("cpu").is_dir() {
            return Cgroups::Unavailable(format!(
                "no memory and cpu cgroup hierarchies under {}",
                base.display()
            ));
        }
        let made = std::fs::create_dir_all(&memory).and_then(|_| std::fs::create_dir_all(&cpu));
        if let Err(e) = made {
            return Cgroups::Unavailable(format!("cgroup v1 under {}: {e}", base.display()));
        }
        let cpuacct = base.join("cpuacct");
        let cpuacct = (cpuacct.is_dir() && !same_dir(&cpuacct, &base.join("cpu")))
            .then(|| cpuacct.join(&parent))
            .filter(|p| std::fs::create_dir_all(p).is_ok());
        Cgroups::V1 {
            memory,
            cpu,
            cpuacct,
        }
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// What is persisted per running instance (`run/{replica}.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PidFile {
    pid: i32,
    start_time: u64,
    version: String,
    workdir: PathBuf,
    cgroups: Vec<PathBuf>,
    env: BTreeMap<String, String>,
}

/// A running native instance.
#[derive(Debug)]
pub struct NativeHandle {
    key: InstanceKey,
    pid: i32,
    start_time: u64,
    cgroups: Vec<PathBuf>,
    workdir: PathBuf,
    env: BTreeMap<String, String>,
    pid_file: PathBuf,
    logs: [PathBuf; 2],
    exit: watch::Receiver<Option<Exit>>,
    cpu_prev: Mutex<Option<(Instant, u64)>>,
}

impl NativeHandle {
    pub fn pid(&self) -> i32 {
        self.pid
    }
    /// The instance's cgroup directories (empty under the rlimit fallback).
    pub fn cgroups(&self) -> &[PathBuf] {
        &self.cgroups
    }
    /// `[stdout, stderr]` log files.
    pub fn log_files(&self) -> &[PathBuf; 2] {
        &self.logs
    }
}

pub use crate::artifact::Fetcher;

pub struct NativeEngine {
    root: PathBuf,
    cgroups: Cgroups,
    fetcher: Option<Fetcher>,
}

impl NativeEngine {
    /// `root`: the agent's `apps/` directory.
    pub fn new(root: PathBuf, cgroups: Cgroups, fetcher: Option<Fetcher>) -> Self {
        Self {
            root,
            cgroups,
            fetcher,
        }
    }

    pub fn cgroups(&self) -> &Cgroups {
        &self.cgroups
    }

    fn app_dir(&self, app: &str, version: &str) -> PathBuf {
        self.root.join(app).join(version)
    }

    fn native(spec: &InstanceSpec) -> Result<&verge_api::specs::NativeWorkload> {
        match &spec.payload {
            Payload::Native(n) => Ok(n),
            Payload::Docker(_) => Err(Error::Invalid(format!(
                "app {}: not a native workload",
                spec.key.app
            ))),
        }
    }

    /// The command's path: inside the unpacked artifact when it names a relative path,
    /// absolute as given, or looked up on `PATH` when it is a bare name.
    fn resolve_command(&self, spec: &InstanceSpec, dir: &Path) -> Result<PathBuf> {
        let n = Self::native(spec)?;
        let cmd = &n.command;
        let not_found = || Error::CommandNotFound {
            app: spec.key.app.clone(),
            command: cmd.clone(),
        };
        let candidates: Vec<PathBuf> = if cmd.starts_with('/') {
            vec![PathBuf::from(cmd)]
        } else if cmd.contains('/') {
            vec![dir.join(cmd)]
        } else {
            std::iter::once(dir.join(cmd))
                .chain(PATH_ENV.split(':').map(|p| Path::new(p).join(cmd)))
                .collect()
        };
        candidates
            .into_iter()
            .find(|p| is_executable(p))
            .ok_or_else(not_found)
    }

    fn instance_cgroups(&self, key: &InstanceKey) -> Vec<PathBuf> {
        let leaf = format!("{}-{}", key.app, key.replica);
        match &self.cgroups {
            Cgroups::V1 {
                memory,
                cpu,
                cpuacct,
            } => {
                let mut v = vec![memory.join(&leaf), cpu.join(&leaf)];
                if let Some(a) = cpuacct {
                    v.push(a.join(&leaf));
                }
                v
            }
            Cgroups::V2 { root } => vec![root.join(&leaf)],
            Cgroups::Unavailable(_) => Vec::new(),
        }
    }

    /// Creates the instance's cgroups and writes its limits; on failure, the reason
    /// (the caller falls back to rlimits).
    fn setup_cgroups(&self, spec: &InstanceSpec) -> std::result::Result<Vec<PathBuf>, String> {
        if let Cgroups::Unavailable(why) = &self.cgroups {
            return Err(why.clone());
        }
        let dirs = self.instance_cgroups(&spec.key);
        for d in &dirs {
            // Leftovers of an earlier instance are killed before reuse.
            kill_cgroup(d, Signal::SIGKILL);
            let _ = std::fs::remove_dir(d);
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let write = |p: PathBuf, v: String| {
            std::fs::write(&p, &v).map_err(|e| format!("{}: {e}", p.display()))
        };
        match &self.cgroups {
            Cgroups::V1 { .. } => {
                if let Some(m) = spec.limits.memory_bytes {
                    write(dirs[0].join("memory.limit_in_bytes"), m.to_string())?;
                    // No swapping around the limit, where the kernel accounts swap.
                    let _ = std::fs::write(dirs[0].join("memory.swappiness"), "0");
                }
                if let Some(c) = spec.limits.cpu_millis {
                    write(dirs[1].join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                    write(
                        dirs[1].join("cpu.cfs_quota_us"),
                        (c * CPU_PERIOD_US / 1000).max(1000).to_string(),
                    )?;
                }
            }
            Cgroups::V2 { .. } => {
                if let Some(m) = spec.limits.memory_bytes {
                    write(dirs[0].join("memory.max"), m.to_string())?;
                    let _ = std::fs::write(dirs[0].join("memory.swap.max"), "0");
                }
                if let Some(c) = spec.limits.cpu_millis {
                    write(
                        dirs[0].join("cpu.max"),
                        format!("{} {CPU_PERIOD_US}", (c * CPU_PERIOD_US / 1000).max(1000)),
                    )?;
                }
            }
            Cgroups::Unavailable(_) => {}
        }
        Ok(dirs)
    }

    fn run_dir(&self, app: &str) -> PathBuf {
        self.root.join(app).join("run")
    }

    fn log_dir(&self, app: &str) -> PathBuf {
        self.root.join(app).join("logs")
    }

    fn handle_from(
        &self,
        key: InstanceKey,
        pf: PidFile,
        exit: watch::Receiver<Option<Exit>>,
    ) -> NativeHandle {
        let logs = log_paths(&self.log_dir(&key.app), key.replica);
        NativeHandle {
            pid_file: self.run_dir(&key.app).join(format!("{}.json", key.replica)),
            key,
            pid: pf.pid,
            start_time: pf.start_time,
            cgroups: pf.cgroups,
            workdir: pf.workdir,
            env: pf.env,
            logs,
            exit,
            cpu_prev: Mutex::new(None),
        }
    }
}

fn log_paths(dir: &Path, replica: u32) -> [PathBuf; 2] {
    [
        dir.join(format!("{replica}.stdout.log")),
        dir.join(format!("{replica}.stderr.log")),
    ]
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Field 22 of `/proc/{pid}/stat`: the process's start time in clock ticks since boot.
pub fn proc_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_time(&stat)
}

/// The start time from a `/proc/{pid}/stat` line (the command may hold spaces and
/// parentheses, so fields are counted after the last `)`).
pub fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": field 3 (state) is the first; start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is alive and is still the process that started at `start_time`
/// (a zombie counts as gone).
fn same_process(pid: i32, start_time: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next())
        .is_some_and(|s| s == "Z");
    !zombie && parse_start_time(&stat) == Some(start_time)
}

/// Signals every process in a cgroup directory.
fn kill_cgroup(dir: &Path, sig: Signal) -> usize {
    let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) else {
        return 0;
    };

    let mut n = 0;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        if kill(Pid::from_raw(pid), sig).is_ok() {
            n += 1;
        }
    }
    n
}

/// The cgroup's OOM-kill count (v1 `memory.oom_control`, v2 `memory.events`).
fn oom_kills(dirs: &[PathBuf]) -> u64 {
    let Some(mem) = dirs.first() else { return 0 };
    for (file, key) in [
        ("memory.oom_control", "oom_kill"),
        ("memory.events", "oom_kill"),
    ] {
        if let Ok(s) = std::fs::read_to_string(mem.join(file)) {
            for line in s.lines() {
                let mut it = line.split_whitespace();
                if it.next() == Some(key) {
                    return it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                }
            }
        }
    }
    0
}

/// One line for an exit: code or signal, OOM when the cgroup counted one.
pub fn describe_exit(
    code: Option<i32>,
    signal: Option<i32>,
    oom: bool,
    memory_limit: Option<u64>,
) -> Exit {
    let mut message = match (code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!(
            "killed by signal {s} ({})",
            Signal::try_from(s).map(|s| s.as_str()).unwrap_or("?")
        ),
        (None, None) => "exited".to_string(),
    };
    if oom {
        message.push_str(", OOM-killed");
        if let Some(m) = memory_limit {
            message.push_str(&format!(" (memory limit {})", human_bytes(m)));
        }
    }
    if code == Some(125) {
        message.push_str(" (could not join the cgroup or set the rlimit)");
    }
    Exit {
        code: code.map(i64::from).or(signal.map(|s| 128 + i64::from(s))),
        oom_killed: oom,
        message,
    }
}

fn human_bytes(b: u64) -> String {
    const MI: u64 = 1024 * 1024;
    if b.is_multiple_of(MI) {
        format!("{}Mi", b / MI)
    } else {
        format!("{b} bytes")
    }
}

/// The last `n` lines of a file (reads at most the last 1 MiB).
fn tail(path: &Path, n: usize) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(1024 * 1024);
    if f.seek(SeekFrom::Start(from)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// Complete lines written to `path` after byte `offset` (at most `max`, reading at most
/// 1 MiB), and the offset to go on from. A file shorter than `offset` was rotated:
/// read from its start.
pub fn read_new_lines(path: &Path, offset: u64, max: usize) -> (Vec<String>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), offset);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let from = if len < offset { 0 } else { offset };
    if f.seek(SeekFrom::Start(from)).is_err() || max == 0 {
        return (Vec::new(), from);
    }
    let mut buf = Vec::new();
    let _ = (&mut f).take(1024 * 1024).read_to_end(&mut buf);
    let mut lines = Vec::new();
    let mut consumed = 0usize;
    while lines.len() < max {
        let Some(nl) = buf[consumed..].iter().position(|b| *b == b'\n') else {
            break;
        };
        lines.push(String::from_utf8_lossy(&buf[consumed..consumed + nl]).into_owned());
        consumed += nl + 1;
    }
    (lines, from + consumed as u64)
}

/// Copy-truncate rotation: the process keeps its append-mode descriptor.
pub fn rotate_if_large(path: &Path, max: u64) -> std::io::Result<bool> {
    let len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(_) => return Ok(false),
    };
    if len <= max {
        return Ok(false);
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    std::fs::copy(path, &old)?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .set_len(0)?;
    Ok(true)
}

/// Watches a process that is not our child (adopted) until its pid is gone.
fn watch_adopted(
    pid: i32,
    start_time: u64,
    cgroups: Vec<PathBuf>,
) -> watch::Receiver<Option<Exit>> {
    let (tx, rx) = watch::channel(None);
    let oom_before = oom_kills(&cgroups);
    tokio::spawn(async move {
        loop {
            if !same_process(pid, start_time) {
                let oom = oom_kills(&cgroups) > oom_before;
                let mut e = describe_exit(None, None, oom, None);
                e.message = if oom {
                    "exited while adopted, OOM-killed".into()
                } else {
                    "exited while adopted (exit code unknown)".into()
                };
                let _ = tx.send(Some(e));
                return;
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    rx
}

impl Engine for NativeEngine {
    type Handle = NativeHandle;

    async fn prepare(&self, spec: &InstanceSpec) -> Result<()> {
        let n = Self::native(spec)?;
        let dir = self.app_dir(&spec.key.app, &spec.version);
        crate::artifact::install(
            self.fetcher.as_ref(),
            &n.artifact,
            &self.root.join(".downloads"),
            &dir,
            MAX_ARTIFACT_BYTES,
        )
        .await
    }

    async fn start(&self, spec: &InstanceSpec) -> Result<(NativeHandle, Enforcement)> {
        let n = Self::native(spec)?;
        let app = &spec.key.app;
        let dir = self.app_dir(app, &spec.version);
        let command = self.resolve_command(spec, &dir)?;
        let workdir = match &n.workdir {
            Some(w) if w.starts_with('/') => PathBuf::from(w),
            Some(w) => dir.join(w),
            None => dir.clone(),
        };
        let run_dir = self.run_dir(app);
        let log_dir = self.log_dir(app);
        for d in [&run_dir, &log_dir] {
            std::fs::create_dir_all(d).map_err(io_err(d))?;
        }
        let limited = spec.limits.memory_bytes.is_some() || spec.limits.cpu_millis.is_some();
        let (cgroups, enforcement, ulimit_kb) = match self.setup_cgroups(spec) {
            Ok(dirs) if limited => {
                let names = dirs.iter().map(|d| d.display().to_string()).collect();
                (dirs, Enforcement::Cgroup(names), None)
            }
            Ok(dirs) => (dirs, Enforcement::None, None),
            Err(why) if limited => (
                Vec::new(),
                Enforcement::Rlimit(format!(
                    "cgroups unavailable ({why}); memory as an address-space rlimit, cpu not limited"
                )),
                spec.limits.memory_bytes.map(|b| (b / 1024).max(1)),
            ),
            Err(_) => (Vec::new(), Enforcement::None, None),
        };
        let mut env: BTreeMap<String, String> = n.env.clone();
        env.insert("VERGE_APP".into(), app.clone());
        env.insert("VERGE_VERSION".into(), spec.version.clone());
        env.insert("VERGE_NODE".into(), spec.node.clone());
        env.insert("VERGE_REPLICA".into(), spec.key.replica.to_string());
        env.entry("PATH".into()).or_insert_with(|| PATH_ENV.into());
        let logs = log_paths(&log_dir, spec.key.replica);
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io_err(p))
        };
        let (out, err) = (open(&logs[0])?, open(&logs[1])?);
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(LAUNCH).arg("verge-launch");
        for d in &cgroups {
            cmd.arg(d.join("cgroup.procs"));
        }
        cmd.arg("--").arg(&command).args(&n.args);
        cmd.env_clear()
            .envs(&env)
            .current_dir(&workdir)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false);
        if let Some(kb) = ulimit_kb {
            cmd.env("VERGE_ULIMIT_V", kb.to_string());
        }
        let mut child = cmd.spawn().map_err(|e| Error::Process {
            app: app.clone(),
            message: format!("spawning {}: {e}", command.display()),
        })?;
        let pid = child.id().map(|p| p as i32).ok_or_else(|| Error::Process {
            app: app.clone(),
            message: "exited at once".into(),
        })?;
        let start_time = proc_start_time(pid).unwrap_or(0);
        let pf = PidFile {
            pid,
            start_time,
            version: spec.version.clone(),
            workdir,
            cgroups: cgroups.clone(),
            env,
        };
        let pid_file = run_dir.join(format!("{}.json", spec.key.replica));
        let bytes = serde_json::to_vec(&pf).map_err(crate::error::json_err("pid file"))?;
        crate::fsutil::write_atomic(&pid_file, &bytes, 0o600)?;
        let (tx, rx) = watch::channel(None);
        let memory_limit = spec.limits.memory_bytes;
        let oom_before = oom_kills(&cgroups);
        let cg = cgroups.clone();
        tokio::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            let exit = match child.wait().await {
                Ok(st) => {
                    let oom = oom_kills(&cg) > oom_before
                        || (cg.is_empty() && memory_limit.is_some() && st.code() == Some(137));
                    describe_exit(st.code(), st.signal(), oom, memory_limit)
                }
                Err(e) => Exit {
                    code: None,
                    oom_killed: false,
                    message: format!("wait failed: {e}"),
                },
            };
            let _ = tx.send(Some(exit));
        });
        Ok((self.handle_from(spec.key.clone(), pf, rx), enforcement))
    }

    async fn wait(&self, h: &NativeHandle) -> Exit {
        let mut rx = h.exit.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(e) => e.clone().unwrap_or_default(),
            Err(_) => Exit {
                code: None,
                oom_killed: false,
                message: "supervision ended".into(),
            },
        }
    }

    async fn stop(&self, h: &NativeHandle, grace: Duration) -> Result<()> {
        let alive =
            |h: &NativeHandle| h.exit.borrow().is_none() && same_process(h.pid, h.start_time);
        let signal_all = |sig: Signal| {
            if alive(h) {
                let _ = killpg(Pid::from_raw(h.pid), sig);
            }
            for d in &h.cgroups {
                kill_cgroup(d, sig);
            }
        };
        signal_all(Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while alive(h) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal_all(Signal::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(5);
        while (alive(h) || h.cgroups.iter().any(|d| cgroup_busy(d))) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for d in &h.cgroups {
            let _ = std::fs::remove_dir(d);
        }
        let _ = std::fs::remove_file(&h.pid_file);
        Ok(())
    }

    async fn exec(&self, h: &NativeHandle, command: &[String], timeout: Duration) -> Result<i64> {
        let Some((prog, args)) = command.split_first() else {
            return Err(Error::Invalid("empty exec command".into()));
        };
        let mut cmd = tokio::process::Command::new(prog);
        cmd.args(args)
            .env_clear()
            .envs(&h.env)
            .current_dir(&h.workdir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| Error::Process {
            app: h.key.app.clone(),
            message: format!("health exec {prog}: {e}"),
        })?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(st)) => Ok(st.code().map_or(-1, i64::from)),
            Ok(Err(e)) => Err(Error::Process {
                app: h.key.app.clone(),
                message: format!("health exec {prog}: {e}"),
            }),
            Err(_) => Err(Error::Process {
                app: h.key.app.clone(),
                message: format!("health exec {prog}: timed out after {timeout:?}"),
            }),
        }
    }

    async fn usage(&self, h: &NativeHandle) -> Option<Usage> {
        let read_u64 =
            |p: PathBuf| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        let (memory, cpu_ns) = match &self.cgroups {
            Cgroups::V1 { .. } if !h.cgroups.is_empty() => {
                let mem = read_u64(h.cgroups[0].join("memory.usage_in_bytes"));
                let cpu = h
                    .cgroups
                    .get(2)
                    .and_then(|d| read_u64(d.join("cpuacct.usage")))
                    .or_else(|| read_u64(h.cgroups[1].join("cpuacct.usage")));
                (mem, cpu)
            }
            Cgroups::V2 { .. } if !h.cgroups.is_empty() => {
                let mem = read_u64(h.cgroups[0].join("memory.current"));
                let cpu = std::fs::read_to_string(h.cgroups[0].join("cpu.stat"))
                    .ok()
                    .and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("usage_usec "))
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(|us| us * 1000)
                    });
                (mem, cpu)
            }
            _ => {
                // The leader process only.
                let statm = std::fs::read_to_string(format!("/proc/{}/statm", h.pid)).ok();
                let rss = statm
                    .and_then(|s| {
                        s.split_whitespace()
                            .nth(1)
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                    .map(|pages| pages * 4096);
                let stat = std::fs::read_to_string(format!("/proc/{}/stat", h.pid)).ok();
                let ticks = stat.and_then(|s| {
                    let rest = s[s.rfind(')')? + 1..].to_string();
                    let f: Vec<&str> = rest.split_whitespace().collect();
                    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
                });
                (rss, ticks.map(|t| t * 10_000_000))
            }
        };
        let now = Instant::now();
        let cpu_millis = match (cpu_ns, h.cpu_prev.lock()) {
            (Some(ns), Ok(mut prev)) => {
                let m = prev.and_then(|(t, p)| {
                    let wall = now.duration_since(t).as_nanos() as u64;
                    (wall > 0).then(|| ns.saturating_sub(p).saturating_mul(1000) / wall)
                });
                *prev = Some((now, ns));
                m.unwrap_or(0)
            }
            _ => 0,
        };
        Some(Usage {
            cpu_millis,
            memory_bytes: memory?,
        })
    }

    async fn adopt(&self, _node: &str) -> Result<Vec<Adopted<NativeHandle>>> {
        let mut out = Vec::new();
        let Ok(apps) = std::fs::read_dir(&self.root) else {
            return Ok(out);
        };
        for app in apps.flatten() {
            let app_name = app.file_name().to_string_lossy().to_string();
            let Ok(runs) = std::fs::read_dir(app.path().join("run")) else {
                continue;
            };
            for run in runs.flatten() {
                let path = run.path();
                let replica = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.parse::<u32>().ok());
                let pf = std::fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<PidFile>(&b).ok());
                match (replica, pf) {
                    (Some(replica), Some(pf)) if same_process(pf.pid, pf.start_time) => {
                        let key = InstanceKey {
                            app: app_name.clone(),
                            replica,
                        };
                        let rx = watch_adopted(pf.pid, pf.start_time, pf.cgroups.clone());
                        let version = pf.version.clone();
                        out.push(Adopted {
                            handle: self.handle_from(key.clone(), pf, rx),
                            key,
                            version,
                        });
                    }
                    (_, pf) => {
                        // Gone: whatever it left in its cgroups goes too.
                        if let Some(pf) = pf {
                            for d in &pf.cgroups {
                                kill_cgroup(d, Signal::SIGKILL);
                                let _ = std::fs::remove_dir(d);
                            }
                        }
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn maintain(&self, h: &NativeHandle) {
        for p in &h.logs {
            if let Err(e) = rotate_if_large(p, LOG_ROTATE_BYTES) {
                tracing::warn!(path = %p.display(), error = %e, "log rotation failed");
            }
        }
    }

    async fn read_logs(
        &self,
        h: &NativeHandle,
        cursor: &mut super::LogCursor,
    ) -> Vec<verge_proto::LogLine> {
        let mut out = Vec::new();
        for (i, stream) in [
            verge_proto::LogStream::Stdout,
            verge_proto::LogStream::Stderr,
        ]
        .into_iter()
        .enumerate()
        {
            let (lines, next) = read_new_lines(
                &h.logs[i],
                cursor.offsets[i],
                super::MAX_LOG_BATCH - out.len(),
            );
            cursor.offsets[i] = next;
            let now = crate::now_ms();
            out.extend(lines.iter().map(|l| super::log_line(now, stream, l)));
        }
        out
    }

    async fn logs(&self, h: &NativeHandle, lines: usize) -> Result<Vec<String>> {
        let mut out = tail(&h.logs[0], lines);
        out.extend(tail(&h.logs[1], lines));
        Ok(out)
    }
}

fn cgroup_busy(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_odd_names() {
        let stat = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000 10 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn exits_are_described() {
        let e = describe_exit(Some(1), None, false, None);
        assert_eq!(e.message, "exit code 1");
        assert!(!e.success());
        let e = describe_exit(None, Some(9), true, Some(16 << 20));
        assert_eq!(
            e.message,
            "killed by signal 9 (SIGKILL), OOM-killed (memory limit 16Mi)"
        );
        assert_eq!(e.code, Some(137));
        assert!(e.oom_killed);
        assert!(describe_exit(Some(0), None, false, None).success());
    }

    #[test]
    fn new_lines_are_read_once_and_after_rotation_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, "one\ntwo\npart").unwrap();
        let (l, off) = read_new_lines(&p, 0, 10);
        assert_eq!(l, ["one", "two"]);
        assert_eq!(off, 8);
        let (l, off2) = read_new_lines(&p, off, 10);
        assert!(l.is_empty());
        assert_eq!(off2, 8);
        std::fs::write(&p, "three\n").unwrap(); // rotated: shorter than the offset
        let (l, _) = read_new_lines(&p, off2, 10);
        assert_eq!(l, ["three"]);
        let (l, off) = read_new_lines(&p, 0, 1);
        assert_eq!((l.len(), off), (1, 6));
    }

    #[test]
    fn rotation_copies_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, vec![b'a'; 100]).unwrap();
        assert!(!rotate_if_large(&p, 1000).unwrap());
        assert!(rotate_if_large(&p, 10).unwrap());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 0);
        assert_eq!(
            std::fs::read(dir.path().join("x.log.1")).unwrap().len(),
            100
        );
    }

    #[test]
    fn unavailable_cgroups_say_why() {
        let dir = tempfile::tempdir().unwrap();
        match Cgroups::detect_at(dir.path(), "n1") {
            Cgroups::Unavailable(why) => assert!(why.contains("no memory and cpu"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
