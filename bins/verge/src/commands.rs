//! Client commands: apply, get, create secret, describe, delete, token, logs.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use reqwest::Method;
use verge_api::{Format, Kind, Object, WatchEvent, WatchEventType};

use crate::client::Client;
use crate::output::{self, OutputFormat};

pub fn parse_kind(s: &str) -> Result<Kind> {
    Kind::from_user(s).ok_or_else(|| {
        let known: Vec<&str> = Kind::ALL.iter().map(|k| k.singular()).collect();
        anyhow!("unknown kind {s:?}; known: {}", known.join(", "))
    })
}

/// `verge apply -f FILE|-`: creates or updates each document in order, printing
/// `app/web created|configured|unchanged`; stops at the first error. An object that
/// already matches the file is not written at all.
pub async fn apply(client: &Client, file: &str) -> Result<()> {
    let (text, origin) = if file == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        (s, "<stdin>".to_string())
    } else {
        let s = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        (s, file.to_string())
    };
    let format = if origin.ends_with(".json") || text.trim_start().starts_with(['{', '[']) {
        Format::Json
    } else {
        Format::Yaml
    };
    let docs = verge_api::parse_documents(&text, format).map_err(|e| anyhow!("{origin}: {e}"))?;
    if docs.is_empty() {
        bail!("{origin}: no objects found");
    }
    for obj in docs {
        let kind =
            Kind::from_kind_name(&obj.kind).ok_or_else(|| anyhow!("unknown kind {}", obj.kind))?;
        let id = format!("{}/{}", kind.singular(), obj.metadata.name);
        let outcome = match client.get_opt(kind, &obj.metadata.name).await? {
            None => {
                let made = client
                    .create(&obj)
                    .await
                    .with_context(|| format!("creating {id}"))?;
                if made.metadata.name != obj.metadata.name {
                    // A Task whose idempotency key an earlier task holds.
                    outln!(
                        "{id} not created: its idempotency key belongs to {}/{}",
                        kind.singular(),
                        made.metadata.name
                    );
                    continue;
                }
                "created"
            }
            Some(current) if same_as_stored(kind, &obj, &current) => "unchanged",
            Some(_) if kind == Kind::Task => bail!(
                "{id} exists with another spec: a task is one run and cannot be changed; \
                 delete it (`verge delete task {}`) or give it another name",
                obj.metadata.name
            ),
            Some(current) => {
                let mut next = obj.clone();
                // Apply is declarative: last write wins (the server retries its CAS).
                next.metadata.resource_version = None;
                let updated = client
                    .update(&next)
                    .await
                    .with_context(|| format!("updating {id}"))?;
                // Not by resourceVersion: a controller may have written the status
                // meanwhile. Spec changes bump the generation.
                let same = updated.metadata.generation == current.metadata.generation
                    && updated.metadata.labels == current.metadata.labels
                    && updated.metadata.annotations == current.metadata.annotations;
                if same { "unchanged" } else { "configured" }
            }
        };
        outln!("{id} {outcome}");
    }
    Ok(())
}

/// Whether applying `desired` would change nothing in `current`: the same spec (as
/// typed values, so formatting and defaults do not count) and the same labels and
/// annotations. Tasks keep no annotations, so theirs are not compared.
fn same_as_stored(kind: Kind, desired: &Object, current: &Object) -> bool {
    let spec = |o: &Object| verge_api::specs::decode_spec(kind, &o.spec).ok();
    let same_spec = matches!((spec(desired), spec(current)), (Some(a), Some(b)) if a == b);
    same_spec
        && desired.metadata.labels == current.metadata.labels
        && (kind == Kind::Task || desired.metadata.annotations == current.metadata.annotations)
}

pub async fn get(
    client: &Client,
    kind: Kind,
    name: Option<&str>,
    selector: Option<&str>,
    out: OutputFormat,
    watch: bool,
) -> Result<()> {
    if let Some(name) = name {
        if watch {
            bail!("--watch lists a kind; drop the NAME or use -l to select");
        }
        let obj = client.get(kind, name).await?;
        match out {
            OutputFormat::Json => outln!("{}", output::json(&obj)?),
            OutputFormat::Yaml => out!("{}", output::yaml(&obj)?),
            OutputFormat::Table | OutputFormat::Wide => {
                outln!(
                    "{}",
                    output::table(kind, &[obj], out == OutputFormat::Wide, true)
                )
            }
        }
        return Ok(());
    }
    let list = client.list(kind, selector).await?;
    match out {
        OutputFormat::Json => outln!("{}", output::json(&list)?),
        OutputFormat::Yaml => out!("{}", output::yaml(&list)?),
        OutputFormat::Table | OutputFormat::Wide => {
            if list.items.is_empty() && !watch {
                eprintln!("No {} found.", kind.plural());
            } else if !list.items.is_empty() {
                outln!(
                    "{}",
                    output::table(kind, &list.items, out == OutputFormat::Wide, true)
                );
            }
        }
    }
    if watch {
        follow(client, kind, selector, &list.metadata.resource_version, out).await?;
    }
    Ok(())
}

async fn follow(
    client: &Client,
    kind: Kind,
    selector: Option<&str>,
    from: &str,
    out: OutputFormat,
) -> Result<()> {
    let mut rv = from.to_string();
    loop {
        let resp = client.watch(kind, selector, Some(&rv)).await?;
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(|e| anyhow!("watch stream broke: {}", crate::client::flatten(&e)))?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let ev: WatchEvent =
                    serde_json::from_slice(&line).context("decoding a watch event")?;
                if ev.event_type == WatchEventType::Error {
                    bail!("watch ended: {}", ev.object);
                }
                let obj: Object =
                    serde_json::from_value(ev.object).context("decoding a watched object")?;
                if let Some(v) = &obj.metadata.resource_version {
                    rv = v.clone();
                }
                match out {
                    OutputFormat::Json => outln!("{}", serde_json::to_string(&obj)?),
                    OutputFormat::Yaml => out!("---\n{}", output::yaml(&obj)?),
                    _ => outln!(
                        "{:<9} {}",
                        format!("{:?}", ev.event_type).to_uppercase(),
                        output::table(kind, &[obj], out == OutputFormat::Wide, false)
                    ),
                }
            }
        }
        // Server-side timeout: resume from the last revision seen.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[derive(clap::Subcommand)]
pub enum CreateCmd {
    /// A Secret from literal values and files (its values are encrypted at rest and
    /// never shown to viewers).
    Secret {
        name: String,
        /// KEY=VALUE (repeatable). The value shows in the process list and shell
        /// history: prefer --from-file for real secrets.
        #[arg(long = "from-literal")]
        literals: Vec<String>,
        /// KEY=PATH, or PATH (the key is the file's name); the file is read as UTF-8
        /// text (repeatable).
        #[arg(long = "from-file")]
        files: Vec<String>,
    },
}

/// The `data` of `verge create secret`: literals and files, each key once.
fn secret_data(
    literals: &[String],
    files: &[String],
) -> Result<std::collections::BTreeMap<String, String>> {
    let mut data = std::collections::BTreeMap::new();
    for l in literals {
        let (k, v) = l.split_once('=').ok_or_else(|| {
            anyhow!(
                "--from-literal {k:?}: expected KEY=VALUE",
                k = l.split('=').next().unwrap_or("")
            )
        })?;
        if data.insert(k.to_string(), v.to_string()).is_some() {
            bail!("key {k:?} is given twice");
        }
    }
    for f in files {
        let (k, path) = match f.split_once('=') {
            Some((k, p)) => (k.to_string(), p.to_string()),
            None => (
                std::path::Path::new(f)
                    .file_name()
                    .and_then(|n| n.to_str())
                    .ok_or_else(|| anyhow!("--from-file {f:?}: no file name to use as the key"))?
                    .to_string(),
                f.clone(),
            ),
        };
        let v = std::fs::read_to_string(&path)
            .with_context(|| format!("--from-file {path}: reading it as UTF-8 text"))?;
        if data.insert(k.clone(), v).is_some() {
            bail!("key {k:?} is given twice");
        }
    }
    Ok(data)
}

/// `verge create secret NAME --from-literal K=V --from-file K=PATH`.
pub async fn create(client: &Client, cmd: &CreateCmd) -> Result<()> {
    let CreateCmd::Secret {
        name,
        literals,
        files,
    } = cmd;
    let data = secret_data(literals, files)?;
    if data.is_empty() {
        bail!("give the values with --from-literal KEY=VALUE or --from-file KEY=PATH");
    }
    let obj = verge_api::decode_object(serde_json::json!({
        "apiVersion": verge_api::API_VERSION, "kind": "Secret",
        "metadata": {"name": name}, "spec": {"data": data},
    }))
    .map_err(|e| anyhow!("{e}"))?;
    client
        .create(&obj)
        .await
        .with_context(|| format!("creating secret/{name}"))?;
    outln!("secret/{name} created");
    Ok(())
}

/// `verge describe KIND NAME [-o yaml|json]`: the summary (`describe.rs`), or the
/// full object.
pub async fn describe(
    client: &Client,
    kind: Kind,
    name: &str,
    format: Option<OutputFormat>,
) -> Result<()> {
    let obj = client.get(kind, name).await?;
    match format {
        Some(OutputFormat::Yaml) => out!("{}", output::yaml(&obj)?),
        Some(OutputFormat::Json) => outln!("{}", output::json(&obj)?),
        _ => out!("{}", crate::describe::describe(&obj, output::now_ms())),
    }
    Ok(())
}

/// `deleted`, or `deleting` when finalizers still hold the object (a Node's
/// certificates are revoked before it goes; the cloud waits for that, bounded).
pub async fn delete(client: &Client, kind: Kind, name: &str) -> Result<()> {
    let obj = client.delete(kind, name).await?;
    if obj.metadata.deletion_timestamp.is_some()
        && let Some(left) = client.get_opt(kind, name).await?
    {
        outln!(
            "{}/{name} deleting (waiting for: {})",
            kind.singular(),
            if left.metadata.finalizers.is_empty() {
                "the deletion to finish".to_string()
            } else {
                left.metadata.finalizers.join(", ")
            }
        );
        return Ok(());
    }
    outln!("{}/{name} deleted", kind.singular());
    Ok(())
}

pub use verge_client::parse_duration;

pub struct TokenArgs<'a> {
    pub role: &'a str,
    pub ttl: Option<&'a str>,
    pub description: Option<&'a str>,
    pub uses: Option<u32>,
    pub labels: &'a [String],
}

pub async fn token_create(
    client: &Client,
    cfg: &verge_cloud::ClientConfig,
    args: TokenArgs<'_>,
) -> Result<()> {
    let role = args.role;
    if verge_cloud::Role::parse(role).is_none() || role == "bootstrap" && args.role != "bootstrap" {
        bail!("unknown role {role:?}: use admin, operator or viewer (or --bootstrap)");
    }
    let mut body = serde_json::json!({ "role": role });
    if let Some(t) = args.ttl {
        body["ttlSeconds"] = parse_duration(t)?.as_secs().into();
    }
    if let Some(d) = args.description {
        body["description"] = d.into();
    }
    if let Some(u) = args.uses {
        body["uses"] = u.into();
    }
    let mut labels = serde_json::Map::new();
    for l in args.labels {
        let (k, v) = l
            .split_once('=')
            .ok_or_else(|| anyhow!("--label {l:?}: expected key=value"))?;
        labels.insert(k.to_string(), v.into());
    }
    if !labels.is_empty() {
        body["labels"] = labels.into();
    }
    let info: verge_cloud::auth::TokenInfo = client
        .send_json(Method::POST, "/api/v1/tokens", Some(&body))
        .await?;
    let token = info.token.clone().unwrap_or_default();
    outln!("{token}");
    if role == "bootstrap" {
        let hash = cfg
            .certificate_authority_data
            .as_deref()
            .map(verge_cloud::ca_hash_from_pem)
            .transpose()
            .map_err(|e| anyhow!("{e}"))?
            .unwrap_or_else(|| "<no CA in config>".into());
        eprintln!("Join an edge node with:");
        eprintln!(
            "  verge-edge join --cloud {} --token {token} --ca-hash {hash} --data-dir /var/lib/verge-edge",
            cfg.server
        );
    }
    eprintln!(
        "token {} (role {}{}) created; it is shown only once",
        info.id,
        info.role.as_str(),
        info.expires_at
            .map(|e| format!(", expires {e}"))
            .unwrap_or_default()
    );
    Ok(())
}

pub async fn token_list(client: &Client) -> Result<()> {
    let list: serde_json::Value = client
        .send_json(Method::GET, "/api/v1/tokens", None)
        .await?;
    let items: Vec<verge_cloud::auth::TokenInfo> =
        serde_json::from_value(list["items"].clone()).context("decoding tokens")?;
    let rows = items.into_iter().map(|i| {
        vec![
            i.id,
            i.role.as_str().to_string(),
            i.created_at,
            i.expires_at.unwrap_or_else(|| "never".into()),
            i.revoked_at.unwrap_or_else(|| "-".into()),
            i.description.unwrap_or_default(),
        ]
    });
    let headers = ["ID", "ROLE", "CREATED", "EXPIRES", "REVOKED", "DESCRIPTION"];
    outln!("{}", output::plain_table(&headers, rows));
    Ok(())
}

pub async fn token_revoke(client: &Client, id: &str) -> Result<()> {
    let _: serde_json::Value = client
        .send_json(Method::DELETE, &format!("/api/v1/tokens/{id}"), None)
        .await?;
    outln!("token {id} revoked");
    Ok(())
}

/// `verge logs app/NAME [--node N] [--tail K]`: the app's output as its nodes shipped it,
/// each line prefixed with `[node app-replica]`.
pub async fn logs(
    client: &Client,
    target: &str,
    node: Option<&str>,
    tail: usize,
    follow: bool,
) -> Result<()> {
    let (plural, prefix, name) = if let Some(n) = target
        .strip_prefix("app/")
        .or_else(|| target.strip_prefix("apps/"))
    {
        ("apps", "app/", n)
    } else if let Some(n) = target
        .strip_prefix("fn/")
        .or_else(|| target.strip_prefix("function/"))
        .or_else(|| target.strip_prefix("functions/"))
    {
        ("functions", "fn/", n)
    } else {
        anyhow::bail!("{target:?}: expected app/NAME or fn/NAME");
    };
    let mut path = format!("/api/v1/{plural}/{name}/logs?tail={tail}");
    if let Some(n) = node {
        path.push_str(&format!("&node={n}"));
    }
    // Lines already printed (by node, source, time and text), for --follow.
    let mut seen: std::collections::HashSet<(String, String, i64, String)> = Default::default();
    loop {
        let v: serde_json::Value = client.send_json(reqwest::Method::GET, &path, None).await?;
        for e in v["items"].as_array().into_iter().flatten() {
            let node = e["node"].as_str().unwrap_or("?").to_string();
            let source = e["source"].as_str().unwrap_or("").to_string();
            let line = e["line"].as_str().unwrap_or("").to_string();
            let ts = e["tsMs"].as_i64().unwrap_or(0);
            if follow && !seen.insert((node.clone(), source.clone(), ts, line.clone())) {
                continue;
            }
            let instance = source
                .strip_prefix(prefix)
                .unwrap_or(&source)
                .replacen('/', "-", 1);
            outln!("[{node} {instance}] {line}");
        }
        if !follow {
            return Ok(());
        }
        if seen.len() > 100_000 {
            seen.clear();
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
