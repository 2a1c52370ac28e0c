//! A disk cache of `/img` outputs with a byte bound, least recently used evicted first.
//!
//! One file per entry, named by the SHA-256 of the key: a header line
//! `content-type\tetag\tvary-accept\n`, then the body. Written to a temporary file and
//! renamed, so a crash never leaves a torn entry. The index (sizes, last use) lives in
//! memory and is rebuilt from the directory at start (oldest modification first).
//! The directory is 0700 and every entry 0600 (entries are derived from users' images
//! and URLs; an existing directory and its entries are tightened at open).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A cached response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub content_type: String,
    /// Quoted strong ETag.
    pub etag: String,
    /// The response varies with `Accept`.
    pub vary_accept: bool,
    pub body: Vec<u8>,
}

struct Index {
    entries: HashMap<String, Meta>,
    total: u64,
    clock: u64,
}

struct Meta {
    size: u64,
    used: u64,
}

/// See the module documentation.
pub struct DiskCache {
    dir: PathBuf,
    max_bytes: u64,
    index: Mutex<Index>,
}

impl DiskCache {
    /// Opens (creating) `dir`, indexing what it holds, trimmed to `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let mut found = Vec::new();
        for e in std::fs::read_dir(dir).map_err(io(dir))? {
            let e = e.map_err(io(dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(".tmp") {
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            if name.len() != 64 || !name.bytes().all(|c| c.is_ascii_hexdigit()) {
                continue;
            }
            // Not following links: only regular files are entries.
            let Ok(md) = e.metadata() else { continue };
            if !md.is_file() {
                continue;
            }
            if md.permissions().mode() & 0o077 != 0 {
                let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o600));
            }
            found.push((md.modified().ok(), name, md.len()));
        }
        found.sort();
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            max_bytes,
            index: Mutex::new(Index {
                entries: HashMap::new(),
                total: 0,
                clock: 0,
            }),
        };
        {
            let mut ix = cache.lock();
            for (_, name, size) in found {
                ix.clock += 1;
                ix.total += size;
                let used = ix.clock;
                ix.entries.insert(name, Meta { size, used });
            }
        }
        cache.evict();
        Ok(cache)
    }

    /// Bytes currently held.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    /// Entries currently held.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry for `key`, if cached (and readable).
    pub fn get(&self, key: &str) -> Option<Entry> {
        let name = hash(key);
        {
            let mut ix = self.lock();
            ix.clock += 1;
            let clock = ix.clock;
            ix.entries.get_mut(&name)?.used = clock;
        }
        let raw = std::fs::read(self.dir.join(&name)).ok();
        let parsed = raw.as_deref().and_then(parse);
        if parsed.is_none() {
            self.remove(&name);
        }
        parsed
    }

    /// Stores `entry` under `key`; entries larger than the whole bound are not kept.
    pub fn put(&self, key: &str, entry: &Entry) -> Result<()> {
        let name = hash(key);
        let header = format!(
            "{}\t{}\t{}\n",
            entry.content_type.replace(['\t', '\n'], " "),
            entry.etag,
            u8::from(entry.vary_accept)
        );
        let size = (header.len() + entry.body.len()) as u64;
        if size > self.max_bytes {
            return Ok(());
        }
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(&self.dir)
            .map_err(io(&self.dir))?;
        tmp.write_all(header.as_bytes())
            .and_then(|_| tmp.write_all(&entry.body))
            .map_err(io(tmp.path()))?;
        let path = self.dir.join(&name);
        tmp.persist(&path).map_err(|e| Error::Io {
            path: path.display().to_string(),
            source: e.error,
        })?;
        {
            let mut ix = self.lock();
            ix.clock += 1;
            let used = ix.clock;
            if let Some(old) = ix.entries.insert(name, Meta { size, used }) {
                ix.total -= old.size;
            }
            ix.total += size;
        }
        self.evict();
        Ok(())
    }

    /// Removes least recently used entries until the total fits the bound.
    fn evict(&self) {
        loop {
            let victim = {
                let ix = self.lock();
                if ix.total <= self.max_bytes {
                    return;
                }
                ix.entries
                    .iter()
                    .min_by_key(|(_, m)| m.used)
                    .map(|(k, _)| k.clone())
            };
            match victim {
                Some(name) => self.remove(&name),
                None => return,
            }
        }
    }

    fn remove(&self, name: &str) {
        let mut ix = self.lock();
        if let Some(m) = ix.entries.remove(name) {
            ix.total -= m.size;
            let _ = std::fs::remove_file(self.dir.join(name));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The strong ETag of a body: the first 16 bytes of its SHA-256, quoted.
pub fn etag(body: &[u8]) -> String {
    format!("\"{}\"", hex::encode(&Sha256::digest(body)[..16]))
}

fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

fn parse(raw: &[u8]) -> Option<Entry> {
    let nl = raw.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&raw[..nl]).ok()?;
    let mut parts = header.split('\t');
    let content_type = parts.next()?.to_string();
    let etag = parts.next()?.to_string();
    let vary_accept = parts.next()? == "1";
    Some(Entry {
        content_type,
        etag,
        vary_accept,
        body: raw[nl + 1..].to_vec(),
    })
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        let body = vec![7u8; n];
        Entry {
            content_type: "image/png".into(),
            etag: etag(&body),
            vary_accept: true,
            body,
        }
    }

    #[test]
    fn round_trip_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert!(c.get("a").is_none());
        c.put("a", &entry(100)).unwrap();
        assert_eq!(c.get("a").unwrap(), entry(100));
        drop(c);
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(c.get("a").unwrap(), entry(100));
    }

    #[test]
    fn the_directory_is_0700_and_entries_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img-cache");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let c = DiskCache::open(&dir, 1 << 20).unwrap();
        c.put("a", &entry(10)).unwrap();
        let file = dir.join(hash("a"));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
        drop(c);
        // Loose modes from an older version are tightened at open.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = DiskCache::open(&dir, 1 << 20).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn bound_evicts_least_recently_used() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 3000).unwrap();
        c.put("a", &entry(900)).unwrap();
        c.put("b", &entry(900)).unwrap();
        c.put("c", &entry(900)).unwrap();
        assert!(c.get("a").is_some()); // a is now the most recent
        c.put("d", &entry(900)).unwrap(); // evicts b
        assert!(c.get("b").is_none());
        assert!(c.get("a").is_some() && c.get("c").is_some() && c.get("d").is_some());
        assert!(c.total_bytes() <= 3000);
        // Too big for the whole cache: not kept, nothing else lost.
        c.put("huge", &entry(5000)).unwrap();
        assert!(c.get("huge").is_none());
        assert_eq!(c.len(), 3);
        // Reopening with a smaller bound trims.
        drop(c);
        let c = DiskCache::open(dir.path(), 1000).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_entry_is_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let c = DiskCache::open(dir.path(), 1 << 20).unwrap();
        c.put("a", &entry(10)).unwrap();
        std::fs::write(dir.path().join(hash("a")), b"no header").unwrap();
        assert!(c.get("a").is_none());
        assert_eq!(c.len(), 0);
    }
}
