//! S3 access keys: `/system/s3keys/{id}` holding the secret sealed by the cluster's
//! [`SecretBox`] (never in clear at rest, never logged), the buckets the key may use
//! (empty: all) and whether it may write. Lookups go through an in-memory map filled on
//! first use; a revocation removes the key from it at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rand::Rng;
use serde::{Deserialize, Serialize};
use verge_store::{DynStore, Expect, Labels};

use crate::error::{Error, Result};
use crate::secrets::SecretBox;

const PREFIX: &str = "/system/s3keys/";
/// Keys in all.
pub const MAX_KEYS: usize = 1_000;
/// Buckets one key may be limited to.
pub const MAX_KEY_BUCKETS: usize = 100;

/// What is stored per key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    /// The secret, sealed (`v1:…`).
    secret: String,
    #[serde(default)]
    buckets: Vec<String>,
    #[serde(default)]
    read_only: bool,
    created: String,
    #[serde(default)]
    description: Option<String>,
}

/// A key as the API lists it (no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyInfo {
    pub access_key_id: String,
    /// Buckets it may use; empty: every bucket.
    pub buckets: Vec<String>,
    pub read_only: bool,
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Only in the answer that creates the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key: Option<String>,
}

/// A request to make a key.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewKey {
    #[serde(default)]
    pub buckets: Vec<String>,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub description: Option<String>,
}

/// A key's scope, for the checks of each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub buckets: Vec<String>,
    pub read_only: bool,
}

impl Scope {
    pub fn allows_bucket(&self, bucket: &str) -> bool {
        self.buckets.is_empty() || self.buckets.iter().any(|b| b == bucket)
    }
}

pub struct AccessKeys {
    store: DynStore,
    sbox: Arc<SecretBox>,
    /// id -> (secret, scope); `None`: known not to exist.
    cache: Mutex<HashMap<String, Option<(String, Scope)>>>,
}

fn random_string(alphabet: &[u8], n: usize) -> String {
    let mut rng = rand::thread_rng();
    (0..n)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

/// AWS's shape: 20 characters, `VK` then uppercase letters and digits.
fn new_id() -> String {
    format!(
        "VK{}",
        random_string(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 18)
    )
}

fn is_id(s: &str) -> bool {
    s.len() == 20
        && s.starts_with("VK")
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

fn invalid(field: &str, message: impl Into<String>) -> Error {
    Error::Config(format!("{field}: {}", message.into()))
}

impl AccessKeys {
    pub fn new(store: DynStore, sbox: Arc<SecretBox>) -> Self {
        Self {
            store,
            sbox,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Checks a request (bucket names, description) before anything is written; the
    /// error names the field.
    pub fn check(req: &NewKey) -> std::result::Result<(), (String, String)> {
        if req.buckets.len() > MAX_KEY_BUCKETS {
            return Err((
                "buckets".into(),
                format!("at most {MAX_KEY_BUCKETS} buckets per key"),
            ));
        }
        for (i, b) in req.buckets.iter().enumerate() {
            verge_api::specs::check_bucket_name(b).map_err(|m| (format!("buckets[{i}]"), m))?;
        }
        if req.description.as_ref().is_some_and(|d| d.len() > 256) {
            return Err(("description".into(), "at most 256 bytes".into()));
        }
        Ok(())
    }

    /// Makes a key; the answer is the only place its secret is ever shown.
    pub async fn create(&self, req: NewKey) -> Result<KeyInfo> {
        Self::check(&req).map_err(|(f, m)| invalid(&f, m))?;
        let existing = self.store.list(PREFIX, None).await?.items.len();
        if existing >= MAX_KEYS {
            return Err(invalid(
                "accessKeyId",
                format!("at most {MAX_KEYS} keys; revoke some"),
            ));
        }
        let id = new_id();
        let secret = random_string(
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
            40,
        );
        let stored = Stored {
            secret: self
                .sbox
                .seal_value(&format!("s3key:{id}"), "secret", &secret)?,
            buckets: req.buckets.clone(),
            read_only: req.read_only,
            created: crate::auth::now_rfc3339(),
            description: req.description.clone(),
        };
        self.store
            .create(
                &format!("{PREFIX}{id}"),
                Bytes::from(serde_json::to_vec(&stored)?),
                Labels::new(),
            )
            .await?;
        Ok(KeyInfo {
            access_key_id: id,
            buckets: stored.buckets,
            read_only: stored.read_only,
            created: stored.created,
            description: stored.description,
            secret_access_key: Some(secret),
        })
    }

    pub async fn list(&self) -> Result<Vec<KeyInfo>> {
        let list = self.store.list(PREFIX, None).await?;
        let mut out = Vec::new();
        for kv in &list.items {
            let s: Stored = serde_json::from_slice(&kv.value)?;
            out.push(KeyInfo {
                access_key_id: kv.key[PREFIX.len()..].to_owned(),
                buckets: s.buckets,
                read_only: s.read_only,
                created: s.created,
                description: s.description,
                secret_access_key: None,
            });
        }
        Ok(out)
    }

    /// Revokes a key (`Ok(false)`: there was none).
    pub async fn revoke(&self, id: &str) -> Result<bool> {
        if !is_id(id) {
            return Ok(false);
        }
        let gone = match self
            .store
            .delete(&format!("{PREFIX}{id}"), Expect::Any)
            .await
        {
            Ok(_) => true,
            Err(verge_store::Error::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), None);
        Ok(gone)
    }

    /// The secret and scope of a key (`None`: no such key).
    pub async fn lookup(&self, id: &str) -> Result<Option<(String, Scope)>> {
        if !is_id(id) {
            return Ok(None);
        }
        if let Some(hit) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
        {
            return Ok(hit);
        }
        let found = match self.store.get(&format!("{PREFIX}{id}")).await? {
            None => None,
            Some(kv) => {
                let s: Stored = serde_json::from_slice(&kv.value)?;
                let secret = self
                    .sbox
                    .open_value(&format!("s3key:{id}"), "secret", &s.secret)?;
                Some((
                    secret,
                    Scope {
                        buckets: s.buckets,
                        read_only: s.read_only,
                    },
                ))
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        // Unknown ids are not remembered (a flood of made-up ids must not grow it).
        if found.is_some() {
            cache.insert(id.to_owned(), found.clone());
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn create_lookup_revoke_and_secret_sealed_at_rest() {
        let store: DynStore = Arc::new(verge_store::MemStore::new());
        let sbox = Arc::new(SecretBox::from_bytes(&[7; 32]).unwrap());
        let keys = AccessKeys::new(store.clone(), sbox);
        let made = keys
            .create(NewKey {
                buckets: vec!["uploads".into()],
                read_only: true,
                description: None,
            })
            .await
            .unwrap();
        assert!(is_id(&made.access_key_id));
        let secret = made.secret_access_key.clone().unwrap();
        let raw = store
            .get(&format!("{PREFIX}{}", made.access_key_id))
            .await
            .unwrap()
            .unwrap();
        assert!(!String::from_utf8_lossy(&raw.value).contains(&secret));
        let (s, scope) = keys.lookup(&made.access_key_id).await.unwrap().unwrap();
        assert_eq!(s, secret);
        assert!(scope.read_only && scope.allows_bucket("uploads") && !scope.allows_bucket("x"));
        assert!(keys.list().await.unwrap()[0].secret_access_key.is_none());
        assert!(keys.revoke(&made.access_key_id).await.unwrap());
        assert!(keys.lookup(&made.access_key_id).await.unwrap().is_none());
        assert!(keys.lookup("not-a-key").await.unwrap().is_none());
        assert_eq!(
            AccessKeys::check(&NewKey {
                buckets: vec!["Bad_Name".into()],
                ..Default::default()
            })
            .unwrap_err()
            .0,
            "buckets[0]"
        );
    }
}
