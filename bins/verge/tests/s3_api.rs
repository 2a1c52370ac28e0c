//! The S3 API of a real `verge cloud` driven by the real AWS CLI and boto3 (issue 16):
//! buckets (mb, ls, rb of a non-empty and an empty bucket, HeadBucket 404), a 64 MiB
//! `aws s3 cp` (multipart, `md5-of-md5s-N` ETag, bytes round trip), a single PUT's MD5
//! ETag, `aws s3 sync` up, down and with `--delete`; then with boto3: user metadata,
//! content type and headers, HeadObject/GetObject 404s, range reads, ListObjectsV2 with
//! a delimiter and a paginator of small pages, ListObjects v1 with markers, CopyObject
//! in a bucket and across buckets (metadata COPY and REPLACE), presigned GET and PUT
//! (SigV4) through a plain HTTP client, conditional GETs (If-Match 412, If-None-Match
//! 304, If-Modified-Since 304, If-Unmodified-Since 412), multipart listing
//! (ListMultipartUploads, ListParts, Abort) and completion, DeleteObject and
//! DeleteObjects (quiet too).

mod s3_common;

use anyhow::{Context, Result};
use s3_common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_buckets_64mib_multipart_and_sync() -> Result<()> {
    let (_cloud, aws) = start().await?;
    let dir = tempfile::tempdir()?;
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    aws.ok(&["s3", "mb", "s3://photos"]).await?;
    let ls = aws.ok(&["s3", "ls"]).await?;
    assert!(ls.contains("photos"), "aws s3 ls: {ls}");
    aws.ok(&["s3api", "head-bucket", "--bucket", "photos"])
        .await?;
    let out = aws
        .run(&["s3api", "head-bucket", "--bucket", "no-such-bucket"])
        .await?;
    assert_eq!(cli_code(&out), "404");

    // 64 MiB: the CLI uploads it in 8 MiB parts.
    let big = bytes_of(64, 64 << 20);
    std::fs::write(p("big.bin"), &big)?;
    aws.ok(&["s3", "cp", &p("big.bin"), "s3://photos/big/big.bin"])
        .await?;
    let head: serde_json::Value = serde_json::from_str(
        &aws.ok(&[
            "s3api",
            "head-object",
            "--bucket",
            "photos",
            "--key",
            "big/big.bin",
        ])
        .await?,
    )?;
    let expected = multipart_etag(&big, 8 << 20);
    assert!(expected.ends_with("-8\""), "{expected}");
    assert_eq!(head["ETag"], expected.as_str(), "{head}");
    assert_eq!(head["ContentLength"], 64 << 20);
    aws.ok(&["s3", "cp", "s3://photos/big/big.bin", &p("big.back")])
        .await?;
    assert!(std::fs::read(p("big.back"))? == big, "64 MiB round trip");
    std::fs::remove_file(p("big.back"))?;
    std::fs::remove_file(p("big.bin"))?;

    // A small file: one PUT, the MD5 as ETag.
    std::fs::write(p("small.txt"), b"one put\n")?;
    aws.ok(&["s3", "cp", &p("small.txt"), "s3://photos/small.txt"])
        .await?;
    let head: serde_json::Value = serde_json::from_str(
        &aws.ok(&[
            "s3api",
            "head-object",
            "--bucket",
            "photos",
            "--key",
            "small.txt",
        ])
        .await?,
    )?;
    assert_eq!(head["ETag"], quoted_md5(b"one put\n").as_str());

    // aws s3 sync of a folder: up, an update sends only what changed, down, --delete.
    let site = dir.path().join("site");
    std::fs::create_dir_all(site.join("css/deep"))?;
    let files = [
        ("index.html", b"<h1>hi</h1>".to_vec()),
        ("about.html", b"<p>about</p>".to_vec()),
        ("css/site.css", b"body{}".to_vec()),
        ("css/deep/x.css", bytes_of(3, 300_000)),
        ("logo.bin", bytes_of(4, 70_000)),
    ];
    for (name, data) in &files {
        std::fs::write(site.join(name), data)?;
    }
    let site_s = site.to_str().context("utf-8")?;
    aws.ok(&["s3", "sync", site_s, "s3://photos/site/"]).await?;
    let mut keys = listed(&aws, "photos").await?;
    keys.retain(|k| k.starts_with("site/"));
    let mut want: Vec<String> = files.iter().map(|(n, _)| format!("site/{n}")).collect();
    want.sort();
    assert_eq!(keys, want);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    std::fs::write(site.join("index.html"), b"<h1>hello again</h1>")?;
    let out = aws.ok(&["s3", "sync", site_s, "s3://photos/site/"]).await?;
    let uploads: Vec<&str> = out.lines().filter(|l| l.contains("upload:")).collect();
    assert_eq!(uploads.len(), 1, "only the changed file: {out}");
    assert!(uploads[0].contains("index.html"), "{out}");
    let down = dir.path().join("down");
    let down_s = down.to_str().context("utf-8")?;
    aws.ok(&["s3", "sync", "s3://photos/site/", down_s]).await?;
    for (name, data) in &files {
        let got = std::fs::read(down.join(name))?;
        if *name == "index.html" {
            assert_eq!(got, b"<h1>hello again</h1>");
        } else {
            assert!(got == *data, "{name} differs after sync down");
        }
    }
    std::fs::remove_file(site.join("about.html"))?;
    aws.ok(&["s3", "sync", "--delete", site_s, "s3://photos/site/"])
        .await?;
    let keys = listed(&aws, "photos").await?;
    assert!(!keys.contains(&"site/about.html".to_owned()), "{keys:?}");
    assert!(keys.contains(&"site/index.html".to_owned()), "{keys:?}");

    // rb: refused while objects remain, then done.
    expect_cli_code(&aws, &["s3", "rb", "s3://photos"], "BucketNotEmpty").await?;
    aws.ok(&["s3", "rm", "--recursive", "s3://photos"]).await?;
    assert!(listed(&aws, "photos").await?.is_empty());
    aws.ok(&["s3", "rb", "s3://photos"]).await?;
    let out = aws
        .run(&["s3api", "head-bucket", "--bucket", "photos"])
        .await?;
    assert_eq!(cli_code(&out), "404");
    Ok(())
}

const BOTO3_OPS: &str = r#"
import sys, os, json, ssl, hashlib, datetime, urllib.request
import boto3
from botocore.exceptions import ClientError

s3 = boto3.client("s3")
b, other = sys.argv[1], sys.argv[2]
ctx = ssl.create_default_context(cafile=os.environ["AWS_CA_BUNDLE"])

def check(name):
    print("ok", name, flush=True)

def err(fn):
    try:
        fn()
    except ClientError as e:
        return (e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"])
    raise AssertionError("no error")

def md5(data):
    return '"%s"' % hashlib.md5(data).hexdigest()

s3.create_bucket(Bucket=b)
s3.create_bucket(Bucket=other)
names = [x["Name"] for x in s3.list_buckets()["Buckets"]]
assert b in names and other in names, names
check("list-buckets")

# User metadata, content type and headers round trip.
r = s3.put_object(Bucket=b, Key="docs/readme.txt", Body=b"hello world",
                  ContentType="text/plain; charset=utf-8",
                  Metadata={"owner": "ana", "note": "x y"}, CacheControl="max-age=60",
                  ContentDisposition='attachment; filename="r.txt"')
assert r["ETag"] == md5(b"hello world"), r["ETag"]
h = s3.head_object(Bucket=b, Key="docs/readme.txt")
assert h["ContentType"] == "text/plain; charset=utf-8", h
assert h["Metadata"] == {"owner": "ana", "note": "x y"}, h["Metadata"]
assert h["ContentLength"] == 11 and h["ETag"] == md5(b"hello world"), h
assert h["CacheControl"] == "max-age=60", h
assert h["ContentDisposition"] == 'attachment; filename="r.txt"', h
g = s3.get_object(Bucket=b, Key="docs/readme.txt")
assert g["Body"].read() == b"hello world"
assert g["Metadata"] == {"owner": "ana", "note": "x y"} and g["ContentType"].startswith("text/plain")
check("metadata")

# 404s.
assert err(lambda: s3.head_object(Bucket=b, Key="nope")) == ("404", 404)
assert err(lambda: s3.head_object(Bucket="no-such-bucket", Key="k")) == ("404", 404)
assert err(lambda: s3.head_bucket(Bucket="no-such-bucket")) == ("404", 404)
assert err(lambda: s3.get_object(Bucket=b, Key="nope")) == ("NoSuchKey", 404)
assert err(lambda: s3.get_object(Bucket="no-such-bucket", Key="k")) == ("NoSuchBucket", 404)
assert err(lambda: s3.list_objects_v2(Bucket="no-such-bucket")) == ("NoSuchBucket", 404)
check("404s")

# Range reads.
data = bytes(range(256)) * 1024
s3.put_object(Bucket=b, Key="bin/range.bin", Body=data)
g = s3.get_object(Bucket=b, Key="bin/range.bin", Range="bytes=0-9")
assert g["Body"].read() == data[:10] and g["ContentRange"] == "bytes 0-9/262144", g["ContentRange"]
assert g["ResponseMetadata"]["HTTPStatusCode"] == 206
assert s3.get_object(Bucket=b, Key="bin/range.bin", Range="bytes=1000-")["Body"].read() == data[1000:]
assert s3.get_object(Bucket=b, Key="bin/range.bin", Range="bytes=-100")["Body"].read() == data[-100:]
assert s3.get_object(Bucket=b, Key="bin/range.bin", Range="bytes=5000-5999")["Body"].read() == data[5000:6000]
assert err(lambda: s3.get_object(Bucket=b, Key="bin/range.bin", Range="bytes=300000-")) == ("InvalidRange", 416)
check("range")

# Listing: a paginator of small pages, a delimiter, v1 markers.
keys = ["list/%s/%02d.txt" % (d, i) for d in "abc" for i in range(7)] + ["list/top1.txt", "list/top2.txt"]
for k in keys:
    s3.put_object(Bucket=b, Key=k, Body=k.encode())
keys.sort()
pages = list(s3.get_paginator("list_objects_v2").paginate(
    Bucket=b, Prefix="list/", PaginationConfig={"PageSize": 4}))
got = [o["Key"] for p in pages for o in p.get("Contents", [])]
assert got == keys, got
assert len(pages) == 6, len(pages)
assert all(p["KeyCount"] <= 4 for p in pages)
assert pages[0]["IsTruncated"] and not pages[-1]["IsTruncated"]
l = s3.list_objects_v2(Bucket=b, Prefix="list/", Delimiter="/")
assert [o["Key"] for o in l["Contents"]] == ["list/top1.txt", "list/top2.txt"], l
assert [p["Prefix"] for p in l["CommonPrefixes"]] == ["list/a/", "list/b/", "list/c/"], l
seen_k, seen_p = [], []
for p in s3.get_paginator("list_objects_v2").paginate(
        Bucket=b, Prefix="list/", Delimiter="/", PaginationConfig={"PageSize": 2}):
    seen_k += [o["Key"] for o in p.get("Contents", [])]
    seen_p += [x["Prefix"] for x in p.get("CommonPrefixes", [])]
assert seen_k == ["list/top1.txt", "list/top2.txt"] and seen_p == ["list/a/", "list/b/", "list/c/"], (seen_k, seen_p)
l = s3.list_objects_v2(Bucket=b, Prefix="list/b/", StartAfter="list/b/04.txt")
assert [o["Key"] for o in l["Contents"]] == ["list/b/05.txt", "list/b/06.txt"], l
o = l["Contents"][0]
assert o["Size"] == len(b"list/b/05.txt") and o["ETag"] == md5(b"list/b/05.txt"), o
v1 = list(s3.get_paginator("list_objects").paginate(
    Bucket=b, Prefix="list/", PaginationConfig={"PageSize": 5}))
assert [o["Key"] for p in v1 for o in p.get("Contents", [])] == keys
assert len(v1) == 5, len(v1)
l = s3.list_objects(Bucket=b, Prefix="list/", Marker="list/c/05.txt")
assert [o["Key"] for o in l["Contents"]] == ["list/c/06.txt", "list/top1.txt", "list/top2.txt"], l
l = s3.list_objects(Bucket=b, Prefix="list/", Delimiter="/")
assert [p["Prefix"] for p in l["CommonPrefixes"]] == ["list/a/", "list/b/", "list/c/"], l
check("list")

# Copy in the bucket (metadata copied) and to another bucket (metadata replaced).
c = s3.copy_object(Bucket=b, Key="docs/copy.txt", CopySource={"Bucket": b, "Key": "docs/readme.txt"})
assert c["CopyObjectResult"]["ETag"] == md5(b"hello world"), c
h = s3.head_object(Bucket=b, Key="docs/copy.txt")
assert h["Metadata"] == {"owner": "ana", "note": "x y"} and h["ContentType"] == "text/plain; charset=utf-8", h
assert s3.get_object(Bucket=b, Key="docs/copy.txt")["Body"].read() == b"hello world"
s3.copy_object(Bucket=other, Key="copied/readme.txt", CopySource={"Bucket": b, "Key": "docs/readme.txt"},
               MetadataDirective="REPLACE", Metadata={"owner": "bo"}, ContentType="application/x-test")
h = s3.head_object(Bucket=other, Key="copied/readme.txt")
assert h["Metadata"] == {"owner": "bo"} and h["ContentType"] == "application/x-test", h
assert h["ETag"] == md5(b"hello world")
assert s3.get_object(Bucket=other, Key="copied/readme.txt")["Body"].read() == b"hello world"
assert err(lambda: s3.copy_object(Bucket=b, Key="x", CopySource={"Bucket": b, "Key": "missing"}))[0] == "NoSuchKey"
check("copy")

# Presigned GET and PUT (SigV4 in the query string) through a plain HTTP client.
url = s3.generate_presigned_url("get_object", Params={"Bucket": b, "Key": "docs/readme.txt"}, ExpiresIn=300)
assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in url and "X-Amz-Signature=" in url, url
with urllib.request.urlopen(url, context=ctx) as resp:
    assert resp.status == 200 and resp.read() == b"hello world"
put_url = s3.generate_presigned_url("put_object", Params={"Bucket": b, "Key": "up/presigned.bin"}, ExpiresIn=300)
payload = os.urandom(100000)
req = urllib.request.Request(put_url, data=payload, method="PUT")
with urllib.request.urlopen(req, context=ctx) as resp:
    assert resp.status == 200 and resp.headers["ETag"] == md5(payload), resp.headers
g = s3.get_object(Bucket=b, Key="up/presigned.bin")
assert g["Body"].read() == payload and g["ETag"] == md5(payload)
check("presign")

# Conditional GETs.
etag = md5(b"hello world")
assert err(lambda: s3.get_object(Bucket=b, Key="docs/readme.txt", IfMatch='"00000000000000000000000000000000"')) == ("PreconditionFailed", 412)
assert s3.get_object(Bucket=b, Key="docs/readme.txt", IfMatch=etag)["Body"].read() == b"hello world"
assert err(lambda: s3.get_object(Bucket=b, Key="docs/readme.txt", IfNoneMatch=etag)) == ("304", 304)
assert s3.get_object(Bucket=b, Key="docs/readme.txt", IfNoneMatch='"abc"')["Body"].read() == b"hello world"
later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
earlier = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
assert err(lambda: s3.get_object(Bucket=b, Key="docs/readme.txt", IfModifiedSince=later)) == ("304", 304)
assert s3.get_object(Bucket=b, Key="docs/readme.txt", IfModifiedSince=earlier)["Body"].read() == b"hello world"
assert err(lambda: s3.get_object(Bucket=b, Key="docs/readme.txt", IfUnmodifiedSince=earlier)) == ("PreconditionFailed", 412)
assert err(lambda: s3.head_object(Bucket=b, Key="docs/readme.txt", IfNoneMatch=etag)) == ("304", 304)
check("conditional")

# Multipart: list uploads and parts, abort, complete.
MiB = 1 << 20
mp = s3.create_multipart_upload(Bucket=b, Key="mp/aborted.bin")["UploadId"]
p1 = s3.upload_part(Bucket=b, Key="mp/aborted.bin", UploadId=mp, PartNumber=1, Body=b"a" * (5 * MiB))["ETag"]
p2 = s3.upload_part(Bucket=b, Key="mp/aborted.bin", UploadId=mp, PartNumber=2, Body=b"b" * 1024)["ETag"]
assert p1 == md5(b"a" * (5 * MiB)) and p2 == md5(b"b" * 1024)
ups = s3.list_multipart_uploads(Bucket=b)["Uploads"]
assert [(u["Key"], u["UploadId"]) for u in ups] == [("mp/aborted.bin", mp)], ups
parts = s3.list_parts(Bucket=b, Key="mp/aborted.bin", UploadId=mp)["Parts"]
assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in parts] == [(1, 5 * MiB, p1), (2, 1024, p2)], parts
s3.abort_multipart_upload(Bucket=b, Key="mp/aborted.bin", UploadId=mp)
assert "Uploads" not in s3.list_multipart_uploads(Bucket=b) or s3.list_multipart_uploads(Bucket=b)["Uploads"] == []
assert err(lambda: s3.list_parts(Bucket=b, Key="mp/aborted.bin", UploadId=mp))[0] == "NoSuchUpload"
assert err(lambda: s3.upload_part(Bucket=b, Key="mp/aborted.bin", UploadId=mp, PartNumber=3, Body=b"c"))[0] == "NoSuchUpload"
assert err(lambda: s3.head_object(Bucket=b, Key="mp/aborted.bin")) == ("404", 404)
mp = s3.create_multipart_upload(Bucket=b, Key="mp/done.bin", ContentType="application/x-mp", Metadata={"k": "v"})["UploadId"]
one, two = os.urandom(5 * MiB), os.urandom(3000)
e1 = s3.upload_part(Bucket=b, Key="mp/done.bin", UploadId=mp, PartNumber=1, Body=one)["ETag"]
e2 = s3.upload_part(Bucket=b, Key="mp/done.bin", UploadId=mp, PartNumber=2, Body=two)["ETag"]
r = s3.complete_multipart_upload(Bucket=b, Key="mp/done.bin", UploadId=mp,
    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
want = '"%s-2"' % hashlib.md5(hashlib.md5(one).digest() + hashlib.md5(two).digest()).hexdigest()
assert r["ETag"] == want, (r["ETag"], want)
g = s3.get_object(Bucket=b, Key="mp/done.bin")
assert g["Body"].read() == one + two and g["ETag"] == want
assert g["ContentType"] == "application/x-mp" and g["Metadata"] == {"k": "v"}, g
assert s3.get_object(Bucket=b, Key="mp/done.bin", Range="bytes=%d-%d" % (5 * MiB - 2, 5 * MiB + 1))["Body"].read() == one[-2:] + two[:2]
check("multipart")

# Delete, DeleteObjects (verbose and quiet).
assert s3.delete_object(Bucket=b, Key="docs/copy.txt")["ResponseMetadata"]["HTTPStatusCode"] == 204
assert err(lambda: s3.head_object(Bucket=b, Key="docs/copy.txt")) == ("404", 404)
assert s3.delete_object(Bucket=b, Key="docs/copy.txt")["ResponseMetadata"]["HTTPStatusCode"] == 204
gone = [k for k in keys if k.startswith("list/a/")] + ["list/never-was.txt"]
d = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": k} for k in gone]})
assert sorted(x["Key"] for x in d["Deleted"]) == sorted(gone) and not d.get("Errors"), d
left = [o["Key"] for o in s3.list_objects_v2(Bucket=b, Prefix="list/")["Contents"]]
assert left == [k for k in keys if not k.startswith("list/a/")], left
d = s3.delete_objects(Bucket=b, Delete={"Objects": [{"Key": "list/b/00.txt"}], "Quiet": True})
assert not d.get("Deleted") and not d.get("Errors"), d
assert err(lambda: s3.head_object(Bucket=b, Key="list/b/00.txt")) == ("404", 404)
check("delete")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_metadata_listing_copy_presign_conditionals_multipart() -> Result<()> {
    let (_cloud, aws) = start().await?;
    let out = aws.boto3_ok(BOTO3_OPS, &["ops", "ops-other"]).await?;
    let done: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("ok ")).collect();
    assert_eq!(
        done,
        [
            "list-buckets",
            "metadata",
            "404s",
            "range",
            "list",
            "copy",
            "presign",
            "conditional",
            "multipart",
            "delete"
        ],
        "{out}"
    );
    // The same objects through the AWS CLI's v1 listing.
    let v1: serde_json::Value = serde_json::from_str(
        &aws.ok(&[
            "s3api",
            "list-objects",
            "--bucket",
            "ops",
            "--prefix",
            "docs/",
        ])
        .await?,
    )?;
    let keys: Vec<&str> = v1["Contents"]
        .as_array()
        .context("Contents")?
        .iter()
        .filter_map(|o| o["Key"].as_str())
        .collect();
    assert_eq!(keys, ["docs/readme.txt"]);
    Ok(())
}
