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
