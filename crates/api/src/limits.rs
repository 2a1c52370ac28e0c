//! Every bound the validator enforces, in one place, so the server, the CLI and the
//! docs can quote the same numbers.

/// Documents in one YAML stream or JSON array.
pub const MAX_DOCUMENTS: usize = 1000;
/// Nesting of arrays and objects in a document from a user (manifests, request
/// bodies, function input). Half of serde_json's own recursion limit (128), so a
/// stored object wrapped in an envelope (a watch event, a `Desired` message) can
/// always be read back.
pub const MAX_DEPTH: usize = 64;
/// Bytes of content a YAML/JSON input may expand to, aliases counted at every use
/// (see [`crate::strict_json::Bounds`] and [`crate::expansion_bound`]), when the caller
/// gives no cap of its own (the server uses its body cap instead). An input longer
/// than this may still expand to its own length (without aliases it never expands
/// beyond it).
pub const MAX_EXPANDED_BYTES: usize = 1024 * 1024;
/// What even a small input may expand to through aliases.
pub const MIN_EXPANSION_BYTES: usize = 64 * 1024;

/// `metadata.name` (DNS-1123 label).
pub const MAX_NAME_LEN: usize = 63;
/// Entries in `metadata.labels`.
pub const MAX_LABELS: usize = 64;
/// The name part of a label key (after the optional `prefix/`).
pub const MAX_LABEL_NAME_LEN: usize = 63;
/// The DNS-subdomain prefix of a label key.
pub const MAX_LABEL_PREFIX_LEN: usize = 253;
/// A label value.
pub const MAX_LABEL_VALUE_LEN: usize = 63;
/// Total bytes of all annotation keys and values.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 * 1024;
/// Server-set string fields a client may echo back (`uid`, `resourceVersion`,
/// `creationTimestamp`).
pub const MAX_SERVER_FIELD_LEN: usize = 128;
/// Finalizers per object (`metadata.finalizers`).
pub const MAX_FINALIZERS: usize = 16;

/// Docker image reference.
pub const MAX_IMAGE_LEN: usize = 512;
/// Entries in a `command` or `args` list.
pub const MAX_ARGS: usize = 64;
/// Bytes in one command or argument string.
pub const MAX_ARG_LEN: usize = 4096;
/// Entries in an `env` map.
pub const MAX_ENV: usize = 256;
/// Bytes in an environment variable name.
pub const MAX_ENV_NAME_LEN: usize = 256;
/// Bytes in an environment variable value.
pub const MAX_ENV_VALUE_LEN: usize = 32 * 1024;
/// Keys in a Secret's `spec.data`.
pub const MAX_SECRET_KEYS: usize = 64;
/// Bytes of keys and values in a Secret's `spec.data` together.
pub const MAX_SECRET_BYTES: usize = 64 * 1024;
/// Bytes in a Secret key.
pub const MAX_SECRET_KEY_LEN: usize = 253;
/// Entries in `ports`.
pub const MAX_PORTS: usize = 64;
/// Entries in `volumes`.
pub const MAX_VOLUMES: usize = 64;
/// Bytes in a filesystem path.
pub const MAX_PATH_LEN: usize = 4096;
/// Entries in a node selector (or fanout selector).
pub const MAX_SELECTOR_ENTRIES: usize = 64;
/// `placement.replicas`.
pub const MAX_REPLICAS: u32 = 10_000;
/// `placement.replicasPerNode`.
pub const MAX_REPLICAS_PER_NODE: u32 = 100;
/// Bytes in a CPU or memory quantity string.
pub const MAX_QUANTITY_LEN: usize = 32;
/// Bytes in a URL (`artifact.url`, `callbackUrl`).
pub const MAX_URL_LEN: usize = 2048;

/// Bytes in a function handler.
pub const MAX_HANDLER_LEN: usize = 256;
/// Bytes of inline function source (`code`).
pub const MAX_INLINE_CODE_BYTES: usize = 256 * 1024;
/// `resources.timeoutSeconds` of a function.
pub const MAX_FUNCTION_TIMEOUT_SECONDS: u32 = 900;
/// `resources.maxConcurrency` of a function.
pub const MAX_FUNCTION_CONCURRENCY: u32 = 1000;
/// `scaling.maxInstances` (and `scaling.minWarm`) of a function.
pub const MAX_FUNCTION_INSTANCES: u32 = 1000;
/// `scaling.idleSeconds` of a function.
pub const MAX_IDLE_SECONDS: u32 = 86_400;

/// Bytes in a cron schedule.
pub const MAX_SCHEDULE_LEN: usize = 256;
/// Bytes in a timezone name.
pub const MAX_TIMEZONE_LEN: usize = 64;
/// `missedPolicy.maxCatchUp`.
pub const MAX_CATCH_UP: u32 = 1000;
/// Serialized JSON bytes of a task or trigger `input`.
pub const MAX_INPUT_BYTES: usize = 256 * 1024;
/// Bytes in a task `idempotencyKey`.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Task `timeoutSeconds`.
pub const MAX_TASK_TIMEOUT_SECONDS: u32 = 86_400;
/// Task `maxAttempts`.
pub const MAX_TASK_ATTEMPTS: u32 = 100;
/// Most entries in an App's `dependsOn`.
pub const MAX_DEPENDENCIES: usize = 32;
/// Most steps in an App's `rollout.steps`.
pub const MAX_ROLLOUT_STEPS: usize = 20;
