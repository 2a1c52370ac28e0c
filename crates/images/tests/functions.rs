//! The builtin image functions, called as the runtime calls them (on the blocking pool),
//! with real sources: inline bytes, base64, a real HTTP server, real ffmpeg.

mod common;
use common::jpeg;

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Value, json};
use verge_images::fetch::{FetchPolicy, Fetcher};
use verge_images::functions::{self, ImageEnv};
use verge_runtime::{Input, Output};

fn env(allow_loopback: bool) -> Arc<ImageEnv> {
    let mut policy = FetchPolicy::default();
    if allow_loopback {
        policy.allow_networks = vec!["127.0.0.1".into()];
    }
    Arc::new(ImageEnv::new(Fetcher::new(policy).unwrap()))
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

async fn call(env: &Arc<ImageEnv>, name: &str, input: Input) -> verge_images::Result<Output> {
    let env = env.clone();
    let name = name.to_string();
    tokio::task::spawn_blocking(move || functions::call(&env, &name, input))
        .await
        .unwrap()
}

fn image_out(o: Output) -> (String, verge_imaging::Info) {
    match o {
        Output::Bytes { content_type, data } => {
            let info = verge_imaging::info(&data, &Default::default()).unwrap();
            (content_type, info)
        }
        Output::Json(v) => panic!("expected bytes, got {v}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn resize_from_inline_bytes_and_base64() {
    let env = env(false);
    let src = jpeg(800, 600);
    let out = call(
        &env,
        "image.resize",
        Input::Json(json!({"image": {"base64": b64(&src)}, "width": 200,
                           "output": {"format": "webp"}})),
    )
    .await
    .unwrap();
    let (ct, info) = image_out(out);
    assert_eq!(ct, "image/webp");
    assert_eq!((info.width, info.height), (200, 150));
    // Raw bytes as the invocation body: the image, default options (format kept).
    let out = call(
        &env,
        "image.info",
        Input::Bytes {
            content_type: "image/jpeg".into(),
            data: Bytes::from(src),
        },
    )
    .await
    .unwrap();
    let Output::Json(v) = out else { panic!() };
    assert_eq!(v["width"], 800);
    assert_eq!(v["format"], "jpeg");
}

#[tokio::test(flavor = "multi_thread")]
async fn url_sources_are_fetched_under_the_ssrf_policy() {
    let src = jpeg(640, 480);
    let app = axum::Router::new().route(
        "/photo.jpg",
        axum::routing::get(move || {
            let s = src.clone();
            async move { ([("content-type", "image/jpeg")], s) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/photo.jpg", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Loopback is blocked by default ...
    let e = call(
        &env(false),
        "image.crop",
        Input::Json(json!({"image": {"url": url}, "width": 100, "height": 100})),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, verge_images::Error::SourceForbidden { .. }),
        "{e}"
    );
    assert_eq!(e.http_status(), 403);
    // ... and allowed when configured.
    let out = call(
        &env(true),
        "image.crop",
        Input::Json(
            json!({"image": url, "width": 100, "height": 80, "gravity": "smart",
                   "output": {"format": "png"}}),
        ),
    )
    .await
    .unwrap();
    let (ct, info) = image_out(out);
    assert_eq!(ct, "image/png");
    assert_eq!((info.width, info.height), (100, 80));
    // The cloud metadata address never.
    let e = call(
        &env(true),
        "image.info",
        Input::Json(json!({"image": {"url": "http://169.254.169.254/latest/meta-data"}})),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, verge_images::Error::SourceForbidden { .. }),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watermark_pipeline_qrcode_compose() {
    let env = env(false);
    let photo = jpeg(1200, 800);
    let mark = verge_imaging::qrcode(
        &serde_json::from_value(json!({"payload": "wm", "size": 120})).unwrap(),
        &verge_imaging::NoAssets,
        &Default::default(),
    )
    .unwrap()
    .bytes;
    let out = call(
        &env,
        "image.watermark",
        Input::Json(
            json!({"image": {"base64": b64(&photo)}, "watermark": {"base64": b64(&mark)},
                           "position": "southEast", "opacity": 0.5, "offsetX": 10, "offsetY": 10}),
        ),
    )
    .await
    .unwrap();
    let (ct, info) = image_out(out);
    assert_eq!((ct.as_str(), info.width), ("image/jpeg", 1200));

    let out = call(
        &env,
        "image.pipeline",
        Input::Json(json!({
            "image": {"base64": b64(&photo)},
            "ops": [{"op": "resize", "width": 600}, {"op": "watermark", "asset": "logo", "tile": true, "opacity": 0.3},
                    {"op": "rotate", "degrees": 90}],
            "assets": {"logo": {"base64": b64(&mark)}},
            "output": {"format": "jpeg", "quality": 75}
        })),
    )
    .await
    .unwrap();
    let (_, info) = image_out(out);
    assert_eq!((info.width, info.height), (400, 600));

    let out = call(
        &env,
        "image.qrcode",
        Input::Json(json!({"payload": "https://verge.example/p/1", "size": 300})),
    )
    .await
    .unwrap();
    let (ct, info) = image_out(out);
    assert_eq!((ct.as_str(), info.width), ("image/png", 300));

    let out = call(
        &env,
        "image.compose",
        Input::Json(json!({
            "width": 1280, "height": 720, "background": "#101820",
            "layers": [{"type": "image", "asset": "photo", "x": 40, "y": 40, "width": 600},
                       {"type": "text", "text": "Episode 1", "size": 64, "color": "white", "x": 700, "y": 300}],
            "assets": {"photo": {"base64": b64(&photo)}},
            "output": {"format": "jpeg"}
        })),
    )
    .await
    .unwrap();
    let (ct, info) = image_out(out);
    assert_eq!(
        (ct.as_str(), info.width, info.height),
        ("image/jpeg", 1280, 720)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_name_the_field() {
    let env = env(false);
    let photo = b64(&jpeg(64, 64));
    let cases: Vec<(&str, Value, &str)> = vec![
        ("image.resize", json!({"width": 10}), "input.image"),
        (
            "image.resize",
            json!({"image": {"base64": photo}, "width": 1000000}),
            "width",
        ),
        (
            "image.resize",
            json!({"image": {"base64": photo}, "colour": 1}),
            "colour",
        ),
        (
            "image.pipeline",
            json!({"image": {"base64": photo}, "ops": [{"op": "resize", "width": 10}, {"op": "explode"}]}),
            "input.ops[1]",
        ),
        (
            "image.info",
            json!({"image": {"base64": "!!!"}}),
            "input.image.base64",
        ),
        (
            "image.info",
            json!({"image": {"file": "/etc/passwd"}}),
            "input.image.file",
        ),
        (
            "image.info",
            json!({"image": {"url": "file:///etc/passwd"}}),
            "source",
        ),
        (
            "image.info",
            json!({"image": {"artifact": "abc"}}),
            "input.image.artifact",
        ),
        (
            "image.convert",
            json!({"image": {"base64": photo}, "output": {"quality": 0}}),
            "quality",
        ),
        (
            "image.qrcode",
            json!({"payload": "x", "size": 100000}),
            "size",
        ),
        (
            "video.frame",
            json!({"video": {"base64": photo}, "at": "x"}),
            "input.at",
        ),
        ("image.nothing", json!({}), "function"),
    ];
    for (name, input, field) in cases {
        let e = call(&env, name, Input::Json(input.clone()))
            .await
            .expect_err(name);
        assert!(
            e.to_string().contains(field),
            "{name} {input}: `{e}` should name {field}"
        );
        assert!(e.http_status() >= 400 && e.http_status() < 500, "{e}");
    }
    // Corrupt and truncated images.
    let mut truncated = jpeg(300, 300);
    truncated.truncate(truncated.len() / 3);
    for bad in [truncated, b"GIF89a garbage".to_vec(), vec![0u8; 100]] {
        let e = call(
            &env,
            "image.resize",
            Input::Json(json!({"image": {"base64": b64(&bad)}, "width": 10})),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(e.http_status(), 400 | 413 | 415 | 422),
            "{e} ({})",
            e.http_status()
        );
    }
}

fn ffmpeg_available() -> bool {
    let ok = std::process::Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var("CI").as_deref() == Ok("true") {
        panic!("ffmpeg is required when CI=true (scripts/deps installs it)");
    }
    ok
}

#[tokio::test(flavor = "multi_thread")]
async fn video_frame_from_a_generated_video() {
    if !ffmpeg_available() {
        eprintln!("skipping: no ffmpeg");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("clip.mp4");
    let st = std::process::Command::new("ffmpeg")
        .args([
            "-loglevel",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=320x240:rate=10",
            "-pix_fmt",
            "yuv420p",
        ])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    let video = std::fs::read(&path).unwrap();
    let env = env(false);
    let out = call(
        &env,
        "video.frame",
        Input::Json(json!({"video": {"base64": b64(&video)}, "at": "00:00:01.2",
                           "output": {"format": "png"}})),
    )
    .await
    .unwrap();
    let (ct, info) = image_out(out);
    assert_eq!(
        (ct.as_str(), info.width, info.height),
        ("image/png", 320, 240)
    );
    let e = call(
        &env,
        "video.frame",
        Input::Json(json!({"video": {"base64": b64(&video)}, "at": 30})),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            verge_images::Error::Image(verge_imaging::Error::NoFrameAt { .. })
        ),
        "{e}"
    );
    let e = call(
        &env,
        "video.frame",
        Input::Json(json!({"video": {"base64": b64(b"this is not a video at all")}, "at": 0})),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            verge_images::Error::Image(verge_imaging::Error::NotAVideo { .. })
        ),
        "{e}"
    );
}
