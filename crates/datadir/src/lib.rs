//! How a Verge process holds its data directory (`verge cloud`, `verge-edge`).
//!
//! - **Modes.** The directory and every directory below it are 0700; every file loses
//!   its group and other bits (0644 → 0600; an unpacked executable 0755 → 0700, so the
//!   owner can still run it). [`secure_tree`] forces this at every start, whatever an
//!   older version, a restore from backup or an operator's `chmod` left behind. The walk
//!   is bounded ([`MAX_ENTRIES`], [`MAX_DEPTH`]) and never follows a symlink: a link is
//!   neither changed nor entered, so nothing outside the directory is touched through
//!   it. [`tightened`] is the rule as a pure function.
//! - **Lock.** [`DataDirLock`] is an exclusive `flock` on `DIR/verge.lock`, held for the
//!   process's life (the kernel drops it when the process dies, also on kill -9). A
//!   second holder is refused with [`Error::Held`] naming the pid that holds it; offline
//!   tools (`verge cloud recover-admin`) take the same lock, so they never write a store
//!   that a running process owns.
//!
//! What this crate must not do: create files other than the lock, read file contents,
//! or follow links out of the directory.

use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the data dir and every directory in it.
pub const DIR_MODE: u32 = 0o700;
/// The bits a file keeps (the owner's).
pub const FILE_KEEP_BITS: u32 = 0o700;
/// Entries [`secure_tree`] visits at most; past it the walk stops and says so.
pub const MAX_ENTRIES: usize = 1_000_000;
/// Directory levels below the data dir [`secure_tree`] enters at most.
pub const MAX_DEPTH: usize = 64;
/// The lock file's name in the data dir.
pub const LOCK_FILE: &str = "verge.lock";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the data dir.
    #[error("{dir} is in use by {holder} (it holds {dir}/{LOCK_FILE}); stop that process first")]
    Held { dir: String, holder: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

/// What an entry of the data dir is, as far as modes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    /// Symlinks, sockets, FIFOs, devices: left alone.
    Other,
}

impl EntryKind {
    pub fn of(t: &fs::FileType) -> Self {
        if t.is_symlink() {
            EntryKind::Other
        } else if t.is_dir() {
            EntryKind::Dir
        } else if t.is_file() {
            EntryKind::File
        } else {
            EntryKind::Other
        }
    }
}

/// The mode an entry must get, or `None` when its mode is already right (or it is not
/// ours to change). `mode` is `st_mode`'s permission part (higher bits are ignored).
pub fn tightened(kind: EntryKind, mode: u32) -> Option<u32> {
    let mode = mode & 0o7777;
    let want = match kind {
        EntryKind::Dir => DIR_MODE,
        EntryKind::File => mode & FILE_KEEP_BITS,
        EntryKind::Other => return None,
    };
    (want != mode).then_some(want)
}

/// What [`secure_tree`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Entries looked at (the root not counted).
    pub visited: usize,
    /// Entries whose mode was changed (the root included).
    pub changed: usize,
    /// Entries that could not be read or changed (e.g. owned by another user).
    pub failed: usize,
    /// The first failure, for the log.
    pub first_failure: Option<String>,
    /// The walk stopped at [`MAX_ENTRIES`] or did not enter directories past
    /// [`MAX_DEPTH`].
    pub truncated: bool,
}

impl Report {
    fn fail(&mut self, path: &Path, e: &std::io::Error) {
        self.failed += 1;
        if self.first_failure.is_none() {
            self.first_failure = Some(format!("{}: {e}", path.display()));
        }
    }
}

/// [`secure_tree`], then logs what it changed, what it could not change and whether
/// the walk stopped at its bound: what a process does with its data dir at each start.
pub fn secure_tree_logged(root: &Path) -> Result<Report> {
    let report = secure_tree(root)?;
    if report.changed > 0 {
        tracing::info!(
            dir = %root.display(),
            changed = report.changed,
            "tightened modes in the data dir (directories 0700, files 0600)"
        );
    }
    if report.failed > 0 {
        tracing::warn!(
            dir = %root.display(),
            failed = report.failed,
            first = report.first_failure.as_deref().unwrap_or(""),
            "could not tighten the modes of some entries of the data dir"
        );
    }
    if report.truncated {
        tracing::warn!(
            dir = %root.display(),
            max_entries = MAX_ENTRIES,
            max_depth = MAX_DEPTH,
            "data dir walk stopped at its bound; entries past it keep their modes"
        );
    }
    Ok(report)
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// Creates `root` (mode 0700) if missing, forces it to 0700, then walks it: every
/// directory 0700, every file without group/other bits. Symlinks are never followed or
/// changed (`root` itself may be a link: the operator chose that path). Entries that
/// vanish during the walk are skipped; entries that cannot be changed are counted in
/// [`Report::failed`] and the walk goes on. Only `root` failing is an error.
///
/// The data dir is 0700 before the walk starts, so only its owner (or root) could
/// swap an entry for a link between the check and the `chmod`.
pub fn secure_tree(root: &Path) -> Result<Report> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(root)
        .map_err(io_err(root))?;
    let mut report = Report::default();
    let meta = fs::metadata(root).map_err(io_err(root))?;
    if let Some(mode) = tightened(EntryKind::Dir, meta.permissions().mode()) {
        set_mode(root, mode).map_err(io_err(root))?;
        report.changed += 1;
    }
    let mut stack: Vec<(PathBuf, usize)> = vec![(root.to_path_buf(), 1)];
    while let Some((dir, depth)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                report.fail(&dir, &e);
                continue;
            }
        };
        for entry in entries {
            if report.visited >= MAX_ENTRIES {
                report.truncated = true;
                return Ok(report);
            }
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    report.fail(&dir, &e);
                    continue;
                }
            };
            report.visited += 1;
            let path = entry.path();
            // `DirEntry::metadata` does not follow symlinks.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    report.fail(&path, &e);
                    continue;
                }
            };
            let kind = EntryKind::of(&meta.file_type());
            if let Some(mode) = tightened(kind, meta.permissions().mode()) {
                match set_mode(&path, mode) {
                    Ok(()) => report.changed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => report.fail(&path, &e),
                }
            }
            if kind == EntryKind::Dir {
                if depth < MAX_DEPTH {
                    stack.push((path, depth + 1));
                } else {
                    report.truncated = true;
                }
            }
        }
    }
    Ok(report)
}

/// The exclusive lock on a data dir (see the module documentation). Released when
/// dropped or when the process exits.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock on `dir` (which must exist) for `what` (e.g. `"verge cloud"`,
    /// written into the lock file with the pid, so a refused process can say who holds
    /// it). Never waits: a held lock is [`Error::Held`] at once.
    pub fn acquire(dir: &Path, what: &str) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let holder = match holder.split_once(' ') {
                    Some((pid, name)) => format!("{name} (pid {pid})"),
                    None if !holder.is_empty() => format!("pid {holder}"),
                    None => "another process".to_string(),
                };
                return Err(Error::Held {
                    dir: dir.display().to_string(),
                    holder,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
        }
        let note = format!("{} {what}\n", std::process::id());
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(note.as_bytes()))
            .map_err(io_err(&path))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_rule() {
        assert_eq!(tightened(EntryKind::Dir, 0o755), Some(0o700));
        assert_eq!(tightened(EntryKind::Dir, 0o700), None);
        assert_eq!(tightened(EntryKind::Dir, 0o500), Some(0o700));
        assert_eq!(tightened(EntryKind::Dir, 0o40755), Some(0o700));
        assert_eq!(tightened(EntryKind::File, 0o644), Some(0o600));
        assert_eq!(tightened(EntryKind::File, 0o666), Some(0o600));
        assert_eq!(tightened(EntryKind::File, 0o600), None);
        assert_eq!(tightened(EntryKind::File, 0o755), Some(0o700));
        assert_eq!(tightened(EntryKind::File, 0o4755), Some(0o700));
        assert_eq!(tightened(EntryKind::File, 0o400), None);
        assert_eq!(tightened(EntryKind::File, 0o100644), Some(0o600));
        assert_eq!(tightened(EntryKind::Other, 0o777), None);
    }

    #[test]
    fn secure_tree_tightens_everything_below_and_follows_no_link() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("a/b")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(root.join("store.db"), b"x").unwrap();
        fs::write(root.join("a/b/cache"), b"x").unwrap();
        fs::write(root.join("a/run.sh"), b"x").unwrap();
        fs::write(outside.join("theirs"), b"x").unwrap();
        symlink(&outside, root.join("a/link-dir")).unwrap();
        symlink(outside.join("theirs"), root.join("link-file")).unwrap();
        for (p, m) in [
            (root.clone(), 0o755),
            (root.join("a"), 0o777),
            (root.join("a/b"), 0o755),
            (root.join("store.db"), 0o644),
            (root.join("a/b/cache"), 0o666),
            (root.join("a/run.sh"), 0o755),
            (outside.clone(), 0o755),
            (outside.join("theirs"), 0o644),
        ] {
            set_mode(&p, m).unwrap();
        }
        let report = secure_tree(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&root.join("a")), 0o700);
        assert_eq!(mode(&root.join("a/b")), 0o700);
        assert_eq!(mode(&root.join("store.db")), 0o600);
        assert_eq!(mode(&root.join("a/b/cache")), 0o600);
        assert_eq!(mode(&root.join("a/run.sh")), 0o700, "owner keeps exec");
        assert_eq!(mode(&outside), 0o755, "a linked dir is not touched");
        assert_eq!(
            mode(&outside.join("theirs")),
            0o644,
            "a linked file is not touched"
        );
        assert_eq!(report.changed, 6);
        assert_eq!(report.failed, 0);
        assert!(!report.truncated);
        // A second pass changes nothing.
        assert_eq!(secure_tree(&root).unwrap().changed, 0);
    }

    #[test]
    fn secure_tree_creates_a_missing_dir_private() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("new/data");
        secure_tree(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
    }

    #[test]
    fn the_walk_is_bounded_in_depth() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("data");
        let mut deep = root.clone();
        for _ in 0..MAX_DEPTH + 2 {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let report = secure_tree(&root).unwrap();
        assert!(report.truncated);
        assert_eq!(report.visited, MAX_DEPTH);
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let lock = DataDirLock::acquire(tmp.path(), "verge cloud").unwrap();
        assert_eq!(mode(lock.path()), 0o600);
        let err = DataDirLock::acquire(tmp.path(), "verge cloud recover-admin").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("verge cloud (pid {})", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains("stop that process first"), "{msg}");
        drop(lock);
        DataDirLock::acquire(tmp.path(), "verge cloud recover-admin").unwrap();
    }
}
