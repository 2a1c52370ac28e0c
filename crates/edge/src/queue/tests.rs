//! Queue tests: a model-based proptest against a `VecDeque`, the TTL and byte bounds,
//! persisted counters, and a simulated full disk.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use proptest::prelude::*;
use redb::StorageBackend;
use redb::backends::FileBackend;

use super::*;

impl Queue {
    /// Every stored item, expired or not, without changing anything.
    fn dump(&self) -> Vec<QueuedItem> {
        self.with_db(|db| {
            let txn = db.begin_read()?;
            let items = txn.open_table(ITEMS)?;
            let mut out = Vec::new();
            for e in items.iter()? {
                let (k, v) = e?;
                let (ts, channel, off) = decode_header(k.value(), v.value())?;
                out.push(QueuedItem {
                    seq: k.value(),
                    channel,
                    payload: v.value()[off..].to_vec(),
                    enqueued_at_ms: ts,
                });
            }
            Ok(out)
        })
        .unwrap()
    }
}

/// The reference: the rules of the module docs on a `VecDeque`.
#[derive(Debug, Default)]
struct Model {
    items: VecDeque<QueuedItem>,
    next_seq: u64,
    dropped_items: u64,
    dropped_bytes: u64,
    max_bytes: u64,
    ttl_ms: u64,
}

impl Model {
    fn new(cfg: QueueConfig) -> Self {
        Model {
            next_seq: 1,
            max_bytes: cfg.max_bytes,
            ttl_ms: cfg.ttl_ms,
            ..Default::default()
        }
    }
    fn pending_bytes(&self) -> u64 {
        self.items.iter().map(|i| i.payload.len() as u64).sum()
    }
    fn expired(&self, i: &QueuedItem, now: i64) -> bool {
        now - i.enqueued_at_ms >= self.ttl_ms as i64
    }
    fn drop_front(&mut self) {
        if let Some(i) = self.items.pop_front() {
            self.dropped_items += 1;
            self.dropped_bytes += i.payload.len() as u64;
        }
    }
    fn push(&mut self, channel: Channel, payload: Vec<u8>, now: i64) -> Option<u64> {
        let size = payload.len() as u64;
        if size > self.max_bytes {
            self.dropped_items += 1;
            self.dropped_bytes += size;
            return None;
        }
        while let Some(head) = self.items.front() {
            if !self.expired(head, now) && self.pending_bytes() + size <= self.max_bytes {
                break;
            }
            self.drop_front();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.items.push_back(QueuedItem {
            seq,
            channel,
            payload,
            enqueued_at_ms: now,
        });
        Some(seq)
    }
    fn peek(&mut self, n: usize, now: i64) -> Vec<QueuedItem> {
        let mut out = Vec::new();
        if n == 0 {
            return out;
        }
        let mut keep = VecDeque::new();
        let mut done = false;
        while let Some(i) = self.items.pop_front() {
            if done {
                keep.push_back(i);
            } else if self.expired(&i, now) {
                self.dropped_items += 1;
                self.dropped_bytes += i.payload.len() as u64;
            } else {
                out.push(i.clone());
                keep.push_back(i);
                done = out.len() == n;
            }
        }
        self.items = keep;
        out
    }
    fn ack(&mut self, upto: u64) -> u64 {
        let before = self.items.len();
        self.items.retain(|i| i.seq > upto);
        (before - self.items.len()) as u64
    }
    fn expire(&mut self, now: i64) -> u64 {
        let before = self.items.len();
        let (ttl, mut di, mut db) = (self.ttl_ms as i64, 0, 0);
        self.items.retain(|i| {
            let gone = now - i.enqueued_at_ms >= ttl;
            if gone {
                di += 1;
                db += i.payload.len() as u64;
            }
            !gone
        });
        self.dropped_items += di;
        self.dropped_bytes += db;
        (before - self.items.len()) as u64
    }
    fn stats(&self) -> QueueStats {
        QueueStats {
            pending_bytes: self.pending_bytes(),
            pending_items: self.items.len() as u64,
            dropped_items: self.dropped_items,
            dropped_bytes: self.dropped_bytes,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Push {
        channel: usize,
        size: usize,
    },
    Advance(i64),
    Peek(usize),
    /// Ack `next_seq - back` (may be below everything, or not yet issued).
    Ack(u64),
    Expire,
    Reopen,
}

const CHANNELS: [Channel; 3] = [Channel::Status, Channel::Result, Channel::Log];
const CFG: QueueConfig = QueueConfig {
    max_bytes: 1000,
    ttl_ms: 10_000,
};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0..3usize, 0..1200usize).prop_map(|(channel, size)| Op::Push { channel, size }),
        2 => (0..6_000i64).prop_map(Op::Advance),
        2 => (0..5usize).prop_map(Op::Peek),
        2 => (0..8u64).prop_map(Op::Ack),
        1 => Just(Op::Expire),
        1 => Just(Op::Reopen),
    ]
}

fn payload(seq_hint: u64, size: usize) -> Vec<u8> {
    (0..size).map(|i| (seq_hint as usize + i) as u8).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn queue_matches_model(ops in proptest::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queue.redb");
        let mut q = Queue::open(&path, CFG).unwrap();
        let mut m = Model::new(CFG);
        let mut now: i64 = 1_700_000_000_000;
        for op in ops {
            match op {
                Op::Push { channel, size } => {
                    let data = payload(m.next_seq, size);
                    let got = q.push(CHANNELS[channel], &data, now);
                    let want = m.push(CHANNELS[channel], data, now);
                    match (got, want) {
                        (Ok(a), Some(b)) => prop_assert_eq!(a, b),
                        (Err(Error::QueueFull { size: s, max }), None) => {
                            prop_assert_eq!(s, size as u64);
                            prop_assert_eq!(max, CFG.max_bytes);
                        }
                        (got, want) => prop_assert!(false, "push: {got:?} vs {want:?}"),
                    }
                }
                Op::Advance(dt) => now += dt,
                Op::Peek(n) => prop_assert_eq!(q.peek(n, now).unwrap(), m.peek(n, now)),
                Op::Ack(back) => {
                    let upto = m.next_seq.saturating_sub(back);
                    prop_assert_eq!(q.ack(upto).unwrap(), m.ack(upto));
                }
                Op::Expire => prop_assert_eq!(q.expire(now).unwrap(), m.expire(now)),
                Op::Reopen => {
                    drop(q);
                    q = Queue::open(&path, CFG).unwrap();
                }
            }
            prop_assert_eq!(q.stats().unwrap(), m.stats());
            prop_assert_eq!(q.dump(), m.items.iter().cloned().collect::<Vec<_>>());
            prop_assert!(q.stats().unwrap().pending_bytes <= CFG.max_bytes);
        }
    }
}

fn open_tmp(cfg: QueueConfig) -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::open(&dir.path().join("queue.redb"), cfg).unwrap();
    (dir, q)
}

#[test]
fn fifo_peek_and_prefix_ack() {
    let (_d, q) = open_tmp(QueueConfig::default());
    for i in 0..5u8 {
        assert_eq!(
            q.push(Channel::Status, &[i; 10], 1000).unwrap(),
            u64::from(i) + 1
        );
    }
    let items = q.peek(3, 1000).unwrap();
    assert_eq!(items.iter().map(|i| i.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(items[2].payload, [2u8; 10]);
    assert_eq!(items[0].channel, Channel::Status);
    // Peek does not remove.
    assert_eq!(q.peek(10, 1000).unwrap().len(), 5);
    assert_eq!(q.ack(3).unwrap(), 3);
    assert_eq!(q.ack(3).unwrap(), 0, "acking again is a no-op");
    let s = q.stats().unwrap();
    assert_eq!((s.pending_items, s.pending_bytes), (2, 20));
    assert_eq!(
        (s.dropped_items, s.dropped_bytes),
        (0, 0),
        "acked is not dropped"
    );
    assert_eq!(q.peek(10, 1000).unwrap()[0].seq, 4);
}

#[test]
fn ttl_expires_and_counts() {
    let cfg = QueueConfig {
        max_bytes: 1 << 20,
        ttl_ms: 1000,
    };
    let (_d, q) = open_tmp(cfg);
    q.push(Channel::Log, b"old", 0).unwrap();
    q.push(Channel::Log, b"mid", 500).unwrap();
    q.push(Channel::Log, b"new", 900).unwrap();
    // At 999 nothing is expired yet; at 1000 the first is (age >= ttl).
    assert_eq!(q.peek(10, 999).unwrap().len(), 3);
    let live = q.peek(10, 1000).unwrap();
    assert_eq!(
        live.iter()
            .map(|i| i.payload.as_slice())
            .collect::<Vec<_>>(),
        [b"mid", b"new"]
    );
    let s = q.stats().unwrap();
    assert_eq!(
        (s.dropped_items, s.dropped_bytes, s.pending_items),
        (1, 3, 2)
    );
    // expire() removes every expired item.
    assert_eq!(q.expire(1500).unwrap(), 1);
    assert_eq!(q.expire(1500).unwrap(), 0);
    // A push clears an expired head.
    q.push(Channel::Log, b"newest", 5000).unwrap();
    let s = q.stats().unwrap();
    assert_eq!(
        (s.dropped_items, s.pending_items, s.pending_bytes),
        (3, 1, 6)
    );
}

#[test]
fn byte_bound_drops_oldest_and_refuses_oversized() {
    let cfg = QueueConfig {
        max_bytes: 100,
        ttl_ms: DEFAULT_TTL_MS,
    };
    let (_d, q) = open_tmp(cfg);
    for i in 0..4u8 {
        q.push(Channel::Status, &[i; 30], 0).unwrap(); // 120 bytes offered
    }
    let s = q.stats().unwrap();
    assert_eq!((s.pending_items, s.pending_bytes), (3, 90));
    assert_eq!((s.dropped_items, s.dropped_bytes), (1, 30));
    assert_eq!(
        q.peek(1, 0).unwrap()[0].payload,
        [1u8; 30],
        "the oldest went"
    );
    // Exactly max_bytes fits (everything else is dropped for it).
    q.push(Channel::Status, &[9; 100], 0).unwrap();
    let s = q.stats().unwrap();
    assert_eq!(
        (s.pending_items, s.pending_bytes, s.dropped_items),
        (1, 100, 4)
    );
    // One byte more is refused, counted, and changes nothing else.
    match q.push(Channel::Status, &[7; 101], 0) {
        Err(Error::QueueFull {
            size: 101,
            max: 100,
        }) => {}
        other => panic!("expected QueueFull, got {other:?}"),
    }
    let s = q.stats().unwrap();
    assert_eq!((s.pending_items, s.pending_bytes), (1, 100));
    assert_eq!((s.dropped_items, s.dropped_bytes), (5, 90 + 30 + 101));
}

#[test]
fn counters_and_seq_persist_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.redb");
    let cfg = QueueConfig {
        max_bytes: 10,
        ttl_ms: DEFAULT_TTL_MS,
    };
    {
        let q = Queue::open(&path, cfg).unwrap();
        q.push(Channel::Result, b"12345678", 0).unwrap();
        q.push(Channel::Result, b"abcdefgh", 0).unwrap(); // drops the first
        let _ = q.push(Channel::Result, &[0; 11], 0); // refused
    }
    let q = Queue::open(&path, cfg).unwrap();
    let s = q.stats().unwrap();
    assert_eq!(
        s,
        QueueStats {
            pending_bytes: 8,
            pending_items: 1,
            dropped_items: 2,
            dropped_bytes: 8 + 11,
        }
    );
    assert_eq!(
        q.push(Channel::Result, b"x", 0).unwrap(),
        3,
        "seq continues"
    );
    let items = q.peek(5, 0).unwrap();
    assert_eq!(items[0].payload, b"abcdefgh");
    assert_eq!(items[0].channel, Channel::Result);
}

/// A file backend that fails with ENOSPC ("No space left on device") past `cap` bytes.
#[derive(Debug)]
struct CappedFile {
    inner: FileBackend,
    cap: Arc<AtomicU64>,
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28)
}

impl StorageBackend for CappedFile {
    fn len(&self) -> Result<u64, io::Error> {
        self.inner.len()
    }
    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        self.inner.read(offset, len)
    }
    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        if len > self.cap.load(Ordering::SeqCst) && len > self.inner.len()? {
            return Err(enospc());
        }
        self.inner.set_len(len)
    }
    fn sync_data(&self, eventual: bool) -> Result<(), io::Error> {
        self.inner.sync_data(eventual)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        if offset + data.len() as u64 > self.cap.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.write(offset, data)
    }
}

#[test]
fn full_disk_is_reported_counted_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.redb");
    let cap = Arc::new(AtomicU64::new(u64::MAX));
    let opener = {
        let (path, cap) = (path.clone(), cap.clone());
        Box::new(move || {
            let file = fsutil::open_private_rw(&path)?;
            let backend = CappedFile {
                inner: FileBackend::new(file)?,
                cap: cap.clone(),
            };
            Ok(Database::builder().create_with_backend(backend)?)
        })
    };
    let cfg = QueueConfig {
        max_bytes: 1 << 30,
        ttl_ms: DEFAULT_TTL_MS,
    };
    let q = Queue::with_opener(opener, cfg).unwrap();
    q.push(Channel::Log, b"before", 0).unwrap();
    // The disk is now full: no byte beyond the current file.
    cap.store(std::fs::metadata(&path).unwrap().len(), Ordering::SeqCst);
    let chunk = vec![42u8; 256 * 1024];
    let mut ok = 0u64;
    let err = loop {
        match q.push(Channel::Log, &chunk, 0) {
            Ok(_) => ok += 1,
            Err(e) => break e,
        }
        assert!(ok < 200, "the capped disk never filled up");
    };
    let msg = err.to_string();
    assert!(matches!(err, Error::Db(_)), "{err:?}");
    assert!(msg.contains("No space left on device"), "{msg}");

    // Space is freed: the queue reopens and works; nothing committed was lost and the
    // failed item is counted as dropped.
    cap.store(u64::MAX, Ordering::SeqCst);
    let s = q.stats().unwrap();
    assert_eq!(s.pending_items, 1 + ok);
    assert_eq!(s.dropped_items, 1);
    assert_eq!(s.dropped_bytes, chunk.len() as u64);
    let after = q.push(Channel::Log, b"after", 0).unwrap();
    assert_eq!(after, ok + 2, "the failed push consumed no seq");
    let items = q.peek(1000, 0).unwrap();
    assert_eq!(items.first().unwrap().payload, b"before");
    assert_eq!(items.last().unwrap().payload, b"after");
    assert_eq!(items.len() as u64, ok + 2);
}
