//! Bearer-token authentication and role-based authorization.
//!
//! A token is `{id}.{secret}`. Only `sha256(secret)` is stored (under
//! `/system/tokens/{id}` in the store); the secret is shown once, at creation.
//! Secrets are 32 random alphanumerics (~190 bits), so a fast hash is appropriate;
//! comparison is constant-time. Tokens carry a role, an optional expiry and may be
//! revoked (the record is kept, marked revoked, so `token list` shows it).
//!
//! Denials are logged with the token id and the reason, never the secret.
//!
//! The admins can never lock themselves out: revoking a token is refused (409) when it
//! would leave no valid admin token, or no valid admin token without an expiry (the
//! "lifeline": tokens cannot be changed after creation, so while one lifeline exists an
//! admin token is always valid). [`revoke_refusal`] is that rule as a pure function.
//! Shell access to the data dir recovers from anything else (`verge cloud
//! recover-admin`, [`crate::recover`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use verge_api::Reason;
use verge_store::{DynStore, Expect};

use crate::error::ApiError;

pub const TOKEN_PREFIX: &str = "/system/tokens/";
const ID_LEN: usize = 8;
const SECRET_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including tokens.
    Admin,
    /// Read and write every resource; no token management.
    Operator,
    /// Read-only.
    #[default]
    Viewer,
    /// Only accepted by the edge join endpoint; no API access.
    Bootstrap,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "viewer" => Some(Role::Viewer),
            "bootstrap" => Some(Role::Bootstrap),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Bootstrap => "bootstrap",
        }
    }

    pub fn can_write_resources(self) -> bool {
        matches!(self, Role::Admin | Role::Operator)
    }

    pub fn can_manage_tokens(self) -> bool {
        self == Role::Admin
    }
}

/// What the store holds for a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    pub role: Role,
    /// Hex SHA-256 of the secret part.
    pub secret_sha256: String,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Bootstrap tokens: joins left (absent = unlimited until expiry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
    /// Bootstrap tokens: labels given to every node that joins with it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What the API shows about a token (never the hash or the secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<u32>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The full token `id.secret`; present only in the answer to its creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl From<&TokenRecord> for TokenInfo {
    fn from(r: &TokenRecord) -> Self {
        TokenInfo {
            id: r.id.clone(),
            role: r.role,
            created_at: r.created_at.clone(),
            expires_at: r.expires_at.clone(),
            revoked_at: r.revoked_at.clone(),
            description: r.description.clone(),
            uses_left: r.uses_left,
            labels: r.labels.clone(),
            token: None,
        }
    }
}

/// Body of `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenCreateRequest {
    pub role: Role,
    /// Lifetime in seconds; absent = never expires.
    #[serde(default)]
    pub ttl_seconds: Option<u64>,
    #[serde(default)]
    pub description: Option<String>,
    /// Bootstrap tokens only: how many nodes may join with it.
    #[serde(default)]
    pub uses: Option<u32>,
    /// Bootstrap tokens only: labels for the nodes that join with it.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// What a new token should be.
#[derive(Debug, Clone, Default)]
pub struct NewToken {
    pub role: Role,
    pub ttl: Option<Duration>,
    pub description: Option<String>,
    pub uses: Option<u32>,
    pub labels: BTreeMap<String, String>,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub role: Role,
}

pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| OffsetDateTime::now_utc())
        .format(&Rfc3339)
        .unwrap_or_default()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_string(len: usize, lowercase: bool) -> String {
    let s: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    if lowercase { s.to_ascii_lowercase() } else { s }
}

fn deny(id: &str, why: &'static str) -> ApiError {
    tracing::warn!(token_id = id, reason = why, "authentication denied");
    ApiError::new(Reason::Unauthorized, why)
}

/// Token verification against an in-memory cache of the stored records. The cache is
/// loaded at start-up and updated by every change made through this type (the API
/// server is the only writer of tokens).
pub struct Authenticator {
    store: DynStore,
    cache: RwLock<HashMap<String, TokenRecord>>,
    /// Serializes revocations, so two concurrent ones cannot each leave the other as
    /// the last admin token and both succeed.
    revoking: tokio::sync::Mutex<()>,
}

/// Whether `rec` lets its holder in at `now` (not revoked, not expired).
fn is_valid_at(rec: &TokenRecord, now: OffsetDateTime) -> bool {
    rec.revoked_at.is_none()
        && rec
            .expires_at
            .as_ref()
            .is_none_or(|exp| OffsetDateTime::parse(exp, &Rfc3339).is_ok_and(|t| t > now))
}

/// Why revoking token `id` must be refused, if it must: it is a valid admin token and
/// revoking it would leave no other valid admin token, or it never expires and every
/// other valid admin token does. `None`: revoking it is fine (another admin remains,
/// or it is not a valid admin token at all).
pub fn revoke_refusal<'a>(
    tokens: impl IntoIterator<Item = &'a TokenRecord>,
    id: &str,
    now: OffsetDateTime,
) -> Option<String> {
    let admins: Vec<&TokenRecord> = tokens
        .into_iter()
        .filter(|r| r.role == Role::Admin && is_valid_at(r, now))
        .collect();
    let target = admins.iter().find(|r| r.id == id)?;
    let others: Vec<&TokenRecord> = admins.iter().copied().filter(|r| r.id != id).collect();
    if others.is_empty() {
        return Some(format!(
            "token {id} is the last valid admin token: revoking it would lock every admin out; \
             create another admin token first (verge token create --role admin)"
        ));
    }
    if target.expires_at.is_none() && others.iter().all(|r| r.expires_at.is_some()) {
        return Some(format!(
            "token {id} is the last admin token without an expiry: once the others expire no \
             one could manage the cloud; create an admin token without --ttl first \
             (verge token create --role admin)"
        ));
    }
    None
}

impl Authenticator {
    pub async fn load(store: DynStore) -> crate::Result<Self> {
        let list = store.list(TOKEN_PREFIX, None).await?;
        let mut cache = HashMap::new();
        for kv in list.items {
            let rec: TokenRecord = serde_json::from_slice(&kv.value)?;
            cache.insert(rec.id.clone(), rec);
        }
        Ok(Self {
            store,
            cache: RwLock::new(cache),
            revoking: tokio::sync::Mutex::new(()),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.cache.read().map(|c| c.is_empty()).unwrap_or(true)
    }

    /// Checks an `Authorization` header value for API access.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, ApiError> {
        let Some(header) = header else {
            return Err(deny(
                "-",
                "missing bearer token: send 'Authorization: Bearer <token>'",
            ));
        };
        let Some(token) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        else {
            return Err(deny("-", "authorization header is not a bearer token"));
        };
        let rec = self.verify(token.trim())?;
        if rec.role == Role::Bootstrap {
            return Err(deny(
                &rec.id,
                "bootstrap tokens are only accepted for joining edge nodes",
            ));
        }
        Ok(Principal {
            token_id: rec.id,
            role: rec.role,
        })
    }

    /// Checks a token `id.secret`: known id, matching secret (constant time), not
    /// revoked, not expired.
    pub fn verify(&self, token: &str) -> Result<TokenRecord, ApiError> {
        let Some((id, secret)) = token.split_once('.') else {
            return Err(deny("-", "malformed token: expected <id>.<secret>"));
        };
        let id_for_log: String = id.chars().take(ID_LEN).collect();
        let cache = self
            .cache
            .read()
            .map_err(|_| ApiError::internal("token cache poisoned"))?;
        let Some(rec) = cache.get(id) else {
            return Err(deny(&id_for_log, "invalid token"));
        };
        let given = sha256_hex(secret);
        if !bool::from(given.as_bytes().ct_eq(rec.secret_sha256.as_bytes())) {
            return Err(deny(&id_for_log, "invalid token"));
        }
        if rec.revoked_at.is_some() {
            return Err(deny(&id_for_log, "token revoked"));
        }
        if let Some(exp) = &rec.expires_at {
            let expired = OffsetDateTime::parse(exp, &Rfc3339)
                .map(|t| t <= OffsetDateTime::now_utc())
                .unwrap_or(true);
            if expired {
                return Err(deny(&id_for_log, "token expired"));
            }
        }
        Ok(rec.clone())
    }

    /// Verifies a bootstrap token without spending a use: a valid, unexpired,
    /// unrevoked bootstrap token with uses left (as far as this replica's cache knows;
    /// [`Authenticator::consume_bootstrap`] is the authority).
    pub fn verify_bootstrap(&self, token: &str) -> Result<TokenRecord, ApiError> {
        let rec = self.verify(token)?;
        if rec.role != Role::Bootstrap {
            return Err(deny(
                &rec.id,
                "not a bootstrap token: create one with `verge token create --bootstrap`",
            ));
        }
        if rec.uses_left == Some(0) {
            return Err(deny(&rec.id, "token used up"));
        }
        Ok(rec)
    }

    /// Verifies a bootstrap token and uses it up by one (compare-and-swap in the store,
    /// so concurrent joins cannot overspend it).
    pub async fn consume_bootstrap(&self, token: &str) -> Result<TokenRecord, ApiError> {
        let rec = self.verify(token)?;
        if rec.role != Role::Bootstrap {
            return Err(deny(
                &rec.id,
                "not a bootstrap token: create one with `verge token create --bootstrap`",
            ));
        }
        let key = format!("{TOKEN_PREFIX}{}", rec.id);
        for _ in 0..16 {
            let kv = self
                .store
                .get(&key)
                .await?
                .ok_or_else(|| deny(&rec.id, "invalid token"))?;
            let mut stored: TokenRecord =
                serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
            let Some(left) = stored.uses_left else {
                return Ok(stored);
            };
            if left == 0 {
                return Err(deny(&rec.id, "token used up"));
            }
            stored.uses_left = Some(left - 1);
            let value = serde_json::to_vec(&stored).map_err(ApiError::internal)?;
            match self
                .store
                .update(
                    &key,
                    value.into(),
                    Default::default(),
                    Expect::ModRevision(kv.mod_revision),
                )
                .await
            {
                Ok(_) => {
                    self.cache
                        .write()
                        .map_err(|_| ApiError::internal("token cache poisoned"))?
                        .insert(stored.id.clone(), stored.clone());
                    return Ok(stored);
                }
                Err(verge_store::Error::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::new(
            Reason::Conflict,
            "token is being used concurrently; retry",
        ))
    }

    /// Creates a token; returns its record and the full `id.secret` (shown once).
    pub async fn create(&self, req: NewToken) -> Result<(TokenRecord, String), ApiError> {
        let NewToken {
            role,
            ttl,
            description,
            uses,
            labels,
        } = req;
        if role != Role::Bootstrap && (uses.is_some() || !labels.is_empty()) {
            return Err(ApiError::invalid(
                "uses",
                "uses and labels: only for bootstrap tokens",
            ));
        }
        if uses == Some(0) {
            return Err(ApiError::invalid("uses", "uses: must be at least 1"));
        }
        if labels.len() > 64 {
            return Err(ApiError::invalid("labels", "labels: at most 64"));
        }
        for (k, v) in &labels {
            if !verge_api::is_label_key(k) || !verge_api::is_label_value(v) {
                return Err(ApiError::invalid(
                    format!("labels.{k}"),
                    format!("labels.{k}: invalid label {k}={v}"),
                ));
            }
        }
        // Bootstrap tokens always expire: one hour unless told otherwise.
        let ttl = match (role, ttl) {
            (Role::Bootstrap, None) => Some(Duration::from_secs(3600)),
            (_, t) => t,
        };
        if let Some(d) = &description
            && d.len() > 256
        {
            return Err(ApiError::invalid(
                "description",
                "description: at most 256 bytes",
            ));
        }
        if let Some(ttl) = ttl
            && (ttl.is_zero() || ttl > Duration::from_secs(10 * 365 * 86400))
        {
            return Err(ApiError::invalid(
                "ttlSeconds",
                "ttlSeconds: must be between 1 second and 10 years",
            ));
        }
        for _ in 0..8 {
            let id = random_string(ID_LEN, true);
            let secret = random_string(SECRET_LEN, false);
            let now = OffsetDateTime::now_utc()
                .replace_nanosecond(0)
                .unwrap_or(OffsetDateTime::now_utc());
            let rec = TokenRecord {
                id: id.clone(),
                role,
                secret_sha256: sha256_hex(&secret),
                created_at: now.format(&Rfc3339).unwrap_or_default(),
                expires_at: ttl.map(|d| (now + d).format(&Rfc3339).unwrap_or_default()),
                revoked_at: None,
                description: description.clone(),
                uses_left: uses,
                labels: labels.clone(),
            };
            let value = serde_json::to_vec(&rec).map_err(ApiError::internal)?;
            match self
                .store
                .create(
                    &format!("{TOKEN_PREFIX}{id}"),
                    value.into(),
                    Default::default(),
                )
                .await
            {
                Ok(_) => {
                    self.cache
                        .write()
                        .map_err(|_| ApiError::internal("token cache poisoned"))?
                        .insert(id.clone(), rec.clone());
                    tracing::info!(token_id = %id, role = role.as_str(), "token created");
                    return Ok((rec, format!("{id}.{secret}")));
                }
                Err(verge_store::Error::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::internal("could not allocate a unique token id"))
    }

    /// Revokes token `id`; refused with 409 by [`revoke_refusal`] when it would leave
    /// no (lasting) admin token.
    pub async fn revoke(&self, id: &str) -> Result<TokenRecord, ApiError> {
        let _one_at_a_time = self.revoking.lock().await;
        let refusal = {
            let cache = self
                .cache
                .read()
                .map_err(|_| ApiError::internal("token cache poisoned"))?;
            revoke_refusal(cache.values(), id, OffsetDateTime::now_utc())
        };
        if let Some(why) = refusal {
            tracing::warn!(token_id = %id, "refused to revoke the last admin token");
            return Err(ApiError::new(Reason::Conflict, why).field("id"));
        }
        let key = format!("{TOKEN_PREFIX}{id}");
        let kv = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("token {id} not found")).field("id"))?;
        let mut rec: TokenRecord = serde_json::from_slice(&kv.value).map_err(ApiError::internal)?;
        if rec.revoked_at.is_none() {
            rec.revoked_at = Some(now_rfc3339());
            let value = serde_json::to_vec(&rec).map_err(ApiError::internal)?;
            self.store
                .update(
                    &key,
                    value.into(),
                    Default::default(),
                    Expect::ModRevision(kv.mod_revision),
                )
                .await?;
            tracing::info!(token_id = %id, "token revoked");
        }
        self.cache
            .write()
            .map_err(|_| ApiError::internal("token cache poisoned"))?
            .insert(rec.id.clone(), rec.clone());
        Ok(rec)
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        let mut out: Vec<TokenInfo> = self
            .cache
            .read()
            .map(|c| c.values().map(TokenInfo::from).collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, role: Role, expires: Option<&str>, revoked: bool) -> TokenRecord {
        TokenRecord {
            id: id.into(),
            role,
            secret_sha256: String::new(),
            created_at: "2026-01-01T00:00:00Z".into(),
            expires_at: expires.map(str::to_owned),
            revoked_at: revoked.then(|| "2026-01-02T00:00:00Z".to_string()),
            description: None,
            uses_left: None,
            labels: BTreeMap::new(),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse("2026-06-01T00:00:00Z", &Rfc3339).unwrap()
    }

    const LATER: &str = "2027-01-01T00:00:00Z";
    const EARLIER: &str = "2026-02-01T00:00:00Z";

    #[test]
    fn the_last_valid_admin_token_cannot_be_revoked() {
        let tokens = [
            rec("a", Role::Admin, None, false),
            rec("v", Role::Viewer, None, false),
            rec("o", Role::Operator, None, false),
            rec("gone", Role::Admin, None, true),
            rec("old", Role::Admin, Some(EARLIER), false),
        ];
        let why = revoke_refusal(&tokens, "a", now()).expect("refused");
        assert!(why.contains("last valid admin token"), "{why}");
        // Others are fine to revoke, and so are unknown or already revoked ids.
        for id in ["v", "o", "gone", "old", "nope"] {
            assert_eq!(revoke_refusal(&tokens, id, now()), None, "{id}");
        }
    }

    #[test]
    fn a_second_lasting_admin_token_allows_revoking_the_first() {
        let tokens = [
            rec("a", Role::Admin, None, false),
            rec("b", Role::Admin, None, false),
        ];
        assert_eq!(revoke_refusal(&tokens, "a", now()), None);
        assert_eq!(revoke_refusal(&tokens, "b", now()), None);
    }

    #[test]
    fn the_last_lasting_admin_token_cannot_be_traded_for_expiring_ones() {
        let tokens = [
            rec("a", Role::Admin, None, false),
            rec("t", Role::Admin, Some(LATER), false),
        ];
        let why = revoke_refusal(&tokens, "a", now()).expect("refused");
        assert!(why.contains("without an expiry"), "{why}");
        // The expiring one may go: the lasting one stays.
        assert_eq!(revoke_refusal(&tokens, "t", now()), None);
    }

    #[test]
    fn without_any_lasting_token_the_last_valid_one_still_stays() {
        // A data dir from before the rule: only expiring admin tokens.
        let tokens = [
            rec("t1", Role::Admin, Some(LATER), false),
            rec("t2", Role::Admin, Some(LATER), false),
        ];
        assert_eq!(revoke_refusal(&tokens, "t1", now()), None);
        let one = [rec("t1", Role::Admin, Some(LATER), false)];
        assert!(revoke_refusal(&one, "t1", now()).is_some());
    }

    #[test]
    fn validity_follows_revocation_and_expiry() {
        assert!(is_valid_at(&rec("a", Role::Admin, None, false), now()));
        assert!(!is_valid_at(&rec("a", Role::Admin, None, true), now()));
        assert!(!is_valid_at(
            &rec("a", Role::Admin, Some(EARLIER), false),
            now()
        ));
        assert!(is_valid_at(
            &rec("a", Role::Admin, Some(LATER), false),
            now()
        ));
        assert!(!is_valid_at(
            &rec("a", Role::Admin, Some("garbage"), false),
            now()
        ));
    }
}
