//! Bad input to the S3 API of a real `verge cloud` (issue 16), each refused with the
//! S3 error code a client expects, nothing written, and the listener still serving
//! afterwards: a wrong secret, another region or service in the credential scope, a
//! clock 20 minutes off, an expired presigned URL, a revoked key, a read-only key
//! writing, a bucket-limited key on another bucket, invalid bucket names, a key over
//! 1,024 bytes, an object over `maxObjectSize`, a bucket over its quota, a client that
//! dies mid-body (no object, no record, no store history, no blob), multipart with a
//! small part not last, parts out of order, a missing or wrong part ETag, and a
//! CompleteMultipartUpload sent twice.

mod s3_common;

use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use s3_common::*;
use serde_json::json;
use verge_testkit::{AwsCli, Cloud};

/// A file of `data` in `dir`; its path.
fn file(dir: &tempfile::TempDir, name: &str, data: &[u8]) -> Result<String> {
    let p = dir.path().join(name);
    std::fs::write(&p, data)?;
    Ok(p.to_str().context("utf-8")?.to_owned())
}

/// A cloud, the CLI with an all-buckets key, and bucket `b` made through S3.
async fn with_bucket(b: &str) -> Result<(Cloud, AwsCli)> {
    let (cloud, aws) = start().await?;
    aws.ok(&["s3", "mb", &format!("s3://{b}")]).await?;
    Ok((cloud, aws))
}

#[tokio::test]
async fn wrong_secret_is_signature_does_not_match() -> Result<()> {
    let (_cloud, aws) = with_bucket("sig").await?;
    let dir = tempfile::tempdir()?;
    let f = file(&dir, "f.txt", b"data")?;
    let wrong = aws.with_key(&aws.access_key, "0000000000000000000000000000000000000000")?;
    expect_cli_code(
        &wrong,
        &["s3", "cp", &f, "s3://sig/f.txt"],
        "SignatureDoesNotMatch",
    )
    .await?;
    expect_cli_code(&wrong, &["s3", "ls", "s3://sig"], "SignatureDoesNotMatch").await?;
    assert!(listed(&aws, "sig").await?.is_empty());
    assert_serving(&aws, "sig").await
}

#[tokio::test]
async fn wrong_region_in_the_scope_is_authorization_header_malformed() -> Result<()> {
    let (_cloud, aws) = with_bucket("region").await?;
    let dir = tempfile::tempdir()?;
    let f = file(&dir, "f.txt", b"data")?;
    let out = aws
        .run(&["--region", "eu-west-1", "s3", "cp", &f, "s3://region/f.txt"])
        .await?;
    assert_eq!(cli_code(&out), "AuthorizationHeaderMalformed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("eu-west-1") && err.contains("us-east-1"),
        "names both regions: {err}"
    );
    assert!(listed(&aws, "region").await?.is_empty());
    assert_serving(&aws, "region").await
}

#[tokio::test]
async fn wrong_service_in_the_scope_is_access_denied() -> Result<()> {
    let (cloud, aws) = with_bucket("service").await?;
    let http = cloud.client()?;
    let mut signer = Signer::new(&cloud.s3_url, &aws.access_key, &aws.secret_key);
    // The same signer for service s3 is accepted: only the service differs.
    let (status, _, body) = signer
        .send(&http, Method::PUT, "/service/ok.txt", &[], b"ok".to_vec())
        .await?;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    for service in ["iam", "sts", "execute-api"] {
        signer.creds.service = service.to_owned();
        let (status, _, body) = signer
            .send(&http, Method::PUT, "/service/f.txt", &[], b"data".to_vec())
            .await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{service}");
        assert_eq!(xml_code(&body), "AccessDenied", "{service}");
        assert!(
            String::from_utf8_lossy(&body).contains(service),
            "names the service: {}",
            String::from_utf8_lossy(&body)
        );
    }
    assert_eq!(listed(&aws, "service").await?, ["ok.txt"]);
    assert_serving(&aws, "service").await
}

#[tokio::test]
async fn request_time_skewed_by_20_minutes_is_refused() -> Result<()> {
    let (cloud, aws) = with_bucket("skew").await?;
    let http = cloud.client()?;
    let mut signer = Signer::new(&cloud.s3_url, &aws.access_key, &aws.secret_key);
    for ahead in [false, true] {
        signer.skew = Duration::from_secs(20 * 60);
        signer.skew_ahead = ahead;
        let (status, _, body) = signer
            .send(&http, Method::PUT, "/skew/f.txt", &[], b"data".to_vec())
            .await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "ahead={ahead}");
        assert_eq!(xml_code(&body), "RequestTimeTooSkewed", "ahead={ahead}");
        let (status, _, body) = signer
            .send(
                &http,
                Method::GET,
                "/skew",
                &[("list-type", "2")],
                Vec::new(),
            )
            .await?;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(xml_code(&body), "RequestTimeTooSkewed");
    }
    // Within the 15 minutes allowed, the same signer is accepted.
    signer.skew = Duration::from_secs(5 * 60);
    let (status, _, body) = signer
        .send(&http, Method::PUT, "/skew/ok.txt", &[], b"ok".to_vec())
        .await?;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(listed(&aws, "skew").await?, ["ok.txt"]);
    assert_serving(&aws, "skew").await
}

const EXPIRED_PRESIGN: &str = r#"
import os, ssl, sys, time, urllib.request, urllib.error
import boto3
s3 = boto3.client("s3")
ctx = ssl.create_default_context(cafile=os.environ["AWS_CA_BUNDLE"])
s3.put_object(Bucket="presign", Key="there.txt", Body=b"there")
get = s3.generate_presigned_url("get_object", Params={"Bucket": "presign", "Key": "there.txt"}, ExpiresIn=1)
put = s3.generate_presigned_url("put_object", Params={"Bucket": "presign", "Key": "late.txt"}, ExpiresIn=1)
time.sleep(3)
for url, data, method in [(get, None, "GET"), (put, b"late", "PUT")]:
    try:
        urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), context=ctx)
        raise AssertionError(method + " with an expired URL was accepted")
    except urllib.error.HTTPError as e:
        body = e.read().decode()
        print(method, e.code, body.split("<Code>")[1].split("</Code>")[0])
"#;

#[tokio::test]
async fn expired_presigned_url_is_access_denied() -> Result<()> {
    let (_cloud, aws) = with_bucket("presign").await?;
    let out = aws.boto3_ok(EXPIRED_PRESIGN, &[]).await?;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["GET 403 AccessDenied", "PUT 403 AccessDenied"],
        "{out}"
    );
    assert_eq!(listed(&aws, "presign").await?, ["there.txt"]);
    assert_serving(&aws, "presign").await
}

#[tokio::test]
async fn revoked_key_is_invalid_access_key_id() -> Result<()> {
    let (cloud, aws) = with_bucket("revoke").await?;
    let (id, secret) = key(&cloud, &[], false).await?;
    let doomed = aws.with_key(&id, &secret)?;
    let dir = tempfile::tempdir()?;
    let f = file(&dir, "f.txt", b"data")?;
    doomed
        .ok(&["s3", "cp", &f, "s3://revoke/before.txt"])
        .await?;
    cloud
        .api(Method::DELETE, &format!("/api/v1/s3keys/{id}"), None)
        .await?;
    expect_cli_code(
        &doomed,
        &["s3", "cp", &f, "s3://revoke/after.txt"],
        "InvalidAccessKeyId",
    )
    .await?;
    expect_cli_code(&doomed, &["s3", "ls", "s3://revoke"], "InvalidAccessKeyId").await?;
    assert_eq!(listed(&aws, "revoke").await?, ["before.txt"]);
    assert_serving(&aws, "revoke").await
}

#[tokio::test]
async fn read_only_key_writing_is_access_denied() -> Result<()> {
    let (cloud, aws) = with_bucket("rox").await?;
    let dir = tempfile::tempdir()?;
    let f = file(&dir, "f.txt", b"data")?;
    aws.ok(&["s3", "cp", &f, "s3://rox/kept.txt"]).await?;
    let (id, secret) = key(&cloud, &[], true).await?;
    let ro = aws.with_key(&id, &secret)?;
    // It reads.
    assert_eq!(
        ro.ok(&["s3", "cp", "s3://rox/kept.txt", "-"]).await?,
        "data"
    );
    assert!(ro.ok(&["s3", "ls", "s3://rox"]).await?.contains("kept.txt"));
    // It writes nothing.
    for args in [
        vec!["s3", "cp", f.as_str(), "s3://rox/new.txt"],
        vec!["s3", "rm", "s3://rox/kept.txt"],
        vec!["s3", "mb", "s3://rox-new"],
        vec![
            "s3api",
            "copy-object",
            "--bucket",
            "rox",
            "--key",
            "copy.txt",
            "--copy-source",
            "rox/kept.txt",
        ],
        vec![
            "s3api",
            "delete-objects",
            "--bucket",
            "rox",
            "--delete",
            "Objects=[{Key=kept.txt}]",
        ],
        vec![
            "s3api",
            "create-multipart-upload",
            "--bucket",
            "rox",
            "--key",
            "mp.bin",
        ],
    ] {
        expect_cli_code(&ro, &args, "AccessDenied").await?;
    }
    assert_eq!(listed(&aws, "rox").await?, ["kept.txt"]);
    let ls = aws.ok(&["s3", "ls"]).await?;
    assert!(!ls.contains("rox-new"), "{ls}");
    assert_serving(&aws, "rox").await
}

#[tokio::test]
async fn bucket_limited_key_on_another_bucket_is_access_denied() -> Result<()> {
    let (cloud, aws) = with_bucket("mine").await?;
    aws.ok(&["s3", "mb", "s3://theirs"]).await?;
    let dir = tempfile::tempdir()?;
    let f = file(&dir, "f.txt", b"secret")?;
    aws.ok(&["s3", "cp", &f, "s3://theirs/secret.txt"]).await?;
    let (id, secret) = key(&cloud, &["mine"], false).await?;
    let limited = aws.with_key(&id, &secret)?;
    limited.ok(&["s3", "cp", &f, "s3://mine/ok.txt"]).await?;
    let ls = limited.ok(&["s3", "ls"]).await?;
    assert!(ls.contains("mine") && !ls.contains("theirs"), "{ls}");
    for args in [
        vec!["s3", "cp", f.as_str(), "s3://theirs/new.txt"],
        vec![
            "s3api",
            "get-object",
            "--bucket",
            "theirs",
            "--key",
            "secret.txt",
            "/dev/null",
        ],
        vec!["s3", "ls", "s3://theirs"],
        vec!["s3", "rm", "s3://theirs/secret.txt"],
        vec!["s3", "mb", "s3://another"],
        vec![
            "s3api",
            "copy-object",
            "--bucket",
            "mine",
            "--key",
            "stolen.txt",
            "--copy-source",
            "theirs/secret.txt",
        ],
    ] {
        expect_cli_code(&limited, &args, "AccessDenied").await?;
    }
    assert_eq!(listed(&aws, "theirs").await?, ["secret.txt"]);
    assert_eq!(listed(&aws, "mine").await?, ["ok.txt"]);
    assert!(!aws.ok(&["s3", "ls"]).await?.contains("another"));
    assert_serving(&limited, "mine").await
}

#[tokio::test]
async fn invalid_bucket_names_are_refused() -> Result<()> {
    let (_cloud, aws) = start().await?;
    let long = "a".repeat(64);
    for name in [
        "ab",
        "Upper-Case",
        "under_score",
        "-leading",
        "trailing-",
        "with.dot",
        long.as_str(),
    ] {
        let out = aws
            .run(&["s3api", "create-bucket", &format!("--bucket={name}")])
            .await?;
        assert_eq!(
            cli_code(&out),
            "InvalidBucketName",
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ls = aws.ok(&["s3", "ls"]).await?;
    assert!(ls.trim().is_empty(), "no bucket was made: {ls}");
    // 63 characters is fine.
    let ok = "b".repeat(63);
    aws.ok(&["s3", "mb", &format!("s3://{ok}")]).await?;
    assert_serving(&aws, &ok).await
}

const LONG_KEY: &str = r#"
import boto3
from botocore.exceptions import ClientError
s3 = boto3.client("s3")
s3.put_object(Bucket="keys", Key="k" * 1024, Body=b"max")
for key in ["k" * 1025, "\u00e9" * 513]:
    try:
        s3.put_object(Bucket="keys", Key=key, Body=b"too long")
        raise AssertionError("a key of %d bytes was accepted" % len(key.encode()))
    except ClientError as e:
        print(e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
"#;

#[tokio::test]
async fn keys_over_1024_bytes_are_refused() -> Result<()> {
    let (_cloud, aws) = with_bucket("keys").await?;
    let out = aws.boto3_ok(LONG_KEY, &[]).await?;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["KeyTooLongError 400", "KeyTooLongError 400"],
        "{out}"
    );
    assert_eq!(listed(&aws, "keys").await?, ["k".repeat(1024)]);
    assert_serving(&aws, "keys").await
}

const TOO_LARGE: &str = r#"
import boto3
from botocore.exceptions import ClientError
s3 = boto3.client("s3")
MiB = 1 << 20
def err(fn):
    try:
        fn()
    except ClientError as e:
        return "%s %d" % (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
    raise AssertionError("accepted")
s3.put_object(Bucket="small", Key="fits.bin", Body=b"x" * (2 * MiB))
print("put", err(lambda: s3.put_object(Bucket="small", Key="big.bin", Body=b"x" * (2 * MiB + 1))))
mp = s3.create_multipart_upload(Bucket="small", Key="mp.bin")["UploadId"]
print("part", err(lambda: s3.upload_part(Bucket="small", Key="mp.bin", UploadId=mp, PartNumber=1, Body=b"y" * (3 * MiB))))
s3.abort_multipart_upload(Bucket="small", Key="mp.bin", UploadId=mp)
print("copy-in", err(lambda: s3.copy_object(Bucket="small", Key="copy.bin", CopySource={"Bucket": "roomy", "Key": "big.bin"})))
"#;

#[tokio::test]
async fn object_over_max_object_size_is_entity_too_large() -> Result<()> {
    let (cloud, aws) = start().await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/buckets",
            Some(json!({"apiVersion": "verge.dev/v1", "kind": "Bucket",
                "metadata": {"name": "small"}, "spec": {"maxObjectSize": "2Mi"}})),
        )
        .await?;
    aws.ok(&["s3", "mb", "s3://roomy"]).await?;
    let dir = tempfile::tempdir()?;
    let f = file(&dir, "big.bin", &bytes_of(1, (3 << 20) + 5))?;
    aws.ok(&["s3", "cp", &f, "s3://roomy/big.bin"]).await?;
    let out = aws.boto3_ok(TOO_LARGE, &[]).await?;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "put EntityTooLarge 400",
            "part EntityTooLarge 400",
            "copy-in EntityTooLarge 400"
        ],
        "{out}"
    );
    // The AWS CLI too.
    expect_cli_code(
        &aws,
        &["s3", "cp", &f, "s3://small/cli.bin"],
        "EntityTooLarge",
    )
    .await?;
    assert_eq!(listed(&aws, "small").await?, ["fits.bin"]);
    assert_serving(&aws, "small").await
}

const OVER_QUOTA: &str = r#"
import boto3
from botocore.exceptions import ClientError
s3 = boto3.client("s3")
MiB = 1 << 20
def err(fn):
    try:
        fn()
    except ClientError as e:
        return "%s %d" % (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
    raise AssertionError("accepted")
s3.put_object(Bucket="quota", Key="a.bin", Body=b"a" * (2 * MiB))
print("put", err(lambda: s3.put_object(Bucket="quota", Key="b.bin", Body=b"b" * (2 * MiB))))
print("copy", err(lambda: s3.copy_object(Bucket="quota", Key="c.bin", CopySource={"Bucket": "quota", "Key": "a.bin"})))
mp = s3.create_multipart_upload(Bucket="quota", Key="mp.bin")["UploadId"]
e1 = s3.upload_part(Bucket="quota", Key="mp.bin", UploadId=mp, PartNumber=1, Body=b"m" * (5 * MiB))["ETag"]
print("complete", err(lambda: s3.complete_multipart_upload(Bucket="quota", Key="mp.bin", UploadId=mp,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]})))
s3.abort_multipart_upload(Bucket="quota", Key="mp.bin", UploadId=mp)
# Room again once an object is gone.
s3.delete_object(Bucket="quota", Key="a.bin")
s3.put_object(Bucket="quota", Key="b.bin", Body=b"b" * (2 * MiB))
print("after-delete ok")
"#;

#[tokio::test]
async fn bucket_over_quota_is_quota_exceeded() -> Result<()> {
    let (cloud, aws) = start().await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/buckets",
            Some(json!({"apiVersion": "verge.dev/v1", "kind": "Bucket",
                "metadata": {"name": "quota"}, "spec": {"quota": "3Mi"}})),
        )
        .await?;
    let out = aws.boto3_ok(OVER_QUOTA, &[]).await?;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "put QuotaExceeded 403",
            "copy QuotaExceeded 403",
            "complete QuotaExceeded 403",
            "after-delete ok"
        ],
        "{out}"
    );
    assert_eq!(listed(&aws, "quota").await?, ["b.bin"]);
    assert_serving(&aws, "quota").await
}

/// Every file under `DATA_DIR/blobs` (blobs and temp files).
fn blob_files(cloud: &Cloud) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&cloud.data_dir().join("blobs"), &mut out);
    out
}

/// The store's whole history under `/s3/objects/` (the object events), read from the
/// data dir of a stopped cloud.
pub async fn object_history(cloud: &Cloud) -> Result<Vec<(String, bool)>> {
    use verge_store::Store;
    let store = verge_store::SqliteStore::open(verge_store::SqliteOptions::new(
        cloud.data_dir().join("store.db"),
    ))
    .await?;
    let mut watch = store.watch("/s3/objects/", 0).await?;
    let mut out = Vec::new();
    // The history is replayed at once; the cloud is stopped, so nothing follows it.
    while let Ok(Some(ev)) = tokio::time::timeout(Duration::from_secs(2), watch.next()).await {
        let ev = ev?;
        out.push((ev.kv.key.clone(), ev.kind == verge_store::EventKind::Put));
    }
    Ok(out)
}

#[tokio::test]
async fn connection_dropped_mid_upload_leaves_no_object_record_or_blob() -> Result<()> {
    let (mut cloud, aws) = with_bucket("drop").await?;
    let signer = Signer::new(&cloud.s3_url, &aws.access_key, &aws.secret_key);
    let ca = cloud.ca_pem.clone();
    // Content-Length 1 MiB, 256 KiB sent, then the connection is gone; twice, on a new
    // key and over an existing object.
    let dir = tempfile::tempdir()?;
    let f = file(&dir, "old.txt", b"old bytes")?;
    aws.ok(&["s3", "cp", &f, "s3://drop/existing.txt"]).await?;
    let blobs_before = blob_files(&cloud);
    assert_eq!(blobs_before.len(), 1, "{blobs_before:?}");
    for key in ["/drop/partial.bin", "/drop/existing.txt"] {
        let (s, ca) = (signer.clone(), ca.clone());
        tokio::task::spawn_blocking(move || send_partial(&s, &ca, key, 1 << 20, 256 << 10))
            .await??;
    }
    // The server gives up on the body; the temp file goes with it.
    verge_testkit::eventually(
        Duration::from_secs(30),
        "the partial blob removed",
        async || (blob_files(&cloud) == blobs_before).then_some(()),
    )
    .await?;
    assert_eq!(listed(&aws, "drop").await?, ["existing.txt"]);
    let out = aws
        .run(&[
            "s3api",
            "head-object",
            "--bucket",
            "drop",
            "--key",
            "partial.bin",
        ])
        .await?;
    assert_eq!(cli_code(&out), "404");
    assert_eq!(
        aws.ok(&["s3", "cp", "s3://drop/existing.txt", "-"]).await?,
        "old bytes"
    );
    assert_serving(&aws, "drop").await?;
    // No store history (no event) for the dropped uploads: the only writes under
    // /s3/objects/ are the existing object's and the serving check's.
    cloud.stop()?;
    let history = object_history(&cloud).await?;
    assert_eq!(
        history,
        [
            ("/s3/objects/drop/existing.txt".to_owned(), true),
            ("/s3/objects/drop/alive.txt".to_owned(), true),
            ("/s3/objects/drop/alive.txt".to_owned(), false),
        ]
    );
    Ok(())
}

const EXPECT_CODE: &str = r#"
def err(fn):
    try:
        fn()
    except ClientError as e:
        return "%s %d" % (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
    raise AssertionError("accepted")
"#;

/// A boto3 script with `s3`, `MiB`, `err(fn)` defined, bucket `mpu`.
fn mp_script(body: &str) -> String {
    format!(
        "import os, boto3\nfrom botocore.exceptions import ClientError\ns3 = boto3.client('s3')\nMiB = 1 << 20\n{EXPECT_CODE}\n{body}"
    )
}

#[tokio::test]
async fn multipart_part_under_5mib_not_last_is_entity_too_small() -> Result<()> {
    let (_cloud, aws) = with_bucket("mpu").await?;
    let out = aws
        .boto3_ok(
            &mp_script(
                r#"
mp = s3.create_multipart_upload(Bucket="mpu", Key="small.bin")["UploadId"]
e1 = s3.upload_part(Bucket="mpu", Key="small.bin", UploadId=mp, PartNumber=1, Body=b"a" * MiB)["ETag"]
e2 = s3.upload_part(Bucket="mpu", Key="small.bin", UploadId=mp, PartNumber=2, Body=b"b" * MiB)["ETag"]
print(err(lambda: s3.complete_multipart_upload(Bucket="mpu", Key="small.bin", UploadId=mp,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})))
# The upload is still open with its parts; a single small part (the last) is fine.
print(len(s3.list_parts(Bucket="mpu", Key="small.bin", UploadId=mp)["Parts"]))
r = s3.complete_multipart_upload(Bucket="mpu", Key="small.bin", UploadId=mp,
    MultipartUpload={"Parts": [{"PartNumber": 2, "ETag": e2}]})
print(r["ETag"].endswith('-1"'))
"#,
            ),
            &[],
        )
        .await?;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["EntityTooSmall 400", "2", "True"],
        "{out}"
    );
    assert_eq!(listed(&aws, "mpu").await?, ["small.bin"]);
    assert_eq!(
        aws.ok(&[
            "s3api",
            "head-object",
            "--bucket",
            "mpu",
            "--key",
            "small.bin",
            "--query",
            "ContentLength"
        ])
        .await?
        .trim(),
        (1 << 20).to_string()
    );
    assert_serving(&aws, "mpu").await
}

#[tokio::test]
async fn multipart_parts_out_of_order_and_bad_etags_are_refused() -> Result<()> {
    let (_cloud, aws) = with_bucket("mpu").await?;
    let out = aws
        .boto3_ok(
            &mp_script(
                r#"
mp = s3.create_multipart_upload(Bucket="mpu", Key="o.bin")["UploadId"]
e1 = s3.upload_part(Bucket="mpu", Key="o.bin", UploadId=mp, PartNumber=1, Body=b"a" * (5 * MiB))["ETag"]
e2 = s3.upload_part(Bucket="mpu", Key="o.bin", UploadId=mp, PartNumber=2, Body=b"b" * 100)["ETag"]
def complete(parts):
    return lambda: s3.complete_multipart_upload(Bucket="mpu", Key="o.bin", UploadId=mp,
        MultipartUpload={"Parts": parts})
print("order", err(complete([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}])))
print("repeated", err(complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 1, "ETag": e1}])))
print("wrong-etag", err(complete([{"PartNumber": 1, "ETag": '"0123456789abcdef0123456789abcdef"'}, {"PartNumber": 2, "ETag": e2}])))
print("no-etag", err(complete([{"PartNumber": 1}, {"PartNumber": 2, "ETag": e2}])))
print("missing-part", err(complete([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 3, "ETag": e2}])))
print("no-parts", err(lambda: s3.complete_multipart_upload(Bucket="mpu", Key="o.bin", UploadId=mp, MultipartUpload={"Parts": []})))
print("other-key", err(lambda: s3.complete_multipart_upload(Bucket="mpu", Key="other.bin", UploadId=mp,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]})))
print("bad-part-number", err(lambda: s3.upload_part(Bucket="mpu", Key="o.bin", UploadId=mp, PartNumber=10001, Body=b"x")))
print("parts-left", len(s3.list_parts(Bucket="mpu", Key="o.bin", UploadId=mp)["Parts"]))
s3.abort_multipart_upload(Bucket="mpu", Key="o.bin", UploadId=mp)
"#,
            ),
            &[],
        )
        .await?;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "order InvalidPartOrder 400",
            "repeated InvalidPartOrder 400",
            "wrong-etag InvalidPart 400",
            "no-etag InvalidPart 400",
            "missing-part InvalidPart 400",
            "no-parts InvalidArgument 400",
            "other-key NoSuchUpload 404",
            "bad-part-number InvalidArgument 400",
            "parts-left 2",
        ],
        "{out}"
    );
    assert!(listed(&aws, "mpu").await?.is_empty());
    assert_serving(&aws, "mpu").await
}

#[tokio::test]
async fn complete_multipart_upload_twice_answers_the_same_object() -> Result<()> {
    let (_cloud, aws) = with_bucket("mpu").await?;
    let out = aws
        .boto3_ok(
            &mp_script(
                r#"
mp = s3.create_multipart_upload(Bucket="mpu", Key="twice.bin")["UploadId"]
e1 = s3.upload_part(Bucket="mpu", Key="twice.bin", UploadId=mp, PartNumber=1, Body=b"a" * (5 * MiB))["ETag"]
e2 = s3.upload_part(Bucket="mpu", Key="twice.bin", UploadId=mp, PartNumber=2, Body=b"b" * 10)["ETag"]
parts = {"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]}
first = s3.complete_multipart_upload(Bucket="mpu", Key="twice.bin", UploadId=mp, MultipartUpload=parts)["ETag"]
second = s3.complete_multipart_upload(Bucket="mpu", Key="twice.bin", UploadId=mp, MultipartUpload=parts)["ETag"]
print("same", first == second, first.endswith('-2"'))
print("listed", [(o["Key"], o["Size"]) for o in s3.list_objects_v2(Bucket="mpu")["Contents"]])
# Once the key was overwritten, the old upload is gone for good.
s3.put_object(Bucket="mpu", Key="twice.bin", Body=b"new")
print("after-overwrite", err(lambda: s3.complete_multipart_upload(Bucket="mpu", Key="twice.bin", UploadId=mp, MultipartUpload=parts)))
print("body", s3.get_object(Bucket="mpu", Key="twice.bin")["Body"].read().decode())
"#,
            ),
            &[],
        )
        .await?;
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "same True True",
            "listed [('twice.bin', 5242890)]",
            "after-overwrite NoSuchUpload 404",
            "body new",
        ],
        "{out}"
    );
    assert_serving(&aws, "mpu").await
}
