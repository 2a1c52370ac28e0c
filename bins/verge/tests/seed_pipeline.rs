//! The README's seed scenario end to end, on a real `verge cloud` with the real AWS CLI:
//! `aws s3 cp photo.jpg s3://uploads/in/photo.jpg` → an event Trigger runs
//! `image-pipeline` (resize, watermark from a bucket, q80) with the upload as its source
//! → the result lands in the public bucket `published` under the upload's name → it is
//! served from `/cdn/published/photo.jpg`. Also: an upload outside the trigger's prefix
//! runs nothing, and re-uploading runs the pipeline again with the new bytes.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use verge_testkit::s3::AwsCli;
use verge_testkit::{Cloud, eventually, success, verge_cli};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

const MANIFEST: &str = r#"
apiVersion: verge.dev/v1
kind: Bucket
metadata: {name: uploads}
spec: {quota: 1Gi, maxObjectSize: 50Mi}
---
apiVersion: verge.dev/v1
kind: Bucket
metadata: {name: published}
spec: {public: true}
---
apiVersion: verge.dev/v1
kind: Trigger
metadata: {name: publish-uploads}
spec:
  event: {bucket: uploads, types: [created], prefix: in/, suffix: .jpg}
  function: image-pipeline
  input:
    ops: [{op: resize, width: 800}, {op: watermark, asset: logo, opacity: 0.6, scale: 0.2}]
    assets: {logo: "s3://published/logo.png"}
    output: {bucket: published, key: "{name}", format: jpeg, quality: 80}
"#;

fn ffmpeg_jpeg(path: &Path, size: &str) -> Result<()> {
    let out = std::process::Command::new("ffmpeg")
        .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
        .arg(format!("testsrc2=size={size}"))
        .args(["-frames:v", "1"])
        .arg(path)
        .output()
        .context("running ffmpeg (scripts/deps installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

async fn cdn(cloud: &Cloud, key: &str) -> Result<reqwest::Response> {
    Ok(cloud
        .client()?
        .get(format!("{}/cdn/published/{key}", cloud.url))
        .send()
        .await?)
}

fn image_width(bytes: &[u8]) -> Result<u64> {
    let info = verge_imaging::info(bytes, &verge_imaging::Limits::default())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(info.width as u64)
}

async fn pipeline_runs(cloud: &Cloud) -> Result<Vec<Value>> {
    let v = cloud.api(Method::GET, "/api/v1/tasks", None).await?;
    Ok(v["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["metadata"]["labels"]["verge.dev/trigger"] == "publish-uploads")
        .collect())
}

#[tokio::test]
async fn an_upload_is_processed_stored_and_served_from_the_cdn() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    let bin = Path::new(BIN);
    let verge = |args: &[&str]| verge_cli(bin, &cloud, args);
    success(&verge(&["image", "install"])?);
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("seed.yaml");
    std::fs::write(&manifest, MANIFEST)?;
    success(&verge(&["apply", "-f", &manifest.to_string_lossy()])?);
    // The watermark, made by an image function straight into the public bucket.
    success(&verge(&[
        "invoke",
        "image-qrcode",
        "--data",
        r#"{"payload": "https://example.com", "size": 256, "output": {"bucket": "published", "key": "logo.png"}}"#,
    ])?);
    let created = success(&verge(&[
        "s3",
        "key",
        "create",
        "--bucket",
        "uploads",
        "--bucket",
        "published",
    ])?);
    let var = |name: &str| {
        created
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}=")))
            .map(str::to_owned)
            .with_context(|| format!("{name} in {created}"))
    };
    let aws = AwsCli::new(
        &cloud.s3_url,
        &var("AWS_ACCESS_KEY_ID")?,
        &var("AWS_SECRET_ACCESS_KEY")?,
    )?
    .with_ca_pem(&cloud.ca_pem)?;

    let photo = dir.path().join("photo.jpg");
    ffmpeg_jpeg(&photo, "1920x1080")?;
    aws.ok(&[
        "s3",
        "cp",
        &photo.to_string_lossy(),
        "s3://uploads/in/photo.jpg",
    ])
    .await?;
    // Outside the prefix: nothing runs.
    aws.ok(&[
        "s3",
        "cp",
        &photo.to_string_lossy(),
        "s3://uploads/raw/photo.jpg",
    ])
    .await?;

    let first = eventually(Duration::from_secs(60), "the published photo", async || {
        let r = cdn(&cloud, "photo.jpg").await.ok()?;
        (r.status() == StatusCode::OK).then_some(())?;
        let etag = r.headers().get("etag")?.to_str().ok()?.to_owned();
        Some((etag, r.bytes().await.ok()?))
    })
    .await?;
    assert_eq!(image_width(&first.1)?, 800, "resized to 800 wide");
    let runs = pipeline_runs(&cloud).await?;
    assert_eq!(runs.len(), 1, "one run, for in/ only: {runs:#?}");
    assert_eq!(runs[0]["status"]["phase"], "Succeeded", "{:#?}", runs[0]);
    let result = &runs[0]["status"]["result"];
    assert_eq!(result["bucket"], "published", "{result}");
    assert_eq!(result["key"], "photo.jpg", "{result}");
    assert_eq!(result["url"], "/cdn/published/photo.jpg", "{result}");

    // A new upload under the same name is processed again, with the new bytes.
    ffmpeg_jpeg(&photo, "640x360")?;
    aws.ok(&[
        "s3",
        "cp",
        &photo.to_string_lossy(),
        "s3://uploads/in/photo.jpg",
    ])
    .await?;
    let second = eventually(
        Duration::from_secs(60),
        "the re-published photo",
        async || {
            let r = cdn(&cloud, "photo.jpg").await.ok()?;
            let etag = r.headers().get("etag")?.to_str().ok()?.to_owned();
            (etag != first.0).then_some(())?;
            r.bytes().await.ok()
        },
    )
    .await?;
    // Not enlarged past the source's 640.
    assert!(image_width(&second)? <= 800);
    assert_eq!(pipeline_runs(&cloud).await?.len(), 2);
    Ok(())
}
