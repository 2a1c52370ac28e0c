//! `verge-images`: the image service around `verge-imaging`.
//!
//! - [`imgproxy`]: the imgproxy-compatible URL format (`/{signature}/{options}/plain/{source}@{ext}`
//!   and the base64 source form), its HMAC-SHA256 signatures, and the mapping of its
//!   processing options onto a `verge_imaging::Pipeline`. Pure; no I/O.
//! - [`fetch`]: fetching source images by URL through Verge's outbound guard
//!   (`verge-outbound`: allow-list, private and loopback addresses blocked unless allowed,
//!   size cap, redirect limit, timeout).
//! - [`functions`]: the builtin image functions (`image.resize`, `image.qrcode`,
//!   `video.frame`, `image.pipeline`, ...) registered into the function runtime.
//! - [`server`]: the `/img` endpoint (signature check, source, pipeline, [`cache`]).

pub mod cache;
pub mod fetch;
pub mod functions;
pub mod imgproxy;
pub mod server;

mod error;

pub use error::{Error, Result};
