//! HTTP client for the Verge API, shared by the `verge` CLI and its benchmarks
//! (`verge-bench`): trusts only the cluster CA from the config, sends the bearer token,
//! and turns `{reason, field, message}` answers into one-line errors ([`ApiFailure`]:
//! `404 NotFound: ...`, the one HTTP error shape of the CLI); and the CLI's duration
//! syntax ([`parse_duration`]). Must not print: callers decide what the user sees.
//! Errors are the one [`Error`] enum; an API answer that was not a success is
//! [`Error::Api`], whose source is the [`ApiFailure`] (so a caller's error chain still
//! finds it).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use verge_api::{Kind, Object, ObjectList};
use verge_cloud::ClientConfig;

/// What can go wrong in the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The config (file, `--server`, `--token`, the environment) does not say how to
    /// reach a server.
    #[error("{0}")]
    Config(String),
    /// The config's CA or the TLS setup.
    #[error("{0}")]
    Tls(String),
    /// The server could not be reached (connection, TLS handshake, timeout).
    #[error("cannot reach {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The server answered with an error status.
    #[error("{0}")]
    Api(#[source] ApiFailure),
    /// A success answer that is not what was asked for.
    #[error("decoding the server's answer: {0}")]
    Decode(String),
    /// An object whose `kind` is not one the API has.
    #[error("unknown kind {0:?}")]
    UnknownKind(String),
    /// A duration flag that is not `90s`, `15m`, `1h`, `7d` or plain seconds.
    #[error("{0}")]
    Duration(String),
}

impl Error {
    /// The API's answer, when this is one.
    pub fn api(&self) -> Option<&ApiFailure> {
        match self {
            Error::Api(f) => Some(f),
            _ => None,
        }
    }
}

impl From<ApiFailure> for Error {
    fn from(f: ApiFailure) -> Self {
        Error::Api(f)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the CLI config came from, in precedence order.
pub fn config_path(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("VERGE_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    Ok(home_dir()?.join(".verge").join("config"))
}

pub fn home_dir() -> Result<PathBuf> {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .ok_or_else(|| Error::Config("HOME is not set; pass --config FILE".into()))
}

/// Loads the config, then applies `--server` / `--token` overrides.
pub fn load_config(
    explicit: Option<&Path>,
    server: Option<&str>,
    token: Option<&str>,
) -> Result<ClientConfig> {
    let path = config_path(explicit)?;
    let mut cfg = if path.exists() {
        ClientConfig::load(&path).map_err(|e| Error::Config(e.to_string()))?
    } else if server.is_some() && token.is_some() {
        ClientConfig {
            server: String::new(),
            certificate_authority_data: None,
            token: String::new(),
        }
    } else {
        return Err(Error::Config(format!(
            "no config at {}: run `verge dev`, or pass --config, or --server and --token",
            path.display()
        )));
    };
    if let Some(s) = server {
        cfg.server = s.trim_end_matches('/').to_string();
    }
    if let Some(t) = token {
        cfg.token = t.to_string();
    }
    Ok(cfg)
}

/// rustls client config trusting exactly the PEM CA given.
pub fn tls_config(ca_pem: &str) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let mut rd = ca_pem.as_bytes();
    for cert in rustls_pemfile::certs(&mut rd) {
        let cert = cert.map_err(|e| Error::Tls(format!("bad CA certificate PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| Error::Tls(format!("bad CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(Error::Tls("the CA data holds no certificate".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(format!("tls protocol versions: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[derive(Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

/// An API answer that was not a success. Shown as one line (`404 NotFound: ...`,
/// [`verge_api::error_line`]); what does not fit on a line (a handler's traceback, the
/// function's output) is kept in `detail`, which `main` prints below the error.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    /// `reason` of the JSON body, or the status' canonical phrase.
    pub reason: String,
    pub field: Option<String>,
    pub message: String,
    pub detail: Option<String>,
}

impl ApiFailure {
    /// From an answer's status and body: `{reason, field, message}` (plus a runtime's
    /// `error.traceback` and `logs`), or plain text.
    pub fn from_body(status: StatusCode, body: &[u8]) -> Self {
        let v: Option<serde_json::Value> = serde_json::from_slice(body).ok();
        let str_at = |v: &serde_json::Value, k: &str| v[k].as_str().map(str::to_string);
        let canonical = status.canonical_reason().unwrap_or("").to_string();
        let (reason, field, full) = match &v {
            Some(v) if v.get("message").is_some() || v.get("reason").is_some() => (
                str_at(v, "reason").unwrap_or(canonical),
                str_at(v, "field"),
                str_at(v, "message").unwrap_or_default(),
            ),
            _ => (
                canonical,
                None,
                String::from_utf8_lossy(body)
                    .trim()
                    .chars()
                    .take(2000)
                    .collect(),
            ),
        };
        let mut lines = full.lines();
        let message = lines.next().unwrap_or("").trim().to_string();
        let mut detail: Vec<String> = Vec::new();
        let rest = lines.collect::<Vec<_>>().join("\n");
        if !rest.trim().is_empty() {
            detail.push(rest.trim_end().to_string());
        }
        if let Some(v) = &v {
            if let Some(tb) = v["error"]["traceback"]
                .as_str()
                .filter(|t| !t.trim().is_empty())
            {
                detail.push(tb.trim_end().to_string());
            }
            if let Some(logs) = v["logs"].as_str().filter(|l| !l.trim().is_empty()) {
                detail.push(format!("--- output ---\n{}", logs.trim_end()));
            }
        }
        ApiFailure {
            status,
            reason,
            field,
            message,
            detail: (!detail.is_empty()).then(|| detail.join("\n")),
        }
    }
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&verge_api::error_line(
            self.status.as_u16(),
            &self.reason,
            self.field.as_deref(),
            &self.message,
        ))
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    pub fn new(cfg: &ClientConfig) -> Result<Self> {
        Self::with_builder(cfg, reqwest::Client::builder())
    }

    /// `builder` lets callers pick e.g. HTTP/1-only for many parallel streams.
    pub fn with_builder(cfg: &ClientConfig, builder: reqwest::ClientBuilder) -> Result<Self> {
        let mut builder = builder.connect_timeout(Duration::from_secs(10));
        if cfg.server.starts_with("https://") {
            let ca = cfg.certificate_authority_data.as_deref().ok_or_else(|| {
                Error::Config(format!(
                    "the config has no certificateAuthorityData for {}",
                    cfg.server
                ))
            })?;
            builder = builder.use_preconfigured_tls(tls_config(ca)?);
        } else if !cfg.server.starts_with("http://") {
            return Err(Error::Config(format!(
                "server {:?} must start with https:// (or http:// for --insecure-http)",
                cfg.server
            )));
        }
        Ok(Self {
            base: cfg.server.trim_end_matches('/').to_string(),
            token: cfg.token.clone(),
            http: builder
                .build()
                .map_err(|e| Error::Tls(format!("building the HTTP client: {}", flatten(&e))))?,
        })
    }

    /// The server's base URL (`https://host:port`).
    pub fn server(&self) -> &str {
        &self.base
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let resp = req
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json::<T>()
                .await
                .map_err(|e| Error::Decode(flatten(&e)));
        }
        Err(failure(resp).await.into())
    }

    pub async fn get(&self, kind: Kind, name: &str) -> Result<Object> {
        self.send(self.request(Method::GET, &format!("/api/v1/{}/{name}", kind.plural())))
            .await
    }

    /// `Ok(None)` on 404.
    pub async fn get_opt(&self, kind: Kind, name: &str) -> Result<Option<Object>> {
        match self.get(kind, name).await {
            Ok(o) => Ok(Some(o)),
            Err(e) => match e.api() {
                Some(f) if f.status == StatusCode::NOT_FOUND => Ok(None),
                _ => Err(e),
            },
        }
    }

    pub async fn list(&self, kind: Kind, selector: Option<&str>) -> Result<ObjectList> {
        let mut req = self.request(Method::GET, &format!("/api/v1/{}", kind.plural()));
        if let Some(s) = selector {
            req = req.query(&[("labelSelector", s)]);
        }
        self.send(req).await
    }

    pub async fn create(&self, obj: &Object) -> Result<Object> {
        let kind = kind_of(obj)?;
        self.send(
            self.request(Method::POST, &format!("/api/v1/{}", kind.plural()))
                .json(obj),
        )
        .await
    }

    pub async fn update(&self, obj: &Object) -> Result<Object> {
        let kind = kind_of(obj)?;
        self.send(
            self.request(
                Method::PUT,
                &format!("/api/v1/{}/{}", kind.plural(), obj.metadata.name),
            )
            .json(obj),
        )
        .await
    }

    pub async fn delete(&self, kind: Kind, name: &str) -> Result<Object> {
        self.send(self.request(Method::DELETE, &format!("/api/v1/{}/{name}", kind.plural())))
            .await
    }

    /// Opens a watch stream (newline-delimited JSON).
    pub async fn watch(
        &self,
        kind: Kind,
        selector: Option<&str>,
        resource_version: Option<&str>,
    ) -> Result<reqwest::Response> {
        let mut q: Vec<(&str, &str)> = vec![("watch", "1")];
        if let Some(s) = selector {
            q.push(("labelSelector", s));
        }
        if let Some(rv) = resource_version {
            q.push(("resourceVersion", rv));
        }
        let resp = self
            .request(Method::GET, &format!("/api/v1/{}", kind.plural()))
            .query(&q)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        if !resp.status().is_success() {
            return Err(failure(resp).await.into());
        }
        Ok(resp)
    }

    fn unreachable(&self, e: &reqwest::Error) -> Error {
        Error::Unreachable {
            server: self.base.clone(),
            reason: flatten(e),
        }
    }

    pub async fn send_json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T> {
        let mut req = self.request(method, path);
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(req).await
    }
}

pub async fn failure(resp: reqwest::Response) -> ApiFailure {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    ApiFailure::from_body(status, &body)
}

fn kind_of(obj: &Object) -> Result<Kind> {
    Kind::from_kind_name(&obj.kind).ok_or_else(|| Error::UnknownKind(obj.kind.clone()))
}

/// One line from an error and its sources.
pub fn flatten(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        src = c.source();
    }
    s
}

/// `30s`, `15m`, `1h`, `7d`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().map_err(|_| {
        Error::Duration(format!("invalid duration {s:?}: use e.g. 90s, 15m, 1h, 7d"))
    })?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => {
            return Err(Error::Duration(format!(
                "invalid duration {s:?}: unit must be s, m, h or d"
            )));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_their_errors() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        let e = parse_duration("5w").unwrap_err();
        assert!(matches!(e, Error::Duration(_)));
        assert_eq!(
            e.to_string(),
            "invalid duration \"5w\": unit must be s, m, h or d"
        );
        assert!(matches!(parse_duration("m"), Err(Error::Duration(_))));
    }

    #[test]
    fn api_answers_become_one_line_and_a_detail() {
        let f = ApiFailure::from_body(
            StatusCode::NOT_FOUND,
            br#"{"reason":"NotFound","message":"app \"web\" not found"}"#,
        );
        assert_eq!(f.to_string(), "404 NotFound: app \"web\" not found");
        assert!(f.detail.is_none());

        let f = ApiFailure::from_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"reason":"Invalid","field":"spec.version","message":"not semver"}"#,
        );
        assert_eq!(f.to_string(), "422 Invalid: spec.version: not semver");

        // A cloud-run handler: message on the line, traceback and output below.
        let f = ApiFailure::from_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"reason":"HandlerError","message":"ZeroDivisionError: division by zero","logs":"about to fail\n","error":{"type":"ZeroDivisionError","message":"division by zero","traceback":"Traceback (most recent call last):\n  File \"/code/handler.py\", line 2\n"}}"#,
        );
        assert_eq!(
            f.to_string(),
            "500 HandlerError: ZeroDivisionError: division by zero"
        );
        assert_eq!(
            f.detail.as_deref(),
            Some(
                "Traceback (most recent call last):\n  File \"/code/handler.py\", line 2\n--- output ---\nabout to fail"
            )
        );

        // An edge-run handler: the traceback is in the message, after its first line.
        let f = ApiFailure::from_body(
            StatusCode::INTERNAL_SERVER_ERROR,
            br#"{"reason":"HandlerError","message":"ValueError: bad\nTraceback (most recent call last):\n  File \"x\"","taskId":"t-1"}"#,
        );
        assert_eq!(f.to_string(), "500 HandlerError: ValueError: bad");
        assert_eq!(
            f.detail.as_deref(),
            Some("Traceback (most recent call last):\n  File \"x\"")
        );

        // As the client's error: the same line, and the answer stays in the chain.
        let e = Error::from(ApiFailure::from_body(
            StatusCode::NOT_FOUND,
            br#"{"reason":"NotFound","message":"app \"web\" not found"}"#,
        ));
        assert_eq!(e.to_string(), "404 NotFound: app \"web\" not found");
        assert_eq!(e.api().map(|f| f.status), Some(StatusCode::NOT_FOUND));
        let src = std::error::Error::source(&e).expect("the answer is the source");
        assert!(src.downcast_ref::<ApiFailure>().is_some());

        // Not JSON (a proxy in between): the status' phrase and the text.
        let f = ApiFailure::from_body(StatusCode::BAD_GATEWAY, b"upstream went away\n");
        assert_eq!(f.to_string(), "502 BadGateway: upstream went away");
    }
}
