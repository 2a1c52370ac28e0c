//! The imgproxy-compatible URL format: documented vectors and URLs from imgproxy's docs
//! and test suite, signatures, bad inputs, canonical option strings, and a no-panic
//! property over arbitrary paths.

use proptest::prelude::*;
use verge_images::Error;
use verge_images::imgproxy::{
    GravitySpec, ImgRequest, MAX_OPTIONS, MAX_PATH_BYTES, Options, ResizingType, SigningKeys,
    WatermarkPosition, WatermarkSpec, build_path, parse, parse_at,
};
use verge_imaging::{Color, Fit, Format, Gravity, Info, Op, Resize};

/// imgproxy's `examples/` key/salt pair.
const EXAMPLE_KEY: &str = "943b421c9eb07c830af81030552c86009268de4e532ba2ee2eab8247c6da0881";
const EXAMPLE_SALT: &str = "520f986b998545b4785e0defbc4f3c1203f22de2374a3d53cb7a7fe9fea309c5";
/// The docs' "Signing a URL" pair: `secret` / `hello`.
const DOCS_KEY: &str = "736563726574";
const DOCS_SALT: &str = "68656C6C6F";
/// The documented path signed in "Signing a URL".
const DOCS_PATH: &str =
    "/rs:fill:300:400:0/g:sm/aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn.png";
const DOCS_SIGNATURE: &str = "oKfUtW34Dvo2BGQehJFR4Nr0_rIjOtdtzJ3QFsUcXH8";
const NOW: u64 = 1_700_000_000;

fn keys(pairs: &[(&str, &str)]) -> SigningKeys {
    let pairs: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, s)| (k.to_string(), s.to_string()))
        .collect();
    SigningKeys::from_hex(&pairs).expect("valid keys")
}

fn no_keys() -> SigningKeys {
    SigningKeys::default()
}

/// Parses an unsigned path with unsigned URLs allowed.
fn open(path: &str) -> Result<ImgRequest, Error> {
    parse_at(path, &no_keys(), true, NOW)
}

fn invalid_field(e: &Error) -> &str {
    match e {
        Error::Invalid { field, .. } => field,
        other => panic!("expected Error::Invalid, got {other:?}"),
    }
}

#[track_caller]
fn assert_invalid(path: &str, field: &str) {
    match open(path) {
        Ok(r) => panic!("{path} parsed: {r:?}"),
        Err(e) => assert_eq!(invalid_field(&e), field, "{path}: {e}"),
    }
}

fn info(format: Format, w: u32, h: u32) -> Info {
    Info {
        format,
        width: w,
        height: h,
        orientation: 1,
        display_width: w,
        display_height: h,
        frames: 1,
        has_alpha: false,
        has_icc: false,
        has_exif: false,
        cmyk: false,
        bytes: 1000,
    }
}

// ---------------------------------------------------------------------------------------
// Documented signature vectors

#[test]
fn docs_signing_vector() {
    let k = keys(&[(DOCS_KEY, DOCS_SALT)]);
    assert_eq!(k.sign(DOCS_PATH), DOCS_SIGNATURE);
    assert!(k.verify(DOCS_SIGNATURE, DOCS_PATH));

    let req = parse_at(&format!("/{DOCS_SIGNATURE}{DOCS_PATH}"), &k, false, NOW).unwrap();
    assert_eq!(req.signature, DOCS_SIGNATURE);
    assert_eq!(req.signed_path, DOCS_PATH);
    assert_eq!(req.source, "http://example.com/images/curiosity.jpg");
    assert_eq!(req.extension, Some(Format::Png));
    assert_eq!(req.options.resizing_type, ResizingType::Fill);
    assert_eq!((req.options.width, req.options.height), (300, 400));
    assert!(!req.options.enlarge);
    assert_eq!(req.options.gravity.map(|g| g.kind), Some(Gravity::Smart));
}

#[test]
fn examples_folder_vector() {
    // imgproxy's examples/signature.* with its key/salt pair.
    let k = keys(&[(EXAMPLE_KEY, EXAMPLE_SALT)]);
    let path = "/rs:fit:300:300/plain/http://img.example.com/pretty/image.jpg";
    let sig = "m3k5QADfcKPDj-SDI2AIogZbC3FlAXszuwhtWXYqavc";
    assert_eq!(k.sign(path), sig);
    let req = parse_at(&format!("/{sig}{path}"), &k, false, NOW).unwrap();
    assert_eq!(req.source, "http://img.example.com/pretty/image.jpg");
    assert_eq!(req.extension, None);
    assert_eq!(req.options.resizing_type, ResizingType::Fit);
    assert_eq!((req.options.width, req.options.height), (300, 300));
}

#[test]
fn upstream_test_vectors_and_truncation() {
    // imgproxy's security/signature_test.go: key `test-key`, salt `test-salt`.
    let k = keys(&[(&hex::encode("test-key"), &hex::encode("test-salt"))]);
    assert!(k.verify("dtLwhdnPPiu_epMl1LrzheLpvHas-4mwvY6L3Z8WwlY", "asd"));
    assert!(k.verify("8x1xvzxVqZ3Uz3kEC8gVvBfU0dfU1vKv0Gho8m3Ysgw", "qwe"));
    // Truncated signatures (IMGPROXY_SIGNATURE_SIZE=8) are not supported.
    assert!(!k.verify("dtLwhdnPPis", "asd"));
    assert!(!k.verify("8x1xvzxVqZ0", "qwe"));
    assert!(!k.verify("dtLwhdnPPiu_epMl1LrzheLpvHas-4mwvY6L3Z8WwlY", "qwe"));
}

// ---------------------------------------------------------------------------------------
// Documented URLs

#[test]
fn docs_example_urls() {
    // "Example" section of usage/processing, without the preset (none configured).
    let plain = open("/unsafe/resize:fill:300:400:0/gravity:sm/plain/http://example.com/images/curiosity.jpg@png").unwrap();
    let short = open("/_/rs:fill:300:400:0/g:sm/plain/http://example.com/images/curiosity.jpg@png")
        .unwrap();
    let b64 = open(&format!("/insecure{DOCS_PATH}")).unwrap();
    for r in [&plain, &short, &b64] {
        assert_eq!(r.source, "http://example.com/images/curiosity.jpg");
        assert_eq!(r.extension, Some(Format::Png));
        assert_eq!(r.options, plain.options);
    }
    assert_eq!(
        plain.options.canonical(),
        "gravity:sm/height:400/resizing_type:fill/width:300"
    );

    // Source URL section.
    let r = open("/unsafe/plain/http://example.com/images/curiosity.jpg").unwrap();
    assert_eq!(r.source, "http://example.com/images/curiosity.jpg");
    assert_eq!(r.options, Options::default());
    let r = open("/unsafe/aHR0cDovL2V4YW1w/bGUuY29tL2ltYWdl/cy9jdXJpb3NpdHku/anBn").unwrap();
    assert_eq!(r.source, "http://example.com/images/curiosity.jpg");
    assert_eq!(r.extension, None);

    // With the documented preset: a clear error.
    assert_invalid(
        "/unsafe/preset:sharp/resize:fill:300:400:0/gravity:sm/plain/http://example.com/images/curiosity.jpg@png",
        "options.preset",
    );
    assert_invalid(
        "/unsafe/pr:sharp/rs:fill:300:400:0/g:sm/plain/http://example.com/images/curiosity.jpg@png",
        "options.preset",
    );
}

#[test]
fn upstream_parser_test_urls() {
    // From imgproxy's options/processing_options_test.go.
    let r = open(
        "/unsafe/size:100:100/aHR0cDovL2ltYWdlcy5kZXYvbG9yZW0vaXBzdW0uanBnP3BhcmFtPXZhbHVl.png",
    )
    .unwrap();
    assert_eq!(r.source, "http://images.dev/lorem/ipsum.jpg?param=value");
    assert_eq!(r.extension, Some(Format::Png));

    let r = open("/unsafe/size:100:100/plain/http://images.dev/lorem/ipsum.jpg@png").unwrap();
    assert_eq!(r.source, "http://images.dev/lorem/ipsum.jpg");
    assert_eq!(r.extension, Some(Format::Png));

    // url.PathEscape of the source.
    let r = open(
        "/unsafe/size:100:100/plain/http:%2F%2Fimages.dev%2Florem%2Fipsum.jpg%3Fparam=value@png",
    )
    .unwrap();
    assert_eq!(r.source, "http://images.dev/lorem/ipsum.jpg?param=value");

    let r = open("/unsafe/format:webp/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.format, Some(Format::Webp));

    let r = open("/unsafe/resize:fill:100:200:1/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.resizing_type, ResizingType::Fill);
    assert_eq!(
        (r.options.width, r.options.height, r.options.enlarge),
        (100, 200, true)
    );

    let r = open("/unsafe/size:100:200:1/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(
        (r.options.width, r.options.height, r.options.enlarge),
        (100, 200, true)
    );

    let r = open("/unsafe/gravity:soea/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.gravity.map(|g| g.kind), Some(Gravity::SouthEast));

    let r =
        open("/unsafe/crop:100:200:nowe:10:20/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    let c = r.options.crop.unwrap();
    assert_eq!((c.width, c.height), (100.0, 200.0));
    assert_eq!(
        c.gravity,
        Some(GravitySpec {
            kind: Gravity::NorthWest,
            x_offset: 10.0,
            y_offset: 20.0
        })
    );

    let r = open("/unsafe/quality:55/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.quality, Some(55));

    let r = open("/unsafe/background:128:129:130/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.background, Some(Color([128, 129, 130, 255])));
    let r = open("/unsafe/background:ffddee/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.background, Some(Color([0xff, 0xdd, 0xee, 255])));
    let r =
        open("/unsafe/background:fff/background:/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.background, None);

    let r = open("/unsafe/blur:0.2/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.blur, Some(0.2));
    let r = open("/unsafe/sharpen:0.2/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.sharpen, Some(0.2));
    let r = open("/unsafe/dpr:2/plain/http://images.dev/lorem/ipsum.jpg").unwrap();
    assert_eq!(r.options.dpr, Some(2.0));

    let r = open("/unsafe/watermark:0.5:soea:10:20:0.6/plain/http://images.dev/lorem/ipsum.jpg")
        .unwrap();
    assert_eq!(
        r.options.watermark,
        Some(WatermarkSpec {
            opacity: 0.5,
            position: WatermarkPosition::Anchor(Gravity::SouthEast),
            x_offset: 10.0,
            y_offset: 20.0,
            scale: 0.6,
        })
    );

    // Rejected there too.
    assert_invalid(
        "/unsafe/gravity:re/plain/http://images.dev/lorem/ipsum.jpg",
        "options.gravity",
    );
    assert_invalid(
        "/unsafe/crop:100:200:re/plain/http://images.dev/lorem/ipsum.jpg",
        "options.crop.gravity",
    );
    assert_invalid(
        "/unsafe/extend:1:sm/plain/http://images.dev/lorem/ipsum.jpg",
        "options.extend",
    );
}

// ---------------------------------------------------------------------------------------
// Signatures

#[test]
fn signature_checks() {
    let k = keys(&[(DOCS_KEY, DOCS_SALT)]);
    let good = format!("/{DOCS_SIGNATURE}{DOCS_PATH}");
    assert!(parse_at(&good, &k, false, NOW).is_ok());

    // Wrong: another signature, a tampered path, a flipped character.
    let wrong = format!("/m3k5QADfcKPDj-SDI2AIogZbC3FlAXszuwhtWXYqavc{DOCS_PATH}");
    assert!(matches!(
        parse_at(&wrong, &k, false, NOW),
        Err(Error::BadSignature)
    ));
    let tampered = good.replace("300:400", "301:400");
    assert!(matches!(
        parse_at(&tampered, &k, false, NOW),
        Err(Error::BadSignature)
    ));
    let flipped = good.replacen('o', "p", 1);
    assert!(matches!(
        parse_at(&flipped, &k, true, NOW),
        Err(Error::BadSignature)
    ));
    // Not base64 at all, or padded.
    let junk = format!("/not*base64{DOCS_PATH}");
    assert!(matches!(
        parse_at(&junk, &k, false, NOW),
        Err(Error::BadSignature)
    ));
    let padded = format!("/{DOCS_SIGNATURE}={DOCS_PATH}");
    assert!(matches!(
        parse_at(&padded, &k, false, NOW),
        Err(Error::BadSignature)
    ));

    // Truncated.
    let truncated = format!("/{}{DOCS_PATH}", &DOCS_SIGNATURE[..11]);
    assert!(matches!(
        parse_at(&truncated, &k, false, NOW),
        Err(Error::BadSignature)
    ));

    // Missing: the options start right away, or the segment is empty.
    for missing in [DOCS_PATH.to_string(), format!("/{DOCS_PATH}")] {
        let e = parse_at(&missing, &k, true, NOW).unwrap_err();
        assert_eq!(invalid_field(&e), "signature", "{missing}");
    }

    // Unsigned placeholders.
    for placeholder in ["unsafe", "_", "insecure"] {
        let path = format!("/{placeholder}{DOCS_PATH}");
        assert!(matches!(
            parse_at(&path, &k, false, NOW),
            Err(Error::Unsigned)
        ));
        assert!(matches!(
            parse_at(&path, &no_keys(), false, NOW),
            Err(Error::Unsigned)
        ));
        assert!(parse_at(&path, &k, true, NOW).is_ok());
        assert!(parse_at(&path, &no_keys(), true, NOW).is_ok());
    }

    // No keys: anything goes when unsigned URLs are allowed, nothing verifies otherwise.
    let any = format!("/whatever{DOCS_PATH}");
    assert!(parse_at(&any, &no_keys(), true, NOW).is_ok());
    assert!(matches!(
        parse_at(&good, &no_keys(), false, NOW),
        Err(Error::BadSignature)
    ));

    // The HTTP mapping of these errors.
    assert_eq!(Error::BadSignature.http_status(), 403);
    assert_eq!(Error::Unsigned.http_status(), 403);
}

#[test]
fn key_rotation() {
    let old = (hex::encode("test-key"), hex::encode("test-salt"));
    let new = (hex::encode("test-key2"), hex::encode("test-salt2"));
    let both = SigningKeys::from_hex(&[new.clone(), old.clone()]).unwrap();
    assert_eq!(both.len(), 2);
    // Signed with the old (second) pair: still verifies.
    assert!(both.verify("dtLwhdnPPiu_epMl1LrzheLpvHas-4mwvY6L3Z8WwlY", "asd"));
    // The first pair signs.
    let sig = both.sign("asd");
    assert_eq!(sig, "jbDffNPt1-XBgDccsaE-XJB9lx8JIJqdeYIZKgOqZpg");
    assert!(both.verify(&sig, "asd"));
    let only_old = SigningKeys::from_hex(&[old]).unwrap();
    assert!(!only_old.verify(&sig, "asd"));

    // Through parse: a URL signed with either pair is accepted.
    let path = "/rs:fit:300:300/plain/http://img.example.com/pretty/image.jpg";
    let old_only = keys(&[("74657374", "73616c74")]);
    let rotated = keys(&[(EXAMPLE_KEY, EXAMPLE_SALT), ("74657374", "73616c74")]);
    let url = format!("/{}{path}", old_only.sign(path));
    assert!(parse_at(&url, &rotated, false, NOW).is_ok());
    assert!(matches!(
        parse_at(&url, &keys(&[(EXAMPLE_KEY, EXAMPLE_SALT)]), false, NOW),
        Err(Error::BadSignature)
    ));
}

#[test]
fn key_config_errors() {
    let bad = |k: &str, s: &str| {
        SigningKeys::from_hex(&[
            (EXAMPLE_KEY.into(), EXAMPLE_SALT.into()),
            (k.into(), s.into()),
        ])
        .unwrap_err()
    };
    for (k, s, field) in [
        ("abc", EXAMPLE_SALT, "keys[1].key"),
        ("", EXAMPLE_SALT, "keys[1].key"),
        ("zz", EXAMPLE_SALT, "keys[1].key"),
        (EXAMPLE_KEY, "", "keys[1].salt"),
        (EXAMPLE_KEY, "0", "keys[1].salt"),
    ] {
        match bad(k, s) {
            Error::Config { field: f, message } => {
                assert_eq!(f, field);
                assert!(!message.contains(EXAMPLE_KEY));
            }
            other => panic!("{other:?}"),
        }
    }
    let k = keys(&[(EXAMPLE_KEY, EXAMPLE_SALT)]);
    assert!(!format!("{k:?}").contains("943b"));
    assert!(no_keys().is_empty());
    assert_eq!(no_keys().sign("/x"), "unsafe");
}

// ---------------------------------------------------------------------------------------
// Bad inputs

#[test]
fn bad_options() {
    let src = "plain/http://x/y.jpg";
    for (opts, field) in [
        ("nope:1", "options.nope"),
        ("w:1000000", "options.width"),
        ("h:-1", "options.height"),
        ("w:abc", "options.width"),
        ("w:", "options.width"),
        ("w:1:2", "options.width"),
        ("rs:fill:99999:1", "options.width"),
        ("rs:stretch:1:1", "options.resizing_type"),
        ("q:101", "options.quality"),
        ("q:0", "options.quality"),
        ("rot:45", "options.rotate"),
        ("bl:0", "options.blur"),
        ("bl:101", "options.blur"),
        ("bl:NaN", "options.blur"),
        ("sh:inf", "options.sharpen"),
        ("mb:10", "options.max_bytes"),
        ("mb:99999999999", "options.max_bytes"),
        ("dpr:9", "options.dpr"),
        ("dpr:0", "options.dpr"),
        ("w:4000/dpr:8", "options.width"),
        ("el:maybe", "options.enlarge"),
        ("g:fp:0.5:0.5", "options.gravity"),
        ("g:obj:face", "options.gravity"),
        ("g:sm:1:1", "options.gravity"),
        ("g:no:1:2:3", "options.gravity"),
        ("g:no:99999", "options.gravity.x_offset"),
        ("c:100:100:sowe:x", "options.crop.gravity.x_offset"),
        ("c:-5:100", "options.crop.width"),
        ("wm:2", "options.watermark.opacity"),
        ("wm:0.5:sm", "options.watermark.position"),
        ("wm:0.5:ch", "options.watermark.position"),
        ("wm:0.5:re:-5", "options.watermark.x_offset"),
        ("wm:0.5:no:0.5", "options.watermark.x_offset"),
        ("wm:0.5:no:0:0:2", "options.watermark.scale"),
        ("bg:zzzzzz", "options.background"),
        ("bg:256:0:0", "options.background"),
        ("bg:1:2", "options.background"),
        ("f:avif", "options.format"),
        ("f:gif", "options.format"),
        ("f:tiff", "options.format"),
        ("f:ico", "options.format"),
        ("f:bogus", "options.format"),
        ("ex:1", "options.extend"),
        ("s:10:10:0:1", "options.extend"),
        ("ar:0", "options.auto_rotate"),
        ("kcr:1", "options.keep_copyright"),
        ("sm:perhaps", "options.strip_metadata"),
        ("pd:10", "options.pd"),
        ("trim:10", "options.trim"),
        ("exp:1000", "options.expires"),
        (":1", "options"),
    ] {
        assert_invalid(&format!("/unsafe/{opts}/{src}"), field);
    }
    // A later-expiring URL is fine; 0 means never.
    assert!(open(&format!("/unsafe/exp:{}/{src}", NOW + 60)).is_ok());
    assert!(open(&format!("/unsafe/exp:0/{src}")).is_ok());
}

#[test]
fn bad_sources_and_extensions() {
    assert_invalid("/unsafe/rs:fit:1:1/plain/", "source");
    assert_invalid("/unsafe/rs:fit:1:1/plain", "source");
    assert_invalid("/unsafe/rs:fit:1:1", "source");
    assert_invalid("/unsafe", "source");
    assert_invalid("/unsafe/plain/@png", "source");
    assert_invalid("/unsafe/plain/http://x/%zz.jpg", "source");
    assert_invalid("/unsafe/plain/http://x/%ff.jpg", "source");
    assert_invalid("/unsafe/plain/http://x/%0a.jpg", "source");
    assert_invalid("/unsafe/aHR0c*Dov.png", "source");
    assert_invalid("/unsafe/.png", "source");
    assert_invalid("/unsafe/_w.png", "source"); // decodes to a non-UTF-8 byte
    assert_invalid("/unsafe/enc/abcd/efgh", "source");
    assert_invalid("/unsafe/plain/http://x/y.jpg@png@jpg", "extension");
    assert_invalid("/unsafe/aGVsbG8.png.jpg", "extension");
    assert_invalid("/unsafe/plain/http://x/y.jpg@gif", "extension");
    assert_invalid("/unsafe/plain/http://x/y.jpg@avif", "extension");
    assert_invalid("/unsafe/plain/http://x/y.jpg@heic", "extension");
    assert_invalid("/unsafe/aGVsbG8.tiff", "extension");
    assert_invalid("/unsafe/aGVsbG8.auto", "extension");
    assert_invalid("no-leading-slash/plain/x", "path");

    // Extensions, case-insensitively.
    for (ext, f) in [
        ("jpg", Format::Jpeg),
        ("JPEG", Format::Jpeg),
        ("png", Format::Png),
        ("webp", Format::Webp),
    ] {
        let r = open(&format!("/unsafe/plain/http://x/y.gif@{ext}")).unwrap();
        assert_eq!(r.extension, Some(f));
    }
    // An empty extension is no extension.
    assert_eq!(open("/unsafe/plain/http://x/y@").unwrap().extension, None);
    // An encoded `@` belongs to the source.
    assert_eq!(
        open("/unsafe/plain/http://u%40h/y%3Fa=1@webp")
            .unwrap()
            .source,
        "http://u@h/y?a=1"
    );
}

#[test]
fn limits_on_size_and_count() {
    let long = format!("/unsafe/plain/http://x/{}", "a".repeat(MAX_PATH_BYTES));
    let e = open(&long).unwrap_err();
    assert_eq!(invalid_field(&e), "path");

    let ok = format!("/unsafe/{}plain/http://x/y", "w:1/".repeat(MAX_OPTIONS));
    assert!(open(&ok).is_ok());
    let too_many = format!("/unsafe/{}plain/http://x/y", "w:1/".repeat(MAX_OPTIONS + 1));
    assert_eq!(invalid_field(&open(&too_many).unwrap_err()), "options");

    // Unknown option names are truncated in errors.
    let name = "x".repeat(5000);
    let e = open(&format!("/unsafe/{name}:1/plain/http://x/y")).unwrap_err();
    assert!(e.to_string().len() < 200, "{e}");
}

// ---------------------------------------------------------------------------------------
// Canonical strings

#[test]
fn canonical_equivalences() {
    let groups: &[&[&str]] = &[
        &[
            "rs:fill:300:400:0/g:sm",
            "g:sm/resizing_type:fill/w:300/h:400/el:false",
            "resize:fit:1:1/size:300:400/rt:fill/gravity:sm/enlarge:0",
            "s:300/h:400/rs:fill::/g:ce/g:sm/sm:1/cb:/exp:0",
            "gravity:sm/height:400/resizing_type:fill/width:300",
        ],
        &[
            "q:80/f:jpg/bg:fff/rot:-90",
            "format:jpeg/background:255:255:255/quality:80/rotate:270",
            "rot:630/ext:JPG/bg:FFFFFF/q:80",
        ],
        &["dpr:1/w:10", "width:10", "w:10/mb:0/wm:0", "w:10/c:0:0"],
        &["wm:0.5", "wm:0.5:ce:0:0:0", "watermark:0.50::::"],
        &["c:100:100:no", "crop:100:100:no:0:0"],
        &["f:webp/f:auto", ""],
    ];
    for group in groups {
        let canon: Vec<String> = group
            .iter()
            .map(|o| Options::parse(o, NOW).unwrap().canonical())
            .collect();
        for c in &canon {
            assert_eq!(c, &canon[0], "{group:?}");
        }
    }
    // Different meanings stay different.
    let a = Options::parse("rs:fill:300:400", NOW).unwrap().canonical();
    let b = Options::parse("rs:fit:300:400", NOW).unwrap().canonical();
    let c = Options::parse("rs:fill:300:400/cb:2", NOW)
        .unwrap()
        .canonical();
    assert_ne!(a, b);
    assert_ne!(a, c);
    // The canonical string parses back to the same options.
    let o = Options::parse(
        "rs:fill-down:300:400:1/g:noea:5:0.25/c:0.5:100:sowe/q:70/f:webp/wm:0.3:re:4:6:0.25/bl:1.5/sh:0.7/rot:90/bg:10:20:30/mb:5000/dpr:1.5/cb:v2",
        NOW,
    )
    .unwrap();
    let canon = o.canonical();
    assert_eq!(Options::parse(&canon, NOW).unwrap(), o, "{canon}");
}

// ---------------------------------------------------------------------------------------
// Plans

#[test]
fn plans_for_documented_example() {
    let r = open(&format!("/unsafe{DOCS_PATH}")).unwrap();
    let plan = r
        .options
        .plan(
            r.extension,
            &info(Format::Jpeg, 4000, 3000),
            Some("image/webp"),
            "wm",
        )
        .unwrap();
    assert_eq!(plan.format, Format::Png);
    assert!(!plan.vary_accept);
    assert_eq!(plan.output.format, Some(Format::Png));
    assert_eq!(
        plan.pipeline.ops,
        vec![Op::Resize(Resize {
            width: Some(300),
            height: Some(400),
            fit: Fit::Fill,
            gravity: Gravity::Smart,
            without_enlargement: true,
            ..Resize::default()
        })]
    );
}

#[test]
fn format_negotiation() {
    let o = Options::default();
    let src = info(Format::Jpeg, 100, 100);
    let p = o
        .plan(None, &src, Some("image/avif,image/webp,*/*"), "")
        .unwrap();
    assert_eq!((p.format, p.vary_accept), (Format::Webp, true));
    let p = o.plan(None, &src, Some("image/webp;q=0, */*"), "").unwrap();
    assert_eq!((p.format, p.vary_accept), (Format::Jpeg, true));
    let p = o.plan(None, &src, None, "").unwrap();
    assert_eq!((p.format, p.vary_accept), (Format::Jpeg, true));
    // GIF sources become PNG (GIF output is unsupported).
    let p = o
        .plan(None, &info(Format::Gif, 10, 10), Some("*/*"), "")
        .unwrap();
    assert_eq!(p.format, Format::Png);
    // An explicit format: no Vary.
    let p = Options::parse("f:png", NOW)
        .unwrap()
        .plan(None, &src, Some("image/webp"), "")
        .unwrap();
    assert_eq!((p.format, p.vary_accept), (Format::Png, false));
    // The extension wins over the option.
    let p = Options::parse("f:png", NOW)
        .unwrap()
        .plan(Some(Format::Jpeg), &src, None, "")
        .unwrap();
    assert_eq!(p.format, Format::Jpeg);
}

#[test]
fn build_path_round_trips() {
    let k = keys(&[(EXAMPLE_KEY, EXAMPLE_SALT)]);
    let p = build_path(
        &k,
        "rs:fit:300:300",
        "http://img.example.com/pretty/image.jpg",
        None,
        false,
    )
    .unwrap();
    assert_eq!(
        p,
        "/m3k5QADfcKPDj-SDI2AIogZbC3FlAXszuwhtWXYqavc/rs:fit:300:300/plain/http://img.example.com/pretty/image.jpg"
    );
    let dk = keys(&[(DOCS_KEY, DOCS_SALT)]);
    let p = build_path(
        &dk,
        "rs:fill:300:400:0/g:sm",
        "http://example.com/images/curiosity.jpg",
        Some("png"),
        true,
    )
    .unwrap();
    let r = parse_at(&p, &dk, false, NOW).unwrap();
    assert_eq!(r.source, "http://example.com/images/curiosity.jpg");
    assert_eq!(r.extension, Some(Format::Png));

    let src = "https://h.example/a b/ü?x=1&y=@#frag%41";
    for b64 in [false, true] {
        let p = build_path(&k, "/w:100/", src, Some("webp"), b64).unwrap();
        let r = parse_at(&p, &k, false, NOW).unwrap();
        assert_eq!(r.source, src);
        assert_eq!(r.options.width, 100);
        assert_eq!(r.extension, Some(Format::Webp));
    }
    let p = build_path(&no_keys(), "", "http://x/y", None, false).unwrap();
    assert_eq!(p, "/unsafe/plain/http://x/y");

    assert!(build_path(&k, "w:1000000", "http://x/y", None, false).is_err());
    assert!(build_path(&k, "w:1/plain", "http://x/y", None, false).is_err());
    assert!(build_path(&k, "", "", None, false).is_err());
    assert!(build_path(&k, "", "http://x/y", Some("gif"), false).is_err());
}

/// A solid image of `w` x `h` encoded as `format`.
fn image(w: u32, h: u32, format: Format) -> Vec<u8> {
    let spec = verge_imaging::ComposeSpec {
        width: w,
        height: h,
        background: Color([200, 30, 30, 255]),
        background_image: None,
        layers: vec![],
        output: verge_imaging::OutputOptions::new(format),
    };
    verge_imaging::compose(
        &spec,
        &verge_imaging::NoAssets,
        &verge_imaging::Limits::default(),
    )
    .unwrap()
    .bytes
}

#[test]
fn plans_run_end_to_end() {
    let limits = verge_imaging::Limits::default();
    let mut assets = std::collections::BTreeMap::new();
    assets.insert("wm".to_string(), image(40, 20, Format::Png));
    let landscape = image(800, 600, Format::Jpeg);
    let portrait = image(600, 800, Format::Jpeg);
    let small = image(400, 100, Format::Png);
    for (path, input, want) in [
        (
            "rs:fill:300:300/g:we:10:0",
            &landscape,
            (300, 300, Format::Jpeg),
        ),
        ("rs:fill:300:300/g:sm", &landscape, (300, 300, Format::Jpeg)),
        ("rs:fill:300:300", &small, (300, 100, Format::Png)),
        ("rs:fill-down:300:300", &small, (100, 100, Format::Png)),
        (
            "rs:fill:300:300:1/g:so:0:5",
            &small,
            (300, 300, Format::Png),
        ),
        (
            "rot:90/c:600:700/w:300",
            &landscape,
            (300, 350, Format::Jpeg),
        ),
        ("rs:force:300:0", &landscape, (300, 600, Format::Jpeg)),
        ("rs:auto:300:200", &portrait, (150, 200, Format::Jpeg)),
        ("rs:auto:300:200", &landscape, (300, 200, Format::Jpeg)),
        (
            "wm:0.5:re:4:4:0.1/w:200",
            &landscape,
            (200, 150, Format::Jpeg),
        ),
        (
            "wm:0.8:soea:10:10/w:200/f:webp",
            &landscape,
            (200, 150, Format::Webp),
        ),
        (
            "c:0.5:0.5:soea:0.1:0.1/q:50/mb:100000",
            &landscape,
            (400, 300, Format::Jpeg),
        ),
        (
            "dpr:2/w:100/bl:1/sh:1/bg:0:0:0",
            &small,
            (200, 50, Format::Png),
        ),
        ("w:2000", &small, (400, 100, Format::Png)),
    ] {
        let req = open(&format!("/unsafe/{path}/plain/http://x/y")).unwrap();
        let info = verge_imaging::info(input, &limits).unwrap();
        let plan = req.options.plan(req.extension, &info, None, "wm").unwrap();
        let out = verge_imaging::process_with_assets(
            input,
            &plan.pipeline,
            &plan.output,
            &limits,
            &assets,
        )
        .unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!((out.width, out.height, out.format), want, "{path}");
    }
}

#[test]
fn parse_uses_the_clock_for_expiry() {
    assert!(parse("/unsafe/exp:1/plain/http://x/y", &no_keys(), true).is_err());
    assert!(parse("/unsafe/exp:99999999999/plain/http://x/y", &no_keys(), true).is_ok());
}

// ---------------------------------------------------------------------------------------
// Properties

/// Random (mostly invalid) option segments.
fn random_segment() -> impl Strategy<Value = String> {
    let names = prop::sample::select(vec![
        "rs", "resize", "s", "size", "rt", "w", "h", "el", "ex", "g", "c", "q", "f", "wm", "bl",
        "sh", "rot", "bg", "mb", "dpr", "sm", "cb", "exp", "ar", "scp", "kcr", "zz",
    ]);
    let args = prop::collection::vec(
        prop::sample::select(vec![
            "",
            "0",
            "1",
            "0.5",
            "-3",
            "10",
            "90",
            "100",
            "300",
            "16384",
            "99999",
            "fill",
            "fit",
            "fill-down",
            "force",
            "auto",
            "sm",
            "no",
            "soea",
            "ce",
            "re",
            "t",
            "false",
            "jpg",
            "webp",
            "png",
            "gif",
            "fff",
            "1e3",
            "NaN",
        ]),
        0..6,
    );
    (names, args).prop_map(|(n, a)| {
        let mut s = n.to_string();
        for x in a {
            s.push(':');
            s.push_str(x);
        }
        s
    })
}

/// Valid option segments.
fn valid_segment() -> impl Strategy<Value = String> {
    let types = prop::sample::select(vec!["fit", "fill", "fill-down", "force", "auto", ""]);
    let gravities = prop::sample::select(vec![
        "ce", "no", "so", "ea", "we", "noea", "nowe", "soea", "sowe",
    ]);
    let offset = prop_oneof![Just(0.0f64), -0.9f64..0.9, -500.0f64..500.0];
    prop_oneof![
        (types, 0u32..3000, 0u32..3000, any::<bool>())
            .prop_map(|(t, w, h, e)| format!("rs:{t}:{w}:{h}:{}", u8::from(e))),
        (gravities.clone(), offset.clone(), offset.clone())
            .prop_map(|(g, x, y)| format!("g:{g}:{x}:{y}")),
        Just("g:sm".to_string()),
        (
            0.0f64..3000.0,
            0.0f64..3000.0,
            gravities.clone(),
            offset.clone()
        )
            .prop_map(|(w, h, g, x)| format!("c:{w}:{h}:{g}:{x}")),
        (
            0.0f64..=1.0,
            prop::sample::select(vec!["re", "ce", "soea", "no"]),
            0.0f64..50.0,
            0.0f64..=1.0
        )
            .prop_map(|(o, p, x, sc)| format!("wm:{o}:{p}:{x}:{x}:{sc}")),
        (1u32..=100).prop_map(|q| format!("q:{q}")),
        prop::sample::select(vec!["f:jpg", "f:png", "f:webp", "f:auto"]).prop_map(String::from),
        (0.01f64..100.0).prop_map(|b| format!("bl:{b}")),
        (0.01f64..10.0).prop_map(|b| format!("sh:{b}")),
        (-4i32..=4).prop_map(|r| format!("rot:{}", r * 90)),
        (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(r, g, b)| format!("bg:{r}:{g}:{b}")),
        (100u32..1_000_000).prop_map(|m| format!("mb:{m}")),
        (0.1f64..=4.0).prop_map(|d| format!("dpr:{d}")),
        "[a-z0-9]{1,8}".prop_map(|c| format!("cb:{c}")),
    ]
}

fn option_segment() -> impl Strategy<Value = String> {
    prop_oneof![1 => random_segment(), 4 => valid_segment()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_paths_never_panic(path in "\\PC{0,200}", allowed in any::<bool>()) {
        let k = keys(&[(DOCS_KEY, DOCS_SALT)]);
        let _ = parse_at(&path, &k, allowed, NOW);
        let _ = parse_at(&format!("/unsafe/{path}"), &no_keys(), true, NOW);
        let _ = parse_at(&format!("/unsafe/plain/{path}"), &no_keys(), true, NOW);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let path = String::from_utf8_lossy(&bytes);
        let _ = parse_at(&path, &no_keys(), true, NOW);
        let _ = parse_at(&format!("/_/{path}"), &no_keys(), true, NOW);
    }

    #[test]
    fn option_strings_canonicalise_and_plan(
        segs in prop::collection::vec(option_segment(), 0..6),
        w in 1u32..5000,
        h in 1u32..5000,
        accept in any::<bool>(),
    ) {
        let text = segs.join("/");
        if let Ok(o) = Options::parse(&text, NOW) {
            let canon = o.canonical();
            let mut again = Options::parse(&canon, NOW).expect("canonical parses");
            again.expires = o.expires;
            prop_assert_eq!(&again, &o, "{} -> {}", text, canon);
            prop_assert_eq!(again.canonical(), canon);
            let accept = accept.then_some("image/webp");
            // A plan is either an error or a valid pipeline (plan validates it).
            if let Ok(plan) = o.plan(None, &info(Format::Jpeg, w, h), accept, "wm") {
                prop_assert!(plan.pipeline.validate().is_ok());
                prop_assert!(plan.output.validate().is_ok());
            }
        }
    }

    #[test]
    fn built_paths_parse_back(src in "\\PC{1,80}", b64 in any::<bool>(), ext in prop::option::of(prop::sample::select(vec!["jpg", "png", "webp"]))) {
        let k = keys(&[(EXAMPLE_KEY, EXAMPLE_SALT)]);
        if let Ok(p) = build_path(&k, "rs:fit:10:10", &src, ext, b64) {
            let r = parse_at(&p, &k, false, NOW).expect("built path parses");
            prop_assert_eq!(r.source, src);
            prop_assert_eq!(r.options.width, 10);
        }
    }
}
