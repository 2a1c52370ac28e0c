//! The Verge control plane: the authenticated, TLS-by-default resource API over the
//! revisioned store, plus the machinery around it (cluster CA, tokens, metrics,
//! OpenAPI, history compaction).
//!
//! Entry point: [`run`], which takes its shutdown signal as an input. The `verge`
//! binary only parses flags and calls it.

pub mod admission;
pub mod apps;
pub mod artifact_access;
pub mod artifacts;
pub mod auth;
pub mod buckets;
mod client_config;
pub mod compaction;
pub mod controller;
mod error;
pub mod events;
pub mod functions;
pub mod gateway;
mod http;
pub mod limits;
pub mod metrics;
pub mod mosquitto;
pub mod nodes;
pub mod object_sink;
pub mod objects;
mod pki;
pub mod recover;
pub mod s3;
pub mod secrets;
mod secure_fs;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use verge_store::{DynStore, SqliteOptions, SqliteStore};

pub use auth::Role;
pub use client_config::ClientConfig;
pub use error::{ApiError, Error, Result};
pub use http::Mount;
pub use pki::{ClusterCa, ca_hash_from_pem};
pub use secure_fs::{ensure_private_dir, write_private};

use crate::auth::Authenticator;
use crate::http::AppState;
use crate::metrics::{InstrumentedStore, Metrics};

/// Everything `verge cloud` can be told.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Serve plain HTTP (only allowed on loopback addresses).
    pub insecure_http: bool,
    /// Extra DNS names / IPs for the server certificate.
    pub tls_sans: Vec<String>,
    /// Request body cap in bytes.
    pub max_body_bytes: usize,
    /// Largest artifact accepted by `POST /api/v1/artifacts`, in bytes.
    pub artifact_max_bytes: u64,
    /// Revisions of history kept for watches; older ones are compacted.
    pub history_revisions: i64,
    /// How often the compactor runs.
    pub compact_interval: Duration,
    /// How long in-flight requests may take to finish at shutdown.
    pub drain_timeout: Duration,
    /// Lifetime of node client certificates (rotated by the edge before expiry).
    pub node_cert_validity: Duration,
    /// Join attempts per second from one source address (burst 4x), counted once the
    /// bootstrap token is verified; `limits.join_rate_global` bounds all together.
    pub join_rate_per_sec: f64,
    /// MQTT gateway listen address for edge nodes (`None`: no gateway).
    pub mqtt_listen: Option<SocketAddr>,
    /// S3 API listen address (`None`: no S3 listener).
    pub s3_listen: Option<SocketAddr>,
    /// Use this external broker (`mqtts://HOST:PORT`, set up with
    /// `print-mosquitto-config`) instead of the embedded gateway.
    pub mqtt_url: Option<String>,
    /// Node heartbeat period and misses before NotReady.
    pub lifecycle: nodes::LifecycleConfig,
    /// Memory for the log lines nodes ship (per node and in all).
    pub node_logs: nodes::logs::LogBudget,
    pub gateway: gateway::GatewayConfig,
    /// Builtin functions (`runtime: builtin`) the cloud can run.
    pub builtins: Arc<functions::Registry>,
    /// Services mounted at a path prefix without the API's authentication, because they
    /// authenticate requests themselves: the `/img` endpoint (signed URLs). Each brings
    /// its OpenAPI paths.
    pub mounts: Vec<http::Mount>,
    /// Where the cloud installs its buckets for the builtins and mounts that read and
    /// write objects (the image functions' `output`, `s3://` sources); share it with
    /// them before starting (decision 032).
    pub objects: Arc<verge_runtime::ObjectSlot>,
    /// Non-public networks (IPs or CIDRs) that requests made on a user's behalf —
    /// task callbacks — may reach; by default none: public addresses only
    /// (`verge cloud --outbound-allow-networks`). The image service has its own
    /// (`--img-allow-network`).
    pub outbound_allow_networks: Vec<String>,
    /// When not empty, the only hosts those requests may reach (exact names or
    /// `*.domain`); the address check applies to them too (`--outbound-allow-hosts`).
    pub outbound_allow_hosts: Vec<String>,
    /// How the cloud's python3/node function workers are sandboxed (the data directory
    /// is added to what they must never see).
    pub function_sandbox: verge_runtime::SandboxConfig,
    /// Connection limits of the API listener and the MQTT gateway, the watch cap per
    /// token, the global join rate (decision 012; defaults in `Limits::default`).
    pub limits: limits::Limits,
    /// Object events: batch, concurrency, webhook deadline and retries, the
    /// dead-letter cap (decision 031; defaults in `EventsConfig::default`).
    pub events: events::EventsConfig,
}

impl CloudConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen,
            insecure_http: false,
            tls_sans: Vec::new(),
            max_body_bytes: 1024 * 1024,
            artifact_max_bytes: artifacts::DEFAULT_MAX_BYTES,
            history_revisions: 100_000,
            compact_interval: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            node_cert_validity: Duration::from_secs(30 * 86400),
            join_rate_per_sec: 20.0,
            mqtt_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8883))),
            mqtt_url: None,
            s3_listen: None,
            lifecycle: nodes::LifecycleConfig::default(),
            node_logs: nodes::logs::LogBudget::default(),
            gateway: gateway::GatewayConfig::default(),
            builtins: Arc::new(functions::Registry::with_defaults()),
            mounts: Vec::new(),
            objects: Arc::new(verge_runtime::ObjectSlot::new()),
            outbound_allow_networks: Vec::new(),
            outbound_allow_hosts: Vec::new(),
            function_sandbox: verge_runtime::SandboxConfig {
                cgroup_parent: "verge-fn-cloud".into(),
                ..verge_runtime::SandboxConfig::default()
            },
            limits: limits::Limits::default(),
            events: events::EventsConfig::default(),
        }
    }
}

/// Files of a data directory.
pub mod files {
    pub const CA_CERT: &str = "ca.crt";
    pub const ADMIN_TOKEN: &str = "admin.token";
    pub const ADMIN_CONFIG: &str = "admin.config";
    pub const STORE_DB: &str = "store.db";
    /// Held by the running cloud (and `recover-admin`): see `verge_datadir`.
    pub const LOCK: &str = verge_datadir::LOCK_FILE;
    /// The address actually bound (useful with port 0).
    pub const API_ADDR: &str = "api.addr";
    /// The MQTT gateway URL actually bound.
    pub const MQTT_ADDR: &str = "mqtt.addr";
    /// The S3 API's URL actually bound (when `--s3-listen` is on).
    pub const S3_ADDR: &str = "s3.addr";
}

fn server_url(scheme: &str, addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
        ip => ip,
    };
    match ip {
        IpAddr::V6(v6) => format!("{scheme}://[{v6}]:{}", addr.port()),
        IpAddr::V4(v4) => format!("{scheme}://{v4}:{}", addr.port()),
    }
}

/// Runs the control plane until `shutdown` resolves, then drains and closes the store.
pub async fn run(cfg: CloudConfig, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
    if cfg.insecure_http && !cfg.listen.ip().is_loopback() {
        return Err(Error::Config(format!(
            "--insecure-http is refused on {}: plain HTTP is only allowed on a loopback address (127.0.0.1 or ::1)",
            cfg.listen.ip()
        )));
    }
    cfg.limits
        .check()
        .map_err(|e| Error::Config(format!("connection limits: {e}")))?;
    // Tests only: where node deletion aborts the process (`nodes::delete::CrashPoint`).
    let crash_at = nodes::delete::CrashPoint::from_env().map_err(Error::Config)?;
    // This process's alone (the lock) and private (0700, files 0600) at every start.
    let _data_dir_lock = secure_fs::take_data_dir(&cfg.data_dir, "verge cloud")?;
    let ca = ClusterCa::load_or_create(&cfg.data_dir)?;
    let secret_box = Arc::new(secrets::SecretBox::load_or_create(&cfg.data_dir)?);

    let sqlite =
        Arc::new(SqliteStore::open(SqliteOptions::new(cfg.data_dir.join(files::STORE_DB))).await?);
    let metrics = Arc::new(Metrics::new());
    let store: DynStore = Arc::new(InstrumentedStore::new(
        sqlite.clone() as DynStore,
        metrics.clone(),
    ));
    let auth = Authenticator::load(store.clone()).await?;
    let artifact_store = Arc::new(artifacts::ArtifactStore::open(
        &cfg.data_dir,
        cfg.artifact_max_bytes,
    )?);

    let token_path = cfg.data_dir.join(files::ADMIN_TOKEN);
    if !token_path.exists() {
        if !auth.is_empty() {
            tracing::warn!(
                "{} is missing but tokens exist; not creating a new admin token (create one with an existing admin token, or stop the cloud and run `verge cloud recover-admin --data-dir {}`)",
                token_path.display(),
                cfg.data_dir.display()
            );
        } else {
            let (_, token) = auth
                .create(auth::NewToken {
                    role: Role::Admin,
                    description: Some("initial admin token".into()),
                    ..Default::default()
                })
                .await
                .map_err(|e| Error::Config(format!("creating the admin token: {}", e.message)))?;
            write_private(&token_path, format!("{token}\n").as_bytes())?;
            tracing::info!(path = %token_path.display(), "wrote initial admin token");
        }
    }

    let mut dns: Vec<String> = vec!["localhost".into()];
    let mut ips: Vec<IpAddr> = vec![
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]),
    ];
    for ip in [
        Some(cfg.listen.ip()),
        cfg.mqtt_listen.map(|a| a.ip()),
        cfg.s3_listen.map(|a| a.ip()),
    ]
    .into_iter()
    .flatten()
    {
        if !ip.is_unspecified() && !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty()
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            dns.push(h.to_string());
        }
    }
    for san in &cfg.tls_sans {
        match san.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(san.clone()),
        }
    }
    let issued = ca.issue_server_cert(&dns, &ips)?;
    let tls = if cfg.insecure_http {
        tracing::warn!("serving plain HTTP on {} (--insecure-http)", cfg.listen);
        None
    } else {
        Some(pki::server_tls_config(&ca, &issued)?)
    };

    let listener = TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", cfg.listen)))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("listener address: {e}")))?;
    let url = server_url(if tls.is_some() { "https" } else { "http" }, bound);
    secure_fs::write_public(
        &cfg.data_dir.join(files::API_ADDR),
        format!("{url}\n").as_bytes(),
    )?;
    if token_path.exists() {
        let token = secure_fs::read_to_string(&token_path)?.trim().to_string();
        ClientConfig {
            server: url.clone(),
            certificate_authority_data: tls.as_ref().map(|_| ca.cert_pem.clone()),
            token,
        }
        .save(&cfg.data_dir.join(files::ADMIN_CONFIG))?;
    }

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let (api_admission, mqtt_admission) = admissions(&cfg, &metrics);
    // Controllers on the one runtime share one informer (one store watch) per kind.
    let informers = controller::Informers::new(store.clone(), shutdown_rx.clone());
    // Buckets: object bytes under DATA_DIR/blobs, metadata in the store.
    let buckets = Arc::new(buckets::Buckets::new(
        store.clone(),
        buckets::BlobStore::open(&cfg.data_dir)?,
        informers.cache(verge_api::Kind::Bucket),
    ));
    cfg.objects
        .install(Arc::new(object_sink::BucketSink::new(buckets.clone())));

    // Edge nodes: lifecycle + sync, and the MQTT gateway they connect to.
    let node_manager = nodes::NodeManager::new(
        store.clone(),
        cfg.lifecycle.clone(),
        cfg.node_logs,
        metrics.nodes.clone(),
    );
    node_manager.sync.set_secret_box(secret_box.clone());
    let mut background = Vec::new();
    let ca = Arc::new(ca);
    node_manager.set_issuer(
        ca.clone(),
        time::Duration::try_from(cfg.node_cert_validity).unwrap_or(time::Duration::days(30)),
    );
    // Certificates of deleted nodes: refused by either transport.
    // Revocations of certificates that have expired are dropped first.
    let validity =
        time::Duration::try_from(cfg.node_cert_validity).unwrap_or(time::Duration::days(30));
    let revoked: Vec<String> = nodes::certs::prune_revoked(
        &store,
        time::OffsetDateTime::now_utc(),
        nodes::certs::grace(validity),
    )
    .await?;
    let (gateway, mqtt_url) = match (&cfg.mqtt_url, cfg.mqtt_listen) {
        (Some(url), _) => {
            let mdir = mosquitto::dir(&cfg.data_dir);
            ensure_private_dir(&mdir)?;
            let (broker, events) = gateway::external::ExternalBroker::connect(
                url,
                ca.clone(),
                mdir.join(mosquitto::CRL_FILE),
                revoked,
            )?;
            node_manager.set_gateway(broker.clone());
            secure_fs::write_public(
                &cfg.data_dir.join(files::MQTT_ADDR),
                format!("{url}\n").as_bytes(),
            )?;
            let inbound: Arc<dyn gateway::Inbound> = node_manager.clone();
            background.push(tokio::spawn(broker.clone().run(
                events,
                inbound,
                metrics.gateway.clone(),
                cfg.gateway.clone(),
                shutdown_rx.clone(),
            )));
            tracing::info!(%url, "using the external MQTT broker");
            (Some(broker as gateway::DynDownlink), Some(url.clone()))
        }
        (None, Some(addr)) => {
            let gw = gateway::Gateway::new(
                node_manager.clone(),
                metrics.gateway.clone(),
                cfg.gateway.clone(),
            );
            for serial in &revoked {
                gw.revoke(serial);
            }
            node_manager.set_gateway(Arc::new(gw.clone()));
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                Error::Config(format!("cannot listen on {addr} (--mqtt-listen): {e}"))
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::Config(format!("mqtt listener address: {e}")))?;
            let url = server_url("mqtts", bound);
            secure_fs::write_public(
                &cfg.data_dir.join(files::MQTT_ADDR),
                format!("{url}\n").as_bytes(),
            )?;
            let mqtt_tls = pki::mqtt_tls_config(&ca, &issued)?;
            let serve_gw = gw.clone();
            let rx = shutdown_rx.clone();
            let tls_timeout = cfg.limits.tls_handshake_timeout;
            background.push(tokio::spawn(async move {
                serve_gw
                    .serve(listener, mqtt_tls, mqtt_admission, tls_timeout, rx)
                    .await;
            }));
            tracing::info!(%url, "mqtt gateway listening");
            (Some(Arc::new(gw) as gateway::DynDownlink), Some(url))
        }
        (None, None) => (None, None),
    };
    background.push(tokio::spawn(
        node_manager
            .clone()
            .run_lifecycle(informers.clone(), shutdown_rx.clone()),
    ));
    {
        let apps = Arc::new(apps::AppController::new(
            store.clone(),
            node_manager.apps.clone(),
            &informers,
        ));
        background.push(tokio::spawn(
            apps.run(informers.clone(), shutdown_rx.clone()),
        ));
    }
    {
        let sync = node_manager.sync.clone();
        let rx = shutdown_rx.clone();
        let informers = informers.clone();
        // Follows the informers (which relist after any watch error) until shutdown.
        background.push(tokio::spawn(async move { sync.run(informers, rx).await }));
    }
    // Functions: the cloud's runtime, the Function, Task and Trigger controllers.
    let mut sandbox = cfg.function_sandbox.clone();
    sandbox.hide.push(cfg.data_dir.clone());
    let function_host = functions::FunctionHost::new(
        store.clone(),
        cfg.data_dir.join("functions"),
        cfg.builtins.clone(),
        sandbox,
        secret_box.clone(),
    );
    {
        let host = function_host.clone();
        tokio::spawn(async move {
            let st = host.runtime().sandbox_status().await;
            if !st.is_enforced() {
                tracing::warn!(state = %st.state, reason = ?st.reason, "python3/node functions are not sandboxed in the cloud");
            }
        });
    }
    let tasks = functions::tasks::Tasks::new(
        store.clone(),
        function_host.clone(),
        artifact_store.clone(),
        functions::callbacks::load_or_create_key(&cfg.data_dir)?,
        functions::callbacks::http_client(&cfg.outbound_allow_networks, &cfg.outbound_allow_hosts)?,
        &informers,
    );
    if let Some(gw) = &gateway {
        tasks.set_downlink(gw.clone());
    }
    // Object events: the dispatcher (store watch → tasks and webhook deliveries) and
    // the webhook delivery worker.
    {
        let dead = events::deadletters::DeadLetters::new(
            store.clone(),
            metrics.events.clone(),
            cfg.events.max_dead_letters,
        );
        let deliveries = events::delivery::Deliveries::new(
            store.clone(),
            events::delivery::http_client(
                &cfg.outbound_allow_networks,
                &cfg.outbound_allow_hosts,
                cfg.events.attempt_timeout,
            )?,
            functions::callbacks::load_or_create_key(&cfg.data_dir)?,
            cfg.events.clone(),
            metrics.events.clone(),
            dead.clone(),
        );
        let dispatcher = events::dispatcher::Dispatcher::new(
            store.clone(),
            tasks.clone(),
            &informers,
            deliveries.clone(),
            dead,
            cfg.events.clone(),
            metrics.events.clone(),
        );
        background.push(tokio::spawn(deliveries.run(shutdown_rx.clone())));
        background.push(tokio::spawn(dispatcher.run(shutdown_rx.clone())));
    }
    let _ = node_manager.tasks.set(tasks.clone());
    {
        let functions = Arc::new(functions::FunctionController::new(
            store.clone(),
            function_host.clone(),
            &informers,
        ));
        // Shuts the function runtime down when it stops.
        background.push(tokio::spawn(
            functions.run(informers.clone(), shutdown_rx.clone()),
        ));
        background.push(tokio::spawn(
            tasks.clone().run(informers.clone(), shutdown_rx.clone()),
        ));
        let triggers = Arc::new(functions::triggers::TriggerController::new(
            store.clone(),
            tasks.clone(),
            &informers,
        ));
        background.push(tokio::spawn(
            triggers.run(informers.clone(), shutdown_rx.clone()),
        ));
        // Deleting a Node: certificates revoked, session closed, records removed, then
        // the Node goes (a crash in between is finished after the restart).
        let deletion = nodes::delete::NodeDeletion::new(
            store.clone(),
            node_manager.clone(),
            gateway.clone(),
            crash_at,
        );
        background.push(tokio::spawn(
            deletion.run(informers.clone(), shutdown_rx.clone()),
        ));
    }
    // S3 access keys (secrets sealed like Secrets) and the S3 listener.
    let s3_keys = Arc::new(s3::keys::AccessKeys::new(store.clone(), secret_box.clone()));
    let (s3_server, s3_url) = match cfg.s3_listen {
        None => (None, None),
        Some(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| {
                Error::Config(format!("cannot listen on {addr} (--s3-listen): {e}"))
            })?;
            let bound = listener
                .local_addr()
                .map_err(|e| Error::Config(format!("s3 listener address: {e}")))?;
            let s3_tls = if cfg.insecure_http {
                None
            } else {
                Some(pki::server_tls_config(&ca, &issued)?)
            };
            let s3_url = server_url(if s3_tls.is_some() { "https" } else { "http" }, bound);
            secure_fs::write_public(
                &cfg.data_dir.join(files::S3_ADDR),
                format!("{s3_url}\n").as_bytes(),
            )?;
            let admission = admission::Admission::new(
                s3::LISTENER,
                cfg.limits.max_connections,
                cfg.limits.max_connections_per_ip,
                metrics.connections.clone(),
            );
            tracing::info!(url = %s3_url, "s3 api listening");
            let server = tokio::spawn(http::serve::serve(
                listener,
                s3_tls,
                s3::router(buckets.clone(), s3_keys.clone()),
                shutdown_rx.clone(),
                http::serve::ServeOptions {
                    drain: cfg.drain_timeout,
                    limits: cfg.limits.clone(),
                    admission,
                },
            ));
            (Some(server), Some(s3_url))
        }
    };
    background.push(tokio::spawn(
        Arc::new(buckets::controller::BucketController::new(
            store.clone(),
            buckets.clone(),
        ))
        .run(informers.clone(), shutdown_rx.clone()),
    ));
    let openapi_json: Bytes =
        serde_json::to_vec_pretty(&http::openapi::document(&cfg.mounts))?.into();
    let state = Arc::new(AppState {
        store: store.clone(),
        auth,
        metrics,
        max_body_bytes: cfg.max_body_bytes,
        shutdown: shutdown_rx.clone(),
        openapi_json,
        ca_pem: ca.cert_pem.clone(),
        ca,
        join_limiter: http::join::JoinLimiter::new(
            cfg.join_rate_per_sec,
            cfg.limits.join_rate_global,
        ),
        node_cert_validity: time::Duration::try_from(cfg.node_cert_validity)
            .unwrap_or(time::Duration::days(30)),
        mqtt_url,
        nodes: Some(node_manager.clone()),
        artifacts: artifact_store,
        functions: Some(Arc::new(functions::Functions {
            host: function_host,
            tasks,
        })),
        watches: http::watch::WatchLimit::new(cfg.limits.max_watches_per_token),
        secrets: secret_box,
        buckets: buckets.clone(),
        s3_keys: s3_keys.clone(),
        s3_url,
    });
    let app = http::router(state, &cfg.mounts);
    let compactor = tokio::spawn(
        Arc::new(compaction::Compactor {
            store: store.clone(),
            keep: cfg.history_revisions,
            every: cfg.compact_interval,
        })
        .run(informers.clone(), shutdown_rx.clone()),
    );
    tracing::info!(%url, data_dir = %cfg.data_dir.display(), "verge cloud listening");
    let server = tokio::spawn(http::serve::serve(
        listener,
        tls,
        app,
        shutdown_rx,
        http::serve::ServeOptions {
            drain: cfg.drain_timeout,
            limits: cfg.limits.clone(),
            admission: api_admission,
        },
    ));
    shutdown.await;
    tracing::info!("shutting down: draining connections");
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    if let Some(s3) = s3_server {
        let _ = s3.await;
    }
    let _ = compactor.await;
    for t in background {
        let _ = t.await;
    }
    sqlite.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// The API's and the embedded gateway's admissions, their caps fitted to the
/// open-file limit (logged when that lowers them).
fn admissions(
    cfg: &CloudConfig,
    metrics: &Metrics,
) -> (Arc<admission::Admission>, Arc<admission::Admission>) {
    let l = &cfg.limits;
    let gateway_on = cfg.mqtt_url.is_none() && cfg.mqtt_listen.is_some();
    let mqtt_want = if gateway_on {
        l.mqtt_max_connections
    } else {
        0
    };
    let (api, mqtt) = match limits::open_files_limit() {
        Some(files) => {
            let (api, mqtt) = limits::fit_to_open_files(l.max_connections, mqtt_want, files);
            if (api, mqtt) != (l.max_connections, mqtt_want) {
                tracing::info!(
                    open_files = files,
                    api,
                    mqtt,
                    "connection caps lowered to fit the open-file limit (raise `ulimit -n` for more)"
                );
            }
            (api, mqtt)
        }
        None => (l.max_connections, mqtt_want),
    };
    let m = &metrics.connections;
    (
        admission::Admission::new(
            http::serve::LISTENER,
            api,
            l.max_connections_per_ip,
            m.clone(),
        ),
        admission::Admission::new(
            gateway::LISTENER,
            mqtt.max(1),
            l.mqtt_max_connections_per_ip,
            m.clone(),
        ),
    )
}
