//! `verge rollout status|promote|pause|resume|rollback app/NAME`: follow and steer an
//! App's gray release (status: a progress bar on a terminal, a line per change
//! elsewhere). The controller owns the rollout; these commands only read its
//! status and set the annotations it acts on (see `verge_cloud::apps`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use verge_api::{Kind, Object};
use verge_cloud::apps::{
    ANNOTATION_PAUSED, ANNOTATION_PROMOTE, ANNOTATION_RESUME, ANNOTATION_ROLLBACK,
};

use crate::client::Client;

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Follow a rollout (a progress bar on a terminal, a line per change elsewhere):
    /// exits 0 when it completes, non-zero when it is rolled back, fails, or
    /// `--timeout` passes.
    Status {
        /// `app/NAME`.
        target: String,
        #[arg(long, default_value = "10m", value_parser = crate::commands::parse_duration)]
        timeout: Duration,
    },
    /// Go past a step waiting for `pause: manual` (or cut a timed pause short).
    Promote { target: String },
    /// Hold the rollout where it is.
    Pause { target: String },
    /// Go on after `pause`, or retry a failed step.
    Resume { target: String },
    /// Go back to the previous version on every node at once.
    Rollback { target: String },
}

fn app_name(target: &str) -> Result<&str> {
    let (kind, name) = target
        .split_once('/')
        .ok_or_else(|| anyhow!("{target:?}: expected app/NAME"))?;
    if !matches!(kind, "app" | "apps" | "App") {
        bail!("{target:?}: rollouts are for apps (app/NAME)");
    }
    Ok(name)
}

pub async fn run(client: &Client, cmd: &RolloutCmd) -> Result<()> {
    match cmd {
        RolloutCmd::Status { target, timeout } => status(client, app_name(target)?, *timeout).await,
        RolloutCmd::Promote { target } => {
            let name = app_name(target)?;
            let step = update(client, name, |o| {
                let step = o.status["rollout"]["step"].as_u64().unwrap_or(0);
                o.metadata
                    .annotations
                    .insert(ANNOTATION_PROMOTE.into(), step.to_string());
                Ok(step)
            })
            .await?;
            outln!("app/{name}: step {} promoted", step + 1);
            Ok(())
        }
        RolloutCmd::Pause { target } => {
            let name = app_name(target)?;
            update(client, name, |o| {
                o.metadata
                    .annotations
                    .insert(ANNOTATION_PAUSED.into(), "true".into());
                Ok(())
            })
            .await?;
            outln!("app/{name}: paused");
            Ok(())
        }
        RolloutCmd::Resume { target } => {
            let name = app_name(target)?;
            update(client, name, |o| {
                o.metadata.annotations.remove(ANNOTATION_PAUSED);
                let n: u64 = o
                    .metadata
                    .annotations
                    .get(ANNOTATION_RESUME)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                o.metadata
                    .annotations
                    .insert(ANNOTATION_RESUME.into(), (n + 1).to_string());
                Ok(())
            })
            .await?;
            outln!("app/{name}: resumed");
            Ok(())
        }
        RolloutCmd::Rollback { target } => {
            let name = app_name(target)?;
            let version = update(client, name, |o| {
                let r = &o.status["rollout"];
                let (v, spec) = if r["phase"] == "Complete" {
                    (&r["previousVersion"], &r["previousSpec"])
                } else {
                    (&r["stableVersion"], &r["stableSpec"])
                };
                let (Some(v), true) = (v.as_str(), spec.is_object()) else {
                    bail!("app/{name} has no earlier version to roll back to");
                };
                let v = v.to_string();
                o.spec = spec.clone();
                o.metadata
                    .annotations
                    .insert(ANNOTATION_ROLLBACK.into(), "true".into());
                o.metadata.annotations.remove(ANNOTATION_PAUSED);
                Ok(v)
            })
            .await?;
            outln!("app/{name}: rolling back to {version}");
            Ok(())
        }
    }
}

/// Read-modify-write with the object's resourceVersion (a concurrent change retries).
async fn update<T>(client: &Client, name: &str, f: impl Fn(&mut Object) -> Result<T>) -> Result<T> {
    for _ in 0..5 {
        let mut o = client.get(Kind::App, name).await?;
        let out = f(&mut o)?;
        o.status = serde_json::Value::Null;
        match client.update(&o).await {
            Ok(_) => return Ok(out),
            Err(e) if e.api().is_some_and(|f| f.status.as_u16() == 409) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    bail!("app/{name} kept changing; try again")
}

/// Where `rollout status` shows progress: a bar redrawn in place on a terminal, else a
/// line each time what it would show changes (pipes, CI logs, files).
enum Progress {
    Bar(indicatif::ProgressBar),
    Lines { last: String },
}

impl Progress {
    fn new(name: &str) -> Result<Self> {
        use std::io::IsTerminal as _;
        if !std::io::stderr().is_terminal() {
            return Ok(Progress::Lines {
                last: String::new(),
            });
        }
        let bar = indicatif::ProgressBar::new(1);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} nodes  {msg}")
                .context("progress template")?
                .progress_chars("=> "),
        );
        bar.set_prefix(format!("app/{name}"));
        Ok(Progress::Bar(bar))
    }

    fn show(&mut self, name: &str, ready: u64, total: u64, what: &str) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(total.max(1));
                bar.set_position(ready.min(total));
                bar.set_message(what.to_string());
            }
            Progress::Lines { last } => {
                if let Some(line) = fresh(last, progress_line(name, ready, total, what)) {
                    outln!("{line}");
                }
            }
        }
    }

    /// Leaves the bar where it is (the lines need nothing).
    fn end(&self, ok: bool) {
        if let Progress::Bar(bar) = self {
            if ok {
                bar.finish();
            } else {
                bar.abandon();
            }
        }
    }
}

/// `line` if it differs from the last one shown (then it becomes the last one).
fn fresh(last: &mut String, line: String) -> Option<String> {
    if line == *last {
        return None;
    }
    last.clone_from(&line);
    Some(line)
}

/// One progress line off a terminal: `app/web: 1/3 nodes  2.0.0 step 1/2 (50%) ...`.
fn progress_line(name: &str, ready: u64, total: u64, what: &str) -> String {
    format!("app/{name}: {}/{total} nodes  {what}", ready.min(total))
}

async fn status(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut progress = Progress::new(name)?;
    loop {
        let o = client.get(Kind::App, name).await?;
        let r = &o.status["rollout"];
        let target = r["targetVersion"].as_str().unwrap_or("?");
        let spec_version = o.spec["version"].as_str().unwrap_or("?");
        let nodes = r["nodes"].as_object().cloned().unwrap_or_default();
        let total = nodes.len() as u64;
        let ready = o.status["instances"]
            .as_array()
            .map(|list| {
                let mut ok: std::collections::BTreeSet<&str> = Default::default();
                for i in list {
                    if i["version"] == target
                        && i["state"] == "Running"
                        && i["health"] != "Unhealthy"
                        && let Some(n) = i["node"].as_str()
                        && nodes.get(n).and_then(|v| v.as_str()) == Some(target)
                    {
                        ok.insert(n);
                    }
                }
                ok.len() as u64
            })
            .unwrap_or(0);
        let phase = r["phase"].as_str().unwrap_or("Pending");
        let step = o.status["step"].as_str().unwrap_or("-");
        let message = r["message"].as_str().unwrap_or("");
        progress.show(
            name,
            ready,
            total,
            &format!("{target} step {step} {phase}: {message}"),
        );
        let current = target == spec_version;
        match phase {
            "Complete" if current && ready >= total => {
                progress.end(true);
                outln!("app/{name}: {target} rolled out to {total} nodes");
                return Ok(());
            }
            "RolledBack" if current => {
                progress.end(false);
                bail!("app/{name}: {target} was rolled back: {message}");
            }
            "Failed" if current => {
                progress.end(false);
                bail!("app/{name}: rollout of {target} failed: {message}");
            }
            _ => {}
        }
        if started.elapsed() > timeout {
            progress.end(false);
            bail!(
                "app/{name}: rollout of {spec_version} not done after {timeout:?} ({phase}: {message})"
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_are_whole_and_capped() {
        assert_eq!(
            progress_line("web", 1, 3, "2.0.0 step 1/2 (33%) Progressing: waiting"),
            "app/web: 1/3 nodes  2.0.0 step 1/2 (33%) Progressing: waiting"
        );
        assert_eq!(progress_line("web", 5, 2, "x"), "app/web: 2/2 nodes  x");
    }

    #[test]
    fn a_line_only_when_something_changed() {
        let mut last = String::new();
        assert_eq!(fresh(&mut last, "a".into()).as_deref(), Some("a"));
        assert_eq!(fresh(&mut last, "a".into()), None);
        assert_eq!(fresh(&mut last, "b".into()).as_deref(), Some("b"));
        assert_eq!(fresh(&mut last, "a".into()).as_deref(), Some("a"));
    }
}
