//! Connection admission for the cloud's listeners (the HTTPS API and the MQTT gateway):
//! a cap on open connections per source address (refused at once beyond it) and in
//! all; when a listener is full, the connection that has been idle longest (one that
//! never started a request — a half-open connection — or an idle keep-alive one) is
//! closed to make room for the newcomer, so connections that do nothing cannot lock
//! everyone else out, however many source addresses they come from. Idle connections
//! are also closed on a timer ([`Admission::sweep`]), and so are connections whose
//! writes have been blocked for as long (a client that stopped reading).
//!
//! [`Table`] is the bookkeeping, pure (plain values and an `Instant` passed in) and
//! unit-tested; [`Admission`] shares it between an accept loop and its connection
//! tasks, wakes the connections it closes ([`Slot::closed`]) and keeps the metrics.
//! Nothing here reads or writes a socket except through [`Tracked`], which only notes
//! when writes block. The accept loops are `http/serve.rs` and `gateway/mod.rs`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// The key connections are counted under: an IPv4 address, or the /64 of an IPv6
/// address (one host usually holds a whole /64). IPv4-mapped IPv6 counts as IPv4.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
        }
        v4 => v4,
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its source address already holds its cap.
    PerSource,
    /// The listener is full and every connection is busy.
    Full,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerSource => "per-ip",
            Refusal::Full => "full",
        }
    }
}

/// Why the listener closed a connection it had admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Made room for a newcomer while the listener was full.
    Evicted,
    /// Never started a request within the header deadline.
    NoRequest,
    /// No request in flight for the idle timeout.
    Idle,
    /// Its writes made no progress for the idle timeout.
    WriteStall,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Evicted => "evicted",
            CloseReason::NoRequest => "header-timeout",
            CloseReason::Idle => "idle",
            CloseReason::WriteStall => "write-stall",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No request in flight since `since`; `fresh` until its first request.
    Idle {
        seq: u64,
        since: Instant,
        fresh: bool,
    },
    /// This many requests (or one session) in flight.
    Busy(usize),
    /// Told to close; still holds its place until it is released.
    Closing,
}

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    state: State,
}

/// The open connections of one listener. Ids are never reused; idle connections are
/// ordered by when they became idle (`seq`), oldest first.
#[derive(Debug)]
pub struct Table {
    max: usize,
    max_per_source: usize,
    conns: HashMap<u64, Entry>,
    per_source: HashMap<IpAddr, usize>,
    /// Idle since accepted (no request yet), by seq.
    fresh: BTreeMap<u64, u64>,
    /// Idle after at least one request, by seq.
    idle: BTreeMap<u64, u64>,
    next: u64,
}

impl Table {
    pub fn new(max: usize, max_per_source: usize) -> Self {
        Self {
            max: max.max(1),
            max_per_source: max_per_source.max(1),
            conns: HashMap::new(),
            per_source: HashMap::new(),
            fresh: BTreeMap::new(),
            idle: BTreeMap::new(),
            next: 1,
        }
    }

    /// Connections held (closing ones included: their sockets are still open).
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Connections held from this source key.
    pub fn from_source(&self, source: IpAddr) -> usize {
        self.per_source.get(&source).copied().unwrap_or(0)
    }

    fn bump(&mut self) -> u64 {
        let n = self.next;
        self.next += 1;
        n
    }

    /// Admits a connection from `source` (a [`source_key`]): its id, and the id of the
    /// connection closed to make room for it, if the table was full.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Result<(u64, Option<u64>), Refusal> {
        if self.from_source(source) >= self.max_per_source {
            return Err(Refusal::PerSource);
        }
        let evicted = if self.conns.len() >= self.max {
            let oldest = match (self.fresh.first_key_value(), self.idle.first_key_value()) {
                (Some((a, &ia)), Some((b, &ib))) => Some(if a < b { ia } else { ib }),
                (Some((_, &i)), None) | (None, Some((_, &i))) => Some(i),
                (None, None) => None,
            };
            let victim = oldest.ok_or(Refusal::Full)?;
            self.remove(victim);
            Some(victim)
        } else {
            None
        };
        let id = self.bump();
        self.conns.insert(
            id,
            Entry {
                source,
                state: State::Idle {
                    seq: id,
                    since: now,
                    fresh: true,
                },
            },
        );
        self.fresh.insert(id, id);
        *self.per_source.entry(source).or_insert(0) += 1;
        Ok((id, evicted))
    }

    fn unlink_idle(&mut self, seq: u64, fresh: bool) {
        if fresh {
            self.fresh.remove(&seq);
        } else {
            self.idle.remove(&seq);
        }
    }

    /// A request (or a session) started on `id`: it cannot be evicted or expire.
    pub fn busy(&mut self, id: u64) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        match e.state {
            State::Idle { seq, fresh, .. } => {
                e.state = State::Busy(1);
                self.unlink_idle(seq, fresh);
            }
            State::Busy(n) => e.state = State::Busy(n + 1),
            State::Closing => {}
        }
    }

    /// A request on `id` ended; with none left in flight it is idle from `now`.
    pub fn idle(&mut self, id: u64, now: Instant) {
        let seq = self.next;
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        match e.state {
            State::Busy(n) if n > 1 => e.state = State::Busy(n - 1),
            State::Busy(_) => {
                e.state = State::Idle {
                    seq,
                    since: now,
                    fresh: false,
                };
                self.next += 1;
                self.idle.insert(seq, id);
            }
            State::Idle { .. } | State::Closing => {}
        }
    }

    /// Marks `id` as closing (it keeps its place until released); `false` if it was
    /// already closing or gone.
    pub fn close(&mut self, id: u64) -> bool {
        let Some(e) = self.conns.get_mut(&id) else {
            return false;
        };
        match e.state {
            State::Closing => false,
            State::Idle { seq, fresh, .. } => {
                e.state = State::Closing;
                self.unlink_idle(seq, fresh);
                true
            }
            State::Busy(_) => {
                e.state = State::Closing;
                true
            }
        }
    }

    /// The connection is gone (its socket closed). `false` if it had been evicted.
    pub fn release(&mut self, id: u64) -> bool {
        if self.conns.contains_key(&id) {
            self.remove(id);
            true
        } else {
            false
        }
    }

    fn remove(&mut self, id: u64) {
        let Some(e) = self.conns.remove(&id) else {
            return;
        };
        if let State::Idle { seq, fresh, .. } = e.state {
            self.unlink_idle(seq, fresh);
        }
        if let Some(n) = self.per_source.get_mut(&e.source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&e.source);
            }
        }
    }

    /// Marks as closing, and returns, the connections that never started a request
    /// within `first_request` of being accepted and those idle for `idle`.
    pub fn expire(
        &mut self,
        now: Instant,
        first_request: Duration,
        idle: Duration,
    ) -> Vec<(u64, CloseReason)> {
        let mut out = Vec::new();
        for (fresh, after, why) in [
            (true, first_request, CloseReason::NoRequest),
            (false, idle, CloseReason::Idle),
        ] {
            loop {
                let map = if fresh { &self.fresh } else { &self.idle };
                let Some((_, &id)) = map.first_key_value() else {
                    break;
                };
                let since = match self.conns.get(&id).map(|e| e.state) {
                    Some(State::Idle { since, .. }) => since,
                    _ => break,
                };
                if now.saturating_duration_since(since) < after {
                    break;
                }
                self.close(id);
                out.push((id, why));
            }
        }
        out
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerReason {
    pub listener: String,
    pub reason: String,
}

/// Connection metrics of every listener (registered in the cloud's registry as
/// `verge_connections_open`, `verge_connections_refused_total`,
/// `verge_connections_closed_total`).
#[derive(Clone, Default)]
pub struct ConnMetrics {
    pub open: Family<ListenerLabel, Gauge>,
    pub refused: Family<ListenerReason, Counter>,
    pub closed: Family<ListenerReason, Counter>,
}

impl ConnMetrics {
    fn label(listener: &str, reason: &str) -> ListenerReason {
        ListenerReason {
            listener: listener.to_string(),
            reason: reason.to_string(),
        }
    }

    /// Counts a connection the listener closed (`reason` as in [`CloseReason`], or
    /// `tls-timeout`, ...).
    pub fn closed(&self, listener: &str, reason: &str) {
        self.closed
            .get_or_create(&Self::label(listener, reason))
            .inc();
    }

    fn refused(&self, listener: &str, reason: Refusal) {
        self.refused
            .get_or_create(&Self::label(listener, reason.as_str()))
            .inc();
    }

    fn set_open(&self, listener: &str, n: usize) {
        self.open
            .get_or_create(&ListenerLabel {
                listener: listener.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}

/// What a connection task is told when the listener closes it.
#[derive(Default)]
struct Signal {
    notify: Notify,
    reason: Mutex<Option<CloseReason>>,
    /// Milliseconds since the admission's epoch (+1) when a write started blocking;
    /// 0 while writes go through.
    write_blocked_since: AtomicU64,
}

impl Signal {
    fn close(&self, why: CloseReason) {
        if let Ok(mut r) = self.reason.lock()
            && r.is_none()
        {
            *r = Some(why);
        }
        // Stores a permit when nobody waits yet: the task sees it at its next wait.
        self.notify.notify_one();
    }
}

struct Inner {
    table: Table,
    signals: HashMap<u64, Arc<Signal>>,
}

/// One listener's admission: the [`Table`] behind a lock, plus what closes connections.
pub struct Admission {
    listener: &'static str,
    inner: Mutex<Inner>,
    metrics: ConnMetrics,
    epoch: Instant,
}

impl Admission {
    /// `listener` names it in the metrics (`api`, `mqtt`).
    pub fn new(
        listener: &'static str,
        max: usize,
        max_per_source: usize,
        metrics: ConnMetrics,
    ) -> Arc<Self> {
        metrics.set_open(listener, 0);
        Arc::new(Self {
            listener,
            inner: Mutex::new(Inner {
                table: Table::new(max, max_per_source),
                signals: HashMap::new(),
            }),
            metrics,
            epoch: Instant::now(),
        })
    }

    pub fn metrics(&self) -> &ConnMetrics {
        &self.metrics
    }

    pub fn listener(&self) -> &'static str {
        self.listener
    }

    /// A place for a connection from `peer`, or `None` (counted): the caller closes the
    /// socket at once. May close the longest-idle connection to make room.
    pub fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Slot> {
        let Ok(mut inner) = self.inner.lock() else {
            return None;
        };
        match inner.table.admit(source_key(peer), Instant::now()) {
            Err(r) => {
                drop(inner);
                self.metrics.refused(self.listener, r);
                None
            }
            Ok((id, evicted)) => {
                if let Some(victim) = evicted
                    && let Some(sig) = inner.signals.remove(&victim)
                {
                    sig.close(CloseReason::Evicted);
                    self.metrics
                        .closed(self.listener, CloseReason::Evicted.as_str());
                }
                let signal = Arc::new(Signal::default());
                inner.signals.insert(id, signal.clone());
                self.metrics.set_open(self.listener, inner.table.len());
                Some(Slot {
                    admission: self.clone(),
                    id,
                    signal,
                })
            }
        }
    }

    /// Closes the connections that never started a request within `first_request`,
    /// those idle for `idle`, and those whose writes have been blocked for `idle`.
    pub fn sweep(&self, first_request: Duration, idle: Duration) {
        let now = Instant::now();
        let now_ms = self.millis(now);
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let mut closing = inner.table.expire(now, first_request, idle);
        let stalled: Vec<u64> = inner
            .signals
            .iter()
            .filter(|(_, s)| {
                let since = s.write_blocked_since.load(Ordering::Relaxed);
                since != 0 && now_ms.saturating_sub(since - 1) >= idle_ms
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stalled {
            if inner.table.close(id) {
                closing.push((id, CloseReason::WriteStall));
            }
        }
        for (id, why) in closing {
            if let Some(sig) = inner.signals.get(&id) {
                sig.close(why);
            }
            self.metrics.closed(self.listener, why.as_str());
        }
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn with_table(&self, f: impl FnOnce(&mut Table)) {
        if let Ok(mut inner) = self.inner.lock() {
            f(&mut inner.table);
        }
    }

    /// Connections held now.
    pub fn open(&self) -> usize {
        self.inner.lock().map(|i| i.table.len()).unwrap_or(0)
    }
}

/// A connection's place in its listener; released on drop.
pub struct Slot {
    admission: Arc<Admission>,
    id: u64,
    signal: Arc<Signal>,
}

impl Slot {
    /// Marks a request (or a whole session) in flight until the guard drops.
    pub fn busy(self: &Arc<Self>) -> Busy {
        self.admission.with_table(|t| t.busy(self.id));
        Busy { slot: self.clone() }
    }

    /// Like [`busy`](Self::busy), for a slot owned by one task.
    pub fn mark_busy(&self) {
        self.admission.with_table(|t| t.busy(self.id));
    }

    /// Resolves when the listener closes this connection, with why.
    pub async fn closed(&self) -> CloseReason {
        self.signal.notify.notified().await;
        self.signal
            .reason
            .lock()
            .ok()
            .and_then(|r| *r)
            .unwrap_or(CloseReason::Evicted)
    }

    /// Wraps the connection's socket to note when its writes block.
    pub fn track<I>(&self, io: I) -> Tracked<I> {
        Tracked {
            io,
            signal: self.signal.clone(),
            epoch: self.admission.epoch,
        }
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.admission.inner.lock() {
            inner.table.release(self.id);
            inner.signals.remove(&self.id);
            self.admission
                .metrics
                .set_open(self.admission.listener, inner.table.len());
        }
    }
}

/// A request in flight on a [`Slot`]; the connection turns idle when the last drops.
pub struct Busy {
    slot: Arc<Slot>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let id = self.slot.id;
        self.slot
            .admission
            .with_table(|t| t.idle(id, Instant::now()));
    }
}

/// A socket whose blocked writes are noted for the write-stall check; reads and writes
/// pass through unchanged.
pub struct Tracked<I> {
    io: I,
    signal: Arc<Signal>,
    epoch: Instant,
}

impl<I> Tracked<I> {
    fn note<T>(&self, poll: &Poll<T>) {
        let blocked = &self.signal.write_blocked_since;
        if poll.is_pending() {
            if blocked.load(Ordering::Relaxed) == 0 {
                let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
                blocked.store(ms + 1, Ordering::Relaxed);
            }
        } else if blocked.load(Ordering::Relaxed) != 0 {
            blocked.store(0, Ordering::Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note(&p);
        p
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let p = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note(&p);
        p
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn per_source_cap_refuses_extras_and_frees_on_release() {
        let t0 = Instant::now();
        let mut t = Table::new(100, 2);
        let (a, _) = t.admit(ip(1), t0).unwrap();
        t.admit(ip(1), t0).unwrap();
        assert_eq!(t.admit(ip(1), t0), Err(Refusal::PerSource));
        // Another source is not affected.
        assert!(t.admit(ip(2), t0).is_ok());
        assert!(t.release(a));
        assert!(t.admit(ip(1), t0).is_ok());
        assert_eq!(t.from_source(ip(1)), 2);
    }

    #[test]
    fn a_full_table_evicts_the_longest_idle_connection() {
        let t0 = Instant::now();
        let mut t = Table::new(3, 10);
        let (a, _) = t.admit(ip(1), t0).unwrap();
        let (b, _) = t.admit(ip(2), t0).unwrap();
        let (c, _) = t.admit(ip(3), t0).unwrap();
        // a serves a request; b and c are half-open.
        t.busy(a);
        let (d, evicted) = t.admit(ip(4), t0 + S).unwrap();
        assert_eq!(evicted, Some(b));
        assert_eq!(t.len(), 3);
        // a goes idle after c became idle: c is older, so c goes next.
        t.idle(a, t0 + 2 * S);
        let (_, evicted) = t.admit(ip(5), t0 + 3 * S).unwrap();
        assert_eq!(evicted, Some(c));
        // Evicted connections release nothing twice.
        assert!(!t.release(b));
        assert_eq!(t.from_source(ip(2)), 0);
        // d then a, in the order they went idle.
        let (_, evicted) = t.admit(ip(6), t0 + 4 * S).unwrap();
        assert_eq!(evicted, Some(d));
        let (_, evicted) = t.admit(ip(7), t0 + 4 * S).unwrap();
        assert_eq!(evicted, Some(a));
    }

    #[test]
    fn a_full_table_of_busy_connections_refuses() {
        let t0 = Instant::now();
        let mut t = Table::new(2, 10);
        let (a, _) = t.admit(ip(1), t0).unwrap();
        let (b, _) = t.admit(ip(2), t0).unwrap();
        t.busy(a);
        t.busy(b);
        t.busy(b);
        assert_eq!(t.admit(ip(3), t0), Err(Refusal::Full));
        // b still has one request in flight.
        t.idle(b, t0);
        assert_eq!(t.admit(ip(3), t0), Err(Refusal::Full));
        t.idle(b, t0);
        let (_, evicted) = t.admit(ip(3), t0).unwrap();
        assert_eq!(evicted, Some(b));
    }

    #[test]
    fn closing_connections_hold_their_place_but_are_not_evicted_twice() {
        let t0 = Instant::now();
        let mut t = Table::new(2, 10);
        let (a, _) = t.admit(ip(1), t0).unwrap();
        let (b, _) = t.admit(ip(2), t0).unwrap();
        assert!(t.close(a));
        assert!(!t.close(a));
        let (c, evicted) = t.admit(ip(3), t0).unwrap();
        assert_eq!(evicted, Some(b));
        t.busy(c);
        assert_eq!(t.admit(ip(4), t0), Err(Refusal::Full));
        assert!(t.release(a));
        assert!(t.admit(ip(4), t0).is_ok());
    }

    #[test]
    fn expire_closes_silent_and_idle_connections_on_their_own_deadlines() {
        let t0 = Instant::now();
        let mut t = Table::new(10, 10);
        let (fresh, _) = t.admit(ip(1), t0).unwrap();
        let (used, _) = t.admit(ip(2), t0).unwrap();
        let (busy, _) = t.admit(ip(3), t0).unwrap();
        t.busy(used);
        t.idle(used, t0 + S);
        t.busy(busy);
        assert!(t.expire(t0 + 5 * S, 20 * S, 60 * S).is_empty());
        assert_eq!(
            t.expire(t0 + 20 * S, 20 * S, 60 * S),
            vec![(fresh, CloseReason::NoRequest)]
        );
        assert_eq!(
            t.expire(t0 + 61 * S, 20 * S, 60 * S),
            vec![(used, CloseReason::Idle)]
        );
        // A busy connection never expires; closing ones are not reported again.
        assert!(t.expire(t0 + 1000 * S, 20 * S, 60 * S).is_empty());
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn ipv6_sources_count_per_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
        let mapped: IpAddr = "::ffff:127.0.0.9".parse().unwrap();
        assert_eq!(source_key(mapped), ip(9));
    }

    #[tokio::test]
    async fn admission_wakes_the_evicted_connection_and_counts() {
        let metrics = ConnMetrics::default();
        let adm = Admission::new("test", 1, 10, metrics.clone());
        let first = adm.admit(ip(1)).unwrap();
        let second = adm.admit(ip(2)).unwrap();
        assert_eq!(first.closed().await, CloseReason::Evicted);
        assert_eq!(adm.open(), 1);
        let second = Arc::new(second);
        let busy = second.busy();
        assert!(adm.admit(ip(3)).is_none());
        drop(busy);
        drop(first);
        assert_eq!(adm.open(), 1);
        let evicted = metrics
            .closed
            .get_or_create(&ConnMetrics::label("test", "evicted"))
            .get();
        let refused = metrics
            .refused
            .get_or_create(&ConnMetrics::label("test", "full"))
            .get();
        assert_eq!((evicted, refused), (1, 1));
    }

    #[tokio::test]
    async fn sweep_closes_silent_connections() {
        let adm = Admission::new("test", 10, 10, ConnMetrics::default());
        let slot = adm.admit(ip(1)).unwrap();
        adm.sweep(Duration::ZERO, Duration::from_secs(60));
        assert_eq!(slot.closed().await, CloseReason::NoRequest);
        drop(slot);
        assert_eq!(adm.open(), 0);
    }
}
