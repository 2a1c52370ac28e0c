//! `verge events dead-letter [--bucket B]`: object events a trigger's target did not
//! take (`/api/v1/deadletters`), and `… redrive ID|--all [--bucket B]` / `… drop ID`.

use anyhow::{Result, bail};
use clap::Subcommand;
use reqwest::Method;
use verge_cloud::events::deadletters::{DeadLetter, Redriven};

use crate::client::Client;
use crate::output::{self, OutputFormat};

#[derive(Subcommand)]
pub enum EventsCmd {
    /// List dead-lettered object events, oldest first; or redrive or drop them.
    #[command(name = "dead-letter", alias = "dead-letters")]
    DeadLetter {
        /// Only this bucket's.
        #[arg(long)]
        bucket: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
        #[command(subcommand)]
        action: Option<DeadLetterCmd>,
    },
}

#[derive(Subcommand)]
pub enum DeadLetterCmd {
    /// Deliver again (a new task for a function, a new delivery for a webhook), then
    /// drop the dead letter: one by ID, or every one (`--all`, only `--bucket B`'s).
    Redrive {
        /// The dead letter's id (`{event id}.{trigger}`, as listed).
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every dead letter (of `--bucket` when given).
        #[arg(long)]
        all: bool,
        #[arg(long, requires = "all")]
        bucket: Option<String>,
    },
    /// Drop a dead letter without delivering it.
    Drop { id: String },
}

pub async fn run(client: &Client, cmd: &EventsCmd) -> Result<()> {
    match cmd {
        EventsCmd::DeadLetter {
            bucket,
            output,
            action: None,
        } => list(client, bucket.as_deref(), *output).await,
        EventsCmd::DeadLetter {
            bucket: outer,
            action: Some(DeadLetterCmd::Redrive { id, all, bucket }),
            ..
        } => {
            let ids = match (id, all) {
                (Some(id), false) => vec![id.clone()],
                (None, true) => fetch(client, bucket.as_deref().or(outer.as_deref()))
                    .await?
                    .into_iter()
                    .map(|d| d.id)
                    .collect(),
                _ => bail!("give a dead letter ID or --all"),
            };
            let mut failed = 0;
            for id in &ids {
                let path = format!("/api/v1/deadletters/{id}/redrive");
                match client
                    .send_json::<Redriven>(Method::POST, &path, None)
                    .await
                {
                    Ok(r) => match (r.task, r.delivery) {
                        (Some(task), _) => outln!("{id}: redriven as task {task}"),
                        _ => outln!("{id}: redriven to its webhook"),
                    },
                    Err(e) => {
                        failed += 1;
                        eprintln!("{id}: {e:#}");
                    }
                }
            }
            if ids.is_empty() {
                outln!("no dead letters");
            }
            if failed > 0 {
                bail!("{failed} of {} dead letters were not redriven", ids.len());
            }
            Ok(())
        }
        EventsCmd::DeadLetter {
            action: Some(DeadLetterCmd::Drop { id }),
            ..
        } => {
            let _: DeadLetter = client
                .send_json(Method::DELETE, &format!("/api/v1/deadletters/{id}"), None)
                .await?;
            outln!("{id}: dropped");
            Ok(())
        }
    }
}

async fn fetch(client: &Client, bucket: Option<&str>) -> Result<Vec<DeadLetter>> {
    let path = match bucket {
        Some(b) => format!("/api/v1/deadletters?bucket={b}"),
        None => "/api/v1/deadletters".to_string(),
    };
    let list: serde_json::Value = client.send_json(Method::GET, &path, None).await?;
    Ok(serde_json::from_value(list["items"].clone())?)
}

async fn list(client: &Client, bucket: Option<&str>, format: OutputFormat) -> Result<()> {
    let items = fetch(client, bucket).await?;
    match format {
        OutputFormat::Json => outln!("{}", output::json(&items)?),
        OutputFormat::Yaml => out!("{}", output::yaml(&items)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            let rows = items.into_iter().map(|d| {
                let target = match (&d.target.function, &d.target.sink) {
                    (Some(f), _) => format!("function/{f}"),
                    (_, Some(s)) if wide => format!("sink {}", s.url),
                    _ => "sink".to_string(),
                };
                vec![
                    d.id,
                    d.bucket,
                    d.event.subject,
                    d.event
                        .ty
                        .trim_start_matches("dev.verge.object.")
                        .to_string(),
                    d.trigger,
                    target,
                    d.attempts.to_string(),
                    output::age(Some(&d.time)),
                    d.reason,
                ]
            });
            outln!(
                "{}",
                output::plain_table(
                    &[
                        "ID", "BUCKET", "KEY", "TYPE", "TRIGGER", "TARGET", "ATTEMPTS", "AGE",
                        "REASON"
                    ],
                    rows
                )
            );
        }
    }
    Ok(())
}
