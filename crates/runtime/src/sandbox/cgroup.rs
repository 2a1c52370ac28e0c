//! Control groups for sandboxed workers: one group per worker under a parent named by
//! the host (`verge-fn-cloud`, `verge-fn-{node}`), cgroup v1 (one directory per
//! controller hierarchy) or v2 (one unified directory).
//!
//! Owns creating a worker's group with its limits (memory without swap, pids, cpu
//! quota), killing what is left in it, removing it, and reading its OOM-kill count.
//! It does not put processes into groups: the launcher shell writes its own pid into
//! `cgroup.procs` before it execs the sandbox, so a worker is limited from its first
//! instruction.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const CPU_PERIOD_US: u64 = 100_000;

/// Limits written into a worker's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    pub cpu_millis: u64,
}

/// Where workers' groups are made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1: the parent directory in the memory, pids and cpu hierarchies.
    V1 {
        memory: PathBuf,
        pids: PathBuf,
        cpu: PathBuf,
    },
    /// cgroup v2: the parent directory, with memory, pids and cpu delegated to it.
    V2 { root: PathBuf },
}

impl Hierarchy {
    /// Prepares `parent` under `base` (normally `/sys/fs/cgroup`); the error says why
    /// groups cannot be made here.
    pub fn detect(base: &Path, parent: &str) -> Result<Hierarchy, String> {
        if base.join("cgroup.controllers").exists() {
            let root = base.join(parent);
            let enable = "+memory +pids +cpu";
            let r = std::fs::write(base.join("cgroup.subtree_control"), enable)
                .map_err(|e| format!("enabling controllers in {}: {e}", base.display()))
                .and_then(|_| mkdir(&root))
                .and_then(|_| {
                    std::fs::write(root.join("cgroup.subtree_control"), enable)
                        .map_err(|e| format!("enabling controllers in {}: {e}", root.display()))
                });
            return r.map(|_| Hierarchy::V2 { root });
        }
        let mut dirs = Vec::new();
        for c in ["memory", "pids", "cpu"] {
            let h = base.join(c);
            if !h.is_dir() {
                return Err(format!(
                    "no {c} cgroup hierarchy at {} (cgroup v1) and no cgroup v2 at {}",
                    h.display(),
                    base.display()
                ));
            }
            let d = h.join(parent);
            mkdir(&d)?;
            dirs.push(d);
        }
        let cpu = dirs.pop().unwrap_or_default();
        let pids = dirs.pop().unwrap_or_default();
        let memory = dirs.pop().unwrap_or_default();
        Ok(Hierarchy::V1 { memory, pids, cpu })
    }

    /// Creates (or re-creates, killing leftovers) the group `leaf` with `limits`.
    pub fn create(&self, leaf: &str, limits: &Limits) -> Result<Group, String> {
        let group = self.group(leaf);
        group.kill();
        group.remove();
        for d in &group.dirs {
            mkdir(d)?;
        }
        let write = |p: PathBuf, v: String| {
            std::fs::write(&p, &v).map_err(|e| format!("{}: {e}", p.display()))
        };
        let quota = (limits.cpu_millis * CPU_PERIOD_US / 1000).max(1000);
        match self {
            Hierarchy::V1 { .. } => {
                let (mem, pids, cpu) = (&group.dirs[0], &group.dirs[1], &group.dirs[2]);
                write(
                    mem.join("memory.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                )?;
                // No swapping around the limit, where the kernel accounts swap.
                let _ = std::fs::write(mem.join("memory.swappiness"), "0");
                let _ = std::fs::write(
                    mem.join("memory.memsw.limit_in_bytes"),
                    limits.memory_bytes.to_string(),
                );
                write(pids.join("pids.max"), limits.pids.to_string())?;
                write(cpu.join("cpu.cfs_period_us"), CPU_PERIOD_US.to_string())?;
                write(cpu.join("cpu.cfs_quota_us"), quota.to_string())?;
            }
            Hierarchy::V2 { .. } => {
                let d = &group.dirs[0];
                write(d.join("memory.max"), limits.memory_bytes.to_string())?;
                let _ = std::fs::write(d.join("memory.swap.max"), "0");
                write(d.join("pids.max"), limits.pids.to_string())?;
                write(d.join("cpu.max"), format!("{quota} {CPU_PERIOD_US}"))?;
            }
        }
        Ok(group)
    }

    fn group(&self, leaf: &str) -> Group {
        match self {
            Hierarchy::V1 { memory, pids, cpu } => Group {
                dirs: vec![memory.join(leaf), pids.join(leaf), cpu.join(leaf)],
                v2: false,
            },
            Hierarchy::V2 { root } => Group {
                dirs: vec![root.join(leaf)],
                v2: true,
            },
        }
    }
}

/// One worker's group.
#[derive(Debug)]
pub struct Group {
    /// v1: memory, pids, cpu; v2: the one directory.
    dirs: Vec<PathBuf>,
    v2: bool,
}

impl Group {
    /// The `cgroup.procs` files a process writes its pid into to join.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// SIGKILLs every process in the group (what a worker forked included).
    pub fn kill(&self) -> usize {
        if self.v2 && std::fs::write(self.dirs[0].join("cgroup.kill"), "1").is_ok() {
            return pids_in(&self.dirs[0]).len();
        }
        let mut n = 0;
        for d in &self.dirs {
            for pid in pids_in(d) {
                if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                    n += 1;
                }
            }
        }
        n
    }

    /// Removes the group's directories; processes still in it are killed first. Gives
    /// up quietly after a short wait (a later `create` of the same leaf retries).
    pub fn remove(&self) {
        for attempt in 0..50 {
            let mut left = false;
            for d in &self.dirs {
                if d.exists() && std::fs::remove_dir(d).is_err() {
                    left = true;
                }
            }
            if !left {
                return;
            }
            if attempt == 0 {
                self.kill();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How many times the kernel's OOM killer acted in this group.
    pub fn oom_kills(&self) -> u64 {
        let (file, dir) = if self.v2 {
            ("memory.events", &self.dirs[0])
        } else {
            ("memory.oom_control", &self.dirs[0])
        };
        std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// The largest number of processes the group held at once, where the kernel says.
    pub fn pids_peak(&self) -> Option<u64> {
        let dir = if self.v2 {
            &self.dirs[0]
        } else {
            &self.dirs[1]
        };
        let events = std::fs::read_to_string(dir.join("pids.events")).ok()?;
        events
            .lines()
            .find_map(|l| l.strip_prefix("max "))
            .and_then(|v| v.trim().parse().ok())
    }
}

/// Removes the groups `{prefix}-{pid}-{n}` (with their workers' groups) of processes
/// that are gone: what a crashed agent left behind.
pub fn sweep(base: &Path, prefix: &str) {
    let parents: Vec<PathBuf> = if base.join("cgroup.controllers").exists() {
        vec![base.to_path_buf()]
    } else {
        ["memory", "pids", "cpu"]
            .iter()
            .map(|c| base.join(c))
            .collect()
    };
    let lead = format!("{prefix}-");
    for parent in parents {
        let Ok(rd) = std::fs::read_dir(&parent) else {
            continue;
        };
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(&lead))
                .and_then(|r| r.split_once('-'))
                .filter(|(pid, n)| {
                    [pid, n]
                        .iter()
                        .all(|x| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit()))
                })
                .map(|(pid, _)| pid)
            else {
                continue;
            };
            if Path::new("/proc").join(pid).exists() {
                continue;
            }
            let dir = e.path();
            if let Ok(children) = std::fs::read_dir(&dir) {
                for c in children.flatten().filter(|c| c.path().is_dir()) {
                    let g = Group {
                        dirs: vec![c.path()],
                        v2: false,
                    };
                    g.kill();
                    g.remove();
                }
            }
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

fn pids_in(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}

fn mkdir(d: &Path) -> Result<(), String> {
    std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup tree in a temp dir: the files the kernel would provide.
    #[test]
    fn v1_group_gets_its_limits() {
        let t = tempfile::tempdir().unwrap();
        for c in ["memory", "pids", "cpu"] {
            std::fs::create_dir_all(t.path().join(c)).unwrap();
        }
        let h = Hierarchy::detect(t.path(), "verge-fn-test").unwrap();
        let g = h
            .create(
                "w1",
                &Limits {
                    memory_bytes: 64 << 20,
                    pids: 32,
                    cpu_millis: 500,
                },
            )
            .unwrap();
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(
            read("memory/verge-fn-test/w1/memory.limit_in_bytes"),
            "67108864"
        );
        assert_eq!(read("pids/verge-fn-test/w1/pids.max"), "32");
        assert_eq!(read("cpu/verge-fn-test/w1/cpu.cfs_quota_us"), "50000");
        assert_eq!(g.procs_files().len(), 3);
        std::fs::write(
            t.path().join("memory/verge-fn-test/w1/memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        assert_eq!(g.oom_kills(), 2);
    }

    #[test]
    fn v2_group_gets_its_limits() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.controllers"), "memory pids cpu").unwrap();
        let h = Hierarchy::detect(t.path(), "verge-fn-test").unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("verge-fn-test/cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        h.create(
            "w2",
            &Limits {
                memory_bytes: 1 << 30,
                pids: 64,
                cpu_millis: 2000,
            },
        )
        .unwrap();
        let read = |p: &str| std::fs::read_to_string(t.path().join(p)).unwrap();
        assert_eq!(read("verge-fn-test/w2/memory.max"), "1073741824");
        assert_eq!(read("verge-fn-test/w2/pids.max"), "64");
        assert_eq!(read("verge-fn-test/w2/cpu.max"), "200000 100000");
    }

    #[test]
    fn missing_hierarchies_are_named() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("memory")).unwrap();
        let e = Hierarchy::detect(t.path(), "x").unwrap_err();
        assert!(e.contains("no pids cgroup hierarchy"), "{e}");
    }
}
