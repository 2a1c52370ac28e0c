//! Baselines for the benchmarks: one invocation CGI-style (an interpreter per request).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, Result};

const DRIVER: &str = "import sys, json, importlib\n\
sys.path.insert(0, sys.argv[1])\n\
m, _, f = sys.argv[2].rpartition('.')\n\
fn = getattr(importlib.import_module(m), f)\n\
print(json.dumps(fn(json.loads(sys.argv[3]))))\n";

/// Runs one invocation the fork-per-request way: start `python`, import the handler
/// from `code_dir`, call it with `input`, print the JSON result, exit. Returns the
/// wall time of the whole thing.
pub async fn fork_per_request(
    python: &Path,
    code_dir: &Path,
    handler: &str,
    input: &Value,
) -> Result<Duration> {
    let start = Instant::now();
    let out = tokio::process::Command::new(python)
        .arg("-B")
        .arg("-c")
        .arg(DRIVER)
        .arg(code_dir)
        .arg(handler)
        .arg(input.to_string())
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| Error::io(format!("run {}", python.display()), e))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        return Err(Error::WorkerCrashed {
            message: format!("{} {}", python.display(), out.status),
            logs: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(elapsed)
}

/// The python3 to run: `/usr/bin/python3` if present, else `python3` on PATH resolved
/// to the real executable (`sys.executable`), skipping version-manager shims.
pub fn resolve_python() -> Result<PathBuf> {
    let system = Path::new("/usr/bin/python3");
    if system.is_file() {
        return Ok(system.to_path_buf());
    }
    let unavailable = |why: String| Error::Unavailable {
        message: format!("python3 is not installed ({why}); on Debian: apt-get install python3"),
    };
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys;print(sys.executable)"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| unavailable(format!("python3: {e}")))?;
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || exe.is_empty() {
        return Err(unavailable(format!("python3 exited with {}", out.status)));
    }
    Ok(PathBuf::from(exe))
}
