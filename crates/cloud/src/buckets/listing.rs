//! Listing a bucket (prefix, delimiter, marker, max-keys) over store pages, and the
//! checks of a multipart completion's part list. The grouping rule ([`group`]) and the
//! part checks are pure.

use std::collections::HashMap;

use verge_api::specs::ObjectRecord;
use verge_store::DynStore;

use super::{Code, MIN_PART_SIZE, PAGE, PartRecord, bucket_err};
use crate::error::Result;

/// Most keys in one listing answer (S3's own cap).
pub const MAX_KEYS: usize = 1_000;

#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub prefix: String,
    pub delimiter: Option<String>,
    /// List keys after this one (v1 `marker`, v2 `start-after` or the continuation).
    pub after: String,
    /// Capped at [`MAX_KEYS`].
    pub max_keys: usize,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    pub objects: Vec<(String, ObjectRecord)>,
    pub common_prefixes: Vec<String>,
    pub truncated: bool,
    /// The last key or common prefix returned, when truncated: where the next page
    /// starts (exclusive).
    pub next_after: Option<String>,
}

/// What one key becomes in a listing: itself, or the common prefix it rolls up into.
pub fn group<'a>(key: &'a str, prefix: &str, delimiter: Option<&str>) -> Option<&'a str> {
    let d = delimiter.filter(|d| !d.is_empty())?;
    let rest = key.get(prefix.len()..)?;
    rest.find(d).map(|i| &key[..prefix.len() + i + d.len()])
}

/// Lists under the store prefix `base` (`/s3/objects/BUCKET/`).
pub async fn list(store: &DynStore, base: &str, q: &ListQuery) -> Result<Listing> {
    let max = q.max_keys.min(MAX_KEYS);
    let full_prefix = format!("{base}{}", q.prefix);
    let mut out = Listing::default();
    let mut cursor = if q.after.as_str() > q.prefix.as_str() {
        // After a common prefix (or a key under one): skip all of that prefix, it was
        // returned already.
        match group(&q.after, &q.prefix, q.delimiter.as_deref()) {
            Some(cp) => format!("{base}{cp}\u{10FFFF}"),
            None => format!("{base}{}", q.after),
        }
    } else {
        String::new()
    };
    let mut count = 0usize;
    'pages: loop {
        let page = store.list_page(&full_prefix, &cursor, PAGE).await?;
        let full = page.items.len() == PAGE;
        for kv in &page.items {
            let key = &kv.key[base.len()..];
            if count == max {
                out.truncated = true;
                break 'pages;
            }
            match group(key, &q.prefix, q.delimiter.as_deref()) {
                Some(cp) => {
                    out.common_prefixes.push(cp.to_owned());
                    count += 1;
                    out.next_after = Some(cp.to_owned());
                    // Skip the rest of this prefix: everything starting with it sorts
                    // before `cp` + U+10FFFF.
                    cursor = format!("{base}{cp}\u{10FFFF}");
                    continue 'pages;
                }
                None => {
                    let rec: ObjectRecord = serde_json::from_slice(&kv.value)?;
                    out.objects.push((key.to_owned(), rec));
                    count += 1;
                    out.next_after = Some(key.to_owned());
                }
            }
            cursor = kv.key.clone();
        }
        if !full {
            break;
        }
    }
    if !out.truncated {
        out.next_after = None;
    }
    Ok(out)
}

/// The stored parts a completion names, in order, after S3's checks: part numbers
/// ascending (`InvalidPartOrder`), each uploaded with the ETag given (`InvalidPart`),
/// every part but the last at least 5 MiB (`EntityTooSmall`).
pub fn check_parts(
    given: &[(u32, String)],
    stored: &HashMap<u32, PartRecord>,
) -> Result<Vec<PartRecord>> {
    if given.is_empty() {
        return Err(bucket_err(
            Code::InvalidArgument,
            "the completion lists no parts",
        ));
    }
    // Order first (S3 reports it before anything about the parts themselves).
    for w in given.windows(2) {
        if w[1].0 <= w[0].0 {
            return Err(bucket_err(
                Code::InvalidPartOrder,
                format!(
                    "part {} is listed after part {}; list parts in ascending order",
                    w[1].0, w[0].0
                ),
            ));
        }
    }
    let mut out = Vec::with_capacity(given.len());
    for (n, etag) in given {
        let Some(part) = stored.get(n) else {
            return Err(bucket_err(
                Code::InvalidPart,
                format!("part {n} was not uploaded"),
            ));
        };
        if part.etag.trim_matches('"') != etag.trim_matches('"') {
            return Err(bucket_err(
                Code::InvalidPart,
                format!("part {n} has ETag {}, not {etag}", part.etag),
            ));
        }
        out.push(part.clone());
    }
    for ((n, _), part) in given.iter().zip(&out).take(out.len() - 1) {
        if part.size < MIN_PART_SIZE {
            return Err(bucket_err(
                Code::EntityTooSmall,
                format!(
                    "part {n} is {} bytes; every part but the last must be at least 5 MiB",
                    part.size
                ),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use bytes::Bytes;
    use verge_store::{Labels, MemStore};

    fn code(e: Error) -> Code {
        match e {
            Error::Bucket { code, .. } => code,
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn grouping() {
        assert_eq!(group("a/b/c", "", Some("/")), Some("a/"));
        assert_eq!(group("a/b/c", "a/", Some("/")), Some("a/b/"));
        assert_eq!(group("a/b", "a/", Some("/")), None);
        assert_eq!(group("a/b", "a/", None), None);
        assert_eq!(group("a--b--c", "", Some("--")), Some("a--"));
    }

    fn part(size: u64, etag: &str) -> PartRecord {
        PartRecord {
            etag: format!("\"{etag}\""),
            size,
            sha256: "x".repeat(64),
            last_modified: String::new(),
        }
    }

    #[test]
    fn completion_checks() {
        let stored: HashMap<u32, PartRecord> = [
            (1, part(MIN_PART_SIZE, "aa")),
            (2, part(10, "bb")),
            (3, part(MIN_PART_SIZE, "cc")),
        ]
        .into();
        let ok = check_parts(&[(1, "aa".into()), (3, "\"cc\"".into())], &stored).unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(
            code(check_parts(&[(3, "cc".into()), (1, "aa".into())], &stored).unwrap_err()),
            Code::InvalidPartOrder
        );
        assert_eq!(
            code(check_parts(&[(1, "aa".into()), (4, "dd".into())], &stored).unwrap_err()),
            Code::InvalidPart
        );
        assert_eq!(
            code(check_parts(&[(1, "zz".into())], &stored).unwrap_err()),
            Code::InvalidPart
        );
        assert_eq!(
            code(check_parts(&[(2, "bb".into()), (3, "cc".into())], &stored).unwrap_err()),
            Code::EntityTooSmall
        );
        // A small last part is fine.
        check_parts(&[(1, "aa".into()), (2, "bb".into())], &stored).unwrap();
        assert_eq!(
            code(check_parts(&[], &stored).unwrap_err()),
            Code::InvalidArgument
        );
    }

    #[tokio::test]
    async fn listing_with_delimiter_marker_and_truncation() {
        let store: DynStore = std::sync::Arc::new(MemStore::new());
        let rec = serde_json::json!({"etag": "\"e\"", "size": 1, "sha256": "s",
            "contentType": "t", "lastModified": "x"});
        let base = "/s3/objects/b/";
        for k in ["a.txt", "dir/1", "dir/2", "dir/sub/3", "other/x", "z"] {
            store
                .create(
                    &format!("{base}{k}"),
                    Bytes::from(rec.to_string()),
                    Labels::new(),
                )
                .await
                .unwrap();
        }
        let names = |l: &Listing| {
            (
                l.objects.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                l.common_prefixes.clone(),
            )
        };
        let q = |prefix: &str, d: Option<&str>, after: &str, max| ListQuery {
            prefix: prefix.into(),
            delimiter: d.map(Into::into),
            after: after.into(),
            max_keys: max,
        };
        let all = list(&store, base, &q("", Some("/"), "", 1000))
            .await
            .unwrap();
        assert_eq!(
            names(&all),
            (
                vec!["a.txt".into(), "z".into()],
                vec!["dir/".into(), "other/".into()]
            )
        );
        assert!(!all.truncated);
        let dir = list(&store, base, &q("dir/", Some("/"), "", 1000))
            .await
            .unwrap();
        assert_eq!(
            names(&dir),
            (
                vec!["dir/1".into(), "dir/2".into()],
                vec!["dir/sub/".into()]
            )
        );
        // Pages of two, following next_after.
        let p1 = list(&store, base, &q("", Some("/"), "", 2)).await.unwrap();
        assert_eq!(names(&p1), (vec!["a.txt".into()], vec!["dir/".into()]));
        assert!(p1.truncated);
        let p2 = list(
            &store,
            base,
            &q("", Some("/"), p1.next_after.as_deref().unwrap(), 2),
        )
        .await
        .unwrap();
        assert_eq!(names(&p2), (vec!["z".into()], vec!["other/".into()]));
        let flat = list(&store, base, &q("", None, "dir/1", 3)).await.unwrap();
        assert_eq!(names(&flat).0, ["dir/2", "dir/sub/3", "other/x"]);
        assert!(flat.truncated);
        assert_eq!(flat.next_after.as_deref(), Some("other/x"));
        let none = list(&store, base, &q("", None, "", 0)).await.unwrap();
        assert!(none.truncated && none.objects.is_empty());
    }
}
