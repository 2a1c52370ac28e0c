//! Connection limits against a real `verge cloud` (decision 012): thousands of
//! half-open TLS and MQTT connections from one and from many loopback source addresses
//! (Linux routes all of 127/8 to `lo`, so 127.0.0.x are distinct sources), a per-address
//! cap, full listeners making room, every kind of stalled connection closed by the
//! server on its timer, a client that stops reading, the watch cap per token, and a join
//! flood with bad tokens.
//!
//! The client sockets live in this test process, the server's in the cloud child: each
//! flood stays far below the 20,000 open files a process may hold here, and the floods
//! run one at a time ([`HEAVY`]) so parallel tests never add up. Nothing asserts speed:
//! every wait is a generous deadline on behaviour.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use bytes::BytesMut;
use reqwest::StatusCode;
use rumqttc::tokio_rustls::TlsConnector;
use rumqttc::tokio_rustls::rustls;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use verge_testkit::{Cloud, csr, eventually};

const BIN: &str = env!("CARGO_BIN_EXE_verge");
const FLOOD: usize = 2000;

/// One flood at a time in this test process.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lo(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

fn addr_of(url: &str) -> Result<SocketAddr> {
    let hostport = url.rsplit("//").next().context("url")?;
    Ok(hostport.parse()?)
}

async fn dial(src: IpAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    sock.connect(dst).await
}

fn roots(ca_pem: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(c?)?;
    }
    Ok(roots)
}

/// A TLS client trusting only the cluster CA, with a node's key pair if given.
fn tls_client(
    ca_pem: &str,
    identity: Option<&(String, String)>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots(ca_pem)?);
    let mut cfg = match identity {
        Some((cert_pem, key_pem)) => {
            let certs =
                rustls_pemfile::certs(&mut cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
            let key = rustls_pemfile::private_key(&mut key_pem.as_bytes())?.context("key")?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// An HTTPS client that dials from `src`, a fresh connection per request.
fn https_from(cloud: &Cloud, src: IpAddr) -> Result<reqwest::Client> {
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots(&cloud.ca_pem)?)
    .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .use_preconfigured_tls(cfg)
        .local_address(src)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()?)
}

/// `/healthz` over a new connection from `src`, three times in a row.
async fn healthz_answers(cloud: &Cloud, src: IpAddr) -> Result<()> {
    let http = https_from(cloud, src)?;
    for i in 0..3 {
        let r = http
            .get(format!("{}/healthz", cloud.url))
            .send()
            .await
            .with_context(|| format!("/healthz from {src}, probe {i}"))?;
        ensure!(r.status() == StatusCode::OK, "/healthz: {}", r.status());
        ensure!(r.text().await? == "ok\n");
    }
    Ok(())
}

/// How a connection stalls.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// TCP connected, nothing sent.
    Silent,
    /// The first bytes of a TLS ClientHello.
    HalfClientHello,
    /// TLS done, then half an HTTP/1.1 request line.
    HalfRequestLine,
    /// TLS done (ALPN h2), then half the HTTP/2 preface.
    HalfH2Preface,
    /// TLS done with a node certificate, then half an MQTT CONNECT.
    HalfConnect,
}

type Held = Box<dyn AsyncRead + Unpin + Send>;

async fn stall(
    kind: Stall,
    src: IpAddr,
    dst: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Held> {
    let mut tcp = dial(src, dst).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let half: &[u8] = match kind {
        Stall::Silent => return Ok(Box::new(tcp)),
        Stall::HalfClientHello => {
            tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
                .await?;
            return Ok(Box::new(tcp));
        }
        Stall::HalfRequestLine => b"GET /heal",
        Stall::HalfH2Preface => b"PRI * HTTP/2.0\r\n",
        // CONNECT, remaining length 18, "MQTT" — and no more.
        Stall::HalfConnect => &[0x10, 0x12, 0x00, 0x04, b'M', b'Q'],
    };
    let mut s = TlsConnector::from(tls).connect(name, tcp).await?;
    s.write_all(half).await?;
    s.flush().await?;
    Ok(Box::new(s))
}

/// Opens `n` stalled connections, kinds taken in turn from `kinds`, sources in turn
/// from `sources`, 64 at a time; the ones the server refused or closed while they were
/// being set up are left out.
async fn flood(
    n: usize,
    kinds: &[Stall],
    sources: &[IpAddr],
    dst: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> Vec<Held> {
    let gate = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let (kind, src, tls, gate) = (
            kinds[i % kinds.len()],
            sources[i % sources.len()],
            tls.clone(),
            gate.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            tokio::time::timeout(Duration::from_secs(20), stall(kind, src, dst, tls))
                .await
                .ok()?
                .ok()
        }));
    }
    let mut held = Vec::with_capacity(n);
    for t in tasks {
        if let Ok(Some(h)) = t.await {
            held.push(h);
        }
    }
    held
}

/// Waits until the server has closed every one of `held` (read sees EOF or an error).
async fn all_closed_by_server(held: Vec<Held>, within: Duration) -> Result<()> {
    let n = held.len();
    let tasks: Vec<_> = held
        .into_iter()
        .map(|mut h| {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    match h.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
        })
        .collect();
    let joined = futures::future::join_all(tasks);
    match tokio::time::timeout(within, joined).await {
        Ok(_) => Ok(()),
        Err(_) => bail!("not all {n} stalled connections were closed by the server in {within:?}"),
    }
}

fn many(first: u8, count: u8) -> Vec<IpAddr> {
    (first..first + count).map(lo).collect()
}

const HTTP_STALLS: [Stall; 4] = [
    Stall::Silent,
    Stall::HalfClientHello,
    Stall::HalfRequestLine,
    Stall::HalfH2Preface,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_open_tls_connections_from_many_addresses_leave_healthz_answering()
-> Result<()> {
    let _heavy = HEAVY.lock().await;
    // Default limits: the flood fits under the global cap, 63 per address.
    let cloud = Cloud::start(Path::new(BIN), &[]).await?;
    let tls = tls_client(&cloud.ca_pem, None, &[b"h2", b"http/1.1"])?;
    let held = flood(
        FLOOD,
        &HTTP_STALLS,
        &many(10, 32),
        addr_of(&cloud.url)?,
        tls,
    )
    .await;
    ensure!(
        held.len() > FLOOD / 2,
        "only {} of {FLOOD} connections set up",
        held.len()
    );
    healthz_answers(&cloud, lo(1)).await?;
    // The readiness probe and a token call as well.
    let r = https_from(&cloud, lo(1))?
        .get(format!("{}/api/v1/apps", cloud.url))
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_half_open_tls_connections_from_one_address_leave_healthz_answering()
-> Result<()> {
    let _heavy = HEAVY.lock().await;
    // Default caps; timers far away, so only the cap decides, however long this takes.
    let cloud = Cloud::start(
        Path::new(BIN),
        &[
            "--tls-handshake-timeout",
            "600s",
            "--header-read-timeout",
            "600s",
        ],
    )
    .await?;
    let tls = tls_client(&cloud.ca_pem, None, &[b"h2", b"http/1.1"])?;
    let held = flood(FLOOD, &HTTP_STALLS, &[lo(2)], addr_of(&cloud.url)?, tls).await;
    healthz_answers(&cloud, lo(1)).await?;
    // The per-address cap (default 256) refused the rest at once.
    let refused = cloud
        .metric("verge_connections_refused_total{listener=\"api\",reason=\"per-ip\"}")
        .await?;
    assert!(
        refused >= (FLOOD - 256) as f64,
        "refused {refused} of {FLOOD} from one address"
    );
    let open = cloud
        .metric("verge_connections_open{listener=\"api\"}")
        .await?;
    assert!(open <= 256.0 + 2.0, "{open} open");
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_api_listener_makes_room_by_closing_its_longest_idle_connections() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    // A global cap far below the flood, and no per-address cap in the way: only the
    // global cap and eviction stand between the flood and /healthz.
    let cloud = Cloud::start(
        Path::new(BIN),
        &[
            "--max-connections",
            "200",
            "--max-connections-per-ip",
            "5000",
            // Only eviction frees places here, however long the flood takes.
            "--tls-handshake-timeout",
            "600s",
            "--header-read-timeout",
            "600s",
            "--idle-timeout",
            "600s",
        ],
    )
    .await?;
    let tls = tls_client(&cloud.ca_pem, None, &[b"h2", b"http/1.1"])?;
    let held = flood(
        FLOOD,
        &HTTP_STALLS,
        &many(10, 32),
        addr_of(&cloud.url)?,
        tls,
    )
    .await;
    healthz_answers(&cloud, lo(1)).await?;
    let open = cloud
        .metric("verge_connections_open{listener=\"api\"}")
        .await?;
    assert!(open <= 200.0, "{open} connections open under a cap of 200");
    let evicted = cloud
        .metric("verge_connections_closed_total{listener=\"api\",reason=\"evicted\"}")
        .await?;
    assert!(evicted >= (FLOOD - 200) as f64, "only {evicted} evicted");
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_1024_open_file_limit_half_open_connections_leave_healthz_answering() -> Result<()>
{
    let _heavy = HEAVY.lock().await;
    // The reported attack: 1,024 open files, default flags. A wrapper lowers the limit
    // before exec (the cloud raises its soft limit only up to the hard one, unless it
    // may raise the hard one too — then this runs with the higher limit).
    let dir = tempfile::tempdir()?;
    let wrapper = dir.path().join("verge-1024");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nulimit -n 1024 || exit 99\nexec {BIN} \"$@\"\n"),
    )?;
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let cloud = Cloud::start(&wrapper, &[]).await?;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", cloud.pid().context("pid")?))?;
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_default()
        .to_string();
    eprintln!("cloud: {open_files}");
    // Only the kinds that outlive the TLS handshake timeout.
    let tls = tls_client(&cloud.ca_pem, None, &[b"h2", b"http/1.1"])?;
    let kinds = [Stall::HalfRequestLine, Stall::HalfH2Preface];
    let held = flood(FLOOD, &kinds, &many(10, 32), addr_of(&cloud.url)?, tls).await;
    healthz_answers(&cloud, lo(1)).await?;
    let open = cloud
        .metric("verge_connections_open{listener=\"api\"}")
        .await?;
    if open_files.split_whitespace().nth(3) == Some("1024") {
        assert!(open < 1024.0, "{open} connections open under 1,024 files");
    }
    drop(held);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_connections_are_closed_by_the_server_on_their_timers() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let cloud = Cloud::start(
        Path::new(BIN),
        &[
            "--tls-handshake-timeout",
            "3s",
            "--header-read-timeout",
            "3s",
            "--idle-timeout",
            "4s",
        ],
    )
    .await?;
    // Two watch streams, over HTTP/1.1 and HTTP/2, that must outlive every timer.
    let h2 = reqwest::Client::builder()
        .use_preconfigured_tls((*tls_client(&cloud.ca_pem, None, &[b"h2"])?).clone())
        .local_address(lo(1))
        .build()?;
    let watch_url = format!("{}/api/v1/configs?watch=1", cloud.url);
    let mut w1 = cloud
        .client()?
        .get(&watch_url)
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(w1.version(), reqwest::Version::HTTP_11);
    let mut w2 = h2
        .get(&watch_url)
        .bearer_auth(&cloud.admin_token)
        .send()
        .await?;
    assert_eq!(w2.version(), reqwest::Version::HTTP_2);
    let tls = tls_client(&cloud.ca_pem, None, &[b"h2", b"http/1.1"])?;
    let held = flood(
        FLOOD,
        &HTTP_STALLS,
        &many(10, 16),
        addr_of(&cloud.url)?,
        tls,
    )
    .await;
    ensure!(
        held.len() > FLOOD / 2,
        "only {} of {FLOOD} connections set up",
        held.len()
    );
    all_closed_by_server(held, Duration::from_secs(180)).await?;
    // Every kind was closed for its own reason.
    for reason in ["tls-timeout", "header-timeout"] {
        let n = cloud
            .metric(&format!(
                "verge_connections_closed_total{{listener=\"api\",reason=\"{reason}\"}}"
            ))
            .await?;
        assert!(n >= 1.0, "nothing closed for {reason}");
    }
    // The watches lived through all of that.
    cloud
        .api(
            reqwest::Method::POST,
            "/api/v1/configs",
            Some(json!({"apiVersion": "verge.dev/v1", "kind": "Config",
                "metadata": {"name": "after-the-flood"}, "spec": {"data": {"k": "v"}}})),
        )
        .await?;
    for (proto, w) in [("HTTP/1.1", &mut w1), ("HTTP/2", &mut w2)] {
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("after-the-flood") {
            let chunk = tokio::time::timeout(Duration::from_secs(60), w.chunk())
                .await
                .with_context(|| format!("no event on the {proto} watch"))??
                .with_context(|| format!("the {proto} watch ended"))?;
            seen.extend_from_slice(&chunk);
        }
    }
    drop((w1, w2));
    // An HTTP/2 connection left idle after a request is closed after the idle timeout.
    let h2 = reqwest::Client::builder()
        .use_preconfigured_tls((*tls_client(&cloud.ca_pem, None, &[b"h2"])?).clone())
        .local_address(lo(1))
        .build()?;
    let r = h2.get(format!("{}/healthz", cloud.url)).send().await?;
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    eventually(
        Duration::from_secs(60),
        "idle HTTP/2 connection closed",
        async || {
            let n = cloud
                .metric("verge_connections_closed_total{listener=\"api\",reason=\"idle\"}")
                .await
                .ok()?;
            (n >= 1.0).then_some(())
        },
    )
    .await?;
    // Nothing is left open but the metrics calls' own connection.
    eventually(
        Duration::from_secs(60),
        "connections released",
        async || {
            let n = cloud
                .metric("verge_connections_open{listener=\"api\"}")
                .await
                .ok()?;
            (n <= 2.0).then_some(())
        },
    )
    .await?;
    healthz_answers(&cloud, lo(1)).await
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_after_the_idle_timeout() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &["--idle-timeout", "3s"]).await?;
    // ~16 MB of history: more than the socket buffers hold on loopback.
    let big = "x".repeat(400 * 1024);
    for i in 0..40 {
        cloud
            .api(
                reqwest::Method::POST,
                "/api/v1/configs",
                Some(json!({
                    "apiVersion": "verge.dev/v1", "kind": "Config",
                    "metadata": {"name": format!("big-{i}")},
                    "spec": {"data": {"blob": big}}
                })),
            )
            .await?;
    }
    // A watch from the start of history, then never read.
    let tls = tls_client(&cloud.ca_pem, None, &[b"http/1.1"])?;
    let tcp = dial(lo(1), addr_of(&cloud.url)?).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut s = TlsConnector::from(tls).connect(name, tcp).await?;
    s.write_all(
        format!(
            "GET /api/v1/configs?watch=1&resourceVersion=0 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
            cloud.admin_token
        )
        .as_bytes(),
    )
    .await?;
    s.flush().await?;
    eventually(
        Duration::from_secs(60),
        "write-stalled connection closed",
        async || {
            let n = cloud
                .metric("verge_connections_closed_total{listener=\"api\",reason=\"write-stall\"}")
                .await
                .ok()?;
            (n >= 1.0).then_some(())
        },
    )
    .await?;
    // Its watch is gone too.
    eventually(Duration::from_secs(30), "watch released", async || {
        let n = cloud.metric("verge_open_watches").await.ok()?;
        (n == 0.0).then_some(())
    })
    .await?;
    // Reading now drains what was buffered, then ends before all 40 events.
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut got)).await;
    let events = got.windows(8).filter(|w| w == b"\"big-39\"").count();
    assert_eq!(events, 0, "the stalled stream was not cut");
    Ok(())
}

#[tokio::test]
async fn the_per_address_cap_refuses_extra_connections_at_once() -> Result<()> {
    // Timers far away: only the caps close anything here.
    let cloud = Cloud::start(
        Path::new(BIN),
        &[
            "--max-connections-per-ip",
            "20",
            "--mqtt-max-connections-per-ip",
            "5",
            "--tls-handshake-timeout",
            "600s",
            "--header-read-timeout",
            "600s",
            "--mqtt-connect-timeout",
            "600s",
        ],
    )
    .await?;
    let api = addr_of(&cloud.url)?;
    let mqtt = addr_of(&cloud.mqtt_url)?;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(dial(lo(3), api).await?);
    }
    // The 21st from that address is closed at once, before any TLS.
    let mut extra = dial(lo(3), api).await?;
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(60), extra.read(&mut buf))
        .await
        .context("the 21st connection was not closed")?;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let err = https_from(&cloud, lo(3))?
        .get(format!("{}/healthz", cloud.url))
        .send()
        .await;
    assert!(err.is_err(), "a 21st connection from 127.0.0.3 was served");
    // Other addresses are served.
    healthz_answers(&cloud, lo(4)).await?;
    let refused = cloud
        .metric("verge_connections_refused_total{listener=\"api\",reason=\"per-ip\"}")
        .await?;
    assert!(refused >= 2.0, "{refused}");
    // A place freed is a place for that address again.
    drop(held.pop());
    eventually(
        Duration::from_secs(30),
        "127.0.0.3 served again",
        async || {
            let r = https_from(&cloud, lo(3))
                .ok()?
                .get(format!("{}/healthz", cloud.url))
                .send()
                .await
                .ok()?;
            (r.status() == StatusCode::OK).then_some(())
        },
    )
    .await?;

    // The gateway's own cap.
    let mut gw = Vec::new();
    for _ in 0..5 {
        gw.push(dial(lo(3), mqtt).await?);
    }
    let mut extra = dial(lo(3), mqtt).await?;
    let n = tokio::time::timeout(Duration::from_secs(60), extra.read(&mut buf))
        .await
        .context("the 6th MQTT connection was not closed")?;
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let refused = cloud
        .metric("verge_connections_refused_total{listener=\"mqtt\",reason=\"per-ip\"}")
        .await?;
    assert!(refused >= 1.0, "{refused}");
    drop((held, gw));
    Ok(())
}

/// Joins a node through the API: its `(certificate PEM, key PEM)`.
async fn join_node(cloud: &Cloud, name: &str) -> Result<(String, String)> {
    let token = cloud.bootstrap_token(1).await?;
    let (key, csr_pem) = csr(name)?;
    let r = cloud
        .client()?
        .post(format!("{}/api/v1/join", cloud.url))
        .json(&json!({"token": token, "name": name, "csr": csr_pem}))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::CREATED, "join: {}", r.status());
    let v: Value = r.json().await?;
    Ok((
        v["certificate"]
            .as_str()
            .context("certificate")?
            .to_string(),
        key,
    ))
}

/// A real MQTT session: TLS with the node's certificate, CONNECT, CONNACK accepted.
async fn node_connects(cloud: &Cloud, identity: &(String, String), src: IpAddr) -> Result<()> {
    use rumqttc::{ConnectReturnCode, Packet};
    let tls = tls_client(&cloud.ca_pem, Some(identity), &[])?;
    let tcp = dial(src, addr_of(&cloud.mqtt_url)?).await?;
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?;
    let mut s = TlsConnector::from(tls).connect(name, tcp).await?;
    let mut out = BytesMut::new();
    Packet::Connect(rumqttc::Connect::new("probe"))
        .write(&mut out, 1024)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    s.write_all(&out).await?;
    s.flush().await?;
    let mut buf = BytesMut::new();
    loop {
        match Packet::read(&mut buf, 1024) {
            Ok(Packet::ConnAck(a)) => {
                ensure!(a.code == ConnectReturnCode::Success, "connack {:?}", a.code);
                return Ok(());
            }
            Ok(p) => bail!("expected CONNACK, got {p:?}"),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => bail!("{e:?}"),
        }
        if s.read_buf(&mut buf).await? == 0 {
            bail!("the gateway closed the connection before CONNACK");
        }
    }
}

const MQTT_STALLS: [Stall; 3] = [Stall::Silent, Stall::HalfClientHello, Stall::HalfConnect];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_mqtt_connections_are_closed_and_nodes_still_connect() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let cloud = Cloud::start(
        Path::new(BIN),
        &[
            "--tls-handshake-timeout",
            "3s",
            "--mqtt-connect-timeout",
            "3s",
        ],
    )
    .await?;
    let node = join_node(&cloud, "edge-a").await?;
    // Outsiders and a compromised node's certificate, from 16 addresses.
    let tls = tls_client(&cloud.ca_pem, Some(&node), &[])?;
    let held = flood(
        FLOOD,
        &MQTT_STALLS,
        &many(10, 16),
        addr_of(&cloud.mqtt_url)?,
        tls,
    )
    .await;
    ensure!(
        held.len() > FLOOD / 2,
        "only {} of {FLOOD} connections set up",
        held.len()
    );
    node_connects(&cloud, &node, lo(1)).await?;
    healthz_answers(&cloud, lo(1)).await?;
    all_closed_by_server(held, Duration::from_secs(180)).await?;
    for reason in ["tls-timeout", "connect"] {
        let n = cloud
            .metric(&format!("verge_mqtt_refused_total{{reason=\"{reason}\"}}"))
            .await?;
        assert!(n >= 1.0, "nothing refused for {reason}");
    }
    node_connects(&cloud, &node, lo(1)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_gateway_makes_room_for_real_nodes() -> Result<()> {
    let _heavy = HEAVY.lock().await;
    let cloud = Cloud::start(
        Path::new(BIN),
        &[
            "--mqtt-max-connections",
            "100",
            "--mqtt-max-connections-per-ip",
            "5000",
            // Only eviction frees places here, however long the flood takes.
            "--tls-handshake-timeout",
            "600s",
            "--mqtt-connect-timeout",
            "600s",
        ],
    )
    .await?;
    let node = join_node(&cloud, "edge-b").await?;
    let tls = tls_client(&cloud.ca_pem, Some(&node), &[])?;
    let held = flood(
        FLOOD,
        &MQTT_STALLS,
        &many(10, 32),
        addr_of(&cloud.mqtt_url)?,
        tls,
    )
    .await;
    node_connects(&cloud, &node, lo(1)).await?;
    let evicted = cloud
        .metric("verge_connections_closed_total{listener=\"mqtt\",reason=\"evicted\"}")
        .await?;
    assert!(evicted >= (FLOOD - 100) as f64, "only {evicted} evicted");
    let open = cloud
        .metric("verge_connections_open{listener=\"mqtt\"}")
        .await?;
    assert!(open <= 100.0, "{open} open under a cap of 100");
    drop(held);
    Ok(())
}

async fn token(cloud: &Cloud, role: &str) -> Result<String> {
    let v = cloud
        .api(
            reqwest::Method::POST,
            "/api/v1/tokens",
            Some(json!({"role": role})),
        )
        .await?;
    Ok(v["token"].as_str().context("token")?.to_string())
}

async fn watch(cloud: &Cloud, token: &str) -> Result<reqwest::Response> {
    Ok(cloud
        .client()?
        .get(format!("{}/api/v1/configs?watch=1", cloud.url))
        .bearer_auth(token)
        .send()
        .await?)
}

#[tokio::test]
async fn the_watch_cap_per_token_answers_429_and_other_tokens_still_watch() -> Result<()> {
    let cloud = Cloud::start(Path::new(BIN), &["--max-watches-per-token", "3"]).await?;
    let a = token(&cloud, "viewer").await?;
    let b = token(&cloud, "viewer").await?;
    let mut open = Vec::new();
    for _ in 0..3 {
        let r = watch(&cloud, &a).await?;
        assert_eq!(r.status(), StatusCode::OK);
        open.push(r);
    }
    let r = watch(&cloud, &a).await?;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = r.json().await?;
    assert_eq!(body["reason"], "TooManyRequests");
    let msg = body["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("at most 3") && msg.contains("--max-watches-per-token"),
        "{msg}"
    );
    // Another token, and plain reads with the first, are not affected.
    let rb = watch(&cloud, &b).await?;
    assert_eq!(rb.status(), StatusCode::OK);
    let r = cloud
        .client()?
        .get(format!("{}/api/v1/configs", cloud.url))
        .bearer_auth(&a)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    // Closing a stream gives its place back.
    drop(open.pop());
    eventually(Duration::from_secs(30), "a watch place freed", async || {
        let r = watch(&cloud, &a).await.ok()?;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await?;
    drop((open, rb));
    Ok(())
}

#[tokio::test]
async fn a_join_flood_with_bad_tokens_does_not_block_a_valid_join() -> Result<()> {
    // One join per second per address, burst 4.
    let cloud = Cloud::start(Path::new(BIN), &["--join-rate", "1"]).await?;
    let attacker = https_from(&cloud, lo(5))?;
    for i in 0..50 {
        let r = attacker
            .post(format!("{}/api/v1/join", cloud.url))
            .json(&json!({"token": "abcdefgh.nottherightsecret", "name": format!("x{i}"), "csr": "x"}))
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "bad token #{i}");
    }
    let join = async |src: IpAddr, name: &str| -> Result<StatusCode> {
        let token = cloud.bootstrap_token(1).await?;
        let (_, csr_pem) = csr(name)?;
        Ok(https_from(&cloud, src)?
            .post(format!("{}/api/v1/join", cloud.url))
            .json(&json!({"token": token, "name": name, "csr": csr_pem}))
            .send()
            .await?
            .status())
    };
    // Another address joins; so does the flooding address itself (401s cost nothing).
    assert_eq!(join(lo(6), "good-1").await?, StatusCode::CREATED);
    assert_eq!(join(lo(5), "good-2").await?, StatusCode::CREATED);
    // A valid token's holder is limited per address...
    let token = cloud.bootstrap_token(100).await?;
    let noisy = https_from(&cloud, lo(7))?;
    let mut limited = None;
    for _ in 0..40 {
        let r = noisy
            .post(format!("{}/api/v1/join", cloud.url))
            .json(&json!({"token": token, "name": "n", "csr": "x"}))
            .send()
            .await?;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    }
    let r = limited.context("40 joins at 1/s (burst 4) from one address were never limited")?;
    assert!(r.headers().get("retry-after").is_some());
    // ...and the other addresses are not.
    assert_eq!(join(lo(8), "good-3").await?, StatusCode::CREATED);
    Ok(())
}
