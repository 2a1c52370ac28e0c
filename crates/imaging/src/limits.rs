//! Resource limits checked from the container headers before any pixel is decoded.

use serde::{Deserialize, Serialize};

/// Bounds on what a single request may make this crate decode, allocate or produce.
///
/// All limits are checked from the headers before decoding; the decoders are given the
/// same bounds again as a second line of defence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Limits {
    /// Largest input image, in pixels (width × height as declared by the header).
    pub max_pixels: u64,
    /// Largest encoded input, in bytes.
    pub max_input_bytes: usize,
    /// Most frames an animation may declare.
    pub max_frames: usize,
    /// Largest image any operation may produce, in pixels.
    pub max_output_pixels: u64,
    /// Most bytes of metadata segments (EXIF, XMP, ICC, comments) a JPEG may carry.
    pub max_metadata_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pixels: 50_000_000,
            max_input_bytes: 64 * 1024 * 1024,
            max_frames: 1000,
            max_output_pixels: 50_000_000,
            max_metadata_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Limits {
    /// Bytes the decoders may allocate: four bytes per allowed pixel plus slack.
    pub(crate) fn max_alloc(&self) -> u64 {
        self.max_pixels
            .saturating_mul(4)
            .saturating_add(16 * 1024 * 1024)
    }

    pub(crate) fn check_input(&self, input: &[u8]) -> crate::Result<()> {
        if input.len() > self.max_input_bytes {
            return Err(crate::Error::InputTooLarge {
                size: input.len(),
                max: self.max_input_bytes,
            });
        }
        Ok(())
    }

    pub(crate) fn check_dimensions(&self, width: u64, height: u64) -> crate::Result<()> {
        if width == 0 || height == 0 {
            return Err(crate::Error::ZeroSize { width, height });
        }
        if width.saturating_mul(height) > self.max_pixels {
            return Err(crate::Error::TooLarge {
                width,
                height,
                max_pixels: self.max_pixels,
            });
        }
        Ok(())
    }

    pub(crate) fn check_output(&self, field: &str, width: u64, height: u64) -> crate::Result<()> {
        if width == 0 || height == 0 {
            return Err(crate::Error::invalid(
                field,
                format!("would produce an empty image ({width}x{height})"),
            ));
        }
        if width.saturating_mul(height) > self.max_output_pixels {
            return Err(crate::Error::OutputTooLarge {
                field: field.to_string(),
                width,
                height,
                max_pixels: self.max_output_pixels,
            });
        }
        Ok(())
    }
}
