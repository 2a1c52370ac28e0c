//! Bad input: every case is a clear error, never a panic.

mod common;

use common::*;
use verge_imaging::*;

fn limits() -> Limits {
    Limits::default()
}

fn run(input: &[u8]) -> Result<Encoded> {
    process(
        input,
        &Pipeline::default(),
        &OutputOptions::new(Format::Png),
        &limits(),
    )
}

fn resize(input: &[u8]) -> Result<Encoded> {
    let p = Pipeline::from_json(r#"{"ops":[{"op":"resize","width":50}]}"#).unwrap();
    process(input, &p, &OutputOptions::new(Format::Jpeg), &limits())
}

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let src = gradient(128, 96);
    vec![
        ("jpeg", jpeg(&src, 90)),
        ("png", png(&src)),
        ("gif", animated_gif(128, 96, 3)),
        ("webp", webp(&src)),
    ]
}

#[test]
fn truncated_inputs_are_errors() {
    for (name, bytes) in samples() {
        for cut in [bytes.len() / 2, bytes.len() * 9 / 10, 30, 12, 3] {
            let t = &bytes[..cut];
            let err = run(t).expect_err(&format!("{name} truncated at {cut} decoded"));
            assert!(
                matches!(err, Error::Decode { .. } | Error::Unsupported { .. }),
                "{name} at {cut}: {err}"
            );
            assert!(resize(t).is_err());
            // Header-only info may succeed on a long prefix but never panics.
            let _ = info(t, &limits());
        }
    }
}

#[test]
fn corrupt_inputs_are_errors() {
    for (name, bytes) in samples() {
        // Garbage over the middle of the data.
        let mut c = bytes.clone();
        let mid = c.len() / 3;
        let end = mid + 40.min(c.len() - mid);
        for (i, b) in c[mid..end].iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37) ^ 0xA5;
        }
        // Formats without checksums (JPEG scan data, GIF LZW) may decode garbage pixels;
        // the rule is: an error or an image, never a panic.
        let r = run(&c);
        if name == "png" {
            assert!(r.is_err(), "{name}: corrupted body decoded");
        }
        // Garbage right after the signature.
        let mut h = bytes.clone();
        for b in &mut h[8..40] {
            *b = 0xEE;
        }
        let err = run(&h).expect_err(name);
        assert!(
            matches!(
                err,
                Error::Decode { .. } | Error::Unsupported { .. } | Error::TooLarge { .. }
            ),
            "{name}: {err}"
        );
    }
}

#[test]
fn corrupt_jpeg_tables_are_errors() {
    let j = jpeg(&gradient(64, 64), 80);
    // Huffman table with impossible counts.
    let mut h = j.clone();
    let dht = h.windows(2).position(|w| w == [0xFF, 0xC4]).unwrap();
    for b in &mut h[dht + 5..dht + 21] {
        *b = 0xFF;
    }
    let err = run(&h).unwrap_err();
    assert!(matches!(err, Error::Decode { format: "jpeg", .. }), "{err}");
    // Quantisation table missing: the DQT marker renamed to an unknown APP segment.
    let mut q = j.clone();
    let dqt = q.windows(2).position(|w| w == [0xFF, 0xDB]).unwrap();
    q[dqt + 1] = 0xEC;
    let dqt2 = q.windows(2).position(|w| w == [0xFF, 0xDB]);
    if let Some(d) = dqt2 {
        q[d + 1] = 0xED;
    }
    assert!(matches!(run(&q), Err(Error::Decode { .. })));
}

#[test]
fn decompression_bomb_rejected_from_header() {
    let bomb = png_claiming(100_000, 100_000);
    let err = run(&bomb).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                width: 100_000,
                height: 100_000,
                max_pixels: 50_000_000
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("100000x100000"));
    assert!(matches!(
        info(&bomb, &limits()),
        Err(Error::TooLarge { .. })
    ));
    // JPEG frame header claiming 65000x65000.
    let mut j = jpeg(&gradient(16, 16), 80);
    let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    j[sof + 5..sof + 9].copy_from_slice(&[0xFD, 0xE8, 0xFD, 0xE8]);
    assert!(matches!(
        run(&j),
        Err(Error::TooLarge {
            width: 65000,
            height: 65000,
            ..
        })
    ));
    // GIF logical screen 65535x65535.
    let mut g = many_frame_gif(1);
    g[6..10].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    assert!(matches!(run(&g), Err(Error::TooLarge { .. })));
    // A smaller limit applies to ordinary images too.
    let small = Limits {
        max_pixels: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        process(
            &png(&gradient(100, 100)),
            &Pipeline::default(),
            &OutputOptions::default(),
            &small
        ),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn zero_size_images() {
    let err = run(&png_claiming(0, 100)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ZeroSize {
                width: 0,
                height: 100
            }
        ),
        "{err}"
    );
    let mut g = many_frame_gif(1);
    g[6..10].copy_from_slice(&[0, 0, 0, 0]);
    assert!(matches!(run(&g), Err(Error::ZeroSize { .. })));
    let mut j = jpeg(&gradient(16, 16), 80);
    let sof = j.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
    j[sof + 5..sof + 7].copy_from_slice(&[0, 0]);
    assert!(matches!(run(&j), Err(Error::ZeroSize { .. })));
}

#[test]
fn ten_thousand_frame_gif_rejected_by_frame_limit() {
    let g = many_frame_gif(10_000);
    let err = run(&g).unwrap_err();
    assert!(
        matches!(err, Error::TooManyFrames { max: 1000, .. }),
        "{err}"
    );
    assert!(matches!(
        info(&g, &limits()),
        Err(Error::TooManyFrames { .. })
    ));
    assert!(matches!(
        gif_frames(&g, 10, &OutputOptions::default(), &limits()),
        Err(Error::TooManyFrames { .. })
    ));
    // Within a raised limit it is a valid (if silly) image.
    let raised = Limits {
        max_frames: 20_000,
        ..Limits::default()
    };
    assert_eq!(info(&g, &raised).unwrap().frames, 10_000);
    assert_eq!(
        process(&g, &Pipeline::default(), &OutputOptions::default(), &raised)
            .unwrap()
            .width,
        1
    );
}

#[test]
fn huge_exif_is_bounded() {
    let base = jpeg(&gradient(64, 48), 85);
    // One 60 KiB APP1: fine, and stripped on output.
    let one = jpeg_with_segment(&base, 0xE1, &exif_orientation(1, 60 * 1024));
    let out = resize(&one).unwrap();
    assert_eq!(out.width, 50);
    assert!(out.bytes.len() < 20_000);
    assert!(!jpeg_markers(&out.bytes).contains(&0xE1));
    // 100 of them (6 MB): rejected by the metadata limit before decoding.
    let mut many = base.clone();
    for _ in 0..100 {
        many = jpeg_with_segment(&many, 0xE1, &exif_orientation(1, 60 * 1024));
    }
    let err = run(&many).unwrap_err();
    assert!(
        matches!(err, Error::MetadataTooLarge { max: 4_194_304, .. }),
        "{err}"
    );
    // Garbage EXIF does not matter.
    let junk = jpeg_with_segment(&base, 0xE1, b"Exif\0\0MM\0*\xff\xff\xff\xff");
    assert_eq!(info(&junk, &limits()).unwrap().orientation, 1);
}

#[test]
fn unsupported_formats() {
    let mut random = vec![0u8; 4096];
    let mut s = 7u32;
    for b in &mut random {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
        *b = (s >> 16) as u8;
    }
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("random", random),
        ("empty", vec![]),
        (
            "bmp",
            b"BM\x36\x00\x00\x00\x00\x00\x00\x00\x36\x00\x00\x00".to_vec(),
        ),
        ("tiff", b"II*\x00\x08\x00\x00\x00".to_vec()),
        ("avif", b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00".to_vec()),
        ("mp4", b"\x00\x00\x00\x1cftypisom\x00\x00\x02\x00".to_vec()),
        ("text", b"hello world".to_vec()),
    ];
    for (name, bytes) in cases {
        let err = run(&bytes).unwrap_err();
        assert!(matches!(err, Error::Unsupported { .. }), "{name}: {err}");
        assert!(matches!(
            info(&bytes, &limits()),
            Err(Error::Unsupported { .. })
        ));
    }
    let err = run(b"BM\x36\x00\x00\x00").unwrap_err();
    assert!(err.to_string().contains("BMP"), "{err}");
    // GIF output is not offered.
    let err = process(
        &png(&gradient(4, 4)),
        &Pipeline::default(),
        &OutputOptions::new(Format::Gif),
        &limits(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
}

#[test]
fn absurd_sizes_name_the_field() {
    let cases = [
        (
            r#"{"ops":[{"op":"resize","width":1000000}]}"#,
            "ops[0].width",
        ),
        (
            r#"{"ops":[{"op":"rotate","degrees":90},{"op":"resize","width":10,"height":0}]}"#,
            "ops[1].height",
        ),
        (
            r#"{"ops":[{"op":"crop","width":10,"height":10,"x":99999999,"y":0}]}"#,
            "ops[0].x",
        ),
        (r#"{"ops":[{"op":"blur","sigma":1e9}]}"#, "ops[0].sigma"),
        (
            r#"{"ops":[{"op":"text","text":"a","size":100000}]}"#,
            "ops[0].size",
        ),
        (r#"{"ops":[{"op":"text","text":""}]}"#, "ops[0].text"),
        (
            r#"{"ops":[{"op":"watermark","asset":"w","opacity":2}]}"#,
            "ops[0].opacity",
        ),
        (
            r#"{"ops":[{"op":"watermark","asset":"w","offsetX":-2000000}]}"#,
            "ops[0].offsetX",
        ),
        (
            r#"{"ops":[{"op":"rotate","degrees":45}]}"#,
            "ops[0].degrees",
        ),
        (r#"{"ops":[{"op":"resize"}]}"#, "ops[0].width"),
    ];
    for (json, want) in cases {
        let err = Pipeline::from_json(json).unwrap_err();
        match &err {
            Error::InvalidOption { field, .. } => assert_eq!(field, want, "{json}"),
            other => panic!("{json}: {other}"),
        }
        assert!(err.to_string().contains(want));
    }
    // Unknown fields and ops are refused by serde.
    for json in [
        r#"{"ops":[{"op":"resize","widht":10}]}"#,
        r#"{"ops":[{"op":"explode"}]}"#,
        r#"{"ops":[],"extra":1}"#,
        r#"{"ops":[{"op":"resize","width":-5}]}"#,
    ] {
        assert!(
            matches!(Pipeline::from_json(json), Err(Error::Spec(_))),
            "{json}"
        );
    }
    // Each dimension valid but the output too big: the output pixel bound names the op.
    let p = Pipeline::from_json(
        r#"{"ops":[{"op":"resize","width":16384,"height":16384,"fit":"force"}]}"#,
    )
    .unwrap();
    let err = process(
        &png(&gradient(8, 8)),
        &p,
        &OutputOptions::default(),
        &limits(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::OutputTooLarge { field, .. } if field == "ops[0]"),
        "{err}"
    );
    // Crop rectangle outside the image.
    let p = Pipeline::from_json(r#"{"ops":[{"op":"crop","width":10,"height":10,"x":5,"y":0}]}"#)
        .unwrap();
    let err = process(
        &png(&gradient(8, 8)),
        &p,
        &OutputOptions::default(),
        &limits(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidOption { field, .. } if field == "ops[0].width"),
        "{err}"
    );
    // Output options.
    let err = process(
        &png(&gradient(8, 8)),
        &Pipeline::default(),
        &OutputOptions {
            quality: 0,
            ..OutputOptions::default()
        },
        &limits(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidOption { field, .. } if field == "quality"),
        "{err}"
    );
    // Input byte limit.
    let tiny = Limits {
        max_input_bytes: 10,
        ..Limits::default()
    };
    assert!(matches!(
        info(&png(&gradient(8, 8)), &tiny),
        Err(Error::InputTooLarge { max: 10, .. })
    ));
    // Too many ops.
    let many = Pipeline {
        ops: vec![Op::Grayscale(Grayscale {}); 100],
    };
    assert!(matches!(many.validate(), Err(Error::InvalidOption { field, .. }) if field == "ops"));
}

#[test]
fn bad_assets_are_errors() {
    let mut assets = std::collections::HashMap::new();
    assets.insert("bomb".to_string(), png_claiming(100_000, 100_000));
    assets.insert("junk".to_string(), b"not an image".to_vec());
    let input = png(&gradient(32, 32));
    for name in ["bomb", "junk"] {
        let p = Pipeline::from_json(&format!(
            r#"{{"ops":[{{"op":"watermark","asset":"{name}"}}]}}"#
        ))
        .unwrap();
        assert!(
            process_with_assets(&input, &p, &OutputOptions::default(), &limits(), &assets).is_err()
        );
    }
}
