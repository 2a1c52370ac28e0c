//! Model-based test: random op sequences run against each store backend (SQLite,
//! `MemStore`) and against a trivial in-memory model (BTreeMap + revision counter) must give identical results
//! after every op, and a watch started before the sequence must yield exactly the
//! model's event log.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use proptest::prelude::*;
use verge_api::LabelSelector;
use verge_store::{
    Error, EventKind, Expect, KeyValue, Labels, ListResult, MemStore, Revision, SqliteOptions,
    SqliteStore, Store,
};

const KEYS: &[&str] = &["a", "a/1", "a/2", "ab", "b/1"];
const PREFIXES: &[&str] = &["", "a", "a/", "b/", "c"];
const SELECTORS: &[&str] = &["", "env=prod", "env!=prod", "tier", "!tier,env in (dev)"];

fn label_set(i: u8) -> Labels {
    let pairs: &[(&str, &str)] = match i % 4 {
        0 => &[],
        1 => &[("env", "prod")],
        2 => &[("env", "dev"), ("tier", "web")],
        _ => &[("tier", "db")],
    };
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn value(v: u8) -> Bytes {
    // Includes the empty value and non-UTF-8 bytes.
    Bytes::from(vec![v.wrapping_mul(37); usize::from(v % 5)])
}

#[derive(Debug, Clone, Copy)]
enum Cond {
    Any,
    /// The key's current mod_revision (or an arbitrary one if it is absent).
    Right,
    /// Off by this (non-zero) delta.
    Wrong(i64),
}

#[derive(Debug, Clone)]
enum Op {
    Create(usize, u8, u8),
    Update(usize, u8, u8, Cond),
    Delete(usize, Cond),
    Get(usize),
    List(usize, usize),
    /// Compact at `current - delta` (negative: beyond current).
    Compact(i64),
    /// Watch from `current - delta` and read what history is due.
    Watch(usize, i64),
}

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![
        Just(Cond::Any),
        Just(Cond::Right),
        prop_oneof![Just(-1i64), Just(1), Just(5)].prop_map(Cond::Wrong),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0..KEYS.len();
    prop_oneof![
        4 => (key.clone(), any::<u8>(), any::<u8>()).prop_map(|(k, v, l)| Op::Create(k, v, l)),
        4 => (key.clone(), any::<u8>(), any::<u8>(), cond())
            .prop_map(|(k, v, l, c)| Op::Update(k, v, l, c)),
        2 => (key.clone(), cond()).prop_map(|(k, c)| Op::Delete(k, c)),
        1 => key.prop_map(Op::Get),
        1 => (0..PREFIXES.len(), 0..SELECTORS.len()).prop_map(|(p, s)| Op::List(p, s)),
        1 => (-2i64..6).prop_map(Op::Compact),
        1 => (0..PREFIXES.len(), -2i64..8).prop_map(|(p, d)| Op::Watch(p, d)),
    ]
}

/// Error variants compared between store and model.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fail {
    AlreadyExists(String),
    NotFound(String),
    Conflict(String, i64, i64),
    Compacted(Revision, Revision),
}

fn fail(e: Error) -> Fail {
    match e {
        Error::AlreadyExists { key } => Fail::AlreadyExists(key),
        Error::NotFound { key } => Fail::NotFound(key),
        Error::Conflict {
            key,
            expected,
            current,
        } => Fail::Conflict(key, expected, current),
        Error::Compacted {
            requested,
            compacted,
        } => Fail::Compacted(requested, compacted),
        other => panic!("unexpected store error: {other}"),
    }
}

type Ev = (Revision, EventKind, KeyValue);

#[derive(Default)]
struct Model {
    kv: BTreeMap<String, KeyValue>,
    current: Revision,
    compacted: Revision,
    log: Vec<Ev>,
}

impl Model {
    fn expect(&self, key: &str, c: Cond) -> Expect {
        let cur = self.kv.get(key).map_or(3, |kv| kv.mod_revision);
        match c {
            Cond::Any => Expect::Any,
            Cond::Right => Expect::ModRevision(cur),
            Cond::Wrong(d) => Expect::ModRevision(cur + d),
        }
    }

    fn check(&self, key: &str, expect: Expect) -> Result<&KeyValue, Fail> {
        let Some(kv) = self.kv.get(key) else {
            return Err(Fail::NotFound(key.to_owned()));
        };
        match expect {
            Expect::ModRevision(r) if r != kv.mod_revision => {
                Err(Fail::Conflict(key.to_owned(), r, kv.mod_revision))
            }
            _ => Ok(kv),
        }
    }

    fn create(&mut self, key: &str, value: Bytes, labels: Labels) -> Result<KeyValue, Fail> {
        if self.kv.contains_key(key) {
            return Err(Fail::AlreadyExists(key.to_owned()));
        }
        self.current += 1;
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            labels,
            create_revision: self.current,
            mod_revision: self.current,
        };
        self.kv.insert(key.to_owned(), kv.clone());
        self.log.push((self.current, EventKind::Put, kv.clone()));
        Ok(kv)
    }

    fn update(
        &mut self,
        key: &str,
        value: Bytes,
        labels: Labels,
        expect: Expect,
    ) -> Result<KeyValue, Fail> {
        let create_revision = self.check(key, expect)?.create_revision;
        self.current += 1;
        let kv = KeyValue {
            key: key.to_owned(),
            value,
            labels,
            create_revision,
            mod_revision: self.current,
        };
        self.kv.insert(key.to_owned(), kv.clone());
        self.log.push((self.current, EventKind::Put, kv.clone()));
        Ok(kv)
    }

    fn delete(&mut self, key: &str, expect: Expect) -> Result<KeyValue, Fail> {
        self.check(key, expect)?;
        self.current += 1;
        let mut kv = self.kv.remove(key).expect("checked");
        kv.mod_revision = self.current;
        self.log.push((self.current, EventKind::Delete, kv.clone()));
        Ok(kv)
    }

    fn list(&self, prefix: &str, selector: &LabelSelector) -> ListResult {
        ListResult {
            items: self
                .kv
                .values()
                .filter(|kv| kv.key.starts_with(prefix) && selector.matches(&kv.labels))
                .cloned()
                .collect(),
            revision: self.current,
        }
    }

    fn compact(&mut self, rev: Revision) {
        self.compacted = self.compacted.max(rev.min(self.current));
    }
}

/// Drives `ops` one at a time against `store` and the model, comparing after each.
async fn drive(store: &dyn Store, ops: Vec<Op>) -> Model {
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Create(k, v, l) => {
                let key = KEYS[k];
                let got = store
                    .create(key, value(v), label_set(l))
                    .await
                    .map_err(fail);
                assert_eq!(got, model.create(key, value(v), label_set(l)), "{op:?}");
            }
            Op::Update(k, v, l, c) => {
                let key = KEYS[k];
                let expect = model.expect(key, c);
                let got = store
                    .update(key, value(v), label_set(l), expect)
                    .await
                    .map_err(fail);
                let want = model.update(key, value(v), label_set(l), expect);
                assert_eq!(got, want, "{op:?}");
            }
            Op::Delete(k, c) => {
                let key = KEYS[k];
                let expect = model.expect(key, c);
                let got = store.delete(key, expect).await.map_err(fail);
                assert_eq!(got, model.delete(key, expect), "{op:?}");
            }
            Op::Get(k) => {
                let key = KEYS[k];
                assert_eq!(
                    store.get(key).await.unwrap(),
                    model.kv.get(key).cloned(),
                    "{op:?}"
                );
            }
            Op::List(p, s) => {
                let selector = LabelSelector::parse(SELECTORS[s]).unwrap();
                let sel = (!selector.is_empty()).then_some(&selector);
                let got = store.list(PREFIXES[p], sel).await.unwrap();
                assert_eq!(got, model.list(PREFIXES[p], &selector), "{op:?}");
            }
            Op::Compact(delta) => {
                let rev = model.current - delta;
                store.compact(rev).await.unwrap();
                model.compact(rev);
            }
            Op::Watch(p, delta) => {
                let prefix = PREFIXES[p];
                let after = model.current - delta;
                match store.watch(prefix, after).await {
                    Err(e) => {
                        assert!(after < model.compacted, "{op:?}: {e}");
                        assert_eq!(fail(e), Fail::Compacted(after, model.compacted));
                    }
                    Ok(mut w) => {
                        assert!(after >= model.compacted, "{op:?}: watch should fail");
                        let due: Vec<Ev> = model
                            .log
                            .iter()
                            .filter(|(r, _, kv)| *r > after && kv.key.starts_with(prefix))
                            .cloned()
                            .collect();
                        let mut got = Vec::new();
                        while got.len() < due.len() {
                            let ev = tokio::time::timeout(Duration::from_secs(10), w.next())
                                .await
                                .expect("watch stalled")
                                .expect("watch ended")
                                .unwrap();
                            got.push((ev.revision, ev.kind, ev.kv.clone()));
                        }
                        assert_eq!(got, due, "{op:?}");
                    }
                }
            }
        }
        assert_eq!(store.current_revision().await.unwrap(), model.current);
        assert_eq!(store.compacted_revision().await.unwrap(), model.compacted);
    }
    model
}

/// Everything a watch yields until its store closes.
async fn drain(mut w: verge_store::WatchStream) -> Vec<Ev> {
    let mut got = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), w.next())
        .await
        .expect("watch stalled")
    {
        let ev = item.unwrap();
        got.push((ev.revision, ev.kind, ev.kv.clone()));
    }
    got
}

async fn run_mem(ops: Vec<Op>) {
    let store = MemStore::new();
    let full_watch = store.watch("", 0).await.unwrap();
    let model = drive(&store, ops).await;
    store.close();
    assert_eq!(drain(full_watch).await, model.log);
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SqliteOptions::new(dir.path().join("model.db"));
    opts.max_batch = 8;
    let store = SqliteStore::open(opts).await.unwrap();
    let full_watch = store.watch("", 0).await.unwrap();
    let model = drive(&store, ops).await;

    store.close().await;
    // The watch from 0 saw the whole log (it was never compacted away from under it:
    // all its events were already on its channel), then ended with the store.
    assert_eq!(drain(full_watch).await, model.log);

    // Reopen: same state, same revisions.
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("model.db")))
        .await
        .unwrap();
    let all = store.list("", None).await.unwrap();
    assert_eq!(all, model.list("", &LabelSelector::default()));
    assert_eq!(store.compacted_revision().await.unwrap(), model.compacted);
    store.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run(ops));
    }

    #[test]
    fn mem_store_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(run_mem(ops));
    }
}

/// The model test drives ops one at a time, so each batch holds one write. This one
/// pushes interdependent ops on the same keys concurrently so they share batches, and
/// checks the outcome is that of *some* serial order: the one given by the revisions.
#[tokio::test]
async fn batched_interdependent_ops_are_serializable() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(
        SqliteStore::open(SqliteOptions::new(dir.path().join("b.db")))
            .await
            .unwrap(),
    );
    let mut watch = store.watch("", 0).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..32u8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = KEYS[usize::from(t) % KEYS.len()];
            let mut outcomes = Vec::new();
            for i in 0..20u8 {
                let r = match (t + i) % 4 {
                    0 => store.create(key, value(i), label_set(t)).await,
                    1 => store.update(key, value(i), label_set(i), Expect::Any).await,
                    2 => store.delete(key, Expect::Any).await,
                    _ => {
                        let cur = store
                            .get(key)
                            .await
                            .unwrap()
                            .map_or(1, |kv| kv.mod_revision);
                        store
                            .update(key, value(i), Labels::new(), Expect::ModRevision(cur))
                            .await
                    }
                };
                outcomes.push(r.map_err(fail));
            }
            outcomes
        }));
    }
    let mut successes = 0;
    for t in tasks {
        successes += t.await.unwrap().iter().filter(|r| r.is_ok()).count();
    }
    let current = store.current_revision().await.unwrap();
    assert_eq!(current, successes as i64);

    // Replaying the event log in revision order on a fresh model reproduces the final
    // state, and every event is a legal transition from the previous state.
    let mut model = Model::default();
    for _ in 0..current {
        let ev = watch.next().await.unwrap().unwrap();
        assert_eq!(ev.revision, model.current + 1);
        let kv = ev.kv.clone();
        let replayed = match ev.kind {
            EventKind::Put if ev.is_create() => {
                model.create(&kv.key, kv.value.clone(), kv.labels.clone())
            }
            EventKind::Put => {
                model.update(&kv.key, kv.value.clone(), kv.labels.clone(), Expect::Any)
            }
            EventKind::Delete => model.delete(&kv.key, Expect::Any),
        };
        assert_eq!(replayed, Ok(kv));
    }
    assert_eq!(
        store.list("", None).await.unwrap(),
        model.list("", &LabelSelector::default())
    );
    store.close().await;
}
