//! The artifact store: content-addressed (SHA-256) blobs on the local filesystem, what
//! native apps are started from (decision 007).
//!
//! Layout: `DATA_DIR/artifacts/sha256/{first two hex digits}/{64 hex digits}`, files
//! 0600 and directories 0700. An upload is streamed into a temp file
//! (`DATA_DIR/artifacts/sha256/.upload-*`) while it is hashed and counted, then renamed
//! into place, so a stored file is always complete and always matches its name. Temp
//! files a crash left behind are removed at start-up.
//!
//! The HTTP side (routes, auth, `Range`) is `crate::http::artifacts`; this module holds
//! the store and the pure helpers ([`parse_sha256`], [`parse_range`]).

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Result, io_err};
use crate::secure_fs::ensure_private_dir;

/// Default cap on one artifact (`CloudConfig::artifact_max_bytes`).
pub const DEFAULT_MAX_BYTES: u64 = 512 * 1024 * 1024;
/// Prefix of in-flight uploads inside the store's root.
const UPLOAD_PREFIX: &str = ".upload-";

/// One stored artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ArtifactInfo {
    /// SHA-256 of the content: 64 lowercase hex digits.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// `GET /api/v1/artifacts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ArtifactList {
    pub items: Vec<ArtifactInfo>,
}

/// The store rooted at `DATA_DIR/artifacts/sha256`.
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    max_bytes: u64,
    /// Digests nodes may fetch because tasks dispatched to them name them.
    grants: crate::artifact_access::Grants,
}

impl ArtifactStore {
    /// Creates the directories (0700) if missing and removes uploads a crash left.
    pub fn open(data_dir: &Path, max_bytes: u64) -> Result<Self> {
        let base = data_dir.join("artifacts");
        ensure_private_dir(&base)?;
        let root = base.join("sha256");
        ensure_private_dir(&root)?;
        for entry in std::fs::read_dir(&root).map_err(io_err(&root))? {
            let entry = entry.map_err(io_err(&root))?;
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(UPLOAD_PREFIX)
            {
                let path = entry.path();
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::warn!(path = %path.display(), error = %e, "could not remove a stale upload");
                }
            }
        }
        Ok(Self {
            root,
            max_bytes,
            grants: Default::default(),
        })
    }

    /// What nodes may download because of the tasks dispatched to them.
    pub fn grants(&self) -> &crate::artifact_access::Grants {
        &self.grants
    }

    /// Largest artifact accepted, in bytes.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Where the artifact with this digest (as returned by [`parse_sha256`]) lives.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[..2]).join(sha256)
    }

    /// A new, empty temp file (0600) for an upload, in the store's root (the same
    /// filesystem as the final place, so the rename is atomic).
    pub fn create_upload(&self) -> io::Result<(PathBuf, std::fs::File)> {
        let path = self
            .root
            .join(format!("{UPLOAD_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        Ok((path, file))
    }

    /// Moves a complete, synced upload into place under its digest. `Ok(false)` when
    /// the artifact was already stored (the upload is removed).
    pub fn commit(&self, upload: &Path, sha256: &str) -> Result<bool> {
        let dest = self.path(sha256);
        if dest.exists() {
            std::fs::remove_file(upload).map_err(io_err(upload))?;
            return Ok(false);
        }
        let dir = self.root.join(&sha256[..2]);
        ensure_private_dir(&dir)?;
        std::fs::rename(upload, &dest).map_err(io_err(&dest))?;
        // The rename is durable once the directory is.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(true)
    }

    /// Stores `data` (a task result, ...) and returns its digest.
    pub fn put_bytes(&self, data: &[u8]) -> Result<String> {
        use std::io::Write;
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data));
        if self.path(&sha256).exists() {
            return Ok(sha256);
        }
        let (upload, mut file) = self.create_upload().map_err(io_err(&self.root))?;
        file.write_all(data)
            .and_then(|()| file.sync_all())
            .map_err(io_err(&upload))?;
        self.commit(&upload, &sha256)?;
        Ok(sha256)
    }

    /// Every stored artifact, by digest.
    pub fn list(&self) -> Result<Vec<ArtifactInfo>> {
        let mut out = Vec::new();
        for dir in std::fs::read_dir(&self.root).map_err(io_err(&self.root))? {
            let dir = dir.map_err(io_err(&self.root))?;
            let prefix = dir.file_name().to_string_lossy().into_owned();
            if prefix.len() != 2 || !dir.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let path = dir.path();
            for f in std::fs::read_dir(&path).map_err(io_err(&path))? {
                let f = f.map_err(io_err(&path))?;
                let name = f.file_name().to_string_lossy().into_owned();
                let Some(sha256) = parse_sha256(&name) else {
                    continue;
                };
                if sha256 != name || !name.starts_with(&prefix) {
                    continue;
                }
                let meta = f.metadata().map_err(io_err(f.path()))?;
                if meta.is_file() {
                    out.push(ArtifactInfo {
                        sha256,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.sha256.cmp(&b.sha256));
        Ok(out)
    }
}

/// A SHA-256 digest as 64 hex digits (either case) → lowercase; `None` otherwise.
pub fn parse_sha256(s: &str) -> Option<String> {
    (s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())).then(|| s.to_ascii_lowercase())
}

/// What a `Range` header asks of a representation of `size` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable range: answer 200 with everything. Malformed headers, other units and
    /// multiple ranges land here (RFC 9110 lets a server ignore `Range`).
    Full,
    /// Bytes `start..=end` (answer 206).
    Partial { start: u64, end: u64 },
    /// A valid range that no byte of the representation satisfies (answer 416).
    Unsatisfiable,
}

/// Parses a single-range `Range` header (RFC 9110 §14.1.2): `bytes=N-`, `bytes=N-M`,
/// `bytes=-SUFFIX`.
pub fn parse_range(header: &str, size: u64) -> RangeRequest {
    let Some((unit, spec)) = header.trim().split_once('=') else {
        return RangeRequest::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    match (first.trim().is_empty(), last.trim().is_empty()) {
        // bytes=-SUFFIX: the last SUFFIX bytes.
        (true, false) => match num(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Partial {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            None => RangeRequest::Full,
        },
        // bytes=N-
        (false, true) => match num(first) {
            Some(start) if start >= size => RangeRequest::Unsatisfiable,
            Some(start) => RangeRequest::Partial {
                start,
                end: size - 1,
            },
            None => RangeRequest::Full,
        },
        // bytes=N-M
        (false, false) => match (num(first), num(last)) {
            (Some(start), Some(end)) if start <= end => {
                if start >= size {
                    RangeRequest::Unsatisfiable
                } else {
                    RangeRequest::Partial {
                        start,
                        end: end.min(size - 1),
                    }
                }
            }
            _ => RangeRequest::Full,
        },
        (true, true) => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-", 10), Partial { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=4-", 10), Partial { start: 4, end: 9 });
        assert_eq!(parse_range("bytes=9-", 10), Partial { start: 9, end: 9 });
        assert_eq!(parse_range("bytes=2-5", 10), Partial { start: 2, end: 5 });
        assert_eq!(parse_range("bytes=2-2", 10), Partial { start: 2, end: 2 });
        // The end is clamped to the last byte.
        assert_eq!(parse_range("bytes=2-500", 10), Partial { start: 2, end: 9 });
        assert_eq!(parse_range("bytes=-3", 10), Partial { start: 7, end: 9 });
        assert_eq!(parse_range("bytes=-30", 10), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range(" Bytes = 1 - 2 ", 10),
            Partial { start: 1, end: 2 }
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(parse_range("bytes=10-", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=10-20", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 10), Unsatisfiable);
        assert_eq!(parse_range("bytes=-5", 0), Unsatisfiable);
    }

    #[test]
    fn ignored_ranges() {
        for h in [
            "",
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=5",
            "bytes=a-b",
            "bytes=5-2",
            "bytes=+1-2",
            "bytes=0-1,4-5",
            "items=0-1",
            "bytes=99999999999999999999999-",
        ] {
            assert_eq!(parse_range(h, 10), Full, "{h:?}");
        }
    }

    #[test]
    fn digests() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_sha256(&hex), Some("ab".repeat(32)));
        assert_eq!(parse_sha256(&"a".repeat(63)), None);
        assert_eq!(parse_sha256(&"g".repeat(64)), None);
        assert_eq!(parse_sha256(""), None);
    }

    #[test]
    fn store_commit_and_list() {
        use std::io::Write;
        let tmp = tempfile::tempdir().unwrap();
        let st = ArtifactStore::open(tmp.path(), 100).unwrap();
        let digest = "0f".repeat(32);
        let (path, mut f) = st.create_upload().unwrap();
        f.write_all(b"hello").unwrap();
        drop(f);
        assert!(st.commit(&path, &digest).unwrap());
        assert!(!path.exists());
        let (again, _) = st.create_upload().unwrap();
        assert!(!st.commit(&again, &digest).unwrap(), "already stored");
        assert!(!again.exists());
        assert_eq!(
            st.list().unwrap(),
            vec![ArtifactInfo {
                sha256: digest.clone(),
                size: 5
            }]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&st.path(&digest)), 0o600);
        assert_eq!(mode(st.path(&digest).parent().unwrap()), 0o700);
        // A stale upload is removed when the store opens again.
        let (stale, _) = st.create_upload().unwrap();
        ArtifactStore::open(tmp.path(), 100).unwrap();
        assert!(!stale.exists());
    }
}
