//! The uplink: the node's MQTT session with the cloud (rumqttc, mutual TLS).
//!
//! On every connect: subscribe to the node's `desired` and `task` topics and say
//! `hello` with the applied revision (the cloud answers with a delta or a snapshot).
//! Desired state is persisted to the local store *before* it is acknowledged; a delta
//! that does not start at the applied revision is not applied and triggers another
//! `hello`. Heartbeats are QoS 0, tiny and sent on their own timer, never behind the
//! queue. Status reports go through the disk-backed store-and-forward queue and are
//! flushed in order, a few in flight at a time, each removed only when the cloud's
//! PUBACK for it arrives. Lost connections are retried with exponential backoff and full
//! jitter, capped.
//!
//! While the cloud is unreachable nothing here blocks the node: the local store keeps
//! serving the last desired state (see `local_api`), across restarts too.
//!
//! A revoked certificate (the node was deleted in the cloud: the embedded gateway
//! answers CONNACK `not authorized`, an external broker's TLS sends the
//! `certificate_revoked` alert) cannot come back by retrying: the uplink says so once,
//! at error level, records it for `GET /v1/status` (`uplinkStopped`) and stops; the
//! node keeps running what it has, offline ([`refusal`], pure; decision 019).
//!
//! Certificate rotation: two thirds into its certificate's life
//! ([`Identity::renew_at`]) the node sends a CSR for a fresh key on `renew`; the cloud
//! answers on `cert`; the node checks the certificate is for that key and its name,
//! installs both (keeping the previous pair) and reconnects with them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration,
    Transport,
};
use verge_proto::{Ack, Channel, Heartbeat, Hello, Message};

use crate::error::{Error, Result};
use crate::identity::Identity;
use crate::now_ms;
use crate::state::EdgeState;
use crate::store::ApplyOutcome;
use crate::sysinfo::{self, Thresholds};

/// How the uplink behaves.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub heartbeat_interval: Duration,
    pub status_interval: Duration,
    /// First reconnect delay bound; doubles per failure up to `backoff_cap`.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    pub labels: BTreeMap<String, String>,
    pub thresholds: Thresholds,
    /// Queue items in flight (sent, not yet acknowledged) at once.
    pub max_in_flight: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(15),
            status_interval: Duration::from_secs(60),
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            labels: BTreeMap::new(),
            thresholds: Thresholds::default(),
            max_in_flight: 16,
        }
    }
}

/// Delay before reconnect attempt `attempt` (0-based): uniform in
/// `[0, min(cap, base * 2^attempt)]` ("full jitter").
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(cap)
        .min(cap);
    let ms = ceiling.as_millis() as u64;
    Duration::from_millis(if ms == 0 {
        0
    } else {
        rand::thread_rng().gen_range(0..=ms)
    })
}

/// `mqtts://host:port` → (host, port).
fn parse_mqtt_url(url: &str) -> Result<(String, u16)> {
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or_else(|| Error::Invalid(format!("mqtt url {url:?} must start with mqtts://")))?;
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| Error::Invalid(format!("mqtt url {url:?} has no port")))?;
    let port = port
        .trim_end_matches('/')
        .parse()
        .map_err(|_| Error::Invalid(format!("mqtt url {url:?}: bad port")))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok((host, port))
}

/// How a session ended.
struct SessionEnd {
    /// It got connected at all.
    connected: bool,
    /// A renewed identity to reconnect with.
    renewed: Option<Identity>,
    /// The cloud refused the node for good (its certificate revoked).
    refused: Option<Refusal>,
}

/// Why the cloud will never take this node's connection again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The certificate was revoked: the node was deleted (`verge delete node`).
    Revoked,
}

impl Refusal {
    /// The one line the operator reads.
    pub fn message(self, node: &str) -> String {
        match self {
            Refusal::Revoked => format!(
                "the cloud refused node {node:?}: its certificate was revoked (the node was \
                 deleted with `verge delete node`); not reconnecting. Apps and functions \
                 placed here keep running offline; to bring the node back, join it again \
                 with a new bootstrap token (`verge-edge join --data-dir` a new directory)"
            ),
        }
    }
}

/// Whether a failed connection is a final refusal of this node (pure): a CONNACK
/// `not authorized` — the embedded gateway's answer to a revoked certificate serial —
/// or a TLS `certificate_revoked` alert anywhere in the error's chain (an external
/// broker checking its CRL). Anything else is worth retrying.
pub fn refusal(e: &rumqttc::ConnectionError) -> Option<Refusal> {
    if let rumqttc::ConnectionError::ConnectionRefused(code) = e {
        return (*code == ConnectReturnCode::NotAuthorized).then_some(Refusal::Revoked);
    }
    (tls_alert(e) == Some(rustls::AlertDescription::CertificateRevoked)).then_some(Refusal::Revoked)
}

/// The TLS alert the peer sent, if one is in `e`'s chain (also inside `io::Error`s,
/// whose `source` skips the error they wrap).
fn tls_alert(e: &(dyn std::error::Error + 'static)) -> Option<rustls::AlertDescription> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(rustls::Error::AlertReceived(a)) = err.downcast_ref::<rustls::Error>() {
            return Some(*a);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            && let Some(a) = tls_alert(inner)
        {
            return Some(a);
        }
        cur = err.source();
    }
    None
}

/// A renewal asked for and not answered yet.
struct PendingRenewal {
    key_pem: String,
    asked: std::time::Instant,
}

/// How long to wait for the cloud's answer before asking again.
const RENEW_RETRY: Duration = Duration::from_secs(60);

/// What a publish request was for, matched with rumqttc's `Outgoing::Publish` events
/// (which come in request order) to learn packet ids.
enum Tag {
    Queued(u64),
    Other,
}

/// Runs the uplink until `shutdown` resolves, reconnecting as needed — or until the
/// cloud refuses this node for good ([`refusal`]): then it logs why once, records it in
/// the state (`uplinkStopped`) and returns, leaving the node running offline.
pub async fn run(
    identity: Identity,
    state: Arc<EdgeState>,
    cfg: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let url = identity.mqtt_url.clone().ok_or_else(|| {
        Error::Invalid("the cloud gave no MQTT URL at join; cannot start the uplink".into())
    })?;
    let (host, port) = parse_mqtt_url(&url)?;
    let mut identity = identity;
    tokio::pin!(shutdown);
    let mut attempt: u32 = 0;
    loop {
        let tls = Arc::new(identity.tls_client_config()?);
        let mut opts = MqttOptions::new(identity.name.clone(), host.clone(), port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_clean_session(true);
        opts.set_max_packet_size(
            verge_proto::topics::MAX_DESIRED_PAYLOAD + 4096,
            verge_proto::topics::MAX_RESULT_PAYLOAD + 4096,
        );
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
        let session = Session::new(&identity, &state, &cfg, opts);
        let end = tokio::select! {
            c = session.run() => c,
            _ = &mut shutdown => {
                state.set_connected(false);
                return Ok(());
            }
        };
        state.set_connected(false);
        if end.connected {
            attempt = 0;
        }
        if let Some(next) = end.renewed {
            tracing::info!(expires = %next.cert_expires_at, "node certificate renewed; reconnecting with it");
            identity = next;
            continue;
        }
        if let Some(why) = end.refused {
            let message = why.message(&identity.name);
            tracing::error!("{message}");
            state.set_uplink_stopped(message);
            return Ok(());
        }
        let wait = backoff(attempt, cfg.backoff_base, cfg.backoff_cap);
        attempt = attempt.saturating_add(1);
        tracing::info!(
            wait_ms = wait.as_millis() as u64,
            "uplink down; reconnecting"
        );
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut shutdown => return Ok(()),
        }
    }
}

struct Session<'a> {
    identity: &'a Identity,
    state: &'a Arc<EdgeState>,
    cfg: &'a AgentConfig,
    opts: MqttOptions,
}

impl<'a> Session<'a> {
    fn new(
        identity: &'a Identity,
        state: &'a Arc<EdgeState>,
        cfg: &'a AgentConfig,
        opts: MqttOptions,
    ) -> Self {
        Self {
            identity,
            state,
            cfg,
            opts,
        }
    }

    fn topic(&self, c: Channel) -> String {
        verge_proto::node_topic(&self.identity.name, c)
    }

    fn status_message(&self) -> Message {
        let mut s = sysinfo::collect(&self.identity.data_dir, &self.cfg.thresholds);
        s.agent_version = env!("CARGO_PKG_VERSION").to_string();
        s.labels = self.cfg.labels.clone();
        s.applied_revision = self.state.store().applied_revision().unwrap_or(0);
        s.queue = self.state.queue().stats().unwrap_or_default();
        s.apps = self.state.apps();
        if let Some(sb) = self.state.sandbox() {
            s.conditions
                .push(sysinfo::sandbox_condition(sb, s.sent_at_ms));
        }
        Message::NodeStatus(Box::new(s))
    }

    fn hello(&self) -> Message {
        Message::Hello(Hello {
            node: self.identity.name.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            boot_id: boot_id(),
            last_applied_revision: self.state.store().applied_revision().unwrap_or(0),
            sent_at_ms: now_ms(),
        })
    }

    /// A CSR for a fresh key, if the certificate is due for renewal and no request is
    /// outstanding: `(request, pending state to keep once it is published)`.
    fn renewal_request(
        &self,
        pending: &Option<PendingRenewal>,
    ) -> Option<(Message, PendingRenewal)> {
        let due = self
            .identity
            .renew_at()
            .is_some_and(|t| time::OffsetDateTime::now_utc() >= t);
        if !due
            || pending
                .as_ref()
                .is_some_and(|p| p.asked.elapsed() < RENEW_RETRY)
        {
            return None;
        }
        match self.identity.new_key_and_csr() {
            Ok((key_pem, csr_pem)) => Some((
                Message::CertRequest(verge_proto::CertRequest { csr_pem }),
                PendingRenewal {
                    key_pem,
                    asked: std::time::Instant::now(),
                },
            )),
            Err(e) => {
                tracing::error!(error = %e, "cannot create a key for certificate renewal");
                None
            }
        }
    }

    /// Installs a renewed certificate answering `pending`.
    async fn install(
        &self,
        pending: &mut Option<PendingRenewal>,
        c: verge_proto::CertIssued,
    ) -> Option<Identity> {
        let Some(p) = pending.take() else {
            tracing::warn!("a certificate arrived that this node did not ask for; ignored");
            return None;
        };
        let id = self.identity.clone();
        let r = tokio::task::spawn_blocking(move || {
            id.install_renewed(&p.key_pem, &c.cert_pem, c.not_after_ms)
        })
        .await;
        match r {
            Ok(Ok(next)) => Some(next),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "renewed certificate refused");
                None
            }
            Err(_) => None,
        }
    }

    /// One connection.
    async fn run(self) -> SessionEnd {
        let (client, mut events) = AsyncClient::new(self.opts.clone(), 128);
        // Small messages (task results, acks) go out at once, not after Nagle's delay.
        let mut net = events.network_options();
        net.set_tcp_nodelay(true);
        events.set_network_options(net);
        let mut connected = false;
        let mut tags: VecDeque<Tag> = VecDeque::new();
        let mut in_flight: HashMap<u16, u64> = HashMap::new();
        let mut sent_upto: u64 = 0;
        let mut hb_seq: u64 = 0;
        let mut heartbeat = tokio::time::interval(self.cfg.heartbeat_interval);
        let mut status = tokio::time::interval(self.cfg.status_interval);
        let mut flush = tokio::time::interval(Duration::from_millis(200));
        let mut renew_check = tokio::time::interval(Duration::from_secs(5));
        let mut pending: Option<PendingRenewal> = None;
        let end = |connected: bool| SessionEnd {
            connected,
            renewed: None,
            refused: None,
        };
        let publish =
            |tags: &mut VecDeque<Tag>, tag: Tag, channel: Channel, msg: &Message, qos: QoS| {
                let payload = verge_proto::encode(msg);
                let ok = client
                    .try_publish(self.topic(channel), qos, false, payload)
                    .is_ok();
                if ok {
                    tags.push_back(tag);
                }
                ok
            };
        loop {
            tokio::select! {
                ev = events.poll() => match ev {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if ack.code != ConnectReturnCode::Success {
                            let e = rumqttc::ConnectionError::ConnectionRefused(ack.code);
                            tracing::warn!(code = ?ack.code, "the cloud refused the connection");
                            return SessionEnd { refused: refusal(&e), ..end(connected) };
                        }
                        connected = true;
                        self.state.set_connected(true);
                        tracing::info!(node = %self.identity.name, "uplink connected");
                        for topic in verge_proto::edge_subscriptions(&self.identity.name) {
                            let _ = client.try_subscribe(topic, QoS::AtLeastOnce);
                        }
                        publish(&mut tags, Tag::Other, Channel::Hello, &self.hello(), QoS::AtLeastOnce);
                        let hb = Message::Heartbeat(Heartbeat { seq: hb_seq, sent_at_ms: now_ms(), ready: true });
                        hb_seq += 1;
                        publish(&mut tags, Tag::Other, Channel::Heartbeat, &hb, QoS::AtMostOnce);
                        self.enqueue_status();
                        in_flight.clear();
                        sent_upto = 0;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        match self.on_publish(&p.topic, &p.payload).await {
                            Some(Message::CertIssued(c)) => {
                                if let Some(next) = self.install(&mut pending, c).await {
                                    let _ = client.try_disconnect();
                                    return SessionEnd { connected, renewed: Some(next), refused: None };
                                }
                            }
                            Some(reply) => {
                                publish(&mut tags, Tag::Other, reply.channel(), &reply, QoS::AtLeastOnce);
                            }
                            None => {}
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        if let Some(seq) = in_flight.remove(&ack.pkid) {
                            let q = self.state.queue().clone();
                            let _ = tokio::task::spawn_blocking(move || q.ack(seq)).await;
                        }
                    }
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        if let Some(Tag::Queued(seq)) = tags.pop_front() {
                            in_flight.insert(pkid, seq);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "uplink connection ended");
                        return SessionEnd { refused: refusal(&e), ..end(connected) };
                    }
                },
                _ = renew_check.tick(), if connected => {
                    if let Some((msg, p)) = self.renewal_request(&pending)
                        && publish(&mut tags, Tag::Other, Channel::Renew, &msg, QoS::AtLeastOnce)
                    {
                        tracing::info!("asking the cloud to renew the node certificate");
                        pending = Some(p);
                    }
                }
                _ = heartbeat.tick(), if connected => {
                    let hb = Message::Heartbeat(Heartbeat { seq: hb_seq, sent_at_ms: now_ms(), ready: true });
                    hb_seq += 1;
                    publish(&mut tags, Tag::Other, Channel::Heartbeat, &hb, QoS::AtMostOnce);
                }
                _ = status.tick(), if connected => self.enqueue_status(),
                _ = self.state.apps_changed(), if connected => {
                    // Coalesce a burst of instance changes into one report.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    self.enqueue_status();
                }
                // On the tick, or at once when a task result was queued.
                _ = async {
                    tokio::select! {
                        _ = flush.tick() => {}
                        _ = self.state.queued() => {}
                    }
                }, if connected && in_flight.len() < self.cfg.max_in_flight => {
                    let room = self.cfg.max_in_flight - in_flight.len();
                    let q = self.state.queue().clone();
                    let items = tokio::task::spawn_blocking(move || q.peek(room + 64, now_ms()))
                        .await
                        .ok()
                        .and_then(|r| r.ok())
                        .unwrap_or_default();
                    let from = sent_upto;
                    for item in items.into_iter().filter(|i| i.seq > from).take(room) {
                        let topic = self.topic(item.channel);
                        if client.try_publish(topic, QoS::AtLeastOnce, false, item.payload).is_err() {
                            break;
                        }
                        tags.push_back(Tag::Queued(item.seq));
                        sent_upto = item.seq;
                    }
                }
            }
        }
    }

    fn enqueue_status(&self) {
        let msg = self.status_message();
        let payload = verge_proto::encode(&msg);
        if let Err(e) = self.state.queue().push(Channel::Status, &payload, now_ms()) {
            tracing::warn!(error = %e, "could not queue a status report");
        }
    }

    /// Handles a message from the cloud; returns a reply to publish.
    async fn on_publish(&self, topic: &str, payload: &[u8]) -> Option<Message> {
        let msg = match verge_proto::decode_any(topic, payload) {
            Ok((_, m)) => m,
            Err(e) => {
                tracing::warn!(%topic, error = %e, "dropped a message from the cloud");
                return None;
            }
        };
        match msg {
            Message::Desired(d) => {
                let store = self.state.store().clone();
                let outcome = tokio::task::spawn_blocking(move || store.apply_desired(&d)).await;
                match outcome {
                    Ok(Ok(ApplyOutcome::Applied { revision })) => {
                        self.state.set_last_sync(now_ms());
                        self.state.notify_desired();
                        tracing::info!(revision, "desired state applied");
                        Some(Message::Ack(Ack { revision }))
                    }
                    Ok(Ok(ApplyOutcome::NeedsResync { applied })) => {
                        tracing::info!(
                            applied,
                            "desired delta does not apply; asking for a resync"
                        );
                        Some(self.hello())
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "could not persist desired state");
                        None
                    }
                    Err(_) => None,
                }
            }
            // Handled by the session loop (it ends the session).
            Message::CertIssued(c) => Some(Message::CertIssued(c)),
            Message::Task(t) => {
                let id = t.id.clone();
                if !self.state.submit_task(t) {
                    tracing::warn!(task = %id, "task not accepted (functions not running or inbox full); the cloud re-sends it");
                }
                None
            }
            other => {
                tracing::warn!(
                    kind = other.type_name(),
                    "this agent version has no handler for this message; dropped"
                );
                None
            }
        }
    }
}

/// A per-boot id (Linux), so the cloud can tell restarts of the machine apart.
fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().chars().take(64).collect())
        .unwrap_or_else(|_| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for attempt in 0..40 {
            let ceiling = base.saturating_mul(1 << attempt.min(20)).min(cap);
            for _ in 0..50 {
                assert!(backoff(attempt, base, cap) <= ceiling);
            }
        }
        // Jitter: not all the same.
        let samples: std::collections::HashSet<_> =
            (0..50).map(|_| backoff(6, base, cap)).collect();
        assert!(samples.len() > 10);
    }

    #[test]
    fn a_revoked_certificate_is_a_final_refusal_other_failures_are_retried() {
        use rumqttc::ConnectionError as C;
        let tls_alert = |a: rustls::AlertDescription| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                rustls::Error::AlertReceived(a),
            )
        };
        // The embedded gateway: CONNACK 5 for a revoked serial.
        assert_eq!(
            refusal(&C::ConnectionRefused(ConnectReturnCode::NotAuthorized)),
            Some(Refusal::Revoked)
        );
        // An external broker with a CRL: the TLS alert, while reading or in the handshake.
        assert_eq!(
            refusal(&C::Io(tls_alert(
                rustls::AlertDescription::CertificateRevoked
            ))),
            Some(Refusal::Revoked)
        );
        assert_eq!(
            refusal(&C::Tls(rumqttc::TlsError::Io(tls_alert(
                rustls::AlertDescription::CertificateRevoked
            )))),
            Some(Refusal::Revoked)
        );
        assert_eq!(
            refusal(&C::Tls(rumqttc::TlsError::TLS(
                rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRevoked)
            ))),
            Some(Refusal::Revoked)
        );
        // Worth retrying: the cloud down or restarting, other alerts and codes.
        for e in [
            C::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)),
            C::Io(tls_alert(rustls::AlertDescription::HandshakeFailure)),
            C::ConnectionRefused(ConnectReturnCode::ServiceUnavailable),
            C::NetworkTimeout,
        ] {
            assert_eq!(refusal(&e), None, "{e}");
        }
        let m = Refusal::Revoked.message("edge-1");
        assert!(m.contains("\"edge-1\"") && m.contains("revoked"), "{m}");
        assert!(m.contains("not reconnecting"), "{m}");
    }

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            parse_mqtt_url("mqtts://127.0.0.1:8883").unwrap(),
            ("127.0.0.1".into(), 8883)
        );
        assert_eq!(
            parse_mqtt_url("mqtts://[::1]:1883").unwrap(),
            ("::1".into(), 1883)
        );
        assert!(parse_mqtt_url("mqtt://h:1").is_err());
        assert!(parse_mqtt_url("mqtts://h").is_err());
    }
}
