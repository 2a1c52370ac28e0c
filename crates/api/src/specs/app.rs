//! `App`: a long-running workload placed on edge nodes: a Docker container, a native
//! process from a content-addressed artifact, or an always-warm function.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::*;
use crate::specs::common::{ArtifactRef, SecretRef};
use crate::specs::one_of;
use crate::specs::quantity::{check_cpu, check_memory, opt_quantity};
use crate::specs::secret::{SecretKeyRef, SecretUse, check_secret_env, env_uses, registry_uses};
use crate::validate::{
    check_abs_path, check_args, check_dns_label, check_env, check_exec_string, check_label_map,
    check_len, check_range,
};

/// Bytes in `version`.
const MAX_VERSION_LEN: usize = 128;

/// Spec of an `App`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AppSpec {
    /// Semantic version of the app (`1.0.0`); rollouts are keyed by it.
    pub version: String,
    pub workload: Workload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// Defaults to `Always`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Probe deciding whether an instance is healthy; without it, running = healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    /// On a node, this app starts only once each of these is healthy there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
    /// How a new version reaches the fleet; without it, one step to 100%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStrategy>,
    /// Replicas from reported usage (with `placement.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
}

/// Exactly one of `http`, `tcp`, `exec`, plus timing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HealthCheck {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpProbe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecProbe>,
    /// Seconds between probes (1..=3600, default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    /// Seconds before a probe counts as failed (1..=600, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u32>,
    /// Consecutive failures before the instance is unhealthy (1..=100, default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<u32>,
    /// Seconds after start before the first probe (0..=3600, default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<u32>,
}

/// `GET http://127.0.0.1:{port}{path}` answers 2xx or 3xx.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpProbe {
    pub port: u16,
    /// Defaults to `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A TCP connect to `127.0.0.1:{port}` succeeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TcpProbe {
    pub port: u16,
}

/// The command exits 0 (run in the container, or in the native app's directory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExecProbe {
    pub command: Vec<String>,
}

impl HealthCheck {
    pub fn interval(&self) -> u32 {
        self.interval_seconds.unwrap_or(10)
    }
    pub fn timeout(&self) -> u32 {
        self.timeout_seconds.unwrap_or(1)
    }
    pub fn failure_threshold(&self) -> u32 {
        self.failure_threshold.unwrap_or(3)
    }
    pub fn initial_delay(&self) -> u32 {
        self.initial_delay_seconds.unwrap_or(0)
    }

    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        one_of(
            path,
            &[
                ("http", self.http.is_some()),
                ("tcp", self.tcp.is_some()),
                ("exec", self.exec.is_some()),
            ],
        )?;
        if let Some(http) = &self.http {
            check_range(u32::from(http.port), &format!("{path}.http.port"), 1, 65535)?;
            if let Some(p) = &http.path {
                let field = format!("{path}.http.path");
                if !p.starts_with('/') {
                    return Err(ValidationError::new(field, "must start with '/'"));
                }
                check_exec_string(p, &field, MAX_PATH_LEN)?;
                if p.chars().any(|c| c.is_whitespace()) {
                    return Err(ValidationError::new(field, "must not contain whitespace"));
                }
            }
        }
        if let Some(tcp) = &self.tcp {
            check_range(u32::from(tcp.port), &format!("{path}.tcp.port"), 1, 65535)?;
        }
        if let Some(exec) = &self.exec {
            let field = format!("{path}.exec.command");
            if exec.command.is_empty() {
                return Err(ValidationError::new(field, "must not be empty"));
            }
            check_args(&exec.command, &field)?;
        }
        let opt = |v: Option<u32>, name: &str, lo: u32, hi: u32| match v {
            Some(v) => check_range(v, &format!("{path}.{name}"), lo, hi),
            None => Ok(()),
        };
        opt(self.interval_seconds, "intervalSeconds", 1, 3600)?;
        opt(self.timeout_seconds, "timeoutSeconds", 1, 600)?;
        opt(self.failure_threshold, "failureThreshold", 1, 100)?;
        opt(self.initial_delay_seconds, "initialDelaySeconds", 0, 3600)?;
        Ok(())
    }
}

/// Another app that must be healthy on the node first, in a semver range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Dependency {
    /// Name of the App (DNS-1123 label).
    pub app: String,
    /// Semver requirement (`^1.2`, `>=1.0.0, <2.0.0`); defaults to any version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl Dependency {
    /// The parsed requirement (`*` when unset). Validated objects always parse.
    pub fn requirement(&self) -> semver::VersionReq {
        self.version
            .as_deref()
            .and_then(|v| semver::VersionReq::parse(v).ok())
            .unwrap_or(semver::VersionReq::STAR)
    }
}

/// Gray release: the new version goes to `percent` of the app's nodes per step.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// Increasing percentages; the last is 100 (added when missing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<RolloutStep>,
    /// Nodes switching at once within a step (default 1; at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// Roll back to the previous version when a step's health gate fails (default
    /// false: pause).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_rollback: Option<bool>,
    /// Seconds a step may take to become healthy before its gate fails (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_deadline_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RolloutStep {
    /// 1..=100.
    pub percent: u32,
    /// After the step is healthy: a duration (`30s`, `5m`, `1h`) or `manual` (wait for
    /// `verge rollout promote`). Unset: go on at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<String>,
}

/// A parsed [`RolloutStep::pause`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    None,
    For(std::time::Duration),
    Manual,
}

impl RolloutStep {
    pub fn pause(&self) -> Pause {
        match self.pause.as_deref() {
            None => Pause::None,
            Some("manual") => Pause::Manual,
            Some(d) => parse_duration(d).map_or(Pause::None, Pause::For),
        }
    }
}

/// `90s`, `5m`, `2h`, `1h30m`, `500ms`: at most one week.
pub fn parse_duration(s: &str) -> Option<std::time::Duration> {
    let mut total_ms: u64 = 0;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 9 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total_ms = total_ms.checked_add(n.checked_mul(unit_ms)?)?;
    }
    (total_ms <= 7 * 24 * 3_600_000).then(|| std::time::Duration::from_millis(total_ms))
}

impl RolloutStrategy {
    pub fn max_unavailable(&self) -> u32 {
        self.max_unavailable.unwrap_or(1).max(1)
    }
    pub fn auto_rollback(&self) -> bool {
        self.auto_rollback.unwrap_or(false)
    }
    pub fn progress_deadline(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.progress_deadline_seconds.unwrap_or(300)))
    }
    /// The steps with a final 100% step added when missing.
    pub fn effective_steps(&self) -> Vec<RolloutStep> {
        let mut steps = self.steps.clone();
        if steps.last().is_none_or(|s| s.percent < 100) {
            steps.push(RolloutStep {
                percent: 100,
                pause: None,
            });
        }
        steps
    }

    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        if self.steps.len() > MAX_ROLLOUT_STEPS {
            return Err(ValidationError::new(
                format!("{path}.steps"),
                format!(
                    "too many entries ({}, at most {MAX_ROLLOUT_STEPS})",
                    self.steps.len()
                ),
            ));
        }
        let mut last = 0;
        for (i, step) in self.steps.iter().enumerate() {
            let field = format!("{path}.steps[{i}].percent");
            check_range(step.percent, &field, 1, 100)?;
            if step.percent <= last {
                return Err(ValidationError::new(
                    field,
                    format!("must increase (previous step is {last}%)"),
                ));
            }
            last = step.percent;
            if let Some(p) = &step.pause
                && p != "manual"
                && parse_duration(p).is_none()
            {
                return Err(ValidationError::new(
                    format!("{path}.steps[{i}].pause"),
                    format!(
                        "{p:?} is neither `manual` nor a duration such as 30s, 5m, 1h (at \
                         most 168h)"
                    ),
                ));
            }
        }
        if let Some(n) = self.max_unavailable {
            check_range(n, &format!("{path}.maxUnavailable"), 1, MAX_REPLICAS)?;
        }
        if let Some(n) = self.progress_deadline_seconds {
            check_range(n, &format!("{path}.progressDeadlineSeconds"), 1, 86_400)?;
        }
        Ok(())
    }
}

/// Replicas between `minReplicas` and `maxReplicas`, aiming at `targetPercent` of the
/// requested resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Autoscale {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub metric: ScaleMetric,
    /// 1..=100: usage as a percentage of `resources` (which must be set for it).
    pub target_percent: u32,
    /// Seconds a lower recommendation must hold before scaling down (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stabilization_seconds: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ScaleMetric {
    Cpu,
    Memory,
}

/// What runs: exactly one of `docker`, `native`, `function`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerWorkload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native: Option<NativeWorkload>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionWorkload>,
}

/// A container run by the node's Docker engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DockerWorkload {
    /// Image reference (`registry.local:5000/web:1.0.0`).
    pub image: String,
    /// Overrides the image's entrypoint.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Overrides the image's command.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values come from Secrets: `NAME: {name, key}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// A Secret with the keys `username` and `password`: the registry login for the
    /// image pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<SecretRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSpec {
    /// 1..=65535.
    pub container_port: u16,
    /// Published on the node; unset means not published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_port: Option<u16>,
    /// Defaults to `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A bind mount from the node into the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VolumeMount {
    /// Absolute path on the node.
    pub host_path: String,
    /// Absolute path in the container.
    pub container_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_only: Option<bool>,
}

/// A native process started from a verified artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NativeWorkload {
    pub artifact: ArtifactRef,
    /// Executable to run (path inside the unpacked artifact, or absolute).
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment variables whose values come from Secrets: `NAME: {name, key}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, SecretKeyRef>,
    /// Working directory; defaults to the unpacked artifact's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// Keeps instances of a `Function` resource running as an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FunctionWorkload {
    /// Name of a `Function` (DNS-1123 label).
    pub function: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// CPU quantity: `500m`, `1`, `0.5`.
    #[serde(
        default,
        deserialize_with = "opt_quantity",
        skip_serializing_if = "Option::is_none"
    )]
    pub cpu: Option<String>,
    /// Memory quantity: `64Mi`, `1Gi`, `128M`, `1000000`.
    #[serde(
        default,
        deserialize_with = "opt_quantity",
        skip_serializing_if = "Option::is_none"
    )]
    pub memory: Option<String>,
}

/// Where and how many: `replicasPerNode` on every matching node, or `replicas` spread
/// over matching nodes (mutually exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Placement {
    /// Only nodes whose labels match all of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_per_node: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
    /// Only nodes of these architectures (as nodes report them: `x86_64`, `aarch64`,
    /// `arm`, `mips`, ...); empty = any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

impl AppSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        check_len(&self.version, "spec.version", MAX_VERSION_LEN)?;
        if let Err(e) = semver::Version::parse(&self.version) {
            return Err(ValidationError::new(
                "spec.version",
                format!("{:?} is not a semantic version: {e}", self.version),
            ));
        }
        self.workload.validate("spec.workload")?;
        if let Some(resources) = &self.resources {
            resources.validate("spec.resources")?;
        }
        if let Some(placement) = &self.placement {
            placement.validate("spec.placement")?;
        }
        if let Some(health) = &self.health {
            health.validate("spec.health")?;
        }
        if self.depends_on.len() > MAX_DEPENDENCIES {
            return Err(ValidationError::new(
                "spec.dependsOn",
                format!(
                    "too many entries ({}, at most {MAX_DEPENDENCIES})",
                    self.depends_on.len()
                ),
            ));
        }
        for (i, dep) in self.depends_on.iter().enumerate() {
            check_dns_label(&dep.app, &format!("spec.dependsOn[{i}].app"))?;
            if let Some(v) = &dep.version {
                let field = format!("spec.dependsOn[{i}].version");
                check_len(v, &field, MAX_VERSION_LEN)?;
                if let Err(e) = semver::VersionReq::parse(v) {
                    return Err(ValidationError::new(
                        field,
                        format!("{v:?} is not a semver range: {e}"),
                    ));
                }
            }
        }
        if let Some(rollout) = &self.rollout {
            rollout.validate("spec.rollout")?;
        }
        if let Some(auto) = &self.autoscale {
            let path = "spec.autoscale";
            check_range(
                auto.min_replicas,
                &format!("{path}.minReplicas"),
                0,
                MAX_REPLICAS,
            )?;
            check_range(
                auto.max_replicas,
                &format!("{path}.maxReplicas"),
                auto.min_replicas.max(1),
                MAX_REPLICAS,
            )?;
            check_range(
                auto.target_percent,
                &format!("{path}.targetPercent"),
                1,
                100,
            )?;
            if let Some(s) = auto.stabilization_seconds {
                check_range(s, &format!("{path}.stabilizationSeconds"), 0, 3600)?;
            }
            let requested = self.resources.as_ref().and_then(|r| match auto.metric {
                ScaleMetric::Cpu => r.cpu.as_ref(),
                ScaleMetric::Memory => r.memory.as_ref(),
            });
            if requested.is_none() {
                return Err(ValidationError::new(
                    format!("{path}.metric"),
                    "needs the matching spec.resources value (cpu or memory) to scale against",
                ));
            }
            if self
                .placement
                .as_ref()
                .is_some_and(|p| p.replicas_per_node.is_some())
            {
                return Err(ValidationError::new(
                    path,
                    "scales spec.placement.replicas; it cannot be used with replicasPerNode",
                ));
            }
        }
        Ok(())
    }

    /// The parsed version (validated objects always parse).
    pub fn semver(&self) -> Option<semver::Version> {
        semver::Version::parse(&self.version).ok()
    }

    /// Every reference this spec makes to a Secret's value (`secretEnv`,
    /// `registryAuth`).
    pub fn secret_uses(&self) -> Vec<SecretUse> {
        let mut out = Vec::new();
        if let Some(d) = &self.workload.docker {
            out.extend(env_uses(&d.secret_env, "spec.workload.docker.secretEnv"));
            if let Some(auth) = &d.registry_auth {
                out.extend(registry_uses(
                    &auth.name,
                    "spec.workload.docker.registryAuth",
                ));
            }
        }
        if let Some(n) = &self.workload.native {
            out.extend(env_uses(&n.secret_env, "spec.workload.native.secretEnv"));
        }
        out
    }
}

impl Resources {
    pub fn cpu_millis(&self) -> Option<u64> {
        self.cpu.as_deref().and_then(crate::specs::parse_cpu_millis)
    }
    pub fn memory_bytes(&self) -> Option<u64> {
        self.memory
            .as_deref()
            .and_then(crate::specs::parse_memory_bytes)
    }
}

impl Workload {
    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        one_of(
            path,
            &[
                ("docker", self.docker.is_some()),
                ("native", self.native.is_some()),
                ("function", self.function.is_some()),
            ],
        )?;
        if let Some(docker) = &self.docker {
            docker.validate(&format!("{path}.docker"))?;
        }
        if let Some(native) = &self.native {
            native.validate(&format!("{path}.native"))?;
        }
        if let Some(function) = &self.function {
            check_dns_label(&function.function, &format!("{path}.function.function"))?;
        }
        Ok(())
    }
}

impl DockerWorkload {
    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        let field = format!("{path}.image");
        if self.image.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        check_len(&self.image, &field, MAX_IMAGE_LEN)?;
        if self
            .image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(ValidationError::new(
                field,
                "must not contain whitespace or control characters",
            ));
        }
        check_args(&self.command, &format!("{path}.command"))?;
        check_args(&self.args, &format!("{path}.args"))?;
        check_env(&self.env, &format!("{path}.env"))?;
        check_secret_env(&self.secret_env, &self.env, &format!("{path}.secretEnv"))?;

        let ports_path = format!("{path}.ports");
        if self.ports.len() > MAX_PORTS {
            return Err(ValidationError::new(
                ports_path,
                format!(
                    "too many entries ({}, at most {MAX_PORTS})",
                    self.ports.len()
                ),
            ));
        }
        let mut published: BTreeMap<(u16, &str), usize> = BTreeMap::new();
        for (i, port) in self.ports.iter().enumerate() {
            let port_path = format!("{ports_path}[{i}]");
            check_range(
                u32::from(port.container_port),
                &format!("{port_path}.containerPort"),
                1,
                u32::from(u16::MAX),
            )?;
            if let Some(host_port) = port.host_port {
                let field = format!("{port_path}.hostPort");
                check_range(u32::from(host_port), &field, 1, u32::from(u16::MAX))?;
                let protocol = port.protocol.unwrap_or(Protocol::Tcp);
                if let Some(first) = published.insert((host_port, protocol.as_str()), i) {
                    return Err(ValidationError::new(
                        field,
                        format!(
                            "duplicate hostPort {host_port}/{} (also used by ports[{first}])",
                            protocol.as_str()
                        ),
                    ));
                }
            }
        }

        let volumes_path = format!("{path}.volumes");
        if self.volumes.len() > MAX_VOLUMES {
            return Err(ValidationError::new(
                volumes_path,
                format!(
                    "too many entries ({}, at most {MAX_VOLUMES})",
                    self.volumes.len()
                ),
            ));
        }
        for (i, volume) in self.volumes.iter().enumerate() {
            check_abs_path(&volume.host_path, &format!("{volumes_path}[{i}].hostPath"))?;
            check_abs_path(
                &volume.container_path,
                &format!("{volumes_path}[{i}].containerPath"),
            )?;
        }
        if let Some(auth) = &self.registry_auth {
            auth.validate(&format!("{path}.registryAuth"))?;
        }
        Ok(())
    }
}

impl NativeWorkload {
    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        self.artifact.validate(&format!("{path}.artifact"))?;
        let field = format!("{path}.command");
        if self.command.is_empty() {
            return Err(ValidationError::new(field, "must not be empty"));
        }
        check_exec_string(&self.command, &field, MAX_ARG_LEN)?;
        check_args(&self.args, &format!("{path}.args"))?;
        check_env(&self.env, &format!("{path}.env"))?;
        check_secret_env(&self.secret_env, &self.env, &format!("{path}.secretEnv"))?;
        if let Some(workdir) = &self.workdir {
            let field = format!("{path}.workdir");
            if workdir.is_empty() {
                return Err(ValidationError::new(field, "must not be empty"));
            }
            check_exec_string(workdir, &field, MAX_PATH_LEN)?;
        }
        Ok(())
    }
}

impl Resources {
    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        if let Some(cpu) = &self.cpu {
            check_cpu(cpu, &format!("{path}.cpu"))?;
        }
        if let Some(memory) = &self.memory {
            check_memory(memory, &format!("{path}.memory"))?;
        }
        Ok(())
    }
}

impl Placement {
    fn validate(&self, path: &str) -> Result<(), ValidationError> {
        check_label_map(&self.node_selector, &format!("{path}.nodeSelector"))?;
        if self.replicas.is_some() && self.replicas_per_node.is_some() {
            return Err(ValidationError::new(
                path,
                "only one of replicasPerNode, replicas may be set (found replicasPerNode and \
                 replicas)",
            ));
        }
        if let Some(n) = self.replicas_per_node {
            check_range(
                n,
                &format!("{path}.replicasPerNode"),
                1,
                MAX_REPLICAS_PER_NODE,
            )?;
        }
        if let Some(n) = self.replicas {
            check_range(n, &format!("{path}.replicas"), 0, MAX_REPLICAS)?;
        }
        if self.architectures.len() > 16 {
            return Err(ValidationError::new(
                format!("{path}.architectures"),
                format!(
                    "too many entries ({}, at most 16)",
                    self.architectures.len()
                ),
            ));
        }
        for (i, a) in self.architectures.iter().enumerate() {
            let field = format!("{path}.architectures[{i}]");
            if a.is_empty()
                || a.len() > 32
                || !a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(ValidationError::new(
                    field,
                    format!("{a:?} is not an architecture name such as x86_64 or aarch64"),
                ));
            }
        }
        Ok(())
    }
}
