//! The cloud's buckets as the function runtime's [`ObjectSink`]: what the builtin image
//! functions store their `output: {bucket, key}` into and read `s3://` sources from, and
//! what `/img` reads `s3://` sources from. Installed by the cloud into
//! [`crate::CloudConfig::objects`] once its [`Buckets`] exist (decision 032). Edge nodes
//! have none, so functions writing to buckets run in the cloud.
//!
//! A thin adapter: every check (names, size caps, quota) is the bucket layer's.

use std::sync::Arc;

use bytes::Bytes;
use verge_api::specs::ObjectRecord;
use verge_runtime::objects::{FetchedObject, ObjectFuture};
use verge_runtime::{ObjectError, ObjectErrorKind, ObjectSink, StoredObject};

use crate::buckets::{Buckets, Code, PutMeta};
use crate::error::Error;

/// Longest content type accepted for a stored result.
const MAX_CONTENT_TYPE: usize = 256;

pub struct BucketSink {
    buckets: Arc<Buckets>,
}

impl BucketSink {
    pub fn new(buckets: Arc<Buckets>) -> Self {
        Self { buckets }
    }

    /// The object's record and whether its bucket is public. `public_only`: a private
    /// bucket, a missing bucket and a missing object are one same answer, so an
    /// unsigned `/img` URL tells nothing about private buckets.
    async fn head(
        &self,
        bucket: &str,
        key: &str,
        public_only: bool,
    ) -> Result<ObjectRecord, ObjectError> {
        let hidden = || {
            ObjectError::new(
                ObjectErrorKind::NotFound,
                format!("NoSuchKey: no public object s3://{bucket}/{key}"),
            )
        };
        let spec = match self.buckets.spec(bucket).await {
            Ok(s) => s,
            Err(Error::Bucket { .. }) if public_only => return Err(hidden()),
            Err(e) => return Err(object_error(e)),
        };
        if public_only && !spec.public {
            return Err(hidden());
        }
        match self.buckets.head(bucket, key).await {
            Ok((rec, _)) => Ok(rec),
            Err(Error::Bucket { .. }) if public_only => Err(hidden()),
            Err(e) => Err(object_error(e)),
        }
    }
}

/// A bucket layer error for a function or `/img` (its code and message kept).
pub fn object_error(e: Error) -> ObjectError {
    let kind = match &e {
        Error::Bucket { code, .. } => match code {
            Code::NoSuchBucket | Code::NoSuchKey | Code::NoSuchUpload => ObjectErrorKind::NotFound,
            Code::EntityTooLarge | Code::QuotaExceeded => ObjectErrorKind::TooLarge,
            Code::BucketNotEmpty
            | Code::BucketAlreadyOwnedByYou
            | Code::TooManyBuckets
            | Code::IncompleteBody => ObjectErrorKind::Unavailable,
            _ => ObjectErrorKind::Invalid,
        },
        _ => ObjectErrorKind::Unavailable,
    };
    ObjectError::new(kind, e.to_string())
}

/// Where a stored object can be read: `/cdn/B/K` when public, else the REST object path.
pub fn object_url(bucket: &str, key: &str, public: bool) -> String {
    let key = percent_encode_path(key);
    if public {
        format!("/cdn/{bucket}/{key}")
    } else {
        format!("/api/v1/buckets/{bucket}/objects/{key}")
    }
}

/// Percent-encodes everything but unreserved characters and `/`.
fn percent_encode_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn check_content_type(ct: &str) -> Result<(), ObjectError> {
    if ct.is_empty()
        || ct.len() > MAX_CONTENT_TYPE
        || !ct.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
    {
        return Err(ObjectError::new(
            ObjectErrorKind::Invalid,
            format!(
                "contentType {ct:?} is not a media type (printable ASCII, at most {MAX_CONTENT_TYPE} bytes)"
            ),
        ));
    }
    Ok(())
}

impl ObjectSink for BucketSink {
    fn put<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        content_type: &'a str,
        data: Bytes,
    ) -> ObjectFuture<'a, StoredObject> {
        Box::pin(async move {
            check_content_type(content_type)?;
            let public = self
                .buckets
                .spec(bucket)
                .await
                .map_err(object_error)?
                .public;
            let meta = PutMeta {
                content_type: Some(content_type.to_owned()),
                ..Default::default()
            };
            let rec = self
                .buckets
                .put_bytes(bucket, key, data, meta)
                .await
                .map_err(object_error)?;
            Ok(StoredObject {
                bucket: bucket.to_owned(),
                key: key.to_owned(),
                etag: rec.etag,
                size: rec.size,
                url: object_url(bucket, key, public),
            })
        })
    }

    fn etag<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        public_only: bool,
    ) -> ObjectFuture<'a, String> {
        Box::pin(async move { Ok(self.head(bucket, key, public_only).await?.etag) })
    }

    fn get<'a>(
        &'a self,
        bucket: &'a str,
        key: &'a str,
        max_bytes: u64,
        public_only: bool,
    ) -> ObjectFuture<'a, FetchedObject> {
        Box::pin(async move {
            let rec = self.head(bucket, key, public_only).await?;
            if rec.size > max_bytes {
                return Err(ObjectError::new(
                    ObjectErrorKind::TooLarge,
                    format!(
                        "s3://{bucket}/{key} is {} bytes; at most {max_bytes} are read",
                        rec.size
                    ),
                ));
            }
            let path = self.buckets.blobs().path(&rec.sha256);
            let data = tokio::fs::read(&path).await.map_err(|e| {
                tracing::error!(path = %path.display(), error = %e, "blob unreadable");
                ObjectError::new(
                    ObjectErrorKind::Unavailable,
                    format!("s3://{bucket}/{key}: its bytes could not be read"),
                )
            })?;
            Ok(FetchedObject {
                data: Bytes::from(data),
                content_type: rec.content_type,
                etag: rec.etag,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(object_url("pub", "a/b c.jpg", true), "/cdn/pub/a/b%20c.jpg");
        assert_eq!(
            object_url("priv", "x?y#z", false),
            "/api/v1/buckets/priv/objects/x%3Fy%23z"
        );
        assert_eq!(object_url("p", "é", true), "/cdn/p/%C3%A9");
    }

    #[test]
    fn errors_keep_the_code_and_message() {
        let e = object_error(Error::Bucket {
            code: Code::QuotaExceeded,
            message: "over".into(),
        });
        assert_eq!(e.kind, ObjectErrorKind::TooLarge);
        assert_eq!(e.message, "QuotaExceeded: over");
        assert_eq!(
            object_error(Error::Bucket {
                code: Code::KeyTooLong,
                message: "long".into()
            })
            .kind,
            ObjectErrorKind::Invalid
        );
        assert!(check_content_type("image/webp").is_ok());
        assert!(check_content_type("a\nb").is_err());
        assert!(check_content_type("").is_err());
    }
}
