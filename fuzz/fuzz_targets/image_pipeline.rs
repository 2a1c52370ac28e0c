//! Fuzzes `verge_imaging`: the first 8 input bytes choose up to three operations and the
//! output format, the rest is the image. Decoding runs with small limits; nothing may
//! panic, and a successful result must respect the output limits.

#![no_main]

use libfuzzer_sys::fuzz_target;
use verge_imaging::{
    Blur, Crop, Filter, Fit, Flip, FlipDirection, Format, Gravity, Grayscale, Limits, Op,
    OutputOptions, Pipeline, Resize, Rotate, Sharpen, Text, Watermark, gif_frames, info, process,
};

const GRAVITIES: [Gravity; 10] = [
    Gravity::Centre,
    Gravity::North,
    Gravity::South,
    Gravity::East,
    Gravity::West,
    Gravity::NorthEast,
    Gravity::NorthWest,
    Gravity::SouthEast,
    Gravity::SouthWest,
    Gravity::Smart,
];

fn op(a: u8, b: u8) -> Op {
    let size = u32::from(b % 96) + 1;
    let gravity = GRAVITIES[usize::from(b) % GRAVITIES.len()];
    match a % 10 {
        0 => Op::Resize(Resize {
            width: Some(size),
            height: (a & 0x10 != 0).then_some(size / 2 + 1),
            fit: [Fit::Fit, Fit::Fill, Fit::Force][usize::from(a / 10) % 3],
            filter: if a & 0x20 != 0 {
                Filter::Lanczos3
            } else {
                Filter::Bilinear
            },
            gravity: if a & 0x40 != 0 {
                Gravity::Smart
            } else {
                Gravity::Centre
            },
            without_enlargement: a & 0x80 != 0,
        }),
        1 => Op::Crop(Crop {
            width: size,
            height: size / 2 + 1,
            x: (a & 0x10 != 0).then_some(u32::from(b % 7)),
            y: (a & 0x10 != 0).then_some(u32::from(b % 5)),
            gravity,
        }),
        2 => Op::Rotate(Rotate {
            degrees: u32::from(b % 4) * 90,
        }),
        3 => Op::Flip(Flip {
            direction: [
                FlipDirection::Horizontal,
                FlipDirection::Vertical,
                FlipDirection::Both,
            ][usize::from(b) % 3],
        }),
        4 => Op::Blur(Blur {
            sigma: f32::from(b % 8) + 0.5,
        }),
        5 => Op::Sharpen(Sharpen {
            sigma: f32::from(b % 4) + 0.5,
            amount: 1.0,
        }),
        6 => Op::Grayscale(Grayscale {}),
        7 => Op::Text(Text {
            text: "fz".into(),
            size: f32::from(b % 40) + 4.0,
            color: verge_imaging::Color::WHITE,
            stroke_width: f32::from(b % 3),
            stroke_color: verge_imaging::Color::BLACK,
            position: if gravity == Gravity::Smart {
                Gravity::Centre
            } else {
                gravity
            },
            offset_x: i32::from(b % 10) - 5,
            offset_y: 0,
            opacity: 0.5,
        }),
        8 => Op::Watermark(Watermark {
            asset: "missing".into(),
            position: Gravity::SouthEast,
            offset_x: 0,
            offset_y: 0,
            opacity: 1.0,
            scale: None,
            tile: false,
        }),
        _ => Op::Resize(Resize {
            width: Some(size),
            ..Resize::default()
        }),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let (ctl, image) = data.split_at(8);
    let limits = Limits {
        max_pixels: 1 << 20,
        max_input_bytes: 1 << 20,
        max_frames: 16,
        max_output_pixels: 1 << 20,
        max_metadata_bytes: 64 << 10,
    };
    let _ = info(image, &limits);
    let ops = (0..usize::from(ctl[0] % 4))
        .map(|i| op(ctl[1 + 2 * i], ctl[2 + 2 * i]))
        .collect();
    let format = [Format::Jpeg, Format::Png, Format::Webp][usize::from(ctl[7] % 3)];
    let output = OutputOptions {
        quality: (ctl[7] % 100).max(1),
        max_bytes: (ctl[7] & 0x40 != 0).then_some(2000),
        ..OutputOptions::new(format)
    };
    if let Ok(out) = process(image, &Pipeline { ops }, &output, &limits) {
        assert!(u64::from(out.width) * u64::from(out.height) <= limits.max_output_pixels);
        assert_eq!(out.format, format);
    }
    if ctl[7] & 0x80 != 0 {
        let _ = gif_frames(image, 4, &OutputOptions::new(Format::Png), &limits);
    }
});
