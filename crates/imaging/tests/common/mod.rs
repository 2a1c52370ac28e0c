//! Test media made at test time: nothing is downloaded.
#![allow(dead_code, clippy::needless_range_loop)]

use std::io::Cursor;

use image::{ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};

/// A smooth gradient with a little deterministic noise.
pub fn gradient(w: u32, h: u32) -> RgbImage {
    let mut seed = 0x1234_5678u32;
    RgbImage::from_fn(w, h, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = (seed & 15) as u8;
        Rgb([
            ((x * 255 / w.max(1)) as u8).saturating_add(n),
            ((y * 255 / h.max(1)) as u8).saturating_add(n),
            128u8.saturating_add(n),
        ])
    })
}

/// Pure noise (incompressible).
pub fn noise(w: u32, h: u32) -> RgbImage {
    let mut seed = 0x9E37_79B9u32;
    RgbImage::from_fn(w, h, |_, _| {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let b = seed.to_le_bytes();
        Rgb([b[0], b[1], b[2]])
    })
}

pub fn jpeg(img: &RgbImage, quality: i32) -> Vec<u8> {
    turbojpeg::compress(
        turbojpeg::Image {
            pixels: img.as_raw().as_slice(),
            width: img.width() as usize,
            pitch: img.width() as usize * 3,
            height: img.height() as usize,
            format: turbojpeg::PixelFormat::RGB,
        },
        quality,
        turbojpeg::Subsamp::Sub2x2,
    )
    .unwrap()
    .to_vec()
}

pub fn png(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

pub fn png_rgba(img: &RgbaImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgba8,
        )
        .unwrap();
    out
}

/// Lossless WebP from the pure-Rust encoder in `image`.
pub fn webp(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::webp::WebPEncoder::new_lossless(&mut out)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .unwrap();
    out
}

/// An animated GIF with `n` solid frames of different colours.
pub fn animated_gif(w: u32, h: u32, n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut out);
        let frames = (0..n).map(|i| {
            let c = [(i * 80 % 256) as u8, (255 - i * 60 % 256) as u8, 40, 255];
            image::Frame::from_parts(
                RgbaImage::from_pixel(w, h, Rgba(c)),
                0,
                0,
                image::Delay::from_numer_denom_ms(100, 1),
            )
        });
        enc.encode_frames(frames).unwrap();
    }
    out
}

/// A 1×1 GIF with `n` frames, written by hand (each frame is 14 bytes of valid LZW data).
pub fn many_frame_gif(n: usize) -> Vec<u8> {
    let mut g = Vec::new();
    g.extend_from_slice(b"GIF89a");
    g.extend_from_slice(&[1, 0, 1, 0, 0x80, 0, 0]); // 1x1, global colour table of 2
    g.extend_from_slice(&[0, 0, 0, 255, 255, 255]);
    for _ in 0..n {
        g.extend_from_slice(&[0x2C, 0, 0, 0, 0, 1, 0, 1, 0, 0]);
        g.extend_from_slice(&[0x02, 0x02, 0x44, 0x01, 0x00]);
    }
    g.push(0x3B);
    g
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut c = kind.to_vec();
    c.extend_from_slice(data);
    out.extend_from_slice(&c);
    out.extend_from_slice(&crc32(&c).to_be_bytes());
}

/// A PNG whose IHDR claims `w`×`h` RGB pixels, with a tiny (valid zlib, empty) IDAT.
pub fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut out, b"IHDR", &ihdr);
    png_chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut out, b"IEND", &[]);
    out
}

/// Inserts a JPEG segment right after SOI.
pub fn jpeg_with_segment(jpeg: &[u8], marker: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() + 2 <= 65535);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// An EXIF APP1 payload with only an orientation tag (little endian), padded to `pad` bytes.
pub fn exif_orientation(orientation: u16, pad: usize) -> Vec<u8> {
    let mut p = b"Exif\0\0".to_vec();
    p.extend_from_slice(b"II*\0");
    p.extend_from_slice(&8u32.to_le_bytes());
    p.extend_from_slice(&1u16.to_le_bytes());
    p.extend_from_slice(&0x0112u16.to_le_bytes());
    p.extend_from_slice(&3u16.to_le_bytes());
    p.extend_from_slice(&1u32.to_le_bytes());
    p.extend_from_slice(&orientation.to_le_bytes());
    p.extend_from_slice(&[0, 0]);
    p.extend_from_slice(&0u32.to_le_bytes());
    p.resize(p.len().max(pad), 0);
    p
}

/// Lists the JPEG markers before the scan.
pub fn jpeg_markers(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut pos = 2;
    while pos + 4 <= b.len() && b[pos] == 0xFF {
        let m = b[pos + 1];
        out.push(m);
        if m == 0xDA {
            break;
        }
        let len = u16::from_be_bytes([b[pos + 2], b[pos + 3]]) as usize;
        pos += 2 + len;
    }
    out
}

pub fn decode_rgb(bytes: &[u8]) -> RgbImage {
    image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .unwrap()
        .decode()
        .unwrap()
        .to_rgb8()
}

pub fn mean(img: &RgbImage) -> [f64; 3] {
    let mut s = [0f64; 3];
    for p in img.pixels() {
        for c in 0..3 {
            s[c] += f64::from(p.0[c]);
        }
    }
    let n = f64::from(img.width() * img.height());
    [s[0] / n, s[1] / n, s[2] / n]
}

/// Mean absolute difference between horizontally adjacent pixels (a sharpness measure).
pub fn detail(img: &RgbImage) -> f64 {
    let mut s = 0f64;
    let mut n = 0f64;
    for y in 0..img.height() {
        for x in 1..img.width() {
            let a = img.get_pixel(x, y).0;
            let b = img.get_pixel(x - 1, y).0;
            s += (f64::from(a[1]) - f64::from(b[1])).abs();
            n += 1.0;
        }
    }
    s / n
}
