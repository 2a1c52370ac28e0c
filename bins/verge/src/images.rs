//! The image service in this binary: the builtin image functions and the `/img` endpoint
//! of `verge cloud` / `verge dev` (wiring of `verge-images`), and the `verge image`
//! commands (local processing, signed URLs, installing the function pack), and the output
//! format `verge invoke IMAGE-FUNCTION --out FILE` asks for (from FILE's extension).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::future::BoxFuture;
use verge_images::fetch::{FetchPolicy, Fetcher};
use verge_images::functions::{ArtifactSource, FUNCTIONS, ImageEnv};
use verge_images::imgproxy::SigningKeys;
use verge_images::server::{ImgConfig, ImgService};

use crate::client::Client;

/// Name of the signing keys file in a data directory (`KEY_HEX:SALT_HEX` per line, 0600).
pub const KEYS_FILE: &str = "img-keys";

/// `verge cloud` flags of the image service.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ImageServiceArgs {
    /// `/img` signing keys file, `KEY_HEX:SALT_HEX` per line, first one signs
    /// (default DATA_DIR/img-keys, created with a random pair).
    #[arg(long)]
    pub img_keys_file: Option<PathBuf>,
    /// Serve unsigned `/img/unsafe/...` URLs too.
    #[arg(long)]
    pub img_allow_unsigned: bool,
    /// Image drawn by the `watermark`/`wm` option.
    #[arg(long)]
    pub img_watermark: Option<PathBuf>,
    /// Disk cache of `/img` outputs, in MiB (0: none).
    #[arg(long, default_value_t = 512)]
    pub img_cache_mb: u64,
    /// Hosts image sources may come from (repeatable; `*.example.com`; default any public).
    #[arg(long = "img-allow-host")]
    pub img_allow_hosts: Vec<String>,
    /// Non-public networks image sources may come from (repeatable; `10.0.0.0/8`).
    #[arg(long = "img-allow-network")]
    pub img_allow_networks: Vec<String>,
}

/// The cloud's artifact store as an image source.
struct CloudArtifacts(verge_cloud::artifacts::ArtifactStore);

impl ArtifactSource for CloudArtifacts {
    fn read<'a>(
        &'a self,
        sha256: &'a str,
        max_bytes: u64,
    ) -> BoxFuture<'a, verge_images::Result<Bytes>> {
        Box::pin(async move {
            let path = self.0.path(sha256);
            let url = format!("artifact://{sha256}");
            let len = match tokio::fs::metadata(&path).await {
                Ok(m) => m.len(),
                Err(_) => {
                    return Err(verge_images::Error::SourceStatus { url, status: 404 });
                }
            };
            if len > max_bytes {
                return Err(verge_images::Error::SourceTooLarge {
                    url,
                    max: max_bytes,
                });
            }
            tokio::fs::read(&path)
                .await
                .map(Bytes::from)
                .map_err(|source| verge_images::Error::Io {
                    path: path.display().to_string(),
                    source,
                })
        })
    }
}

/// Gives a control plane over `data_dir` the image service: the image functions among its
/// builtins and `/img` among its mounts. Returns the image environment (for a local node).
pub fn wire(
    cfg: &mut verge_cloud::CloudConfig,
    data_dir: &Path,
    args: &ImageServiceArgs,
    dev: bool,
) -> Result<Arc<ImageEnv>> {
    let env = cloud_env(data_dir, args)?;
    // The cloud installs its buckets here: the functions' `output` and `s3://` sources.
    cfg.objects = env.objects.clone();
    cfg.builtins = Arc::new(crate::builtins::registry(env.clone()));
    cfg.mounts = vec![img_mount(data_dir, args, env.clone(), dev)?];
    Ok(env)
}

/// The image environment of a control plane over `data_dir`.
fn cloud_env(data_dir: &Path, args: &ImageServiceArgs) -> Result<Arc<ImageEnv>> {
    let policy = FetchPolicy {
        allow_hosts: args.img_allow_hosts.clone(),
        allow_networks: args.img_allow_networks.clone(),
        ..FetchPolicy::default()
    };
    let fetcher = Fetcher::new(policy).map_err(|e| anyhow!("{e}"))?;
    let store = verge_cloud::artifacts::ArtifactStore::open(data_dir, u64::MAX)
        .map_err(|e| anyhow!("{e}"))?;
    let mut env = ImageEnv::new(fetcher);
    env.artifacts = Some(Arc::new(CloudArtifacts(store)));
    Ok(Arc::new(env))
}

/// The `/img` service of a control plane over `data_dir`, to mount at `/img`.
/// `dev`: without `--img-watermark`, the `wm` option draws a built-in "verge" mark.
fn img_mount(
    data_dir: &Path,
    args: &ImageServiceArgs,
    env: Arc<ImageEnv>,
    dev: bool,
) -> Result<verge_cloud::Mount> {
    let keys_file = args
        .img_keys_file
        .clone()
        .unwrap_or_else(|| data_dir.join(KEYS_FILE));
    let keys = load_or_create_keys(&keys_file)?;
    let mut cfg = ImgConfig::new(keys);
    cfg.allow_unsigned = args.img_allow_unsigned;
    if let Some(w) = &args.img_watermark {
        cfg.watermark =
            Some(std::fs::read(w).with_context(|| format!("--img-watermark {}", w.display()))?);
    } else if dev {
        cfg.watermark = Some(dev_watermark()?);
    }
    if args.img_cache_mb > 0 {
        cfg.cache_dir = Some(data_dir.join("img-cache"));
        cfg.cache_max_bytes = args.img_cache_mb.saturating_mul(1 << 20);
    }
    let svc = ImgService::new(cfg, env).map_err(|e| anyhow!("{e}"))?;
    Ok(verge_cloud::Mount {
        prefix: "/img".to_string(),
        router: svc.router(),
        paths: verge_images::server::openapi_paths(),
    })
}

/// The `verge dev` watermark: "verge" in white with a dark outline on transparency.
fn dev_watermark() -> Result<Vec<u8>> {
    let spec: verge_imaging::ComposeSpec = serde_json::from_value(serde_json::json!({
        "width": 300, "height": 110, "background": "transparent",
        "layers": [{"type": "text", "text": "verge", "x": 14, "y": 4, "size": 88,
                    "color": "#ffffffd0", "strokeWidth": 3, "strokeColor": "#00000090"}],
        "output": {"format": "png"}
    }))?;
    Ok(
        verge_imaging::compose(&spec, &verge_imaging::NoAssets, &Default::default())
            .map_err(|e| anyhow!("dev watermark: {e}"))?
            .bytes,
    )
}

/// Reads a keys file, creating it (0600, one random pair) when missing.
pub fn load_or_create_keys(path: &Path) -> Result<SigningKeys> {
    if !path.exists() {
        use rand::RngCore;
        let mut key = [0u8; 32];
        let mut salt = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut key);
        rand::thread_rng().fill_bytes(&mut salt);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let line = format!("{}:{}\n", hex::encode(key), hex::encode(salt));
        write_private(path, line.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    read_keys(path)
}

/// Reads a keys file (`KEY_HEX:SALT_HEX` per line; `#` comments).
pub fn read_keys(path: &Path) -> Result<SigningKeys> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, s) = line
            .split_once(':')
            .ok_or_else(|| anyhow!("{}:{}: expected KEY_HEX:SALT_HEX", path.display(), i + 1))?;
        pairs.push((k.trim().to_string(), s.trim().to_string()));
    }
    if pairs.is_empty() {
        bail!("{}: no KEY_HEX:SALT_HEX line", path.display());
    }
    SigningKeys::from_hex(&pairs).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// The Function resource name of a builtin (`image.resize` → `image-resize`).
pub fn function_name(builtin: &str) -> String {
    builtin.replace('.', "-")
}

/// Creates (or leaves as they are) one Function per image builtin, cloud-placed unless
/// `node_selector` is given. Returns how many were created.
pub async fn install(client: &Client, node_selector: Option<&str>) -> Result<usize> {
    let mut created = 0;
    let placement = match node_selector {
        None => serde_json::json!({"cloud": true}),
        Some(sel) => {
            let mut m = serde_json::Map::new();
            for part in sel.split(',').filter(|p| !p.is_empty()) {
                let (k, v) = part
                    .split_once('=')
                    .ok_or_else(|| anyhow!("--node-selector: expected key=value,..."))?;
                m.insert(k.to_string(), serde_json::Value::String(v.to_string()));
            }
            serde_json::json!({"nodeSelector": m})
        }
    };
    for (builtin, _) in FUNCTIONS {
        let name = function_name(builtin);
        let path = format!("/api/v1/functions/{name}");
        if client
            .send_json::<serde_json::Value>(reqwest::Method::GET, &path, None)
            .await
            .is_ok()
        {
            continue;
        }
        let body = serde_json::json!({
            "apiVersion": verge_api::API_VERSION,
            "kind": "Function",
            "metadata": {"name": name, "labels": {(verge_api::names::LABEL_PACK): "images"}},
            "spec": {"runtime": "builtin", "handler": builtin, "placement": placement,
                     "resources": {"timeoutSeconds": 60}},
        });
        client
            .send_json::<serde_json::Value>(reqwest::Method::POST, "/api/v1/functions", Some(&body))
            .await
            .with_context(|| format!("creating function {name}"))?;
        created += 1;
    }
    Ok(created)
}

/// `verge image ...`: the service commands, and one subcommand per image operation run
/// locally (`verge image resize --data '{"width": 300}' in.jpg out.webp`).
#[derive(Debug)]
pub enum ImageCmd {
    Service(ServiceCmd),
    Local(LocalOp),
}

/// `verge image url|install|list`.
#[derive(clap::Subcommand, Debug)]
pub enum ServiceCmd {
    /// Print a signed `/img` URL (imgproxy format).
    Url {
        /// Processing options, imgproxy style: `rs:fit:300:300/q:80` (may be empty).
        options: String,
        /// Source: https://..., artifact://SHA256, or fn://image.qrcode?{"payload":"..."}.
        source: String,
        /// Output extension (png, jpg, webp); default from the Accept header.
        #[arg(long)]
        ext: Option<String>,
        /// Encode the source as URL-safe base64 instead of `plain/...`.
        #[arg(long)]
        base64: bool,
        /// Keys file (default: ~/.verge/dev/img-keys, what `verge dev` uses).
        #[arg(long, conflicts_with_all = ["key", "salt"])]
        keys_file: Option<PathBuf>,
        /// Signing key, hex (with --salt).
        #[arg(long, requires = "salt", env = "VERGE_IMG_KEY", hide_env_values = true)]
        key: Option<String>,
        /// Signing salt, hex (with --key).
        #[arg(long, requires = "key", env = "VERGE_IMG_SALT", hide_env_values = true)]
        salt: Option<String>,
        /// Unsigned (`/unsafe/...`; the server must allow it).
        #[arg(long, conflicts_with_all = ["keys_file", "key", "salt"])]
        unsigned: bool,
        /// Server base URL (default: the configured server).
        #[arg(long)]
        base: Option<String>,
    },
    /// Create the image functions (`image-resize`, `image-qrcode`, `video-frame`, ...) as
    /// Function resources, cloud-placed unless --node-selector is given.
    Install {
        /// Place them on edge nodes with these labels (`key=value,...`).
        #[arg(long)]
        node_selector: Option<String>,
    },
    /// List the image functions and their inputs.
    List,
}

/// `verge image OP [--data JSON|@FILE] [IN] OUT`: one image function, run here.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalOp {
    /// The builtin (`image.resize`).
    pub function: &'static str,
    pub data: Option<String>,
    pub input: Option<PathBuf>,
    pub output: PathBuf,
}

/// The subcommand name of a builtin: `image.resize` → `resize`, `video.frame` →
/// `video-frame`.
fn op_name(function: &'static str) -> &'static str {
    match function {
        "video.frame" => "video-frame",
        f => f.strip_prefix("image.").unwrap_or(f),
    }
}

/// Other names an operation answers to: its builtin name (and `frame`).
fn op_aliases(function: &'static str) -> Vec<&'static str> {
    let mut v = vec![function];
    if function == "video.frame" {
        v.push("frame");
    }
    v
}

/// The builtin behind subcommand `name`.
fn local_function(name: &str) -> Option<&'static str> {
    FUNCTIONS
        .iter()
        .map(|(f, _)| *f)
        .find(|f| op_name(f) == name || op_aliases(f).contains(&name))
}

/// Whether an operation reads an input file (qrcode and compose make one from nothing).
fn takes_input(function: &str) -> bool {
    !matches!(function, "image.qrcode" | "image.compose")
}

/// The clap command of one local operation.
fn local_command(function: &'static str, inputs: &'static str) -> clap::Command {
    use clap::{Arg, value_parser};
    let source = if function == "video.frame" {
        "video"
    } else {
        "image"
    };
    let mut cmd = clap::Command::new(op_name(function))
        .about(format!("Run {function} here: {inputs}"))
        .long_about(format!(
            "Run the image function {function} on this machine (no server needed).\n\n\
             Inputs (--data, a JSON object): {inputs}.{}\n\
             The output file's extension (jpg, png, webp) picks the format unless \
             --data sets output.format.",
            if takes_input(function) {
                format!(" IN is the {source}; give it as IN or in --data, not both.")
            } else {
                String::new()
            }
        ))
        .visible_aliases(op_aliases(function))
        .arg(
            Arg::new("data")
                .short('d')
                .long("data")
                .value_name("JSON|@FILE")
                .help("The function's input: a JSON object, or @FILE holding one"),
        );
    if takes_input(function) {
        cmd = cmd.arg(
            Arg::new("in")
                .value_name("IN")
                .required(true)
                .value_parser(value_parser!(PathBuf))
                .help(format!("The {source} file")),
        );
    }
    cmd.arg(
        Arg::new("out")
            .value_name("OUT")
            .required(true)
            .value_parser(value_parser!(PathBuf))
            .help("Where to write the result (`-`: standard output)"),
    )
}

impl clap::FromArgMatches for ImageCmd {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        if let Some((name, sub)) = m.subcommand()
            && let Some(function) = local_function(name)
        {
            let output = sub.get_one::<PathBuf>("out").cloned().ok_or_else(|| {
                clap::Error::raw(clap::error::ErrorKind::MissingRequiredArgument, "OUT")
            })?;
            return Ok(ImageCmd::Local(LocalOp {
                function,
                data: sub.get_one::<String>("data").cloned(),
                input: if takes_input(function) {
                    sub.get_one::<PathBuf>("in").cloned()
                } else {
                    None
                },
                output,
            }));
        }
        ServiceCmd::from_arg_matches(m).map(ImageCmd::Service)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Subcommand for ImageCmd {
    fn augment_subcommands(cmd: clap::Command) -> clap::Command {
        FUNCTIONS.iter().fold(
            ServiceCmd::augment_subcommands(cmd),
            |cmd, (function, inputs)| cmd.subcommand(local_command(function, inputs)),
        )
    }

    fn augment_subcommands_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_subcommands(cmd)
    }

    fn has_subcommand(name: &str) -> bool {
        local_function(name).is_some() || ServiceCmd::has_subcommand(name)
    }
}

/// Runs `verge image ...`; `client` is built on demand (only some commands need it).
pub async fn run(cmd: &ImageCmd, client: impl FnOnce() -> Result<Client>) -> Result<()> {
    let cmd = match cmd {
        ImageCmd::Local(op) => return run_local(op).await,
        ImageCmd::Service(c) => c,
    };
    match cmd {
        ServiceCmd::Url {
            options,
            source,
            ext,
            base64,
            keys_file,
            key,
            salt,
            unsigned,
            base,
        } => {
            let keys = if *unsigned {
                SigningKeys::from_hex(&[]).map_err(|e| anyhow!("{e}"))?
            } else if let (Some(k), Some(s)) = (key, salt) {
                SigningKeys::from_hex(&[(k.clone(), s.clone())]).map_err(|e| anyhow!("{e}"))?
            } else {
                let path = match keys_file {
                    Some(p) => p.clone(),
                    None => crate::dev::dev_home()?.join(KEYS_FILE),
                };
                read_keys(&path).context("no signing keys: give --keys-file or --key/--salt")?
            };
            let path = verge_images::imgproxy::build_path(
                &keys,
                options.trim_matches('/'),
                source,
                ext.as_deref(),
                *base64,
            )
            .map_err(|e| anyhow!("{e}"))?;
            let base = match base {
                Some(b) => b.clone(),
                None => client().map(|c| c.server().to_string()).unwrap_or_default(),
            };
            outln!("{}/img{path}", base.trim_end_matches('/'));
            Ok(())
        }
        ServiceCmd::Install { node_selector } => {
            let c = client()?;
            let n = install(&c, node_selector.as_deref()).await?;
            outln!(
                "{n} image functions created ({} in the pack); `verge get functions` lists them.",
                FUNCTIONS.len()
            );
            Ok(())
        }
        ServiceCmd::List => {
            for (name, summary) in FUNCTIONS {
                outln!("{:<16} {:<18} {summary}", name, function_name(name));
            }
            outln!();
            outln!(
                "Run one here: `verge image OP [--data JSON] [IN] OUT` (`verge image OP --help`)."
            );
            Ok(())
        }
    }
}

/// `verge image OP [--data JSON|@FILE] [IN] OUT`.
async fn run_local(op: &LocalOp) -> Result<()> {
    let name = op.function.to_string();
    let out = op.output.clone();
    let mut input = match &op.data {
        None => serde_json::Map::new(),
        Some(d) => {
            let text = match d.strip_prefix('@') {
                Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?,
                None => d.clone(),
            };
            match serde_json::from_str(&text).context("--data: not JSON")? {
                serde_json::Value::Object(m) => m,
                _ => bail!("--data: expected a JSON object"),
            }
        }
    };
    let env = ImageEnv::new(Fetcher::new(FetchPolicy::default()).map_err(|e| anyhow!("{e}"))?);
    let inline = match &op.input {
        Some(p) => {
            let max = if name == "video.frame" {
                env.video.max_input_bytes
            } else {
                env.limits.max_input_bytes as u64
            };
            let len = std::fs::metadata(p)
                .with_context(|| format!("reading {}", p.display()))?
                .len();
            if len > max {
                bail!("{}: {len} bytes, more than the limit of {max}", p.display());
            }
            Some(Bytes::from(std::fs::read(p)?))
        }
        None => None,
    };
    // The output file's extension picks the format unless the input says otherwise.
    if produces_image(&name) {
        format_from_out_file(&mut input, &out);
    }
    if inline.is_some() {
        // The file is the main source; the other fields stay options.
        let key = if name == "video.frame" {
            "video"
        } else {
            "image"
        };
        if input.contains_key(key) {
            bail!("give the {key} either as IN or in --data, not both");
        }
    }
    let n = name.clone();
    let result = tokio::task::spawn_blocking(move || {
        verge_images::functions::call_with(&env, &n, input, inline)
    })
    .await?
    .map_err(|e| anyhow!("{name}: {e}"))?;
    match result {
        verge_runtime::Output::Bytes { content_type, data } => {
            if out.as_os_str() == "-" {
                use std::io::Write;
                std::io::stdout().write_all(&data)?;
            } else {
                std::fs::write(&out, &data)
                    .with_context(|| format!("writing {}", out.display()))?;
                eprintln!("{} ({content_type}, {} bytes)", out.display(), data.len());
            }
        }
        verge_runtime::Output::Json(v) => {
            let text = serde_json::to_string_pretty(&v)?;
            if out.as_os_str() == "-" {
                outln!("{text}");
            } else {
                std::fs::write(&out, text)?;
            }
        }
    }
    Ok(())
}

/// The output format a file name asks for by its extension (`cover.jpg` → `jpeg`).
fn format_of_path(path: &Path) -> Option<&'static str> {
    let ext = path.extension()?.to_str()?;
    match ext.to_ascii_lowercase().as_str() {
        "jpg" | "jpeg" => Some("jpeg"),
        "png" => Some("png"),
        "webp" => Some("webp"),
        _ => None,
    }
}

/// Whether the builtin `handler` is an image function whose answer is one image, encoded
/// as its `output.format` says (`image.info` and `image.frames` answer JSON).
fn produces_image(handler: &str) -> bool {
    FUNCTIONS.iter().any(|(n, _)| *n == handler)
        && !matches!(handler, "image.info" | "image.frames")
}

/// Sets `output.format` in an image function's input from the output file's extension
/// (`--out cover.jpg` → `jpeg`) unless the input names a format itself; a file name
/// without an image extension changes nothing. Returns whether it set one.
fn format_from_out_file(
    input: &mut serde_json::Map<String, serde_json::Value>,
    out: &Path,
) -> bool {
    let Some(fmt) = format_of_path(out) else {
        return false;
    };
    let output = input
        .entry("output")
        .or_insert_with(|| serde_json::json!({}));
    match output.as_object_mut() {
        Some(o) if !o.contains_key("format") => {
            o.insert("format".into(), fmt.into());
            true
        }
        _ => false,
    }
}

/// `verge invoke NAME --out FILE` with a JSON body: when NAME is one of the image
/// functions (a builtin whose answer is an image) and the input names no
/// `output.format`, the file's extension picks it, as `verge image OP IN OUT` does. Any
/// other function, body or file name is sent as it is.
pub async fn invoke_body_for_out_file(
    client: &Client,
    function: &str,
    body: Vec<u8>,
    out: &Path,
) -> Vec<u8> {
    if format_of_path(out).is_none() {
        return body;
    }
    let Ok(serde_json::Value::Object(mut input)) = serde_json::from_slice(&body) else {
        return body;
    };
    // Only the function itself says whether it is an image function; if it cannot be
    // read, the invoke reports why.
    let Ok(f) = client
        .send_json::<serde_json::Value>(
            reqwest::Method::GET,
            &format!("/api/v1/functions/{function}"),
            None,
        )
        .await
    else {
        return body;
    };
    let builtin_image = f["spec"]["runtime"] == "builtin"
        && f["spec"]["handler"].as_str().is_some_and(produces_image);
    if builtin_image && format_from_out_file(&mut input, out) {
        serde_json::to_vec(&input).unwrap_or(body)
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn the_extension_picks_the_format() {
        for (file, fmt) in [
            ("cover.jpg", "jpeg"),
            ("COVER.JPEG", "jpeg"),
            ("a/b/qr.png", "png"),
            ("frame.webp", "webp"),
        ] {
            let mut input = map(json!({"width": 10}));
            assert!(format_from_out_file(&mut input, Path::new(file)), "{file}");
            assert_eq!(input["output"], json!({"format": fmt}), "{file}");
            assert_eq!(input["width"], json!(10));
        }
    }

    #[test]
    fn a_format_in_the_input_wins_and_other_options_stay() {
        let mut input = map(json!({"output": {"format": "png"}}));
        assert!(!format_from_out_file(&mut input, Path::new("cover.jpg")));
        assert_eq!(input["output"], json!({"format": "png"}));

        let mut input = map(json!({"output": {"quality": 80}}));
        assert!(format_from_out_file(&mut input, Path::new("cover.jpg")));
        assert_eq!(input["output"], json!({"format": "jpeg", "quality": 80}));
    }

    #[test]
    fn other_file_names_change_nothing() {
        for file in ["out", "out.json", "out.gif", "-", "photo.jpg.txt"] {
            let mut input = map(json!({"width": 10}));
            assert!(!format_from_out_file(&mut input, Path::new(file)), "{file}");
            assert_eq!(input, map(json!({"width": 10})), "{file}");
        }
    }

    #[test]
    fn only_functions_that_answer_one_image_take_a_format() {
        for f in [
            "image.compose",
            "image.qrcode",
            "image.pipeline",
            "video.frame",
        ] {
            assert!(produces_image(f), "{f}");
        }
        for f in ["image.info", "image.frames", "handler.main", "image.nope"] {
            assert!(!produces_image(f), "{f}");
        }
    }
}
