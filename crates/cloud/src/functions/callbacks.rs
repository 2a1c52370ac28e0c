//! Task callbacks: the result POSTed to the task's `callbackUrl`, signed with
//! HMAC-SHA256 under the cluster's callback key, retried with exponential backoff and
//! full jitter, dead-lettered (kept in the task's status) after [`MAX_ATTEMPTS`].
//!
//! Headers: `X-Verge-Signature: sha256=<hex HMAC of the body>`, `X-Verge-Task: <id>`,
//! `X-Verge-Delivery: <attempt>`. The key is `DATA_DIR/callback.key` (hex, 0600),
//! created at first start; receivers verify with it.
//!
//! The URL is the user's: every attempt goes through the outbound guard
//! (`verge_outbound`, [`http_client`]): public addresses only unless the operator
//! allowed a network, no redirects. What the task's status says about a failed attempt
//! is the answer's HTTP status or [`NOT_DELIVERED`] — never why a destination without
//! an answer failed (refused, connection refused, timeout, TLS); that detail goes to the
//! cloud's log at debug level only.

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use verge_outbound::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use crate::error::{Result, io_err};

/// Attempts before a callback is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;
/// Per-attempt time limit (connect, send, answer).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff base and cap.
const BASE: Duration = Duration::from_millis(500);
const CAP: Duration = Duration::from_secs(30);

pub const KEY_FILE: &str = "callback.key";

/// The signing key: loaded from `data_dir/callback.key`, or created (32 random bytes).
pub fn load_or_create_key(data_dir: &Path) -> Result<Vec<u8>> {
    let path = data_dir.join(KEY_FILE);
    match std::fs::read_to_string(&path) {
        Ok(s) => hex::decode(s.trim())
            .map_err(|e| crate::Error::Config(format!("{}: not a hex key: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key: [u8; 32] = rand::thread_rng().r#gen();
            crate::secure_fs::write_private(&path, format!("{}\n", hex::encode(key)).as_bytes())?;
            Ok(key.to_vec())
        }
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// `sha256=<hex>` of `body` under `key`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Delay before attempt `attempt` (1-based, > 1): full jitter over
/// `min(CAP, BASE * 2^(attempt-2))`.
pub fn backoff(attempt: u32) -> Duration {
    let exp = BASE.saturating_mul(1u32 << attempt.saturating_sub(2).min(16));
    let ceiling = exp.min(CAP);
    let ms =
        rand::thread_rng().gen_range(ceiling.as_millis() as u64 / 2..=ceiling.as_millis() as u64);
    Duration::from_millis(ms)
}

/// What a task's status says about an attempt that got no HTTP answer, whatever the
/// reason.
pub const NOT_DELIVERED: &str = "callback failed: destination not allowed or unreachable";

/// Most of an answer read (only its status matters).
const MAX_ANSWER_BYTES: u64 = 4096;

/// The client callbacks go out with: the outbound guard with public addresses only,
/// plus `allow_networks` (IPs or CIDRs) and, when not empty, only the hosts on
/// `allow_hosts`; system roots for https; no redirects (a redirect is an answer, and a
/// failed attempt: the signature was for this URL); [`ATTEMPT_TIMEOUT`] over each
/// attempt. Fails naming a bad allow-list entry.
pub fn http_client(
    allow_networks: &[String],
    allow_hosts: &[String],
) -> Result<verge_outbound::Client> {
    verge_outbound::Client::new(verge_outbound::Policy {
        allow_networks: allow_networks.to_vec(),
        allow_hosts: allow_hosts.to_vec(),
        max_bytes: MAX_ANSWER_BYTES,
        follow_redirects: false,
        timeout: ATTEMPT_TIMEOUT,
        connect_timeout: ATTEMPT_TIMEOUT,
        ..verge_outbound::Policy::default()
    })
    .map_err(|e| crate::Error::Config(format!("outbound requests: {e}")))
}

/// One delivery attempt: `Ok(status)` on a 2xx answer; otherwise the answer's status, if
/// there was one, and what the task's status may say.
pub async fn deliver(
    client: &verge_outbound::Client,
    url: &str,
    key: &[u8],
    task: &str,
    attempt: u32,
    body: &[u8],
) -> std::result::Result<u16, (Option<u16>, String)> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let signed = [
        ("x-verge-signature", sign(key, body)),
        ("x-verge-task", task.to_owned()),
        ("x-verge-delivery", attempt.to_string()),
    ];
    for (name, value) in signed {
        // Task names and hex digests are always valid header values.
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    match client.post(url, headers, body.to_vec()).await {
        Ok(answer) if (200..300).contains(&answer.status) => Ok(answer.status),
        Ok(answer) => Err((
            Some(answer.status),
            format!("callback failed: answered HTTP {}", answer.status),
        )),
        Err(e) => {
            tracing::debug!(%task, attempt, error = %e, "callback attempt got no answer");
            let shown = match e {
                // The URL's own form says nothing about the network.
                verge_outbound::Error::InvalidUrl(_) => {
                    format!("callback failed: {}", e.redacted())
                }
                _ => NOT_DELIVERED.to_owned(),
            };
            Err((None, shown))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        for _ in 0..100 {
            let b2 = backoff(2);
            assert!(b2 >= Duration::from_millis(250) && b2 <= BASE, "{b2:?}");
            assert!(backoff(30) <= CAP);
        }
        assert!(backoff(5) >= Duration::from_secs(2));
    }

    #[test]
    fn bad_allow_lists_are_refused_by_name() {
        let err = http_client(&["10.0.0.0/33".into()], &[]).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/33"), "{err}");
        let err = http_client(&[], &["a*.example.com".into()]).unwrap_err();
        assert!(err.to_string().contains("allow_hosts"), "{err}");
        assert!(http_client(&["127.0.0.1/32".into()], &["hooks.example.com".into()]).is_ok());
    }

    #[tokio::test]
    async fn attempts_without_an_answer_read_the_same() {
        // Nothing is listening and nothing is allowed: refused before connecting; the
        // same words for a loopback port, a private and a link-local address.
        let client = http_client(&[], &[]).unwrap();
        for url in [
            "http://127.0.0.1:1/hook",
            "http://10.255.255.1:9/hook",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:1/hook",
        ] {
            let got = deliver(&client, url, b"k", "t", 1, b"{}").await;
            assert_eq!(got, Err((None, NOT_DELIVERED.to_owned())), "{url}");
        }
    }

    #[test]
    fn key_is_created_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let k1 = load_or_create_key(dir.path()).unwrap();
        assert_eq!(k1.len(), 32);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create_key(dir.path()).unwrap(), k1);
    }
}
