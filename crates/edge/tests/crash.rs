//! Crash safety of the local store and the queue: a child process (this test binary,
//! re-run with an environment variable) writes, then dies with `abort()` — no
//! destructors, no close — and the parent reopens the files and finds everything that
//! was committed.

use std::path::Path;
use std::process::Command;

use verge_api::{API_VERSION, Object, ObjectMeta};
use verge_edge::{ApplyOutcome, LocalStore, Queue, QueueConfig};
use verge_proto::{Channel, Desired};

const CHILD_ENV: &str = "VERGE_EDGE_CRASH_CHILD_DIR";

fn config(name: &str, rev: i64) -> Object {
    Object {
        api_version: API_VERSION.into(),
        kind: "Config".into(),
        metadata: ObjectMeta {
            name: name.into(),
            resource_version: Some(rev.to_string()),
            ..Default::default()
        },
        spec: serde_json::json!({"data": {"rev": rev.to_string()}}),
        status: serde_json::Value::Null,
    }
}

/// The child: applies three deltas and pushes three queue items, acks one, then
/// aborts.
fn child(dir: &Path) -> ! {
    let store = LocalStore::open(&dir.join("store.redb")).expect("open store");
    let queue = Queue::open(&dir.join("queue.redb"), QueueConfig::default()).expect("open queue");
    for rev in 1..=3 {
        let out = store
            .apply_desired(&Desired {
                from_revision: rev - 1,
                to_revision: rev,
                snapshot: false,
                upserts: vec![config(&format!("c{rev}"), rev)],
                deletes: vec![],
            })
            .expect("apply");
        assert_eq!(out, ApplyOutcome::Applied { revision: rev });
        queue
            .push(Channel::Status, format!("status {rev}").as_bytes(), 1000)
            .expect("push");
    }
    queue.ack(1).expect("ack");
    // Die without dropping anything: like a power cut after the last commit returned.
    std::process::abort();
}

#[test]
fn committed_state_survives_abort() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "committed_state_survives_abort", "--nocapture"])
        .env(CHILD_ENV, dir.path())
        .status()
        .unwrap();
    assert!(!status.success(), "the child must have aborted");

    let store = LocalStore::open(&dir.path().join("store.redb")).unwrap();
    assert_eq!(store.applied_revision().unwrap(), 3);
    let names: Vec<_> = store
        .list("Config")
        .unwrap()
        .into_iter()
        .map(|o| o.metadata.name)
        .collect();
    assert_eq!(names, ["c1", "c2", "c3"]);

    let queue = Queue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap();
    let items = queue.peek(10, 1000).unwrap();
    let payloads: Vec<_> = items
        .iter()
        .map(|i| String::from_utf8_lossy(&i.payload).into_owned())
        .collect();
    assert_eq!(payloads, ["status 2", "status 3"]);
    assert_eq!(items[0].seq, 2);
    let stats = queue.stats().unwrap();
    assert_eq!((stats.pending_items, stats.dropped_items), (2, 0));

    // And the store keeps applying from where it was.
    let out = store
        .apply_desired(&Desired {
            from_revision: 3,
            to_revision: 4,
            snapshot: false,
            upserts: vec![],
            deletes: vec![],
        })
        .unwrap();
    assert_eq!(out, ApplyOutcome::Applied { revision: 4 });
}
