//! App output shipped by the nodes (`LogBatch` on the log channel): the newest
//! [`MAX_LINES_PER_SOURCE`] lines per node and source (`app/{app}/{replica}`), in
//! memory. A cloud restart starts empty; nodes keep shipping new lines.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use verge_proto::{LogBatch, LogLine, LogStream};

/// Lines kept per node and source.
pub const MAX_LINES_PER_SOURCE: usize = 1000;
/// Sources kept per node (a node runs at most `MAX_INSTANCES` instances).
pub const MAX_SOURCES_PER_NODE: usize = verge_proto::MAX_INSTANCES;

#[derive(Default)]
pub struct Logs {
    by_node: Mutex<HashMap<String, HashMap<String, VecDeque<LogLine>>>>,
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

impl Logs {
    pub fn record(&self, node: &str, batch: &LogBatch) {
        let Ok(mut m) = self.by_node.lock() else {
            return;
        };
        let sources = m.entry(node.to_string()).or_default();
        if !sources.contains_key(&batch.source) && sources.len() >= MAX_SOURCES_PER_NODE {
            return;
        }
        let q = sources.entry(batch.source.clone()).or_default();
        for l in &batch.lines {
            if q.len() >= MAX_LINES_PER_SOURCE {
                q.pop_front();
            }
            q.push_back(l.clone());
        }
    }

    pub fn forget(&self, node: &str) {
        if let Ok(mut m) = self.by_node.lock() {
            m.remove(node);
        }
    }

    /// The last `tail` lines of sources starting with `prefix` (on `node` only, when
    /// given), oldest first.
    pub fn query(&self, prefix: &str, node: Option<&str>, tail: usize) -> Vec<Entry> {
        let Ok(m) = self.by_node.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Entry> = m
            .iter()
            .filter(|(n, _)| node.is_none_or(|want| want == n.as_str()))
            .flat_map(|(n, sources)| {
                sources
                    .iter()
                    .filter(|(s, _)| s.starts_with(prefix))
                    .flat_map(move |(s, q)| {
                        q.iter().map(move |l| Entry {
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

    #[test]
    fn bounded_per_source_filtered_and_ordered() {
        let logs = Logs::default();
        logs.record("n1", &batch("app/web/0", &[(1, "a"), (3, "c")]));
        logs.record("n2", &batch("app/web/0", &[(2, "b")]));
        logs.record("n1", &batch("app/api/0", &[(4, "other")]));
        let all: Vec<String> = logs
            .query("app/web/", None, 100)
            .into_iter()
            .map(|e| e.line)
            .collect();
        assert_eq!(all, ["a", "b", "c"]);
        let n2: Vec<String> = logs
            .query("app/web/", Some("n2"), 100)
            .into_iter()
            .map(|e| e.line)
            .collect();
        assert_eq!(n2, ["b"]);
        assert_eq!(logs.query("app/web/", None, 1)[0].line, "c");
        let many: Vec<(i64, &str)> = (0..1500).map(|i| (i, "x")).collect();
        logs.record("n3", &batch("app/big/0", &many));
        assert_eq!(
            logs.query("app/big/", None, 5000).len(),
            MAX_LINES_PER_SOURCE
        );
        logs.forget("n1");
        assert!(logs.query("app/api/", None, 10).is_empty());
    }
}
