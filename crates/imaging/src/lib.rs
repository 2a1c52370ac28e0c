//! `verge-imaging`: decoding, operations and encoding for Verge's image service.
//!
//! A pure library: bytes in, bytes out. No network, no async, no global state. The HTTP
//! endpoint, the builtin functions and the CLI sit above it.
//!
//! # Safety against bad input
//! Every entry point parses the container headers first (`probe`) and checks
//! [`Limits`] — pixel count, input bytes, animation frames, metadata volume — **before**
//! any pixel is decoded; the decoders get the same bounds again. Every numeric field of
//! every option is bounded and errors name the field (`ops[1].width`). Nothing panics on
//! bad input; every failure is an [`Error`].
//!
//! # Entry points
//! - [`process`] / [`process_with_assets`]: one decode, a [`Pipeline`] of [`Op`]s, one encode.
//! - [`thumbnail_jpeg`]: the fast path (DCT-scaled JPEG decode, SIMD Lanczos3, optional
//!   watermark, libjpeg-turbo encode) as a one-call helper.
//! - [`info`]: format, size, orientation, frames, alpha/ICC/EXIF presence, from headers only.
//! - [`strip_metadata`]: re-encode without EXIF/XMP/ICC (all outputs are stripped anyway).
//! - [`compose`]: a canvas from a [`ComposeSpec`] (background, image and text layers, z-order).
//! - [`qrcode()`]: a QR code from a [`QrSpec`] (EC level, size, colours, centre logo).
//! - [`gif_frames`]: the frames of an animated GIF, each encoded.
//! - [`video_frame`]: one frame of an MP4/WebM/... at a timestamp, via the `ffmpeg` tool.
//!
//! # Formats
//! Decode: JPEG (libjpeg-turbo; CMYK/YCCK JPEGs through the `image` crate, which converts
//! them to RGB), PNG (first frame of an APNG), GIF (first frame; all via [`gif_frames`]),
//! WebP (first frame). Encode: JPEG, PNG, WebP (lossy or lossless). AVIF, HEIF, BMP and TIFF
//! are rejected with [`Error::Unsupported`]. An embedded RGB ICC profile other than sRGB
//! (Display P3, Adobe RGB, ...) is converted to sRGB (moxcms) since outputs carry no profile;
//! unparsable or non-RGB profiles are ignored and the pixels taken as sRGB.
//! The EXIF orientation is always applied.
//!
//! # Performance
//! When the first operation is a resize and the input is JPEG, the decoder uses
//! libjpeg-turbo's DCT scaling (1/2, 1/4, 1/8: the smallest scale that still needs no
//! upscaling), then `fast_image_resize` (SIMD) on packed RGB, then libjpeg-turbo encodes
//! the same buffer. Images without alpha stay 3 bytes per pixel throughout.

mod compose;
mod decode;
mod encode;
mod error;
mod icc;
mod limits;
mod ops;
mod pixels;
mod probe;
mod qr;
mod text;
mod types;
mod video;

use image::{AnimationDecoder, DynamicImage};
use serde::{Deserialize, Serialize};

pub use compose::{ComposeSpec, ImageLayer, Layer, MAX_LAYERS, TextLayer, compose};
pub use encode::{Encoded, OutputOptions};
pub use error::{Error, Result};
pub use limits::Limits;
pub use ops::{
    Blur, Crop, Filter, Fit, Flip, FlipDirection, Grayscale, MAX_DIMENSION, MAX_OPS,
    MAX_TEXT_CHARS, Op, Pipeline, Resize, Rotate, Sharpen, Text, Watermark,
};
pub use probe::Format;
pub use qr::{EcLevel, QrSpec, qrcode};
pub use types::{AssetFn, Assets, Color, Gravity, NoAssets};
pub use video::{VideoOptions, VideoSource, video_frame};

/// What the headers of an image say (nothing is decoded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    /// Container format.
    pub format: Format,
    /// Stored width in pixels (before orientation).
    pub width: u32,
    /// Stored height in pixels (before orientation).
    pub height: u32,
    /// EXIF orientation, 1..=8 (1 when absent).
    pub orientation: u8,
    /// Width as displayed (after orientation).
    pub display_width: u32,
    /// Height as displayed (after orientation).
    pub display_height: u32,
    /// Number of frames (1 for still images).
    pub frames: usize,
    /// Whether the image may have transparency.
    pub has_alpha: bool,
    /// Whether an ICC profile is embedded.
    pub has_icc: bool,
    /// Whether EXIF metadata is present.
    pub has_exif: bool,
    /// Whether the JPEG is CMYK/YCCK.
    pub cmyk: bool,
    /// Input size in bytes.
    pub bytes: usize,
}

/// Reads the image's headers and checks them against `limits`. Does not decode pixels.
pub fn info(input: &[u8], limits: &Limits) -> Result<Info> {
    let h = probe::probe(input, limits)?;
    let swap = h.orientation >= 5;
    Ok(Info {
        format: h.format,
        width: h.width,
        height: h.height,
        orientation: h.orientation,
        display_width: if swap { h.height } else { h.width },
        display_height: if swap { h.width } else { h.height },
        frames: h.frames,
        has_alpha: h.has_alpha,
        has_icc: h.has_icc,
        has_exif: h.has_exif,
        cmyk: h.cmyk,
        bytes: input.len(),
    })
}

/// Decodes `input`, applies `pipeline`, encodes with `output`. Watermarks need assets: use
/// [`process_with_assets`].
pub fn process(
    input: &[u8],
    pipeline: &Pipeline,
    output: &OutputOptions,
    limits: &Limits,
) -> Result<Encoded> {
    process_with_assets(input, pipeline, output, limits, &NoAssets)
}

/// [`process`] with named assets for watermarks.
pub fn process_with_assets(
    input: &[u8],
    pipeline: &Pipeline,
    output: &OutputOptions,
    limits: &Limits,
    assets: &dyn Assets,
) -> Result<Encoded> {
    pipeline.validate()?;
    output.validate()?;
    let header = probe::probe(input, limits)?;
    let swap = header.orientation >= 5;
    let display = if swap {
        (header.height, header.width)
    } else {
        (header.width, header.height)
    };
    // DCT-scaled decode when the first op is a resize.
    let min_size = match pipeline.ops.first() {
        Some(Op::Resize(r)) => {
            let (w, h) = r.min_source(display);
            Some(if swap { (h, w) } else { (w, h) })
        }
        _ => None,
    };
    let format = header.format;
    let decoded = decode::decode(input, header, limits, min_size)?;
    let ctx = ops::Ctx { limits, assets };
    let mut img = decoded;
    for (i, op) in pipeline.ops.iter().enumerate() {
        let planned = (i == 0).then_some(display);
        img = ops::apply(op, i, img, planned, &ctx)?;
    }
    encode::encode(&img, output, format)
}

/// Shrinks a JPEG (or any supported image) to `width` pixels wide (never enlarging), draws
/// an optional watermark and encodes a JPEG at `quality`: the benchmark path.
pub fn thumbnail_jpeg(
    input: &[u8],
    width: u32,
    quality: u8,
    watermark: Option<(&[u8], &Watermark)>,
    limits: &Limits,
) -> Result<Encoded> {
    let mut ops = vec![Op::Resize(Resize {
        width: Some(width),
        without_enlargement: true,
        ..Resize::default()
    })];
    let mut assets = std::collections::HashMap::new();
    if let Some((bytes, w)) = watermark {
        assets.insert(w.asset.clone(), bytes.to_vec());
        ops.push(Op::Watermark(w.clone()));
    }
    let output = OutputOptions {
        quality,
        ..OutputOptions::new(Format::Jpeg)
    };
    process_with_assets(input, &Pipeline { ops }, &output, limits, &assets)
}

/// Re-encodes `input` in its own format (GIF becomes PNG) without any metadata, with the
/// orientation applied to the pixels. Lossy formats use `quality`.
pub fn strip_metadata(input: &[u8], quality: u8, limits: &Limits) -> Result<Encoded> {
    let output = OutputOptions {
        quality,
        ..OutputOptions::default()
    };
    process(input, &Pipeline::default(), &output, limits)
}

/// One frame of an animation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Index in the animation.
    pub index: usize,
    /// Display time in milliseconds.
    pub delay_ms: u32,
    /// The frame (full canvas, previous frames composed in), encoded.
    pub image: Encoded,
}

/// Decodes the frames of an animated GIF (at most `max_frames`, and the animation may not
/// declare more than `limits.max_frames`) and encodes each with `output` (default PNG).
pub fn gif_frames(
    input: &[u8],
    max_frames: usize,
    output: &OutputOptions,
    limits: &Limits,
) -> Result<Vec<Frame>> {
    output.validate()?;
    if max_frames == 0 || max_frames > limits.max_frames {
        return Err(Error::invalid(
            "maxFrames",
            format!(
                "must be between 1 and {}, got {max_frames}",
                limits.max_frames
            ),
        ));
    }
    let header = probe::probe(input, limits)?;
    if header.format != Format::Gif {
        return Err(Error::unsupported(format!(
            "gif_frames needs a gif, got {}",
            header.format
        )));
    }
    let mut decoder = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(input))
        .map_err(|e| decode::map_image_error(Format::Gif, e))?;
    image::ImageDecoder::set_limits(&mut decoder, decode::image_limits(limits))
        .map_err(|e| decode::map_image_error(Format::Gif, e))?;
    let mut frames = Vec::new();
    for (index, frame) in decoder.into_frames().take(max_frames).enumerate() {
        let frame = frame.map_err(|e| decode::map_image_error(Format::Gif, e))?;
        let (num, den) = frame.delay().numer_denom_ms();
        let delay_ms = num.checked_div(den).unwrap_or(0);
        let img = decode::normalise(DynamicImage::ImageRgba8(frame.into_buffer()));
        let image = encode::encode(&img, output, Format::Png)?;
        frames.push(Frame {
            index,
            delay_ms,
            image,
        });
    }
    Ok(frames)
}
