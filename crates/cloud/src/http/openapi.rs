//! `/openapi.json`: an OpenAPI 3.1 document generated from the route table
//! ([`super::routes::table`]) — one operation per served route, described by
//! [`operation`] (an exhaustive match on [`Op`]) — plus the paths the binary's mounts
//! declare (`/img`). Schemas come from the types' `utoipa::ToSchema` derives.
//!
//! What each operation declares is what its handler answers: every status it can send
//! on a client's input (400 for a malformed path segment or query, 401 without a valid
//! token, 403 for a role that may not, 413/415/422 for bodies, ...), its content types,
//! typed query parameters, and the name and digest patterns. `bins/verge/tests/
//! api_conformance.rs` calls every operation against a real cloud and checks the
//! answers against this document. No I/O here.

use utoipa::ToSchema;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn, PathItem,
};
use utoipa::openapi::request_body::{RequestBody, RequestBodyBuilder};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, KnownFormat, OpenApi, OpenApiBuilder,
    PathsBuilder, Ref, RefOr, Required, Schema, SchemaFormat,
};
use verge_api::specs::{
    AppSpec, BucketSpec, ConfigSpec, FunctionSpec, NodeSpec, SecretSpec, TaskSpec, TriggerSpec,
};
use verge_api::{ApiErrorBody, Kind, ListMeta, ObjectMeta, WatchEvent};

use super::Mount;
use super::routes::{self, Access, Op, Route};
use super::tokens::TokenList;
use super::watch::MAX_TIMEOUT_SECS;
use crate::auth::{TokenCreateRequest, TokenInfo};

/// `metadata.name` and every `{name}` path parameter: a DNS-1123 label.
pub const NAME_PATTERN: &str = verge_api::NAME_PATTERN;
/// A SHA-256 digest in hex (either case; answers use lowercase).
pub const SHA256_PATTERN: &str = "^[0-9a-fA-F]{64}$";
/// A token id (the part before the `.` of `id.secret`).
pub const TOKEN_ID_PATTERN: &str = "^[a-z0-9]{8}$";

const JSON: &str = "application/json";
const YAML: &str = "application/yaml";

fn spec_schema_name(kind: Kind) -> String {
    match kind {
        Kind::Node => NodeSpec::name(),
        Kind::App => AppSpec::name(),
        Kind::Function => FunctionSpec::name(),
        Kind::Trigger => TriggerSpec::name(),
        Kind::Task => TaskSpec::name(),
        Kind::Config => ConfigSpec::name(),
        Kind::Secret => SecretSpec::name(),
        Kind::Bucket => BucketSpec::name(),
    }
    .into_owned()
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn integer(min: u64, max: Option<u64>) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(min as f64))
        .maximum(max.map(|m| m as f64))
}

fn name_schema() -> ObjectBuilder {
    string().pattern(Some(NAME_PATTERN)).max_length(Some(63))
}

fn object_schema(kind: Kind) -> Schema {
    ObjectBuilder::new()
        .property(
            "apiVersion",
            string().enum_values(Some([verge_api::API_VERSION])),
        )
        .required("apiVersion")
        .property("kind", string().enum_values(Some([kind.name()])))
        .required("kind")
        .property("metadata", Ref::from_schema_name("ObjectMeta"))
        .required("metadata")
        .property("spec", Ref::from_schema_name(spec_schema_name(kind)))
        .property(
            "status",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some("written through the /status subresource")),
        )
        .into()
}

fn list_schema(kind: Kind) -> Schema {
    ObjectBuilder::new()
        .property("apiVersion", string())
        .required("apiVersion")
        .property(
            "kind",
            string().enum_values(Some([format!("{}List", kind.name())])),
        )
        .required("kind")
        .property("metadata", Ref::from_schema_name("ListMeta"))
        .required("metadata")
        .property(
            "items",
            ArrayBuilder::new().items(Ref::from_schema_name(kind.name())),
        )
        .required("items")
        .into()
}

/// `{items: [T]}`.
fn items_of(item: Ref) -> Schema {
    ObjectBuilder::new()
        .property("items", ArrayBuilder::new().items(item))
        .required("items")
        .into()
}

/// Schemas of answers that are built by hand in the handlers.
fn handmade_schemas(mut c: ComponentsBuilder) -> ComponentsBuilder {
    let log_entry = ObjectBuilder::new()
        .property("node", string())
        .required("node")
        .property("source", string())
        .required("source")
        .property("tsMs", integer(0, None))
        .required("tsMs")
        .property("stream", string().enum_values(Some(["stdout", "stderr"])))
        .required("stream")
        .property("line", string())
        .required("line");
    c = c.schema("LogEntry", log_entry);
    c = c.schema("LogList", items_of(Ref::from_schema_name("LogEntry")));
    c = c.schema(
        "ResultList",
        items_of(Ref::from_schema_name("ResultRecord")),
    );
    let sandbox = ObjectBuilder::new()
        .property(
            "state",
            string().enum_values(Some(["enforced", "unavailable", "disabled"])),
        )
        .required("state")
        .property("reason", string())
        .property("uid", integer(0, None));
    c = c.schema(
        "ClusterInfo",
        ObjectBuilder::new()
            .property("version", string())
            .required("version")
            .property(
                "functionSandbox",
                OneOfBuilder::new()
                    .item(sandbox)
                    .item(ObjectBuilder::new().schema_type(Type::Null)),
            )
            .required("functionSandbox"),
    );
    c = c.schema(
        "TaskAccepted",
        ObjectBuilder::new()
            .property("taskId", name_schema())
            .required("taskId")
            .property(
                "created",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .description(Some("false: the idempotencyKey named an existing task")),
            )
            .required("created"),
    );
    c = c.schema(
        "TaskCancelled",
        ObjectBuilder::new()
            .property("taskId", name_schema())
            .required("taskId")
            .property("status", ObjectBuilder::new().schema_type(Type::Object))
            .required("status"),
    );
    c = c.schema(
        "InvokeStillRunning",
        ObjectBuilder::new()
            .property("taskId", name_schema())
            .required("taskId")
            .property("message", string())
            .required("message"),
    );
    c = c.schema(
        "InvokeFailure",
        ObjectBuilder::new()
            .description(Some(
                "a failed invocation: the runtime's reason (HandlerError, Timeout, \
                 QueueFull, WorkerCrashed, ...) or an API error's, the message, and the \
                 handler's logs and error when it ran",
            ))
            .property("reason", string())
            .required("reason")
            .property("message", string())
            .required("message")
            .property("field", string())
            .property("logs", string())
            .property("taskId", string())
            .property(
                "error",
                ObjectBuilder::new()
                    .property("type", string())
                    .property("message", string())
                    .property("traceback", string()),
            ),
    );
    c.schema(
        "StatusUpdate",
        ObjectBuilder::new()
            .description(Some(
                "the object, or just {metadata: {name, resourceVersion?}, status}; only \
                 status and the resourceVersion precondition are used",
            ))
            .property("apiVersion", string())
            .property("kind", string())
            .property(
                "metadata",
                ObjectBuilder::new()
                    .property("name", name_schema())
                    .property("resourceVersion", string()),
            )
            .property("spec", ObjectBuilder::new().schema_type(Type::Object))
            .property("status", ObjectBuilder::new().schema_type(Type::Object))
            .required("status"),
    )
}

fn content(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn error(desc: &str) -> Response {
    ResponseBuilder::new()
        .description(desc)
        .content(JSON, content(Ref::from_schema_name("ApiErrorBody")))
        .build()
}

fn ok(desc: &str, schema: impl Into<RefOr<Schema>>) -> Response {
    ResponseBuilder::new()
        .description(desc)
        .content(JSON, content(schema))
        .build()
}

fn text(desc: &str, media: &str) -> Response {
    ResponseBuilder::new()
        .description(desc)
        .content(media, content(string()))
        .build()
}

fn path_param(name: &str, schema: ObjectBuilder, desc: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .description(Some(desc))
        .schema(Some(schema))
        .build()
}

fn query_param(name: &str, schema: ObjectBuilder, desc: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(desc))
        .schema(Some(schema))
        .build()
}

/// A bucket name (3..=63 of a-z, 0-9, '-', letters or digits at both ends).
pub const BUCKET_PATTERN: &str = "^[a-z0-9][-a-z0-9]{1,61}[a-z0-9]$";
/// A dead letter id: the event id (16 hex digits), `.`, the trigger's name.
pub const DEAD_LETTER_ID_PATTERN: &str = "^[0-9a-f]{16}\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

fn dead_letter_id_param() -> utoipa::openapi::path::Parameter {
    path_param(
        "id",
        string().pattern(Some(DEAD_LETTER_ID_PATTERN)),
        "the dead letter's id: `{event id}.{trigger}`",
    )
}

fn name_param() -> utoipa::openapi::path::Parameter {
    path_param(
        "name",
        name_schema(),
        "the object's name (a DNS-1123 label)",
    )
}

/// A manifest body: JSON or YAML.
fn manifest_body(schema: impl Into<RefOr<Schema>>) -> RequestBody {
    let schema: RefOr<Schema> = schema.into();
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content(JSON, content(schema.clone()))
        .content(YAML, content(schema))
        .build()
}

/// The answers of every manifest body (`http::body`).
fn body_errors(op: OperationBuilder) -> OperationBuilder {
    op.response(
        "400",
        error("malformed: not JSON/YAML, not UTF-8, nested or expanded past the bounds"),
    )
    .response("413", error("body larger than the cap"))
    .response(
        "415",
        error("missing or unsupported Content-Type (send application/json or application/yaml)"),
    )
    .response("422", error("validation failed; `field` names the path"))
}

fn op_builder(id: String, summary: String) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
}

/// The operation `route` serves, as documented.
pub fn operation(route: &Route) -> Operation {
    let o = describe(route.op);
    let o = match route.access {
        Access::Public => o,
        Access::Token => o
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .response("401", error("missing, invalid, expired or revoked token")),
        Access::TokenOrNode => o
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
            .security(SecurityRequirement::new(
                "nodeCertificate",
                Vec::<String>::new(),
            ))
            .response("401", error("no valid token and no node certificate")),
    };
    let mut o = o.build();
    if route.path.contains('{') && !o.responses.responses.contains_key("400") {
        o.responses.responses.insert(
            "400".into(),
            error("a malformed path parameter (e.g. not UTF-8)").into(),
        );
    }
    o
}

fn describe(op: Op) -> OperationBuilder {
    let write_denied = || error("this token's role may not do this (viewer)");
    match op {
        Op::List(kind) => {
            let k = kind.name();
            op_builder(
                format!("list{k}s"),
                format!("List or watch {}", kind.plural()),
            )
            .parameter(query_param(
                "labelSelector",
                string(),
                "e.g. tier=frontend,env!=dev",
            ))
            .parameter(query_param(
                "watch",
                ObjectBuilder::new().schema_type(Type::Boolean),
                "true to stream changes (newline-delimited JSON, or server-sent \
                     events when Accept is text/event-stream); 1 and 0 are accepted too",
            ))
            .parameter(query_param(
                "resourceVersion",
                integer(0, None),
                "with watch: stream the changes after this revision",
            ))
            .parameter(query_param(
                "timeoutSeconds",
                integer(1, Some(MAX_TIMEOUT_SECS)),
                "with watch: end the stream after this long",
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description("the list; with watch, a stream of events")
                    .content(JSON, content(Ref::from_schema_name(format!("{k}List"))))
                    .content(
                        "application/x-ndjson",
                        content(Ref::from_schema_name("WatchEvent")),
                    )
                    .content("text/event-stream", content(string()))
                    .build(),
            )
            .response(
                "400",
                error("bad selector, or a query parameter that is unknown or malformed"),
            )
            .response(
                "410",
                error("resourceVersion was compacted away: list again and watch from there"),
            )
            .response("429", error("too many open watches for this token"))
        }
        Op::Create(kind) => {
            let k = kind.name();
            body_errors(
                op_builder(
                    format!("create{k}"),
                    format!("Create a {}", kind.singular()),
                )
                .request_body(Some(manifest_body(Ref::from_schema_name(k)))),
            )
            .response("201", ok("created", Ref::from_schema_name(k)))
            .response("403", write_denied())
            .response("409", error("already exists"))
        }
        Op::Get(kind) => {
            let k = kind.name();
            op_builder(format!("get{k}"), format!("Get a {}", kind.singular()))
                .parameter(name_param())
                .response("200", ok("the object", Ref::from_schema_name(k)))
                .response("404", error("not found"))
        }
        Op::Replace(kind) => {
            let k = kind.name();
            body_errors(
                op_builder(
                    format!("replace{k}"),
                    format!("Replace a {}", kind.singular()),
                )
                .parameter(name_param())
                .request_body(Some(manifest_body(Ref::from_schema_name(k)))),
            )
            .response(
                "200",
                ok("replaced (or unchanged)", Ref::from_schema_name(k)),
            )
            .response("403", write_denied())
            .response("404", error("not found"))
            .response(
                "409",
                error("metadata.resourceVersion is stale, or the object kept changing"),
            )
        }
        Op::Delete(kind) => {
            let k = kind.name();
            op_builder(
                format!("delete{k}"),
                format!("Delete a {}", kind.singular()),
            )
            .parameter(name_param())
            .parameter(query_param(
                "resourceVersion",
                integer(0, None),
                "delete only if unchanged since this revision",
            ))
            .response(
                "200",
                ok(
                    "the deleted object; with finalizers (every Node), the object marked \
                     with metadata.deletionTimestamp (a Node's answer waits, at most 10 s, \
                     until it is gone)",
                    Ref::from_schema_name(k),
                ),
            )
            .response("403", write_denied())
            .response("404", error("not found"))
            .response("409", error("resourceVersion is stale"))
        }
        Op::ReplaceStatus(kind) => {
            let k = kind.name();
            body_errors(
                op_builder(
                    format!("replace{k}Status"),
                    format!("Replace a {}'s status", kind.singular()),
                )
                .parameter(name_param())
                .request_body(Some(manifest_body(Ref::from_schema_name("StatusUpdate")))),
            )
            .response("200", ok("updated", Ref::from_schema_name(k)))
            .response("403", write_denied())
            .response("404", error("not found"))
            .response("409", error("metadata.resourceVersion is stale"))
        }
        Op::Logs(kind) => {
            let k = kind.name();
            op_builder(
                format!("read{k}Logs"),
                format!(
                    "The newest lines the {}'s {} wrote on their nodes, oldest first",
                    kind.singular(),
                    if kind == Kind::App {
                        "instances"
                    } else {
                        "invocations"
                    }
                ),
            )
            .parameter(name_param())
            .parameter(query_param("node", name_schema(), "only this node's lines"))
            .parameter(query_param(
                "tail",
                integer(1, Some(5000)),
                "how many of the newest lines (default 200)",
            ))
            .response("200", ok("the lines", Ref::from_schema_name("LogList")))
            .response("404", error("not found"))
            .response("503", error("the node manager is not running"))
        }
        Op::NodeResults => op_builder(
            "listNodeResults".into(),
            "Task results a node reported, in seq order".into(),
        )
        .parameter(name_param())
        .response(
            "200",
            ok("the results", Ref::from_schema_name("ResultList")),
        )
        .response("404", error("no such node"))
        .response("503", error("the node manager is not running")),
        Op::Invoke => {
            let failure = |desc: &str| {
                ResponseBuilder::new()
                    .description(desc)
                    .content(JSON, content(Ref::from_schema_name("InvokeFailure")))
                    .build()
            };
            op_builder(
                "invokeFunction".into(),
                "Run a function and answer with its output (cloud-placed: in the cloud's \
                 runtime, JSON or any bytes; edge-placed: as a task on a node, JSON only)"
                    .into(),
            )
            .parameter(name_param())
            .parameter(query_param(
                "node",
                name_schema(),
                "run on this node (edge-placed functions; default: the least loaded)",
            ))
            .parameter(query_param(
                "timeoutSeconds",
                integer(1, Some(900)),
                "edge-placed: how long to wait for the result (default 60)",
            ))
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::False))
                    .content(JSON, content(ObjectBuilder::new()))
                    .content(
                        "*/*",
                        content(
                            string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary))),
                        ),
                    )
                    .build(),
            ))
            .response(
                "200",
                ResponseBuilder::new()
                    .description(
                        "the function's output: JSON, or the bytes and content type it returned",
                    )
                    .content(JSON, content(ObjectBuilder::new()))
                    .content(
                        "*/*",
                        content(
                            string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary))),
                        ),
                    )
                    .build(),
            )
            .response(
                "202",
                ok(
                    "edge-placed: still running after timeoutSeconds",
                    Ref::from_schema_name("InvokeStillRunning"),
                ),
            )
            .response(
                "400",
                failure("the input is not JSON, or a parameter is malformed"),
            )
            .response("403", failure("this token's role may not invoke"))
            .response(
                "404",
                failure("no such function, or it is not loaded, or `node` names no node"),
            )
            .response("413", failure("the input is larger than the cap"))
            .response(
                "415",
                failure("edge-placed functions take JSON input (bytes work in the cloud)"),
            )
            .response("422", failure("the task the invocation makes is invalid"))
            .response("429", failure("the function's queue is full; retry"))
            .response("500", failure("the handler raised or the task failed"))
            .response("502", failure("the worker crashed"))
            .response(
                "503",
                failure(
                    "the function could not be loaded, functions are off, or no Ready node \
                     can run it now (Retry-After)",
                ),
            )
            .response("504", failure("the invocation timed out"))
        }
        Op::CreateTask => body_errors(
            op_builder(
                "createTask".into(),
                "Start a function asynchronously (a bare TaskSpec or a Task object)".into(),
            )
            .request_body(Some(manifest_body(
                OneOfBuilder::new()
                    .item(Ref::from_schema_name("Task"))
                    .item(Ref::from_schema_name(TaskSpec::name())),
            ))),
        )
        .response(
            "200",
            ok(
                "a Task object whose idempotency key was seen before: the earlier Task",
                Ref::from_schema_name("Task"),
            ),
        )
        .response(
            "202",
            ok(
                "accepted; follow it at the Location header: the Task for a Task object,                  {taskId, created} for a bare TaskSpec",
                OneOfBuilder::new()
                    .item(Ref::from_schema_name("Task"))
                    .item(Ref::from_schema_name("TaskAccepted")),
            ),
        )
        .response("403", write_denied())
        .response("404", error("spec.function names no function"))
        .response("409", error("a Task with this metadata.name exists"))
        .response("503", error("functions are not enabled")),
        Op::CancelTask => op_builder(
            "cancelTask".into(),
            "Cancel a task (it stays, Cancelled)".into(),
        )
        .parameter(name_param())
        .response(
            "200",
            ok("cancelled", Ref::from_schema_name("TaskCancelled")),
        )
        .response("403", write_denied())
        .response("404", error("no such task"))
        .response("409", error("the task has already finished"))
        .response("503", error("functions are not enabled")),
        Op::ListTokens => op_builder("listTokens".into(), "List API tokens (admin)".into())
            .response("200", ok("tokens", Ref::from_schema_name("TokenList")))
            .response("403", error("not an admin")),
        Op::CreateToken => body_errors(
            op_builder("createToken".into(), "Create an API token (admin)".into()).request_body(
                Some(manifest_body(Ref::from_schema_name("TokenCreateRequest"))),
            ),
        )
        .response(
            "201",
            ok(
                "the token; `token` is shown only here",
                Ref::from_schema_name("TokenInfo"),
            ),
        )
        .response("403", error("not an admin")),
        Op::ListS3Keys => op_builder(
            "listS3Keys".into(),
            "List S3 access keys (admin; never their secrets)".into(),
        )
        .response("200", ok("keys", Ref::from_schema_name("S3KeyList")))
        .response("403", error("not an admin")),
        Op::CreateS3Key => body_errors(
            op_builder(
                "createS3Key".into(),
                "Create an S3 access key, optionally limited to buckets and to reading (admin)"
                    .into(),
            )
            .request_body(Some(manifest_body(Ref::from_schema_name("NewKey")))),
        )
        .response(
            "201",
            ok(
                "the key; `secretAccessKey` is shown only here",
                Ref::from_schema_name("KeyInfo"),
            ),
        )
        .response("403", error("not an admin")),
        Op::RevokeS3Key => op_builder(
            "revokeS3Key".into(),
            "Revoke an S3 access key (admin); requests signed with it fail at once".into(),
        )
        .parameter(path_param(
            "id",
            string().pattern(Some("^VK[A-Z2-7]{18}$")),
            "the access key id",
        ))
        .response(
            "200",
            ok(
                "revoked: `{accessKeyId, revoked: true}`",
                ObjectBuilder::new().schema_type(Type::Object).build(),
            ),
        )
        .response("403", error("not an admin"))
        .response("404", error("no such key")),
        Op::RevokeToken => op_builder("revokeToken".into(), "Revoke an API token (admin)".into())
            .parameter(path_param(
                "id",
                string().pattern(Some(TOKEN_ID_PATTERN)),
                "the token's id (before the `.`)",
            ))
            .response("200", ok("revoked", Ref::from_schema_name("TokenInfo")))
            .response("403", error("not an admin"))
            .response("404", error("no such token"))
            .response(
                "409",
                error("the last valid admin token (or the last one without expiry)"),
            ),
        Op::ListArtifacts => op_builder("listArtifacts".into(), "List stored artifacts".into())
            .response(
                "200",
                ok("artifacts", Ref::from_schema_name("ArtifactList")),
            ),
        Op::UploadArtifact => op_builder(
            "uploadArtifact".into(),
            "Store an artifact under its SHA-256 (operator or admin)".into(),
        )
        .parameter(query_param(
            "sha256",
            string().pattern(Some(SHA256_PATTERN)),
            "the expected SHA-256; a body hashing to anything else is refused (422)",
        ))
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/octet-stream",
                    content(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))),
                )
                .build(),
        ))
        .response("201", ok("stored", Ref::from_schema_name("ArtifactInfo")))
        .response(
            "200",
            ok("already stored", Ref::from_schema_name("ArtifactInfo")),
        )
        .response(
            "400",
            error("a query parameter is unknown or sha256 malformed"),
        )
        .response("403", write_denied())
        .response("413", error("larger than --artifact-max-bytes"))
        .response("422", error("the body does not hash to `sha256`")),
        Op::GetArtifact => {
            let bytes = |desc: &str| {
                ResponseBuilder::new()
                    .description(desc)
                    .content(
                        "application/octet-stream",
                        content(
                            string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary))),
                        ),
                    )
                    .build()
            };
            op_builder(
                "getArtifact".into(),
                "Download an artifact (a single Range is honoured; HEAD for its size)".into(),
            )
            .parameter(path_param(
                "sha256",
                string().pattern(Some(SHA256_PATTERN)),
                "the artifact's SHA-256",
            ))
            .parameter(
                ParameterBuilder::new()
                    .name("Range")
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some("bytes=N-, bytes=N-M or bytes=-N"))
                    .schema(Some(string()))
                    .build(),
            )
            .response("200", bytes("the content; ETag is the quoted sha256"))
            .response("206", bytes("the requested range, with Content-Range"))
            .response(
                "403",
                error("a node asked for an artifact not placed on it"),
            )
            .response("404", error("no such artifact"))
            .response("416", error("range not satisfiable"))
        }
        Op::Cdn | Op::GetObject => {
            let bytes = |desc: &str| {
                ResponseBuilder::new()
                    .description(desc)
                    .content(
                        "*/*",
                        content(
                            string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary))),
                        ),
                    )
                    .build()
            };
            let header = |name: &str, desc: &str| {
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Header)
                    .required(Required::False)
                    .description(Some(desc))
                    .schema(Some(string()))
                    .build()
            };
            let o = if op == Op::Cdn {
                op_builder(
                    "getPublicObject".into(),
                    "An object of a public bucket (no token; HEAD too). A private or \
                     missing bucket answers like a missing object"
                        .into(),
                )
                .parameter(path_param("bucket", string(), "a public bucket"))
            } else {
                op_builder(
                    "getObject".into(),
                    "Download an object (HEAD too; any role)".into(),
                )
                .parameter(name_param())
            };
            let o = o
                .parameter(path_param(
                    "key",
                    string(),
                    "the object key; may contain `/` (send it as it is)",
                ))
                .parameter(header("Range", "one range: bytes=N-, bytes=N-M or bytes=-N"))
                .parameter(header("If-None-Match", "ETags; a match answers 304"))
                .parameter(header("If-Modified-Since", "an HTTP date; 304 when not newer"))
                .parameter(header("If-Match", "ETags; no match answers 412"))
                .parameter(header("If-Unmodified-Since", "an HTTP date; 412 when newer"))
                .parameter(header("If-Range", "an ETag or date; the Range applies only if it holds"))
                .response(
                    "200",
                    bytes(
                        "the object; ETag, Last-Modified, Cache-Control, Content-Type, \
                         Content-Length, Accept-Ranges",
                    ),
                )
                .response("206", bytes("the requested range, with Content-Range"))
                .response(
                    "304",
                    ResponseBuilder::new()
                        .description("not modified (If-None-Match / If-Modified-Since)")
                        .build(),
                )
                .response(
                    "412",
                    ResponseBuilder::new()
                        .description("If-Match / If-Unmodified-Since did not hold")
                        .build(),
                )
                .response(
                    "416",
                    ResponseBuilder::new()
                        .description("range not satisfiable; Content-Range: bytes */SIZE")
                        .build(),
                );
            if op == Op::Cdn {
                o.response("404", error("no such public object"))
            } else {
                o.response("404", error("no such bucket or object"))
            }
        }
        Op::ListObjects => op_builder(
            "listObjects".into(),
            "List a bucket's objects, a page at a time (any role)".into(),
        )
        .parameter(name_param())
        .parameter(query_param("prefix", string(), "only keys starting with this"))
        .parameter(query_param(
            "delimiter",
            string(),
            "roll keys up to the first delimiter after the prefix into commonPrefixes",
        ))
        .parameter(query_param(
            "after",
            string(),
            "list after this key (a page's nextAfter)",
        ))
        .parameter(query_param(
            "limit",
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(1))
                .maximum(Some(1000)),
            "most keys and prefixes (1000 when unset)",
        ))
        .response(
            "200",
            ok(
                "{items: [{key, size, etag, lastModified, contentType}], commonPrefixes, \
                 truncated, nextAfter?}",
                ObjectBuilder::new().schema_type(Type::Object),
            ),
        )
        .response("400", error("a bad bucket name or query parameter"))
        .response("404", error("no such bucket")),
        Op::PutObject => op_builder(
            "putObject".into(),
            "Upload an object: the raw body, its Content-Type and Cache-Control, \
             Content-Disposition, Content-Encoding, Content-Language, Expires are kept \
             (operator or admin)"
                .into(),
        )
        .parameter(name_param())
        .parameter(path_param(
            "key",
            string(),
            "the object key (1..=1024 bytes); may contain `/`",
        ))
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "*/*",
                    content(string().format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))),
                )
                .build(),
        ))
        .response(
            "200",
            ok(
                "stored: the object's record {etag, size, sha256, contentType, lastModified}",
                ObjectBuilder::new().schema_type(Type::Object),
            ),
        )
        .response(
            "400",
            error("a bad bucket name or key, or a body shorter than its Content-Length"),
        )
        .response("403", write_denied())
        .response("404", error("no such bucket"))
        .response(
            "413",
            error("larger than the bucket's maxObjectSize, or over its quota"),
        ),
        Op::DeleteObject => op_builder(
            "deleteObject".into(),
            "Delete an object (operator or admin)".into(),
        )
        .parameter(name_param())
        .parameter(path_param("key", string(), "the object key"))
        .response(
            "204",
            ResponseBuilder::new().description("deleted").build(),
        )
        .response("400", error("a bad bucket name"))
        .response("403", write_denied())
        .response("404", error("no such bucket or object")),
        Op::ListDeadLetters => op_builder(
            "listDeadLetters".into(),
            "List dead-lettered object events, oldest first".into(),
        )
        .parameter(query_param(
            "bucket",
            string().pattern(Some(BUCKET_PATTERN)),
            "only this bucket's",
        ))
        .response(
            "200",
            ok("dead letters", Ref::from_schema_name("DeadLetterList")),
        )
        .response("400", error("an unknown query parameter"))
        .response("422", error("`bucket` is not a bucket name")),
        Op::RedriveDeadLetter => op_builder(
            "redriveDeadLetter".into(),
            "Deliver a dead-lettered event again (a new task, or a new webhook delivery), \
             then drop it (operator or admin)"
                .into(),
        )
        .parameter(dead_letter_id_param())
        .response("200", ok("redriven", Ref::from_schema_name("Redriven")))
        .response("403", write_denied())
        .response(
            "404",
            error("no such dead letter, or the function it names does not exist"),
        )
        .response("422", error("the dead letter names no target"))
        .response("429", error("too many unfinished tasks; retry later"))
        .response("503", error("functions are not enabled")),
        Op::DropDeadLetter => op_builder(
            "dropDeadLetter".into(),
            "Drop a dead letter (operator or admin)".into(),
        )
        .parameter(dead_letter_id_param())
        .response("200", ok("dropped", Ref::from_schema_name("DeadLetter")))
        .response("403", write_denied())
        .response("404", error("no such dead letter")),
        Op::Join => body_errors(
            op_builder(
                "join".into(),
                "Join an edge node with a bootstrap token and a CSR (no other credentials)".into(),
            )
            .request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(JSON, content(Ref::from_schema_name("JoinRequest")))
                    .build(),
            )),
        )
        .response(
            "201",
            ok(
                "the node's certificate and the cluster CA",
                Ref::from_schema_name("JoinResponse"),
            ),
        )
        .response("401", error("the bootstrap token is not valid"))
        .response(
            "403",
            error("a label the bootstrap token does not grant (`field` names it)"),
        )
        .response("409", error("a node of that name has already joined"))
        .response(
            "429",
            error("too many joins; Retry-After says when to try again"),
        ),
        Op::ClusterCa => op_builder(
            "getClusterCa".into(),
            "The cluster CA certificate (PEM), which a joining node pins by hash".into(),
        )
        .response("200", text("the CA certificate", "application/x-pem-file")),
        Op::ClusterInfo => op_builder(
            "getClusterInfo".into(),
            "The control plane's version and whether its function workers run sandboxed".into(),
        )
        .response(
            "200",
            ok("about the cluster", Ref::from_schema_name("ClusterInfo")),
        ),
        Op::Metrics => op_builder(
            "getMetrics".into(),
            "Prometheus metrics: OpenMetrics 1.0 when the Accept header asks for \
             application/openmetrics-text (Prometheus does), else the Prometheus text format"
                .into(),
        )
        .response(
            "200",
            ResponseBuilder::new()
                .description("the metrics")
                .content("text/plain", content(string()))
                .content("application/openmetrics-text", content(string()))
                .build(),
        ),
        Op::Healthz => op_builder("healthz".into(), "Liveness: the process serves".into())
            .response("200", text("ok", "text/plain")),
        Op::Readyz => op_builder(
            "readyz".into(),
            "Readiness: the store answers and the server is not shutting down".into(),
        )
        .response("200", text("ok", "text/plain"))
        .response("503", error("not ready; the message says why")),
        Op::OpenApi => op_builder("openapi".into(), "This document".into()).response(
            "200",
            ok(
                "the OpenAPI 3.1 document",
                ObjectBuilder::new().schema_type(Type::Object),
            ),
        ),
    }
}

fn add_schema<T: ToSchema>(mut c: ComponentsBuilder) -> ComponentsBuilder {
    let mut deps = Vec::new();
    T::schemas(&mut deps);
    for (name, s) in deps {
        c = c.schema(name, s);
    }
    c.schema(T::name(), T::schema())
}

fn http_method(m: &axum::http::Method) -> HttpMethod {
    match *m {
        axum::http::Method::POST => HttpMethod::Post,
        axum::http::Method::PUT => HttpMethod::Put,
        axum::http::Method::DELETE => HttpMethod::Delete,
        axum::http::Method::PATCH => HttpMethod::Patch,
        axum::http::Method::HEAD => HttpMethod::Head,
        _ => HttpMethod::Get,
    }
}

/// The document of every route in the table and every mount.
pub fn document(mounts: &[Mount]) -> OpenApi {
    let mut paths = PathsBuilder::new();
    for r in routes::table() {
        paths = paths.path(
            routes::openapi_path(&r.path),
            PathItem::new(http_method(&r.method), operation(&r)),
        );
    }
    for m in mounts {
        for (p, item) in m.paths.paths.clone() {
            paths = paths.path(format!("{}{p}", m.prefix), item);
        }
    }
    let mut components = ComponentsBuilder::new();
    components = add_schema::<ObjectMeta>(components);
    components = add_schema::<ListMeta>(components);
    components = add_schema::<ApiErrorBody>(components);
    components = add_schema::<WatchEvent>(components);
    components = add_schema::<NodeSpec>(components);
    components = add_schema::<AppSpec>(components);
    components = add_schema::<FunctionSpec>(components);
    components = add_schema::<TriggerSpec>(components);
    components = add_schema::<TaskSpec>(components);
    components = add_schema::<ConfigSpec>(components);
    components = add_schema::<BucketSpec>(components);
    components = add_schema::<verge_api::specs::Lifecycle>(components);
    components = add_schema::<SecretSpec>(components);
    components = add_schema::<TokenInfo>(components);
    components = add_schema::<TokenCreateRequest>(components);
    components = add_schema::<TokenList>(components);
    components = add_schema::<super::s3keys::S3KeyList>(components);
    components = add_schema::<crate::s3::keys::KeyInfo>(components);
    components = add_schema::<crate::s3::keys::NewKey>(components);
    components = add_schema::<crate::nodes::results::ResultRecord>(components);
    components = add_schema::<crate::artifacts::ArtifactInfo>(components);
    components = add_schema::<crate::artifacts::ArtifactList>(components);
    components = add_schema::<crate::events::cloudevent::CloudEvent>(components);
    components = add_schema::<crate::events::cloudevent::ObjectData>(components);
    components = add_schema::<crate::events::deadletters::DeadLetter>(components);
    components = add_schema::<crate::events::deadletters::Target>(components);
    components = add_schema::<crate::events::deadletters::Redriven>(components);
    components = add_schema::<super::deadletters::DeadLetterList>(components);
    components = add_schema::<verge_api::specs::Sink>(components);
    components = add_schema::<super::join::JoinRequest>(components);
    components = add_schema::<super::join::JoinResponse>(components);
    components = handmade_schemas(components);
    for kind in Kind::ALL {
        components = components
            .schema(kind.name(), object_schema(kind))
            .schema(format!("{}List", kind.name()), list_schema(kind));
    }
    components = components.security_scheme(
        "bearer",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    components = components.security_scheme(
        "nodeCertificate",
        SecurityScheme::MutualTls {
            description: Some("an edge node's client certificate, issued at join".into()),
            extensions: None,
        },
    );
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Verge API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some("Verge control plane: resources under /api/v1"))
                .build(),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .build()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn operations(doc: &OpenApi) -> BTreeSet<(String, String)> {
        let v = serde_json::to_value(doc).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in v["paths"].as_object().unwrap() {
            for (method, _) in item.as_object().unwrap() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    /// The document lists exactly the routes of the table: nothing served goes
    /// undocumented, nothing documented is unserved.
    #[test]
    fn document_is_the_route_table() {
        let doc = document(&[]);
        let from_table: BTreeSet<(String, String)> = routes::table()
            .iter()
            .map(|r| (r.method.to_string(), routes::openapi_path(&r.path)))
            .collect();
        assert_eq!(operations(&doc), from_table);
        let v = serde_json::to_value(&doc).unwrap();
        // What the first user of the document found wrong.
        assert!(v["paths"]["/api/v1/tasks/{name}"]["put"].is_null());
        for p in [
            "/api/v1/join",
            "/api/v1/cluster/ca",
            "/api/v1/cluster/info",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(v["paths"][p].is_object(), "{p} missing");
        }
        let list = &v["paths"]["/api/v1/apps"]["get"]["parameters"];
        let param = |n: &str| {
            list.as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == n)
                .unwrap()["schema"]
                .clone()
        };
        assert_eq!(param("watch")["type"], "boolean");
        assert_eq!(param("resourceVersion")["type"], "integer");
        assert_eq!(param("timeoutSeconds")["type"], "integer");
        let get = &v["paths"]["/api/v1/apps/{name}"]["get"]["parameters"][0]["schema"];
        assert_eq!(get["pattern"], NAME_PATTERN);
        let dl = &v["paths"]["/api/v1/artifacts/{sha256}"]["get"]["parameters"][0]["schema"];
        assert_eq!(dl["pattern"], SHA256_PATTERN);
        let create = &v["paths"]["/api/v1/apps"]["post"]["responses"];
        for code in ["201", "400", "401", "403", "409", "413", "415", "422"] {
            assert!(
                create[code].is_object(),
                "POST /api/v1/apps: {code} missing"
            );
        }
        assert_eq!(
            v["components"]["schemas"]["ObjectMeta"]["properties"]["name"]["pattern"],
            NAME_PATTERN
        );
    }

    #[test]
    fn mounts_are_documented_under_their_prefix() {
        let item = PathItem::new(
            HttpMethod::Get,
            op_builder("img".into(), "img".into())
                .response("200", text("an image", "image/*"))
                .build(),
        );
        let mount = Mount {
            prefix: "/img".into(),
            router: axum::Router::new(),
            paths: PathsBuilder::new().path("/{path}", item).build(),
        };
        let ops = operations(&document(&[mount]));
        assert!(ops.contains(&("GET".to_string(), "/img/{path}".to_string())));
    }
}
