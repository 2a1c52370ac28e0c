//! The work queue of one controller (pure: no I/O, no clock of its own — every call
//! takes `now`, so tests drive it with plain values).
//!
//! - A key is queued at most once: adding a queued key again is a no-op, and adding
//!   it with a delay keeps whichever due time is earlier.
//! - A key is reconciled by one worker at a time: while it runs, an add marks it
//!   dirty and it is queued again (at once) when the run finishes.
//! - Failures back off per key, exponentially ([`Backoff`]); a success forgets them.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff for a key that keeps failing: `base · 2^(failures−1)`, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The wait after the `failures`-th failure in a row (1 → `base`).
    pub fn delay(&self, failures: u32) -> Duration {
        let shift = failures.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << shift).min(self.max)
    }
}

/// Keys waiting, running and failing.
#[derive(Debug, Default)]
pub struct Queue {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    /// Keys due later: (due, key), and each key's due time.
    delayed: BTreeSet<(Instant, String)>,
    due: HashMap<String, Instant>,
    running: HashSet<String>,
    /// Added while running: queued again when the run ends.
    dirty: HashSet<String>,
    failures: HashMap<String, u32>,
}

impl Queue {
    /// Queues `key` to run as soon as a worker is free.
    pub fn add(&mut self, key: &str) {
        if self.running.contains(key) {
            self.dirty.insert(key.to_string());
            return;
        }
        if let Some(at) = self.due.remove(key) {
            self.delayed.remove(&(at, key.to_string()));
        }
        if self.queued.insert(key.to_string()) {
            self.ready.push_back(key.to_string());
        }
    }

    /// Queues `key` to run at `at` (or earlier, if it is already due earlier).
    pub fn add_at(&mut self, key: &str, at: Instant) {
        if self.queued.contains(key) {
            return;
        }
        match self.due.get(key) {
            Some(cur) if *cur <= at => {}
            cur => {
                if let Some(cur) = cur.copied() {
                    self.delayed.remove(&(cur, key.to_string()));
                }
                self.due.insert(key.to_string(), at);
                self.delayed.insert((at, key.to_string()));
            }
        }
    }

    /// The next key to run at `now`, marking it running; `None` when nothing is due.
    pub fn pop(&mut self, now: Instant) -> Option<String> {
        while let Some((at, _)) = self.delayed.first() {
            if *at > now {
                break;
            }
            if let Some((_, key)) = self.delayed.pop_first() {
                self.due.remove(&key);
                if self.running.contains(&key) {
                    self.dirty.insert(key);
                } else if self.queued.insert(key.clone()) {
                    self.ready.push_back(key);
                }
            }
        }
        let key = self.ready.pop_front()?;
        self.queued.remove(&key);
        self.running.insert(key.clone());
        Some(key)
    }

    /// The run of `key` ended: `Ok(Some(at))` requeue at `at`, `Ok(None)` wait for a
    /// change, `Err(at)` a failure retried at `at` (the caller's error policy chose it,
    /// see [`Queue::failures`]).
    pub fn done(&mut self, key: &str, outcome: Result<Option<Instant>, Instant>) {
        self.running.remove(key);
        match outcome {
            Ok(next) => {
                self.failures.remove(key);
                if let Some(at) = next {
                    self.add_at(key, at);
                }
            }
            Err(at) => {
                *self.failures.entry(key.to_string()).or_insert(0) += 1;
                self.add_at(key, at);
            }
        }
        if self.dirty.remove(key) {
            self.add(key);
        }
    }

    /// Failures of `key` in a row so far (before the one being reported).
    pub fn failures(&self, key: &str) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
    }

    /// Forgets a key's failures and delayed run (its object is gone).
    pub fn forget(&mut self, key: &str) {
        self.failures.remove(key);
        if let Some(at) = self.due.remove(key) {
            self.delayed.remove(&(at, key.to_string()));
        }
    }

    /// When the earliest delayed key falls due (none if nothing is delayed).
    pub fn next_due(&self) -> Option<Instant> {
        self.delayed.first().map(|(at, _)| *at)
    }

    /// Whether a key is ready to run now.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Keys queued or delayed (not running).
    pub fn len(&self) -> usize {
        self.queued.len() + self.due.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn a_key_is_queued_once_and_runs_once_at_a_time() {
        let now = t0();
        let mut q = Queue::default();
        q.add("a");
        q.add("a");
        q.add("b");
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(now).as_deref(), Some("a"));
        // Added while running: not handed out again until the run ends.
        q.add("a");
        assert_eq!(q.pop(now).as_deref(), Some("b"));
        assert_eq!(q.pop(now), None);
        q.done("a", Ok(None));
        assert_eq!(q.pop(now).as_deref(), Some("a"), "dirty key runs again");
        q.done("a", Ok(None));
        q.done("b", Ok(None));
        assert!(q.is_empty());
        assert_eq!(q.running(), 0);
    }

    #[test]
    fn delays_keep_the_earliest_due_time_and_an_add_makes_it_due_now() {
        let now = t0();
        let mut q = Queue::default();
        q.add_at("a", now + Duration::from_secs(10));
        q.add_at("a", now + Duration::from_secs(5));
        q.add_at("a", now + Duration::from_secs(20));
        assert_eq!(q.next_due(), Some(now + Duration::from_secs(5)));
        assert_eq!(q.pop(now + Duration::from_secs(4)), None);
        assert_eq!(q.pop(now + Duration::from_secs(5)).as_deref(), Some("a"));
        q.done("a", Ok(Some(now + Duration::from_secs(60))));
        q.add("a");
        assert_eq!(q.next_due(), None, "an add replaces the delayed run");
        assert_eq!(q.pop(now).as_deref(), Some("a"));
    }

    #[test]
    fn failures_count_until_a_success() {
        let now = t0();
        let mut q = Queue::default();
        let b = Backoff::default();
        q.add("a");
        for n in 1..=3 {
            let key = q.pop(now + Duration::from_secs(3600 * n)).unwrap();
            assert_eq!(q.failures(&key), n as u32 - 1);
            let at = now + Duration::from_secs(3600 * n) + b.delay(q.failures(&key) + 1);
            q.done(&key, Err(at));
        }
        assert_eq!(q.failures("a"), 3);
        let key = q.pop(now + Duration::from_secs(4 * 3600)).unwrap();
        q.done(&key, Ok(None));
        assert_eq!(q.failures("a"), 0);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn a_delayed_key_falling_due_while_running_runs_after() {
        let now = t0();
        let mut q = Queue::default();
        q.add("a");
        assert_eq!(q.pop(now).as_deref(), Some("a"));
        q.add_at("a", now + Duration::from_secs(1));
        // Due while still running: becomes dirty, not a second concurrent run.
        assert_eq!(q.pop(now + Duration::from_secs(2)), None);
        q.done("a", Ok(None));
        assert_eq!(q.pop(now + Duration::from_secs(2)).as_deref(), Some("a"));
    }

    #[test]
    fn forget_drops_a_delayed_run_and_failures() {
        let now = t0();
        let mut q = Queue::default();
        q.add("a");
        let k = q.pop(now).unwrap();
        q.done(&k, Err(now + Duration::from_secs(1)));
        q.forget("a");
        assert_eq!(q.failures("a"), 0);
        assert_eq!(q.pop(now + Duration::from_secs(5)), None);
        assert!(q.is_empty());
    }
}
