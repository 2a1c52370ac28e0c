//! Message bodies, their JSON shape and their semantic bounds.
//!
//! Every body is a JSON object with camelCase fields; unknown fields are rejected
//! (`deny_unknown_fields`), optional fields may be omitted and are omitted when `None`.
//! Times are Unix epoch milliseconds (`...Ms`, `i64`, never negative); revisions are the
//! cloud store's revisions (`i64`, never negative, 0 = nothing applied yet).
//!
//! The bounds below are checked by [`Message::validate`], which [`crate::decode`] runs
//! after the shape check; senders may call it before encoding.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use verge_api::{Kind, Object, ObjectMeta};

use crate::error::{ProtoError, echo};
use crate::topics::Channel;

/// Longest short identifier-like string (`agentVersion`, `bootId`, `arch`, `os`,
/// `kernel`, task `id`, condition `reason`, log `source`), in bytes.
pub const MAX_SHORT_STRING: usize = 128;
/// Longest condition `message`, in bytes.
pub const MAX_CONDITION_MESSAGE: usize = 1024;
/// Most conditions in a [`NodeStatus`].
pub const MAX_CONDITIONS: usize = 16;
/// Most entries in [`NodeStatus::labels`] and in [`NodeStatus::capacity`].
pub const MAX_MAP_ENTRIES: usize = verge_api::limits::MAX_LABELS;
/// Longest [`NodeStatus::capacity`] value (`4`, `7816Mi`), in bytes.
pub const MAX_CAPACITY_VALUE: usize = 64;
/// Most objects in [`Desired::upserts`], and most refs in [`Desired::deletes`].
pub const MAX_DESIRED_OBJECTS: usize = 10_000;
/// Largest serialized [`Task::input`], in bytes.
pub const MAX_TASK_INPUT: usize = verge_api::limits::MAX_INPUT_BYTES;
/// Longest [`Task::idempotency_key`], in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = verge_api::limits::MAX_IDEMPOTENCY_KEY_LEN;
/// Longest [`TaskResult::error`], in bytes.
pub const MAX_TASK_ERROR: usize = 4096;
/// Most lines in a [`LogBatch`].
pub const MAX_LOG_LINES: usize = 1000;
/// Longest [`LogLine::line`], in bytes.
pub const MAX_LOG_LINE: usize = 16 * 1024;

/// Edge→cloud on `hello`, sent on every (re)connect. The cloud answers with a
/// [`Desired`] from `last_applied_revision` (a delta, or a snapshot when it has
/// compacted past that revision). Also sent again whenever the edge receives a delta it
/// cannot apply (see [`Desired`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hello {
    /// Must equal the topic's node (checked by [`crate::decode_any`]).
    pub node: String,
    pub agent_version: String,
    /// Changes on every reboot of the edge device.
    pub boot_id: String,
    pub last_applied_revision: i64,
    pub sent_at_ms: i64,
}

/// Edge→cloud on `heartbeat`: tiny on purpose, so it is never stuck behind bulk traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    /// Increments per heartbeat since the agent started.
    pub seq: u64,
    pub sent_at_ms: i64,
    pub ready: bool,
}

/// Edge→cloud on `status`: what the node is and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeStatus {
    pub arch: String,
    pub os: String,
    pub kernel: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    pub disk_free_bytes: u64,
    pub memory_free_bytes: u64,
    pub agent_version: String,
    /// Node-reported labels (label keys and values as in `metadata.labels`).
    pub labels: BTreeMap<String, String>,
    /// Allocatable resources by name (`cpu` → `4`, `memory` → `7816Mi`).
    pub capacity: BTreeMap<String, String>,
    /// At most one condition per type.
    pub conditions: Vec<Condition>,
    pub queue: QueueStats,
    pub applied_revision: i64,
    pub sent_at_ms: i64,
    /// Every app instance on the node (at most [`MAX_INSTANCES`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub apps: Vec<InstanceStatus>,
}

/// Most app instances in one [`NodeStatus`].
pub const MAX_INSTANCES: usize = 256;

/// One app instance on a node, as its supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceStatus {
    pub app: String,
    pub replica: u32,
    pub version: String,
    pub state: InstanceState,
    /// `None` until the first probe (or when the app has no health check and is not
    /// running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    pub restarts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// The last failure, one line (at most [`MAX_CONDITION_MESSAGE`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// How limits are enforced (`cgroup v1: ...`, `rlimit: ...`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
}

/// Lifecycle of an instance on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    /// Pulling the image, or downloading and unpacking the artifact.
    Preparing,
    /// Held back until its `dependsOn` apps are healthy on this node.
    WaitingForDependency,
    Running,
    /// Exited; restarting after a backoff.
    Backoff,
    /// Will not be restarted (restart policy), or cannot be prepared.
    Failed,
    /// Exited successfully and not restarted (`OnFailure` / `Never`).
    Completed,
}

impl InstanceStatus {
    /// An instance in `state`, with nothing else known yet.
    pub fn new(
        app: impl Into<String>,
        replica: u32,
        version: impl Into<String>,
        state: InstanceState,
    ) -> Self {
        Self {
            app: app.into(),
            replica,
            version: version.into(),
            state,
            healthy: None,
            restarts: 0,
            cpu_millis: None,
            memory_bytes: None,
            last_error: None,
            limits: None,
            started_at_ms: None,
        }
    }
}

/// Whether two instance lists differ at most in usage (`cpuMillis`, `memoryBytes`).
pub fn same_but_usage(a: &[InstanceStatus], b: &[InstanceStatus]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            InstanceStatus {
                cpu_millis: y.cpu_millis,
                memory_bytes: y.memory_bytes,
                ..x.clone()
            } == *y
        })
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Preparing => "Preparing",
            InstanceState::WaitingForDependency => "WaitingForDependency",
            InstanceState::Running => "Running",
            InstanceState::Backoff => "Backoff",
            InstanceState::Failed => "Failed",
            InstanceState::Completed => "Completed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConditionType {
    Ready,
    MemoryPressure,
    DiskPressure,
    /// True when python3/node function workers run sandboxed on the node.
    FunctionSandbox,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    #[serde(rename = "type")]
    pub condition_type: ConditionType,
    pub status: bool,
    pub reason: String,
    pub message: String,
    pub last_transition_ms: i64,
}

/// The edge's store-and-forward queue: what is waiting and what was dropped (drops are
/// counted, never silent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueueStats {
    pub pending_bytes: u64,
    pub pending_items: u64,
    pub dropped_items: u64,
    pub dropped_bytes: u64,
}

/// Cloud→edge on `desired`: the node's desired state, versioned by the cloud store's
/// revision.
///
/// - A **delta** (`snapshot == false`) carries every change after `from_revision`
///   (exclusive) up to and including `to_revision`: objects created or changed in that
///   range (`upserts`, their full new state) and objects removed (`deletes`).
/// - A **snapshot** (`snapshot == true`) carries the complete desired set at
///   `to_revision` in `upserts`; `deletes` is empty and everything the edge has that is
///   not in `upserts` is to be removed.
///
/// Apply rule (see [`Desired::applies_to`]): the edge applies a delta only if
/// `from_revision` equals its applied revision, and applies any snapshot. It persists
/// the result and the new applied revision (`to_revision`) to its local store
/// **before** publishing [`Ack`] with `to_revision`. A delta whose `from_revision` does
/// not match is ignored, and the edge sends [`Hello`] again with its applied revision
/// to ask for a resync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Desired {
    pub from_revision: i64,
    pub to_revision: i64,
    pub snapshot: bool,
    /// Validated resources (each passes [`verge_api::validate_object`]); at most one per
    /// kind and name. Unknown fields in an object are rejected, as in manifests.
    #[serde(deserialize_with = "strict_objects")]
    pub upserts: Vec<Object>,
    pub deletes: Vec<ObjectRef>,
}

impl Desired {
    /// Whether an edge whose applied revision is `applied` may apply this message: any
    /// snapshot, or a delta starting exactly at `applied`.
    pub fn applies_to(&self, applied: i64) -> bool {
        self.snapshot || self.from_revision == applied
    }
}

/// Names one resource: `kind` is a [`verge_api::Kind`] name (`App`), `name` its
/// `metadata.name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ObjectRef {
    pub kind: String,
    pub name: String,
}

/// Edge→cloud on `ack`: desired state up to `revision` is persisted on the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ack {
    pub revision: i64,
}

/// Cloud→edge on `task`: run `function` once with `input`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Task {
    pub id: String,
    /// Name of a `Function` resource.
    pub function: String,
    /// Any JSON; at most [`MAX_TASK_INPUT`] bytes serialized.
    pub input: Value,
    /// Give up (and report an error) after this time.
    pub deadline_ms: i64,
    /// Edges run a task at most once per key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Edge→cloud on `result`: the outcome of a [`Task`]. `ok` ⇔ no `error`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TaskResult {
    /// The task's id.
    pub id: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// Per-node sequence number, so the cloud can drop duplicates the store-and-forward
    /// queue redelivers.
    pub seq: u64,
    /// The function run. Set when the node started the task itself (a trigger fired on
    /// the node); the cloud then records a Task for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The `Trigger` that started the task on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
}

/// Edge→cloud on `log`: lines from one source (an app instance, the agent, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogBatch {
    pub source: String,
    /// At most [`MAX_LOG_LINES`].
    pub lines: Vec<LogLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogLine {
    pub ts_ms: i64,
    pub stream: LogStream,
    /// Without the trailing newline; at most [`MAX_LOG_LINE`] bytes.
    pub line: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// Longest PEM in [`CertRequest`] / [`CertIssued`], in bytes.
pub const MAX_PEM: usize = 8 * 1024;

/// Edge→cloud on `renew`: a CSR (PEM) for the node's next key. The CN must be the
/// node's name; the cloud signs it only for the node whose certificate authenticated
/// the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertRequest {
    pub csr_pem: String,
}

/// Cloud→edge on `cert`: the node's new certificate (PEM) and its expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CertIssued {
    pub cert_pem: String,
    pub not_after_ms: i64,
}

fn pem_field(field: &str, value: &str, label: &str) -> Check {
    required(field, value, MAX_PEM)?;
    if !value
        .trim_start()
        .starts_with(&format!("-----BEGIN {label}-----"))
    {
        return Err(format!("body.{field}: must be a PEM {label}"));
    }
    Ok(())
}

impl CertRequest {
    fn validate(&self) -> Check {
        pem_field("csrPem", &self.csr_pem, "CERTIFICATE REQUEST")
    }
}

impl CertIssued {
    fn validate(&self) -> Check {
        pem_field("certPem", &self.cert_pem, "CERTIFICATE")?;
        not_negative("notAfterMs", self.not_after_ms)
    }
}

/// Any protocol message. Each variant travels on exactly one [`Channel`].
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Hello(Hello),
    Heartbeat(Heartbeat),
    NodeStatus(Box<NodeStatus>),
    Desired(Desired),
    Ack(Ack),
    Task(Task),
    TaskResult(TaskResult),
    LogBatch(LogBatch),
    CertRequest(CertRequest),
    CertIssued(CertIssued),
}

impl Message {
    /// The channel this message travels on.
    pub fn channel(&self) -> Channel {
        match self {
            Message::Hello(_) => Channel::Hello,
            Message::Heartbeat(_) => Channel::Heartbeat,
            Message::NodeStatus(_) => Channel::Status,
            Message::Desired(_) => Channel::Desired,
            Message::Ack(_) => Channel::Ack,
            Message::Task(_) => Channel::Task,
            Message::TaskResult(_) => Channel::Result,
            Message::LogBatch(_) => Channel::Log,
            Message::CertRequest(_) => Channel::Renew,
            Message::CertIssued(_) => Channel::Cert,
        }
    }

    /// The envelope `type`: `hello`, `heartbeat`, `nodeStatus`, `desired`, `ack`, `task`,
    /// `taskResult`, `logBatch`, `certRequest`, `certIssued`.
    pub fn type_name(&self) -> &'static str {
        self.channel().message_type()
    }

    /// The semantic bounds of the body; errors are [`ProtoError::Invalid`] with the
    /// field path (`body.toRevision: ...`).
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            Message::Hello(m) => m.validate(),
            Message::Heartbeat(m) => m.validate(),
            Message::NodeStatus(m) => m.validate(),
            Message::Desired(m) => m.validate(),
            Message::Ack(m) => m.validate(),
            Message::Task(m) => m.validate(),
            Message::TaskResult(m) => m.validate(),
            Message::LogBatch(m) => m.validate(),
            Message::CertRequest(m) => m.validate(),
            Message::CertIssued(m) => m.validate(),
        }
        .map_err(ProtoError::Invalid)
    }
}

type Check = Result<(), String>;

fn not_negative(field: &str, value: i64) -> Check {
    if value < 0 {
        return Err(format!("body.{field}: must not be negative (got {value})"));
    }
    Ok(())
}

fn bounded(field: &str, value: &str, max: usize) -> Check {
    if value.len() > max {
        return Err(format!(
            "body.{field}: must be at most {max} bytes (got {})",
            value.len()
        ));
    }
    Ok(())
}

fn required(field: &str, value: &str, max: usize) -> Check {
    if value.is_empty() {
        return Err(format!("body.{field}: must not be empty"));
    }
    bounded(field, value, max)
}

fn dns_label(field: &str, value: &str) -> Check {
    if !verge_api::is_dns1123_label(value) {
        return Err(format!(
            "body.{field}: {:?} is not a DNS-1123 label (lowercase letters, digits and \
             '-', at most 63 characters)",
            echo(value)
        ));
    }
    Ok(())
}

impl Hello {
    fn validate(&self) -> Check {
        dns_label("node", &self.node)?;
        required("agentVersion", &self.agent_version, MAX_SHORT_STRING)?;
        required("bootId", &self.boot_id, MAX_SHORT_STRING)?;
        not_negative("lastAppliedRevision", self.last_applied_revision)?;
        not_negative("sentAtMs", self.sent_at_ms)
    }
}

impl Heartbeat {
    fn validate(&self) -> Check {
        not_negative("sentAtMs", self.sent_at_ms)
    }
}

impl NodeStatus {
    fn validate(&self) -> Check {
        bounded("arch", &self.arch, MAX_SHORT_STRING)?;
        bounded("os", &self.os, MAX_SHORT_STRING)?;
        bounded("kernel", &self.kernel, MAX_SHORT_STRING)?;
        required("agentVersion", &self.agent_version, MAX_SHORT_STRING)?;
        check_map(&self.labels, "labels", verge_api::is_label_value)?;
        check_map(&self.capacity, "capacity", |v| {
            !v.is_empty() && v.len() <= MAX_CAPACITY_VALUE
        })?;
        if self.conditions.len() > MAX_CONDITIONS {
            return Err(format!(
                "body.conditions: at most {MAX_CONDITIONS} conditions (got {})",
                self.conditions.len()
            ));
        }
        let mut seen = BTreeSet::new();
        for (i, c) in self.conditions.iter().enumerate() {
            if !seen.insert(c.condition_type) {
                return Err(format!(
                    "body.conditions[{i}].type: duplicate condition {:?}",
                    c.condition_type
                ));
            }
            bounded(
                &format!("conditions[{i}].reason"),
                &c.reason,
                MAX_SHORT_STRING,
            )?;
            bounded(
                &format!("conditions[{i}].message"),
                &c.message,
                MAX_CONDITION_MESSAGE,
            )?;
            not_negative(
                &format!("conditions[{i}].lastTransitionMs"),
                c.last_transition_ms,
            )?;
        }
        not_negative("appliedRevision", self.applied_revision)?;
        if self.apps.len() > MAX_INSTANCES {
            return Err(format!(
                "body.apps: at most {MAX_INSTANCES} instances (got {})",
                self.apps.len()
            ));
        }
        for (i, a) in self.apps.iter().enumerate() {
            dns_label(&format!("apps[{i}].app"), &a.app)?;
            required(&format!("apps[{i}].version"), &a.version, MAX_SHORT_STRING)?;
            if let Some(e) = &a.last_error {
                bounded(&format!("apps[{i}].lastError"), e, MAX_CONDITION_MESSAGE)?;
            }
            if let Some(l) = &a.limits {
                bounded(&format!("apps[{i}].limits"), l, MAX_CONDITION_MESSAGE)?;
            }
            if let Some(t) = a.started_at_ms {
                not_negative(&format!("apps[{i}].startedAtMs"), t)?;
            }
        }
        not_negative("sentAtMs", self.sent_at_ms)
    }
}

/// At most [`MAX_MAP_ENTRIES`] entries, label-key keys, values accepted by `value_ok`.
fn check_map(map: &BTreeMap<String, String>, field: &str, value_ok: fn(&str) -> bool) -> Check {
    if map.len() > MAX_MAP_ENTRIES {
        return Err(format!(
            "body.{field}: at most {MAX_MAP_ENTRIES} entries (got {})",
            map.len()
        ));
    }
    for (k, v) in map {
        if !verge_api::is_label_key(k) {
            return Err(format!("body.{field}: invalid key {:?}", echo(k)));
        }
        if !value_ok(v) {
            return Err(format!(
                "body.{field}.{}: invalid value {:?}",
                echo(k),
                echo(v)
            ));
        }
    }
    Ok(())
}

impl Desired {
    fn validate(&self) -> Check {
        not_negative("fromRevision", self.from_revision)?;
        not_negative("toRevision", self.to_revision)?;
        if self.to_revision < self.from_revision {
            return Err(format!(
                "body.toRevision: must not be below fromRevision ({} < {})",
                self.to_revision, self.from_revision
            ));
        }
        if self.snapshot && !self.deletes.is_empty() {
            return Err("body.deletes: must be empty in a snapshot".to_owned());
        }
        for (field, len) in [
            ("upserts", self.upserts.len()),
            ("deletes", self.deletes.len()),
        ] {
            if len > MAX_DESIRED_OBJECTS {
                return Err(format!(
                    "body.{field}: at most {MAX_DESIRED_OBJECTS} entries (got {len})"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (i, obj) in self.upserts.iter().enumerate() {
            verge_api::validate_object(obj).map_err(|e| {
                if e.field.is_empty() {
                    format!("body.upserts[{i}]: {}", e.message)
                } else {
                    format!("body.upserts[{i}].{}: {}", e.field, e.message)
                }
            })?;
            if !seen.insert((obj.kind.as_str(), obj.metadata.name.as_str())) {
                return Err(format!(
                    "body.upserts[{i}]: duplicate {} {:?}",
                    obj.kind, obj.metadata.name
                ));
            }
        }
        for (i, r) in self.deletes.iter().enumerate() {
            if Kind::from_kind_name(&r.kind).is_none() {
                return Err(format!(
                    "body.deletes[{i}].kind: unknown kind {:?}",
                    echo(&r.kind)
                ));
            }
            dns_label(&format!("deletes[{i}].name"), &r.name)?;
            if !seen.insert((r.kind.as_str(), r.name.as_str())) {
                return Err(format!(
                    "body.deletes[{i}]: {} {:?} is also upserted or deleted twice",
                    r.kind, r.name
                ));
            }
        }
        Ok(())
    }
}

impl Ack {
    fn validate(&self) -> Check {
        not_negative("revision", self.revision)
    }
}

impl Task {
    fn validate(&self) -> Check {
        required("id", &self.id, MAX_SHORT_STRING)?;
        dns_label("function", &self.function)?;
        let size = json_size(&self.input);
        if size > MAX_TASK_INPUT {
            return Err(format!(
                "body.input: must be at most {MAX_TASK_INPUT} bytes serialized (got {size})"
            ));
        }
        not_negative("deadlineMs", self.deadline_ms)?;
        if let Some(key) = &self.idempotency_key {
            required("idempotencyKey", key, MAX_IDEMPOTENCY_KEY)?;
        }
        Ok(())
    }
}

impl TaskResult {
    fn validate(&self) -> Check {
        required("id", &self.id, MAX_SHORT_STRING)?;
        match (&self.error, self.ok) {
            (Some(_), true) => return Err("body.error: must be absent when ok".to_owned()),
            (None, false) => return Err("body.error: required when not ok".to_owned()),
            (Some(e), false) => required("error", e, MAX_TASK_ERROR)?,
            (None, true) => {}
        }
        not_negative("startedAtMs", self.started_at_ms)?;
        if let Some(f) = &self.function {
            dns_label("function", f)?;
        }
        if let Some(t) = &self.trigger {
            dns_label("trigger", t)?;
        }
        if self.finished_at_ms < self.started_at_ms {
            return Err(format!(
                "body.finishedAtMs: must not be before startedAtMs ({} < {})",
                self.finished_at_ms, self.started_at_ms
            ));
        }
        Ok(())
    }
}

impl LogBatch {
    fn validate(&self) -> Check {
        required("source", &self.source, MAX_SHORT_STRING)?;
        if self.lines.len() > MAX_LOG_LINES {
            return Err(format!(
                "body.lines: at most {MAX_LOG_LINES} lines (got {})",
                self.lines.len()
            ));
        }
        for (i, l) in self.lines.iter().enumerate() {
            not_negative(&format!("lines[{i}].tsMs"), l.ts_ms)?;
            bounded(&format!("lines[{i}].line"), &l.line, MAX_LOG_LINE)?;
        }
        Ok(())
    }
}

/// Serialized size of a JSON value without allocating it.
fn json_size(value: &Value) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    // Writing a `Value` to an infallible writer cannot fail; on the impossible error
    // report the largest size so the bound check rejects rather than accepts.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

/// The wire shape of an upserted object: like [`Object`] but rejecting unknown
/// top-level fields (`ObjectMeta` already rejects unknown metadata fields).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StrictObject {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Value,
    #[serde(default)]
    status: Value,
}

fn strict_objects<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Object>, D::Error> {
    let objects = Vec::<StrictObject>::deserialize(deserializer)?;
    Ok(objects
        .into_iter()
        .map(|o| Object {
            api_version: o.api_version,
            kind: o.kind,
            metadata: o.metadata,
            spec: o.spec,
            status: o.status,
        })
        .collect())
}
