//! File helpers that get permissions right: every file of the data dir is written
//! 0600 (created with that mode, never widened), atomically via a temp file and rename;
//! the data dir is taken at start by [`take_data_dir`] (the lock, then every mode in
//! it forced: `verge_datadir`, decision 014).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{Result, io_err};

fn write_mode(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io_err(&tmp))?;
        // An existing temp file keeps its old mode: force ours.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err(&tmp))?;
        f.write_all(data).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

/// Writes a secret: mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    write_mode(path, data, 0o600)
}

/// Writes a file that is not secret (a certificate, an address). Still 0600: every
/// file in the data dir is (decision 014); whoever needs it reads it as the cloud's user.
pub fn write_public(path: &Path, data: &[u8]) -> Result<()> {
    write_mode(path, data, 0o600)
}

pub fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Creates a directory (and parents) with mode 0700 if missing.
pub fn ensure_private_dir(path: &Path) -> Result<()> {
    if !path.exists() {
        fs::create_dir_all(path).map_err(io_err(path))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(io_err(path))?;
    }
    Ok(())
}

/// Takes the data dir for this process at start: creates it (0700) if missing, takes
/// its lock (refused while another process — a running cloud, `recover-admin` — holds
/// it), then forces the modes of everything in it (directories 0700, files without
/// group/other bits; bounded, no symlink followed). Hold the lock until the end.
pub fn take_data_dir(dir: &Path, what: &str) -> Result<verge_datadir::DataDirLock> {
    ensure_private_dir(dir)?;
    let lock = verge_datadir::DataDirLock::acquire(dir, what)?;
    verge_datadir::secure_tree_logged(dir)?;
    Ok(lock)
}
