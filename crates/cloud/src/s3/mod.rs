//! The S3-compatible API (its own TLS listener, `--s3-listen`): the `s3s` crate parses
//! requests, verifies SigV4 (headers, presigned query strings, `aws-chunked` streaming
//! payloads) and writes S3's XML; this module maps each operation onto [`Buckets`] and
//! decides who may do what (decision 033):
//!
//! - [`keys`]: access keys (secret sealed at rest), limited to buckets and read-only.
//! - [`Access`]: every request must be signed by a live key, for region `us-east-1` and
//!   service `s3` (else 400 `AuthorizationHeaderMalformed` / 403 `AccessDenied` naming
//!   what was wrong); a read-only key may only read, a bucket-limited key only touch its
//!   buckets.
//! - [`S3Front`]: the operations. Errors of the bucket layer become S3 error codes.
//!
//! Path-style addressing only. Must not touch blobs or records except through
//! [`Buckets`].

pub mod keys;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::*;
use s3s::path::S3Path;
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};

use crate::buckets::{Buckets, Code, ListQuery, PutMeta};
use crate::error::Error;
use keys::{AccessKeys, Scope};

/// The listener's name in the connection metrics.
pub const LISTENER: &str = "s3";

/// The one region Verge's S3 API answers for.
pub const REGION: &str = "us-east-1";

/// Operations that only read.
const READ_OPS: [&str; 9] = [
    "GetObject",
    "HeadObject",
    "HeadBucket",
    "ListBuckets",
    "ListObjects",
    "ListObjectsV2",
    "ListParts",
    "ListMultipartUploads",
    "GetBucketLocation",
];

fn code_of(code: Code) -> S3ErrorCode {
    match code {
        Code::NoSuchBucket => S3ErrorCode::NoSuchBucket,
        Code::NoSuchKey => S3ErrorCode::NoSuchKey,
        Code::NoSuchUpload => S3ErrorCode::NoSuchUpload,
        Code::BucketAlreadyOwnedByYou => S3ErrorCode::BucketAlreadyOwnedByYou,
        Code::BucketNotEmpty => S3ErrorCode::BucketNotEmpty,
        Code::InvalidBucketName => S3ErrorCode::InvalidBucketName,
        Code::KeyTooLong => S3ErrorCode::KeyTooLongError,
        Code::InvalidArgument => S3ErrorCode::InvalidArgument,
        Code::EntityTooLarge => S3ErrorCode::EntityTooLarge,
        Code::EntityTooSmall => S3ErrorCode::EntityTooSmall,
        Code::IncompleteBody => S3ErrorCode::IncompleteBody,
        Code::InvalidPart => S3ErrorCode::InvalidPart,
        Code::InvalidPartOrder => S3ErrorCode::InvalidPartOrder,
        Code::QuotaExceeded => S3ErrorCode::Custom("QuotaExceeded".into()),
        Code::TooManyBuckets => S3ErrorCode::TooManyBuckets,
        Code::MetadataTooLarge => S3ErrorCode::MetadataTooLarge,
    }
}

/// The bucket layer's error as S3's (internal ones logged, answered as InternalError).
fn s3_err(e: Error) -> S3Error {
    match e {
        Error::Bucket { code, message } => {
            let mut err = S3Error::with_message(code_of(code), message);
            if code == Code::QuotaExceeded {
                err.set_status_code(http::StatusCode::FORBIDDEN);
            }
            err
        }
        other => {
            tracing::error!(error = %other, "s3 request failed");
            s3_error!(InternalError, "internal error")
        }
    }
}

fn timestamp(rfc3339: &str) -> Option<Timestamp> {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(Timestamp::from)
}

fn etag(quoted: &str) -> ETag {
    ETag::Strong(quoted.trim_matches('"').to_owned())
}

/// The region and service of a request's credential scope, from the Authorization
/// header or the presigned query string.
fn scope_of(headers: &http::HeaderMap, uri: &http::Uri) -> Option<(String, String)> {
    let credential = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| {
            a.split([',', ' '])
                .find_map(|p| p.trim().strip_prefix("Credential="))
                .map(str::to_owned)
        })
        .or_else(|| {
            uri.query()?.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == "X-Amz-Credential").then(|| percent_decode(v))
            })
        })?;
    let mut parts = credential.split('/');
    let _id = parts.next()?;
    let _date = parts.next()?;
    let region = parts.next()?.to_owned();
    let service = parts.next()?.to_owned();
    Some((region, service))
}

/// The longest a presigned URL may stay valid (AWS's limit).
pub const MAX_PRESIGNED_SECS: i64 = 7 * 86400;

/// How long a presigned URL stays valid from `now_unix`: SigV4's `X-Amz-Expires`
/// (seconds), SigV2's `Expires` (a Unix time). `None`: not a presigned URL. Pure.
fn presigned_lifetime(uri: &http::Uri, now_unix: i64) -> Option<i64> {
    let q = uri.query()?;
    let get = |name: &str| {
        q.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then(|| v.parse::<i64>().ok()).flatten()
        })
    };
    get("X-Amz-Expires").or_else(|| get("Expires").map(|at| at - now_unix))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// S3's XML error document (code and message escaped).
fn error_xml(code: &str, message: &str) -> String {
    fn esc(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&apos;")
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>{}</Message></Error>",
        esc(code),
        esc(message)
    )
}

/// The answer to a request whose credential scope names a service other than `s3`
/// (403 `AccessDenied`, decision 033), or `None` to let it through.
fn foreign_service(headers: &http::HeaderMap, uri: &http::Uri) -> Option<axum::response::Response> {
    let (_, service) = scope_of(headers, uri)?;
    if service == "s3" {
        return None;
    }
    let body = error_xml(
        "AccessDenied",
        &format!("the credential scope names service '{service}'; expecting 's3'"),
    );
    http::Response::builder()
        .status(http::StatusCode::FORBIDDEN)
        .header(http::header::CONTENT_TYPE, "application/xml")
        .body(axum::body::Body::from(body))
        .ok()
}

/// Signatures: the secret of a live key.
pub struct Auth(pub Arc<AccessKeys>);

#[async_trait::async_trait]
impl S3Auth for Auth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        match self.0.lookup(access_key).await {
            Ok(Some((secret, _))) => Ok(SecretKey::from(secret)),
            Ok(None) => Err(s3_error!(
                InvalidAccessKeyId,
                "the access key id does not exist or was revoked"
            )),
            Err(e) => Err(s3_err(e)),
        }
    }
}

/// Who may do what (after the signature was verified).
pub struct Access(pub Arc<AccessKeys>);

#[async_trait::async_trait]
impl s3s::access::S3Access for Access {
    async fn check(&self, cx: &mut s3s::access::S3AccessContext<'_>) -> S3Result<()> {
        let Some(creds) = cx.credentials() else {
            return Err(s3_error!(
                AccessDenied,
                "every request must be signed with a Verge S3 access key (verge s3 key create)"
            ));
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        if presigned_lifetime(cx.uri(), now).is_some_and(|l| l > MAX_PRESIGNED_SECS) {
            return Err(s3_error!(
                AuthorizationQueryParametersError,
                "a presigned URL may be valid for at most {MAX_PRESIGNED_SECS} seconds (7 days)"
            ));
        }
        // Signature Version 2 (`aws s3 presign` of AWS CLI v1), which s3s verified too,
        // carries no scope.
        if let Some((region, service)) = scope_of(cx.headers(), cx.uri()) {
            if service != "s3" {
                return Err(s3_error!(
                    AccessDenied,
                    "the credential scope names service '{service}'; expecting 's3'"
                ));
            }
            if region != REGION {
                return Err(s3_error!(
                    AuthorizationHeaderMalformed,
                    "the authorization header is malformed; the region '{region}' is wrong; expecting '{REGION}'"
                ));
            }
        }
        let scope = match self.0.lookup(&creds.access_key).await {
            Ok(Some((_, scope))) => scope,
            Ok(None) => return Err(s3_error!(InvalidAccessKeyId, "the access key was revoked")),
            Err(e) => return Err(s3_err(e)),
        };
        let op = cx.s3_op().name().to_owned();
        if scope.read_only && !READ_OPS.contains(&op.as_str()) {
            return Err(s3_error!(
                AccessDenied,
                "access key {} is read-only; {op} writes",
                creds.access_key
            ));
        }
        let bucket = match cx.s3_path() {
            S3Path::Root => None,
            S3Path::Bucket { bucket } | S3Path::Object { bucket, .. } => Some(bucket.to_string()),
        };
        if let Some(b) = bucket
            && !scope.allows_bucket(&b)
        {
            return Err(s3_error!(
                AccessDenied,
                "access key {} may not use bucket {b}",
                creds.access_key
            ));
        }
        Ok(())
    }
}

/// The S3 operations over [`Buckets`].
pub struct S3Front {
    pub buckets: Arc<Buckets>,
    pub keys: Arc<AccessKeys>,
}

impl S3Front {
    async fn scope<T>(&self, req: &S3Request<T>) -> S3Result<Scope> {
        let Some(c) = &req.credentials else {
            return Err(s3_error!(AccessDenied, "unsigned request"));
        };
        match self.keys.lookup(&c.access_key).await {
            Ok(Some((_, scope))) => Ok(scope),
            Ok(None) => Err(s3_error!(InvalidAccessKeyId, "the access key was revoked")),
            Err(e) => Err(s3_err(e)),
        }
    }
}

fn put_meta(
    content_type: Option<String>,
    metadata: Option<Metadata>,
    mut headers: [(&str, Option<String>); 4],
) -> PutMeta {
    // `aws-chunked` describes the upload, not the object (S3 drops it too).
    for (name, value) in headers.iter_mut() {
        if *name == "content-encoding"
            && let Some(v) = value
        {
            let kept: Vec<&str> = v
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty() && !e.eq_ignore_ascii_case("aws-chunked"))
                .collect();
            *value = (!kept.is_empty()).then(|| kept.join(", "));
        }
    }
    PutMeta {
        content_type,
        user_metadata: metadata
            .map(|m| m.into_iter().collect::<BTreeMap<_, _>>())
            .unwrap_or_default(),
        headers: headers
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
            .collect(),
    }
}

fn header(rec: &verge_api::specs::ObjectRecord, name: &str) -> Option<String> {
    rec.headers.get(name).cloned()
}

fn user_metadata(rec: &verge_api::specs::ObjectRecord) -> Option<Metadata> {
    (!rec.user_metadata.is_empty()).then(|| {
        rec.user_metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

/// The conditional headers of GET/HEAD against the object: `Err` is the answer
/// (412 or 304).
fn preconditions(
    rec: &verge_api::specs::ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
    if_modified_since: Option<&Timestamp>,
    if_unmodified_since: Option<&Timestamp>,
) -> S3Result<()> {
    let current = etag(&rec.etag);
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == current.value(),
    };
    let modified = timestamp(&rec.last_modified).map(time::OffsetDateTime::from);
    let secs = |t: &Timestamp| time::OffsetDateTime::from(t.clone()).unix_timestamp();
    if let Some(c) = if_match
        && !matches(c)
    {
        return Err(s3_error!(
            PreconditionFailed,
            "If-Match: the ETag is {}",
            rec.etag
        ));
    }
    if if_match.is_none()
        && let (Some(t), Some(m)) = (if_unmodified_since, modified)
        && m.unix_timestamp() > secs(t)
    {
        return Err(s3_error!(
            PreconditionFailed,
            "modified since If-Unmodified-Since"
        ));
    }
    if let Some(c) = if_none_match
        && matches(c)
    {
        return Err(s3_error!(NotModified));
    }
    if if_none_match.is_none()
        && let (Some(t), Some(m)) = (if_modified_since, modified)
        && m.unix_timestamp() <= secs(t)
    {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

fn max_keys(n: Option<i32>) -> usize {
    n.map_or(crate::buckets::listing::MAX_KEYS, |n| n.max(0) as usize)
}

fn to_objects(items: Vec<(String, verge_api::specs::ObjectRecord)>) -> Vec<Object> {
    items
        .into_iter()
        .map(|(key, rec)| Object {
            e_tag: Some(etag(&rec.etag)),
            key: Some(key),
            last_modified: timestamp(&rec.last_modified),
            size: Some(rec.size as i64),
            storage_class: Some(ObjectStorageClass::from_static(
                ObjectStorageClass::STANDARD,
            )),
            ..Default::default()
        })
        .collect()
}

fn to_prefixes(p: Vec<String>) -> Option<Vec<CommonPrefix>> {
    (!p.is_empty()).then(|| {
        p.into_iter()
            .map(|p| CommonPrefix { prefix: Some(p) })
            .collect()
    })
}

/// Continuation tokens are the base64 of the key to continue after.
fn encode_token(after: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(after)
}

fn decode_token(token: &str) -> S3Result<String> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| s3_error!(InvalidArgument, "the continuation token is not valid"))
}

/// The metadata a write request gives (PutObject, CopyObject with `REPLACE`,
/// CreateMultipartUpload: the same field names in each input).
macro_rules! put_meta_of {
    ($input:ident) => {
        put_meta(
            $input.content_type,
            $input.metadata,
            [
                ("cache-control", $input.cache_control),
                ("content-disposition", $input.content_disposition),
                ("content-encoding", $input.content_encoding),
                ("content-language", $input.content_language),
            ],
        )
    };
}

/// The object a GET or HEAD names, after its conditional headers (412 / 304).
macro_rules! head_checked {
    ($self:ident, $input:ident) => {{
        let (rec, _) = $self
            .buckets
            .head(&$input.bucket, &$input.key)
            .await
            .map_err(s3_err)?;
        preconditions(
            &rec,
            $input.if_match.as_ref(),
            $input.if_none_match.as_ref(),
            $input.if_modified_since.as_ref(),
            $input.if_unmodified_since.as_ref(),
        )?;
        rec
    }};
}

/// A GET or HEAD answer with the object's headers, plus the given fields.
macro_rules! object_output {
    ($ty:ident, $rec:ident, { $($field:ident: $value:expr),* $(,)? }) => {
        $ty {
            $($field: $value,)*
            accept_ranges: Some("bytes".to_owned()),
            content_type: Some($rec.content_type.clone()),
            e_tag: Some(etag(&$rec.etag)),
            last_modified: timestamp(&$rec.last_modified),
            metadata: user_metadata(&$rec),
            cache_control: header(&$rec, "cache-control"),
            content_disposition: header(&$rec, "content-disposition"),
            content_encoding: header(&$rec, "content-encoding"),
            content_language: header(&$rec, "content-language"),
            ..Default::default()
        }
    };
}

#[async_trait::async_trait]
impl S3 for S3Front {
    async fn list_buckets(
        &self,
        req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let scope = self.scope(&req).await?;
        let all = self.buckets.list_buckets().await.map_err(s3_err)?;
        let buckets = all
            .into_iter()
            .filter(|(name, _)| scope.allows_bucket(name))
            .map(|(name, created)| Bucket {
                creation_date: timestamp(&created),
                name: Some(name),
                bucket_region: Some(REGION.to_owned()),
            })
            .collect();
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            ..Default::default()
        }))
    }

    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        self.buckets
            .create_bucket(&req.input.bucket, Default::default())
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(CreateBucketOutput {
            location: Some(format!("/{}", req.input.bucket)),
        }))
    }

    async fn head_bucket(
        &self,
        req: S3Request<HeadBucketInput>,
    ) -> S3Result<S3Response<HeadBucketOutput>> {
        self.buckets.spec(&req.input.bucket).await.map_err(s3_err)?;
        Ok(S3Response::new(HeadBucketOutput {
            bucket_region: Some(REGION.to_owned()),
            ..Default::default()
        }))
    }

    async fn get_bucket_location(
        &self,
        req: S3Request<GetBucketLocationInput>,
    ) -> S3Result<S3Response<GetBucketLocationOutput>> {
        self.buckets.spec(&req.input.bucket).await.map_err(s3_err)?;
        Ok(S3Response::new(GetBucketLocationOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        self.buckets
            .delete_bucket(&req.input.bucket)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(DeleteBucketOutput {}))
    }

    async fn put_object(
        &self,
        req: S3Request<PutObjectInput>,
    ) -> S3Result<S3Response<PutObjectOutput>> {
        let input = req.input;
        let body = input
            .body
            .ok_or_else(|| s3_error!(IncompleteBody, "the request has no body"))?;
        let meta = put_meta_of!(input);
        let len = input.content_length.map(|n| n.max(0) as u64);
        let rec = self
            .buckets
            .put(&input.bucket, &input.key, body, len, meta)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(etag(&rec.etag)),
            size: Some(rec.size as i64),
            ..Default::default()
        }))
    }

    async fn get_object(
        &self,
        req: S3Request<GetObjectInput>,
    ) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let rec = head_checked!(self, input);
        let (start, len, range_answer) = match input.range {
            None => (0, rec.size, None),
            Some(r) => {
                let range = r.check(rec.size).map_err(|_| {
                    s3_error!(
                        InvalidRange,
                        "the range is not satisfiable for an object of {} bytes",
                        rec.size
                    )
                })?;
                (
                    range.start,
                    range.end - range.start,
                    Some(format!(
                        "bytes {}-{}/{}",
                        range.start,
                        range.end - 1,
                        rec.size
                    )),
                )
            }
        };
        let path = self.buckets.blobs().path(&rec.sha256);
        let body = crate::buckets::blobs::read_range(path, start, len);
        Ok(S3Response::new(object_output!(GetObjectOutput, rec, {
            body: Some(StreamingBlob::wrap(body)),
            content_length: Some(len as i64),
            content_range: range_answer,
        })))
    }

    async fn head_object(
        &self,
        req: S3Request<HeadObjectInput>,
    ) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let rec = head_checked!(self, input);
        Ok(S3Response::new(object_output!(HeadObjectOutput, rec, {
            content_length: Some(rec.size as i64),
        })))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        self.buckets
            .delete(&req.input.bucket, &req.input.key)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        if input.delete.objects.len() > 1000 {
            return Err(s3_error!(
                MalformedXML,
                "at most 1000 keys per DeleteObjects request"
            ));
        }
        let quiet = input.delete.quiet.unwrap_or(false);
        let mut deleted = Vec::new();
        let mut errors = Vec::new();
        for o in input.delete.objects {
            match self.buckets.delete(&input.bucket, &o.key).await {
                Ok(_) => {
                    if !quiet {
                        deleted.push(DeletedObject {
                            key: Some(o.key),
                            ..Default::default()
                        });
                    }
                }
                Err(e) => {
                    let e = s3_err(e);
                    errors.push(s3s::dto::Error {
                        code: Some(e.code().as_str().to_owned()),
                        key: Some(o.key),
                        message: e.message().map(str::to_owned),
                        version_id: None,
                    });
                }
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: (!errors.is_empty()).then_some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(
        &self,
        req: S3Request<CopyObjectInput>,
    ) -> S3Result<S3Response<CopyObjectOutput>> {
        let scope = self.scope(&req).await?;
        let input = req.input;
        let (src_bucket, src_key) = match &input.copy_source {
            CopySource::Bucket { bucket, key, .. } => (bucket.to_string(), key.to_string()),
            _ => {
                return Err(s3_error!(
                    NotImplemented,
                    "access point sources are not supported"
                ));
            }
        };
        if !scope.allows_bucket(&src_bucket) {
            return Err(s3_error!(
                AccessDenied,
                "this key may not read bucket {src_bucket}"
            ));
        }
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let meta = replace.then(|| put_meta_of!(input));
        let rec = self
            .buckets
            .copy(&src_bucket, &src_key, &input.bucket, &input.key, meta)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(etag(&rec.etag)),
                last_modified: timestamp(&rec.last_modified),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        let after = match &input.continuation_token {
            Some(t) => decode_token(t)?,
            None => input.start_after.clone().unwrap_or_default(),
        };
        let q = ListQuery {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone(),
            after,
            max_keys: max_keys(input.max_keys),
        };
        let l = self.buckets.list(&input.bucket, &q).await.map_err(s3_err)?;
        let key_count = (l.objects.len() + l.common_prefixes.len()) as i32;
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: input.prefix,
            max_keys: Some(q.max_keys.min(crate::buckets::listing::MAX_KEYS) as i32),
            key_count: Some(key_count),
            continuation_token: input.continuation_token,
            is_truncated: Some(l.truncated),
            next_continuation_token: l.next_after.as_deref().map(encode_token),
            contents: Some(to_objects(l.objects)),
            common_prefixes: to_prefixes(l.common_prefixes),
            delimiter: input.delimiter,
            encoding_type: input.encoding_type,
            start_after: input.start_after,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        let q = ListQuery {
            prefix: input.prefix.clone().unwrap_or_default(),
            delimiter: input.delimiter.clone(),
            after: input.marker.clone().unwrap_or_default(),
            max_keys: max_keys(input.max_keys),
        };
        let l = self.buckets.list(&input.bucket, &q).await.map_err(s3_err)?;
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: input.prefix,
            marker: input.marker,
            max_keys: Some(q.max_keys.min(crate::buckets::listing::MAX_KEYS) as i32),
            is_truncated: Some(l.truncated),
            next_marker: l.next_after,
            contents: Some(to_objects(l.objects)),
            common_prefixes: to_prefixes(l.common_prefixes),
            delimiter: input.delimiter,
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        let input = req.input;
        let meta = put_meta_of!(input);
        let id = self
            .buckets
            .create_upload(&input.bucket, &input.key, meta)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(id),
            ..Default::default()
        }))
    }

    async fn upload_part(
        &self,
        req: S3Request<UploadPartInput>,
    ) -> S3Result<S3Response<UploadPartOutput>> {
        let input = req.input;
        let body = input
            .body
            .ok_or_else(|| s3_error!(IncompleteBody, "the request has no body"))?;
        let part = u32::try_from(input.part_number)
            .map_err(|_| s3_error!(InvalidArgument, "partNumber must be 1..=10000"))?;
        let len = input.content_length.map(|n| n.max(0) as u64);
        let e = self
            .buckets
            .upload_part(&input.bucket, &input.key, &input.upload_id, part, body, len)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(UploadPartOutput {
            e_tag: Some(etag(&e)),
            ..Default::default()
        }))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        let input = req.input;
        let given: Vec<(u32, String)> = input
            .multipart_upload
            .and_then(|m| m.parts)
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                (
                    p.part_number.unwrap_or(0).max(0) as u32,
                    p.e_tag.map(|e| e.into_value()).unwrap_or_default(),
                )
            })
            .collect();
        let rec = self
            .buckets
            .complete_upload(&input.bucket, &input.key, &input.upload_id, &given)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket.clone()),
            key: Some(input.key.clone()),
            e_tag: Some(etag(&rec.etag)),
            location: Some(format!("/{}/{}", input.bucket, input.key)),
            ..Default::default()
        }))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        let input = req.input;
        self.buckets
            .abort_upload(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(
        &self,
        req: S3Request<ListPartsInput>,
    ) -> S3Result<S3Response<ListPartsOutput>> {
        let input = req.input;
        let marker = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let max = input.max_parts.map_or(1000, |n| n.clamp(0, 1000) as usize);
        let parts = self
            .buckets
            .list_parts(&input.bucket, &input.key, &input.upload_id)
            .await
            .map_err(s3_err)?;
        let after: Vec<_> = parts.into_iter().filter(|(n, _)| *n > marker).collect();
        let truncated = after.len() > max;
        let shown: Vec<_> = after.into_iter().take(max).collect();
        let next = shown.last().map(|(n, _)| *n as i32);
        Ok(S3Response::new(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(truncated),
            part_number_marker: input.part_number_marker,
            next_part_number_marker: if truncated { next } else { None },
            parts: Some(
                shown
                    .into_iter()
                    .map(|(n, p)| Part {
                        e_tag: Some(etag(&p.etag)),
                        last_modified: timestamp(&p.last_modified),
                        part_number: Some(n as i32),
                        size: Some(p.size as i64),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        let input = req.input;
        let prefix = input.prefix.clone().unwrap_or_default();
        let uploads = self
            .buckets
            .list_uploads(&input.bucket)
            .await
            .map_err(s3_err)?;
        Ok(S3Response::new(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            is_truncated: Some(false),
            max_uploads: Some(crate::buckets::MAX_UPLOADS_PER_BUCKET as i32),
            uploads: Some(
                uploads
                    .into_iter()
                    .filter(|(key, _, _)| key.starts_with(&prefix))
                    .map(|(key, id, initiated)| MultipartUpload {
                        key: Some(key),
                        upload_id: Some(id),
                        initiated: timestamp(&initiated),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }))
    }
}

/// The S3 service as an axum router (the API listener's serve loop, admission and
/// timeouts run it).
pub fn router(buckets: Arc<Buckets>, keys: Arc<AccessKeys>) -> axum::Router {
    let mut builder = s3s::service::S3ServiceBuilder::new(S3Front {
        buckets,
        keys: keys.clone(),
    });
    builder.set_auth(Auth(keys.clone()));
    builder.set_access(Access(keys));
    let mut config = s3s::config::S3Config::default();
    // CompleteMultipartUpload with 10,000 parts and DeleteObjects with 1,000 keys fit.
    config.xml_max_body_size = 2 << 20;
    config.post_object_max_file_size = 0;
    builder.set_config(Arc::new(s3s::config::StaticConfigProvider::new(Arc::new(
        config,
    ))));
    let service = builder.build();
    let svc = tower::service_fn(move |req: axum::extract::Request| {
        let service = service.clone();
        async move {
            // s3s answers a scope naming a service other than s3 or sts with 501
            // NotImplemented before any access check; it is a refusal (403).
            if let Some(refusal) = foreign_service(req.headers(), req.uri()) {
                return Ok::<_, std::convert::Infallible>(refusal);
            }
            let resp = match service.call(req.map(s3s::Body::http_body_unsync)).await {
                Ok(resp) => resp.map(axum::body::Body::new),
                Err(e) => {
                    tracing::warn!(error = ?e, "s3 request failed");
                    http::Response::builder()
                        .status(http::StatusCode::INTERNAL_SERVER_ERROR)
                        .body(axum::body::Body::from(Bytes::from_static(
                            b"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>internal error</Message></Error>",
                        )))
                        .unwrap_or_default()
                }
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    axum::Router::new().fallback_service(svc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(credential: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("AWS4-HMAC-SHA256 Credential={credential}, SignedHeaders=host, Signature=00")
                .parse()
                .unwrap(),
        );
        h
    }

    #[test]
    fn another_service_in_the_scope_is_refused_with_access_denied() {
        let uri: http::Uri = "/b/k".parse().unwrap();
        let ok = signed("VK1/20260101/us-east-1/s3/aws4_request");
        assert!(foreign_service(&ok, &uri).is_none());
        for service in ["iam", "sts", "S3"] {
            let h = signed(&format!("VK1/20260101/us-east-1/{service}/aws4_request"));
            let resp = foreign_service(&h, &uri).expect("refused");
            assert_eq!(resp.status(), http::StatusCode::FORBIDDEN, "{service}");
        }
        // Presigned: the scope is in the query string.
        let uri: http::Uri =
            "/b/k?X-Amz-Credential=VK1%2F20260101%2Fus-east-1%2Fiam%2Faws4_request"
                .parse()
                .unwrap();
        assert!(foreign_service(&http::HeaderMap::new(), &uri).is_some());
        // Unsigned or SigV2: not decided here.
        let uri: http::Uri = "/b/k".parse().unwrap();
        assert!(foreign_service(&http::HeaderMap::new(), &uri).is_none());
    }

    #[test]
    fn presigned_lifetimes() {
        let uri = |q: &str| format!("/b/k?{q}").parse::<http::Uri>().unwrap();
        assert_eq!(
            presigned_lifetime(&uri("X-Amz-Expires=300&x=1"), 0),
            Some(300)
        );
        assert_eq!(
            presigned_lifetime(&uri("Expires=1100&Signature=s"), 1000),
            Some(100)
        );
        assert_eq!(presigned_lifetime(&uri("list-type=2"), 0), None);
        assert!(presigned_lifetime(&uri("X-Amz-Expires=604801"), 0).unwrap() > MAX_PRESIGNED_SECS);
    }

    #[test]
    fn error_xml_escapes_what_the_client_sent() {
        let x = error_xml("AccessDenied", "service '<x>&'");
        assert!(x.contains("<Code>AccessDenied</Code>"));
        assert!(
            x.contains("<Message>service &apos;&lt;x&gt;&amp;&apos;</Message>"),
            "{x}"
        );
    }
}
