//! External-broker mode (`verge cloud --mqtt-url mqtts://HOST:PORT`): nodes connect to
//! a Mosquitto broker configured by `verge cloud print-mosquitto-config`, and the cloud
//! is one more MQTT client of it.
//!
//! The broker enforces who may connect (client certificates signed by the cluster CA,
//! revoked ones listed in `crl.pem`) and who may touch which topic (the ACL file from
//! [`verge_proto::mosquitto_acl`], usernames taken from the certificate CN). The cloud
//! connects with its own client certificate (CN [`verge_proto::DEFAULT_CLOUD_USER`],
//! issued from the cluster CA at start-up, never written to disk), subscribes to every
//! node's edge→cloud channels with a persistent session (the broker keeps QoS 1
//! messages while the cloud restarts) and acknowledges a message only after the node
//! manager has handled it (manual acks), so a cloud crash mid-message means
//! redelivery, not loss. Messages are decoded with the same strict codec as in the
//! embedded gateway; each node's bulk messages go through their own worker with the
//! same per-node rate limit, in order.
//!
//! What the embedded gateway does that this mode cannot: know when a node
//! disconnects (the lifecycle still judges liveness by heartbeats), and close a
//! deleted node's session at once — the broker reads `crl.pem` only when it starts
//! (Mosquitto does not reload CRLs on SIGHUP), so revocation takes effect at the
//! broker's next restart. See `docs/decisions/005-external-mosquitto.md`.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::{mpsc, watch};
use verge_proto::{Channel, Message};

use super::{Downlink, GatewayConfig, GatewayMetrics, Handled, Inbound};
use crate::error::{Error, Result};
use crate::pki::ClusterCa;

/// Per-node workers. Sends happen with the map locked, and a worker leaves only with
/// the map locked and its queue empty, so a node never has two workers at once (its
/// messages stay in order).
type Workers = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<(Channel, Publish)>>>>;

/// MQTT client id of the cloud (one cloud per broker).
pub const CLOUD_CLIENT_ID: &str = "verge-cloud";
/// A node's worker ends after this long without messages.
const WORKER_IDLE: Duration = Duration::from_secs(120);

/// `(host, port)` of `mqtts://host:port`. Plain `mqtt://` is refused: nodes and the
/// cloud authenticate with certificates.
pub fn parse_mqtts_url(url: &str) -> Result<(String, u16)> {
    let bad = |why: &str| Error::Config(format!("--mqtt-url {url:?}: {why}"));
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or_else(|| bad("expected mqtts://HOST:PORT (TLS is required)"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("expected mqtts://HOST:PORT"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.contains(['/', '@', '?', '#']) {
        return Err(bad("bad host"));
    }
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| bad("port must be 1-65535"))?;
    Ok((host.to_string(), port))
}

/// The cloud as a client of an external broker.
pub struct ExternalBroker {
    client: AsyncClient,
    ca: Arc<ClusterCa>,
    crl_path: PathBuf,
    revoked: Mutex<BTreeSet<String>>,
    /// Nodes whose hello this cloud session has seen (see [`Inbound::resync`]).
    greeted: Arc<Mutex<HashSet<String>>>,
}

impl ExternalBroker {
    /// Creates the client (nothing is sent until [`ExternalBroker::run`] polls) and
    /// writes `crl_path` from `revoked` serials.
    pub fn connect(
        url: &str,
        ca: Arc<ClusterCa>,
        crl_path: PathBuf,
        revoked: impl IntoIterator<Item = String>,
    ) -> Result<(Arc<Self>, rumqttc::EventLoop)> {
        let (host, port) = parse_mqtts_url(url)?;
        let tls = ca.client_tls_config(verge_proto::DEFAULT_CLOUD_USER)?;
        let mut opts = MqttOptions::new(CLOUD_CLIENT_ID, host, port);
        opts.set_clean_session(false);
        opts.set_manual_acks(true);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(
            super::MAX_PACKET,
            verge_proto::topics::MAX_DESIRED_PAYLOAD + 4096,
        );
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
        let (client, events) = AsyncClient::new(opts, 1024);
        let me = Arc::new(Self {
            client,
            ca,
            crl_path,
            revoked: Mutex::new(revoked.into_iter().collect()),
            greeted: Arc::default(),
        });
        me.write_crl()?;
        Ok((me, events))
    }

    fn write_crl(&self) -> Result<()> {
        let serials: Vec<String> = self
            .revoked
            .lock()
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        let pem = self.ca.crl_pem(&serials)?;
        crate::secure_fs::write_public(&self.crl_path, pem.as_bytes())
    }

    /// Polls the connection until `shutdown` flips: subscribes on every (re)connect,
    /// hands messages to `inbound`, reconnects with backoff on errors.
    pub async fn run(
        self: Arc<Self>,
        mut events: rumqttc::EventLoop,
        inbound: Arc<dyn Inbound>,
        metrics: GatewayMetrics,
        config: GatewayConfig,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let workers: Workers = Arc::default();
        let mut failures: u32 = 0;
        loop {
            let ev = tokio::select! {
                ev = events.poll() => ev,
                _ = shutdown.changed() => {
                    let _ = self.client.try_disconnect();
                    return;
                }
            };
            match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    if ack.code != ConnectReturnCode::Success {
                        tracing::error!(code = ?ack.code, "the MQTT broker refused the cloud");
                        continue;
                    }
                    failures = 0;
                    metrics.connections.set(1);
                    if !ack.session_present
                        && let Ok(mut g) = self.greeted.lock()
                    {
                        // Hellos sent while this session did not exist are lost.
                        g.clear();
                    }
                    tracing::info!("connected to the external MQTT broker");
                    for filter in verge_proto::cloud_subscriptions() {
                        if let Err(e) = self.client.try_subscribe(filter, QoS::AtLeastOnce) {
                            tracing::error!(error = %e, "cannot subscribe");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    self.on_publish(p, &workers, &inbound, &metrics, &config);
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    if s.return_codes
                        .iter()
                        .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                    {
                        tracing::error!(
                            "the broker denied a cloud subscription; check its ACL (verge cloud print-mosquitto-config)"
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    metrics.connections.set(0);
                    let wait = retry_wait(failures);
                    failures = failures.saturating_add(1);
                    tracing::warn!(error = %e, wait_ms = wait.as_millis() as u64, "external MQTT broker unreachable; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }

    fn on_publish(
        &self,
        p: Publish,
        workers: &Workers,
        inbound: &Arc<dyn Inbound>,
        metrics: &GatewayMetrics,
        config: &GatewayConfig,
    ) {
        let Ok((node, channel)) = verge_proto::parse_topic(&p.topic) else {
            metrics.drop("topic");
            let _ = self.client.try_ack(&p);
            return;
        };
        if channel == Channel::Heartbeat {
            match verge_proto::decode(channel, &p.payload) {
                Ok(Message::Heartbeat(hb)) => {
                    metrics.message(channel);
                    inbound.heartbeat(&node, &hb);
                    let unseen = self
                        .greeted
                        .lock()
                        .map(|mut g| g.insert(node.clone()))
                        .unwrap_or(false);
                    if unseen {
                        let inbound = inbound.clone();
                        let node = node.clone();
                        tokio::spawn(async move { inbound.resync(&node).await });
                    }
                }
                Ok(_) => metrics.drop("malformed"),
                Err(e) => metrics.drop(super::session::decode_reason(&e)),
            }
            let _ = self.client.try_ack(&p);
            return;
        }
        if channel == Channel::Hello
            && let Ok(mut g) = self.greeted.lock()
        {
            // Noted before the worker runs, so the heartbeat that follows a hello
            // does not trigger a needless resync.
            g.insert(node.clone());
        }
        // Per-node worker: in order, rate-limited, acked after handling. Never awaited
        // here: the poll loop must keep running (heartbeats, pings, acks of all other
        // nodes). The queue is bounded by the broker's in-flight window for the cloud.
        let mut w = workers.lock().unwrap_or_else(|e| e.into_inner());
        let tx = w.entry(node.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(worker(
                node.clone(),
                rx,
                self.client.clone(),
                inbound.clone(),
                metrics.clone(),
                config.ingest_rate,
                workers.clone(),
            ));
            tx
        });
        if tx.send((channel, p)).is_err() {
            // Cannot happen while the entry exists (the worker removes it before it
            // drops the receiver); the broker redelivers unacked messages anyway.
            metrics.drop("worker-gone");
            w.remove(&node);
        }
    }
}

/// Backoff between reconnect attempts to the broker: 0.5 s doubling to 30 s.
pub fn retry_wait(failures: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1u64 << failures.min(6)))
        .min(Duration::from_secs(30))
}

async fn worker(
    node: String,
    mut rx: mpsc::UnboundedReceiver<(Channel, Publish)>,
    client: AsyncClient,
    inbound: Arc<dyn Inbound>,
    metrics: GatewayMetrics,
    rate: f64,
    workers: Workers,
) {
    let mut pacer = super::Pacer::new(rate);
    loop {
        let (channel, p) = match tokio::time::timeout(WORKER_IDLE, rx.recv()).await {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(_) => {
                // Idle: leave only if nothing arrived meanwhile (sends hold the lock).
                let mut w = workers.lock().unwrap_or_else(|e| e.into_inner());
                if rx.is_empty() {
                    w.remove(&node);
                    return;
                }
                continue;
            }
        };
        pacer.pace(&metrics).await;
        let msg = match verge_proto::decode(channel, &p.payload) {
            Ok(m) => m,
            Err(e) => {
                metrics.drop(super::session::decode_reason(&e));
                tracing::debug!(%node, %channel, error = %e, "dropped a message");
                let _ = client.ack(&p).await;
                continue;
            }
        };
        metrics.message(channel);
        if matches!(msg, Message::Hello(_)) {
            // The broker does not tell the cloud about connects; hello is the first
            // thing a node sends on each one.
            inbound.connected(&node);
        }
        // Retried here until taken (e.g. the store is back), so nothing of this node
        // overtakes it; meanwhile its worker queue fills and the broker holds the rest.
        let mut failures = 0;
        while inbound.message(&node, msg.clone()).await == Handled::Retry {
            metrics.drop("retry");
            tokio::time::sleep(retry_wait(failures)).await;
            failures += 1;
        }
        let _ = client.ack(&p).await;
    }
}

impl Downlink for ExternalBroker {
    fn send(&self, node: &str, channel: Channel, payload: Bytes) -> bool {
        self.client
            .try_publish(
                verge_proto::node_topic(node, channel),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .is_ok()
    }

    fn kick(&self, node: &str) {
        tracing::info!(%node, "external broker: the node's session ends when the broker restarts with the new crl.pem");
    }

    fn revoke_serial(&self, serial: &str) {
        if let Ok(mut r) = self.revoked.lock() {
            r.insert(serial.to_ascii_lowercase());
        }
        if let Err(e) = self.write_crl() {
            tracing::error!(error = %e, path = %self.crl_path.display(), "cannot write the CRL");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_mqtts_url("mqtts://broker.example:8883").unwrap(),
            ("broker.example".into(), 8883)
        );
        assert_eq!(
            parse_mqtts_url("mqtts://[::1]:8883/").unwrap(),
            ("::1".into(), 8883)
        );
        for bad in [
            "mqtt://h:1883",
            "mqtts://h",
            "mqtts://:8883",
            "mqtts://h:0",
            "mqtts://h:99999",
            "https://h:1",
        ] {
            let e = parse_mqtts_url(bad).unwrap_err().to_string();
            assert!(e.contains("--mqtt-url"), "{bad}: {e}");
        }
    }

    #[test]
    fn retry_wait_grows_and_is_capped() {
        assert_eq!(retry_wait(0), Duration::from_millis(500));
        assert_eq!(retry_wait(1), Duration::from_secs(1));
        assert_eq!(retry_wait(50), Duration::from_secs(30));
    }
}
