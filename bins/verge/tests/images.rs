//! The image service end to end in a real `verge cloud`: `verge image install` creates the
//! image functions, `verge invoke` runs them on an artifact, `/img` serves signed URLs with
//! the keys file the cloud created (0600), and refuses bad signatures and SSRF sources.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Result;
use verge_testkit::{Cloud, success, verge_cli};

const BIN: &str = env!("CARGO_BIN_EXE_verge");

#[tokio::test(flavor = "multi_thread")]
async fn image_functions_and_signed_urls() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    let verge = |args: &[&str]| verge_cli(Path::new(BIN), &cloud, args);
    let dir = tempfile::tempdir()?;

    // A QR code through the image pack, then pushed as an artifact.
    success(&verge(&["image", "install"])?);
    let qr = dir.path().join("qr.png");
    success(&verge(&[
        "invoke",
        "image-qrcode",
        "--data",
        r#"{"payload": "https://example.com/watch/42", "size": 300}"#,
        "--out",
        qr.to_str().unwrap(),
    ])?);
    let info = verge_imaging::info(&std::fs::read(&qr)?, &Default::default())?;
    assert_eq!((info.format, info.width), (verge_imaging::Format::Png, 300));
    let pushed = success(&verge(&["artifact", "push", qr.to_str().unwrap()])?);
    let sha = pushed
        .lines()
        .find_map(|l| l.strip_prefix("sha256: "))
        .expect("sha256 line")
        .trim()
        .to_string();

    // A resize of the artifact through `verge invoke`.
    let small = dir.path().join("small.webp");
    let data = format!(
        r#"{{"image": {{"artifact": "{sha}"}}, "width": 120, "output": {{"format": "webp"}}}}"#
    );
    success(&verge(&[
        "invoke",
        "image-resize",
        "--data",
        &data,
        "--out",
        small.to_str().unwrap(),
    ])?);
    let info = verge_imaging::info(&std::fs::read(&small)?, &Default::default())?;
    assert_eq!(
        (info.format, info.width),
        (verge_imaging::Format::Webp, 120)
    );

    // `--out FILE` picks the format from FILE's extension when the input names none
    // (the README's `--out cover.jpg` wrote a PNG); a format in the input still wins,
    // and a function that answers JSON is sent its input untouched.
    let compose = r##"{"width": 64, "height": 32, "background": "#101820"}"##;
    for (file, want) in [
        ("cover.jpg", verge_imaging::Format::Jpeg),
        ("cover.webp", verge_imaging::Format::Webp),
        ("cover.png", verge_imaging::Format::Png),
    ] {
        let out = dir.path().join(file);
        success(&verge(&[
            "invoke",
            "image-compose",
            "--data",
            compose,
            "--out",
            out.to_str().unwrap(),
        ])?);
        let info = verge_imaging::info(&std::fs::read(&out)?, &Default::default())?;
        assert_eq!((info.format, info.width), (want, 64), "{file}");
    }
    let named = dir.path().join("named.jpg");
    success(&verge(&[
        "invoke",
        "image-compose",
        "--data",
        r#"{"width": 64, "height": 32, "output": {"format": "webp"}}"#,
        "--out",
        named.to_str().unwrap(),
    ])?);
    let info = verge_imaging::info(&std::fs::read(&named)?, &Default::default())?;
    assert_eq!(info.format, verge_imaging::Format::Webp);
    let json_out = dir.path().join("info.jpg");
    let data = format!(r#"{{"image": {{"artifact": "{sha}"}}}}"#);
    success(&verge(&[
        "invoke",
        "image-info",
        "--data",
        &data,
        "--out",
        json_out.to_str().unwrap(),
    ])?);
    let info: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_out)?)?;
    assert_eq!(info["width"], 300, "{info}");

    // The keys file is the cloud's, private.
    let keys = cloud.data_dir().join("img-keys");
    let mode = std::fs::metadata(&keys)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // A signed URL built by the CLI from that file, fetched over HTTPS.
    let keys_arg = keys.to_str().unwrap();
    let source = format!("artifact://{sha}");
    let url = success(&verge(&[
        "image",
        "url",
        "rs:fit:100:100",
        &source,
        "--ext",
        "jpg",
        "--keys-file",
        keys_arg,
    ])?);
    let url = url.trim();
    assert!(url.starts_with(&format!("{}/img/", cloud.url)), "{url}");
    let client = cloud.client()?;
    let r = client.get(url).send().await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/jpeg");
    let body = r.bytes().await?;
    let info = verge_imaging::info(&body, &Default::default())?;
    assert_eq!((info.width, info.height), (100, 100));

    // A function output as the source (base64 form).
    let url = success(&verge(&[
        "image",
        "url",
        "w:64",
        r#"fn://image.qrcode?{"payload":"x"}"#,
        "--ext",
        "png",
        "--base64",
        "--keys-file",
        keys_arg,
    ])?);
    let r = client.get(url.trim()).send().await?;
    assert_eq!(r.status(), 200);

    // Tampered signature, unsigned, SSRF source: refused; the server keeps serving.
    let tampered = url.trim().replacen("/img/", "/img/A", 1);
    assert_eq!(client.get(&tampered).send().await?.status(), 403);
    let unsigned = format!("{}/img/unsafe/w:64/plain/{source}@png", cloud.url);
    assert_eq!(client.get(&unsigned).send().await?.status(), 403);
    let ssrf = success(&verge(&[
        "image",
        "url",
        "w:64",
        "http://169.254.169.254/latest/meta-data",
        "--keys-file",
        keys_arg,
    ])?);
    let r = client.get(ssrf.trim()).send().await?;
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["reason"], "SourceForbidden");
    assert_eq!(client.get(url.trim()).send().await?.status(), 200);

    // Local processing without a server.
    let local = dir.path().join("local.jpg");
    success(&verge(&[
        "image",
        "resize",
        "--data",
        r#"{"width": 50}"#,
        qr.to_str().unwrap(),
        local.to_str().unwrap(),
    ])?);
    let info = verge_imaging::info(&std::fs::read(&local)?, &Default::default())?;
    assert_eq!((info.format, info.width), (verge_imaging::Format::Jpeg, 50));
    Ok(())
}
