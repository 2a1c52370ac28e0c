//! The CloudEvents 1.0 form of an object event (structured mode, JSON): built from one
//! store event on a key under [`super::OBJECTS_PREFIX`] — `/s3/objects/{bucket}/{key}`,
//! whose value is the object's metadata record.
//!
//! Pure: no store, no clock (the caller passes "now"), no I/O. Must not invent data:
//! a key or value that does not read as an object record is an error, never an event
//! with made-up fields.

use serde::{Deserialize, Serialize};
use verge_api::specs::EventType;
use verge_store::{EventKind, Revision};

use super::OBJECTS_PREFIX;

/// CloudEvents `specversion`.
pub const SPEC_VERSION: &str = "1.0";
/// `datacontenttype` of every object event.
pub const DATA_CONTENT_TYPE: &str = "application/json";
/// The media type of a structured-mode CloudEvent over HTTP.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// One object event, as delivered (task input, webhook body, dead letter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CloudEvent {
    pub specversion: String,
    /// The store revision of the write, 16 hex digits: unique and increasing.
    pub id: String,
    /// `/buckets/NAME`.
    pub source: String,
    /// `dev.verge.object.created` or `dev.verge.object.deleted`.
    #[serde(rename = "type")]
    pub ty: String,
    /// The object key.
    pub subject: String,
    /// RFC 3339: the record's `lastModified` (created), the dispatch time (deleted).
    pub time: String,
    pub datacontenttype: String,
    pub data: ObjectData,
}

/// `data` of an object event: an S3-style record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectData {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    pub e_tag: String,
    /// Same as the event id: orders events of one key.
    pub sequencer: String,
}

/// What of the object record an event needs (the lead's `ObjectRecord`; other fields
/// are ignored).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordView {
    etag: String,
    size: u64,
    #[serde(default)]
    last_modified: Option<String>,
}

/// The event id of store revision `revision`: 16 lowercase hex digits.
pub fn event_id(revision: Revision) -> String {
    format!("{:016x}", revision.max(0))
}

/// `(bucket, key)` of a store key `/s3/objects/{bucket}/{key}` (the key may hold `/`);
/// `None` for any other key, an empty bucket or an empty key.
pub fn split_key(store_key: &str) -> Option<(&str, &str)> {
    let rest = store_key.strip_prefix(OBJECTS_PREFIX)?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

/// The event type of a store event.
pub fn event_type(kind: EventKind) -> EventType {
    match kind {
        EventKind::Put => EventType::Created,
        EventKind::Delete => EventType::Deleted,
    }
}

/// The CloudEvent of the store event (`kind`, `revision`) on `store_key` whose value
/// (for a delete: the last one) is `value`; `now` (RFC 3339) is a delete's time.
pub fn build(
    kind: EventKind,
    revision: Revision,
    store_key: &str,
    value: &[u8],
    now: &str,
) -> Result<CloudEvent, String> {
    let (bucket, key) =
        split_key(store_key).ok_or_else(|| format!("{store_key:?} is not an object key"))?;
    let record: RecordView = serde_json::from_slice(value)
        .map_err(|e| format!("{store_key:?}: not an object record: {e}"))?;
    let ty = event_type(kind);
    let time = match (ty, record.last_modified) {
        (EventType::Created, Some(t)) if !t.is_empty() => t,
        _ => now.to_owned(),
    };
    let id = event_id(revision);
    Ok(CloudEvent {
        specversion: SPEC_VERSION.into(),
        source: format!("/buckets/{bucket}"),
        ty: ty.cloudevent_type().into(),
        subject: key.into(),
        time,
        datacontenttype: DATA_CONTENT_TYPE.into(),
        data: ObjectData {
            bucket: bucket.into(),
            key: key.into(),
            size: record.size,
            e_tag: record.etag,
            sequencer: id.clone(),
        },
        id,
    })
}

impl CloudEvent {
    /// The event type, when `type` is one of the object event types.
    pub fn event_type(&self) -> Option<EventType> {
        [EventType::Created, EventType::Deleted]
            .into_iter()
            .find(|t| t.cloudevent_type() == self.ty)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const NOW: &str = "2026-12-07T22:00:00Z";

    fn record() -> Vec<u8> {
        serde_json::to_vec(
            &json!({"etag": "\"9e107d9d372bb6826bd81d3542a419d6\"", "size": 43,
            "sha256": "d7a8fbb3", "contentType": "image/jpeg",
            "lastModified": "2026-12-07T21:59:58.123Z", "userMetadata": {"a": "b"}}),
        )
        .unwrap()
    }

    #[test]
    fn a_put_is_a_created_event_in_structured_mode() {
        let e = build(
            EventKind::Put,
            0x2a,
            "/s3/objects/uploads/in/photo 1.jpg",
            &record(),
            NOW,
        )
        .unwrap();
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"specversion": "1.0", "id": "000000000000002a", "source": "/buckets/uploads",
                "type": "dev.verge.object.created", "subject": "in/photo 1.jpg",
                "time": "2026-12-07T21:59:58.123Z", "datacontenttype": "application/json",
                "data": {"bucket": "uploads", "key": "in/photo 1.jpg", "size": 43,
                    "eTag": "\"9e107d9d372bb6826bd81d3542a419d6\"",
                    "sequencer": "000000000000002a"}})
        );
        assert_eq!(e.event_type(), Some(EventType::Created));
        let back: CloudEvent = serde_json::from_slice(&serde_json::to_vec(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn a_delete_is_a_deleted_event_at_the_dispatch_time() {
        let e = build(EventKind::Delete, 7, "/s3/objects/b1/k", &record(), NOW).unwrap();
        assert_eq!(e.ty, "dev.verge.object.deleted");
        assert_eq!(e.time, NOW);
        assert_eq!(e.data.size, 43);
        assert_eq!(e.event_type(), Some(EventType::Deleted));
    }

    #[test]
    fn keys_split_at_the_first_slash_after_the_bucket() {
        assert_eq!(split_key("/s3/objects/b/a/b/c"), Some(("b", "a/b/c")));
        assert_eq!(split_key("/s3/objects/b/../x"), Some(("b", "../x")));
        assert_eq!(split_key("/s3/objects/b/"), None);
        assert_eq!(split_key("/s3/objects//k"), None);
        assert_eq!(split_key("/s3/objects/b"), None);
        assert_eq!(split_key("/registry/b/k"), None);
    }

    #[test]
    fn ids_are_sixteen_hex_digits_and_sort_like_revisions() {
        assert_eq!(event_id(1), "0000000000000001");
        assert_eq!(event_id(i64::MAX), "7fffffffffffffff");
        assert!(event_id(255) < event_id(256));
    }

    #[test]
    fn what_is_not_an_object_record_is_an_error() {
        for value in [
            &b"not json"[..],
            br#"{"size": 1}"#,
            br#"{"etag": "x", "size": -1}"#,
        ] {
            let err = build(EventKind::Put, 1, "/s3/objects/b/k", value, NOW).unwrap_err();
            assert!(err.contains("not an object record"), "{err}");
        }
        assert!(build(EventKind::Put, 1, "/s3/other", &record(), NOW).is_err());
    }
}
