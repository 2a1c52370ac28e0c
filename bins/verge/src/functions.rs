//! `verge fn init|deploy`, `verge invoke`, `verge task create|get|list|cancel`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{Value, json};
use verge_api::{Kind, Object};

use crate::client::{Client, flatten};
use crate::output::{OutputFormat, plain_table};

#[derive(Subcommand)]
pub enum FnCmd {
    /// Write a function template: DIR/function.yaml and the handler.
    Init {
        /// Function name (DNS label); also the directory created.
        name: String,
        #[arg(long, default_value = "python3", value_parser = ["python3", "nodejs"])]
        runtime: String,
        /// Parent directory.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Deploy DIR: its function.yaml, with the code inline (one small file) or packed
    /// as an artifact; waits until the code is checked.
    Deploy {
        dir: PathBuf,
        /// Seconds to wait for the check.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
pub enum TaskCmd {
    /// Start a task: `202` and its id.
    Create {
        function: String,
        /// Input: JSON, or @FILE.
        #[arg(long)]
        data: Option<String>,
        /// Run on this node.
        #[arg(long, conflicts_with_all = ["selector", "fanout"])]
        node: Option<String>,
        /// Run on the least loaded node with these labels (k=v,k2=v2).
        #[arg(long)]
        selector: Option<String>,
        /// Run once on every node with these labels.
        #[arg(long, conflicts_with = "selector")]
        fanout: Option<String>,
        #[arg(long)]
        callback_url: Option<String>,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        timeout_seconds: Option<u32>,
        #[arg(long)]
        max_attempts: Option<u32>,
        /// Wait until it finishes and print the result.
        #[arg(long)]
        wait: bool,
    },
    /// A task's phase, result, timings and callback.
    Get {
        id: String,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Tasks, newest first.
    List {
        /// Only tasks of this function.
        #[arg(long)]
        function: Option<String>,
        #[arg(short = 'l', long = "selector")]
        selector: Option<String>,
    },
    /// Cancel an unfinished task.
    Cancel { id: String },
}

const PY_TEMPLATE: &str = r#"# A Verge function: `main` gets the input (parsed JSON, or bytes) and returns
# JSON-serialisable data (or bytes). What it prints shows in `verge logs fn/NAME`.


def main(event):
    name = (event or {}).get("name", "world")
    print(f"greeting {name}")
    return {"greeting": f"hello, {name}"}
"#;

const JS_TEMPLATE: &str = r#"// A Verge function: `main` gets the input (parsed JSON, or a Buffer) and returns
// JSON-serialisable data (or a Buffer), or a Promise of it. What it logs shows in
// `verge logs fn/NAME`.
exports.main = async (event) => {
  const name = (event && event.name) || "world";
  console.log(`greeting ${name}`);
  return { greeting: `hello, ${name}` };
};
"#;

pub async fn run_fn(client: Option<&Client>, cmd: &FnCmd) -> Result<()> {
    match cmd {
        FnCmd::Init { name, runtime, dir } => init(name, runtime, dir),
        FnCmd::Deploy { dir, timeout } => {
            let client = client.ok_or_else(|| anyhow!("no client"))?;
            deploy(client, dir, Duration::from_secs(*timeout)).await
        }
    }
}

fn init(name: &str, runtime: &str, parent: &Path) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || name.starts_with('-')
        || name.ends_with('-')
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        bail!("{name:?}: a function name is 1-63 lowercase letters, digits and '-'");
    }
    let dir = parent.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (file, code) = match runtime {
        "nodejs" => ("handler.js", JS_TEMPLATE),
        _ => ("handler.py", PY_TEMPLATE),
    };
    std::fs::write(dir.join(file), code)?;
    let manifest = format!(
        "apiVersion: {}\nkind: Function\nmetadata:\n  name: {name}\nspec:\n  runtime: {runtime}\n  handler: handler.main\n  resources:\n    memory: 128Mi\n    timeoutSeconds: 30\n  scaling:\n    minWarm: 1\n    maxInstances: 2\n    idleSeconds: 300\n  # placement: {{cloud: true}}           # run in the cloud instead\n  # placement: {{nodeSelector: {{region: eu}}}}  # only these edge nodes\n",
        verge_api::API_VERSION
    );
    std::fs::write(dir.join("function.yaml"), manifest)?;
    outln!(
        "wrote {}/function.yaml and {}/{file}",
        dir.display(),
        dir.display()
    );
    outln!("deploy it with: verge fn deploy {}", dir.display());
    Ok(())
}

/// Files of DIR that are code (everything but function.yaml and hidden files).
fn code_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || (d == dir && name == "function.yaml") {
                continue;
            }
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

async fn deploy(client: &Client, dir: &Path, timeout: Duration) -> Result<()> {
    let manifest = dir.join("function.yaml");
    let text = std::fs::read_to_string(&manifest)
        .with_context(|| format!("reading {}", manifest.display()))?;
    // Bounded (YAML aliases counted at every use, nesting capped) like every manifest.
    let mut raw: Value = verge_api::parse_value(
        &text,
        verge_api::Format::Yaml,
        verge_api::default_bounds(text.len()),
    )
    .map_err(|e| anyhow!("{}: {e}", manifest.display()))?;
    if raw["kind"] != "Function" || !raw["spec"].is_object() {
        bail!("{}: expected one Function with a spec", manifest.display());
    }
    let handler = raw["spec"]["handler"].as_str().unwrap_or("").to_string();
    let runtime = raw["spec"]["runtime"].as_str().unwrap_or("").to_string();
    let ext = if runtime == "nodejs" { "js" } else { "py" };
    let module = handler
        .rsplit_once('.')
        .map(|(m, _)| m.replace('.', "/"))
        .unwrap_or_default();
    let files = code_files(dir)?;
    let main_file = dir.join(format!("{module}.{ext}"));
    let total: u64 = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    if raw["spec"].get("code").is_none()
        && raw["spec"].get("artifact").is_none()
        && runtime != "builtin"
    {
        if files == [main_file.clone()] && total <= 64 * 1024 {
            let code = std::fs::read_to_string(&main_file)?;
            raw["spec"]["code"] = Value::String(code);
        } else if files.is_empty() {
            bail!(
                "{}: no code next to function.yaml (expected {})",
                dir.display(),
                main_file.display()
            );
        } else {
            let archive = pack(dir, &files)?;
            let (sha256, size, _) = crate::artifact::upload(client, archive.path()).await?;
            outln!(
                "packed {} file(s) into sha256:{sha256} ({size} bytes)",
                files.len()
            );
            raw["spec"]["artifact"] = json!({ "sha256": sha256 });
        }
    }
    let mut docs =
        verge_api::parse_documents(&serde_json::to_string(&raw)?, verge_api::Format::Json)
            .map_err(|e| anyhow!("{}: {e}", manifest.display()))?;
    let mut obj = docs.remove(0);
    let name = obj.metadata.name.clone();
    let saved = match client.get_opt(Kind::Function, &name).await? {
        Some(cur) => {
            obj.metadata.resource_version = cur.metadata.resource_version.clone();
            client.update(&obj).await?
        }
        None => client.create(&obj).await?,
    };
    let generation = saved.metadata.generation;
    outln!(
        "function/{name} applied (generation {})",
        generation.unwrap_or(0)
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let o = client.get(Kind::Function, &name).await?;
        if o.status["observedGeneration"].as_i64() == generation {
            let phase = o.status["phase"].as_str().unwrap_or("?");
            let message = o.status["message"].as_str().unwrap_or("");
            if phase == "Failed" {
                return Err(crate::report::Detailed::split(
                    &format!("function/{name} failed to load"),
                    message,
                )
                .into());
            }
            outln!("function/{name} {phase}: {message}");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "function/{name} was not checked within {} s",
                timeout.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `.tar.gz` of `files` (paths relative to `dir`), in a temp file.
fn pack(dir: &Path, files: &[PathBuf]) -> Result<tempfile::NamedTempFile> {
    let tmp = tempfile::NamedTempFile::new()?;
    let gz = flate2::write::GzEncoder::new(tmp.reopen()?, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for f in files {
        let rel = f.strip_prefix(dir).unwrap_or(f);
        tar.append_path_with_name(f, rel)
            .with_context(|| format!("packing {}", f.display()))?;
    }
    tar.into_inner()?.finish()?;
    Ok(tmp)
}

/// `--data`: JSON text, `@FILE` (JSON, or bytes with `--content-type`), or nothing.
fn read_data(data: Option<&str>) -> Result<Vec<u8>> {
    match data {
        None => Ok(b"null".to_vec()),
        Some(s) if s.starts_with('@') => {
            std::fs::read(&s[1..]).with_context(|| format!("reading {}", &s[1..]))
        }
        Some(s) => Ok(s.as_bytes().to_vec()),
    }
}

pub async fn invoke(
    client: &Client,
    name: &str,
    data: Option<&str>,
    node: Option<&str>,
    content_type: &str,
    out_file: Option<&Path>,
) -> Result<()> {
    let mut body = read_data(data)?;
    if content_type == "application/json" {
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| anyhow!("--data is not valid JSON: {e}"))?;
        // `--out cover.jpg` on an image function: a JPEG, not its default PNG.
        if let Some(f) = out_file {
            body = crate::images::invoke_body_for_out_file(client, name, body, f).await;
        }
    }
    let mut req = client
        .request(Method::POST, &format!("/api/v1/functions/{name}/invoke"))
        .header(reqwest::header::CONTENT_TYPE, content_type)
        .timeout(Duration::from_secs(960))
        .body(body);
    if let Some(n) = node {
        req = req.query(&[("node", n)]);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| anyhow!("invoking {name}: {}", flatten(&e)))?;
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let where_ = resp
        .headers()
        .get("x-verge-node")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp.bytes().await?;
    if status.is_success() {
        if let Some(f) = out_file {
            std::fs::write(f, &bytes).with_context(|| format!("writing {}", f.display()))?;
            outln!("wrote {} bytes ({ctype}) to {}", bytes.len(), f.display());
        } else if ctype.starts_with("application/json") {
            let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            outln!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            outln!(
                "{} bytes of {ctype} (use --out FILE to save them)",
                bytes.len()
            );
        }
        if let Some(w) = where_ {
            eprintln!("(ran on {w})");
        }
        return Ok(());
    }
    // A handler's traceback and output come back in the body: shown below the line.
    Err(crate::client::ApiFailure::from_body(status, &bytes).into())
}

fn labels_arg(s: &str) -> Result<Value> {
    let mut m = serde_json::Map::new();
    for kv in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("{kv:?}: expected k=v"))?;
        m.insert(k.to_string(), Value::String(v.to_string()));
    }
    Ok(Value::Object(m))
}

pub async fn run_task(client: &Client, cmd: &TaskCmd) -> Result<()> {
    match cmd {
        TaskCmd::Create {
            function,
            data,
            node,
            selector,
            fanout,
            callback_url,
            idempotency_key,
            timeout_seconds,
            max_attempts,
            wait,
        } => {
            let input: Value = serde_json::from_slice(&read_data(data.as_deref())?)
                .map_err(|e| anyhow!("--data is not valid JSON: {e}"))?;
            let mut spec = json!({ "function": function, "input": input });
            if let Some(n) = node {
                spec["target"] = json!({ "node": n });
            } else if let Some(s) = selector {
                spec["target"] = json!({ "nodeSelector": labels_arg(s)? });
            } else if let Some(s) = fanout {
                spec["target"] = json!({ "fanout": labels_arg(s)? });
            }
            if let Some(u) = callback_url {
                spec["callbackUrl"] = json!(u);
            }
            if let Some(k) = idempotency_key {
                spec["idempotencyKey"] = json!(k);
            }
            if let Some(t) = timeout_seconds {
                spec["timeoutSeconds"] = json!(t);
            }
            if let Some(a) = max_attempts {
                spec["maxAttempts"] = json!(a);
            }
            let r: Value = client
                .send_json(Method::POST, "/api/v1/tasks", Some(&spec))
                .await?;
            let id = r["taskId"].as_str().unwrap_or("").to_string();
            if r["created"] == json!(false) {
                outln!("task {id} (existing: same idempotency key)");
            } else {
                outln!("task {id} created");
            }
            if *wait {
                loop {
                    let o: Object = client.get(Kind::Task, &id).await?;
                    let phase = o.status["phase"].as_str().unwrap_or("Pending");
                    if ["Succeeded", "Failed", "TimedOut", "Cancelled"].contains(&phase) {
                        print_task(&o);
                        if phase != "Succeeded" {
                            bail!("task {id} {phase}");
                        }
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Ok(())
        }
        TaskCmd::Get { id, output } => {
            let o = client.get(Kind::Task, id).await?;
            match output {
                OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&o)?),
                OutputFormat::Yaml => out!("{}", serde_norway::to_string(&o)?),
                _ => print_task(&o),
            }
            Ok(())
        }
        TaskCmd::List { function, selector } => {
            let list = client.list(Kind::Task, selector.as_deref()).await?;
            let mut items: Vec<&Object> = list
                .items
                .iter()
                .filter(|o| {
                    function
                        .as_deref()
                        .is_none_or(|f| o.spec["function"] == json!(f))
                })
                .collect();
            items.sort_by_key(|o| std::cmp::Reverse(o.status["createdAtMs"].as_i64().unwrap_or(0)));
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|o| {
                    let s = &o.status;
                    vec![
                        o.metadata.name.clone(),
                        o.spec["function"].as_str().unwrap_or("").to_string(),
                        s["phase"].as_str().unwrap_or("Pending").to_string(),
                        s["node"].as_str().unwrap_or("-").to_string(),
                        s["attempts"].as_u64().unwrap_or(0).to_string(),
                        duration(s),
                        s["trigger"].as_str().unwrap_or("-").to_string(),
                    ]
                })
                .collect();
            outln!(
                "{}",
                plain_table(
                    &[
                        "ID", "FUNCTION", "PHASE", "NODE", "ATTEMPTS", "DURATION", "TRIGGER"
                    ],
                    rows
                )
            );
            Ok(())
        }
        TaskCmd::Cancel { id } => {
            let r: Value = client
                .send_json(Method::DELETE, &format!("/api/v1/tasks/{id}"), None)
                .await?;
            outln!(
                "task {id} {}",
                r["status"]["phase"].as_str().unwrap_or("Cancelled")
            );
            Ok(())
        }
    }
}

fn duration(s: &Value) -> String {
    match (s["startedAtMs"].as_i64(), s["finishedAtMs"].as_i64()) {
        (Some(a), Some(b)) => format!("{} ms", b - a),
        _ => "-".into(),
    }
}

/// `label:` and a value; a value of several lines (a traceback) continues below,
/// aligned under its first line.
fn field(label: &str, value: &str) {
    let mut lines = value.trim_end().lines();
    outln!("{:<11}{}", format!("{label}:"), lines.next().unwrap_or(""));
    for l in lines {
        outln!("{:<11}{l}", "");
    }
}

fn print_task(o: &Object) {
    let s = &o.status;
    field("id", &o.metadata.name);
    field("function", o.spec["function"].as_str().unwrap_or(""));
    field("phase", s["phase"].as_str().unwrap_or("Pending"));
    if let Some(r) = s["reason"].as_str() {
        field("reason", r);
    }
    if let Some(m) = s["message"].as_str() {
        field("message", m);
    }
    field("node", s["node"].as_str().unwrap_or("-"));
    field("attempts", &s["attempts"].as_u64().unwrap_or(0).to_string());
    field("duration", &duration(s));
    if let Some(t) = s["trigger"].as_str() {
        field("trigger", t);
    }
    if !s["result"].is_null() {
        field("result", &s["result"].to_string());
    }
    if let Some(u) = s["resultUrl"].as_str() {
        field(
            "result",
            &format!("{u} ({} bytes)", s["resultBytes"].as_u64().unwrap_or(0)),
        );
    }
    if let Some(e) = s["error"].as_str() {
        field("error", e);
    }
    if let Some(children) = s["children"].as_array() {
        for c in children {
            field(
                "child",
                &format!(
                    "{} on {}: {}",
                    c["name"].as_str().unwrap_or(""),
                    c["node"].as_str().unwrap_or(""),
                    c["phase"].as_str().unwrap_or("")
                ),
            );
        }
    }
    if s["callback"].is_object() {
        let cb = &s["callback"];
        field(
            "callback",
            &format!(
                "{} after {} attempt(s){}",
                cb["state"].as_str().unwrap_or(""),
                cb["attempts"].as_u64().unwrap_or(0),
                cb["lastError"]
                    .as_str()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            ),
        );
    }
}
