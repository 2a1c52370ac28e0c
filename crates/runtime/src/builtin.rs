//! Builtin functions: Rust closures registered by name, run on tokio's blocking pool.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{Input, Output};

/// A builtin's failure; reported to the caller as [`crate::Error::Handler`] with an
/// empty traceback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinError {
    pub error_type: String,
    pub message: String,
}

impl BuiltinError {
    pub fn new(error_type: impl Into<String>, message: impl Into<String>) -> Self {
        BuiltinError {
            error_type: error_type.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for BuiltinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error_type, self.message)
    }
}

impl std::error::Error for BuiltinError {}

pub(crate) type BuiltinFn = dyn Fn(Input) -> Result<Output, BuiltinError> + Send + Sync;

/// Builtin functions by name (`image.resize`, `echo`, ...).
#[derive(Default, Clone)]
pub struct Registry {
    fns: BTreeMap<String, Arc<BuiltinFn>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

impl Registry {
    pub fn new() -> Self {
        Registry::default()
    }

    /// A registry holding `echo` (returns its input) and `sleep` (input `{"ms": N}`,
    /// sleeps N ms, returns `{"slept_ms": N}`), for tests and benchmarks.
    pub fn with_defaults() -> Self {
        let mut r = Registry::new();
        r.register("echo", |input| {
            Ok(match input {
                Input::Json(v) => Output::Json(v),
                Input::Bytes { content_type, data } => Output::Bytes { content_type, data },
            })
        });
        r.register("sleep", |input| {
            let ms = match &input {
                Input::Json(v) => v.get("ms").and_then(|m| m.as_u64()),
                Input::Bytes { data, .. } => serde_json::from_slice::<serde_json::Value>(data)
                    .ok()
                    .and_then(|v| v.get("ms").and_then(|m| m.as_u64())),
            }
            .ok_or_else(|| BuiltinError::new("ValueError", "sleep expects {\"ms\": N}"))?;
            std::thread::sleep(Duration::from_millis(ms));
            Ok(Output::Json(serde_json::json!({ "slept_ms": ms })))
        });
        r
    }

    /// Registers (or replaces) the builtin `name`.
    pub fn register<F>(&mut self, name: &str, f: F)
    where
        F: Fn(Input) -> Result<Output, BuiltinError> + Send + Sync + 'static,
    {
        self.fns.insert(name.to_string(), Arc::new(f));
    }

    pub fn names(&self) -> Vec<String> {
        self.fns.keys().cloned().collect()
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<BuiltinFn>> {
        self.fns.get(name).cloned()
    }
}
