//! Text rendering with the bundled DejaVu Sans font (free licence, see
//! `fonts/LICENSE-DejaVu`): lays out lines, rasterises glyph coverage with ab_glyph and
//! draws an optional stroke by dilating the coverage mask.

use ab_glyph::{Font, FontRef, PxScale, ScaleFont, point};
use image::RgbaImage;

use crate::{Color, Error, Limits, Result};

/// Largest text block that may be outlined (the dilation is linear in the stroke width).
const MAX_STROKED_PIXELS: u64 = 4_000_000;

static DEJAVU_SANS: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Renders `text` (which may contain newlines) into a tightly sized RGBA image.
pub(crate) fn render(
    field: &str,
    text: &str,
    size: f32,
    color: Color,
    stroke_width: f32,
    stroke_color: Color,
    limits: &Limits,
) -> Result<RgbaImage> {
    let font = FontRef::try_from_slice(DEJAVU_SANS)
        .map_err(|e| Error::unsupported(format!("bundled font: {e}")))?;
    let scaled = font.as_scaled(PxScale::from(size));
    let line_height = scaled.height() + scaled.line_gap();
    let pad = stroke_width.ceil().max(0.0) as u32 + 1;

    // Layout: glyph positions relative to the top-left of the text block.
    let mut glyphs = Vec::new();
    let mut max_width = 0f32;
    for (i, line) in text.lines().enumerate() {
        let baseline = i as f32 * line_height + scaled.ascent();
        let mut caret = 0f32;
        let mut prev = None;
        for ch in line.chars() {
            if ch.is_control() {
                continue;
            }
            let id = scaled.glyph_id(ch);
            if let Some(p) = prev {
                caret += scaled.kern(p, id);
            }
            glyphs.push(id.with_scale_and_position(size, point(caret, baseline)));
            caret += scaled.h_advance(id);
            prev = Some(id);
        }
        max_width = max_width.max(caret);
    }
    let lines = text.lines().count().max(1) as f32;
    let w = (max_width.ceil() as u32).saturating_add(2 * pad).max(1);
    let h = ((lines * line_height).ceil() as u32)
        .saturating_add(2 * pad)
        .max(1);
    limits.check_output(field, u64::from(w), u64::from(h))?;

    let (wu, hu) = (w as usize, h as usize);
    let mut fill = vec![0f32; wu * hu];
    for g in glyphs {
        if let Some(outlined) = font.outline_glyph(g) {
            let b = outlined.px_bounds();
            outlined.draw(|x, y, c| {
                let px = b.min.x as i64 + i64::from(x) + i64::from(pad);
                let py = b.min.y as i64 + i64::from(y) + i64::from(pad);
                if px >= 0 && py >= 0 && (px as usize) < wu && (py as usize) < hu {
                    let v = &mut fill[py as usize * wu + px as usize];
                    *v = (*v + c).min(1.0);
                }
            });
        }
    }
    if stroke_width > 0.0 && u64::from(w) * u64::from(h) > MAX_STROKED_PIXELS {
        return Err(Error::invalid(
            format!("{field}.strokeWidth"),
            format!(
                "outlined text is limited to {MAX_STROKED_PIXELS} pixels, this block is {w}x{h}"
            ),
        ));
    }
    let stroke = if stroke_width > 0.0 {
        Some(dilate(&fill, wu, hu, stroke_width.round().max(1.0) as u32))
    } else {
        None
    };

    let mut out = RgbaImage::new(w, h);
    let fc = color.0;
    let sc = stroke_color.0;
    for (i, px) in out.pixels_mut().enumerate() {
        let af = fill[i] * f32::from(fc[3]) / 255.0;
        let as_ = stroke
            .as_ref()
            .map_or(0.0, |s| s[i] * f32::from(sc[3]) / 255.0);
        let a = af + as_ * (1.0 - af);
        if a <= 0.0 {
            continue;
        }
        let mut p = [0u8; 4];
        for c in 0..3 {
            let v = (f32::from(fc[c]) * af + f32::from(sc[c]) * as_ * (1.0 - af)) / a;
            p[c] = v.round().clamp(0.0, 255.0) as u8;
        }
        p[3] = (a * 255.0).round().clamp(0.0, 255.0) as u8;
        px.0 = p;
    }
    Ok(out)
}

/// Grey-scale dilation by `radius` pixels, alternating cross and square 3×3 structuring
/// elements (an octagon, close to a disc) so the cost is linear in the radius.
fn dilate(mask: &[f32], w: usize, h: usize, radius: u32) -> Vec<f32> {
    let mut cur = mask.to_vec();
    let mut next = vec![0f32; cur.len()];
    for pass in 0..radius {
        let square = pass % 2 == 1;
        for y in 0..h {
            for x in 0..w {
                let mut m = cur[y * w + x];
                for dy in -1i64..=1 {
                    for dx in -1i64..=1 {
                        if !square && dx != 0 && dy != 0 {
                            continue;
                        }
                        let (nx, ny) = (x as i64 + dx, y as i64 + dy);
                        if nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h {
                            m = m.max(cur[ny as usize * w + nx as usize]);
                        }
                    }
                }
                next[y * w + x] = m;
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }
    cur
}
