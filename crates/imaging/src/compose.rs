//! Composition of a canvas from a JSON spec: a background colour and/or image, then image
//! and text layers drawn in `z` order (ties keep the spec order).

use image::{DynamicImage, RgbaImage};
use serde::{Deserialize, Serialize};

use crate::encode::{Encoded, OutputOptions, encode};
use crate::ops::{Ctx, Filter, check_dim, check_f32, check_offset, check_text, decode_asset};
use crate::{Assets, Color, Format, Limits, Result, pixels, text};

/// Most layers in one composition.
pub const MAX_LAYERS: usize = 64;

fn one() -> f32 {
    1.0
}

fn white() -> Color {
    Color::WHITE
}

fn black() -> Color {
    Color::BLACK
}

fn size32() -> f32 {
    32.0
}

/// A canvas description.
///
/// ```json
/// {"width": 1080, "height": 1080, "background": "#202020",
///  "layers": [{"type": "image", "asset": "photo", "x": 40, "y": 40, "width": 1000},
///             {"type": "text", "text": "Sale", "x": 60, "y": 900, "size": 96, "z": 1}],
///  "output": {"format": "jpeg", "quality": 85}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ComposeSpec {
    /// Canvas width (1..=16384).
    pub width: u32,
    /// Canvas height (1..=16384).
    pub height: u32,
    /// Background colour (default white).
    #[serde(default = "white")]
    pub background: Color,
    /// Asset stretched to cover the canvas (fill, centred) above the background colour.
    #[serde(default)]
    pub background_image: Option<String>,
    /// Layers, drawn by ascending `z`.
    #[serde(default)]
    pub layers: Vec<Layer>,
    /// Encoder settings (default PNG).
    #[serde(default)]
    pub output: OutputOptions,
}

/// One layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum Layer {
    /// An image asset.
    Image(ImageLayer),
    /// A block of text.
    Text(TextLayer),
}

/// An image layer. Size: `width`/`height` (aspect kept if only one is given), else `scale`
/// of its natural size, else natural size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageLayer {
    /// Asset name.
    pub asset: String,
    /// Left edge on the canvas (may be negative).
    #[serde(default)]
    pub x: i32,
    /// Top edge on the canvas (may be negative).
    #[serde(default)]
    pub y: i32,
    /// Drawn width (1..=16384).
    #[serde(default)]
    pub width: Option<u32>,
    /// Drawn height (1..=16384).
    #[serde(default)]
    pub height: Option<u32>,
    /// Factor on the natural size (0.01..=10).
    #[serde(default)]
    pub scale: Option<f32>,
    /// 0.0..=1.0.
    #[serde(default = "one")]
    pub opacity: f32,
    /// Stacking order (-1000..=1000).
    #[serde(default)]
    pub z: i32,
}

/// A text layer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TextLayer {
    /// The text (1..=1000 characters, newlines allowed).
    pub text: String,
    /// Left edge of the text block.
    #[serde(default)]
    pub x: i32,
    /// Top edge of the text block.
    #[serde(default)]
    pub y: i32,
    /// Font size in pixels (1..=1000).
    #[serde(default = "size32")]
    pub size: f32,
    /// Fill colour.
    #[serde(default = "black")]
    pub color: Color,
    /// Outline width (0..=20).
    #[serde(default)]
    pub stroke_width: f32,
    /// Outline colour.
    #[serde(default = "white")]
    pub stroke_color: Color,
    /// 0.0..=1.0.
    #[serde(default = "one")]
    pub opacity: f32,
    /// Stacking order (-1000..=1000).
    #[serde(default)]
    pub z: i32,
}

impl Layer {
    fn z(&self) -> i32 {
        match self {
            Layer::Image(l) => l.z,
            Layer::Text(l) => l.z,
        }
    }
}

fn check_z(field: &str, z: i32) -> Result<()> {
    if z.unsigned_abs() > 1000 {
        return Err(crate::Error::invalid(
            field,
            format!("must be between -1000 and 1000, got {z}"),
        ));
    }
    Ok(())
}

impl ComposeSpec {
    /// Checks every field; errors name it (`layers[2].size`).
    pub fn validate(&self) -> Result<()> {
        check_dim("width", self.width)?;
        check_dim("height", self.height)?;
        if self.layers.len() > MAX_LAYERS {
            return Err(crate::Error::invalid(
                "layers",
                format!("at most {MAX_LAYERS} layers, got {}", self.layers.len()),
            ));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            let f = |n: &str| format!("layers[{i}].{n}");
            match layer {
                Layer::Image(l) => {
                    check_offset(&f("x"), l.x)?;
                    check_offset(&f("y"), l.y)?;
                    if let Some(w) = l.width {
                        check_dim(&f("width"), w)?;
                    }
                    if let Some(h) = l.height {
                        check_dim(&f("height"), h)?;
                    }
                    if let Some(s) = l.scale {
                        check_f32(&f("scale"), s, 0.01, 10.0)?;
                    }
                    check_f32(&f("opacity"), l.opacity, 0.0, 1.0)?;
                    check_z(&f("z"), l.z)?;
                }
                Layer::Text(l) => {
                    check_text(&f("text"), &l.text)?;
                    check_offset(&f("x"), l.x)?;
                    check_offset(&f("y"), l.y)?;
                    check_f32(&f("size"), l.size, 1.0, 1000.0)?;
                    check_f32(&f("strokeWidth"), l.stroke_width, 0.0, 20.0)?;
                    check_f32(&f("opacity"), l.opacity, 0.0, 1.0)?;
                    check_z(&f("z"), l.z)?;
                }
            }
        }
        self.output.validate()
    }
}

/// Renders a [`ComposeSpec`]. Assets are decoded with `limits`; the canvas and every
/// scaled layer are bounded by `limits.max_output_pixels`.
pub fn compose(spec: &ComposeSpec, assets: &dyn Assets, limits: &Limits) -> Result<Encoded> {
    spec.validate()?;
    limits.check_output("width", u64::from(spec.width), u64::from(spec.height))?;
    let ctx = Ctx { limits, assets };
    let mut canvas = DynamicImage::ImageRgba8(RgbaImage::from_pixel(
        spec.width,
        spec.height,
        image::Rgba(spec.background.0),
    ));
    if let Some(name) = &spec.background_image {
        let bg = decode_asset("backgroundImage", name, &ctx)?;
        let bg = DynamicImage::ImageRgba8(bg);
        let s = (f64::from(spec.width) / f64::from(bg.width()))
            .max(f64::from(spec.height) / f64::from(bg.height()));
        let (ww, wh) = (f64::from(spec.width) / s, f64::from(spec.height) / s);
        let crop = (
            ((f64::from(bg.width()) - ww) / 2.0).max(0.0),
            ((f64::from(bg.height()) - wh) / 2.0).max(0.0),
            ww.min(f64::from(bg.width())),
            wh.min(f64::from(bg.height())),
        );
        let cover = pixels::resize(&bg, spec.width, spec.height, Filter::Lanczos3, Some(crop))?;
        pixels::blend(&mut canvas, &cover.to_rgba8(), 0, 0, 1.0);
    }
    let mut order: Vec<(usize, &Layer)> = spec.layers.iter().enumerate().collect();
    order.sort_by_key(|(i, l)| (l.z(), *i));
    for (i, layer) in order {
        match layer {
            Layer::Image(l) => {
                let field = format!("layers[{i}].asset");
                let img = decode_asset(&field, &l.asset, &ctx)?;
                let (nw, nh) = (f64::from(img.width()), f64::from(img.height()));
                let (w, h) = match (l.width, l.height, l.scale) {
                    (Some(w), Some(h), _) => (f64::from(w), f64::from(h)),
                    (Some(w), None, _) => (f64::from(w), nh * f64::from(w) / nw),
                    (None, Some(h), _) => (nw * f64::from(h) / nh, f64::from(h)),
                    (None, None, Some(s)) => (nw * f64::from(s), nh * f64::from(s)),
                    (None, None, None) => (nw, nh),
                };
                let (w, h) = ((w.round() as u32).max(1), (h.round() as u32).max(1));
                limits.check_output(&format!("layers[{i}]"), u64::from(w), u64::from(h))?;
                let img = DynamicImage::ImageRgba8(img);
                let img = pixels::resize(&img, w, h, Filter::Lanczos3, None)?.to_rgba8();
                pixels::blend(&mut canvas, &img, i64::from(l.x), i64::from(l.y), l.opacity);
            }
            Layer::Text(l) => {
                let rendered = text::render(
                    &format!("layers[{i}]"),
                    &l.text,
                    l.size,
                    l.color,
                    l.stroke_width,
                    l.stroke_color,
                    limits,
                )?;
                pixels::blend(
                    &mut canvas,
                    &rendered,
                    i64::from(l.x),
                    i64::from(l.y),
                    l.opacity,
                );
            }
        }
    }
    // Opaque canvases are encoded as RGB.
    if let DynamicImage::ImageRgba8(c) = &canvas
        && c.pixels().all(|p| p.0[3] == 255)
    {
        canvas = DynamicImage::ImageRgb8(canvas.to_rgb8());
    }
    encode(&canvas, &spec.output, Format::Png)
}
