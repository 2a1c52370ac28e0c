//! `/api/v1/{plural}[/{name}[/status]]`: create, get, list, update (compare-and-swap on
//! `metadata.resourceVersion`), delete, and the status subresource.
//!
//! Deletion follows finalizers (decision 028): an object with `metadata.finalizers`
//! (and every Node) is only marked (`metadata.deletionTimestamp`); it goes away once
//! its finalizers are removed — by an update, or for a Node by the node-deletion
//! controller (`nodes::delete`), which the Node DELETE waits for (bounded). Finalizers
//! under `verge.dev/` and `deletionTimestamp` are the server's: what a client sends for
//! them is ignored, like `uid`.
//!
//! Objects are stored as JSON without `resourceVersion`; it is filled from the store's
//! `mod_revision` when read. `generation` starts at 1 and is bumped only when `spec`
//! changes. Updates that change nothing are not written (the answer carries the
//! unchanged `resourceVersion`, which is how `verge apply` reports `unchanged`).
//!
//! Secrets (decision 017) are sealed before they are stored and shown to each reader
//! through [`SecretView`]: viewers get the keys only, operators and admins the values.
//! A redacted copy is refused on write, so it can never overwrite the real values.

use std::collections::HashMap;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use verge_api::{API_VERSION, Kind, LabelSelector, ListMeta, Object, ObjectList, Reason};
use verge_store::{Expect, Revision};

use super::body;
use super::extract::{ApiPath, ApiQuery};
use super::state::SharedState;
use super::watch;
use crate::auth::{Principal, now_rfc3339};
use crate::error::ApiError;
use crate::objects::{encode_for_store, kind_prefix, kv_to_object, modify, not_found, object_key};
use verge_api::names::{FINALIZER_NODE_CLEANUP, SYSTEM_FINALIZER_PREFIX};

/// How long `DELETE /api/v1/nodes/{name}` waits for the node-deletion controller to
/// finish before answering with the Node still marked (the deletion then finishes in
/// the background).
const NODE_DELETE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

fn is_system_finalizer(f: &str) -> bool {
    f.starts_with(SYSTEM_FINALIZER_PREFIX)
}
use crate::secrets::SecretView;

pub fn kind_from_plural(plural: &str) -> Result<Kind, ApiError> {
    Kind::from_plural(plural).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.plural()).collect();
        ApiError::not_found(format!(
            "unknown resource type {plural:?}; known: {}",
            known.join(", ")
        ))
    })
}

pub fn require_write(p: &Principal) -> Result<(), ApiError> {
    if p.role.can_write_resources() {
        Ok(())
    } else {
        tracing::warn!(token_id = %p.token_id, role = p.role.as_str(), "write denied");
        Err(ApiError::new(
            Reason::Forbidden,
            format!(
                "role {} may not write; ask for an operator or admin token",
                p.role.as_str()
            ),
        ))
    }
}

fn parse_revision(s: &str, field: &str) -> Result<Revision, ApiError> {
    s.parse::<Revision>()
        .ok()
        .filter(|r| *r >= 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field}: {s:?} is not a resource version (a non-negative integer)"
            ))
            .field(field)
        })
}

fn check_kind(kind: Kind, obj: &Object) -> Result<(), ApiError> {
    if obj.kind != kind.name() {
        return Err(ApiError::invalid(
            "kind",
            format!(
                "kind: {:?} does not belong under /api/v1/{}; expected {}",
                obj.kind,
                kind.plural(),
                kind.name()
            ),
        ));
    }
    Ok(())
}

/// How `principal` sees stored objects of `kind` (`None`: as stored).
fn view(st: &SharedState, kind: Kind, principal: &Principal) -> Option<SecretView> {
    SecretView::new(kind, principal.role, &st.secrets)
}

fn shown(view: &Option<SecretView>, obj: Object) -> Object {
    match view {
        Some(v) => v.show(&obj),
        None => obj,
    }
}

/// A Secret read without its values (or whose values did not open) is not written
/// back: it would replace the real values with empty ones.
fn refuse_redacted(kind: Kind, obj: &Object) -> Result<(), ApiError> {
    use verge_api::specs::{ANNOTATION_REDACTED, ANNOTATION_SECRET_ERROR};
    if kind != Kind::Secret {
        return Ok(());
    }
    for a in [ANNOTATION_REDACTED, ANNOTATION_SECRET_ERROR] {
        if obj.metadata.annotations.contains_key(a) {
            return Err(ApiError::invalid(
                format!("metadata.annotations.{a}"),
                format!(
                    "metadata.annotations.{a}: this Secret was read without its values; \
                     write the real values (and drop the annotation)"
                ),
            ));
        }
    }
    Ok(())
}

const LIST_PARAMS: &[&str] = &[
    "labelSelector",
    "watch",
    "resourceVersion",
    "timeoutSeconds",
];

pub async fn list(
    State(st): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Extension(kind): Extension<Kind>,
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let view = view(&st, kind, &principal);
    if let Some(bad) = q.keys().find(|k| !LIST_PARAMS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {bad:?}; known: {}",
            LIST_PARAMS.join(", ")
        ))
        .field(bad.clone()));
    }
    let selector = match q.get("labelSelector") {
        Some(s) => Some(LabelSelector::parse(s)?),
        None => None,
    };
    let watching = match q.get("watch").map(String::as_str) {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "watch: {other:?} is not a boolean (use 1 or true)"
            ))
            .field("watch"));
        }
    };
    if watching {
        let from = match q.get("resourceVersion") {
            Some(s) => Some(parse_revision(s, "resourceVersion")?),
            None => None,
        };
        let timeout = match q.get("timeoutSeconds") {
            Some(s) => {
                let t = s
                    .parse::<u64>()
                    .ok()
                    .filter(|t| (1..=watch::MAX_TIMEOUT_SECS).contains(t));
                Some(t.ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "timeoutSeconds: must be an integer between 1 and {}",
                        watch::MAX_TIMEOUT_SECS
                    ))
                    .field("timeoutSeconds")
                })?)
            }
            None => None,
        };
        let req = watch::WatchRequest {
            kind,
            selector,
            from,
            timeout,
            view,
        };
        return watch::start(st, &principal.token_id, req, &headers).await;
    }
    let res = st.store.list(&kind_prefix(kind), selector.as_ref()).await?;
    let items = res
        .items
        .iter()
        .map(|kv| kv_to_object(kv).map(|o| shown(&view, o)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(ObjectList {
        api_version: API_VERSION.to_string(),
        kind: format!("{}List", kind.name()),
        metadata: ListMeta {
            resource_version: res.revision.to_string(),
        },
        items,
    })
    .into_response())
}

pub async fn get(
    State(st): State<SharedState>,
    Extension(kind): Extension<Kind>,
    ApiPath(name): ApiPath<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Object>, ApiError> {
    let kv = st
        .store
        .get(&object_key(kind, &name))
        .await?
        .ok_or_else(|| not_found(kind, &name))?;
    Ok(Json(shown(
        &view(&st, kind, &principal),
        kv_to_object(&kv)?,
    )))
}

pub async fn create(
    State(st): State<SharedState>,
    Extension(kind): Extension<Kind>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Object>), ApiError> {
    require_write(&principal)?;
    let mut obj = body::read_object(&headers, body, st.max_body_bytes).await?;
    check_kind(kind, &obj)?;
    refuse_redacted(kind, &obj)?;
    obj.metadata.uid = Some(uuid::Uuid::new_v4().to_string());
    obj.metadata.generation = Some(1);
    obj.metadata.creation_timestamp = Some(now_rfc3339());
    obj.metadata.resource_version = None;
    obj.metadata.deletion_timestamp = None;
    obj.metadata.finalizers.retain(|f| !is_system_finalizer(f));
    if kind == Kind::Node {
        obj.metadata
            .finalizers
            .push(FINALIZER_NODE_CLEANUP.to_string());
    }
    // Status is written only through the /status subresource.
    obj.status = serde_json::Value::Null;
    let name = obj.metadata.name.clone();
    let stored = st.secrets.seal_object(&obj).map_err(ApiError::internal)?;
    let kv = st
        .store
        .create(
            &object_key(kind, &name),
            encode_for_store(&stored)?,
            obj.metadata.labels.clone(),
        )
        .await
        .map_err(|e| match e {
            verge_store::Error::AlreadyExists { .. } => ApiError::new(
                Reason::AlreadyExists,
                format!(
                    "{} {name:?} already exists; use PUT to update it",
                    kind.singular()
                ),
            )
            .field("metadata.name"),
            other => other.into(),
        })?;
    obj.metadata.resource_version = Some(kv.mod_revision.to_string());
    Ok((StatusCode::CREATED, Json(obj)))
}

/// Most compare-and-swap retries for an update that did not ask for a precondition.
pub async fn update(
    State(st): State<SharedState>,
    Extension(kind): Extension<Kind>,
    ApiPath(name): ApiPath<String>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Object>, ApiError> {
    require_write(&principal)?;
    let obj = body::read_object(&headers, body, st.max_body_bytes).await?;
    check_kind(kind, &obj)?;
    refuse_redacted(kind, &obj)?;
    if obj.metadata.name != name {
        return Err(ApiError::invalid(
            "metadata.name",
            format!(
                "metadata.name: {:?} does not match the name in the URL ({name:?})",
                obj.metadata.name
            ),
        ));
    }
    let expected = match obj.metadata.resource_version.as_deref() {
        Some(rv) => Some(parse_revision(rv, "metadata.resourceVersion")?),
        None => None,
    };
    let key = object_key(kind, &name);
    let updated = modify(&st.store, kind, &key, &name, expected, |current| {
        if kind == Kind::App {
            check_version_forward(current, &obj)?;
        }
        let mut next = obj.clone();
        if kind == Kind::Secret {
            // Compared as plaintext (each sealing differs); unchanged values keep
            // their stored form, so an unchanged apply writes nothing.
            let opened = st.secrets.open_object(current);
            let same = opened.spec == obj.spec
                && !opened
                    .metadata
                    .annotations
                    .contains_key(verge_api::specs::ANNOTATION_SECRET_ERROR);
            next.spec = if same {
                current.spec.clone()
            } else {
                st.secrets
                    .seal_object(&obj)
                    .map_err(ApiError::internal)?
                    .spec
            };
        }
        next.metadata.uid = current.metadata.uid.clone();
        next.metadata.creation_timestamp = current.metadata.creation_timestamp.clone();
        merge_finalizers(current, &mut next)?;
        let generation = current.metadata.generation.unwrap_or(1);
        next.metadata.generation = Some(if next.spec != current.spec {
            generation + 1
        } else {
            generation
        });
        next.status = current.status.clone();
        Ok(next)
    })
    .await?;
    let updated = finish_if_released(&st, kind, &key, updated).await?;
    Ok(Json(shown(&view(&st, kind, &principal), updated)))
}

/// The server's parts of `metadata` on update: `deletionTimestamp` and the `verge.dev/`
/// finalizers are kept from `current` whatever the client sent; an object being
/// deleted takes no new finalizer.
fn merge_finalizers(current: &Object, next: &mut Object) -> Result<(), ApiError> {
    next.metadata.deletion_timestamp = current.metadata.deletion_timestamp.clone();
    next.metadata.finalizers.retain(|f| !is_system_finalizer(f));
    for f in current
        .metadata
        .finalizers
        .iter()
        .filter(|f| is_system_finalizer(f))
    {
        next.metadata.finalizers.push(f.clone());
    }
    if current.metadata.is_deleting()
        && let Some(added) = next
            .metadata
            .finalizers
            .iter()
            .find(|f| !current.metadata.has_finalizer(f))
    {
        return Err(ApiError::invalid(
            "metadata.finalizers",
            format!("metadata.finalizers: cannot add {added:?} to an object that is being deleted"),
        ));
    }
    Ok(())
}

/// An object being deleted whose last finalizer an update removed goes away now
/// (Nodes are deleted by their controller, which also revokes their certificates).
async fn finish_if_released(
    st: &SharedState,
    kind: Kind,
    key: &str,
    obj: Object,
) -> Result<Object, ApiError> {
    if kind == Kind::Node || !obj.metadata.is_deleting() || !obj.metadata.finalizers.is_empty() {
        return Ok(obj);
    }
    let rv = obj
        .metadata
        .resource_version
        .as_deref()
        .and_then(|r| r.parse::<Revision>().ok())
        .unwrap_or_default();
    match st.store.delete(key, Expect::ModRevision(rv)).await {
        Ok(_) | Err(verge_store::Error::NotFound { .. }) => Ok(obj),
        Err(e) => Err(e.into()),
    }
}

/// An App's `spec.version` may only go backwards as an explicit rollback (the
/// `rollout.verge.dev/rollback: "true"` annotation `verge rollout rollback` sets).
fn check_version_forward(current: &Object, next: &Object) -> Result<(), ApiError> {
    let version = |o: &Object| {
        o.spec
            .get("version")
            .and_then(|v| v.as_str())
            .and_then(|v| semver::Version::parse(v).ok())
    };
    let (Some(old), Some(new)) = (version(current), version(next)) else {
        return Ok(());
    };
    let explicit = next
        .metadata
        .annotations
        .get(crate::apps::ANNOTATION_ROLLBACK)
        .is_some_and(|v| v == "true");
    if new < old && !explicit {
        return Err(ApiError::invalid(
            "spec.version",
            format!(
                "spec.version: {new} is older than the current {old}; going back is only \
                 allowed as an explicit rollback (`verge rollout rollback app/{}`)",
                next.metadata.name
            ),
        ));
    }
    Ok(())
}

const STATUS_TOP_LEVEL: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

/// `PUT /api/v1/{plural}/{name}/status`: replaces only `status`. The body is the object
/// (or just `{metadata: {name, resourceVersion?}, status}`); everything but `status` and
/// the optional `metadata.resourceVersion` precondition is ignored.
pub async fn update_status(
    State(st): State<SharedState>,
    Extension(kind): Extension<Kind>,
    ApiPath(name): ApiPath<String>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Object>, ApiError> {
    require_write(&principal)?;
    let value = body::read_value(&headers, body, st.max_body_bytes).await?;
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::invalid(
            "",
            "the body must be an object with a status field",
        ));
    };
    if let Some(bad) = map.keys().find(|k| !STATUS_TOP_LEVEL.contains(&k.as_str())) {
        return Err(ApiError::invalid(
            bad.clone(),
            format!("{bad}: unknown field"),
        ));
    }
    let meta = map.get("metadata").and_then(|m| m.as_object());
    if let Some(body_name) = meta.and_then(|m| m.get("name")).and_then(|n| n.as_str())
        && body_name != name
    {
        return Err(ApiError::invalid(
            "metadata.name",
            format!("metadata.name: {body_name:?} does not match the name in the URL ({name:?})"),
        ));
    }
    let expected = match meta.and_then(|m| m.get("resourceVersion")) {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(parse_revision(s, "metadata.resourceVersion")?),
        Some(_) => {
            return Err(ApiError::invalid(
                "metadata.resourceVersion",
                "metadata.resourceVersion: must be a string",
            ));
        }
    };
    let status = match map.get("status") {
        Some(s @ serde_json::Value::Object(_)) => s.clone(),
        Some(serde_json::Value::Null) | None => {
            return Err(ApiError::invalid("status", "status: missing field"));
        }
        Some(_) => return Err(ApiError::invalid("status", "status: must be an object")),
    };
    let key = object_key(kind, &name);
    modify(&st.store, kind, &key, &name, expected, |current| {
        let mut next = current.clone();
        next.status = status.clone();
        Ok(next)
    })
    .await
    .map(|o| Json(shown(&view(&st, kind, &principal), o)))
}

pub async fn delete(
    State(st): State<SharedState>,
    Extension(kind): Extension<Kind>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<HashMap<String, String>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Object>, ApiError> {
    require_write(&principal)?;
    if let Some(bad) = q.keys().find(|k| k.as_str() != "resourceVersion") {
        return Err(ApiError::bad_request(format!(
            "unknown query parameter {bad:?}; known: resourceVersion"
        ))
        .field(bad.clone()));
    }
    let expected = match q.get("resourceVersion") {
        Some(rv) => Some(parse_revision(rv, "resourceVersion")?),
        None => None,
    };
    let key = object_key(kind, &name);
    let kv = st
        .store
        .get(&key)
        .await?
        .ok_or_else(|| not_found(kind, &name))?;
    let current = kv_to_object(&kv)?;
    // A bucket goes only once it is empty (as S3 DeleteBucket).
    if kind == Kind::Bucket
        && !st
            .buckets
            .is_empty(&name)
            .await
            .map_err(ApiError::internal)?
    {
        return Err(ApiError::new(
            Reason::Conflict,
            format!("bucket {name:?} is not empty: delete its objects and multipart uploads first"),
        ));
    }
    // Without finalizers (and not a Node): deleted at once, as always.
    if kind != Kind::Node && current.metadata.finalizers.is_empty() {
        let expect = expected.map_or(Expect::Any, Expect::ModRevision);
        let kv = st.store.delete(&key, expect).await.map_err(|e| match e {
            verge_store::Error::NotFound { .. } => not_found(kind, &name),
            other => other.into(),
        })?;
        return Ok(Json(shown(
            &view(&st, kind, &principal),
            kv_to_object(&kv)?,
        )));
    }
    // Marked; a repeated DELETE changes nothing. Every Node is marked (also ones
    // created before the finalizer existed): its controller revokes its certificates
    // before it goes.
    let marked = modify(&st.store, kind, &key, &name, expected, |cur| {
        let mut next = cur.clone();
        if next.metadata.deletion_timestamp.is_none() {
            next.metadata.deletion_timestamp = Some(now_rfc3339());
        }
        Ok(next)
    })
    .await?;
    let marked = finish_if_released(&st, kind, &key, marked).await?;
    if kind == Kind::Node {
        let rv = marked
            .metadata
            .resource_version
            .as_deref()
            .and_then(|r| r.parse::<Revision>().ok())
            .unwrap_or_default();
        if !crate::nodes::delete::wait_gone(&st.store, &name, rv, NODE_DELETE_WAIT).await? {
            tracing::info!(node = %name, "node deletion continues in the background");
        }
    }
    Ok(Json(shown(&view(&st, kind, &principal), marked)))
}

/// `GET /api/v1/apps/{name}/logs[?node=N&tail=K]` (and `functions/{name}/logs`): the
/// newest lines (default 200, at most 5,000) the app's instances (the function's
/// invocations) wrote, shipped by their nodes, oldest first.
pub async fn app_logs(
    State(st): State<SharedState>,
    Extension(kind): Extension<Kind>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<LogsQuery>,
) -> Result<Response, ApiError> {
    let source = match kind {
        Kind::App => format!("app/{name}/"),
        Kind::Function => format!("fn/{name}/"),
        other => {
            return Err(ApiError::internal(format!(
                "route table: logs mounted for {}",
                other.plural()
            )));
        }
    };
    if st.store.get(&object_key(kind, &name)).await?.is_none() {
        return Err(not_found(kind, &name));
    }
    let tail = q.tail.unwrap_or(200);
    if !(1..=5000).contains(&tail) {
        return Err(ApiError::new(
            Reason::BadRequest,
            format!("tail: {tail} is out of range (1..=5000)"),
        )
        .field("tail"));
    }
    let nodes = st
        .nodes
        .as_ref()
        .ok_or_else(|| ApiError::new(Reason::Unavailable, "node manager not running"))?;
    let items = nodes.logs.query(&source, q.node.as_deref(), tail);
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    node: Option<String>,
    tail: Option<usize>,
}

/// `GET /api/v1/nodes/{name}/results`: the task results the node reported, in `seq`
/// order, each with the store revision it arrived at (`receivedRevision`).
pub async fn node_results(
    State(st): State<SharedState>,
    ApiPath(name): ApiPath<String>,
) -> Result<Response, ApiError> {
    let kind = Kind::Node;
    if st.store.get(&object_key(kind, &name)).await?.is_none() {
        return Err(not_found(kind, &name));
    }
    let nodes = st
        .nodes
        .as_ref()
        .ok_or_else(|| ApiError::new(Reason::Unavailable, "node manager not running"))?;
    let items = nodes
        .results
        .list(&name)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}
