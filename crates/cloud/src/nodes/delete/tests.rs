//! The pure plan with plain values; the reconcile and the controller against
//! `MemStore` with paused time.

use std::collections::BTreeMap;
use std::sync::Mutex;

use bytes::Bytes;
use verge_api::names::{ANNOTATION_CERT_SERIAL, ANNOTATION_PREVIOUS_CERT_SERIAL};
use verge_api::{API_VERSION, ObjectMeta};
use verge_proto::Channel;
use verge_store::MemStore;

use super::*;
use crate::gateway::Downlink;
use crate::nodes::certs::{NODE_CERTS_PREFIX, REVOKED_PREFIX, record_node_cert};
use crate::nodes::results::RESULTS_PREFIX;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn deleting(serials: &[&str]) -> Observed {
    Observed {
        deleting: true,
        serials: s(serials),
        has_finalizer: true,
        ..Observed::default()
    }
}

#[test]
fn a_node_not_being_deleted_needs_nothing() {
    let o = Observed {
        deleting: false,
        serials: s(&["a"]),
        has_finalizer: true,
        ..Observed::default()
    };
    assert!(plan(&o).is_empty());
}

#[test]
fn a_fresh_deletion_revokes_first_and_deletes_last() {
    assert_eq!(
        plan(&deleting(&["a", "b"])),
        vec![
            Step::Revoke(s(&["a", "b"])),
            Step::Kick(s(&["a", "b"])),
            Step::Forget,
            Step::Delete,
        ]
    );
}

#[test]
fn after_a_restart_what_is_stored_is_not_redone_what_was_in_memory_is() {
    // Crashed after the revocations were written: the transport and the memory of the
    // new process know nothing, so kick and forget run again; no revocation does.
    let mut o = deleting(&["a", "b"]);
    o.revoked = s(&["a", "b"]);
    assert_eq!(
        plan(&o),
        vec![Step::Kick(s(&["a", "b"])), Step::Forget, Step::Delete]
    );
    // Crashed after forgetting: the issue records are gone; only the delete was left
    // (kick and forget are repeated, harmlessly, by the new process).
    o.kicked = s(&["a", "b"]);
    o.closed = true;
    o.forgotten = true;
    assert_eq!(plan(&o), vec![Step::Delete]);
}

#[test]
fn a_serial_issued_during_the_deletion_is_revoked_and_told_to_the_transport() {
    // A renewal added "c" after this process revoked, kicked and forgot "a" and "b".
    let mut o = deleting(&["a", "b", "c"]);
    o.revoked = s(&["a", "b"]);
    o.kicked = s(&["a", "b"]);
    o.closed = true;
    o.forgotten = true;
    o.issue_records = s(&["c"]);
    assert_eq!(
        plan(&o),
        vec![
            Step::Revoke(s(&["c"])),
            Step::Kick(s(&["a", "b", "c"])),
            Step::Forget,
            Step::Delete,
        ]
    );
}

#[test]
fn other_finalizers_hold_the_node_after_ours_is_removed() {
    let mut o = deleting(&[]);
    o.closed = true;
    o.forgotten = true;
    o.other_finalizers = 1;
    assert_eq!(plan(&o), vec![Step::RemoveFinalizer]);
    o.has_finalizer = false;
    assert!(plan(&o).is_empty());
    // Once the other one is removed too, the Node goes.
    o.other_finalizers = 0;
    assert_eq!(plan(&o), vec![Step::Delete]);
}

#[test]
fn a_node_joined_before_the_finalizer_is_deleted_the_same_way() {
    let mut o = deleting(&["a"]);
    o.has_finalizer = false;
    assert_eq!(
        plan(&o),
        vec![
            Step::Revoke(s(&["a"])),
            Step::Kick(s(&["a"])),
            Step::Forget,
            Step::Delete
        ]
    );
}

#[test]
fn crash_points_parse_and_bad_ones_are_named() {
    assert_eq!(CrashPoint::parse(None), Ok(None));
    assert_eq!(CrashPoint::parse(Some("something-else:x")), Ok(None));
    assert_eq!(
        CrashPoint::parse(Some("node-delete:kicked")),
        Ok(Some(CrashPoint::Kicked))
    );
    let e = CrashPoint::parse(Some("node-delete:later")).unwrap_err();
    assert!(e.contains(CRASH_ENV) && e.contains("later"), "{e}");
}

// ---------------------------------------------------------------------------------
// Against MemStore

/// What the transport was told, in order.
#[derive(Default)]
struct Transport {
    calls: Mutex<Vec<String>>,
}

impl Transport {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Downlink for Transport {
    fn send(&self, _: &str, _: Channel, _: Bytes) -> bool {
        true
    }
    fn kick(&self, node: &str) {
        self.calls.lock().unwrap().push(format!("kick {node}"));
    }
    fn revoke_serial(&self, serial: &str) {
        self.calls.lock().unwrap().push(format!("revoke {serial}"));
    }
}

struct World {
    store: DynStore,
    transport: Arc<Transport>,
    deletion: Arc<NodeDeletion>,
}

fn world() -> World {
    let store: DynStore = Arc::new(MemStore::new());
    let transport = Arc::new(Transport::default());
    let deletion = new_process(&store, &transport);
    World {
        store,
        transport,
        deletion,
    }
}

/// A controller as a freshly started cloud has it (nothing in memory).
fn new_process(store: &DynStore, transport: &Arc<Transport>) -> Arc<NodeDeletion> {
    let nodes = NodeManager::new(
        store.clone(),
        super::super::LifecycleConfig::default(),
        super::super::logs::LogBudget::default(),
        super::super::InputMetrics::default(),
    );
    NodeDeletion::new(
        store.clone(),
        nodes,
        Some(transport.clone() as DynDownlink),
        None,
    )
}

/// A joined node: current serial `s1`, previous `s0`, and an issue record for `s2`
/// (a renewal whose answer was lost), plus one stored task result.
async fn joined(store: &DynStore, name: &str, finalizers: &[&str]) {
    let obj = Object {
        api_version: API_VERSION.into(),
        kind: Kind::Node.name().into(),
        metadata: ObjectMeta {
            name: name.into(),
            uid: Some(format!("uid-{name}")),
            annotations: BTreeMap::from([
                (ANNOTATION_CERT_SERIAL.to_string(), "s1".to_string()),
                (
                    ANNOTATION_PREVIOUS_CERT_SERIAL.to_string(),
                    "s0".to_string(),
                ),
            ]),
            finalizers: s(finalizers),
            ..Default::default()
        },
        spec: serde_json::json!({}),
        status: serde_json::Value::Null,
    };
    store
        .create(
            &object_key(Kind::Node, name),
            crate::objects::encode_for_store(&obj).unwrap(),
            Default::default(),
        )
        .await
        .unwrap();
    for serial in ["s1", "s2"] {
        record_node_cert(store, name, serial, "2099-01-01T00:00:00Z")
            .await
            .unwrap();
    }
    store
        .create(
            &format!("{RESULTS_PREFIX}{name}/00000000000000000001"),
            Bytes::from_static(b"{}"),
            Default::default(),
        )
        .await
        .unwrap();
}

async fn mark_deleting(store: &DynStore, name: &str) {
    let key = object_key(Kind::Node, name);
    modify(store, Kind::Node, &key, name, None, |cur| {
        let mut next = cur.clone();
        next.metadata.deletion_timestamp = Some("2026-01-01T00:00:00Z".into());
        Ok(next)
    })
    .await
    .unwrap();
}

async fn request(store: &DynStore, name: &str) -> Request {
    Request {
        key: name.to_string(),
        object: crate::objects::get(store, Kind::Node, name)
            .await
            .unwrap()
            .map(Arc::new),
    }
}

async fn keys(store: &DynStore, prefix: &str) -> Vec<String> {
    store
        .list(prefix, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| kv.key)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_deleted_node_is_revoked_kicked_forgotten_then_gone() {
    let w = world();
    joined(&w.store, "n1", &[FINALIZER_NODE_CLEANUP]).await;
    // Not being deleted: the reconcile touches nothing.
    w.deletion
        .reconcile(request(&w.store, "n1").await)
        .await
        .unwrap();
    assert!(keys(&w.store, REVOKED_PREFIX).await.is_empty());
    assert!(w.transport.calls().is_empty());

    mark_deleting(&w.store, "n1").await;
    let action = w
        .deletion
        .reconcile(request(&w.store, "n1").await)
        .await
        .unwrap();
    assert_eq!(action, Action::await_change());
    assert_eq!(
        keys(&w.store, REVOKED_PREFIX).await,
        s(&[
            "/system/revoked-certs/s0",
            "/system/revoked-certs/s1",
            "/system/revoked-certs/s2"
        ])
    );
    let calls = w.transport.calls();
    for serial in ["s0", "s1", "s2"] {
        let told = calls.iter().position(|c| c == &format!("revoke {serial}"));
        let kicked = calls.iter().position(|c| c == "kick n1");
        assert!(told.is_some() && told < kicked, "{calls:?}");
    }
    assert!(keys(&w.store, NODE_CERTS_PREFIX).await.is_empty());
    assert!(keys(&w.store, RESULTS_PREFIX).await.is_empty());
    assert!(
        w.store
            .get(&object_key(Kind::Node, "n1"))
            .await
            .unwrap()
            .is_none()
    );
    // The revocation keeps the certificate's expiry (so it is pruned after it).
    let rec = w
        .store
        .get(&format!("{REVOKED_PREFIX}s1"))
        .await
        .unwrap()
        .unwrap();
    let rec: serde_json::Value = serde_json::from_slice(&rec.value).unwrap();
    assert_eq!(rec["notAfter"], "2099-01-01T00:00:00Z");
    // Another pass on the gone Node does nothing.
    w.deletion
        .reconcile(request(&w.store, "n1").await)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_deletion_interrupted_after_each_step_finishes_in_a_new_process() {
    // What each crash point leaves in the store, then a new process.
    for point in [
        CrashPoint::Revoked,
        CrashPoint::Kicked,
        CrashPoint::Forgotten,
    ] {
        let w = world();
        joined(&w.store, "n1", &[FINALIZER_NODE_CLEANUP]).await;
        mark_deleting(&w.store, "n1").await;
        let node = crate::objects::get(&w.store, Kind::Node, "n1")
            .await
            .unwrap()
            .unwrap();
        let rev: Revision = node
            .metadata
            .resource_version
            .clone()
            .unwrap()
            .parse()
            .unwrap();
        let serials = s(&["s1", "s0", "s2"]);
        let observed = Observed {
            deleting: true,
            serials: serials.clone(),
            issue_records: s(&["s1", "s2"]),
            has_finalizer: true,
            ..Observed::default()
        };
        let mut steps = vec![Step::Revoke(serials.clone())];
        if point != CrashPoint::Revoked {
            steps.push(Step::Kick(serials.clone()));
        }
        if point == CrashPoint::Forgotten {
            steps.push(Step::Forget);
        }
        for step in &steps {
            w.deletion
                .perform(&node, rev, &observed, step)
                .await
                .unwrap();
        }
        assert!(
            w.store
                .get(&object_key(Kind::Node, "n1"))
                .await
                .unwrap()
                .is_some(),
            "{point:?}: the Node stays until the end"
        );
        // The restart: nothing in memory.
        let transport = Arc::new(Transport::default());
        let fresh = new_process(&w.store, &transport);
        fresh
            .reconcile(request(&w.store, "n1").await)
            .await
            .unwrap();
        assert!(
            w.store
                .get(&object_key(Kind::Node, "n1"))
                .await
                .unwrap()
                .is_none(),
            "{point:?}: gone after the restart"
        );
        assert_eq!(
            keys(&w.store, REVOKED_PREFIX).await.len(),
            3,
            "{point:?}: every serial revoked"
        );
        assert!(keys(&w.store, NODE_CERTS_PREFIX).await.is_empty());
        // The new process told its transport about the serials it knows (the issue
        // record of s2 may be gone; its revocation is in the store, which a transport
        // loads at start).
        assert!(
            transport.calls().contains(&"kick n1".to_string()),
            "{point:?}: {:?}",
            transport.calls()
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_renewal_during_the_deletion_makes_the_pass_run_again_and_revoke_it() {
    let w = world();
    joined(&w.store, "n1", &[FINALIZER_NODE_CLEANUP]).await;
    mark_deleting(&w.store, "n1").await;
    let node = crate::objects::get(&w.store, Kind::Node, "n1")
        .await
        .unwrap()
        .unwrap();
    let rev: Revision = node
        .metadata
        .resource_version
        .clone()
        .unwrap()
        .parse()
        .unwrap();
    // A renewal lands after the pass read the Node: a record, then the annotation.
    record_node_cert(&w.store, "n1", "s3", "2099-01-01T00:00:00Z")
        .await
        .unwrap();
    let key = object_key(Kind::Node, "n1");
    modify(&w.store, Kind::Node, &key, "n1", None, |cur| {
        let mut next = cur.clone();
        next.metadata
            .annotations
            .insert(ANNOTATION_CERT_SERIAL.into(), "s3".into());
        Ok(next)
    })
    .await
    .unwrap();
    // The delete on the old revision is refused...
    let e = w
        .deletion
        .perform(&node, rev, &Observed::default(), &Step::Delete)
        .await
        .unwrap_err();
    assert_eq!(e.reason, verge_api::Reason::Conflict, "{e:?}");
    assert!(w.store.get(&key).await.unwrap().is_some());
    // ...and the next pass revokes the new serial before the Node goes.
    w.deletion
        .reconcile(request(&w.store, "n1").await)
        .await
        .unwrap();
    assert!(
        w.store
            .get(&format!("{REVOKED_PREFIX}s3"))
            .await
            .unwrap()
            .is_some()
    );
    assert!(w.transport.calls().contains(&"revoke s3".to_string()));
    assert!(w.store.get(&key).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn another_finalizer_keeps_the_node_until_it_is_removed() {
    let w = world();
    joined(
        &w.store,
        "n1",
        &[FINALIZER_NODE_CLEANUP, "example.com/backup"],
    )
    .await;
    mark_deleting(&w.store, "n1").await;
    w.deletion
        .reconcile(request(&w.store, "n1").await)
        .await
        .unwrap();
    let node = crate::objects::get(&w.store, Kind::Node, "n1")
        .await
        .unwrap()
        .expect("held by the other finalizer");
    assert_eq!(node.metadata.finalizers, s(&["example.com/backup"]));
    assert_eq!(keys(&w.store, REVOKED_PREFIX).await.len(), 3);
    let key = object_key(Kind::Node, "n1");
    modify(&w.store, Kind::Node, &key, "n1", None, |cur| {
        let mut next = cur.clone();
        next.metadata.finalizers.clear();
        Ok(next)
    })
    .await
    .unwrap();
    w.deletion
        .reconcile(request(&w.store, "n1").await)
        .await
        .unwrap();
    assert!(w.store.get(&key).await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn on_the_runtime_a_marked_node_and_one_joined_before_finalizers_both_go() {
    let w = world();
    joined(&w.store, "old", &[]).await;
    joined(&w.store, "new", &[FINALIZER_NODE_CLEANUP]).await;
    joined(&w.store, "kept", &[FINALIZER_NODE_CLEANUP]).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let informers = Informers::new(w.store.clone(), stop_rx.clone());
    let task = tokio::spawn(w.deletion.clone().run(informers, stop_rx));
    let rev = w.store.current_revision().await.unwrap();
    mark_deleting(&w.store, "old").await;
    mark_deleting(&w.store, "new").await;
    for name in ["old", "new"] {
        assert!(
            wait_gone(&w.store, name, rev, Duration::from_secs(30))
                .await
                .unwrap(),
            "{name} gone"
        );
    }
    assert!(
        w.store
            .get(&object_key(Kind::Node, "kept"))
            .await
            .unwrap()
            .is_some()
    );
    // Serials of both deleted nodes revoked; kept's records untouched.
    assert_eq!(
        keys(&w.store, REVOKED_PREFIX).await.len(),
        3,
        "s0 s1 s2 once each"
    );
    assert_eq!(
        keys(&w.store, &format!("{NODE_CERTS_PREFIX}kept/"))
            .await
            .len(),
        2
    );
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}
