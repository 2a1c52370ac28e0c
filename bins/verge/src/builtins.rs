//! The builtin functions (`runtime: builtin`) this binary offers, for the cloud and
//! the `verge dev` edge node.

use std::sync::Arc;

/// The registry: the runtime's own (`echo`, `sleep`) and the image pack
/// (`image.resize`, `image.qrcode`, `video.frame`, ...; see `verge image list`).
pub fn registry(images: Arc<verge_images::functions::ImageEnv>) -> verge_runtime::Registry {
    let mut r = verge_runtime::Registry::with_defaults();
    verge_images::functions::register(&mut r, images);
    r
}
