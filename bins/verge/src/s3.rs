//! `verge s3 …`: S3 access keys (`verge s3 key create|list|revoke`).

use anyhow::{Context, Result};
use clap::Subcommand;
use reqwest::Method;
use verge_cloud::s3::keys::KeyInfo;

use crate::client::Client;
use crate::output;

#[derive(Subcommand, Debug)]
pub enum S3Cmd {
    /// S3 access keys for the S3 API (AWS CLI, SDKs).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// Make a key; its secret is printed once (as AWS environment variables).
    Create {
        /// Only these buckets (repeatable); every bucket when left out.
        #[arg(long = "bucket")]
        buckets: Vec<String>,
        /// Reading only: no uploads, deletes or bucket changes.
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        description: Option<String>,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key: requests signed with it fail at once.
    Revoke { id: String },
}

pub async fn run(cmd: &S3Cmd, client: impl FnOnce() -> Result<Client>) -> Result<()> {
    match cmd {
        S3Cmd::Key { cmd } => key(cmd, &client()?).await,
    }
}

async fn key(cmd: &KeyCmd, c: &Client) -> Result<()> {
    match cmd {
        KeyCmd::Create {
            buckets,
            read_only,
            description,
        } => {
            let body = serde_json::json!({
                "buckets": buckets,
                "readOnly": read_only,
                "description": description,
            });
            let info: KeyInfo = c
                .send_json(Method::POST, "/api/v1/s3keys", Some(&body))
                .await?;
            outln!("AWS_ACCESS_KEY_ID={}", info.access_key_id);
            outln!(
                "AWS_SECRET_ACCESS_KEY={}",
                info.secret_access_key.unwrap_or_default()
            );
            let cluster: serde_json::Value = c
                .send_json(Method::GET, "/api/v1/cluster/info", None)
                .await
                .unwrap_or_default();
            match cluster["s3"]["endpoint"].as_str() {
                Some(url) => eprintln!(
                    "S3 endpoint {url} (region {}; path-style; TLS with the cluster CA). The secret is shown only once.",
                    cluster["s3"]["region"].as_str().unwrap_or("us-east-1")
                ),
                None => eprintln!(
                    "the cloud serves no S3 API yet: start it with --s3-listen ADDR:PORT. The secret is shown only once."
                ),
            }
            Ok(())
        }
        KeyCmd::List => {
            let list: serde_json::Value = c.send_json(Method::GET, "/api/v1/s3keys", None).await?;
            let items: Vec<KeyInfo> =
                serde_json::from_value(list["items"].clone()).context("decoding keys")?;
            let rows = items.into_iter().map(|k| {
                vec![
                    k.access_key_id,
                    if k.buckets.is_empty() {
                        "*".into()
                    } else {
                        k.buckets.join(",")
                    },
                    if k.read_only { "read" } else { "read-write" }.into(),
                    k.created,
                    k.description.unwrap_or_default(),
                ]
            });
            outln!(
                "{}",
                output::plain_table(
                    &[
                        "ACCESS KEY ID",
                        "BUCKETS",
                        "ACCESS",
                        "CREATED",
                        "DESCRIPTION"
                    ],
                    rows
                )
            );
            Ok(())
        }
        KeyCmd::Revoke { id } => {
            let _: serde_json::Value = c
                .send_json(Method::DELETE, &format!("/api/v1/s3keys/{id}"), None)
                .await?;
            outln!("s3 access key {id} revoked");
            Ok(())
        }
    }
}
