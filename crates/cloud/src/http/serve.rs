//! The accept loop: plain TCP or TLS (rustls), HTTP/1.1 and HTTP/2 (hyper-util auto),
//! connection limits, and graceful shutdown as an input (first signal: stop accepting,
//! let connections finish for up to `drain`; then return).
//!
//! Limits (decision 012, values in [`crate::limits::Limits`]): every accepted socket
//! first asks the listener's [`Admission`] for a place — refused sockets (per-address
//! cap, or a full listener whose connections are all busy) are closed at once; a full
//! listener makes room by closing its longest-idle connection. Then the TLS handshake
//! has `tls_handshake_timeout`; HTTP/1 headers `header_read_timeout` (hyper's timer,
//! which also bounds an idle keep-alive connection); a connection that has started no
//! request within both is closed by the sweeper, and so is one idle (no request in
//! flight) or with blocked writes for `idle_timeout`. HTTP/2 sends keep-alive PINGs and
//! caps concurrent streams. The accept loop itself only books and spawns, so it keeps
//! accepting (and evicting) however slow the connections are.
//!
//! The TLS listener asks for an optional client certificate (verified against the
//! cluster CA, see `pki::server_tls_config`); when a node presents one, its identity is
//! attached to every request of the connection as a [`PeerNode`] extension. Clients
//! without a certificate (bearer tokens) are served as before. Every request also
//! carries the TCP peer's address as a [`PeerAddr`] extension.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::admission::{Admission, Busy, CloseReason, Slot};
use crate::limits::Limits;

/// How long an HTTP/2 keep-alive PING may go unanswered.
const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a connection closed for being idle may take to finish closing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// The listener's name in the connection metrics.
pub const LISTENER: &str = "api";

/// The node whose client certificate (signed by the cluster CA, organization
/// `verge:nodes`) the connection presented. Proves the CA issued it, not that it is
/// still valid: handlers that accept it check revocation and the Node's existence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    /// The certificate's CN: the node name.
    pub name: String,
    /// Hex serial number (what revocation records).
    pub serial: String,
}

/// The TCP peer of the connection a request came on (no proxy headers are trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// What [`serve`] needs besides the listener and the router.
pub struct ServeOptions {
    /// Time in-flight requests get at shutdown.
    pub drain: Duration,
    pub limits: Limits,
    /// The API listener's admission (caps already fitted to the open-file limit).
    pub admission: Arc<Admission>,
}

pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    opts: ServeOptions,
) {
    let ServeOptions {
        drain,
        limits,
        admission,
    } = opts;
    let acceptor = tls.map(TlsAcceptor::from);
    let builder = Arc::new(http_builder(&limits));
    let live = Arc::new(());
    let sweeper = tokio::spawn(sweep_loop(
        admission.clone(),
        limits.clone(),
        shutdown.clone(),
    ));
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let Some(slot) = admission.admit(peer.ip()) else {
            // Refused (counted by the admission): closed at once.
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let conn_shutdown = shutdown.clone();
        let token = live.clone();
        let builder = builder.clone();
        let tls_timeout = limits.tls_handshake_timeout;
        tokio::spawn(async move {
            let _token = token;
            let io = slot.track(tcp);
            match acceptor {
                Some(acc) => {
                    let handshake = tokio::time::timeout(tls_timeout, acc.accept(io));
                    let tls = tokio::select! {
                        r = handshake => r,
                        _ = slot.closed() => return,
                    };
                    match tls {
                        Ok(Ok(tls)) => {
                            let node = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(crate::gateway::node_identity)
                                .map(|(name, serial)| PeerNode { name, serial });
                            drive(tls, app, node, peer, slot, &builder, conn_shutdown).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "tls handshake failed");
                            count_closed(&slot, "tls-error");
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "tls handshake timed out");
                            count_closed(&slot, "tls-timeout");
                        }
                    }
                }
                None => drive(io, app, None, peer, slot, &builder, conn_shutdown).await,
            }
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    while Arc::strong_count(&live) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sweeper.abort();
}

fn count_closed(slot: &Slot, reason: &str) {
    let adm = slot.admission();
    adm.metrics().closed(adm.listener(), reason);
}

/// The HTTP/1 + HTTP/2 connection builder with the limits' timers.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    b.http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.http2_keepalive_interval))
        .keep_alive_timeout(HTTP2_KEEPALIVE_TIMEOUT)
        .max_concurrent_streams(limits.http2_max_streams);
    b
}

/// Closes silent, idle and write-stalled connections, a few times per idle period.
async fn sweep_loop(
    admission: Arc<Admission>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let first_request = limits.tls_handshake_timeout + limits.header_read_timeout;
    let every = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => admission.sweep(first_request, limits.idle_timeout),
            _ = shutdown.changed() => return,
        }
    }
}

/// Serves one connection until it ends, the listener closes it, or shutdown asks it to
/// drain; `node` (the client certificate's identity) and `peer` go into every
/// request's extensions, and every request marks the connection busy until its
/// response body is done.
async fn drive<I>(
    io: I,
    app: Router,
    node: Option<PeerNode>,
    peer: SocketAddr,
    slot: Slot,
    builder: &auto::Builder<TokioExecutor>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let slot = Arc::new(slot);
    let node = node.map(Arc::new);
    let svc_slot = slot.clone();
    let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
        let busy = svc_slot.busy();
        if let Some(n) = &node {
            req.extensions_mut().insert(PeerNode::clone(n));
        }
        req.extensions_mut().insert(PeerAddr(peer));
        let call = app.clone().oneshot(req);
        async move {
            let resp = call.await?;
            Ok::<_, Infallible>(resp.map(|body| Body::new(BusyBody { body, _busy: busy })))
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                    count_closed(&slot, CloseReason::NoRequest.as_str());
                }
                tracing::debug!(%peer, error = %e, "connection ended");
            }
        }
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        why = slot.closed() => {
            tracing::debug!(%peer, reason = why.as_str(), "closing connection");
            if why != CloseReason::Evicted {
                // Idle or stalled: a GOAWAY / a clean close if it goes quickly.
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
            }
        }
    }
}

/// A response body that keeps its connection marked busy until it is done or dropped.
struct BusyBody {
    body: Body,
    _busy: Busy,
}

impl hyper::body::Body for BusyBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
