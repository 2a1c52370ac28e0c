//! Prometheus metrics with an explicit registry (no global recorder): HTTP requests by
//! route, method and code; request latency by route; store operation latency; open
//! watches; connections per listener (open, refused, closed). [`InstrumentedStore`] wraps any [`Store`] to time its operations.
//!
//! Two expositions of the same registry ([`Exposition`], chosen from the scraper's
//! `Accept`): OpenMetrics 1.0 (what `prometheus-client` encodes; Prometheus asks for it
//! first) and the Prometheus text format 0.0.4 (everything else: `curl`, `promtool
//! check metrics`), converted from the OpenMetrics text by [`to_prometheus_text`]
//! (pure). Never a mix of the two under one content type.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use verge_api::LabelSelector;
use verge_store::{DynStore, Expect, KeyValue, Labels, ListResult, Revision, Store, WatchStream};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~6.5 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 17))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_latency: HistogramFamily<RouteLabels>,
    pub store_latency: HistogramFamily<OpLabels>,
    pub store_errors: Family<OpLabels, Counter>,
    pub open_watches: Gauge<i64, AtomicI64>,
    pub auth_denials: Counter,
    pub gateway: crate::gateway::GatewayMetrics,
    pub nodes: crate::nodes::InputMetrics,
    /// Open, refused and closed connections per listener (`api`, `mqtt`).
    pub connections: crate::admission::ConnMetrics,
    /// Object events: dispatched, delivered, failed, dead-lettered, dispatcher lag.
    pub events: crate::events::EventMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("verge");
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests served, by route template, method and status code",
            http_requests.clone(),
        );
        let http_latency: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (for watches: to send the response head)",
            http_latency.clone(),
        );
        let store_latency: HistogramFamily<OpLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "store_operation_duration_seconds",
            "Store operation latency by operation (writes include the durable commit)",
            store_latency.clone(),
        );
        let store_errors = Family::<OpLabels, Counter>::default();
        registry.register(
            "store_operation_errors",
            "Store operations that returned an error, by operation",
            store_errors.clone(),
        );
        let open_watches = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "open_watches",
            "Watch streams currently open",
            open_watches.clone(),
        );
        let auth_denials = Counter::default();
        registry.register(
            "auth_denials",
            "Requests refused with 401 or 403",
            auth_denials.clone(),
        );
        let gateway = crate::gateway::GatewayMetrics::default();
        registry.register(
            "mqtt_connections",
            "Edge nodes connected to the MQTT gateway",
            gateway.connections.clone(),
        );
        registry.register(
            "mqtt_messages",
            "Messages accepted from edge nodes, by channel",
            gateway.messages.clone(),
        );
        registry.register(
            "mqtt_dropped",
            "Messages from edge nodes dropped (acl, oversize, malformed, version, ...), by reason",
            gateway.dropped.clone(),
        );
        registry.register(
            "mqtt_refused",
            "Connections or subscriptions refused, by reason",
            gateway.refused.clone(),
        );
        let nodes = crate::nodes::InputMetrics::default();
        registry.register(
            "node_results_refused",
            "Task results from nodes refused before anything was stored (unknown-task, finished, fan-out-parent, not-dispatched, other-node, unknown-attempt, trigger-not-placed)",
            nodes.results_refused.clone(),
        );
        registry.register(
            "node_log_lines_dropped",
            "Log lines from nodes dropped (not-placed: a source not placed on the node) or evicted over the log budget (evicted)",
            nodes.log_lines_dropped.clone(),
        );
        registry.register(
            "node_instances_dropped",
            "Instances nodes reported for apps not placed on them (left out of the apps' status)",
            nodes.instances_dropped.clone(),
        );
        registry.register(
            "node_log_bytes",
            "Bytes of node log lines held in memory",
            nodes.log_bytes.clone(),
        );
        let connections = crate::admission::ConnMetrics::default();
        registry.register(
            "connections_open",
            "Connections a listener holds, by listener (api, mqtt)",
            connections.open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections closed at accept, by listener and reason (per-ip: the source address holds its cap; full: every connection busy)",
            connections.refused.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the listener closed, by listener and reason (evicted, header-timeout, idle, write-stall, tls-timeout, tls-error)",
            connections.closed.clone(),
        );
        let events = crate::events::EventMetrics::default();
        events.register(&mut registry);
        Self {
            gateway,
            nodes,
            connections,
            events,
            registry,
            http_requests,
            http_latency,
            store_latency,
            store_errors,
            open_watches,
            auth_denials,
        }
    }

    /// The registry in `format`.
    pub fn encode(&self, format: Exposition) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        match format {
            Exposition::OpenMetrics => out,
            Exposition::Prometheus => to_prometheus_text(&out),
        }
    }
}

/// The two text formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposition {
    /// OpenMetrics 1.0: `# TYPE x counter` with samples `x_total`, `# UNIT`, `# EOF`.
    OpenMetrics,
    /// Prometheus text 0.0.4: a family is named as its samples (`x_total`), no `# EOF`.
    Prometheus,
}

/// Media type of OpenMetrics text.
const OPENMETRICS: &str = "application/openmetrics-text";

impl Exposition {
    /// The format a scraper sending `accept` prefers: OpenMetrics only when it asks for
    /// it at least as much as for plain text (Prometheus sends
    /// `application/openmetrics-text;version=1.0.0,…,text/plain;version=0.0.4;q=0.5,…`);
    /// no `Accept`, or anything else, gets the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Exposition {
        let Some(accept) = accept else {
            return Exposition::Prometheus;
        };
        let (mut open_q, mut text_q) = (0.0f32, 0.0f32);
        for range in accept.split(',') {
            let mut parts = range.split(';').map(str::trim);
            let media = parts.next().unwrap_or("").to_ascii_lowercase();
            let mut q = 1.0f32;
            let mut version = None;
            for p in parts {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                match k.trim().to_ascii_lowercase().as_str() {
                    "q" => q = v.trim().parse().unwrap_or(0.0),
                    "version" => version = Some(v.trim().trim_matches('"').to_string()),
                    _ => {}
                }
            }
            match media.as_str() {
                OPENMETRICS
                    if version
                        .as_deref()
                        .is_none_or(|v| v == "1.0.0" || v == "0.0.1") =>
                {
                    open_q = open_q.max(q);
                }
                "text/plain" | "text/*" | "*/*" => text_q = text_q.max(q),
                _ => {}
            }
        }
        if open_q > 0.0 && open_q >= text_q {
            Exposition::OpenMetrics
        } else {
            Exposition::Prometheus
        }
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Exposition::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Exposition::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: counter families take their
/// samples' `_total` name, info families their `_info` name (as gauges), `_created`
/// samples, `# UNIT` lines, exemplars and `# EOF` are dropped, types 0.0.4 lacks
/// become `untyped`, and `\"` in help text (an OpenMetrics escape 0.0.4 does not know)
/// becomes `"`.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // The family being copied: its name and OpenMetrics type.
    let mut family: Option<(String, String)> = None;
    let mut help: Option<(String, String)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name.to_string(), text.replace("\\\"", "\"")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (exposed, exposed_kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "stateset" => (name.to_string(), "gauge"),
                "histogram" => (name.to_string(), "histogram"),
                "summary" => (name.to_string(), "summary"),
                _ => (name.to_string(), "untyped"),
            };
            if let Some((h_name, text)) = help.take()
                && h_name == name
            {
                out.push_str(&format!("# HELP {exposed} {text}\n"));
            }
            out.push_str(&format!("# TYPE {exposed} {exposed_kind}\n"));
            family = Some((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        // A sample: drop `_created` series and exemplars (` # {…} v`).
        let sample = match line.find(" # ") {
            Some(i) => &line[..i],
            None => line,
        };
        let name_end = sample.find(['{', ' ']).unwrap_or(sample.len());
        let name = &sample[..name_end];
        if let Some((fam, _)) = &family
            && name.strip_prefix(fam.as_str()) == Some("_created")
        {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// A [`Store`] decorator recording each operation's latency and errors.
pub struct InstrumentedStore {
    inner: DynStore,
    metrics: Arc<Metrics>,
}

impl InstrumentedStore {
    pub fn new(inner: DynStore, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn record<T>(&self, op: &'static str, start: Instant, res: &verge_store::Result<T>) {
        self.metrics
            .store_latency
            .get_or_create(&OpLabels { op })
            .observe(start.elapsed().as_secs_f64());
        if res.is_err() {
            self.metrics
                .store_errors
                .get_or_create(&OpLabels { op })
                .inc();
        }
    }
}

#[async_trait::async_trait]
impl Store for InstrumentedStore {
    async fn get(&self, key: &str) -> verge_store::Result<Option<KeyValue>> {
        let t = Instant::now();
        let r = self.inner.get(key).await;
        self.record("get", t, &r);
        r
    }

    async fn list(
        &self,
        prefix: &str,
        selector: Option<&LabelSelector>,
    ) -> verge_store::Result<ListResult> {
        let t = Instant::now();
        let r = self.inner.list(prefix, selector).await;
        self.record("list", t, &r);
        r
    }

    async fn list_page(
        &self,
        prefix: &str,
        start_after: &str,
        limit: usize,
    ) -> verge_store::Result<ListResult> {
        let t = Instant::now();
        let r = self.inner.list_page(prefix, start_after, limit).await;
        self.record("list", t, &r);
        r
    }

    async fn create(
        &self,
        key: &str,
        value: Bytes,
        labels: Labels,
    ) -> verge_store::Result<KeyValue> {
        let t = Instant::now();
        let r = self.inner.create(key, value, labels).await;
        self.record("create", t, &r);
        r
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        labels: Labels,
        expect: Expect,
    ) -> verge_store::Result<KeyValue> {
        let t = Instant::now();
        let r = self.inner.update(key, value, labels, expect).await;
        self.record("update", t, &r);
        r
    }

    async fn delete(&self, key: &str, expect: Expect) -> verge_store::Result<KeyValue> {
        let t = Instant::now();
        let r = self.inner.delete(key, expect).await;
        self.record("delete", t, &r);
        r
    }

    async fn watch(&self, prefix: &str, after: Revision) -> verge_store::Result<WatchStream> {
        let t = Instant::now();
        let r = self.inner.watch(prefix, after).await;
        self.record("watch", t, &r);
        r
    }

    async fn compact(&self, revision: Revision) -> verge_store::Result<()> {
        let t = Instant::now();
        let r = self.inner.compact(revision).await;
        self.record("compact", t, &r);
        r
    }

    async fn current_revision(&self) -> verge_store::Result<Revision> {
        self.inner.current_revision().await
    }

    async fn compacted_revision(&self) -> verge_store::Result<Revision> {
        self.inner.compacted_revision().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

    #[test]
    fn negotiation() {
        use Exposition::*;
        for (accept, want) in [
            (None, Prometheus),
            (Some("*/*"), Prometheus),
            (Some("text/plain"), Prometheus),
            (Some(PROMETHEUS_ACCEPT), OpenMetrics),
            (Some("application/openmetrics-text"), OpenMetrics),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Prometheus,
            ),
            (
                Some("application/openmetrics-text; version=1.0.0; q=0.5, text/plain;q=0.5"),
                OpenMetrics,
            ),
            // A version it does not speak, or q=0: never.
            (
                Some("application/openmetrics-text;version=2.0.0"),
                Prometheus,
            ),
            (Some("application/openmetrics-text;q=0"), Prometheus),
            (Some("application/json"), Prometheus),
        ] {
            assert_eq!(Exposition::negotiate(accept), want, "{accept:?}");
        }
        assert!(OpenMetrics.content_type().starts_with(OPENMETRICS));
        assert!(
            Prometheus
                .content_type()
                .starts_with("text/plain; version=0.0.4")
        );
    }

    #[test]
    fn openmetrics_to_prometheus_text() {
        let om = "\
# HELP x_requests Requests \\\"served\\\".
# TYPE x_requests counter
x_requests_total{route=\"/a\",code=\"200\"} 3
x_requests_created{route=\"/a\",code=\"200\"} 1700000000.0
# HELP x_latency_seconds Latency.
# TYPE x_latency_seconds histogram
# UNIT x_latency_seconds seconds
x_latency_seconds_sum 0.5
x_latency_seconds_count 2
x_latency_seconds_bucket{le=\"0.1\"} 1 # {trace_id=\"abc\"} 0.05
x_latency_seconds_bucket{le=\"+Inf\"} 2
# HELP x_open Open.
# TYPE x_open gauge
x_open 4
# HELP x_build Build.
# TYPE x_build info
x_build_info{version=\"1\"} 1
# TYPE x_other unknown
x_other 1
# EOF
";
        let want = "\
# HELP x_requests_total Requests \"served\".
# TYPE x_requests_total counter
x_requests_total{route=\"/a\",code=\"200\"} 3
# HELP x_latency_seconds Latency.
# TYPE x_latency_seconds histogram
x_latency_seconds_sum 0.5
x_latency_seconds_count 2
x_latency_seconds_bucket{le=\"0.1\"} 1
x_latency_seconds_bucket{le=\"+Inf\"} 2
# HELP x_open Open.
# TYPE x_open gauge
x_open 4
# HELP x_build_info Build.
# TYPE x_build_info gauge
x_build_info{version=\"1\"} 1
# TYPE x_other untyped
x_other 1
";
        assert_eq!(to_prometheus_text(om), want);
    }

    /// In the Prometheus text of the real registry, every sample belongs to the family
    /// declared above it (the rule the OpenMetrics text breaks for counters).
    #[test]
    fn every_sample_matches_its_family() {
        let m = Metrics::new();
        m.http_requests
            .get_or_create(&RequestLabels {
                route: "/healthz".into(),
                method: "GET".into(),
                code: 200,
            })
            .inc();
        m.http_latency
            .get_or_create(&RouteLabels {
                route: "/healthz".into(),
                method: "GET".into(),
            })
            .observe(0.01);
        let text = m.encode(Exposition::Prometheus);
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        let mut family = String::new();
        let mut histogram = false;
        let mut samples = 0;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                family = name.to_string();
                histogram = kind == "histogram";
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let name = &line[..line.find(['{', ' ']).unwrap()];
            let ok = name == family
                || (histogram
                    && ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| name.strip_prefix(family.as_str()) == Some(*s)));
            assert!(ok, "{name} under # TYPE {family}:\n{text}");
            samples += 1;
        }
        assert!(samples > 0);
        assert!(
            text.contains("# TYPE verge_http_requests_total counter"),
            "{text}"
        );
        let om = m.encode(Exposition::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
    }
}
