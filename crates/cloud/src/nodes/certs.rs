//! Keeping the records of issued node certificates (`/system/node-certs/{node}/{serial}`,
//! written by [`record_node_cert`] at join and at each renewal) only while
//! they matter, and bounded per node.
//!
//! A record exists so that deleting the node revokes the serial (decision 006; the
//! node-deletion controller, [`super::delete`], uses [`revoke_serials`] and
//! [`forget_issue_records`] in that order). Once
//! the certificate has expired (plus a grace for the clocks of whoever checks it, e.g.
//! an external broker) no TLS peer accepts it any more, so its record is pruned. Pruning
//! happens for one node at a time, when that node renews (the only moment its records
//! grow): work proportional to change, no fleet-wide timer. A node that stops renewing
//! keeps at most [`MAX_LIVE_CERTS_PER_NODE`] records until it is deleted.
//!
//! The bound: a renewal is refused (and retried later by the node) while the node holds
//! [`MAX_LIVE_CERTS_PER_NODE`] unexpired certificates. A healthy node holds two (the
//! current and the previous one); reaching the bound takes that many issued
//! certificates whose answers were lost within one certificate lifetime. Refusing is
//! the safe side: revoking the oldest could revoke the very certificate the node still
//! uses, and forgetting an unexpired record would leave it unrevocable.
//!
//! [`plan`] and [`grace`] are the pure rules; [`prune`] applies them to the store.

use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use verge_store::{DynStore, Expect};

use crate::error::ApiError;
use verge_api::Object;
use verge_api::names::{ANNOTATION_CERT_SERIAL, ANNOTATION_PREVIOUS_CERT_SERIAL};

use crate::auth::now_rfc3339;

/// Store prefix of revoked certificate serials (refused by either transport).
pub const REVOKED_PREFIX: &str = "/system/revoked-certs/";

/// Store prefix of every certificate issued to a node (join and each renewal), so
/// deleting the node revokes all of them, also ones whose delivery was lost.
pub const NODE_CERTS_PREFIX: &str = "/system/node-certs/";

/// Records a certificate issued to `node`.
pub async fn record_node_cert(
    store: &verge_store::DynStore,
    node: &str,
    serial: &str,
    not_after: &str,
) -> Result<(), ApiError> {
    let rec = serde_json::json!({"node": node, "serial": serial, "notAfter": not_after});
    match store
        .create(
            &format!("{NODE_CERTS_PREFIX}{node}/{serial}"),
            serde_json::to_vec(&rec).map_err(ApiError::internal)?.into(),
            Default::default(),
        )
        .await
    {
        Ok(_) | Err(verge_store::Error::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The serials of every certificate issued to a node: the recorded ones, and the
/// annotations (nodes joined before the records existed).
pub async fn node_serials(
    store: &verge_store::DynStore,
    node: &Object,
) -> Result<Vec<String>, ApiError> {
    let mut out: Vec<String> = [ANNOTATION_CERT_SERIAL, ANNOTATION_PREVIOUS_CERT_SERIAL]
        .iter()
        .filter_map(|a| node.metadata.annotations.get(*a).cloned())
        .collect();
    let prefix = format!("{NODE_CERTS_PREFIX}{}/", node.metadata.name);
    for kv in store.list(&prefix, None).await?.items {
        if let Some(serial) = kv.key.strip_prefix(&prefix)
            && !out.iter().any(|s| s == serial)
        {
            out.push(serial.to_string());
        }
    }
    Ok(out)
}

/// Serial -> `notAfter` of the node's recorded certificates (where the record has it).
pub async fn node_cert_expiries(
    store: &DynStore,
    node: &str,
) -> Result<std::collections::HashMap<String, String>, ApiError> {
    let prefix = format!("{NODE_CERTS_PREFIX}{node}/");
    Ok(store
        .list(&prefix, None)
        .await?
        .items
        .iter()
        .filter_map(|kv| serde_json::from_slice::<CertRecord>(&kv.value).ok())
        .map(|r| (r.serial, r.not_after))
        .collect())
}

/// Which of `serials` already have a revocation record.
pub async fn revoked_among(store: &DynStore, serials: &[String]) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for serial in serials {
        if store
            .get(&format!("{REVOKED_PREFIX}{serial}"))
            .await?
            .is_some()
        {
            out.push(serial.clone());
        }
    }
    Ok(out)
}

/// Writes a revocation record for each of `serials` of `node` (idempotent: an existing
/// record is kept). Each record carries the certificate's expiry where `expiries` has
/// it, so it is pruned once that has passed ([`prune_revoked`]); without one it is kept.
pub async fn revoke_serials(
    store: &DynStore,
    node: &str,
    serials: &[String],
    expiries: &std::collections::HashMap<String, String>,
) -> Result<(), ApiError> {
    for serial in serials {
        let mut rec =
            serde_json::json!({"node": node, "serial": serial, "revokedAt": now_rfc3339()});
        if let Some(not_after) = expiries.get(serial).filter(|t| !t.is_empty()) {
            rec["notAfter"] = serde_json::Value::String(not_after.clone());
        }
        match store
            .create(
                &format!("{REVOKED_PREFIX}{serial}"),
                serde_json::to_vec(&rec).map_err(ApiError::internal)?.into(),
                Default::default(),
            )
            .await
        {
            Ok(_) | Err(verge_store::Error::AlreadyExists { .. }) => {
                tracing::info!(%node, %serial, "node certificate revoked");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deletes the issue records of `serials` of `node`: only once each is revoked (the
/// records are what make an unannotated serial revocable).
pub async fn forget_issue_records(
    store: &DynStore,
    node: &str,
    serials: &[String],
) -> Result<(), ApiError> {
    for serial in serials {
        let key = format!("{NODE_CERTS_PREFIX}{node}/{serial}");
        match store.delete(&key, Expect::Any).await {
            Ok(_) | Err(verge_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Serials of `node` that still have an issue record.
pub async fn issue_records(store: &DynStore, node: &str) -> Result<Vec<String>, ApiError> {
    let prefix = format!("{NODE_CERTS_PREFIX}{node}/");
    Ok(store
        .list(&prefix, None)
        .await?
        .items
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(&prefix).map(str::to_string))
        .collect())
}

/// Unexpired certificates a node may hold; renewals past it are refused.
pub const MAX_LIVE_CERTS_PER_NODE: usize = 16;
/// The longest grace after expiry before a record is pruned.
pub const MAX_GRACE: time::Duration = time::Duration::minutes(5);

/// A record as stored (`{node, serial, notAfter}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertRecord {
    pub serial: String,
    /// RFC 3339.
    #[serde(default)]
    pub not_after: String,
}

/// What to do with one node's records.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Serials whose certificates expired more than the grace ago: delete their records.
    pub expired: Vec<String>,
    /// Records kept (unexpired, or with an expiry that does not parse: kept to be safe).
    pub live: usize,
}

/// How long after expiry a record is kept: a tenth of the certificate lifetime, at
/// most [`MAX_GRACE`].
pub fn grace(validity: time::Duration) -> time::Duration {
    let tenth: time::Duration = validity / 10;
    tenth.clamp(time::Duration::ZERO, MAX_GRACE)
}

/// Splits `records` into the ones to prune and a count of the ones to keep.
pub fn plan(records: &[CertRecord], now: OffsetDateTime, grace: time::Duration) -> Plan {
    let mut out = Plan::default();
    for r in records {
        match OffsetDateTime::parse(&r.not_after, &Rfc3339) {
            Ok(t) if t + grace < now => out.expired.push(r.serial.clone()),
            _ => out.live += 1,
        }
    }
    out
}

/// Prunes `node`'s expired records; returns how many records remain.
pub async fn prune(
    store: &DynStore,
    node: &str,
    now: OffsetDateTime,
    grace: time::Duration,
) -> Result<usize, ApiError> {
    let prefix = format!("{NODE_CERTS_PREFIX}{node}/");
    let records: Vec<CertRecord> = store
        .list(&prefix, None)
        .await?
        .items
        .iter()
        .map(|kv| {
            serde_json::from_slice::<CertRecord>(&kv.value).unwrap_or_else(|_| CertRecord {
                // An unreadable record: kept (its serial is in the key).
                serial: kv.key.strip_prefix(&prefix).unwrap_or_default().to_string(),
                not_after: String::new(),
            })
        })
        .collect();
    let plan = plan(&records, now, grace);
    for serial in &plan.expired {
        match store
            .delete(&format!("{prefix}{serial}"), Expect::Any)
            .await
        {
            Ok(_) | Err(verge_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !plan.expired.is_empty() {
        tracing::debug!(%node, pruned = plan.expired.len(), live = plan.live, "pruned expired node certificate records");
    }
    Ok(plan.live)
}

/// Prunes the revocation records (`/system/revoked-certs/{serial}`) of certificates
/// that expired more than `grace` ago: no TLS peer accepts them any more. A record
/// without a readable `notAfter` (revoked before records carried it) is kept. Run at
/// startup, before the revocation list is built; returns the serials still revoked.
pub async fn prune_revoked(
    store: &DynStore,
    now: OffsetDateTime,
    grace: time::Duration,
) -> Result<Vec<String>, verge_store::Error> {
    let prefix = REVOKED_PREFIX;
    let records: Vec<CertRecord> = store
        .list(prefix, None)
        .await?
        .items
        .iter()
        .filter_map(|kv| {
            let serial = kv.key.strip_prefix(prefix)?.to_string();
            let not_after = serde_json::from_slice::<CertRecord>(&kv.value)
                .map(|r| r.not_after)
                .unwrap_or_default();
            Some(CertRecord { serial, not_after })
        })
        .collect();
    let plan = plan(&records, now, grace);
    for serial in &plan.expired {
        match store
            .delete(&format!("{prefix}{serial}"), Expect::Any)
            .await
        {
            Ok(_) | Err(verge_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    if !plan.expired.is_empty() {
        tracing::info!(
            pruned = plan.expired.len(),
            kept = plan.live,
            "pruned revocations of expired node certificates"
        );
    }
    Ok(records
        .into_iter()
        .map(|r| r.serial)
        .filter(|s| !plan.expired.contains(s))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(serial: &str, not_after: &str) -> CertRecord {
        CertRecord {
            serial: serial.into(),
            not_after: not_after.into(),
        }
    }

    fn at(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    #[test]
    fn expired_records_are_pruned_after_the_grace() {
        let records = [
            rec("old", "2026-01-01T00:00:00Z"),
            rec("just", "2026-01-10T11:58:00Z"),
            rec("current", "2026-02-01T00:00:00Z"),
            rec("garbled", "not a time"),
        ];
        let now = at("2026-01-10T12:00:00Z");
        let p = plan(&records, now, time::Duration::minutes(5));
        assert_eq!(p.expired, vec!["old".to_string()]);
        assert_eq!(p.live, 3, "within the grace and unparsable ones are kept");
        let p = plan(&records, now, time::Duration::ZERO);
        assert_eq!(p.expired, vec!["old".to_string(), "just".to_string()]);
        assert_eq!(p.live, 2);
    }

    #[test]
    fn nothing_to_prune_in_an_empty_or_fresh_set() {
        let now = at("2026-01-10T12:00:00Z");
        assert_eq!(plan(&[], now, MAX_GRACE), Plan::default());
        let p = plan(&[rec("a", "2026-02-09T12:00:00Z")], now, MAX_GRACE);
        assert_eq!((p.expired.len(), p.live), (0, 1));
    }

    #[test]
    fn the_grace_is_a_tenth_of_the_lifetime_at_most_five_minutes() {
        assert_eq!(
            grace(time::Duration::seconds(30)),
            time::Duration::seconds(3)
        );
        assert_eq!(grace(time::Duration::days(30)), MAX_GRACE);
        assert_eq!(grace(time::Duration::ZERO), time::Duration::ZERO);
    }

    #[tokio::test]
    async fn revocations_of_expired_certificates_are_pruned_others_kept() {
        use std::sync::Arc;
        use verge_store::{SqliteOptions, SqliteStore};
        let dir = tempfile::tempdir().unwrap();
        let store: DynStore = Arc::new(
            SqliteStore::open(SqliteOptions::new(dir.path().join("s.db")))
                .await
                .unwrap(),
        );
        let prefix = REVOKED_PREFIX;
        for (serial, body) in [
            (
                "old",
                r#"{"serial":"old","notAfter":"2026-01-01T00:00:00Z"}"#,
            ),
            (
                "live",
                r#"{"serial":"live","notAfter":"2026-03-01T00:00:00Z"}"#,
            ),
            (
                "legacy",
                r#"{"node":"n","serial":"legacy","revokedAt":"2025-01-01T00:00:00Z"}"#,
            ),
            ("junk", "not json"),
        ] {
            store
                .create(
                    &format!("{prefix}{serial}"),
                    body.as_bytes().to_vec().into(),
                    Default::default(),
                )
                .await
                .unwrap();
        }
        let mut kept = prune_revoked(&store, at("2026-02-01T00:00:00Z"), MAX_GRACE)
            .await
            .unwrap();
        kept.sort();
        assert_eq!(kept, ["junk", "legacy", "live"]);
        let left = store.list(prefix, None).await.unwrap().items.len();
        assert_eq!(left, 3);
    }
}
