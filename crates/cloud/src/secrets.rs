//! Secret values at rest, and what each reader of a Secret gets (decision 017).
//!
//! - [`SecretBox`] holds the cluster's secret key — `DATA_DIR/secret.key`, 32 random
//!   bytes as hex, mode 0600, made at first start — and encrypts each value of a
//!   Secret's `spec.data` on its own with ChaCha20-Poly1305 (`ring::aead`): a fresh
//!   random 96-bit nonce per value, and the Secret's name and the value's key as
//!   associated data, so a ciphertext moved to another key or another Secret does not
//!   open. A stored value reads `v1:{key id}:{base64url(nonce ‖ ciphertext ‖ tag)}`;
//!   the key id (8 hex digits of the key's SHA-256) says which key sealed it.
//! - [`SecretBox::seal_object`] runs before a Secret reaches the store (the HTTP
//!   write path), [`SecretBox::open_data`] where a value is needed (desired-state sync
//!   to the nodes that run what references it, the cloud's own function runtime).
//! - [`SecretView`]: what an API reader gets: viewers the keys with every value `""`
//!   ([`verge_api::specs::redacted`]), operators and admins the values.
//!
//! This module must never log or format a value, and never hand one to anything but
//! the callers above.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;
use sha2::Digest;
use verge_api::specs::{ANNOTATION_SECRET_ERROR, redacted};
use verge_api::{Kind, Object};

use crate::auth::Role;
use crate::error::{Error, Result, io_err};

/// File of the secret key in the data directory.
pub const KEY_FILE: &str = "secret.key";
/// Version prefix of a sealed value.
const SEALED_V1: &str = "v1";
/// Domain of the associated data: `verge.secret.v1\0{name}\0{key}`.
const AAD_DOMAIN: &[u8] = b"verge.secret.v1";

/// The cluster's secret key and the AEAD over Secret values.
pub struct SecretBox {
    key: LessSafeKey,
    id: String,
    rng: SystemRandom,
}

fn aad(name: &str, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(AAD_DOMAIN.len() + name.len() + key.len() + 2);
    out.extend_from_slice(AAD_DOMAIN);
    out.push(0);
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    out.extend_from_slice(key.as_bytes());
    out
}

impl SecretBox {
    /// A box over these 32 key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, bytes)
            .map_err(|_| Error::Secret("cannot use the key".into()))?;
        let digest = sha2::Sha256::digest(bytes);
        Ok(Self {
            key: LessSafeKey::new(unbound),
            id: hex::encode(&digest[..4]),
            rng: SystemRandom::new(),
        })
    }

    /// Loads `data_dir/secret.key`, or makes it (32 random bytes, 0600) when missing.
    /// A file that is not 64 hex digits is an error naming it: a wrong key must not be
    /// silently replaced, or every stored Secret would be lost.
    pub fn load_or_create(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let bytes: [u8; 32] = hex::decode(s.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        Error::Config(format!(
                            "{}: expected 64 hexadecimal digits (a 32-byte key)",
                            path.display()
                        ))
                    })?;
                Self::from_bytes(&bytes)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut bytes)
                    .map_err(|_| Error::Secret("no randomness for a new key".into()))?;
                crate::secure_fs::write_private(
                    &path,
                    format!("{}\n", hex::encode(bytes)).as_bytes(),
                )?;
                tracing::info!(path = %path.display(), "created the secret key");
                Self::from_bytes(&bytes)
            }
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    /// Which key this is (8 hex digits of its SHA-256), as written in sealed values.
    pub fn key_id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext`, the value of `key` in the Secret `name`.
    pub fn seal_value(&self, name: &str, key: &str, plaintext: &str) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| Error::Secret("no randomness for a nonce".into()))?;
        let mut buf = plaintext.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name, key)),
                &mut buf,
            )
            .map_err(|_| Error::Secret(format!("cannot seal {name}/{key}")))?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&buf);
        Ok(format!(
            "{SEALED_V1}:{}:{}",
            self.id,
            URL_SAFE_NO_PAD.encode(out)
        ))
    }

    /// Decrypts a value [`Self::seal_value`] made for `key` of `name`. The error says
    /// why (another key sealed it, it was altered or moved), never what it holds.
    pub fn open_value(&self, name: &str, key: &str, sealed: &str) -> Result<String> {
        let fail = |why: &str| Error::Secret(format!("{name}/{key}: {why}"));
        let mut parts = sealed.splitn(3, ':');
        let (Some(SEALED_V1), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("not a sealed value"));
        };
        if id != self.id {
            return Err(fail(&format!(
                "sealed with key {id}, but this cloud's {KEY_FILE} is key {}",
                self.id
            )));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| fail("not a sealed value"))?;
        if raw.len() < NONCE_LEN {
            return Err(fail("not a sealed value"));
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| fail("bad nonce"))?;
        let mut buf = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad(name, key)), &mut buf)
            .map_err(|_| fail("does not decrypt (altered, or moved from another secret)"))?;
        String::from_utf8(plain.to_vec()).map_err(|_| fail("not UTF-8 text"))
    }

    /// The object to store for a Secret: every `spec.data` value sealed. Other kinds
    /// are returned as they are.
    pub fn seal_object(&self, obj: &Object) -> Result<Object> {
        if obj.kind != Kind::Secret.name() {
            return Ok(obj.clone());
        }
        let mut out = obj.clone();
        if let Some(data) = out.spec.get_mut("data").and_then(Value::as_object_mut) {
            for (k, v) in data.iter_mut() {
                let plain = v.as_str().unwrap_or_default();
                *v = Value::String(self.seal_value(&obj.metadata.name, k, plain)?);
            }
        }
        Ok(out)
    }

    /// The values of a stored Secret named `name` (`spec` as stored), and the reasons
    /// of the values that did not open (left out).
    pub fn open_data(&self, name: &str, spec: &Value) -> (BTreeMap<String, String>, Vec<String>) {
        let mut values = BTreeMap::new();
        let mut errors = Vec::new();
        if let Some(data) = spec.get("data").and_then(Value::as_object) {
            for (k, v) in data {
                match self.open_value(name, k, v.as_str().unwrap_or_default()) {
                    Ok(plain) => {
                        values.insert(k.clone(), plain);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
        }
        (values, errors)
    }

    /// A stored Secret with its values opened, for a reader allowed to see them. A
    /// value that does not open is shown as `""`, and the object then carries
    /// [`ANNOTATION_SECRET_ERROR`] (why) and is marked redacted, so writing it back is
    /// refused rather than storing empty values.
    pub fn open_object(&self, stored: &Object) -> Object {
        let (values, errors) = self.open_data(&stored.metadata.name, &stored.spec);
        let mut out = if errors.is_empty() {
            stored.clone()
        } else {
            let mut r = redacted(stored);
            r.metadata
                .annotations
                .insert(ANNOTATION_SECRET_ERROR.into(), errors.join("; "));
            r
        };
        if let Some(data) = out.spec.get_mut("data").and_then(Value::as_object_mut) {
            for (k, v) in data.iter_mut() {
                *v = Value::String(values.get(k).cloned().unwrap_or_default());
            }
        }
        out
    }
}

/// What a reader of Secrets through the API gets: viewers never see values; operators
/// and admins do (they can deploy code that reads any Secret anyway — decision 017).
#[derive(Clone)]
pub struct SecretView {
    role: Role,
    sbox: Arc<SecretBox>,
}

impl SecretView {
    /// `None` for kinds other than Secret: their objects are shown as stored.
    pub fn new(kind: Kind, role: Role, sbox: &Arc<SecretBox>) -> Option<Self> {
        (kind == Kind::Secret).then(|| Self {
            role,
            sbox: sbox.clone(),
        })
    }

    pub fn reveals_values(&self) -> bool {
        matches!(self.role, Role::Admin | Role::Operator)
    }

    /// The stored object as this reader may see it.
    pub fn show(&self, stored: &Object) -> Object {
        if self.reveals_values() {
            self.sbox.open_object(stored)
        } else {
            redacted(stored)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use verge_api::specs::ANNOTATION_REDACTED;

    fn sbox(b: u8) -> Arc<SecretBox> {
        Arc::new(SecretBox::from_bytes(&[b; 32]).unwrap())
    }

    fn secret(name: &str, data: &[(&str, &str)]) -> Object {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "verge.dev/v1", "kind": "Secret", "metadata": {"name": name},
            "spec": {"data": data.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect::<serde_json::Map<_, _>>()}
        }))
        .unwrap()
    }

    #[test]
    fn values_round_trip_with_a_fresh_nonce_each_time() {
        let b = sbox(1);
        let a1 = b.seal_value("db", "password", "hunter2").unwrap();
        let a2 = b.seal_value("db", "password", "hunter2").unwrap();
        assert_ne!(
            a1, a2,
            "the same value sealed twice must differ (fresh nonce)"
        );
        assert!(a1.starts_with(&format!("v1:{}:", b.key_id())));
        assert!(!a1.contains("hunter2"));
        assert_eq!(b.open_value("db", "password", &a1).unwrap(), "hunter2");
        assert_eq!(b.open_value("db", "password", &a2).unwrap(), "hunter2");
        let empty = b.seal_value("db", "e", "").unwrap();
        assert_eq!(b.open_value("db", "e", &empty).unwrap(), "");
    }

    #[test]
    fn a_value_does_not_open_under_another_name_key_or_cluster_key() {
        let b = sbox(1);
        let sealed = b.seal_value("db", "password", "hunter2").unwrap();
        for (name, key) in [("other", "password"), ("db", "username")] {
            let e = b.open_value(name, key, &sealed).unwrap_err().to_string();
            assert!(e.contains("does not decrypt"), "{e}");
            assert!(!e.contains("hunter2"));
        }
        let e = sbox(2)
            .open_value("db", "password", &sealed)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("sealed with key {}", b.key_id())),
            "{e}"
        );
        // Same key id, one byte altered.
        let mut raw = URL_SAFE_NO_PAD
            .decode(sealed.rsplit(':').next().unwrap())
            .unwrap();
        raw[NONCE_LEN] ^= 1;
        let altered = format!("v1:{}:{}", b.key_id(), URL_SAFE_NO_PAD.encode(raw));
        assert!(b.open_value("db", "password", &altered).is_err());
        for junk in [
            "",
            "hunter2",
            "v1:",
            "v1:x:y",
            &format!("v1:{}:AA", b.key_id()),
        ] {
            assert!(b.open_value("db", "password", junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn objects_are_sealed_for_the_store_and_opened_or_redacted_for_readers() {
        let b = sbox(3);
        let plain = secret("db", &[("password", "hunter2"), ("user", "bob")]);
        let stored = b.seal_object(&plain).unwrap();
        let text = serde_json::to_string(&stored).unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("\"bob\""),
            "{text}"
        );
        assert!(
            stored.spec["data"]["user"]
                .as_str()
                .unwrap()
                .starts_with("v1:")
        );

        let admin = SecretView::new(Kind::Secret, Role::Admin, &b).unwrap();
        let operator = SecretView::new(Kind::Secret, Role::Operator, &b).unwrap();
        let viewer = SecretView::new(Kind::Secret, Role::Viewer, &b).unwrap();
        assert_eq!(admin.show(&stored), plain);
        assert_eq!(operator.show(&stored), plain);
        let v = viewer.show(&stored);
        assert_eq!(
            v.spec,
            serde_json::json!({"data": {"password": "", "user": ""}})
        );
        assert_eq!(v.metadata.annotations[ANNOTATION_REDACTED], "true");
        assert!(SecretView::new(Kind::Config, Role::Viewer, &b).is_none());

        // Another cluster key: shown empty, marked, with the reason (no value).
        let other = sbox(4).open_object(&stored);
        assert_eq!(other.spec["data"]["password"], "");
        assert!(other.metadata.annotations[ANNOTATION_SECRET_ERROR].contains("sealed with key"));
        assert_eq!(other.metadata.annotations[ANNOTATION_REDACTED], "true");
        let (values, errors) = b.open_data("db", &stored.spec);
        assert_eq!(values["password"], "hunter2");
        assert!(errors.is_empty());

        // A value moved between Secrets does not open there.
        let mut swapped = b.seal_object(&secret("web", &[("password", "x")])).unwrap();
        swapped.spec["data"]["password"] = stored.spec["data"]["password"].clone();
        let (values, errors) = b.open_data("web", &swapped.spec);
        assert!(values.is_empty() && errors.len() == 1, "{errors:?}");

        let config = Object {
            kind: "Config".into(),
            ..plain.clone()
        };
        assert_eq!(b.seal_object(&config).unwrap(), config);
    }

    #[test]
    fn the_key_file_is_made_once_private_and_a_bad_one_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = SecretBox::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = first.seal_value("db", "k", "v").unwrap();
        let again = SecretBox::load_or_create(dir.path()).unwrap();
        assert_eq!(again.key_id(), first.key_id());
        assert_eq!(again.open_value("db", "k", &sealed).unwrap(), "v");
        std::fs::write(&path, "not hex\n").unwrap();
        let e = SecretBox::load_or_create(dir.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("secret.key") && e.contains("64 hexadecimal"),
            "{e}"
        );
    }
}
