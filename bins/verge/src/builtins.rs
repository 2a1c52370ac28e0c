//! The builtin functions (`runtime: builtin`) this binary offers, for the cloud and
//! the `verge dev` edge node.

/// The registry: the runtime's own (`echo`, `sleep`).
pub fn registry() -> verge_runtime::Registry {
    verge_runtime::Registry::with_defaults()
}
