//! Typed object access below the HTTP layer: where an object lives in the store (keys,
//! prefixes), how a stored value becomes an [`Object`] and back, and read-modify-write
//! with compare-and-swap. `http/` and every controller use this one module, so neither
//! imports the other.
//!
//! Objects are stored as JSON without `resourceVersion`; it is filled from the store's
//! `mod_revision` when read. Must not know about HTTP requests, principals or views.

use verge_api::{Kind, Object, Reason};
use verge_store::{DynStore, Expect, KeyValue, Revision};

use crate::error::ApiError;

/// How often a read-modify-write without an expected version is retried when the
/// object changes under it.
const UPDATE_RETRIES: usize = 16;

/// Store key of an object.
pub fn object_key(kind: Kind, name: &str) -> String {
    format!("/registry/{}/{}", kind.plural(), name)
}

/// Store prefix of a kind.
pub fn kind_prefix(kind: Kind) -> String {
    format!("/registry/{}/", kind.plural())
}

/// Decodes a stored value and fills in `resourceVersion`.
pub fn kv_to_object(kv: &KeyValue) -> Result<Object, ApiError> {
    let mut obj: Object = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
    obj.metadata.resource_version = Some(kv.mod_revision.to_string());
    Ok(obj)
}

/// The stored form of an object: its JSON without `resourceVersion`.
pub fn encode_for_store(obj: &Object) -> Result<bytes::Bytes, ApiError> {
    let mut stored = obj.clone();
    stored.metadata.resource_version = None;
    Ok(serde_json::to_vec(&stored)
        .map_err(ApiError::internal)?
        .into())
}

/// The error for a missing object.
pub fn not_found(kind: Kind, name: &str) -> ApiError {
    ApiError::not_found(format!("{} {name:?} not found", kind.singular()))
}

/// Reads one object (`None`: it does not exist).
pub async fn get(store: &DynStore, kind: Kind, name: &str) -> Result<Option<Object>, ApiError> {
    match store.get(&object_key(kind, name)).await? {
        Some(kv) => Ok(Some(kv_to_object(&kv)?)),
        None => Ok(None),
    }
}

/// Read-modify-write with compare-and-swap. With `expected`, a stale version is a 409;
/// without it, a concurrent change is retried. A change that alters nothing is not
/// written.
pub async fn modify(
    store: &DynStore,
    kind: Kind,
    key: &str,
    name: &str,
    expected: Option<Revision>,
    apply: impl Fn(&Object) -> Result<Object, ApiError>,
) -> Result<Object, ApiError> {
    for _ in 0..UPDATE_RETRIES {
        let kv = store.get(key).await?.ok_or_else(|| not_found(kind, name))?;
        if let Some(rv) = expected
            && rv != kv.mod_revision
        {
            return Err(verge_store::Error::Conflict {
                key: key.to_string(),
                expected: rv,
                current: kv.mod_revision,
            }
            .into());
        }
        let mut current: Object = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
        current.metadata.resource_version = None;
        let mut next = apply(&current)?;
        next.metadata.resource_version = None;
        if next == current {
            next.metadata.resource_version = Some(kv.mod_revision.to_string());
            return Ok(next);
        }
        match store
            .update(
                key,
                encode_for_store(&next)?,
                next.metadata.labels.clone(),
                Expect::ModRevision(kv.mod_revision),
            )
            .await
        {
            Ok(new_kv) => {
                next.metadata.resource_version = Some(new_kv.mod_revision.to_string());
                return Ok(next);
            }
            Err(verge_store::Error::Conflict { .. }) if expected.is_none() => continue,
            Err(verge_store::Error::NotFound { .. }) => return Err(not_found(kind, name)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::new(
        Reason::Conflict,
        "the object is being modified concurrently; retry",
    ))
}
