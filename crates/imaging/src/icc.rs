//! ICC colour management: an embedded RGB profile other than sRGB (Display P3 from phones,
//! Adobe RGB from cameras) is converted to sRGB with moxcms, since every output is written
//! without a profile. Profiles that cannot be parsed, or are not RGB, are ignored (the
//! pixels are taken as sRGB, as browsers do).

use image::DynamicImage;
use moxcms::{ColorProfile, DataColorSpace, Layout, TransformOptions};

/// Largest ICC profile accepted (bigger ones are ignored).
const MAX_ICC_BYTES: usize = 1 << 20;

/// Reassembles the ICC profile of a JPEG from its APP2 `ICC_PROFILE` chunks.
pub(crate) fn jpeg_icc(b: &[u8]) -> Option<Vec<u8>> {
    let mut chunks: Vec<(u8, &[u8])> = Vec::new();
    let mut pos = 2usize;
    while b.get(pos) == Some(&0xFF) {
        let marker = *b.get(pos + 1)?;
        if marker == 0xFF {
            pos += 1;
            continue;
        }
        if matches!(marker, 0x01 | 0xD0..=0xD7) {
            pos += 2;
            continue;
        }
        if matches!(marker, 0xDA | 0xD9) {
            break;
        }
        let len = usize::from(u16::from_be_bytes([*b.get(pos + 2)?, *b.get(pos + 3)?]));
        let seg = b.get(pos + 4..pos + 2 + len)?;
        if marker == 0xE2 && seg.len() > 14 && seg.starts_with(b"ICC_PROFILE\0") {
            chunks.push((seg[12], &seg[14..]));
        }
        pos += 2 + len;
    }
    if chunks.is_empty() {
        return None;
    }
    chunks.sort_by_key(|c| c.0);
    let total: usize = chunks.iter().map(|c| c.1.len()).sum();
    if total > MAX_ICC_BYTES {
        return None;
    }
    Some(
        chunks
            .into_iter()
            .flat_map(|c| c.1.iter().copied())
            .collect(),
    )
}

/// Converts `img` (8-bit RGB/RGBA) from the colour space of `icc` to sRGB, in place.
pub(crate) fn to_srgb(img: &mut DynamicImage, icc: &[u8]) {
    if icc.len() > MAX_ICC_BYTES || icc.windows(4).any(|w| w == b"sRGB") {
        return;
    }
    let Ok(src) = ColorProfile::new_from_slice(icc) else {
        return;
    };
    if src.color_space != DataColorSpace::Rgb {
        return;
    }
    let dst = ColorProfile::new_srgb();
    let (layout, buf): (Layout, &mut [u8]) = match img {
        DynamicImage::ImageRgb8(i) => (Layout::Rgb, i),
        DynamicImage::ImageRgba8(i) => (Layout::Rgba, i),
        _ => return,
    };
    let Ok(t) = src.create_transform_8bit(layout, &dst, layout, TransformOptions::default()) else {
        return;
    };
    let mut out = vec![0u8; buf.len()];
    if t.transform(buf, &mut out).is_ok() {
        buf.copy_from_slice(&out);
    }
}
