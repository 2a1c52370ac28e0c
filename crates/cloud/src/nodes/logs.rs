//! App and function output shipped by the nodes (`LogBatch` on the log channel), kept in
//! memory under a byte budget: at most [`LogBudget::per_node_bytes`] per node and
//! [`LogBudget::total_bytes`] in all. A line costs its text plus [`LINE_OVERHEAD`];
//! when a node is over its budget its oldest lines go first (across its sources), and
//! when the total is over, the oldest lines of the node holding the most go. A cloud
//! restart starts empty; nodes keep shipping new lines.
//!
//! Which sources a node may write is not decided here: the node manager checks a
//! batch's source against what is placed on the node ([`parse_source`] names the
//! thing; `nodes::sync` knows the placement) before calling [`Logs::record`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use verge_proto::{LogBatch, LogLine, LogStream};

/// Bytes charged per stored line on top of its text: the line's struct, its queue slot
/// and a share of its source's entry. Keeps a flood of empty lines bounded too.
pub const LINE_OVERHEAD: usize = 96;
/// Default [`LogBudget::per_node_bytes`] (4 MiB).
pub const DEFAULT_PER_NODE_BYTES: usize = 4 * 1024 * 1024;
/// Default [`LogBudget::total_bytes`] (256 MiB).
pub const DEFAULT_TOTAL_BYTES: usize = 256 * 1024 * 1024;
/// Smallest per-node budget accepted: one full log message always fits.
pub const MIN_PER_NODE_BYTES: usize = 2 * verge_proto::topics::MAX_LOG_PAYLOAD;

/// How much log text the cloud keeps in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogBudget {
    /// Per node, across its sources.
    pub per_node_bytes: usize,
    /// Across all nodes.
    pub total_bytes: usize,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self {
            per_node_bytes: DEFAULT_PER_NODE_BYTES,
            total_bytes: DEFAULT_TOTAL_BYTES,
        }
    }
}

impl LogBudget {
    /// The budget with its bounds made consistent: per node at least
    /// [`MIN_PER_NODE_BYTES`], total at least one node's.
    pub fn normalized(self) -> Self {
        let per_node_bytes = self.per_node_bytes.max(MIN_PER_NODE_BYTES);
        Self {
            per_node_bytes,
            total_bytes: self.total_bytes.max(per_node_bytes),
        }
    }
}

/// What a log source names (`app/{app}/{replica}`, `fn/{name}/deploy`,
/// `fn/{name}/invocations`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSource<'a> {
    App { app: &'a str, replica: u32 },
    Function { name: &'a str },
}

/// Parses a source the way nodes write it; `None` for anything else.
pub fn parse_source(source: &str) -> Option<LogSource<'_>> {
    let mut parts = source.split('/');
    let (kind, name, last) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || !verge_api::is_dns1123_label(name) {
        return None;
    }
    match kind {
        "app" => {
            // Digits only: no sign, no leading zeros (one spelling per replica).
            if last.is_empty()
                || !last.bytes().all(|b| b.is_ascii_digit())
                || (last.len() > 1 && last.starts_with('0'))
            {
                return None;
            }
            Some(LogSource::App {
                app: name,
                replica: last.parse().ok()?,
            })
        }
        "fn" if matches!(last, "deploy" | "invocations") => Some(LogSource::Function { name }),
        _ => None,
    }
}

/// One line as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub node: String,
    pub source: String,
    pub ts_ms: i64,
    pub stream: LogStream,
    pub line: String,
}

/// What [`Logs::record`] did with a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// Lines stored.
    pub stored: usize,
    /// Older lines evicted to make room (this node's or, over the total, others').
    pub evicted: usize,
}

fn cost(l: &LogLine) -> usize {
    l.line.len() + LINE_OVERHEAD
}

#[derive(Default)]
struct NodeLogs {
    /// source → (arrival number, line), oldest first.
    sources: HashMap<String, VecDeque<(u64, LogLine)>>,
    bytes: usize,
}

impl NodeLogs {
    /// Drops the node's oldest line (across sources); its cost, or `None` when empty.
    fn evict_oldest(&mut self) -> Option<usize> {
        let source = self
            .sources
            .iter()
            .filter_map(|(s, q)| q.front().map(|(n, _)| (*n, s)))
            .min()?
            .1
            .clone();
        let q = self.sources.get_mut(&source)?;
        let (_, line) = q.pop_front()?;
        if q.is_empty() {
            self.sources.remove(&source);
        }
        let c = cost(&line);
        self.bytes -= c;
        Some(c)
    }
}

#[derive(Default)]
struct Inner {
    nodes: HashMap<String, NodeLogs>,
    /// (bytes, node) of every node holding lines: the largest is evicted from first
    /// when the total is over.
    by_size: BTreeSet<(usize, String)>,
    total: usize,
    next: u64,
}

impl Inner {
    /// Evicts one line of `node`; its cost (0 when it holds none).
    fn evict_from(&mut self, node: &str) -> usize {
        let Some(n) = self.nodes.get_mut(node) else {
            return 0;
        };
        self.by_size.remove(&(n.bytes, node.to_string()));
        let c = n.evict_oldest().unwrap_or(0);
        if n.bytes == 0 {
            self.nodes.remove(node);
        } else {
            self.by_size.insert((n.bytes, node.to_string()));
        }
        self.total -= c;
        c
    }
}

/// The lines nodes shipped, within a [`LogBudget`].
pub struct Logs {
    budget: LogBudget,
    inner: Mutex<Inner>,
}

impl Default for Logs {
    fn default() -> Self {
        Self::new(LogBudget::default())
    }
}

impl Logs {
    pub fn new(budget: LogBudget) -> Self {
        Self {
            budget: budget.normalized(),
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn budget(&self) -> LogBudget {
        self.budget
    }

    /// Bytes held now (what the budget counts).
    pub fn bytes(&self) -> usize {
        self.inner.lock().map(|i| i.total).unwrap_or(0)
    }

    /// Bytes held for `node`.
    pub fn node_bytes(&self, node: &str) -> usize {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.nodes.get(node).map(|n| n.bytes))
            .unwrap_or(0)
    }

    /// Stores a batch (the caller checked that `node` may write its source), evicting
    /// the oldest lines over the budgets.
    pub fn record(&self, node: &str, batch: &LogBatch) -> Recorded {
        let mut out = Recorded::default();
        let Ok(mut inner) = self.inner.lock() else {
            return out;
        };
        let inner = &mut *inner;
        for l in &batch.lines {
            let c = cost(l);
            if c > self.budget.per_node_bytes {
                continue;
            }
            // This node's own budget first: its oldest lines make room.
            while inner
                .nodes
                .get(node)
                .is_some_and(|n| n.bytes + c > self.budget.per_node_bytes)
            {
                if inner.evict_from(node) == 0 {
                    break;
                }
                out.evicted += 1;
            }
            // Then the total: the node holding the most gives way.
            while inner.total + c > self.budget.total_bytes {
                let Some((_, largest)) = inner.by_size.last().cloned() else {
                    break;
                };
                if inner.evict_from(&largest) == 0 {
                    break;
                }
                out.evicted += 1;
            }
            let seq = inner.next;
            inner.next += 1;
            let n = inner.nodes.entry(node.to_string()).or_default();
            let before = n.bytes;
            n.sources
                .entry(batch.source.clone())
                .or_default()
                .push_back((seq, l.clone()));
            n.bytes += c;
            let after = n.bytes;
            inner.by_size.remove(&(before, node.to_string()));
            inner.by_size.insert((after, node.to_string()));
            inner.total += c;
            out.stored += 1;
        }
        out
    }

    pub fn forget(&self, node: &str) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some(n) = inner.nodes.remove(node)
        {
            inner.by_size.remove(&(n.bytes, node.to_string()));
            inner.total -= n.bytes;
        }
    }

    /// The last `tail` lines of sources starting with `prefix` (on `node` only, when
    /// given), oldest first.
    pub fn query(&self, prefix: &str, node: Option<&str>, tail: usize) -> Vec<Entry> {
        let Ok(inner) = self.inner.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Entry> = inner
            .nodes
            .iter()
            .filter(|(n, _)| node.is_none_or(|want| want == n.as_str()))
            .flat_map(|(n, logs)| {
                logs.sources
                    .iter()
                    .filter(|(s, _)| s.starts_with(prefix))
                    .flat_map(move |(s, q)| {
                        // At most `tail` from each source can be among the last `tail`.
                        q.iter()
                            .skip(q.len().saturating_sub(tail))
                            .map(move |(_, l)| Entry {
                                node: n.clone(),
                                source: s.clone(),
                                ts_ms: l.ts_ms,
                                stream: l.stream,
                                line: l.line.clone(),
                            })
                    })
            })
            .collect();
        out.sort_by(|a, b| (a.ts_ms, &a.node, &a.source).cmp(&(b.ts_ms, &b.node, &b.source)));
        let drop = out.len().saturating_sub(tail);
        out.drain(..drop);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(source: &str, lines: &[(i64, &str)]) -> LogBatch {
        LogBatch {
            source: source.into(),
            lines: lines
                .iter()
                .map(|(t, l)| LogLine {
                    ts_ms: *t,
                    stream: LogStream::Stdout,
                    line: l.to_string(),
                })
                .collect(),
        }
    }

    fn lines(logs: &Logs, prefix: &str, node: Option<&str>) -> Vec<String> {
        logs.query(prefix, node, 5000)
            .into_iter()
            .map(|e| e.line)
            .collect()
    }

    #[test]
    fn filtered_and_ordered() {
        let logs = Logs::default();
        logs.record("n1", &batch("app/web/0", &[(1, "a"), (3, "c")]));
        logs.record("n2", &batch("app/web/0", &[(2, "b")]));
        logs.record("n1", &batch("app/api/0", &[(4, "other")]));
        assert_eq!(lines(&logs, "app/web/", None), ["a", "b", "c"]);
        assert_eq!(lines(&logs, "app/web/", Some("n2")), ["b"]);
        assert_eq!(logs.query("app/web/", None, 1)[0].line, "c");
        logs.forget("n1");
        assert!(logs.query("app/api/", None, 10).is_empty());
        assert_eq!(logs.bytes(), 1 + LINE_OVERHEAD, "only n2's line is left");
    }

    #[test]
    fn a_node_over_its_budget_loses_its_oldest_lines_across_sources() {
        let budget = LogBudget {
            per_node_bytes: MIN_PER_NODE_BYTES,
            total_bytes: 100 * MIN_PER_NODE_BYTES,
        };
        let logs = Logs::new(budget);
        let big = "x".repeat(10_000);
        logs.record("quiet", &batch("app/db/0", &[(0, "kept")]));
        // Alternating sources: eviction follows arrival, not the source.
        for i in 0..100 {
            let source = if i % 2 == 0 {
                "app/web/0"
            } else {
                "fn/f/invocations"
            };
            let r = logs.record("loud", &batch(source, &[(i, &big)]));
            assert_eq!(r.stored, 1);
        }
        assert!(logs.node_bytes("loud") <= budget.per_node_bytes);
        let per_line = big.len() + LINE_OVERHEAD;
        let kept = budget.per_node_bytes / per_line;
        let got = logs.query("", Some("loud"), 5000);
        assert_eq!(got.len(), kept);
        // The newest `kept` lines, whatever their source.
        assert_eq!(got[0].ts_ms, 100 - kept as i64);
        assert!(got.iter().any(|e| e.source == "app/web/0"));
        assert!(got.iter().any(|e| e.source == "fn/f/invocations"));
        assert_eq!(
            lines(&logs, "app/db/", None),
            ["kept"],
            "other nodes untouched"
        );
    }

    #[test]
    fn over_the_total_the_largest_node_gives_way() {
        let budget = LogBudget {
            per_node_bytes: MIN_PER_NODE_BYTES,
            total_bytes: MIN_PER_NODE_BYTES * 3 / 2,
        };
        let logs = Logs::new(budget);
        let big = "y".repeat(20_000);
        for i in 0..50 {
            logs.record("a", &batch("app/a/0", &[(i, &big)]));
        }
        logs.record("small", &batch("app/s/0", &[(0, "tiny")]));
        for i in 0..50 {
            logs.record("b", &batch("app/b/0", &[(i, &big)]));
        }
        assert!(logs.bytes() <= budget.total_bytes, "{}", logs.bytes());
        assert_eq!(
            lines(&logs, "app/s/", None),
            ["tiny"],
            "the small node keeps its line"
        );
        assert!(logs.node_bytes("a") > 0 && logs.node_bytes("b") > 0);
        // Nothing is charged twice or lost from the accounting.
        let held: usize = ["a", "b", "small"].iter().map(|n| logs.node_bytes(n)).sum();
        assert_eq!(held, logs.bytes());
        logs.forget("a");
        logs.forget("b");
        logs.forget("small");
        assert_eq!(logs.bytes(), 0);
    }

    #[test]
    fn budgets_are_normalized() {
        let b = LogBudget {
            per_node_bytes: 1,
            total_bytes: 0,
        }
        .normalized();
        assert_eq!(b.per_node_bytes, MIN_PER_NODE_BYTES);
        assert_eq!(b.total_bytes, MIN_PER_NODE_BYTES);
    }

    #[test]
    fn sources_parse_only_in_the_shapes_nodes_write() {
        assert_eq!(
            parse_source("app/web/0"),
            Some(LogSource::App {
                app: "web",
                replica: 0
            })
        );
        assert_eq!(
            parse_source("app/web/12"),
            Some(LogSource::App {
                app: "web",
                replica: 12
            })
        );
        assert_eq!(
            parse_source("fn/resize/invocations"),
            Some(LogSource::Function { name: "resize" })
        );
        assert_eq!(
            parse_source("fn/resize/deploy"),
            Some(LogSource::Function { name: "resize" })
        );
        for bad in [
            "",
            "app",
            "app/web",
            "app/web/",
            "app/web/01",
            "app/web/+1",
            "app/web/-1",
            "app/web/4294967296",
            "app/web/0/x",
            "app/Web/0",
            "app/../0",
            "fn/f/other",
            "fn/f",
            "agent/x/y",
            "cloud/web/0",
        ] {
            assert_eq!(parse_source(bad), None, "{bad:?}");
        }
    }
}
