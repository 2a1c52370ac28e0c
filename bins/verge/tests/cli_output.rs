//! What the `verge` and `verge-edge` commands show a user, run as real processes: every
//! command and subcommand answers `--help`; `verge dev` comes up with its banner last
//! and quiet, uncoloured logs, and a Ctrl-C drains it and exits 0 (twice in a row, the
//! second run on the same home); `examples/all-kinds.yaml` applies object by object
//! under the names it gives and a second apply changes nothing; failing commands of
//! every kind print `error: ` and one HTTP error shape; and, on two real edge nodes,
//! `verge rollout status` prints a line per change off a terminal, `describe` is a
//! summary, `get functions` shows a failed load, and Python tracebacks keep their lines.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use verge_testkit::{Cloud, Edge, app_object, eventually, success, verge_cli, workspace_bin};

const BIN: &str = env!("CARGO_BIN_EXE_verge");
const ALL_KINDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/all-kinds.yaml");

fn verge(cloud: &Cloud, args: &[&str]) -> Result<Output> {
    verge_cli(Path::new(BIN), cloud, args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The stderr of a command that must have failed.
fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        text(&out.stdout)
    );
    text(&out.stderr)
}

// ---------------------------------------------------------------------------------
// --help everywhere

/// The subcommands a `--help` text lists under `Commands:` (without `help`).
fn listed_subcommands(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| l.trim() != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next())
        .map(|w| w.trim_end_matches(',').to_string())
        .filter(|w| w != "help")
        .collect()
}

/// Runs `bin PATH --help` for the whole tree below `path`; the commands seen.
fn walk_help(bin: &Path, path: &mut Vec<String>, seen: &mut Vec<String>) -> Result<()> {
    let out = Command::new(bin)
        .args(path.iter())
        .arg("--help")
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .output()?;
    let help = text(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "{} {} --help: {:?}\n{}{}",
        bin.display(),
        path.join(" "),
        out.status,
        help,
        text(&out.stderr)
    );
    anyhow::ensure!(
        help.contains("Usage:") && help.lines().count() > 2,
        "{} --help has no usage: {help}",
        path.join(" ")
    );
    seen.push(path.join(" "));
    for sub in listed_subcommands(&help) {
        path.push(sub);
        walk_help(bin, path, seen)?;
        path.pop();
    }
    Ok(())
}

#[test]
fn every_command_and_subcommand_answers_help() -> Result<()> {
    let mut seen = Vec::new();
    walk_help(Path::new(BIN), &mut Vec::new(), &mut seen)?;
    for want in [
        "image resize",
        "image qrcode",
        "image video-frame",
        "image url",
        "rollout status",
        "cloud print-mosquitto-config",
        "bench invoke",
        "task create",
        "fn deploy",
    ] {
        assert!(
            seen.iter().any(|s| s == want),
            "{want} not walked: {seen:?}"
        );
    }
    assert!(seen.len() > 50, "{seen:?}");

    // The local image operations are listed and documented.
    let image = success(&Command::new(BIN).args(["image", "--help"]).output()?);
    assert!(
        image.contains("resize") && image.contains("Run image.resize here"),
        "{image}"
    );
    let resize = success(
        &Command::new(BIN)
            .args(["image", "resize", "--help"])
            .output()?,
    );
    assert!(
        resize.contains("--data") && resize.contains("<IN>") && resize.contains("<OUT>"),
        "{resize}"
    );
    let qr = success(&Command::new(BIN).args(["image", "qrcode", "-h"]).output()?);
    assert!(qr.contains("<OUT>") && !qr.contains("<IN>"), "{qr}");

    let edge = workspace_bin("verge-edge-cli", "verge-edge")?;
    let mut seen = Vec::new();
    walk_help(&edge, &mut Vec::new(), &mut seen)?;
    for want in ["join", "run", "get configs", "get status", "result"] {
        assert!(
            seen.iter().any(|s| s == want),
            "{want} not walked: {seen:?}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// verge dev: banner last, quiet plain logs, Ctrl-C drains and exits 0

/// A `verge dev` child with its output in files (not a terminal).
struct Dev {
    child: Option<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Dev {
    fn start(home: &Path, dev_home: &Path, logs: &Path, run: u32) -> Result<Self> {
        let stdout = logs.join(format!("dev-{run}.out"));
        let stderr = logs.join(format!("dev-{run}.err"));
        let child = Command::new(BIN)
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--mqtt-listen",
                "127.0.0.1:0",
                "--s3-listen",
                "127.0.0.1:0",
            ])
            .env("HOME", home)
            .env("VERGE_HOME", dev_home)
            .env_remove("RUST_LOG")
            .env_remove("VERGE_CONFIG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(std::fs::File::create(&stderr)?)
            .spawn()?;
        Ok(Dev {
            child: Some(child),
            stdout,
            stderr,
        })
    }

    fn out(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn err(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits until the banner's last line is the last thing printed.
    async fn wait_banner(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if self.out().trim_end().ends_with("Press Ctrl-C to stop.") {
                return Ok(());
            }
            if let Some(st) = self.child.as_mut().context("gone")?.try_wait()? {
                bail!(
                    "verge dev exited ({st}) before its banner\nstdout: {}\nstderr: {}",
                    self.out(),
                    self.err()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "no banner in 120 s\nstdout: {}\nstderr: {}",
                    self.out(),
                    self.err()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn interrupt(&self) -> Result<()> {
        let pid = self.child.as_ref().context("gone")?.id();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGINT,
        )?;
        Ok(())
    }

    /// Its exit code, waiting (generously) for it.
    async fn exit_code(&mut self) -> Result<Option<i32>> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let child = self.child.as_mut().context("gone")?;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st.code());
            }
            if Instant::now() > deadline {
                bail!(
                    "verge dev still running 90 s after Ctrl-C\nstderr: {}",
                    self.err()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verge_dev_banner_last_quiet_logs_and_ctrl_c_exits_zero() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().join("home");
    let dev_home = tmp.path().join("dev");
    std::fs::create_dir_all(&home)?;

    // First start: joins its node, deploys the example, then the banner, last.
    let mut dev = Dev::start(&home, &dev_home, tmp.path(), 1)?;
    dev.wait_banner().await?;
    let out = dev.out();
    let banner_at = out
        .find("Verge dev control plane is running at https://127.0.0.1:")
        .context("banner")?;
    assert!(
        out[banner_at..].contains("edge:    local edge node dev-edge"),
        "{out}"
    );
    let err = dev.err();
    assert!(!err.contains('\x1b'), "ANSI codes in a log file: {err:?}");
    assert!(
        !err.contains(" INFO "),
        "dev logs only warnings by default: {err}"
    );
    // The config it wrote works: the node it runs is there.
    let nodes = success(
        &Command::new(BIN)
            .args(["get", "nodes"])
            .env("HOME", &home)
            .env_remove("VERGE_CONFIG")
            .env("RUST_LOG", "off")
            .output()?,
    );
    assert!(nodes.contains("dev-edge"), "{nodes}");

    dev.interrupt()?;
    let code = dev.exit_code().await?;
    let err = dev.err();
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("shutting down"), "{err}");
    assert_eq!(code, Some(0), "first Ctrl-C drains and exits 0: {err}");

    // Again on the same home (the node already joined); a second Ctrl-C right after
    // the first may cut the drain short, but never panics.
    let mut dev = Dev::start(&home, &dev_home, tmp.path(), 2)?;
    dev.wait_banner().await?;
    dev.interrupt()?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = dev.interrupt();
    let code = dev.exit_code().await?;
    let err = dev.err();
    assert!(!err.contains("panicked"), "{err}");
    assert!(code == Some(0) || code == Some(130), "exit {code:?}: {err}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// examples/all-kinds.yaml

#[tokio::test]
async fn all_kinds_example_applies_every_object_by_name_then_nothing_changes() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    let docs: Vec<(String, String)> = std::fs::read_to_string(ALL_KINDS)?
        .split("\n---")
        .filter_map(|d| {
            let v: Value = serde_norway::from_str(d).ok()?;
            Some((
                v["kind"].as_str()?.to_lowercase(),
                v["metadata"]["name"].as_str()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(docs.len(), 8, "{docs:?}");

    let first = success(&verge(&cloud, &["apply", "-f", ALL_KINDS])?);
    let want: Vec<String> = docs
        .iter()
        .map(|(k, n)| format!("{k}/{n} created"))
        .collect();
    assert_eq!(first.lines().collect::<Vec<_>>(), want, "{first}");
    for (kind, name) in &docs {
        let o = cloud
            .api(
                reqwest::Method::GET,
                &format!("/api/v1/{kind}s/{name}"),
                None,
            )
            .await?;
        assert_eq!(o["metadata"]["name"], json!(name), "{o}");
    }
    // The task has no callback: nothing is sent to an outside host.
    let task = cloud
        .api(reqwest::Method::GET, "/api/v1/tasks/resize-once", None)
        .await?;
    assert!(task["spec"]["callbackUrl"].is_null(), "{task}");
    assert!(task["status"]["callback"].is_null(), "{task}");

    let again = success(&verge(&cloud, &["apply", "-f", ALL_KINDS])?);
    let want: Vec<String> = docs
        .iter()
        .map(|(k, n)| format!("{k}/{n} unchanged"))
        .collect();
    assert_eq!(again.lines().collect::<Vec<_>>(), want, "{again}");

    // A task is one run: changing it is refused with what to do instead.
    let changed =
        std::fs::read_to_string(ALL_KINDS)?.replace("timeoutSeconds: 60", "timeoutSeconds: 61");
    let mut child = Command::new(BIN)
        .args(["apply", "-f", "-"])
        .env("VERGE_CONFIG", cloud.admin_config())
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut child.stdin.take().context("stdin")?,
        changed.as_bytes(),
    )?;
    let err = failed(&child.wait_with_output()?);
    assert!(
        err.starts_with("error: task/resize-once exists with another spec")
            && err.contains("verge delete task resize-once"),
        "{err}"
    );

    // The API: a Task object is answered with the Task, under its name or a generated
    // one; the name cannot be taken twice.
    let c = cloud.client()?;
    let post = |body: Value| {
        c.post(format!("{}/api/v1/tasks", cloud.url))
            .bearer_auth(&cloud.admin_token)
            .json(&body)
            .send()
    };
    let named = json!({"apiVersion": "verge.dev/v1", "kind": "Task",
        "metadata": {"name": "by-name", "labels": {"k": "v"}},
        "spec": {"function": "resize", "input": {"n": 1}}});
    let r = post(named.clone()).await?;
    assert_eq!(r.status(), 202);
    let o: Value = r.json().await?;
    assert_eq!(
        (
            o["kind"].as_str(),
            o["metadata"]["name"].as_str(),
            o["metadata"]["labels"]["k"].as_str()
        ),
        (Some("Task"), Some("by-name"), Some("v")),
        "{o}"
    );
    let r = post(named).await?;
    assert_eq!(r.status(), 409);
    let e: Value = r.json().await?;
    assert_eq!(e["field"], "metadata.name", "{e}");
    let r = post(json!({"apiVersion": "verge.dev/v1", "kind": "Task",
        "spec": {"function": "resize"}}))
    .await?;
    assert_eq!(r.status(), 202);
    let o: Value = r.json().await?;
    assert!(
        o["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("t-")),
        "{o}"
    );
    // The bare-spec shortcut keeps its answer.
    let r = post(json!({"function": "resize"})).await?;
    assert_eq!(r.status(), 202);
    let o: Value = r.json().await?;
    assert!(
        o["taskId"].as_str().is_some() && o["created"] == json!(true),
        "{o}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// one error format

/// `error: ` and one line.
fn one_line_error(out: &Output) -> String {
    let err = failed(out);
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    err
}

#[tokio::test]
async fn every_failure_prints_error_and_one_http_shape() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    // API 404, from the object API and from invoke: the same shape.
    let err = one_line_error(&verge(&cloud, &["get", "app", "nope"])?);
    assert_eq!(
        err.trim_end(),
        "error: 404 NotFound: app \"nope\" not found"
    );
    let err = one_line_error(&verge(&cloud, &["invoke", "nope"])?);
    assert_eq!(
        err.trim_end(),
        "error: 404 NotFound: function \"nope\" not found"
    );
    let err = one_line_error(&verge(&cloud, &["task", "get", "nope"])?);
    assert_eq!(
        err.trim_end(),
        "error: 404 NotFound: task \"nope\" not found"
    );
    // A 4xx naming a field.
    let err = one_line_error(&verge(&cloud, &["task", "create", "nope"])?);
    assert_eq!(
        err.trim_end(),
        "error: 404 NotFound: spec.function: function \"nope\" not found"
    );
    let err = one_line_error(&verge(
        &cloud,
        &["token", "create", "--role", "viewer", "--ttl", "0"],
    )?);
    assert!(err.starts_with("error: 422 Invalid: ttlSeconds"), "{err}");
    // A token the server does not know.
    let err = one_line_error(&verge(&cloud, &["get", "apps", "--token", "nope.nope"])?);
    assert!(err.starts_with("error: 401 Unauthorized: "), "{err}");
    // A local file that is not there.
    let err = one_line_error(&verge(&cloud, &["apply", "-f", "/nonexistent.yaml"])?);
    assert!(
        err.starts_with("error: reading /nonexistent.yaml: "),
        "{err}"
    );
    // A bad flag (clap's own report, same prefix).
    let err = failed(&verge(&cloud, &["get", "apps", "--bogus"])?);
    assert!(
        err.starts_with("error: unexpected argument '--bogus'"),
        "{err}"
    );
    let err = failed(&verge(&cloud, &["image", "resize", "--bogus", "a", "b"])?);
    assert!(
        err.starts_with("error: unexpected argument '--bogus'"),
        "{err}"
    );
    // No other shape anywhere.
    for out in [
        verge(&cloud, &["get", "app", "nope"])?,
        verge(&cloud, &["describe", "function", "nope"])?,
        verge(&cloud, &["delete", "config", "nope"])?,
    ] {
        let err = one_line_error(&out);
        assert!(err.starts_with("error: 404 NotFound: "), "{err}");
        assert!(
            !err.contains("(NotFound)") && !err.contains("Error:"),
            "{err}"
        );
    }

    // verge-edge: the cloud refusing a join, its local API answering 404, a missing file.
    let edge = workspace_bin("verge-edge-cli", "verge-edge")?;
    let tmp = tempfile::tempdir()?;
    let hash = verge_testkit::ca_hash(&cloud.ca_pem)?;
    let out = Command::new(&edge)
        .args([
            "join",
            "--cloud",
            &cloud.url,
            "--token",
            "abcdefgh.0123456789abcdef0123456789abcdef",
        ])
        .args(["--ca-hash", &hash, "--name", "n1", "--data-dir"])
        .arg(tmp.path().join("n1"))
        .env("RUST_LOG", "off")
        .output()?;
    let err = one_line_error(&out);
    assert!(
        err.starts_with("error: the cloud refused to join this node: 401 Unauthorized: "),
        "{err}"
    );
    let out = Command::new(&edge)
        .args(["get", "status", "--data-dir", "/nonexistent/verge-edge"])
        .env("RUST_LOG", "off")
        .output()?;
    one_line_error(&out);
    let out = Command::new(&edge)
        .args(["run", "--bogus"])
        .env("RUST_LOG", "off")
        .output()?;
    assert!(failed(&out).starts_with("error: unexpected argument '--bogus'"));
    Ok(())
}

// ---------------------------------------------------------------------------------
// Two real nodes: rollout status off a terminal, describe, function phase, tracebacks

/// A `verge-edge run` child logging at info to a file; killed on drop.
struct EdgeRun {
    child: Child,
    log: PathBuf,
}

impl Drop for EdgeRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kills what the test's nodes left in their cgroups (processes outlive their agent
/// on purpose), and removes the cgroups.
struct Cleanup(Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for node in &self.0 {
            for ctl in ["memory", "cpu", "cpuacct", "pids", "unified"] {
                let parent = PathBuf::from(format!("/sys/fs/cgroup/{ctl}/verge-{node}"));
                let Ok(rd) = std::fs::read_dir(&parent) else {
                    continue;
                };
                for e in rd.flatten().filter(|e| e.path().is_dir()) {
                    if let Ok(p) = std::fs::read_to_string(e.path().join("cgroup.procs")) {
                        for pid in p.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGKILL,
                            );
                        }
                    }
                    std::thread::sleep(Duration::from_millis(100));
                    let _ = std::fs::remove_dir(e.path());
                }
                let _ = std::fs::remove_dir(&parent);
            }
        }
    }
}

/// A tar.gz holding `app.sh` that sleeps.
fn sleeper(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("src");
    std::fs::create_dir_all(&src)?;
    let sh = src.join("app.sh");
    std::fs::write(
        &sh,
        "#!/bin/sh\necho \"started $VERGE_VERSION\"\nexec sleep 100000\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&sh, std::fs::Permissions::from_mode(0o755))?;
    let out = dir.join("app.tar.gz");
    let st = Command::new("tar")
        .arg("czf")
        .arg(&out)
        .arg("-C")
        .arg(&src)
        .arg("app.sh")
        .status()?;
    anyhow::ensure!(st.success(), "tar failed");
    Ok(out)
}

fn function(name: &str, code: &str, cloud_placed: bool) -> Value {
    let mut f = json!({"apiVersion": "verge.dev/v1", "kind": "Function",
        "metadata": {"name": name},
        "spec": {"runtime": "python3", "handler": "handler.main", "code": code}});
    if cloud_placed {
        f["spec"]["placement"] = json!({"cloud": true});
    } else {
        f["spec"]["placement"] = json!({"nodeSelector": {"tier": "cliout"}});
    }
    f
}

const BOOM: &str = "def helper(x):\n    return 1 / x\n\ndef main(event):\n    print(\"about to divide\")\n    return helper(0)\n";

/// The traceback of BOOM, each frame on its own line, below an `error:` line.
fn assert_traceback_lines(err: &str) {
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with("error: 500 ")
            && lines[0].ends_with("ZeroDivisionError: division by zero"),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim() == "Traceback (most recent call last):"),
        "{err}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.trim_start().starts_with("File \""))
            .count()
            >= 2,
        "each frame on its own line: {err}"
    );
    assert!(
        lines.iter().skip(1).all(|l| l.starts_with("  ")),
        "detail indented: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_real_nodes_rollout_lines_describe_phase_and_tracebacks() -> Result<()> {
    let edge_bin = workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start_logging(
        Path::new(BIN),
        &["--heartbeat-interval", "1s", "--heartbeat-misses", "5"],
        "info",
    )
    .await?;
    let tag = std::process::id();
    let names: Vec<String> = ["a", "b"]
        .iter()
        .map(|n| format!("out-{n}-{tag}"))
        .collect();
    let _cleanup = Cleanup(names.clone());
    let dirs = tempfile::tempdir()?;
    let mut edges = Vec::new();
    for n in &names {
        let d = dirs.path().join(n);
        let token = cloud.bootstrap_token_with(1, &["tier=cliout"]).await?;
        let out = Edge::join(&edge_bin, &cloud, &token, n, &["tier=cliout"], &d)?;
        anyhow::ensure!(out.status.success(), "join {n}: {}", text(&out.stderr));
        let log = dirs.path().join(format!("{n}.log"));
        let child = Command::new(&edge_bin)
            .args([
                "run",
                "--heartbeat-interval",
                "1s",
                "--status-interval",
                "2s",
                "--data-dir",
            ])
            .arg(&d)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        edges.push(EdgeRun { child, log });
    }
    cloud.wait_ready(&names).await?;

    // Logs written to files carry no ANSI colour codes.
    let log = cloud.log();
    assert!(log.contains("verge cloud listening"), "{log}");
    assert!(!log.contains('\x1b'), "ANSI codes in the cloud's log");
    let edge_log = eventually(Duration::from_secs(30), "edge info log", async || {
        let l = std::fs::read_to_string(&edges[0].log).ok()?;
        l.contains("uplink connected").then_some(l)
    })
    .await?;
    assert!(
        !edge_log.contains('\x1b'),
        "ANSI codes in the edge's log: {edge_log:?}"
    );

    // v1 everywhere, then v2 in two steps with a manual pause.
    let pushed = success(&verge(
        &cloud,
        &[
            "artifact",
            "push",
            sleeper(dirs.path())?.to_str().context("path")?,
        ],
    )?);
    let sha = pushed
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .context("sha256 in the push output")?
        .to_string();
    let app = |version: &str| {
        app_object(
            "out",
            version,
            json!({"native": {"artifact": {"sha256": sha}, "command": "app.sh"}}),
            json!({"health": {"exec": {"command": ["/bin/true"]}, "intervalSeconds": 1, "failureThreshold": 1},
                   "rollout": {"steps": [{"percent": 50, "pause": "manual"}], "progressDeadlineSeconds": 120},
                   "placement": {"nodeSelector": {"tier": "cliout"}}}),
        )
    };
    cloud.apply("apps", &app("1.0.0")).await?;
    let v1 = success(&verge(
        &cloud,
        &["rollout", "status", "app/out", "--timeout", "120s"],
    )?);
    assert!(
        v1.trim_end()
            .ends_with("app/out: 1.0.0 rolled out to 2 nodes"),
        "{v1}"
    );

    cloud.apply("apps", &app("2.0.0")).await?;
    let mut status = Command::new(BIN)
        .args(["rollout", "status", "app/out", "--timeout", "180s"])
        .env("VERGE_CONFIG", cloud.admin_config())
        .env("RUST_LOG", "off")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = BufReader::new(status.stdout.take().context("stdout")?);
    let pump = std::thread::spawn(move || {
        for line in reader.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Lines arrive while it runs (not all at the end): wait for the paused step.
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !lines.iter().any(|l: &String| {
        l.contains("2.0.0 step 1/2 (50%)") && l.contains("waiting for `verge rollout promote`")
    }) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => lines.push(l),
            Err(_) if Instant::now() > deadline => {
                let _ = status.kill();
                bail!("no line of the paused step in 120 s: {lines:?}");
            }
            Err(_) => {}
        }
    }
    let described = success(&verge(&cloud, &["describe", "app", "out"])?);
    success(&verge(&cloud, &["rollout", "promote", "app/out"])?);
    let done = status.wait_with_output()?;
    pump.join().ok();
    lines.extend(rx.try_iter());
    assert!(done.status.success(), "{lines:?} {}", text(&done.stderr));
    assert_eq!(
        lines.last().map(String::as_str),
        Some("app/out: 2.0.0 rolled out to 2 nodes"),
        "{lines:?}"
    );
    let progress: Vec<&String> = lines.iter().filter(|l| l.contains(" nodes  ")).collect();
    assert!(progress.len() >= 2, "a line per change: {lines:?}");
    for l in &lines {
        assert!(l.starts_with("app/out: "), "{l:?}");
        assert!(!l.contains('\r') && !l.contains('\x1b'), "{l:?}");
    }
    for w in progress.windows(2) {
        assert_ne!(w[0], w[1], "the same line twice: {lines:?}");
    }

    // describe: a summary, the spec shown once, the rollout's steps and the instances.
    for want in [
        "Name:             out",
        "Workload:         native sha256:",
        "Placement:        nodes with tier=cliout",
        "Rollout:",
        "  Version:        2.0.0 (from 1.0.0)",
        "  Steps:          [50% pause manual] -> 100%",
        "Conditions:",
        "Instances:",
    ] {
        assert!(described.contains(want), "{want:?} in:\n{described}");
    }
    for n in &names {
        assert!(described.contains(n.as_str()), "{n} in:\n{described}");
    }
    assert_eq!(described.matches("app.sh").count(), 1, "{described}");
    assert!(described.lines().count() < 50, "{described}");
    let full = success(&verge(&cloud, &["describe", "app", "out", "-o", "yaml"])?);
    assert!(
        full.contains("targetSpec:") && full.contains("kind: App"),
        "{full}"
    );

    // get functions: a function whose code does not load shows Failed.
    cloud
        .apply(
            "functions",
            &function("broken", "def main(event)\n    return 1\n", true),
        )
        .await?;
    let table = eventually(Duration::from_secs(60), "broken shows Failed", async || {
        let out = verge(&cloud, &["get", "functions"]).ok()?;
        let t = text(&out.stdout);
        t.lines()
            .any(|l| l.starts_with("broken ") && l.contains("Failed"))
            .then_some(t)
    })
    .await?;
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("PHASE") && h.contains("PLACEMENT")),
        "{table}"
    );
    let d = success(&verge(&cloud, &["describe", "function", "broken"])?);
    assert!(
        d.contains("Phase:            Failed") && d.contains("SyntaxError"),
        "{d}"
    );

    // Tracebacks keep their lines: cloud-placed and on a node, invoke and task.
    cloud
        .apply("functions", &function("boom", BOOM, true))
        .await?;
    cloud
        .apply("functions", &function("boom-edge", BOOM, false))
        .await?;
    for f in ["boom", "boom-edge"] {
        eventually(Duration::from_secs(60), "function Ready", async || {
            let o = cloud
                .api(
                    reqwest::Method::GET,
                    &format!("/api/v1/functions/{f}"),
                    None,
                )
                .await
                .ok()?;
            (o["status"]["phase"] == "Ready").then_some(())
        })
        .await?;
    }
    let err = failed(&verge(&cloud, &["invoke", "boom"])?);
    assert_traceback_lines(&err);
    assert!(err.contains("  --- output ---\n  about to divide"), "{err}");
    let err = eventually(Duration::from_secs(60), "edge invoke fails", async || {
        let out = verge(&cloud, &["invoke", "boom-edge", "--node", &names[0]]).ok()?;
        let err = text(&out.stderr);
        (!out.status.success() && err.contains("Traceback")).then_some(err)
    })
    .await?;
    assert_traceback_lines(&err);
    let out = verge(&cloud, &["task", "create", "boom", "--wait"])?;
    let shown = text(&out.stdout);
    assert!(!out.status.success(), "{shown}");
    let error_at = shown
        .lines()
        .position(|l| l.starts_with("error:     ZeroDivisionError"))
        .with_context(|| format!("error field in {shown}"))?;
    assert!(
        shown
            .lines()
            .nth(error_at + 1)
            .is_some_and(|l| l.trim() == "Traceback (most recent call last):"
                && l.starts_with("           ")),
        "{shown}"
    );

    // Leave nothing running: the nodes stop the app when it is deleted.
    success(&verge(&cloud, &["delete", "app", "out"])?);
    eventually(Duration::from_secs(60), "app gone", async || {
        cloud
            .api(reqwest::Method::GET, "/api/v1/apps/out", None)
            .await
            .is_err()
            .then_some(())
    })
    .await?;
    Ok(())
}
