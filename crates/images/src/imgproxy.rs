//! The imgproxy-compatible URL format served at `GET /img/...`. Pure: no I/O, no async.
//!
//! # URL format
//! ```text
//! /{signature}/{option}/{option}/.../plain/{percent-encoded source URL}@{extension}
//! /{signature}/{option}/{option}/.../{URL-safe base64 source URL, may be split by '/'}.{extension}
//! ```
//! An option is `name:arg1:arg2:...`; the options end at the first path segment without a
//! `:`. Later options override earlier ones; empty arguments of the meta-options (`resize`,
//! `size`, `crop`, `watermark`) keep their defaults. The extension is optional and chooses
//! the output format (it wins over the `format` option).
//!
//! # Signature
//! The URL-safe base64 (no padding) of `HMAC-SHA256(key, salt || path)`, where `path` is
//! everything after the signature segment, starting with its `/` ([`SigningKeys`]). Several
//! key/salt pairs may be configured (rotation): any of them verifies, the first one signs.
//! `unsafe`, `_` and `insecure` stand for "unsigned" and are only accepted when unsigned
//! URLs are enabled. Truncated signatures (imgproxy's `IMGPROXY_SIGNATURE_SIZE`) are not
//! supported: they are [`Error::BadSignature`]. The path must be the raw request path (not
//! percent-decoded), as the signature covers the bytes the client sent.
//!
//! # Options
//! | option (short) | arguments | notes |
//! |---|---|---|
//! | `resize` (`rs`) | `type:width:height:enlarge:extend` | meta-option |
//! | `size` (`s`) | `width:height:enlarge:extend` | meta-option |
//! | `resizing_type` (`rt`) | `fit`, `fill`, `fill-down`, `force`, `auto` | default `fit` |
//! | `width` (`w`), `height` (`h`) | `0..=16384` pixels | `0`: from the aspect ratio |
//! | `enlarge` (`el`) | `1`/`t`/`true`, `0`/`f`/`false` | default false: never upscale |
//! | `extend` (`ex`) | `false` only | extending is not supported |
//! | `gravity` (`g`) | `no so ea we noea nowe soea sowe ce`[`:x:y`], `sm` | `fp`, `obj` rejected |
//! | `crop` (`c`) | `width:height[:gravity...]` | `<1` relative, `0` full size |
//! | `quality` (`q`) | `1..=100` | |
//! | `format` (`f`, `ext`) | `jpg`, `jpeg`, `png`, `webp`, `auto` | `auto`: from `Accept` |
//! | `watermark` (`wm`) | `opacity:position:x:y:scale` | position: gravity codes or `re` (tile) |
//! | `blur` (`bl`) | sigma `(0, 100]` | |
//! | `sharpen` (`sh`) | sigma `(0, 10]` | |
//! | `rotate` (`rot`) | multiple of 90 | clockwise, applied first |
//! | `background` (`bg`) | `R:G:B`, `rrggbb`, `rgb`, or empty (reset) | |
//! | `max_bytes` (`mb`) | `0` (off) or `100..=268435456` | JPEG and WebP only; when unreachable, the smallest attempt (quality 10), as imgproxy |
//! | `dpr` | `(0, 8]` | multiplies width, height and offsets |
//! | `strip_metadata` (`sm`) | bool | ignored: output never carries metadata |
//! | `auto_rotate` (`ar`), `strip_color_profile` (`scp`) | `true` only | always done |
//! | `keep_copyright` (`kcr`) | `false` only | metadata is always stripped |
//! | `cachebuster` (`cb`) | any string | only changes the cache key |
//! | `expires` (`exp`) | unix timestamp | rejected once past (`0`: never) |
//!
//! `preset` (`pr`) is rejected (no presets are configured); other imgproxy options are
//! rejected as unsupported, unknown names as unknown. Every error names its field
//! (`options.width`, `signature`, `source`, `extension`, ...).
//!
//! # Approximations
//! - `fill` without `enlarge` on a source smaller than the box crops the box out of the
//!   unscaled source (as imgproxy); `fill-down` crops the largest window with the box's
//!   aspect ratio instead. `auto` is `fill` when source and box have the same orientation
//!   (landscape or portrait), `fit` otherwise.
//! - Rotation is applied before cropping and resizing (so `width`/`height`/`crop` describe
//!   the rotated image, as in imgproxy), which disables the JPEG DCT-scaling fast path.
//! - Gravity offsets: absolute (`>= 1`) or relative to the image being cropped (`< 1`).
//!   `dpr` scales the offsets of the resize gravity, not those of `crop` (source pixels).
//! - Watermark `scale` is the watermark width as a fraction of the image width (imgproxy
//!   scales to the result size); relative watermark offsets (`-1 < x < 1`, not 0) are
//!   rejected. Watermark `position` defaults to the centre, as in imgproxy.
//! - `background` flattens transparency for JPEG output only.
//! - `quality:0` ("server default" in older imgproxy versions) is rejected.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use verge_imaging::{
    Blur, Color, Crop, Fit, Format, Gravity, Info, MAX_DIMENSION, Op, OutputOptions, Pipeline,
    Resize, Rotate, Sharpen, Watermark,
};

use crate::{Error, Result};

/// Longest accepted request path (after `/img`), in bytes.
pub const MAX_PATH_BYTES: usize = 8 * 1024;
/// Most processing options in one URL.
pub const MAX_OPTIONS: usize = 64;
/// Largest accepted `dpr`.
pub const MAX_DPR: f64 = 8.0;
/// Signature segments that mean "unsigned".
pub const UNSIGNED_PLACEHOLDERS: [&str; 3] = ["unsafe", "_", "insecure"];

/// Bounds of `max_bytes` (as `verge_imaging::OutputOptions::max_bytes`).
const MAX_BYTES_MIN: u64 = 100;
const MAX_BYTES_MAX: u64 = 256 << 20;
/// Bytes of an HMAC-SHA256 digest.
const DIGEST_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

// ---------------------------------------------------------------------------------------
// Signatures

/// Key/salt pairs (hex in config), several for rotation. The signature of a path is the
/// URL-safe base64 (no padding) of `HMAC-SHA256(key, salt || path)`, where `path` is
/// everything after the signature segment, starting with `/`, e.g.
/// `/rs:fit:300:300/plain/http://img.example.com/pretty/image.jpg`.
///
/// `Debug` shows only the number of pairs, never the keys.
#[derive(Clone, Default)]
pub struct SigningKeys {
    /// The keyed MAC (ready to clone) and the salt of each pair, in configuration order.
    pairs: Vec<(HmacSha256, Vec<u8>)>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("pairs", &self.pairs.len())
            .finish_non_exhaustive()
    }
}

fn decode_hex_secret(field: String, hex_text: &str) -> Result<Vec<u8>> {
    if hex_text.is_empty() {
        return Err(Error::Config {
            field,
            message: "must not be empty".into(),
        });
    }
    hex::decode(hex_text).map_err(|e| Error::Config {
        field,
        message: format!("must be hex-encoded ({e})"),
    })
}

impl SigningKeys {
    /// Decodes `(key, salt)` pairs given in hex. Empty, odd-length or non-hex entries are an
    /// [`Error::Config`] naming the entry (`keys[1].salt`); the secrets are never echoed.
    pub fn from_hex(pairs: &[(String, String)]) -> Result<Self> {
        let mut out = Vec::with_capacity(pairs.len());
        for (i, (key, salt)) in pairs.iter().enumerate() {
            let key = decode_hex_secret(format!("keys[{i}].key"), key)?;
            let salt = decode_hex_secret(format!("keys[{i}].salt"), salt)?;
            let mac = <HmacSha256 as Mac>::new_from_slice(&key).map_err(|e| Error::Config {
                field: format!("keys[{i}].key"),
                message: e.to_string(),
            })?;
            out.push((mac, salt));
        }
        Ok(SigningKeys { pairs: out })
    }

    /// Whether no pair is configured (signatures cannot be checked).
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Number of configured pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    fn digest(pair: &(HmacSha256, Vec<u8>), path: &str) -> Vec<u8> {
        let mut mac = pair.0.clone();
        mac.update(&pair.1);
        mac.update(path.as_bytes());
        mac.finalize().into_bytes().to_vec()
    }

    /// The signature of `path` with the first pair; `unsafe` when no pair is configured.
    pub fn sign(&self, path: &str) -> String {
        match self.pairs.first() {
            Some(pair) => URL_SAFE_NO_PAD.encode(Self::digest(pair, path)),
            None => UNSIGNED_PLACEHOLDERS[0].to_string(),
        }
    }

    /// Whether `signature` is the full signature of `path` under any configured pair.
    /// Every pair is tried and compared in constant time; truncated signatures never match.
    pub fn verify(&self, signature: &str, path: &str) -> bool {
        let Ok(given) = URL_SAFE_NO_PAD.decode(signature) else {
            return false;
        };
        if given.len() != DIGEST_LEN {
            return false;
        }
        let mut ok = subtle::Choice::from(0);
        for pair in &self.pairs {
            ok |= Self::digest(pair, path).as_slice().ct_eq(given.as_slice());
        }
        ok.into()
    }
}

// ---------------------------------------------------------------------------------------
// Options

/// How the image is mapped onto the `width` x `height` box (imgproxy's `resizing_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizingType {
    /// Keep the aspect ratio, fit inside the box.
    #[default]
    Fit,
    /// Keep the aspect ratio, cover the box, crop the overflow by gravity.
    Fill,
    /// As `Fill`, but a source smaller than the box is cropped to the box's aspect ratio.
    FillDown,
    /// Stretch to the box (a `0` dimension keeps the source's).
    Force,
    /// `Fill` when source and box have the same orientation, `Fit` otherwise.
    Auto,
}

impl ResizingType {
    /// imgproxy's name.
    pub fn name(self) -> &'static str {
        match self {
            ResizingType::Fit => "fit",
            ResizingType::Fill => "fill",
            ResizingType::FillDown => "fill-down",
            ResizingType::Force => "force",
            ResizingType::Auto => "auto",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "fit" => ResizingType::Fit,
            "fill" => ResizingType::Fill,
            "fill-down" => ResizingType::FillDown,
            "force" => ResizingType::Force,
            "auto" => ResizingType::Auto,
            _ => {
                return Err(Error::invalid(
                    "options.resizing_type",
                    format!(
                        "`{}` is not one of fit, fill, fill-down, force, auto",
                        show(s)
                    ),
                ));
            }
        })
    }
}

/// A gravity with its offsets. Offsets `>= 1` (in absolute value) are pixels, offsets
/// strictly between -1 and 1 are fractions of the image being cropped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GravitySpec {
    /// The anchor (`Smart` takes no offsets).
    pub kind: Gravity,
    /// Horizontal offset, inwards from the anchored edge (a shift when centred).
    pub x_offset: f64,
    /// Vertical offset, inwards from the anchored edge (a shift when centred).
    pub y_offset: f64,
}

impl GravitySpec {
    fn has_offsets(&self) -> bool {
        self.x_offset != 0.0 || self.y_offset != 0.0
    }

    fn write(&self, out: &mut String) {
        out.push_str(gravity_code(self.kind));
        if self.has_offsets() {
            out.push_str(&format!(":{}:{}", self.x_offset, self.y_offset));
        }
    }
}

/// The `crop` option: a window cut out before resizing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CropSpec {
    /// Width: pixels when `>= 1`, a fraction of the source when `< 1`, the full width at `0`.
    pub width: f64,
    /// Height, as `width`.
    pub height: f64,
    /// Placement; the `gravity` option's when absent.
    pub gravity: Option<GravitySpec>,
}

/// Where the watermark goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatermarkPosition {
    /// Anchored by a gravity (never `Smart`).
    Anchor(Gravity),
    /// Repeated over the whole image (`re`); offsets are the gaps between copies.
    Replicate,
}

/// The `watermark` option; the image is the server's configured watermark asset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatermarkSpec {
    /// `(0, 1]`.
    pub opacity: f64,
    /// Anchor or tiling.
    pub position: WatermarkPosition,
    /// Horizontal offset in pixels (scaled by `dpr`).
    pub x_offset: f64,
    /// Vertical offset in pixels (scaled by `dpr`).
    pub y_offset: f64,
    /// Watermark width as a fraction of the image width, `(0, 1]`; `0` keeps its size.
    pub scale: f64,
}

/// The parsed processing options of an `/img` URL. Fields hold normalised values: an
/// option set to its default is indistinguishable from an absent one.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Options {
    /// `resizing_type`.
    pub resizing_type: ResizingType,
    /// Box width in CSS pixels (`0`: derived from the aspect ratio).
    pub width: u32,
    /// Box height in CSS pixels (`0`: derived from the aspect ratio).
    pub height: u32,
    /// Whether images smaller than the box may be scaled up.
    pub enlarge: bool,
    /// Device pixel ratio (`None`: 1).
    pub dpr: Option<f64>,
    /// The gravity of `fill` resizes and of crops without their own (`None`: centre).
    pub gravity: Option<GravitySpec>,
    /// A window cut out before resizing.
    pub crop: Option<CropSpec>,
    /// Lossy quality 1..=100 (`None`: the encoder default).
    pub quality: Option<u8>,
    /// Output format (`None`: chosen from the extension, `Accept` and the source).
    pub format: Option<Format>,
    /// Watermark with the server's watermark image.
    pub watermark: Option<WatermarkSpec>,
    /// Blur sigma.
    pub blur: Option<f64>,
    /// Sharpen sigma.
    pub sharpen: Option<f64>,
    /// Clockwise rotation: 0, 90, 180 or 270.
    pub rotate: u32,
    /// Colour transparent pixels are flattened onto (JPEG).
    pub background: Option<Color>,
    /// Largest output in bytes (JPEG and WebP).
    pub max_bytes: Option<usize>,
    /// Cache buster: part of the cache key only.
    pub cachebuster: Option<String>,
    /// Expiry (unix seconds); checked by [`parse_at`], not part of [`Options::canonical`].
    pub expires: Option<u64>,
}

/// What [`Options::plan`] produces for one source image.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The operations to run.
    pub pipeline: Pipeline,
    /// The encoder settings (`format` is always set).
    pub output: OutputOptions,
    /// The output format.
    pub format: Format,
    /// Whether the format was chosen from the `Accept` header (the response must carry
    /// `Vary: Accept`).
    pub vary_accept: bool,
}

const F_RESIZING_TYPE: &str = "options.resizing_type";
const F_WIDTH: &str = "options.width";
const F_HEIGHT: &str = "options.height";
const F_ENLARGE: &str = "options.enlarge";
const F_EXTEND: &str = "options.extend";
const F_GRAVITY: &str = "options.gravity";
const F_CROP: &str = "options.crop";
const F_QUALITY: &str = "options.quality";
const F_FORMAT: &str = "options.format";
const F_WATERMARK: &str = "options.watermark";
const F_BLUR: &str = "options.blur";
const F_SHARPEN: &str = "options.sharpen";
const F_ROTATE: &str = "options.rotate";
const F_BACKGROUND: &str = "options.background";
const F_MAX_BYTES: &str = "options.max_bytes";
const F_DPR: &str = "options.dpr";
const F_EXPIRES: &str = "options.expires";

/// imgproxy options Verge recognises but does not implement (whitespace-separated).
const UNSUPPORTED: &str = "\
min-width mw min-height mh zoom z extend_aspect_ratio extend_ar exar trim t padding \
pd pixelate pix format_quality fq skip_processing skp raw filename fn \
return_attachment att enforce_thumbnail eth max_src_resolution msr \
max_src_file_size msfs max_animation_frames maf max_animation_frame_resolution mafr \
max_result_dimension mrd resizing_algorithm ra objects_position obj_pos op \
crop_aspect_ratio crop_ar car background_alpha bga adjust a brightness br contrast \
co saturation sa monochrome mc duotone dt unsharp_masking ush blur_detections bd \
draw_detections dd colorize col gradient gr watermark_url wmu watermark_text wmt \
watermark_size wms watermark_rotate wm_rot wmr watermark_shadow wmsh style st dpi \
autoquality aq jpeg_options jpgo png_options pngo webp_options webpo page pg pages \
pgs disable_animation da video_thumbnail_second vts video_thumbnail_keyframes vtk \
video_thumbnail_tile vtt video_thumbnail_animation vta fallback_image_url fiu \
hashsum hs";

/// `s` for an error message: at most 64 characters, control characters escaped.
fn show(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().nth(64).is_some() {
        out.push('…');
    }
    out
}

fn max_args(field: &str, args: &[&str], max: usize) -> Result<()> {
    if args.len() > max {
        return Err(Error::invalid(
            field,
            format!("takes at most {max} arguments, got {}", args.len()),
        ));
    }
    Ok(())
}

fn single<'a>(field: &str, args: &[&'a str]) -> Result<&'a str> {
    match args {
        [one] => Ok(one),
        _ => Err(Error::invalid(
            field,
            format!("takes exactly one argument, got {}", args.len()),
        )),
    }
}

fn parse_bool(field: &str, s: &str) -> Result<bool> {
    match s {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(Error::invalid(
            field,
            format!("`{}` is not a boolean (1, t, true, 0, f, false)", show(s)),
        )),
    }
}

fn parse_int(field: &str, s: &str) -> Result<i64> {
    s.parse::<i64>()
        .map_err(|_| Error::invalid(field, format!("`{}` is not an integer", show(s))))
}

fn parse_float(field: &str, s: &str) -> Result<f64> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(Error::invalid(
            field,
            format!("`{}` is not a finite number", show(s)),
        )),
    }
}

fn parse_dim(field: &str, s: &str) -> Result<u32> {
    let v = parse_int(field, s)?;
    if !(0..=i64::from(MAX_DIMENSION)).contains(&v) {
        return Err(Error::invalid(
            field,
            format!("must be between 0 and {MAX_DIMENSION}, got {v}"),
        ));
    }
    Ok(v as u32)
}

/// An offset: relative when strictly between -1 and 1, else pixels up to `MAX_DIMENSION`.
fn parse_offset(field: &str, s: &str) -> Result<f64> {
    let v = parse_float(field, s)?;
    if v.abs() > f64::from(MAX_DIMENSION) {
        return Err(Error::invalid(
            field,
            format!("must be between -{MAX_DIMENSION} and {MAX_DIMENSION}, got {v}"),
        ));
    }
    Ok(v)
}

fn gravity_code(g: Gravity) -> &'static str {
    match g {
        Gravity::Centre => "ce",
        Gravity::North => "no",
        Gravity::South => "so",
        Gravity::East => "ea",
        Gravity::West => "we",
        Gravity::NorthEast => "noea",
        Gravity::NorthWest => "nowe",
        Gravity::SouthEast => "soea",
        Gravity::SouthWest => "sowe",
        Gravity::Smart => "sm",
    }
}

/// A gravity type code; `smart` says whether `sm` is allowed.
fn parse_gravity_kind(field: &str, s: &str, smart: bool) -> Result<Gravity> {
    Ok(match s {
        "ce" => Gravity::Centre,
        "no" => Gravity::North,
        "so" => Gravity::South,
        "ea" => Gravity::East,
        "we" => Gravity::West,
        "noea" => Gravity::NorthEast,
        "nowe" => Gravity::NorthWest,
        "soea" => Gravity::SouthEast,
        "sowe" => Gravity::SouthWest,
        "sm" if smart => Gravity::Smart,
        "fp" => {
            return Err(Error::invalid(
                field,
                "focus-point gravity (`fp`) is not supported",
            ));
        }
        "obj" | "objw" => {
            return Err(Error::invalid(
                field,
                "object-oriented gravity is not supported",
            ));
        }
        _ => {
            return Err(Error::invalid(
                field,
                format!(
                    "`{}` is not one of no, so, ea, we, noea, nowe, soea, sowe, ce{}",
                    show(s),
                    if smart { ", sm" } else { "" }
                ),
            ));
        }
    })
}

/// `type[:x_offset[:y_offset]]` or `sm`.
fn parse_gravity(field: &str, args: &[&str]) -> Result<GravitySpec> {
    let kind = parse_gravity_kind(field, args.first().copied().unwrap_or(""), true)?;
    if kind == Gravity::Smart {
        if args.len() > 1 {
            return Err(Error::invalid(field, "`sm` takes no offsets"));
        }
        return Ok(GravitySpec {
            kind,
            x_offset: 0.0,
            y_offset: 0.0,
        });
    }
    max_args(field, args, 3)?;
    let offset = |i: usize, axis: &str| -> Result<f64> {
        match args.get(i) {
            Some(s) if !s.is_empty() => parse_offset(&format!("{field}.{axis}_offset"), s),
            _ => Ok(0.0),
        }
    };
    Ok(GravitySpec {
        kind,
        x_offset: offset(1, "x")?,
        y_offset: offset(2, "y")?,
    })
}

/// A crop size: pixels (`>= 1`), a fraction (`< 1`) or `0` (full size).
fn parse_crop_size(field: &str, s: &str) -> Result<f64> {
    if s.is_empty() {
        return Ok(0.0);
    }
    let v = parse_float(field, s)?;
    if !(0.0..=f64::from(MAX_DIMENSION)).contains(&v) {
        return Err(Error::invalid(
            field,
            format!("must be between 0 and {MAX_DIMENSION}, got {v}"),
        ));
    }
    Ok(v)
}

fn parse_hex_colour(s: &str) -> Option<Color> {
    if !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(s.get(i..i + 2)?, 16).ok();
    let nib = |i: usize| u8::from_str_radix(s.get(i..=i)?, 16).ok().map(|v| v * 17);
    match s.len() {
        3 => Some(Color([nib(0)?, nib(1)?, nib(2)?, 255])),
        6 => Some(Color([byte(0)?, byte(2)?, byte(4)?, 255])),
        _ => None,
    }
}

/// An output format name (`extension` or the `format` option). `Ok(None)` is `auto`
/// (only when `allow_auto`).
fn parse_format(field: &str, name: &str, allow_auto: bool) -> Result<Option<Format>> {
    let lower = name.to_ascii_lowercase();
    Ok(Some(match lower.as_str() {
        "jpg" | "jpeg" => Format::Jpeg,
        "png" => Format::Png,
        "webp" => Format::Webp,
        "auto" if allow_auto => return Ok(None),
        "gif" => {
            return Err(Error::invalid(
                field,
                "GIF output is not supported (use jpg, png or webp)",
            ));
        }
        "avif" | "heic" | "heif" | "jxl" | "tiff" | "tif" | "bmp" | "ico" | "svg" | "pdf"
        | "mp4" | "best" => {
            return Err(Error::invalid(
                field,
                format!("`{lower}` output is not supported (use jpg, png or webp)"),
            ));
        }
        _ => {
            return Err(Error::invalid(
                field,
                format!("unknown format `{}` (use jpg, png or webp)", show(name)),
            ));
        }
    }))
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Jpeg => "jpg",
        Format::Png => "png",
        Format::Gif => "gif",
        Format::Webp => "webp",
    }
}

impl Options {
    /// Parses an option string such as `rs:fill:300:400:0/g:sm/q:80` (segments separated
    /// by `/`, each `name:args`). `now_unix` is compared with `expires`.
    pub fn parse(options: &str, now_unix: u64) -> Result<Options> {
        let trimmed = options.trim_matches('/');
        if trimmed.is_empty() {
            return Ok(Options::default());
        }
        let segments: Vec<&str> = trimmed.split('/').collect();
        Self::from_segments(&segments, now_unix)
    }

    fn from_segments(segments: &[&str], now_unix: u64) -> Result<Options> {
        if segments.len() > MAX_OPTIONS {
            return Err(Error::invalid(
                "options",
                format!("at most {MAX_OPTIONS} options, got {}", segments.len()),
            ));
        }
        let mut o = Options::default();
        for seg in segments {
            let Some((name, rest)) = seg.split_once(':') else {
                return Err(Error::invalid(
                    "options",
                    format!("`{}` is not an option (`name:argument:...`)", show(seg)),
                ));
            };
            let args: Vec<&str> = rest.split(':').collect();
            o.apply(name, &args, now_unix)?;
        }
        o.finish()?;
        Ok(o)
    }

    fn apply(&mut self, name: &str, args: &[&str], now_unix: u64) -> Result<()> {
        match name {
            "resize" | "rs" => self.apply_resize(args)?,
            "size" | "s" => self.apply_size(args)?,
            "resizing_type" | "rt" => {
                self.resizing_type = ResizingType::parse(single(F_RESIZING_TYPE, args)?)?;
            }
            "width" | "w" => self.width = parse_dim(F_WIDTH, single(F_WIDTH, args)?)?,
            "height" | "h" => self.height = parse_dim(F_HEIGHT, single(F_HEIGHT, args)?)?,
            "enlarge" | "el" => self.enlarge = parse_bool(F_ENLARGE, single(F_ENLARGE, args)?)?,
            "extend" | "ex" => apply_extend(args)?,
            "gravity" | "g" => {
                let g = parse_gravity(F_GRAVITY, args)?;
                self.gravity = (g.kind != Gravity::Centre || g.has_offsets()).then_some(g);
            }
            "crop" | "c" => self.apply_crop(args)?,
            "quality" | "q" => {
                let q = parse_int(F_QUALITY, single(F_QUALITY, args)?)?;
                if !(1..=100).contains(&q) {
                    return Err(Error::invalid(
                        F_QUALITY,
                        format!("must be between 1 and 100, got {q}"),
                    ));
                }
                self.quality = Some(q as u8);
            }
            "format" | "f" | "ext" => {
                self.format = parse_format(F_FORMAT, single(F_FORMAT, args)?, true)?;
            }
            "watermark" | "wm" => self.apply_watermark(args)?,
            "blur" | "bl" => self.blur = Some(parse_sigma(F_BLUR, args, 100.0)?),
            "sharpen" | "sh" => self.sharpen = Some(parse_sigma(F_SHARPEN, args, 10.0)?),
            "rotate" | "rot" => {
                let a = parse_int(F_ROTATE, single(F_ROTATE, args)?)?;
                if a % 90 != 0 {
                    return Err(Error::invalid(
                        F_ROTATE,
                        format!("must be a multiple of 90, got {a}"),
                    ));
                }
                self.rotate = a.rem_euclid(360) as u32;
            }
            "background" | "bg" => self.apply_background(args)?,
            "max_bytes" | "mb" => {
                let v = parse_int(F_MAX_BYTES, single(F_MAX_BYTES, args)?)?;
                self.max_bytes = match v {
                    0 => None,
                    v if (MAX_BYTES_MIN as i64..=MAX_BYTES_MAX as i64).contains(&v) => {
                        Some(v as usize)
                    }
                    v => {
                        return Err(Error::invalid(
                            F_MAX_BYTES,
                            format!(
                                "must be 0 (off) or between {MAX_BYTES_MIN} and {MAX_BYTES_MAX}, got {v}"
                            ),
                        ));
                    }
                };
            }
            "dpr" => {
                let d = parse_float(F_DPR, single(F_DPR, args)?)?;
                if d <= 0.0 || d > MAX_DPR {
                    return Err(Error::invalid(
                        F_DPR,
                        format!("must be above 0 and at most {MAX_DPR}, got {d}"),
                    ));
                }
                self.dpr = (d != 1.0).then_some(d);
            }
            "strip_metadata" | "sm" => {
                // Outputs never carry metadata; the value is only checked.
                parse_bool(
                    "options.strip_metadata",
                    single("options.strip_metadata", args)?,
                )?;
            }
            "auto_rotate" | "ar" => {
                let f = "options.auto_rotate";
                if !parse_bool(f, single(f, args)?)? {
                    return Err(Error::invalid(f, "the EXIF orientation is always applied"));
                }
            }
            "strip_color_profile" | "scp" => {
                let f = "options.strip_color_profile";
                if !parse_bool(f, single(f, args)?)? {
                    return Err(Error::invalid(f, "outputs are always converted to sRGB"));
                }
            }
            "keep_copyright" | "kcr" => {
                let f = "options.keep_copyright";
                if parse_bool(f, single(f, args)?)? {
                    return Err(Error::invalid(f, "metadata is always stripped"));
                }
            }
            "cachebuster" | "cb" => {
                let cb = single("options.cachebuster", args)?;
                self.cachebuster = (!cb.is_empty()).then(|| cb.to_string());
            }
            "expires" | "exp" => {
                let ts = parse_int(F_EXPIRES, single(F_EXPIRES, args)?)?;
                if ts > 0 && (ts as u64) < now_unix {
                    return Err(Error::invalid(
                        F_EXPIRES,
                        format!("the URL expired (at {ts}, now {now_unix})"),
                    ));
                }
                self.expires = (ts > 0).then_some(ts as u64);
            }
            "preset" | "pr" => {
                return Err(Error::invalid(
                    "options.preset",
                    "presets are not configured on this server",
                ));
            }
            "" => return Err(Error::invalid("options", "empty option name")),
            n if UNSUPPORTED.split_ascii_whitespace().any(|u| u == n) => {
                return Err(Error::invalid(
                    format!("options.{n}"),
                    "this imgproxy option is not supported",
                ));
            }
            n => {
                return Err(Error::invalid(
                    format!("options.{}", show(n)),
                    "unknown option",
                ));
            }
        }
        Ok(())
    }

    /// `resize:%type:%width:%height:%enlarge:%extend`.
    fn apply_resize(&mut self, args: &[&str]) -> Result<()> {
        max_args("options.resize", args, 8)?;
        if let Some(t) = args.first().filter(|s| !s.is_empty()) {
            self.resizing_type = ResizingType::parse(t)?;
        }
        if args.len() > 1 {
            self.apply_size(&args[1..])?;
        }
        Ok(())
    }

    /// `size:%width:%height:%enlarge:%extend`.
    fn apply_size(&mut self, args: &[&str]) -> Result<()> {
        max_args("options.size", args, 7)?;
        let arg = |i: usize| args.get(i).copied().filter(|s| !s.is_empty());
        if let Some(w) = arg(0) {
            self.width = parse_dim(F_WIDTH, w)?;
        }
        if let Some(h) = arg(1) {
            self.height = parse_dim(F_HEIGHT, h)?;
        }
        if let Some(e) = arg(2) {
            self.enlarge = parse_bool(F_ENLARGE, e)?;
        }
        if arg(3).is_some() {
            apply_extend(&args[3..])?;
        }
        Ok(())
    }

    /// `crop:%width:%height:%gravity...`.
    fn apply_crop(&mut self, args: &[&str]) -> Result<()> {
        max_args(F_CROP, args, 5)?;
        let width = parse_crop_size("options.crop.width", args.first().copied().unwrap_or(""))?;
        let height = parse_crop_size("options.crop.height", args.get(1).copied().unwrap_or(""))?;
        let gravity = match args.get(2..) {
            Some(g) if !g.is_empty() => Some(parse_gravity("options.crop.gravity", g)?),
            _ => None,
        };
        self.crop = (width != 0.0 || height != 0.0).then_some(CropSpec {
            width,
            height,
            gravity,
        });
        Ok(())
    }

    /// `watermark:%opacity:%position:%x_offset:%y_offset:%scale`.
    fn apply_watermark(&mut self, args: &[&str]) -> Result<()> {
        max_args(F_WATERMARK, args, 5)?;
        let arg = |i: usize| args.get(i).copied().filter(|s| !s.is_empty());
        let f_opacity = "options.watermark.opacity";
        let opacity = parse_float(f_opacity, arg(0).unwrap_or(""))?;
        if !(0.0..=1.0).contains(&opacity) {
            return Err(Error::invalid(
                f_opacity,
                format!("must be between 0 and 1, got {opacity}"),
            ));
        }
        let position = match arg(1) {
            None => WatermarkPosition::Anchor(Gravity::Centre),
            Some("re") => WatermarkPosition::Replicate,
            Some("ch") => {
                return Err(Error::invalid(
                    "options.watermark.position",
                    "chessboard tiling (`ch`) is not supported",
                ));
            }
            Some(p) => WatermarkPosition::Anchor(parse_gravity_kind(
                "options.watermark.position",
                p,
                false,
            )?),
        };
        let offset = |i: usize, field: &str| -> Result<f64> {
            let Some(s) = arg(i) else { return Ok(0.0) };
            let v = parse_offset(field, s)?;
            if v != 0.0 && v.abs() < 1.0 {
                return Err(Error::invalid(
                    field,
                    "relative watermark offsets are not supported (use pixels)",
                ));
            }
            if position == WatermarkPosition::Replicate && v < 0.0 {
                return Err(Error::invalid(
                    field,
                    "gaps between repeated watermarks cannot be negative",
                ));
            }
            Ok(v)
        };
        let x_offset = offset(2, "options.watermark.x_offset")?;
        let y_offset = offset(3, "options.watermark.y_offset")?;
        let scale = match arg(4) {
            None => 0.0,
            Some(s) => {
                let f = "options.watermark.scale";
                let v = parse_float(f, s)?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(Error::invalid(
                        f,
                        format!("must be between 0 and 1, got {v}"),
                    ));
                }
                v
            }
        };
        self.watermark = (opacity > 0.0).then_some(WatermarkSpec {
            opacity,
            position,
            x_offset,
            y_offset,
            scale,
        });
        Ok(())
    }

    /// `background:%R:%G:%B`, `background:%hex_color` or `background:` (reset).
    fn apply_background(&mut self, args: &[&str]) -> Result<()> {
        self.background = match args {
            [""] => None,
            [hex] => Some(parse_hex_colour(hex).ok_or_else(|| {
                Error::invalid(
                    F_BACKGROUND,
                    format!("`{}` is not a hex colour (rgb or rrggbb)", show(hex)),
                )
            })?),
            [r, g, b] => {
                let channel = |s: &str, name: &str| {
                    s.parse::<u8>().map_err(|_| {
                        Error::invalid(
                            F_BACKGROUND,
                            format!("{name} `{}` is not between 0 and 255", show(s)),
                        )
                    })
                };
                Some(Color([
                    channel(r, "red")?,
                    channel(g, "green")?,
                    channel(b, "blue")?,
                    255,
                ]))
            }
            _ => {
                return Err(Error::invalid(
                    F_BACKGROUND,
                    format!(
                        "takes R:G:B, a hex colour or nothing, got {} arguments",
                        args.len()
                    ),
                ));
            }
        };
        Ok(())
    }

    /// Checks that combine several options.
    fn finish(&self) -> Result<()> {
        let dpr = self.dpr.unwrap_or(1.0);
        for (field, v) in [(F_WIDTH, self.width), (F_HEIGHT, self.height)] {
            let scaled = f64::from(v) * dpr;
            if scaled.round() > f64::from(MAX_DIMENSION) {
                return Err(Error::invalid(
                    field,
                    format!("{v} x dpr {dpr} is more than {MAX_DIMENSION} pixels"),
                ));
            }
        }
        Ok(())
    }

    /// The canonical option string: full option names, sorted, defaults omitted, values
    /// normalised. Equivalent option strings give the same canonical string, which parses
    /// back to the same [`Options`] (except `expires`, which is left out as it does not
    /// change the image). Used with the source and the chosen format as the cache key.
    pub fn canonical(&self) -> String {
        let mut segs: Vec<String> = Vec::new();
        if self.resizing_type != ResizingType::Fit {
            segs.push(format!("resizing_type:{}", self.resizing_type.name()));
        }
        if self.width != 0 {
            segs.push(format!("width:{}", self.width));
        }
        if self.height != 0 {
            segs.push(format!("height:{}", self.height));
        }
        if self.enlarge {
            segs.push("enlarge:1".into());
        }
        if let Some(d) = self.dpr {
            segs.push(format!("dpr:{d}"));
        }
        if let Some(g) = &self.gravity {
            let mut s = String::from("gravity:");
            g.write(&mut s);
            segs.push(s);
        }
        if let Some(c) = &self.crop {
            let mut s = format!("crop:{}:{}", c.width, c.height);
            if let Some(g) = &c.gravity {
                s.push(':');
                g.write(&mut s);
            }
            segs.push(s);
        }
        if let Some(q) = self.quality {
            segs.push(format!("quality:{q}"));
        }
        if let Some(f) = self.format {
            segs.push(format!("format:{}", format_name(f)));
        }
        if let Some(w) = &self.watermark {
            let pos = match w.position {
                WatermarkPosition::Anchor(g) => gravity_code(g),
                WatermarkPosition::Replicate => "re",
            };
            segs.push(format!(
                "watermark:{}:{pos}:{}:{}:{}",
                w.opacity, w.x_offset, w.y_offset, w.scale
            ));
        }
        if let Some(b) = self.blur {
            segs.push(format!("blur:{b}"));
        }
        if let Some(s) = self.sharpen {
            segs.push(format!("sharpen:{s}"));
        }
        if self.rotate != 0 {
            segs.push(format!("rotate:{}", self.rotate));
        }
        if let Some(Color([r, g, b, _])) = self.background {
            segs.push(format!("background:{r:02x}{g:02x}{b:02x}"));
        }
        if let Some(m) = self.max_bytes {
            segs.push(format!("max_bytes:{m}"));
        }
        if let Some(cb) = &self.cachebuster {
            segs.push(format!("cachebuster:{cb}"));
        }
        segs.sort();
        segs.join("/")
    }

    /// The output format and whether it was chosen from `accept` (then the response must
    /// carry `Vary: Accept`). The URL's extension wins over the `format` option; with
    /// neither, WebP when `accept` lists `image/webp` (with a non-zero q), else the
    /// source's format (PNG for GIF sources, as GIF output is unsupported).
    pub fn choose_format(
        &self,
        extension: Option<Format>,
        source_format: Format,
        accept: Option<&str>,
    ) -> Result<(Format, bool)> {
        match (extension, self.format) {
            (Some(Format::Gif), _) => Err(Error::invalid(
                "extension",
                "GIF output is not supported (use jpg, png or webp)",
            )),
            (None, Some(Format::Gif)) => Err(Error::invalid(
                F_FORMAT,
                "GIF output is not supported (use jpg, png or webp)",
            )),
            (Some(f), _) | (None, Some(f)) => Ok((f, false)),
            (None, None) => {
                let fallback = match source_format {
                    Format::Gif => Format::Png,
                    f => f,
                };
                if fallback == Format::Webp {
                    Ok((Format::Webp, false))
                } else if accept.is_some_and(accepts_webp) {
                    Ok((Format::Webp, true))
                } else {
                    Ok((fallback, true))
                }
            }
        }
    }

    /// The pipeline and encoder settings for a source described by `source` (its format
    /// and displayed size, from [`verge_imaging::info`]). `extension` is the URL's,
    /// `accept` the request's `Accept` header, `watermark_asset` the asset name of the
    /// server's watermark image (empty when none is configured: watermark requests fail).
    /// The result always passes `Pipeline::validate` and `OutputOptions::validate`.
    pub fn plan(
        &self,
        extension: Option<Format>,
        source: &Info,
        accept: Option<&str>,
        watermark_asset: &str,
    ) -> Result<Plan> {
        let (format, vary_accept) = self.choose_format(extension, source.format, accept)?;
        let mut ops = Vec::new();
        let mut size = (source.display_width.max(1), source.display_height.max(1));
        if self.rotate != 0 {
            ops.push(Op::Rotate(Rotate {
                degrees: self.rotate,
            }));
            if self.rotate % 180 == 90 {
                size = (size.1, size.0);
            }
        }
        if let Some(c) = &self.crop {
            let inner = (crop_len(c.width, size.0), crop_len(c.height, size.1));
            if inner != size {
                let gravity = c.gravity.or(self.gravity);
                ops.push(crop_op(size, inner, gravity.as_ref(), 1.0));
                size = inner;
            }
        }
        self.resize_ops(size, &mut ops);
        if let Some(sigma) = self.blur {
            ops.push(Op::Blur(Blur {
                sigma: sigma.max(0.1) as f32,
            }));
        }
        if let Some(sigma) = self.sharpen {
            ops.push(Op::Sharpen(Sharpen {
                sigma: sigma.max(0.1) as f32,
                amount: 1.0,
            }));
        }
        if let Some(w) = &self.watermark {
            if watermark_asset.is_empty() {
                return Err(Error::invalid(
                    F_WATERMARK,
                    "no watermark image is configured on this server",
                ));
            }
            let dpr = self.dpr.unwrap_or(1.0);
            let px = |v: f64| {
                (v * dpr)
                    .round()
                    .clamp(-f64::from(MAX_DIMENSION), f64::from(MAX_DIMENSION))
                    as i32
            };
            let (position, tile) = match w.position {
                WatermarkPosition::Anchor(g) => (g, false),
                WatermarkPosition::Replicate => (Gravity::Centre, true),
            };
            ops.push(Op::Watermark(Watermark {
                asset: watermark_asset.to_string(),
                position,
                offset_x: px(w.x_offset),
                offset_y: px(w.y_offset),
                opacity: w.opacity as f32,
                scale: (w.scale > 0.0).then(|| w.scale.max(0.01) as f32),
                tile,
            }));
        }
        let defaults = OutputOptions::default();
        let quality = self.quality.unwrap_or(defaults.quality);
        let lossy = matches!(format, Format::Jpeg | Format::Webp);
        let output = OutputOptions {
            format: Some(format),
            quality,
            min_quality: defaults.min_quality.min(quality),
            max_bytes: self.max_bytes.filter(|_| lossy),
            // imgproxy answers its smallest attempt when max_bytes cannot be met.
            max_bytes_best_effort: true,
            background: self.background.unwrap_or(defaults.background),
            ..defaults
        };
        let pipeline = Pipeline { ops };
        pipeline.validate()?;
        output.validate()?;
        Ok(Plan {
            pipeline,
            output,
            format,
            vary_accept,
        })
    }

    /// Appends the resize (or crop) implementing `resizing_type`/`width`/`height`/`enlarge`
    /// for a source of `src` pixels.
    fn resize_ops(&self, src: (u32, u32), ops: &mut Vec<Op>) {
        let dpr = self.dpr.unwrap_or(1.0);
        let scaled = |v: u32| -> u32 {
            if v == 0 {
                0
            } else {
                ((f64::from(v) * dpr).round() as u32).clamp(1, MAX_DIMENSION)
            }
        };
        let (w, h) = (scaled(self.width), scaled(self.height));
        if w == 0 && h == 0 {
            return;
        }
        let nz = |v: u32| (v != 0).then_some(v);
        let without_enlargement = !self.enlarge;
        let kind = match self.resizing_type {
            ResizingType::Auto if w != 0 && h != 0 => {
                if (src.0 >= src.1) == (w >= h) {
                    ResizingType::Fill
                } else {
                    ResizingType::Fit
                }
            }
            ResizingType::Auto => ResizingType::Fit,
            ResizingType::Fill | ResizingType::FillDown if w == 0 || h == 0 => ResizingType::Fit,
            t => t,
        };
        match kind {
            ResizingType::Fit | ResizingType::Auto => ops.push(Op::Resize(Resize {
                width: nz(w),
                height: nz(h),
                fit: Fit::Fit,
                without_enlargement,
                ..Resize::default()
            })),
            ResizingType::Force => {
                let (tw, th) = (nz(w).unwrap_or(src.0), nz(h).unwrap_or(src.1));
                ops.push(Op::Resize(Resize {
                    width: Some(tw.min(MAX_DIMENSION)),
                    height: Some(th.min(MAX_DIMENSION)),
                    fit: Fit::Force,
                    without_enlargement,
                    ..Resize::default()
                }));
            }
            ResizingType::Fill | ResizingType::FillDown => {
                let (sw, sh) = (f64::from(src.0), f64::from(src.1));
                let (bw, bh) = (f64::from(w), f64::from(h));
                let s = (bw / sw).max(bh / sh);
                let gravity = self.gravity;
                if without_enlargement && s > 1.0 {
                    // The source is smaller than the box: crop, never scale.
                    let inner = if kind == ResizingType::Fill {
                        (w.min(src.0), h.min(src.1))
                    } else {
                        (round_len(bw / s, src.0), round_len(bh / s, src.1))
                    };
                    if inner != src {
                        ops.push(crop_op(src, inner, gravity.as_ref(), dpr));
                    }
                } else if gravity.is_some_and(|g| g.has_offsets()) {
                    // Offsets: cut the window explicitly (offsets are output pixels, so
                    // divided by the scale), then stretch it to the box.
                    let inner = (round_len(bw / s, src.0), round_len(bh / s, src.1));
                    if inner != src {
                        ops.push(crop_op(src, inner, gravity.as_ref(), dpr / s));
                    }
                    ops.push(Op::Resize(Resize {
                        width: Some(w),
                        height: Some(h),
                        fit: Fit::Force,
                        without_enlargement: false,
                        ..Resize::default()
                    }));
                } else {
                    ops.push(Op::Resize(Resize {
                        width: Some(w),
                        height: Some(h),
                        fit: Fit::Fill,
                        gravity: gravity.map_or(Gravity::Centre, |g| g.kind),
                        without_enlargement,
                        ..Resize::default()
                    }));
                }
            }
        }
    }
}

/// `extend:%extend:%gravity`: only "don't extend" is supported.
fn apply_extend(args: &[&str]) -> Result<()> {
    max_args(F_EXTEND, args, 4)?;
    if parse_bool(F_EXTEND, args.first().copied().unwrap_or(""))? {
        return Err(Error::invalid(
            F_EXTEND,
            "extending images (padding to the requested size) is not supported",
        ));
    }
    Ok(())
}

/// `sigma` in `(0, max]`.
fn parse_sigma(field: &str, args: &[&str], max: f64) -> Result<f64> {
    let v = parse_float(field, single(field, args)?)?;
    if v <= 0.0 || v > max {
        return Err(Error::invalid(
            field,
            format!("must be above 0 and at most {max}, got {v}"),
        ));
    }
    Ok(v)
}

fn round_len(v: f64, full: u32) -> u32 {
    (v.round() as u32).clamp(1, full.max(1))
}

/// A crop length from its spec: `0` full, `< 1` a fraction, else pixels (clamped).
fn crop_len(v: f64, full: u32) -> u32 {
    if v == 0.0 {
        full
    } else if v < 1.0 {
        round_len(v * f64::from(full), full)
    } else {
        round_len(v, full)
    }
}

/// A crop of `inner` out of `outer`, placed by `gravity`; absolute offsets are multiplied
/// by `offset_scale`, relative ones taken as fractions of `outer`.
fn crop_op(
    outer: (u32, u32),
    inner: (u32, u32),
    gravity: Option<&GravitySpec>,
    offset_scale: f64,
) -> Op {
    let crop = |gravity: Gravity, x: Option<u32>, y: Option<u32>| {
        Op::Crop(Crop {
            width: inner.0,
            height: inner.1,
            x,
            y,
            gravity,
        })
    };
    let Some(g) = gravity.filter(|g| g.has_offsets()) else {
        return crop(gravity.map_or(Gravity::Centre, |g| g.kind), None, None);
    };
    let offset = |v: f64, full: u32| {
        if v.abs() < 1.0 {
            v * f64::from(full)
        } else {
            v * offset_scale
        }
    };
    let (dx, dy) = (offset(g.x_offset, outer.0), offset(g.y_offset, outer.1));
    let px = |v: f64| v.round().clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32;
    let (x, y) = g.kind.place(outer, inner, (px(dx), px(dy)));
    let x = x.clamp(0, i64::from(outer.0.saturating_sub(inner.0))) as u32;
    let y = y.clamp(0, i64::from(outer.1.saturating_sub(inner.1))) as u32;
    crop(Gravity::Centre, Some(x), Some(y))
}

/// Whether an `Accept` header lists `image/webp` with a non-zero quality.
fn accepts_webp(accept: &str) -> bool {
    accept.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        if !media.eq_ignore_ascii_case("image/webp") {
            return false;
        }
        parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .all(|q| q.trim().parse::<f64>().map_or(true, |q| q > 0.0))
    })
}

// ---------------------------------------------------------------------------------------
// Requests

/// A parsed, signature-checked `/img` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ImgRequest {
    /// The signature segment as sent.
    pub signature: String,
    /// What the signature covers: everything after the signature segment, from its `/`.
    pub signed_path: String,
    /// The processing options.
    pub options: Options,
    /// The source URL, decoded (plain: percent-decoded; base64: URL-safe base64-decoded).
    pub source: String,
    /// The output format asked by the extension (`@png` / `.png`).
    pub extension: Option<Format>,
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// [`parse_at`] with the system clock's current time (for `expires`).
pub fn parse(path: &str, keys: &SigningKeys, unsigned_allowed: bool) -> Result<ImgRequest> {
    parse_at(path, keys, unsigned_allowed, now_unix())
}

/// Parses `path`, the raw (not percent-decoded) request path after the `/img` prefix, e.g.
/// `/{sig}/rs:fit:300:300/plain/http://x/y.jpg@png`, and checks its signature before
/// anything else:
/// - `unsafe`, `_` or `insecure`: accepted only when `unsigned_allowed`, else
///   [`Error::Unsigned`];
/// - any other signature must verify with one of `keys` (else [`Error::BadSignature`]),
///   unless no key is configured and `unsigned_allowed`, in which case it is ignored (as
///   imgproxy without keys).
///
/// `now_unix` (seconds) is compared with the `expires` option. Pure.
pub fn parse_at(
    path: &str,
    keys: &SigningKeys,
    unsigned_allowed: bool,
    now_unix: u64,
) -> Result<ImgRequest> {
    if path.len() > MAX_PATH_BYTES {
        return Err(Error::invalid(
            "path",
            format!("longer than {MAX_PATH_BYTES} bytes ({})", path.len()),
        ));
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(Error::invalid("path", "must start with `/`"));
    };
    let (signature, signed_path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if signature.is_empty() || signature.contains(':') {
        return Err(Error::invalid(
            "signature",
            "missing: the first path segment must be the signature (or `unsafe`)",
        ));
    }
    if UNSIGNED_PLACEHOLDERS.contains(&signature) {
        if !unsigned_allowed {
            return Err(Error::Unsigned);
        }
    } else if (!keys.is_empty() || !unsigned_allowed) && !keys.verify(signature, signed_path) {
        return Err(Error::BadSignature);
    }
    let segments: Vec<&str> = signed_path.split('/').skip(1).collect();
    let n_options = segments.iter().take_while(|s| s.contains(':')).count();
    let (option_segments, source_segments) = segments.split_at(n_options);
    let options = Options::from_segments(option_segments, now_unix)?;
    let (source, extension) = decode_source(source_segments)?;
    let extension = match extension {
        Some(e) => parse_format("extension", &e, false)?,
        None => None,
    };
    Ok(ImgRequest {
        signature: signature.to_string(),
        signed_path: signed_path.to_string(),
        options,
        source,
        extension,
    })
}

/// The source URL and the extension text from the segments after the options.
fn decode_source(segments: &[&str]) -> Result<(String, Option<String>)> {
    let (source, ext) = match segments {
        [] => return Err(Error::invalid("source", "missing")),
        ["plain", rest @ ..] => {
            // `rest` may be empty (`.../plain`) or contain empty segments (`http://`).
            let joined = rest.join("/");
            let mut parts = joined.splitn(3, '@');
            let url = parts.next().unwrap_or("");
            let ext = parts.next();
            if parts.next().is_some() {
                return Err(Error::invalid(
                    "extension",
                    "more than one `@` (encode `@` in the source URL as %40)",
                ));
            }
            let ext = ext.filter(|e| !e.is_empty()).map(str::to_owned);
            (percent_decode(url)?, ext)
        }
        ["enc", _, ..] => {
            return Err(Error::invalid(
                "source",
                "encrypted source URLs are not supported",
            ));
        }
        _ => {
            let joined = segments.concat();
            let mut parts = joined.splitn(3, '.');
            let encoded = parts.next().unwrap_or("");
            let ext = parts.next();
            if parts.next().is_some() {
                return Err(Error::invalid("extension", "more than one `.`"));
            }
            let ext = ext.filter(|e| !e.is_empty()).map(str::to_owned);
            (base64_decode(encoded)?, ext)
        }
    };
    check_source(&source)?;
    Ok((source, ext))
}

fn check_source(source: &str) -> Result<()> {
    if source.is_empty() {
        return Err(Error::invalid("source", "empty"));
    }
    if source.chars().any(char::is_control) {
        return Err(Error::invalid("source", "contains control characters"));
    }
    Ok(())
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_val);
            let lo = bytes.get(i + 2).copied().and_then(hex_val);
            let (Some(hi), Some(lo)) = (hi, lo) else {
                return Err(Error::invalid(
                    "source",
                    "invalid percent-encoding (encode `%` as %25)",
                ));
            };
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::invalid("source", "not UTF-8 once percent-decoded"))
}

/// URL-safe base64, padding optional, lenient on trailing bits (as Go's decoder).
const LENIENT_URL_SAFE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(true),
);

fn base64_decode(s: &str) -> Result<String> {
    let bytes = LENIENT_URL_SAFE
        .decode(s.trim_end_matches('='))
        .map_err(|e| Error::invalid("source", format!("invalid URL-safe base64 ({e})")))?;
    String::from_utf8(bytes).map_err(|_| Error::invalid("source", "not UTF-8 once decoded"))
}

/// Characters kept as they are in a plain source URL; everything else is percent-encoded
/// (notably `%`, `?`, `@`, `#`, spaces and non-ASCII).
fn keep_plain(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:/".contains(&c)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if keep_plain(b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Builds an `/img` path (without the `/img` prefix) for `verge image url`:
/// `/{signature}/{options}/plain/{percent-encoded source}@{extension}`, or with
/// `base64_source`, `/{signature}/{options}/{URL-safe base64 source}.{extension}`.
/// `options` is an option string (`rs:fill:300:400/q:80`, may be empty) and is validated,
/// as are the source and the extension. Signed with the first key, or `unsafe` when no
/// key is configured. The result parses back with [`parse`] to the same options and source.
pub fn build_path(
    keys: &SigningKeys,
    options: &str,
    source: &str,
    extension: Option<&str>,
    base64_source: bool,
) -> Result<String> {
    let options = options.trim_matches('/');
    Options::parse(options, 0)?;
    check_source(source)?;
    if let Some(e) = extension {
        parse_format("extension", e, false)?;
    }
    let mut path = String::new();
    if !options.is_empty() {
        path.push('/');
        path.push_str(options);
    }
    if base64_source {
        path.push('/');
        path.push_str(&URL_SAFE_NO_PAD.encode(source));
        if let Some(e) = extension {
            path.push('.');
            path.push_str(e);
        }
    } else {
        path.push_str("/plain/");
        path.push_str(&percent_encode(source));
        if let Some(e) = extension {
            path.push('@');
            path.push_str(e);
        }
    }
    let full = format!("/{}{path}", keys.sign(&path));
    if full.len() > MAX_PATH_BYTES {
        return Err(Error::invalid(
            "path",
            format!("longer than {MAX_PATH_BYTES} bytes ({})", full.len()),
        ));
    }
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(w: u32, h: u32) -> Info {
        Info {
            format: Format::Jpeg,
            width: w,
            height: h,
            orientation: 1,
            display_width: w,
            display_height: h,
            frames: 1,
            has_alpha: false,
            has_icc: false,
            has_exif: false,
            cmyk: false,
            bytes: 0,
        }
    }

    fn ops(options: &str, src: (u32, u32)) -> Vec<Op> {
        Options::parse(options, 0)
            .unwrap()
            .plan(Some(Format::Jpeg), &info(src.0, src.1), None, "wm")
            .unwrap()
            .pipeline
            .ops
    }

    fn resize(w: Option<u32>, h: Option<u32>, fit: Fit, gravity: Gravity, no_up: bool) -> Op {
        Op::Resize(Resize {
            width: w,
            height: h,
            fit,
            gravity,
            without_enlargement: no_up,
            ..Resize::default()
        })
    }

    fn crop(w: u32, h: u32, gravity: Gravity, xy: Option<(u32, u32)>) -> Op {
        Op::Crop(Crop {
            width: w,
            height: h,
            x: xy.map(|p| p.0),
            y: xy.map(|p| p.1),
            gravity,
        })
    }

    #[test]
    fn fit_and_force() {
        assert_eq!(ops("", (800, 600)), vec![]);
        assert_eq!(
            ops("w:300", (800, 600)),
            vec![resize(Some(300), None, Fit::Fit, Gravity::Centre, true)]
        );
        assert_eq!(
            ops("rs:fit:300:200:1", (800, 600)),
            vec![resize(
                Some(300),
                Some(200),
                Fit::Fit,
                Gravity::Centre,
                false
            )]
        );
        // force: a 0 dimension keeps the source's.
        assert_eq!(
            ops("rs:force:300:0", (800, 600)),
            vec![resize(
                Some(300),
                Some(600),
                Fit::Force,
                Gravity::Centre,
                true
            )]
        );
        // fill with a single dimension is a fit.
        assert_eq!(
            ops("rs:fill:0:100", (800, 600)),
            vec![resize(None, Some(100), Fit::Fit, Gravity::Centre, true)]
        );
        // dpr multiplies the box.
        assert_eq!(
            ops("w:150/dpr:2", (800, 600)),
            vec![resize(Some(300), None, Fit::Fit, Gravity::Centre, true)]
        );
    }

    #[test]
    fn fill_variants() {
        // Downscaling: a plain Fill resize (the DCT fast path applies).
        assert_eq!(
            ops("rs:fill:300:300/g:no", (800, 600)),
            vec![resize(
                Some(300),
                Some(300),
                Fit::Fill,
                Gravity::North,
                true
            )]
        );
        // Smaller source, no enlarge: fill crops the box out of the unscaled source...
        assert_eq!(
            ops("rs:fill:300:300", (400, 100)),
            vec![crop(300, 100, Gravity::Centre, None)]
        );
        // ...fill-down keeps the box's aspect ratio...
        assert_eq!(
            ops("rs:fill-down:300:300/g:ea", (400, 100)),
            vec![crop(100, 100, Gravity::East, None)]
        );
        // ...and with enlarge both scale up.
        assert_eq!(
            ops("rs:fill-down:300:300:1", (400, 100)),
            vec![resize(
                Some(300),
                Some(300),
                Fit::Fill,
                Gravity::Centre,
                false
            )]
        );
        // A source inside the box in both dimensions stays as it is.
        assert_eq!(ops("rs:fill:300:300", (200, 100)), vec![]);
    }

    #[test]
    fn auto_picks_by_orientation() {
        let fill = resize(Some(300), Some(200), Fit::Fill, Gravity::Centre, true);
        let fit = resize(Some(300), Some(200), Fit::Fit, Gravity::Centre, true);
        assert_eq!(ops("rs:auto:300:200", (800, 600)), vec![fill]);
        assert_eq!(ops("rs:auto:300:200", (600, 800)), vec![fit]);
        assert_eq!(
            ops("rs:auto:300", (600, 800)),
            vec![resize(Some(300), None, Fit::Fit, Gravity::Centre, true)]
        );
    }

    #[test]
    fn gravity_offsets() {
        // Fill with offsets: explicit window (offsets in output pixels / scale), then force.
        // 800x600 -> 300x300: s = 0.5, window 600x600, `we` + 10 px -> x = 20.
        assert_eq!(
            ops("rs:fill:300:300/g:we:10:0", (800, 600)),
            vec![
                crop(600, 600, Gravity::Centre, Some((20, 0))),
                resize(Some(300), Some(300), Fit::Force, Gravity::Centre, false),
            ]
        );
        // Relative offsets are fractions of the image; clamped inside it.
        assert_eq!(
            ops("c:100:100:soea:0.1:5000", (1000, 500)),
            vec![crop(100, 100, Gravity::Centre, Some((800, 0)))]
        );
        // Centre offsets shift.
        assert_eq!(
            ops("c:100:100:ce:-10:10", (1000, 500)),
            vec![crop(100, 100, Gravity::Centre, Some((440, 210)))]
        );
    }

    #[test]
    fn crop_then_resize() {
        assert_eq!(
            ops("c:0.5:0/w:100", (800, 600)),
            vec![
                crop(400, 600, Gravity::Centre, None),
                resize(Some(100), None, Fit::Fit, Gravity::Centre, true),
            ]
        );
        // The crop takes the global gravity unless it has its own.
        assert_eq!(
            ops("g:sm/c:100:100", (800, 600)),
            vec![crop(100, 100, Gravity::Smart, None)]
        );
        assert_eq!(
            ops("g:sm/c:100:100:ce", (800, 600)),
            vec![crop(100, 100, Gravity::Centre, None)]
        );
        // Crops larger than the image are clamped; covering it, they vanish.
        assert_eq!(ops("c:5000:5000", (800, 600)), vec![]);
        assert_eq!(
            ops("c:5000:100", (800, 600)),
            vec![crop(800, 100, Gravity::Centre, None)]
        );
    }

    #[test]
    fn rotation_comes_first_and_swaps() {
        // After a 90 degree turn an 800x600 source is 600x800: a 700 px tall crop fits.
        assert_eq!(
            ops("rot:90/c:600:700/w:300", (800, 600)),
            vec![
                Op::Rotate(Rotate { degrees: 90 }),
                crop(600, 700, Gravity::Centre, None),
                resize(Some(300), None, Fit::Fit, Gravity::Centre, true),
            ]
        );
        assert_eq!(
            ops("rot:-180", (8, 6)),
            vec![Op::Rotate(Rotate { degrees: 180 })]
        );
    }

    #[test]
    fn filters_watermark_and_output() {
        let o = Options::parse(
            "bl:0.05/sh:2/wm:0.5:re:4:6:0.005/q:50/mb:2000/bg:000/dpr:2",
            0,
        )
        .unwrap();
        let plan = o
            .plan(Some(Format::Webp), &info(10, 10), None, "logo")
            .unwrap();
        assert_eq!(
            plan.pipeline.ops,
            vec![
                Op::Blur(Blur { sigma: 0.1 }),
                Op::Sharpen(Sharpen {
                    sigma: 2.0,
                    amount: 1.0
                }),
                Op::Watermark(Watermark {
                    asset: "logo".into(),
                    position: Gravity::Centre,
                    offset_x: 8,
                    offset_y: 12,
                    opacity: 0.5,
                    scale: Some(0.01),
                    tile: true,
                }),
            ]
        );
        assert_eq!(plan.output.format, Some(Format::Webp));
        assert_eq!(plan.output.quality, 50);
        assert_eq!(plan.output.min_quality, 10);
        assert_eq!(plan.output.max_bytes, Some(2000));
        assert!(plan.output.max_bytes_best_effort);
        assert_eq!(plan.output.background, Color::BLACK);
        // max_bytes only applies to lossy formats; low qualities lower the floor.
        let png = o
            .plan(Some(Format::Png), &info(10, 10), None, "logo")
            .unwrap();
        assert_eq!(png.output.max_bytes, None);
        let q5 = Options::parse("q:5", 0)
            .unwrap()
            .plan(None, &info(10, 10), None, "")
            .unwrap();
        assert_eq!((q5.output.quality, q5.output.min_quality), (5, 5));
        // Watermark position defaults to the centre; no configured watermark is an error.
        let wm = Options::parse("wm:1", 0).unwrap();
        let e = wm.plan(None, &info(10, 10), None, "").unwrap_err();
        assert!(matches!(e, Error::Invalid { ref field, .. } if field == "options.watermark"));
        let p = wm.plan(None, &info(10, 10), None, "w").unwrap();
        assert!(matches!(
            &p.pipeline.ops[..],
            [Op::Watermark(Watermark {
                position: Gravity::Centre,
                tile: false,
                scale: None,
                ..
            })]
        ));
    }

    #[test]
    fn gif_output_is_refused_at_plan_time_too() {
        let o = Options::default();
        let e = o
            .plan(Some(Format::Gif), &info(1, 1), None, "")
            .unwrap_err();
        assert!(matches!(e, Error::Invalid { ref field, .. } if field == "extension"));
        let o = Options {
            format: Some(Format::Gif),
            ..Options::default()
        };
        let e = o.plan(None, &info(1, 1), None, "").unwrap_err();
        assert!(matches!(e, Error::Invalid { ref field, .. } if field == "options.format"));
    }

    #[test]
    fn accept_parsing() {
        assert!(accepts_webp("image/webp"));
        assert!(accepts_webp("text/html, IMAGE/WEBP ;q=0.8"));
        assert!(!accepts_webp("image/webp;q=0"));
        assert!(!accepts_webp("image/*, */*"));
        assert!(!accepts_webp(""));
    }

    #[test]
    fn percent_coding() {
        let s = "http://h/a b/ü?x=1&y=@#%";
        let enc = percent_encode(s);
        assert_eq!(enc, "http://h/a%20b/%C3%BC%3Fx=1&y=%40%23%25");
        assert_eq!(percent_decode(&enc).unwrap(), s);
        assert!(percent_decode("%").is_err());
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%g0").is_err());
        assert_eq!(percent_decode("a+b%2b").unwrap(), "a+b+");
    }

    #[test]
    fn lenient_base64_source() {
        // Padding is tolerated (trimmed), as are non-zero trailing bits.
        assert_eq!(base64_decode("aGk=").unwrap(), "hi");
        assert_eq!(base64_decode("aGl").unwrap(), "hi");
        assert!(base64_decode("a").is_err());
    }

    #[test]
    fn show_truncates_and_escapes() {
        assert_eq!(show("a\nb"), "a\\nb");
        assert_eq!(show(&"x".repeat(100)).chars().count(), 65);
    }
}
