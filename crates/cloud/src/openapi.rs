//! `/openapi.json`: an OpenAPI 3.1 document assembled from the resource types'
//! `utoipa::ToSchema` derives. Paths are generated per kind (the handlers are generic
//! over kinds, so the document is built here rather than with per-handler macros).

use utoipa::ToSchema;
use utoipa::openapi::path::{
    HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathItemBuilder,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathsBuilder, Ref,
    RefOr, Required, Schema,
};
use verge_api::specs::{
    AppSpec, ConfigSpec, FunctionSpec, NodeSpec, SecretSpec, TaskSpec, TriggerSpec,
};
use verge_api::{ApiErrorBody, Kind, ListMeta, ObjectMeta, WatchEvent};

use crate::auth::{TokenCreateRequest, TokenInfo};
use crate::http::tokens::TokenList;

fn spec_schema_name(kind: Kind) -> String {
    match kind {
        Kind::Node => NodeSpec::name(),
        Kind::App => AppSpec::name(),
        Kind::Function => FunctionSpec::name(),
        Kind::Trigger => TriggerSpec::name(),
        Kind::Task => TaskSpec::name(),
        Kind::Config => ConfigSpec::name(),
        Kind::Secret => SecretSpec::name(),
    }
    .into_owned()
}

fn object_schema(kind: Kind) -> Schema {
    ObjectBuilder::new()
        .property(
            "apiVersion",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([verge_api::API_VERSION])),
        )
        .required("apiVersion")
        .property(
            "kind",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some([kind.name()])),
        )
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
        .property("apiVersion", ObjectBuilder::new().schema_type(Type::String))
        .property("kind", ObjectBuilder::new().schema_type(Type::String))
        .property("metadata", Ref::from_schema_name("ListMeta"))
        .property(
            "items",
            utoipa::openapi::schema::ArrayBuilder::new().items(Ref::from_schema_name(kind.name())),
        )
        .into()
}

fn json(schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Content {
    ContentBuilder::new().schema(Some(schema)).build()
}

fn err_response(desc: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(desc)
        .content(
            "application/json",
            json(Ref::from_schema_name("ApiErrorBody")),
        )
        .build()
}

fn ok_response(desc: &str, schema: impl Into<RefOr<Schema>>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(desc)
        .content("application/json", json(schema))
        .build()
}

fn path_param(name: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Path)
        .required(Required::True)
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn query_param(name: &str, desc: &str) -> utoipa::openapi::path::Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(desc))
        .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
        .build()
}

fn body(kind: Kind) -> utoipa::openapi::request_body::RequestBody {
    RequestBodyBuilder::new()
        .required(Some(Required::True))
        .content("application/json", json(Ref::from_schema_name(kind.name())))
        .content("application/yaml", json(Ref::from_schema_name(kind.name())))
        .build()
}

fn op(id: String, summary: String) -> OperationBuilder {
    OperationBuilder::new()
        .operation_id(Some(id))
        .summary(Some(summary))
        .security(SecurityRequirement::new("bearer", Vec::<String>::new()))
        .response(
            "401",
            err_response("missing, invalid, expired or revoked token"),
        )
}

fn kind_paths(kind: Kind) -> [(String, PathItem); 3] {
    let k = kind.name();
    let obj = || Ref::from_schema_name(k);
    let list = op(
        format!("list{k}s"),
        format!("List or watch {}", kind.plural()),
    )
    .parameter(query_param("labelSelector", "e.g. tier=frontend,env!=dev"))
    .parameter(query_param(
        "watch",
        "1 to stream changes (newline-delimited JSON, or SSE)",
    ))
    .parameter(query_param(
        "resourceVersion",
        "with watch: stream changes after this revision",
    ))
    .parameter(query_param(
        "timeoutSeconds",
        "with watch: end the stream after this long",
    ))
    .response(
        "200",
        ok_response("list", Ref::from_schema_name(format!("{k}List"))),
    )
    .response("400", err_response("bad selector or parameter"))
    .response("410", err_response("resourceVersion compacted"));
    let create = op(
        format!("create{k}"),
        format!("Create a {}", kind.singular()),
    )
    .request_body(Some(body(kind)))
    .response("201", ok_response("created", obj()))
    .response("400", err_response("malformed"))
    .response("403", err_response("role may not write"))
    .response("409", err_response("already exists"))
    .response("413", err_response("body too large"))
    .response("415", err_response("unsupported content type"))
    .response(
        "422",
        err_response("validation failed; `field` names the path"),
    );
    let get = op(format!("get{k}"), format!("Get a {}", kind.singular()))
        .parameter(path_param("name"))
        .response("200", ok_response("the object", obj()))
        .response("404", err_response("not found"));
    let update = op(
        format!("update{k}"),
        format!("Replace a {}", kind.singular()),
    )
    .parameter(path_param("name"))
    .request_body(Some(body(kind)))
    .response("200", ok_response("updated", obj()))
    .response("409", err_response("stale metadata.resourceVersion"))
    .response("422", err_response("validation failed"));
    let delete = op(
        format!("delete{k}"),
        format!("Delete a {}", kind.singular()),
    )
    .parameter(path_param("name"))
    .parameter(query_param(
        "resourceVersion",
        "delete only if unchanged since",
    ))
    .response("200", ok_response("the deleted object", obj()))
    .response("404", err_response("not found"));
    let status = op(
        format!("update{k}Status"),
        format!("Replace a {}'s status", kind.singular()),
    )
    .parameter(path_param("name"))
    .request_body(Some(body(kind)))
    .response("200", ok_response("updated", obj()));
    let base = format!("/api/v1/{}", kind.plural());
    [
        (
            base.clone(),
            PathItemBuilder::new()
                .operation(HttpMethod::Get, list.build())
                .operation(HttpMethod::Post, create.build())
                .build(),
        ),
        (
            format!("{base}/{{name}}"),
            PathItemBuilder::new()
                .operation(HttpMethod::Get, get.build())
                .operation(HttpMethod::Put, update.build())
                .operation(HttpMethod::Delete, delete.build())
                .build(),
        ),
        (
            format!("{base}/{{name}}/status"),
            PathItem::new(HttpMethod::Put, status.build()),
        ),
    ]
}

fn token_paths() -> [(String, PathItem); 2] {
    let list = op("listTokens".into(), "List API tokens (admin)".into())
        .response(
            "200",
            ok_response("tokens", Ref::from_schema_name("TokenList")),
        )
        .response("403", err_response("not an admin"));
    let create = op("createToken".into(), "Create an API token (admin)".into())
        .request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    "application/json",
                    json(Ref::from_schema_name("TokenCreateRequest")),
                )
                .build(),
        ))
        .response(
            "201",
            ok_response("the token, shown once", Ref::from_schema_name("TokenInfo")),
        );
    let revoke = op("revokeToken".into(), "Revoke an API token (admin)".into())
        .parameter(path_param("id"))
        .response(
            "200",
            ok_response("revoked", Ref::from_schema_name("TokenInfo")),
        )
        .response("404", err_response("no such token"));
    [
        (
            "/api/v1/tokens".into(),
            PathItemBuilder::new()
                .operation(HttpMethod::Get, list.build())
                .operation(HttpMethod::Post, create.build())
                .build(),
        ),
        (
            "/api/v1/tokens/{id}".into(),
            PathItem::new(HttpMethod::Delete, revoke.build()),
        ),
    ]
}

/// `/api/v1/artifacts[/{sha256}]` (`http::artifacts`).
fn artifact_paths() -> [(String, PathItem); 2] {
    let list = op("listArtifacts".into(), "List stored artifacts".into()).response(
        "200",
        ok_response("artifacts", Ref::from_schema_name("ArtifactList")),
    );
    let upload = op(
        "uploadArtifact".into(),
        "Store an artifact under its SHA-256 (operator or admin)".into(),
    )
    .parameter(query_param(
        "sha256",
        "expected SHA-256 (64 hex digits); a body hashing to anything else is refused (422)",
    ))
    .request_body(Some(
        RequestBodyBuilder::new()
            .required(Some(Required::True))
            .content(
                "application/octet-stream",
                ContentBuilder::new()
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String).format(
                        Some(utoipa::openapi::SchemaFormat::KnownFormat(
                            utoipa::openapi::KnownFormat::Binary,
                        )),
                    )))
                    .build(),
            )
            .build(),
    ))
    .response(
        "201",
        ok_response("stored", Ref::from_schema_name("ArtifactInfo")),
    )
    .response(
        "200",
        ok_response("already stored", Ref::from_schema_name("ArtifactInfo")),
    )
    .response("403", err_response("role may not write"))
    .response("413", err_response("larger than --artifact-max-bytes"))
    .response("422", err_response("the body does not hash to `sha256`"));
    let download = op(
        "getArtifact".into(),
        "Download an artifact (a single Range is honoured); HEAD for its size".into(),
    )
    .security(SecurityRequirement::new(
        "nodeCertificate",
        Vec::<String>::new(),
    ))
    .parameter(path_param("sha256"))
    .parameter(
        ParameterBuilder::new()
            .name("Range")
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some("bytes=N-, bytes=N-M or bytes=-N"))
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .build(),
    )
    .response(
        "200",
        ResponseBuilder::new()
            .description("the content (application/octet-stream); ETag is the quoted sha256")
            .build(),
    )
    .response(
        "206",
        ResponseBuilder::new()
            .description("the requested range, with Content-Range")
            .build(),
    )
    .response("400", err_response("sha256 is not 64 hex digits"))
    .response("404", err_response("no such artifact"))
    .response("416", err_response("range not satisfiable"));
    [
        (
            "/api/v1/artifacts".into(),
            PathItemBuilder::new()
                .operation(HttpMethod::Get, list.build())
                .operation(HttpMethod::Post, upload.build())
                .build(),
        ),
        (
            "/api/v1/artifacts/{sha256}".into(),
            PathItem::new(HttpMethod::Get, download.build()),
        ),
    ]
}

fn add_schema<T: ToSchema>(mut c: ComponentsBuilder) -> ComponentsBuilder {
    let mut deps = Vec::new();
    T::schemas(&mut deps);
    for (name, s) in deps {
        c = c.schema(name, s);
    }
    c.schema(T::name(), T::schema())
}

pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for kind in Kind::ALL {
        for (p, item) in kind_paths(kind) {
            paths = paths.path(p, item);
        }
    }
    for (p, item) in token_paths() {
        paths = paths.path(p, item);
    }
    for (p, item) in artifact_paths() {
        paths = paths.path(p, item);
    }
    let results = op(
        "listNodeResults".into(),
        "Task results a node reported, in seq order".into(),
    )
    .parameter(path_param("name"))
    .response(
        "200",
        ok_response(
            "{items: [ResultRecord]}",
            ObjectBuilder::new().property(
                "items",
                utoipa::openapi::schema::ArrayBuilder::new()
                    .items(Ref::from_schema_name("ResultRecord")),
            ),
        ),
    )
    .response("404", err_response("no such node"));
    paths = paths.path(
        "/api/v1/nodes/{name}/results",
        PathItem::new(HttpMethod::Get, results.build()),
    );
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
    components = add_schema::<SecretSpec>(components);
    components = add_schema::<TokenInfo>(components);
    components = add_schema::<TokenCreateRequest>(components);
    components = add_schema::<TokenList>(components);
    components = add_schema::<crate::nodes::results::ResultRecord>(components);
    components = add_schema::<crate::artifacts::ArtifactInfo>(components);
    components = add_schema::<crate::artifacts::ArtifactList>(components);
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
