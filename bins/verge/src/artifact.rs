//! `verge artifact push FILE` and `verge artifact list`: the cloud's content-addressed
//! artifact store (`/api/v1/artifacts`).

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use verge_cloud::artifacts::{ArtifactInfo, ArtifactList};

use crate::client::{Client, failure, flatten};
use crate::output::{self, OutputFormat};

#[derive(Subcommand)]
pub enum ArtifactCmd {
    /// Upload a file (a tarball or a binary) and print its sha256 and the snippet a
    /// native App refers to it by.
    Push { file: String },
    /// List stored artifacts.
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

pub async fn run(client: &Client, cmd: &ArtifactCmd) -> Result<()> {
    match cmd {
        ArtifactCmd::Push { file } => push(client, Path::new(file)).await,
        ArtifactCmd::List { output } => list(client, *output).await,
    }
}

/// SHA-256 (hex) and size of a file, read in chunks.
async fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((format!("{:x}", hasher.finalize()), size))
}

async fn push(client: &Client, path: &Path) -> Result<()> {
    let (sha256, size, created) = upload(client, path).await?;
    let how = if created { "pushed" } else { "already stored" };
    outln!("sha256: {sha256}");
    outln!("size: {size}");
    outln!("# {how}; in a native App (spec.workload.native):");
    outln!("artifact: {{sha256: {sha256}}}");
    Ok(())
}

/// Uploads a file to the artifact store: `(sha256, size, newly stored)`.
pub async fn upload(client: &Client, path: &Path) -> Result<(String, u64, bool)> {
    // Hashed here first: the server refuses the upload (422) unless what it received
    // hashes to the same digest.
    let (sha256, size) = hash_file(path).await?;
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let resp = client
        .request(Method::POST, "/api/v1/artifacts")
        .query(&[("sha256", sha256.as_str())])
        .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::from(file))
        .send()
        .await
        .map_err(|e| anyhow!("uploading {}: {}", path.display(), flatten(&e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(failure(resp).await.into());
    }
    let stored: ArtifactInfo = resp.json().await.context("decoding the server's answer")?;
    if stored.sha256 != sha256 || stored.size != size {
        anyhow::bail!(
            "the server stored sha256:{} ({} bytes), but {} is sha256:{sha256} ({size} bytes)",
            stored.sha256,
            stored.size,
            path.display()
        );
    }
    Ok((sha256, size, status == StatusCode::CREATED))
}

async fn list(client: &Client, output: OutputFormat) -> Result<()> {
    let list: ArtifactList = client
        .send_json(Method::GET, "/api/v1/artifacts", None)
        .await?;
    match output {
        OutputFormat::Json => outln!("{}", output::json(&list.items)?),
        OutputFormat::Yaml => out!("{}", output::yaml(&list.items)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let rows = list
                .items
                .into_iter()
                .map(|a| vec![a.sha256, a.size.to_string()]);
            outln!("{}", output::plain_table(&["SHA256", "SIZE"], rows));
        }
    }
    Ok(())
}
