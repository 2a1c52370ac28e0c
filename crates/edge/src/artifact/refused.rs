//! The memory of refused artifacts: `DOWNLOADS/refused/{sha256}` holds why the archive
//! with that digest was refused, so it is never downloaded again — also not after the
//! agent restarts. A digest names its content, so the refusal holds for as long as the
//! rules that made it; a record written under other rules ([`RULES`]) is forgotten.
//! It owns these records only; it must not decide what is refused.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The version of the unpacking rules. Bump it when a change could accept an archive
/// refused before: records of other versions are then ignored (and removed).
pub(crate) const RULES: u32 = 1;
/// Largest record read back.
const MAX_RECORD: u64 = 64 * 1024;

#[derive(Serialize, Deserialize)]
struct Record {
    rules: u32,
    reason: String,
}

fn record_path(downloads: &Path, sha256: &str) -> PathBuf {
    downloads.join("refused").join(sha256)
}

/// Why `sha256` (64 lowercase hex digits) was refused, if it was under these rules.
pub(crate) fn recall(downloads: &Path, sha256: &str) -> Option<String> {
    let path = record_path(downloads, sha256);
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .ok()?
        .take(MAX_RECORD)
        .read_to_end(&mut text)
        .ok()?;
    match serde_json::from_slice::<Record>(&text) {
        Ok(r) if r.rules == RULES => Some(r.reason),
        _ => {
            let _ = std::fs::remove_file(&path);
            None
        }
    }
}

/// Remembers that `sha256` was refused and why. Best effort: a record that cannot be
/// written only costs another download after a restart (logged).
pub(crate) fn remember(downloads: &Path, sha256: &str, reason: &str) {
    let path = record_path(downloads, sha256);
    let write = || -> crate::Result<()> {
        let dir = downloads.join("refused");
        std::fs::create_dir_all(&dir).map_err(crate::error::io_err(&dir))?;
        let bytes = serde_json::to_vec(&Record {
            rules: RULES,
            reason: reason.to_owned(),
        })
        .map_err(crate::error::json_err("refusal record"))?;
        crate::fsutil::write_atomic(&path, &bytes, crate::fsutil::PRIVATE_MODE)
    };
    if let Err(e) = write() {
        tracing::warn!(error = %e, "could not remember a refused artifact");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_until_the_rules_change() {
        let tmp = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        assert_eq!(recall(tmp.path(), &sha), None);
        remember(tmp.path(), &sha, "entry \"x\" is a FIFO");
        assert_eq!(
            recall(tmp.path(), &sha).as_deref(),
            Some("entry \"x\" is a FIFO")
        );
        assert_eq!(recall(tmp.path(), &"cd".repeat(32)), None);
        // A record of other rules is forgotten.
        let path = record_path(tmp.path(), &sha);
        std::fs::write(&path, r#"{"rules":0,"reason":"old"}"#).unwrap();
        assert_eq!(recall(tmp.path(), &sha), None);
        assert!(!path.exists());
        std::fs::write(&path, "garbage").unwrap();
        assert_eq!(recall(tmp.path(), &sha), None);
    }
}
