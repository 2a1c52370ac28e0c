//! `App`: a long-running workload placed on edge nodes: a Docker container, a native
//! process from a content-addressed artifact, or an always-warm function.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ValidationError;
use crate::limits::*;
use crate::specs::common::{ArtifactRef, SecretRef};
use crate::specs::one_of;
use crate::specs::quantity::{check_cpu, check_memory, opt_quantity};
use crate::validate::{
    check_abs_path, check_args, check_dns_label, check_env, check_exec_string, check_label_map,
    check_len, check_range,
};

/// Bytes in `version`.
const MAX_VERSION_LEN: usize = 128;

/// Spec of an `App`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
}

/// What runs: exactly one of `docker`, `native`, `function`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeMount>,
    /// Secret holding registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<SecretRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NativeWorkload {
    pub artifact: ArtifactRef,
    /// Executable to run (path inside the unpacked artifact, or absolute).
    pub command: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Working directory; defaults to the unpacked artifact's root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// Keeps instances of a `Function` resource running as an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FunctionWorkload {
    /// Name of a `Function` (DNS-1123 label).
    pub function: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Placement {
    /// Only nodes whose labels match all of these.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_per_node: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
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
        Ok(())
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
        Ok(())
    }
}
