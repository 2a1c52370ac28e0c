//! Task callbacks: the result POSTed to the task's `callbackUrl`, signed with
//! HMAC-SHA256 under the cluster's callback key, retried with exponential backoff and
//! full jitter, dead-lettered (kept in the task's status) after [`MAX_ATTEMPTS`].
//!
//! Headers: `X-Verge-Signature: sha256=<hex HMAC of the body>`, `X-Verge-Task: <id>`,
//! `X-Verge-Delivery: <attempt>`. The key is `DATA_DIR/callback.key` (hex, 0600),
//! created at first start; receivers verify with it.

use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;

use crate::error::{Result, io_err};

/// Attempts before a callback is dead-lettered.
pub const MAX_ATTEMPTS: u32 = 5;
/// Per-attempt time limit (connect + answer).
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

/// Where the system's trusted CAs are (Debian `ca-certificates`), for https callbacks.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The client callbacks go out with: system roots for https, no redirects (a
/// redirect is a failed attempt: the signature was for this URL).
pub fn http_client() -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read(SYSTEM_ROOTS) {
        for cert in rustls_pemfile::certs(&mut pem.as_slice()).flatten() {
            let _ = roots.add(cert);
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let mut builder = reqwest::Client::builder()
        .connect_timeout(ATTEMPT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none());
    if let Ok(tls) = tls {
        builder = builder.use_preconfigured_tls(tls);
    }
    builder.build().unwrap_or_default()
}

/// One delivery attempt: `Ok(status)` on a 2xx answer; otherwise why it failed.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    key: &[u8],
    task: &str,
    attempt: u32,
    body: &[u8],
) -> std::result::Result<u16, (Option<u16>, String)> {
    let resp = client
        .post(url)
        .timeout(ATTEMPT_TIMEOUT)
        .header("content-type", "application/json")
        .header("x-verge-signature", sign(key, body))
        .header("x-verge-task", task)
        .header("x-verge-delivery", attempt.to_string())
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| {
            let what = if e.is_timeout() {
                format!("no answer within {} s", ATTEMPT_TIMEOUT.as_secs())
            } else {
                format!("{e}")
            };
            (None, what)
        })?;
    let code = resp.status().as_u16();
    if resp.status().is_success() {
        Ok(code)
    } else {
        Err((Some(code), format!("answered HTTP {code}")))
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
