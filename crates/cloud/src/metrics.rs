//! Prometheus metrics with an explicit registry (no global recorder): HTTP requests by
//! route, method and code; request latency by route; store operation latency; open
//! watches; connections per listener (open, refused, closed). [`InstrumentedStore`] wraps any [`Store`] to time its operations.

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
        Self {
            gateway,
            nodes,
            connections,
            registry,
            http_requests,
            http_latency,
            store_latency,
            store_errors,
            open_watches,
            auth_denials,
        }
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
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
