//! The function sandbox: how a `python3`/`node` worker is started so that hostile code
//! cannot see or touch anything of the host's (decision 011).
//!
//! Every worker is started as a chain of programs, each doing one step:
//!
//! 1. `/bin/sh` (root) writes its own pid into the worker's cgroups (memory without
//!    swap, pids, cpu: [`cgroup`]), opens the seccomp program as fd 9, and `exec`s
//! 2. `bwrap` (Debian `bubblewrap`, as root, no user namespace) which makes new mount,
//!    PID, IPC, UTS and cgroup namespaces, builds a root of its own — the host's `/usr`
//!    and a few files of `/etc` read-only, the function's code read-only at `/code`,
//!    the worker script and the worker's socket under `/run/verge`, a fresh `/proc`
//!    and `/dev`, a size-capped private `/tmp` — sets `no_new_privs`, drops every
//!    capability but `setuid`/`setgid`, loads the seccomp filter ([`seccomp`]) and
//!    `exec`s
//! 3. `setpriv` (util-linux) which switches to the unprivileged function uid/gid
//!    (never root, never the agent's), clears supplementary groups, the bounding and
//!    inheritable capability sets, and `exec`s
//! 4. the interpreter with the worker script.
//!
//! Nothing of the data directory is mounted: no key, token, database or other
//! function's code is visible, and the host paths that must stay hidden even if they
//! lie under a mounted tree (`SandboxConfig::hide`) are covered with an empty tmpfs.
//! Files the worker must read (its code, the worker script, its socket) are made
//! owned by the function uid with modes 0600/0700, inside the root-owned 0700 data
//! directory, so nobody else on the host can reach them.
//!
//! No user namespace is used: created by root, it would map the sandbox's uid to
//! root outside; the real uid switch is the stronger wall.
//!
//! What this module does not do: choose the uid per function (one uid for all, see
//! the decision), or isolate the network (functions may call out; the host's own
//! services must authenticate callers, as Verge's do).

pub mod cgroup;
pub mod seccomp;

use std::ffi::OsString;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;

use cgroup::{Group, Hierarchy, Limits};

/// Where the worker finds its code, script and socket inside the sandbox.
pub const CODE_DIR: &str = "/code";
pub const RUN_DIR: &str = "/run/verge";
pub const SOCKET: &str = "/run/verge/worker.sock";

/// Files of the host's `/etc` a worker may read (when present): the dynamic linker's
/// cache, time zones, TLS roots and name resolution.
const ETC_FILES: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "protocols",
    "services",
    "mime.types",
    "alternatives",
    "os-release",
];

/// Joins the cgroups named before `--`, opens the seccomp program named next as fd 9,
/// then execs the rest (bwrap).
const LAUNCH: &str = r#"while [ "$1" != "--" ]; do echo $$ > "$1" || exit 125; shift; done; shift
f="$1"; shift
exec "$@" 9<"$f""#;

/// Whether workers must run sandboxed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SandboxMode {
    /// Workers start only inside the sandbox; if it cannot be set up, they do not start.
    Enforce,
    /// The operator chose `--unsafe-unsandboxed-functions`: workers run as plain child
    /// processes of the agent, with its uid and its view of the filesystem.
    Unsafe,
}

/// How the sandbox is set up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub mode: SandboxMode,
    /// The uid and gid workers run as. Never 0.
    pub uid: u32,
    pub gid: u32,
    /// Processes (and threads) per worker.
    pub pids_max: u64,
    /// Size of each worker's private `/tmp` (its pages also count against memory).
    pub tmp_bytes: u64,
    /// Memory per worker when the function sets none.
    pub default_memory_bytes: u64,
    /// CPU per worker, in millicores.
    pub cpu_millis: u64,
    /// The cgroup parent's name (`verge-fn-cloud`, `verge-fn-{node}`).
    pub cgroup_parent: String,
    /// Normally `/sys/fs/cgroup`.
    pub cgroup_base: PathBuf,
    /// Host paths covered with an empty tmpfs should they lie under a mounted tree
    /// (the data directory).
    pub hide: Vec<PathBuf>,
}

/// The function uid's default: outside the ranges Debian gives to system and normal
/// users (and to `nobody`).
pub const DEFAULT_UID: u32 = 64_055;

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            mode: SandboxMode::Enforce,
            uid: DEFAULT_UID,
            gid: DEFAULT_UID,
            pids_max: 128,
            tmp_bytes: 64 * 1024 * 1024,
            default_memory_bytes: 512 * 1024 * 1024,
            cpu_millis: 1000,
            cgroup_parent: "verge-fn".into(),
            cgroup_base: PathBuf::from("/sys/fs/cgroup"),
            hide: Vec::new(),
        }
    }
}

/// What a node or the cloud reports about its function sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxStatus {
    /// `enforced` (workers run sandboxed), `unavailable` (python/node functions do not
    /// start; `reason` says why) or `disabled` (the operator chose to run unsandboxed).
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

impl SandboxStatus {
    pub fn is_enforced(&self) -> bool {
        self.state == "enforced"
    }
}

/// A prepared sandbox: everything checked once, ready to start workers.
#[derive(Debug)]
pub(crate) struct Sandbox {
    cfg: SandboxConfig,
    hierarchy: Hierarchy,
    bwrap: PathBuf,
    setpriv: PathBuf,
    seccomp_file: PathBuf,
    /// `--symlink`/`--ro-bind` mounts for `/bin`, `/lib*`, `/sbin`, `/etc/*`.
    base_mounts: Vec<(String, PathBuf, PathBuf)>,
}

/// One worker to start.
pub(crate) struct WorkerSpec<'a> {
    pub program: &'a Path,
    /// The worker script on the host (mounted at `/run/verge/<file name>`).
    pub script: &'a Path,
    /// Interpreter flags before the script.
    pub flags: &'a [OsString],
    /// Arguments after the script.
    pub script_args: &'a [OsString],
    pub env: &'a [(OsString, OsString)],
    pub code_dir: &'a Path,
    pub socket: &'a Path,
    pub memory_bytes: Option<u64>,
}

impl Sandbox {
    /// Checks that workers can be sandboxed here and prepares what every start needs;
    /// the error is the reason reported in the status.
    pub(crate) async fn prepare(cfg: SandboxConfig, sys_dir: &Path) -> Result<Sandbox, String> {
        if cfg.uid == 0 || cfg.gid == 0 {
            return Err("the function uid and gid must not be 0".into());
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(format!(
                "the agent runs as uid {}, not root: switching workers to the function uid \
                 {} needs root",
                nix::unistd::geteuid(),
                cfg.uid
            ));
        }
        if cfg.uid == nix::unistd::getuid().as_raw() {
            return Err("the function uid must differ from the agent's".into());
        }
        let bwrap = find_program("bwrap").ok_or(
            "bubblewrap is not installed (no bwrap on PATH); on Debian: apt-get install bubblewrap",
        )?;
        let setpriv = find_program("setpriv").ok_or(
            "setpriv is not installed (no setpriv on PATH); on Debian: apt-get install util-linux",
        )?;
        let program = seccomp::program().ok_or_else(|| {
            format!(
                "no seccomp filter is defined for this architecture ({})",
                std::env::consts::ARCH
            )
        })?;
        let hierarchy = Hierarchy::detect(&cfg.cgroup_base, &cfg.cgroup_parent)
            .map_err(|e| format!("cgroups: {e}"))?;
        let seccomp_file = sys_dir.join("seccomp.bpf");
        write_private(&seccomp_file, &program)
            .map_err(|e| format!("writing {}: {e}", seccomp_file.display()))?;
        let sandbox = Sandbox {
            base_mounts: base_mounts(),
            cfg,
            hierarchy,
            bwrap,
            setpriv,
            seccomp_file,
        };
        sandbox.probe(sys_dir).await?;
        Ok(sandbox)
    }

    /// Starts `/bin/true` through the whole chain once.
    async fn probe(&self, sys_dir: &Path) -> Result<(), String> {
        let empty = sys_dir.join("probe");
        std::fs::create_dir_all(&empty).map_err(|e| format!("{}: {e}", empty.display()))?;
        let spec = WorkerSpec {
            program: Path::new("/bin/true"),
            script: Path::new("/dev/null"),
            flags: &[],
            script_args: &[],
            env: &[],
            code_dir: &empty,
            socket: Path::new("/dev/null"),
            memory_bytes: Some(64 * 1024 * 1024),
        };
        let (mut cmd, group) = self.command(&spec, "probe")?;
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let run = async {
            let out = cmd
                .output()
                .await
                .map_err(|e| format!("starting the sandbox: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "a test worker failed in the sandbox ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        };
        let r = match tokio::time::timeout(Duration::from_secs(20), run).await {
            Ok(r) => r,
            Err(_) => Err("a test worker did not finish in the sandbox within 20 s".into()),
        };
        group.remove();
        r
    }

    pub(crate) fn config(&self) -> &SandboxConfig {
        &self.cfg
    }

    /// Makes what the worker must read owned by the function uid (0700 directories,
    /// 0600 files), without following symlinks.
    pub(crate) fn hand_over(&self, path: &Path) -> std::io::Result<()> {
        own_tree(path, self.cfg.uid, self.cfg.gid, 0)
    }

    /// The command that starts the worker, and its cgroup (remove it when the worker
    /// is gone). `leaf` names the cgroup.
    pub(crate) fn command(
        &self,
        w: &WorkerSpec<'_>,
        leaf: &str,
    ) -> Result<(tokio::process::Command, Group), String> {
        let limits = Limits {
            memory_bytes: w.memory_bytes.unwrap_or(self.cfg.default_memory_bytes),
            pids: self.cfg.pids_max,
            cpu_millis: self.cfg.cpu_millis,
        };
        let group = self.hierarchy.create(leaf, &limits)?;
        let mut cmd = tokio::process::Command::new("/bin/sh");
        cmd.arg("-c").arg(LAUNCH).arg("verge-sandbox");
        for f in group.procs_files() {
            cmd.arg(f);
        }
        cmd.arg("--").arg(&self.seccomp_file).arg(&self.bwrap);
        cmd.args(self.bwrap_args(w));
        cmd.arg("--").arg(&self.setpriv);
        let (uid, gid) = (self.cfg.uid, self.cfg.gid);
        cmd.args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
            "--inh-caps=-all".into(),
            "--bounding-set=-all".into(),
            "--".into(),
        ]);
        cmd.arg(w.program).args(w.flags);
        if let Some(name) = w.script.file_name() {
            cmd.arg(Path::new(RUN_DIR).join(name));
        }
        cmd.args(w.script_args);
        cmd.env_clear()
            .envs(w.env.iter().map(|(k, v)| (k, v)))
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", "/tmp")
            .env("TMPDIR", "/tmp")
            .env("VERGE_SOCK", SOCKET)
            .current_dir("/");
        Ok((cmd, group))
    }

    fn bwrap_args(&self, w: &WorkerSpec<'_>) -> Vec<OsString> {
        let mut a = Args::default();
        for x in [
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "verge-fn",
            "--die-with-parent",
            "--new-session",
            "--cap-add",
            "CAP_SETUID",
            "--cap-add",
            "CAP_SETGID",
            "--seccomp",
            "9",
        ] {
            a.push(x);
        }
        a.bind("--ro-bind", Path::new("/usr"), Path::new("/usr"));
        for (op, src, dst) in &self.base_mounts {
            if op == "--symlink" {
                a.push(op);
                a.push(src);
                a.push(dst);
            } else {
                a.bind(op, src, dst);
            }
        }
        // An interpreter outside /usr (a pyenv python, a node under /opt) brings its
        // prefix, read-only.
        if let Some(prefix) = interpreter_prefix(w.program) {
            a.bind("--ro-bind", &prefix, &prefix);
        }
        for x in [
            "--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size",
        ] {
            a.push(x);
        }
        a.push(self.cfg.tmp_bytes.to_string());
        a.push("--tmpfs");
        a.push("/tmp");
        a.bind("--ro-bind", w.code_dir, Path::new(CODE_DIR));
        a.dir(Path::new(RUN_DIR));
        if let Some(name) = w.script.file_name() {
            a.bind("--ro-bind", w.script, &Path::new(RUN_DIR).join(name));
        }
        a.bind("--bind", w.socket, Path::new(SOCKET));
        for h in &self.cfg.hide {
            if h.starts_with("/usr") || h.starts_with("/etc") {
                a.push("--tmpfs");
                a.push(h);
            }
        }
        for x in ["--remount-ro", "/", "--chdir", CODE_DIR] {
            a.push(x);
        }
        a.v
    }

    /// The OOM note for a worker's exit message.
    pub(crate) fn oom_note(group: &Group, memory_bytes: u64) -> Option<String> {
        (group.oom_kills() > 0).then(|| {
            format!(
                "out of memory: the worker's memory limit of {} MiB was reached",
                memory_bytes / (1024 * 1024)
            )
        })
    }

    pub(crate) fn memory_of(&self, w: Option<u64>) -> u64 {
        w.unwrap_or(self.cfg.default_memory_bytes)
    }
}

/// bubblewrap arguments being built. Directories bubblewrap would create on its own
/// for a mount point get mode 0700 (unreadable by the worker), so every ancestor of a
/// mount point is created first with 0755.
#[derive(Default)]
struct Args {
    v: Vec<OsString>,
    made: std::collections::BTreeSet<PathBuf>,
}

impl Args {
    fn push(&mut self, x: impl AsRef<std::ffi::OsStr>) {
        self.v.push(x.as_ref().to_os_string());
    }

    /// `--perms 0755 --dir` for `dir` and each of its missing ancestors.
    fn dir(&mut self, dir: &Path) {
        let mut missing: Vec<&Path> = dir
            .ancestors()
            .filter(|p| *p != Path::new("/") && !self.made.contains(*p))
            .collect();
        missing.reverse();
        for p in missing {
            self.made.insert(p.to_path_buf());
            for x in ["--perms", "0755", "--dir"] {
                self.push(x);
            }
            self.push(p);
        }
    }

    fn bind(&mut self, op: &str, src: &Path, dst: &Path) {
        if let Some(parent) = dst.parent() {
            self.dir(parent);
        }
        self.made.insert(dst.to_path_buf());
        self.push(op);
        self.push(src);
        self.push(dst);
    }
}

/// `/bin`, `/sbin`, `/lib*` as on the host (symlinks into `/usr` on merged-/usr
/// systems, read-only binds elsewhere) and the allowed files of `/etc`, as
/// `(operation, source, destination)`.
fn base_mounts() -> Vec<(String, PathBuf, PathBuf)> {
    let mut a = Vec::new();
    for d in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        let p = Path::new(d);
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(p) {
                    a.push(("--symlink".into(), target, p.to_path_buf()));
                }
            }
            Ok(m) if m.is_dir() => a.push(("--ro-bind".into(), p.to_path_buf(), p.to_path_buf())),
            _ => {}
        }
    }
    for f in ETC_FILES {
        let p = Path::new("/etc").join(f);
        if p.exists() {
            a.push(("--ro-bind".into(), p.clone(), p));
        }
    }
    // Debian's python reads its sitecustomize from /etc/python3.*.
    if let Ok(rd) = std::fs::read_dir("/etc") {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with("python3") {
                let p = e.path();
                a.push(("--ro-bind".into(), p.clone(), p));
            }
        }
    }
    a
}

/// The installation prefix of an interpreter that lives outside `/usr`
/// (`/opt/py/bin/python3` → `/opt/py`).
fn interpreter_prefix(program: &Path) -> Option<PathBuf> {
    let real = std::fs::canonicalize(program).ok()?;
    if real.starts_with("/usr") || real.starts_with("/bin") || real.starts_with("/lib") {
        return None;
    }
    let prefix = real.parent()?.parent()?;
    (prefix != Path::new("/")).then(|| prefix.to_path_buf())
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin".into(), "/bin".into(), "/usr/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&tmp, path)
}

/// chown + chmod (0700 directories, 0600 files) over a tree, never following a
/// symlink (symlinks themselves are re-owned with `lchown`). Depth-bounded.
fn own_tree(path: &Path, uid: u32, gid: u32, depth: usize) -> std::io::Result<()> {
    if depth > 64 {
        return Err(std::io::Error::other(format!(
            "{}: directory tree deeper than 64 levels",
            path.display()
        )));
    }
    let meta = std::fs::symlink_metadata(path)?;
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    if meta.is_dir() {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
        for e in std::fs::read_dir(path)? {
            own_tree(&e?.path(), uid, gid, depth + 1)?;
        }
    } else {
        // Keep the execute bit of programs a function ships.
        let exec = meta.permissions().mode() & 0o100 != 0;
        let mode = if exec { 0o700 } else { 0o600 };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpreters_under_usr_need_no_extra_mount() {
        assert_eq!(interpreter_prefix(Path::new("/usr/bin/env")), None);
        assert_eq!(
            interpreter_prefix(Path::new("/nonexistent/bin/python3")),
            None
        );
    }
}
