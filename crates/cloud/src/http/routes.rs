//! The one table of what the HTTP API serves: every (method, path) with who may call it
//! and which operation answers. [`super::router`] mounts exactly these routes (a handler
//! per [`Op`]) and [`super::openapi::document`] describes exactly these (a description
//! per [`Op`]); both matches are exhaustive, so a route cannot be served without being
//! documented, nor documented without being served.
//!
//! Pure data: no handlers, no I/O. Resource routes are concrete per kind
//! (`/api/v1/apps/{name}`, not `/api/v1/{plural}/{name}`), so each kind lists only the
//! operations it has (Tasks are created with `POST /api/v1/tasks` and cancelled with
//! `DELETE`, never replaced; only Apps and Functions have logs, only Nodes results), and
//! the metrics' `route` label names the kind.

use axum::http::Method;
use verge_api::Kind;

/// Who may call a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone (no credentials).
    Public,
    /// A bearer token of any role (the handler checks the role where it matters).
    Token,
    /// A bearer token, or an edge node's client certificate.
    TokenOrNode,
}

/// Every operation the API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    List(Kind),
    Create(Kind),
    Get(Kind),
    Replace(Kind),
    Delete(Kind),
    ReplaceStatus(Kind),
    /// `GET …/{name}/logs` (Apps and Functions).
    Logs(Kind),
    NodeResults,
    Invoke,
    CreateTask,
    CancelTask,
    ListTokens,
    CreateToken,
    RevokeToken,
    ListS3Keys,
    CreateS3Key,
    RevokeS3Key,
    ListArtifacts,
    UploadArtifact,
    GetArtifact,
    /// `GET|HEAD /cdn/{bucket}/{*key}`: an object of a public bucket.
    Cdn,
    ListObjects,
    /// GET and HEAD.
    GetObject,
    PutObject,
    DeleteObject,
    ListDeadLetters,
    RedriveDeadLetter,
    DropDeadLetter,
    Join,
    ClusterCa,
    ClusterInfo,
    Metrics,
    Healthz,
    Readyz,
    OpenApi,
}

/// One served route.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// In the router's syntax (`/api/v1/apps/{name}`), which is also OpenAPI's.
    pub path: String,
    pub access: Access,
    pub op: Op,
}

fn route(method: Method, path: impl Into<String>, access: Access, op: Op) -> Route {
    Route {
        method,
        path: path.into(),
        access,
        op,
    }
}

/// Every route, in the order the document lists them.
pub fn table() -> Vec<Route> {
    use Access::*;
    let mut t = Vec::new();
    for kind in Kind::ALL {
        let base = format!("/api/v1/{}", kind.plural());
        let one = format!("{base}/{{name}}");
        t.push(route(Method::GET, &base, Token, Op::List(kind)));
        if kind == Kind::Task {
            t.push(route(Method::POST, &base, Token, Op::CreateTask));
            t.push(route(Method::GET, &one, Token, Op::Get(kind)));
            t.push(route(Method::DELETE, &one, Token, Op::CancelTask));
        } else {
            t.push(route(Method::POST, &base, Token, Op::Create(kind)));
            t.push(route(Method::GET, &one, Token, Op::Get(kind)));
            t.push(route(Method::PUT, &one, Token, Op::Replace(kind)));
            t.push(route(Method::DELETE, &one, Token, Op::Delete(kind)));
        }
        t.push(route(
            Method::PUT,
            format!("{one}/status"),
            Token,
            Op::ReplaceStatus(kind),
        ));
        match kind {
            Kind::App | Kind::Function => {
                t.push(route(
                    Method::GET,
                    format!("{one}/logs"),
                    Token,
                    Op::Logs(kind),
                ));
            }
            Kind::Node => {
                t.push(route(
                    Method::GET,
                    format!("{one}/results"),
                    Token,
                    Op::NodeResults,
                ));
            }
            _ => {}
        }
        if kind == Kind::Bucket {
            t.push(route(
                Method::GET,
                format!("{one}/objects"),
                Token,
                Op::ListObjects,
            ));
            let object = format!("{one}/objects/{{*key}}");
            t.push(route(Method::GET, &object, Token, Op::GetObject));
            t.push(route(Method::PUT, &object, Token, Op::PutObject));
            t.push(route(Method::DELETE, &object, Token, Op::DeleteObject));
        }
        if kind == Kind::Function {
            t.push(route(
                Method::POST,
                format!("{one}/invoke"),
                Token,
                Op::Invoke,
            ));
        }
    }
    t.extend([
        route(Method::GET, "/api/v1/tokens", Token, Op::ListTokens),
        route(Method::POST, "/api/v1/tokens", Token, Op::CreateToken),
        route(
            Method::DELETE,
            "/api/v1/tokens/{id}",
            Token,
            Op::RevokeToken,
        ),
        route(Method::GET, "/api/v1/s3keys", Token, Op::ListS3Keys),
        route(Method::POST, "/api/v1/s3keys", Token, Op::CreateS3Key),
        route(
            Method::DELETE,
            "/api/v1/s3keys/{id}",
            Token,
            Op::RevokeS3Key,
        ),
        route(Method::GET, "/api/v1/artifacts", Token, Op::ListArtifacts),
        route(Method::POST, "/api/v1/artifacts", Token, Op::UploadArtifact),
        route(
            Method::GET,
            "/api/v1/artifacts/{sha256}",
            TokenOrNode,
            Op::GetArtifact,
        ),
        route(Method::GET, "/cdn/{bucket}/{*key}", Public, Op::Cdn),
        route(
            Method::GET,
            "/api/v1/deadletters",
            Token,
            Op::ListDeadLetters,
        ),
        route(
            Method::POST,
            "/api/v1/deadletters/{id}/redrive",
            Token,
            Op::RedriveDeadLetter,
        ),
        route(
            Method::DELETE,
            "/api/v1/deadletters/{id}",
            Token,
            Op::DropDeadLetter,
        ),
        route(Method::POST, "/api/v1/join", Public, Op::Join),
        route(Method::GET, "/api/v1/cluster/ca", Public, Op::ClusterCa),
        route(Method::GET, "/api/v1/cluster/info", Token, Op::ClusterInfo),
        route(Method::GET, "/metrics", Token, Op::Metrics),
        route(Method::GET, "/healthz", Public, Op::Healthz),
        route(Method::GET, "/readyz", Public, Op::Readyz),
        route(Method::GET, "/openapi.json", Public, Op::OpenApi),
    ]);
    t
}

/// `/img/{*path}` (the router's catch-all) as an OpenAPI path: `/img/{path}`.
pub fn openapi_path(router_path: &str) -> String {
    router_path.replace("{*", "{")
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn no_route_twice_and_tasks_are_not_replaced() {
        let t = table();
        let mut seen = HashSet::new();
        for r in &t {
            assert!(
                seen.insert((r.method.clone(), r.path.clone())),
                "{} {} twice",
                r.method,
                r.path
            );
        }
        assert!(
            !t.iter()
                .any(|r| r.path == "/api/v1/tasks/{name}" && r.method == Method::PUT)
        );
        assert!(
            t.iter()
                .any(|r| r.path == "/api/v1/apps/{name}/logs" && r.op == Op::Logs(Kind::App))
        );
        assert!(!t.iter().any(|r| r.path == "/api/v1/configs/{name}/logs"));
        assert_eq!(openapi_path("/img/{*path}"), "/img/{path}");
    }

    /// Under one path prefix, a parameter has one name (the router requires it).
    #[test]
    fn parameter_names_agree_per_position() {
        let t = table();
        for a in &t {
            for b in &t {
                let (sa, sb): (Vec<_>, Vec<_>) =
                    (a.path.split('/').collect(), b.path.split('/').collect());
                for (i, (x, y)) in sa.iter().zip(&sb).enumerate() {
                    if sa[..i] != sb[..i] {
                        break;
                    }
                    if x.starts_with('{') && y.starts_with('{') {
                        assert_eq!(x, y, "{} vs {}", a.path, b.path);
                    }
                }
            }
        }
    }
}
