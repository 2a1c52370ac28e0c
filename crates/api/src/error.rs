//! Validation and decoding errors.

use std::fmt;

/// A validation failure naming the field path it concerns, e.g.
/// `spec.workload.docker.imagee: unknown field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// Dotted path from the document root (`metadata.name`, `spec.workload`,
    /// `spec.ports[0].port`). Empty for errors about the document as a whole.
    pub field: String,
    /// Lowercase message without trailing period.
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ValidationError {}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bytes are not well-formed YAML/JSON (maps to HTTP 400).
    #[error("malformed {format} in document {document}: {message}")]
    Malformed {
        format: &'static str,
        /// 1-based index of the document in a multi-document stream.
        document: usize,
        message: String,
    },
    /// Past a parser bound: the document expands (YAML aliases counted at every use)
    /// beyond the byte bound, nests too deep, or uses aliases too often (HTTP 400).
    #[error("{format}: document {document}: {message}")]
    Limit {
        format: &'static str,
        /// 1-based index of the document in a multi-document stream.
        document: usize,
        message: String,
    },
    /// Well-formed but invalid: unknown kind, unknown field, bad value (HTTP 422).
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    /// A label selector string does not parse.
    #[error("invalid label selector: {0}")]
    Selector(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
