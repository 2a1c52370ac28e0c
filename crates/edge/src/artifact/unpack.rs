//! Unpacking untrusted tar / tar.gz artifacts into a directory: the I/O half. It reads
//! entries with [`super::tar_reader`] (bounded before anything is allocated), asks
//! [`super::tree`] whether each may be created, and creates only what that allows.
//! It must not follow a symlink when it writes, and must not decide policy itself.
//!
//! - Recognised by magic bytes (gzip, or `ustar` at offset 257), never by name.
//! - Everything goes into `DIR.tmp` (removed first if a crash left one), which is
//!   renamed to `DIR` only when the whole archive passed, so a refused or broken
//!   archive never leaves a `DIR` behind, half-unpacked or with an escaping link.
//! - Files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`, directories with `mkdir`,
//!   links with `symlink` / `link` (none of which follows a symlink in the last name),
//!   and every parent is a directory this unpack made ([`super::tree::Tree::add`]).
//! - Permission bits are kept up to `0o755` (no setuid/setgid/sticky, nothing
//!   group/other-writable); owners and times are not restored.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::tar_reader::{Kind, Problem, ReadLimits, TarReader};
use super::tree::{Node, Tree, normalize, show};
use crate::error::{Error, Result, io_err};

/// Default bound on what one archive may unpack to: its decompressed bytes
/// (headers, data and padding).
pub const MAX_UNPACKED_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default bound on the number of entries of one archive (every header counts,
/// extension headers included).
pub const MAX_ENTRIES: u64 = 100_000;
/// Default bound on an entry's path and a link's target, in bytes.
pub const MAX_PATH_BYTES: usize = 2048;
/// Default bound on a GNU long-name / long-link header's data.
pub const MAX_LONG_NAME_HEADER: u64 = 4 * 1024;
/// Default bound on a PAX extended header's data.
pub const MAX_PAX_HEADER: u64 = 64 * 1024;
/// Default bound on the names and link targets kept in memory while unpacking.
pub const MAX_META_BYTES: u64 = 16 * 1024 * 1024;
/// Name of the ready marker `install` writes into an unpacked directory; an archive
/// may not bring its own.
pub(crate) const RESERVED_NAME: &str = ".verge-ready";

/// Bounds for [`unpack_with_limits`].
#[derive(Debug, Clone, Copy)]
pub struct UnpackLimits {
    /// Decompressed bytes of the archive (headers, data and padding).
    pub max_bytes: u64,
    /// Entries, extension headers included.
    pub max_entries: u64,
    /// Bytes of an entry's path or a link's target.
    pub max_path: usize,
    /// Bytes of a GNU long-name / long-link header.
    pub max_long_name: u64,
    /// Bytes of a PAX extended header.
    pub max_pax: u64,
    /// Bytes of names and link targets kept in memory.
    pub max_meta: u64,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        Self {
            max_bytes: MAX_UNPACKED_BYTES,
            max_entries: MAX_ENTRIES,
            max_path: MAX_PATH_BYTES,
            max_long_name: MAX_LONG_NAME_HEADER,
            max_pax: MAX_PAX_HEADER,
            max_meta: MAX_META_BYTES,
        }
    }
}

/// What an archive file is, from its first bytes.
enum ArchiveKind {
    Tar,
    TarGz,
}

/// `ustar` at offset 257 (POSIX `ustar\0`, GNU `ustar `), or an all-zero first block
/// (an empty archive).
fn is_tar_header(block: &[u8]) -> bool {
    block.len() >= 512 && (&block[257..262] == b"ustar" || block[..512].iter().all(|b| *b == 0))
}

/// Reads up to `buf.len()` bytes (fewer only at the end of the input).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn detect(archive: &Path) -> Result<ArchiveKind> {
    let not_archive = || Error::NotAnArchive {
        path: archive.to_path_buf(),
    };
    let mut f = std::fs::File::open(archive).map_err(io_err(archive))?;
    let mut head = [0u8; 512];
    let n = read_full(&mut f, &mut head).map_err(io_err(archive))?;
    if n >= 2 && head[..2] == [0x1f, 0x8b] {
        // gzip: it must hold a tar.
        let f = std::fs::File::open(archive).map_err(io_err(archive))?;
        let mut gz = flate2::read::GzDecoder::new(f);
        let mut inner = [0u8; 512];
        let n = read_full(&mut gz, &mut inner).map_err(|_| not_archive())?;
        return if n == 512 && is_tar_header(&inner) {
            Ok(ArchiveKind::TarGz)
        } else {
            Err(not_archive())
        };
    }
    if n == 512 && is_tar_header(&head) {
        return Ok(ArchiveKind::Tar);
    }
    Err(not_archive())
}

/// `DIR.tmp`.
pub(crate) fn tmp_dir(dir: &Path) -> PathBuf {
    let mut s = dir.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Unpacks a `.tar` or `.tar.gz` (by magic bytes) into `dir`, with the default limits.
/// Blocking: call it from `spawn_blocking` in async code.
///
/// A refused archive is [`Error::UnsafeArchive`] (the message names the entry) or
/// [`Error::NotAnArchive`]; failing to write is [`Error::Io`]. Either way `dir` is
/// left as it was and nothing is left of the attempt.
pub fn unpack(archive: &Path, dir: &Path) -> Result<()> {
    unpack_with_limits(archive, dir, UnpackLimits::default())
}

/// [`unpack`] with explicit bounds.
pub fn unpack_with_limits(archive: &Path, dir: &Path, limits: UnpackLimits) -> Result<()> {
    let kind = detect(archive)?;
    let tmp = tmp_dir(dir);
    // A crash may have left one behind.
    remove_tree(&tmp)?;
    DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&tmp)
        .map_err(io_err(&tmp))?;
    let result = (|| {
        let f = std::fs::File::open(archive).map_err(io_err(archive))?;
        let reader: Box<dyn Read> = match kind {
            ArchiveKind::Tar => Box::new(io::BufReader::new(f)),
            ArchiveKind::TarGz => Box::new(flate2::read::GzDecoder::new(io::BufReader::new(f))),
        };
        extract(reader, archive, &tmp, limits)
    })();
    if let Err(e) = result {
        let _ = remove_tree(&tmp);
        return Err(e);
    }
    // Swap in: an existing DIR is moved aside first (a rename cannot replace a
    // non-empty directory), then removed.
    let old = {
        let mut s = dir.as_os_str().to_owned();
        s.push(".old");
        PathBuf::from(s)
    };
    if std::fs::symlink_metadata(dir).is_ok() {
        remove_tree(&old)?;
        std::fs::rename(dir, &old).map_err(io_err(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io_err(dir))?;
    if let Some(parent) = dir.parent()
        && let Ok(d) = std::fs::File::open(parent)
    {
        let _ = d.sync_all();
    }
    remove_tree(&old)?;
    Ok(())
}

/// Removes a file, symlink or directory tree (never following a symlink); a missing
/// path is fine.
pub(crate) fn remove_tree(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).map_err(io_err(path)),
        Ok(_) => std::fs::remove_file(path).map_err(io_err(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn mkdir(path: &Path, mode: u32) -> Result<()> {
    DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(io_err(path))
}

/// Reads every entry and creates what the tree's rules allow under `into` (a fresh,
/// empty directory).
fn extract(reader: Box<dyn Read>, archive: &Path, into: &Path, limits: UnpackLimits) -> Result<()> {
    let refuse = |message: String| Error::UnsafeArchive {
        path: archive.to_path_buf(),
        message,
    };
    let problem = |p: Problem| match p {
        Problem::Refused(m) => refuse(m),
        Problem::Io(e) => Error::Io {
            path: archive.to_path_buf(),
            source: e,
        },
    };
    let mut tar = TarReader::new(
        reader,
        ReadLimits {
            max_bytes: limits.max_bytes,
            max_entries: limits.max_entries,
            max_long_name: limits.max_long_name,
            max_pax: limits.max_pax,
        },
    );
    let mut tree = Tree::new(limits.max_meta);
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(h) = tar.next_entry().map_err(problem)? {
        let rel = normalize(&h.path, limits.max_path).map_err(refuse)?;
        if rel.as_os_str().is_empty() {
            if h.kind == Kind::Dir {
                continue; // `./`: the directory itself
            }
            return Err(refuse(format!(
                "entry {} names the directory itself",
                show(&h.path)
            )));
        }
        if rel == Path::new(RESERVED_NAME) {
            return Err(refuse(format!(
                "entry {} is reserved for the node's ready marker",
                show(&rel)
            )));
        }
        let node = match h.kind {
            Kind::Dir => Node::Dir,
            Kind::File | Kind::HardLink => Node::File,
            Kind::Symlink => {
                let target = h.link.clone().unwrap_or_default();
                let len = target.as_os_str().len();
                if len > limits.max_path {
                    return Err(refuse(format!(
                        "symlink {} has a target of {len} bytes (the limit is {})",
                        show(&rel),
                        limits.max_path
                    )));
                }
                if target.is_absolute() {
                    return Err(refuse(format!(
                        "symlink {} -> {} points outside the directory",
                        show(&rel),
                        show(&target)
                    )));
                }
                Node::Symlink(target)
            }
        };
        // Checked before the tree records the link as a file of its own.
        let link_source = match (&h.kind, &h.link) {
            (Kind::HardLink, Some(t)) => Some(
                tree.hard_link_target(&rel, t, limits.max_path)
                    .map_err(refuse)?,
            ),
            _ => None,
        };
        let added = tree.add(&rel, node).map_err(refuse)?;
        for p in &added.parents {
            mkdir(&into.join(p), 0o755)?;
        }
        if added.existed {
            continue;
        }
        let path = into.join(&rel);
        let mode = h.mode & 0o755;
        match h.kind {
            Kind::Dir => mkdir(&path, mode | 0o700)?,
            Kind::File => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
                    .mode(mode)
                    .open(&path)
                    .map_err(io_err(&path))?;
                loop {
                    let n = tar.read_data(&mut buf).map_err(problem)?;
                    if n == 0 {
                        break;
                    }
                    f.write_all(&buf[..n]).map_err(io_err(&path))?;
                }
            }
            Kind::Symlink => {
                let target = h.link.as_deref().unwrap_or(Path::new(""));
                std::os::unix::fs::symlink(target, &path).map_err(io_err(&path))?;
            }
            Kind::HardLink => {
                let source = into.join(link_source.unwrap_or_default());
                // link(2) does not follow a symlink named by either path.
                std::fs::hard_link(&source, &path).map_err(io_err(&path))?;
            }
        }
    }
    tree.check_symlinks().map_err(refuse)
}

#[cfg(test)]
mod tests;
