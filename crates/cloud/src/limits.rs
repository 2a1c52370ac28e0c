//! The connection limits of the cloud's listeners (the HTTPS API, which also serves
//! `/img` and `/api/v1/join`, and the embedded MQTT gateway), the watch cap and the
//! global join rate — with their defaults, in this one place (decision 012) — and the
//! pure fitting of the connection caps to the process's open-file limit.
//!
//! Owns values only: admission is `admission.rs`, the accept loops are `http/serve.rs`
//! and `gateway/`. Nothing here opens a socket.

use std::time::Duration;

/// What a listener tolerates from a connection, and how many it holds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time allowed for a TLS handshake (API and MQTT gateway).
    pub tls_handshake_timeout: Duration,
    /// HTTP/1: time allowed for a request's headers, also while a keep-alive connection
    /// waits for its next request. Any connection that has not started a request within
    /// `tls_handshake_timeout + header_read_timeout` of being accepted is closed too
    /// (that also covers a stalled HTTP/2 preface).
    pub header_read_timeout: Duration,
    /// A connection with no request in flight (HTTP/2 idle), or whose writes have made
    /// no progress (a client that stopped reading), for this long is closed.
    pub idle_timeout: Duration,
    /// HTTP/2 keep-alive: a PING this often; no answer within 20 s closes the connection.
    pub http2_keepalive_interval: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub http2_max_streams: u32,
    /// Connections the API listener holds at once (all sources); when full, the
    /// connection idle longest is closed to make room, else the newcomer is refused.
    pub max_connections: usize,
    /// Connections the API listener holds from one source address (an IPv4 address or
    /// an IPv6 /64); more are refused at once.
    pub max_connections_per_ip: usize,
    /// Connections the MQTT gateway holds at once; when full, the oldest one that has
    /// not yet sent its CONNECT is closed to make room, else the newcomer is refused.
    pub mqtt_max_connections: usize,
    /// MQTT connections from one source address (nodes behind one NAT share it).
    pub mqtt_max_connections_per_ip: usize,
    /// Watch streams one token may have open at once (429 beyond).
    pub max_watches_per_token: usize,
    /// Joins per second, all sources together, that passed the bootstrap-token check
    /// (burst 4x): bounds the CPU spent signing CSRs.
    pub join_rate_global: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            http2_keepalive_interval: Duration::from_secs(30),
            http2_max_streams: 100,
            max_connections: 4096,
            max_connections_per_ip: 256,
            mqtt_max_connections: 100_000,
            mqtt_max_connections_per_ip: 1024,
            max_watches_per_token: 64,
            join_rate_global: 200.0,
        }
    }
}

impl Limits {
    /// The first limit that cannot work, named as its `verge cloud` flag.
    pub fn check(&self) -> Result<(), String> {
        let durations = [
            ("--tls-handshake-timeout", self.tls_handshake_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--http2-keepalive-interval", self.http2_keepalive_interval),
        ];
        for (flag, d) in durations {
            if d.is_zero() {
                return Err(format!("{flag} must be more than zero"));
            }
        }
        let counts = [
            ("--http2-max-streams", self.http2_max_streams as usize),
            ("--max-connections", self.max_connections),
            ("--max-connections-per-ip", self.max_connections_per_ip),
            ("--mqtt-max-connections", self.mqtt_max_connections),
            (
                "--mqtt-max-connections-per-ip",
                self.mqtt_max_connections_per_ip,
            ),
            ("--max-watches-per-token", self.max_watches_per_token),
        ];
        for (flag, n) in counts {
            if n == 0 {
                return Err(format!("{flag} must be at least 1"));
            }
        }
        if !(self.join_rate_global.is_finite() && self.join_rate_global > 0.0) {
            return Err("--join-rate-global must be a positive number".into());
        }
        Ok(())
    }
}

/// Open files kept free for everything that is not a client connection (the store,
/// artifacts, function workers, outbound requests, logs): 256 plus 1% of the limit.
pub fn reserved_files(open_files: u64) -> u64 {
    256 + open_files / 100
}

/// Fits the API's and the MQTT gateway's connection caps into the open-file limit
/// (`mqtt` is 0 when the gateway is off), so that full listeners never starve the
/// process of file descriptors (EMFILE would stop the accept loop answering anyone).
/// Unchanged when both fit; otherwise the gateway gets at most three quarters of the
/// budget and the API what is left (at least one each).
pub fn fit_to_open_files(api: usize, mqtt: usize, open_files: u64) -> (usize, usize) {
    let budget = open_files.saturating_sub(reserved_files(open_files));
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    if api.saturating_add(mqtt) <= budget {
        return (api, mqtt);
    }
    let mqtt_share = mqtt.min(budget / 4 * 3);
    let api = api.min(budget - mqtt_share).max(1);
    let mqtt = if mqtt == 0 {
        0
    } else {
        mqtt.min(budget.saturating_sub(api)).max(1)
    };
    (api, mqtt)
}

/// The process's soft open-file limit (`None` if it cannot be read or is unlimited).
pub fn open_files_limit() -> Option<u64> {
    let (soft, _) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(Limits::default().check(), Ok(()));
    }

    #[test]
    fn check_names_the_flag() {
        let l = Limits {
            max_connections_per_ip: 0,
            ..Limits::default()
        };
        assert!(l.check().unwrap_err().contains("--max-connections-per-ip"));
        let l = Limits {
            idle_timeout: Duration::ZERO,
            ..Limits::default()
        };
        assert!(l.check().unwrap_err().contains("--idle-timeout"));
        let l = Limits {
            join_rate_global: f64::NAN,
            ..Limits::default()
        };
        assert!(l.check().unwrap_err().contains("--join-rate-global"));
    }

    #[test]
    fn caps_that_fit_are_kept() {
        assert_eq!(fit_to_open_files(4096, 100_000, 1 << 20), (4096, 100_000));
        assert_eq!(fit_to_open_files(64, 19_000, 20_000), (64, 19_000));
    }

    #[test]
    fn caps_are_fitted_to_a_small_limit() {
        // 20,000 open files: 456 reserved, 19,544 for connections.
        assert_eq!(fit_to_open_files(4096, 100_000, 20_000), (4096, 15_448));
        // The classic 1,024: 266 reserved, 758 shared.
        let (api, mqtt) = fit_to_open_files(4096, 100_000, 1024);
        assert_eq!((api, mqtt), (191, 567));
        assert!(api + mqtt <= 1024 - 266);
        // No gateway: the API may use the whole budget.
        assert_eq!(fit_to_open_files(4096, 0, 1024), (758, 0));
        // A small gateway leaves the rest to the API.
        assert_eq!(fit_to_open_files(4096, 100, 1024), (658, 100));
    }

    #[test]
    fn absurd_limits_still_leave_one_each() {
        assert_eq!(fit_to_open_files(4096, 100_000, 10), (1, 1));
        assert_eq!(fit_to_open_files(4096, 0, 0), (1, 0));
    }
}
