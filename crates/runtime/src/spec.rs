//! From a `Function` resource to the [`FunctionDef`] a pool runs, with the platform's
//! defaults for what the spec leaves out. The cloud and the edge agent both use it, so
//! a function behaves the same wherever it is placed.

use std::time::Duration;

use verge_api::specs::{FunctionSpec, Runtime as Lang, parse_memory_bytes};

use crate::{FunctionDef, Kind, Source};

/// Per-invocation deadline when `resources.timeoutSeconds` is unset.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Worker processes per function when `scaling.maxInstances` is unset (one per core
/// of a small edge box).
pub const DEFAULT_MAX_INSTANCES: u32 = 2;
/// Idle time before a worker above `minWarm` stops, when `scaling.idleSeconds` is unset.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);
/// Waiting invocations allowed per instance (times `maxConcurrency`) before `429`.
pub const QUEUE_PER_SLOT: usize = 64;

/// The pool definition of function `name` at `version` (a string that changes whenever
/// the spec changes: the object's generation or a content hash), with its code in
/// `source` (the caller resolves an artifact to a directory).
pub fn def_from_spec(
    name: &str,
    version: &str,
    spec: &FunctionSpec,
    source: Source,
) -> FunctionDef {
    let resources = spec.resources.clone().unwrap_or_default();
    let scaling = spec.scaling.clone().unwrap_or_default();
    let max_instances = scaling
        .max_instances
        .unwrap_or(DEFAULT_MAX_INSTANCES)
        .max(1);
    let max_concurrency = resources.max_concurrency.unwrap_or(1).max(1);
    FunctionDef {
        name: name.to_string(),
        version: version.to_string(),
        runtime: match spec.runtime {
            Lang::Python3 => Kind::Python3,
            Lang::Nodejs => Kind::Nodejs,
            Lang::Builtin => Kind::Builtin,
        },
        handler: spec.handler.clone(),
        source,
        env: spec.env.clone(),
        memory_bytes: resources.memory.as_deref().and_then(parse_memory_bytes),
        timeout: resources
            .timeout_seconds
            .map_or(DEFAULT_TIMEOUT, |s| Duration::from_secs(u64::from(s))),
        max_concurrency,
        min_warm: scaling.min_warm.unwrap_or(0).min(max_instances),
        max_instances,
        idle: scaling
            .idle_seconds
            .map_or(DEFAULT_IDLE, |s| Duration::from_secs(u64::from(s))),
        queue_capacity: max_instances as usize * max_concurrency as usize * QUEUE_PER_SLOT,
    }
}

/// The module file a `module.function` handler loads (`handler.py` for
/// `handler.main`), for writing inline code.
pub fn module_file(spec: &FunctionSpec) -> Option<String> {
    let (module, _) = spec.handler.rsplit_once('.')?;
    let ext = match spec.runtime {
        Lang::Python3 => "py",
        Lang::Nodejs => "js",
        Lang::Builtin => return None,
    };
    Some(format!("{}.{ext}", module.replace('.', "/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> FunctionSpec {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_and_overrides() {
        let s = spec("runtime: python3\nhandler: handler.main\ncode: 'def main(e): return e'\n");
        let d = def_from_spec("echo", "1", &s, Source::Inline(s.code.clone().unwrap()));
        assert!(matches!(d.runtime, Kind::Python3));
        assert_eq!(d.timeout, DEFAULT_TIMEOUT);
        assert_eq!((d.min_warm, d.max_instances), (0, DEFAULT_MAX_INSTANCES));
        assert_eq!(d.queue_capacity, 2 * QUEUE_PER_SLOT);
        assert_eq!(d.memory_bytes, None);
        assert_eq!(module_file(&s).as_deref(), Some("handler.py"));

        let s = spec(
            "runtime: nodejs\nhandler: lib.index.main\ncode: x\nresources: {memory: 64Mi, \
             timeoutSeconds: 2, maxConcurrency: 4}\nscaling: {minWarm: 9, maxInstances: 3, \
             idleSeconds: 5}\n",
        );
        let d = def_from_spec("n", "2", &s, Source::None);
        assert_eq!(d.memory_bytes, Some(64 << 20));
        assert_eq!(d.timeout, Duration::from_secs(2));
        assert_eq!((d.min_warm, d.max_instances, d.max_concurrency), (3, 3, 4));
        assert_eq!(d.idle, Duration::from_secs(5));
        assert_eq!(module_file(&s).as_deref(), Some("lib/index.js"));
    }
}
