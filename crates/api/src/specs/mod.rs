//! Typed specs of every kind, one file per kind, plus the pieces several kinds share.
//!
//! Each spec is decoded strictly (`deny_unknown_fields`, camelCase JSON names) by
//! [`decode_spec`], which then runs the kind's semantic checks (`validate`). All field
//! paths in errors start at the document root (`spec.workload.docker.image`).

mod app;
mod bucket;
mod common;
mod config;
mod function;
mod node;
mod quantity;
mod secret;
mod task;
mod trigger;

pub use app::{
    AppSpec, Autoscale, Dependency, DockerWorkload, ExecProbe, FunctionWorkload, HealthCheck,
    HttpProbe, NativeWorkload, Pause, Placement, PortSpec, Protocol, Resources, RestartPolicy,
    RolloutStep, RolloutStrategy, ScaleMetric, TcpProbe, VolumeMount, Workload, parse_duration,
};
pub use bucket::{
    BucketSpec, DEFAULT_MAX_OBJECT_SIZE, Lifecycle, MAX_KEY_BYTES, MAX_OBJECT_SIZE,
    MAX_USER_METADATA_BYTES, ObjectRecord, check_bucket_name, check_object_key,
};
pub use common::{ArtifactRef, SecretRef, TaskTarget};
pub use config::{ConfigPlacement, ConfigSpec};
pub use function::{FunctionPlacement, FunctionResources, FunctionSpec, Runtime, Scaling};
pub use node::NodeSpec;
pub use quantity::{parse_cpu_millis, parse_memory_bytes};
pub use secret::{
    ANNOTATION_REDACTED, ANNOTATION_SECRET_ERROR, Purpose, REGISTRY_PASSWORD_KEY,
    REGISTRY_USERNAME_KEY, SecretKeyRef, SecretSpec, SecretUse, is_secret_key, redacted, resolve,
};
pub use task::TaskSpec;
pub use trigger::{
    Due, EventSource, EventType, FiresOn, MAX_EVENT_AFFIX_BYTES, MissedPolicy, MissedPolicyMode,
    Schedule, Sink, TriggerSpec, parse_schedule,
};

/// The cron schedule type [`parse_schedule`] returns (re-exported so users need not
/// depend on `croner` themselves).
pub use croner::Cron;

use serde::Serialize;

use crate::de::from_value_at;
use crate::error::ValidationError;
use crate::kind::Kind;

/// Path prefix of every spec field.
const SPEC: &str = "spec";

/// A decoded, validated spec of any kind.
#[allow(
    clippy::large_enum_variant,
    reason = "short-lived value; boxing would only complicate matching"
)]
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Node(NodeSpec),
    App(AppSpec),
    Function(FunctionSpec),
    Trigger(TriggerSpec),
    Task(TaskSpec),
    Config(ConfigSpec),
    Secret(SecretSpec),
    Bucket(BucketSpec),
}

impl Spec {
    pub fn kind(&self) -> Kind {
        match self {
            Spec::Node(_) => Kind::Node,
            Spec::App(_) => Kind::App,
            Spec::Function(_) => Kind::Function,
            Spec::Trigger(_) => Kind::Trigger,
            Spec::Task(_) => Kind::Task,
            Spec::Config(_) => Kind::Config,
            Spec::Secret(_) => Kind::Secret,
            Spec::Bucket(_) => Kind::Bucket,
        }
    }

    /// The normalized JSON form (defaults and unset optional fields dropped).
    pub fn to_value(&self) -> Result<serde_json::Value, ValidationError> {
        fn ser<T: Serialize>(spec: &T) -> Result<serde_json::Value, ValidationError> {
            serde_json::to_value(spec)
                .map_err(|e| ValidationError::new(SPEC, format!("cannot serialize: {e}")))
        }
        match self {
            Spec::Node(s) => ser(s),
            Spec::App(s) => ser(s),
            Spec::Function(s) => ser(s),
            Spec::Trigger(s) => ser(s),
            Spec::Task(s) => ser(s),
            Spec::Config(s) => ser(s),
            Spec::Secret(s) => ser(s),
            Spec::Bucket(s) => ser(s),
        }
    }

    /// Runs the kind's semantic checks.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            Spec::Node(s) => s.validate(),
            Spec::App(s) => s.validate(),
            Spec::Function(s) => s.validate(),
            Spec::Trigger(s) => s.validate(),
            Spec::Task(s) => s.validate(),
            Spec::Config(s) => s.validate(),
            Spec::Secret(s) => s.validate(),
            Spec::Bucket(s) => s.validate(),
        }
    }
}

/// Decodes `value` (an object's `spec`) strictly as `kind`'s typed spec and validates
/// it. A missing (`null`) spec is allowed only for [`Kind::Node`] (empty spec).
pub fn decode_spec(kind: Kind, value: &serde_json::Value) -> Result<Spec, ValidationError> {
    if value.is_null() && kind != Kind::Node {
        return Err(ValidationError::new(SPEC, "missing field"));
    }
    let spec = match kind {
        Kind::Node if value.is_null() => Spec::Node(NodeSpec::default()),
        Kind::Node => Spec::Node(from_value_at(value, SPEC)?),
        Kind::App => Spec::App(from_value_at(value, SPEC)?),
        Kind::Function => Spec::Function(from_value_at(value, SPEC)?),
        Kind::Trigger => Spec::Trigger(from_value_at(value, SPEC)?),
        Kind::Task => Spec::Task(from_value_at(value, SPEC)?),
        Kind::Config => Spec::Config(from_value_at(value, SPEC)?),
        Kind::Secret => Spec::Secret(from_value_at(value, SPEC)?),
        Kind::Bucket => Spec::Bucket(from_value_at(value, SPEC)?),
    };
    spec.validate()?;
    Ok(spec)
}

/// Exactly one of `options` (name, is set) must be set; errors name `path`.
pub(crate) fn one_of(path: &str, options: &[(&str, bool)]) -> Result<(), ValidationError> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let set: Vec<&str> = options
        .iter()
        .filter(|(_, s)| *s)
        .map(|(n, _)| *n)
        .collect();
    match set.len() {
        1 => Ok(()),
        0 => Err(ValidationError::new(
            path,
            format!("exactly one of {} must be set", names.join(", ")),
        )),
        _ => Err(ValidationError::new(
            path,
            format!(
                "only one of {} may be set (found {})",
                names.join(", "),
                set.join(" and ")
            ),
        )),
    }
}
