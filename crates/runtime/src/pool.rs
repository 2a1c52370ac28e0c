//! Process pools: warm `python3`/`node` workers for one function version.
//!
//! Dispatch is a short critical section under one mutex per pool: an invocation takes
//! the most recently idle worker (a `oneshot` hands it the job), or starts a worker if
//! the pool is below `max_instances` (a cold start), or waits in the bounded queue. One
//! tokio task per worker owns its process and socket; when it finishes a job it takes
//! the next one from the queue itself, so a busy pool never bounces through the caller.
//! An idle worker whose idle period passes while the pool is above `min_warm` exits.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::error::{Error, Result};
use crate::frame::{FrameError, FrameReader};
use crate::sandbox::cgroup::Group;
use crate::sandbox::{Sandbox, WorkerSpec};
use crate::{FunctionDef, Invocation, Output, PoolStats};

/// How long a caller is asked to wait when the queue is full.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);
/// A worker gets at least this long to start and import the handler.
const MIN_LOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Raw stdout/stderr of one worker forwarded to tracing, at most.
const TRACE_CAP: usize = 256 * 1024;

/// How to start one worker of a pool.
#[derive(Debug)]
pub(crate) struct Launch {
    pub program: PathBuf,
    /// Interpreter flags before the worker script.
    pub flags: Vec<OsString>,
    pub script: PathBuf,
    /// Arguments after the worker script (`--check`).
    pub script_args: Vec<OsString>,
    /// The complete environment (the parent's is cleared).
    pub env: Vec<(OsString, OsString)>,
    pub code_dir: PathBuf,
    pub sock_dir: PathBuf,
    /// `None` only when the operator chose to run functions unsandboxed.
    pub sandbox: Option<Arc<Sandbox>>,
    /// The function's own memory limit (the sandbox applies its default otherwise).
    pub memory_bytes: Option<u64>,
}

/// A sandboxed worker's cgroup: everything in it is killed and the group removed when
/// the worker is dropped.
struct WorkerGroup(Option<Group>);

impl WorkerGroup {
    fn kill(&self) {
        if let Some(g) = &self.0 {
            g.kill();
        }
    }

    /// What the cgroup says about how the worker ended (the OOM killer), if anything.
    fn note(&self, launch: &Launch) -> Option<String> {
        let (g, sb) = (self.0.as_ref()?, launch.sandbox.as_ref()?);
        Sandbox::oom_note(g, sb.memory_of(launch.memory_bytes))
    }
}

impl Drop for WorkerGroup {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            g.kill();
            // Removal waits for the kernel to reap; not on an async thread.
            std::thread::spawn(move || g.remove());
        }
    }
}

pub(crate) struct Job {
    frame: Vec<u8>,
    reply: oneshot::Sender<Result<Invocation>>,
    cold: bool,
}

pub(crate) enum Dispatch {
    Reply(oneshot::Receiver<Result<Invocation>>),
    /// The pool was replaced or removed meanwhile: look the function up again.
    Closed(Vec<u8>),
}

struct IdleWorker {
    id: u64,
    tx: oneshot::Sender<Job>,
}

#[derive(Default)]
struct State {
    idle: Vec<IdleWorker>,
    queue: VecDeque<Job>,
    live: usize,
    starting: usize,
    busy: usize,
    pids: HashMap<u64, i32>,
    closed: bool,
}

struct Shared {
    def: FunctionDef,
    launch: Launch,
    max_log: usize,
    seq: Arc<AtomicU64>,
    state: Mutex<State>,
    invocations: AtomicU64,
    cold_starts: AtomicU64,
}

pub(crate) struct ProcPool {
    shared: Arc<Shared>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts workers the pool is missing: below min_warm, or queued jobs and no one
    /// to serve them. Called with the state locked.
    fn replenish(self: &Arc<Self>, st: &mut State) {
        loop {
            let total = st.live + st.starting;
            let warm = !st.closed && total < self.def.min_warm as usize;
            let queued = !st.queue.is_empty()
                && total < (self.def.max_instances as usize).max(1)
                && st.live.saturating_sub(st.busy) == 0
                && st.starting < st.queue.len();
            if !(warm || queued) {
                return;
            }
            st.starting += 1;
            let id = self.seq.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(worker_task(self.clone(), id, None, None));
        }
    }

    fn start_failed(
        self: &Arc<Self>,
        first: Option<Job>,
        ready: Option<oneshot::Sender<Result<()>>>,
        err: Error,
    ) {
        let message = err.to_string();
        let mut st = self.lock();
        st.starting -= 1;
        let failed: Vec<Job> = if st.live + st.starting == 0 {
            st.queue.drain(..).collect()
        } else {
            Vec::new()
        };
        drop(st);
        tracing::warn!(function = %self.def.name, version = %self.def.version, "worker failed to start: {message}");
        if let Some(ready) = ready {
            let _ = ready.send(Err(err));
        } else if let Some(job) = first {
            let _ = job.reply.send(Err(err));
        }
        for job in failed {
            let _ = job.reply.send(Err(Error::WorkerCrashed {
                message: format!("no worker could be started: {message}"),
                logs: String::new(),
            }));
        }
    }

    /// A worker is gone (crash, timeout, idle, close): forget it, replace if needed.
    fn worker_gone(self: &Arc<Self>, id: u64, was_busy: bool) {
        let mut st = self.lock();
        st.live -= 1;
        if was_busy {
            st.busy -= 1;
        }
        st.pids.remove(&id);
        self.replenish(&mut st);
    }
}

impl ProcPool {
    /// Creates the pool and starts its first worker, waiting until the handler is
    /// imported; the other `min_warm - 1` workers start in the background.
    pub(crate) async fn start(
        def: FunctionDef,
        launch: Launch,
        max_log: usize,
        seq: Arc<AtomicU64>,
    ) -> Result<Arc<ProcPool>> {
        let shared = Arc::new(Shared {
            def,
            launch,
            max_log,
            seq,
            state: Mutex::new(State {
                starting: 1,
                ..State::default()
            }),
            invocations: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
        });
        let (tx, rx) = oneshot::channel();
        let id = shared.seq.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(worker_task(shared.clone(), id, None, Some(tx)));
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(Error::Load {
                    message: "the worker task ended before the handler loaded".into(),
                });
            }
        }
        shared.replenish(&mut shared.lock());
        Ok(Arc::new(ProcPool { shared }))
    }

    pub(crate) fn def(&self) -> &FunctionDef {
        &self.shared.def
    }

    pub(crate) fn dispatch(&self, frame: Vec<u8>) -> Result<Dispatch> {
        let shared = &self.shared;
        let (tx, rx) = oneshot::channel();
        let mut job = Job {
            frame,
            reply: tx,
            cold: false,
        };
        let mut st = shared.lock();
        if st.closed {
            return Ok(Dispatch::Closed(job.frame));
        }
        while let Some(w) = st.idle.pop() {
            match w.tx.send(job) {
                Ok(()) => {
                    st.busy += 1;
                    shared.invocations.fetch_add(1, Ordering::Relaxed);
                    return Ok(Dispatch::Reply(rx));
                }
                Err(j) => job = j,
            }
        }
        if st.live + st.starting < (shared.def.max_instances as usize).max(1) {
            st.starting += 1;
            job.cold = true;
            shared.cold_starts.fetch_add(1, Ordering::Relaxed);
            shared.invocations.fetch_add(1, Ordering::Relaxed);
            let id = shared.seq.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(worker_task(shared.clone(), id, Some(job), None));
            return Ok(Dispatch::Reply(rx));
        }
        if st.queue.len() >= shared.def.queue_capacity {
            st.queue.retain(|j| !j.reply.is_closed());
            if st.queue.len() >= shared.def.queue_capacity {
                return Err(Error::QueueFull {
                    name: shared.def.name.clone(),
                    retry_after: RETRY_AFTER,
                });
            }
        }
        st.queue.push_back(job);
        shared.invocations.fetch_add(1, Ordering::Relaxed);
        Ok(Dispatch::Reply(rx))
    }

    /// Stops the pool: idle workers exit now; busy ones finish (and drain the queue)
    /// unless `kill`, which kills every worker and fails queued invocations.
    pub(crate) fn close(&self, kill: bool) {
        let shared = &self.shared;
        let mut st = shared.lock();
        st.closed = true;
        let idle = std::mem::take(&mut st.idle);
        let (queue, pids) = if kill {
            (
                st.queue.drain(..).collect::<Vec<_>>(),
                st.pids.values().copied().collect::<Vec<_>>(),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        drop(st);
        drop(idle);
        for job in queue {
            let _ = job.reply.send(Err(Error::NotFound {
                name: shared.def.name.clone(),
            }));
        }
        for pid in pids {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }

    pub(crate) fn stats(&self) -> PoolStats {
        let shared = &self.shared;
        let st = shared.lock();
        PoolStats {
            name: shared.def.name.clone(),
            version: shared.def.version.clone(),
            runtime: shared.def.runtime,
            warm: st.live,
            starting: st.starting,
            busy: st.busy,
            queued: st.queue.len(),
            invocations: shared.invocations.load(Ordering::Relaxed),
            cold_starts: shared.cold_starts.load(Ordering::Relaxed),
        }
    }

    /// Process ids of the pool's live workers (for tests and diagnostics).
    pub(crate) fn pids(&self) -> Vec<u32> {
        let st = self.shared.lock();
        let mut v: Vec<u32> = st.pids.values().map(|p| *p as u32).collect();
        v.sort_unstable();
        v
    }
}

async fn worker_task(
    shared: Arc<Shared>,
    id: u64,
    first: Option<Job>,
    ready: Option<oneshot::Sender<Result<()>>>,
) {
    let mut proc = match Proc::start(&shared).await {
        Ok(p) => p,
        Err(e) => return shared.start_failed(first, ready, e),
    };
    let mut next = {
        let mut st = shared.lock();
        st.starting -= 1;
        st.live += 1;
        st.pids.insert(id, proc.pid);
        if first.is_some() {
            st.busy += 1;
        }
        first
    };
    if let Some(ready) = ready {
        let _ = ready.send(Ok(()));
    }
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => {
                let rx = {
                    let mut st = shared.lock();
                    if let Some(job) = pop_live(&mut st.queue) {
                        st.busy += 1;
                        next = Some(job);
                        continue;
                    }
                    if st.closed {
                        drop(st);
                        return shared.worker_gone(id, false);
                    }
                    let (tx, rx) = oneshot::channel();
                    st.idle.push(IdleWorker { id, tx });
                    rx
                };
                match wait_idle(&shared, id, rx).await {
                    Some(job) => job,
                    None => return,
                }
            }
        };
        let alive = proc.run(&shared, job).await;
        if !alive {
            return shared.worker_gone(id, true);
        }
        let mut st = shared.lock();
        if let Some(job) = pop_live(&mut st.queue) {
            next = Some(job);
            continue;
        }
        st.busy -= 1;
    }
}

/// The next queued job whose caller is still waiting.
fn pop_live(queue: &mut VecDeque<Job>) -> Option<Job> {
    while let Some(job) = queue.pop_front() {
        if !job.reply.is_closed() {
            return Some(job);
        }
    }
    None
}

/// Waits for a job as an idle worker; `None` once this worker should exit (it has
/// then already been accounted for).
async fn wait_idle(shared: &Arc<Shared>, id: u64, mut rx: oneshot::Receiver<Job>) -> Option<Job> {
    let idle = shared.def.idle.max(Duration::from_millis(10));
    loop {
        match tokio::time::timeout(idle, &mut rx).await {
            Ok(Ok(job)) => return Some(job),
            Ok(Err(_)) => {
                // Our idle entry was dropped: the pool is closing.
                shared.worker_gone(id, false);
                return None;
            }
            Err(_) => {
                let mut st = shared.lock();
                if let Some(pos) = st.idle.iter().position(|w| w.id == id)
                    && (st.closed || st.live > shared.def.min_warm as usize)
                {
                    st.idle.remove(pos);
                    st.live -= 1;
                    st.pids.remove(&id);
                    tracing::debug!(function = %shared.def.name, "idle worker stopped");
                    return None;
                }
                // Either kept warm, or a job is being handed over right now.
            }
        }
    }
}

/// Output captured from a worker's real stdout/stderr (raw fd writes, interpreter
/// crashes), kept per invocation up to the log cap.
struct Tail {
    buf: Vec<u8>,
    dropped: usize,
    cap: usize,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        let room = self.cap.saturating_sub(self.buf.len());
        let take = room.min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        self.dropped += data.len() - take;
    }

    fn take(&mut self) -> String {
        let mut s = String::from_utf8_lossy(&self.buf).into_owned();
        if self.dropped > 0 {
            s.push_str(&format!("\n[... {} bytes dropped]", self.dropped));
        }
        self.buf.clear();
        self.dropped = 0;
        s
    }
}

struct Proc {
    child: tokio::process::Child,
    pid: i32,
    stream: UnixStream,
    reader: FrameReader,
    tail: Arc<Mutex<Tail>>,
    drains: Vec<JoinHandle<()>>,
    reaped: bool,
    group: WorkerGroup,
}

fn lock_tail(tail: &Mutex<Tail>) -> MutexGuard<'_, Tail> {
    tail.lock().unwrap_or_else(|e| e.into_inner())
}

async fn drain<R: AsyncRead + Unpin>(
    mut r: R,
    tail: Arc<Mutex<Tail>>,
    function: String,
    pid: i32,
    stream: &'static str,
) {
    let mut buf = vec![0u8; 8192];
    let mut traced = 0usize;
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        lock_tail(&tail).push(&buf[..n]);
        if traced < TRACE_CAP {
            let text = String::from_utf8_lossy(&buf[..n.min(TRACE_CAP - traced)]);
            tracing::info!(target: "verge_runtime::worker", function = %function, pid, stream, "{}", text.trim_end());
            traced += n;
            if traced >= TRACE_CAP {
                tracing::warn!(target: "verge_runtime::worker", function = %function, pid, stream,
                    "worker wrote more than {TRACE_CAP} bytes; further output is not logged");
            }
        }
    }
}

impl Proc {
    async fn start(shared: &Shared) -> Result<Proc> {
        let def = &shared.def;
        let launch = &shared.launch;
        let n = shared.seq.fetch_add(1, Ordering::Relaxed);
        let sock_path = launch.sock_dir.join(format!("w{n}.sock"));
        if sock_path.as_os_str().len() > 100 {
            return Err(Error::Invalid {
                message: format!(
                    "{}: path too long for a unix socket; use a shorter work_dir",
                    sock_path.display()
                ),
            });
        }
        let _ = std::fs::remove_file(&sock_path);
        let listener = UnixListener::bind(&sock_path)
            .map_err(|e| Error::io(format!("bind {}", sock_path.display()), e))?;
        let (mut cmd, group) = match &launch.sandbox {
            Some(sb) => {
                sb.hand_over(&sock_path)
                    .map_err(|e| Error::io(format!("preparing {}", sock_path.display()), e))?;
                let spec = WorkerSpec {
                    program: &launch.program,
                    script: &launch.script,
                    flags: &launch.flags,
                    script_args: &launch.script_args,
                    env: &launch.env,
                    code_dir: &launch.code_dir,
                    socket: &sock_path,
                    memory_bytes: launch.memory_bytes,
                };
                let (cmd, g) = sb.command(&spec, &format!("w{n}")).map_err(|m| {
                    let _ = std::fs::remove_file(&sock_path);
                    Error::Unavailable {
                        message: format!("function sandbox: {m}"),
                    }
                })?;
                (cmd, WorkerGroup(Some(g)))
            }
            None => {
                let mut cmd = tokio::process::Command::new(&launch.program);
                cmd.args(&launch.flags)
                    .arg(&launch.script)
                    .args(&launch.script_args)
                    .env_clear()
                    .envs(launch.env.iter().map(|(k, v)| (k, v)))
                    .env("VERGE_SOCK", &sock_path)
                    .current_dir(&launch.code_dir);
                (cmd, WorkerGroup(None))
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let spawned = cmd.spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_file(&sock_path);
                return Err(if e.kind() == std::io::ErrorKind::NotFound {
                    Error::Unavailable {
                        message: format!("{}: not found", launch.program.display()),
                    }
                } else {
                    Error::io(format!("start {}", launch.program.display()), e)
                });
            }
        };
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        let tail = Arc::new(Mutex::new(Tail {
            buf: Vec::new(),
            dropped: 0,
            cap: shared.max_log,
        }));
        let mut drains = Vec::with_capacity(2);
        if let Some(out) = child.stdout.take() {
            drains.push(tokio::spawn(drain(
                out,
                tail.clone(),
                def.name.clone(),
                pid,
                "stdout",
            )));
        }
        if let Some(err) = child.stderr.take() {
            drains.push(tokio::spawn(drain(
                err,
                tail.clone(),
                def.name.clone(),
                pid,
                "stderr",
            )));
        }
        let load_timeout = def.timeout.max(MIN_LOAD_TIMEOUT);
        let accepted = tokio::time::timeout(load_timeout, async {
            // The connection first: a worker that connected, answered and exited before
            // this task was polled (a failed load, a finished check, a busy machine) has
            // its answer waiting on the connection, and that answer is what counts.
            tokio::select! {
                biased;
                r = listener.accept() => r.map(|(s, _)| Some(s)),
                _ = child.wait() => {
                    // A worker that connected, sent its answer (a load error, say) and
                    // exited at once is still in the listen queue: read it from there.
                    match tokio::time::timeout(Duration::from_millis(200), listener.accept()).await {
                        Ok(Ok((s, _))) => Ok(Some(s)),
                        _ => Ok(None),
                    }
                }
            }
        })
        .await;
        drop(listener);
        let _ = std::fs::remove_file(&sock_path);
        let mut proc_stream = match accepted {
            Ok(Ok(Some(s))) => s,
            Ok(Ok(None)) => {
                let mut p = PendingExit {
                    child,
                    pid,
                    tail,
                    drains,
                    group,
                };
                let msg = p.describe_exit(launch).await;
                return Err(Error::Load {
                    message: format!("worker exited before loading the handler: {msg}"),
                });
            }
            Ok(Err(e)) => return Err(Error::io(format!("accept on {}", sock_path.display()), e)),
            Err(_) => {
                kill_group(pid);
                return Err(Error::Load {
                    message: format!("worker did not start within {load_timeout:?}"),
                });
            }
        };
        let mut reader = FrameReader::new();
        let first = tokio::time::timeout(load_timeout, reader.read(&mut proc_stream)).await;
        let load_err = match first {
            Ok(Ok(frame)) => match parse_response(frame) {
                Ok(Reply::Ready(logs)) => {
                    if !logs.is_empty() {
                        tracing::debug!(function = %def.name, "output while loading: {logs}");
                    }
                    None
                }
                Ok(Reply::LoadError(message)) => Some(message),
                Ok(_) => Some("worker sent an unexpected first frame".to_string()),
                Err(e) => Some(format!("protocol error: {e}")),
            },
            // Closed before a first frame: the message comes from its exit.
            Ok(Err(FrameError::Closed)) => Some(String::new()),
            Ok(Err(e)) => Some(format!("protocol error: {e}")),
            Err(_) => {
                kill_group(pid);
                Some(format!("the handler did not load within {load_timeout:?}"))
            }
        };
        if let Some(message) = load_err {
            let mut p = PendingExit {
                child,
                pid,
                tail,
                drains,
                group,
            };
            let message = if message.is_empty() {
                let exit = p.describe_exit(launch).await;
                format!("worker exited while loading the handler: {exit}")
            } else {
                kill_group(pid);
                message
            };
            return Err(Error::Load { message });
        }
        lock_tail(&tail).take();
        Ok(Proc {
            child,
            pid,
            stream: proc_stream,
            reader,
            tail,
            drains,
            reaped: false,
            group,
        })
    }

    /// Runs one job; false if the worker is dead (or was killed) afterwards.
    async fn run(&mut self, shared: &Shared, job: Job) -> bool {
        let def = &shared.def;
        let start = Instant::now();
        lock_tail(&self.tail).take();
        let res = tokio::time::timeout(
            def.timeout,
            roundtrip(&mut self.stream, &mut self.reader, &job.frame),
        )
        .await;
        let (result, alive) = match res {
            Ok(Ok(frame)) => match parse_response(frame) {
                Ok(Reply::Output(output, logs)) => (
                    Ok(Invocation {
                        output,
                        logs,
                        duration: start.elapsed(),
                        cold: job.cold,
                    }),
                    true,
                ),
                Ok(Reply::Error(e)) => (Err(e), true),
                Ok(Reply::Ready(_) | Reply::LoadError(_)) => {
                    (Err(self.protocol_error("unexpected frame kind")), false)
                }
                Err(e) => (Err(self.protocol_error(&e)), false),
            },
            Ok(Err(FrameError::Closed | FrameError::Io(_))) => {
                let message = self.exit_message(&shared.launch).await;
                let logs = lock_tail(&self.tail).take();
                (Err(Error::WorkerCrashed { message, logs }), false)
            }
            Ok(Err(e)) => (Err(self.protocol_error(&e.to_string())), false),
            Err(_) => {
                self.kill();
                let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
                self.reaped = true;
                self.wait_drains().await;
                let logs = lock_tail(&self.tail).take();
                tracing::info!(function = %def.name, pid = self.pid, "invocation timed out after {:?}; worker killed", def.timeout);
                (
                    Err(Error::Timeout {
                        after: def.timeout,
                        logs,
                    }),
                    false,
                )
            }
        };
        let _ = job.reply.send(result);
        alive
    }

    fn protocol_error(&mut self, what: &str) -> Error {
        self.kill();
        Error::WorkerCrashed {
            message: format!(
                "protocol error from worker (pid {}): {what}; worker killed",
                self.pid
            ),
            logs: lock_tail(&self.tail).take(),
        }
    }

    fn kill(&mut self) {
        if !self.reaped {
            kill_group(self.pid);
        }
        self.group.kill();
    }

    async fn wait_drains(&mut self) {
        for h in self.drains.drain(..) {
            let _ = tokio::time::timeout(Duration::from_millis(500), h).await;
        }
    }

    /// Waits for the exited worker and says how it ended.
    async fn exit_message(&mut self, launch: &Launch) -> String {
        let status = match tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                self.kill();
                self.child.wait().await.ok()
            }
        };
        self.reaped = true;
        self.wait_drains().await;
        let tail = String::from_utf8_lossy(&lock_tail(&self.tail).buf).into_owned();
        let mut msg = describe(self.pid, status, &tail, launch.sandbox.is_some());
        if let Some(note) = self.group.note(launch) {
            msg.push_str("; ");
            msg.push_str(&note);
        }
        msg
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            kill_group(self.pid);
        }
    }
}

/// A worker that failed to start: collects its exit for the error message.
struct PendingExit {
    child: tokio::process::Child,
    pid: i32,
    tail: Arc<Mutex<Tail>>,
    drains: Vec<JoinHandle<()>>,
    group: WorkerGroup,
}

impl PendingExit {
    async fn describe_exit(&mut self, launch: &Launch) -> String {
        let status = match tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                kill_group(self.pid);
                self.child.wait().await.ok()
            }
        };
        for h in self.drains.drain(..) {
            let _ = tokio::time::timeout(Duration::from_millis(500), h).await;
        }
        let tail = lock_tail(&self.tail).take();
        let mut msg = describe(self.pid, status, &tail, launch.sandbox.is_some());
        if let Some(note) = self.group.note(launch) {
            msg.push_str("; ");
            msg.push_str(&note);
        }
        if !tail.trim().is_empty() {
            msg.push_str(": ");
            msg.push_str(tail.trim());
        }
        msg
    }
}

fn kill_group(pid: i32) {
    if pid > 0 {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

fn describe(pid: i32, status: Option<ExitStatus>, output: &str, sandboxed: bool) -> String {
    // bubblewrap exits with 128 + N when the worker inside was killed by signal N.
    let signal = status.and_then(|s| {
        s.signal().or_else(|| {
            s.code()
                .filter(|c| sandboxed && (129..=128 + 64).contains(c))
                .map(|c| c - 128)
        })
    });
    let mut msg = match status {
        Some(s) => match (s.code(), signal) {
            (_, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|_| format!("signal {sig}"));
                format!("worker process (pid {pid}) was killed by signal {name} ({sig})")
            }
            (Some(code), _) => format!("worker process (pid {pid}) exited with code {code}"),
            _ => format!("worker process (pid {pid}) ended: {s}"),
        },
        None => format!("worker process (pid {pid}) ended (status unknown)"),
    };
    if output.contains("heap out of memory") || output.contains("Reached heap limit") {
        msg.push_str("; out of memory (JavaScript heap limit reached)");
    } else if output.contains("MemoryError") {
        msg.push_str("; out of memory (MemoryError)");
    } else if signal == Some(Signal::SIGKILL as i32) {
        msg.push_str(" (killed externally, or by the kernel's out-of-memory killer)");
    }
    msg
}

async fn roundtrip(
    stream: &mut UnixStream,
    reader: &mut FrameReader,
    frame: &[u8],
) -> Result<Bytes, FrameError> {
    stream
        .write_all(frame)
        .await
        .map_err(|e| FrameError::Io(e.to_string()))?;
    reader.read(stream).await
}

enum Reply {
    Ready(String),
    LoadError(String),
    Output(Output, String),
    Error(Error),
}

#[derive(serde::Deserialize)]
struct ErrorBody {
    #[serde(rename = "type", default)]
    error_type: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    traceback: String,
}

fn lossy(b: &[u8]) -> String {
    if b.is_empty() {
        String::new()
    } else {
        String::from_utf8_lossy(b).into_owned()
    }
}

fn parse_response(frame: Bytes) -> std::result::Result<Reply, String> {
    if frame.len() < 5 {
        return Err(format!(
            "response frame of {} bytes is too short",
            frame.len()
        ));
    }
    let kind = frame[0];
    let loglen = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    if 5 + loglen > frame.len() {
        return Err("log length exceeds the frame".into());
    }
    let logs = lossy(&frame[5..5 + loglen]);
    let rest = frame.slice(5 + loglen..);
    match kind {
        b'R' => Ok(Reply::Ready(logs)),
        b'L' => Ok(Reply::LoadError(lossy(&rest))),
        b'J' => serde_json::from_slice(&rest)
            .map(|v| Reply::Output(Output::Json(v), logs))
            .map_err(|e| format!("output is not valid JSON: {e}")),
        b'B' => {
            if rest.len() < 2 {
                return Err("bytes output frame too short".into());
            }
            let ctlen = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            if 2 + ctlen > rest.len() {
                return Err("content type length exceeds the frame".into());
            }
            let content_type = lossy(&rest[2..2 + ctlen]);
            let data = rest.slice(2 + ctlen..);
            Ok(Reply::Output(Output::Bytes { content_type, data }, logs))
        }
        b'E' => {
            let body: ErrorBody = serde_json::from_slice(&rest)
                .map_err(|e| format!("error frame is not valid JSON: {e}"))?;
            Ok(Reply::Error(Error::Handler {
                error_type: body.error_type,
                message: body.message,
                traceback: body.traceback,
                logs,
            }))
        }
        k => Err(format!("unknown response kind {k:#04x}")),
    }
}
