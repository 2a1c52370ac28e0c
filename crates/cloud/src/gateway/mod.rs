//! The embedded MQTT gateway: where edge nodes connect.
//!
//! An MQTT 3.1.1 server (the codec is rumqttc's `mqttbytes`) restricted to Verge's
//! topics. Every connection is mutual TLS with a client certificate signed by the
//! cluster CA; the certificate's CN *is* the node. A node may publish and subscribe only
//! where `verge_proto::{node_may_publish, node_may_subscribe}` allow; anything else is
//! refused (SUBACK failure) or dropped and counted, and the connection stays up.
//! Certificates of deleted nodes are refused at connect and their sessions closed.
//! Connections are admitted under the gateway's caps (per source address and in all,
//! `crate::admission`); until a node's CONNECT is accepted its connection may be closed
//! to make room, after it never (one session per node: a newer one takes over).
//!
//! Messages from nodes go to an [`Inbound`] handler (the node manager): heartbeats
//! inline (cheap, never queued behind bulk traffic), everything else through a
//! per-connection worker with a rate limit, acknowledged (PUBACK) only after the
//! handler returns — so a node's store-and-forward queue releases an item only once the
//! cloud has taken it. The cloud sends to nodes with [`Gateway::send`].
//!
//! Why not rumqttd: see `docs/decisions/003-embedded-mqtt-gateway.md`.

pub mod external;
mod session;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use verge_proto::{Channel, Heartbeat, Message};

use crate::admission::Admission;

pub use session::MAX_PACKET;

/// The gateway's name in the connection metrics.
pub const LISTENER: &str = "mqtt";
pub(crate) use session::identity as node_identity;

/// How the cloud reaches nodes: the embedded [`Gateway`], or an external broker
/// ([`external::ExternalBroker`]). What the node manager, sync and the API hold.
pub trait Downlink: Send + Sync + 'static {
    /// Queues a message to a node. `false` if it cannot be sent now (the sync
    /// protocol recovers: the node re-sends `hello` when it connects).
    fn send(&self, node: &str, channel: Channel, payload: Bytes) -> bool;
    /// Closes a node's session (after deletion), where the transport can.
    fn kick(&self, node: &str);
    /// Refuses this certificate serial (hex) from now on.
    fn revoke_serial(&self, serial: &str);
}

/// Shared handle to the downlink.
pub type DynDownlink = Arc<dyn Downlink>;

/// What the gateway hands over.
#[async_trait::async_trait]
pub trait Inbound: Send + Sync + 'static {
    fn connected(&self, node: &str);
    fn disconnected(&self, node: &str);
    /// Called inline on the connection's read path: keep it cheap.
    fn heartbeat(&self, node: &str, hb: &Heartbeat);
    /// Bulk messages (hello, status, ack, result, log); the PUBACK waits for this.
    async fn message(&self, node: &str, msg: Message) -> Handled;
    /// A node is alive but its `hello` was not seen (an external broker does not
    /// replay it to a cloud that subscribed later): resynchronise it from what the
    /// cloud last knew it acknowledged.
    async fn resync(&self, node: &str);
}

/// What an [`Inbound`] handler made of a bulk message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Taken (or deliberately dropped): acknowledge it.
    Done,
    /// Could not be taken now (e.g. the store failed): do not acknowledge; the
    /// connection is closed so the node re-sends it, in order, after reconnecting.
    Retry,
}

/// Counters the gateway keeps (registered in the cloud's metrics registry).
#[derive(Clone, Default)]
pub struct GatewayMetrics {
    pub connections: Gauge,
    pub messages: Family<ChannelLabel, Counter>,
    pub dropped: Family<DropLabel, Counter>,
    pub refused: Family<DropLabel, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct DropLabel {
    pub reason: String,
}

impl GatewayMetrics {
    pub fn drop(&self, reason: &str) {
        self.dropped
            .get_or_create(&DropLabel {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts a decoded message on `channel`.
    pub fn message(&self, channel: Channel) {
        self.messages
            .get_or_create(&ChannelLabel {
                channel: channel.as_str().to_string(),
            })
            .inc();
    }

    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&DropLabel {
                reason: reason.to_string(),
            })
            .inc();
    }
}

/// Per-node ingest pacing: a token bucket (`rate` per second, burst 4×) that waits
/// instead of refusing, so a busy node is slowed without losing anything. Shared by
/// the embedded gateway's and the external broker's per-node workers.
pub(crate) struct Pacer {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: std::time::Instant,
}

impl Pacer {
    pub(crate) fn new(rate: f64) -> Self {
        let rate = rate.max(0.1);
        Self {
            rate,
            burst: rate * 4.0,
            tokens: rate * 4.0,
            last: std::time::Instant::now(),
        }
    }

    /// Takes a token, first sleeping until one is there (counted as `rate-delayed`).
    pub(crate) async fn pace(&mut self, metrics: &GatewayMetrics) {
        let now = std::time::Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens < 1.0 {
            metrics.drop("rate-delayed");
            tokio::time::sleep(Duration::from_secs_f64((1.0 - self.tokens) / self.rate)).await;
            self.tokens = 1.0;
            self.last = std::time::Instant::now();
        }
        self.tokens -= 1.0;
    }
}

/// Tunables.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Bulk messages per second per node (burst 4x).
    pub ingest_rate: f64,
    /// Bulk messages buffered per node before the gateway stops reading from it.
    pub ingest_queue: usize,
    /// Messages buffered towards a node before sends to it fail.
    pub outbound_queue: usize,
    /// Time allowed for the CONNECT packet after the TLS handshake (the handshake's own
    /// limit and the connection caps are in [`crate::limits::Limits`]).
    pub connect_timeout: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            ingest_rate: 50.0,
            ingest_queue: 16,
            outbound_queue: 64,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

pub(crate) enum Outbound {
    /// Boxed to keep channel slots small (tokio allocates them 32 at a time).
    Publish(Box<(String, Bytes)>),
    Close,
}

struct Conn {
    id: u64,
    tx: mpsc::Sender<Outbound>,
}

pub(crate) struct Shared {
    conns: Mutex<HashMap<String, Conn>>,
    revoked: RwLock<HashSet<String>>,
    next_id: AtomicU64,
    pub(crate) inbound: Arc<dyn Inbound>,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) config: GatewayConfig,
}

/// Handle to the gateway: send to nodes, kick nodes, revoke certificates.
#[derive(Clone)]
pub struct Gateway {
    shared: Arc<Shared>,
}

impl Gateway {
    pub fn new(inbound: Arc<dyn Inbound>, metrics: GatewayMetrics, config: GatewayConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                conns: Mutex::new(HashMap::new()),
                revoked: RwLock::new(HashSet::new()),
                next_id: AtomicU64::new(1),
                inbound,
                metrics,
                config,
            }),
        }
    }

    /// Queues a message to a connected node. `false` if it is not connected or its
    /// outbound queue is full (the sync protocol recovers: the node re-sends `hello`).
    pub fn send_to(&self, node: &str, channel: Channel, payload: Bytes) -> bool {
        let conns = match self.shared.conns.lock() {
            Ok(c) => c,
            Err(_) => return false,
        };
        let Some(conn) = conns.get(node) else {
            return false;
        };
        conn.tx
            .try_send(Outbound::Publish(Box::new((
                verge_proto::node_topic(node, channel),
                payload,
            ))))
            .is_ok()
    }

    pub fn is_connected(&self, node: &str) -> bool {
        self.shared
            .conns
            .lock()
            .map(|c| c.contains_key(node))
            .unwrap_or(false)
    }

    pub fn connected_nodes(&self) -> Vec<String> {
        self.shared
            .conns
            .lock()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Refuses this certificate serial (hex) from now on.
    pub fn revoke(&self, serial: &str) {
        if let Ok(mut r) = self.shared.revoked.write() {
            r.insert(serial.to_ascii_lowercase());
        }
    }

    /// Closes a node's session (after deletion).
    pub fn close_session(&self, node: &str) {
        if let Ok(mut conns) = self.shared.conns.lock()
            && let Some(c) = conns.remove(node)
        {
            let _ = c.tx.try_send(Outbound::Close);
        }
    }

    /// Accepts node connections until `shutdown` flips. Each socket first asks
    /// `admission` for a place (refused ones are closed at once; a full gateway closes
    /// its oldest connection that has not sent CONNECT yet to make room), then gets
    /// `tls_handshake_timeout` for the handshake and `connect_timeout` for CONNECT.
    pub async fn serve(
        &self,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        admission: Arc<Admission>,
        tls_handshake_timeout: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "mqtt accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let Some(slot) = admission.admit(peer.ip()) else {
                // Refused (counted by the admission): closed at once.
                drop(tcp);
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let shared = self.shared.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let start = session::Start {
                    acceptor,
                    tls_timeout: tls_handshake_timeout,
                    slot,
                };
                session::run(shared, start, tcp, peer, shutdown).await;
            });
        }
    }
}

impl Downlink for Gateway {
    fn send(&self, node: &str, channel: Channel, payload: Bytes) -> bool {
        self.send_to(node, channel, payload)
    }

    fn kick(&self, node: &str) {
        self.close_session(node);
    }

    fn revoke_serial(&self, serial: &str) {
        self.revoke(serial);
    }
}

impl Shared {
    pub(crate) fn is_revoked(&self, serial: &str) -> bool {
        self.revoked
            .read()
            .map(|r| r.contains(serial))
            .unwrap_or(true)
    }

    /// Registers a session; an older session of the same node is closed (takeover).
    pub(crate) fn register(&self, node: &str, tx: mpsc::Sender<Outbound>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut conns) = self.conns.lock()
            && let Some(old) = conns.insert(node.to_string(), Conn { id, tx })
        {
            let _ = old.tx.try_send(Outbound::Close);
        }
        id
    }

    /// Removes the session if it is still the registered one.
    pub(crate) fn unregister(&self, node: &str, id: u64) -> bool {
        if let Ok(mut conns) = self.conns.lock()
            && conns.get(node).is_some_and(|c| c.id == id)
        {
            conns.remove(node);
            return true;
        }
        false
    }
}
