//! Times the benchmark path on a synthetic 12-MP JPEG: fit 1200 px, watermark, JPEG q80.
//!
//! `cargo run --release -p verge-imaging --example thumbnail_timing [iterations]`

use std::time::Instant;

use verge_imaging::{
    Format, Gravity, Limits, OutputOptions, Pipeline, Watermark, process, thumbnail_jpeg,
};

fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let (w, h) = (4000u32, 3000u32);
    // A 12-MP gradient with some texture, as PNG first, then re-encoded as JPEG q90.
    let mut rgb = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            let t = ((x ^ y) & 31) as u8;
            rgb.extend_from_slice(&[(x * 255 / w) as u8 ^ t, (y * 255 / h) as u8, 128 ^ t]);
        }
    }
    let png = {
        let img = image::RgbImage::from_raw(w, h, rgb).expect("buffer");
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    };
    let limits = Limits::default();
    let src = process(
        &png,
        &Pipeline::default(),
        &OutputOptions {
            quality: 90,
            ..OutputOptions::new(Format::Jpeg)
        },
        &limits,
    )
    .expect("jpeg");
    let mark = {
        let img = image::RgbaImage::from_pixel(300, 100, image::Rgba([255, 255, 255, 160]));
        let mut out = Vec::new();
        img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .expect("png");
        out
    };
    let wm = Watermark {
        asset: "wm".into(),
        position: Gravity::SouthEast,
        offset_x: 20,
        offset_y: 20,
        opacity: 0.6,
        scale: Some(0.2),
        tile: false,
    };
    let start = Instant::now();
    let mut bytes = 0;
    for _ in 0..iterations {
        let out =
            thumbnail_jpeg(&src.bytes, 1200, 80, Some((&mark, &wm)), &limits).expect("thumbnail");
        bytes = out.bytes.len();
    }
    let per = start.elapsed() / iterations;
    println!(
        "{w}x{h} jpeg ({} bytes) -> 1200 px + watermark, q80 ({bytes} bytes): {per:?} per image",
        src.bytes.len()
    );
}
