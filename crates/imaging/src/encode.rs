//! Encoding: JPEG via libjpeg-turbo, PNG via the `png` crate, WebP via libwebp, and the
//! `maxBytes` search (a binary search on quality). Output never carries EXIF, XMP or ICC
//! metadata: encoding is also how metadata is stripped.

use image::{DynamicImage, ImageEncoder};
use serde::{Deserialize, Serialize};

use crate::{Color, Error, Format, Result, pixels};

/// Encoder settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct OutputOptions {
    /// Output format; `None` keeps the input format (GIF becomes PNG).
    pub format: Option<Format>,
    /// Lossy quality 1..=100 (JPEG, lossy WebP).
    pub quality: u8,
    /// Largest acceptable output; quality is lowered (binary search, not below
    /// `minQuality`) until it fits.
    pub max_bytes: Option<usize>,
    /// Lowest quality the `maxBytes` search may use (1..=100).
    pub min_quality: u8,
    /// When `maxBytes` cannot be met: the smallest attempt (at `minQuality`, or the
    /// lossless encoding) instead of [`Error::MaxBytesUnreachable`] — imgproxy's
    /// `max_bytes` semantics.
    pub max_bytes_best_effort: bool,
    /// Lossless WebP.
    pub lossless: bool,
    /// Progressive JPEG.
    pub progressive: bool,
    /// Colour that transparent pixels are flattened onto for JPEG.
    pub background: Color,
}

impl Default for OutputOptions {
    fn default() -> Self {
        OutputOptions {
            format: None,
            quality: 80,
            max_bytes: None,
            min_quality: 10,
            max_bytes_best_effort: false,
            lossless: false,
            progressive: false,
            background: Color::WHITE,
        }
    }
}

impl OutputOptions {
    /// Options for `format` with defaults otherwise.
    pub fn new(format: Format) -> Self {
        OutputOptions {
            format: Some(format),
            ..Default::default()
        }
    }

    /// Checks the bounds of every field.
    pub fn validate(&self) -> Result<()> {
        if !(1..=100).contains(&self.quality) {
            return Err(Error::invalid(
                "quality",
                format!("must be between 1 and 100, got {}", self.quality),
            ));
        }
        if !(1..=100).contains(&self.min_quality) || self.min_quality > self.quality {
            return Err(Error::invalid(
                "minQuality",
                format!(
                    "must be between 1 and quality ({}), got {}",
                    self.quality, self.min_quality
                ),
            ));
        }
        if let Some(m) = self.max_bytes
            && !(100..=(256 << 20)).contains(&m)
        {
            return Err(Error::invalid(
                "maxBytes",
                format!("must be between 100 and {}, got {m}", 256 << 20),
            ));
        }
        if self.format == Some(Format::Gif) {
            return Err(Error::unsupported("encoding gif (use png, jpeg or webp)"));
        }
        Ok(())
    }
}

/// An encoded image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The encoded bytes.
    pub bytes: Vec<u8>,
    /// Their format.
    pub format: Format,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The quality used (lossy formats), after any `maxBytes` search.
    pub quality: Option<u8>,
}

/// Encodes `img` (8-bit RGB or RGBA) with `opts`; `default` is used when no format is set.
pub(crate) fn encode(img: &DynamicImage, opts: &OutputOptions, default: Format) -> Result<Encoded> {
    opts.validate()?;
    let format = match opts.format.unwrap_or(default) {
        Format::Gif => Format::Png,
        f => f,
    };
    let lossy = match format {
        Format::Jpeg => true,
        Format::Webp => !opts.lossless,
        _ => false,
    };
    let one = |q: u8| -> Result<Vec<u8>> {
        match format {
            Format::Jpeg => jpeg(img, q, opts.progressive, opts.background),
            Format::Webp => webp(img, q, opts.lossless),
            _ => png(img),
        }
    };
    let done = |bytes: Vec<u8>, q: u8| Encoded {
        bytes,
        format,
        width: img.width(),
        height: img.height(),
        quality: lossy.then_some(q),
    };
    let first = one(opts.quality)?;
    let Some(max) = opts.max_bytes else {
        return Ok(done(first, opts.quality));
    };
    if first.len() <= max {
        return Ok(done(first, opts.quality));
    }
    if !lossy {
        if opts.max_bytes_best_effort {
            return Ok(done(first, opts.quality));
        }
        return Err(Error::MaxBytesUnreachable {
            format: format.name(),
            max_bytes: max,
            quality: 100,
            smallest: first.len(),
        });
    }
    // Highest quality in [min_quality, quality) that fits.
    let (mut lo, mut hi) = (opts.min_quality, opts.quality - 1);
    let mut best: Option<(u8, Vec<u8>)> = None;
    // The smallest attempt so far, with its quality.
    let mut smallest = (opts.quality, first);
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        let bytes = one(mid)?;
        if bytes.len() < smallest.1.len() {
            smallest = (mid, bytes.clone());
        }
        if bytes.len() <= max {
            lo = mid + 1;
            best = Some((mid, bytes));
        } else if mid == 0 {
            break;
        } else {
            hi = mid - 1;
        }
    }
    match best {
        Some((q, bytes)) => Ok(done(bytes, q)),
        None if opts.max_bytes_best_effort => Ok(done(smallest.1, smallest.0)),
        None => Err(Error::MaxBytesUnreachable {
            format: format.name(),
            max_bytes: max,
            quality: opts.min_quality,
            smallest: smallest.1.len(),
        }),
    }
}

fn jpeg(img: &DynamicImage, quality: u8, progressive: bool, bg: Color) -> Result<Vec<u8>> {
    let f = Format::Jpeg;
    let err = |e: turbojpeg::Error| Error::encode(f, e);
    if img.width() > 65_500 || img.height() > 65_500 {
        return Err(Error::encode(f, "jpeg is limited to 65500 pixels per side"));
    }
    let flattened;
    let rgb = match img {
        DynamicImage::ImageRgb8(i) => i,
        DynamicImage::ImageRgba8(i) => {
            flattened = pixels::flatten(i, [bg.0[0], bg.0[1], bg.0[2]]);
            &flattened
        }
        other => {
            flattened = other.to_rgb8();
            &flattened
        }
    };
    let mut c = turbojpeg::Compressor::new().map_err(err)?;
    c.set_quality(i32::from(quality)).map_err(err)?;
    c.set_subsamp(turbojpeg::Subsamp::Sub2x2).map_err(err)?;
    if progressive {
        c.set_progressive(true).map_err(err)?;
    }
    let width = rgb.width() as usize;
    c.compress_to_vec(turbojpeg::Image {
        pixels: rgb.as_raw().as_slice(),
        width,
        pitch: width * 3,
        height: rgb.height() as usize,
        format: turbojpeg::PixelFormat::RGB,
    })
    .map_err(err)
}

fn webp(img: &DynamicImage, quality: u8, lossless: bool) -> Result<Vec<u8>> {
    let f = Format::Webp;
    if img.width() > 16_383 || img.height() > 16_383 {
        return Err(Error::encode(f, "webp is limited to 16383 pixels per side"));
    }
    let enc = match img {
        DynamicImage::ImageRgb8(i) => webp::Encoder::from_rgb(i.as_raw(), i.width(), i.height()),
        DynamicImage::ImageRgba8(i) => webp::Encoder::from_rgba(i.as_raw(), i.width(), i.height()),
        _ => return Err(Error::encode(f, "unexpected pixel layout")),
    };
    let mem = enc
        .encode_simple(lossless, f32::from(quality))
        .map_err(|e| Error::encode(f, format!("{e:?}")))?;
    Ok(mem.to_vec())
}

fn png(img: &DynamicImage) -> Result<Vec<u8>> {
    let f = Format::Png;
    let mut out = Vec::new();
    let enc = image::codecs::png::PngEncoder::new_with_quality(
        &mut out,
        image::codecs::png::CompressionType::Fast,
        image::codecs::png::FilterType::Adaptive,
    );
    let (buf, color): (&[u8], _) = match img {
        DynamicImage::ImageRgb8(i) => (i.as_raw(), image::ExtendedColorType::Rgb8),
        DynamicImage::ImageRgba8(i) => (i.as_raw(), image::ExtendedColorType::Rgba8),
        _ => return Err(Error::encode(f, "unexpected pixel layout")),
    };
    enc.write_image(buf, img.width(), img.height(), color)
        .map_err(|e| Error::encode(f, e))?;
    Ok(out)
}
