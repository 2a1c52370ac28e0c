//! The `verge` CLI end to end against a real `verge cloud`: apply (created /
//! unchanged / configured), get in every output format, describe, delete, tokens,
//! completion, and one-line errors with a non-zero exit.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use anyhow::Result;
use verge_testkit::Cloud;

const BIN: &str = env!("CARGO_BIN_EXE_verge");

fn verge(cloud: &Cloud, args: &[&str], stdin: Option<&str>) -> Result<Output> {
    let mut child = Command::new(BIN)
        .args(args)
        .env("VERGE_CONFIG", cloud.admin_config())
        .env("RUST_LOG", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes())?;
    }
    drop(child.stdin.take());
    Ok(child.wait_with_output()?)
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected failure: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error must be one line: {err:?}"
    );
    assert!(err.starts_with("error: "), "{err}");
    err
}

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/app.yaml");

#[tokio::test]
async fn apply_get_describe_delete() -> Result<()> {
    let cloud = Cloud::start(std::path::Path::new(BIN), &[]).await?;
    assert_eq!(
        ok(&verge(&cloud, &["apply", "-f", EXAMPLE], None)?),
        "app/web created\n"
    );
    assert_eq!(
        ok(&verge(&cloud, &["apply", "-f", EXAMPLE], None)?),
        "app/web unchanged\n"
    );
    let changed = std::fs::read_to_string(EXAMPLE)?.replace("1.0.0", "1.1.0");
    assert_eq!(
        ok(&verge(&cloud, &["apply", "-f", "-"], Some(&changed))?),
        "app/web configured\n"
    );

    let table = ok(&verge(&cloud, &["get", "apps"], None)?);
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    assert!(
        header.starts_with("NAME") && header.contains("VERSION") && header.contains("AGE"),
        "{table}"
    );
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("web") && row.contains("1.1.0") && row.contains("docker"),
        "{table}"
    );

    let json: serde_json::Value = serde_json::from_str(&ok(&verge(
        &cloud,
        &["get", "app", "web", "-o", "json"],
        None,
    )?))?;
    assert!(json["metadata"]["resourceVersion"].as_str().is_some());
    assert_eq!(json["metadata"]["generation"], 2);
    let yaml = ok(&verge(&cloud, &["get", "apps", "-o", "yaml"], None)?);
    assert!(
        yaml.contains("resourceVersion:") && yaml.contains("kind: AppList"),
        "{yaml}"
    );
    let wide = ok(&verge(
        &cloud,
        &["get", "apps", "-o", "wide", "-l", "tier=frontend"],
        None,
    )?);
    assert!(wide.contains("tier=frontend"), "{wide}");
    let none = verge(&cloud, &["get", "apps", "-l", "tier=backend"], None)?;
    assert!(String::from_utf8_lossy(&none.stderr).contains("No apps found"));

    let desc = ok(&verge(&cloud, &["describe", "app", "web"], None)?);
    assert!(
        desc.contains("Name:")
            && desc.contains("web")
            && desc.contains("Resource Version:")
            && desc.contains("Workload:         docker registry.local:5000/web:1.1.0"),
        "{desc}"
    );

    assert_eq!(
        ok(&verge(&cloud, &["delete", "apps", "web"], None)?),
        "app/web deleted\n"
    );
    let err = fails(&verge(&cloud, &["get", "app", "web"], None)?);
    assert!(err.contains("404") && err.contains("not found"), "{err}");
    Ok(())
}

#[tokio::test]
async fn errors_are_one_clear_line() -> Result<()> {
    let cloud = Cloud::start(std::path::Path::new(BIN), &[]).await?;
    let err = fails(&verge(&cloud, &["get", "widgets"], None)?);
    assert!(err.contains("unknown kind \"widgets\""), "{err}");
    let bad = "apiVersion: verge.dev/v1\nkind: App\nmetadata:\n  name: web\nspec:\n  version: 1.0.0\n  workload:\n    docker:\n      imagee: x\n";
    let err = fails(&verge(&cloud, &["apply", "-f", "-"], Some(bad))?);
    assert!(
        err.contains("spec.workload.docker.imagee") && err.contains("unknown field"),
        "{err}"
    );
    let err = fails(&verge(&cloud, &["apply", "-f", "/nonexistent.yaml"], None)?);
    assert!(err.contains("/nonexistent.yaml"), "{err}");
    let err = fails(&verge(
        &cloud,
        &["get", "apps", "--token", "nope.nope"],
        None,
    )?);
    assert!(err.contains("401"), "{err}");
    let out = Command::new(BIN)
        .args(["get", "apps", "--config", "/nonexistent/config"])
        .env("RUST_LOG", "off")
        .output()?;
    let err = fails(&out);
    assert!(err.contains("/nonexistent/config"), "{err}");
    Ok(())
}

#[tokio::test]
async fn tokens_and_completion() -> Result<()> {
    let cloud = Cloud::start(std::path::Path::new(BIN), &[]).await?;
    let token = ok(&verge(
        &cloud,
        &["token", "create", "--role", "viewer", "--ttl", "1h"],
        None,
    )?);
    let token = token.trim().to_string();
    assert!(token.contains('.'), "{token}");
    let id = token.split('.').next().unwrap().to_string();
    let list = ok(&verge(&cloud, &["token", "list"], None)?);
    assert!(list.contains(&id) && list.contains("viewer"), "{list}");
    assert!(
        !list.contains(token.split('.').nth(1).unwrap()),
        "secret leaked in list"
    );
    // The viewer can read but not write.
    ok(&verge(&cloud, &["get", "apps", "--token", &token], None)?);
    let err = fails(&verge(
        &cloud,
        &["apply", "-f", EXAMPLE, "--token", &token],
        None,
    )?);
    assert!(err.contains("403"), "{err}");
    assert!(ok(&verge(&cloud, &["token", "revoke", &id], None)?).contains("revoked"));
    let err = fails(&verge(&cloud, &["get", "apps", "--token", &token], None)?);
    assert!(err.contains("revoked"), "{err}");
    let err = fails(&verge(
        &cloud,
        &["token", "create", "--role", "root"],
        None,
    )?);
    assert!(err.contains("unknown role"), "{err}");
    for shell in ["bash", "zsh", "fish"] {
        let script = ok(&verge(&cloud, &["completion", shell], None)?);
        assert!(script.contains("verge"), "{shell}");
    }
    Ok(())
}

/// `verge bench api` measures again (its write phase creates objects that need nothing
/// else), and a benchmark whose operations fail says so and exits non-zero.
#[tokio::test]
async fn benchmarks_measure_and_fail_loudly() -> Result<()> {
    let cloud = Cloud::start(std::path::Path::new(BIN), &[]).await?;
    // Its own cloud: every create succeeds.
    let out = ok(&verge(
        &cloud,
        &[
            "bench",
            "api",
            "--creates",
            "40",
            "--concurrency",
            "4",
            "--watchers",
            "4",
            "--watch-writes",
            "5",
        ],
        None,
    )?);
    assert!(out.contains("creates: 40 ok, 0 failed"), "{out}");
    assert!(out.contains("watch: 20 of 20 events delivered"), "{out}");
    // With a viewer token every create is refused: the report, then a non-zero exit.
    let viewer = ok(&verge(
        &cloud,
        &["token", "create", "--role", "viewer", "--ttl", "1h"],
        None,
    )?);
    let out = verge(
        &cloud,
        &[
            "bench",
            "api",
            "--use-config",
            "--token",
            viewer.trim(),
            "--creates",
            "10",
            "--concurrency",
            "2",
            "--no-watch",
        ],
        None,
    )?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        !out.status.success(),
        "exit 0 with failed creates: {stdout}"
    );
    assert!(stdout.contains("creates: 0 ok, 10 failed"), "{stdout}");
    assert!(stderr.contains("10 of 10 creates failed"), "{stderr}");
    assert!(stderr.contains("403"), "the first error is shown: {stderr}");
    Ok(())
}

/// `verge bench invoke` times the HTTPS invoke of a cloud-placed function beside the
/// in-process runtime (a `verge cloud` of its own, python3 in the sandbox).
#[tokio::test]
async fn bench_invoke_reports_the_https_path() -> Result<()> {
    let cloud = Cloud::start(std::path::Path::new(BIN), &[]).await?;
    let out = ok(&verge(
        &cloud,
        &[
            "bench",
            "invoke",
            "--requests",
            "20",
            "--cold-runs",
            "1",
            "--zero-runs",
            "1",
            "--fork-runs",
            "1",
            "--https-requests",
            "20",
            "--concurrency",
            "2",
            "--skip-node-js",
        ],
        None,
    )?);
    assert!(
        out.contains("[HTTPS invoke] POST /api/v1/functions/bench-echo-cloud/invoke"),
        "{out}"
    );
    let summary: serde_json::Value =
        serde_json::from_str(out.trim_end().lines().last().unwrap_or(""))?;
    let https = &summary["https_invoke"];
    assert_eq!(https["sequential"]["n"], 20, "{summary}");
    assert_eq!(https["concurrent"]["n"], 20, "{summary}");
    assert!(https["sequential"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(https["throughput_per_s"].as_f64().unwrap() > 0.0);
    Ok(())
}
