//! The accept loop: plain TCP or TLS (rustls), HTTP/1.1 and HTTP/2 (hyper-util auto),
//! graceful shutdown as an input (first signal: stop accepting, let connections finish
//! for up to `drain`; then return).
//!
//! The TLS listener asks for an optional client certificate (verified against the
//! cluster CA, see `pki::server_tls_config`); when a node presents one, its identity is
//! attached to every request of the connection as a [`PeerNode`] extension. Clients
//! without a certificate (bearer tokens) are served as before.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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

pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let live = Arc::new(());
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
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let conn_shutdown = shutdown.clone();
        let token = live.clone();
        tokio::spawn(async move {
            let _token = token;
            match acceptor {
                Some(acc) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acc.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let node = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(crate::gateway::node_identity)
                                .map(|(name, serial)| PeerNode { name, serial });
                            drive(tls, app, node, conn_shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
                        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                    }
                }
                None => drive(tcp, app, None, conn_shutdown).await,
            }
        });
    }
    drop(listener);
    let deadline = tokio::time::Instant::now() + drain;
    while Arc::strong_count(&live) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves one connection until it ends or shutdown asks it to drain; `node` (the
/// client certificate's identity) goes into every request's extensions.
async fn drive<I>(io: I, app: Router, node: Option<PeerNode>, mut shutdown: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let node = node.map(Arc::new);
    let app = app.map_request(move |mut req: http::Request<hyper::body::Incoming>| {
        if let Some(n) = &node {
            req.extensions_mut().insert(PeerNode::clone(n));
        }
        req
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = shutdown.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}
