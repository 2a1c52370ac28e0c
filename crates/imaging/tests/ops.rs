//! Every operation and entry point on synthetic media.

mod common;

use std::collections::HashMap;

use common::*;
use image::{Rgb, RgbImage, Rgba, RgbaImage};
use verge_imaging::*;

fn limits() -> Limits {
    Limits::default()
}

fn run(input: &[u8], ops_json: &str, output: &OutputOptions) -> Encoded {
    let p = Pipeline::from_json(ops_json).unwrap();
    process(input, &p, output, &limits()).unwrap()
}

fn png_out() -> OutputOptions {
    OutputOptions::new(Format::Png)
}

#[test]
fn resize_fit_fill_force() {
    let input = jpeg(&gradient(400, 200), 90);
    let fit = run(
        &input,
        r#"{"ops":[{"op":"resize","width":100,"height":100}]}"#,
        &png_out(),
    );
    assert_eq!((fit.width, fit.height), (100, 50));
    let fill = run(
        &input,
        r#"{"ops":[{"op":"resize","width":100,"height":100,"fit":"fill"}]}"#,
        &png_out(),
    );
    assert_eq!((fill.width, fill.height), (100, 100));
    let force = run(
        &input,
        r#"{"ops":[{"op":"resize","width":100,"height":100,"fit":"force"}]}"#,
        &png_out(),
    );
    assert_eq!((force.width, force.height), (100, 100));
    let h_only = run(
        &input,
        r#"{"ops":[{"op":"resize","height":50}]}"#,
        &png_out(),
    );
    assert_eq!((h_only.width, h_only.height), (100, 50));
    let no_up = run(
        &input,
        r#"{"ops":[{"op":"resize","width":800,"withoutEnlargement":true}]}"#,
        &png_out(),
    );
    assert_eq!((no_up.width, no_up.height), (400, 200));
    let up = run(
        &input,
        r#"{"ops":[{"op":"resize","width":800,"filter":"catmullRom"}]}"#,
        &png_out(),
    );
    assert_eq!((up.width, up.height), (800, 400));
    // Output is really that size.
    assert_eq!(decode_rgb(&fill.bytes).dimensions(), (100, 100));
}

#[test]
fn dct_scaled_jpeg_path_matches_full_decode() {
    // 2400x1600 -> 600 wide: decoded at 1/2 (1200x800 >= 600x400 needs... 1/4 = 600x400).
    let src = gradient(2400, 1600);
    let input = jpeg(&src, 90);
    let fast = run(
        &input,
        r#"{"ops":[{"op":"resize","width":600}]}"#,
        &png_out(),
    );
    assert_eq!((fast.width, fast.height), (600, 400));
    // Same result through the PNG path (full decode) is close in colour.
    let slow = run(
        &png(&src),
        r#"{"ops":[{"op":"resize","width":600}]}"#,
        &png_out(),
    );
    let (a, b) = (
        mean(&decode_rgb(&fast.bytes)),
        mean(&decode_rgb(&slow.bytes)),
    );
    for c in 0..3 {
        assert!((a[c] - b[c]).abs() < 3.0, "channel {c}: {a:?} vs {b:?}");
    }
    // Fill with a DCT-scaled source keeps the exact box.
    let fill = run(
        &input,
        r#"{"ops":[{"op":"resize","width":300,"height":300,"fit":"fill"}]}"#,
        &png_out(),
    );
    assert_eq!((fill.width, fill.height), (300, 300));
}

#[test]
fn thumbnail_jpeg_with_watermark() {
    let input = jpeg(&gradient(1600, 1200), 85);
    let mark = png_rgba(&RgbaImage::from_pixel(64, 32, Rgba([255, 0, 0, 255])));
    let wm = Watermark {
        asset: "logo".into(),
        position: Gravity::SouthEast,
        offset_x: 10,
        offset_y: 10,
        opacity: 1.0,
        scale: Some(0.1),
        tile: false,
    };
    let out = thumbnail_jpeg(&input, 400, 80, Some((&mark, &wm)), &limits()).unwrap();
    assert_eq!(
        (out.format, out.width, out.height),
        (Format::Jpeg, 400, 300)
    );
    let img = decode_rgb(&out.bytes);
    // Watermark is 40x20 at the bottom-right, 10 px in.
    let p = img.get_pixel(400 - 10 - 20, 300 - 10 - 10).0;
    assert!(p[0] > 200 && p[1] < 60, "{p:?}");
    let q = img.get_pixel(20, 20).0;
    assert!(q[0] < 100, "{q:?}");
}

#[test]
fn crop_rectangle_and_gravity() {
    let mut src = RgbImage::from_pixel(200, 100, Rgb([0, 0, 0]));
    for y in 0..50 {
        for x in 100..200 {
            src.put_pixel(x, y, Rgb([255, 255, 255]));
        }
    }
    let input = png(&src);
    let rect = run(
        &input,
        r#"{"ops":[{"op":"crop","x":100,"y":0,"width":100,"height":50}]}"#,
        &png_out(),
    );
    assert_eq!((rect.width, rect.height), (100, 50));
    assert_eq!(mean(&decode_rgb(&rect.bytes)), [255.0; 3]);
    let ne = run(
        &input,
        r#"{"ops":[{"op":"crop","width":50,"height":50,"gravity":"northEast"}]}"#,
        &png_out(),
    );
    assert_eq!(mean(&decode_rgb(&ne.bytes)), [255.0; 3]);
    let sw = run(
        &input,
        r#"{"ops":[{"op":"crop","width":50,"height":50,"gravity":"southWest"}]}"#,
        &png_out(),
    );
    assert_eq!(mean(&decode_rgb(&sw.bytes)), [0.0; 3]);
    let centre = run(
        &input,
        r#"{"ops":[{"op":"crop","width":20,"height":20,"gravity":"center"}]}"#,
        &png_out(),
    );
    assert_eq!((centre.width, centre.height), (20, 20));
    // Larger than the image: clamped.
    let big = run(
        &input,
        r#"{"ops":[{"op":"crop","width":500,"height":500}]}"#,
        &png_out(),
    );
    assert_eq!((big.width, big.height), (200, 100));
}

#[test]
fn smart_crop_finds_the_detail() {
    // Flat grey with a noisy patch on the right.
    let mut src = RgbImage::from_pixel(400, 200, Rgb([128, 128, 128]));
    let n = noise(100, 200);
    for y in 0..200 {
        for x in 0..100 {
            src.put_pixel(300 + x, y, *n.get_pixel(x, y));
        }
    }
    let out = run(
        &png(&src),
        r#"{"ops":[{"op":"crop","width":100,"height":200,"gravity":"smart"}]}"#,
        &png_out(),
    );
    assert!(detail(&decode_rgb(&out.bytes)) > 20.0);
    let fill = run(
        &png(&src),
        r#"{"ops":[{"op":"resize","width":50,"height":100,"fit":"fill","gravity":"smart"}]}"#,
        &png_out(),
    );
    assert_eq!((fill.width, fill.height), (50, 100));
    assert!(detail(&decode_rgb(&fill.bytes)) > 10.0);
}

#[test]
fn rotate_and_flip() {
    let mut src = RgbImage::from_pixel(30, 10, Rgb([0, 0, 0]));
    src.put_pixel(0, 0, Rgb([255, 255, 255]));
    let input = png(&src);
    let r = run(
        &input,
        r#"{"ops":[{"op":"rotate","degrees":90}]}"#,
        &png_out(),
    );
    let img = decode_rgb(&r.bytes);
    assert_eq!(img.dimensions(), (10, 30));
    assert_eq!(img.get_pixel(9, 0).0, [255, 255, 255]);
    let f = run(&input, r#"{"ops":[{"op":"flip"}]}"#, &png_out());
    assert_eq!(decode_rgb(&f.bytes).get_pixel(29, 0).0, [255, 255, 255]);
    let v = run(
        &input,
        r#"{"ops":[{"op":"flip","direction":"vertical"}]}"#,
        &png_out(),
    );
    assert_eq!(decode_rgb(&v.bytes).get_pixel(0, 9).0, [255, 255, 255]);
    let r270 = run(
        &input,
        r#"{"ops":[{"op":"rotate","degrees":270}]}"#,
        &png_out(),
    );
    assert_eq!(decode_rgb(&r270.bytes).get_pixel(0, 29).0, [255, 255, 255]);
}

#[test]
fn watermark_position_opacity_tile() {
    let input = png(&RgbImage::from_pixel(100, 100, Rgb([255, 255, 255])));
    let mut assets = HashMap::new();
    assets.insert(
        "m".to_string(),
        png_rgba(&RgbaImage::from_pixel(10, 10, Rgba([0, 0, 255, 255]))),
    );
    let p = Pipeline::from_json(
        r#"{"ops":[{"op":"watermark","asset":"m","position":"northWest","offsetX":5,"offsetY":5,"opacity":0.5}]}"#,
    )
    .unwrap();
    let out = process_with_assets(&input, &p, &png_out(), &limits(), &assets).unwrap();
    let img = decode_rgb(&out.bytes);
    let px = img.get_pixel(8, 8).0;
    assert!((120..=135).contains(&px[0]) && px[2] == 255, "{px:?}");
    assert_eq!(img.get_pixel(2, 2).0, [255, 255, 255]);
    let tiled = Pipeline::from_json(
        r#"{"ops":[{"op":"watermark","asset":"m","tile":true,"offsetX":10,"offsetY":10}]}"#,
    )
    .unwrap();
    let out = process_with_assets(&input, &tiled, &png_out(), &limits(), &assets).unwrap();
    let img = decode_rgb(&out.bytes);
    assert_eq!(img.get_pixel(85, 85).0, [0, 0, 255]);
    assert_eq!(img.get_pixel(15, 15).0, [255, 255, 255]);
    // Missing asset names the field.
    let err = process(&input, &p, &png_out(), &limits()).unwrap_err();
    assert!(
        matches!(&err, Error::AssetNotFound { field, name } if field == "ops[0].asset" && name == "m"),
        "{err}"
    );
}

#[test]
fn text_overlay_with_stroke() {
    let input = png(&RgbImage::from_pixel(300, 100, Rgb([0, 0, 0])));
    let out = run(
        &input,
        r##"{"ops":[{"op":"text","text":"Verge","size":48,"color":"#ff0000","strokeWidth":2,"strokeColor":"#00ff00","position":"centre"}]}"##,
        &png_out(),
    );
    let img = decode_rgb(&out.bytes);
    let reds = img.pixels().filter(|p| p.0[0] > 200 && p.0[1] < 50).count();
    let greens = img.pixels().filter(|p| p.0[1] > 200 && p.0[0] < 50).count();
    assert!(reds > 200, "{reds} red pixels");
    assert!(greens > 100, "{greens} stroke pixels");
    assert_eq!(img.get_pixel(2, 2).0, [0, 0, 0]);
}

#[test]
fn blur_and_sharpen() {
    let input = png(&noise(64, 64));
    let base = detail(&decode_rgb(&input));
    let blurred = run(&input, r#"{"ops":[{"op":"blur","sigma":3}]}"#, &png_out());
    assert!(detail(&decode_rgb(&blurred.bytes)) < base / 3.0);
    let smooth = png(&gradient(64, 64));
    let sharp = run(
        &smooth,
        r#"{"ops":[{"op":"sharpen","sigma":1.5,"amount":3}]}"#,
        &png_out(),
    );
    assert!(detail(&decode_rgb(&sharp.bytes)) > detail(&decode_rgb(&smooth)));
    let grey = run(&input, r#"{"ops":[{"op":"grayscale"}]}"#, &png_out());
    assert!(
        decode_rgb(&grey.bytes)
            .pixels()
            .all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2])
    );
}

#[test]
fn format_conversion_and_quality() {
    let src = gradient(120, 80);
    for input in [
        jpeg(&src, 90),
        png(&src),
        webp(&src),
        animated_gif(120, 80, 2),
    ] {
        for format in [Format::Jpeg, Format::Png, Format::Webp] {
            let out = process(
                &input,
                &Pipeline::default(),
                &OutputOptions::new(format),
                &limits(),
            )
            .unwrap();
            assert_eq!(out.format, format);
            assert_eq!(info(&out.bytes, &limits()).unwrap().format, format);
            assert_eq!((out.width, out.height), (120, 80));
        }
    }
    // Default keeps the format; GIF becomes PNG.
    let same = process(
        &webp(&src),
        &Pipeline::default(),
        &OutputOptions::default(),
        &limits(),
    )
    .unwrap();
    assert_eq!(same.format, Format::Webp);
    let gif = process(
        &animated_gif(20, 20, 2),
        &Pipeline::default(),
        &OutputOptions::default(),
        &limits(),
    )
    .unwrap();
    assert_eq!(gif.format, Format::Png);
    // Quality changes size.
    let n = png(&noise(200, 200));
    let q = |format, quality| {
        let o = OutputOptions {
            quality,
            ..OutputOptions::new(format)
        };
        process(&n, &Pipeline::default(), &o, &limits())
            .unwrap()
            .bytes
            .len()
    };
    assert!(q(Format::Jpeg, 30) < q(Format::Jpeg, 95));
    assert!(q(Format::Webp, 30) < q(Format::Webp, 95));
    let lossless = OutputOptions {
        lossless: true,
        ..OutputOptions::new(Format::Webp)
    };
    let ll = process(&png(&src), &Pipeline::default(), &lossless, &limits()).unwrap();
    assert_eq!(decode_rgb(&ll.bytes), src);
    // Transparent PNG to JPEG is flattened onto the background.
    let t = png_rgba(&RgbaImage::from_pixel(10, 10, Rgba([0, 0, 0, 0])));
    let j = process(
        &t,
        &Pipeline::default(),
        &OutputOptions::new(Format::Jpeg),
        &limits(),
    )
    .unwrap();
    assert!(decode_rgb(&j.bytes).get_pixel(5, 5).0[0] > 250);
}

#[test]
fn max_bytes_binary_search() {
    let input = png(&noise(256, 256));
    for format in [Format::Jpeg, Format::Webp] {
        let full = process(
            &input,
            &Pipeline::default(),
            &OutputOptions {
                quality: 95,
                ..OutputOptions::new(format)
            },
            &limits(),
        )
        .unwrap();
        let max = full.bytes.len() / 3;
        let o = OutputOptions {
            quality: 95,
            max_bytes: Some(max),
            ..OutputOptions::new(format)
        };
        let out = process(&input, &Pipeline::default(), &o, &limits()).unwrap();
        assert!(
            out.bytes.len() <= max,
            "{format}: {} > {max}",
            out.bytes.len()
        );
        assert!(out.quality.unwrap() < 95);
        let impossible = OutputOptions {
            max_bytes: Some(100),
            ..OutputOptions::new(format)
        };
        let err = process(&input, &Pipeline::default(), &impossible, &limits()).unwrap_err();
        assert!(
            matches!(err, Error::MaxBytesUnreachable { max_bytes: 100, .. }),
            "{err}"
        );
        // Best effort (imgproxy's max_bytes): the smallest attempt, at minQuality.
        let best = OutputOptions {
            max_bytes_best_effort: true,
            ..impossible
        };
        let out = process(&input, &Pipeline::default(), &best, &limits()).unwrap();
        assert_eq!(out.quality, Some(best.min_quality), "{format}");
        assert!(out.bytes.len() > 100 && out.bytes.len() < full.bytes.len());
    }
    let png_best_effort = OutputOptions {
        max_bytes: Some(1000),
        max_bytes_best_effort: true,
        ..OutputOptions::new(Format::Png)
    };
    let out = process(&input, &Pipeline::default(), &png_best_effort, &limits()).unwrap();
    assert!(out.bytes.len() > 1000);
    let png_too_big = OutputOptions {
        max_bytes: Some(1000),
        ..OutputOptions::new(Format::Png)
    };
    assert!(matches!(
        process(&input, &Pipeline::default(), &png_too_big, &limits()),
        Err(Error::MaxBytesUnreachable { .. })
    ));
}

#[test]
fn exif_orientation_applied_and_metadata_stripped() {
    let src = gradient(60, 20);
    let mut input = jpeg_with_segment(&jpeg(&src, 90), 0xE1, &exif_orientation(6, 0));
    let mut icc = b"ICC_PROFILE\0\x01\x01".to_vec();
    icc.resize(600, 7);
    input = jpeg_with_segment(&input, 0xE2, &icc);
    let i = info(&input, &limits()).unwrap();
    assert_eq!((i.width, i.height, i.orientation), (60, 20, 6));
    assert_eq!((i.display_width, i.display_height), (20, 60));
    assert!(i.has_exif && i.has_icc && !i.cmyk);
    let out = strip_metadata(&input, 90, &limits()).unwrap();
    assert_eq!((out.width, out.height), (20, 60));
    let markers = jpeg_markers(&out.bytes);
    assert!(
        !markers.contains(&0xE1) && !markers.contains(&0xE2),
        "{markers:x?}"
    );
    let again = info(&out.bytes, &limits()).unwrap();
    assert!(!again.has_exif && !again.has_icc && again.orientation == 1);
    // Resize planning uses the displayed orientation.
    let r = run(
        &input,
        r#"{"ops":[{"op":"resize","width":10}]}"#,
        &png_out(),
    );
    assert_eq!((r.width, r.height), (10, 30));
}

#[test]
fn icc_profiles_are_converted_to_srgb() {
    let src = RgbImage::from_pixel(32, 32, Rgb([40, 200, 60]));
    let plain = jpeg(&src, 95);
    let out = OutputOptions::new(Format::Png);
    let base = process(&plain, &Pipeline::default(), &out, &limits()).unwrap();
    let base = decode_rgb(&base.bytes).get_pixel(16, 16).0;
    for (name, profile) in [
        ("p3", moxcms::ColorProfile::new_display_p3()),
        ("adobe", moxcms::ColorProfile::new_adobe_rgb()),
    ] {
        let icc = profile.encode().unwrap();
        let mut seg = b"ICC_PROFILE\0\x01\x01".to_vec();
        seg.extend_from_slice(&icc);
        let tagged = jpeg_with_segment(&plain, 0xE2, &seg);
        assert!(info(&tagged, &limits()).unwrap().has_icc);
        let conv = process(&tagged, &Pipeline::default(), &out, &limits()).unwrap();
        let conv = decode_rgb(&conv.bytes).get_pixel(16, 16).0;
        // A wide-gamut green is more saturated in sRGB terms.
        assert!(
            conv[1] >= base[1] && conv[0] < base[0],
            "{name}: {conv:?} vs {base:?}"
        );
    }
    // An sRGB or garbage profile leaves the pixels alone.
    let garbage = jpeg_with_segment(&plain, 0xE2, b"ICC_PROFILE\0\x01\x01garbage");
    let g = process(&garbage, &Pipeline::default(), &out, &limits()).unwrap();
    assert_eq!(decode_rgb(&g.bytes).get_pixel(16, 16).0, base);
}

#[test]
fn cmyk_jpeg_is_decoded() {
    let (w, h) = (32usize, 16usize);
    let cmyk: Vec<u8> = (0..w * h).flat_map(|_| [0u8, 255, 255, 0]).collect();
    let mut c = turbojpeg::Compressor::new().unwrap();
    c.set_colorspace(turbojpeg::Colorspace::CMYK).unwrap();
    c.set_subsamp(turbojpeg::Subsamp::None).unwrap();
    let bytes = c
        .compress_to_vec(turbojpeg::Image {
            pixels: cmyk.as_slice(),
            width: w,
            pitch: w * 4,
            height: h,
            format: turbojpeg::PixelFormat::CMYK,
        })
        .unwrap();
    assert!(info(&bytes, &limits()).unwrap().cmyk);
    let out = process(&bytes, &Pipeline::default(), &png_out(), &limits()).unwrap();
    assert_eq!((out.width, out.height), (32, 16));
}

#[test]
fn info_reports_headers() {
    let src = gradient(33, 17);
    let i = info(&png(&src), &limits()).unwrap();
    assert_eq!(
        (i.format, i.width, i.height, i.frames, i.has_alpha),
        (Format::Png, 33, 17, 1, false)
    );
    let i = info(&webp(&src), &limits()).unwrap();
    assert_eq!((i.format, i.width, i.height), (Format::Webp, 33, 17));
    let i = info(&jpeg(&src, 80), &limits()).unwrap();
    assert_eq!((i.format, i.width, i.height), (Format::Jpeg, 33, 17));
    let i = info(&animated_gif(20, 10, 5), &limits()).unwrap();
    assert_eq!(
        (i.format, i.width, i.height, i.frames),
        (Format::Gif, 20, 10, 5)
    );
    let lossy = process(
        &png(&src),
        &Pipeline::default(),
        &OutputOptions::new(Format::Webp),
        &limits(),
    )
    .unwrap();
    assert_eq!(info(&lossy.bytes, &limits()).unwrap().width, 33);
    let json = serde_json::to_value(info(&png(&src), &limits()).unwrap()).unwrap();
    assert_eq!(json["displayWidth"], 33);
}

#[test]
fn gif_frames_are_split() {
    let input = animated_gif(16, 8, 3);
    let frames = gif_frames(&input, 10, &OutputOptions::default(), &limits()).unwrap();
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[1].delay_ms, 100);
    assert_eq!(frames[2].image.format, Format::Png);
    let first = decode_rgb(&frames[0].image.bytes);
    let last = decode_rgb(&frames[2].image.bytes);
    assert_ne!(first.get_pixel(0, 0), last.get_pixel(0, 0));
    assert_eq!(
        gif_frames(&input, 2, &OutputOptions::new(Format::Jpeg), &limits())
            .unwrap()
            .len(),
        2
    );
    assert!(matches!(
        gif_frames(
            &png(&gradient(4, 4)),
            2,
            &OutputOptions::default(),
            &limits()
        ),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn compose_from_json_spec() {
    let mut assets = HashMap::new();
    assets.insert(
        "red".to_string(),
        png(&RgbImage::from_pixel(10, 10, Rgb([255, 0, 0]))),
    );
    assets.insert(
        "blue".to_string(),
        png(&RgbImage::from_pixel(10, 10, Rgb([0, 0, 255]))),
    );
    assets.insert(
        "bg".to_string(),
        png(&RgbImage::from_pixel(5, 5, Rgb([0, 255, 0]))),
    );
    let spec: ComposeSpec = serde_json::from_str(
        r##"{"width":200,"height":100,"background":"#ffffff",
            "layers":[
              {"type":"image","asset":"red","x":10,"y":10,"width":50,"z":2},
              {"type":"image","asset":"blue","x":40,"y":10,"scale":5,"z":1},
              {"type":"image","asset":"blue","x":150,"y":50,"width":20,"height":20,"opacity":0.5},
              {"type":"text","text":"hi","x":100,"y":10,"size":40,"color":"#000000"}
            ],
            "output":{"format":"png"}}"##,
    )
    .unwrap();
    let out = compose(&spec, &assets, &limits()).unwrap();
    assert_eq!((out.format, out.width, out.height), (Format::Png, 200, 100));
    let img = decode_rgb(&out.bytes);
    assert_eq!(img.get_pixel(50, 30).0, [255, 0, 0], "red has the higher z");
    assert_eq!(img.get_pixel(80, 30).0, [0, 0, 255]);
    let half = img.get_pixel(160, 60).0;
    assert!((120..=135).contains(&half[0]) && half[2] == 255, "{half:?}");
    assert_eq!(img.get_pixel(199, 0).0, [255, 255, 255]);
    assert!(
        img.pixels().filter(|p| p.0 == [0, 0, 0]).count() > 20,
        "text drawn"
    );
    // Background image.
    let spec: ComposeSpec = serde_json::from_str(
        r#"{"width":40,"height":30,"backgroundImage":"bg","output":{"format":"jpeg"}}"#,
    )
    .unwrap();
    let out = compose(&spec, &assets, &limits()).unwrap();
    assert!(decode_rgb(&out.bytes).get_pixel(20, 15).0[1] > 240);
    // Errors name the layer field.
    let bad: ComposeSpec = serde_json::from_str(
        r#"{"width":40,"height":30,"layers":[{"type":"text","text":"x","size":5000}]}"#,
    )
    .unwrap();
    let err = compose(&bad, &assets, &limits()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidOption { field, .. } if field == "layers[0].size"),
        "{err}"
    );
    let missing: ComposeSpec = serde_json::from_str(
        r#"{"width":40,"height":30,"layers":[{"type":"image","asset":"nope"}]}"#,
    )
    .unwrap();
    assert!(matches!(
        compose(&missing, &assets, &limits()),
        Err(Error::AssetNotFound { .. })
    ));
}

#[test]
fn qr_codes() {
    let spec: QrSpec = serde_json::from_str(
        r##"{"payload":"https://verge.example/x","size":300,"ecLevel":"Q","dark":"#102030"}"##,
    )
    .unwrap();
    let out = qrcode(&spec, &NoAssets, &limits()).unwrap();
    assert_eq!((out.format, out.width, out.height), (Format::Png, 300, 300));
    let img = decode_rgb(&out.bytes);
    assert!(img.pixels().any(|p| p.0 == [0x10, 0x20, 0x30]));
    assert_eq!(img.get_pixel(0, 0).0, [255, 255, 255]);
    // Centre logo.
    let mut assets = HashMap::new();
    assets.insert(
        "logo".to_string(),
        png(&RgbImage::from_pixel(20, 20, Rgb([255, 0, 0]))),
    );
    let spec = QrSpec {
        logo: Some("logo".into()),
        ..QrSpec::new("hello")
    };
    let out = qrcode(&spec, &assets, &limits()).unwrap();
    assert_eq!(decode_rgb(&out.bytes).get_pixel(256, 256).0, [255, 0, 0]);
    // Bad options.
    let err = qrcode(
        &QrSpec {
            size: 100_000,
            ..QrSpec::new("x")
        },
        &NoAssets,
        &limits(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidOption { field, .. } if field == "size"),
        "{err}"
    );
    let err = qrcode(&QrSpec::new("x".repeat(3000)), &NoAssets, &limits()).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidOption { field, .. } if field == "payload"),
        "{err}"
    );
    let err = qrcode(
        &QrSpec {
            size: 32,
            margin: 16,
            ..QrSpec::new("x".repeat(500))
        },
        &NoAssets,
        &limits(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidOption { field, .. } if field == "size"),
        "{err}"
    );
}

#[test]
fn pipeline_json_shape() {
    let p = Pipeline::from_json(
        r##"{"ops":[{"op":"resize","width":10},{"op":"crop","width":5,"height":5,"gravity":"smart"},
        {"op":"rotate","degrees":180},{"op":"flip","direction":"both"},{"op":"blur","sigma":1},
        {"op":"sharpen"},{"op":"grayscale"},{"op":"text","text":"a"},
        {"op":"watermark","asset":"w"}]}"##,
    )
    .unwrap();
    assert_eq!(p.ops.len(), 9);
    let back: Pipeline = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}
