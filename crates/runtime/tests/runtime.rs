//! End-to-end tests against real `python3` and `node`. Without an interpreter a test
//! is skipped with a printed reason, unless `CI=true`, where it fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use verge_runtime::{
    BuiltinError, Error, FunctionDef, Input, Kind, Output, Registry, Runtime, RuntimeConfig, Source,
};

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn have(kind: Kind) -> bool {
    let found = match kind {
        Kind::Python3 => verge_runtime::bench::resolve_python().map(|_| ()),
        Kind::Nodejs => ["node", "nodejs"]
            .iter()
            .any(|n| {
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .any(|d| d.join(n).is_file())
            })
            .then_some(())
            .ok_or(Error::Unavailable {
                message: "node is not installed".into(),
            }),
        Kind::Builtin => Ok(()),
    };
    match found {
        Ok(()) => true,
        Err(e) if ci() => panic!("CI=true but {kind:?} is unavailable: {e}"),
        Err(e) => {
            eprintln!("skipping: {kind:?} is unavailable: {e}");
            false
        }
    }
}

struct Env {
    rt: Runtime,
    _dir: tempfile::TempDir,
}

fn env() -> Env {
    let dir = tempfile::Builder::new().prefix("vrt").tempdir().unwrap();
    let mut reg = Registry::with_defaults();
    reg.register("fail", |_| {
        Err(BuiltinError::new("ResizeError", "width must be positive"))
    });
    let mut config = RuntimeConfig::new(dir.path().to_path_buf(), Arc::new(reg));
    // Sandboxed as in production where that is possible (root; always under CI), so
    // every behaviour below is checked through the sandbox too.
    if !nix::unistd::geteuid().is_root() && !ci() {
        eprintln!("not root: these runtime tests run their workers unsandboxed");
        config.sandbox.mode = verge_runtime::SandboxMode::Unsafe;
    }
    let rt = Runtime::new(config);
    Env { rt, _dir: dir }
}

fn func(name: &str, kind: Kind, code: &str) -> FunctionDef {
    FunctionDef::new(name, kind, "handler.main", Source::Inline(code.to_string()))
}

fn py(name: &str, code: &str) -> FunctionDef {
    func(name, Kind::Python3, code)
}

fn js(name: &str, code: &str) -> FunctionDef {
    func(name, Kind::Nodejs, code)
}

fn out_json(o: &Output) -> &Value {
    match o {
        Output::Json(v) => v,
        other => panic!("expected JSON output, got {other:?}"),
    }
}

async fn call(rt: &Runtime, name: &str, v: Value) -> Result<verge_runtime::Invocation, Error> {
    rt.invoke(name, Input::Json(v)).await
}

const PY_ECHO: &str = "def main(event):\n    print('got', event)\n    return {'echo': event}\n";
const JS_ECHO: &str = "exports.main = async (event) => { console.log('got', JSON.stringify(event)); return { echo: event }; };\n";

async fn echo_json(kind: Kind, code: &str) {
    if !have(kind) {
        return;
    }
    let e = env();
    e.rt.deploy(func("echo", kind, code)).await.unwrap();
    assert!(e.rt.has("echo"));
    let inv = call(&e.rt, "echo", json!({"a": [1, 2, "x"]}))
        .await
        .unwrap();
    assert_eq!(out_json(&inv.output), &json!({"echo": {"a": [1, 2, "x"]}}));
    assert!(inv.logs.contains("got"), "logs: {:?}", inv.logs);
    assert!(!inv.cold, "the deploy's worker is warm");
    let inv =
        e.rt.invoke(
            "echo",
            Input::Bytes {
                content_type: "application/json; charset=utf-8".into(),
                data: Bytes::from_static(b"[true]"),
            },
        )
        .await
        .unwrap();
    assert_eq!(out_json(&inv.output), &json!({"echo": [true]}));
    let s = &e.rt.stats()[0];
    assert_eq!((s.name.as_str(), s.warm, s.invocations), ("echo", 1, 2));
}

#[tokio::test]
async fn python_echo_json() {
    echo_json(Kind::Python3, PY_ECHO).await;
}

#[tokio::test]
async fn node_echo_json() {
    echo_json(Kind::Nodejs, JS_ECHO).await;
}

async fn bytes_in_out(kind: Kind, code: &str) {
    if !have(kind) {
        return;
    }
    let e = env();
    e.rt.deploy(func("rev", kind, code)).await.unwrap();
    let data = Bytes::from((0u8..=255).collect::<Vec<u8>>());
    let inv =
        e.rt.invoke(
            "rev",
            Input::Bytes {
                content_type: "application/octet-stream".into(),
                data: data.clone(),
            },
        )
        .await
        .unwrap();
    let mut want = data.to_vec();
    want.reverse();
    match inv.output {
        Output::Bytes { content_type, data } => {
            assert_eq!(content_type, "application/octet-stream");
            assert_eq!(&data[..], &want[..]);
        }
        other => panic!("expected bytes, got {other:?}"),
    }
}

#[tokio::test]
async fn python_bytes_in_out() {
    bytes_in_out(
        Kind::Python3,
        "def main(event):\n    assert isinstance(event, bytes)\n    return event[::-1]\n",
    )
    .await;
}

#[tokio::test]
async fn node_bytes_in_out() {
    bytes_in_out(
        Kind::Nodejs,
        "exports.main = (event) => { if (!Buffer.isBuffer(event)) throw new Error('not a buffer'); return Buffer.from(event).reverse(); };\n",
    )
    .await;
}

#[tokio::test]
async fn python_handler_raises() {
    if !have(Kind::Python3) {
        return;
    }
    let e = env();
    let code = "def main(event):\n    print('before')\n    raise ValueError('bad value: ' + str(event['n']))\n";
    e.rt.deploy(py("boom", code)).await.unwrap();
    let err = call(&e.rt, "boom", json!({"n": 7})).await.unwrap_err();
    match err {
        Error::Handler {
            error_type,
            message,
            traceback,
            logs,
        } => {
            assert_eq!(error_type, "ValueError");
            assert_eq!(message, "bad value: 7");
            assert!(traceback.contains("line 3"), "{traceback}");
            assert!(traceback.contains("raise ValueError"), "{traceback}");
            assert!(!traceback.contains("python_worker"), "{traceback}");
            assert!(logs.contains("before"), "{logs}");
        }
        other => panic!("expected Handler, got {other:?}"),
    }
    // The worker survives a handler exception.
    let err = call(&e.rt, "boom", json!({})).await.unwrap_err();
    assert!(
        matches!(&err, Error::Handler { error_type, .. } if error_type == "KeyError"),
        "{err:?}"
    );
    assert_eq!(e.rt.stats()[0].cold_starts, 0);
}

#[tokio::test]
async fn node_handler_throws() {
    if !have(Kind::Nodejs) {
        return;
    }
    let e = env();
    let code = "exports.main = async (event) => {\n  console.error('before');\n  throw new RangeError('bad value: ' + event.n);\n};\n";
    e.rt.deploy(js("boom", code)).await.unwrap();
    let err = call(&e.rt, "boom", json!({"n": 7})).await.unwrap_err();
    match err {
        Error::Handler {
            error_type,
            message,
            traceback,
            logs,
        } => {
            assert_eq!(error_type, "RangeError");
            assert_eq!(message, "bad value: 7");
            assert!(traceback.contains("handler.js:3"), "{traceback}");
            assert!(logs.contains("before"), "{logs}");
        }
        other => panic!("expected Handler, got {other:?}"),
    }
    let inv = call(&e.rt, "boom", json!({"n": 1})).await;
    assert!(matches!(inv, Err(Error::Handler { .. })));
}

async fn load_error(kind: Kind, code: &str, handler: &str, want: &[&str]) {
    if !have(kind) {
        return;
    }
    let e = env();
    let mut def = func("bad", kind, code);
    def.handler = handler.to_string();
    match e.rt.deploy(def).await {
        Err(Error::Load { message }) => {
            for w in want {
                assert!(message.contains(w), "{w:?} not in {message}");
            }
        }
        other => panic!("expected Load, got {other:?}"),
    }
    assert!(!e.rt.has("bad"));
}

#[tokio::test]
async fn python_syntax_error_at_deploy() {
    load_error(
        Kind::Python3,
        "def main(event):\n    return 1\ndef (\n",
        "handler.main",
        &["SyntaxError", "handler.py", "line 3"],
    )
    .await;
}

#[tokio::test]
async fn python_missing_handler_and_module() {
    load_error(
        Kind::Python3,
        "def handle(event):\n    return 1\n",
        "handler.main",
        &["AttributeError", "main"],
    )
    .await;
    load_error(
        Kind::Python3,
        "main = 3\n",
        "handler.main",
        &["not callable"],
    )
    .await;
    load_error(
        Kind::Python3,
        "import no_such_module_here\ndef main(e):\n    return e\n",
        "handler.main",
        &["ModuleNotFoundError", "no_such_module_here"],
    )
    .await;
}

#[tokio::test]
async fn node_syntax_error_and_missing_handler() {
    load_error(
        Kind::Nodejs,
        "exports.main = (event) => {\n  return event +;\n};\n",
        "handler.main",
        &["SyntaxError"],
    )
    .await;
    load_error(
        Kind::Nodejs,
        "exports.handle = (e) => e;\n",
        "handler.main",
        &["not a function"],
    )
    .await;
}

/// A worker that answers its first frame and exits at once (every failed load, and
/// every check) while the runtime is too busy to look: when the runtime comes back,
/// the connection and the exit are both ready. The frame on the connection is what
/// counts — the interpreter's message, or the check's success — never "exited".
#[tokio::test]
async fn first_frame_wins_over_a_quick_exit_on_a_busy_runtime() {
    if !have(Kind::Python3) {
        return;
    }
    let e = env();
    // Holds the runtime's only thread while the worker starts, answers and exits.
    let stall = || {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            std::thread::sleep(Duration::from_secs(2));
        })
    };
    for run in 0..6 {
        let bad = func(
            &format!("quick{run}"),
            Kind::Python3,
            "def handle(event):\n    return 1\n",
        );
        let blocker = stall();
        let r = e.rt.deploy(bad).await;
        blocker.await.unwrap();
        match r {
            Err(Error::Load { message }) => {
                assert!(message.contains("AttributeError"), "run {run}: {message}");
            }
            other => panic!("run {run}: expected the load error, got {other:?}"),
        }
        let good = py(&format!("checked{run}"), PY_ECHO);
        let blocker = stall();
        let r = e.rt.check(good).await;
        blocker.await.unwrap();
        assert!(r.is_ok(), "run {run}: the check of good code failed: {r:?}");
    }
}

#[tokio::test]
async fn builtin_unknown_is_load_error() {
    let e = env();
    let def = FunctionDef::new("x", Kind::Builtin, "image.resize", Source::None);
    let err = e.rt.deploy(def).await.unwrap_err();
    assert!(
        matches!(&err, Error::Load { message } if message.contains("image.resize")),
        "{err}"
    );
}

#[tokio::test]
async fn non_json_bytes_to_json_is_bad_input() {
    if !have(Kind::Python3) {
        return;
    }
    let e = env();
    e.rt.deploy(py("echo", PY_ECHO)).await.unwrap();
    let err =
        e.rt.invoke(
            "echo",
            Input::Bytes {
                content_type: "application/json".into(),
                data: Bytes::from_static(b"{\"a\": nope}"),
            },
        )
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::BadInput { message } if message.contains("not valid JSON")),
        "{err:?}"
    );
    let err = call(&e.rt, "nope", json!(1)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }));
}

async fn timeout_then_recovers(kind: Kind, code: &str) {
    if !have(kind) {
        return;
    }
    let e = env();
    let mut def = func("loop", kind, code);
    def.timeout = Duration::from_secs(1);
    def.max_instances = 1;
    e.rt.deploy(def).await.unwrap();
    let pid = e.rt.worker_pids("loop");
    let t = Instant::now();
    let err = call(&e.rt, "loop", json!({"spin": true}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Timeout { after, .. } if after == Duration::from_secs(1)),
        "{err:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    let inv = call(&e.rt, "loop", json!({"spin": false})).await.unwrap();
    assert_eq!(out_json(&inv.output), &json!("ok"));
    assert_ne!(e.rt.worker_pids("loop"), pid);
}

#[tokio::test]
async fn python_timeout_then_recovers() {
    timeout_then_recovers(
        Kind::Python3,
        "def main(event):\n    while event['spin']:\n        pass\n    return 'ok'\n",
    )
    .await;
}

#[tokio::test]
async fn node_timeout_then_recovers() {
    timeout_then_recovers(
        Kind::Nodejs,
        "exports.main = (event) => { while (event.spin) {} return 'ok'; };\n",
    )
    .await;
}

#[tokio::test]
async fn python_memory_limit_raises_memory_error() {
    if !have(Kind::Python3) {
        return;
    }
    let e = env();
    let mut def = py(
        "mem",
        "def main(event):\n    if event['big']:\n        b = bytearray(500 * 1024 * 1024)\n        return len(b)\n    return 'small'\n",
    );
    def.memory_bytes = Some(64 << 20);
    e.rt.deploy(def).await.unwrap();
    let err = call(&e.rt, "mem", json!({"big": true})).await.unwrap_err();
    assert!(
        matches!(&err, Error::Handler { error_type, .. } if error_type == "MemoryError"),
        "{err:?}"
    );
    let inv = call(&e.rt, "mem", json!({"big": false})).await.unwrap();
    assert_eq!(out_json(&inv.output), &json!("small"));
}

#[tokio::test]
async fn node_heap_overflow_crashes_worker() {
    if !have(Kind::Nodejs) {
        return;
    }
    let e = env();
    let mut def = js(
        "mem",
        "exports.main = (event) => { if (!event.big) return 'small'; const a = []; for (;;) a.push({ x: new Array(1000).fill(1) }); };\n",
    );
    def.memory_bytes = Some(64 << 20);
    e.rt.deploy(def).await.unwrap();
    let err = call(&e.rt, "mem", json!({"big": true})).await.unwrap_err();
    match &err {
        Error::WorkerCrashed { message, .. } => {
            assert!(message.contains("memory"), "{message}")
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    let inv = call(&e.rt, "mem", json!({"big": false})).await.unwrap();
    assert_eq!(out_json(&inv.output), &json!("small"));
}

async fn huge_output_is_capped(kind: Kind, code: &str) {
    if !have(kind) {
        return;
    }
    let e = env();
    let mut def = func("chatty", kind, code);
    def.timeout = Duration::from_secs(60);
    e.rt.deploy(def).await.unwrap();
    let inv = call(&e.rt, "chatty", json!(null)).await.unwrap();
    assert_eq!(out_json(&inv.output), &json!("done"));
    assert!(inv.logs.len() < 70 * 1024, "{}", inv.logs.len());
    assert!(inv.logs.starts_with("xxxx"), "{}", &inv.logs[..40]);
    assert!(
        inv.logs.contains(" bytes dropped]"),
        "{}",
        &inv.logs[inv.logs.len() - 60..]
    );
    // Small logs are whole on the next call.
    let inv = call(&e.rt, "chatty", json!("small")).await.unwrap();
    assert!(!inv.logs.contains("dropped"));
}

#[tokio::test]
async fn python_prints_200mb() {
    huge_output_is_capped(
        Kind::Python3,
        "import sys\nline = 'x' * 1023\ndef main(event):\n    if event == 'small':\n        print('hi')\n        return 'done'\n    for _ in range(200 * 1024):\n        print(line)\n    sys.stderr.write('y' * 10)\n    return 'done'\n",
    )
    .await;
}

#[tokio::test]
async fn node_prints_200mb() {
    huge_output_is_capped(
        Kind::Nodejs,
        "const line = 'x'.repeat(1023);\nexports.main = (event) => { if (event === 'small') { console.log('hi'); return 'done'; } for (let i = 0; i < 200 * 1024; i++) console.log(line); process.stderr.write('y'); return 'done'; };\n",
    )
    .await;
}

async fn killed_worker(kind: Kind, code: &str) {
    if !have(kind) {
        return;
    }
    let e = env();
    e.rt.deploy(func("die", kind, code)).await.unwrap();
    let err = call(&e.rt, "die", json!({"die": true})).await.unwrap_err();
    match &err {
        Error::WorkerCrashed { message, .. } => {
            assert!(message.contains("SIGKILL"), "{message}")
        }
        other => panic!("expected WorkerCrashed, got {other:?}"),
    }
    let inv = call(&e.rt, "die", json!({"die": false})).await.unwrap();
    assert_eq!(out_json(&inv.output), &json!("alive"));
}

#[tokio::test]
async fn python_worker_killed() {
    killed_worker(
        Kind::Python3,
        "import os\ndef main(event):\n    if event['die']:\n        os.kill(os.getpid(), 9)\n    return 'alive'\n",
    )
    .await;
}

#[tokio::test]
async fn node_worker_killed() {
    killed_worker(
        Kind::Nodejs,
        "exports.main = (event) => { if (event.die) process.kill(process.pid, 'SIGKILL'); return 'alive'; };\n",
    )
    .await;
}

#[tokio::test]
async fn python_worker_killed_from_outside_and_exit() {
    if !have(Kind::Python3) {
        return;
    }
    let e = env();
    let code = "import os, time\ndef main(event):\n    if event == 'exit':\n        os._exit(3)\n    time.sleep(event)\n    return os.getpid()\n";
    e.rt.deploy(py("victim", code)).await.unwrap();
    let pid = e.rt.worker_pids("victim")[0];
    let rt = e.rt.clone();
    let call1 = tokio::spawn(async move { call(&rt, "victim", json!(5)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let err = call1.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, Error::WorkerCrashed { message, .. } if message.contains("SIGTERM")),
        "{err:?}"
    );
    let err = call(&e.rt, "victim", json!("exit")).await.unwrap_err();
    assert!(
        matches!(&err, Error::WorkerCrashed { message, .. } if message.contains("exited with code 3")),
        "{err:?}"
    );
    let inv = call(&e.rt, "victim", json!(0)).await.unwrap();
    assert_ne!(out_json(&inv.output), &json!(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_full() {
    if !have(Kind::Python3) {
        return;
    }
    let e = env();
    let mut def = py(
        "slow",
        "import time\ndef main(event):\n    time.sleep(0.5)\n    return 1\n",
    );
    def.max_instances = 1;
    def.queue_capacity = 1;
    e.rt.deploy(def).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..3 {
        let rt = e.rt.clone();
        handles.push(tokio::spawn(
            async move { call(&rt, "slow", json!(null)).await },
        ));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut ok = 0;
    let mut full = 0;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(Error::QueueFull { retry_after, .. }) => {
                assert_eq!(retry_after, Duration::from_secs(1));
                full += 1
            }
            Err(other) => panic!("{other:?}"),
        }
    }
    assert_eq!((ok, full), (2, 1));
}

#[tokio::test]
async fn scale_to_zero_and_cold_start() {
    if !have(Kind::Python3) {
        return;
    }
    let e = env();
    let mut def = py("lazy", PY_ECHO);
    def.min_warm = 0;
    def.idle = Duration::from_millis(300);
    e.rt.deploy(def).await.unwrap();
    assert_eq!(
        e.rt.stats()[0].warm,
        1,
        "the deploy's worker stays for `idle`"
    );
    let inv = call(&e.rt, "lazy", json!(1)).await.unwrap();
    assert!(!inv.cold);
    tokio::time::sleep(Duration::from_millis(900)).await;
    let s = &e.rt.stats()[0];
    assert_eq!((s.warm, s.busy, s.starting), (0, 0, 0), "{s:?}");
    assert!(e.rt.worker_pids("lazy").is_empty());
    let inv = call(&e.rt, "lazy", json!(2)).await.unwrap();
    assert!(inv.cold);
    assert_eq!(out_json(&inv.output), &json!({"echo": 2}));
    let s = &e.rt.stats()[0];
    assert_eq!((s.warm, s.cold_starts, s.invocations), (1, 1, 2));
}

async fn concurrency(kind: Kind, code: &str) {
    if !have(kind) {
        return;
    }
    let e = env();
    let mut def = func("par", kind, code);
    def.max_instances = 2;
    def.queue_capacity = 1000;
    e.rt.deploy(def).await.unwrap();
    let mut handles = Vec::new();
    for i in 0..200 {
        let rt = e.rt.clone();
        handles.push(tokio::spawn(async move {
            (i, call(&rt, "par", json!(i)).await)
        }));
    }
    for h in handles {
        let (i, r) = h.await.unwrap();
        let inv = r.unwrap_or_else(|e| panic!("call {i}: {e:?}"));
        assert_eq!(out_json(&inv.output), &json!({"echo": i}));
    }
    let s = &e.rt.stats()[0];
    assert!(s.warm <= 2, "{s:?}");
    assert_eq!((s.invocations, s.busy, s.queued), (200, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_200_concurrent() {
    concurrency(Kind::Python3, PY_ECHO).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_200_concurrent() {
    concurrency(Kind::Nodejs, JS_ECHO).await;
}

#[tokio::test]
async fn builtins() {
    let e = env();
    let mut def = FunctionDef::new("echo", Kind::Builtin, "echo", Source::None);
    def.max_concurrency = 2;
    e.rt.deploy(def).await.unwrap();
    let inv = call(&e.rt, "echo", json!({"x": 1})).await.unwrap();
    assert_eq!(out_json(&inv.output), &json!({"x": 1}));
    e.rt.deploy(FunctionDef::new(
        "fail",
        Kind::Builtin,
        "fail",
        Source::None,
    ))
    .await
    .unwrap();
    match call(&e.rt, "fail", json!({})).await.unwrap_err() {
        Error::Handler {
            error_type,
            message,
            traceback,
            ..
        } => {
            assert_eq!(error_type, "ResizeError");
            assert_eq!(message, "width must be positive");
            assert!(traceback.is_empty());
        }
        other => panic!("{other:?}"),
    }
    let mut def = FunctionDef::new("sleep", Kind::Builtin, "sleep", Source::None);
    def.timeout = Duration::from_millis(200);
    def.max_concurrency = 1;
    def.queue_capacity = 0;
    e.rt.deploy(def).await.unwrap();
    let inv = call(&e.rt, "sleep", json!({"ms": 10})).await.unwrap();
    assert_eq!(out_json(&inv.output), &json!({"slept_ms": 10}));
    let rt = e.rt.clone();
    let slow = tokio::spawn(async move { call(&rt, "sleep", json!({"ms": 1000})).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = call(&e.rt, "sleep", json!({"ms": 1})).await.unwrap_err();
    assert!(matches!(err, Error::QueueFull { .. }), "{err:?}");
    let err = slow.await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}

async fn redeploy(kind: Kind, v1: &str, v2: &str) {
    if !have(kind) {
        return;
    }
    let e = env();
    e.rt.deploy(func("ver", kind, v1)).await.unwrap();
    let old = e.rt.worker_pids("ver");
    assert_eq!(
        out_json(&call(&e.rt, "ver", json!(null)).await.unwrap().output),
        &json!(1)
    );
    let mut def = func("ver", kind, v2);
    def.version = "2".into();
    e.rt.deploy(def.clone()).await.unwrap();
    assert_eq!(
        out_json(&call(&e.rt, "ver", json!(null)).await.unwrap().output),
        &json!(2)
    );
    assert_eq!(e.rt.stats()[0].version, "2");
    // The old worker exits.
    let deadline = Instant::now() + Duration::from_secs(5);
    for pid in old {
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            assert!(Instant::now() < deadline, "old worker {pid} still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // A broken new version leaves the running one in place.
    let mut bad = func("ver", kind, "this is not code (\n");
    bad.version = "3".into();
    assert!(matches!(e.rt.deploy(bad).await, Err(Error::Load { .. })));
    assert_eq!(
        out_json(&call(&e.rt, "ver", json!(null)).await.unwrap().output),
        &json!(2)
    );
    e.rt.remove("ver").await;
    assert!(!e.rt.has("ver"));
    assert!(matches!(
        call(&e.rt, "ver", json!(null)).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn python_redeploy_new_version() {
    redeploy(
        Kind::Python3,
        "def main(e):\n    return 1\n",
        "def main(e):\n    return 2\n",
    )
    .await;
}

#[tokio::test]
async fn node_redeploy_new_version() {
    redeploy(
        Kind::Nodejs,
        "exports.main = () => 1;\n",
        "exports.main = async () => 2;\n",
    )
    .await;
}

#[tokio::test]
async fn environment_is_cleared_and_dir_source_works() {
    if !have(Kind::Python3) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("helper.py"), "VALUE = 41\n").unwrap();
    std::fs::write(
        dir.path().join("fn.py"),
        "import os, sys, helper\nprint('raw', file=sys.__stdout__, flush=True)\ndef main(event):\n    os.write(1, b'raw fd write\\n')\n    return {'env': sorted(os.environ), 'value': helper.VALUE + 1, 'stdin': sys.stdin.read()}\n",
    )
    .unwrap();
    let e = env();
    let mut def = FunctionDef::new(
        "envfn",
        Kind::Python3,
        "fn.main",
        Source::Dir(PathBuf::from(dir.path())),
    );
    def.env.insert("GREETING".into(), "hello".into());
    e.rt.deploy(def).await.unwrap();
    let inv = call(&e.rt, "envfn", json!(null)).await.unwrap();
    let v = out_json(&inv.output);
    assert_eq!(v["value"], json!(42));
    assert_eq!(v["stdin"], json!(""));
    let keys: Vec<&str> = v["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(keys.contains(&"GREETING"), "{keys:?}");
    assert!(
        !keys
            .iter()
            .any(|k| k.starts_with("CARGO") || k.starts_with("VERGE_")),
        "{keys:?}"
    );
    e.rt.shutdown().await;
    assert!(!e.rt.has("envfn"));
}

#[tokio::test]
async fn workers_die_with_the_runtime() {
    if !have(Kind::Python3) {
        return;
    }
    let e = env();
    let mut def = py("w", PY_ECHO);
    def.min_warm = 2;
    e.rt.deploy(def).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.rt.worker_pids("w").len() < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pids = e.rt.worker_pids("w");
    drop(e);
    for pid in pids {
        while std::path::Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
        {
            assert!(
                Instant::now() < deadline,
                "worker {pid} survived the runtime"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Throwaway timing: `cargo test -p verge-runtime --release -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn timing_warm_invokes() {
    if !have(Kind::Python3) {
        return;
    }
    let e = env();
    let mut def = py("t", "def main(event):\n    return event\n");
    def.min_warm = 2;
    def.queue_capacity = 10_000;
    e.rt.deploy(def).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..200 {
        call(&e.rt, "t", json!({"n": 1})).await.unwrap();
    }
    let n = 10_000;
    let mut lat = Vec::with_capacity(n);
    let t = Instant::now();
    for i in 0..n {
        let s = Instant::now();
        call(&e.rt, "t", json!({"n": i})).await.unwrap();
        lat.push(s.elapsed());
    }
    let total = t.elapsed();
    lat.sort();
    println!(
        "sequential: {n} invokes in {total:?} ({:.0}/s), p50 {:?}, p99 {:?}",
        n as f64 / total.as_secs_f64(),
        lat[n / 2],
        lat[n * 99 / 100]
    );
    let t = Instant::now();
    let mut handles = Vec::new();
    for c in 0..8 {
        let rt = e.rt.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..n / 8 {
                call(&rt, "t", json!({"n": i, "c": c})).await.unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let total = t.elapsed();
    println!(
        "8 concurrent callers, 2 workers: {n} invokes in {total:?} ({:.0}/s)",
        n as f64 / total.as_secs_f64()
    );
    let py = verge_runtime::bench::resolve_python().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("h.py"), "def main(e):\n    return e\n").unwrap();
    let mut fork = Vec::new();
    for _ in 0..20 {
        fork.push(
            verge_runtime::bench::fork_per_request(&py, dir.path(), "h.main", &json!({"n": 1}))
                .await
                .unwrap(),
        );
    }
    fork.sort();
    println!("fork-per-request p50 {:?}", fork[10]);
}
