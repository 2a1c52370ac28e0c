//! Buckets and their objects, below every protocol: the S3 API (`crate::s3`), `/cdn`,
//! the REST object routes and the image functions' outputs all go through [`Buckets`].
//!
//! - A bucket is a `Bucket` object (`/registry/buckets/NAME`), made by the API or by S3
//!   CreateBucket.
//! - An object's bytes are a content-addressed blob ([`blobs`]); its metadata is one store
//!   key, `/s3/objects/{bucket}/{key}`, holding an [`ObjectRecord`]. The blob is durable
//!   before the record is written, and the record's write is the commit point: a
//!   reader sees the old object or the new one, never a partial one.
//! - That same store write is the object's change event (decision 033): the event
//!   dispatcher follows the store's history under [`OBJECTS_PREFIX`], so no event can be
//!   lost between the change and its announcement.
//! - Multipart uploads: `/s3/uploads/{bucket}/{uploadId}` ([`UploadRecord`]) and
//!   `/s3/parts/{uploadId}/{00001}` ([`PartRecord`]); each part is a blob; completion
//!   writes the concatenation as one blob and then the object record.
//! - Quota: usage per bucket (objects, bytes) kept in memory, counted from the records
//!   at first use, reserved before a write commits.
//!
//! Must not know about HTTP, XML or signatures.

pub mod blobs;
pub mod controller;
pub mod http_semantics;
pub mod listing;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};
use verge_api::specs::{
    BucketSpec, MAX_USER_METADATA_BYTES, ObjectRecord, check_bucket_name, check_object_key,
};
use verge_api::{API_VERSION, Kind, Object, ObjectMeta};
use verge_store::{DynStore, Expect, KeyValue, Labels};

pub use blobs::{BlobStore, Written};
pub use listing::{ListQuery, Listing};

use crate::controller::Cache;
use crate::error::{Error, Result};
use crate::objects::{kind_prefix, object_key};

/// Store prefix of every object record.
pub const OBJECTS_PREFIX: &str = "/s3/objects/";
const UPLOADS_PREFIX: &str = "/s3/uploads/";
const PARTS_PREFIX: &str = "/s3/parts/";
/// S3's smallest part (all but the last).
pub const MIN_PART_SIZE: u64 = 5 << 20;
/// S3's part numbers.
pub const MAX_PARTS: u32 = 10_000;
/// Open multipart uploads per bucket.
pub const MAX_UPLOADS_PER_BUCKET: usize = 1_000;
/// Buckets in all.
pub const MAX_BUCKETS: usize = 1_000;
/// Records read per store page while listing.
const PAGE: usize = 1_000;

/// What went wrong, as S3 names it (the S3 layer turns it into its XML error, the REST
/// layer into an API error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    InvalidBucketName,
    KeyTooLong,
    InvalidArgument,
    EntityTooLarge,
    EntityTooSmall,
    IncompleteBody,
    InvalidPart,
    InvalidPartOrder,
    QuotaExceeded,
    TooManyBuckets,
    MetadataTooLarge,
}

pub(crate) fn bucket_err(code: Code, message: impl Into<String>) -> Error {
    Error::Bucket {
        code,
        message: message.into(),
    }
}

/// An object key's store key.
pub fn record_key(bucket: &str, key: &str) -> String {
    format!("{OBJECTS_PREFIX}{bucket}/{key}")
}

/// `(bucket, key)` of a store key under [`OBJECTS_PREFIX`].
pub fn split_record_key(store_key: &str) -> Option<(&str, &str)> {
    store_key.strip_prefix(OBJECTS_PREFIX)?.split_once('/')
}

/// Metadata a writer gives with new bytes.
#[derive(Debug, Clone, Default)]
pub struct PutMeta {
    pub content_type: Option<String>,
    pub user_metadata: BTreeMap<String, String>,
    /// Cache-Control, Content-Disposition, Content-Encoding, Content-Language, Expires.
    pub headers: BTreeMap<String, String>,
}

/// An open multipart upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UploadRecord {
    pub key: String,
    pub initiated: String,
    pub content_type: String,
    #[serde(default)]
    pub user_metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One uploaded part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartRecord {
    pub etag: String,
    pub size: u64,
    pub sha256: String,
    pub last_modified: String,
}

/// Usage of one bucket, counted from its records once, then kept current.
#[derive(Default)]
struct Usage {
    init: tokio::sync::OnceCell<()>,
    objects: AtomicI64,
    bytes: AtomicI64,
    /// Bytes of writes between their quota check and their commit.
    reserved: AtomicU64,
}

pub struct Buckets {
    store: DynStore,
    blobs: BlobStore,
    specs: Arc<Cache>,
    usage: Mutex<HashMap<String, Arc<Usage>>>,
    /// Tells the bucket controller whose usage changed (its status follows).
    changed: Mutex<Option<tokio::sync::mpsc::UnboundedSender<String>>>,
}

/// A quota reservation, released when dropped.
struct Reservation {
    usage: Arc<Usage>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.usage.reserved.fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

pub fn now_rfc3339_ms() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now
        .replace_nanosecond(now.millisecond() as u32 * 1_000_000)
        .unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `"md5hex"`.
pub fn quoted_md5(md5: &[u8; 16]) -> String {
    format!("\"{}\"", hex::encode(md5))
}

/// The multipart ETag: MD5 of the parts' binary MD5s, then `-N`.
pub fn multipart_etag(part_etags: &[String]) -> Result<String> {
    use md5::Digest;
    let mut h = md5::Md5::new();
    for e in part_etags {
        let raw = hex::decode(e.trim_matches('"'))
            .map_err(|_| bucket_err(Code::InvalidPart, format!("part ETag {e} is not an MD5")))?;
        h.update(&raw);
    }
    Ok(format!(
        "\"{}-{}\"",
        hex::encode(h.finalize()),
        part_etags.len()
    ))
}

fn check_meta(meta: &PutMeta) -> Result<()> {
    let n: usize = meta
        .user_metadata
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .sum();
    if n > MAX_USER_METADATA_BYTES {
        return Err(bucket_err(
            Code::MetadataTooLarge,
            format!("user metadata is {n} bytes; at most {MAX_USER_METADATA_BYTES}"),
        ));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<()> {
    check_object_key(key, false).map_err(|m| {
        let code = if key.len() > verge_api::specs::MAX_KEY_BYTES {
            Code::KeyTooLong
        } else {
            Code::InvalidArgument
        };
        bucket_err(code, format!("object key {m}"))
    })
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T> {
    Ok(serde_json::from_slice(&kv.value)?)
}

impl Buckets {
    pub fn new(store: DynStore, blobs: BlobStore, specs: Arc<Cache>) -> Self {
        Self {
            store,
            blobs,
            specs,
            usage: Mutex::new(HashMap::new()),
            changed: Mutex::new(None),
        }
    }

    /// Where to announce buckets whose usage changed (the bucket controller's wakeups).
    pub fn notify_changes(&self, tx: tokio::sync::mpsc::UnboundedSender<String>) {
        *self.changed.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    }

    fn changed(&self, bucket: &str) {
        if let Some(tx) = &*self.changed.lock().unwrap_or_else(|e| e.into_inner()) {
            let _ = tx.send(bucket.to_owned());
        }
    }

    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// A bucket's spec (the informer cache first, the store when the cache has not
    /// seen a bucket just made).
    pub async fn spec(&self, bucket: &str) -> Result<BucketSpec> {
        let obj = match self.specs.get(bucket) {
            Some(o) => (*o).clone(),
            None => match crate::objects::get(&self.store, Kind::Bucket, bucket)
                .await
                .map_err(|e| Error::Config(e.to_string()))?
            {
                Some(o) => o,
                None => {
                    return Err(bucket_err(
                        Code::NoSuchBucket,
                        format!("bucket {bucket:?} does not exist"),
                    ));
                }
            },
        };
        if obj.metadata.deletion_timestamp.is_some() {
            return Err(bucket_err(
                Code::NoSuchBucket,
                format!("bucket {bucket:?} is being deleted"),
            ));
        }
        Ok(serde_json::from_value(obj.spec).unwrap_or_default())
    }

    /// Every bucket: (name, creation time).
    pub async fn list_buckets(&self) -> Result<Vec<(String, String)>> {
        let list = self.store.list(&kind_prefix(Kind::Bucket), None).await?;
        let mut out = Vec::new();
        for kv in &list.items {
            let obj: Object = decode(kv)?;
            out.push((
                obj.metadata.name,
                obj.metadata.creation_timestamp.unwrap_or_default(),
            ));
        }
        Ok(out)
    }

    /// S3 CreateBucket: a `Bucket` object with an empty spec.
    pub async fn create_bucket(&self, name: &str, labels: Labels) -> Result<()> {
        check_bucket_name(name).map_err(|m| bucket_err(Code::InvalidBucketName, m))?;
        let count = self
            .store
            .list(&kind_prefix(Kind::Bucket), None)
            .await?
            .items
            .len();
        if count >= MAX_BUCKETS {
            return Err(bucket_err(
                Code::TooManyBuckets,
                format!("at most {MAX_BUCKETS} buckets"),
            ));
        }
        let obj = Object {
            api_version: API_VERSION.to_owned(),
            kind: Kind::Bucket.name().to_owned(),
            metadata: ObjectMeta {
                name: name.to_owned(),
                labels: labels.clone(),
                uid: Some(uuid::Uuid::new_v4().to_string()),
                generation: Some(1),
                creation_timestamp: Some(crate::auth::now_rfc3339()),
                ..Default::default()
            },
            spec: serde_json::json!({}),
            status: serde_json::Value::Null,
        };
        let value =
            crate::objects::encode_for_store(&obj).map_err(|e| Error::Config(e.to_string()))?;
        match self
            .store
            .create(&object_key(Kind::Bucket, name), value, labels)
            .await
        {
            Ok(_) => Ok(()),
            Err(verge_store::Error::AlreadyExists { .. }) => Err(bucket_err(
                Code::BucketAlreadyOwnedByYou,
                format!("bucket {name:?} already exists"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether the bucket has no objects and no open multipart uploads.
    pub async fn is_empty(&self, bucket: &str) -> Result<bool> {
        let objects = self
            .store
            .list_page(&format!("{OBJECTS_PREFIX}{bucket}/"), "", 1)
            .await?;
        let uploads = self
            .store
            .list_page(&format!("{UPLOADS_PREFIX}{bucket}/"), "", 1)
            .await?;
        Ok(objects.items.is_empty() && uploads.items.is_empty())
    }

    /// S3 DeleteBucket: only an empty bucket.
    pub async fn delete_bucket(&self, name: &str) -> Result<()> {
        self.spec(name).await?;
        if !self.is_empty(name).await? {
            return Err(bucket_err(
                Code::BucketNotEmpty,
                format!("bucket {name:?} is not empty"),
            ));
        }
        match self
            .store
            .delete(&object_key(Kind::Bucket, name), Expect::Any)
            .await
        {
            Ok(_) | Err(verge_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        self.usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(())
    }

    /// The bucket's usage `(objects, bytes)`, counted from its records at first use.
    pub async fn usage(&self, bucket: &str) -> Result<(u64, u64)> {
        let u = self.usage_of(bucket).await?;
        Ok((
            u.objects.load(Ordering::SeqCst).max(0) as u64,
            u.bytes.load(Ordering::SeqCst).max(0) as u64,
        ))
    }

    async fn usage_of(&self, bucket: &str) -> Result<Arc<Usage>> {
        let u = self
            .usage
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(bucket.to_owned())
            .or_default()
            .clone();
        u.init
            .get_or_try_init(|| async {
                let prefix = format!("{OBJECTS_PREFIX}{bucket}/");
                let mut after = String::new();
                let (mut objects, mut bytes) = (0i64, 0i64);
                loop {
                    let page = self.store.list_page(&prefix, &after, PAGE).await?;
                    for kv in &page.items {
                        let rec: ObjectRecord = decode(kv)?;
                        objects += 1;
                        bytes += rec.size as i64;
                    }
                    match page.items.last() {
                        Some(last) if page.items.len() == PAGE => after = last.key.clone(),
                        _ => break,
                    }
                }
                u.objects.fetch_add(objects, Ordering::SeqCst);
                u.bytes.fetch_add(bytes, Ordering::SeqCst);
                Ok::<_, Error>(())
            })
            .await?;
        Ok(u)
    }

    /// Reserves `bytes` against the bucket's quota.
    async fn reserve(&self, bucket: &str, spec: &BucketSpec, bytes: u64) -> Result<Reservation> {
        let usage = self.usage_of(bucket).await?;
        let prev = usage.reserved.fetch_add(bytes, Ordering::SeqCst);
        let reservation = Reservation {
            usage: usage.clone(),
            bytes,
        };
        if let Some(quota) = spec.quota_bytes() {
            let used = usage.bytes.load(Ordering::SeqCst).max(0) as u64;
            if used + prev + bytes > quota {
                return Err(bucket_err(
                    Code::QuotaExceeded,
                    format!(
                        "bucket {bucket:?} holds {used} bytes; {bytes} more would pass its quota of {quota}"
                    ),
                ));
            }
        }
        Ok(reservation)
    }

    /// Reads an object's record.
    pub async fn head(&self, bucket: &str, key: &str) -> Result<(ObjectRecord, i64)> {
        self.spec(bucket).await?;
        match self.store.get(&record_key(bucket, key)).await? {
            Some(kv) => Ok((decode(&kv)?, kv.mod_revision)),
            None => Err(bucket_err(
                Code::NoSuchKey,
                format!("no object {key:?} in bucket {bucket:?}"),
            )),
        }
    }

    /// Writes an object from a body stream (`expected_len`: the declared length, checked).
    pub async fn put<S, E>(
        &self,
        bucket: &str,
        key: &str,
        body: S,
        expected_len: Option<u64>,
        meta: PutMeta,
    ) -> Result<ObjectRecord>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        check_key(key)?;
        check_meta(&meta)?;
        let spec = self.spec(bucket).await?;
        // Fail fast on a declared length over the quota, before reading the body.
        let early = match expected_len {
            Some(n) => Some(self.reserve(bucket, &spec, n).await?),
            None => None,
        };
        let written = self
            .blobs
            .write(body, spec.max_object_bytes(), expected_len)
            .await?;
        let _reservation = match early {
            Some(r) => r,
            None => self.reserve(bucket, &spec, written.size).await?,
        };
        let record = ObjectRecord {
            etag: quoted_md5(&written.md5),
            size: written.size,
            sha256: written.sha256,
            content_type: meta
                .content_type
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            last_modified: now_rfc3339_ms(),
            user_metadata: meta.user_metadata,
            upload_id: None,
            headers: meta.headers,
        };
        self.commit(bucket, key, &record).await?;
        Ok(record)
    }

    /// Writes an object from bytes in memory (image outputs, small uploads).
    pub async fn put_bytes(
        &self,
        bucket: &str,
        key: &str,
        data: Bytes,
        meta: PutMeta,
    ) -> Result<ObjectRecord> {
        let len = data.len() as u64;
        let body = futures::stream::iter([Ok::<_, std::convert::Infallible>(data)]);
        self.put(bucket, key, body, Some(len), meta).await
    }

    /// Writes the record (the commit point) and keeps the usage current.
    async fn commit(&self, bucket: &str, key: &str, record: &ObjectRecord) -> Result<()> {
        let usage = self.usage_of(bucket).await?;
        let store_key = record_key(bucket, key);
        let value = Bytes::from(serde_json::to_vec(record)?);
        loop {
            let old = self.store.get(&store_key).await?;
            let outcome = match &old {
                None => self
                    .store
                    .create(&store_key, value.clone(), Labels::new())
                    .await
                    .map(|_| (1, 0)),
                Some(kv) => {
                    let old_size = decode::<ObjectRecord>(kv).map(|r| r.size).unwrap_or(0);
                    self.store
                        .update(
                            &store_key,
                            value.clone(),
                            Labels::new(),
                            Expect::ModRevision(kv.mod_revision),
                        )
                        .await
                        .map(|_| (0, old_size as i64))
                }
            };
            match outcome {
                Ok((new_objects, old_size)) => {
                    usage.objects.fetch_add(new_objects, Ordering::SeqCst);
                    usage
                        .bytes
                        .fetch_add(record.size as i64 - old_size, Ordering::SeqCst);
                    self.changed(bucket);
                    return Ok(());
                }
                // Another writer got there first: apply ours on top of theirs.
                Err(
                    verge_store::Error::AlreadyExists { .. } | verge_store::Error::Conflict { .. },
                ) => {
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Deletes an object. `Ok(false)` when there was none (S3 answers 204 either way).
    pub async fn delete(&self, bucket: &str, key: &str) -> Result<bool> {
        self.spec(bucket).await?;
        let usage = self.usage_of(bucket).await?;
        match self
            .store
            .delete(&record_key(bucket, key), Expect::Any)
            .await
        {
            Ok(kv) => {
                let size = decode::<ObjectRecord>(&kv).map(|r| r.size).unwrap_or(0);
                usage.objects.fetch_sub(1, Ordering::SeqCst);
                usage.bytes.fetch_sub(size as i64, Ordering::SeqCst);
                self.changed(bucket);
                Ok(true)
            }
            Err(verge_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes an object only if its record is still at `revision` (lifecycle expiry:
    /// an object overwritten meanwhile is kept).
    pub async fn delete_if_unchanged(
        &self,
        bucket: &str,
        key: &str,
        revision: i64,
    ) -> Result<bool> {
        let usage = self.usage_of(bucket).await?;
        match self
            .store
            .delete(&record_key(bucket, key), Expect::ModRevision(revision))
            .await
        {
            Ok(kv) => {
                let size = decode::<ObjectRecord>(&kv).map(|r| r.size).unwrap_or(0);
                usage.objects.fetch_sub(1, Ordering::SeqCst);
                usage.bytes.fetch_sub(size as i64, Ordering::SeqCst);
                self.changed(bucket);
                Ok(true)
            }
            Err(verge_store::Error::NotFound { .. } | verge_store::Error::Conflict { .. }) => {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// CopyObject: the same blob under a new record (no bytes are copied). `meta`:
    /// `Some` replaces the metadata (`REPLACE`), `None` copies it.
    pub async fn copy(
        &self,
        src_bucket: &str,
        src_key: &str,
        dst_bucket: &str,
        dst_key: &str,
        meta: Option<PutMeta>,
    ) -> Result<ObjectRecord> {
        check_key(dst_key)?;
        let (src, _) = self.head(src_bucket, src_key).await?;
        let spec = self.spec(dst_bucket).await?;
        if src.size > spec.max_object_bytes() {
            return Err(bucket_err(
                Code::EntityTooLarge,
                format!(
                    "the object is {} bytes; bucket {dst_bucket:?} takes at most {}",
                    src.size,
                    spec.max_object_bytes()
                ),
            ));
        }
        let _reservation = self.reserve(dst_bucket, &spec, src.size).await?;
        let mut record = src.clone();
        record.last_modified = now_rfc3339_ms();
        record.upload_id = None;
        if let Some(meta) = meta {
            check_meta(&meta)?;
            record.content_type = meta
                .content_type
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            record.user_metadata = meta.user_metadata;
            record.headers = meta.headers;
        }
        // Keep the blob from a sweep racing this copy.
        if let Ok(f) = std::fs::OpenOptions::new()
            .append(true)
            .open(self.blobs.path(&record.sha256))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
        self.commit(dst_bucket, dst_key, &record).await?;
        Ok(record)
    }

    /// One page of a listing (ListObjects v1 and v2).
    pub async fn list(&self, bucket: &str, q: &ListQuery) -> Result<Listing> {
        self.spec(bucket).await?;
        let base = format!("{OBJECTS_PREFIX}{bucket}/");
        listing::list(&self.store, &base, q).await
    }

    // --- multipart ---------------------------------------------------------------

    pub async fn create_upload(&self, bucket: &str, key: &str, meta: PutMeta) -> Result<String> {
        check_key(key)?;
        check_meta(&meta)?;
        self.spec(bucket).await?;
        let open = self
            .store
            .list_page(
                &format!("{UPLOADS_PREFIX}{bucket}/"),
                "",
                MAX_UPLOADS_PER_BUCKET,
            )
            .await?;
        if open.items.len() >= MAX_UPLOADS_PER_BUCKET {
            return Err(bucket_err(
                Code::InvalidArgument,
                format!(
                    "bucket {bucket:?} has {MAX_UPLOADS_PER_BUCKET} open multipart uploads; complete or abort some"
                ),
            ));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let record = UploadRecord {
            key: key.to_owned(),
            initiated: now_rfc3339_ms(),
            content_type: meta
                .content_type
                .unwrap_or_else(|| "application/octet-stream".to_owned()),
            user_metadata: meta.user_metadata,
            headers: meta.headers,
        };
        self.store
            .create(
                &format!("{UPLOADS_PREFIX}{bucket}/{id}"),
                Bytes::from(serde_json::to_vec(&record)?),
                Labels::new(),
            )
            .await?;
        Ok(id)
    }

    async fn upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<(UploadRecord, KeyValue)> {
        self.spec(bucket).await?;
        let kv = if upload_id.len() == 32 && upload_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            self.store
                .get(&format!("{UPLOADS_PREFIX}{bucket}/{upload_id}"))
                .await?
        } else {
            None
        };
        let Some(kv) = kv else {
            return Err(bucket_err(
                Code::NoSuchUpload,
                format!("no multipart upload {upload_id:?} in bucket {bucket:?}"),
            ));
        };
        let rec: UploadRecord = decode(&kv)?;
        if rec.key != key {
            return Err(bucket_err(
                Code::NoSuchUpload,
                format!("multipart upload {upload_id:?} is for another key"),
            ));
        }
        Ok((rec, kv))
    }

    pub async fn upload_part<S, E>(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        part: u32,
        body: S,
        expected_len: Option<u64>,
    ) -> Result<String>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if !(1..=MAX_PARTS).contains(&part) {
            return Err(bucket_err(
                Code::InvalidArgument,
                format!("partNumber must be 1..={MAX_PARTS} (got {part})"),
            ));
        }
        self.upload(bucket, key, upload_id).await?;
        let spec = self.spec(bucket).await?;
        let written = self
            .blobs
            .write(body, spec.max_object_bytes(), expected_len)
            .await?;
        let record = PartRecord {
            etag: quoted_md5(&written.md5),
            size: written.size,
            sha256: written.sha256,
            last_modified: now_rfc3339_ms(),
        };
        let part_key = format!("{PARTS_PREFIX}{upload_id}/{part:05}");
        let value = Bytes::from(serde_json::to_vec(&record)?);
        match self
            .store
            .create(&part_key, value.clone(), Labels::new())
            .await
        {
            Ok(_) => {}
            Err(verge_store::Error::AlreadyExists { .. }) => {
                self.store
                    .update(&part_key, value, Labels::new(), Expect::Any)
                    .await?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(record.etag)
    }

    /// The parts uploaded so far, by number.
    pub async fn list_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
    ) -> Result<Vec<(u32, PartRecord)>> {
        self.upload(bucket, key, upload_id).await?;
        self.parts(upload_id).await
    }

    async fn parts(&self, upload_id: &str) -> Result<Vec<(u32, PartRecord)>> {
        let prefix = format!("{PARTS_PREFIX}{upload_id}/");
        let list = self.store.list(&prefix, None).await?;
        let mut out = Vec::with_capacity(list.items.len());
        for kv in &list.items {
            let n: u32 = kv.key[prefix.len()..].parse().unwrap_or(0);
            out.push((n, decode(kv)?));
        }
        Ok(out)
    }

    /// Open uploads of a bucket: (key, upload id, initiated).
    pub async fn list_uploads(&self, bucket: &str) -> Result<Vec<(String, String, String)>> {
        self.spec(bucket).await?;
        let prefix = format!("{UPLOADS_PREFIX}{bucket}/");
        let list = self.store.list(&prefix, None).await?;
        let mut out = Vec::new();
        for kv in &list.items {
            let rec: UploadRecord = decode(kv)?;
            out.push((rec.key, kv.key[prefix.len()..].to_owned(), rec.initiated));
        }
        out.sort();
        Ok(out)
    }

    /// Every open upload: (bucket, key, upload id, initiated).
    pub async fn all_uploads(&self) -> Result<Vec<(String, String, String, String)>> {
        let list = self.store.list(UPLOADS_PREFIX, None).await?;
        let mut out = Vec::new();
        for kv in &list.items {
            let Some((bucket, id)) = kv.key[UPLOADS_PREFIX.len()..].split_once('/') else {
                continue;
            };
            let rec: UploadRecord = decode(kv)?;
            out.push((bucket.to_owned(), rec.key, id.to_owned(), rec.initiated));
        }
        Ok(out)
    }

    pub async fn abort_upload(&self, bucket: &str, key: &str, upload_id: &str) -> Result<()> {
        self.upload(bucket, key, upload_id).await?;
        self.forget_upload(bucket, upload_id).await
    }

    async fn forget_upload(&self, bucket: &str, upload_id: &str) -> Result<()> {
        for (n, _) in self.parts(upload_id).await? {
            let _ = self
                .store
                .delete(&format!("{PARTS_PREFIX}{upload_id}/{n:05}"), Expect::Any)
                .await;
        }
        match self
            .store
            .delete(
                &format!("{UPLOADS_PREFIX}{bucket}/{upload_id}"),
                Expect::Any,
            )
            .await
        {
            Ok(_) | Err(verge_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// CompleteMultipartUpload: `parts` as the client lists them (number, ETag).
    pub async fn complete_upload(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: &[(u32, String)],
    ) -> Result<ObjectRecord> {
        let upload = self.upload(bucket, key, upload_id).await;
        // A Complete repeated after success: the object carries the upload id. Also when
        // the upload record is still there: a crash after the commit, before (or while)
        // the upload's records were removed, left it with some parts already gone; the
        // retry finishes the cleanup.
        let done = match self.head(bucket, key).await {
            Ok((rec, _)) if rec.upload_id.as_deref() == Some(upload_id) => Some(rec),
            _ => None,
        };
        let (upload, _) = match (upload, done) {
            (Ok(_), Some(rec)) => {
                self.forget_upload(bucket, upload_id).await?;
                return Ok(rec);
            }
            (Err(_), Some(rec)) => return Ok(rec),
            (Ok(u), None) => u,
            (Err(e), None) => return Err(e),
        };
        let stored: HashMap<u32, PartRecord> = self.parts(upload_id).await?.into_iter().collect();
        let plan = listing::check_parts(parts, &stored)?;
        let spec = self.spec(bucket).await?;
        let total: u64 = plan.iter().map(|p| p.size).sum();
        if total > spec.max_object_bytes() {
            return Err(bucket_err(
                Code::EntityTooLarge,
                format!(
                    "the object would be {total} bytes; this bucket takes at most {}",
                    spec.max_object_bytes()
                ),
            ));
        }
        let _reservation = self.reserve(bucket, &spec, total).await?;
        let etag = multipart_etag(&plan.iter().map(|p| p.etag.clone()).collect::<Vec<_>>())?;
        let written = self
            .blobs
            .concat(plan.iter().map(|p| p.sha256.clone()).collect())
            .await?;
        let record = ObjectRecord {
            etag,
            size: written.size,
            sha256: written.sha256,
            content_type: upload.content_type,
            last_modified: now_rfc3339_ms(),
            user_metadata: upload.user_metadata,
            upload_id: Some(upload_id.to_owned()),
            headers: upload.headers,
        };
        self.commit(bucket, key, &record).await?;
        self.forget_upload(bucket, upload_id).await?;
        Ok(record)
    }

    /// Every blob digest a record or a part still names (for the blob sweep).
    pub async fn referenced_blobs(&self) -> Result<std::collections::HashSet<String>> {
        let mut keep = std::collections::HashSet::new();
        for prefix in [OBJECTS_PREFIX, PARTS_PREFIX] {
            let mut after = String::new();
            loop {
                let page = self.store.list_page(prefix, &after, PAGE).await?;
                for kv in &page.items {
                    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&kv.value)
                        && let Some(s) = v["sha256"].as_str()
                    {
                        keep.insert(s.to_owned());
                    }
                }
                match page.items.last() {
                    Some(last) if page.items.len() == PAGE => after = last.key.clone(),
                    _ => break,
                }
            }
        }
        Ok(keep)
    }
}
