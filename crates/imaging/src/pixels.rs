//! Pixel-level helpers on 8-bit RGB/RGBA images: SIMD resizing (fast_image_resize),
//! alpha blending, entropy, sharpening. No decoding or encoding here.

use fast_image_resize as fir;
use image::{DynamicImage, GrayImage, RgbImage, RgbaImage};

use crate::ops::Filter;
use crate::{Error, Result};

fn fir_filter(filter: Filter) -> fir::ResizeAlg {
    match filter {
        Filter::Nearest => fir::ResizeAlg::Nearest,
        Filter::Bilinear => fir::ResizeAlg::Convolution(fir::FilterType::Bilinear),
        Filter::CatmullRom => fir::ResizeAlg::Convolution(fir::FilterType::CatmullRom),
        Filter::Mitchell => fir::ResizeAlg::Convolution(fir::FilterType::Mitchell),
        Filter::Lanczos3 => fir::ResizeAlg::Convolution(fir::FilterType::Lanczos3),
    }
}

fn resize_err(e: impl std::fmt::Display) -> Error {
    Error::invalid("resize", format!("resizer failed: {e}"))
}

/// Resizes (a `crop` window of) `img` to exactly `width`×`height`.
/// `crop` is `(left, top, width, height)` in source pixels.
pub(crate) fn resize(
    img: &DynamicImage,
    width: u32,
    height: u32,
    filter: Filter,
    crop: Option<(f64, f64, f64, f64)>,
) -> Result<DynamicImage> {
    if crop.is_none() && img.width() == width && img.height() == height {
        return Ok(img.clone());
    }
    let (buf, pixel_type): (&[u8], _) = match img {
        DynamicImage::ImageRgb8(i) => (i.as_raw(), fir::PixelType::U8x3),
        DynamicImage::ImageRgba8(i) => (i.as_raw(), fir::PixelType::U8x4),
        _ => return Err(resize_err("unexpected pixel layout")),
    };
    let src = fir::images::ImageRef::new(img.width(), img.height(), buf, pixel_type)
        .map_err(resize_err)?;
    let mut dst = fir::images::Image::new(width, height, pixel_type);
    let mut options = fir::ResizeOptions::new().resize_alg(fir_filter(filter));
    if let Some((l, t, w, h)) = crop {
        options = options.crop(l, t, w, h);
    }
    fir::Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(resize_err)?;
    let out = dst.into_vec();
    let image = match pixel_type {
        fir::PixelType::U8x3 => RgbImage::from_raw(width, height, out).map(DynamicImage::ImageRgb8),
        _ => RgbaImage::from_raw(width, height, out).map(DynamicImage::ImageRgba8),
    };
    image.ok_or_else(|| resize_err("short output buffer"))
}

/// Blends `src` onto `dst` with its top-left corner at (`x`, `y`), scaled by `opacity`.
/// Parts outside `dst` are clipped.
pub(crate) fn blend(dst: &mut DynamicImage, src: &RgbaImage, x: i64, y: i64, opacity: f32) {
    let (dw, dh) = (i64::from(dst.width()), i64::from(dst.height()));
    let (sw, sh) = (i64::from(src.width()), i64::from(src.height()));
    let x0 = x.max(0);
    let y0 = y.max(0);
    let x1 = (x + sw).min(dw);
    let y1 = (y + sh).min(dh);
    if x0 >= x1 || y0 >= y1 {
        return;
    }
    let op = (opacity.clamp(0.0, 1.0) * 256.0) as u32;
    for dy in y0..y1 {
        let sy = (dy - y) as u32;
        for dx in x0..x1 {
            let sx = (dx - x) as u32;
            let s = src.get_pixel(sx, sy).0;
            // alpha in 0..=255*256
            let a = u32::from(s[3]) * op / 256;
            if a == 0 {
                continue;
            }
            match dst {
                DynamicImage::ImageRgb8(d) => {
                    let p = &mut d.get_pixel_mut(dx as u32, dy as u32).0;
                    for c in 0..3 {
                        p[c] =
                            ((u32::from(s[c]) * a + u32::from(p[c]) * (255 - a) + 127) / 255) as u8;
                    }
                }
                DynamicImage::ImageRgba8(d) => {
                    let p = &mut d.get_pixel_mut(dx as u32, dy as u32).0;
                    let da = u32::from(p[3]);
                    // out_a = a + da * (1 - a), all scaled by 255
                    let out_a = a * 255 + da * (255 - a);
                    if out_a == 0 {
                        continue;
                    }
                    for c in 0..3 {
                        let v = u32::from(s[c]) * a * 255 + u32::from(p[c]) * da * (255 - a);
                        p[c] = ((v + out_a / 2) / out_a).min(255) as u8;
                    }
                    p[3] = ((out_a + 127) / 255) as u8;
                }
                _ => {}
            }
        }
    }
}

/// Shannon entropy of a histogram.
fn entropy(hist: &[u32; 256]) -> f64 {
    let total: u64 = hist.iter().map(|&v| u64::from(v)).sum();
    if total == 0 {
        return 0.0;
    }
    let total = total as f64;
    hist.iter()
        .filter(|&&v| v > 0)
        .map(|&v| {
            let p = f64::from(v) / total;
            -p * p.log2()
        })
        .sum()
}

fn region_entropy(g: &GrayImage, x0: u32, y0: u32, x1: u32, y1: u32) -> f64 {
    let mut hist = [0u32; 256];
    for y in y0..y1 {
        for x in x0..x1 {
            hist[usize::from(g.get_pixel(x, y).0[0])] += 1;
        }
    }
    entropy(&hist)
}

/// Top-left corner of the `cw`×`ch` window of `img` with the most detail: edges with the
/// lower luminance entropy are trimmed first (the "entropy" strategy of libvips).
pub(crate) fn smart_crop_origin(img: &DynamicImage, cw: u32, ch: u32) -> (u32, u32) {
    let (w, h) = (img.width(), img.height());
    if cw >= w && ch >= h {
        return (0, 0);
    }
    // Work on a small luminance thumbnail.
    let step = (w.max(h) / 256).max(1);
    let (gw, gh) = (w.div_ceil(step), h.div_ceil(step));
    let mut g = GrayImage::new(gw, gh);
    for gy in 0..gh {
        for gx in 0..gw {
            let p = match img {
                DynamicImage::ImageRgb8(i) => i.get_pixel(gx * step, gy * step).0,
                DynamicImage::ImageRgba8(i) => {
                    let p = i.get_pixel(gx * step, gy * step).0;
                    [p[0], p[1], p[2]]
                }
                _ => [0, 0, 0],
            };
            let l = (u32::from(p[0]) * 299 + u32::from(p[1]) * 587 + u32::from(p[2]) * 114) / 1000;
            g.put_pixel(gx, gy, image::Luma([l as u8]));
        }
    }
    let tw = (cw / step).clamp(1, gw);
    let th = (ch / step).clamp(1, gh);
    let (mut left, mut right) = (0u32, gw);
    while right - left > tw {
        let slice = (right - left - tw).min((gw / 16).max(1));
        let el = region_entropy(&g, left, 0, left + slice, gh);
        let er = region_entropy(&g, right - slice, 0, right, gh);
        if el < er {
            left += slice;
        } else {
            right -= slice;
        }
    }
    let (mut top, mut bottom) = (0u32, gh);
    while bottom - top > th {
        let slice = (bottom - top - th).min((gh / 16).max(1));
        let et = region_entropy(&g, left, top, right, top + slice);
        let eb = region_entropy(&g, left, bottom - slice, right, bottom);
        if et < eb {
            top += slice;
        } else {
            bottom -= slice;
        }
    }
    (
        (left * step).min(w.saturating_sub(cw)),
        (top * step).min(h.saturating_sub(ch)),
    )
}

/// Unsharp mask: `out = img + amount * (img - blur(img, sigma))`, alpha untouched.
pub(crate) fn sharpen(img: &DynamicImage, sigma: f32, amount: f32) -> DynamicImage {
    let blurred = img.fast_blur(sigma);
    let apply = |o: &mut [u8], b: &[u8], channels: usize| {
        for (po, pb) in o.chunks_exact_mut(channels).zip(b.chunks_exact(channels)) {
            for c in 0..3 {
                let v = f32::from(po[c]) + amount * (f32::from(po[c]) - f32::from(pb[c]));
                po[c] = v.round().clamp(0.0, 255.0) as u8;
            }
        }
    };
    let mut out = img.clone();
    match (&mut out, &blurred) {
        (DynamicImage::ImageRgb8(o), DynamicImage::ImageRgb8(b)) => apply(o, b, 3),
        (DynamicImage::ImageRgba8(o), DynamicImage::ImageRgba8(b)) => apply(o, b, 4),
        _ => {}
    }
    out
}

/// Luminance grayscale, keeping the RGB/RGBA layout.
pub(crate) fn grayscale(img: &mut DynamicImage) {
    let apply = |buf: &mut [u8], channels: usize| {
        for p in buf.chunks_exact_mut(channels) {
            let l = (u32::from(p[0]) * 299 + u32::from(p[1]) * 587 + u32::from(p[2]) * 114) / 1000;
            p[0] = l as u8;
            p[1] = l as u8;
            p[2] = l as u8;
        }
    };
    match img {
        DynamicImage::ImageRgb8(i) => apply(i, 3),
        DynamicImage::ImageRgba8(i) => apply(i, 4),
        _ => {}
    }
}

/// Flattens RGBA onto an opaque background colour.
pub(crate) fn flatten(img: &RgbaImage, bg: [u8; 3]) -> RgbImage {
    let mut out = RgbImage::new(img.width(), img.height());
    for (o, p) in out.pixels_mut().zip(img.pixels()) {
        let a = u32::from(p.0[3]);
        for ((oc, &pc), &bc) in o.0.iter_mut().zip(&p.0[..3]).zip(&bg) {
            *oc = ((u32::from(pc) * a + u32::from(bc) * (255 - a) + 127) / 255) as u8;
        }
    }
    out
}
