//! The Docker engine of a node built without the cargo feature `docker` (no bollard):
//! every Docker App placed here fails with one clear reason, while native apps,
//! functions and everything else run as usual. Same surface as `docker.rs`
//! (`LazyDocker::new`, `get`, the [`Engine`] impl) so `workloads.rs` needs no `cfg`.
//! Must not pretend to run anything: no container handle can exist ([`NoContainer`]
//! has no values), so the methods taking one are unreachable by construction.

use std::net::IpAddr;
use std::time::Duration;

use super::{Adopted, Enforcement, Engine, Exit, InstanceSpec, Usage};
use crate::error::{Error, Result};

/// Why a Docker App cannot run on this node.
pub const NOT_BUILT: &str =
    "this node was built without Docker support (verge-edge's cargo feature `docker`)";

/// A container handle on a node without Docker: there is none.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NoContainer {}

/// Stands where the Docker engine would: refuses every Docker workload.
#[derive(Debug, Default)]
pub struct LazyDocker;

impl LazyDocker {
    /// The socket and network are those `verge-edge run` was given; unused here.
    pub fn new(_socket: Option<std::path::PathBuf>, _network: Option<String>) -> Self {
        LazyDocker
    }

    /// Always the reason this node runs no containers.
    pub async fn get(&self) -> Result<()> {
        Err(Error::Docker(NOT_BUILT.into()))
    }
}

impl Engine for LazyDocker {
    type Handle = NoContainer;

    async fn prepare(&self, _spec: &InstanceSpec) -> Result<()> {
        Err(Error::Docker(NOT_BUILT.into()))
    }

    async fn start(&self, _spec: &InstanceSpec) -> Result<(NoContainer, Enforcement)> {
        Err(Error::Docker(NOT_BUILT.into()))
    }

    async fn wait(&self, handle: &NoContainer) -> Exit {
        match *handle {}
    }

    async fn stop(&self, handle: &NoContainer, _grace: Duration) -> Result<()> {
        match *handle {}
    }

    async fn exec(
        &self,
        handle: &NoContainer,
        _command: &[String],
        _timeout: Duration,
    ) -> Result<i64> {
        match *handle {}
    }

    async fn probe_address(&self, handle: &NoContainer) -> Result<IpAddr> {
        match *handle {}
    }

    async fn usage(&self, handle: &NoContainer) -> Option<Usage> {
        match *handle {}
    }

    /// Nothing to adopt: this node never started a container.
    async fn adopt(&self, _node: &str) -> Result<Vec<Adopted<NoContainer>>> {
        Ok(Vec::new())
    }

    async fn logs(&self, handle: &NoContainer, _lines: usize) -> Result<Vec<String>> {
        match *handle {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_docker_workload_is_refused_with_the_reason_and_nothing_is_adopted() {
        let d = LazyDocker::new(None, None);
        assert_eq!(
            d.get().await.unwrap_err().to_string(),
            format!("docker: {NOT_BUILT}")
        );
        assert!(d.adopt("n1").await.unwrap().is_empty());
    }
}
