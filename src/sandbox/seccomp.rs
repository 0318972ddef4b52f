//! The seccomp filter (rust-vmm's `seccompiler`): the system calls the daemon was seen to make
//! across the whole test suite (`strace -f` of every daemon it runs), installed on every thread
//! at once (`SECCOMP_FILTER_FLAG_TSYNC`); threads started later inherit it. The daemon never
//! starts a program under it (its launcher process does), so `execve` and `fork` are not in it.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SandboxMode;

/// The system calls allowed (x86_64 numbers).
const ALLOWED: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_access,
    libc::SYS_arch_prctl,
    libc::SYS_bind,
    libc::SYS_bpf,
    libc::SYS_brk,
    libc::SYS_chmod,
    libc::SYS_clock_getres,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_clone3,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_connect,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_dup3,
    libc::SYS_epoll_create,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_eventfd2,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_faccessat2,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_fcntl,
    libc::SYS_fdatasync,
    libc::SYS_flock,
    libc::SYS_fstat,
    libc::SYS_fsync,
    libc::SYS_ftruncate,
    libc::SYS_futex,
    libc::SYS_getcwd,
    libc::SYS_getdents64,
    libc::SYS_getegid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getpeername,
    libc::SYS_getpgrp,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_getrandom,
    libc::SYS_getresgid,
    libc::SYS_getresuid,
    libc::SYS_getrusage,
    libc::SYS_getsockname,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_gettimeofday,
    libc::SYS_getuid,
    libc::SYS_ioctl,
    libc::SYS_kill,
    libc::SYS_listen,
    libc::SYS_lseek,
    libc::SYS_lstat,
    libc::SYS_madvise,
    libc::SYS_membarrier,
    libc::SYS_memfd_create,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_newfstatat,
    libc::SYS_openat,
    libc::SYS_pipe,
    libc::SYS_pipe2,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_pread64,
    libc::SYS_prlimit64,
    libc::SYS_pselect6,
    libc::SYS_pwrite64,
    libc::SYS_read,
    libc::SYS_readlink,
    libc::SYS_readlinkat,
    libc::SYS_readv,
    libc::SYS_recvfrom,
    libc::SYS_recvmmsg,
    libc::SYS_recvmsg,
    libc::SYS_rename,
    libc::SYS_renameat2,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigtimedwait,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_getparam,
    libc::SYS_sched_setaffinity,
    libc::SYS_sched_yield,
    // Only ever adds restrictions: queue workers put their own filter on with it.
    libc::SYS_seccomp,
    libc::SYS_select,
    libc::SYS_sendmmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_set_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_setsid,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_socket,
    libc::SYS_socketpair,
    libc::SYS_stat,
    libc::SYS_statfs,
    libc::SYS_statx,
    libc::SYS_sysinfo,
    libc::SYS_tgkill,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_times,
    libc::SYS_tkill,
    libc::SYS_umask,
    libc::SYS_uname,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_write,
    libc::SYS_writev,
];

/// What the whole process may call but a thread serving a vhost-user connection may not: no
/// files made, renamed or removed, no BPF but [`BPF_MAP_DELETE_ELEM`], no resource limits, no
/// listening. It still starts queue workers (threads) and maps the frontend's memory (never
/// executable).
const DENIED_TO_CONNECTIONS: &[libc::c_long] = &[
    libc::SYS_chmod,
    libc::SYS_fchmod,
    libc::SYS_fchmodat,
    libc::SYS_fchown,
    libc::SYS_flock,
    libc::SYS_ftruncate,
    libc::SYS_listen,
    libc::SYS_memfd_create,
    libc::SYS_mkdir,
    libc::SYS_mkdirat,
    libc::SYS_prlimit64,
    libc::SYS_rename,
    libc::SYS_renameat2,
    libc::SYS_sched_setaffinity,
    libc::SYS_setsid,
    libc::SYS_socketpair,
    libc::SYS_umask,
    libc::SYS_unlink,
    libc::SYS_unlinkat,
];
/// What a queue worker may not call on top of what a connection thread may not: no threads or
/// processes, no `prctl`, no filters of its own. Queue workers run the guest's rings and the
/// backends' datapaths (the user stack's flows included: sockets, connects, TFTP reads), so
/// those stay.
const ALSO_DENIED_TO_QUEUE_WORKERS: &[libc::c_long] = &[
    libc::SYS_arch_prctl,
    libc::SYS_clone3,
    libc::SYS_prctl,
    libc::SYS_seccomp,
    libc::SYS_set_robust_list,
    libc::SYS_set_tid_address,
];

/// System calls the role filters allow only without `PROT_EXEC` in their third argument: no
/// memory becomes executable.
const NO_EXEC_PROT: &[libc::c_long] = &[libc::SYS_mmap, libc::SYS_mprotect];

/// Why the sandbox could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("PR_SET_NO_NEW_PRIVS: {0}")]
    NoNewPrivs(std::io::Error),
    #[error("building the seccomp filter: {0}")]
    Filter(String),
    #[error("installing the seccomp filter: {0}")]
    Install(String),
    #[error("SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

fn filter(mode: SandboxMode) -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    compile(rules, mode)
}

/// The filter queue worker threads add on themselves: the process's, less
/// `DENIED_TO_CONNECTIONS` and `ALSO_DENIED_TO_QUEUE_WORKERS`, with `mmap`/`mprotect` never
/// making memory executable.
pub fn queue_worker_filter(mode: SandboxMode) -> Result<BpfProgram, SeccompError> {
    let denied: Vec<libc::c_long> = DENIED_TO_CONNECTIONS
        .iter()
        .chain(ALSO_DENIED_TO_QUEUE_WORKERS)
        .copied()
        .collect();
    role_filter(mode, &denied)
}

/// The filter threads serving a vhost-user connection add on themselves: the process's, less
/// `DENIED_TO_CONNECTIONS`, with `mmap`/`mprotect` never making memory executable.
pub fn connection_filter(mode: SandboxMode) -> Result<BpfProgram, SeccompError> {
    role_filter(mode, DENIED_TO_CONNECTIONS)
}

/// The one `bpf(2)` command connection and queue threads may run: an AF_XDP queue a device lets go
/// of after its netdev is gone (deleted, or the daemon shutting down while a frontend
/// disconnects) is dropped on that thread, and takes its socket out of the pinned XSK map
/// (`map-path=`). Without it the thread was killed by the filter (seen as a rare SIGSYS at
/// shutdown).
const BPF_MAP_DELETE_ELEM: u64 = 3;

fn role_filter(mode: SandboxMode, denied: &[libc::c_long]) -> Result<BpfProgram, SeccompError> {
    let map_delete_only = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        BPF_MAP_DELETE_ELEM,
    )
    .map_err(|e| SeccompError::Filter(e.to_string()))?;
    let map_delete_only =
        SeccompRule::new(vec![map_delete_only]).map_err(|e| SeccompError::Filter(e.to_string()))?;
    let no_exec = SeccompCondition::new(
        2,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )
    .map_err(|e| SeccompError::Filter(e.to_string()))?;
    let no_exec =
        SeccompRule::new(vec![no_exec]).map_err(|e| SeccompError::Filter(e.to_string()))?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
        .iter()
        .filter(|nr| !denied.contains(nr))
        .map(|&nr| {
            let conditions = if NO_EXEC_PROT.contains(&nr) {
                vec![no_exec.clone()]
            } else if nr == libc::SYS_bpf {
                vec![map_delete_only.clone()]
            } else {
                Vec::new()
            };
            (nr, conditions)
        })
        .collect();
    compile(rules, mode)
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    mode: SandboxMode,
) -> Result<BpfProgram, SeccompError> {
    let mismatch = match mode {
        SandboxMode::On => SeccompAction::KillProcess,
        _ => SeccompAction::Trap,
    };
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, TargetArch::x86_64)
        .map_err(|e| SeccompError::Filter(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SeccompError::Filter(e.to_string()))
}

/// Confines every thread of the process as `mode` says.
pub(super) fn install(mode: SandboxMode) -> Result<(), SeccompError> {
    if mode == SandboxMode::Off {
        return Ok(());
    }
    if mode == SandboxMode::Log {
        install_sigsys_handler().map_err(SeccompError::Handler)?;
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SeccompError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    let program = filter(mode)?;
    seccompiler::apply_filter_all_threads(&program)
        .map_err(|e| SeccompError::Install(e.to_string()))
}

/// Writes `text` to standard error with one `write(2)` (async-signal-safe).
fn write_stderr(text: &[u8]) {
    // SAFETY: writes from a live buffer to fd 2.
    unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
}

/// `--sandbox=log`: a trapped system call is reported and fails with ENOSYS.
extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    context: *mut libc::c_void,
) {
    // The syscall number sits in the siginfo's `_sigsys` member: after the 16-byte header, the
    // call address (8 bytes), then the number (4 bytes).
    const SYSCALL_OFFSET: usize = 16 + 8;
    // SAFETY: the kernel passes a valid siginfo for SIGSYS; the offset is its `si_syscall`.
    let nr = unsafe { *info.cast::<u8>().add(SYSCALL_OFFSET).cast::<libc::c_int>() };
    let mut line = *b"vhost-user-netd: sandbox: forbidden system call          \n";
    let mut n = nr.unsigned_abs();
    let mut at = line.len() - 2;
    loop {
        line[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || at == 0 {
            break;
        }
        at -= 1;
    }
    write_stderr(&line);
    // SAFETY: the context is the interrupted thread's ucontext; RAX carries the return value.
    unsafe {
        let uc = context.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::ENOSYS);
    }
}

fn install_sigsys_handler() -> std::io::Result<()> {
    // SAFETY: sigaction is plain data; zero then filled in.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_sigsys as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO;
    // SAFETY: installs a handler that only calls write(2) and edits its own context.
    if unsafe { libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A system call the filter forbids, for the tests that prove it (`syslog(2)` asking for the
/// kernel log buffer's size: harmless when allowed).
#[cfg(feature = "sandbox-probe")]
pub fn make_forbidden_call() -> libc::c_long {
    // SAFETY: SYSLOG_ACTION_SIZE_BUFFER (10) takes no buffer.
    unsafe {
        libc::syscall(
            libc::SYS_syslog,
            10,
            std::ptr::null_mut::<libc::c_char>(),
            0,
        )
    }
}

/// A system call the process may make but a queue worker may not (`umask(2)`, setting the
/// mask it already has), for the test that proves workers have their own filter.
#[cfg(feature = "sandbox-probe")]
pub fn make_call_forbidden_to_workers() -> libc::c_long {
    // SAFETY: umask takes an integer and cannot fail; 0o022 is set back at once if it passed.
    unsafe {
        let old = libc::syscall(libc::SYS_umask, 0o022);
        if old >= 0 {
            libc::syscall(libc::SYS_umask, old);
        }
        old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_builds_and_forbids_the_probe_call() {
        assert!(filter(SandboxMode::On).is_ok());
        assert!(filter(SandboxMode::Log).is_ok());
        assert!(!ALLOWED.contains(&libc::SYS_syslog));
        assert!(ALLOWED.contains(&libc::SYS_epoll_wait));
        assert!(!ALLOWED.contains(&libc::SYS_execve));
        assert!(queue_worker_filter(SandboxMode::On).is_ok());
        assert!(connection_filter(SandboxMode::Log).is_ok());
        for nr in ALSO_DENIED_TO_QUEUE_WORKERS
            .iter()
            .chain(DENIED_TO_CONNECTIONS)
            .chain(NO_EXEC_PROT)
        {
            assert!(ALLOWED.contains(nr), "{nr} is not in the process's list");
        }
    }

    /// Runs `call` in a forked child under `program` (no other thread exists there) and returns
    /// how the child ended: `Ok(exit code)` or `Err(signal)`.
    fn under_filter(program: &BpfProgram, call: fn() -> libc::c_long) -> Result<i32, i32> {
        // SAFETY: the child only applies a prepared filter (prctl and seccomp system calls),
        // makes one system call and leaves with _exit: all async-signal-safe.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            let applied = seccompiler::apply_filter(program).is_ok();
            let _ = call();
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(if applied { 0 } else { 99 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above; `status` is a valid out-pointer.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFSIGNALED(status) {
            Err(libc::WTERMSIG(status))
        } else {
            Ok(libc::WEXITSTATUS(status))
        }
    }

    /// Connection and queue threads may take an AF_XDP socket out of an XSK map, and nothing
    /// else of `bpf(2)`: a map delete (here on no map: it fails, and the thread lives) passes,
    /// a map creation kills.
    #[test]
    fn role_threads_may_delete_from_a_map_and_run_no_other_bpf_command() {
        fn map_delete() -> libc::c_long {
            // SAFETY: a null attribute pointer: the kernel refuses it with EFAULT.
            unsafe { libc::syscall(libc::SYS_bpf, 3, std::ptr::null::<u8>(), 0) }
        }
        fn map_create() -> libc::c_long {
            // SAFETY: as above, were it let through.
            unsafe { libc::syscall(libc::SYS_bpf, 0, std::ptr::null::<u8>(), 0) }
        }
        for program in [
            connection_filter(SandboxMode::On).unwrap(),
            queue_worker_filter(SandboxMode::On).unwrap(),
        ] {
            assert_eq!(under_filter(&program, map_delete), Ok(0));
            assert_eq!(under_filter(&program, map_create), Err(libc::SIGSYS));
        }
    }
}
