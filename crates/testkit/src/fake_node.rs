//! A node that speaks the real protocol without being `verge-edge`: it joins with a
//! bootstrap token over HTTPS, connects to the cloud's MQTT gateway with the
//! certificate it got, says hello, sends heartbeats, persists nothing, acknowledges
//! desired state (keeping what it holds in memory) and hands the test every `Task` it
//! is sent. The test then publishes whatever it likes with the node's certificate —
//! what a compromised node can do. Dev-dependency only: nothing here is a mock of the
//! cloud; the cloud under test is a real `verge cloud` process.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::sync::mpsc;
use verge_proto::{
    Ack, Channel, Heartbeat, Hello, Message, NodeStatus, QueueStats, Task, TaskResult,
};

use crate::Cloud;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What the node holds from desired state: `Kind/name` → the object's spec.
type Held = Arc<Mutex<BTreeMap<String, serde_json::Value>>>;

/// A joined node connected to the gateway (see the module docs). Dropping it stops its
/// connection.
pub struct FakeNode {
    pub name: String,
    client: AsyncClient,
    tasks: mpsc::UnboundedReceiver<Task>,
    held: Held,
    seq: AtomicU64,
    event_loop: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.event_loop.abort();
    }
}

impl FakeNode {
    /// Joins `cloud` as `name` with `labels` (`key=value`) and connects. Returns once
    /// the gateway accepted the connection; [`Cloud::wait_ready`] tells when the
    /// heartbeats made it Ready.
    pub async fn join(cloud: &Cloud, token: &str, name: &str, labels: &[&str]) -> Result<Self> {
        let (key_pem, csr_pem) = crate::csr(name)?;
        let labels: BTreeMap<&str, &str> = labels
            .iter()
            .map(|l| l.split_once('=').context("labels are key=value"))
            .collect::<Result<_>>()?;
        let resp = cloud
            .client()?
            .post(format!("{}/api/v1/join", cloud.url))
            .json(&serde_json::json!({"token": token, "name": name, "csr": csr_pem, "labels": labels}))
            .send()
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            bail!("join {name}: {status} {body}");
        }
        let cert_pem = body["certificate"].as_str().context("certificate")?;
        Self::connect(cloud, name, cert_pem, &key_pem).await
    }

    async fn connect(cloud: &Cloud, name: &str, cert_pem: &str, key_pem: &str) -> Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pemfile::certs(&mut cloud.ca_pem.as_bytes()) {
            roots.add(c?)?;
        }
        let certs: Vec<CertificateDer<'static>> =
            rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<_, _>>()?;
        let key: PrivateKeyDer<'static> =
            rustls_pemfile::private_key(&mut key_pem.as_bytes())?.context("node key")?;
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
        let port: u16 = cloud
            .mqtt_url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .context("port of the gateway")?;
        let mut opts = MqttOptions::new(name, "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(8 * 1024 * 1024, 2 * 1024 * 1024);
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(tls),
        )));
        let (client, mut events) = AsyncClient::new(opts, 64);
        let (task_tx, tasks) = mpsc::unbounded_channel();
        let (up_tx, mut up) = mpsc::channel::<Result<()>>(1);
        let held: Held = Arc::default();
        let loop_client = client.clone();
        let loop_held = held.clone();
        let node = name.to_string();
        let event_loop = tokio::spawn(async move {
            let topic = |c: Channel| verge_proto::node_topic(&node, c);
            let mut applied = 0i64;
            let mut beat = tokio::time::interval(Duration::from_secs(1));
            let mut hb_seq = 0u64;
            let mut connected = false;
            loop {
                tokio::select! {
                    ev = events.poll() => match ev {
                        Ok(Event::Incoming(Packet::ConnAck(a))) => {
                            if a.code != ConnectReturnCode::Success {
                                let _ = up_tx.try_send(Err(anyhow::anyhow!("connection refused: {:?}", a.code)));
                                return;
                            }
                            connected = true;
                            for c in [Channel::Desired, Channel::Task] {
                                let _ = loop_client.try_subscribe(topic(c), QoS::AtLeastOnce);
                            }
                            let hello = Message::Hello(Hello {
                                node: node.clone(),
                                agent_version: "fake".into(),
                                boot_id: "fake".into(),
                                last_applied_revision: applied,
                                sent_at_ms: now_ms(),
                            });
                            let _ = loop_client.try_publish(topic(Channel::Hello), QoS::AtLeastOnce, false, verge_proto::encode(&hello));
                            let report = Message::NodeStatus(Box::new(node_status(Vec::new())));
                            let _ = loop_client.try_publish(topic(Channel::Status), QoS::AtLeastOnce, false, verge_proto::encode(&report));
                            let _ = up_tx.try_send(Ok(()));
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            match verge_proto::decode_any(&p.topic, &p.payload) {
                                Ok((_, Message::Task(t))) => {
                                    let _ = task_tx.send(t);
                                }
                                Ok((_, Message::Desired(d))) => {
                                    if !d.applies_to(applied) {
                                        let hello = Message::Hello(Hello {
                                            node: node.clone(),
                                            agent_version: "fake".into(),
                                            boot_id: "fake".into(),
                                            last_applied_revision: applied,
                                            sent_at_ms: now_ms(),
                                        });
                                        let _ = loop_client.try_publish(topic(Channel::Hello), QoS::AtLeastOnce, false, verge_proto::encode(&hello));
                                        continue;
                                    }
                                    if let Ok(mut h) = loop_held.lock() {
                                        if d.snapshot {
                                            h.clear();
                                        }
                                        for r in &d.deletes {
                                            h.remove(&format!("{}/{}", r.kind, r.name));
                                        }
                                        for o in &d.upserts {
                                            h.insert(format!("{}/{}", o.kind, o.metadata.name), o.spec.clone());
                                        }
                                    }
                                    applied = d.to_revision;
                                    let ack = Message::Ack(Ack { revision: applied });
                                    let _ = loop_client.try_publish(topic(Channel::Ack), QoS::AtLeastOnce, false, verge_proto::encode(&ack));
                                }
                                _ => {}
                            }
                        }
                        Ok(_) => {}
                        Err(e) => {
                            if !connected {
                                let _ = up_tx.try_send(Err(anyhow::anyhow!("connecting: {e}")));
                                return;
                            }
                            // Reconnects on the next poll, as a real agent would.
                            connected = false;
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    },
                    _ = beat.tick(), if connected => {
                        hb_seq += 1;
                        let m = Message::Heartbeat(Heartbeat { seq: hb_seq, sent_at_ms: now_ms(), ready: true });
                        let _ = loop_client.try_publish(topic(Channel::Heartbeat), QoS::AtMostOnce, false, verge_proto::encode(&m));
                    }
                }
            }
        });
        match tokio::time::timeout(Duration::from_secs(30), up.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => return Err(e),
            _ => bail!("{name}: no connection to the gateway in 30 s"),
        }
        Ok(Self {
            name: name.to_string(),
            client,
            tasks,
            held,
            seq: AtomicU64::new(1),
            event_loop,
        })
    }

    /// Publishes `msg` on its channel of this node's topics (QoS 1).
    pub async fn publish(&self, msg: &Message) -> Result<()> {
        self.publish_raw(msg.channel(), verge_proto::encode(msg))
            .await
    }

    /// Publishes raw bytes on `channel` of this node's topics (QoS 1).
    pub async fn publish_raw(&self, channel: Channel, payload: Vec<u8>) -> Result<()> {
        self.client
            .publish(
                verge_proto::node_topic(&self.name, channel),
                QoS::AtLeastOnce,
                false,
                payload,
            )
            .await?;
        Ok(())
    }

    /// Publishes a task result, giving it this node's next sequence number.
    pub async fn result(&self, mut r: TaskResult) -> Result<u64> {
        r.seq = self.seq.fetch_add(1, Ordering::Relaxed);
        self.publish(&Message::TaskResult(r.clone())).await?;
        Ok(r.seq)
    }

    /// The next task the cloud sends this node (waits up to `timeout`).
    pub async fn next_task(&mut self, timeout: Duration) -> Result<Task> {
        tokio::time::timeout(timeout, self.tasks.recv())
            .await
            .with_context(|| format!("{}: no task within {timeout:?}", self.name))?
            .context("connection gone")
    }

    /// Tasks received so far and not taken with [`FakeNode::next_task`].
    pub fn pending_tasks(&mut self) -> Vec<Task> {
        let mut out = Vec::new();
        while let Ok(t) = self.tasks.try_recv() {
            out.push(t);
        }
        out
    }

    /// Whether the node holds `Kind/name` from desired state (`App/web`).
    pub fn holds(&self, kind_name: &str) -> bool {
        self.held.lock().is_ok_and(|h| h.contains_key(kind_name))
    }
}

/// A status report of a small amd64 machine with room to spare, running `apps`.
pub fn node_status(apps: Vec<verge_proto::InstanceStatus>) -> NodeStatus {
    NodeStatus {
        arch: "amd64".into(),
        os: "linux".into(),
        kernel: "fake".into(),
        cpus: 4,
        memory_bytes: 8 << 30,
        disk_bytes: 100 << 30,
        disk_free_bytes: 50 << 30,
        memory_free_bytes: 4 << 30,
        agent_version: "fake".into(),
        labels: BTreeMap::new(),
        capacity: BTreeMap::from([
            ("cpu".to_string(), "4".to_string()),
            ("memory".to_string(), "8Gi".to_string()),
        ]),
        conditions: Vec::new(),
        queue: QueueStats::default(),
        applied_revision: 0,
        sent_at_ms: now_ms(),
        apps,
    }
}
