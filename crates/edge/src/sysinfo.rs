//! System facts for [`NodeStatus`]: architecture, OS, kernel, CPUs, memory, disk, and
//! the `MemoryPressure` / `DiskPressure` / `Ready` conditions. Read straight from
//! `/proc`, `/etc/os-release`, `uname(2)` and `statvfs(2)`: no system-info crate.
//!
//! [`collect`] fills what the system knows. The caller (the uplink) fills the rest:
//! `labels`, `queue`, `appliedRevision` (left empty / default / 0 here), and may
//! override `agentVersion` (default: this crate's version) and `Ready`. Conditions
//! carry `lastTransitionMs = now`; keep real transition times across reports with
//! [`carry_transitions`].
//!
//! The parsers take `&str` so they are tested on sample files.

use crate::now_ms;
use std::collections::BTreeMap;
use std::path::Path;

use verge_proto::messages::MAX_SHORT_STRING;
use verge_proto::{Condition, ConditionType, NodeStatus, QueueStats};

/// When the pressure conditions turn on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// `MemoryPressure` when available memory is below this percentage of the total.
    pub memory_percent: f64,
    /// `DiskPressure` when free space on the data dir's filesystem is below this
    /// percentage of its size.
    pub disk_percent: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            memory_percent: 5.0,
            disk_percent: 10.0,
        }
    }
}

/// `(total, available)` bytes from `/proc/meminfo` text: `MemTotal` and
/// `MemAvailable`; on kernels before 3.14 (no `MemAvailable`), `MemFree + Buffers +
/// Cached`.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let mut fields = BTreeMap::new();
    for line in text.lines() {
        let Some((key, rest)) = line.split_once(':') else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let Some(Ok(value)) = parts.next().map(str::parse::<u64>) else {
            continue;
        };
        let bytes = match parts.next() {
            Some("kB") => value.saturating_mul(1024),
            None => value,
            Some(_) => continue,
        };
        fields.insert(key.trim(), bytes);
    }
    let total = *fields.get("MemTotal")?;
    let available = match fields.get("MemAvailable") {
        Some(a) => *a,
        None => {
            fields.get("MemFree")?
                + fields.get("Buffers").copied().unwrap_or(0)
                + fields.get("Cached").copied().unwrap_or(0)
        }
    };
    Some((total, available.min(total)))
}

/// `PRETTY_NAME` from `/etc/os-release` text (quotes and escapes removed); `None` if
/// absent or empty.
pub fn parse_os_release(text: &str) -> Option<String> {
    for line in text.lines() {
        let Some(value) = line.trim().strip_prefix("PRETTY_NAME=") else {
            continue;
        };
        let value = value.trim();
        let unquoted = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            &value[1..value.len() - 1]
        } else {
            value
        };
        let mut out = String::with_capacity(unquoted.len());
        let mut chars = unquoted.chars();
        while let Some(c) = chars.next() {
            if c == '\\' {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            } else {
                out.push(c);
            }
        }
        let out = out.trim().to_owned();
        return (!out.is_empty()).then_some(out);
    }
    None
}

/// Cuts `s` to at most `max` bytes on a char boundary (protocol string bounds).
fn bounded(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 100.0;
    }
    part as f64 * 100.0 / whole as f64
}

/// A pressure condition: on when `free` is below `threshold` percent of `total`;
/// `Unknown` (off) when the total could not be read.
fn pressure(
    kind: ConditionType,
    what: &str,
    total: u64,
    free: u64,
    threshold: f64,
    now: i64,
) -> Condition {
    let (status, reason, message) = if total == 0 {
        (false, "Unknown", format!("{what} could not be read"))
    } else {
        let pct = percent(free, total);
        if pct < threshold {
            (
                true,
                "Low",
                format!("{pct:.1}% {what} available, below the {threshold}% threshold"),
            )
        } else {
            (false, "Sufficient", format!("{pct:.1}% {what} available"))
        }
    };
    Condition {
        condition_type: kind,
        status,
        reason: reason.into(),
        message,
        last_transition_ms: now,
    }
}

/// Builds the conditions from the numbers (pure, for tests).
pub fn conditions(
    memory: (u64, u64),
    disk: (u64, u64),
    thresholds: &Thresholds,
    now: i64,
) -> Vec<Condition> {
    vec![
        Condition {
            condition_type: ConditionType::Ready,
            status: true,
            reason: "AgentRunning".into(),
            message: "the edge agent is running".into(),
            last_transition_ms: now,
        },
        pressure(
            ConditionType::MemoryPressure,
            "memory",
            memory.0,
            memory.1,
            thresholds.memory_percent,
            now,
        ),
        pressure(
            ConditionType::DiskPressure,
            "disk",
            disk.0,
            disk.1,
            thresholds.disk_percent,
            now,
        ),
    ]
}

/// The `FunctionSandbox` condition: true when python3/node workers run sandboxed;
/// otherwise the reason (`Unavailable`: they do not start; `Disabled`: the operator
/// runs them unsandboxed).
pub fn sandbox_condition(st: &verge_runtime::SandboxStatus, now: i64) -> Condition {
    let (status, reason) = match st.state.as_str() {
        "enforced" => (true, "Enforced"),
        "disabled" => (false, "Disabled"),
        _ => (false, "Unavailable"),
    };
    let message = match (&st.reason, st.uid) {
        (Some(r), _) => r.clone(),
        (None, Some(uid)) => format!(
            "function workers run as uid {uid} in their own namespaces, cgroup and seccomp filter"
        ),
        (None, None) => String::new(),
    };
    let mut message = message;
    crate::workloads::truncate_utf8(&mut message, verge_proto::messages::MAX_CONDITION_MESSAGE);
    Condition {
        condition_type: ConditionType::FunctionSandbox,
        status,
        reason: reason.into(),
        message,
        last_transition_ms: now,
    }
}

/// Keeps `lastTransitionMs` from `previous` for every condition whose status did not
/// change.
pub fn carry_transitions(previous: &[Condition], current: &mut [Condition]) {
    for c in current {
        if let Some(p) = previous
            .iter()
            .find(|p| p.condition_type == c.condition_type && p.status == c.status)
        {
            c.last_transition_ms = p.last_transition_ms;
        }
    }
}

/// `(total, free)` bytes of the filesystem holding `path` (free = available to
/// unprivileged users); `(0, 0)` if it cannot be read.
// The statvfs fields are `c_ulong`/`fsblkcnt_t`: u64 here, u32 on some 32-bit targets
// the agent cross-compiles to, so the casts are needed there.
#[allow(clippy::unnecessary_cast)]
pub fn disk_usage(path: &Path) -> (u64, u64) {
    match nix::sys::statvfs::statvfs(path) {
        Ok(st) => {
            let frag = st.fragment_size() as u64;
            (
                (st.blocks() as u64).saturating_mul(frag),
                (st.blocks_available() as u64).saturating_mul(frag),
            )
        }
        Err(e) => {
            tracing::debug!(path = %path.display(), error = %e, "statvfs failed");
            (0, 0)
        }
    }
}

/// The node's status as far as the system knows it (see the module docs for what the
/// caller fills). Never fails: what cannot be read is 0 / `"unknown"`.
pub fn collect(data_dir: &Path, thresholds: &Thresholds) -> NodeStatus {
    let now = now_ms();
    let os = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| parse_os_release(&t))
        .unwrap_or_else(|| "linux".to_owned());
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_owned());
    let cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1);
    let (mem_total, mem_free) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| parse_meminfo(&t))
        .unwrap_or((0, 0));
    let (disk_total, disk_free) = disk_usage(data_dir);
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_owned(), cpus.to_string());
    if mem_total > 0 {
        capacity.insert(
            "memory".to_owned(),
            format!("{}Mi", mem_total / (1024 * 1024)),
        );
    }
    NodeStatus {
        arch: std::env::consts::ARCH.to_owned(),
        os: bounded(os, MAX_SHORT_STRING),
        kernel: bounded(kernel, MAX_SHORT_STRING),
        cpus,
        memory_bytes: mem_total,
        disk_bytes: disk_total,
        disk_free_bytes: disk_free,
        memory_free_bytes: mem_free,
        agent_version: crate::AGENT_VERSION.to_owned(),
        labels: BTreeMap::new(),
        capacity,
        conditions: conditions(
            (mem_total, mem_free),
            (disk_total, disk_free),
            thresholds,
            now,
        ),
        queue: QueueStats::default(),
        applied_revision: 0,
        sent_at_ms: now,
        apps: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:        8044564 kB
MemFree:          325444 kB
MemAvailable:    2123456 kB
Buffers:          123456 kB
Cached:          1500000 kB
SwapCached:            0 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
";

    #[test]
    fn meminfo() {
        assert_eq!(
            parse_meminfo(MEMINFO),
            Some((8_044_564 * 1024, 2_123_456 * 1024))
        );
        // Old kernels: no MemAvailable.
        let old = "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 50 kB\nCached: 250 kB\n";
        assert_eq!(parse_meminfo(old), Some((1000 * 1024, 400 * 1024)));
        assert_eq!(parse_meminfo("garbage\n"), None);
        assert_eq!(parse_meminfo("MemFree: 1 kB\n"), None);
        assert_eq!(parse_meminfo(""), None);
    }

    #[test]
    fn os_release() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nID=debian\n";
        assert_eq!(
            parse_os_release(debian).as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(
            parse_os_release("ID=x\nPRETTY_NAME='Alpine Linux v3.19'\n").as_deref(),
            Some("Alpine Linux v3.19")
        );
        assert_eq!(
            parse_os_release("PRETTY_NAME=OpenWrt\n").as_deref(),
            Some("OpenWrt")
        );
        assert_eq!(
            parse_os_release(r#"PRETTY_NAME="Say \"hi\"""#).as_deref(),
            Some(r#"Say "hi""#)
        );
        assert_eq!(parse_os_release("NAME=x\n"), None);
        assert_eq!(parse_os_release("PRETTY_NAME=\"\"\n"), None);
    }

    fn get(cs: &[Condition], t: ConditionType) -> &Condition {
        cs.iter().find(|c| c.condition_type == t).unwrap()
    }

    #[test]
    fn pressure_conditions() {
        let t = Thresholds::default();
        let cs = conditions((1000, 40), (1000, 500), &t, 7);
        assert!(get(&cs, ConditionType::MemoryPressure).status);
        assert!(!get(&cs, ConditionType::DiskPressure).status);
        assert!(get(&cs, ConditionType::Ready).status);
        let cs = conditions((1000, 50), (1000, 99), &t, 7);
        assert!(
            !get(&cs, ConditionType::MemoryPressure).status,
            "5% is not below 5%"
        );
        assert!(get(&cs, ConditionType::DiskPressure).status);
        let cs = conditions((0, 0), (0, 0), &t, 7);
        assert_eq!(get(&cs, ConditionType::DiskPressure).reason, "Unknown");
        assert!(!get(&cs, ConditionType::DiskPressure).status);
    }

    #[test]
    fn transitions_are_carried_only_when_status_is_unchanged() {
        let t = Thresholds::default();
        let prev = conditions((1000, 500), (1000, 500), &t, 1);
        let mut cur = conditions((1000, 10), (1000, 500), &t, 2);
        carry_transitions(&prev, &mut cur);
        assert_eq!(
            get(&cur, ConditionType::MemoryPressure).last_transition_ms,
            2
        );
        assert_eq!(get(&cur, ConditionType::DiskPressure).last_transition_ms, 1);
        assert_eq!(get(&cur, ConditionType::Ready).last_transition_ms, 1);
    }

    #[test]
    fn collect_reads_this_machine_and_is_valid() {
        let dir = tempfile::tempdir().unwrap();
        let st = collect(dir.path(), &Thresholds::default());
        assert_eq!(st.arch, std::env::consts::ARCH);
        assert!(st.cpus >= 1);
        assert!(st.memory_bytes > 0 && st.memory_free_bytes <= st.memory_bytes);
        assert!(st.disk_bytes > 0 && st.disk_free_bytes <= st.disk_bytes);
        assert!(!st.kernel.is_empty() && !st.os.is_empty());
        assert_eq!(st.conditions.len(), 3);
        // What collect builds passes the protocol's own checks.
        verge_proto::Message::NodeStatus(Box::new(st))
            .validate()
            .unwrap();
    }
}
