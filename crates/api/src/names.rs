//! Every annotation and label name Verge itself sets or reads, defined once, all under
//! the `verge.dev` domain (the domain of [`crate::API_VERSION`]). Cloud, edge and CLI
//! import them from here; nothing spells these strings anywhere else.

/// On an App sent to a node: how many replicas run there.
pub const ANNOTATION_REPLICAS: &str = "verge.dev/replicas";

/// Set by `verge rollout pause`: the rollout holds at its current step.
pub const ANNOTATION_PAUSED: &str = "rollout.verge.dev/paused";
/// Set by `verge rollout promote`: the step the operator promoted the rollout to.
pub const ANNOTATION_PROMOTE: &str = "rollout.verge.dev/promote";
/// Bumped by `verge rollout resume`: a counter, so each resume is a change.
pub const ANNOTATION_RESUME: &str = "rollout.verge.dev/resume";
/// Set by `verge rollout rollback`: go back to the last stable version.
pub const ANNOTATION_ROLLBACK: &str = "rollout.verge.dev/rollback";

/// On a Node: the serial of its current certificate.
pub const ANNOTATION_CERT_SERIAL: &str = "verge.dev/cert-serial";
/// On a Node: when its current certificate expires (RFC 3339).
pub const ANNOTATION_CERT_NOT_AFTER: &str = "verge.dev/cert-not-after";
/// On a Node: the serial its certificate had before the last renewal (valid until it
/// expires, so revoked with the node too).
pub const ANNOTATION_PREVIOUS_CERT_SERIAL: &str = "verge.dev/previous-cert-serial";

/// Finalizer on every Node: its certificates are revoked, its session closed and its
/// records removed before the Node disappears (the node-deletion controller removes it).
pub const FINALIZER_NODE_CLEANUP: &str = "verge.dev/node-cleanup";
/// Finalizers under this prefix belong to the server: clients cannot add or remove them.
pub const SYSTEM_FINALIZER_PREFIX: &str = "verge.dev/";

/// On a Secret read without its values (every value is then `""`). A Secret carrying
/// it is refused on write, so a redacted copy never overwrites the real values.
pub const ANNOTATION_REDACTED: &str = "verge.dev/redacted";
/// On a Secret whose stored values could not be decrypted, saying why.
pub const ANNOTATION_SECRET_ERROR: &str = "verge.dev/secret-error";

/// On tasks a trigger started: the trigger's name.
pub const LABEL_TRIGGER: &str = "verge.dev/trigger";
/// On fan-out child tasks: the parent task's name.
pub const LABEL_PARENT: &str = "verge.dev/parent";
/// On the node `verge dev` runs.
pub const LABEL_DEV: &str = "verge.dev/dev";
/// On the example function `verge dev` creates.
pub const LABEL_EXAMPLE: &str = "verge.dev/example";
/// On the functions `verge image install` creates: the pack they belong to.
pub const LABEL_PACK: &str = "verge.dev/pack";
