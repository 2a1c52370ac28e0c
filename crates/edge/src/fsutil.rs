//! Owns how the node touches its data dir: the dir is 0700, files are created 0600
//! (the mode is set by `open(2)` itself, never by a later `chmod`), files are replaced
//! atomically (write a temp file, fsync, rename, fsync the dir); at every start
//! [`secure_data_dir`] forces the modes of everything already there (`verge_datadir`).

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Result, io_err};

/// Mode of the data dir.
pub const DIR_MODE: u32 = 0o700;
/// Mode of secrets (the node key, the identity, the databases).
pub const PRIVATE_MODE: u32 = 0o600;
/// Mode of public material (certificates): 0600 too, like every file in the data dir
/// (decision 014); the node reads them as its own user.
pub const PUBLIC_MODE: u32 = 0o600;

/// Creates `dir` (and its parents) with mode 0700; tightens an existing one to 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io_err(dir))?;
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    if meta.permissions().mode() & 0o777 != DIR_MODE {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// Writes `path` atomically with `mode` set at creation: `path.tmp` is created with
/// `O_CREAT|O_EXCL` and the mode, written, fsynced, renamed over `path`, and the
/// directory fsynced.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = Path::new(&tmp_name);
    match std::fs::remove_file(tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(tmp)(e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(io_err(tmp))?;
    f.write_all(data).map_err(io_err(tmp))?;
    f.sync_all().map_err(io_err(tmp))?;
    drop(f);
    std::fs::rename(tmp, path).map_err(io_err(path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fsyncs a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Opens (or creates, mode 0600) a database file for redb.
pub fn open_private_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_MODE)
        .open(path)
        .map_err(io_err(path))
}

/// Reads a file the node needs; a missing file is [`crate::Error::NotJoined`].
pub fn read_required(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(crate::Error::NotJoined {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Forces the modes of the data dir at start: the dir and every directory in it 0700,
/// every file without group/other bits (an unpacked executable keeps its owner's
/// execute bit); bounded, never following a symlink. Logs what it changed.
pub fn secure_data_dir(dir: &Path) -> Result<()> {
    verge_datadir::secure_tree_logged(dir)?;
    Ok(())
}
