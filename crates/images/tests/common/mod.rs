//! Shared by the integration tests: synthetic images made with the imaging crate itself.

use serde_json::json;

/// A photo-like JPEG (a coloured canvas with text), `w`x`h`.
pub fn jpeg(w: u32, h: u32) -> Vec<u8> {
    let spec: verge_imaging::ComposeSpec = serde_json::from_value(json!({
        "width": w, "height": h, "background": "#3a6ea5",
        "layers": [{"type": "text", "text": "Verge", "size": (h / 4).max(8), "color": "#ffcc00",
                    "x": w / 8, "y": h / 3}],
        "output": {"format": "jpeg", "quality": 90}
    }))
    .expect("spec");
    verge_imaging::compose(&spec, &verge_imaging::NoAssets, &Default::default())
        .expect("compose")
        .bytes
}
