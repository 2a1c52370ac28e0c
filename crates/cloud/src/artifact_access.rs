//! Which artifacts a node's certificate may download: only those referenced by what is
//! placed on it (issue 13). A node that holds a valid certificate must not read other
//! nodes' application binaries, function code or task results by guessing digests.
//!
//! A node may fetch a digest when
//! - an App whose rollout assigns the node a version names it (any version the rollout
//!   state carries: target, stable, previous);
//! - an edge-placed Function whose placement selects the node names it, or a Trigger
//!   of such a Function names it in its input;
//! - the input of a task dispatched to the node names it ([`Grants`], recorded at
//!   dispatch until the attempt's deadline: image functions take `{"artifact": DIGEST}`
//!   sources).
//!
//! Tokens (operators, admins, viewers) are not limited here. Pure parts
//! ([`referenced_digests`], [`Grants`]) are separate from the store lookups
//! ([`node_may_fetch`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use serde_json::Value;
use verge_api::specs::FunctionSpec;
use verge_api::{Kind, Object};
use verge_store::DynStore;

use crate::error::ApiError;

/// Digests one node may hold grants for at once; the oldest deadline goes first.
const MAX_GRANTS_PER_NODE: usize = 1024;
/// Digests taken from one task input.
const MAX_DIGESTS_PER_INPUT: usize = 64;

/// The digest a string names: 64 hex digits, optionally `sha256:`-prefixed, or a URL
/// of this store's download route (`…/api/v1/artifacts/DIGEST`, an `artifact.url` on
/// the cloud's own origin).
fn digest_in(s: &str) -> Option<String> {
    let s = match s.rsplit_once("/api/v1/artifacts/") {
        Some((_, tail)) => tail.split(['?', '#']).next().unwrap_or(tail),
        None => s,
    };
    crate::artifacts::parse_sha256(s.strip_prefix("sha256:").unwrap_or(s))
}

/// Every string in `v` that is a SHA-256 digest (64 hex digits, optionally
/// `sha256:`-prefixed), lowercased; at most [`MAX_DIGESTS_PER_INPUT`].
pub fn referenced_digests(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        match v {
            Value::String(s) => {
                if let Some(d) = digest_in(s) {
                    if !out.contains(&d) {
                        out.push(d);
                    }
                    if out.len() >= MAX_DIGESTS_PER_INPUT {
                        return out;
                    }
                }
            }
            Value::Array(a) => stack.extend(a.iter()),
            Value::Object(m) => stack.extend(m.values()),
            _ => {}
        }
    }
    out
}

/// Whether `v` names `digest` anywhere.
fn mentions(v: &Value, digest: &str) -> bool {
    match v {
        Value::String(s) => digest_in(s).as_deref() == Some(digest),
        Value::Array(a) => a.iter().any(|x| mentions(x, digest)),
        Value::Object(m) => m.values().any(|x| mentions(x, digest)),
        _ => false,
    }
}

/// Digests granted to nodes by the tasks dispatched to them, each until a deadline
/// (unix ms). In memory: after a restart, tasks are dispatched again and grant again.
#[derive(Debug, Default)]
pub struct Grants {
    by_node: Mutex<HashMap<String, HashMap<String, i64>>>,
}

impl Grants {
    /// Grants `node` every digest `input` names, until `until_ms`.
    pub fn grant_referenced(&self, node: &str, input: &Value, until_ms: i64) {
        let digests = referenced_digests(input);
        if digests.is_empty() {
            return;
        }
        let mut all = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        let mine = all.entry(node.to_string()).or_default();
        for d in digests {
            let t = mine.entry(d).or_insert(until_ms);
            *t = (*t).max(until_ms);
        }
        while mine.len() > MAX_GRANTS_PER_NODE {
            let oldest = mine.iter().min_by_key(|(_, t)| **t).map(|(d, _)| d.clone());
            match oldest {
                Some(d) => mine.remove(&d),
                None => break,
            };
        }
    }

    /// Whether `node` holds an unexpired grant for `digest` (expired ones are dropped).
    pub fn allowed(&self, node: &str, digest: &str, now_ms: i64) -> bool {
        let mut all = self.by_node.lock().unwrap_or_else(|e| e.into_inner());
        let Some(mine) = all.get_mut(node) else {
            return false;
        };
        mine.retain(|_, until| *until > now_ms);
        mine.contains_key(digest)
    }

    /// Forgets a deleted node.
    pub fn forget(&self, node: &str) {
        self.by_node
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }
}

fn objects(items: &[verge_store::KeyValue]) -> impl Iterator<Item = Object> + '_ {
    items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<Object>(&kv.value).ok())
}

/// Whether the node `node` may download `digest` (see the module comment).
pub async fn node_may_fetch(
    store: &DynStore,
    grants: &Grants,
    node: &str,
    digest: &str,
    now_ms: i64,
) -> Result<bool, ApiError> {
    if grants.allowed(node, digest, now_ms) {
        return Ok(true);
    }
    let apps = store
        .list(&crate::objects::kind_prefix(Kind::App), None)
        .await?;
    for app in objects(&apps.items) {
        let rollout = &app.status["rollout"];
        if rollout["nodes"].get(node).is_none() {
            continue;
        }
        let specs = [
            &app.spec,
            &rollout["targetSpec"],
            &rollout["stableSpec"],
            &rollout["previousSpec"],
        ];
        if specs.iter().any(|s| mentions(s, digest)) {
            return Ok(true);
        }
    }
    let labels: BTreeMap<String, String> = match store
        .get(&crate::objects::object_key(Kind::Node, node))
        .await?
    {
        Some(kv) => serde_json::from_slice::<Object>(&kv.value)
            .map(|o| o.metadata.labels)
            .unwrap_or_default(),
        None => return Ok(false),
    };
    let functions = store
        .list(&crate::objects::kind_prefix(Kind::Function), None)
        .await?;
    let mut placed = Vec::new();
    for f in objects(&functions.items) {
        let Ok(spec) = serde_json::from_value::<FunctionSpec>(f.spec.clone()) else {
            continue;
        };
        if spec.in_cloud() || !spec.placed_on(&labels) {
            continue;
        }
        if mentions(&f.spec, digest) {
            return Ok(true);
        }
        placed.push(f.metadata.name);
    }
    let triggers = store
        .list(&crate::objects::kind_prefix(Kind::Trigger), None)
        .await?;
    for t in objects(&triggers.items) {
        let function = t.spec["function"].as_str().unwrap_or_default();
        if placed.iter().any(|p| p == function) && mentions(&t.spec, digest) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn digests_are_found_anywhere_in_an_input() {
        let v = json!({"image": {"artifact": A}, "layers": [{"src": format!("sha256:{B}")}],
                       "note": "not a digest", "n": 64});
        let mut d = referenced_digests(&v);
        d.sort();
        assert_eq!(d, vec![A.to_string(), B.to_string()]);
        assert!(referenced_digests(&json!({"x": "abc"})).is_empty());
        let url = format!("https://cloud:7443/api/v1/artifacts/{A}?x=1");
        assert_eq!(
            referenced_digests(&json!({"url": url})),
            vec![A.to_string()]
        );
        let many: Vec<String> = (0..200).map(|i| format!("{i:064x}")).collect();
        assert_eq!(
            referenced_digests(&json!(many)).len(),
            MAX_DIGESTS_PER_INPUT
        );
    }

    #[test]
    fn grants_are_per_node_and_expire() {
        let g = Grants::default();
        g.grant_referenced("n1", &json!({"artifact": A}), 1_000);
        assert!(g.allowed("n1", A, 999));
        assert!(!g.allowed("n2", A, 999), "another node holds no grant");
        assert!(!g.allowed("n1", B, 999));
        assert!(!g.allowed("n1", A, 1_000), "expired at the deadline");
        g.grant_referenced("n1", &json!([A]), 5_000);
        g.forget("n1");
        assert!(!g.allowed("n1", A, 10));
    }

    #[test]
    fn grants_per_node_are_bounded() {
        let g = Grants::default();
        for i in 0..(MAX_GRANTS_PER_NODE + 10) {
            g.grant_referenced("n", &json!(format!("{i:064x}")), 1_000 + i as i64);
        }
        assert!(!g.allowed("n", &format!("{:064x}", 0), 0), "oldest dropped");
        assert!(g.allowed("n", &format!("{:064x}", MAX_GRANTS_PER_NODE + 9), 0));
    }
}
