//! The builtin image functions (`image.resize`, `image.qrcode`, `video.frame`, ...), for
//! the function runtime of the cloud and of edge nodes, and for `verge image`.
//!
//! Every function takes a JSON object. Images come from a *source*, written as
//! `{"url": "https://..."}` (fetched through the SSRF-guarded [`Fetcher`]), `{"base64": "..."}`,
//! `{"artifact": "<sha256>"}` (the artifact store), or a bare `"https://..."` string. When the
//! invocation body is raw bytes (`verge invoke NAME --data @photo.jpg --content-type image/jpeg`)
//! those bytes are the main source and the options take their defaults.
//!
//! Image results are returned as bytes with their MIME type; `image.info` and `image.frames`
//! return JSON. Errors name the input field (`input.width`, `input.image.url`, ...).
//!
//! Process → store: every function accepts `output: {bucket, key, contentType?}` (beside
//! the encoder's `format`, `quality`, ...): the result is then stored as that object
//! through the host's [`verge_runtime::ObjectSink`] and the function returns
//! `{bucket, key, eTag, size, url}`. Sources may be objects too: `"s3://BUCKET/KEY"` or
//! `{"s3": "s3://BUCKET/KEY"}`. Without a sink (an edge node) both are refused, naming
//! the field.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use verge_imaging::{Encoded, Limits, OutputOptions, Pipeline, VideoOptions};
use verge_runtime::objects::parse_s3_url;
use verge_runtime::{BuiltinError, Input, ObjectSlot, Output, Registry};

use crate::fetch::Fetcher;
use crate::{Error, Result};

/// Reads artifacts by digest: the cloud's store, or the cloud seen from an edge node.
pub trait ArtifactSource: Send + Sync {
    /// The artifact's bytes; more than `max_bytes` is [`Error::SourceTooLarge`].
    fn read<'a>(&'a self, sha256: &'a str, max_bytes: u64) -> BoxFuture<'a, Result<Bytes>>;
}

/// What the image functions need from their host.
#[derive(Clone)]
pub struct ImageEnv {
    /// Fetches `{"url": ...}` sources (SSRF guard, size cap, timeout).
    pub fetcher: Fetcher,
    /// Resolves `{"artifact": ...}` sources; `None`: such sources are refused.
    pub artifacts: Option<Arc<dyn ArtifactSource>>,
    /// Decoding limits (pixels, input bytes, frames).
    pub limits: Limits,
    /// ffmpeg, its timeout and memory limit, the largest video.
    pub video: VideoOptions,
    /// The buckets (`output.bucket`, `s3://` sources), once the host installs them; an
    /// empty slot (an edge node): refused.
    pub objects: Arc<ObjectSlot>,
}

impl ImageEnv {
    /// Default limits, the default fetch policy (public addresses only), no artifacts.
    pub fn new(fetcher: Fetcher) -> Self {
        ImageEnv {
            fetcher,
            artifacts: None,
            limits: Limits::default(),
            video: VideoOptions::default(),
            objects: Arc::new(ObjectSlot::new()),
        }
    }
}

/// The builtin image functions: name and one-line summary.
pub const FUNCTIONS: &[(&str, &str)] = &[
    ("image.info", "format, size, orientation, frames of {image}"),
    (
        "image.resize",
        "{image, width, height, fit: fit|fill|force, gravity, output}",
    ),
    (
        "image.crop",
        "{image, width, height, x, y | gravity (smart = most detail), output}",
    ),
    ("image.rotate", "{image, degrees: 90|180|270, output}"),
    ("image.flip", "{image, direction: horizontal|vertical|both}"),
    (
        "image.watermark",
        "{image, watermark: source, position, offsetX, offsetY, opacity, scale, tile}",
    ),
    (
        "image.text",
        "{image, text, size, color, strokeColor, strokeWidth, position}",
    ),
    ("image.blur", "{image, sigma, output}"),
    ("image.sharpen", "{image, sigma, output}"),
    ("image.grayscale", "{image, output}"),
    (
        "image.convert",
        "{image, output: {format, quality, maxBytes, lossless}}",
    ),
    (
        "image.strip",
        "{image, quality}: re-encoded without metadata",
    ),
    (
        "image.pipeline",
        "{image, ops: [...], output, assets: {name: source}}: one decode, one encode",
    ),
    (
        "image.compose",
        "{width, height, background, backgroundImage, layers, output, assets}",
    ),
    (
        "image.qrcode",
        "{payload, ecLevel, size, margin, dark, light, logo, output, assets}",
    ),
    (
        "image.frames",
        "{image, maxFrames, output}: the frames of an animated GIF",
    ),
    (
        "video.frame",
        "{video: source, at: seconds | \"HH:MM:SS.mmm\", output}",
    ),
];

/// Registers every function of [`FUNCTIONS`] in `registry`.
pub fn register(registry: &mut Registry, env: Arc<ImageEnv>) {
    for (name, _) in FUNCTIONS {
        let env = env.clone();
        let name_owned = name.to_string();
        registry.register(name, move |input| {
            call(&env, &name_owned, input).map_err(|e| to_builtin_error(&e))
        });
    }
}

/// How a failed image function is reported by the runtime: the error's reason as the
/// type (`SourceForbidden`, `InvalidRequest`, `ImageTooLarge` ...), and its message.
pub fn to_builtin_error(e: &Error) -> BuiltinError {
    BuiltinError::new(e.reason(), e.to_string())
}

/// Runs the image function `name` (one of [`FUNCTIONS`]) on `input`, on the calling
/// thread: sources are fetched by blocking on the current tokio runtime, so call it from
/// a blocking-pool thread (as the runtime does for builtins).
pub fn call(env: &ImageEnv, name: &str, input: Input) -> Result<Output> {
    match input {
        Input::Json(Value::Object(m)) => call_with(env, name, m, None),
        Input::Json(_) => Err(Error::invalid("input", "expected a JSON object")),
        Input::Bytes { data, .. } => call_with(env, name, Map::new(), Some(data)),
    }
}

/// [`call`] with the options in `args` and the main source (`image`, or `video` for
/// `video.frame`) given as bytes (`inline`) when `args` names none — how `verge image OP IN
/// OUT` passes a local file without re-encoding it.
pub fn call_with(
    env: &ImageEnv,
    name: &str,
    args: Map<String, Value>,
    inline: Option<Bytes>,
) -> Result<Output> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| Error::Config {
        field: "runtime".into(),
        message: "image functions need a tokio runtime".into(),
    })?;
    let mut args = args;
    apply_object_event(name, &mut args)?;
    let target = take_store_target(&mut args)?;
    let sink = match &target {
        Some(_) => Some(env.objects.get().ok_or_else(|| {
            Error::invalid(
                "input.output",
                "storing the result in a bucket (output.bucket, output.key) needs the \
                 function placed in the cloud (spec.placement.cloud: true); this node has no \
                 buckets",
            )
        })?),
        None => None,
    };
    let cx = Cx {
        env,
        handle: handle.clone(),
        inline,
    };
    let out = cx.run(name, args)?;
    let (Some(t), Some(sink)) = (target, sink) else {
        return Ok(out);
    };
    let (content_type, data) = match out {
        Output::Bytes { content_type, data } => (content_type, data),
        Output::Json(v) => (
            "application/json".to_string(),
            Bytes::from(
                serde_json::to_vec(&v).map_err(|e| Error::invalid("output", e.to_string()))?,
            ),
        ),
    };
    let content_type = t.content_type.unwrap_or(content_type);
    let stored = handle
        .block_on(sink.put(&t.bucket, &t.key, &content_type, data))
        .map_err(|e| Error::Object {
            field: "input.output".into(),
            kind: e.kind,
            message: e.message,
        })?;
    Ok(Output::Json(serde_json::json!({
        "bucket": stored.bucket,
        "key": stored.key,
        "eTag": stored.etag,
        "size": stored.size,
        "url": stored.url,
        "contentType": content_type,
    })))
}

/// An object event in the input (what an event Trigger with an `input` hands its
/// function: that input plus `event`, the CloudEvent): the event's object becomes the
/// source (`image`, or `video` for `video.frame`) unless one is given, and `output.key`
/// may use `{key}`, `{name}` (the last path segment), `{stem}` (`name` without its
/// extension), `{ext}` and `{dir}` (the key up to the last `/`) of the event's key. Pure.
pub fn apply_object_event(function: &str, args: &mut Map<String, Value>) -> Result<()> {
    let Some(event) = args.remove("event") else {
        return Ok(());
    };
    let text = |path: &str| {
        event
            .pointer(path)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (Some(bucket), Some(key)) = (text("/data/bucket"), text("/data/key")) else {
        return Err(Error::invalid(
            "input.event",
            "expected an object event (a CloudEvent with data.bucket and data.key)",
        ));
    };
    if text("/type").as_deref() == Some("dev.verge.object.deleted") {
        return Err(Error::invalid(
            "input.event",
            format!("object {key:?} was deleted; there is nothing to process"),
        ));
    }
    let field = if function == "video.frame" {
        "video"
    } else {
        "image"
    };
    if !args.contains_key(field) {
        args.insert(
            field.to_owned(),
            Value::String(format!("s3://{bucket}/{key}")),
        );
    }
    if let Some(Value::String(template)) = args.get_mut("output").and_then(|o| o.get_mut("key")) {
        *template = expand_key_template(template, &key);
    }
    Ok(())
}

/// `{key}`, `{name}`, `{stem}`, `{ext}`, `{dir}` of `key` substituted into `template`.
pub fn expand_key_template(template: &str, key: &str) -> String {
    let name = key.rsplit('/').next().unwrap_or(key);
    let dir = key.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, e)) if !s.is_empty() => (s, e),
        _ => (name, ""),
    };
    template
        .replace("{key}", key)
        .replace("{name}", name)
        .replace("{stem}", stem)
        .replace("{ext}", ext)
        .replace("{dir}", dir)
}

/// Where a result is to be stored: `output.bucket`, `output.key`, `output.contentType`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreTarget {
    pub bucket: String,
    pub key: String,
    pub content_type: Option<String>,
}

/// Takes `bucket`, `key` and `contentType` out of `args.output` (leaving the encoder's
/// options; an `output` left empty is removed). `None` when neither bucket nor key is
/// given.
pub fn take_store_target(args: &mut Map<String, Value>) -> Result<Option<StoreTarget>> {
    let Some(Value::Object(out)) = args.get_mut("output") else {
        return Ok(None);
    };
    if !out.contains_key("bucket") && !out.contains_key("key") {
        if out.contains_key("contentType") {
            return Err(Error::invalid(
                "input.output.contentType",
                "only with output.bucket and output.key",
            ));
        }
        return Ok(None);
    }
    let mut text = |name: &str, required: bool| -> Result<Option<String>> {
        match out.remove(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
            None if !required => Ok(None),
            None => Err(Error::invalid(format!("input.output.{name}"), "missing")),
            Some(_) => Err(Error::invalid(
                format!("input.output.{name}"),
                "expected a non-empty string",
            )),
        }
    };
    let bucket = text("bucket", true)?.unwrap_or_default();
    let key = text("key", true)?.unwrap_or_default();
    let content_type = text("contentType", false)?;
    if out.is_empty() {
        args.remove("output");
    }
    Ok(Some(StoreTarget {
        bucket,
        key,
        content_type,
    }))
}

/// One call's context.
struct Cx<'a> {
    env: &'a ImageEnv,
    handle: tokio::runtime::Handle,
    inline: Option<Bytes>,
}

impl Cx<'_> {
    fn run(&self, name: &str, mut args: Map<String, Value>) -> Result<Output> {
        match name {
            "image.info" => {
                let img = self.source(&mut args, "image")?;
                no_extra(&args)?;
                let info = verge_imaging::info(&img, &self.env.limits)?;
                Ok(Output::Json(
                    serde_json::to_value(info)
                        .map_err(|e| Error::invalid("output", e.to_string()))?,
                ))
            }
            "image.resize" => self.single_op(args, "resize"),
            "image.crop" => self.single_op(args, "crop"),
            "image.rotate" => self.single_op(args, "rotate"),
            "image.flip" => self.single_op(args, "flip"),
            "image.text" => self.single_op(args, "text"),
            "image.blur" => self.single_op(args, "blur"),
            "image.sharpen" => self.single_op(args, "sharpen"),
            "image.grayscale" => self.single_op(args, "grayscale"),
            "image.watermark" => {
                let img = self.source(&mut args, "image")?;
                let mark = self.source(&mut args, "watermark")?;
                let output = output_options(&mut args)?;
                args.insert("asset".into(), Value::String("watermark".into()));
                args.insert("op".into(), Value::String("watermark".into()));
                let op = from_json::<verge_imaging::Op>("input", Value::Object(args))?;
                let assets = BTreeMap::from([("watermark".to_string(), mark.to_vec())]);
                let pipeline = Pipeline { ops: vec![op] };
                self.encoded(verge_imaging::process_with_assets(
                    &img,
                    &pipeline,
                    &output,
                    &self.env.limits,
                    &assets,
                )?)
            }
            "image.convert" => {
                let img = self.source(&mut args, "image")?;
                let output = output_options(&mut args)?;
                no_extra(&args)?;
                self.encoded(verge_imaging::process(
                    &img,
                    &Pipeline::default(),
                    &output,
                    &self.env.limits,
                )?)
            }
            "image.strip" => {
                let img = self.source(&mut args, "image")?;
                let quality = match args.remove("quality") {
                    None => 90,
                    Some(v) => v
                        .as_u64()
                        .filter(|q| (1..=100).contains(q))
                        .ok_or_else(|| Error::invalid("input.quality", "expected 1..=100"))?
                        as u8,
                };
                no_extra(&args)?;
                self.encoded(verge_imaging::strip_metadata(
                    &img,
                    quality,
                    &self.env.limits,
                )?)
            }
            "image.pipeline" => {
                let img = self.source(&mut args, "image")?;
                let output = output_options(&mut args)?;
                let assets = self.assets(&mut args)?;
                let ops = args
                    .remove("ops")
                    .ok_or_else(|| Error::invalid("input.ops", "missing (a list of operations)"))?;
                no_extra(&args)?;
                let pipeline = Pipeline {
                    ops: from_json("input.ops", ops)?,
                };
                self.encoded(verge_imaging::process_with_assets(
                    &img,
                    &pipeline,
                    &output,
                    &self.env.limits,
                    &assets,
                )?)
            }
            "image.compose" => {
                let assets = self.assets(&mut args)?;
                let spec: verge_imaging::ComposeSpec = from_json("input", Value::Object(args))?;
                self.encoded(verge_imaging::compose(&spec, &assets, &self.env.limits)?)
            }
            "image.qrcode" => {
                let assets = self.assets(&mut args)?;
                let spec: verge_imaging::QrSpec = from_json("input", Value::Object(args))?;
                self.encoded(verge_imaging::qrcode(&spec, &assets, &self.env.limits)?)
            }
            "image.frames" => {
                let img = self.source(&mut args, "image")?;
                let output = match args.contains_key("output") {
                    true => output_options(&mut args)?,
                    false => OutputOptions::new(verge_imaging::Format::Png),
                };
                let max = match args.remove("maxFrames") {
                    None => 100,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| Error::invalid("input.maxFrames", "expected ≥ 1"))?
                        as usize,
                };
                no_extra(&args)?;
                let frames = verge_imaging::gif_frames(&img, max, &output, &self.env.limits)?;
                let b64 = base64::engine::general_purpose::STANDARD;
                let list: Vec<Value> = frames
                    .into_iter()
                    .map(|f| {
                        serde_json::json!({
                            "index": f.index,
                            "delayMs": f.delay_ms,
                            "width": f.image.width,
                            "height": f.image.height,
                            "contentType": f.image.format.mime(),
                            "base64": b64.encode(&f.image.bytes),
                        })
                    })
                    .collect();
                Ok(Output::Json(serde_json::json!({ "frames": list })))
            }
            "video.frame" => {
                let video = self.source_bounded(
                    &mut args,
                    "video",
                    self.env.video.max_input_bytes as usize,
                )?;
                let at = match args.remove("at") {
                    None => Duration::ZERO,
                    Some(v) => parse_timestamp(&v)?,
                };
                let mut opts = self.env.video.clone();
                if args.contains_key("output") {
                    opts.output = output_options(&mut args)?;
                }
                no_extra(&args)?;
                self.encoded(verge_imaging::video_frame(
                    verge_imaging::VideoSource::Bytes(&video),
                    at,
                    &opts,
                    &self.env.limits,
                )?)
            }
            other => Err(Error::invalid(
                "function",
                format!("no image function named `{other}`"),
            )),
        }
    }

    /// A function made of one pipeline operation: the input's fields (minus `image` and
    /// `output`) are the operation's.
    fn single_op(&self, mut args: Map<String, Value>, op: &str) -> Result<Output> {
        let img = self.source(&mut args, "image")?;
        let output = output_options(&mut args)?;
        args.insert("op".into(), Value::String(op.into()));
        let op = from_json::<verge_imaging::Op>("input", Value::Object(args))?;
        let pipeline = Pipeline { ops: vec![op] };
        self.encoded(verge_imaging::process(
            &img,
            &pipeline,
            &output,
            &self.env.limits,
        )?)
    }

    fn encoded(&self, e: Encoded) -> Result<Output> {
        Ok(Output::Bytes {
            content_type: e.format.mime().to_string(),
            data: Bytes::from(e.bytes),
        })
    }

    /// The named assets (`{"assets": {"logo": source, ...}}`), fetched.
    fn assets(&self, args: &mut Map<String, Value>) -> Result<BTreeMap<String, Vec<u8>>> {
        let Some(v) = args.remove("assets") else {
            return Ok(BTreeMap::new());
        };
        let Value::Object(map) = v else {
            return Err(Error::invalid(
                "input.assets",
                "expected an object of name: source",
            ));
        };
        if map.len() > MAX_ASSETS {
            return Err(Error::invalid(
                "input.assets",
                format!("{} assets, more than {MAX_ASSETS}", map.len()),
            ));
        }
        let mut out = BTreeMap::new();
        for (name, src) in map {
            let field = format!("input.assets.{name}");
            let bytes = self.resolve(&field, src, self.env.limits.max_input_bytes)?;
            out.insert(name, bytes.to_vec());
        }
        Ok(out)
    }

    fn source(&self, args: &mut Map<String, Value>, field: &str) -> Result<Bytes> {
        self.source_bounded(args, field, self.env.limits.max_input_bytes)
    }

    /// The source in `args[field]`, or the invocation's raw bytes when absent.
    fn source_bounded(
        &self,
        args: &mut Map<String, Value>,
        field: &str,
        max: usize,
    ) -> Result<Bytes> {
        match args.remove(field) {
            Some(v) => self.resolve(&format!("input.{field}"), v, max),
            None => match (&self.inline, field) {
                (Some(b), "image" | "video") => Ok(b.clone()),
                _ => Err(Error::invalid(
                    format!("input.{field}"),
                    "missing: give {\"url\": ...}, {\"base64\": ...}, {\"artifact\": ...} or \"s3://BUCKET/KEY\"",
                )),
            },
        }
    }

    fn resolve(&self, field: &str, v: Value, max: usize) -> Result<Bytes> {
        let (kind, arg) = match v {
            Value::String(s) if s.starts_with("http://") || s.starts_with("https://") => {
                ("url".to_string(), s)
            }
            Value::String(s) if s.starts_with("s3://") => ("s3".to_string(), s),
            Value::Object(m) if m.len() == 1 => {
                let (k, v) = m.into_iter().next().expect("one entry");
                match v {
                    Value::String(s) => (k, s),
                    _ => return Err(Error::invalid(format!("{field}.{k}"), "expected a string")),
                }
            }
            _ => {
                return Err(Error::invalid(
                    field,
                    "expected {\"url\": ...}, {\"base64\": ...} or {\"artifact\": ...}",
                ));
            }
        };
        let bytes = match kind.as_str() {
            "url" => {
                let f = self.handle.block_on(self.env.fetcher.fetch(&arg))?;
                f.bytes
            }
            "base64" => {
                if arg.len() / 4 * 3 > max + 3 {
                    return Err(Error::invalid(
                        format!("{field}.base64"),
                        format!("more than {max} bytes"),
                    ));
                }
                let b64 = base64::engine::general_purpose::STANDARD;
                Bytes::from(
                    b64.decode(arg.trim())
                        .map_err(|e| Error::invalid(format!("{field}.base64"), e.to_string()))?,
                )
            }
            "artifact" => {
                let store = self.env.artifacts.as_ref().ok_or_else(|| {
                    Error::invalid(
                        format!("{field}.artifact"),
                        "artifact sources are not available here",
                    )
                })?;
                let sha = arg.strip_prefix("sha256:").unwrap_or(&arg);
                if sha.len() != 64 || !sha.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(Error::invalid(
                        format!("{field}.artifact"),
                        "expected a sha256 digest (64 hex digits)",
                    ));
                }
                self.handle.block_on(store.read(sha, max as u64))?
            }
            "s3" => {
                let sink = self.env.objects.get().ok_or_else(|| {
                    Error::invalid(
                        field,
                        "s3:// sources need the function placed in the cloud \
                         (spec.placement.cloud: true); this node has no buckets",
                    )
                })?;
                let (bucket, key) = parse_s3_url(&arg)
                    .ok_or_else(|| Error::invalid(field, "expected s3://BUCKET/KEY"))?;
                self.handle
                    .block_on(sink.get(bucket, key, max as u64, false))
                    .map_err(|e| Error::Object {
                        field: field.to_string(),
                        kind: e.kind,
                        message: e.message,
                    })?
                    .data
            }
            other => {
                return Err(Error::invalid(
                    format!("{field}.{other}"),
                    "unknown source kind (url, base64, artifact, s3)",
                ));
            }
        };
        if bytes.len() > max {
            return Err(Error::SourceTooLarge {
                url: field.to_string(),
                max: max as u64,
            });
        }
        Ok(bytes)
    }
}

const MAX_ASSETS: usize = 16;

fn output_options(args: &mut Map<String, Value>) -> Result<OutputOptions> {
    match args.remove("output") {
        None => Ok(OutputOptions::default()),
        Some(v) => from_json("input.output", v),
    }
}

fn no_extra(args: &Map<String, Value>) -> Result<()> {
    match args.keys().next() {
        None => Ok(()),
        Some(k) => Err(Error::invalid(format!("input.{k}"), "unknown field")),
    }
}

/// Deserializes `v`, naming the failing path under `field` (`input.ops[1].width`).
fn from_json<T: serde::de::DeserializeOwned>(field: &str, v: Value) -> Result<T> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." || path.is_empty() {
            field.to_string()
        } else if path.starts_with('[') {
            format!("{field}{path}")
        } else {
            format!("{field}.{path}")
        };
        Error::invalid(at, e.into_inner().to_string())
    })
}

/// Longest accepted timestamp (a day).
const MAX_TIMESTAMP: Duration = Duration::from_secs(24 * 3600);

/// `at`: seconds as a number, or `"SS"`, `"MM:SS"`, `"HH:MM:SS"` with optional fraction.
pub fn parse_timestamp(v: &Value) -> Result<Duration> {
    let bad = || {
        Error::invalid(
            "input.at",
            "expected seconds (1.5) or \"HH:MM:SS.mmm\", at most 24 h",
        )
    };
    let secs = match v {
        Value::Number(n) => n.as_f64().ok_or_else(bad)?,
        Value::String(s) if s.len() <= 32 => {
            let mut total = 0.0f64;
            let parts: Vec<&str> = s.split(':').collect();
            if parts.is_empty() || parts.len() > 3 {
                return Err(bad());
            }
            for (i, p) in parts.iter().enumerate() {
                let last = i + 1 == parts.len();
                let x: f64 = if last {
                    p.parse().map_err(|_| bad())?
                } else {
                    p.parse::<u32>().map_err(|_| bad())?.into()
                };
                if !last && x >= 60.0 && i > 0 {
                    return Err(bad());
                }
                total = total * 60.0 + x;
            }
            total
        }
        _ => return Err(bad()),
    };
    if !secs.is_finite() || secs < 0.0 || secs > MAX_TIMESTAMP.as_secs_f64() {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        let d = |v: Value| parse_timestamp(&v).map(|d| d.as_millis());
        assert_eq!(d(serde_json::json!(1.5)).unwrap(), 1500);
        assert_eq!(d(serde_json::json!("00:01:02.5")).unwrap(), 62_500);
        assert_eq!(d(serde_json::json!("2:03")).unwrap(), 123_000);
        assert!(d(serde_json::json!(-1)).is_err());
        assert!(d(serde_json::json!("1:99:00")).is_err());
        assert!(d(serde_json::json!("abc")).is_err());
        assert!(d(serde_json::json!(1e12)).is_err());
        assert!(d(serde_json::json!([1])).is_err());
    }

    #[test]
    fn store_targets_come_out_of_output() {
        let mut ev = serde_json::json!({
            "event": {"type": "dev.verge.object.created",
                      "data": {"bucket": "uploads", "key": "in/photo.jpg"}},
            "output": {"bucket": "published", "key": "{stem}.webp"}
        })
        .as_object()
        .cloned()
        .unwrap();
        apply_object_event("image.pipeline", &mut ev).unwrap();
        assert_eq!(ev["image"], "s3://uploads/in/photo.jpg");
        assert_eq!(ev["output"]["key"], "photo.webp");
        assert!(!ev.contains_key("event"));
        assert_eq!(
            expand_key_template("{dir}/x/{name}", "a/b/c.tar.gz"),
            "a/b/x/c.tar.gz"
        );
        assert_eq!(expand_key_template("{stem}|{ext}", ".hidden"), ".hidden|");
        let mut bad = serde_json::json!({"event": {"data": {}}})
            .as_object()
            .cloned()
            .unwrap();
        assert!(apply_object_event("image.resize", &mut bad).is_err());
        let mut deleted = serde_json::json!({"event": {"type": "dev.verge.object.deleted",
            "data": {"bucket": "b", "key": "k"}}})
        .as_object()
        .cloned()
        .unwrap();
        assert!(apply_object_event("image.resize", &mut deleted).is_err());
        let mut args = serde_json::json!({"width": 10, "output": {"format": "webp",
            "bucket": "b", "key": "k/x.webp", "contentType": "image/x"}});
        let args = args.as_object_mut().unwrap();
        let t = take_store_target(args).unwrap().unwrap();
        assert_eq!(
            t,
            StoreTarget {
                bucket: "b".into(),
                key: "k/x.webp".into(),
                content_type: Some("image/x".into())
            }
        );
        assert_eq!(args["output"], serde_json::json!({"format": "webp"}));
        // Only a target: `output` goes away (functions without encoder options).
        let mut only = serde_json::json!({"output": {"bucket": "b", "key": "k"}});
        let only = only.as_object_mut().unwrap();
        assert!(take_store_target(only).unwrap().is_some());
        assert!(!only.contains_key("output"));
        // Encoder options only: untouched.
        let mut enc = serde_json::json!({"output": {"format": "png"}});
        let enc = enc.as_object_mut().unwrap();
        assert!(take_store_target(enc).unwrap().is_none());
        assert_eq!(enc["output"], serde_json::json!({"format": "png"}));
        let field = |v: Value| match take_store_target(v.clone().as_object_mut().unwrap()) {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{v}: {other:?}"),
        };
        assert_eq!(
            field(serde_json::json!({"output": {"bucket": "b"}})),
            "input.output.key"
        );
        assert_eq!(
            field(serde_json::json!({"output": {"key": "k", "bucket": 3}})),
            "input.output.bucket"
        );
        assert_eq!(
            field(serde_json::json!({"output": {"contentType": "x/y"}})),
            "input.output.contentType"
        );
    }

    /// An edge node has no buckets: a function asking to store its result, or to read
    /// an `s3://` source, is refused naming the field, before any work.
    #[tokio::test]
    async fn without_a_sink_outputs_and_s3_sources_are_refused() {
        let env =
            ImageEnv::new(Fetcher::new(crate::fetch::FetchPolicy::default()).expect("fetcher"));
        let run = |input: Value| {
            let env = env.clone();
            tokio::task::spawn_blocking(move || {
                call(&env, "image.compose", Input::Json(input)).map(|_| ())
            })
        };
        let e = run(serde_json::json!({"width": 8, "height": 8,
            "output": {"format": "png", "bucket": "b", "key": "k.png"}}))
        .await
        .unwrap()
        .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, message } if field == "input.output" && message.contains("placement.cloud")),
            "{e}"
        );
        let env2 = env.clone();
        let e = tokio::task::spawn_blocking(move || {
            call(
                &env2,
                "image.info",
                Input::Json(serde_json::json!({"image": "s3://b/k.png"})),
            )
        })
        .await
        .unwrap()
        .unwrap_err();
        assert!(
            matches!(&e, Error::Invalid { field, .. } if field == "input.image"),
            "{e}"
        );
        // Without a target the same call works.
        run(serde_json::json!({"width": 8, "height": 8, "output": {"format": "png"}}))
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn from_json_names_the_path() {
        let e = from_json::<Vec<verge_imaging::Op>>(
            "input.ops",
            serde_json::json!([{"op": "resize", "width": 10}, {"op": "nope"}]),
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("input.ops[1]"), "{e}");
    }
}
