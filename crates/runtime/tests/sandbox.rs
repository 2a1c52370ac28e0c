//! The function sandbox against real `python3`/`node` workers, `bwrap`, `setpriv`,
//! cgroups and the kernel's seccomp: what hostile function code tries, and what it gets.
//! Needs root (the sandbox switches uids); without it a test is skipped with the
//! reason, unless `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Value, json};
use verge_runtime::{
    Error, FunctionDef, Input, Kind, Output, Registry, Runtime, RuntimeConfig, SandboxConfig,
    SandboxMode, Source,
};

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A runtime whose work dir sits inside a fake data dir holding secrets, with small
/// limits so the tests run fast.
struct Env {
    rt: Runtime,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

async fn env() -> Option<Env> {
    let dir = tempfile::Builder::new().prefix("vsb").tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (f, v) in [
        ("ca.key", "-----BEGIN PRIVATE KEY-----"),
        ("admin.token", "admin.secret"),
        ("callback.key", "00ff"),
        ("store.db", "SQLite format 3"),
    ] {
        std::fs::write(data.join(f), v).unwrap();
    }
    let config = RuntimeConfig {
        sandbox: SandboxConfig {
            pids_max: 24,
            tmp_bytes: 8 * 1024 * 1024,
            default_memory_bytes: 96 * 1024 * 1024,
            cgroup_parent: "verge-fn-test".into(),
            hide: vec![data.clone()],
            ..SandboxConfig::default()
        },
        ..RuntimeConfig::new(data.join("functions"), Arc::new(Registry::new()))
    };
    let rt = Runtime::new(config);
    let st = rt.sandbox_status().await;
    if !st.is_enforced() {
        let why = format!("the sandbox is not available here: {st:?}");
        if ci() {
            panic!("CI=true but {why}");
        }
        eprintln!("skipping: {why}");
        return None;
    }
    Some(Env {
        rt,
        data,
        _dir: dir,
    })
}

fn py(name: &str, code: &str) -> FunctionDef {
    FunctionDef::new(
        name,
        Kind::Python3,
        "handler.main",
        Source::Inline(code.to_string()),
    )
}

async fn call(rt: &Runtime, name: &str, v: Value) -> Result<Value, Error> {
    match rt.invoke(name, Input::Json(v)).await?.output {
        Output::Json(v) => Ok(v),
        other => panic!("expected JSON, got {other:?}"),
    }
}

const SPY: &str = r#"
import ctypes, errno, os, subprocess

def err(e):
    return errno.errorcode.get(e, str(e))

def main(event):
    out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
           "cwd": os.getcwd(), "hostname": os.uname().nodename}
    out["id"] = subprocess.run(["id"], capture_output=True, text=True).stdout.strip()
    found = []
    for p in event["secrets"]:
        try:
            with open(p, "rb") as f:
                f.read(1)
            found.append(p)
        except OSError:
            pass
    out["found"] = found
    out["dataDirVisible"] = os.path.exists(event["dataDir"])
    writes = {}
    for p in ["/code/x", "/usr/x", "/x", "/etc/x", "/run/verge/x"]:
        try:
            with open(p, "w") as f:
                f.write("x")
            writes[p] = "ok"
        except OSError as e:
            writes[p] = err(e.errno)
    out["writes"] = writes
    with open("/tmp/ok", "w") as f:
        f.write("x")
    try:
        with open("/tmp/big", "wb") as f:
            for _ in range(64):
                f.write(b"\0" * (1 << 20))
                f.flush()
        out["tmpCap"] = "none"
    except OSError as e:
        out["tmpCap"] = err(e.errno)
    os.remove("/tmp/big")
    libc = ctypes.CDLL(None, use_errno=True)
    def sc(r):
        return "ok" if r == 0 else err(ctypes.get_errno())
    out["ptrace"] = sc(libc.ptrace(0, 0, 0, 0))
    out["mount"] = sc(libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
    out["unshareUser"] = sc(libc.unshare(0x10000000))
    out["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    out["noNewPrivs"] = status["NoNewPrivs"].strip()
    out["capEff"] = status["CapEff"].strip()
    out["seccomp"] = status["Seccomp"].strip()
    return out
"#;

#[tokio::test]
async fn hostile_code_finds_no_secret_and_cannot_escape() {
    let Some(e) = env().await else { return };
    e.rt.deploy(py("spy", SPY)).await.unwrap();
    let data = e.data.display().to_string();
    let secrets: Vec<String> = ["ca.key", "admin.token", "callback.key", "store.db"]
        .iter()
        .flat_map(|f| {
            [
                format!("{data}/{f}"),
                format!("../../../{f}"),
                format!("/proc/1/root{data}/{f}"),
                format!("/proc/1/cwd/../../../{f}"),
            ]
        })
        .collect();
    let v = call(&e.rt, "spy", json!({"secrets": secrets, "dataDir": data}))
        .await
        .unwrap();
    let uid = verge_runtime::sandbox::DEFAULT_UID;
    assert_eq!(v["uid"], json!(uid), "{v}");
    assert_eq!(v["gid"], json!(uid), "{v}");
    assert_eq!(v["groups"], json!([]), "{v}");
    assert!(
        v["id"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("uid={uid} gid={uid}"))),
        "`id` shows the unprivileged uid: {v}"
    );
    assert_eq!(v["found"], json!([]), "no secret readable: {v}");
    assert_eq!(v["dataDirVisible"], json!(false), "{v}");
    assert_eq!(v["cwd"], json!("/code"));
    assert_eq!(v["hostname"], json!("verge-fn"));
    for (path, result) in v["writes"].as_object().unwrap() {
        assert!(
            result == "EROFS" || result == "EACCES",
            "writing {path} must fail, got {result}"
        );
    }
    assert_eq!(v["tmpCap"], json!("ENOSPC"), "/tmp is size-capped: {v}");
    assert_eq!(v["ptrace"], json!("EPERM"), "{v}");
    assert_eq!(v["mount"], json!("EPERM"), "{v}");
    assert_eq!(v["unshareUser"], json!("EPERM"), "{v}");
    assert_eq!(v["noNewPrivs"], json!("1"));
    assert_eq!(v["capEff"], json!("0000000000000000"));
    assert_eq!(v["seccomp"], json!("2"), "a seccomp filter is loaded");
    // Its own PID namespace: only the sandbox's init, the worker and `id`'s leftovers.
    let procs = v["procs"].as_array().unwrap();
    assert!(
        procs.len() <= 4 && procs.contains(&json!(1)),
        "own PID namespace: {v}"
    );
}

#[tokio::test]
async fn a_fork_bomb_stops_at_the_pids_limit() {
    let Some(e) = env().await else { return };
    let code = r#"
import os, time

def main(event):
    pids, error = [], None
    try:
        for _ in range(1000):
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            pids.append(pid)
    except OSError as ex:
        error = str(ex)
    for p in pids:
        os.kill(p, 9)
    for p in pids:
        os.waitpid(p, 0)
    return {"forked": len(pids), "error": error}
"#;
    e.rt.deploy(py("bomb", code)).await.unwrap();
    let v = call(&e.rt, "bomb", json!({})).await.unwrap();
    let forked = v["forked"].as_u64().unwrap();
    assert!(forked < 24, "pids.max 24 stops the bomb: {v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|s| s.contains("Resource temporarily unavailable")),
        "{v}"
    );
    // The worker is still usable afterwards.
    let v = call(&e.rt, "bomb", json!({})).await.unwrap();
    assert!(v["forked"].as_u64().unwrap() < 24);
}

#[tokio::test]
async fn a_memory_hog_is_killed_by_its_cgroup() {
    let Some(e) = env().await else { return };
    // No memory limit of its own: the sandbox's default (96 MiB here) applies, through
    // the cgroup (no rlimit), so the kernel's OOM killer ends it.
    let code = "def main(event):\n    hog = b'x' * (400 << 20)\n    return len(hog)\n";
    e.rt.deploy(py("hog", code)).await.unwrap();
    let err = call(&e.rt, "hog", json!({})).await.unwrap_err();
    match &err {
        Error::WorkerCrashed { message, .. } => assert!(
            message.contains("out of memory") && message.contains("96 MiB"),
            "{message}"
        ),
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    // A fresh worker serves the next call.
    e.rt.deploy(py("small", "def main(event):\n    return 'fine'\n"))
        .await
        .unwrap();
    assert_eq!(
        call(&e.rt, "small", json!({})).await.unwrap(),
        json!("fine")
    );
}

#[tokio::test]
async fn check_mode_runs_none_of_the_code() {
    let Some(e) = env().await else { return };
    // Module-level code that would leave a mark on the host's shared network (a
    // loopback listener) if it ran.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\ndef main(event):\n    return 1\n"
    );
    e.rt.check(py("quiet", &code)).await.unwrap();
    assert!(
        listener.accept().is_err(),
        "check mode must not run module-level code"
    );
    assert!(!e.rt.has("quiet"), "a checked function is not deployed");
    // It still catches what a user gets wrong.
    let err =
        e.rt.check(py("broken", "def main(event)\n    return 1\n"))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("SyntaxError"), "{err}");
    let err =
        e.rt.check(py("misnamed", "def handle(event):\n    return 1\n"))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("'main'"), "{err}");
    let js = |name: &str, code: &str| {
        FunctionDef::new(
            name,
            Kind::Nodejs,
            "handler.main",
            Source::Inline(code.to_string()),
        )
    };
    let ran = format!("require('net').connect({port}, '127.0.0.1');\nexports.main = () => 1;\n");
    e.rt.check(js("quietjs", &ran)).await.unwrap();
    let err =
        e.rt.check(js("brokenjs", "exports.main = (e) => {\n"))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("SyntaxError"), "{err}");
    let err =
        e.rt.check(js("misnamedjs", "exports.handle = () => 1;\n"))
            .await
            .unwrap_err();
    assert!(err.to_string().contains("not exported"), "{err}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(listener.accept().is_err(), "node check mode ran nothing");
}

#[tokio::test]
async fn node_workers_are_sandboxed_too() {
    let Some(e) = env().await else { return };
    let code = "const fs = require('fs');\nexports.main = (event) => {\n  let secret = null;\n  try { secret = fs.readFileSync(event.path, 'utf8'); } catch (e) { secret = e.code; }\n  return { uid: process.getuid(), secret };\n};\n";
    e.rt.deploy(FunctionDef::new(
        "nodespy",
        Kind::Nodejs,
        "handler.main",
        Source::Inline(code.into()),
    ))
    .await
    .unwrap();
    let path = e.data.join("ca.key").display().to_string();
    let v = call(&e.rt, "nodespy", json!({"path": path})).await.unwrap();
    assert_eq!(
        v,
        json!({"uid": verge_runtime::sandbox::DEFAULT_UID, "secret": "ENOENT"})
    );
}

#[tokio::test]
async fn without_the_sandbox_workers_do_not_start_unless_the_operator_says_so() {
    let dir = tempfile::tempdir().unwrap();
    // A sandbox that cannot be set up (uid 0 is refused).
    let broken = RuntimeConfig {
        sandbox: SandboxConfig {
            uid: 0,
            gid: 0,
            ..SandboxConfig::default()
        },
        ..RuntimeConfig::new(dir.path().join("a"), Arc::new(Registry::with_defaults()))
    };
    let rt = Runtime::new(broken);
    let st = rt.sandbox_status().await;
    assert_eq!(st.state, "unavailable");
    let err = rt
        .deploy(py("f", "def main(event):\n    return 1\n"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("function sandbox unavailable")
            && err.to_string().contains("--unsafe-unsandboxed-functions"),
        "{err}"
    );
    // Builtins are Verge's own code and run regardless.
    let b = FunctionDef::new("echo", Kind::Builtin, "echo", Source::None);
    rt.deploy(b).await.unwrap();
    // The explicit opt-out.
    let unsafe_rt = Runtime::new(RuntimeConfig {
        sandbox: SandboxConfig {
            mode: SandboxMode::Unsafe,
            ..SandboxConfig::default()
        },
        ..RuntimeConfig::new(dir.path().join("b"), Arc::new(Registry::new()))
    });
    assert_eq!(unsafe_rt.sandbox_status().await.state, "disabled");
    if which("python3").is_some() {
        unsafe_rt
            .deploy(py("f", "def main(event):\n    return 1\n"))
            .await
            .unwrap();
        assert_eq!(call(&unsafe_rt, "f", json!({})).await.unwrap(), json!(1));
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join(name))
        .find(|p| Path::new(p).is_file())
}
