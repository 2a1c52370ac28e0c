//! Function invocation and tasks:
//! - `POST /api/v1/functions/{name}/invoke[?node=N&timeoutSeconds=S]`: runs the
//!   function and answers with its output. Cloud-placed functions run in the cloud's
//!   runtime (JSON or any bytes in and out); edge-placed ones run as a task on `node`
//!   (or the least loaded node of the function's placement) and the call waits for the
//!   result (JSON input only, at most 256 KiB). Such a call is not queued: a `node`
//!   that does not exist is a 404 (field `node`), no Ready node to run it a 503 with
//!   `Retry-After`, both at once (decision 019).
//! - `POST /api/v1/tasks`: a `Task` object → `202` and the Task (named by its
//!   `metadata.name`, else a generated id), as other kinds answer; a bare `TaskSpec` →
//!   `202 {taskId, created}`. `DELETE /api/v1/tasks/{name}` cancels (lists and gets
//!   are the resource handlers).

use std::time::Duration;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use verge_api::specs::{FunctionSpec, TaskSpec, TaskTarget};
use verge_api::{Kind, Object, Reason};

use super::body;
use super::extract::{ApiPath, ApiQuery};
use super::resources::require_write;
use super::state::SharedState;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::functions::task_state::{Phase, TaskStatus};
use crate::objects::object_key;

fn functions(st: &SharedState) -> Result<&crate::functions::Functions, ApiError> {
    st.functions
        .as_deref()
        .ok_or_else(|| ApiError::new(Reason::Unavailable, "functions are not enabled"))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InvokeQuery {
    node: Option<String>,
    timeout_seconds: Option<u64>,
}

/// A failed task as an invoke answer: `{reason, message, taskId}`.
fn task_failure(status: StatusCode, reason: &str, message: String, id: &str) -> Response {
    let body = json!({ "reason": reason, "message": message, "taskId": id });
    (status, Json(body)).into_response()
}

pub async fn invoke(
    State(st): State<SharedState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<InvokeQuery>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_write(&principal)?;
    let f = functions(&st)?;
    let kv = st
        .store
        .get(&object_key(Kind::Function, &name))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("function {name:?} not found")))?;
    let o: Object = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
    let spec: FunctionSpec = serde_json::from_value(o.spec).map_err(ApiError::internal)?;
    let bytes = body::read_limited(&headers, body, st.max_body_bytes).await?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_string();
    let is_json = content_type.split(';').next().unwrap_or("").trim() == "application/json";
    let json_input = || -> Result<Value, ApiError> {
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            ApiError::bad_request(format!("body: not valid JSON (not UTF-8: {e})")).field("body")
        })?;
        // Bounded like every body: nesting at most `limits::MAX_DEPTH` levels.
        verge_api::parse_value(
            text,
            verge_api::Format::Json,
            verge_api::body_bounds(st.max_body_bytes, text.len()),
        )
        .map_err(|e| {
            ApiError::bad_request(format!(
                "body: not valid JSON ({e}); send JSON, or bytes with their own Content-Type"
            ))
            .field("body")
        })
    };
    if spec.in_cloud() && q.node.is_none() {
        let input = if is_json {
            verge_runtime::Input::Json(json_input()?)
        } else {
            verge_runtime::Input::Bytes {
                content_type,
                data: bytes.into(),
            }
        };
        return Ok(match f.host.invoke(&name, input).await {
            Ok(inv) => {
                let mut resp = match inv.output {
                    verge_runtime::Output::Json(v) => Json(v).into_response(),
                    verge_runtime::Output::Bytes { content_type, data } => {
                        let mut r = Body::from(data).into_response();
                        if let Ok(v) = HeaderValue::from_str(&content_type) {
                            r.headers_mut().insert(header::CONTENT_TYPE, v);
                        }
                        r
                    }
                };
                let h = resp.headers_mut();
                h.insert("x-verge-node", HeaderValue::from_static("cloud"));
                h.insert(
                    "x-verge-cold",
                    HeaderValue::from_static(if inv.cold { "true" } else { "false" }),
                );
                if let Ok(v) =
                    HeaderValue::from_str(&format!("{:.3}", inv.duration.as_secs_f64() * 1000.0))
                {
                    h.insert("x-verge-duration-ms", v);
                }
                resp
            }
            Err(e) => runtime_failure(&e),
        });
    }
    // On an edge node: as a task, waited for.
    if !is_json {
        return Err(ApiError::new(
            Reason::UnsupportedMediaType,
            format!(
                "function {name:?} runs on edge nodes: send JSON input here (bytes work with \
                 cloud-placed functions and on the node's local API)"
            ),
        ));
    }
    let input = json_input()?;
    let timeout = q.timeout_seconds.unwrap_or(60);
    if !(1..=900).contains(&timeout) {
        return Err(
            ApiError::bad_request("timeoutSeconds: must be between 1 and 900")
                .field("timeoutSeconds"),
        );
    }
    let task = TaskSpec {
        function: name.clone(),
        input: Some(input),
        target: q.node.clone().map(|n| TaskTarget {
            node: Some(n),
            node_selector: None,
            fanout: None,
        }),
        callback_url: None,
        idempotency_key: None,
        timeout_seconds: Some(timeout as u32),
        max_attempts: Some(1),
    };
    if let Err(e) = task.validate() {
        let field = if e.field == "spec.input" {
            "body".to_string()
        } else {
            e.field
        };
        return Err(if e.message.contains("at most") {
            ApiError::new(Reason::PayloadTooLarge, e.message).field(field)
        } else {
            ApiError::invalid(field, e.message)
        });
    }
    // Not queued: a node that does not exist, or none Ready to run it, is said at once.
    f.tasks
        .dispatchable_now(task.target.as_ref(), &spec)
        .await?;
    let (id, _) = f.tasks.create(task, Default::default(), None).await?;
    let Some(status) = f.tasks.wait(&id, Duration::from_secs(timeout + 5)).await else {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({ "taskId": id, "message": "still running; see GET /api/v1/tasks/{id}" })),
        )
            .into_response());
    };
    Ok(task_answer(&id, &status))
}

/// A finished task as an invoke answer.
fn task_answer(id: &str, s: &TaskStatus) -> Response {
    let mut resp = match s.phase {
        Phase::Succeeded => match (&s.result, &s.result_url) {
            (Some(v), _) => Json(v.clone()).into_response(),
            (None, Some(url)) => {
                Json(json!({ "resultUrl": url, "bytes": s.result_bytes })).into_response()
            }
            (None, None) => Json(Value::Null).into_response(),
        },
        Phase::TimedOut => task_failure(
            StatusCode::GATEWAY_TIMEOUT,
            "Timeout",
            s.error.clone().unwrap_or_default(),
            id,
        ),
        _ => task_failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            s.reason.as_deref().unwrap_or("FunctionError"),
            s.error
                .clone()
                .unwrap_or_else(|| s.phase.as_str().to_string()),
            id,
        ),
    };
    let h = resp.headers_mut();
    if let Some(node) = s
        .node
        .as_deref()
        .and_then(|n| HeaderValue::from_str(n).ok())
    {
        h.insert("x-verge-node", node);
    }
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert("x-verge-task", v);
    }
    resp
}

/// A failed cloud invocation: the runtime's status and body (`Error::to_json`).
fn runtime_failure(e: &verge_runtime::Error) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(e.to_json())).into_response();
    if let Some(secs) = e.retry_after_secs() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// `POST /api/v1/tasks`: a `Task` object (the resource API: named by `metadata.name`,
/// or a generated id when it has none; answered with the Task, `202`, or `200` with the
/// earlier task when its idempotency key was seen before), or a bare `TaskSpec` (the
/// shortcut: a generated id, answered with `{taskId, created}`).
pub async fn create_task(
    State(st): State<SharedState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    require_write(&principal)?;
    let f = functions(&st)?;
    let mut value = body::read_value(&headers, body, st.max_body_bytes).await?;
    let location = |id: &str| HeaderValue::from_str(&format!("/api/v1/tasks/{id}")).ok();
    if value.get("kind").is_none() && value.get("spec").is_none() {
        let spec = match verge_api::specs::decode_spec(Kind::Task, &value) {
            Ok(verge_api::specs::Spec::Task(s)) => s,
            Ok(_) => return Err(ApiError::internal("decode_spec returned another kind")),
            Err(e) => return Err(ApiError::invalid(e.field, e.message)),
        };
        let (id, created) = f.tasks.create(spec, Default::default(), None).await?;
        let mut resp = (
            StatusCode::ACCEPTED,
            Json(json!({ "taskId": id, "created": created })),
        )
            .into_response();
        if let Some(v) = location(&id) {
            resp.headers_mut().insert(header::LOCATION, v);
        }
        return Ok(resp);
    }
    // A Task object without a name gets a generated one (its id).
    if let Some(map) = value.as_object_mut() {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(m) = meta.as_object_mut()
            && m.get("name")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
        {
            m.insert(
                "name".into(),
                Value::String(crate::functions::tasks::new_task_id()),
            );
        }
    }
    let text = serde_json::to_string(&value).map_err(ApiError::internal)?;
    let mut docs = verge_api::parse_documents(&text, verge_api::Format::Json)?;
    let o = docs
        .pop()
        .ok_or_else(|| ApiError::bad_request("request body holds no object"))?;
    if o.kind != Kind::Task.name() {
        return Err(ApiError::invalid(
            "kind",
            format!("expected Task, got {:?}", o.kind),
        ));
    }
    let spec = match verge_api::specs::decode_spec(Kind::Task, &o.spec) {
        Ok(verge_api::specs::Spec::Task(s)) => s,
        Ok(_) => return Err(ApiError::internal("decode_spec returned another kind")),
        Err(e) => return Err(ApiError::invalid(e.field, e.message)),
    };
    let (task, created) = f
        .tasks
        .create_named(Some(o.metadata.name), spec, o.metadata.labels, None)
        .await?;
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let mut resp = (status, Json(&task)).into_response();
    if let Some(v) = location(&task.metadata.name) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

/// `DELETE /api/v1/tasks/{id}`: cancels (the task stays, phase `Cancelled`).
pub async fn cancel_task(
    State(st): State<SharedState>,
    ApiPath(id): ApiPath<String>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, ApiError> {
    require_write(&principal)?;
    let f = functions(&st)?;
    let status = f.tasks.cancel(&id).await?;
    Ok(Json(json!({ "taskId": id, "status": status })))
}
