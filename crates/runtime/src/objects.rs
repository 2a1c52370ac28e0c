//! The object store as builtin functions see it: [`ObjectSink`], which the cloud
//! implements over its buckets and installs into an [`ObjectSlot`] its builtins share
//! (the image functions write their `output: {bucket, key}` there and read `s3://`
//! sources from it; `/img` reads `s3://` sources from it). An edge node installs none,
//! so a function asking for it there is refused.
//!
//! Only the trait and the slot: no buckets, no HTTP, no dependency on the cloud.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// A boxed future borrowing its arguments.
pub type ObjectFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ObjectError>> + Send + 'a>>;

/// Why an object operation failed, coarsely (the message has the detail).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectErrorKind {
    /// No such bucket or object (or a private bucket where only public ones may be read).
    NotFound,
    /// A bad bucket name, key or content type.
    Invalid,
    /// Over the bucket's `maxObjectSize` or quota, or over what the reader accepts.
    TooLarge,
    /// The store failed.
    Unavailable,
}

/// A failed object operation: the bucket layer's message, as the caller should show it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ObjectError {
    pub kind: ObjectErrorKind,
    pub message: String,
}

impl ObjectError {
    pub fn new(kind: ObjectErrorKind, message: impl Into<String>) -> Self {
        ObjectError {
            kind,
            message: message.into(),
        }
    }
}

/// An object just stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub bucket: String,
    pub key: String,
    /// Quoted, as S3 has it.
    pub etag: String,
    pub size: u64,
    /// Where it can be read: `/cdn/BUCKET/KEY` for a public bucket, the REST object
    /// path (`/api/v1/buckets/BUCKET/objects/KEY`, a token needed) otherwise.
    pub url: String,
}

/// An object read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedObject {
    pub data: Bytes,
    pub content_type: String,
    pub etag: String,
}

/// Reads and writes objects in buckets.
pub trait ObjectSink: Send + Sync {
    /// Stores `data` as `bucket/key` (the bucket's size cap and quota apply).
    fn put<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        content_type: &'a str,
        data: Bytes,
    ) -> ObjectFuture<'a, StoredObject>;

    /// The ETag of `bucket/key` (`public_only`: a private bucket is
    /// [`ObjectErrorKind::NotFound`]).
    fn etag<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        public_only: bool,
    ) -> ObjectFuture<'a, String>;

    /// Reads `bucket/key` whole; more than `max_bytes` is [`ObjectErrorKind::TooLarge`]
    /// (checked before reading).
    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        max_bytes: u64,
        public_only: bool,
    ) -> ObjectFuture<'a, FetchedObject>;
}

/// Where the host installs its [`ObjectSink`] after the builtins that use it were
/// registered (the cloud makes its buckets after its configuration; a restarted cloud
/// replaces its own).
#[derive(Default)]
pub struct ObjectSlot(RwLock<Option<Arc<dyn ObjectSink>>>);

impl std::fmt::Debug for ObjectSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSlot")
            .field("installed", &self.get().is_some())
            .finish()
    }
}

impl ObjectSlot {
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs `sink`, replacing the one before.
    pub fn install(&self, sink: Arc<dyn ObjectSink>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// The sink, when the host has one.
    pub fn get(&self) -> Option<Arc<dyn ObjectSink>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `s3://BUCKET/KEY` as `(bucket, key)`; `None` when it is not that form (no bucket or
/// no key).
pub fn parse_s3_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_urls() {
        assert_eq!(
            parse_s3_url("s3://uploads/in/photo.jpg"),
            Some(("uploads", "in/photo.jpg"))
        );
        assert_eq!(parse_s3_url("s3://uploads/"), None);
        assert_eq!(parse_s3_url("s3://uploads"), None);
        assert_eq!(parse_s3_url("s3:///k"), None);
        assert_eq!(parse_s3_url("https://x/y"), None);
    }

    #[test]
    fn slot_installs_and_replaces() {
        struct Nothing;
        impl ObjectSink for Nothing {
            fn put<'a>(
                &'a self,
                _: &'a str,
                _: &'a str,
                _: &'a str,
                _: Bytes,
            ) -> ObjectFuture<'a, StoredObject> {
                Box::pin(async { Err(ObjectError::new(ObjectErrorKind::Unavailable, "no")) })
            }
            fn etag<'a>(&'a self, _: &'a str, _: &'a str, _: bool) -> ObjectFuture<'a, String> {
                Box::pin(async { Err(ObjectError::new(ObjectErrorKind::Unavailable, "no")) })
            }
            fn get<'a>(
                &'a self,
                _: &'a str,
                _: &'a str,
                _: u64,
                _: bool,
            ) -> ObjectFuture<'a, FetchedObject> {
                Box::pin(async { Err(ObjectError::new(ObjectErrorKind::Unavailable, "no")) })
            }
        }
        let slot = ObjectSlot::new();
        assert!(slot.get().is_none());
        slot.install(Arc::new(Nothing));
        let first = slot.get().unwrap();
        slot.install(Arc::new(Nothing));
        assert!(!Arc::ptr_eq(&first, &slot.get().unwrap()));
    }
}
