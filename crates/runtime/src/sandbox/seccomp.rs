//! The seccomp filter every sandboxed worker runs under, as a classic BPF program.
//!
//! Pure: [`program`] returns the bytes that bubblewrap's `--seccomp FD` loads (an array
//! of `struct sock_filter`, native endian) for the architecture this binary was built
//! for. No I/O, no syscalls here; the tests run the program in a small BPF interpreter.
//!
//! The filter is a deny list on top of the sandbox's other walls (own namespaces, an
//! unprivileged uid, no capabilities, `no_new_privs`):
//! - another architecture's syscall ABI (i386 `int 0x80` on x86_64, x32) → the process
//!   is killed, so the numbers below cannot be dodged;
//! - kernel-level operations (`ptrace`, `mount` and the new mount API, `bpf`,
//!   `kexec_*`, module loading, `reboot`, swap, `acct`, `quotactl`, `syslog`, `iopl`),
//!   namespace escapes (`unshare`, `setns`, `clone` with any `CLONE_NEW*` flag),
//!   file-handle tricks (`open_by_handle_at`, `name_to_handle_at`), other processes'
//!   memory (`process_vm_*`), the keyring, `perf_event_open`, `userfaultfd` and
//!   io_uring → `EPERM`;
//! - `clone3` → `ENOSYS`: its flags sit behind a pointer a filter cannot read, and libc
//!   falls back to `clone` (checked above) when it is missing.

use nix::libc;

/// `BPF_LD | BPF_W | BPF_ABS`.
const LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JEQ | BPF_K`.
const JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K`.
const JGE_K: u16 = 0x35;
/// `BPF_JMP | BPF_JSET | BPF_K`.
const JSET_K: u16 = 0x45;
/// `BPF_RET | BPF_K`.
const RET_K: u16 = 0x06;

pub(crate) const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub(crate) const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
/// The low 32 bits of `args[0]` (where `clone` keeps its flags).
const OFF_ARG0_LO: u32 = if cfg!(target_endian = "little") {
    16
} else {
    20
};

/// Every `CLONE_NEW*` namespace flag.
const CLONE_NEW_ANY: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

/// One BPF instruction (`struct sock_filter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Insn {
    pub code: u16,
    pub jt: u8,
    pub jf: u8,
    pub k: u32,
}

const fn insn(code: u16, jt: u8, jf: u8, k: u32) -> Insn {
    Insn { code, jt, jf, k }
}

/// The `AUDIT_ARCH_*` value of the target, or `None` where no filter is defined.
pub(crate) fn audit_arch() -> Option<u32> {
    if cfg!(target_arch = "x86_64") {
        Some(0xC000_003E)
    } else if cfg!(target_arch = "aarch64") {
        Some(0xC000_00B7)
    } else if cfg!(target_arch = "arm") {
        Some(0x4000_0028)
    } else if cfg!(all(target_arch = "mips", target_endian = "little")) {
        Some(0x4000_0008)
    } else if cfg!(all(target_arch = "mips", target_endian = "big")) {
        Some(0x0000_0008)
    } else {
        None
    }
}

/// Syscalls refused with `EPERM`, by number on this architecture.
pub(crate) fn denied() -> Vec<(&'static str, u32)> {
    let mut v: Vec<(&'static str, libc::c_long)> = vec![
        ("ptrace", libc::SYS_ptrace),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("pivot_root", libc::SYS_pivot_root),
        ("chroot", libc::SYS_chroot),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("bpf", libc::SYS_bpf),
        ("kexec_load", libc::SYS_kexec_load),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("reboot", libc::SYS_reboot),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("acct", libc::SYS_acct),
        ("quotactl", libc::SYS_quotactl),
        ("syslog", libc::SYS_syslog),
        ("vhangup", libc::SYS_vhangup),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("unshare", libc::SYS_unshare),
        ("setns", libc::SYS_setns),
        ("keyctl", libc::SYS_keyctl),
        ("add_key", libc::SYS_add_key),
        ("request_key", libc::SYS_request_key),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("process_vm_readv", libc::SYS_process_vm_readv),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
    ];
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    v.push(("kexec_file_load", libc::SYS_kexec_file_load));
    #[cfg(any(target_arch = "x86_64", target_arch = "mips"))]
    {
        v.push(("iopl", libc::SYS_iopl));
        v.push(("ioperm", libc::SYS_ioperm));
    }
    v.into_iter().map(|(n, nr)| (n, nr as u32)).collect()
}

/// The filter as instructions, or `None` on an architecture without one.
pub(crate) fn instructions() -> Option<Vec<Insn>> {
    let arch = audit_arch()?;
    let deny = denied();
    let mut p = vec![
        insn(LD_W_ABS, 0, 0, OFF_ARCH),
        insn(JEQ_K, 1, 0, arch),
        insn(RET_K, 0, 0, RET_KILL_PROCESS),
        insn(LD_W_ABS, 0, 0, OFF_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        // x32 syscalls are numbered from bit 30: never ours.
        p.push(insn(JGE_K, 0, 1, 0x4000_0000));
        p.push(insn(RET_K, 0, 0, RET_KILL_PROCESS));
    }
    // clone: refuse namespace flags, allow the rest.
    p.push(insn(JEQ_K, 0, 4, libc::SYS_clone as u32));
    p.push(insn(LD_W_ABS, 0, 0, OFF_ARG0_LO));
    p.push(insn(JSET_K, 0, 1, CLONE_NEW_ANY));
    p.push(insn(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
    p.push(insn(RET_K, 0, 0, RET_ALLOW));
    // clone3: ENOSYS, so libc uses clone.
    p.push(insn(JEQ_K, 0, 1, libc::SYS_clone3 as u32));
    p.push(insn(RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32));
    // The deny list: each match jumps to the EPERM return after the ALLOW.
    let n = deny.len();
    for (i, (_, nr)) in deny.iter().enumerate() {
        let to_deny = u8::try_from(n - i).ok()?;
        p.push(insn(JEQ_K, to_deny, 0, *nr));
    }
    p.push(insn(RET_K, 0, 0, RET_ALLOW));
    p.push(insn(RET_K, 0, 0, RET_ERRNO | libc::EPERM as u32));
    Some(p)
}

/// The filter in the binary form `--seccomp` reads, or `None` on an architecture
/// without one.
pub fn program() -> Option<Vec<u8>> {
    let insns = instructions()?;
    let mut out = Vec::with_capacity(insns.len() * 8);
    for i in insns {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program the way the kernel would for one syscall.
    fn run(p: &[Insn], arch: u32, nr: u32, arg0: u64) -> u32 {
        let mut data = [0u8; 64];
        data[0..4].copy_from_slice(&nr.to_ne_bytes());
        data[4..8].copy_from_slice(&arch.to_ne_bytes());
        data[16..24].copy_from_slice(&arg0.to_ne_bytes());
        let mut acc: u32 = 0;
        let mut pc = 0usize;
        loop {
            let i = p[pc];
            pc += 1;
            match i.code {
                LD_W_ABS => {
                    let o = i.k as usize;
                    acc = u32::from_ne_bytes(data[o..o + 4].try_into().unwrap());
                }
                JEQ_K | JGE_K | JSET_K => {
                    let hit = match i.code {
                        JEQ_K => acc == i.k,
                        JGE_K => acc >= i.k,
                        _ => acc & i.k != 0,
                    };
                    pc += if hit { i.jt } else { i.jf } as usize;
                }
                RET_K => return i.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
            assert!(pc < p.len(), "ran off the end of the program");
        }
    }

    fn nr(n: libc::c_long) -> u32 {
        n as u32
    }

    #[test]
    fn denies_the_listed_calls_and_allows_ordinary_ones() {
        let p = instructions().expect("a filter for this architecture");
        let arch = audit_arch().unwrap();
        for (name, n) in denied() {
            assert_eq!(
                run(&p, arch, n, 0),
                RET_ERRNO | libc::EPERM as u32,
                "{name} must be refused"
            );
        }
        for n in [
            libc::SYS_read,
            libc::SYS_write,
            libc::SYS_close,
            libc::SYS_mmap,
            libc::SYS_execve,
            libc::SYS_getpid,
            libc::SYS_socket,
            libc::SYS_connect,
            libc::SYS_exit_group,
            libc::SYS_futex,
        ] {
            assert_eq!(run(&p, arch, nr(n), 0), RET_ALLOW, "syscall {n} must pass");
        }
    }

    #[test]
    fn clone_with_namespace_flags_is_refused() {
        let p = instructions().unwrap();
        let arch = audit_arch().unwrap();
        let thread =
            (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_THREAD) as u64;
        assert_eq!(run(&p, arch, nr(libc::SYS_clone), thread), RET_ALLOW);
        assert_eq!(
            run(&p, arch, nr(libc::SYS_clone), libc::SIGCHLD as u64),
            RET_ALLOW
        );
        for flag in [
            libc::CLONE_NEWUSER,
            libc::CLONE_NEWNS,
            libc::CLONE_NEWPID,
            libc::CLONE_NEWNET,
            libc::CLONE_NEWCGROUP,
            libc::CLONE_NEWUTS,
            libc::CLONE_NEWIPC,
        ] {
            assert_eq!(
                run(
                    &p,
                    arch,
                    nr(libc::SYS_clone),
                    libc::SIGCHLD as u64 | flag as u64
                ),
                RET_ERRNO | libc::EPERM as u32,
                "clone with {flag:#x}"
            );
        }
        assert_eq!(
            run(&p, arch, nr(libc::SYS_clone3), 0),
            RET_ERRNO | libc::ENOSYS as u32
        );
    }

    #[test]
    fn another_abi_kills_the_process() {
        let p = instructions().unwrap();
        // i386 on x86_64, or any foreign architecture value.
        assert_eq!(run(&p, 0x4000_0003, 0, 0), RET_KILL_PROCESS);
        if cfg!(target_arch = "x86_64") {
            let arch = audit_arch().unwrap();
            assert_eq!(run(&p, arch, 0x4000_0000 | 101, 0), RET_KILL_PROCESS);
        }
    }

    #[test]
    fn binary_form_is_eight_bytes_per_instruction() {
        let insns = instructions().unwrap();
        let bytes = program().unwrap();
        assert_eq!(bytes.len(), insns.len() * 8);
        assert_eq!(&bytes[0..2], &LD_W_ABS.to_ne_bytes());
        assert_eq!(&bytes[4..8], &OFF_ARCH.to_ne_bytes());
        // Every jump stays inside the program.
        for (i, x) in insns.iter().enumerate() {
            if x.code != RET_K && x.code != LD_W_ABS {
                assert!(i + 1 + (x.jt.max(x.jf) as usize) < insns.len());
            }
        }
    }
}
