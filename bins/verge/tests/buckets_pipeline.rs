//! Objects in a real `verge cloud`, outside S3: the REST object routes (upload, list,
//! download, delete, roles, bad names and keys, size cap, quota), `/cdn` for public
//! buckets (ETag, Last-Modified, Cache-Control, Range, 304, 412; a private bucket answers
//! like a missing object; never lists or writes), the image functions storing their
//! result in a bucket (`output: {bucket, key}`) that `/cdn` then serves, `/img` with an
//! `s3://` source (signed: any bucket; unsigned: public only), and `verge s3 ls|cp|rm`.

use std::path::Path;

use anyhow::Result;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use verge_testkit::{Cloud, success, verge_cli};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

async fn bucket(cloud: &Cloud, name: &str, spec: Value) -> Result<()> {
    cloud
        .api(
            Method::POST,
            "/api/v1/buckets",
            Some(json!({"apiVersion": "verge.dev/v1", "kind": "Bucket",
                "metadata": {"name": name}, "spec": spec})),
        )
        .await?;
    Ok(())
}

/// `PUT` an object with the admin token: (status, JSON answer).
async fn put(
    cloud: &Cloud,
    bucket: &str,
    key: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Value)> {
    let mut r = cloud
        .client()?
        .put(format!(
            "{}/api/v1/buckets/{bucket}/objects/{key}",
            cloud.url
        ))
        .bearer_auth(&cloud.admin_token)
        .body(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await?;
    let status = resp.status();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

async fn cdn(
    cloud: &Cloud,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<reqwest::Response> {
    let mut r = cloud
        .client()?
        .request(method, format!("{}/cdn/{path}", cloud.url));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    Ok(r.send().await?)
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_objects_and_cdn() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    let http = cloud.client()?;
    bucket(
        &cloud,
        "site",
        json!({"public": true, "maxObjectSize": "2Ki", "quota": "8Ki"}),
    )
    .await?;
    bucket(&cloud, "vault", json!({})).await?;

    // Upload through REST, read back through /cdn without a token.
    let (s, rec) = put(
        &cloud,
        "site",
        "dir/hello.txt",
        b"hello world".to_vec(),
        &[("content-type", "text/plain")],
    )
    .await?;
    assert_eq!(s, StatusCode::OK, "{rec}");
    assert_eq!(rec["etag"], "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"");
    assert_eq!(rec["size"], 11);
    let etag = rec["etag"].as_str().unwrap().to_string();
    let r = cdn(&cloud, Method::GET, "site/dir/hello.txt", &[]).await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "etag"), etag);
    assert_eq!(header(&r, "cache-control"), "public, max-age=300");
    assert_eq!(header(&r, "content-type"), "text/plain");
    assert_eq!(header(&r, "content-length"), "11");
    assert_eq!(header(&r, "accept-ranges"), "bytes");
    // Uploaded pages cannot script the API's origin.
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(header(&r, "content-security-policy"), "sandbox");
    let last_modified = header(&r, "last-modified");
    assert!(last_modified.ends_with(" GMT"), "{last_modified}");
    assert_eq!(r.bytes().await?.as_ref(), b"hello world");
    let r = cdn(&cloud, Method::HEAD, "site/dir/hello.txt", &[]).await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-length"), "11");
    assert!(r.bytes().await?.is_empty());

    // Range, 304s, 412.
    let r = cdn(
        &cloud,
        Method::GET,
        "site/dir/hello.txt",
        &[("range", "bytes=6-")],
    )
    .await?;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, "content-range"), "bytes 6-10/11");
    assert_eq!(r.bytes().await?.as_ref(), b"world");
    let r = cdn(
        &cloud,
        Method::GET,
        "site/dir/hello.txt",
        &[("range", "bytes=50-")],
    )
    .await?;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), "bytes */11");
    for h in [
        ("if-none-match", etag.as_str()),
        ("if-modified-since", last_modified.as_str()),
    ] {
        let r = cdn(&cloud, Method::GET, "site/dir/hello.txt", &[h]).await?;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{h:?}");
        assert_eq!(header(&r, "etag"), etag);
        assert!(r.bytes().await?.is_empty());
    }
    let r = cdn(
        &cloud,
        Method::GET,
        "site/dir/hello.txt",
        &[("if-match", "\"0000\"")],
    )
    .await?;
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = cdn(
        &cloud,
        Method::GET,
        "site/dir/hello.txt",
        &[("if-match", &etag)],
    )
    .await?;
    assert_eq!(r.status(), StatusCode::OK);

    // The object's own Cache-Control wins over the default.
    let (s, _) = put(
        &cloud,
        "site",
        "cached.txt",
        b"x".to_vec(),
        &[("cache-control", "public, max-age=31536000, immutable")],
    )
    .await?;
    assert_eq!(s, StatusCode::OK);
    let r = cdn(&cloud, Method::GET, "site/cached.txt", &[]).await?;
    assert_eq!(
        header(&r, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(header(&r, "content-type"), "application/octet-stream");

    // A private bucket's object, a missing object, a missing bucket, a bad bucket name:
    // the same 404, so /cdn tells nothing about private buckets.
    let (s, _) = put(&cloud, "vault", "secret.txt", b"s3cr3t".to_vec(), &[]).await?;
    assert_eq!(s, StatusCode::OK);
    let mut answers = Vec::new();
    for path in [
        "vault/secret.txt",
        "vault/missing.txt",
        "site/missing.txt",
        "no-such-bucket/x",
        "Bad_Name/x",
        "site/..%2f..%2fetc%2fpasswd",
        "site/%FF",
    ] {
        let r = cdn(&cloud, Method::GET, path, &[]).await?;
        let status = r.status();
        answers.push((status, r.text().await?));
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let r = cdn(&cloud, Method::HEAD, "vault/secret.txt", &[]).await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // /cdn never writes or lists.
    for m in [Method::PUT, Method::DELETE, Method::POST] {
        let r = cdn(&cloud, m.clone(), "site/dir/hello.txt", &[]).await?;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED, "{m}");
    }
    let r = cdn(&cloud, Method::GET, "site/", &[]).await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        cdn(&cloud, Method::GET, "site/dir/hello.txt", &[])
            .await?
            .status(),
        StatusCode::OK
    );

    // Keys are a key space of their own: `..` is just bytes (sent encoded: HTTP
    // clients resolve a literal `..`).
    let (s, _) = put(&cloud, "site", "..%2F..%2Fetc%2Fx", b"dots".to_vec(), &[]).await?;
    assert_eq!(s, StatusCode::OK);
    let r = cdn(&cloud, Method::GET, "site/..%2F..%2Fetc%2Fx", &[]).await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await?.as_ref(), b"dots");

    // Bad input: bad bucket name, key with NUL, key too long, too large, over quota.
    let (s, e) = put(&cloud, "Bad_Name", "k", b"x".to_vec(), &[]).await?;
    assert_eq!(
        (s, e["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bucket")),
        "{e}"
    );
    let (s, e) = put(&cloud, "site", "a%00b", b"x".to_vec(), &[]).await?;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let long = "k".repeat(1025);
    let (s, e) = put(&cloud, "site", &long, b"x".to_vec(), &[]).await?;
    assert_eq!(
        (s, e["field"].as_str()),
        (StatusCode::BAD_REQUEST, Some("key")),
        "{e}"
    );
    let (s, e) = put(&cloud, "site", "big.bin", vec![7u8; 3000], &[]).await?;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("at most 2048"),
        "{e}"
    );
    let (s, e) = put(&cloud, "no-such-bucket", "k", b"x".to_vec(), &[]).await?;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    // A body that breaks off before its Content-Length: no object.
    let broken = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"part of it")),
        Err(std::io::Error::other("connection dropped")),
    ]);
    let sent = http
        .put(format!(
            "{}/api/v1/buckets/site/objects/broken.bin",
            cloud.url
        ))
        .bearer_auth(&cloud.admin_token)
        .header("content-length", "1000")
        .body(reqwest::Body::wrap_stream(broken))
        .send()
        .await;
    assert!(
        sent.as_ref().map_or(true, |r| !r.status().is_success()),
        "{sent:?}"
    );
    let mut quota_hit = None;
    for i in 0..8 {
        let (s, e) = put(&cloud, "site", &format!("fill/{i}"), vec![1u8; 2000], &[]).await?;
        if s != StatusCode::OK {
            quota_hit = Some((s, e));
            break;
        }
    }
    let (s, e) = quota_hit.expect("the quota was never reached");
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{e}");
    assert!(e["message"].as_str().unwrap().contains("quota"), "{e}");
    // Nothing of the refused uploads is listed.
    let list: Value = cloud
        .api(Method::GET, "/api/v1/buckets/site/objects", None)
        .await?;
    let keys: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert!(!keys.contains(&"big.bin"), "{keys:?}");
    assert!(!keys.contains(&"broken.bin"), "{keys:?}");
    assert!(keys.contains(&"dir/hello.txt"), "{keys:?}");

    // Listing with a delimiter and pages.
    let list: Value = cloud
        .api(
            Method::GET,
            "/api/v1/buckets/site/objects?delimiter=/&limit=2",
            None,
        )
        .await?;
    assert_eq!(list["truncated"], true, "{list}");
    assert_eq!(list["commonPrefixes"][0], "../", "{list}");
    let after = list["nextAfter"].as_str().unwrap();
    let next: Value = cloud
        .api(
            Method::GET,
            &format!("/api/v1/buckets/site/objects?delimiter=/&limit=1000&after={after}"),
            None,
        )
        .await?;
    assert!(
        next["commonPrefixes"]
            .as_array()
            .unwrap()
            .contains(&json!("fill/")),
        "{next}"
    );
    let r = http
        .get(format!("{}/api/v1/buckets/site/objects?limit=0", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Roles: a viewer reads but never writes; no token, nothing.
    let tok = cloud
        .api(
            Method::POST,
            "/api/v1/tokens",
            Some(json!({"role": "viewer"})),
        )
        .await?;
    let viewer = tok["token"].as_str().unwrap();
    let obj = format!("{}/api/v1/buckets/vault/objects/secret.txt", cloud.url);
    let r = http.get(&obj).bearer_auth(viewer).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "cache-control"), "private, no-cache");
    assert_eq!(r.bytes().await?.as_ref(), b"s3cr3t");
    let r = http
        .get(&obj)
        .bearer_auth(viewer)
        .header("range", "bytes=0-1")
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    for m in [Method::PUT, Method::DELETE] {
        let r = http
            .request(m.clone(), &obj)
            .bearer_auth(viewer)
            .body("x")
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "viewer {m}");
    }
    assert_eq!(
        http.get(&obj).send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    let r = http.get(&obj).bearer_auth(viewer).send().await?;
    assert_eq!(r.bytes().await?.as_ref(), b"s3cr3t");

    // Delete: gone from /cdn; a second delete is a 404.
    let one = format!("{}/api/v1/buckets/site/objects/dir/hello.txt", cloud.url);
    let r = http
        .delete(&one)
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        cdn(&cloud, Method::GET, "site/dir/hello.txt", &[])
            .await?
            .status(),
        StatusCode::NOT_FOUND
    );
    let r = http
        .delete(&one)
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // The Bucket resource routes still answer.
    let b = cloud.api(Method::GET, "/api/v1/buckets/site", None).await?;
    assert_eq!(b["spec"]["public"], true);
    Ok(())
}

fn png(width: u32, height: u32) -> Result<Vec<u8>> {
    let spec: verge_imaging::ComposeSpec = serde_json::from_value(json!({
        "width": width, "height": height, "background": "#3366cc",
        "output": {"format": "png"}
    }))?;
    Ok(verge_imaging::compose(&spec, &verge_imaging::NoAssets, &Default::default())?.bytes)
}

async fn invoke(cloud: &Cloud, function: &str, input: Value) -> Result<(StatusCode, Value)> {
    let r = cloud
        .client()?
        .post(format!("{}/api/v1/functions/{function}/invoke", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .json(&input)
        .send()
        .await?;
    let status = r.status();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test(flavor = "multi_thread")]
async fn image_output_to_a_bucket_served_by_cdn_and_img_from_s3() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &["--img-allow-unsigned"]).await?;
    let verge = |args: &[&str]| verge_cli(Path::new(BIN), &cloud, args);
    let http = cloud.client()?;
    success(&verge(&["image", "install"])?);
    bucket(&cloud, "published", json!({"public": true})).await?;
    bucket(&cloud, "uploads", json!({})).await?;
    bucket(&cloud, "tiny", json!({"quota": "64"})).await?;
    let (s, _) = put(
        &cloud,
        "uploads",
        "in/photo.png",
        png(200, 100)?,
        &[("content-type", "image/png")],
    )
    .await?;
    assert_eq!(s, StatusCode::OK);

    // Process (from a private bucket) → store (in a public one) → CDN.
    let (s, out) = invoke(
        &cloud,
        "image-resize",
        json!({"image": "s3://uploads/in/photo.png", "width": 64,
               "output": {"format": "webp", "quality": 80,
                          "bucket": "published", "key": "thumbs/photo.webp"}}),
    )
    .await?;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(out["bucket"], "published");
    assert_eq!(out["key"], "thumbs/photo.webp");
    assert_eq!(out["url"], "/cdn/published/thumbs/photo.webp");
    let r = http
        .get(format!("{}{}", cloud.url, out["url"].as_str().unwrap()))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "content-type"), "image/webp");
    assert_eq!(header(&r, "etag"), out["eTag"].as_str().unwrap());
    let body = r.bytes().await?;
    assert_eq!(body.len() as u64, out["size"].as_u64().unwrap());
    let info = verge_imaging::info(&body, &Default::default())?;
    assert_eq!(
        (info.format, info.width, info.height),
        (verge_imaging::Format::Webp, 64, 32)
    );
    // A JSON result (image.info) stored with its own content type; a private target
    // gets the REST object URL.
    let (s, out) = invoke(
        &cloud,
        "image-info",
        json!({"image": {"s3": "s3://uploads/in/photo.png"},
               "output": {"bucket": "uploads", "key": "meta/photo.json"}}),
    )
    .await?;
    assert_eq!(s, StatusCode::OK, "{out}");
    assert_eq!(
        out["url"],
        "/api/v1/buckets/uploads/objects/meta/photo.json"
    );
    let meta = cloud
        .api(
            Method::GET,
            "/api/v1/buckets/uploads/objects/meta/photo.json",
            None,
        )
        .await?;
    assert_eq!(meta["width"], 200, "{meta}");

    // Bad targets fail the call with the bucket layer's message; nothing is stored.
    let long_key = "k".repeat(1100);
    for (output, want) in [
        (json!({"bucket": "nowhere", "key": "k.png"}), "NoSuchBucket"),
        (
            json!({"bucket": "published", "key": long_key}),
            "KeyTooLong",
        ),
        (json!({"bucket": "tiny", "key": "big.png"}), "QuotaExceeded"),
        (json!({"bucket": "published"}), "input.output.key"),
        (
            json!({"bucket": "published", "key": "x", "contentType": "a\nb"}),
            "contentType",
        ),
    ] {
        let mut o = output.clone();
        o["format"] = json!("png");
        let (s, e) = invoke(
            &cloud,
            "image-resize",
            json!({"image": "s3://uploads/in/photo.png", "width": 100, "output": o}),
        )
        .await?;
        assert!(!s.is_success(), "{output}: {e}");
        assert!(e.to_string().contains(want), "{output}: {e}");
    }
    // As an async task (no target: the cloud runs it): Failed with the bucket's message.
    let t = cloud
        .api(
            Method::POST,
            "/api/v1/tasks",
            Some(json!({"function": "image-resize", "input": {
                "image": "s3://uploads/in/photo.png", "width": 100,
                "output": {"format": "png", "bucket": "tiny", "key": "t.png"}}})),
        )
        .await?;
    let id = t["taskId"].as_str().unwrap().to_string();
    let failed = verge_testkit::eventually(
        std::time::Duration::from_secs(60),
        "the task to end",
        async || {
            let t = cloud
                .api(Method::GET, &format!("/api/v1/tasks/{id}"), None)
                .await
                .ok()?;
            let phase = t["status"]["phase"].as_str().unwrap_or("").to_string();
            ["Succeeded", "Failed", "TimedOut"]
                .contains(&phase.as_str())
                .then_some(t)
        },
    )
    .await?;
    assert_eq!(failed["status"]["phase"], "Failed", "{failed}");
    assert!(
        failed["status"]["error"]
            .to_string()
            .contains("QuotaExceeded"),
        "{failed}"
    );
    let (s, e) = invoke(
        &cloud,
        "image-resize",
        json!({"image": "s3://uploads/nothing.png", "width": 10}),
    )
    .await?;
    assert!(!s.is_success());
    assert!(e.to_string().contains("NoSuchKey"), "{e}");
    let tiny: Value = cloud
        .api(Method::GET, "/api/v1/buckets/tiny/objects", None)
        .await?;
    assert_eq!(tiny["items"], json!([]), "{tiny}");

    // /img with an s3:// source: a signed URL reads a private bucket.
    let keys = cloud.data_dir().join("img-keys");
    let url = success(&verge(&[
        "image",
        "url",
        "rs:fit:50:50",
        "s3://uploads/in/photo.png",
        "--ext",
        "png",
        "--keys-file",
        keys.to_str().unwrap(),
    ])?);
    let r = http.get(url.trim()).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    let info = verge_imaging::info(&r.bytes().await?, &Default::default())?;
    assert_eq!((info.width, info.height), (50, 25));
    // Overwritten: the next answer is of the new object, not the cached output.
    let (s, _) = put(
        &cloud,
        "uploads",
        "in/photo.png",
        png(100, 100)?,
        &[("content-type", "image/png")],
    )
    .await?;
    assert_eq!(s, StatusCode::OK);
    let r = http.get(url.trim()).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    let info = verge_imaging::info(&r.bytes().await?, &Default::default())?;
    assert_eq!((info.width, info.height), (50, 50));
    // Unsigned: public buckets only; a private one is a 404 like a missing object.
    let unsigned = |src: &str| format!("{}/img/unsafe/rs:fit:20:20/plain/{src}@png", cloud.url);
    let r = http
        .get(unsigned("s3://published/thumbs/photo.webp"))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let private = http
        .get(unsigned("s3://uploads/in/photo.png"))
        .send()
        .await?;
    assert_eq!(private.status(), StatusCode::NOT_FOUND);
    let missing = http.get(unsigned("s3://published/none.png")).send().await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let (a, b): (Value, Value) = (private.json().await?, missing.json().await?);
    assert_eq!(a["reason"], b["reason"]);
    let nowhere = http
        .get(unsigned("s3://no-such-bucket/x.png"))
        .send()
        .await?;
    assert_eq!(nowhere.status(), StatusCode::NOT_FOUND);
    let c: Value = nowhere.json().await?;
    // Only the requested URL differs.
    let strip = |v: &Value, url: &str| v["message"].as_str().unwrap().replace(url, "URL");
    assert_eq!(
        strip(&a, "s3://uploads/in/photo.png"),
        strip(&c, "s3://no-such-bucket/x.png")
    );
    assert_eq!(
        strip(&a, "s3://uploads/in/photo.png"),
        strip(&b, "s3://published/none.png")
    );
    let r = http.get(unsigned("s3://published")).send().await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_s3_ls_cp_rm_round_trip() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    let verge = |args: &[&str]| verge_cli(Path::new(BIN), &cloud, args);
    let dir = tempfile::tempdir()?;
    bucket(&cloud, "media", json!({"public": true})).await?;
    bucket(&cloud, "other", json!({})).await?;
    let ls = success(&verge(&["s3", "ls"])?);
    assert!(ls.contains("media") && ls.contains("public"), "{ls}");
    assert!(ls.contains("other") && ls.contains("private"), "{ls}");

    let src = dir.path().join("page.html");
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&src, &content)?;
    let out = success(&verge(&[
        "s3",
        "cp",
        src.to_str().unwrap(),
        "s3://media/site/page.html",
    ])?);
    assert!(out.contains("upload:"), "{out}");
    success(&verge(&[
        "s3",
        "cp",
        src.to_str().unwrap(),
        "s3://media/site/deep/two.bin",
    ])?);
    // Served by /cdn with the content type from the extension.
    let r = cloud
        .client()?
        .get(format!("{}/cdn/media/site/page.html", cloud.url))
        .send()
        .await?;
    assert_eq!(header(&r, "content-type"), "text/html");
    assert_eq!(r.bytes().await?.as_ref(), content.as_slice());

    let ls = success(&verge(&["s3", "ls", "media"])?);
    assert!(ls.contains("PRE site/"), "{ls}");
    let ls = success(&verge(&["s3", "ls", "s3://media/site/"])?);
    assert!(ls.contains("200000 site/page.html"), "{ls}");
    assert!(ls.contains("PRE site/deep/"), "{ls}");
    let ls = success(&verge(&["s3", "ls", "media", "--recursive"])?);
    assert!(
        ls.contains("site/deep/two.bin") && ls.contains("site/page.html"),
        "{ls}"
    );

    let back = dir.path().join("back.html");
    success(&verge(&[
        "s3",
        "cp",
        "s3://media/site/page.html",
        back.to_str().unwrap(),
    ])?);
    assert_eq!(std::fs::read(&back)?, content);
    // Into a directory: the key's file name.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub)?;
    success(&verge(&[
        "s3",
        "cp",
        "s3://media/site/deep/two.bin",
        sub.to_str().unwrap(),
    ])?);
    assert_eq!(std::fs::read(sub.join("two.bin"))?, content);
    let out = verge(&["s3", "cp", "s3://media/site/page.html", "-"])?;
    assert!(out.status.success());
    assert_eq!(out.stdout, content);

    success(&verge(&["s3", "rm", "s3://media/site/page.html"])?);
    let ls = success(&verge(&["s3", "ls", "media/site/"])?);
    assert!(!ls.contains("page.html"), "{ls}");
    // Errors name what is wrong; nothing half-written is left.
    let gone = dir.path().join("gone.html");
    let out = verge(&[
        "s3",
        "cp",
        "s3://media/site/page.html",
        gone.to_str().unwrap(),
    ])?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no object"), "{err}");
    assert!(!gone.exists());
    assert_eq!(
        std::fs::read_dir(dir.path())?.count(),
        3,
        "leftovers in {dir:?}"
    );
    let out = verge(&["s3", "rm", "s3://media/site/page.html"])?;
    assert!(!out.status.success());
    let out = verge(&["s3", "cp", src.to_str().unwrap(), "s3://nowhere/x"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    let out = verge(&["s3", "cp", "a", "b"])?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("s3://BUCKET/KEY"));

    // `verge get buckets` has the usage columns.
    let got = success(&verge(&["get", "buckets"])?);
    assert!(got.contains("OBJECTS") && got.contains("SIZE"), "{got}");
    Ok(())
}
