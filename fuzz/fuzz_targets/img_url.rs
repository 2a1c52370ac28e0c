//! Fuzzes `verge_images::imgproxy`: the first input byte holds flags, the rest (UTF-8) is
//! an `/img` path. It is parsed as sent (with a key configured) and again behind an
//! `unsafe` signature so the option and source parsers are always reached. Nothing may
//! panic; a parsed request's canonical options must parse back to the same options, its
//! plan (for a 640x480 JPEG) must validate, and a path rebuilt with `build_path` must
//! parse back to the same source and options.

#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_images::imgproxy::{Options, SigningKeys, build_path, parse_at};
use verge_imaging::{Format, Info};

const NOW: u64 = 1_700_000_000;

fn extension_name(f: Format) -> &'static str {
    match f {
        Format::Jpeg => "jpg",
        Format::Png => "png",
        Format::Gif => "gif",
        Format::Webp => "webp",
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let keys =
        SigningKeys::from_hex(&[("736563726574".into(), "68656c6c6f".into())]).expect("valid keys");
    let _ = parse_at(path, &keys, flags & 1 == 1, NOW);

    let unsigned = format!("/unsafe/{}", path.trim_start_matches('/'));
    let Ok(req) = parse_at(&unsigned, &SigningKeys::default(), true, NOW) else {
        return;
    };
    let canonical = req.options.canonical();
    let mut again = Options::parse(&canonical, NOW).expect("canonical options parse");
    assert_eq!(again.canonical(), canonical);
    again.expires = req.options.expires;
    assert_eq!(again, req.options);

    let info = Info {
        format: Format::Jpeg,
        width: 640,
        height: 480,
        orientation: 1,
        display_width: 640,
        display_height: 480,
        frames: 1,
        has_alpha: false,
        has_icc: false,
        has_exif: false,
        cmyk: false,
        bytes: 1000,
    };
    let accept = (flags & 2 == 2).then_some("image/webp");
    if let Ok(plan) = req.options.plan(req.extension, &info, accept, "watermark") {
        assert!(plan.pipeline.validate().is_ok());
        assert!(plan.output.validate().is_ok());
        assert_eq!(plan.output.format, Some(plan.format));
    }

    let extension = req.extension.map(extension_name);
    if let Ok(built) = build_path(&keys, &canonical, &req.source, extension, flags & 4 == 4) {
        let back = parse_at(&built, &keys, false, NOW).expect("a built path parses");
        assert_eq!(back.source, req.source);
        assert_eq!(back.extension, req.extension);
        again.expires = None;
        assert_eq!(back.options, again);
    }
});
