//! The crate's single error type. Every variant names the field or the problem; nothing in
//! this crate panics on bad input.

use std::time::Duration;

/// Everything that can go wrong while decoding, processing or encoding an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image (as its header declares it) has more pixels than allowed.
    #[error("image is {width}x{height} pixels, more than the limit of {max_pixels} pixels")]
    TooLarge {
        /// Declared width.
        width: u64,
        /// Declared height.
        height: u64,
        /// The limit in force.
        max_pixels: u64,
    },
    /// An operation would produce an output larger than allowed.
    #[error(
        "`{field}` would produce a {width}x{height} image, more than the output limit of {max_pixels} pixels"
    )]
    OutputTooLarge {
        /// The field or operation responsible.
        field: String,
        /// Output width.
        width: u64,
        /// Output height.
        height: u64,
        /// The limit in force.
        max_pixels: u64,
    },
    /// The encoded input is bigger than allowed.
    #[error("input is {size} bytes, more than the limit of {max} bytes")]
    InputTooLarge {
        /// Input size in bytes.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// An animation has more frames than allowed (counted from the container, not decoded).
    #[error("animation has more than {max} frames (counted at least {counted})")]
    TooManyFrames {
        /// Frames counted before giving up.
        counted: usize,
        /// The limit in force.
        max: usize,
    },
    /// The metadata segments (EXIF, XMP, ICC ...) are bigger than allowed.
    #[error("metadata segments total {size} bytes, more than the limit of {max} bytes")]
    MetadataTooLarge {
        /// Bytes counted before giving up.
        size: usize,
        /// The limit in force.
        max: usize,
    },
    /// The image declares a zero width or height.
    #[error("image has a zero dimension ({width}x{height})")]
    ZeroSize {
        /// Declared width.
        width: u64,
        /// Declared height.
        height: u64,
    },
    /// The input could not be decoded (corrupt, truncated, ...).
    #[error("cannot decode {format} image: {message}")]
    Decode {
        /// The detected format.
        format: &'static str,
        /// What the decoder said.
        message: String,
    },
    /// The output could not be encoded.
    #[error("cannot encode {format} image: {message}")]
    Encode {
        /// The requested format.
        format: &'static str,
        /// What the encoder said.
        message: String,
    },
    /// The input format or a requested feature is not supported.
    #[error("unsupported: {what}")]
    Unsupported {
        /// What is unsupported.
        what: String,
    },
    /// An option is out of range or malformed.
    #[error("invalid option `{field}`: {message}")]
    InvalidOption {
        /// The field path, e.g. `ops[2].width`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// `maxBytes` cannot be met even at the lowest allowed quality.
    #[error(
        "cannot fit the {format} output in maxBytes {max_bytes}: the smallest attempt (quality {quality}) is {smallest} bytes"
    )]
    MaxBytesUnreachable {
        /// Output format.
        format: &'static str,
        /// The requested bound.
        max_bytes: usize,
        /// Lowest quality tried.
        quality: u8,
        /// Size at that quality.
        smallest: usize,
    },
    /// A layer or watermark refers to an asset that was not supplied.
    #[error("asset `{name}` not found (field `{field}`)")]
    AssetNotFound {
        /// The field naming the asset.
        field: String,
        /// The asset name.
        name: String,
    },
    /// The video frame extractor was given something that is not a video.
    #[error("input is not a video: {message}")]
    NotAVideo {
        /// Why.
        message: String,
    },
    /// The video has no frame at the requested timestamp (usually: past the end).
    #[error("video has no frame at {at:?} (past the end?)")]
    NoFrameAt {
        /// The requested timestamp.
        at: Duration,
    },
    /// The external video tool failed, timed out or is missing.
    #[error("video tool: {message}")]
    VideoTool {
        /// What happened.
        message: String,
    },
    /// Deserialising a JSON spec failed.
    #[error("invalid spec: {0}")]
    Spec(#[from] serde_json::Error),
    /// An I/O error (temporary files, subprocess pipes).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidOption {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn unsupported(what: impl Into<String>) -> Self {
        Error::Unsupported { what: what.into() }
    }

    pub(crate) fn decode(format: crate::Format, message: impl std::fmt::Display) -> Self {
        Error::Decode {
            format: format.name(),
            message: message.to_string(),
        }
    }

    pub(crate) fn encode(format: crate::Format, message: impl std::fmt::Display) -> Self {
        Error::Encode {
            format: format.name(),
            message: message.to_string(),
        }
    }
}
