//! Decoding with limits. JPEG goes through libjpeg-turbo (with DCT-domain scaling when the
//! pipeline shrinks the image at least 2×); PNG, GIF, WebP and CMYK JPEG go through the
//! `image` crate with its own allocation limits set. The output is always 8-bit RGB or RGBA
//! with the EXIF orientation applied.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, RgbImage};

use crate::probe::Header;
use crate::{Error, Format, Limits, Result, icc};

/// `min_size` is the smallest size (in stored, un-rotated orientation) the caller needs;
/// a JPEG is then decoded at the smallest DCT scale (1/2, 1/4, 1/8) still at least that big.
pub(crate) fn decode(
    input: &[u8],
    header: Header,
    limits: &Limits,
    min_size: Option<(u32, u32)>,
) -> Result<DynamicImage> {
    let (image, icc) = match header.format {
        Format::Jpeg if !header.cmyk => {
            let icc = if header.has_icc {
                icc::jpeg_icc(input)
            } else {
                None
            };
            (decode_turbo(input, &header, min_size)?, icc)
        }
        format => decode_image_rs(input, format, limits, header.has_icc && !header.cmyk)?,
    };
    let mut image = normalise(image);
    if let Some(icc) = icc {
        icc::to_srgb(&mut image, &icc);
    }
    if header.orientation > 1
        && let Some(o) = image::metadata::Orientation::from_exif(header.orientation)
    {
        image.apply_orientation(o);
    }
    Ok(image)
}

/// Converts anything to 8-bit RGB, or RGBA when there is an alpha channel.
pub(crate) fn normalise(image: DynamicImage) -> DynamicImage {
    match image {
        DynamicImage::ImageRgb8(_) | DynamicImage::ImageRgba8(_) => image,
        other if other.color().has_alpha() => DynamicImage::ImageRgba8(other.to_rgba8()),
        other => DynamicImage::ImageRgb8(other.to_rgb8()),
    }
}

/// The DCT scaling denominator (1, 2, 4 or 8) for an image of `size` that must stay at
/// least `min` large.
pub(crate) fn dct_denominator(size: (u32, u32), min: (u32, u32)) -> u32 {
    [8u32, 4, 2]
        .into_iter()
        .find(|&d| size.0.div_ceil(d) >= min.0 && size.1.div_ceil(d) >= min.1)
        .unwrap_or(1)
}

fn decode_turbo(
    input: &[u8],
    header: &Header,
    min_size: Option<(u32, u32)>,
) -> Result<DynamicImage> {
    let f = Format::Jpeg;
    let err = |e: turbojpeg::Error| Error::decode(f, e);
    let mut d = turbojpeg::Decompressor::new().map_err(err)?;
    let h = d.read_header(input).map_err(err)?;
    if h.width != header.width as usize || h.height != header.height as usize {
        return Err(Error::decode(f, "frame header disagrees with the decoder"));
    }
    if matches!(
        h.colorspace,
        turbojpeg::Colorspace::CMYK | turbojpeg::Colorspace::YCCK
    ) {
        return Err(Error::decode(f, "unexpected CMYK colour space"));
    }
    let denom = min_size.map_or(1, |m| dct_denominator((header.width, header.height), m));
    let factor = turbojpeg::ScalingFactor::new(1, denom as usize);
    d.set_scaling_factor(factor).map_err(err)?;
    let scaled = h.scaled(factor);
    let (width, height) = (scaled.width, scaled.height);
    let pitch = width * 3;
    let mut pixels = vec![0u8; pitch * height];
    d.decompress(
        input,
        turbojpeg::Image {
            pixels: pixels.as_mut_slice(),
            width,
            pitch,
            height,
            format: turbojpeg::PixelFormat::RGB,
        },
    )
    .map_err(err)?;
    let (w, h) = (
        u32::try_from(width).map_err(|_| Error::decode(f, "width overflow"))?,
        u32::try_from(height).map_err(|_| Error::decode(f, "height overflow"))?,
    );
    RgbImage::from_raw(w, h, pixels)
        .map(DynamicImage::ImageRgb8)
        .ok_or_else(|| Error::decode(f, "decoder returned a short buffer"))
}

pub(crate) fn image_limits(limits: &Limits) -> image::Limits {
    let mut l = image::Limits::default();
    let side = u32::try_from(limits.max_pixels.min(u64::from(u32::MAX))).unwrap_or(u32::MAX);
    l.max_image_width = Some(side);
    l.max_image_height = Some(side);
    l.max_alloc = Some(limits.max_alloc());
    l
}

fn to_image_format(format: Format) -> image::ImageFormat {
    match format {
        Format::Jpeg => image::ImageFormat::Jpeg,
        Format::Png => image::ImageFormat::Png,
        Format::Gif => image::ImageFormat::Gif,
        Format::Webp => image::ImageFormat::WebP,
    }
}

pub(crate) fn map_image_error(format: Format, e: image::ImageError) -> Error {
    match e {
        image::ImageError::Limits(l) => Error::Decode {
            format: format.name(),
            message: format!("decoder limit exceeded: {l}"),
        },
        image::ImageError::Unsupported(u) => Error::unsupported(format!("{format}: {u}")),
        other => Error::decode(format, other),
    }
}

fn decode_image_rs(
    input: &[u8],
    format: Format,
    limits: &Limits,
    want_icc: bool,
) -> Result<(DynamicImage, Option<Vec<u8>>)> {
    let mut reader = image::ImageReader::with_format(Cursor::new(input), to_image_format(format));
    reader.limits(image_limits(limits));
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| map_image_error(format, e))?;
    let (w, h) = decoder.dimensions();
    limits.check_dimensions(u64::from(w), u64::from(h))?;
    let icc = if want_icc {
        decoder.icc_profile().ok().flatten()
    } else {
        None
    };
    let image = DynamicImage::from_decoder(decoder).map_err(|e| map_image_error(format, e))?;
    Ok((image, icc))
}

#[cfg(test)]
mod tests {
    use super::dct_denominator;

    #[test]
    fn dct_denominator_keeps_the_target_size() {
        // 4000x3000 -> 1200 wide needs 1200x900: 1/2 gives 2000x1500, 1/4 gives 1000x750.
        assert_eq!(dct_denominator((4000, 3000), (1200, 900)), 2);
        assert_eq!(dct_denominator((4000, 3000), (500, 375)), 8);
        assert_eq!(dct_denominator((4000, 3000), (1000, 750)), 4);
        assert_eq!(dct_denominator((4000, 3000), (3000, 2250)), 1);
        assert_eq!(dct_denominator((7, 7), (1, 1)), 8);
    }
}
