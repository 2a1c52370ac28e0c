//! QR code generation (the `qrcode` crate) rendered at an exact pixel size with crisp
//! modules, optional colours and an optional centre logo.

use image::{DynamicImage, RgbaImage};
use serde::{Deserialize, Serialize};

use crate::encode::{Encoded, OutputOptions, encode};
use crate::ops::{Ctx, Filter, check_f32, decode_asset};
use crate::{Assets, Color, Error, Format, Limits, Result, pixels};

/// Error-correction level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EcLevel {
    /// ~7 % recovery.
    L,
    /// ~15 % recovery (default).
    #[default]
    M,
    /// ~25 % recovery.
    Q,
    /// ~30 % recovery (forced when a logo is drawn).
    H,
}

fn size512() -> u32 {
    512
}

fn margin4() -> u32 {
    4
}

fn logo_scale() -> f32 {
    0.2
}

fn white() -> Color {
    Color::WHITE
}

fn black() -> Color {
    Color::BLACK
}

fn png_output() -> OutputOptions {
    OutputOptions::new(Format::Png)
}

/// `{"payload":"https://example.com","ecLevel":"H","size":512,"dark":"#000","light":"#fff",
/// "margin":4,"logo":"brand","logoScale":0.2}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QrSpec {
    /// The data to encode (1..=2953 bytes, less at higher error correction).
    pub payload: String,
    /// Error-correction level.
    #[serde(default)]
    pub ec_level: EcLevel,
    /// Side of the square output in pixels (32..=4096).
    #[serde(default = "size512")]
    pub size: u32,
    /// Quiet zone, in modules (0..=16).
    #[serde(default = "margin4")]
    pub margin: u32,
    /// Module colour.
    #[serde(default = "black")]
    pub dark: Color,
    /// Background colour.
    #[serde(default = "white")]
    pub light: Color,
    /// Asset drawn in the centre; raises the error correction to `H`.
    #[serde(default)]
    pub logo: Option<String>,
    /// Logo width as a fraction of the code width (0.05..=0.3).
    #[serde(default = "logo_scale")]
    pub logo_scale: f32,
    /// Encoder settings (default PNG).
    #[serde(default = "png_output")]
    pub output: OutputOptions,
}

impl QrSpec {
    /// A spec for `payload` with defaults.
    pub fn new(payload: impl Into<String>) -> Self {
        QrSpec {
            payload: payload.into(),
            ec_level: EcLevel::M,
            size: 512,
            margin: 4,
            dark: Color::BLACK,
            light: Color::WHITE,
            logo: None,
            logo_scale: 0.2,
            output: png_output(),
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        if self.payload.is_empty() || self.payload.len() > 2953 {
            return Err(Error::invalid(
                "payload",
                format!("must be 1 to 2953 bytes, got {}", self.payload.len()),
            ));
        }
        if !(32..=4096).contains(&self.size) {
            return Err(Error::invalid(
                "size",
                format!("must be between 32 and 4096, got {}", self.size),
            ));
        }
        if self.margin > 16 {
            return Err(Error::invalid(
                "margin",
                format!("must be at most 16, got {}", self.margin),
            ));
        }
        check_f32("logoScale", self.logo_scale, 0.05, 0.3)?;
        self.output.validate()
    }
}

/// Renders a QR code. `assets` supplies the logo, if the spec names one.
pub fn qrcode(spec: &QrSpec, assets: &dyn Assets, limits: &Limits) -> Result<Encoded> {
    spec.validate()?;
    let ec = if spec.logo.is_some() {
        qrcode::EcLevel::H
    } else {
        match spec.ec_level {
            EcLevel::L => qrcode::EcLevel::L,
            EcLevel::M => qrcode::EcLevel::M,
            EcLevel::Q => qrcode::EcLevel::Q,
            EcLevel::H => qrcode::EcLevel::H,
        }
    };
    let code = qrcode::QrCode::with_error_correction_level(spec.payload.as_bytes(), ec)
        .map_err(|e| Error::invalid("payload", format!("cannot be encoded: {e}")))?;
    let modules = code.width() as u32;
    let total = modules + 2 * spec.margin;
    let module_px = spec.size / total;
    if module_px == 0 {
        return Err(Error::invalid(
            "size",
            format!("{} pixels is too small for {total} modules", spec.size),
        ));
    }
    let colors = code.to_colors();
    // Centre the crisp code; the remainder widens the quiet zone.
    let origin = (spec.size - module_px * total) / 2 + spec.margin * module_px;
    let mut img = RgbaImage::from_pixel(spec.size, spec.size, image::Rgba(spec.light.0));
    for my in 0..modules {
        for mx in 0..modules {
            if colors[(my * modules + mx) as usize] == qrcode::Color::Dark {
                for py in 0..module_px {
                    for px in 0..module_px {
                        img.put_pixel(
                            origin + mx * module_px + px,
                            origin + my * module_px + py,
                            image::Rgba(spec.dark.0),
                        );
                    }
                }
            }
        }
    }
    let mut img = DynamicImage::ImageRgba8(img);
    if let Some(name) = &spec.logo {
        let ctx = Ctx { limits, assets };
        let logo = decode_asset("logo", name, &ctx)?;
        let code_px = module_px * modules;
        let lw = ((code_px as f32 * spec.logo_scale).round() as u32).max(1);
        let lh = ((f64::from(logo.height()) * f64::from(lw) / f64::from(logo.width())).round()
            as u32)
            .clamp(1, lw);
        let logo = pixels::resize(
            &DynamicImage::ImageRgba8(logo),
            lw,
            lh,
            Filter::Lanczos3,
            None,
        )?
        .to_rgba8();
        // A light pad behind the logo keeps it readable.
        let pad = module_px;
        let backing = RgbaImage::from_pixel(lw + 2 * pad, lh + 2 * pad, image::Rgba(spec.light.0));
        let cx = i64::from(spec.size / 2);
        pixels::blend(
            &mut img,
            &backing,
            cx - i64::from(lw / 2 + pad),
            cx - i64::from(lh / 2 + pad),
            1.0,
        );
        pixels::blend(
            &mut img,
            &logo,
            cx - i64::from(lw / 2),
            cx - i64::from(lh / 2),
            1.0,
        );
    }
    if spec.dark.0[3] == 255 && spec.light.0[3] == 255 {
        img = DynamicImage::ImageRgb8(img.to_rgb8());
    }
    encode(&img, &spec.output, Format::Png)
}
