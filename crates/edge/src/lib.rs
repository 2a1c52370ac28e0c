//! The Verge edge node library (`verge-edge`): everything a node needs to keep working
//! with the cloud gone, across its own restarts.
//!
//! | module        | owns                                                              |
//! |---------------|-------------------------------------------------------------------|
//! | [`identity`]  | joining (CA pinning, CSR), the node key/cert/CA, mTLS config       |
//! | [`artifact`]  | verified downloads; bounded, link-safe unpacking; refusals kept   |
//! | [`store`]     | the local desired-state store (redb) and the apply rules          |
//! | [`queue`]     | the disk-backed store-and-forward queue (byte bound, TTL, drops)  |
//! | [`sysinfo`]   | system facts and pressure conditions for `NodeStatus`             |
//! | [`state`]     | [`EdgeState`]: live state shared by the uplink and the local API  |
//! | [`local_api`] | the node's local HTTP API on a unix socket, and its client        |
//! | [`secrets`]   | Secret values sent to this node → env and registry logins (pure)  |
//! | [`node`]      | [`node::run_node`]: assembles and runs a node (`verge-edge`, `verge dev`) |
//!
//! Lean on purpose: nothing from the cloud side (no axum, no SQL, no image or wasm
//! crates); TLS is rustls with the ring provider only.
//!
//! Data dir layout (mode 0700): `node.key`, `node.crt`, `ca.crt`, `identity.json`
//! (see [`identity`]), `store.redb` ([`store`]), `queue.redb` ([`queue`]), `edge.sock`
//! ([`local_api`]). Every file is 0600 and every directory 0700, forced again at each
//! start by [`secure_data_dir`].

pub mod artifact;
pub mod engine;
mod error;
mod fsutil;
pub mod functions;
pub mod identity;
pub mod local_api;
pub mod node;
pub mod queue;
pub mod secrets;
pub mod state;
pub mod store;
pub mod sysinfo;
pub mod workloads;

pub use error::{Error, Result};
pub use fsutil::secure_data_dir;

/// Wall-clock Unix time in milliseconds (0 before 1970, saturating far in the future).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
pub use identity::{Identity, JoinOptions, join};
pub use local_api::LocalApi;
pub use queue::{Queue, QueueConfig, QueuedItem};
pub use state::EdgeState;
pub use store::{ApplyOutcome, LocalStore};
pub use sysinfo::Thresholds;

/// File names in the data dir.
pub mod paths {
    use std::path::{Path, PathBuf};

    pub const STORE: &str = "store.redb";
    pub const QUEUE: &str = "queue.redb";
    pub const SOCKET: &str = "edge.sock";

    pub fn store(data_dir: &Path) -> PathBuf {
        data_dir.join(STORE)
    }
    pub fn queue(data_dir: &Path) -> PathBuf {
        data_dir.join(QUEUE)
    }
    pub fn socket(data_dir: &Path) -> PathBuf {
        data_dir.join(SOCKET)
    }
}

/// The page cache of each of the node's redb databases (store, queue). redb's default
/// (1 GiB) is sized for servers; a node's databases hold a few MiB, and the OS page
/// cache is still under this one.
pub(crate) const REDB_CACHE_BYTES: usize = 1024 * 1024;

/// This agent's version (`agentVersion` in `Hello` and `NodeStatus`).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

pub mod agent;
