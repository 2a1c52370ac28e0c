//! One node's MQTT session: TLS handshake → identity from the client certificate →
//! CONNECT → packets until disconnect, keep-alive expiry, takeover, kick or shutdown.
//! Every phase is bounded: the handshake and CONNECT by their timeouts (and, until
//! CONNECT, by the admission closing the connection to make room), reads by the
//! keep-alive, writes by the same idle limit (a node that stops reading is dropped).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use verge_proto::{Channel, Message};

use super::{Outbound, Shared};
use crate::admission::Slot;

/// Largest MQTT packet read whole (the largest edge→cloud payload, `result`, is 1 MiB).
/// Larger packets are skipped as they stream in and counted as dropped.
pub const MAX_PACKET: usize = 1024 * 1024 + 4096;
/// Keep-alive used when a client asks for none.
const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(300);

/// What the bulk worker tells its session. Sent without waiting (unbounded): the
/// session may itself be waiting for room in the worker's queue, so a worker that
/// waited for the session would deadlock the connection under a burst. The number in
/// flight is bounded by the messages the session handed to the worker since it last
/// looked (the worker's queue plus what one read held).
enum FromWorker {
    Ack(u16),
    Close,
}

/// Node name and certificate serial (hex) from the client certificate (also used by
/// the HTTPS listener, `http::serve`).
pub(crate) fn identity(
    certs: &[rustls::pki_types::CertificateDer<'_>],
) -> Option<(String, String)> {
    let der = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let org_ok = cert
        .subject()
        .iter_organization()
        .any(|o| o.as_str().ok() == Some(crate::pki::NODE_ORG));
    if !org_ok || !verge_api::is_dns1123_label(&cn) {
        return None;
    }
    Some((cn, hex::encode(cert.raw_serial())))
}

/// Bytes of a packet's fixed header, from its first bytes (None if incomplete).
fn header_len(buf: &[u8]) -> Option<usize> {
    for (i, b) in buf.iter().enumerate().skip(1).take(4) {
        if b & 0x80 == 0 {
            return Some(i + 1);
        }
    }
    None
}

/// How a connection starts: its TLS acceptor and handshake limit, and its place in
/// the gateway's admission.
pub(crate) struct Start {
    pub(crate) acceptor: tokio_rustls::TlsAcceptor,
    pub(crate) tls_timeout: Duration,
    pub(crate) slot: Slot,
}

pub(crate) async fn run(
    shared: Arc<Shared>,
    start: Start,
    tcp: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) {
    let Start {
        acceptor,
        tls_timeout,
        slot,
    } = start;
    // Until CONNECT is accepted the admission may close this connection to make room.
    let opened = tokio::select! {
        r = open(&shared, acceptor, tls_timeout, tcp, peer) => r,
        why = slot.closed() => {
            // Counted by the admission (`verge_connections_closed_total`).
            tracing::debug!(%peer, reason = why.as_str(), "mqtt connection closed before CONNECT");
            return;
        }
    };
    let Some(Opened {
        tls,
        node,
        serial,
        keep_alive,
        mut buf,
    }) = opened
    else {
        return;
    };
    // A session: never evicted; it ends by itself, by takeover, kick or shutdown.
    slot.mark_busy();
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut out = BytesMut::with_capacity(256);
    if shared.is_revoked(&serial) {
        shared.metrics.refuse("revoked");
        tracing::warn!(%node, %serial, "refused a revoked node certificate");
        let _ = Packet::ConnAck(ConnAck::new(ConnectReturnCode::NotAuthorized, false))
            .write(&mut out, 16);
        let _ = tokio::time::timeout(tls_timeout, async {
            let _ = wr.write_all(&out).await;
            let _ = wr.shutdown().await;
        })
        .await;
        return;
    }
    let _ = Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false)).write(&mut out, 16);
    if !matches!(
        tokio::time::timeout(tls_timeout, wr.write_all(&out)).await,
        Ok(Ok(()))
    ) {
        return;
    }
    out.clear();

    let (tx, mut rx) = mpsc::channel::<Outbound>(shared.config.outbound_queue);
    let conn_id = shared.register(&node, tx.clone());
    shared.metrics.connections.inc();
    shared.inbound.connected(&node);
    tracing::debug!(%node, %peer, "node connected");

    // Bulk messages: a worker per connection, rate-limited, acks when handled.
    let (bulk_tx, bulk_rx) =
        mpsc::channel::<(Box<Message>, Option<u16>)>(shared.config.ingest_queue);
    let (worker_tx, mut worker_rx) = mpsc::unbounded_channel::<FromWorker>();
    let worker = tokio::spawn(bulk_worker(
        shared.clone(),
        node.clone(),
        bulk_rx,
        worker_tx,
    ));

    let mut skip: usize = 0;
    let mut pkid: u16 = 0;
    let mut last_seen = Instant::now();
    let idle_limit = keep_alive + keep_alive / 2;
    // Checking the keep-alive at half its period keeps idle nodes cheap (no per-second
    // wake-up per connection).
    let mut tick = tokio::time::interval((keep_alive / 2).max(Duration::from_secs(1)));
    'session: loop {
        tokio::select! {
            r = rd.read_buf(&mut buf) => {
                match r {
                    Ok(0) | Err(_) => break 'session,
                    Ok(_) => last_seen = Instant::now(),
                }
                loop {
                    if skip > 0 {
                        let n = skip.min(buf.len());
                        let _ = buf.split_to(n);
                        skip -= n;
                        if skip > 0 { break; }
                    }
                    match Packet::read(&mut buf, MAX_PACKET) {
                        Ok(p) => {
                            if !handle(&shared, &node, p, &mut out, &bulk_tx).await {
                                break 'session;
                            }
                        }
                        Err(MqttError::InsufficientBytes(_)) => break,
                        Err(MqttError::PayloadSizeLimitExceeded(len)) => {
                            // Skip the whole oversized packet as it arrives.
                            shared.metrics.drop("oversize");
                            skip = header_len(&buf).unwrap_or(2) + len;
                        }
                        Err(e) => {
                            shared.metrics.drop("protocol");
                            tracing::debug!(%node, error = %e, "mqtt protocol error; closing");
                            break 'session;
                        }
                    }
                }
                // Don't keep a large buffer around for an idle node.
                if buf.is_empty() && buf.capacity() > 16 * 1024 {
                    buf = BytesMut::with_capacity(1024);
                }
            }
            msg = rx.recv() => {
                match msg {
                    Some(Outbound::Publish(p)) => {
                        let (topic, payload) = *p;
                        pkid = pkid.checked_add(1).unwrap_or(1);
                        let mut p = Publish::new(topic, QoS::AtLeastOnce, payload.to_vec());
                        p.pkid = pkid;
                        let _ = Packet::Publish(p).write(&mut out, usize::MAX);
                    }
                    Some(Outbound::Close) | None => break 'session,
                }
            }
            said = worker_rx.recv() => {
                match said {
                    Some(FromWorker::Ack(id)) => {
                        let _ = Packet::PubAck(PubAck::new(id)).write(&mut out, 16);
                    }
                    Some(FromWorker::Close) | None => break 'session,
                }
            }
            _ = tick.tick() => {
                if last_seen.elapsed() > idle_limit {
                    tracing::debug!(%node, "keep-alive expired");
                    break 'session;
                }
            }
            _ = shutdown.changed() => break 'session,
        }
        if !out.is_empty() {
            // A node that stops reading must not hold its session (and block takeover)
            // forever: a write that cannot finish within the idle limit ends it.
            match tokio::time::timeout(idle_limit, wr.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    shared.metrics.drop("write-stall");
                    tracing::debug!(%node, "writes to the node stalled; closing");
                    break;
                }
            }
            out.clear();
            if out.capacity() > 64 * 1024 {
                out = BytesMut::with_capacity(256);
            }
        }
    }
    drop(bulk_tx);
    let _ = worker.await;
    let _ = tokio::time::timeout(tls_timeout, wr.shutdown()).await;
    shared.metrics.connections.dec();
    if shared.unregister(&node, conn_id) {
        shared.inbound.disconnected(&node);
    }
    tracing::debug!(%node, "node disconnected");
}

/// A connection that completed TLS with a node certificate and sent CONNECT.
struct Opened {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    node: String,
    serial: String,
    keep_alive: Duration,
    /// What arrived after the CONNECT packet.
    buf: BytesMut,
}

/// TLS handshake (within `tls_timeout`), identity from the client certificate, then
/// the CONNECT packet (within the gateway's `connect_timeout`). `None`: refused and
/// counted.
async fn open(
    shared: &Shared,
    acceptor: tokio_rustls::TlsAcceptor,
    tls_timeout: Duration,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<Opened> {
    let mut tls = match tokio::time::timeout(tls_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            shared.metrics.refuse("tls");
            tracing::debug!(%peer, error = %e, "mqtt tls handshake failed");
            return None;
        }
        Err(_) => {
            shared.metrics.refuse("tls-timeout");
            return None;
        }
    };
    let Some((node, serial)) = tls.get_ref().1.peer_certificates().and_then(identity) else {
        shared.metrics.refuse("identity");
        tracing::warn!(%peer, "mqtt client certificate is not a node certificate");
        return None;
    };
    // Small: most node traffic is heartbeats of ~100 bytes; it grows for big messages
    // and is shrunk back after them.
    let mut buf = BytesMut::with_capacity(256);
    let connect = tokio::time::timeout(shared.config.connect_timeout, async {
        loop {
            match Packet::read(&mut buf, 64 * 1024) {
                Ok(p) => return Some(p),
                Err(MqttError::InsufficientBytes(_)) => {}
                Err(_) => return None,
            }
            match tls.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await;
    let keep_alive = match connect {
        Ok(Some(Packet::Connect(c))) => {
            if c.keep_alive == 0 {
                DEFAULT_KEEP_ALIVE
            } else {
                Duration::from_secs(u64::from(c.keep_alive))
            }
        }
        _ => {
            shared.metrics.refuse("connect");
            return None;
        }
    };
    Some(Opened {
        tls,
        node,
        serial,
        keep_alive,
        buf,
    })
}

/// Handles one packet; `false` closes the session.
async fn handle(
    shared: &Arc<Shared>,
    node: &str,
    packet: Packet,
    out: &mut BytesMut,
    bulk: &mpsc::Sender<(Box<Message>, Option<u16>)>,
) -> bool {
    match packet {
        Packet::PingReq => {
            let _ = Packet::PingResp.write(out, 16);
        }
        Packet::Subscribe(s) => {
            let codes = s
                .filters
                .iter()
                .map(|f| {
                    if verge_proto::node_may_subscribe(node, &f.path) {
                        SubscribeReasonCode::Success(QoS::AtLeastOnce.min_qos(f.qos))
                    } else {
                        shared.metrics.refuse("acl-subscribe");
                        tracing::warn!(%node, filter = %f.path, "subscription denied");
                        SubscribeReasonCode::Failure
                    }
                })
                .collect();
            let _ = Packet::SubAck(SubAck::new(s.pkid, codes)).write(out, 1024);
        }
        Packet::Unsubscribe(u) => {
            let _ = Packet::UnsubAck(UnsubAck::new(u.pkid)).write(out, 16);
        }
        Packet::Publish(p) => {
            let ack = (p.qos != QoS::AtMostOnce).then_some(p.pkid);
            if !verge_proto::node_may_publish(node, &p.topic) {
                shared.metrics.drop("acl-publish");
                tracing::warn!(%node, topic = %p.topic, "publish denied");
                if let Some(id) = ack {
                    let _ = Packet::PubAck(PubAck::new(id)).write(out, 16);
                }
                return true;
            }
            let channel = match verge_proto::parse_topic(&p.topic) {
                Ok((_, c)) => c,
                Err(_) => {
                    shared.metrics.drop("topic");
                    return true;
                }
            };
            let msg = match verge_proto::decode(channel, &p.payload) {
                Ok(m) => m,
                Err(e) => {
                    shared.metrics.drop(decode_reason(&e));
                    tracing::debug!(%node, %channel, error = %e, "dropped a message");
                    // Acknowledge: redelivering a malformed message cannot help.
                    if let Some(id) = ack {
                        let _ = Packet::PubAck(PubAck::new(id)).write(out, 16);
                    }
                    return true;
                }
            };
            shared.metrics.message(channel);
            if let Message::Heartbeat(hb) = &msg {
                shared.inbound.heartbeat(node, hb);
                if let Some(id) = ack {
                    let _ = Packet::PubAck(PubAck::new(id)).write(out, 16);
                }
                return true;
            }
            if channel == Channel::Heartbeat {
                return true;
            }
            // Blocks (backpressure on this node only) when its worker is behind.
            // Boxed: tokio allocates channel slots in blocks of 32, per connection.
            if bulk.send((Box::new(msg), ack)).await.is_err() {
                return false;
            }
        }
        Packet::PubAck(_) => {}
        Packet::Disconnect => return false,
        // QoS 2, a second CONNECT, or server-only packets: protocol violations.
        _ => {
            shared.metrics.drop("protocol");
            return false;
        }
    }
    true
}

pub(super) fn decode_reason(e: &verge_proto::ProtoError) -> &'static str {
    use verge_proto::ProtoError as P;
    match e {
        P::TooLarge { .. } => "oversize",
        P::UnsupportedVersion { .. } => "version",
        P::WrongChannel { .. } => "wrong-channel",
        P::Malformed(_) => "malformed",
        P::Invalid(_) => "invalid",
        _ => "other",
    }
}

async fn bulk_worker(
    shared: Arc<Shared>,
    node: String,
    mut rx: mpsc::Receiver<(Box<Message>, Option<u16>)>,
    tx: mpsc::UnboundedSender<FromWorker>,
) {
    let mut pacer = super::Pacer::new(shared.config.ingest_rate);
    while let Some((msg, ack)) = rx.recv().await {
        pacer.pace(&shared.metrics).await;
        if shared.inbound.message(&node, *msg).await == super::Handled::Retry {
            // No PUBACK: acknowledging a later message would release this one from the
            // node's queue too (acks are cumulative there). Close; the node re-sends.
            shared.metrics.drop("retry");
            let _ = tx.send(FromWorker::Close);
            return;
        }
        if let Some(id) = ack
            && tx.send(FromWorker::Ack(id)).is_err()
        {
            return;
        }
    }
}

trait MinQos {
    fn min_qos(self, other: QoS) -> QoS;
}

impl MinQos for QoS {
    fn min_qos(self, other: QoS) -> QoS {
        if (other as u8) < (self as u8) {
            other
        } else {
            self
        }
    }
}
