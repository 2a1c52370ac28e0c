//! `Bucket`: an S3-compatible object bucket (quota, object size cap, public reading at
//! `/cdn`, lifecycle expiry), and the metadata record each stored object has. Pure: the
//! bytes, the S3 protocol and the events live in `verge-cloud`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::specs::quantity::parse_memory_bytes;

/// S3's own limit on one object.
pub const MAX_OBJECT_SIZE: u64 = 5 << 40;
/// `maxObjectSize` when the spec leaves it out (S3's single-PUT limit).
pub const DEFAULT_MAX_OBJECT_SIZE: u64 = 5 << 30;
/// Longest object key, in bytes (S3's limit).
pub const MAX_KEY_BYTES: usize = 1024;
/// Most user metadata (`x-amz-meta-*` names and values together), in bytes (S3's limit).
pub const MAX_USER_METADATA_BYTES: usize = 2048;
/// Longest lifecycle rule, in days (100 years).
pub const MAX_EXPIRE_DAYS: u32 = 36_500;

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BucketSpec {
    /// Anyone may read its objects at `/cdn/BUCKET/KEY` (never write or list).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub public: bool,
    /// Most bytes of all objects together (`10Gi`); unlimited when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// Largest object (`100Mi`); 5Gi when unset, at most 5Ti.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_object_size: Option<String>,
    /// Objects (under `prefix`) older than `expireAfterDays` are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Lifecycle {
    /// 1..=36500.
    pub expire_after_days: u32,
    /// Only keys starting with this (all keys when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

impl BucketSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(q) = &self.quota {
            bytes_field(q, "spec.quota")?;
        }
        if let Some(m) = &self.max_object_size {
            let n = bytes_field(m, "spec.maxObjectSize")?;
            if n == 0 || n > MAX_OBJECT_SIZE {
                return Err(ValidationError::new(
                    "spec.maxObjectSize",
                    format!("must be between 1 and 5Ti (got {m})"),
                ));
            }
        }
        if let Some(l) = &self.lifecycle {
            if l.expire_after_days == 0 || l.expire_after_days > MAX_EXPIRE_DAYS {
                return Err(ValidationError::new(
                    "spec.lifecycle.expireAfterDays",
                    format!("must be 1..={MAX_EXPIRE_DAYS}"),
                ));
            }
            if let Some(p) = &l.prefix
                && let Err(m) = check_object_key(p, true)
            {
                return Err(ValidationError::new("spec.lifecycle.prefix", m));
            }
        }
        Ok(())
    }

    /// The quota in bytes (`None`: unlimited). Valid specs only.
    pub fn quota_bytes(&self) -> Option<u64> {
        self.quota.as_deref().and_then(parse_memory_bytes)
    }

    /// The largest object accepted, in bytes.
    pub fn max_object_bytes(&self) -> u64 {
        self.max_object_size
            .as_deref()
            .and_then(parse_memory_bytes)
            .unwrap_or(DEFAULT_MAX_OBJECT_SIZE)
    }
}

fn bytes_field(value: &str, field: &str) -> Result<u64, ValidationError> {
    parse_memory_bytes(value).ok_or_else(|| {
        ValidationError::new(
            field,
            format!("{value:?} is not a byte quantity (like 512Mi or 10Gi)"),
        )
    })
}

/// S3 bucket naming as Verge accepts it: 3..=63 characters of `[a-z0-9-]`, starting and
/// ending with a letter or digit (a DNS label, so a bucket is also a valid object name;
/// dots are refused, which keeps virtual-host TLS names and IP look-alikes out).
pub fn check_bucket_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    let edges = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || !edges(name.as_bytes().first())
        || !edges(name.as_bytes().last())
    {
        return Err(format!(
            "{name:?} is not a valid bucket name: 3 to 63 characters of a-z, 0-9 and '-', \
             starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// An object key: 1..=1024 bytes of UTF-8 without control characters (`allow_empty`
/// for prefixes).
pub fn check_object_key(key: &str, allow_empty: bool) -> Result<(), String> {
    if key.is_empty() && !allow_empty {
        return Err("must not be empty".to_owned());
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "is {} bytes; keys are at most {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    if key.chars().any(char::is_control) {
        return Err("must not contain control characters".to_owned());
    }
    Ok(())
}

/// What the store keeps for one object (`/s3/objects/{bucket}/{key}`); its bytes are
/// the blob named by `sha256`. The JSON the event dispatcher and the CLI read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRecord {
    /// Quoted, as S3 sends it: `"md5hex"`, or `"md5-of-md5s-N"` for multipart.
    pub etag: String,
    pub size: u64,
    /// Hex SHA-256 of the bytes: the blob's name.
    pub sha256: String,
    pub content_type: String,
    /// RFC 3339 with milliseconds, UTC.
    pub last_modified: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub user_metadata: BTreeMap<String, String>,
    /// Set when completed from a multipart upload (a second Complete is recognised).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// Cache-Control, Content-Disposition, Content-Encoding, Content-Language, Expires,
    /// as the client set them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names() {
        for ok in ["abc", "uploads", "my-bucket-01", &"a".repeat(63)] {
            assert!(check_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "-abc",
            "abc-",
            "ABC",
            "a.b.c",
            "a_b",
            "",
            &"a".repeat(64),
            "192.168.1.1",
        ] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys() {
        assert!(check_object_key("in/photo.jpg", false).is_ok());
        assert!(check_object_key("é/ü", false).is_ok());
        assert!(check_object_key("", false).is_err());
        assert!(check_object_key("", true).is_ok());
        assert!(check_object_key(&"k".repeat(1024), false).is_ok());
        assert!(
            check_object_key(&"k".repeat(1025), false)
                .unwrap_err()
                .contains("1025 bytes")
        );
        assert!(check_object_key("a\nb", false).is_err());
    }

    #[test]
    fn spec_bounds_name_the_field() {
        let spec = BucketSpec {
            quota: Some("ten".into()),
            ..Default::default()
        };
        assert_eq!(spec.validate().unwrap_err().field, "spec.quota");
        let spec = BucketSpec {
            max_object_size: Some("6Ti".into()),
            ..Default::default()
        };
        assert_eq!(spec.validate().unwrap_err().field, "spec.maxObjectSize");
        let spec = BucketSpec {
            lifecycle: Some(Lifecycle {
                expire_after_days: 0,
                prefix: None,
            }),
            ..Default::default()
        };
        assert_eq!(
            spec.validate().unwrap_err().field,
            "spec.lifecycle.expireAfterDays"
        );
        let spec = BucketSpec {
            quota: Some("10Gi".into()),
            max_object_size: Some("100Mi".into()),
            ..Default::default()
        };
        spec.validate().unwrap();
        assert_eq!(spec.quota_bytes(), Some(10 << 30));
        assert_eq!(spec.max_object_bytes(), 100 << 20);
        assert_eq!(BucketSpec::default().max_object_bytes(), 5 << 30);
    }
}
