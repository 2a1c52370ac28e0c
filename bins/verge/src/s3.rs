//! `verge s3 …`: S3 access keys (`verge s3 key create|list|revoke`, `/api/v1/s3keys`), and
//! objects in buckets without an AWS client, over the REST object routes
//! (`/api/v1/buckets/{bucket}/objects`) with the API token: `ls` (buckets, or a
//! bucket's objects and prefixes), `cp` (upload a file, download to a file or stdout),
//! `rm`. [`S3Cmd`] is the one enum of the `s3` subcommands; each is one variant.
//!
//! Pure parsing of `s3://` targets is separate from the requests (unit-tested).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use futures::StreamExt;
use reqwest::Method;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use verge_api::Kind;
use verge_cloud::s3::keys::KeyInfo;

use crate::client::{Client, failure, flatten};
use crate::output::{self, OutputFormat};

#[derive(Subcommand, Debug)]
pub enum S3Cmd {
    /// S3 access keys for the S3 API (AWS CLI, SDKs).
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// List buckets, or the objects of `BUCKET[/PREFIX]` (`s3://` optional).
    Ls {
        target: Option<String>,
        /// Every key under the prefix, not rolled up at `/`.
        #[arg(long)]
        recursive: bool,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Copy a local file to `s3://BUCKET/KEY`, or `s3://BUCKET/KEY` to a local file
    /// (a directory: the key's last segment in it) or `-` (stdout).
    Cp {
        src: String,
        dst: String,
        /// Content type of an upload (default: from the file's extension).
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Delete `s3://BUCKET/KEY`.
    Rm { target: String },
}

pub async fn run(cmd: &S3Cmd, client: impl FnOnce() -> Result<Client>) -> Result<()> {
    match cmd {
        S3Cmd::Key { cmd } => key(cmd, &client()?).await,
        other => objects(other, &client()?).await,
    }
}

async fn objects(cmd: &S3Cmd, client: &Client) -> Result<()> {
    match cmd {
        S3Cmd::Key { cmd } => key(cmd, client).await,
        S3Cmd::Ls {
            target,
            recursive,
            output,
        } => match target {
            None => list_buckets(client, *output).await,
            Some(t) => {
                let (bucket, prefix) = parse_location(t)?;
                list_objects(client, bucket, prefix, *recursive, *output).await
            }
        },
        S3Cmd::Cp {
            src,
            dst,
            content_type,
        } => match (parse_s3(src), parse_s3(dst)) {
            (None, Some(to)) => {
                let (bucket, key) = object_of(dst, to)?;
                upload(client, Path::new(src), bucket, key, content_type.as_deref()).await
            }
            (Some(from), None) => {
                let (bucket, key) = object_of(src, from)?;
                download(client, bucket, key, dst).await
            }
            (Some(_), Some(_)) => {
                bail!("copying between buckets is not supported; use the S3 API (CopyObject)")
            }
            (None, None) => bail!("one of SRC and DST must be s3://BUCKET/KEY"),
        },
        S3Cmd::Rm { target } => {
            let loc =
                parse_s3(target).ok_or_else(|| anyhow!("{target:?}: expected s3://BUCKET/KEY"))?;
            let (bucket, key) = object_of(target, loc)?;
            let resp = client
                .request(Method::DELETE, &object_path(bucket, key))
                .send()
                .await
                .map_err(|e| anyhow!("deleting {target}: {}", flatten(&e)))?;
            if !resp.status().is_success() {
                return Err(failure(resp).await.into());
            }
            outln!("delete: s3://{bucket}/{key}");
            Ok(())
        }
    }
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

/// `s3://BUCKET[/KEY]` as `(bucket, rest)`; `None` without the scheme.
pub fn parse_s3(s: &str) -> Option<(&str, &str)> {
    let rest = s.strip_prefix("s3://")?;
    Some(rest.split_once('/').unwrap_or((rest, "")))
}

/// `BUCKET[/PREFIX]`, with or without `s3://`.
pub fn parse_location(s: &str) -> Result<(&str, &str)> {
    let (bucket, prefix) = parse_s3(s).unwrap_or_else(|| s.split_once('/').unwrap_or((s, "")));
    if bucket.is_empty() {
        bail!("{s:?}: no bucket name");
    }
    Ok((bucket, prefix))
}

fn object_of<'a>(arg: &str, (bucket, key): (&'a str, &'a str)) -> Result<(&'a str, &'a str)> {
    if bucket.is_empty() || key.is_empty() {
        bail!("{arg:?}: expected s3://BUCKET/KEY");
    }
    Ok((bucket, key))
}

/// The REST path of an object (the key percent-encoded, its `/` kept).
fn object_path(bucket: &str, key: &str) -> String {
    verge_cloud::object_sink::object_url(bucket, key, false)
}

/// A content type from a file name's extension.
pub fn guess_content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        "webp" => "image/webp",
        "gif" => "image/gif",
        "avif" => "image/avif",
        "svg" => "image/svg+xml",
        "html" | "htm" => "text/html",
        "css" => "text/css",
        "js" | "mjs" => "text/javascript",
        "json" => "application/json",
        "txt" | "md" => "text/plain",
        "csv" => "text/csv",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "wasm" => "application/wasm",
        _ => "application/octet-stream",
    }
}

async fn upload(
    client: &Client,
    path: &Path,
    bucket: &str,
    key: &str,
    content_type: Option<&str>,
) -> Result<()> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let size = file
        .metadata()
        .await
        .with_context(|| format!("reading {}", path.display()))?
        .len();
    let resp = client
        .request(Method::PUT, &object_path(bucket, key))
        .header(
            reqwest::header::CONTENT_TYPE,
            content_type.unwrap_or_else(|| guess_content_type(path)),
        )
        .header(reqwest::header::CONTENT_LENGTH, size)
        .body(reqwest::Body::from(file))
        .send()
        .await
        .map_err(|e| anyhow!("uploading {}: {}", path.display(), flatten(&e)))?;
    if !resp.status().is_success() {
        return Err(failure(resp).await.into());
    }
    let rec: serde_json::Value = resp.json().await.context("decoding the server's answer")?;
    outln!(
        "upload: {} to s3://{bucket}/{key} ({} bytes, ETag {})",
        path.display(),
        rec["size"].as_u64().unwrap_or(size),
        rec["etag"].as_str().unwrap_or("?")
    );
    Ok(())
}

async fn download(client: &Client, bucket: &str, key: &str, dst: &str) -> Result<()> {
    let resp = client
        .request(Method::GET, &object_path(bucket, key))
        .send()
        .await
        .map_err(|e| anyhow!("downloading s3://{bucket}/{key}: {}", flatten(&e)))?;
    if !resp.status().is_success() {
        return Err(failure(resp).await.into());
    }
    let mut body = resp.bytes_stream();
    if dst == "-" {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| anyhow!("downloading: {}", flatten(&e)))?;
            out.write_all(&chunk).await?;
        }
        out.flush().await?;
        return Ok(());
    }
    let mut dest = PathBuf::from(dst);
    if dst.ends_with('/') || dest.is_dir() {
        let name = key
            .rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| anyhow!("s3://{bucket}/{key} has no file name; give a file as DST"))?;
        dest = dest.join(name);
    }
    // Written next to the destination, then renamed: no half file under its name.
    let tmp = dest.with_file_name(format!(
        ".{}.verge-part",
        dest.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("download")
    ));
    let result = async {
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| anyhow!("downloading: {}", flatten(&e)))?;
            size += chunk.len() as u64;
            f.write_all(&chunk)
                .await
                .with_context(|| format!("writing {}", tmp.display()))?;
        }
        f.sync_all().await?;
        tokio::fs::rename(&tmp, &dest)
            .await
            .with_context(|| format!("renaming to {}", dest.display()))?;
        Ok::<_, anyhow::Error>(size)
    }
    .await;
    match result {
        Ok(size) => {
            outln!(
                "download: s3://{bucket}/{key} to {} ({size} bytes)",
                dest.display()
            );
            Ok(())
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

async fn list_buckets(client: &Client, output: OutputFormat) -> Result<()> {
    let list = client.list(Kind::Bucket, None).await?;
    match output {
        OutputFormat::Json => outln!("{}", output::json(&list.items)?),
        OutputFormat::Yaml => out!("{}", output::yaml(&list.items)?),
        OutputFormat::Table | OutputFormat::Wide => {
            let rows = list.items.iter().map(|b| {
                let public = b.spec.get("public") == Some(&serde_json::Value::Bool(true));
                vec![
                    b.metadata
                        .creation_timestamp
                        .as_deref()
                        .map(short_time)
                        .unwrap_or_default(),
                    if public { "public" } else { "private" }.to_string(),
                    b.metadata.name.clone(),
                ]
            });
            outln!(
                "{}",
                output::plain_table(&["CREATED", "ACCESS", "BUCKET"], rows)
            );
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    key: String,
    size: u64,
    etag: String,
    last_modified: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    items: Vec<Listed>,
    #[serde(default)]
    common_prefixes: Vec<String>,
    truncated: bool,
    next_after: Option<String>,
}

async fn list_objects(
    client: &Client,
    bucket: &str,
    prefix: &str,
    recursive: bool,
    output: OutputFormat,
) -> Result<()> {
    let mut after = String::new();
    let mut items = Vec::new();
    let mut prefixes = Vec::new();
    loop {
        let mut q = vec![("prefix", prefix.to_string()), ("after", after.clone())];
        if !recursive {
            q.push(("delimiter", "/".to_string()));
        }
        let resp = client
            .request(Method::GET, &format!("/api/v1/buckets/{bucket}/objects"))
            .query(&q)
            .send()
            .await
            .map_err(|e| anyhow!("listing s3://{bucket}/{prefix}: {}", flatten(&e)))?;
        if !resp.status().is_success() {
            return Err(failure(resp).await.into());
        }
        let page: Page = resp.json().await.context("decoding the listing")?;
        let next = page.next_after.clone();
        prefixes.extend(page.common_prefixes);
        let done = !page.truncated;
        items.extend(page.items);
        match (done, next) {
            (false, Some(n)) => after = n,
            _ => break,
        }
    }
    match output {
        OutputFormat::Json => outln!(
            "{}",
            output::json(&serde_json::json!({"prefixes": prefixes, "objects": items}))?
        ),
        OutputFormat::Yaml => out!(
            "{}",
            output::yaml(&serde_json::json!({"prefixes": prefixes, "objects": items}))?
        ),
        OutputFormat::Table | OutputFormat::Wide => {
            for p in &prefixes {
                outln!("{:>19} {:>10} {p}", "", "PRE");
            }
            for o in &items {
                outln!(
                    "{:>19} {:>10} {}",
                    short_time(&o.last_modified),
                    o.size,
                    o.key
                );
            }
        }
    }
    Ok(())
}

/// `2026-12-07T10:00:00.250Z` as `2026-12-07 10:00:00`.
fn short_time(t: &str) -> String {
    let t = t.replacen('T', " ", 1);
    t.get(..19).unwrap_or(&t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(parse_s3("s3://b/k/x.jpg"), Some(("b", "k/x.jpg")));
        assert_eq!(parse_s3("s3://b"), Some(("b", "")));
        assert_eq!(parse_s3("./b/k"), None);
        assert_eq!(parse_location("b/pre/").unwrap(), ("b", "pre/"));
        assert_eq!(parse_location("s3://b").unwrap(), ("b", ""));
        assert!(parse_location("s3:///x").is_err());
        assert!(object_of("s3://b/", ("b", "")).is_err());
        assert_eq!(
            object_path("b", "a b/c?.jpg"),
            "/api/v1/buckets/b/objects/a%20b/c%3F.jpg"
        );
        assert_eq!(guess_content_type(Path::new("x/Photo.JPG")), "image/jpeg");
        assert_eq!(
            guess_content_type(Path::new("x")),
            "application/octet-stream"
        );
        assert_eq!(
            short_time("2026-12-07T10:00:00.250Z"),
            "2026-12-07 10:00:00"
        );
    }
}
