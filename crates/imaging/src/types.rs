//! Small value types shared by operations, composition and QR codes.

use serde::{Deserialize, Serialize};

/// An sRGB colour with alpha, written in JSON as `"#rgb"`, `"#rrggbb"`, `"#rrggbbaa"` or one
/// of `white`, `black`, `transparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Color(pub [u8; 4]);

impl Color {
    /// Opaque white.
    pub const WHITE: Color = Color([255, 255, 255, 255]);
    /// Opaque black.
    pub const BLACK: Color = Color([0, 0, 0, 255]);
    /// Fully transparent.
    pub const TRANSPARENT: Color = Color([0, 0, 0, 0]);
}

impl TryFrom<String> for Color {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::str::FromStr for Color {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "white" => return Ok(Color::WHITE),
            "black" => return Ok(Color::BLACK),
            "transparent" => return Ok(Color::TRANSPARENT),
            _ => {}
        }
        let bad = || format!("colour `{s}` is not #rgb, #rrggbb or #rrggbbaa");
        let hex = s.strip_prefix('#').ok_or_else(bad)?;
        if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let nib = |i: usize| u8::from_str_radix(&hex[i..=i], 16).map_err(|_| bad());
        let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| bad());
        match hex.len() {
            3 => Ok(Color([nib(0)? * 17, nib(1)? * 17, nib(2)? * 17, 255])),
            6 => Ok(Color([byte(0)?, byte(2)?, byte(4)?, 255])),
            8 => Ok(Color([byte(0)?, byte(2)?, byte(4)?, byte(6)?])),
            _ => Err(bad()),
        }
    }
}

impl From<Color> for String {
    fn from(c: Color) -> String {
        let [r, g, b, a] = c.0;
        if a == 255 {
            format!("#{r:02x}{g:02x}{b:02x}")
        } else {
            format!("#{r:02x}{g:02x}{b:02x}{a:02x}")
        }
    }
}

/// Where to anchor a crop window, a watermark or a text block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Gravity {
    /// Centred on both axes.
    #[default]
    #[serde(alias = "center")]
    Centre,
    /// Top edge, centred horizontally.
    North,
    /// Bottom edge, centred horizontally.
    South,
    /// Right edge, centred vertically.
    East,
    /// Left edge, centred vertically.
    West,
    /// Top-right corner.
    NorthEast,
    /// Top-left corner.
    NorthWest,
    /// Bottom-right corner.
    SouthEast,
    /// Bottom-left corner.
    SouthWest,
    /// The window with the most detail (Shannon entropy of luminance); crops only.
    Smart,
}

impl Gravity {
    /// Top-left position of an `inner` box placed in an `outer` box, moved inwards by
    /// `offset` from the anchored edges (or shifted by it when centred). May be negative
    /// or past the edge; callers clamp.
    pub fn place(self, outer: (u32, u32), inner: (u32, u32), offset: (i32, i32)) -> (i64, i64) {
        let (ow, oh) = (i64::from(outer.0), i64::from(outer.1));
        let (iw, ih) = (i64::from(inner.0), i64::from(inner.1));
        let (dx, dy) = (i64::from(offset.0), i64::from(offset.1));
        let left = dx;
        let right = ow - iw - dx;
        let hcentre = (ow - iw) / 2 + dx;
        let top = dy;
        let bottom = oh - ih - dy;
        let vcentre = (oh - ih) / 2 + dy;
        match self {
            Gravity::Centre | Gravity::Smart => (hcentre, vcentre),
            Gravity::North => (hcentre, top),
            Gravity::South => (hcentre, bottom),
            Gravity::East => (right, vcentre),
            Gravity::West => (left, vcentre),
            Gravity::NorthEast => (right, top),
            Gravity::NorthWest => (left, top),
            Gravity::SouthEast => (right, bottom),
            Gravity::SouthWest => (left, bottom),
        }
    }
}

/// Named image assets (watermarks, logos, layers) supplied by the caller.
pub trait Assets {
    /// The encoded bytes of asset `name`, if known.
    fn get(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>>;
}

/// No assets at all: any reference to an asset is an [`crate::Error::AssetNotFound`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAssets;

impl Assets for NoAssets {
    fn get(&self, _name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        None
    }
}

impl<S: std::hash::BuildHasher> Assets for std::collections::HashMap<String, Vec<u8>, S> {
    fn get(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        std::collections::HashMap::get(self, name).map(|v| std::borrow::Cow::Borrowed(v.as_slice()))
    }
}

impl Assets for std::collections::BTreeMap<String, Vec<u8>> {
    fn get(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        std::collections::BTreeMap::get(self, name)
            .map(|v| std::borrow::Cow::Borrowed(v.as_slice()))
    }
}

/// Adapts a closure `Fn(&str) -> Option<Vec<u8>>` into [`Assets`].
pub struct AssetFn<F>(pub F);

impl<F: Fn(&str) -> Option<Vec<u8>>> Assets for AssetFn<F> {
    fn get(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        (self.0)(name).map(std::borrow::Cow::Owned)
    }
}

pub(crate) fn asset<'a>(
    assets: &'a dyn Assets,
    field: &str,
    name: &str,
) -> crate::Result<std::borrow::Cow<'a, [u8]>> {
    assets.get(name).ok_or_else(|| crate::Error::AssetNotFound {
        field: field.to_string(),
        name: name.to_string(),
    })
}
