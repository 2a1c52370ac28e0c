//! Desired-state sync: which objects each node should hold, sent as versioned deltas.
//!
//! The cloud keeps, per node, the set it last *sent* and the set the node last
//! *acknowledged* (persisted at `/system/nodesync/{node}` so deltas survive a cloud
//! restart), each as `{Kind/name → mod_revision}` at a store revision. When a node says
//! `hello` with its applied revision, it gets a delta from whichever of those matches,
//! or a full snapshot when neither does (a new node, a node that lost its store, or a
//! cloud that lost the record). When objects or node labels change, every connected node
//! whose desired set changed gets a delta from what it was last sent. The edge applies a
//! delta only if it starts at its applied revision and persists before acking, so a lost
//! message just leads to a `hello` and a resync.
//!
//! What it knows of the objects comes from the shared informers ([`Sync::run`]), never
//! from a watch of its own: one store watch per kind in the cloud, relisted by the
//! informer after a compaction or any watch error, whose diff reaches the nodes like
//! any other change. The revision a delta goes to is the highest the informers reflect,
//! and always a new one when what nodes get changed.
//! A `hello` that arrives before the cache was first built waits for it (never an
//! empty snapshot that would empty the node).
//!
//! Synced kinds: `Config` (placed by `spec.placement.nodeSelector`), `App` (the
//! version the App controller assigned to the node, see [`AppDesired`]), `Function`
//! (edge-placed, by `spec.placement.nodeSelector`), `Trigger` (those the node fires
//! itself, see [`TriggerSpec::fired_by`]) and `Secret`: only the Secrets the Apps and
//! Functions sent to the node reference (`secretEnv`, `registryAuth`), with only the
//! referenced keys, decrypted here for the node's mutual-TLS channel (decision 017).
//! Their revision is a digest of the stored revision and the keys sent, so a node that
//! starts referencing another key gets it; no value goes into a digest or a record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::SelectAll;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use verge_api::specs::{AppSpec, ConfigSpec, FunctionSpec, SecretKeyRef, SecretSpec, TriggerSpec};
use verge_api::{Kind, Object};
use verge_proto::{Channel, Desired, Message, ObjectRef};
use verge_store::{DynStore, Expect};

use crate::controller::Informers;
use crate::gateway::DynDownlink;
use crate::secrets::SecretBox;

const RECORD_PREFIX: &str = "/system/nodesync/";

/// The kinds whose changes change what nodes should hold (Node: its labels).
const SYNCED_KINDS: [Kind; 6] = [
    Kind::Config,
    Kind::App,
    Kind::Function,
    Kind::Trigger,
    Kind::Secret,
    Kind::Node,
];

/// What the nodes should hold of one App: the version each placed node runs (from
/// `status.rollout.nodes`, written by the App controller) and, per version, the object
/// sent (spec of that version, no status), keyed by a content hash so a status-only
/// change resends nothing.
#[derive(Default, PartialEq)]
struct AppDesired {
    /// node → (version, replicas there).
    nodes: BTreeMap<String, (String, u32)>,
    /// (version, replicas) → the object sent, by content hash.
    objects: BTreeMap<(String, u32), (i64, Object)>,
    /// (version, replicas) → the Secret values that version references.
    secrets: BTreeMap<(String, u32), Vec<SecretKeyRef>>,
}

/// The `(name, key)` pairs of Secrets `spec` references.
fn secret_refs(uses: Vec<verge_api::specs::SecretUse>) -> Vec<SecretKeyRef> {
    uses.into_iter().map(|u| u.secret).collect()
}

/// 63 bits of SHA-256 of `bytes`: a revision for content the store has no revision for.
fn digest_rev(bytes: &[u8]) -> i64 {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(bytes);
    let mut h = [0u8; 8];
    h.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(h) >> 1) as i64
}

pub use verge_api::names::ANNOTATION_REPLICAS;

impl AppDesired {
    fn from_object(o: &Object) -> Self {
        let Ok(state) = serde_json::from_value::<crate::apps::rollout::RolloutState>(
            o.status["rollout"].clone(),
        ) else {
            return Self::default();
        };
        let spec_of = |version: &str| {
            if version == state.target_version {
                state.target_spec.as_ref().or(Some(&o.spec))
            } else if state.stable_version.as_deref() == Some(version) {
                state.stable_spec.as_ref()
            } else {
                None
            }
        };
        let mut nodes = BTreeMap::new();
        let mut objects = BTreeMap::new();
        let mut secrets = BTreeMap::new();
        for (node, version) in &state.nodes {
            let Some(spec) = spec_of(version) else {
                continue;
            };
            let replicas = o.status["placement"][node]
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .unwrap_or(1);
            let k = (version.clone(), replicas);
            if !objects.contains_key(&k) {
                let mut obj = Object {
                    api_version: o.api_version.clone(),
                    kind: o.kind.clone(),
                    metadata: verge_api::ObjectMeta {
                        name: o.metadata.name.clone(),
                        labels: o.metadata.labels.clone(),
                        annotations: BTreeMap::from([(
                            ANNOTATION_REPLICAS.to_string(),
                            replicas.to_string(),
                        )]),
                        ..Default::default()
                    },
                    spec: spec.clone(),
                    status: serde_json::Value::Null,
                };
                let hash = digest_rev(&serde_json::to_vec(&obj).unwrap_or_default());
                obj.metadata.resource_version = Some(hash.to_string());
                objects.insert(k.clone(), (hash, obj));
                let uses = serde_json::from_value::<AppSpec>(spec.clone())
                    .map(|a| secret_refs(a.secret_uses()))
                    .unwrap_or_default();
                secrets.insert(k.clone(), uses);
            }
            nodes.insert(node.clone(), k);
        }
        Self {
            nodes,
            objects,
            secrets,
        }
    }
}

#[derive(Default)]
struct Cache {
    revision: i64,
    /// name → (mod revision, object, its parsed spec: parsed once, matched per node).
    configs: BTreeMap<String, (i64, Object, ConfigSpec)>,
    apps: BTreeMap<String, AppDesired>,
    functions: BTreeMap<String, (i64, Object, FunctionSpec)>,
    triggers: BTreeMap<String, (i64, Object, TriggerSpec)>,
    /// As stored: values sealed, opened only for the nodes that need them.
    secrets: BTreeMap<String, (i64, Object, SecretSpec)>,
    node_labels: HashMap<String, BTreeMap<String, String>>,
}

/// What a node acknowledged, persisted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    acked_revision: i64,
    objects: BTreeMap<String, i64>,
}

#[derive(Default)]
struct NodeSync {
    connected: bool,
    sent_rev: i64,
    sent: BTreeMap<String, i64>,
    acked: Option<Record>,
}

pub struct Sync {
    store: DynStore,
    gateway: OnceLock<DynDownlink>,
    /// Opens Secret values for the nodes (none are sent without it).
    secret_box: OnceLock<Arc<SecretBox>>,
    cache: RwLock<Cache>,
    /// Flips to true once the cache was built from the synced informers: a node that
    /// says hello before waits for it instead of getting an empty snapshot.
    built: watch::Sender<bool>,
    nodes: Mutex<HashMap<String, NodeSync>>,
}

impl Sync {
    pub fn new(store: DynStore) -> Self {
        Self {
            store,
            gateway: OnceLock::new(),
            secret_box: OnceLock::new(),
            cache: RwLock::new(Cache::default()),
            built: watch::channel(false).0,
            nodes: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_gateway(&self, gw: DynDownlink) {
        let _ = self.gateway.set(gw);
    }

    pub fn set_secret_box(&self, sbox: Arc<SecretBox>) {
        let _ = self.secret_box.set(sbox);
    }

    /// The Secret `name` as a node that references `keys` of it gets it: those keys,
    /// decrypted. `None` when there is no such Secret or nothing of it opens (the
    /// node then reports the reference as missing).
    fn secret_for_node(
        &self,
        cache: &Cache,
        name: &str,
        keys: &BTreeSet<String>,
    ) -> Option<(i64, Object)> {
        let (rev, stored, _) = cache.secrets.get(name)?;
        let sbox = self.secret_box.get()?;
        let (mut values, errors) = sbox.open_data(name, &stored.spec);
        if !errors.is_empty() {
            tracing::warn!(secret = %name, errors = %errors.join("; "), "secret values that do not open are not sent to nodes");
        }
        values.retain(|k, _| keys.contains(k));
        let mut fingerprint = rev.to_string();
        for k in values.keys() {
            fingerprint.push('\0');
            fingerprint.push_str(k);
        }
        let version = digest_rev(fingerprint.as_bytes());
        let obj = Object {
            api_version: stored.api_version.clone(),
            kind: stored.kind.clone(),
            metadata: verge_api::ObjectMeta {
                name: name.to_string(),
                resource_version: Some(version.to_string()),
                ..Default::default()
            },
            spec: serde_json::json!({ "data": values }),
            status: serde_json::Value::Null,
        };
        Some((version, obj))
    }

    /// The objects `node` should hold: `Kind/name → (mod_revision, object)`.
    fn desired(&self, node: &str) -> (i64, BTreeMap<String, (i64, Object)>) {
        let Ok(cache) = self.cache.read() else {
            return (0, BTreeMap::new());
        };
        let empty = BTreeMap::new();
        let labels = cache.node_labels.get(node).unwrap_or(&empty);
        let mut set: BTreeMap<String, (i64, Object)> = cache
            .configs
            .iter()
            .filter(|(_, (_, _, spec))| spec.selects(labels))
            .map(|(name, (rev, o, _))| (format!("Config/{name}"), (*rev, o.clone())))
            .collect();
        // Secret name → the keys what is sent here references.
        let mut secrets: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut wants = |refs: Vec<SecretKeyRef>| {
            for r in refs {
                secrets.entry(r.name).or_default().insert(r.key);
            }
        };
        for (name, app) in &cache.apps {
            if let Some(k) = app.nodes.get(node)
                && let Some(entry) = app.objects.get(k)
            {
                set.insert(format!("App/{name}"), entry.clone());
                wants(app.secrets.get(k).cloned().unwrap_or_default());
            }
        }
        for (name, (rev, o, spec)) in &cache.functions {
            if spec.placed_on(labels) {
                set.insert(format!("Function/{name}"), (*rev, o.clone()));
                wants(secret_refs(spec.secret_uses()));
            }
        }
        for (name, keys) in &secrets {
            if let Some(entry) = self.secret_for_node(&cache, name, keys) {
                set.insert(format!("Secret/{name}"), entry);
            }
        }
        for (name, (rev, o, spec)) in &cache.triggers {
            let function = spec
                .function
                .as_ref()
                .and_then(|f| cache.functions.get(f))
                .map(|(_, _, f)| f);
            if spec.fired_by(node, labels, function) {
                set.insert(format!("Trigger/{name}"), (*rev, o.clone()));
            }
        }
        (cache.revision, set)
    }

    /// Replicas of App `app` placed on `node`, as sent to it; `None` when the app is
    /// not placed there. (What a node may report or log for, see `nodes::logs`.)
    pub fn app_replicas(&self, node: &str, app: &str) -> Option<u32> {
        let cache = self.cache.read().ok()?;
        let app = cache.apps.get(app)?;
        app.nodes.get(node).map(|(_, replicas)| *replicas)
    }

    /// Whether Function `name` is placed on `node` (synced to it).
    pub fn function_placed(&self, node: &str, name: &str) -> bool {
        let Ok(cache) = self.cache.read() else {
            return false;
        };
        let empty = BTreeMap::new();
        let labels = cache.node_labels.get(node).unwrap_or(&empty);
        cache
            .functions
            .get(name)
            .is_some_and(|(_, _, spec)| spec.placed_on(labels))
    }

    /// The function Trigger `name` runs, when `node` fires that trigger itself (it is
    /// synced to the node); `None` otherwise.
    pub fn trigger_function(&self, node: &str, name: &str) -> Option<String> {
        let cache = self.cache.read().ok()?;
        let (_, _, spec) = cache.triggers.get(name)?;
        let empty = BTreeMap::new();
        let labels = cache.node_labels.get(node).unwrap_or(&empty);
        let function = spec
            .function
            .as_ref()
            .and_then(|f| cache.functions.get(f))
            .map(|(_, _, f)| f);
        spec.fired_by(node, labels, function)
            .then(|| spec.function.clone())
            .flatten()
    }

    async fn load_record(&self, node: &str) -> Option<Record> {
        let kv = self
            .store
            .get(&format!("{RECORD_PREFIX}{node}"))
            .await
            .ok()??;
        serde_json::from_slice(&kv.value).ok()
    }

    /// A node is alive but its hello was missed: acts as if it said it holds what it
    /// last acknowledged. If it holds something else, the delta does not apply there
    /// and the node answers with a real hello (`NeedsResync`), so this self-corrects.
    /// The caller knows the hello was missed (see `ExternalBroker`), so this does not
    /// look at the `connected` flag, which an external broker never clears.
    pub async fn implicit_hello(&self, node: &str) {
        self.greet(node, None).await;
    }

    /// A node connected and told us its applied revision.
    pub async fn hello(&self, node: &str, last_applied: i64) {
        self.greet(node, Some(last_applied)).await;
    }

    /// `last_applied: None`: take what the node last acknowledged.
    async fn greet(&self, node: &str, last_applied: Option<i64>) {
        let _ = self.built.subscribe().wait_for(|b| *b).await;
        let known = self
            .nodes
            .lock()
            .ok()
            .and_then(|n| n.get(node).map(|s| s.acked.is_some()))
            .unwrap_or(false);
        let record = if known {
            None
        } else {
            self.load_record(node).await
        };
        let base = {
            let Ok(mut nodes) = self.nodes.lock() else {
                return;
            };
            let st = nodes.entry(node.to_string()).or_default();
            st.connected = true;
            if record.is_some() {
                st.acked = record;
            }
            let last_applied =
                last_applied.unwrap_or_else(|| st.acked.as_ref().map_or(0, |r| r.acked_revision));
            match &st.acked {
                Some(r) if last_applied > 0 && r.acked_revision == last_applied => {
                    Some((last_applied, r.objects.clone()))
                }
                _ if last_applied > 0 && st.sent_rev == last_applied => {
                    Some((last_applied, st.sent.clone()))
                }
                _ => None,
            }
        };
        self.send(node, base);
    }

    /// Sends `node` what changed since `base` (`None`: a snapshot). Returns whether a
    /// message went out.
    fn send(&self, node: &str, base: Option<(i64, BTreeMap<String, i64>)>) -> bool {
        let (revision, target) = self.desired(node);
        let snapshot = base.is_none();
        let (from, base) = base.unwrap_or_default();
        let upserts: Vec<Object> = target
            .iter()
            .filter(|(k, (rev, _))| base.get(*k) != Some(rev))
            .map(|(_, (_, o))| o.clone())
            .collect();
        let deletes: Vec<ObjectRef> = base
            .keys()
            .filter(|k| !target.contains_key(*k))
            .filter_map(|k| {
                k.split_once('/').map(|(kind, name)| ObjectRef {
                    kind: kind.to_string(),
                    name: name.to_string(),
                })
            })
            .collect();
        let sent: BTreeMap<String, i64> =
            target.iter().map(|(k, (r, _))| (k.clone(), *r)).collect();
        if !snapshot && upserts.is_empty() && deletes.is_empty() {
            if let Ok(mut nodes) = self.nodes.lock() {
                let st = nodes.entry(node.to_string()).or_default();
                st.sent_rev = from;
                st.sent = sent;
            }
            return false;
        }
        let msg = Message::Desired(Desired {
            from_revision: from,
            to_revision: revision.max(from),
            snapshot,
            upserts,
            deletes,
        });
        let payload = Bytes::from(verge_proto::encode(&msg));
        let ok = self
            .gateway
            .get()
            .is_some_and(|gw| gw.send(node, Channel::Desired, payload));
        if ok && let Ok(mut nodes) = self.nodes.lock() {
            let st = nodes.entry(node.to_string()).or_default();
            st.sent_rev = revision.max(from);
            st.sent = sent;
        }
        ok
    }

    /// The node persisted up to `revision`. Returns the sync status to show on the Node.
    pub async fn ack(
        &self,
        node: &str,
        revision: i64,
    ) -> Option<verge_api::status::node::SyncStatus> {
        let record = {
            let mut nodes = self.nodes.lock().ok()?;
            let st = nodes.get_mut(node)?;
            if st.sent_rev != revision {
                return None;
            }
            let r = Record {
                acked_revision: revision,
                objects: st.sent.clone(),
            };
            st.acked = Some(r.clone());
            r
        };
        let key = format!("{RECORD_PREFIX}{node}");
        let value: Bytes = serde_json::to_vec(&record).ok()?.into();
        let written = match self
            .store
            .update(&key, value.clone(), Default::default(), Expect::Any)
            .await
        {
            Err(verge_store::Error::NotFound { .. }) => self
                .store
                .create(&key, value, Default::default())
                .await
                .map(|_| ()),
            r => r.map(|_| ()),
        };
        if let Err(e) = written {
            tracing::warn!(%node, error = %e, "could not persist the sync record");
        }
        Some(verge_api::status::node::SyncStatus {
            desired_revision: revision,
            acked_revision: revision,
            objects: record.objects.len() as u64,
            last_sync: crate::auth::now_rfc3339(),
        })
    }

    pub fn disconnected(&self, node: &str) {
        if let Ok(mut nodes) = self.nodes.lock()
            && let Some(st) = nodes.get_mut(node)
        {
            st.connected = false;
        }
    }

    pub fn forget(&self, node: &str) {
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.remove(node);
        }
    }

    /// Deletes a node's persisted record (the node was deleted).
    pub async fn drop_record(&self, node: &str) {
        let _ = self
            .store
            .delete(&format!("{RECORD_PREFIX}{node}"), Expect::Any)
            .await;
    }

    /// Applies one object's state (`None`: deleted) of `kind` to `cache`. Returns
    /// whether what nodes get changed.
    fn apply(cache: &mut Cache, kind: Kind, name: &str, obj: Option<&Object>) -> bool {
        match kind {
            // Parsed once here, matched per node.
            Kind::Config => Self::apply_spec(&mut cache.configs, name, obj),
            Kind::Function => Self::apply_spec(&mut cache.functions, name, obj),
            Kind::Trigger => Self::apply_spec(&mut cache.triggers, name, obj),
            Kind::Secret => Self::apply_spec(&mut cache.secrets, name, obj),
            Kind::App => {
                let prev = match obj.map(AppDesired::from_object) {
                    Some(n) => cache.apps.insert(name.to_string(), n),
                    None => cache.apps.remove(name),
                };
                prev.as_ref() != cache.apps.get(name)
            }
            Kind::Node => match obj {
                None => cache.node_labels.remove(name).is_some(),
                Some(o) => {
                    let changed = cache.node_labels.get(name) != Some(&o.metadata.labels);
                    cache
                        .node_labels
                        .insert(name.to_string(), o.metadata.labels.clone());
                    changed
                }
            },
            // Buckets reach nodes through the cache and routes (later), not the sync.
            Kind::Task | Kind::Bucket => false,
        }
    }

    /// Keeps `map[name]` at the stored object (Config, Function, Trigger, Secret) with its spec
    /// parsed, without its status (a status write sends nothing). Returns whether what
    /// nodes get changed.
    fn apply_spec<S: serde::de::DeserializeOwned>(
        map: &mut BTreeMap<String, (i64, Object, S)>,
        name: &str,
        obj: Option<&Object>,
    ) -> bool {
        let parsed = obj.and_then(|o| {
            serde_json::from_value::<S>(o.spec.clone())
                .ok()
                .map(|spec| (o.clone(), spec))
        });
        let Some((mut o, spec)) = parsed else {
            return map.remove(name).is_some();
        };
        o.status = serde_json::Value::Null;
        if let Some((_, old, _)) = map.get(name)
            && old.spec == o.spec
            && old.metadata.labels == o.metadata.labels
            && old.metadata.annotations == o.metadata.annotations
        {
            return false;
        }
        // The informer fills in the mod revision.
        let revision = o
            .metadata
            .resource_version
            .as_deref()
            .and_then(|r| r.parse::<i64>().ok())
            .unwrap_or(0);
        o.metadata.resource_version = Some(revision.to_string());
        map.insert(name.to_string(), (revision, o, spec));
        true
    }

    /// The store revision the informers of the synced kinds reflect (at least).
    fn observed_revision(informers: &Informers) -> i64 {
        SYNCED_KINDS
            .iter()
            .map(|k| informers.cache(*k).revision())
            .max()
            .unwrap_or(0)
    }

    /// The cache rebuilt from the informers' caches (at start, and after falling
    /// behind their change feeds).
    fn rebuild(&self, informers: &Informers) {
        let mut fresh = Cache::default();
        for kind in SYNCED_KINDS {
            for o in informers.cache(kind).list() {
                Self::apply(&mut fresh, kind, &o.metadata.name, Some(&o));
            }
        }
        let observed = Self::observed_revision(informers);
        if let Ok(mut cache) = self.cache.write() {
            // Revisions never go back, and a new content gets a new one.
            fresh.revision = observed.max(cache.revision + 1);
            *cache = fresh;
        }
        self.built.send_replace(true);
    }

    /// Follows the shared informers of the synced kinds until `shutdown` and pushes
    /// deltas to connected nodes whose desired set changed. The informers own the
    /// store watch (one per kind in the cloud): after a compaction overtook it or any
    /// watch error they relist and report what changed meanwhile, which reaches the
    /// nodes like any change. Falling behind their feed rebuilds the cache from their
    /// caches and pushes to every connected node.
    pub async fn run(&self, informers: Arc<Informers>, mut shutdown: watch::Receiver<bool>) {
        let mut changes = SelectAll::new();
        for kind in SYNCED_KINDS {
            let feed = BroadcastStream::new(informers.get(kind).subscribe());
            changes.push(feed.map(move |c| (kind, c)));
        }
        for kind in SYNCED_KINDS {
            let cache = informers.cache(kind);
            tokio::select! {
                _ = cache.wait_synced() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
        self.rebuild(&informers);
        loop {
            let first = tokio::select! {
                c = changes.next() => c,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            let Some(first) = first else {
                return;
            };
            // Take whatever else is ready, so a burst of writes makes one round of deltas.
            let mut batch = vec![first];
            while let Some(Some(c)) = futures::FutureExt::now_or_never(changes.next()) {
                batch.push(c);
                if batch.len() >= 1024 {
                    break;
                }
            }
            let mut changed = false;
            let mut lagged = false;
            if let Ok(mut cache) = self.cache.write() {
                for (kind, c) in &batch {
                    match c {
                        Ok(c) => {
                            changed |= Self::apply(&mut cache, *kind, &c.name, c.new.as_deref())
                        }
                        Err(BroadcastStreamRecvError::Lagged(_)) => lagged = true,
                    }
                }
                if changed {
                    let observed = Self::observed_revision(&informers);
                    cache.revision = observed.max(cache.revision + 1);
                }
            }
            if lagged {
                tracing::warn!(
                    "desired-state sync fell behind the informers; rebuilding from their caches"
                );
                self.rebuild(&informers);
                changed = true;
            }
            if changed {
                self.push_to_connected();
            }
        }
    }

    /// Sends every connected node that has had its snapshot what changed since.
    fn push_to_connected(&self) {
        let targets: Vec<(String, i64, BTreeMap<String, i64>)> = self
            .nodes
            .lock()
            .map(|n| {
                n.iter()
                    .filter(|(_, s)| s.connected && s.sent_rev > 0)
                    .map(|(k, s)| (k.clone(), s.sent_rev, s.sent.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (node, rev, sent) in targets {
            self.send(&node, Some((rev, sent)));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use verge_store::{MemStore, Store};

    use super::*;
    use crate::gateway::Downlink;

    /// The objects each node holds, as it would after applying every `Desired` sent.
    #[derive(Default)]
    struct Nodes {
        held: Mutex<BTreeMap<String, BTreeMap<String, Object>>>,
    }

    impl Nodes {
        fn config(&self, node: &str, name: &str) -> Option<String> {
            let held = self.held.lock().unwrap();
            let o = held.get(node)?.get(&format!("Config/{name}"))?;
            o.spec["data"]["v"].as_str().map(str::to_string)
        }
    }

    impl Downlink for Nodes {
        fn send(&self, node: &str, channel: Channel, payload: Bytes) -> bool {
            let Ok(Message::Desired(d)) = verge_proto::decode(channel, &payload) else {
                return false;
            };
            let mut held = self.held.lock().unwrap();
            let objects = held.entry(node.to_string()).or_default();
            if d.snapshot {
                objects.clear();
            }
            for o in d.upserts {
                objects.insert(format!("{}/{}", o.kind, o.metadata.name), o);
            }
            for r in d.deletes {
                objects.remove(&format!("{}/{}", r.kind, r.name));
            }
            true
        }
        fn kick(&self, _: &str) {}
        fn revoke_serial(&self, _: &str) {}
    }

    async fn put_config(store: &MemStore, name: &str, v: &str) {
        let key = crate::objects::object_key(Kind::Config, name);
        let o = serde_json::json!({"apiVersion": "verge.dev/v1", "kind": "Config",
            "metadata": {"name": name}, "spec": {"data": {"v": v}}});
        let value = Bytes::from(serde_json::to_vec(&o).unwrap());
        if store.get(&key).await.unwrap().is_some() {
            store
                .update(&key, value, Default::default(), Expect::Any)
                .await
                .unwrap();
        } else {
            store.create(&key, value, Default::default()).await.unwrap();
        }
    }

    async fn settle() {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_compaction_overtaking_the_watch_is_recovered_and_nodes_converge() {
        let store = MemStore::new();
        put_config(&store, "keep", "0").await;
        put_config(&store, "gone", "0").await;
        let nodes = Arc::new(Nodes::default());
        let dyn_store: DynStore = Arc::new(store.clone());
        let sync = Arc::new(Sync::new(dyn_store.clone()));
        sync.set_gateway(nodes.clone());
        let (stop, rx) = tokio::sync::watch::channel(false);
        // The shared informers own the watch: one per kind, as in the cloud.
        let informers = Informers::new(dyn_store, rx.clone());
        let task = tokio::spawn({
            let sync = sync.clone();
            let informers = informers.clone();
            async move { sync.run(informers, rx).await }
        });
        settle().await;
        sync.hello("n1", 0).await;
        assert_eq!(nodes.config("n1", "keep").as_deref(), Some("0"));
        assert_eq!(nodes.config("n1", "gone").as_deref(), Some("0"));

        // Thousands of writes while the sync task cannot run (MemStore writes do not
        // yield), a deletion, a new object, then compaction past all of them: the watch
        // lags, finds its history gone, and must relist.
        for round in 1..=5000 {
            put_config(&store, "keep", &round.to_string()).await;
        }
        store
            .delete(
                &crate::objects::object_key(Kind::Config, "gone"),
                Expect::Any,
            )
            .await
            .unwrap();
        put_config(&store, "new", "7").await;
        let rev = store.current_revision().await.unwrap();
        store.compact(rev).await.unwrap();
        tokio::time::sleep(Duration::from_secs(15)).await;
        settle().await;
        assert_eq!(nodes.config("n1", "keep").as_deref(), Some("5000"));
        assert_eq!(
            nodes.config("n1", "gone"),
            None,
            "the deletion reached the node"
        );
        assert_eq!(nodes.config("n1", "new").as_deref(), Some("7"));

        // And it follows live changes afterwards.
        put_config(&store, "keep", "live").await;
        settle().await;
        assert_eq!(nodes.config("n1", "keep").as_deref(), Some("live"));
        stop.send_replace(true);
        task.await.unwrap();
    }
}
