//! Container sniffing and header parsing. Owns the "check before decode" rule: sizes, frame
//! counts and metadata volume are read from the headers with bounded loops and no pixel
//! allocation, and checked against [`Limits`] before any decoder runs.

use serde::{Deserialize, Serialize};

use crate::{Error, Limits, Result};

/// An image container format this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JPEG (decode and encode, via libjpeg-turbo).
    Jpeg,
    /// PNG (decode and encode).
    Png,
    /// GIF (decode only; animated GIFs can be split with [`crate::gif_frames`]).
    Gif,
    /// WebP (decode; lossy or lossless encode via libwebp).
    Webp,
}

impl Format {
    /// Lower-case name, as used in errors and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::Gif => "gif",
            Format::Webp => "webp",
        }
    }

    /// The MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::Gif => "image/gif",
            Format::Webp => "image/webp",
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the headers say, before decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    /// EXIF orientation 1..=8 (1 when absent).
    pub orientation: u8,
    pub has_alpha: bool,
    pub has_icc: bool,
    pub has_exif: bool,
    pub cmyk: bool,
}

impl Header {
    /// A still image of `format` and size with no metadata; probes fill in the rest.
    fn new(format: Format, width: u32, height: u32) -> Self {
        Header {
            format,
            width,
            height,
            frames: 1,
            orientation: 1,
            has_alpha: false,
            has_icc: false,
            has_exif: false,
            cmyk: false,
        }
    }
}

/// Detects the format from magic bytes; unsupported or unknown inputs get a clear error.
pub(crate) fn sniff(input: &[u8]) -> Result<Format> {
    if input.is_empty() {
        return Err(Error::unsupported("empty input"));
    }
    if input.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if input.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if input.starts_with(b"GIF87a") || input.starts_with(b"GIF89a") {
        return Ok(Format::Gif);
    }
    if input.len() >= 12 && &input[0..4] == b"RIFF" && &input[8..12] == b"WEBP" {
        return Ok(Format::Webp);
    }
    let what = if input.starts_with(b"BM") {
        "BMP images (supported: jpeg, png, gif, webp)"
    } else if input.starts_with(b"II*\0") || input.starts_with(b"MM\0*") {
        "TIFF images (supported: jpeg, png, gif, webp)"
    } else if input.len() >= 12 && &input[4..8] == b"ftyp" {
        match &input[8..12] {
            b"avif" | b"avis" => "AVIF images (supported: jpeg, png, gif, webp)",
            b"heic" | b"heix" | b"mif1" | b"msf1" => {
                "HEIF images (supported: jpeg, png, gif, webp)"
            }
            _ => "video or ISO media input (use video_frame for videos)",
        }
    } else if input.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
        "video input (use video_frame for videos)"
    } else {
        "unrecognised image format (supported: jpeg, png, gif, webp)"
    };
    Err(Error::unsupported(what))
}

/// Parses the headers and checks them against `limits`. Never decodes pixels.
pub(crate) fn probe(input: &[u8], limits: &Limits) -> Result<Header> {
    limits.check_input(input)?;
    let format = sniff(input)?;
    let header = match format {
        Format::Jpeg => jpeg(input, limits)?,
        Format::Png => png(input, limits)?,
        Format::Gif => gif(input, limits)?,
        Format::Webp => webp(input, limits)?,
    };
    limits.check_dimensions(u64::from(header.width), u64::from(header.height))?;
    if header.frames > limits.max_frames {
        return Err(Error::TooManyFrames {
            counted: header.frames,
            max: limits.max_frames,
        });
    }
    Ok(header)
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le24(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 3)?;
    Some(u32::from(s[0]) | (u32::from(s[1]) << 8) | (u32::from(s[2]) << 16))
}

/// Reads the orientation tag (0x0112) from IFD0 of a TIFF structure. Returns 1 if absent.
pub(crate) fn exif_orientation(tiff: &[u8]) -> u8 {
    let tiff = tiff.strip_prefix(b"Exif\0\0").unwrap_or(tiff);
    let big = match tiff.get(0..2) {
        Some(b"MM") => true,
        Some(b"II") => false,
        _ => return 1,
    };
    let r16 = |at: usize| if big { be16(tiff, at) } else { le16(tiff, at) };
    let r32 = |at: usize| if big { be32(tiff, at) } else { le32(tiff, at) };
    let Some(ifd) = r32(4).map(|v| v as usize) else {
        return 1;
    };
    let Some(count) = r16(ifd) else { return 1 };
    // Bounded by the segment: at most (len / 12) entries can exist.
    for i in 0..usize::from(count).min(tiff.len() / 12) {
        let entry = ifd + 2 + i * 12;
        if r16(entry) == Some(0x0112) {
            return match r16(entry + 8) {
                Some(v @ 1..=8) => v as u8,
                _ => 1,
            };
        }
    }
    1
}

fn truncated(format: Format) -> Error {
    Error::decode(format, "truncated or malformed header")
}

fn jpeg(b: &[u8], limits: &Limits) -> Result<Header> {
    let f = Format::Jpeg;
    let mut h = Header::new(f, 0, 0);
    let mut seen_sof = false;
    let mut metadata = 0usize;
    let mut pos = 2;
    loop {
        // Markers may be preceded by fill bytes.
        while b.get(pos) == Some(&0xFF) && b.get(pos + 1) == Some(&0xFF) {
            pos += 1;
        }
        if b.get(pos) != Some(&0xFF) {
            return Err(truncated(f));
        }
        let marker = *b.get(pos + 1).ok_or_else(|| truncated(f))?;
        pos += 2;
        match marker {
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 => return Err(Error::decode(f, "end of image before any frame")),
            _ => {}
        }
        let len = usize::from(be16(b, pos).ok_or_else(|| truncated(f))?);
        if len < 2 || pos + len > b.len() {
            return Err(truncated(f));
        }
        let seg = &b[pos + 2..pos + len];
        match marker {
            0xDA => {
                if !seen_sof {
                    return Err(Error::decode(f, "scan before frame header"));
                }
                return Ok(h);
            }
            0xC0..=0xCF if !matches!(marker, 0xC4 | 0xC8 | 0xCC) => {
                if seg.len() < 6 {
                    return Err(truncated(f));
                }
                h.height = u32::from(be16(seg, 1).unwrap_or(0));
                h.width = u32::from(be16(seg, 3).unwrap_or(0));
                h.cmyk = seg[5] == 4;
                if !matches!(seg[5], 1 | 3 | 4) {
                    return Err(Error::unsupported(format!(
                        "jpeg with {} colour components",
                        seg[5]
                    )));
                }
                seen_sof = true;
                // Check as early as possible: nothing below allocates, but fail fast.
                limits.check_dimensions(u64::from(h.width), u64::from(h.height))?;
            }
            0xE0..=0xEF | 0xFE => {
                metadata += seg.len();
                if metadata > limits.max_metadata_bytes {
                    return Err(Error::MetadataTooLarge {
                        size: metadata,
                        max: limits.max_metadata_bytes,
                    });
                }
                if marker == 0xE1 && seg.starts_with(b"Exif\0\0") && !h.has_exif {
                    h.has_exif = true;
                    h.orientation = exif_orientation(seg);
                }
                if marker == 0xE2 && seg.starts_with(b"ICC_PROFILE\0") {
                    h.has_icc = true;
                }
            }
            _ => {}
        }
        pos += len;
    }
}

fn png(b: &[u8], limits: &Limits) -> Result<Header> {
    let f = Format::Png;
    if b.get(12..16) != Some(b"IHDR") {
        return Err(Error::decode(f, "missing IHDR chunk"));
    }
    let width = be32(b, 16).ok_or_else(|| truncated(f))?;
    let height = be32(b, 20).ok_or_else(|| truncated(f))?;
    let color = *b.get(25).ok_or_else(|| truncated(f))?;
    limits.check_dimensions(u64::from(width), u64::from(height))?;
    let mut h = Header {
        has_alpha: matches!(color, 4 | 6),
        ..Header::new(f, width, height)
    };
    // Walk the chunks before the first IDAT for metadata and animation control.
    let mut pos = 8usize;
    let mut metadata = 0usize;
    while let (Some(len), Some(kind)) = (be32(b, pos), b.get(pos + 4..pos + 8)) {
        let len = len as usize;
        let data = b.get(pos + 8..(pos + 8).saturating_add(len));
        match kind {
            b"IDAT" => break,
            b"tRNS" => h.has_alpha = true,
            b"iCCP" => h.has_icc = true,
            b"acTL" => {
                if let Some(n) = data.and_then(|d| be32(d, 0)) {
                    h.frames = n as usize;
                }
            }
            b"eXIf" => {
                h.has_exif = true;
                if let Some(d) = data {
                    h.orientation = exif_orientation(d);
                }
            }
            _ => {}
        }
        if matches!(kind, b"iCCP" | b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt") {
            metadata = metadata.saturating_add(len);
            if metadata > limits.max_metadata_bytes {
                return Err(Error::MetadataTooLarge {
                    size: metadata,
                    max: limits.max_metadata_bytes,
                });
            }
        }
        pos = pos.saturating_add(12).saturating_add(len);
    }
    Ok(h)
}

/// Skips GIF data sub-blocks starting at `pos`; returns the position after the terminator.
fn skip_sub_blocks(b: &[u8], mut pos: usize) -> Option<usize> {
    loop {
        let n = usize::from(*b.get(pos)?);
        pos += 1;
        if n == 0 {
            return Some(pos);
        }
        pos += n;
    }
}

fn gif(b: &[u8], limits: &Limits) -> Result<Header> {
    let f = Format::Gif;
    let width = u32::from(le16(b, 6).ok_or_else(|| truncated(f))?);
    let height = u32::from(le16(b, 8).ok_or_else(|| truncated(f))?);
    let flags = *b.get(10).ok_or_else(|| truncated(f))?;
    limits.check_dimensions(u64::from(width), u64::from(height))?;
    let mut pos = 13usize;
    if flags & 0x80 != 0 {
        pos += 3 << ((flags & 7) + 1);
    }
    let mut frames = 0usize;
    let mut has_alpha = false;
    // Counts image descriptors by skipping their compressed data: no LZW decoding, O(1) memory.
    while let Some(&block) = b.get(pos) {
        match block {
            0x21 => {
                let label = *b.get(pos + 1).ok_or_else(|| truncated(f))?;
                if label == 0xF9 && b.get(pos + 3).is_some_and(|fl| fl & 1 != 0) {
                    has_alpha = true;
                }
                pos = skip_sub_blocks(b, pos + 2).ok_or_else(|| truncated(f))?;
            }
            0x2C => {
                let fw = le16(b, pos + 5).ok_or_else(|| truncated(f))?;
                let fh = le16(b, pos + 7).ok_or_else(|| truncated(f))?;
                let fflags = *b.get(pos + 9).ok_or_else(|| truncated(f))?;
                if fw == 0 || fh == 0 {
                    return Err(Error::ZeroSize {
                        width: u64::from(fw),
                        height: u64::from(fh),
                    });
                }
                pos += 10;
                if fflags & 0x80 != 0 {
                    pos += 3 << ((fflags & 7) + 1);
                }
                pos += 1; // LZW minimum code size
                pos = skip_sub_blocks(b, pos).ok_or_else(|| truncated(f))?;
                frames += 1;
                if frames > limits.max_frames {
                    return Err(Error::TooManyFrames {
                        counted: frames,
                        max: limits.max_frames,
                    });
                }
            }
            0x3B => break,
            other => {
                return Err(Error::decode(
                    f,
                    format!("unexpected block 0x{other:02x} at byte {pos}"),
                ));
            }
        }
    }
    if frames == 0 {
        return Err(Error::decode(f, "no image frames"));
    }
    Ok(Header {
        frames,
        has_alpha,
        ..Header::new(f, width, height)
    })
}

fn webp(b: &[u8], limits: &Limits) -> Result<Header> {
    let f = Format::Webp;
    let mut h = Header::new(f, 0, 0);
    let mut pos = 12usize;
    let mut anim_frames = 0usize;
    let mut seen_size = false;
    while let (Some(kind), Some(len)) = (b.get(pos..pos + 4), le32(b, pos + 4)) {
        let len = len as usize;
        let data = b.get(pos + 8..(pos + 8).saturating_add(len));
        match kind {
            b"VP8 " if !seen_size => {
                let d = data.ok_or_else(|| truncated(f))?;
                if d.get(3..6) != Some(&[0x9d, 0x01, 0x2a]) {
                    return Err(Error::decode(f, "bad VP8 start code"));
                }
                h.width = u32::from(le16(d, 6).ok_or_else(|| truncated(f))? & 0x3fff);
                h.height = u32::from(le16(d, 8).ok_or_else(|| truncated(f))? & 0x3fff);
                seen_size = true;
            }
            b"VP8L" if !seen_size => {
                let d = data.ok_or_else(|| truncated(f))?;
                if d.first() != Some(&0x2f) {
                    return Err(Error::decode(f, "bad VP8L signature"));
                }
                let bits = le32(d, 1).ok_or_else(|| truncated(f))?;
                h.width = (bits & 0x3fff) + 1;
                h.height = ((bits >> 14) & 0x3fff) + 1;
                h.has_alpha = (bits >> 28) & 1 == 1;
                seen_size = true;
            }
            b"VP8X" => {
                let d = data.ok_or_else(|| truncated(f))?;
                let flags = *d.first().ok_or_else(|| truncated(f))?;
                h.has_alpha = flags & 0x10 != 0;
                h.width = le24(d, 4).ok_or_else(|| truncated(f))? + 1;
                h.height = le24(d, 7).ok_or_else(|| truncated(f))? + 1;
                seen_size = true;
                limits.check_dimensions(u64::from(h.width), u64::from(h.height))?;
            }
            b"ANMF" => {
                anim_frames += 1;
                if anim_frames > limits.max_frames {
                    return Err(Error::TooManyFrames {
                        counted: anim_frames,
                        max: limits.max_frames,
                    });
                }
            }
            b"ICCP" => h.has_icc = true,
            b"EXIF" => {
                h.has_exif = true;
                if let Some(d) = data {
                    h.orientation = exif_orientation(d);
                }
            }
            _ => {}
        }
        pos = pos.saturating_add(8).saturating_add(len + (len & 1));
    }
    if !seen_size {
        return Err(truncated(f));
    }
    if anim_frames > 0 {
        h.frames = anim_frames;
    }
    Ok(h)
}
