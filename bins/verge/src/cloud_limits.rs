//! The `verge cloud` flags for connection limits, watch and join caps (decision 012):
//! parsing only. The defaults shown in `--help` are read from
//! `verge_cloud::limits::Limits::default()` (and `GatewayConfig::default()`), the one
//! place they are set.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use verge_cloud::CloudConfig;
use verge_cloud::gateway::GatewayConfig;
use verge_cloud::limits::Limits;

/// A duration flag in whole seconds, minutes, hours or days (`10s`, `2m`).
#[derive(Debug, Clone, Copy)]
pub struct Dur(pub Duration);

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}s", self.0.as_secs())
    }
}

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        crate::commands::parse_duration(s)
            .map(Dur)
            .map_err(|e| e.to_string())
    }
}

fn d() -> Limits {
    Limits::default()
}

#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Time allowed for a TLS handshake, on the API and the MQTT gateway.
    #[arg(long, default_value_t = Dur(d().tls_handshake_timeout))]
    tls_handshake_timeout: Dur,
    /// Time allowed for an HTTP/1 request's headers (also how long an idle keep-alive
    /// connection is kept); a connection with no request started within the handshake
    /// timeout plus this is closed.
    #[arg(long, default_value_t = Dur(d().header_read_timeout))]
    header_read_timeout: Dur,
    /// A connection with no request in flight (HTTP/2), or whose client stopped
    /// reading, for this long is closed.
    #[arg(long, default_value_t = Dur(d().idle_timeout))]
    idle_timeout: Dur,
    /// HTTP/2 keep-alive PING period (no answer within 20 s closes the connection).
    #[arg(long, default_value_t = Dur(d().http2_keepalive_interval))]
    http2_keepalive_interval: Dur,
    /// Concurrent HTTP/2 streams per connection.
    #[arg(long, default_value_t = d().http2_max_streams)]
    http2_max_streams: u32,
    /// API connections held at once; when full, the longest-idle one is closed to make
    /// room (lowered to fit the open-file limit).
    #[arg(long, default_value_t = d().max_connections)]
    max_connections: usize,
    /// API connections from one source address (IPv6: one /64); more are refused.
    #[arg(long, default_value_t = d().max_connections_per_ip)]
    max_connections_per_ip: usize,
    /// MQTT gateway connections held at once; when full, the oldest not yet past
    /// CONNECT is closed to make room (lowered to fit the open-file limit).
    #[arg(long, default_value_t = d().mqtt_max_connections)]
    mqtt_max_connections: usize,
    /// MQTT connections from one source address (nodes behind one NAT share it).
    #[arg(long, default_value_t = d().mqtt_max_connections_per_ip)]
    mqtt_max_connections_per_ip: usize,
    /// Time allowed for a node's CONNECT packet after the TLS handshake.
    #[arg(long, default_value_t = Dur(GatewayConfig::default().connect_timeout))]
    mqtt_connect_timeout: Dur,
    /// Watch streams one token may hold open at once (429 beyond).
    #[arg(long, default_value_t = d().max_watches_per_token)]
    max_watches_per_token: usize,
    /// Joins per second from all addresses together, once the token is verified
    /// (burst 4x): bounds the CPU spent signing CSRs.
    #[arg(long, default_value_t = d().join_rate_global)]
    join_rate_global: f64,
}

impl LimitArgs {
    /// Sets the limits on `cfg`; the cloud checks the rest at start (`Limits::check`).
    pub fn apply(&self, cfg: &mut CloudConfig) -> anyhow::Result<()> {
        if self.mqtt_connect_timeout.0.is_zero() {
            anyhow::bail!("--mqtt-connect-timeout must be more than zero");
        }
        cfg.limits = Limits {
            tls_handshake_timeout: self.tls_handshake_timeout.0,
            header_read_timeout: self.header_read_timeout.0,
            idle_timeout: self.idle_timeout.0,
            http2_keepalive_interval: self.http2_keepalive_interval.0,
            http2_max_streams: self.http2_max_streams,
            max_connections: self.max_connections,
            max_connections_per_ip: self.max_connections_per_ip,
            mqtt_max_connections: self.mqtt_max_connections,
            mqtt_max_connections_per_ip: self.mqtt_max_connections_per_ip,
            max_watches_per_token: self.max_watches_per_token,
            join_rate_global: self.join_rate_global,
        };
        cfg.gateway.connect_timeout = self.mqtt_connect_timeout.0;
        Ok(())
    }
}
