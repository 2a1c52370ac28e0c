//! The S3 tools of the tests against a real SeaweedFS: the AWS CLI (mb, cp, ls,
//! presign, a refused wrong secret) and boto3 (metadata, content type, ETag, a
//! delimiter listing, a presigned PUT), then both over TLS trusting the server's CA
//! (and refusing it without): the shape Verge's own S3 tests reuse with
//! `AwsCli::new(endpoint, key, secret)?.with_ca_pem(&cloud.ca_pem)`. Also: the server
//! is gone once its guard is dropped.

use std::time::Duration;

use anyhow::{Context, Result};
use verge_testkit::{SeaweedFs, eventually};

const BOTO3_SCRIPT: &str = r#"
import sys, boto3
s3 = boto3.client("s3")
bucket = sys.argv[1]
r = s3.put_object(Bucket=bucket, Key="pics/a.txt", Body=b"abc",
                  ContentType="text/plain", Metadata={"origin": "boto3"})
print("put-etag", r["ETag"])
s3.put_object(Bucket=bucket, Key="pics/sub/b.txt", Body=b"b")
g = s3.get_object(Bucket=bucket, Key="pics/a.txt")
print("get", g["Body"].read().decode(), g["ContentType"], g["Metadata"]["origin"], g["ETag"])
l = s3.list_objects_v2(Bucket=bucket, Prefix="pics/", Delimiter="/")
print("keys", ",".join(o["Key"] for o in l.get("Contents", [])))
print("prefixes", ",".join(p["Prefix"] for p in l.get("CommonPrefixes", [])))
print("presigned-put", s3.generate_presigned_url(
    "put_object", Params={"Bucket": bucket, "Key": "presigned.bin"}, ExpiresIn=300))
"#;

#[tokio::test]
async fn aws_cli_and_boto3_drive_a_real_seaweedfs() -> Result<()> {
    let weed = SeaweedFs::start_tls().await?;
    let pid = weed.pid().context("weed runs")?;
    let aws = weed.aws()?;
    let http = reqwest::Client::new();

    // The AWS CLI: make a bucket, upload, list, presign and read through the URL.
    aws.ok(&["s3", "mb", "s3://tools-check"]).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("hello.txt");
    std::fs::write(&file, "hello from the aws cli\n")?;
    aws.ok(&[
        "s3",
        "cp",
        file.to_str().context("utf-8 path")?,
        "s3://tools-check/dir/hello.txt",
    ])
    .await?;
    let ls = aws
        .ok(&["s3", "ls", "--recursive", "s3://tools-check"])
        .await?;
    assert!(ls.contains("dir/hello.txt"), "aws s3 ls: {ls}");
    let url = aws
        .ok(&[
            "s3",
            "presign",
            "s3://tools-check/dir/hello.txt",
            "--expires-in",
            "300",
        ])
        .await?;
    let url = url.trim();
    assert!(url.contains("X-Amz-Signature="), "a SigV4 URL: {url}");
    let body = http
        .get(url)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    assert_eq!(body, "hello from the aws cli\n");

    // A wrong secret is refused by the server (the CLI exits non-zero).
    let wrong = aws.with_key(&weed.access_key, "not-the-secret")?;
    let out = wrong.run(&["s3", "ls", "s3://tools-check"]).await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SignatureDoesNotMatch"), "stderr: {err}");

    // boto3: metadata, content type, ETag (MD5 of "abc"), a delimiter listing, a
    // presigned PUT used by a plain HTTP client, read back by the CLI.
    let out = aws.boto3_ok(BOTO3_SCRIPT, &["tools-check"]).await?;
    let line = |tag: &str| -> Result<String> {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{tag} ")))
            .map(str::to_string)
            .with_context(|| format!("no {tag} line in {out}"))
    };
    let md5_abc = "\"900150983cd24fb0d6963f7d28e17f72\"";
    assert_eq!(line("put-etag")?, md5_abc);
    assert_eq!(line("get")?, format!("abc text/plain boto3 {md5_abc}"));
    assert_eq!(line("keys")?, "pics/a.txt");
    assert_eq!(line("prefixes")?, "pics/sub/");
    let put_url = line("presigned-put")?;
    http.put(&put_url)
        .body(vec![7u8; 3000])
        .send()
        .await?
        .error_for_status()?;
    let back = dir.path().join("back.bin");
    aws.ok(&[
        "s3",
        "cp",
        "s3://tools-check/presigned.bin",
        back.to_str().context("utf-8 path")?,
    ])
    .await?;
    assert_eq!(std::fs::read(&back)?, vec![7u8; 3000]);

    // Over TLS, trusting the server's CA through AWS_CA_BUNDLE (how Verge's tests
    // reach its S3 listener with the cluster CA); without it the CLI refuses the
    // certificate.
    let tls = weed.aws_tls()?;
    assert!(tls.endpoint.starts_with("https://127.0.0.1:"));
    let ls = tls.ok(&["s3", "ls", "s3://tools-check/dir/"]).await?;
    assert!(ls.contains("hello.txt"), "aws s3 ls over TLS: {ls}");
    let got = tls
        .boto3_ok(
            "import boto3; print(boto3.client('s3').get_object(Bucket='tools-check', \
             Key='pics/a.txt')['Body'].read().decode())",
            &[],
        )
        .await?;
    assert_eq!(got.trim(), "abc");
    let untrusted = verge_testkit::AwsCli::new(&tls.endpoint, &weed.access_key, &weed.secret_key)?;
    let out = untrusted.run(&["s3", "ls", "s3://tools-check"]).await?;
    assert!(
        !out.status.success(),
        "a certificate from an unknown CA was accepted"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SSL") || err.contains("certificate"),
        "stderr: {err}"
    );

    // Dropped: the process is gone (reaped, so no /proc entry either).
    drop(weed);
    eventually(Duration::from_secs(10), "weed to exit", async || {
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(())
    })
    .await
}
