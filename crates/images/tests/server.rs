//! The `/img` endpoint over real HTTP: signed URLs, formats, the disk cache, ETags, and the
//! bad inputs (signatures, options, SSRF sources, bombs), with a real source server.

mod common;
use common::jpeg;

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::json;
use verge_images::fetch::{FetchPolicy, Fetcher};
use verge_images::functions::ImageEnv;
use verge_images::imgproxy::{SigningKeys, build_path};
use verge_images::server::{ImgConfig, ImgService};

const KEY: &str = "943b421c9eb07c830af81030552c86009268de4e532ba2ee2eab8247c6da0881";
const SALT: &str = "520f986b998545b4785e0defbc4f3c1203f22de2374a3d53cb7a7fe9fea309c5";

fn keys() -> SigningKeys {
    SigningKeys::from_hex(&[(KEY.into(), SALT.into())]).unwrap()
}

/// A PNG header claiming 100000x100000 pixels (a decompression bomb), valid CRCs not needed:
/// the limits are checked from the header.
fn bomb_png() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend_from_slice(&13u32.to_be_bytes());
    v.extend_from_slice(b"IHDR");
    v.extend_from_slice(&100_000u32.to_be_bytes());
    v.extend_from_slice(&100_000u32.to_be_bytes());
    v.extend_from_slice(&[8, 2, 0, 0, 0]);
    v.extend_from_slice(&[0, 0, 0, 0]);
    v
}

struct Fixture {
    img: String,
    source: String,
    client: reqwest::Client,
    _cache: tempfile::TempDir,
}

/// A source server on 127.0.0.1 (allowed by the fetch policy) and the `/img` service on
/// another port.
async fn start(allow_unsigned: bool, cache_max: u64) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let photo = jpeg(1600, 1200);
    let bomb = bomb_png();
    let src = axum::Router::new()
        .route(
            "/photo.jpg",
            axum::routing::get(move || {
                let p = photo.clone();
                async move { ([("content-type", "image/jpeg")], p) }
            }),
        )
        .route(
            "/bomb.png",
            axum::routing::get(move || {
                let b = bomb.clone();
                async move { ([("content-type", "image/png")], b) }
            }),
        )
        .route(
            "/redirect",
            axum::routing::get(|| async {
                (
                    axum::http::StatusCode::FOUND,
                    [("location", "http://169.254.169.254/latest/meta-data/")],
                )
            }),
        );
    let source = serve(src).await;

    let policy = FetchPolicy {
        allow_networks: vec!["127.0.0.1".into()],
        ..FetchPolicy::default()
    };
    let env = Arc::new(ImageEnv::new(Fetcher::new(policy).unwrap()));
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = ImgConfig::new(keys());
    cfg.allow_unsigned = allow_unsigned;
    cfg.cache_dir = Some(cache.path().to_path_buf());
    cfg.cache_max_bytes = cache_max;
    cfg.watermark = Some(
        verge_imaging::qrcode(
            &serde_json::from_value(json!({"payload": "wm", "size": 100})).unwrap(),
            &verge_imaging::NoAssets,
            &Default::default(),
        )
        .unwrap()
        .bytes,
    );
    let svc = ImgService::new(cfg, env).unwrap();
    let app = axum::Router::new().nest_service("/img", svc.router());
    let img = serve(app).await;
    Fixture {
        img: format!("http://{img}/img"),
        source: format!("http://{source}"),
        client: reqwest::Client::builder().no_proxy().build().unwrap(),
        _cache: cache,
    }
}

async fn serve(app: axum::Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

impl Fixture {
    fn url(&self, options: &str, source: &str, ext: Option<&str>) -> String {
        format!(
            "{}{}",
            self.img,
            build_path(&keys(), options, source, ext, false).unwrap()
        )
    }

    /// A URL signed as given, without validating the options (for bad ones).
    fn raw_url(&self, options: &str, source: &str) -> String {
        let path = format!("/{options}/plain/{source}");
        format!("{}/{}{}", self.img, keys().sign(&path), path)
    }

    async fn get(&self, url: &str, accept: Option<&str>) -> reqwest::Response {
        let mut r = self.client.get(url);
        if let Some(a) = accept {
            r = r.header("accept", a);
        }
        r.send().await.unwrap()
    }
}

async fn error_of(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    (
        status,
        body["message"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_url_resizes_caches_and_revalidates() {
    let f = start(false, 64 << 20).await;
    let src = format!("{}/photo.jpg", f.source);
    let url = f.url("rs:fit:300:300/q:80", &src, Some("png"));
    let r = f.get(&url, None).await;
    assert_eq!(r.status(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "image/png");
    assert_eq!(h["x-verge-cache"], "miss");
    assert!(
        h["cache-control"]
            .to_str()
            .unwrap()
            .starts_with("public, max-age=")
    );
    let etag = h["etag"].to_str().unwrap().to_string();
    let body = r.bytes().await.unwrap();
    let info = verge_imaging::info(&body, &Default::default()).unwrap();
    assert_eq!((info.width, info.height), (300, 225));

    let r = f.get(&url, None).await;
    assert_eq!(r.headers()["x-verge-cache"], "hit");
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.bytes().await.unwrap(), body);

    let r = f
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);

    // The base64 source form, same options: same image.
    let b64 = format!(
        "{}{}",
        f.img,
        build_path(&keys(), "rs:fit:300:300/q:80", &src, Some("png"), true).unwrap()
    );
    let r = f.get(&b64, None).await;
    assert_eq!(r.status(), 200);
    let info = verge_imaging::info(&r.bytes().await.unwrap(), &Default::default()).unwrap();
    assert_eq!((info.width, info.height), (300, 225));
}

#[tokio::test(flavor = "multi_thread")]
async fn format_auto_follows_accept_and_varies() {
    let f = start(false, 64 << 20).await;
    let src = format!("{}/photo.jpg", f.source);
    let url = f.url("w:200/wm:0.5:soea:10:10:0.2/sh:0.5", &src, None);
    let r = f.get(&url, Some("image/avif,image/webp,*/*")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/webp");
    assert_eq!(r.headers()["vary"], "Accept");
    let r = f.get(&url, Some("image/jpeg,*/*")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert_eq!(r.headers()["x-verge-cache"], "miss");
    // An explicit extension does not vary.
    let r = f
        .get(&f.url("w:200", &src, Some("jpg")), Some("image/webp"))
        .await;
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    assert!(r.headers().get("vary").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn function_sources_serve_qr_codes() {
    let f = start(false, 64 << 20).await;
    let src = r#"fn://image.qrcode?{"payload":"https://verge.example/watch/42","size":400}"#;
    let url = format!(
        "{}{}",
        f.img,
        build_path(&keys(), "rs:fit:200:200", src, Some("png"), true).unwrap()
    );
    let r = f.get(&url, None).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_clear_4xx() {
    let f = start(false, 64 << 20).await;
    let src = format!("{}/photo.jpg", f.source);
    let good = f.url("rs:fit:300:300", &src, Some("png"));
    // Wrong, truncated, missing signatures.
    let sig_end = good[f.img.len() + 1..].find('/').unwrap() + f.img.len() + 1;
    let (sig, rest) = good.split_at(sig_end);
    let wrong = format!("{}X{}", &sig[..sig.len() - 1], rest);
    let truncated = format!("{}{}", &sig[..sig.len() - 10], rest);
    let unsigned = format!("{}/unsafe{}", f.img, rest);
    let missing = format!("{}{}", f.img, rest);
    for url in [wrong, truncated, unsigned, missing] {
        let (status, msg) = error_of(f.get(&url, None).await).await;
        assert!(matches!(status, 403 | 400), "{url}: {status} {msg}");
    }
    // Options.
    for (opts, field) in [
        ("rs:fit:300:300/nope:1", "nope"),
        ("w:1000000", "width"),
        ("q:101", "quality"),
        ("rot:45", "rotate"),
    ] {
        let (status, msg) = error_of(f.get(&f.raw_url(opts, &src), None).await).await;
        assert_eq!(status, 400, "{opts}: {msg}");
        assert!(msg.contains(field), "{opts}: `{msg}` should name {field}");
    }
    // SSRF: loopback not allowed (127.0.0.2), metadata address, a redirect to it.
    for (source, status) in [
        ("http://127.0.0.2:9/x.jpg".to_string(), 403),
        ("http://169.254.169.254/latest/meta-data".to_string(), 403),
        ("http://10.1.2.3/x.jpg".to_string(), 403),
        (format!("{}/redirect", f.source), 403),
        ("file:///etc/passwd".to_string(), 400),
    ] {
        let (got, msg) = error_of(f.get(&f.raw_url("w:10", &source), None).await).await;
        assert_eq!(got, status, "{source}: {msg}");
    }
    // A decompression bomb, a missing source.
    let (status, msg) = error_of(
        f.get(
            &f.url("w:10", &format!("{}/bomb.png", f.source), None),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 413, "{msg}");
    let (status, _) = error_of(
        f.get(
            &f.url("w:10", &format!("{}/missing.jpg", f.source), None),
            None,
        )
        .await,
    )
    .await;
    assert_eq!(status, 404);
    // The server still serves.
    assert_eq!(f.get(&good, None).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_urls_only_when_enabled() {
    let f = start(true, 64 << 20).await;
    let src = format!("{}/photo.jpg", f.source);
    let url = format!("{}/unsafe/w:100/plain/{}@png", f.img, src);
    let r = f.get(&url, None).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_stays_within_its_bound() {
    let bound = 40_000;
    let f = start(false, bound).await;
    let src = format!("{}/photo.jpg", f.source);
    for w in 100..112 {
        let r = f
            .get(&f.url(&format!("w:{w}"), &src, Some("png")), None)
            .await;
        assert_eq!(r.status(), 200);
    }
    let total: u64 = std::fs::read_dir(f._cache.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(total <= bound, "cache holds {total} bytes, bound {bound}");
    assert!(total > 0);
}

/// imgproxy's `max_bytes` is best effort: a bound no quality meets still gets an image
/// (the smallest attempt), not an error.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_max_bytes_answers_the_smallest_attempt() {
    let f = start(false, 64 << 20).await;
    let src = format!("{}/photo.jpg", f.source);
    let bounded = |mb: u32| f.url(&format!("rs:fit:800:800/q:90/mb:{mb}"), &src, Some("jpg"));
    let r = f.get(&bounded(100), None).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let smallest = r.bytes().await.unwrap();
    assert!(smallest.len() > 100, "{} bytes", smallest.len());
    let info = verge_imaging::info(&smallest, &Default::default()).unwrap();
    assert_eq!((info.width, info.height), (800, 600));
    // The unbounded image at q:90 is larger: quality went down as far as allowed.
    let r = f
        .get(&f.url("rs:fit:800:800/q:90", &src, Some("jpg")), None)
        .await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap().len() > smallest.len());
}
