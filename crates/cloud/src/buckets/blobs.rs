//! Object bytes on disk, content-addressed: `DATA_DIR/blobs/sha256/ab/abcdef…`. A blob
//! is written to a temp file while its MD5 and SHA-256 are computed, synced, then
//! renamed into place and its directory synced: once [`BlobStore::write`] returns, the
//! bytes are durable, and no reader ever sees a partial blob under a digest name.
//! Identical bytes are stored once. Which blobs are still referenced is the caller's
//! business ([`BlobStore::sweep`] removes the others). No metadata, no S3 here.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::Md5;
use sha2::{Digest, Sha256};

use super::{Code, bucket_err};
use crate::error::{Error, Result, io_err};
use crate::secure_fs::ensure_private_dir;

/// Bytes gathered in memory before they are handed to the disk.
const WRITE_CHUNK: usize = 1 << 20;
const TMP_PREFIX: &str = "tmp-";

pub struct BlobStore {
    root: PathBuf,
}

/// A blob just made durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub sha256: String,
    pub md5: [u8; 16],
    pub size: u64,
}

impl BlobStore {
    /// Creates `DATA_DIR/blobs/sha256` (0700) and removes temp files a crash left.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let base = data_dir.join("blobs");
        ensure_private_dir(&base)?;
        let root = base.join("sha256");
        ensure_private_dir(&root)?;
        for entry in std::fs::read_dir(&root).map_err(io_err(&root))? {
            let entry = entry.map_err(io_err(&root))?;
            if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Ok(Self { root })
    }

    /// Where the blob with this hex digest lives.
    pub fn path(&self, sha256: &str) -> PathBuf {
        self.root.join(&sha256[..2]).join(sha256)
    }

    /// Writes `body` as a blob. Refused with `EntityTooLarge` past `max` bytes and with
    /// `IncompleteBody` when the body ends early or fails (a dropped connection) or its
    /// length differs from `expected_len`; nothing is kept then.
    pub async fn write<S, E>(&self, body: S, max: u64, expected_len: Option<u64>) -> Result<Written>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        if let Some(n) = expected_len
            && n > max
        {
            return Err(too_large(n, max));
        }
        let mut body = std::pin::pin!(body);
        let (tmp, file) = self.create_tmp()?;
        let mut guard = TmpGuard(Some(tmp.clone()));
        let mut file = Some(file);
        let mut sha = Sha256::new();
        let mut md5 = Md5::new();
        let mut size = 0u64;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                bucket_err(
                    Code::IncompleteBody,
                    format!("the request body ended early: {e}"),
                )
            })?;
            size += chunk.len() as u64;
            if size > max {
                return Err(too_large(size, max));
            }
            if expected_len.is_some_and(|n| size > n) {
                return Err(bucket_err(
                    Code::IncompleteBody,
                    "the body is longer than its declared length",
                ));
            }
            sha.update(&chunk);
            md5.update(&chunk);
            if buf.is_empty() && chunk.len() >= WRITE_CHUNK {
                file = Some(write_blocking(file.take(), chunk.to_vec(), &tmp).await?);
                continue;
            }
            buf.extend_from_slice(&chunk);
            if buf.len() >= WRITE_CHUNK {
                file = Some(write_blocking(file.take(), std::mem::take(&mut buf), &tmp).await?);
            }
        }
        if let Some(n) = expected_len
            && n != size
        {
            return Err(bucket_err(
                Code::IncompleteBody,
                format!("the body has {size} bytes, its declared length is {n}"),
            ));
        }
        let written = Written {
            sha256: hex::encode(sha.finalize()),
            md5: md5.finalize().into(),
            size,
        };
        let dest = self.path(&written.sha256);
        let file = file.take();
        tokio::task::spawn_blocking(move || finish(file, buf, &tmp, &dest))
            .await
            .map_err(|e| Error::Config(format!("blob writer task failed: {e}")))??;
        guard.0 = None;
        Ok(written)
    }

    /// Writes the concatenation of the blobs `parts` as one new blob (multipart
    /// completion). The parts are left as they are.
    pub async fn concat(&self, parts: Vec<String>) -> Result<Written> {
        let paths: Vec<PathBuf> = parts.iter().map(|p| self.path(p)).collect();
        let stream = futures::stream::iter(paths)
            .map(|p| read_range(p, 0, u64::MAX))
            .flatten();
        self.write(stream, u64::MAX, None).await
    }

    /// Removes every blob not in `keep` whose modification time is before `older_than`
    /// (blobs being written or just reused are newer). Returns how many were removed.
    pub fn sweep(&self, keep: &HashSet<String>, older_than: SystemTime) -> usize {
        let mut removed = 0;
        let Ok(shards) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else {
                continue;
            };
            for f in files.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if keep.contains(&name) {
                    continue;
                }
                let old = f
                    .metadata()
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t < older_than);
                if old && std::fs::remove_file(f.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    fn create_tmp(&self) -> Result<(PathBuf, std::fs::File)> {
        let path = self
            .root
            .join(format!("{TMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        Ok((path, file))
    }
}

/// Bytes read from disk at a time when streaming a blob.
const READ_CHUNK: usize = 256 << 10;

/// Streams `len` bytes of the file at `path` from `start` (fewer if the file ends).
pub fn read_range(
    path: PathBuf,
    start: u64,
    len: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    futures::stream::try_unfold(
        (None::<tokio::fs::File>, path, start, len),
        |(file, path, start, left)| async move {
            if left == 0 {
                return Ok(None);
            }
            let mut file = match file {
                Some(f) => f,
                None => {
                    let mut f = tokio::fs::File::open(&path).await?;
                    f.seek(std::io::SeekFrom::Start(start)).await?;
                    f
                }
            };
            let want = READ_CHUNK.min(usize::try_from(left).unwrap_or(usize::MAX));
            let mut buf = bytes::BytesMut::zeroed(want);
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some((
                buf.freeze(),
                (Some(file), path, start, left - n as u64),
            )))
        },
    )
}

/// How long a blob written but not yet referenced is kept from [`BlobStore::sweep`].
pub const SWEEP_GRACE: Duration = Duration::from_secs(3600);

fn too_large(size: u64, max: u64) -> Error {
    bucket_err(
        Code::EntityTooLarge,
        format!("the object is {size} bytes or more; this bucket takes at most {max}"),
    )
}

/// Removes the temp file unless disarmed (an early return or a dropped future).
struct TmpGuard(Option<PathBuf>);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn write_blocking(
    file: Option<std::fs::File>,
    data: Vec<u8>,
    tmp: &Path,
) -> Result<std::fs::File> {
    let tmp = tmp.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut file = file.ok_or_else(|| Error::Config("blob file already closed".into()))?;
        file.write_all(&data).map_err(io_err(&tmp))?;
        Ok(file)
    })
    .await
    .map_err(|e| Error::Config(format!("blob writer task failed: {e}")))?
}

/// Writes the rest, syncs, moves into place (or drops the copy when the blob exists,
/// touching it so a concurrent sweep keeps it) and syncs the directory.
fn finish(file: Option<std::fs::File>, rest: Vec<u8>, tmp: &Path, dest: &Path) -> Result<()> {
    let mut file = file.ok_or_else(|| Error::Config("blob file already closed".into()))?;
    file.write_all(&rest).map_err(io_err(tmp))?;
    if dest.exists() {
        drop(file);
        let _ = std::fs::remove_file(tmp);
        if let Ok(f) = std::fs::OpenOptions::new().append(true).open(dest) {
            let _ = f.set_modified(SystemTime::now());
        }
        return Ok(());
    }
    file.sync_all().map_err(io_err(tmp))?;
    drop(file);
    let dir = dest.parent().expect("blob paths have a shard directory");
    ensure_private_dir(dir)?;
    std::fs::rename(tmp, dest).map_err(io_err(dest))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&[u8]]) -> impl Stream<Item = std::result::Result<Bytes, String>> + use<> {
        let v: Vec<_> = parts
            .iter()
            .map(|p| Ok(Bytes::copy_from_slice(p)))
            .collect();
        futures::stream::iter(v)
    }

    fn code(e: Error) -> Code {
        match e {
            Error::Bucket { code, .. } => code,
            other => panic!("unexpected {other}"),
        }
    }

    #[tokio::test]
    async fn writes_dedups_and_refuses_bad_bodies_without_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let w = blobs
            .write(chunks(&[b"hello ", b"world"]), 100, Some(11))
            .await
            .unwrap();
        assert_eq!(w.size, 11);
        assert_eq!(hex::encode(w.md5), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(
            std::fs::read(blobs.path(&w.sha256)).unwrap(),
            b"hello world"
        );
        let again = blobs
            .write(chunks(&[b"hello world"]), 100, None)
            .await
            .unwrap();
        assert_eq!(again, w);

        assert_eq!(
            code(
                blobs
                    .write(chunks(&[b"0123456789", b"x"]), 10, None)
                    .await
                    .unwrap_err()
            ),
            Code::EntityTooLarge
        );
        assert_eq!(
            code(
                blobs
                    .write(chunks(&[b"short"]), 100, Some(50))
                    .await
                    .unwrap_err()
            ),
            Code::IncompleteBody
        );
        let failing = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"abc")),
            Err("connection reset".to_owned()),
        ]);
        assert_eq!(
            code(blobs.write(failing, 100, None).await.unwrap_err()),
            Code::IncompleteBody
        );
        // Only the one blob is on disk: no temp file was left behind.
        let mut files = 0;
        for shard in std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap() {
            let shard = shard.unwrap();
            assert!(shard.file_type().unwrap().is_dir(), "{:?}", shard.path());
            files += std::fs::read_dir(shard.path()).unwrap().count();
        }
        assert_eq!(files, 1);
    }

    #[tokio::test]
    async fn concat_and_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = BlobStore::open(dir.path()).unwrap();
        let a = blobs.write(chunks(&[b"abc"]), 100, None).await.unwrap();
        let b = blobs.write(chunks(&[b"def"]), 100, None).await.unwrap();
        let ab = blobs
            .concat(vec![a.sha256.clone(), b.sha256.clone()])
            .await
            .unwrap();
        assert_eq!(std::fs::read(blobs.path(&ab.sha256)).unwrap(), b"abcdef");
        // Nothing is old enough yet.
        assert_eq!(
            blobs.sweep(&HashSet::new(), SystemTime::now() - SWEEP_GRACE),
            0
        );
        let keep: HashSet<String> = [ab.sha256.clone()].into();
        assert_eq!(
            blobs.sweep(&keep, SystemTime::now() + Duration::from_secs(1)),
            2
        );
        assert!(blobs.path(&ab.sha256).exists());
        assert!(!blobs.path(&a.sha256).exists());
    }
}
