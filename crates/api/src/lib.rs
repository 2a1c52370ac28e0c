//! Verge resource model: the envelope every resource shares, the typed specs of each
//! kind, strict validation that names the offending field path, label selectors, and
//! YAML/JSON (multi-document) decoding.
//!
//! This crate is pure: no I/O, no async runtime. The API server, the store and the CLI
//! all build on it; it must never depend on them.

mod de;
mod error;
mod kind;
pub mod limits;
mod meta;
pub mod names;
mod object;
mod parse;
mod selector;
pub mod specs;
pub mod status;
pub mod strict_json;
mod validate;
mod wire;

#[cfg(test)]
mod tests;

pub use error::{Error, Result, ValidationError};
pub use kind::Kind;
pub use meta::ObjectMeta;
pub use object::{API_VERSION, Object, kind_of};
pub use parse::{
    Format, body_bounds, decode_object, default_bounds, expansion_bound, parse_documents,
    parse_documents_with, parse_value,
};
pub use selector::{LabelSelector, Requirement};
pub use strict_json::{Bounds, Exceeded};
pub use validate::{
    NAME_PATTERN, RESERVED_NODE_NAMES, is_dns1123_label, is_dns1123_subdomain, is_label_key,
    is_label_value, is_reserved_node_name, validate_object,
};
pub use wire::{
    ApiErrorBody, ListMeta, ObjectList, Reason, WatchEvent, WatchEventType, error_line,
};
