//! The operations of a [`Pipeline`]: serde types, bounds validation (every numeric field is
//! bounded; errors name the field as `ops[i].field`) and their application to decoded pixels.

use image::DynamicImage;
use serde::{Deserialize, Serialize};

use crate::types::asset;
use crate::{Assets, Color, Error, Gravity, Limits, Result, decode, pixels, probe, text};

/// Largest width, height, offset or coordinate any operation accepts.
pub const MAX_DIMENSION: u32 = 16_384;
/// Most operations in one pipeline.
pub const MAX_OPS: usize = 32;
/// Most characters in a text overlay.
pub const MAX_TEXT_CHARS: usize = 1_000;

/// A list of operations applied in order between one decode and one encode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// The operations, applied in order.
    #[serde(default)]
    pub ops: Vec<Op>,
}

/// One image operation. JSON: `{"op": "resize", "width": 1200}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Op {
    /// Scale to a box (fit / fill / force).
    Resize(Resize),
    /// Cut out a rectangle, or a window placed by gravity (including `smart`).
    Crop(Crop),
    /// Rotate by a multiple of 90 degrees.
    Rotate(Rotate),
    /// Mirror horizontally, vertically or both.
    Flip(Flip),
    /// Draw an image asset over the image.
    Watermark(Watermark),
    /// Draw text over the image.
    Text(Text),
    /// Gaussian-like blur.
    Blur(Blur),
    /// Unsharp mask.
    Sharpen(Sharpen),
    /// Convert to grey levels.
    Grayscale(Grayscale),
}

/// How [`Resize`] maps the image to the box.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Fit {
    /// Keep the aspect ratio, fit inside the box.
    #[default]
    Fit,
    /// Keep the aspect ratio, cover the box and crop the overflow (by `gravity`).
    Fill,
    /// Stretch to exactly the box.
    Force,
}

/// Resampling filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Filter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear.
    Bilinear,
    /// Catmull-Rom (bicubic).
    CatmullRom,
    /// Mitchell-Netravali.
    Mitchell,
    /// Lanczos with 3 lobes (default).
    #[default]
    Lanczos3,
}

/// `{"op":"resize","width":1200,"height":800,"fit":"fill","gravity":"smart"}`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resize {
    /// Box width (1..=16384); derived from the aspect ratio when absent.
    #[serde(default)]
    pub width: Option<u32>,
    /// Box height (1..=16384); derived from the aspect ratio when absent.
    #[serde(default)]
    pub height: Option<u32>,
    /// How to map the image to the box.
    #[serde(default)]
    pub fit: Fit,
    /// Resampling filter.
    #[serde(default)]
    pub filter: Filter,
    /// Which part to keep with `fit: fill`.
    #[serde(default)]
    pub gravity: Gravity,
    /// Never scale up.
    #[serde(default)]
    pub without_enlargement: bool,
}

/// `{"op":"crop","width":100,"height":100,"x":10,"y":20}` or with `gravity`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Crop {
    /// Window width (1..=16384); clamped to the image when placed by gravity.
    pub width: u32,
    /// Window height (1..=16384); clamped to the image when placed by gravity.
    pub height: u32,
    /// Left edge; with `y`, an explicit rectangle that must lie inside the image.
    #[serde(default)]
    pub x: Option<u32>,
    /// Top edge.
    #[serde(default)]
    pub y: Option<u32>,
    /// Placement when `x`/`y` are absent.
    #[serde(default)]
    pub gravity: Gravity,
}

/// `{"op":"rotate","degrees":90}` (0, 90, 180 or 270, clockwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rotate {
    /// Clockwise angle: 0, 90, 180 or 270.
    pub degrees: u32,
}

/// Mirror axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FlipDirection {
    /// Left ↔ right.
    #[default]
    Horizontal,
    /// Top ↔ bottom.
    Vertical,
    /// Both (same as a 180° rotation).
    Both,
}

/// `{"op":"flip","direction":"vertical"}`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flip {
    /// The mirror axis.
    #[serde(default)]
    pub direction: FlipDirection,
}

fn one() -> f32 {
    1.0
}

fn south_east() -> Gravity {
    Gravity::SouthEast
}

/// `{"op":"watermark","asset":"logo","position":"southEast","offsetX":16,"offsetY":16,
/// "opacity":0.5,"scale":0.2,"tile":false}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Watermark {
    /// Name of the asset holding the watermark image.
    pub asset: String,
    /// Anchor (not `smart`).
    #[serde(default = "south_east")]
    pub position: Gravity,
    /// Horizontal distance from the anchored edge (or shift when centred), in pixels.
    #[serde(default)]
    pub offset_x: i32,
    /// Vertical distance from the anchored edge, in pixels.
    #[serde(default)]
    pub offset_y: i32,
    /// 0.0..=1.0.
    #[serde(default = "one")]
    pub opacity: f32,
    /// Watermark width as a fraction of the image width (0.01..=1); natural size if absent.
    #[serde(default)]
    pub scale: Option<f32>,
    /// Repeat over the whole image; offsets are then the gaps between tiles.
    #[serde(default)]
    pub tile: bool,
}

fn text_size() -> f32 {
    32.0
}

fn white() -> Color {
    Color::WHITE
}

fn black() -> Color {
    Color::BLACK
}

/// `{"op":"text","text":"hello","size":48,"color":"#ffffff","strokeWidth":2,
/// "strokeColor":"#000000","position":"south","offsetY":20}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Text {
    /// The text; newlines start new lines. At most 1000 characters.
    pub text: String,
    /// Font size in pixels (1..=1000).
    #[serde(default = "text_size")]
    pub size: f32,
    /// Fill colour.
    #[serde(default = "white")]
    pub color: Color,
    /// Outline width in pixels (0..=20).
    #[serde(default)]
    pub stroke_width: f32,
    /// Outline colour.
    #[serde(default = "black")]
    pub stroke_color: Color,
    /// Anchor (not `smart`).
    #[serde(default)]
    pub position: Gravity,
    /// Horizontal offset from the anchored edge, in pixels.
    #[serde(default)]
    pub offset_x: i32,
    /// Vertical offset from the anchored edge, in pixels.
    #[serde(default)]
    pub offset_y: i32,
    /// 0.0..=1.0.
    #[serde(default = "one")]
    pub opacity: f32,
}

/// `{"op":"blur","sigma":2.5}` (0.1..=100).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Blur {
    /// Standard deviation in pixels.
    pub sigma: f32,
}

/// `{"op":"sharpen","sigma":1.0,"amount":1.0}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sharpen {
    /// Radius of the unsharp mask (0.1..=10).
    #[serde(default = "one")]
    pub sigma: f32,
    /// Strength (0..=10).
    #[serde(default = "one")]
    pub amount: f32,
}

/// `{"op":"grayscale"}`
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grayscale {}

pub(crate) fn check_dim(field: &str, v: u32) -> Result<()> {
    if v == 0 || v > MAX_DIMENSION {
        return Err(Error::invalid(
            field,
            format!("must be between 1 and {MAX_DIMENSION}, got {v}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_offset(field: &str, v: i32) -> Result<()> {
    if v.unsigned_abs() > MAX_DIMENSION {
        return Err(Error::invalid(
            field,
            format!("must be between -{MAX_DIMENSION} and {MAX_DIMENSION}, got {v}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_f32(field: &str, v: f32, lo: f32, hi: f32) -> Result<()> {
    if !(lo..=hi).contains(&v) {
        return Err(Error::invalid(
            field,
            format!("must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(())
}

pub(crate) fn check_anchor(field: &str, g: Gravity) -> Result<()> {
    if g == Gravity::Smart {
        return Err(Error::invalid(field, "`smart` is only valid for crops"));
    }
    Ok(())
}

pub(crate) fn check_text(field: &str, t: &str) -> Result<()> {
    let n = t.chars().count();
    if n == 0 || n > MAX_TEXT_CHARS {
        return Err(Error::invalid(
            field,
            format!("must have 1 to {MAX_TEXT_CHARS} characters, got {n}"),
        ));
    }
    Ok(())
}

impl Pipeline {
    /// Checks every field against its bounds; errors name the field (`ops[1].width`).
    pub fn validate(&self) -> Result<()> {
        if self.ops.len() > MAX_OPS {
            return Err(Error::invalid(
                "ops",
                format!("at most {MAX_OPS} operations, got {}", self.ops.len()),
            ));
        }
        for (i, op) in self.ops.iter().enumerate() {
            op.validate(&format!("ops[{i}]"))?;
        }
        Ok(())
    }

    /// Parses and validates a pipeline from JSON.
    pub fn from_json(json: &str) -> Result<Pipeline> {
        let p: Pipeline = serde_json::from_str(json)?;
        p.validate()?;
        Ok(p)
    }
}

impl Op {
    /// Checks every field; `at` prefixes the field names in errors.
    pub fn validate(&self, at: &str) -> Result<()> {
        let f = |name: &str| format!("{at}.{name}");
        match self {
            Op::Resize(r) => {
                if r.width.is_none() && r.height.is_none() {
                    return Err(Error::invalid(
                        f("width"),
                        "resize needs a width, a height or both",
                    ));
                }
                if let Some(w) = r.width {
                    check_dim(&f("width"), w)?;
                }
                if let Some(h) = r.height {
                    check_dim(&f("height"), h)?;
                }
                if r.gravity == Gravity::Smart && r.fit != Fit::Fill {
                    return Err(Error::invalid(f("gravity"), "`smart` needs fit `fill`"));
                }
            }
            Op::Crop(c) => {
                check_dim(&f("width"), c.width)?;
                check_dim(&f("height"), c.height)?;
                match (c.x, c.y) {
                    (Some(x), Some(y)) => {
                        if x > MAX_DIMENSION {
                            return Err(Error::invalid(
                                f("x"),
                                format!("must be at most {MAX_DIMENSION}, got {x}"),
                            ));
                        }
                        if y > MAX_DIMENSION {
                            return Err(Error::invalid(
                                f("y"),
                                format!("must be at most {MAX_DIMENSION}, got {y}"),
                            ));
                        }
                    }
                    (None, None) => {}
                    (Some(_), None) => return Err(Error::invalid(f("y"), "x and y go together")),
                    (None, Some(_)) => return Err(Error::invalid(f("x"), "x and y go together")),
                }
            }
            Op::Rotate(r) => {
                if !matches!(r.degrees, 0 | 90 | 180 | 270) {
                    return Err(Error::invalid(
                        f("degrees"),
                        format!("must be 0, 90, 180 or 270, got {}", r.degrees),
                    ));
                }
            }
            Op::Flip(_) | Op::Grayscale(_) => {}
            Op::Watermark(w) => {
                if w.asset.is_empty() || w.asset.len() > 256 {
                    return Err(Error::invalid(
                        f("asset"),
                        "must be a name of 1 to 256 bytes",
                    ));
                }
                check_anchor(&f("position"), w.position)?;
                check_offset(&f("offsetX"), w.offset_x)?;
                check_offset(&f("offsetY"), w.offset_y)?;
                check_f32(&f("opacity"), w.opacity, 0.0, 1.0)?;
                if let Some(s) = w.scale {
                    check_f32(&f("scale"), s, 0.01, 1.0)?;
                }
                if w.tile && (w.offset_x < 0 || w.offset_y < 0) {
                    return Err(Error::invalid(f("offsetX"), "tile gaps cannot be negative"));
                }
            }
            Op::Text(t) => {
                check_text(&f("text"), &t.text)?;
                check_f32(&f("size"), t.size, 1.0, 1000.0)?;
                check_f32(&f("strokeWidth"), t.stroke_width, 0.0, 20.0)?;
                check_anchor(&f("position"), t.position)?;
                check_offset(&f("offsetX"), t.offset_x)?;
                check_offset(&f("offsetY"), t.offset_y)?;
                check_f32(&f("opacity"), t.opacity, 0.0, 1.0)?;
            }
            Op::Blur(b) => check_f32(&f("sigma"), b.sigma, 0.1, 100.0)?,
            Op::Sharpen(s) => {
                check_f32(&f("sigma"), s.sigma, 0.1, 10.0)?;
                check_f32(&f("amount"), s.amount, 0.0, 10.0)?;
            }
        }
        Ok(())
    }
}

/// The output size of a resize and, for `fill`, the source window (w, h) it keeps, both
/// computed from the source size `src`.
pub(crate) struct ResizePlan {
    pub out: (u32, u32),
    /// Size of the source window that maps onto `out`.
    pub window: (f64, f64),
}

fn round_dim(v: f64) -> u32 {
    (v.round() as u32).max(1)
}

impl Resize {
    pub(crate) fn plan(&self, src: (u32, u32)) -> ResizePlan {
        let (sw, sh) = (f64::from(src.0), f64::from(src.1));
        let full = (sw, sh);
        let cap = |s: f64| {
            if self.without_enlargement {
                s.min(1.0)
            } else {
                s
            }
        };
        match (self.width, self.height) {
            (Some(w), None) => {
                let s = cap(f64::from(w) / sw);
                ResizePlan {
                    out: (round_dim(sw * s), round_dim(sh * s)),
                    window: full,
                }
            }
            (None, Some(h)) => {
                let s = cap(f64::from(h) / sh);
                ResizePlan {
                    out: (round_dim(sw * s), round_dim(sh * s)),
                    window: full,
                }
            }
            (Some(w), Some(h)) => {
                let (bw, bh) = (f64::from(w), f64::from(h));
                match self.fit {
                    Fit::Fit => {
                        let s = cap((bw / sw).min(bh / sh));
                        ResizePlan {
                            out: (round_dim(sw * s), round_dim(sh * s)),
                            window: full,
                        }
                    }
                    Fit::Force => {
                        let (cw, ch) = if self.without_enlargement {
                            (bw.min(sw), bh.min(sh))
                        } else {
                            (bw, bh)
                        };
                        ResizePlan {
                            out: (round_dim(cw), round_dim(ch)),
                            window: full,
                        }
                    }
                    Fit::Fill => {
                        let s = (bw / sw).max(bh / sh);
                        let window = ((bw / s).min(sw), (bh / s).min(sh));
                        let out = if self.without_enlargement && s > 1.0 {
                            (round_dim(window.0), round_dim(window.1))
                        } else {
                            (w, h)
                        };
                        ResizePlan { out, window }
                    }
                }
            }
            (None, None) => ResizePlan {
                out: src,
                window: full,
            },
        }
    }

    /// The smallest decoded size that still needs no upscaling for this resize.
    pub(crate) fn min_source(&self, src: (u32, u32)) -> (u32, u32) {
        let p = self.plan(src);
        let need = |out: u32, window: f64, full: u32| {
            (f64::from(out) * f64::from(full) / window)
                .ceil()
                .min(f64::from(full)) as u32
        };
        (
            need(p.out.0, p.window.0, src.0),
            need(p.out.1, p.window.1, src.1),
        )
    }
}

/// Everything an operation may need besides the image.
pub(crate) struct Ctx<'a> {
    pub limits: &'a Limits,
    pub assets: &'a dyn Assets,
}

/// Applies `op` (at index `i`); `planned_src` is the size the resize plan is computed from
/// when the image was decoded at a reduced DCT scale.
pub(crate) fn apply(
    op: &Op,
    i: usize,
    img: DynamicImage,
    planned_src: Option<(u32, u32)>,
    ctx: &Ctx<'_>,
) -> Result<DynamicImage> {
    let f = |name: &str| format!("ops[{i}].{name}");
    Ok(match op {
        Op::Resize(r) => {
            let src = planned_src.unwrap_or((img.width(), img.height()));
            let plan = r.plan(src);
            ctx.limits.check_output(
                &format!("ops[{i}]"),
                u64::from(plan.out.0),
                u64::from(plan.out.1),
            )?;
            // Map the planned window onto the decoded image (which may be DCT-scaled).
            let kx = f64::from(img.width()) / f64::from(src.0);
            let ky = f64::from(img.height()) / f64::from(src.1);
            let ww = (plan.window.0 * kx).min(f64::from(img.width()));
            let wh = (plan.window.1 * ky).min(f64::from(img.height()));
            let full = (ww - f64::from(img.width())).abs() < 1e-6
                && (wh - f64::from(img.height())).abs() < 1e-6;
            let crop = if full {
                None
            } else {
                let (cw, ch) = (ww.round().max(1.0) as u32, wh.round().max(1.0) as u32);
                let (x, y) = if r.gravity == Gravity::Smart {
                    let (x, y) = pixels::smart_crop_origin(&img, cw, ch);
                    (f64::from(x), f64::from(y))
                } else {
                    let (x, y) = r
                        .gravity
                        .place((img.width(), img.height()), (cw, ch), (0, 0));
                    (x as f64, y as f64)
                };
                let x = x.clamp(0.0, (f64::from(img.width()) - ww).max(0.0));
                let y = y.clamp(0.0, (f64::from(img.height()) - wh).max(0.0));
                Some((x, y, ww, wh))
            };
            pixels::resize(&img, plan.out.0, plan.out.1, r.filter, crop)?
        }
        Op::Crop(c) => {
            let (w, h) = (img.width(), img.height());
            let (x, y, cw, ch) = match (c.x, c.y) {
                (Some(x), Some(y)) => {
                    if u64::from(x) + u64::from(c.width) > u64::from(w) {
                        return Err(Error::invalid(
                            f("width"),
                            format!("crop x {x} + width {} exceeds the image width {w}", c.width),
                        ));
                    }
                    if u64::from(y) + u64::from(c.height) > u64::from(h) {
                        return Err(Error::invalid(
                            f("height"),
                            format!(
                                "crop y {y} + height {} exceeds the image height {h}",
                                c.height
                            ),
                        ));
                    }
                    (x, y, c.width, c.height)
                }
                _ => {
                    let (cw, ch) = (c.width.min(w), c.height.min(h));
                    let (x, y) = if c.gravity == Gravity::Smart {
                        pixels::smart_crop_origin(&img, cw, ch)
                    } else {
                        let (x, y) = c.gravity.place((w, h), (cw, ch), (0, 0));
                        (x.max(0) as u32, y.max(0) as u32)
                    };
                    (x, y, cw, ch)
                }
            };
            if x == 0 && y == 0 && cw == w && ch == h {
                img
            } else {
                img.crop_imm(x, y, cw, ch)
            }
        }
        Op::Rotate(r) => match r.degrees {
            90 => img.rotate90(),
            180 => img.rotate180(),
            270 => img.rotate270(),
            _ => img,
        },
        Op::Flip(fl) => match fl.direction {
            FlipDirection::Horizontal => img.fliph(),
            FlipDirection::Vertical => img.flipv(),
            FlipDirection::Both => img.rotate180(),
        },
        Op::Watermark(w) => {
            let mut img = img;
            watermark(&mut img, w, &f("asset"), ctx)?;
            img
        }
        Op::Text(t) => {
            let mut img = img;
            let layer = text::render(
                &format!("ops[{i}]"),
                &t.text,
                t.size,
                t.color,
                t.stroke_width,
                t.stroke_color,
                ctx.limits,
            )?;
            let (x, y) = t.position.place(
                (img.width(), img.height()),
                (layer.width(), layer.height()),
                (t.offset_x, t.offset_y),
            );
            pixels::blend(&mut img, &layer, x, y, t.opacity);
            img
        }
        Op::Blur(b) => img.fast_blur(b.sigma),
        Op::Sharpen(s) => pixels::sharpen(&img, s.sigma, s.amount),
        Op::Grayscale(_) => {
            let mut img = img;
            pixels::grayscale(&mut img);
            img
        }
    })
}

/// Decodes an asset (with the same limits as the input) to RGBA.
pub(crate) fn decode_asset(field: &str, name: &str, ctx: &Ctx<'_>) -> Result<image::RgbaImage> {
    let bytes = asset(ctx.assets, field, name)?;
    let header = probe::probe(&bytes, ctx.limits)?;
    let decoded = decode::decode(&bytes, header, ctx.limits, None)?;
    Ok(match decoded {
        DynamicImage::ImageRgba8(i) => i,
        other => other.to_rgba8(),
    })
}

fn watermark(img: &mut DynamicImage, w: &Watermark, field: &str, ctx: &Ctx<'_>) -> Result<()> {
    let mut mark = decode_asset(field, &w.asset, ctx)?;
    if let Some(scale) = w.scale {
        let tw = ((f64::from(img.width()) * f64::from(scale)).round() as u32).max(1);
        let th = ((f64::from(mark.height()) * f64::from(tw) / f64::from(mark.width())).round()
            as u32)
            .max(1);
        ctx.limits
            .check_output(field, u64::from(tw), u64::from(th))?;
        let resized = pixels::resize(
            &DynamicImage::ImageRgba8(mark),
            tw,
            th,
            Filter::Lanczos3,
            None,
        )?;
        mark = match resized {
            DynamicImage::ImageRgba8(i) => i,
            other => other.to_rgba8(),
        };
    }
    if w.tile {
        let tiles = u64::from(img.width().div_ceil(mark.width().max(1)))
            * u64::from(img.height().div_ceil(mark.height().max(1)));
        if tiles > 10_000 {
            return Err(Error::invalid(
                field,
                format!("tiling would draw {tiles} copies (at most 10000)"),
            ));
        }
        let step_x = i64::from(mark.width()) + i64::from(w.offset_x.max(0));
        let step_y = i64::from(mark.height()) + i64::from(w.offset_y.max(0));
        let mut y = 0i64;
        while y < i64::from(img.height()) {
            let mut x = 0i64;
            while x < i64::from(img.width()) {
                pixels::blend(img, &mark, x, y, w.opacity);
                x += step_x;
            }
            y += step_y;
        }
    } else {
        let (x, y) = w.position.place(
            (img.width(), img.height()),
            (mark.width(), mark.height()),
            (w.offset_x, w.offset_y),
        );
        pixels::blend(img, &mark, x, y, w.opacity);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_source_for_resize_modes() {
        let fit = Resize {
            width: Some(1200),
            height: Some(1200),
            ..Resize::default()
        };
        assert_eq!(fit.plan((4000, 3000)).out, (1200, 900));
        assert_eq!(fit.min_source((4000, 3000)), (1200, 900));
        let fill = Resize {
            fit: Fit::Fill,
            ..fit.clone()
        };
        assert_eq!(fill.plan((4000, 3000)).out, (1200, 1200));
        assert_eq!(fill.min_source((4000, 3000)), (1600, 1200));
        let force = Resize {
            fit: Fit::Force,
            ..fit
        };
        assert_eq!(force.min_source((4000, 3000)), (1200, 1200));
    }
}
